//! The ReplicaSet controller: keeps `spec.replicas` pods of the template, adopting orphans
//! that match the selector, releasing owned pods that stopped matching, and deleting the least
//! useful pods first (unscheduled, then not running, then not ready, then the newest).
//!
//! [`plan`] decides from the cache alone; [`reconcile`] carries the plan out through the API.
//! Creations and deletions not yet seen in the cache are remembered for a while
//! ([`Expectations`]), so a reconcile racing the watch does not create or delete twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::chrono::{DateTime, Utc};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::expectations::Expectations;
use crate::requeue;
use api::pods::{controller_ref, controller_uid, is_ready, phase, ready_for, scheduled, terminal};

/// What the controller should do for one ReplicaSet.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: usize,
    /// Pod names to delete, least useful first.
    pub delete: Vec<String>,
    /// Orphan pods to take over.
    pub adopt: Vec<String>,
    /// Owned pods that no longer match the selector.
    pub release: Vec<String>,
    pub replicas: i32,
    pub ready: i32,
    pub available: i32,
    pub fully_labeled: i32,
    /// When the next ready pod becomes available (ready for minReadySeconds), if one waits.
    pub next_available_in: Option<Duration>,
}

/// Lower is deleted first.
fn usefulness(p: &Pod) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let created = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_rfc3339())
        .unwrap_or_default();
    (
        scheduled(p) as u8,
        (phase(p) == "Running") as u8,
        is_ready(p) as u8,
        std::cmp::Reverse(created),
    )
}

/// The plan for `rs` given the pods of its namespace in the cache, and the names created or
/// deleted lately that the cache may not show yet.
pub fn plan(rs: &ReplicaSet, pods: &[Arc<Pod>], pending: &Pending, now: DateTime<Utc>) -> Plan {
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1).max(0) as usize;
    let mut out = Plan::default();
    let mut active: Vec<&Pod> = Vec::new();
    for p in pods {
        let labels = p.labels();
        let matching = api::selector::selects(&spec.selector, labels);
        let owner = controller_uid(p);
        let terminating = p.metadata.deletion_timestamp.is_some();
        let finished = terminal(p);
        match (owner, matching) {
            (Some(o), true) if o == uid => {}
            (Some(o), false) if o == uid => {
                out.release.push(p.name_any());
                continue;
            }
            (None, true) if !terminating && !finished => out.adopt.push(p.name_any()),
            _ => continue,
        }
        if terminating || finished || pending.deleted.contains(&p.name_any()) {
            continue;
        }
        active.push(p);
    }
    let seen: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    let unseen_creates = pending.created.keys().filter(|n| !seen.contains(n)).count();
    let have = active.len() + unseen_creates;
    if have < desired {
        out.create = desired - have;
    } else if active.len() > desired {
        let mut ranked = active.clone();
        ranked.sort_by_key(|p| usefulness(p));
        out.delete = ranked
            .iter()
            .take(active.len() - desired)
            .map(|p| p.name_any())
            .collect();
    }
    out.replicas = active.len() as i32;
    out.ready = active.iter().filter(|p| is_ready(p)).count() as i32;
    // Available: Ready for at least minReadySeconds.
    let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
    for p in &active {
        match ready_for(p, now) {
            Some(d) if d >= min_ready => out.available += 1,
            Some(d) => {
                let wait = min_ready - d;
                out.next_available_in = Some(out.next_available_in.map_or(wait, |w| w.min(wait)));
            }
            None => {}
        }
    }
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    out.fully_labeled = active
        .iter()
        .filter(|p| {
            template_labels
                .iter()
                .all(|(k, v)| p.labels().get(k) == Some(v))
        })
        .count() as i32;
    out
}

/// Names created or deleted lately for one ReplicaSet that the cache may not show yet.
pub type Pending = crate::expectations::Pending<()>;

pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    /// Creations and deletions per ReplicaSet uid not yet seen in the cache.
    pub expectations: Expectations<()>,
    pub events: kubeclient::events::Recorder,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Kube(#[from] kube::Error),
}

