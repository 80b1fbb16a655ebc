//! One pod on this node: a worker task that prepares its volumes, runs its init containers
//! then its containers through the runtime, restarts them under the restart policy with
//! crash-loop back-off, runs its probes, reports its status to the API, and on deletion stops
//! everything within the grace period and removes the pod.
//!
//! Decisions come from `lifecycle` (pure); this file does the I/O. Everything that happens to
//! the pod arrives as a [`Msg`] on one channel, so the worker's state is only ever touched by
//! its own loop.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;
use runtime::images::ImageStore;
use runtime::logs::LogFile;
use runtime::{ContainerSpec, ExitStatus, SharedRuntime, StartError, Stopper};
use serde_json::json;
use tokio::sync::mpsc;

use crate::env::{self, Sources};
use crate::events::Type::{Normal, Warning};
use crate::lifecycle::{
    self, backoff, termination_reason, ContainerState, ContainerStatus, RestartPolicy,
    BACKOFF_RESET_AFTER,
};
use crate::probe::{self, Counter, Kind};
use crate::volumes;

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
    pub events: Arc<crate::events::Recorder>,
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
    volumes_ready: bool,
    /// The pod's network namespace once made (routed networking), and whether the pod's
    /// network is in place (always, in loopback mode).
    netns: Option<PathBuf>,
    network_ready: bool,
    start_time: String,
    tx: mpsc::UnboundedSender<Msg>,
    probe_tx: mpsc::Sender<probe::Outcome>,
    probe_rx: Option<mpsc::Receiver<probe::Outcome>>,
    terminating: bool,
}

fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
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
        // A restarted node takes its pods back: restart counts carry on from what it reported.
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
        let (probe_tx, probe_rx) = mpsc::channel(64);
        let start_time = previous
            .start_time
            .map(|t| {
                t.0.to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true)
            })
            .unwrap_or_else(|| humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
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
            slots,
            volumes: BTreeMap::new(),
            volumes_ready: false,
            netns: None,
            network_ready: false,
            start_time,
            tx,
            probe_tx,
            probe_rx: Some(probe_rx),
            terminating: false,
        }
    }

    fn event(
        &self,
        container: Option<&str>,
        kind: crate::events::Type,
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

    fn log_name(&self) -> String {
        format!(
            "{}/{}",
            self.pod.metadata.namespace.as_deref().unwrap_or(""),
            name_of(&self.pod)
        )
    }

    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut probes = self.probe_rx.take().expect("taken once");
        let refresh = self.tx.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if refresh.send(Msg::Refresh).is_err() {
                    return;
                }
            }
        });
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
            match msg {
                Msg::Update(PodUpdate::Gone) => {
                    self.stop_all(&mut rx, "the pod was removed").await;
                    self.release_network().await;
                    // Its files (secret volumes among them) go with it.
                    let _ = std::fs::remove_dir_all(&self.dir);
                    self.ctx
                        .usage
                        .forget(self.pod.metadata.uid.as_deref().unwrap_or_default());
                    break;
                }
                Msg::Update(PodUpdate::Changed(pod)) => {
                    let deleting = pod.metadata.deletion_timestamp.is_some();
                    self.pod = *pod;
                    if deleting && !self.terminating {
                        self.finish_deletion(&mut rx).await;
                        break;
                    }
                    continue;
                }
                Msg::Exited {
                    index,
                    generation,
                    status,
                } => {
                    if self.slots[index].generation != generation {
                        continue;
                    }
                    self.on_exit(index, status);
                    self.advance().await;
                }
                Msg::Retry { index, generation } => {
                    if self.slots[index].generation != generation || self.terminating {
                        continue;
                    }
                    self.start(index).await;
                    self.advance().await;
                }
                Msg::Probe(outcome) => {
                    if !self.on_probe(outcome) {
                        continue;
                    }
                }
                Msg::Refresh => {
                    if !self.network_ready && !self.finished() {
                        self.prepare_network().await;
                        self.advance().await;
                    }
                    if self.volumes_ready {
                        if let Ok(v) = volumes::sync(&self.pod, &self.dir, &self.sources).await {
                            self.volumes = v;
                        }
                        continue;
                    }
                    self.prepare_volumes().await;
                    self.advance().await;
                }
            }
            self.report().await;
            // A finished pod runs nothing again: its address and namespace go back now, as
            // the kubelet tears a finished pod's sandbox down (completed Jobs would otherwise
            // hold their node's range).
            if self.network_ready && self.finished() {
                self.release_network().await;
            }
        }
        ticker.abort();
    }

    /// Gives the pod its network (namespace and address); on failure the containers wait
    /// (CreatePodSandbox, as the kubelet says) and the next refresh tries again.
    async fn prepare_network(&mut self) {
        let uid = self.pod.metadata.uid.clone().unwrap_or_default();
        match self.ctx.network.attach(&uid, self.pod_ip).await {
            Ok(netns) => {
                self.netns = netns;
                self.network_ready = true;
            }
            Err(e) => {
                let message = format!("Failed to create pod sandbox: {e:#}");
                self.event(None, Warning, "FailedCreatePodSandBox", &message);
                for s in self
                    .slots
                    .iter_mut()
                    .filter(|s| s.live.is_none() && !s.status.done)
                {
                    s.status.state =
                        ContainerState::waiting("ContainerCreating", Some(message.clone()));
                }
            }
        }
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

    async fn release_network(&mut self) {
        let uid = self.pod.metadata.uid.clone().unwrap_or_default();
        if let Some(oci) = &self.ctx.oci {
            oci.release_pod(&uid);
        }
        self.ctx.network.detach(&uid, self.pod_ip).await;
        self.network_ready = false;
        self.netns = None;
    }

    async fn prepare_volumes(&mut self) {
        match volumes::sync(&self.pod, &self.dir, &self.sources).await {
            Ok(v) => {
                self.volumes = v;
                self.volumes_ready = true;
            }
            Err(e) => {
                for s in self
                    .slots
                    .iter_mut()
                    .filter(|s| s.live.is_none() && !s.status.done)
                {
                    s.status.state =
                        ContainerState::waiting("CreateContainerConfigError", Some(e.0.clone()));
                }
            }
        }
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
    /// init containers are done.
    async fn advance(&mut self) {
        if !self.network_ready || !self.volumes_ready || self.terminating || self.init_failed() {
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

    /// Container `index` cannot start yet: it waits with `reason`, and is tried again `after`.
    fn wait_to_retry(&mut self, index: usize, reason: &str, message: String, after: Duration) {
        self.slots[index].status.state = ContainerState::waiting(reason, Some(message));
        self.schedule_retry(index, after);
    }

    fn schedule_retry(&self, index: usize, after: Duration) {
        let tx = self.tx.clone();
        let generation = self.slots[index].generation;
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(Msg::Retry { index, generation });
        });
    }

    /// Starts container `index` (again).
    async fn start(&mut self, index: usize) {
        self.slots[index].generation += 1;
        let container = self.slots[index].spec.clone();
        let image_ref = container.image.clone().unwrap_or_default();
        let image = match self.image(&container).await {
            Ok(image) => image,
            Err((reason, message)) => {
                self.event(Some(&container.name), Warning, "Failed", &message);
                let s = &mut self.slots[index].status;
                let was_pulling = matches!(&s.state, ContainerState::Waiting { reason, .. }
                    if reason == "ErrImagePull" || reason == "ImagePullBackOff");
                let reason = if reason == "ErrImagePull" && was_pulling {
                    "ImagePullBackOff"
                } else {
                    reason
                };
                s.state = ContainerState::waiting(reason, Some(message));
                s.backoff_pulls += 1;
                let delay = backoff(self.ctx.backoff_base, s.backoff_pulls);
                self.schedule_retry(index, delay);
                return;
            }
        };
        let host_ip = self.ctx.host_ip.to_string();
        let pod_ip = self.pod_ip.to_string();
        let env = match env::environment(
            &self.pod,
            &container,
            &self.sources,
            &pod_ip,
            &host_ip,
            env::service_environment(&self.pod, &self.ctx.network.services(&self.pod_namespace())),
        )
        .await
        {
            Ok(e) => e,
            Err(e) => {
                self.event(
                    Some(&container.name),
                    Warning,
                    "Failed",
                    &format!("Error: {}", e.0),
                );
                self.wait_to_retry(
                    index,
                    "CreateContainerConfigError",
                    e.0,
                    Duration::from_secs(5),
                );
                return;
            }
        };
        let is_linux = matches!(image.kind, runtime::images::ImageKind::Oci(_));
        let runtime: SharedRuntime = match (&image.kind, &self.ctx.oci) {
            (runtime::images::ImageKind::Wasm, _) => self.ctx.runtime.clone(),
            (runtime::images::ImageKind::Oci(_), Some(oci)) => Arc::new(oci.clone()),
            (runtime::images::ImageKind::Oci(_), None) => {
                let message = format!(
                    "image {image_ref:?} is a Linux container image, and node {} runs only \
                     WebAssembly (Linux containers need the node agent to run as root)",
                    self.ctx.node_name
                );
                self.event(Some(&container.name), Warning, "Failed", &message);
                self.wait_to_retry(
                    index,
                    "CreateContainerError",
                    message,
                    Duration::from_secs(30),
                );
                return;
            }
        };
        let etc_mounts = if is_linux {
            match self.write_etc_files() {
                Ok(m) => m,
                Err(e) => {
                    self.wait_to_retry(
                        index,
                        "CreateContainerConfigError",
                        format!("cannot write the pod's /etc files: {e}"),
                        Duration::from_secs(5),
                    );
                    return;
                }
            }
        } else {
            Vec::new()
        };
        let mounts = match volumes::mounts(&container, &self.volumes) {
            Ok(mut m) => {
                // The pod's own /etc files, unless a volume is mounted there.
                for e in etc_mounts {
                    if !m.iter().any(|v| v.guest_path == e.guest_path) {
                        m.push(e);
                    }
                }
                m
            }
            Err(e) => {
                self.wait_to_retry(
                    index,
                    "CreateContainerConfigError",
                    e.0,
                    Duration::from_secs(5),
                );
                return;
            }
        };
        let restarts = self.slots[index].status.restart_count;
        let log_path = self
            .dir
            .join("containers")
            .join(&container.name)
            .join(format!("{restarts}.log"));
        let log = match LogFile::create(&log_path) {
            Ok(l) => l,
            Err(e) => {
                self.wait_to_retry(
                    index,
                    "RunContainerError",
                    format!("cannot open its log: {e}"),
                    Duration::from_secs(5),
                );
                return;
            }
        };
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
                .map(|a| env::expand(&a, &env)),
        );
        let memory_limit = container
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .and_then(|q| api::quantity::bytes(&q.0));
        let cpu_limit = container
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("cpu"))
            .and_then(|q| api::quantity::millicores(&q.0));
        let listen = container
            .ports
            .iter()
            .flatten()
            .next()
            .and_then(|p| u16::try_from(p.container_port).ok())
            .map(|port| SocketAddr::new(self.pod_ip, port));
        let linux = crate::linux::options(&self.pod, &container, &env);
        let spec = ContainerSpec {
            pod_namespace: self.pod.metadata.namespace.clone().unwrap_or_default(),
            pod_name: name_of(&self.pod),
            pod_uid: self.pod.metadata.uid.clone().unwrap_or_default(),
            container: container.name.clone(),
            image: image.clone(),
            args,
            env,
            mounts,
            log,
            memory_limit,
            cpu_limit,
            listen,
            netns: self.netns.clone(),
            outbound: Some(
                self.ctx
                    .network
                    .outbound(self.netns.clone(), &self.pod_namespace()),
            ),
            usage: self.ctx.usage.container(
                &self.pod.metadata.namespace.clone().unwrap_or_default(),
                &name_of(&self.pod),
                &self.pod.metadata.uid.clone().unwrap_or_default(),
                &container.name,
            ),
            linux,
        };
        self.slots[index].status.image_id = image.digest.clone();
        match runtime.start(spec).await {
            Ok(running) => {
                let generation = self.slots[index].generation;
                let stopper = running.stopper();
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let status = running.exit.await.unwrap_or(ExitStatus::Stopped);
                    let _ = tx.send(Msg::Exited {
                        index,
                        generation,
                        status,
                    });
                });
                let mut probes = Vec::new();
                let exec_target =
                    self.ctx
                        .oci
                        .clone()
                        .filter(|_| is_linux)
                        .map(|oci| probe::ExecTarget {
                            oci,
                            namespace: self.pod_namespace(),
                            pod: name_of(&self.pod),
                            container: container.name.clone(),
                        });
                let has_startup = container.startup_probe.is_some();
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
            Err(e) => {
                let reason = match e {
                    StartError::InvalidImage(_) => "CreateContainerError",
                    StartError::Config(_) => "RunContainerError",
                };
                tracing::warn!(pod = %self.log_name(), container = %container.name, "cannot start: {e}");
                self.event(
                    Some(&container.name),
                    Warning,
                    "Failed",
                    &format!("Error: {e}"),
                );
                let slot = &mut self.slots[index];
                slot.backoff_level += 1;
                slot.status.state = ContainerState::waiting(reason, Some(e.to_string()));
                let delay = backoff(self.ctx.backoff_base, slot.backoff_level);
                self.schedule_retry(index, delay);
            }
        }
    }

    /// The container's image, from the node's store or pulled, as its imagePullPolicy says
    /// (`Always` for `:latest`, `IfNotPresent` otherwise). An image imported into the store
    /// (`drover image import`) is used when `Always` cannot reach a registry: Wasm images are
    /// often local files, and a failed pull should not stop a one-node cluster.
    async fn image(
        &self,
        container: &Container,
    ) -> Result<runtime::images::StoredImage, (&'static str, String)> {
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
            (_, local) => {
                let c = Some(container.name.as_str());
                self.event(
                    c,
                    Normal,
                    "Pulling",
                    &format!("Pulling image {reference:?}"),
                );
                let started = Instant::now();
                let auth = runtime::registry::auth_from_docker_config(
                    &registry_host(&reference),
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
                        .pull(&reference, &self.ctx.images, &auth, &progress),
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

    /// A container ended: record it, then restart it (after back-off) or leave it done.
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
        let started_at = match &slot.status.state {
            ContainerState::Running { started_at } => Some(*started_at),
            _ => None,
        };
        let oom = status == ExitStatus::OomKilled;
        let exit_code = status.exit_code();
        let message = match (&status, &live.killed) {
            (_, Some(why)) => Some(why.clone()),
            (ExitStatus::Failed { message, .. }, None) => Some(message.clone()),
            _ => None,
        };
        let reason = if live.killed.is_some() {
            "Error"
        } else {
            termination_reason(exit_code, oom)
        };
        let terminated = ContainerState::Terminated {
            exit_code,
            reason: reason.into(),
            message,
            started_at,
            finished_at: SystemTime::now(),
        };
        slot.status.ready = false;
        slot.status.started = false;
        tracing::info!(container = %slot.spec.name, ?status, "exited");
        if self.terminating {
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
        if probe_killed || policy.restarts_after(exit_code) {
            slot.backoff_level += 1;
            let delay = backoff(self.ctx.backoff_base, slot.backoff_level);
            slot.status.last_state = Some(terminated);
            slot.status.restart_count += 1;
            let message = format!(
                "Back-off restarting failed container {} in pod {}_{}({})",
                slot.spec.name,
                name_of(&self.pod),
                ns,
                self.pod.metadata.uid.as_deref().unwrap_or("")
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
                    "back-off {} restarting failed container={} pod={}",
                    humantime::format_duration(delay),
                    slot.spec.name,
                    name_of(&self.pod)
                )),
            );
            self.schedule_retry(index, delay);
        } else {
            slot.status.state = terminated;
            slot.status.done = true;
        }
    }

    /// A probe result; true when the pod's status changed.
    fn on_probe(&mut self, outcome: probe::Outcome) -> bool {
        let grace = Duration::from_secs(
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64,
        );
        let slot = &mut self.slots[outcome.container];
        if slot.generation != outcome.generation {
            return false;
        }
        let spec = slot.spec.clone();
        let Some(live) = slot.live.as_mut() else {
            return false;
        };
        let ok = outcome.failure.is_none();
        match outcome.kind {
            Kind::Startup => {
                let Some(p) = &spec.startup_probe else {
                    return false;
                };
                match live.startup.record(ok, p) {
                    Some(true) if !slot.status.started => {
                        slot.status.started = true;
                        slot.status.ready = spec.readiness_probe.is_none();
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
            Kind::Liveness => {
                let Some(p) = &spec.liveness_probe else {
                    return false;
                };
                if !slot.status.started {
                    return false;
                }
                if live.liveness.record(ok, p) == Some(false) && live.killed.is_none() {
                    let why = format!(
                        "Container {} failed liveness probe, will be restarted: {}",
                        spec.name,
                        outcome.failure.as_deref().unwrap_or_default()
                    );
                    tracing::info!(pod = %name_of(&self.pod), "{why}");
                    let failed = format!(
                        "Liveness probe failed: {}",
                        outcome.failure.as_deref().unwrap_or_default()
                    );
                    self.ctx
                        .events
                        .pod(&self.pod, Some(&spec.name), Warning, "Unhealthy", &failed);
                    self.ctx
                        .events
                        .pod(&self.pod, Some(&spec.name), Normal, "Killing", &why);
                    live.killed = Some(why);
                    live.stopper.stop_within(grace);
                }
                false
            }
            Kind::Readiness => {
                let Some(p) = &spec.readiness_probe else {
                    return false;
                };
                if !slot.status.started {
                    return false;
                }
                if let Some(f) = &outcome.failure {
                    let message = format!("Readiness probe failed: {f}");
                    self.ctx.events.pod(
                        &self.pod,
                        Some(&spec.name),
                        Warning,
                        "Unhealthy",
                        &message,
                    );
                }
                match live.readiness.record(ok, p) {
                    Some(ready) if ready != slot.status.ready => {
                        slot.status.ready = ready;
                        true
                    }
                    _ => false,
                }
            }
        }
    }

    /// Stops every running container and waits, at most the grace period, for their exits.
    async fn stop_all(&mut self, rx: &mut mpsc::UnboundedReceiver<Msg>, why: &str) {
        self.terminating = true;
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30)
            .max(0) as u64;
        for slot in self.slots.iter_mut() {
            if let Some(live) = slot.live.as_mut() {
                live.killed.get_or_insert_with(|| why.to_string());
                // The preStop hook first, then SIGTERM, then SIGKILL when the grace period is
                // over (Linux containers); Wasm instances stop at once.
                let grace = Duration::from_secs(grace);
                let hook = slot
                    .spec
                    .lifecycle
                    .as_ref()
                    .and_then(|l| l.pre_stop.clone());
                match hook {
                    None => live.stopper.stop_within(grace),
                    Some(hook) => {
                        let (stopper, exec) = (live.stopper.clone(), live.exec.clone());
                        let (container, pod_ip) = (slot.spec.clone(), self.pod_ip);
                        let (events, pod) = (self.ctx.events.clone(), self.pod.clone());
                        tokio::spawn(async move {
                            let started = Instant::now();
                            if let Some(e) =
                                probe::run_hook(&hook, grace, pod_ip, &container, exec.as_ref())
                                    .await
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
                }
                let message = format!("Stopping container {}", slot.spec.name);
                self.ctx.events.pod(
                    &self.pod,
                    Some(&slot.spec.name),
                    Normal,
                    "Killing",
                    &message,
                );
            }
        }
        // The runtime kills what is left at the end of the grace period; a few seconds more
        // for that to be reported.
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
        let _ = std::fs::remove_dir_all(&self.dir);
        self.ctx
            .usage
            .forget(self.pod.metadata.uid.as_deref().unwrap_or_default());
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

    async fn report(&self) {
        if self.terminating {
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
