//! One pod on this node: a worker task that prepares the pod's network and volumes, runs its
//! init containers then its containers through the runtime, restarts them under the restart
//! policy with crash-loop back-off, runs their probes, reports the pod's status to the API, and
//! on deletion stops everything within the grace period and removes the pod.
//!
//! The worker goes through the stages of [`Stage`]; which event moves it on is decided in
//! `lifecycle` (`Stage::next`), and [`Worker::enter`] is the one place the stage changes:
//!
//! - `Preparing { network, volumes }`: the pod's network (`PodNet::attach`) and its volumes
//!   (`volumes::sync`) are made. Whichever failed is tried again at the next refresh (every
//!   5 s), and the containers wait meanwhile (`ContainerCreating` with the sandbox error, or
//!   `CreateContainerConfigError`). With both in place the pod is `Running`.
//! - `Running`: [`Worker::advance`] starts the next init container, or every container once the
//!   init containers succeeded. An exit is decided by `lifecycle` (restart after crash-loop
//!   back-off, or done for good); configMap and secret volume files are rewritten at every
//!   refresh. Once the pod has Succeeded or Failed, it is `Finished`.
//! - `Finished`: nothing starts again and the pod's network goes back at once, as the kubelet
//!   tears a finished pod's sandbox down (completed Jobs would otherwise hold their node's
//!   range); volume files are still refreshed.
//! - `Terminating`, from any stage, when the pod is being deleted or is gone from the API:
//!   every container is stopped within the grace period, exits are final and no status is
//!   reported; then the network goes back, the pod's files are removed and (on deletion) the
//!   pod is deleted from the API with a uid precondition. The worker ends there.
//!
//! Starting one container ([`Worker::start`]) is a row of steps: the image (pulled as the pull
//! policy says), the environment, the runtime that runs that kind of image, the mounts, the
//! log file, the runtime's [`ContainerSpec`], and the runtime start. The first step that fails
//! says why in a [`NotStarted`]: the waiting reason the container shows (`ErrImagePull`,
//! `ImagePullBackOff`, `ErrImageNeverPull`, `CreateContainerConfigError`,
//! `CreateContainerError`, `RunContainerError`), the `Failed` event if there is one, and when
//! the container is tried again.
//!
//! Decisions come from `lifecycle` (pure); this file does the I/O. Everything that happens to
//! the pod arrives as a [`Msg`] on one channel, so the worker's state is only ever touched by
//! its own loop.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, PodSpec, PodStatus};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;
use runtime::images::{ImageKind, ImageStore, StoredImage};
use runtime::logs::LogFile;
use runtime::{ContainerSpec, ExitStatus, Running, SharedRuntime, StartError, Stopper};
use serde_json::json;
use tokio::sync::mpsc;

use crate::env::{self, Sources};
use crate::lifecycle::{
    self, backoff, termination_reason, ContainerState, ContainerStatus, RestartPolicy, Stage,
    StageEvent, BACKOFF_RESET_AFTER,
};
use crate::probe::{self, Counter, Kind};
use crate::volumes;
use kubeclient::events::Type::{Normal, Warning};

/// What every pod worker on this node shares.
pub struct NodeContext {
    pub node_name: String,
    pub host_ip: IpAddr,
    pub pods_dir: PathBuf,
    /// The Wasm runtime.
    pub runtime: SharedRuntime,
    /// The Linux container runtime, when this node runs containers (as root).
    pub oci: Option<Arc<runtime::oci::OciRuntime>>,
    pub images: Arc<ImageStore>,
    pub client: kube::Client,
    /// The first crash-loop back-off (Kubernetes: 10 s), doubled per restart up to 5 min.
    pub backoff_base: Duration,
    pub logs: Arc<crate::logserver::LogIndex>,
    pub events: Arc<kubeclient::events::Recorder>,
    pub registries: Arc<runtime::registry::Registries>,
    pub usage: Arc<crate::metrics::PodUsage>,
    pub network: Arc<crate::network::PodNet>,
}

/// News of the pod from the API.
pub enum PodUpdate {
    Changed(Box<Pod>),
    /// The pod is gone from the API (deleted without grace, or bound elsewhere).
    Gone,
}

enum Msg {
    Update(PodUpdate),
    Exited {
        index: usize,
        generation: u64,
        status: ExitStatus,
    },
    Probe(probe::Outcome),
    /// A container's back-off (or image/config retry) is over.
    Retry {
        index: usize,
        generation: u64,
    },
    /// Time to refresh configMap and secret volume files.
    Refresh,
}

/// A running container's handle and probe state.
struct Live {
    stopper: Stopper,
    started: Instant,
    probes: Vec<tokio::task::JoinHandle<()>>,
    liveness: Counter,
    readiness: Counter,
    startup: Counter,
    /// Stopped by us (liveness failure or deletion), not exited by itself.
    killed: Option<String>,
    /// Where exec hooks and probes run (Linux containers).
    exec: Option<probe::ExecTarget>,
}

struct Slot {
    spec: Container,
    init: bool,
    status: ContainerStatus,
    generation: u64,
    live: Option<Live>,
    /// Restarts since the back-off was last reset.
    backoff_level: u32,
}

