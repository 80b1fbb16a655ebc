//! kubectl compatibility: the commands of `tests/kubectl-compat/commands.txt` (about a hundred
//! and fifty, what people type every day) run by each kubectl version against one `drover up`.
//!
//! Which versions: `DROVER_KUBECTL_VERSIONS` (`1.27,1.36`, or `all` for 1.27 … 1.36); by
//! default a slice that spans them (the oldest, the machine's own, the newest). The full matrix
//! is `scripts/kubectl-matrix.sh`. kubectl 1.27–1.33 come with the machine image; 1.34–1.36
//! are installed by `scripts/client-tools.sh`, which this test runs when they are missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::repo;
use common::up::Up;

const ALL: [&str; 10] = [
    "1.27", "1.28", "1.29", "1.30", "1.31", "1.32", "1.33", "1.34", "1.35", "1.36",
];
const SLICE: [&str; 3] = ["1.27", "1.32", "1.36"];
/// kubectl 1.27–1.33, as the machine image carries them.
const IMAGE_BIN: &str = "/usr/lib/google-cloud-sdk/bin";
/// No command of the script should take longer (rollouts and waits have their own timeouts).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

fn versions() -> Vec<String> {
    match std::env::var("DROVER_KUBECTL_VERSIONS") {
        Ok(v) if v == "all" => ALL.map(String::from).to_vec(),
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
        _ => SLICE.map(String::from).to_vec(),
    }
}

/// The kubectl binary of `version` (e.g. "1.34"), installing the newer ones when missing.
fn kubectl_binary(version: &str) -> PathBuf {
    let minor: u32 = version
        .strip_prefix("1.")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("a kubectl version looks like 1.NN, not {version:?}"));
    if minor <= 33 {
        let path = Path::new(IMAGE_BIN).join(format!("kubectl.{version}"));
        assert!(
            path.exists(),
            "{} is missing: the machine image carries kubectl 1.27–1.33 there",
            path.display()
        );
        return path;
    }
    common::client_tool(&format!("kubectl.{version}"))
}

/// One line of the script.
#[derive(Debug)]
struct Step {
    line: usize,
    text: String,
    /// Oldest and newest minor version the line applies to.
    minors: (u32, u32),
    env: Vec<(String, String)>,
    succeeds: bool,
    shows: Option<String>,
    args: Vec<String>,
}

fn parse_script(text: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = shlex::split(line)
            .unwrap_or_else(|| panic!("commands.txt:{}: unbalanced quotes", i + 1))
            .into_iter()
            .peekable();
        let mut minors = (0, u32::MAX);
        if let Some(gate) = words.peek().and_then(|w| w.strip_prefix('[')) {
            let gate = gate.trim_end_matches(']').trim_start_matches("1.");
            minors = match (gate.strip_suffix('+'), gate.strip_prefix("-1.")) {
                (Some(from), _) => (from.parse().unwrap(), u32::MAX),
                (_, Some(to)) => (0, to.parse().unwrap()),
                _ => panic!("commands.txt:{}: a gate is [1.NN+] or [-1.NN]", i + 1),
            };
            words.next();
        }
        let mut env = Vec::new();
        while let Some((k, v)) = words
            .peek()
            .and_then(|w| w.split_once('='))
            .filter(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        {
            env.push((k.to_string(), v.to_string()));
            words.next();
        }
        let expect = words.next().expect("an expectation");
        let (outcome, shows) = match expect.split_once('~') {
            Some((o, text)) => (o.to_string(), Some(text.to_string())),
            None => (expect, None),
        };
        assert!(
            outcome == "ok" || outcome == "fail",
            "commands.txt:{}: expected ok or fail, not {outcome:?}",
            i + 1
        );
        steps.push(Step {
            line: i + 1,
            text: line.to_string(),
            minors,
            env,
            succeeds: outcome == "ok",
            shows,
            args: words.collect(),
        });
    }
    steps
}

/// What one version did with one line.
struct Outcome {
    line: usize,
    text: String,
    failure: Option<String>,
}

