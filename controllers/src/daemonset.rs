//! The DaemonSet controller (apps/v1): one pod of the template on every eligible node, as
//! Kubernetes runs it.
//!
//! - A node is eligible when the template's `nodeName` (if any), `nodeSelector` and required
//!   node affinity match it and the pod tolerates its NoSchedule and NoExecute taints. Daemon
//!   pods get Kubernetes' automatic tolerations ([`daemon_tolerations`]: not-ready and
//!   unreachable NoExecute, the pressure taints and `unschedulable` NoSchedule, and
//!   network-unavailable with hostNetwork), so cordoned and NotReady nodes keep their daemons.
//!   A node whose NoSchedule taint is not tolerated gets no new pod but keeps the one it has
//!   (only an untolerated NoExecute taint removes it), as in Kubernetes.
//! - Pods are pinned as Kubernetes pins them: required node affinity `matchFields
//!   metadata.name In [node]`, never `spec.nodeName`; the scheduler binds them. A pod's node is
//!   its `nodeName`, or else that affinity.
//! - Pods on nodes no longer eligible or gone are deleted; of several on one node, the oldest
//!   ready is kept. A Failed (or Succeeded) pod is deleted, and replaced once it is gone or
//!   terminating; a pod being deleted blocks a new one on its node until it is gone.
//! - RollingUpdate (the default; maxUnavailable 1 by default, an int or a percentage of the
//!   desired count, rounded up): pods whose `controller-revision-hash` is not the template's
//!   hash are deleted while the nodes without an available current pod stay within
//!   maxUnavailable; old pods that are not available are replaced at once. maxSurge is not
//!   honoured (treated as 0). OnDelete: old pods are replaced only when someone deletes them.
//! - Status: desired/current/misscheduled/ready/available/unavailable/updated numbers and
//!   observedGeneration, so `kubectl get ds` and `kubectl rollout status ds/x` work. A
//!   ControllerRevision per template is recorded (`<ds>-<hash>`, pruned beyond
//!   `revisionHistoryLimit`), so `kubectl rollout history|undo ds/x` work.
//! - Orphans matching the selector are adopted; owned pods that stop matching are released.
//!
//! [`plan`] decides from the cache and the time alone; [`reconcile`] writes. Creations and
//! deletions not yet seen in the cache are remembered for a while (see [`Pending`]), so a
//! reconcile racing the watch does not create twice.
//!
//! Nodes changing (added, removed, relabelled, tainted) must wake every DaemonSet: wire it as
//! `Controller::for_stream(..).owns_stream(pods).reconcile_all_on(nodes.subscribe().map(|_| ()))`.
//!
//! Not done: maxSurge, a back-off for pods that keep failing on one node, conditions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::chrono::{DateTime, Utc};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::error::failed;
use crate::expectations::Expectations;
use crate::requeue;
use crate::statefulset::{record_revision, RecordedRevisions};
use api::placement;
use api::pods::{controller_ref, controller_uid, is_ready, ready_for, scheduled, terminal};

pub use crate::error::Error;

/// The label carrying the hash of the template a pod was made from.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";
/// The label carrying the DaemonSet generation a pod was made at.
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";

/// At most this many pods are created or deleted in one pass, as in Kubernetes.
const MAX_PER_PASS: usize = 500;

/// Pods created or deleted lately for one DaemonSet that the cache may not show yet: created
/// pod name → the node it is for.
pub type Pending = crate::expectations::Pending<String>;

/// What the controller should do for one DaemonSet.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// Nodes to create a daemon pod for.
    pub create: Vec<String>,
    /// Pod names to delete.
    pub delete: Vec<String>,
    /// Orphan pods matching the selector, to take over.
    pub adopt: Vec<String>,
    /// Owned pods that no longer match the selector, to let go.
    pub release: Vec<String>,
    /// The status to write (written only when it differs).
    pub status: DaemonSetStatus,
    /// When a ready pod becomes available (minReadySeconds): look again then.
    pub wake_in: Option<Duration>,
}

