//! How `drover` writes its logs: plain text without terminal colour codes when stderr is a
//! file (as under systemd or in `drover up > log`), and one JSON object per line with
//! `--log-format json`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// Starts `drover server` with `extra` flags; returns its lines of stderr up to the first that
/// `wanted` accepts (or all it wrote within 30 s).
fn log_lines_until(extra: &[&str], wanted: impl Fn(&str) -> bool) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    // An address of its own (no other test uses 127.0.0.195) and an explicit peer port: the
    // default peer port (--listen's plus one) is not reserved, so another test's process could
    // already hold it.
    // Both are held until both are known, so the two differ.
    let bind = || std::net::TcpListener::bind("127.0.0.195:0").unwrap();
    let held = (bind(), bind());
    let (api, peer) = (held.0.local_addr().unwrap(), held.1.local_addr().unwrap());
    drop(held);
    let mut child = Command::new(common::bin())
        .args(extra)
        .args(["server", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", &api.to_string()])
        .args(["--peer-listen", &peer.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = wanted(&line);
                out.push(line);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    out
}

#[test]
fn text_logs_to_a_file_have_no_colour_codes() {
    let lines = log_lines_until(&[], |l| l.contains("INFO"));
    assert!(
        lines.iter().any(|l| l.contains("INFO")),
        "tracing lines are there: {lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "no ANSI escape codes: {lines:?}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let lines = log_lines_until(&["--log-format", "json"], |l| l.starts_with('{'));
    let objects: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!objects.is_empty(), "{lines:?}");
    for o in &objects {
        assert!(o["timestamp"].is_string() && o["level"].is_string(), "{o}");
    }
}