/// Runs `kubectl` with a time limit; returns (exit success, stdout + stderr).
fn run_kubectl(
    kubectl: &Path,
    kubeconfig: &Path,
    home: &Path,
    env: &[(String, String)],
    args: &[String],
) -> Result<(bool, String), String> {
    let out_path = home.join("out.txt");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(kubectl)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", kubectl.display()))?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no answer within {COMMAND_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    Ok((status.success(), text))
}

/// Runs the script with kubectl `version` in a namespace of its own.
fn run_version(up: &Up, version: &str, steps: &[Step], node: &str) -> Vec<Outcome> {
    let kubectl = kubectl_binary(version);
    let minor: u32 = version[2..].parse().unwrap();
    let ns = format!("compat-{}", version.replace('.', "-"));
    let files = repo().join("cli/tests/kubectl-compat");
    // Its own home: no discovery cache shared between versions.
    let home = tempfile::tempdir().unwrap();
    let mut outcomes = Vec::new();
    for step in steps
        .iter()
        .filter(|s| s.minors.0 <= minor && minor <= s.minors.1)
    {
        let fill = |w: &str| {
            let w = w.replace("$NS", &ns).replace("$NODE", node);
            match w.split_once('@') {
                Some((before, file)) if !file.is_empty() && !file.contains('@') => {
                    format!("{before}{}", files.join(file).display())
                }
                _ => w,
            }
        };
        let args: Vec<String> = step.args.iter().map(|a| fill(a)).collect();
        let shows = step.shows.as_deref().map(fill);
        let failure = match run_kubectl(&kubectl, &up.kubeconfig, home.path(), &step.env, &args) {
            Err(e) => Some(e),
            Ok((succeeded, output)) => {
                let mut why = Vec::new();
                if succeeded != step.succeeds {
                    why.push(if succeeded {
                        "succeeded, expected to fail".to_string()
                    } else {
                        "failed".to_string()
                    });
                }
                if let Some(text) = &shows {
                    if !output.contains(text.as_str()) {
                        why.push(format!("output lacks {text:?}"));
                    }
                }
                (!why.is_empty()).then(|| format!("{}:\n{}", why.join("; "), output.trim_end()))
            }
        };
        outcomes.push(Outcome {
            line: step.line,
            text: step.text.clone(),
            failure,
        });
    }
    outcomes
}

#[test]
fn kubectl_commands_work_for_every_version() {
    let script = std::fs::read_to_string(repo().join("cli/tests/kubectl-compat/commands.txt"))
        .expect("the command script");
    let steps = parse_script(&script);
    let versions = versions();
    let up = Up::start(60);
    up.import("hello_world.wasm", "hello-world:v1");
    up.import("batch.wasm", "batch:v1");
    let node = up.ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    let mut report = String::new();
    let mut failed = 0;
    for version in &versions {
        let outcomes = run_version(&up, version, &steps, node.trim());
        let bad: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
        report += &format!(
            "kubectl {version}: {} of {} commands as expected\n",
            outcomes.len() - bad.len(),
            outcomes.len()
        );
        for o in &bad {
            report += &format!(
                "  line {}: {}\n    {}\n",
                o.line,
                o.text,
                o.failure.as_deref().unwrap_or("").replace('\n', "\n    ")
            );
        }
        failed += bad.len();
    }
    // The versions run and their figures, for the record (nextest shows it on failure, and
    // scripts/kubectl-matrix.sh keeps it).
    println!("{report}");
    if let Ok(path) = std::env::var("DROVER_KUBECTL_REPORT") {
        std::fs::write(path, &report).unwrap();
    }
    assert_eq!(failed, 0, "\n{report}\n--- drover:\n{}", up.log());
}

#[test]
fn the_script_parses_with_gates_expectations_and_environment() {
    let steps = parse_script(
        "# comment\n[1.28+] ok~\"is running\" cluster-info\nKUBE_EDITOR=\"sed -i s/a/b/\" fail -n x edit cm y\n[-1.27] ok version\n",
    );
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0].minors, (28, u32::MAX));
    assert_eq!(steps[0].shows.as_deref(), Some("is running"));
    assert_eq!(steps[0].args, ["cluster-info"]);
    assert_eq!(
        steps[1].env,
        [("KUBE_EDITOR".to_string(), "sed -i s/a/b/".to_string())]
    );
    assert!(!steps[1].succeeds);
    assert_eq!(steps[2].minors, (0, 27));
}