/// The tolerations Kubernetes gives every daemon pod, added to (or replacing an equal one of)
/// the template's: daemons keep running on nodes that are not ready, unreachable, under
/// pressure or cordoned.
pub fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut out = spec.tolerations.clone().unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        let t = Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            value: None,
            toleration_seconds: None,
        };
        let same = |o: &Toleration| {
            o.key == t.key
                && o.effect == t.effect
                && o.operator == t.operator
                && o.value.as_deref().unwrap_or_default().is_empty()
        };
        match out.iter_mut().find(|o| same(o)) {
            Some(o) => *o = t,
            None => out.push(t),
        }
    };
    add(api::wellknown::TAINT_NOT_READY, "NoExecute");
    add(api::wellknown::TAINT_UNREACHABLE, "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add(api::wellknown::TAINT_UNSCHEDULABLE, "NoSchedule");
    if spec.host_network == Some(true) {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
    out
}

/// Whether a daemon pod with `spec` (its tolerations already [`daemon_tolerations`]) should run
/// on `node` (a new pod is made for it), and whether one there may keep running.
pub fn eligibility(spec: &PodSpec, node: &Node) -> (bool, bool) {
    let name = node.name_any();
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name)
    {
        return (false, false);
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if !placement::node_matches(spec.node_selector.as_ref(), required, node.labels(), &name) {
        return (false, false);
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let untolerated = |effect: &str| {
        taints
            .iter()
            .any(|t| t.effect == effect && !placement::tolerates(tolerations, t))
    };
    let no_execute = untolerated("NoExecute");
    let no_schedule = untolerated("NoSchedule");
    (!no_execute && !no_schedule, !no_execute)
}

/// The node a daemon pod is for: its `nodeName`, or else its required node affinity's
/// `matchFields metadata.name In [node]`.
pub fn target_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n.to_string());
    }
    let required = spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?;
    required.node_selector_terms.iter().find_map(|t| {
        t.match_fields.iter().flatten().find_map(|r| {
            let values = r.values.as_deref().unwrap_or_default();
            (r.key == "metadata.name" && r.operator == "In" && values.len() == 1)
                .then(|| values[0].clone())
        })
    })
}

/// The affinity that pins a pod to `node`, replacing the template's required node terms (the
/// controller has already checked them), as Kubernetes does.
fn pinned_affinity(affinity: Option<Affinity>, node: &str) -> Affinity {
    let mut affinity = affinity.unwrap_or_default();
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.to_string()]),
            }]),
        }],
    });
    affinity
}

/// The hash of the DaemonSet's template: the `controller-revision-hash` of its current pods.
pub fn hash_of(ds: &DaemonSet) -> String {
    let template = ds
        .spec
        .as_ref()
        .map(|s| serde_json::to_value(&s.template).unwrap_or_default())
        .unwrap_or_default();
    crate::deployment::template_hash(&template)
}

/// maxUnavailable of `desired` (an int or a percentage, rounded up), at least 1.
fn max_unavailable(v: Option<&IntOrString>, desired: i32) -> i32 {
    let n = match v {
        None => 1,
        Some(IntOrString::Int(n)) => (*n).max(0),
        Some(IntOrString::String(s)) => {
            let pct: f64 = s.trim_end_matches('%').trim().parse().unwrap_or(0.0);
            (f64::from(desired) * pct / 100.0).ceil() as i32
        }
    };
    n.max(1)
}

/// The order in which a node's pods are worth keeping (first is kept): not being deleted, not
/// finished, ready, scheduled, oldest, by name.
fn keep_order(p: &Pod, deleting: bool) -> (bool, bool, bool, bool, DateTime<Utc>, String) {
    (
        deleting,
        terminal(p),
        !is_ready(p),
        !scheduled(p),
        p.metadata
            .creation_timestamp
            .as_ref()
            .map_or(DateTime::<Utc>::MAX_UTC, |t| t.0),
        p.name_any(),
    )
}

