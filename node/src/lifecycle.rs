//! The pod lifecycle as Kubernetes defines it, as data and pure functions: container states,
//! what a restart policy does after an exit, crash-loop back-off, the pod's phase and its
//! conditions. The pod worker (`pod.rs`) does the I/O and asks these functions what to do.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn parse(s: Option<&str>) -> RestartPolicy {
        match s {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether a container that exited with `exit_code` runs again.
    pub fn restarts_after(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// One container's state, as `status.containerStatuses[].state` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: SystemTime,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: Option<String>,
        started_at: Option<SystemTime>,
        finished_at: SystemTime,
    },
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl ContainerState {
    pub fn waiting(reason: &str, message: Option<String>) -> ContainerState {
        ContainerState::Waiting {
            reason: reason.into(),
            message,
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            ContainerState::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            ContainerState::Running { started_at } => {
                json!({"running": {"startedAt": time(*started_at)}})
            }
            ContainerState::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
            } => {
                let mut t = json!({"exitCode": exit_code, "reason": reason, "finishedAt": time(*finished_at)});
                if let Some(s) = started_at {
                    t["startedAt"] = json!(time(*s));
                }
                if let Some(m) = message {
                    t["message"] = json!(m);
                }
                json!({"terminated": t})
            }
        }
    }
}

/// The reason Kubernetes gives a terminated container.
pub fn termination_reason(exit_code: i32, oom: bool) -> &'static str {
    match (oom, exit_code) {
        (true, _) => "OOMKilled",
        (false, 0) => "Completed",
        _ => "Error",
    }
}

/// Crash-loop back-off before restart number `restarts` (1 for the first restart): the base,
/// doubled each time, capped at five minutes, as the kubelet does it.
pub fn backoff(base: Duration, restarts: u32) -> Duration {
    let cap = Duration::from_secs(300);
    let factor = 1u32 << restarts.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(cap)
}

/// A container that ran at least this long before it exited has its back-off reset.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

/// One container's status, as the worker keeps it.
#[derive(Clone, Debug)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub state: ContainerState,
    pub last_state: Option<ContainerState>,
    pub restart_count: u32,
    pub ready: bool,
    pub started: bool,
    /// Will not run again (exited under its restart policy).
    pub done: bool,
    /// Failed image pulls in a row (their back-off).
    pub backoff_pulls: u32,
}

impl ContainerStatus {
    pub fn new(name: &str, image: &str) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            image: image.into(),
            image_id: String::new(),
            state: ContainerState::waiting("ContainerCreating", None),
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
            done: false,
            backoff_pulls: 0,
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "state": self.state.to_json(),
            "lastState": self.last_state.as_ref().map(ContainerState::to_json).unwrap_or_else(|| json!({})),
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.started,
        });
        if self.image_id.is_empty() {
            v.as_object_mut().map(|m| m.remove("imageID"));
        }
        v
    }

    fn running(&self) -> bool {
        matches!(self.state, ContainerState::Running { .. })
    }

    fn succeeded(&self) -> bool {
        matches!(self.state, ContainerState::Terminated { exit_code: 0, .. })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

/// The pod's phase from its init containers' and containers' statuses.
pub fn phase(init_done: bool, init_failed: bool, containers: &[ContainerStatus]) -> Phase {
    if init_failed {
        return Phase::Failed;
    }
    if !init_done {
        return Phase::Pending;
    }
    if containers.iter().all(|c| c.done) && !containers.is_empty() {
        return if containers.iter().all(ContainerStatus::succeeded) {
            Phase::Succeeded
        } else {
            Phase::Failed
        };
    }
    if containers
        .iter()
        .any(|c| c.running() || c.restart_count > 0 || c.done)
    {
        return Phase::Running;
    }
    Phase::Pending
}

/// The pod conditions: PodScheduled, Initialized, ContainersReady, Ready.
pub fn conditions(init_done: bool, containers: &[ContainerStatus], now: SystemTime) -> Value {
    let all_ready = !containers.is_empty() && containers.iter().all(|c| c.ready);
    let cond = |t: &str, ok: bool, reason: Option<&str>| {
        let mut c = json!({"type": t, "status": if ok { "True" } else { "False" }, "lastTransitionTime": time(now)});
        if let Some(r) = reason.filter(|_| !ok) {
            c["reason"] = json!(r);
        }
        c
    };
    let completed = containers.iter().all(|c| c.done) && !containers.is_empty();
    let not_ready = if completed {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    json!([
        cond("PodScheduled", true, None),
        cond("Initialized", init_done, Some("ContainersNotInitialized")),
        cond("ContainersReady", all_ready, Some(not_ready)),
        cond("Ready", all_ready, Some(not_ready)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: ContainerState, done: bool, restarts: u32) -> ContainerStatus {
        ContainerStatus {
            state,
            done,
            restart_count: restarts,
            ..ContainerStatus::new("c", "i")
        }
    }

    fn exited(code: i32) -> ContainerState {
        ContainerState::Terminated {
            exit_code: code,
            reason: termination_reason(code, false).into(),
            message: None,
            started_at: None,
            finished_at: SystemTime::now(),
        }
    }

    #[test]
    fn restart_policies_and_backoff() {
        assert!(RestartPolicy::Always.restarts_after(0));
        assert!(!RestartPolicy::OnFailure.restarts_after(0));
        assert!(RestartPolicy::OnFailure.restarts_after(1));
        assert!(!RestartPolicy::Never.restarts_after(1));
        let base = Duration::from_secs(10);
        let delays: Vec<u64> = (1..=7).map(|n| backoff(base, n).as_secs()).collect();
        assert_eq!(delays, vec![10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(base, 1000).as_secs(), 300);
    }

    #[test]
    fn phases_follow_the_containers() {
        let running = ContainerState::Running {
            started_at: SystemTime::now(),
        };
        assert_eq!(
            phase(false, false, &[status(running.clone(), false, 0)]),
            Phase::Pending
        );
        assert_eq!(
            phase(true, false, &[status(running.clone(), false, 0)]),
            Phase::Running
        );
        assert_eq!(
            phase(true, false, &[status(exited(0), true, 0)]),
            Phase::Succeeded
        );
        assert_eq!(
            phase(
                true,
                false,
                &[status(exited(0), true, 0), status(exited(2), true, 0)]
            ),
            Phase::Failed
        );
        // Waiting to restart after a crash is still Running, as in Kubernetes.
        let backing_off = ContainerState::waiting("CrashLoopBackOff", None);
        assert_eq!(
            phase(true, false, &[status(backing_off, false, 3)]),
            Phase::Running
        );
        assert_eq!(phase(true, true, &[]), Phase::Failed);
        let waiting = ContainerState::waiting("ContainerCreating", None);
        assert_eq!(
            phase(true, false, &[status(waiting, false, 0)]),
            Phase::Pending
        );
    }

    #[test]
    fn ready_needs_every_container_ready() {
        let mut a = status(
            ContainerState::Running {
                started_at: SystemTime::now(),
            },
            false,
            0,
        );
        a.ready = true;
        let b = status(
            ContainerState::Running {
                started_at: SystemTime::now(),
            },
            false,
            0,
        );
        let c = conditions(true, &[a.clone(), b], SystemTime::now());
        assert_eq!(c[3]["type"], "Ready");
        assert_eq!(c[3]["status"], "False");
        let c = conditions(true, &[a], SystemTime::now());
        assert_eq!(c[3]["status"], "True");
    }
}
