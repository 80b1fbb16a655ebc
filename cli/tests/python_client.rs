//! The Python `kubernetes` client (from PyPI; the test script installs it) against a real
//! `drover server`: create, list, watch and delete pods (`tests/python/pods.py`); statuses,
//! discovery, reviews and namespace deletion (`tests/python/apps.py`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::Cluster;

/// Runs `tests/python/{script}` against a one-member cluster whose addresses start at `ip`.
async fn run_script(ip: u8, script: &str) {
    let c = Cluster::start(Path::new(env!("CARGO_BIN_EXE_drover")), ip, 1)
        .await
        .unwrap();
    let kubeconfig = c.members[0].data_dir.join("admin.kubeconfig");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    // The API opens, and the default namespace is written, just after the member comes up.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("python3")
            .arg(&script)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .expect("python3");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        if out.status.success() {
            assert!(stdout.contains("ok"));
            return;
        }
        assert!(
            !stderr.contains("No module named 'kubernetes'"),
            "run ./scripts/test.sh, which installs the kubernetes package: {stderr}"
        );
        // Until the API has its certificates and the default namespace, the client fails
        // (with a connection error, before it has written anything).
        let not_yet = stderr.contains("Connection refused")
            || stderr.contains("MaxRetryError")
            || stderr.contains("NotFound");
        if !not_yet || Instant::now() > deadline {
            panic!(
                "the Python client failed:\n{stdout}\n{stderr}\n{}",
                c.all_logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_creates_lists_watches_and_deletes_pods() {
    run_script(111, "pods.py").await;
}

/// Statuses with Go's zero values, the dynamic client, reviews, a namespace's deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_reads_statuses_discovers_and_sees_a_namespace_go() {
    run_script(113, "apps.py").await;
}
