//! The `oci` backend: pods whose images are ordinary container images run as Linux containers
//! through youki's libcontainer.
//!
//! For each container the backend
//! 1. assembles the root filesystem: an overlayfs mount of the image's unpacked layers (shared,
//!    read-only) under a writable layer of the container's own (`NODE_DIR/containers/<id>`);
//! 2. writes the OCI runtime spec ([`spec`]): the process merged from pod and image, the pod's
//!    network namespace, the cgroup limits, the default hardening;
//! 3. starts a shim process (`drover shim run`, [`shim`]) that has libcontainer create and start
//!    the container, copies its output to the log file and reports its exit;
//! 4. when the container has ended, unmounts and removes what step 1 made.
//!
//! State that outlives a crash lives in two places, both swept by [`OciRuntime::clean_up`] when
//! the agent starts: libcontainer's state directory (one per node, under /run) and the bundles.

pub mod attach;
mod seccomp_default;
pub mod shim;
pub mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{oneshot, watch};

use crate::images::{ImageKind, OciImage};
use crate::{
    BoxFuture, ContainerSpec, ExitStatus, Running, Runtime, SeccompProfile, StartError, StopRequest,
};
use shim::Report;

/// How the backend is set up on a node.
#[derive(Clone, Debug)]
pub struct OciConfig {
    /// The program that is the shim (the `drover` binary: `drover shim ...`).
    pub shim_program: PathBuf,
    /// libcontainer's state directory. Under /run: the notify socket inside must stay within
    /// the 108 bytes of a unix socket path.
    pub state_root: PathBuf,
    /// Where containers' bundles (spec, writable layer, rootfs mount point) live.
    pub bundles_dir: PathBuf,
    /// Whether `privileged: true` containers may run here.
    pub allow_privileged: bool,
    /// The most processes one container may have.
    pub pids_limit: i64,
    /// Where `Localhost` seccomp profiles are (`NODE_DIR/seccomp`, as the kubelet's
    /// `/var/lib/kubelet/seccomp`).
    pub seccomp_root: PathBuf,
}

impl OciConfig {
    /// The usual layout for a node whose data lives in `node_dir`.
    pub fn for_node(node_dir: &Path, shim_program: PathBuf) -> OciConfig {
        let id = crate::images::sha256_digest(node_dir.to_string_lossy().as_bytes());
        OciConfig {
            shim_program,
            state_root: PathBuf::from("/run/drover-oci").join(&id[7..23]),
            bundles_dir: node_dir.join("containers"),
            allow_privileged: false,
            pids_limit: 4096,
            seccomp_root: node_dir.join("seccomp"),
        }
    }
}

/// Why an exec could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("{0}")]
    Failed(String),
}

pub struct OciRuntime {
    config: OciConfig,
    /// Running containers by `namespace/pod/container`: their libcontainer ids.
    running: Mutex<HashMap<String, String>>,
    sequence: AtomicU64,
}

fn running_key(namespace: &str, pod: &str, container: &str) -> String {
    format!("{namespace}/{pod}/{container}")
}

/// Whether the host has the unified cgroup hierarchy only.
pub fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

impl OciRuntime {
    pub fn new(config: OciConfig) -> std::io::Result<Arc<OciRuntime>> {
        std::fs::create_dir_all(&config.state_root)?;
        std::fs::create_dir_all(&config.bundles_dir)?;
        Ok(Arc::new(OciRuntime {
            config,
            running: Mutex::new(HashMap::new()),
            sequence: AtomicU64::new(0),
        }))
    }

