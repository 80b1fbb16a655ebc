//! The pod's status: whether its init containers are done, whether it has finished, the
//! status JSON (phase, conditions, addresses, container statuses) and its report to the API.

use std::time::SystemTime;

use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::{name_of, Worker};
use crate::lifecycle::{self, ContainerState, ContainerStatus, Stage};

impl Worker {
    fn init_done(&self) -> bool {
        self.slots
            .iter()
            .filter(|s| s.init)
            .all(|s| s.status.done && s.status.state_exit_code() == Some(0))
    }

    pub(super) fn init_failed(&self) -> bool {
        self.slots
            .iter()
            .filter(|s| s.init)
            .any(|s| s.status.done && s.status.state_exit_code() != Some(0))
    }

    /// Whether the pod has reached Succeeded or Failed.
    pub(super) fn finished(&self) -> bool {
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
    pub(super) async fn report(&self) {
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
