//! The control loops on a three-server cluster: the controllers and the scheduler run on the
//! Raft leader only, and when the leader is killed (SIGKILL) another server carries on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::Cluster;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_drover"))
}

/// kubectl against one member, with its own cache directory.
fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .output()
        .expect("kubectl is installed on every machine here");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Names of the `app=web` pods bound to a node, and of all of them.
fn web_pods(kubeconfig: &Path, home: &Path) -> (usize, usize) {
    let (_, out) = kubectl(
        kubeconfig,
        home,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.spec.nodeName} {end}",
        ],
    );
    let pods: Vec<&str> = out.split_whitespace().collect();
    let bound = pods.iter().filter(|p| p.ends_with("=sim-1")).count();
    (bound, pods.len())
}

fn wait_until(c: &Cluster, secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in {secs}s\n{}",
            c.all_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_and_scheduler_carry_on_when_the_leader_is_killed() {
    let mut c = Cluster::new(bin(), 160).unwrap();
    // The node here is simulated (no agent renews its lease): never declare it lost.
    c.flags
        .extend(["--node-monitor-grace-period".into(), "1h".into()]);
    for _ in 0..3 {
        c.add_member().await.unwrap();
    }
    let home = tempfile::tempdir().unwrap();
    let config =
        |c: &Cluster, i: usize| -> PathBuf { c.members[i].data_dir.join("admin.kubeconfig") };
    let first = c.leader(Duration::from_secs(20)).await.unwrap();
    let k = config(&c, first);
    wait_until(&c, 30, "kubectl answers", || {
        kubectl(&k, home.path(), &["get", "namespace", "default"]).0
    });
    let node = home.path().join("node.yaml");
    std::fs::write(
        &node,
        "apiVersion: v1\nkind: Node\nmetadata: {name: sim-1, labels: {kubernetes.io/hostname: sim-1}}\n",
    )
    .unwrap();
    assert!(kubectl(&k, home.path(), &["apply", "-f", node.to_str().unwrap()]).0);
    let (ok, out) = kubectl(
        &k,
        home.path(),
        &[
            "create",
            "deployment",
            "web",
            "--image=hello-world:v1",
            "--replicas=2",
        ],
    );
    assert!(ok, "{out}");
    wait_until(&c, 30, "2 pods bound", || {
        web_pods(&k, home.path()) == (2, 2)
    });

    c.kill(first);
    let next = c.leader(Duration::from_secs(20)).await.unwrap();
    assert_ne!(next, first);
    let k = config(&c, next);
    let (ok, out) = kubectl(
        &k,
        home.path(),
        &["scale", "deployment", "web", "--replicas=4"],
    );
    assert!(ok, "{out}");
    wait_until(
        &c,
        30,
        "4 pods bound by the new leader's controllers and scheduler",
        || web_pods(&k, home.path()) == (4, 4),
    );
    let (_, rs) = kubectl(
        &k,
        home.path(),
        &[
            "get",
            "rs",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].status.replicas}",
        ],
    );
    assert_eq!(rs, "4");
}
