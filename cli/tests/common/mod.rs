//! What the end-to-end test files share: the `drover` binary cargo built for them, the example
//! Wasm programs, and kubectl runs. (Each test file is its own crate and uses a part of this,
//! hence `dead_code` allowed.)
#![allow(dead_code)]

pub mod lan;
pub mod up;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_drover"))
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The examples' .wasm files, built once per test process (`scripts/test.sh` builds them
/// first; a test builds them itself if they are missing).
pub fn examples() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = repo().join("examples/target/wasm32-wasip2/release");
        let status = Command::new("cargo")
            .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(repo().join("examples/Cargo.toml"))
            .arg("--target-dir")
            .arg(repo().join("examples/target"))
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building the examples failed; is the wasm32-wasip2 target installed (rustup target add wasm32-wasip2)?"
        );
        out
    })
}

/// Imports an example image into the node whose directory is `node_dir`.
pub fn import_into(node_dir: &Path, file: &str, reference: &str) {
    let out = Command::new(bin())
        .args(["image", "import", "--node-dir"])
        .arg(node_dir)
        .arg(examples().join(file))
        .arg(reference)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs kubectl with `kubeconfig` and its own `home` (no cache shared between tests);
/// returns (success, stdout, stderr).
pub fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()
        .expect("kubectl is installed on every machine here");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A client the machine image does not carry (kubectl 1.34–1.36, `helm3`, `helm4`), installed
/// by `scripts/client-tools.sh` when missing; its path.
pub fn client_tool(name: &str) -> PathBuf {
    let out = Command::new(repo().join("scripts/client-tools.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/client-tools.sh runs");
    assert!(out.status.success(), "scripts/client-tools.sh failed");
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let path = Path::new(&dir).join(name);
    assert!(path.exists(), "{} was not installed", path.display());
    path
}

/// One HTTP/1.1 request to the router at `addr` for `host`; (status, body).
pub fn router_get(addr: &str, host: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}