/// The plan for `ds` given the nodes and the pods of its namespace in the cache, the pods
/// created or deleted lately that the cache may not show yet, and the time.
pub fn plan(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
    pending: &Pending,
    now: DateTime<Utc>,
) -> Plan {
    let uid = ds.metadata.uid.as_deref().unwrap_or_default();
    let spec = ds.spec.clone().unwrap_or_default();
    let hash = hash_of(ds);
    let mut pod_spec = spec.template.spec.clone().unwrap_or_default();
    pod_spec.tolerations = Some(daemon_tolerations(&pod_spec));
    let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
    let mut out = Plan::default();
    let wake = |d: Duration, out: &mut Plan| {
        out.wake_in = Some(out.wake_in.map_or(d, |w| w.min(d)));
    };
    let available = |p: &Pod, out: &mut Plan| match ready_for(p, now) {
        Some(d) if d >= min_ready => true,
        Some(d) => {
            wake(min_ready - d, out);
            false
        }
        None => false,
    };

    // This DaemonSet's pods, by the node each is for.
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in pods {
        let matching = api::selector::selects(&spec.selector, p.labels());
        let deleting = p.metadata.deletion_timestamp.is_some();
        match (controller_uid(p), matching) {
            (Some(o), true) if !uid.is_empty() && o == uid => {}
            (Some(o), false) if !uid.is_empty() && o == uid => {
                out.release.push(p.name_any());
                continue;
            }
            (None, true) if !uid.is_empty() && !deleting && !terminal(p) => {
                out.adopt.push(p.name_any())
            }
            _ => continue,
        }
        // A finished pod on its way out is no longer this node's daemon.
        let going = deleting || pending.deleted.contains(&p.name_any());
        if terminal(p) && going {
            continue;
        }
        if let Some(node) = target_node(p) {
            by_node.entry(node).or_default().push(p);
        }
    }
    let seen: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
    let in_flight: BTreeSet<&String> = pending
        .created
        .iter()
        .filter(|(name, _)| !seen.contains(*name))
        .map(|(_, node)| node)
        .collect();

    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        != Some("OnDelete");
    let mut status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        ..Default::default()
    };
    let mut delete: Vec<String> = Vec::new();
    // Nodes that should run the daemon: their kept pod, if any, for the rolling update.
    let mut desired_nodes: Vec<(String, Option<&Pod>)> = Vec::new();
    let mut sorted_nodes: Vec<&Arc<Node>> = nodes.iter().collect();
    sorted_nodes.sort_by_key(|n| n.name_any());
    for node in sorted_nodes {
        let name = node.name_any();
        let (should_run, may_continue) = eligibility(&pod_spec, node);
        let mut here = by_node.remove(&name).unwrap_or_default();
        let going = |p: &Pod| {
            p.metadata.deletion_timestamp.is_some() || pending.deleted.contains(&p.name_any())
        };
        here.sort_by_key(|p| keep_order(p, going(p)));

        // Status, from the cache as it is.
        if should_run {
            status.desired_number_scheduled += 1;
            if let Some(best) = here.first() {
                status.current_number_scheduled += 1;
                if is_ready(best) {
                    status.number_ready += 1;
                    if available(best, &mut out) {
                        *status.number_available.get_or_insert(0) += 1;
                    }
                }
                if best.labels().get(REVISION_HASH_LABEL) == Some(&hash) {
                    *status.updated_number_scheduled.get_or_insert(0) += 1;
                }
            }
        } else if !here.is_empty() {
            status.number_misscheduled += 1;
        }

        // What to do on this node.
        let exists = !here.is_empty() || in_flight.contains(&name);
        let mut kept: Option<&Pod> = None;
        if should_run && !exists {
            out.create.push(name.clone());
        } else if may_continue {
            let mut running = Vec::new();
            for p in &here {
                if going(p) {
                    continue;
                }
                if terminal(p) {
                    delete.push(p.name_any());
                } else {
                    running.push(*p);
                }
            }
            // `here` is in keep order: the first running pod stays, duplicates go.
            if let Some((first, rest)) = running.split_first() {
                kept = Some(*first);
                delete.extend(rest.iter().map(|p| p.name_any()));
            }
        } else {
            delete.extend(here.iter().filter(|p| !going(p)).map(|p| p.name_any()));
        }
        if should_run {
            desired_nodes.push((name, kept));
        }
    }
    // Pods for nodes that no longer exist.
    for here in by_node.values() {
        delete.extend(
            here.iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| !pending.deleted.contains(&p.name_any()))
                .map(|p| p.name_any()),
        );
    }

    // RollingUpdate: replace old pods while the nodes lacking an available current pod stay
    // within maxUnavailable.
    if rolling {
        let ru = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.clone())
            .unwrap_or_default();
        let budget = max_unavailable(ru.max_unavailable.as_ref(), status.desired_number_scheduled);
        let mut unavailable = 0;
        let mut candidates: Vec<String> = Vec::new();
        for (_, kept) in &desired_nodes {
            match kept {
                None => unavailable += 1,
                Some(p) => {
                    let current = p.labels().get(REVISION_HASH_LABEL) == Some(&hash);
                    let ok = available(p, &mut out);
                    match (current, ok) {
                        (true, true) => {}
                        (true, false) => unavailable += 1,
                        // Not available anyway: replaced at once.
                        (false, false) => {
                            unavailable += 1;
                            delete.push(p.name_any());
                        }
                        (false, true) => candidates.push(p.name_any()),
                    }
                }
            }
        }
        let room = (budget - unavailable).max(0) as usize;
        delete.extend(candidates.into_iter().take(room));
    }

    let available_count = status.number_available.unwrap_or(0);
    status.number_available = Some(available_count);
    status.number_unavailable = Some((status.desired_number_scheduled - available_count).max(0));
    status.updated_number_scheduled = Some(status.updated_number_scheduled.unwrap_or(0));
    let mut seen_delete = BTreeSet::new();
    delete.retain(|n| seen_delete.insert(n.clone()));
    delete.truncate(MAX_PER_PASS);
    out.create.truncate(MAX_PER_PASS);
    out.delete = delete;
    out.status = status;
    out
}