/// Starts the worker of `pod`, with the pod address the agent chose; returns its mailbox.
pub fn spawn(ctx: Arc<NodeContext>, pod: Pod, pod_ip: IpAddr) -> mpsc::UnboundedSender<PodUpdate> {
    let (updates_tx, mut updates_rx) = mpsc::unbounded_channel();
    let (tx, rx) = mpsc::unbounded_channel();
    let forward = tx.clone();
    tokio::spawn(async move {
        while let Some(u) = updates_rx.recv().await {
            if forward.send(Msg::Update(u)).is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let mut worker = Worker::new(ctx, pod, pod_ip, tx);
        worker.run(rx).await;
    });
    updates_tx
}

struct Worker {
    ctx: Arc<NodeContext>,
    pod: Pod,
    api: Api<Pod>,
    sources: Sources,
    pod_ip: IpAddr,
    dir: PathBuf,
    policy: RestartPolicy,
    slots: Vec<Slot>,
    volumes: BTreeMap<String, (PathBuf, bool)>,
    /// The pod's network namespace once made (routed networking; None in loopback mode).
    netns: Option<PathBuf>,
    /// Where the pod is in its life on this node; changed only by [`Worker::enter`].
    stage: Stage,
    start_time: String,
    tx: mpsc::UnboundedSender<Msg>,
    probe_tx: mpsc::Sender<probe::Outcome>,
    probe_rx: Option<mpsc::Receiver<probe::Outcome>>,
}

/// What the worker's loop does once a message is handled.
enum After {
    /// Report the pod's status (and give a finished pod's network back).
    Report,
    /// Nothing more: wait for the next message.
    Wait,
    /// The worker is done.
    Stop,
}

/// Why a container did not start this time: the waiting reason and message its status shows,
/// the message of the `Failed` warning event that says so (when there is one), and when it is
/// tried again.
struct NotStarted {
    reason: &'static str,
    message: String,
    event: Option<String>,
    retry: Retry,
}

/// When a container that did not start is tried again.
enum Retry {
    /// After a fixed time (configuration the user may fix at any moment).
    After(Duration),
    /// After the image pull back-off: one more failed pull in a row.
    PullBackOff,
    /// After the crash-loop back-off, one level up as after a crash.
    CrashLoopBackOff,
}

impl NotStarted {
    /// Tried again after `secs` seconds.
    fn after(reason: &'static str, message: String, event: Option<String>, secs: u64) -> Self {
        NotStarted {
            reason,
            message,
            event,
            retry: Retry::After(Duration::from_secs(secs)),
        }
    }

    /// The image could not be had: its reason (`ErrImagePull`, `ErrImageNeverPull`) and
    /// message, also the event's.
    fn image((reason, message): (&'static str, String)) -> Self {
        NotStarted {
            reason,
            event: Some(message.clone()),
            message,
            retry: Retry::PullBackOff,
        }
    }

    /// The runtime refused to start the container.
    fn runtime(e: StartError) -> Self {
        let reason = match e {
            StartError::InvalidImage(_) => "CreateContainerError",
            StartError::Config(_) => "RunContainerError",
        };
        NotStarted {
            reason,
            message: e.to_string(),
            event: Some(format!("Error: {e}")),
            retry: Retry::CrashLoopBackOff,
        }
    }
}

fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// One slot per init container then per container, their restart counts carried on from what
/// the pod's status says: a restarted node takes its pods back.
fn slots_of(spec: &PodSpec, previous: &PodStatus) -> Vec<Slot> {
    let restarts_of =
        |name: &str, statuses: &Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
            statuses
                .iter()
                .flatten()
                .find(|s| s.name == name)
                .map(|s| s.restart_count.max(0) as u32)
                .unwrap_or(0)
        };
    let mut slots = Vec::new();
    for (init, list) in [
        (true, spec.init_containers.clone().unwrap_or_default()),
        (false, spec.containers.clone()),
    ] {
        for c in list {
            let mut status = ContainerStatus::new(&c.name, c.image.as_deref().unwrap_or(""));
            status.restart_count = restarts_of(
                &c.name,
                if init {
                    &previous.init_container_statuses
                } else {
                    &previous.container_statuses
                },
            );
            slots.push(Slot {
                spec: c,
                init,
                status,
                generation: 0,
                live: None,
                backoff_level: 0,
            });
        }
    }
    slots
}

/// The pod's startTime: the one it was given, or now.
fn start_time_of(previous: &PodStatus) -> String {
    previous
        .start_time
        .as_ref()
        .map(|t| {
            t.0.to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true)
        })
        .unwrap_or_else(|| humantime::format_rfc3339_seconds(SystemTime::now()).to_string())
}

