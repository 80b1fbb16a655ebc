//! Starting one container: the row of steps (image, environment, runtime, mounts, log, spec,
//! start), the [`NotStarted`] a failed step ends in and its hold (waiting reason, `Failed`
//! event, retry), and what follows a start (exit watch, probes, the Pulled, Created and Started
//! events).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Container;
use runtime::images::{ImageKind, StoredImage};
use runtime::logs::LogFile;
use runtime::{ContainerSpec, ExitStatus, Running, SharedRuntime, StartError};

use super::{name_of, Live, Msg, Worker};
use crate::env;
use crate::lifecycle::{self, backoff, ContainerState};
use crate::probe::{self, Counter, Kind};
use crate::volumes;
use kubeclient::events::Type::{Normal, Warning};

/// Why a container did not start this time: the waiting reason and message its status shows,
/// the message of the `Failed` warning event that says so (when there is one), and when it is
/// tried again.
pub(super) struct NotStarted {
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

impl Worker {
    /// Every container that is neither running nor done waits with `reason`.
    pub(super) fn hold_unstarted(&mut self, reason: &str, message: String) {
        for s in self
            .slots
            .iter_mut()
            .filter(|s| s.live.is_none() && !s.status.done)
        {
            s.status.state = ContainerState::waiting(reason, Some(message.clone()));
        }
    }

    /// Starts container `index` (again), as a new generation: the steps of [`Worker::launch`],
    /// then either a running container or one that waits to be tried again.
    pub(super) async fn start(&mut self, index: usize) {
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
        // Used by HTTP functions only; a Linux container listens where it likes.
        let listen = Some(SocketAddr::new(
            self.pod_ip,
            crate::lifecycle::serving_port(container, &env),
        ));
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
            max_concurrency: self
                .pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(api::knative::CONTAINER_CONCURRENCY_ANNOTATION))
                .and_then(|v| v.parse().ok()),
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
        let serving = running.serving;
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
        self.announce_started(container, serving);
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
    fn announce_started(&self, container: &Container, serving: Option<SocketAddr>) {
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
            &match serving {
                // `kubectl describe` tells where a function answers, which its spec may not say.
                Some(addr) => format!(
                    "Started container {}, an HTTP function serving on {addr}",
                    container.name
                ),
                None => format!("Started container {}", container.name),
            },
        );
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
}

/// The container's argv: its command (its name when it has none), then its args with
/// `$(VAR)` references expanded.
pub(crate) fn command_line(container: &Container, env: &[(String, String)]) -> Vec<String> {
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
