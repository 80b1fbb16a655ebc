//! Stopping the pod: every container stopped within the grace period (preStop hook, then
//! SIGTERM, then SIGKILL), their exits awaited, and the pod removed from the node and (on
//! deletion) from the API.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, LifecycleHandler};
use kube::api::{DeleteParams, Preconditions};
use runtime::Stopper;
use tokio::sync::mpsc;

use super::{name_of, Msg, Worker};
use crate::lifecycle::StageEvent;
use crate::probe;
use kubeclient::events::Type::{Normal, Warning};

impl Worker {
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
    pub(super) async fn remove(&mut self, rx: &mut mpsc::UnboundedReceiver<Msg>) {
        self.stop_all(rx, "the pod was removed").await;
        self.release_network().await;
        self.forget();
    }

    /// The pod is being deleted: stop it, then remove it from the API.
    pub(super) async fn finish_deletion(&mut self, rx: &mut mpsc::UnboundedReceiver<Msg>) {
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
        crate::volumes::release(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        self.ctx.usage.forget(&self.pod_uid());
    }
}