    /// Removes containers a previous agent left behind (killed shims, a node restart): kills
    /// their processes, deletes their cgroups and state, unmounts and removes their bundles.
    pub async fn clean_up(&self) {
        let ids: Vec<String> = std::fs::read_dir(&self.config.state_root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for id in ids {
            let status = Command::new(&self.config.shim_program)
                .args(["shim", "delete", "--root"])
                .arg(&self.config.state_root)
                .args(["--id", &id])
                .stdin(Stdio::null())
                .status()
                .await;
            if !status.is_ok_and(|s| s.success()) {
                tracing::warn!(container = %id, "could not delete a container left behind");
                let _ = std::fs::remove_dir_all(self.config.state_root.join(&id));
            }
        }
        // Sockets of shims that are gone (a shim removes its own when it ends).
        let sockets = attach::socket_dir(&self.config.state_root);
        for socket in std::fs::read_dir(&sockets).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(socket.path());
        }
        let bundles: Vec<PathBuf> = std::fs::read_dir(&self.config.bundles_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        for bundle in bundles {
            remove_bundle(&bundle);
        }
        let pods = self.pod_dir("x");
        let pods = pods.parent().unwrap_or(&pods);
        for pod in std::fs::read_dir(pods).into_iter().flatten().flatten() {
            self.release_pod(&pod.file_name().to_string_lossy());
        }
    }

    fn lookup(&self, namespace: &str, pod: &str, container: &str) -> Option<String> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&running_key(namespace, pod, container))
            .cloned()
    }

    /// Starts `argv` inside a running container: stdout and stderr piped, stdin piped when
    /// asked (null otherwise). The child exits with the command's exit code.
    pub fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        argv: Vec<String>,
        stdin: bool,
    ) -> Result<Child, ExecError> {
        self.exec_with_pid_file(namespace, pod, container, argv, stdin, None)
    }

    fn exec_with_pid_file(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        argv: Vec<String>,
        stdin: bool,
        pid_file: Option<&Path>,
    ) -> Result<Child, ExecError> {
        let id = self
            .lookup(namespace, pod, container)
            .ok_or_else(|| ExecError::NotRunning(format!("{namespace}/{pod}/{container}")))?;
        if argv.is_empty() {
            return Err(ExecError::Failed("no command given".into()));
        }
        let mut command = Command::new(&self.config.shim_program);
        command
            .args(["shim", "exec", "--root"])
            .arg(&self.config.state_root)
            .args(["--id", &id]);
        if let Some(file) = pid_file {
            command.arg("--pid-file").arg(file);
        }
        command
            .arg("--")
            .args(&argv)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ExecError::Failed(format!("cannot start the shim: {e}")))
    }

    /// Starts `argv` inside a running container on a terminal of its own (`kubectl exec -t`):
    /// the shim is told to have libcontainer make the terminal in the container and pass its
    /// controlling side to a console socket here. The child's stdout and stderr carry only the
    /// shim's own errors.
    pub async fn exec_terminal(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        argv: Vec<String>,
    ) -> Result<(Child, crate::terminal::Terminal), ExecError> {
        let id = self
            .lookup(namespace, pod, container)
            .ok_or_else(|| ExecError::NotRunning(format!("{namespace}/{pod}/{container}")))?;
        if argv.is_empty() {
            return Err(ExecError::Failed("no command given".into()));
        }
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let socket = self.config.bundles_dir.join(format!(".console-{n}.sock"));
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket)
            .map_err(|e| ExecError::Failed(format!("{}: {e}", socket.display())))?;
        let spawned = Command::new(&self.config.shim_program)
            .args(["shim", "exec", "--root"])
            .arg(&self.config.state_root)
            .args(["--id", &id, "--console-socket"])
            .arg(&socket)
            .arg("--")
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&socket);
                return Err(ExecError::Failed(format!("cannot start the shim: {e}")));
            }
        };
        // The terminal arrives once the command is set up; a shim that exits first failed.
        let received = tokio::select! {
            t = tokio::time::timeout(
                Duration::from_secs(30),
                crate::terminal::receive(&listener, &socket),
            ) => match t {
                Ok(Ok(t)) => Ok(t),
                Ok(Err(e)) => Err(format!("no terminal from the container: {e}")),
                Err(_) => Err("no terminal from the container within 30s".to_string()),
            },
            _ = child.wait() => Err(String::new()),
        };
        let _ = std::fs::remove_file(&socket);
        match received {
            Ok(terminal) => Ok((child, terminal)),
            Err(message) => {
                let _ = child.start_kill();
                let out = child.wait_with_output().await;
                let said = out
                    .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
                    .unwrap_or_default();
                Err(ExecError::Failed(
                    [message, said]
                        .into_iter()
                        .filter(|m| !m.is_empty())
                        .collect::<Vec<_>>()
                        .join(": "),
                ))
            }
        }
    }

    /// A connection to the attach socket of a running container (`kubectl attach`).
    pub async fn attach(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<tokio::net::UnixStream, ExecError> {
        let id = self
            .lookup(namespace, pod, container)
            .ok_or_else(|| ExecError::NotRunning(format!("{namespace}/{pod}/{container}")))?;
        let path = attach::socket_path(&self.config.state_root, &id);
        tokio::net::UnixStream::connect(&path)
            .await
            .map_err(|e| ExecError::Failed(format!("cannot attach to container {container}: {e}")))
    }

    /// Runs `argv` in the container to completion (exec probes): its exit code and output.
    pub async fn exec_output(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        argv: Vec<String>,
        timeout: Duration,
    ) -> Result<(i32, String), ExecError> {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let pid_file = self.config.bundles_dir.join(format!(".exec-{n}.pid"));
        let child =
            self.exec_with_pid_file(namespace, pod, container, argv, false, Some(&pid_file))?;
        let result = tokio::time::timeout(timeout, child.wait_with_output()).await;
        if result.is_err() {
            // Timed out: the shim is killed as its Child is dropped, but the command runs on
            // inside the container; kill it too, or hung probes pile up period after period.
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
                .and_then(rustix::process::Pid::from_raw);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let _ = std::fs::remove_file(&pid_file);
        match result {
            Ok(Ok(out)) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                Ok((out.status.code().unwrap_or(137), text))
            }
            Ok(Err(e)) => Err(ExecError::Failed(e.to_string())),
            Err(_) => Err(ExecError::Failed(format!(
                "command timed out after {}s",
                timeout.as_secs()
            ))),
        }
    }

    fn pod_dir(&self, pod_uid: &str) -> PathBuf {
        let uid: String = pod_uid
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(32)
            .collect();
        let mut pods = self.config.state_root.clone().into_os_string();
        pods.push("-pods");
        PathBuf::from(pods).join(uid)
    }

    /// The pod's IPC and UTS namespaces, made at its first container: namespace files
    /// bind-mounted by util-linux `unshare`, which also sets the pod's hostname in the UTS one
    /// (Kubernetes keeps them in a pause container; a file needs no process).
    /// The seccomp profile `file` names in the node's seccomp directory: a relative path of
    /// plain names to a JSON file with the OCI (and Docker) profile fields.
    fn localhost_profile(&self, file: &str) -> Result<serde_json::Value, StartError> {
        let plain = !file.is_empty()
            && Path::new(file)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(StartError::Config(format!(
                "seccomp profile {file:?} must be a relative path inside {}",
                self.config.seccomp_root.display()
            )));
        }
        let path = self.config.seccomp_root.join(file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            StartError::Config(format!(
                "cannot read seccomp profile {}: {e}",
                path.display()
            ))
        })?;
        let profile: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            StartError::Config(format!(
                "seccomp profile {} is not JSON: {e}",
                path.display()
            ))
        })?;
        if !profile["defaultAction"].is_string() {
            return Err(StartError::Config(format!(
                "seccomp profile {} has no defaultAction",
                path.display()
            )));
        }
        Ok(profile)
    }

    fn pod_namespaces(&self, pod_uid: &str, hostname: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let dir = self.pod_dir(pod_uid);
        let (ipc, uts) = (dir.join("ipc"), dir.join("uts"));
        if is_namespace(&ipc) && is_namespace(&uts) {
            return Ok((ipc, uts));
        }
        self.release_pod(pod_uid);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(&ipc, b"")?;
        std::fs::write(&uts, b"")?;
        let hostname = if hostname.is_empty() { "pod" } else { hostname };
        let out = std::process::Command::new("unshare")
            .arg(format!("--ipc={}", ipc.display()))
            .arg(format!("--uts={}", uts.display()))
            .args(["hostname", "--", hostname])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            self.release_pod(pod_uid);
            return Err(std::io::Error::other(format!(
                "unshare: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok((ipc, uts))
    }

    /// Gives back what the pod's containers shared (its IPC and UTS namespaces): when the pod
    /// is deleted, or has finished.
    pub fn release_pod(&self, pod_uid: &str) {
        let dir = self.pod_dir(pod_uid);
        for ns in ["ipc", "uts"] {
            let _ = rustix::mount::unmount(dir.join(ns), rustix::mount::UnmountFlags::DETACH);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn container_id(&self, spec: &ContainerSpec) -> String {
        let uid: String = spec
            .pod_uid
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        let name: String = spec
            .container
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(20)
            .collect();
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!("{uid}-{name}-{n}")
    }

    /// Steps 1 and 2: the rootfs and the spec, in the bundle. Blocking (mounts, files).
    fn prepare(
        &self,
        spec: &ContainerSpec,
        image: &OciImage,
        id: &str,
    ) -> Result<PathBuf, StartError> {
        let bundle = self.config.bundles_dir.join(id);
        let io = |what: &str, e: std::io::Error| StartError::Config(format!("{what}: {e}"));
        let rootfs = bundle.join("rootfs");
        for dir in [&rootfs, &bundle.join("upper"), &bundle.join("work")] {
            std::fs::create_dir_all(dir)
                .map_err(|e| io("cannot make the container's directories", e))?;
        }
        if image.layers.is_empty() {
            return Err(StartError::InvalidImage(format!(
                "image {:?} has no layers",
                spec.image.reference
            )));
        }
        mount_overlay(&bundle, &image.layers)
            .map_err(|e| io("cannot mount the root filesystem", e))?;

        let linux = &spec.linux;
        let sec = &linux.security;
        let read_etc = |name: &str| read_image_file(&rootfs, name);
        let (image_uid, image_gid) = match image.config.user.as_deref().filter(|u| !u.is_empty()) {
            Some(user) => spec::resolve_user(user, &read_etc("passwd"), &read_etc("group"))
                .map_err(StartError::Config)?,
            None => (0, 0),
        };
        let uid = sec.run_as_user.unwrap_or(image_uid);
        // runAsUser alone: the user's primary group from the image, if it lists the user.
        let gid = match (sec.run_as_group, sec.run_as_user) {
            (Some(g), _) => g,
            (None, Some(u)) => {
                spec::resolve_user(&u.to_string(), &read_etc("passwd"), "").map_or(0, |(_, g)| g)
            }
            (None, None) => image_gid,
        };
        if sec.run_as_non_root && uid == 0 {
            return Err(StartError::Config(
                "container has runAsNonRoot and image will run as root".into(),
            ));
        }
        if sec.privileged && !self.config.allow_privileged {
            return Err(StartError::Config(
                "privileged containers are not allowed on this node (start it with --allow-privileged)"
                    .into(),
            ));
        }
        let pod_ns = self
            .pod_namespaces(&spec.pod_uid, &linux.hostname)
            .map_err(|e| {
                StartError::Config(format!("cannot make the pod's IPC and UTS namespaces: {e}"))
            })?;
        let env = spec::environment(&image.config.env, &spec.env);
        let argv = spec::argv(
            &image.config,
            linux.command.as_deref(),
            linux.args.as_deref(),
        )
        .map_err(StartError::InvalidImage)?;
        let cwd = linux
            .working_dir
            .clone()
            .or_else(|| image.config.working_dir.clone())
            .filter(|d| d.starts_with('/'))
            .unwrap_or_else(|| "/".into());
        spec::find_executable(&rootfs, &spec.mounts, &argv[0], &cwd, &env)
            .map_err(StartError::InvalidImage)?;
        let capabilities = spec::capabilities(
            &sec.capabilities_add,
            &sec.capabilities_drop,
            sec.privileged,
        );
        // Privileged containers are unconfined, as under containerd.
        let seccomp = match (&sec.seccomp, sec.privileged) {
            (_, true) | (SeccompProfile::Unconfined, _) => None,
            (SeccompProfile::RuntimeDefault, _) => Some(spec::default_seccomp(&capabilities)),
            (SeccompProfile::Localhost(file), _) => Some(self.localhost_profile(file)?),
        };
        let oci = spec::build(&spec::SpecInputs {
            argv,
            env,
            terminal: linux.tty,
            cwd,
            uid,
            gid,
            hostname: linux.hostname.clone(),
            rootfs: &rootfs,
            read_only_root: sec.read_only_root_filesystem,
            netns: spec.netns.as_deref(),
            pod_namespaces: Some((&pod_ns.0, &pod_ns.1)),
            mounts: &spec.mounts,
            cgroups_path: format!("/drover/{id}"),
            memory_limit: spec.memory_limit,
            cpu_request_millis: linux.cpu_request,
            cpu_limit_millis: spec.cpu_limit,
            pids_limit: self.config.pids_limit,
            capabilities,
            privileged: sec.privileged,
            no_new_privileges: !sec.privileged && sec.allow_privilege_escalation != Some(true),
            host_pid: sec.host_pid,
            host_ipc: sec.host_ipc,
            seccomp,
            cgroup_v2: cgroup_v2(),
        })
        .map_err(StartError::Config)?;
        oci.save(bundle.join("config.json"))
            .map_err(|e| StartError::Config(format!("cannot write the container spec: {e}")))?;
        Ok(bundle)
    }

    async fn start_container(self: Arc<Self>, spec: ContainerSpec) -> Result<Running, StartError> {
        let ImageKind::Oci(image) = spec.image.kind.clone() else {
            return Err(StartError::InvalidImage(format!(
                "image {:?} is a WebAssembly image; the oci runtime runs container images",
                spec.image.reference
            )));
        };
        let id = self.container_id(&spec);
        let prepared = {
            let (me, spec, id) = (self.clone(), spec.clone(), id.clone());
            tokio::task::spawn_blocking(move || me.prepare(&spec, &image, &id))
                .await
                .map_err(|e| StartError::Config(e.to_string()))?
        };
        let bundle = match prepared {
            Ok(b) => b,
            Err(e) => {
                remove_bundle(&self.config.bundles_dir.join(&id));
                return Err(e);
            }
        };
        let mut shim = match Command::new(&self.config.shim_program)
            .args(["shim", "run", "--root"])
            .arg(&self.config.state_root)
            .args(["--id", &id, "--bundle"])
            .arg(&bundle)
            .arg("--log")
            .arg(spec.log.path())
            .args(["--cgroup", &format!("/drover/{id}")])
            .arg("--attach-socket")
            .arg(attach::socket_path(&self.config.state_root, &id))
            .args(spec.linux.stdin.then_some("--stdin"))
            .args(spec.linux.stdin_once.then_some("--stdin-once"))
            .args(spec.linux.tty.then_some("--tty"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                remove_bundle(&bundle);
                return Err(StartError::Config(format!(
                    "cannot start the container shim: {e}"
                )));
            }
        };
        let stdin = shim.stdin.take().expect("piped");
        let mut reports = BufReader::new(shim.stdout.take().expect("piped")).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), reports.next_line()).await;
        let pid = match first {
            Ok(Ok(Some(line))) => match serde_json::from_str::<Report>(&line) {
                Ok(Report::Started { pid }) => pid,
                Ok(Report::Failed { message }) => {
                    let _ = shim.wait().await;
                    remove_bundle(&bundle);
                    return Err(StartError::Config(message));
                }
                other => {
                    let _ = shim.kill().await;
                    remove_bundle(&bundle);
                    return Err(StartError::Config(format!(
                        "the container shim said {other:?}"
                    )));
                }
            },
            _ => {
                let _ = shim.kill().await;
                self.delete_leftover(&id).await;
                remove_bundle(&bundle);
                return Err(StartError::Config(
                    "the container shim did not report a start".into(),
                ));
            }
        };
        tracing::debug!(container = %id, pid, "started");
        let key = running_key(&spec.pod_namespace, &spec.pod_name, &spec.container);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), id.clone());

        let (exit_tx, exit_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = watch::channel(None);
        let me = self.clone();
        let meter = tokio::spawn(meter(format!("drover/{id}"), spec.usage.clone()));
        tokio::spawn(async move {
            let report = supervise(stdin, &mut reports, stop_rx.clone()).await;
            meter.abort();
            let _ = shim.wait().await;
            if report.is_none() {
                me.delete_leftover(&id).await;
            }
            let removing = bundle.clone();
            let _ = tokio::task::spawn_blocking(move || remove_bundle(&removing)).await;
            {
                let mut running = me.running.lock().unwrap_or_else(|p| p.into_inner());
                if running.get(&key) == Some(&id) {
                    running.remove(&key);
                }
            }
            let stopped = stop_rx.borrow().is_some();
            let _ = exit_tx.send(exit_status(report, stopped));
        });
        Ok(Running::new(exit_rx, stop_tx))
    }

    async fn delete_leftover(&self, id: &str) {
        let _ = Command::new(&self.config.shim_program)
            .args(["shim", "delete", "--root"])
            .arg(&self.config.state_root)
            .args(["--id", id])
            .stdin(Stdio::null())
            .status()
            .await;
    }
}

/// Passes stop requests to the shim (TERM, then KILL when the grace period is over) until it
/// reports the container's end; None if the shim died without a report.
async fn supervise(
    mut shim_stdin: ChildStdin,
    reports: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    mut stop: watch::Receiver<StopRequest>,
) -> Option<Report> {
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut terminated = false;
    let mut stop_open = true;
    loop {
        tokio::select! {
            line = reports.next_line() => match line {
                Ok(Some(line)) => match serde_json::from_str::<Report>(&line) {
                    Ok(r @ Report::Exited { .. }) => return Some(r),
                    _ => continue,
                },
                _ => return None,
            },
            changed = stop.changed(), if stop_open => {
                if changed.is_err() {
                    // Nobody can ask for a stop any more (the pod worker gave up on it): the
                    // container must not outlive it.
                    stop_open = false;
                    let _ = shim_stdin.write_all(b"KILL\n").await;
                    continue;
                }
                let Some(grace) = *stop.borrow_and_update() else { continue };
                if grace.is_zero() {
                    let _ = shim_stdin.write_all(b"KILL\n").await;
                    kill_at = None;
                } else {
                    if !terminated {
                        terminated = true;
                        let _ = shim_stdin.write_all(b"TERM\n").await;
                    }
                    let at = tokio::time::Instant::now() + grace;
                    kill_at = Some(kill_at.map_or(at, |k| k.min(at)));
                }
            }
            _ = async { tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)).await }, if kill_at.is_some() => {
                let _ = shim_stdin.write_all(b"KILL\n").await;
                kill_at = None;
            }
        }
    }
}

