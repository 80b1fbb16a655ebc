//! What the control plane asks of a pod (its phase, whether it finished, is Ready and since
//! when, is on a node, which controller owns it) and the controller ownerReference controllers
//! put on what they make. One definition each, so the controllers and the scheduler read a pod
//! the same way. Pure.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::chrono::{DateTime, Utc};
use k8s_openapi::{Metadata, Resource};

/// The pod's `status.phase`, or "" when it has none yet.
pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Whether the pod finished (Succeeded or Failed): it will never run again.
pub fn terminal(p: &Pod) -> bool {
    matches!(phase(p), "Failed" | "Succeeded")
}

/// The uid of the pod's controller (its ownerReference with `controller: true`), if any.
pub fn controller_uid(p: &Pod) -> Option<&str> {
    p.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// How long `p` has been Ready, or None when it is not (a Ready condition without a
/// transition time counts from `now`).
pub fn ready_for(p: &Pod, now: DateTime<Utc>) -> Option<Duration> {
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    let since = ready.last_transition_time.as_ref().map_or(now, |t| t.0);
    Some((now - since).to_std().unwrap_or_default())
}

/// Whether the pod is bound to a node (`spec.nodeName` set and not empty).
pub fn scheduled(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

/// The ownerReference that makes `owner` the controller of what it creates (pods, Jobs,
/// EndpointSlices, ControllerRevisions): its kind and apiVersion, name and uid, with
/// `controller` and `blockOwnerDeletion` set, as Kubernetes' controllers write it.
pub fn controller_ref<K>(owner: &K) -> OwnerReference
where
    K: Resource + Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
{
    let meta = owner.metadata();
    OwnerReference {
        api_version: K::API_VERSION.to_string(),
        kind: K::KIND.to_string(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pod_predicates() {
        let p = pod(json!({
            "metadata": {"name": "a", "ownerReferences": [
                {"apiVersion": "v1", "kind": "X", "name": "x", "uid": "other"},
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "uid": "rs-uid", "controller": true}]},
            "spec": {"nodeName": "n", "containers": []},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }));
        assert_eq!(phase(&p), "Running");
        assert!(!terminal(&p) && is_ready(&p) && scheduled(&p));
        assert_eq!(controller_uid(&p), Some("rs-uid"));
        let now: DateTime<Utc> = "2026-01-01T00:00:05Z".parse().unwrap();
        assert_eq!(ready_for(&p, now), Some(Duration::from_secs(5)));
        let bare = pod(json!({"metadata": {"name": "b"}}));
        assert_eq!(phase(&bare), "");
        assert!(!terminal(&bare) && !is_ready(&bare) && !scheduled(&bare));
        assert_eq!((controller_uid(&bare), ready_for(&bare, now)), (None, None));
        let failed = pod(json!({"metadata": {"name": "c"}, "status": {"phase": "Failed"}}));
        assert!(terminal(&failed));
    }

    #[test]
    fn controller_refs_name_the_owner_kind_and_version() {
        let rs: ReplicaSet =
            serde_json::from_value(json!({"metadata": {"name": "web", "uid": "u1"}})).unwrap();
        let r = controller_ref(&rs);
        assert_eq!(
            (r.api_version.as_str(), r.kind.as_str(), r.name.as_str()),
            ("apps/v1", "ReplicaSet", "web")
        );
        assert_eq!(
            (r.uid.as_str(), r.controller, r.block_owner_deletion),
            ("u1", Some(true), Some(true))
        );
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap();
        let r = controller_ref(&svc);
        assert_eq!(
            (r.api_version.as_str(), r.kind.as_str(), r.uid.as_str()),
            ("v1", "Service", "")
        );
    }
}
