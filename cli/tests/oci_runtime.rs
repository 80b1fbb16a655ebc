//! The `oci` backend on its own: Linux containers from a busybox layer, started through the
//! real shim (`drover shim`) and libcontainer. NEEDS ROOT (CI runs as root): namespaces,
//! cgroups and overlay mounts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime::images::{ImageKind, ImageRunConfig, OciImage, StoredImage};
use runtime::logs::LogFile;
use runtime::oci::{OciConfig, OciRuntime};
use runtime::{ContainerSpec, ExitStatus, LinuxOptions, Runtime, StartError};

mod common;

/// A layer directory with the Debian busybox-static binary and its applets.
fn busybox_layer(dir: &Path) -> PathBuf {
    let layer = dir.join("layer");
    std::fs::create_dir_all(layer.join("bin")).unwrap();
    std::fs::create_dir_all(layer.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", layer.join("bin/busybox")).expect("busybox-static installed");
    for applet in [
        "sh", "echo", "true", "false", "sleep", "cat", "ls", "id", "hostname", "dd", "touch", "rm",
        "ps", "mount", "head",
    ] {
        std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        layer.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(layer.join("etc/group"), "root:x:0:\nwww:x:33:\n").unwrap();
    layer
}

struct Setup {
    /// Starts every pod uid of the test, so its cgroups are told from other tests'.
    tag: String,
    dir: tempfile::TempDir,
    rt: Arc<OciRuntime>,
    image: StoredImage,
    state_root: PathBuf,
}

fn setup(tag: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let layer = busybox_layer(dir.path());
    let mut config = OciConfig::for_node(dir.path(), common::bin().to_path_buf());
    config.pids_limit = 64;
    let state_root = config.state_root.clone();
    let rt = OciRuntime::new(config).unwrap();
    let image = StoredImage {
        reference: "busybox:test".into(),
        digest: "sha256:test".into(),
        path: layer.clone(),
        kind: ImageKind::Oci(OciImage {
            config: ImageRunConfig {
                cmd: vec!["sh".into()],
                env: vec!["PATH=/bin".into(), "FROM_IMAGE=yes".into()],
                ..Default::default()
            },
            layers: vec![layer],
        }),
    };
    Setup {
        tag: tag.to_string(),
        dir,
        rt,
        image,
        state_root,
    }
}

impl Setup {
    fn spec(&self, name: &str, command: &[&str]) -> ContainerSpec {
        ContainerSpec {
            pod_namespace: "default".into(),
            pod_name: format!("pod-{name}"),
            pod_uid: format!("{}{name}", self.tag),
            container: name.into(),
            image: self.image.clone(),
            args: vec![],
            env: vec![("GREETING".into(), "hello".into())],
            mounts: vec![],
            log: LogFile::create(&self.dir.path().join(format!("{name}.log"))).unwrap(),
            memory_limit: None,
            cpu_limit: None,
            listen: None,
            max_concurrency: None,
            netns: None,
            outbound: None,
            usage: Default::default(),
            linux: LinuxOptions {
                command: Some(command.iter().map(|s| s.to_string()).collect()),
                hostname: format!("pod-{name}"),
                ..Default::default()
            },
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Nothing of the node's containers is left: bundles, libcontainer state, mounts, cgroups.
    fn assert_nothing_left(&self) {
        // What the agent does when a pod is gone: its shared namespaces are given back.
        let mut pods = self.state_root.clone().into_os_string();
        pods.push("-pods");
        let pods = PathBuf::from(pods);
        for pod in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
            let uid = pod.file_name().to_string_lossy().into_owned();
            if uid.starts_with(&self.tag) {
                self.rt.release_pod(&uid);
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let left: Vec<&str> = mounts
            .lines()
            .filter(|l| l.contains(&format!("{}/{}", pods.display(), self.tag)))
            .collect();
        assert!(left.is_empty(), "pod namespaces left: {left:?}");
        let bundles = self.dir.path().join("containers");
        let left: Vec<_> = std::fs::read_dir(&bundles).unwrap().flatten().collect();
        assert!(left.is_empty(), "bundles left: {left:?}");
        let state: Vec<_> = std::fs::read_dir(&self.state_root)
            .unwrap()
            .flatten()
            .collect();
        assert!(state.is_empty(), "libcontainer state left: {state:?}");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let dir = self.dir.path().display().to_string();
        assert!(!mounts.contains(&dir), "mounts left under {dir}");
        for hierarchy in ["memory", "pids", "cpu"] {
            let cgroups = format!("/sys/fs/cgroup/{hierarchy}/drover");
            let left: Vec<String> = std::fs::read_dir(&cgroups)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&self.tag))
                .collect();
            assert!(left.is_empty(), "cgroups left in {cgroups}: {left:?}");
        }
    }
}

async fn run_to_exit(s: &Setup, name: &str, command: &[&str]) -> ExitStatus {
    let running = s.rt.start(s.spec(name, command)).await.expect("starts");
    tokio::time::timeout(Duration::from_secs(30), running.exit)
        .await
        .expect("exits in time")
        .unwrap()
}

#[tokio::test]
async fn a_container_runs_with_its_image_environment_and_logs_its_output() {
    let s = setup("tenv");
    let status = run_to_exit(
        &s,
        "env",
        &[
            "sh",
            "-c",
            "echo $GREETING $FROM_IMAGE $(hostname); id -u; echo oops >&2; exit 3",
        ],
    )
    .await;
    assert_eq!(status, ExitStatus::Exited(3));
    let log = s.log("env");
    assert!(log.contains("stdout F hello yes pod-env"), "{log}");
    assert!(log.contains("stdout F 0"), "{log}");
    assert!(log.contains("stderr F oops"), "{log}");
    s.assert_nothing_left();
}

#[tokio::test]
async fn a_container_over_its_memory_limit_is_oom_killed() {
    let s = setup("toom");
    let mut spec = s.spec(
        "oom",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    spec.memory_limit = Some(16 << 20);
    let running = s.rt.start(spec).await.expect("starts");
    let status = tokio::time::timeout(Duration::from_secs(30), running.exit)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, ExitStatus::OomKilled);
    s.assert_nothing_left();
}

#[tokio::test]
async fn stop_sends_term_then_kill_after_the_grace_period() {
    let s = setup("tstop");
    // A shell that traps TERM exits by itself: its exit code is reported.
    let polite =
        s.rt.start(s.spec(
            "polite",
            &[
                "sh",
                "-c",
                "trap 'exit 7' TERM; while true; do sleep 0.1; done",
            ],
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    polite.stopper().stop_within(Duration::from_secs(10));
    let status = tokio::time::timeout(Duration::from_secs(5), polite.exit)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, ExitStatus::Exited(7));

    // A first process ignores TERM (as init does): it is killed when the grace period ends.
    let stubborn =
        s.rt.start(s.spec("stubborn", &["sleep", "3600"]))
            .await
            .unwrap();
    let asked = Instant::now();
    stubborn.stopper().stop_within(Duration::from_secs(1));
    let status = tokio::time::timeout(Duration::from_secs(10), stubborn.exit)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, ExitStatus::Stopped);
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "{:?}",
        asked.elapsed()
    );
    s.assert_nothing_left();
}

#[tokio::test]
async fn exec_runs_commands_in_the_running_container() {
    let s = setup("texec");
    let running =
        s.rt.start(s.spec("exec", &["sleep", "3600"]))
            .await
            .unwrap();
    let (code, out) =
        s.rt.exec_output(
            "default",
            "pod-exec",
            "exec",
            vec!["sh".into(), "-c".into(), "echo hi; hostname; exit 4".into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!((code, out.as_str()), (4, "hi\npod-exec\n"));
    let (code, out) =
        s.rt.exec_output(
            "default",
            "pod-exec",
            "exec",
            vec!["nosuch".into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(code, 126, "{out}");
    assert!(out.contains("not found"), "{out}");
    // A command that outlives its timeout is killed, not left running in the container.
    let timed_out =
        s.rt.exec_output(
            "default",
            "pod-exec",
            "exec",
            vec!["sleep".into(), "31".into()],
            Duration::from_secs(1),
        )
        .await;
    assert!(timed_out.is_err(), "{timed_out:?}");
    let (_, ps) =
        s.rt.exec_output(
            "default",
            "pod-exec",
            "exec",
            vec!["ps".into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(!ps.contains("sleep 31"), "{ps}");
    assert!(s
        .rt
        .exec_output(
            "default",
            "pod-exec",
            "other",
            vec!["true".into()],
            Duration::from_secs(5)
        )
        .await
        .is_err());
    running.stop();
    running.exit.await.unwrap();
    s.assert_nothing_left();
}

/// An exec'd process is confined exactly as the container's main process: the same seccomp
/// filter, capabilities, no_new_privs, user and groups, and cgroup. Before, it ran as root
/// with no seccomp filter (`Seccomp: 0`) whatever the container ran as.
#[tokio::test]
async fn an_exec_is_confined_as_the_main_process() {
    let s = setup("tconf");
    let mut spec = s.spec("conf", &["sleep", "3600"]);
    spec.linux.security.run_as_user = Some(1000);
    spec.linux.security.run_as_group = Some(3000);
    spec.linux.security.capabilities_drop = vec!["ALL".into()];
    spec.linux.security.capabilities_add = vec!["NET_BIND_SERVICE".into()];
    let running = s.rt.start(spec).await.unwrap();
    let status_of = |pid: &str| {
        let rt = s.rt.clone();
        let cmd = format!("cat /proc/{pid}/status; echo cgroup; cat /proc/{pid}/cgroup");
        async move {
            let (code, out) = rt
                .exec_output(
                    "default",
                    "pod-conf",
                    "conf",
                    vec!["sh".into(), "-c".into(), cmd],
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
            assert_eq!(code, 0, "{out}");
            out
        }
    };
    let main = status_of("1").await;
    let exec = status_of("self").await;
    let field = |status: &str, name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    assert_eq!(
        field(&main, "Seccomp"),
        "2",
        "the main process is filtered: {main}"
    );
    for name in [
        "Seccomp",
        "NoNewPrivs",
        "CapEff",
        "CapPrm",
        "CapBnd",
        "CapAmb",
        "Uid",
        "Gid",
        "Groups",
    ] {
        assert_eq!(
            field(&exec, name),
            field(&main, name),
            "{name}\nexec:\n{exec}\nmain:\n{main}"
        );
    }
    assert!(field(&exec, "Uid").starts_with("1000 "), "{exec}");
    let cgroup = |status: &str| {
        status
            .split("cgroup\n")
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(cgroup(&exec), cgroup(&main));
    drop(running);
}

/// seccompProfile and the host's namespaces, as the pod asks: Unconfined runs without a
/// filter, Localhost loads the node's profile file (here one that refuses mkdir), a missing
/// or escaping profile is a start error; hostPID and hostIPC share the host's namespaces.
#[tokio::test]
async fn seccomp_profiles_and_host_namespaces_are_honoured() {
    let s = setup("tsecc");
    let status = |name: &'static str, cmd: &'static str| {
        let rt = s.rt.clone();
        async move {
            let (_, out) = rt
                .exec_output(
                    "default",
                    &format!("pod-{name}"),
                    name,
                    vec!["sh".into(), "-c".into(), cmd.into()],
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
            out
        }
    };
    let mut unconfined = s.spec("unconf", &["sleep", "3600"]);
    unconfined.linux.security.seccomp = runtime::SeccompProfile::Unconfined;
    let _u = s.rt.start(unconfined).await.unwrap();
    assert!(status("unconf", "grep Seccomp: /proc/1/status")
        .await
        .contains("Seccomp:\t0"));

    std::fs::create_dir_all(s.dir.path().join("seccomp/profiles")).unwrap();
    std::fs::write(
        s.dir.path().join("seccomp/profiles/no-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .unwrap();
    let mut local = s.spec("local", &["sleep", "3600"]);
    local.linux.security.seccomp =
        runtime::SeccompProfile::Localhost("profiles/no-mkdir.json".into());
    let _l = s.rt.start(local).await.unwrap();
    let out = status("local", "mkdir /tmp/x && echo made || echo refused").await;
    assert!(out.contains("refused"), "{out}");
    for bad in ["profiles/none.json", "../../etc/passwd", "/etc/passwd"] {
        let mut spec = s.spec("badprof", &["true"]);
        spec.linux.security.seccomp = runtime::SeccompProfile::Localhost(bad.into());
        let Err(e) = s.rt.start(spec).await else {
            panic!("{bad} starts")
        };
        assert!(e.to_string().contains("seccomp profile"), "{bad}: {e}");
    }

    let mut host = s.spec("hostns", &["sleep", "3600"]);
    host.linux.security.host_pid = true;
    host.linux.security.host_ipc = true;
    let _h = s.rt.start(host).await.unwrap();
    let ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap();
    let out = status("hostns", "readlink /proc/self/ns/ipc; cat /proc/1/comm").await;
    assert!(
        out.contains(&ipc.to_string_lossy().to_string()),
        "the host's IPC namespace: {out}"
    );
    assert!(
        !out.contains("sleep"),
        "pid 1 is the host's, not the container's: {out}"
    );
    let own = status("unconf", "cat /proc/1/comm").await;
    assert!(own.contains("sleep"), "{own}");
}

#[tokio::test]
async fn bad_specs_are_start_errors_that_leave_nothing_behind() {
    let s = setup("tbad");
    let Err(e) = s.rt.start(s.spec("missing", &["nosuch-program"])).await else {
        panic!("a missing program starts");
    };
    assert!(
        matches!(&e, StartError::InvalidImage(m) if m.contains("executable file not found")),
        "{e}"
    );

    let mut non_root = s.spec("nonroot", &["true"]);
    non_root.linux.security.run_as_non_root = true;
    let Err(e) = s.rt.start(non_root).await else {
        panic!("runAsNonRoot as root starts")
    };
    assert!(e.to_string().contains("runAsNonRoot"), "{e}");

    let mut privileged = s.spec("privileged", &["true"]);
    privileged.linux.security.privileged = true;
    let Err(e) = s.rt.start(privileged).await else {
        panic!("privileged starts")
    };
    assert!(e.to_string().contains("privileged"), "{e}");

    // A user by name from the image's /etc/passwd.
    let mut www = s.spec("www", &["id"]);
    www.linux.security.run_as_user = None;
    let mut image = s.image.clone();
    if let ImageKind::Oci(o) = &mut image.kind {
        o.config.user = Some("www".into());
    }
    www.image = image;
    let running = s.rt.start(www).await.unwrap();
    assert_eq!(running.exit.await.unwrap(), ExitStatus::Exited(0));
    assert!(s.log("www").contains("uid=33"), "{}", s.log("www"));
    s.assert_nothing_left();
}

#[tokio::test]
async fn containers_left_by_a_dead_agent_are_cleaned_up() {
    let s = setup("torphan");
    let running =
        s.rt.start(s.spec("orphan", &["sleep", "3600"]))
            .await
            .unwrap();
    // The agent goes away without stopping it (its Running is forgotten, the shim keeps it).
    std::mem::forget(running);
    let rt2 = OciRuntime::new(OciConfig::for_node(
        s.dir.path(),
        common::bin().to_path_buf(),
    ))
    .unwrap();
    rt2.clean_up().await;
    // The first runtime's supervisor sees its shim end and tidies up too; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.assert_nothing_left();
}
