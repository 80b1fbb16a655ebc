//! What happens to a running container: its exit (restarted under the restart policy after
//! crash-loop back-off, or done for good) and its probe results (startup, liveness, readiness)
//! counted against their thresholds.

use std::time::{Duration, SystemTime};

use runtime::ExitStatus;

use super::{name_of, Worker};
use crate::lifecycle::{
    backoff, termination_reason, ContainerState, RestartPolicy, Stage, BACKOFF_RESET_AFTER,
};
use crate::probe::{self, Kind};
use kubeclient::events::Type::{Normal, Warning};

impl Worker {
    /// A container ended: record it, then restart it (after back-off) or leave it done. While
    /// the pod is `Terminating` every exit is final.
    pub(super) fn on_exit(&mut self, index: usize, status: ExitStatus) {
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
    pub(super) fn on_probe(&mut self, outcome: probe::Outcome) -> bool {
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
