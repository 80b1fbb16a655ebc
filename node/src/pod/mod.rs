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
//! log file, the runtime's [`ContainerSpec`](runtime::ContainerSpec), and the runtime start.
//! The first step that fails says why in a [`NotStarted`](start::NotStarted): the waiting
//! reason the container shows (`ErrImagePull`, `ImagePullBackOff`, `ErrImageNeverPull`,
//! `CreateContainerConfigError`, `CreateContainerError`, `RunContainerError`), the `Failed`
//! event if there is one, and when the container is tried again.
//!
//! Decisions come from `lifecycle` (pure); this module does the I/O. Everything that happens to
//! the pod arrives as a [`Msg`] on one channel, so the worker's state is only ever touched by
//! its own loop.
//!
//! The module's files, one concern each: this one holds the worker, its message loop and its
//! stage changes; `start` the steps of starting a container and `image` its image (pulled or
//! stored); `exits` its exits, restarts under back-off and probe results; `stop` stopping
//! containers and deleting the pod; `status` the pod's status and its report.

mod exits;
pub(crate) mod image;
mod start;
mod status;
mod stop;

pub(crate) use start::command_line;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
use kube::Api;
use runtime::images::ImageStore;
use runtime::{ExitStatus, SharedRuntime, Stopper};
use tokio::sync::mpsc;

use crate::env::Sources;
use crate::lifecycle::{ContainerStatus, RestartPolicy, Stage, StageEvent};
use crate::probe::{self, Counter};
use crate::volumes;
use kubeclient::events::Type::Warning;

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
                service_accounts: Api::namespaced(ctx.client.clone(), &ns),
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
        if self.host_network() {
            self.netns = None;
            self.enter(StageEvent::NetworkReady);
            return;
        }
        let uid = self.pod_uid();
        let attached = match self.ctx.network.attach(&uid, self.pod_ip).await {
            Ok(netns) => self
                .ctx
                .network
                .enforce_policy(&self.pod, self.pod_ip)
                .await
                .map(|()| netns),
            Err(e) => Err(e),
        };
        match attached {
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

    async fn release_network(&mut self) {
        let uid = self.pod_uid();
        if let Some(oci) = &self.ctx.oci {
            oci.release_pod(&uid);
        }
        // A hostNetwork pod's address is the node's: nothing to give back.
        if !self.host_network() {
            self.ctx.network.detach(&uid, self.pod_ip).await;
        }
        self.netns = None;
    }

    /// Whether the pod runs in the node's network (`hostNetwork`): no namespace of its own, the
    /// node's address.
    fn host_network(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
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
}
