//! The Python `kubernetes` client (from PyPI; the test script installs it) against a real
//! `drover server`: create, list, watch and delete pods (`tests/python/pods.py`); statuses,
//! discovery, reviews and namespace deletion (`tests/python/apps.py`); and the client's own
//! end-to-end tests of its dynamic client, from its source distribution, against `drover up`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::Cluster;

mod common;
use common::up::Up;

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

/// The tests its source distribution carries that no Kubernetes serves, or that fail against
/// any server, each with why.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "test_cluster_custom_resources",
        "apiextensions.k8s.io/v1beta1 CRDs, gone since Kubernetes 1.22",
    ),
    (
        "test_namespaced_custom_resources",
        "apiextensions.k8s.io/v1beta1 CRDs",
    ),
    (
        "test_async_namespaced_custom_resources",
        "apiextensions.k8s.io/v1beta1 CRDs",
    ),
    (
        "test_replication_controller_apis",
        "ReplicationControllers are the API kinds issue's",
    ),
    (
        "test_cache_decoder_resource_and_subresource",
        "compares two Resource objects with ==, which the class does not define, so it fails \
         whatever the server",
    ),
];

/// The Python client's own e2e tests of its dynamic client (`kubernetes/dynamic/test_*.py`
/// from the source distribution of the installed version) against `drover up`: services,
/// config maps, nodes, metadata-only lists, server-side apply, discovery and its cache.
#[test]
fn the_python_clients_own_dynamic_client_e2e_tests_pass() {
    let source = Command::new(common::repo().join("scripts/python-client-source.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("scripts/python-client-source.sh runs");
    assert!(
        source.status.success(),
        "scripts/python-client-source.sh failed"
    );
    let source = Path::new(String::from_utf8_lossy(&source.stdout).trim()).to_path_buf();
    // The tests import `kubernetes.e2e_test.base` and their own package relatively: run them
    // from a copy of the package with our `base` beside them.
    let work = tempfile::tempdir().unwrap();
    let copied = Command::new("cp")
        .arg("-r")
        .arg(source.join("kubernetes"))
        .arg(work.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let e2e = work.path().join("kubernetes/e2e_test");
    std::fs::create_dir_all(&e2e).unwrap();
    std::fs::write(e2e.join("__init__.py"), "").unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/e2e_base.py"),
        e2e.join("base.py"),
    )
    .unwrap();
    let tests = ["test_client", "test_discovery"];
    let mut names = Vec::new();
    for module in tests {
        let text =
            std::fs::read_to_string(work.path().join(format!("kubernetes/dynamic/{module}.py")))
                .unwrap();
        let mut class = "";
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("class ") {
                class = name.split(['(', ':']).next().unwrap_or_default();
            }
            let Some(name) = line.trim().strip_prefix("def test_") else {
                continue;
            };
            let name = format!("test_{}", name.split('(').next().unwrap());
            if NOT_RUN.iter().all(|(n, _)| *n != name) {
                names.push(format!("kubernetes.dynamic.{module}.{class}.{name}"));
            }
        }
    }
    assert!(names.len() >= 9, "the suite has changed shape: {names:?}");
    let up = Up::start(62);
    let out = Command::new("python3")
        .args(["-m", "unittest", "-v"])
        .args(&names)
        .current_dir(work.path())
        .env("PYTHONPATH", work.path())
        .env("KUBECONFIG", &up.kubeconfig)
        // The discovery cache is a file in the temporary directory; one of our own.
        .env("TMPDIR", work.path())
        .output()
        .expect("python3");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && report.contains(&format!("Ran {} tests", names.len())),
        "the client's e2e tests failed:\n{report}\n--- drover:\n{}",
        up.log()
    );
    eprintln!(
        "ran {} of the client's dynamic e2e tests from {}; not run: {NOT_RUN:?}",
        names.len(),
        source.display()
    );
}

/// The Python client's port-forward (WebSocket channels, not SPDY) reaches a Wasm pod's port.
#[test]
fn python_client_port_forwards_to_a_wasm_pod() {
    let up = Up::start(63);
    up.import("hello_world.wasm", "hello-world:v1");
    up.apply(
        "hello.yaml",
        &std::fs::read_to_string(common::repo().join("examples/hello-pod.yaml")).unwrap(),
    );
    up.wait_for(
        "hello",
        "{.status.containerStatuses[0].ready}",
        "true",
        60,
        |r| r == "true",
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/portforward.py");
    let out = Command::new("timeout")
        .arg("120")
        .arg("python3")
        .arg(&script)
        .env("KUBECONFIG", &up.kubeconfig)
        .output()
        .expect("python3");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{}\n{}\n--- drover:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        up.log()
    );
}