/// Copies the container's CPU time and memory from its cgroup into `usage` every few seconds
/// (for `kubectl top` and autoscaling), on cgroup v1 or v2.
async fn meter(cgroup: String, usage: Arc<crate::usage::Usage>) {
    let read = |path: String| std::fs::read_to_string(path).ok();
    let mut counted_nanos = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let cpu_nanos = read(format!("/sys/fs/cgroup/cpuacct/{cgroup}/cpuacct.usage"))
            .and_then(|t| t.trim().parse::<u64>().ok())
            .or_else(|| {
                read(format!("/sys/fs/cgroup/{cgroup}/cpu.stat")).and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|us| us * 1000)
                })
            });
        if let Some(total) = cpu_nanos {
            usage.add_cpu(total.saturating_sub(counted_nanos));
            counted_nanos = counted_nanos.max(total);
        }
        let memory = read(format!(
            "/sys/fs/cgroup/memory/{cgroup}/memory.usage_in_bytes"
        ))
        .or_else(|| read(format!("/sys/fs/cgroup/{cgroup}/memory.current")))
        .and_then(|t| t.trim().parse::<u64>().ok());
        if let Some(bytes) = memory {
            usage.set_memory(bytes);
        }
    }
}

/// How the container ended, from the shim's report and whether it was asked to stop.
fn exit_status(report: Option<Report>, stop_requested: bool) -> ExitStatus {
    match report {
        Some(Report::Exited {
            oom_killed: true, ..
        }) => ExitStatus::OomKilled,
        Some(Report::Exited {
            signal: Some(9), ..
        }) if stop_requested => ExitStatus::Stopped,
        Some(Report::Exited { code: Some(c), .. }) => ExitStatus::Exited(c),
        Some(Report::Exited {
            signal: Some(s), ..
        }) => ExitStatus::Exited(128 + s),
        Some(_) | None => ExitStatus::Failed {
            exit_code: 128,
            message: "the container shim ended without reporting the container's exit".into(),
        },
    }
}

