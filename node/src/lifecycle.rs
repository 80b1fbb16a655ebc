//! The pod lifecycle as Kubernetes defines it, as data and pure functions: the stage a pod's
//! worker is in and what moves it on ([`Stage`]), container states, what a restart policy does
//! after an exit, crash-loop and image pull back-off, the pod's phase and its conditions. The
//! pod worker (`pod`) does the I/O and asks these functions what to do.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

/// Where a pod's worker is in the pod's life on this node. Containers start only in
/// `Running`; a [`StageEvent`] moves the pod on, through [`Stage::next`]:
///
/// ```text
/// Preparing { network, volumes } ──NetworkReady + VolumesReady──► Running ──Completed──► Finished
/// any stage ──Stop──► Terminating
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The pod's network (namespace and address) and its volumes are being made; whichever is
    /// not in place yet is tried again at the next refresh. No container runs.
    Preparing { network: bool, volumes: bool },
    /// Network and volumes in place: the init containers one at a time, then every container,
    /// restarted under the restart policy.
    Running,
    /// Every container is done for good (the pod Succeeded or Failed): nothing starts again and
    /// the pod's network has been given back; its volume files are still refreshed.
    Finished,
    /// Being stopped, for deletion or because the pod left the API: nothing starts, every exit
    /// is final, no status is reported. The worker ends after it.
    Terminating,
}

/// What moves a pod from one [`Stage`] to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageEvent {
    /// The pod's network is in place.
    NetworkReady,
    /// The pod's volumes are written.
    VolumesReady,
    /// The pod reached Succeeded or Failed.
    Completed,
    /// The pod is being deleted, or is gone from the API.
    Stop,
}

impl Stage {
    /// Where every pod starts.
    pub const START: Stage = Stage::Preparing {
        network: false,
        volumes: false,
    };

    /// The stage after `event`. `Stop` ends every stage; an event that means nothing in a
    /// stage (the network made twice, `Completed` before anything ran) leaves it as it is.
    pub fn next(self, event: StageEvent) -> Stage {
        use Stage::*;
        use StageEvent::*;
        match (self, event) {
            (_, Stop) => Terminating,
            (Preparing { volumes, .. }, NetworkReady) => Stage::prepared(true, volumes),
            (Preparing { network, .. }, VolumesReady) => Stage::prepared(network, true),
            (Running, Completed) => Finished,
            (stage, _) => stage,
        }
    }

    fn prepared(network: bool, volumes: bool) -> Stage {
        if network && volumes {
            Stage::Running
        } else {
            Stage::Preparing { network, volumes }
        }
    }

    /// Whether containers may be started.
    pub fn runs_containers(self) -> bool {
        self == Stage::Running
    }

    /// Whether the pod still waits for its network.
    pub fn needs_network(self) -> bool {
        matches!(self, Stage::Preparing { network: false, .. })
    }

    /// Whether the pod's volumes are written (from then on they are refreshed, not made).
    pub fn has_volumes(self) -> bool {
        matches!(
            self,
            Stage::Preparing { volumes: true, .. } | Stage::Running | Stage::Finished
        )
    }
}

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

