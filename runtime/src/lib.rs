//! Drover's container runtimes: the [`Runtime`] trait the node agent drives, its `wasm`
//! backend on wasmtime ([`wasm::WasmRuntime`]), the content-addressed [`images::ImageStore`],
//! and the container log files ([`logs`]).
//!
//! Knows containers as [`ContainerSpec`]s and never talks to the API server: the node agent
//! turns pods into specs and exit statuses back into pod status.

pub mod images;
pub mod layers;
pub mod logs;
pub mod netns;
pub mod oci;
pub mod outbound;
pub mod registry;
pub mod terminal;
pub mod usage;
pub mod wasm;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

/// Everything a runtime needs to start one container of a pod.
#[derive(Clone)]
pub struct ContainerSpec {
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub container: String,
    /// The image, already in the node's store.
    pub image: images::StoredImage,
    /// argv, the program name first.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    /// Where the container's stdout and stderr go.
    pub log: logs::LogFile,
    /// Bytes of linear memory an instance may have.
    pub memory_limit: Option<u64>,
    /// Share of one CPU an instance may use, in millicores.
    pub cpu_limit: Option<u64>,
    /// Where an HTTP function listens (the pod's address and the container's port).
    pub listen: Option<SocketAddr>,
    /// Requests an HTTP function serves at once (Knative's containerConcurrency); more wait
    /// for a place. None: no limit.
    pub max_concurrency: Option<u32>,
    /// The pod's network namespace (a /run/netns file), where its sockets are made; None
    /// for pods on the node's own network (loopback pod addresses).
    pub netns: Option<PathBuf>,
    /// How the container's outgoing connections are made (None: it may make none).
    pub outbound: Option<Arc<dyn outbound::Outbound>>,
    /// Where the runtime counts what the container uses.
    pub usage: Arc<usage::Usage>,
    /// What only Linux containers use (the Wasm backend ignores it).
    pub linux: LinuxOptions,
}

/// The parts of a container's spec that only Linux containers have: the pod's command and
/// args before they are merged with the image's Entrypoint and Cmd, the security context,
/// the CPU request.
#[derive(Clone, Debug, Default)]
pub struct LinuxOptions {
    /// The container's `command` (Entrypoint override), with `$(VAR)` expanded.
    pub command: Option<Vec<String>>,
    /// The container's `args` (Cmd override), with `$(VAR)` expanded.
    pub args: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub hostname: String,
    /// CPU request in millicores: the container's cpu shares.
    pub cpu_request: Option<u64>,
    /// `stdin`: the container's stdin stays open for `kubectl attach`; `stdinOnce`: until the
    /// first attachment ends; `tty`: it runs on a terminal.
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub security: Security,
}

/// A container's securityContext, merged with the pod's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Security {
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub run_as_non_root: bool,
    pub read_only_root_filesystem: bool,
    pub privileged: bool,
    /// Kubernetes defaults allowPrivilegeEscalation to true; false sets no_new_privs
    /// (Drover sets it whenever the container is not privileged, as hardening by default).
    pub allow_privilege_escalation: Option<bool>,
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    /// The pod's `hostPID` and `hostIPC`: the container shares the host's process and IPC
    /// namespaces (Pod Security admission decides who may ask).
    pub host_pid: bool,
    pub host_ipc: bool,
    /// `seccompProfile`, the container's over the pod's.
    pub seccomp: SeccompProfile,
}

/// A container's seccomp profile, as `securityContext.seccompProfile` names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SeccompProfile {
    /// The runtime's default filter (also where none is named, as Kubernetes' kubelet does
    /// with `seccompDefault`).
    #[default]
    RuntimeDefault,
    /// No filter.
    Unconfined,
    /// A profile file on the node, relative to its seccomp directory (`NODE_DIR/seccomp`).
    Localhost(String),
}

/// A host directory the container sees at `guest_path`.
#[derive(Clone, Debug)]
pub struct Mount {
    pub host_path: PathBuf,
    pub guest_path: String,
    pub read_only: bool,
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// The program exited with this code.
    Exited(i32),
    /// It needed more memory than its limit allowed.
    OomKilled,
    /// It was stopped from outside (pod deletion, liveness failure).
    Stopped,
    /// It could not start or it trapped: the reason, for the container's status message.
    Failed { exit_code: i32, message: String },
}

impl ExitStatus {
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitStatus::Exited(c) => *c,
            ExitStatus::OomKilled | ExitStatus::Stopped => 137,
            ExitStatus::Failed { exit_code, .. } => *exit_code,
        }
    }
}

/// Why a container could not be started at all.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The image is not something this runtime can run (reason for `CreateContainerError`).
    #[error("{0}")]
    InvalidImage(String),
    /// The configuration cannot be applied (a mount, a port in use, a limit too small).
    #[error("{0}")]
    Config(String),
}

/// What a container's stop channel says: `None` while it may run; `Some(grace)` once it must
/// stop: asked politely (SIGTERM), then forced (SIGKILL) when the grace period is over.
pub type StopRequest = Option<Duration>;

/// A started container: its end, and the means to stop it.
pub struct Running {
    pub exit: oneshot::Receiver<ExitStatus>,
    stop: watch::Sender<StopRequest>,
    /// Where the runtime itself serves the container (an HTTP function's listener).
    pub serving: Option<std::net::SocketAddr>,
}

impl Running {
    pub fn new(exit: oneshot::Receiver<ExitStatus>, stop: watch::Sender<StopRequest>) -> Running {
        Running {
            exit,
            stop,
            serving: None,
        }
    }

    /// The same, serving on `addr`.
    pub fn serving_on(mut self, addr: std::net::SocketAddr) -> Running {
        self.serving = Some(addr);
        self
    }

    /// Stops the container at once; its `exit` then reports `Stopped`.
    pub fn stop(&self) {
        self.stop.send_replace(Some(Duration::ZERO));
    }

    /// A handle that can stop the container after `Running` is consumed.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }
}

#[derive(Clone)]
pub struct Stopper(watch::Sender<StopRequest>);

impl Stopper {
    /// Stops the container at once.
    pub fn stop(&self) {
        self.stop_within(Duration::ZERO);
    }

    /// Asks the container to stop, and forces it after `grace`. A second request can shorten
    /// the grace period but never lengthen it.
    pub fn stop_within(&self, grace: Duration) {
        self.0.send_if_modified(|current| match *current {
            Some(old) if old <= grace => false,
            _ => {
                *current = Some(grace);
                true
            }
        });
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A way of running containers (a RuntimeClass handler).
pub trait Runtime: Send + Sync {
    /// The RuntimeClass handler name (`wasm`, later `oci`).
    fn handler(&self) -> &'static str;

    /// Starts a container; resolves once it is running (or could not start).
    fn start(&self, spec: ContainerSpec) -> BoxFuture<'_, Result<Running, StartError>>;
}

pub type SharedRuntime = Arc<dyn Runtime>;