impl Worker {
    fn new(
        ctx: Arc<NodeContext>,
        pod: Pod,
        pod_ip: IpAddr,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> Worker {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let previous = pod.status.clone().unwrap_or_default();
        let (probe_tx, probe_rx) = mpsc::channel(64);
        Worker {
            api: Api::namespaced(ctx.client.clone(), &ns),
            sources: Sources {
                configmaps: Api::namespaced(ctx.client.clone(), &ns),
                secrets: Api::namespaced(ctx.client.clone(), &ns),
            },
            dir: ctx.pods_dir.join(format!("{ns}_{}_{uid}", name_of(&pod))),
            policy: RestartPolicy::parse(spec.restart_policy.as_deref()),
            ctx,
            pod,
            pod_ip,
            slots: slots_of(&spec, &previous),
            volumes: BTreeMap::new(),
            netns: None,
            stage: Stage::START,
            start_time: start_time_of(&previous),
            tx,
            probe_tx,
            probe_rx: Some(probe_rx),
        }
    }

    /// Moves the pod to the stage `event` leads to.
    fn enter(&mut self, event: StageEvent) {
        let next = self.stage.next(event);
        if next != self.stage {
            tracing::debug!(pod = %self.log_name(), from = ?self.stage, to = ?next, "stage");
        }
        self.stage = next;
    }

    fn event(
        &self,
        container: Option<&str>,
        kind: kubeclient::events::Type,
        reason: &str,
        message: &str,
    ) {
        self.ctx
            .events
            .pod(&self.pod, container, kind, reason, message);
    }

    fn pod_namespace(&self) -> String {
        self.pod.metadata.namespace.clone().unwrap_or_default()
    }

    fn pod_uid(&self) -> String {
        self.pod.metadata.uid.clone().unwrap_or_default()
    }

    fn log_name(&self) -> String {
        format!(
            "{}/{}",
            self.pod.metadata.namespace.as_deref().unwrap_or(""),
            name_of(&self.pod)
        )
    }

    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut probes = self.probe_rx.take().expect("taken once");
        let ticker = self.refresh_ticker();
        if self.pod.metadata.deletion_timestamp.is_some() {
            self.finish_deletion(&mut rx).await;
            ticker.abort();
            return;
        }
        self.prepare_network().await;
        self.prepare_volumes().await;
        self.advance().await;
        self.report().await;
        loop {
            let msg = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => break },
                Some(p) = probes.recv() => Msg::Probe(p),
            };
            match self.handle(msg, &mut rx).await {
                After::Report => {}
                After::Wait => continue,
                After::Stop => break,
            }
            self.report().await;
            self.finish_if_done().await;
        }
        ticker.abort();
    }

    /// Sends a [`Msg::Refresh`] every 5 s.
    fn refresh_ticker(&self) -> tokio::task::JoinHandle<()> {
        let refresh = self.tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if refresh.send(Msg::Refresh).is_err() {
                    return;
                }
            }
        })
    }

    async fn handle(&mut self, msg: Msg, rx: &mut mpsc::UnboundedReceiver<Msg>) -> After {
        match msg {
            Msg::Update(PodUpdate::Gone) => {
                self.remove(rx).await;
                After::Stop
            }
            Msg::Update(PodUpdate::Changed(pod)) => self.on_update(*pod, rx).await,
            Msg::Exited {
                index,
                generation,
                status,
            } => {
                if self.slots[index].generation != generation {
                    return After::Wait;
                }
                self.on_exit(index, status);
                self.advance().await;
                After::Report
            }
            Msg::Retry { index, generation } => {
                if self.slots[index].generation != generation || self.stage == Stage::Terminating {
                    return After::Wait;
                }
                self.start(index).await;
                self.advance().await;
                After::Report
            }
            Msg::Probe(outcome) => match self.on_probe(outcome) {
                true => After::Report,
                false => After::Wait,
            },
            Msg::Refresh => self.on_refresh().await,
        }
    }

    /// News of the pod: kept; a deletion stops the pod and removes it.
    async fn on_update(&mut self, pod: Pod, rx: &mut mpsc::UnboundedReceiver<Msg>) -> After {
        let deleting = pod.metadata.deletion_timestamp.is_some();
        self.pod = pod;
        if deleting && self.stage != Stage::Terminating {
            self.finish_deletion(rx).await;
            return After::Stop;
        }
        After::Wait
    }

    /// Every 5 s: what is not prepared yet is tried again; written volumes are refreshed
    /// (without a status report).
    async fn on_refresh(&mut self) -> After {
        if self.stage.needs_network() {
            self.prepare_network().await;
            self.advance().await;
        }
        if self.stage.has_volumes() {
            if let Ok(v) = volumes::sync(&self.pod, &self.dir, &self.sources).await {
                self.volumes = v;
            }
            return After::Wait;
        }
        self.prepare_volumes().await;
        self.advance().await;
        After::Report
    }

    /// A pod that has Succeeded or Failed runs nothing again: it is `Finished`, and its address
    /// and namespace go back now, as the kubelet tears a finished pod's sandbox down (completed
    /// Jobs would otherwise hold their node's range).
    async fn finish_if_done(&mut self) {
        if self.stage == Stage::Running && self.finished() {
            self.enter(StageEvent::Completed);
            self.release_network().await;
        }
    }

    /// Gives the pod its network (namespace and address); on failure the containers wait
    /// (CreatePodSandbox, as the kubelet says) and the next refresh tries again.
    async fn prepare_network(&mut self) {
        let uid = self.pod_uid();
        match self.ctx.network.attach(&uid, self.pod_ip).await {
            Ok(netns) => {
                self.netns = netns;
                self.enter(StageEvent::NetworkReady);
            }
            Err(e) => {
                let message = format!("Failed to create pod sandbox: {e:#}");
                self.event(None, Warning, "FailedCreatePodSandBox", &message);
                self.hold_unstarted("ContainerCreating", message);
            }
        }
    }

    /// Writes the pod's volumes; on failure the containers wait and the next refresh tries
    /// again.
    async fn prepare_volumes(&mut self) {
        match volumes::sync(&self.pod, &self.dir, &self.sources).await {
            Ok(v) => {
                self.volumes = v;
                self.enter(StageEvent::VolumesReady);
            }
            Err(e) => self.hold_unstarted("CreateContainerConfigError", e.0),
        }
    }

    /// Every container that is neither running nor done waits with `reason`.
    fn hold_unstarted(&mut self, reason: &str, message: String) {
        for s in self
            .slots
            .iter_mut()
            .filter(|s| s.live.is_none() && !s.status.done)
        {
            s.status.state = ContainerState::waiting(reason, Some(message.clone()));
        }
    }

    async fn release_network(&mut self) {
        let uid = self.pod_uid();
        if let Some(oci) = &self.ctx.oci {
            oci.release_pod(&uid);
        }
        self.ctx.network.detach(&uid, self.pod_ip).await;
        self.netns = None;
    }
    /// Writes the pod's /etc/hosts, /etc/hostname and /etc/resolv.conf (for Linux containers;
    /// Wasm guests resolve through the agent) and returns them as read-only mounts.
    fn write_etc_files(&self) -> std::io::Result<Vec<runtime::Mount>> {
        let dir = self.dir.join("etc");
        std::fs::create_dir_all(&dir)?;
        let files = crate::linux::etc_files(&self.pod, self.pod_ip, self.ctx.network.dns_server());
        let mut mounts = Vec::new();
        for (name, content) in files {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, content)?;
            std::fs::rename(&tmp, &path)?;
            mounts.push(runtime::Mount {
                host_path: path,
                guest_path: format!("/etc/{name}"),
                read_only: true,
            });
        }
        Ok(mounts)
    }

    fn init_done(&self) -> bool {
        self.slots
            .iter()
            .filter(|s| s.init)
            .all(|s| s.status.done && s.status.state_exit_code() == Some(0))
    }

    fn init_failed(&self) -> bool {
        self.slots
            .iter()
            .filter(|s| s.init)
            .any(|s| s.status.done && s.status.state_exit_code() != Some(0))
    }

    /// Starts whatever should run now: the next init container, or every container once the
    /// init containers are done. Only a `Running` pod starts containers.
    async fn advance(&mut self) {
        if !self.stage.runs_containers() || self.init_failed() {
            return;
        }
        let idle = |s: &Slot| s.live.is_none() && !s.status.done && s.generation == 0;
        if let Some(i) = self.slots.iter().position(|s| s.init && !s.status.done) {
            if idle(&self.slots[i]) {
                self.start(i).await;
            }
            return;
        }
        let pending: Vec<usize> = (0..self.slots.len())
            .filter(|i| !self.slots[*i].init && idle(&self.slots[*i]))
            .collect();
        for i in pending {
            self.start(i).await;
        }
    }

    fn schedule_retry(&self, index: usize, after: Duration) {
        let tx = self.tx.clone();
        let generation = self.slots[index].generation;
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(Msg::Retry { index, generation });
        });
    }

    /// Starts container `index` (again), as a new generation: the steps of [`Worker::launch`],
    /// then either a running container or one that waits to be tried again.
    async fn start(&mut self, index: usize) {
        self.slots[index].generation += 1;
        let container = self.slots[index].spec.clone();
        match self.launch(index, &container).await {
            Ok((running, is_linux)) => self.on_started(index, &container, running, is_linux),
            Err(why) => self.hold(index, why),
        }
    }

    /// The steps of a start, in order, the first that fails ending it; on success the running
    /// container and whether it is a Linux container.
    async fn launch(
        &mut self,
        index: usize,
        container: &Container,
    ) -> Result<(Running, bool), NotStarted> {
        let image = self.image(container).await.map_err(NotStarted::image)?;
        let env = self.environment(container).await?;
        let runtime = self.runtime_for(container, &image)?;
        let is_linux = matches!(image.kind, ImageKind::Oci(_));
        let mounts = self.mounts(container, is_linux)?;
        let log = self.open_log(index, container)?;
        let digest = image.digest.clone();
        let spec = self.container_spec(container, image, env, mounts, log);
        self.slots[index].status.image_id = digest;
        match runtime.start(spec).await {
            Ok(running) => Ok((running, is_linux)),
            Err(e) => {
                tracing::warn!(pod = %self.log_name(), container = %container.name, "cannot start: {e}");
                Err(NotStarted::runtime(e))
            }
        }
    }

    /// Container `index` did not start: the `Failed` event, its waiting reason, and its retry.
    fn hold(&mut self, index: usize, why: NotStarted) {
        if let Some(message) = &why.event {
            let name = self.slots[index].spec.name.clone();
            self.event(Some(&name), Warning, "Failed", message);
        }
        let base = self.ctx.backoff_base;
        let slot = &mut self.slots[index];
        let (reason, delay) = match why.retry {
            Retry::After(delay) => (why.reason, delay),
            Retry::PullBackOff => {
                let reason = lifecycle::image_pull_reason(&slot.status.state, why.reason);
                slot.status.backoff_pulls += 1;
                (reason, backoff(base, slot.status.backoff_pulls))
            }
            Retry::CrashLoopBackOff => {
                slot.backoff_level += 1;
                (why.reason, backoff(base, slot.backoff_level))
            }
        };
        slot.status.state = ContainerState::waiting(reason, Some(why.message));
        self.schedule_retry(index, delay);
    }

    /// The container's environment; a missing key or object is `CreateContainerConfigError`.
    async fn environment(
        &self,
        container: &Container,
    ) -> Result<Vec<(String, String)>, NotStarted> {
        let host_ip = self.ctx.host_ip.to_string();
        let pod_ip = self.pod_ip.to_string();
        let services =
            env::service_environment(&self.pod, &self.ctx.network.services(&self.pod_namespace()));
        env::environment(
            &self.pod,
            container,
            &self.sources,
            &pod_ip,
            &host_ip,
            services,
        )
        .await
        .map_err(|e| {
            let event = format!("Error: {}", e.0);
            NotStarted::after("CreateContainerConfigError", e.0, Some(event), 5)
        })
    }

    /// The runtime for the image's kind: Wasm in process, Linux containers only on nodes that
    /// run them (`CreateContainerError` elsewhere).
    fn runtime_for(
        &self,
        container: &Container,
        image: &StoredImage,
    ) -> Result<SharedRuntime, NotStarted> {
        match (&image.kind, &self.ctx.oci) {
            (ImageKind::Wasm, _) => Ok(self.ctx.runtime.clone()),
            (ImageKind::Oci(_), Some(oci)) => Ok(Arc::new(oci.clone())),
            (ImageKind::Oci(_), None) => {
                let image_ref = container.image.clone().unwrap_or_default();
                let message = format!(
                    "image {image_ref:?} is a Linux container image, and node {} runs only \
                     WebAssembly (Linux containers need the node agent to run as root)",
                    self.ctx.node_name
                );
                let event = Some(message.clone());
                Err(NotStarted::after(
                    "CreateContainerError",
                    message,
                    event,
                    30,
                ))
            }
        }
    }

    /// The container's volume mounts and, for a Linux container, the pod's own /etc files
    /// (unless a volume is mounted there).
    fn mounts(
        &self,
        container: &Container,
        is_linux: bool,
    ) -> Result<Vec<runtime::Mount>, NotStarted> {
        let etc_mounts = if is_linux {
            self.write_etc_files().map_err(|e| {
                let message = format!("cannot write the pod's /etc files: {e}");
                NotStarted::after("CreateContainerConfigError", message, None, 5)
            })?
        } else {
            Vec::new()
        };
        let mut mounts = volumes::mounts(container, &self.volumes)
            .map_err(|e| NotStarted::after("CreateContainerConfigError", e.0, None, 5))?;
        for e in etc_mounts {
            if !mounts.iter().any(|v| v.guest_path == e.guest_path) {
                mounts.push(e);
            }
        }
        Ok(mounts)
    }

    /// The log file of this run of the container (`<restarts>.log`).
    fn open_log(&self, index: usize, container: &Container) -> Result<LogFile, NotStarted> {
        let restarts = self.slots[index].status.restart_count;
        let log_path = self
            .dir
            .join("containers")
            .join(&container.name)
            .join(format!("{restarts}.log"));
        LogFile::create(&log_path).map_err(|e| {
            let message = format!("cannot open its log: {e}");
            NotStarted::after("RunContainerError", message, None, 5)
        })
    }

    /// What the runtime is given to start the container.
    fn container_spec(
        &self,
        container: &Container,
        image: StoredImage,
        env: Vec<(String, String)>,
        mounts: Vec<runtime::Mount>,
        log: LogFile,
    ) -> ContainerSpec {
        let listen = container
            .ports
            .iter()
            .flatten()
            .next()
            .and_then(|p| u16::try_from(p.container_port).ok())
            .map(|port| SocketAddr::new(self.pod_ip, port));
        let linux = crate::linux::options(&self.pod, container, &env);
        ContainerSpec {
            pod_namespace: self.pod_namespace(),
            pod_name: name_of(&self.pod),
            pod_uid: self.pod_uid(),
            container: container.name.clone(),
            image,
            args: command_line(container, &env),
            env,
            mounts,
            log,
            memory_limit: limit(container, "memory").and_then(api::quantity::bytes),
            cpu_limit: limit(container, "cpu").and_then(api::quantity::millicores),
            listen,
            netns: self.netns.clone(),
            outbound: Some(
                self.ctx
                    .network
                    .outbound(self.netns.clone(), &self.pod_namespace()),
            ),
            usage: self.ctx.usage.container(
                &self.pod_namespace(),
                &name_of(&self.pod),
                &self.pod_uid(),
                &container.name,
            ),
            linux,
        }
    }

    /// The container runs: watch for its exit, start its probes, mark it running and say so.
    fn on_started(
        &mut self,
        index: usize,
        container: &Container,
        running: Running,
        is_linux: bool,
    ) {
        let generation = self.slots[index].generation;
        let stopper = running.stopper();
        self.watch_exit(index, generation, running);
        let exec_target = self.exec_target(container, is_linux);
        let probes = self.spawn_probes(index, generation, container, &exec_target);
        let has_startup = container.startup_probe.is_some();
        let slot = &mut self.slots[index];
        slot.status.state = ContainerState::Running {
            started_at: SystemTime::now(),
        };
        slot.status.started = !has_startup;
        // Without a readiness probe a running container is ready.
        slot.status.ready = container.readiness_probe.is_none() && !has_startup;
        slot.live = Some(Live {
            stopper,
            started: Instant::now(),
            probes,
            liveness: Counter::default(),
            readiness: Counter::default(),
            startup: Counter::default(),
            killed: None,
            exec: exec_target,
        });
        self.ctx.logs.set_running(
            &self.pod_namespace(),
            &name_of(&self.pod),
            &container.name,
            true,
        );
        tracing::info!(pod = %self.log_name(), container = %container.name, "started");
        self.announce_started(container);
    }

    /// Sends the container's exit, when it comes, as a [`Msg::Exited`] of this generation.
    fn watch_exit(&self, index: usize, generation: u64, running: Running) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let status = running.exit.await.unwrap_or(ExitStatus::Stopped);
            let _ = tx.send(Msg::Exited {
                index,
                generation,
                status,
            });
        });
    }

    /// Where exec hooks and probes run: in a Linux container, through the OCI runtime.
    fn exec_target(&self, container: &Container, is_linux: bool) -> Option<probe::ExecTarget> {
        self.ctx
            .oci
            .clone()
            .filter(|_| is_linux)
            .map(|oci| probe::ExecTarget {
                oci,
                namespace: self.pod_namespace(),
                pod: name_of(&self.pod),
                container: container.name.clone(),
            })
    }

    /// One task per probe the container has (startup, liveness, readiness).
    fn spawn_probes(
        &self,
        index: usize,
        generation: u64,
        container: &Container,
        exec_target: &Option<probe::ExecTarget>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut probes = Vec::new();
        for (kind, probe) in [
            (Kind::Startup, &container.startup_probe),
            (Kind::Liveness, &container.liveness_probe),
            (Kind::Readiness, &container.readiness_probe),
        ] {
            if let Some(p) = probe {
                probes.push(probe::spawn(
                    kind,
                    p.clone(),
                    container.clone(),
                    index,
                    generation,
                    self.pod_ip,
                    exec_target.clone(),
                    self.probe_tx.clone(),
                ));
            }
        }
        probes
    }

    /// The Pulled, Created and Started events of a started container.
    fn announce_started(&self, container: &Container) {
        let image_ref = container.image.clone().unwrap_or_default();
        let c = Some(container.name.as_str());
        let pulled = format!("Container image {image_ref:?} already present on machine");
        self.event(c, Normal, "Pulled", &pulled);
        self.event(
            c,
            Normal,
            "Created",
            &format!("Created container {}", container.name),
        );
        self.event(
            c,
            Normal,
            "Started",
            &format!("Started container {}", container.name),
        );
    }

    /// The container's image, from the node's store or pulled, as its imagePullPolicy says
    /// (`Always` for `:latest`, `IfNotPresent` otherwise). An image imported into the store
    /// (`drover image import`) is used when `Always` cannot reach a registry: Wasm images are
    /// often local files, and a failed pull should not stop a one-node cluster.
    async fn image(&self, container: &Container) -> Result<StoredImage, (&'static str, String)> {
        let reference = container.image.clone().unwrap_or_default();
        let policy = container
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".into());
        let local = self.ctx.images.resolve(&reference);
        match (policy.as_str(), local) {
            ("Never", Some(img)) | ("IfNotPresent", Some(img)) => Ok(img),
            ("Never", None) => Err((
                "ErrImageNeverPull",
                format!(
                    "Container image {reference:?} is not present with pull policy of Never; \
                         import it with `drover image import FILE.wasm {reference}`"
                ),
            )),
            (_, local) => self.pull(container, &reference, local).await,
        }
    }

    /// Pulls the image from its registry (with the pod's imagePullSecrets, at most 10 min),
    /// falling back to `local`, the stored image of that name, when the pull fails.
    async fn pull(
        &self,
        container: &Container,
        reference: &str,
        local: Option<StoredImage>,
    ) -> Result<StoredImage, (&'static str, String)> {
        let c = Some(container.name.as_str());
        self.event(
            c,
            Normal,
            "Pulling",
            &format!("Pulling image {reference:?}"),
        );
        let started = Instant::now();
        let auth = runtime::registry::auth_from_docker_config(
            &registry_host(reference),
            &self.pull_secrets().await,
        );
        let (events, pod, name) = (
            self.ctx.events.clone(),
            self.pod.clone(),
            container.name.clone(),
        );
        let progress = move |step: String| {
            events.pod(&pod, Some(&name), Normal, "Pulling", &step);
        };
        let pulled = tokio::time::timeout(
            Duration::from_secs(600),
            self.ctx
                .registries
                .pull(reference, &self.ctx.images, &auth, &progress),
        )
        .await
        .unwrap_or_else(|_| {
            Err(runtime::registry::PullError::Registry(format!(
                "pulling {reference:?} timed out"
            )))
        });
        match (pulled, local) {
            (Ok(img), _) => {
                let took = humantime::format_duration(Duration::from_millis(
                    started.elapsed().as_millis() as u64,
                ));
                self.event(
                    c,
                    Normal,
                    "Pulled",
                    &format!("Successfully pulled image {reference:?} in {took}"),
                );
                Ok(img)
            }
            (Err(e), Some(img)) => {
                tracing::info!("using the stored {reference}: {e}");
                Ok(img)
            }
            (Err(e), None) => Err(("ErrImagePull", e.to_string())),
        }
    }
    /// The `.dockerconfigjson` of the pod's imagePullSecrets that exist (a missing one is
    /// skipped, as the kubelet does: the pull may still work anonymously).
    async fn pull_secrets(&self) -> Vec<Vec<u8>> {
        let names: Vec<String> = self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .map(|r| r.name.clone())
            .collect();
        let mut configs = Vec::new();
        for name in names {
            match self.sources.secrets.get_opt(&name).await {
                Ok(Some(secret)) => {
                    let data = secret.data.unwrap_or_default();
                    if let Some(config) = data
                        .get(".dockerconfigjson")
                        .or_else(|| data.get(".dockercfg"))
                    {
                        configs.push(config.0.clone());
                    }
                }
                Ok(None) => {
                    tracing::warn!(pod = %self.log_name(), "imagePullSecret {name} not found")
                }
                Err(e) => {
                    tracing::warn!(pod = %self.log_name(), "cannot read imagePullSecret {name}: {e}")
                }
            }
        }
        configs
    }

    /// A container ended: record it, then restart it (after back-off) or leave it done. While
    /// the pod is `Terminating` every exit is final.
    fn on_exit(&mut self, index: usize, status: ExitStatus) {
        let policy = if self.slots[index].init && self.policy == RestartPolicy::Always {
            RestartPolicy::OnFailure // init containers never rerun after success
        } else {
            self.policy
        };
        let (ns, pod) = (self.pod_namespace(), name_of(&self.pod));
        let slot = &mut self.slots[index];
        let Some(live) = slot.live.take() else { return };
        self.ctx.logs.set_running(&ns, &pod, &slot.spec.name, false);
        live.probes.iter().for_each(|p| p.abort());
        let terminated = terminated_state(&slot.status.state, live.killed.as_ref(), &status);
        slot.status.ready = false;
        slot.status.started = false;
        tracing::info!(container = %slot.spec.name, ?status, "exited");
        if self.stage == Stage::Terminating {
            slot.status.state = terminated;
            slot.status.done = true;
            return;
        }
        if live.started.elapsed() >= BACKOFF_RESET_AFTER {
            slot.backoff_level = 0;
        }
        // A container killed for failing its liveness or startup probe restarts under any
        // policy but Never, even when it exited 0 on SIGTERM (as the kubelet does).
        let probe_killed = live.killed.is_some() && policy != RestartPolicy::Never;
        if probe_killed || policy.restarts_after(status.exit_code()) {
            self.restart_after_backoff(index, terminated);
        } else {
            slot.status.state = terminated;
            slot.status.done = true;
        }
    }

    /// Container `index`, just terminated, runs again after its crash-loop back-off.
    fn restart_after_backoff(&mut self, index: usize, terminated: ContainerState) {
        let (ns, pod) = (self.pod_namespace(), name_of(&self.pod));
        let uid = self.pod.metadata.uid.as_deref().unwrap_or("");
        let slot = &mut self.slots[index];
        slot.backoff_level += 1;
        let delay = backoff(self.ctx.backoff_base, slot.backoff_level);
        slot.status.last_state = Some(terminated);
        slot.status.restart_count += 1;
        let message = format!(
            "Back-off restarting failed container {} in pod {pod}_{ns}({uid})",
            slot.spec.name,
        );
        self.ctx.events.pod(
            &self.pod,
            Some(&slot.spec.name),
            Warning,
            "BackOff",
            &message,
        );
        slot.status.state = ContainerState::waiting(
            "CrashLoopBackOff",
            Some(format!(
                "back-off {} restarting failed container={} pod={pod}",
                humantime::format_duration(delay),
                slot.spec.name,
            )),
        );
        self.schedule_retry(index, delay);
    }

    /// The pod's terminationGracePeriodSeconds (30 s unless set): how long a container killed
    /// for its probes has to stop.
    fn termination_grace(&self) -> Duration {
        Duration::from_secs(
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64,
        )
    }

    /// A probe result; true when the pod's status changed.
    fn on_probe(&mut self, outcome: probe::Outcome) -> bool {
        let slot = &self.slots[outcome.container];
        if slot.generation != outcome.generation || slot.live.is_none() {
            return false;
        }
        match outcome.kind {
            Kind::Startup => self.on_startup_probe(outcome),
            Kind::Liveness => self.on_liveness_probe(outcome),
            Kind::Readiness => self.on_readiness_probe(outcome),
        }
    }

    /// Startup: once passed, the container has started (and is ready if it has no readiness
    /// probe); failed before that, it is killed.
    fn on_startup_probe(&mut self, outcome: probe::Outcome) -> bool {
        let grace = self.termination_grace();
        let slot = &mut self.slots[outcome.container];
        let (Some(p), Some(live)) = (&slot.spec.startup_probe, slot.live.as_mut()) else {
            return false;
        };
        match live.startup.record(outcome.failure.is_none(), p) {
            Some(true) if !slot.status.started => {
                slot.status.started = true;
                slot.status.ready = slot.spec.readiness_probe.is_none();
                true
            }
            Some(false) if !slot.status.started => {
                live.killed = Some(format!(
                    "Startup probe failed: {}",
                    outcome.failure.unwrap_or_default()
                ));
                live.stopper.stop_within(grace);
                false
            }
            _ => false,
        }
    }

    /// Liveness, once started: failed, the container is killed (and the restart policy
    /// decides).
    fn on_liveness_probe(&mut self, outcome: probe::Outcome) -> bool {
        let grace = self.termination_grace();
        let slot = &mut self.slots[outcome.container];
        let (Some(p), Some(live)) = (&slot.spec.liveness_probe, slot.live.as_mut()) else {
            return false;
        };
        if !slot.status.started {
            return false;
        }
        if live.liveness.record(outcome.failure.is_none(), p) == Some(false)
            && live.killed.is_none()
        {
            let failure = outcome.failure.as_deref().unwrap_or_default();
            let name = &slot.spec.name;
            let why =
                format!("Container {name} failed liveness probe, will be restarted: {failure}");
            tracing::info!(pod = %name_of(&self.pod), "{why}");
            let failed = format!("Liveness probe failed: {failure}");
            self.ctx
                .events
                .pod(&self.pod, Some(name), Warning, "Unhealthy", &failed);
            self.ctx
                .events
                .pod(&self.pod, Some(name), Normal, "Killing", &why);
            live.killed = Some(why);
            live.stopper.stop_within(grace);
        }
        false
    }

    /// Readiness, once started: sets the container's `ready`.
    fn on_readiness_probe(&mut self, outcome: probe::Outcome) -> bool {
        let slot = &mut self.slots[outcome.container];
        let (Some(p), Some(live)) = (&slot.spec.readiness_probe, slot.live.as_mut()) else {
            return false;
        };
        if !slot.status.started {
            return false;
        }
        if let Some(f) = &outcome.failure {
            let message = format!("Readiness probe failed: {f}");
            self.ctx.events.pod(
                &self.pod,
                Some(&slot.spec.name),
                Warning,
                "Unhealthy",
                &message,
            );
        }
        match live.readiness.record(outcome.failure.is_none(), p) {
            Some(ready) if ready != slot.status.ready => {
                slot.status.ready = ready;
                true
            }
            _ => false,
        }
    }

    /// The grace period of a deletion: the pod's deletionGracePeriodSeconds, else its
    /// terminationGracePeriodSeconds, else 30 s.
    fn deletion_grace(&self) -> u64 {
        self.pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30)
            .max(0) as u64
    }

    /// The pod is `Terminating`: stops every running container and waits, at most the grace
    /// period, for their exits.
    async fn stop_all(&mut self, rx: &mut mpsc::UnboundedReceiver<Msg>, why: &str) {
        self.enter(StageEvent::Stop);
        let grace = self.deletion_grace();
        for index in 0..self.slots.len() {
            self.stop_container(index, why, Duration::from_secs(grace));
        }
        self.await_exits(rx, grace).await;
    }

    /// Stops container `index`, if it runs: the preStop hook first, then SIGTERM, then SIGKILL
    /// when the grace period is over (Linux containers); Wasm instances stop at once.
    fn stop_container(&mut self, index: usize, why: &str, grace: Duration) {
        let slot = &mut self.slots[index];
        let Some(live) = slot.live.as_mut() else {
            return;
        };
        live.killed.get_or_insert_with(|| why.to_string());
        let hook = slot
            .spec
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.clone());
        match hook {
            None => live.stopper.stop_within(grace),
            Some(hook) => {
                let (stopper, exec) = (live.stopper.clone(), live.exec.clone());
                let container = slot.spec.clone();
                self.pre_stop_then_stop(hook, grace, stopper, exec, container);
            }
        }
        let name = &self.slots[index].spec.name;
        let message = format!("Stopping container {name}");
        self.event(Some(name), Normal, "Killing", &message);
    }

    /// Runs the preStop `hook` (in a task), then stops the container with what is left of the
    /// grace period.
    fn pre_stop_then_stop(
        &self,
        hook: LifecycleHandler,
        grace: Duration,
        stopper: Stopper,
        exec: Option<probe::ExecTarget>,
        container: Container,
    ) {
        let pod_ip = self.pod_ip;
        let (events, pod) = (self.ctx.events.clone(), self.pod.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            if let Some(e) = probe::run_hook(&hook, grace, pod_ip, &container, exec.as_ref()).await
            {
                let message = format!("PreStopHook failed: {e}");
                events.pod(
                    &pod,
                    Some(&container.name),
                    Warning,
                    "FailedPreStopHook",
                    &message,
                );
            }
            // As the kubelet: at least 2 s of SIGTERM after the hook.
            let left = grace.saturating_sub(started.elapsed());
            stopper.stop_within(left.max(Duration::from_secs(2)));
        });
    }

    /// Waits for the exits of the stopped containers: the runtime kills what is left at the
    /// end of the grace period, and a few seconds more are given for that to be reported.
    async fn await_exits(&mut self, rx: &mut mpsc::UnboundedReceiver<Msg>, grace: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(grace + 5);
        while self.slots.iter().any(|s| s.live.is_some()) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Msg::Exited {
                    index,
                    generation,
                    status,
                })) => {
                    if self.slots[index].generation == generation {
                        self.on_exit(index, status);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        for slot in self.slots.iter_mut().filter(|s| s.live.is_some()) {
            tracing::warn!(container = %slot.spec.name, "did not stop within {grace}s");
            if let Some(live) = slot.live.take() {
                live.probes.iter().for_each(|p| p.abort());
            }
        }
    }

    /// The pod is gone from the API: stop it and forget it.
    async fn remove(&mut self, rx: &mut mpsc::UnboundedReceiver<Msg>) {
        self.stop_all(rx, "the pod was removed").await;
        self.release_network().await;
        self.forget();
    }

    /// The pod is being deleted: stop it, then remove it from the API.
    async fn finish_deletion(&mut self, rx: &mut mpsc::UnboundedReceiver<Msg>) {
        self.stop_all(rx, "the pod is being deleted").await;
        self.release_network().await;
        let uid = self.pod.metadata.uid.clone();
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..Default::default()
        };
        if let Err(e) = self.api.delete(&name_of(&self.pod), &params).await {
            if !matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409) {
                tracing::warn!(pod = %self.log_name(), "final delete failed: {e}");
            }
        }
        self.forget();
    }

    /// The pod's files (secret volumes among them) go, and its usage figures.
    fn forget(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        self.ctx.usage.forget(&self.pod_uid());
    }

    /// Whether the pod has reached Succeeded or Failed.
    fn finished(&self) -> bool {
        let main: Vec<ContainerStatus> = self
            .slots
            .iter()
            .filter(|s| !s.init)
            .map(|s| s.status.clone())
            .collect();
        matches!(
            lifecycle::phase(self.init_done(), self.init_failed(), &main),
            lifecycle::Phase::Succeeded | lifecycle::Phase::Failed
        )
    }

    fn status_json(&self) -> serde_json::Value {
        let init: Vec<ContainerStatus> = self
            .slots
            .iter()
            .filter(|s| s.init)
            .map(|s| s.status.clone())
            .collect();
        let main: Vec<ContainerStatus> = self
            .slots
            .iter()
            .filter(|s| !s.init)
            .map(|s| s.status.clone())
            .collect();
        let init_done = self.init_done();
        let phase = lifecycle::phase(init_done, self.init_failed(), &main);
        let now = SystemTime::now();
        let mut status = json!({
            "phase": phase.as_str(),
            "conditions": lifecycle::conditions(init_done, &main, now),
            "hostIP": self.ctx.host_ip.to_string(),
            "hostIPs": [{"ip": self.ctx.host_ip.to_string()}],
            "podIP": self.pod_ip.to_string(),
            "podIPs": [{"ip": self.pod_ip.to_string()}],
            "startTime": self.start_time,
            "containerStatuses": main.iter().map(ContainerStatus::to_json).collect::<Vec<_>>(),
            "qosClass": "BestEffort",
        });
        if !init.is_empty() {
            status["initContainerStatuses"] = json!(init
                .iter()
                .map(ContainerStatus::to_json)
                .collect::<Vec<_>>());
        }
        status
    }

    /// Reports the pod's status, except while it is `Terminating`.
    async fn report(&self) {
        if self.stage == Stage::Terminating {
            return;
        }
        let patch = json!({"status": self.status_json()});
        if let Err(e) = self
            .api
            .patch_status(
                &name_of(&self.pod),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            tracing::warn!(pod = %self.log_name(), "cannot report status: {e}");
        }
    }
}