/// A file of the image's /etc (passwd, group), read by the agent as root: only a regular file
/// reached without symbolic links (the image's links point into the image, not the host), and
/// at most 1 MiB of it. Anything else reads as empty.
fn read_image_file(rootfs: &Path, name: &str) -> String {
    use std::io::Read;
    let etc = rootfs.join("etc");
    let plain = |p: &Path, dir: bool| {
        std::fs::symlink_metadata(p).is_ok_and(|m| if dir { m.is_dir() } else { m.is_file() })
    };
    let path = etc.join(name);
    if !plain(&etc, true) || !plain(&path, false) {
        return String::new();
    }
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(&path) {
        let _ = f.take(1 << 20).read_to_string(&mut text);
    }
    text
}

/// Whether `path` is a bind-mounted namespace (nsfs), not the empty file under it.
fn is_namespace(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type == NSFS_MAGIC)
}

/// Mounts the container's root filesystem: the image's layers under its own writable layer.
fn mount_overlay(bundle: &Path, layers: &[PathBuf]) -> std::io::Result<()> {
    // overlayfs lists lower layers top first; the image lists them bottom first.
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    for l in &lower {
        if l.contains([',', ':']) {
            return Err(std::io::Error::other(format!(
                "layer path {l:?} cannot be named to overlayfs"
            )));
        }
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        bundle.join("upper").display(),
        bundle.join("work").display()
    );
    let data = std::ffi::CString::new(data).map_err(std::io::Error::other)?;
    rustix::mount::mount(
        "overlay",
        bundle.join("rootfs"),
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(data.as_c_str()),
    )
    .map_err(std::io::Error::from)
}