/// The waiting reason after a failed image pull: `ErrImagePull`, then `ImagePullBackOff` while
/// the pulls keep failing (as the kubelet shows it); other reasons (`ErrImageNeverPull`) stay.
pub fn image_pull_reason(previous: &ContainerState, reason: &'static str) -> &'static str {
    let was_pulling = matches!(previous, ContainerState::Waiting { reason, .. }
        if reason == "ErrImagePull" || reason == "ImagePullBackOff");
    if reason == "ErrImagePull" && was_pulling {
        "ImagePullBackOff"
    } else {
        reason
    }
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

/// The port an HTTP function serves on: its first containerPort, else `$PORT` from its
/// environment, else 8080 — Knative's and Cloud Run's contract, so that `kubectl run NAME
/// --image=FUNCTION`, which declares no port, gives a function that answers.
pub fn serving_port(
    container: &k8s_openapi::api::core::v1::Container,
    env: &[(String, String)],
) -> u16 {
    const DEFAULT_PORT: u16 = 8080;
    container
        .ports
        .iter()
        .flatten()
        .find_map(|p| u16::try_from(p.container_port).ok().filter(|p| *p > 0))
        .or_else(|| {
            env.iter()
                .rev()
                .find(|(k, _)| k == "PORT")
                .and_then(|(_, v)| v.parse::<u16>().ok().filter(|p| *p > 0))
        })
        .unwrap_or(DEFAULT_PORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_serves_on_its_port_else_on_port_from_its_environment_else_on_8080() {
        let container = |v: serde_json::Value| -> k8s_openapi::api::core::v1::Container {
            serde_json::from_value(v).unwrap()
        };
        let port_env = [("PORT".to_string(), "9090".to_string())];
        let declared =
            container(serde_json::json!({"name": "f", "ports": [{"containerPort": 7000}]}));
        assert_eq!(serving_port(&declared, &port_env), 7000);
        let bare = container(serde_json::json!({"name": "f"}));
        assert_eq!(serving_port(&bare, &port_env), 9090);
        assert_eq!(serving_port(&bare, &[]), 8080);
        let junk = [("PORT".to_string(), "http".to_string())];
        assert_eq!(
            serving_port(&bare, &junk),
            8080,
            "a PORT that is no port is ignored"
        );
    }

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
    fn a_pod_runs_once_its_network_and_volumes_are_in_place() {
        use StageEvent::*;
        let start = Stage::START;
        assert!(start.needs_network() && !start.has_volumes() && !start.runs_containers());
        let volumes_first = start.next(VolumesReady);
        assert_eq!(
            volumes_first,
            Stage::Preparing {
                network: false,
                volumes: true
            }
        );
        assert!(volumes_first.needs_network() && volumes_first.has_volumes());
        assert!(!volumes_first.runs_containers());
        let network_first = start.next(NetworkReady);
        assert!(!network_first.needs_network() && !network_first.has_volumes());
        assert_eq!(volumes_first.next(NetworkReady), Stage::Running);
        assert_eq!(network_first.next(VolumesReady), Stage::Running);
        // Made again (a failed refresh retried): no change.
        assert_eq!(network_first.next(NetworkReady), network_first);
        assert_eq!(Stage::Running.next(VolumesReady), Stage::Running);
        let running = Stage::Running;
        assert!(running.runs_containers() && running.has_volumes() && !running.needs_network());
    }

    #[test]
    fn a_pod_finishes_after_running_and_stops_from_any_stage() {
        use StageEvent::*;
        // Nothing ran yet: it cannot have completed.
        assert_eq!(Stage::START.next(Completed), Stage::START);
        let finished = Stage::Running.next(Completed);
        assert_eq!(finished, Stage::Finished);
        assert!(!finished.runs_containers() && !finished.needs_network());
        assert!(
            finished.has_volumes(),
            "a finished pod's volume files are still refreshed"
        );
        assert_eq!(finished.next(NetworkReady), Stage::Finished);
        for stage in [
            Stage::START,
            Stage::START.next(NetworkReady),
            Stage::Running,
            Stage::Finished,
            Stage::Terminating,
        ] {
            assert_eq!(stage.next(Stop), Stage::Terminating);
        }
        let stopped = Stage::Terminating;
        for event in [NetworkReady, VolumesReady, Completed] {
            assert_eq!(stopped.next(event), Stage::Terminating);
        }
        assert!(!stopped.runs_containers() && !stopped.needs_network());
    }

    #[test]
    fn failed_pulls_back_off_after_the_first() {
        let creating = ContainerState::waiting("ContainerCreating", None);
        assert_eq!(image_pull_reason(&creating, "ErrImagePull"), "ErrImagePull");
        let failed = ContainerState::waiting("ErrImagePull", Some("no such image".into()));
        assert_eq!(
            image_pull_reason(&failed, "ErrImagePull"),
            "ImagePullBackOff"
        );
        let backing_off = ContainerState::waiting("ImagePullBackOff", None);
        assert_eq!(
            image_pull_reason(&backing_off, "ErrImagePull"),
            "ImagePullBackOff"
        );
        assert_eq!(
            image_pull_reason(&failed, "ErrImageNeverPull"),
            "ErrImageNeverPull"
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