/// The pod to create for `ds` on `node`: the template, its labels plus the revision hash and
/// template generation, the DaemonSet as controller, the automatic tolerations, and pinned to
/// the node by required node affinity.
pub fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    meta.name = None;
    meta.generate_name = Some(format!("{}-", ds.name_any()));
    meta.namespace = ds.namespace();
    meta.resource_version = None;
    meta.uid = None;
    meta.owner_references = Some(vec![controller_ref(ds)]);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(REVISION_HASH_LABEL.into(), hash.to_string());
    labels.insert(
        TEMPLATE_GENERATION_LABEL.into(),
        ds.metadata.generation.unwrap_or(1).to_string(),
    );
    let mut spec = template.spec.unwrap_or_default();
    spec.tolerations = Some(daemon_tolerations(&spec));
    spec.affinity = Some(pinned_affinity(spec.affinity.take(), node));
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}

pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    /// Creations and deletions per DaemonSet uid not yet seen in the cache (with the node
    /// each created pod is for).
    pub expectations: Expectations<String>,
    /// The ControllerRevision last recorded per DaemonSet uid.
    pub revisions: RecordedRevisions,
}

/// The status fields this controller owns, as a merge patch.
fn status_patch(s: &DaemonSetStatus) -> serde_json::Value {
    json!({"status": {
        "desiredNumberScheduled": s.desired_number_scheduled,
        "currentNumberScheduled": s.current_number_scheduled,
        "numberMisscheduled": s.number_misscheduled,
        "numberReady": s.number_ready,
        "numberAvailable": s.number_available.unwrap_or(0),
        "numberUnavailable": s.number_unavailable.unwrap_or(0),
        "updatedNumberScheduled": s.updated_number_scheduled.unwrap_or(0),
        "observedGeneration": s.observed_generation.unwrap_or(0),
    }})
}

