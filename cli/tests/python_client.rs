//! The Python `kubernetes` client (from PyPI; the test script installs it) against a real
//! `drover server`: create, list, watch and delete pods (`tests/python/pods.py`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_creates_lists_watches_and_deletes_pods() {
    let c = Cluster::start(Path::new(env!("CARGO_BIN_EXE_drover")), 111, 1)
        .await
        .unwrap();
    let kubeconfig = c.members[0].data_dir.join("admin.kubeconfig");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/pods.py");
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
        // Until the API has its certificates and the default namespace, the client fails.
        if Instant::now() > deadline {
            panic!(
                "the Python client failed:\n{stdout}\n{stderr}\n{}",
                c.all_logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