impl ContainerStatus {
    fn state_exit_code(&self) -> Option<i32> {
        match &self.state {
            ContainerState::Terminated { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }
}

/// The registry an image reference names, as Docker reads it: the first path component when it
/// looks like a host (has a dot or a port, or is localhost), Docker Hub otherwise.
fn registry_host(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// The terminated state of a container that ended with `status`: killed by us (`killed` says
/// why), it is an `Error` with that message; otherwise the reason of its exit code.
fn terminated_state(
    state: &ContainerState,
    killed: Option<&String>,
    status: &ExitStatus,
) -> ContainerState {
    let started_at = match state {
        ContainerState::Running { started_at } => Some(*started_at),
        _ => None,
    };
    let oom = *status == ExitStatus::OomKilled;
    let exit_code = status.exit_code();
    let message = match (status, killed) {
        (_, Some(why)) => Some(why.clone()),
        (ExitStatus::Failed { message, .. }, None) => Some(message.clone()),
        _ => None,
    };
    let reason = if killed.is_some() {
        "Error"
    } else {
        termination_reason(exit_code, oom)
    };
    ContainerState::Terminated {
        exit_code,
        reason: reason.into(),
        message,
        started_at,
        finished_at: SystemTime::now(),
    }
}

/// The container's argv: its command (its name when it has none), then its args with
/// `$(VAR)` references expanded.
fn command_line(container: &Container, env: &[(String, String)]) -> Vec<String> {
    let mut args: Vec<String> = container.command.clone().unwrap_or_default();
    if args.is_empty() {
        args.push(container.name.clone());
    }
    args.extend(
        container
            .args
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|a| env::expand(&a, env)),
    );
    args
}

/// The container's limit of `resource` (`memory`, `cpu`), as written.
fn limit<'a>(container: &'a Container, resource: &str) -> Option<&'a str> {
    container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get(resource))
        .map(|q| q.0.as_str())
}