/// Unmounts a bundle's rootfs (if mounted) and removes the bundle.
fn remove_bundle(bundle: &Path) {
    if bundle.is_file() {
        // An exec's pid file left by a crash.
        let _ = std::fs::remove_file(bundle);
        return;
    }
    let rootfs = bundle.join("rootfs");
    // Detach: a process still holding a file open must not keep the bundle.
    let _ = rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::DETACH);
    if let Err(e) = std::fs::remove_dir_all(bundle) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(bundle = %bundle.display(), "cannot remove a container bundle: {e}");
        }
    }
}

impl Runtime for Arc<OciRuntime> {
    fn handler(&self) -> &'static str {
        "oci"
    }

    fn start(&self, spec: ContainerSpec) -> BoxFuture<'_, Result<Running, StartError>> {
        Box::pin(self.clone().start_container(spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_told_apart() {
        let exited = |code, signal, oom_killed| {
            Some(Report::Exited {
                code,
                signal,
                oom_killed,
            })
        };
        assert_eq!(
            exit_status(exited(Some(0), None, false), false),
            ExitStatus::Exited(0)
        );
        assert_eq!(
            exit_status(exited(Some(3), None, false), true),
            ExitStatus::Exited(3)
        );
        assert_eq!(
            exit_status(exited(None, Some(9), true), false),
            ExitStatus::OomKilled
        );
        assert_eq!(
            exit_status(exited(None, Some(9), false), true),
            ExitStatus::Stopped
        );
        assert_eq!(
            exit_status(exited(None, Some(15), false), false),
            ExitStatus::Exited(143)
        );
        assert!(matches!(
            exit_status(None, false),
            ExitStatus::Failed { .. }
        ));
    }
}