/// Carries out the plan for one DaemonSet.
pub async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_else(|| "default".into());
    let name = ds.name_any();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .collect();
    let nodes = ctx.nodes.state();
    let hash = hash_of(&ds);
    let pending = ctx.expectations.pending(&uid, &pods);
    let plan = plan(&ds, &nodes, &pods, &pending, Utc::now());

    // The template's ControllerRevision, for `kubectl rollout history|undo`: not needed to
    // run the pods, so a failure is only logged (and tried again next pass).
    let in_use: BTreeSet<String> = pods
        .iter()
        .filter(|p| controller_uid(p) == Some(uid.as_str()))
        .filter_map(|p| p.labels().get(REVISION_HASH_LABEL))
        .map(|h| format!("{name}-{h}"))
        .collect();
    let spec = ds.spec.clone().unwrap_or_default();
    let record = crate::statefulset::Revision {
        namespace: &ns,
        owner: controller_ref(&*ds),
        name: format!("{name}-{hash}"),
        hash: hash.clone(),
        template: &spec.template,
        history_limit: spec.revision_history_limit.unwrap_or(10).max(0) as usize,
        in_use,
    };
    if let Err(e) = record_revision(&ctx.client, &ctx.revisions, record).await {
        tracing::warn!("daemonset {ns}/{name}: recording its ControllerRevision: {e}");
    }

    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for pod in &plan.adopt {
        let patch = json!({"metadata": {"ownerReferences": [controller_ref(&*ds)]}});
        api.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(failed(format!("daemonset {ns}/{name}: adopting pod {pod}")))?;
    }
    for pod in &plan.release {
        let patch = json!({"metadata": {"ownerReferences": null}});
        api.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(failed(format!(
                "daemonset {ns}/{name}: releasing pod {pod}"
            )))?;
    }
    for pod in &plan.delete {
        match api.delete(pod, &DeleteParams::default()).await {
            Ok(_) => ctx.expectations.deleted(&uid, pod.clone()),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(failed(format!("daemonset {ns}/{name}: deleting pod {pod}"))(e)),
        }
    }
    for node in &plan.create {
        let pod = pod_for(&ds, node, &hash);
        let created = api
            .create(&PostParams::default(), &pod)
            .await
            .map_err(failed(format!(
                "daemonset {ns}/{name}: creating a pod for node {node}"
            )))?;
        ctx.expectations
            .created(&uid, created.name_any(), node.clone());
    }

    let old = ds.status.clone().unwrap_or_default();
    let s = &plan.status;
    let changed = old.desired_number_scheduled != s.desired_number_scheduled
        || old.current_number_scheduled != s.current_number_scheduled
        || old.number_misscheduled != s.number_misscheduled
        || old.number_ready != s.number_ready
        || old.number_available.unwrap_or(0) != s.number_available.unwrap_or(0)
        || old.number_unavailable.unwrap_or(0) != s.number_unavailable.unwrap_or(0)
        || old.updated_number_scheduled.unwrap_or(0) != s.updated_number_scheduled.unwrap_or(0)
        || old.observed_generation != s.observed_generation;
    if changed {
        let dss: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        dss.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&status_patch(s)),
        )
        .await
        .map_err(failed(format!("daemonset {ns}/{name}: writing status")))?;
    }

    // Work under way is looked at again soon, in case the cache that woke this reconcile ran
    // ahead of the one it decided from; the rest (pods turning ready, going away) arrives as
    // pod events.
    let busy = !plan.create.is_empty()
        || !plan.delete.is_empty()
        || !pending.created.is_empty()
        || !pending.deleted.is_empty();
    Ok(requeue::after_success(busy, plan.wake_in))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const T0: &str = "2026-01-01T00:00:00Z";

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// A DaemonSet; `extra` is merged into its spec, `pod_spec` into its template's spec.
    fn ds(extra: Value, pod_spec: Value) -> DaemonSet {
        let mut d = json!({
            "metadata": {"name": "agent", "namespace": "default", "uid": "ds-uid", "generation": 3},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"containers": [{"name": "c", "image": "i"}]}}},
        });
        for (k, v) in extra.as_object().unwrap() {
            d["spec"][k] = v.clone();
        }
        for (k, v) in pod_spec.as_object().unwrap() {
            d["spec"]["template"]["spec"][k] = v.clone();
        }
        serde_json::from_value(d).unwrap()
    }

    fn node(name: &str, labels: Value, spec: Value) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "labels": labels}, "spec": spec}),
            )
            .unwrap(),
        )
    }

    fn plain(name: &str) -> Arc<Node> {
        node(name, json!({}), json!({}))
    }

    /// A running daemon pod of `d` on `node`, ready or not (since T0), at revision `hash`.
    fn pod(name: &str, d: &DaemonSet, node: &str, ready: bool, hash: &str) -> Arc<Pod> {
        let mut p = pod_for(d, node, hash);
        p.metadata.name = Some(name.into());
        p.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(T0)));
        p.spec.as_mut().unwrap().node_name = Some(node.into());
        p.status = Some(
            serde_json::from_value(json!({"phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                                "lastTransitionTime": T0}]}))
            .unwrap(),
        );
        Arc::new(p)
    }

    fn with_phase(p: Arc<Pod>, phase: &str) -> Arc<Pod> {
        let mut p = (*p).clone();
        p.status.as_mut().unwrap().phase = Some(phase.into());
        Arc::new(p)
    }

    fn none() -> Pending {
        Pending::default()
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn eligible_nodes_follow_selector_affinity_and_taints() {
        let d = ds(
            json!({}),
            json!({"nodeSelector": {"disk": "ssd"},
                   "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                       {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}]}}}}),
        );
        let nodes = vec![
            node("ok", json!({"disk": "ssd", "zone": "a"}), json!({})),
            node("hdd", json!({"disk": "hdd", "zone": "a"}), json!({})),
            node("zone-c", json!({"disk": "ssd", "zone": "c"}), json!({})),
            node(
                "tainted",
                json!({"disk": "ssd", "zone": "b"}),
                json!({"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}),
            ),
            node(
                "cordoned",
                json!({"disk": "ssd", "zone": "b"}),
                json!({"unschedulable": true,
                       "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}),
            ),
            node(
                "not-ready",
                json!({"disk": "ssd", "zone": "b"}),
                json!({"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]}),
            ),
        ];
        let p = plan(&d, &nodes, &[], &none(), t(T0));
        assert_eq!(p.create, vec!["cordoned", "not-ready", "ok"]);
        assert_eq!(p.status.desired_number_scheduled, 3);
        // A toleration in the template opens the tainted node.
        let d = ds(
            json!({}),
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}),
        );
        let p = plan(&d, &nodes, &[], &none(), t(T0));
        assert_eq!(p.create.len(), 6);
        // The template's nodeName limits the set to that node.
        let d = ds(json!({}), json!({"nodeName": "ok"}));
        assert_eq!(plan(&d, &nodes, &[], &none(), t(T0)).create, vec!["ok"]);
    }

    #[test]
    fn an_untolerated_no_schedule_taint_keeps_the_pod_but_no_execute_removes_it() {
        let d = ds(json!({}), json!({}));
        let hash = hash_of(&d);
        let nodes = vec![
            node(
                "a",
                json!({}),
                json!({"taints": [{"key": "k", "effect": "NoSchedule"}]}),
            ),
            node(
                "b",
                json!({}),
                json!({"taints": [{"key": "k", "effect": "NoExecute"}]}),
            ),
        ];
        let pods = vec![
            pod("pa", &d, "a", true, &hash),
            pod("pb", &d, "b", true, &hash),
        ];
        let p = plan(&d, &nodes, &pods, &none(), t(T0));
        assert!(p.create.is_empty());
        assert_eq!(p.delete, vec!["pb"]);
        assert_eq!(p.status.desired_number_scheduled, 0);
        assert_eq!(p.status.number_misscheduled, 2);
    }

    #[test]
    fn one_pod_per_node_oldest_ready_kept() {
        let d = ds(json!({}), json!({}));
        let hash = hash_of(&d);
        let nodes = vec![plain("a"), plain("b"), plain("c")];
        let old_unready = pod("a-1", &d, "a", false, &hash);
        let mut newer_ready = (*pod("a-2", &d, "a", true, &hash)).clone();
        newer_ready.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t("2026-01-01T00:05:00Z")),
        );
        let mut newest_ready = newer_ready.clone();
        newest_ready.metadata.name = Some("a-3".into());
        newest_ready.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t("2026-01-01T00:09:00Z")),
        );
        let pods = vec![
            old_unready,
            Arc::new(newer_ready),
            Arc::new(newest_ready),
            pod("b-1", &d, "b", true, &hash),
        ];
        // c has a pod on its way that the cache does not show yet.
        let mut pending = none();
        pending.created.insert("c-1".into(), "c".into());
        let p = plan(&d, &nodes, &pods, &pending, t(T0));
        assert!(p.create.is_empty(), "c's pod is on its way");
        assert_eq!(sorted(p.delete), vec!["a-1", "a-3"]);
        assert_eq!(p.status.current_number_scheduled, 2);
        // Without the expectation, c gets its pod.
        let p = plan(&d, &nodes, &pods, &none(), t(T0));
        assert_eq!(p.create, vec!["c"]);
    }

    #[test]
    fn pods_leave_nodes_no_longer_eligible_or_gone() {
        let d = ds(json!({}), json!({"nodeSelector": {"role": "edge"}}));
        let hash = hash_of(&d);
        let nodes = vec![
            node("edge", json!({"role": "edge"}), json!({})),
            node("relabelled", json!({"role": "core"}), json!({})),
        ];
        let pods = vec![
            pod("p-edge", &d, "edge", true, &hash),
            pod("p-relabelled", &d, "relabelled", true, &hash),
            pod("p-gone", &d, "gone", true, &hash),
        ];
        let p = plan(&d, &nodes, &pods, &none(), t(T0));
        assert_eq!(sorted(p.delete), vec!["p-gone", "p-relabelled"]);
        assert!(p.create.is_empty());
        assert_eq!(p.status.number_misscheduled, 1);
        assert_eq!(p.status.desired_number_scheduled, 1);
    }

    #[test]
    fn a_failed_pod_is_deleted_then_replaced() {
        let d = ds(json!({}), json!({}));
        let hash = hash_of(&d);
        let nodes = vec![plain("a")];
        let failed = with_phase(pod("a-1", &d, "a", false, &hash), "Failed");
        let p = plan(&d, &nodes, std::slice::from_ref(&failed), &none(), t(T0));
        assert_eq!(p.delete, vec!["a-1"]);
        assert!(p.create.is_empty(), "replaced once it is going");
        // Deleted (seen by this process, or marked in the cache): a new pod.
        let mut pending = none();
        pending.deleted.insert("a-1".into());
        let p = plan(&d, &nodes, std::slice::from_ref(&failed), &pending, t(T0));
        assert_eq!((p.create, p.delete), (vec!["a".to_string()], vec![]));
        // A running pod being deleted blocks the new one until it is gone.
        let mut going = (*pod("a-2", &d, "a", true, &hash)).clone();
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(T0)));
        let p = plan(&d, &nodes, &[Arc::new(going)], &none(), t(T0));
        assert!(p.create.is_empty() && p.delete.is_empty());
    }

    #[test]
    fn rolling_update_stays_within_max_unavailable() {
        let d = ds(json!({}), json!({}));
        let nodes: Vec<Arc<Node>> = ["a", "b", "c", "d"].iter().map(|n| plain(n)).collect();
        let old: Vec<Arc<Pod>> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| pod(&format!("old-{n}"), &d, n, true, "oldhash"))
            .collect();
        // Default maxUnavailable 1: one old pod at a time.
        let p = plan(&d, &nodes, &old, &none(), t(T0));
        assert_eq!(p.delete, vec!["old-a"]);
        assert_eq!(p.status.updated_number_scheduled, Some(0));
        // a's new pod is not ready yet: nothing more goes.
        let hash = hash_of(&d);
        let mut pods = old[1..].to_vec();
        pods.push(pod("new-a", &d, "a", false, &hash));
        let p = plan(&d, &nodes, &pods, &none(), t(T0));
        assert!(p.delete.is_empty() && p.create.is_empty());
        // Ready: the next one.
        pods.pop();
        pods.push(pod("new-a", &d, "a", true, &hash));
        let p = plan(&d, &nodes, &pods, &none(), t(T0));
        assert_eq!(p.delete, vec!["old-b"]);
        assert_eq!(p.status.updated_number_scheduled, Some(1));
        // 50%: two at a time. An old pod that is not ready is replaced at once and counts
        // against the budget.
        let d50 = ds(
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "50%"}}}),
            json!({}),
        );
        let p = plan(&d50, &nodes, &old, &none(), t(T0));
        assert_eq!(p.delete, vec!["old-a", "old-b"]);
        let mut pods = old.clone();
        pods[3] = pod("old-d", &d50, "d", false, "oldhash");
        let p = plan(&d50, &nodes, &pods, &none(), t(T0));
        assert_eq!(sorted(p.delete), vec!["old-a", "old-d"]);
        // OnDelete: nothing is replaced.
        let on_delete = ds(json!({"updateStrategy": {"type": "OnDelete"}}), json!({}));
        let p = plan(&on_delete, &nodes, &old, &none(), t(T0));
        assert!(p.delete.is_empty());
    }

    #[test]
    fn status_counts_nodes_as_kubernetes_does() {
        let d = ds(
            json!({"minReadySeconds": 30}),
            json!({"nodeSelector": {"run": "yes"}}),
        );
        let hash = hash_of(&d);
        let yes = json!({"run": "yes"});
        let nodes = vec![
            node("a", yes.clone(), json!({})),
            node("b", yes.clone(), json!({})),
            node("c", yes.clone(), json!({})),
            node("d", yes, json!({})),
            node("other", json!({}), json!({})),
        ];
        let pods = vec![
            pod("pa", &d, "a", true, &hash),
            pod("pb", &d, "b", false, &hash),
            pod("pc", &d, "c", true, "oldhash"),
            pod("po", &d, "other", true, &hash),
        ];
        let now = t("2026-01-01T00:00:20Z");
        let p = plan(&d, &nodes, &pods, &none(), now);
        let s = &p.status;
        assert_eq!(
            (
                s.desired_number_scheduled,
                s.current_number_scheduled,
                s.number_ready,
                s.number_available,
                s.number_unavailable,
                s.number_misscheduled,
                s.updated_number_scheduled,
                s.observed_generation
            ),
            (4, 3, 2, Some(0), Some(4), 1, Some(2), Some(3))
        );
        assert_eq!(p.wake_in, Some(Duration::from_secs(10)), "minReadySeconds");
        let p = plan(&d, &nodes, &pods, &none(), t("2026-01-01T00:00:30Z"));
        assert_eq!(p.status.number_available, Some(2));
        assert_eq!(p.status.number_unavailable, Some(2));
    }

    #[test]
    fn pods_are_pinned_by_affinity_with_daemon_tolerations_and_labels() {
        let d = ds(
            json!({}),
            json!({"tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                    "effect": "NoExecute", "tolerationSeconds": 30}],
                   "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                       {"nodeSelectorTerms": [{"matchExpressions": [{"key": "x", "operator": "Exists"}]}]}}}}),
        );
        let p = pod_for(&d, "n1", "h4sh");
        assert_eq!(p.metadata.generate_name.as_deref(), Some("agent-"));
        let labels = p.metadata.labels.clone().unwrap();
        assert_eq!(labels.get("app").map(String::as_str), Some("agent"));
        assert_eq!(
            labels.get(REVISION_HASH_LABEL).map(String::as_str),
            Some("h4sh")
        );
        assert_eq!(
            labels.get(TEMPLATE_GENERATION_LABEL).map(String::as_str),
            Some("3")
        );
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.uid.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            ("DaemonSet", "ds-uid", Some(true), Some(true))
        );
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name, None);
        assert_eq!(target_node(&p).as_deref(), Some("n1"));
        let terms = &spec
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        let tolerations = spec.tolerations.as_ref().unwrap();
        assert_eq!(tolerations.len(), 6, "{tolerations:?}");
        let not_ready = tolerations
            .iter()
            .find(|t| t.key.as_deref() == Some("node.kubernetes.io/not-ready"))
            .unwrap();
        assert_eq!(not_ready.toleration_seconds, None, "forever, as Kubernetes");
        for key in [
            "unreachable",
            "disk-pressure",
            "memory-pressure",
            "pid-pressure",
            "unschedulable",
        ] {
            let key = format!("node.kubernetes.io/{key}");
            assert!(
                tolerations.iter().any(|t| t.key.as_deref() == Some(&key)),
                "{key}"
            );
        }
    }

    #[test]
    fn orphans_are_adopted_and_strays_released() {
        let d = ds(json!({}), json!({}));
        let hash = hash_of(&d);
        let mut orphan = (*pod("orphan", &d, "a", true, &hash)).clone();
        orphan.metadata.owner_references = None;
        let mut stray = (*pod("stray", &d, "b", true, &hash)).clone();
        stray.metadata.labels = Some(BTreeMap::from([("app".into(), "other".into())]));
        let mut theirs = (*pod("theirs", &d, "b", true, &hash)).clone();
        theirs.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
        let pods = vec![Arc::new(orphan), Arc::new(stray), Arc::new(theirs)];
        let p = plan(&d, &[plain("a"), plain("b")], &pods, &none(), t(T0));
        assert_eq!(p.adopt, vec!["orphan"]);
        assert_eq!(p.release, vec!["stray"]);
        assert_eq!(p.create, vec!["b"]);
        assert!(p.delete.is_empty());
    }
}