/// Carries out the plan for one ReplicaSet.
pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = rs.namespace().unwrap_or_else(|| "default".into());
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .collect();
    let pending = ctx.expectations.pending(&uid, &pods);
    let plan = plan(&rs, &pods, &pending, Utc::now());
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for name in &plan.adopt {
        let patch = json!({"metadata": {"ownerReferences": [controller_ref(&*rs)]}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    for name in &plan.release {
        let patch = json!({"metadata": {"ownerReferences": null}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    if plan.create > 0 {
        let template = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default();
        for _ in 0..plan.create.min(500) {
            let mut meta = template.metadata.clone().unwrap_or_default();
            meta.name = None;
            meta.generate_name = Some(format!("{}-", rs.name_any()));
            meta.namespace = Some(ns.clone());
            meta.owner_references = Some(vec![controller_ref(&*rs)]);
            let pod = Pod {
                metadata: meta,
                spec: template.spec.clone(),
                status: None,
            };
            let created = api.create(&PostParams::default(), &pod).await?;
            ctx.expectations.created(&uid, created.name_any(), ());
            ctx.events.record(
                &*rs,
                kubeclient::events::Type::Normal,
                "SuccessfulCreate",
                &format!("Created pod: {}", created.name_any()),
            );
        }
    }
    for name in &plan.delete {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                ctx.expectations.deleted(&uid, name.clone());
                ctx.events.record(
                    &*rs,
                    kubeclient::events::Type::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {name}"),
                );
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let generation = rs.metadata.generation.unwrap_or(0);
    let status = json!({"status": {
        "replicas": plan.replicas, "readyReplicas": plan.ready, "availableReplicas": plan.available,
        "fullyLabeledReplicas": plan.fully_labeled, "observedGeneration": generation,
    }});
    let current = rs.status.clone().unwrap_or_default();
    let changed = current.replicas != plan.replicas
        || current.ready_replicas.unwrap_or(0) != plan.ready
        || current.available_replicas.unwrap_or(0) != plan.available
        || current.fully_labeled_replicas.unwrap_or(0) != plan.fully_labeled
        || current.observed_generation.unwrap_or(0) != generation;
    if changed {
        let rss: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        rss.patch_status(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await?;
    }
    // Work left (pods on their way, or going) is looked at again soon, in case the cache
    // that woke this reconcile ran ahead of the one it decided from.
    let busy = plan.create > 0
        || !plan.delete.is_empty()
        || plan.replicas != rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    Ok(requeue::after_success(busy, plan.next_available_in))
}

/// Labels of a pod template as a map (for tests and the deployment controller).
pub fn template_labels(rs: &ReplicaSet) -> BTreeMap<String, String> {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::chrono;

    fn rs(replicas: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "default", "uid": "rs-uid"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}
        }))
        .unwrap()
    }

    fn pod(
        name: &str,
        owner: Option<&str>,
        node: Option<&str>,
        ready: bool,
        created: &str,
    ) -> Arc<Pod> {
        let mut p = json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}, "creationTimestamp": created},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": if node.is_some() { "Running" } else { "Pending" },
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        if let Some(o) = owner {
            p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": o, "controller": true}]);
        }
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        Arc::new(serde_json::from_value(p).unwrap())
    }

    #[test]
    fn creates_the_missing_and_counts_what_is_on_its_way() {
        let pods = vec![pod(
            "a",
            Some("rs-uid"),
            Some("n"),
            true,
            "2026-01-01T00:00:00Z",
        )];
        let p = plan(&rs(3), &pods, &Pending::default(), Utc::now());
        assert_eq!(p.create, 2);
        assert_eq!((p.replicas, p.ready), (1, 1));
        let mut pending = Pending::default();
        pending.created.insert("b".into(), ());
        assert_eq!(
            plan(&rs(3), &pods, &pending, Utc::now()).create,
            1,
            "b is on its way"
        );
    }

    #[test]
    fn deletes_the_least_useful_first_and_adopts_orphans() {
        let pods = vec![
            pod(
                "ready-old",
                Some("rs-uid"),
                Some("n"),
                true,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "ready-new",
                Some("rs-uid"),
                Some("n"),
                true,
                "2026-01-02T00:00:00Z",
            ),
            pod(
                "unready",
                Some("rs-uid"),
                Some("n"),
                false,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "unscheduled",
                Some("rs-uid"),
                None,
                false,
                "2026-01-01T00:00:00Z",
            ),
            pod("orphan", None, Some("n"), true, "2026-01-01T00:00:00Z"),
            pod(
                "theirs",
                Some("other"),
                Some("n"),
                true,
                "2026-01-01T00:00:00Z",
            ),
        ];
        let p = plan(&rs(2), &pods, &Pending::default(), Utc::now());
        assert_eq!(p.adopt, vec!["orphan".to_string()]);
        assert_eq!(p.delete, vec!["unscheduled", "unready", "ready-new"]);
        assert_eq!(p.create, 0);
    }

    #[test]
    fn a_pod_is_available_only_after_min_ready_seconds() {
        let mut set = rs(1);
        set.spec.as_mut().unwrap().min_ready_seconds = Some(10);
        let mut p = (*pod("a", Some("rs-uid"), Some("n"), true, "2026-01-01T00:00:00Z")).clone();
        let since: DateTime<Utc> = "2026-01-01T00:01:00Z".parse().unwrap();
        p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(since));
        let pods = vec![Arc::new(p)];
        let early = plan(
            &set,
            &pods,
            &Pending::default(),
            since + chrono::Duration::seconds(4),
        );
        assert_eq!((early.ready, early.available), (1, 0));
        assert_eq!(early.next_available_in, Some(Duration::from_secs(6)));
        let late = plan(
            &set,
            &pods,
            &Pending::default(),
            since + chrono::Duration::seconds(10),
        );
        assert_eq!(
            (late.ready, late.available, late.next_available_in),
            (1, 1, None)
        );
    }
}
