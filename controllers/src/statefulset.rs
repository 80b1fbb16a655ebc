//! The StatefulSet controller (apps/v1): pods with stable identities `<sts>-<ordinal>`, as
//! Kubernetes runs them.
//!
//! - Ordinals `start..start+replicas` (`spec.ordinals.start`, 0 by default). Each pod carries
//!   the template's labels plus `statefulset.kubernetes.io/pod-name`,
//!   `apps.kubernetes.io/pod-index` and `controller-revision-hash` (the revision's name,
//!   `<sts>-<hash>`, as in Kubernetes), and `hostname` = its name, `subdomain` = serviceName.
//! - podManagementPolicy OrderedReady (the default): ordinal i is created only when every lower
//!   one is Running and Ready (and available, with minReadySeconds); scaling down deletes the
//!   highest ordinal first, one at a time, only when the others are healthy. Parallel: all
//!   created and deleted at once.
//! - A Failed (or Succeeded) pod is deleted and created again with the same name once it is
//!   gone; a pod being deleted blocks its name until then.
//! - RollingUpdate (the default): from the highest ordinal down, one at a time, a pod of
//!   another revision is deleted and the next waits until its replacement is Ready; ordinals
//!   below `partition` are not updated (and are recreated at the current revision, whose
//!   template comes from its ControllerRevision). OnDelete: pods take the new template only
//!   when someone deletes them.
//! - Status: replicas, ready/available/current/updated counts, currentRevision (advanced once
//!   every pod is updated and ready), updateRevision, observedGeneration, so `kubectl get sts`
//!   and `kubectl rollout status sts/x` work.
//! - A ControllerRevision per template (`<sts>-<hash>`, pruned beyond `revisionHistoryLimit`),
//!   so `kubectl rollout history|undo sts/x` work. [`record_revision`] serves the DaemonSet
//!   controller too.
//!
//! No expectations are kept: names are stable, so a creation the cache does not show yet is
//! refused by the API (AlreadyExists, ignored), and deletions carry the cached pod's uid as a
//! precondition, so a stale cache never deletes a pod's replacement.
//!
//! Not done: persistentVolumeClaimTemplates (ignored), `maxUnavailable` for rolling updates
//! (one at a time), fixing the identity of existing pods in place, conditions.
//!
//! [`plan`] decides from the cache and the time alone; [`reconcile`] writes.
//!
//! Length: a third of this file is the unit tests of the pure plan, kept beside it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::chrono::{DateTime, Utc};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

use crate::error::failed;
use crate::requeue;
use api::pods::{controller_ref, controller_uid, is_ready, phase, ready_for, terminal};

pub use crate::error::Error;

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// What the controller should do for one StatefulSet.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// Pods to create: the ordinal, and the revision (name) to make it at.
    pub create: Vec<(i32, String)>,
    /// Pod names to delete.
    pub delete: Vec<String>,
    /// Orphan pods of this set's names matching the selector, to take over.
    pub adopt: Vec<String>,
    /// Owned pods that no longer match the selector, to let go.
    pub release: Vec<String>,
    /// The status to write (written only when it differs).
    pub status: StatefulSetStatus,
    /// When a ready pod becomes available (minReadySeconds): look again then.
    pub wake_in: Option<Duration>,
}

fn deleting(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

/// Running, Ready and not being deleted.
fn healthy(p: &Pod) -> bool {
    phase(p) == "Running" && is_ready(p) && !deleting(p)
}

fn revision_of(p: &Pod) -> Option<&String> {
    p.labels().get(REVISION_LABEL)
}

/// The ordinal of a pod named `<set>-<n>`, if it is one of `set`'s names.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let n = pod.strip_prefix(set)?.strip_prefix('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The name of the revision of the set's template (`<sts>-<hash>`): its ControllerRevision's
/// name and its pods' `controller-revision-hash`.
pub fn update_revision(sts: &StatefulSet) -> String {
    let template = sts
        .spec
        .as_ref()
        .map(|s| serde_json::to_value(&s.template).unwrap_or_default())
        .unwrap_or_default();
    format!(
        "{}-{}",
        sts.name_any(),
        crate::deployment::template_hash(&template)
    )
}

/// The plan for `sts` given the pods of its namespace in the cache and the time.
pub fn plan(sts: &StatefulSet, pods: &[Arc<Pod>], now: DateTime<Utc>) -> Plan {
    let uid = sts.metadata.uid.as_deref().unwrap_or_default();
    let name = sts.name_any();
    let spec = sts.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let end = start.saturating_add(replicas);
    let update_rev = update_revision(sts);
    let old = sts.status.clone().unwrap_or_default();
    let current_rev = old
        .current_revision
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| update_rev.clone());
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let rolling = strategy.type_.as_deref() != Some("OnDelete");
    let partition = if rolling {
        strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.partition)
            .unwrap_or(0)
            .max(0)
    } else {
        0
    };
    let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");
    let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
    let mut out = Plan::default();
    let available = |p: &Pod, out: &mut Plan| -> bool {
        if !healthy(p) {
            return false;
        }
        match ready_for(p, now) {
            Some(d) if d >= min_ready => true,
            Some(d) => {
                let wait = min_ready - d;
                out.wake_in = Some(out.wake_in.map_or(wait, |w| w.min(wait)));
                false
            }
            None => false,
        }
    };

    // This set's pods by ordinal.
    let mut members: BTreeMap<i32, &Pod> = BTreeMap::new();
    for p in pods {
        let ordinal = ordinal_of(&name, &p.name_any());
        let matching = api::selector::selects(&spec.selector, p.labels());
        match (controller_uid(p), matching) {
            (Some(o), true) if !uid.is_empty() && o == uid => {}
            (Some(o), false) if !uid.is_empty() && o == uid => {
                out.release.push(p.name_any());
                continue;
            }
            (None, true) if !uid.is_empty() && ordinal.is_some() && !deleting(p) => {
                out.adopt.push(p.name_any())
            }
            _ => continue,
        }
        if let Some(o) = ordinal {
            members.insert(o, p);
        }
    }

    // Status, from the cache as it is.
    let mut status = StatefulSetStatus {
        observed_generation: sts.metadata.generation,
        update_revision: Some(update_rev.clone()),
        ..Default::default()
    };
    let (mut ready, mut available_count, mut current, mut updated) = (0, 0, 0, 0);
    for p in members.values().filter(|p| !deleting(p)) {
        status.replicas += 1;
        if healthy(p) {
            ready += 1;
        }
        if available(p, &mut out) {
            available_count += 1;
        }
        if revision_of(p) == Some(&current_rev) {
            current += 1;
        }
        if revision_of(p) == Some(&update_rev) {
            updated += 1;
        }
    }
    let mut current_rev_out = current_rev.clone();
    if rolling && updated == status.replicas && ready == status.replicas {
        current_rev_out = update_rev.clone();
        current = updated;
    }
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available_count);
    status.current_replicas = Some(current);
    status.updated_replicas = Some(updated);
    status.current_revision = Some(current_rev_out);

    // The replicas, lowest ordinal first. In OrderedReady, the first that is missing, being
    // replaced or not yet available stops the pass.
    let mut stop = false;
    for ordinal in start..end {
        match members.get(&ordinal) {
            Some(p) if terminal(p) => {
                if !deleting(p) {
                    out.delete.push(p.name_any());
                }
                // Made again once the old one is gone.
                stop = true;
                if monotonic {
                    break;
                }
            }
            None => {
                let revision = if rolling && ordinal - start < partition {
                    current_rev.clone()
                } else {
                    update_rev.clone()
                };
                out.create.push((ordinal, revision));
                if monotonic {
                    stop = true;
                    break;
                }
            }
            Some(p) if monotonic && !available(p, &mut out) => {
                stop = true;
                break;
            }
            Some(_) => {}
        }
    }

    // Scale down: the highest ordinal first.
    if !stop {
        let condemned: Vec<&Pod> = members
            .iter()
            .filter(|(o, _)| **o < start || **o >= end)
            .map(|(_, p)| *p)
            .rev()
            .collect();
        // The lowest unhealthy condemned pod may go even while unhealthy (the replicas are
        // all healthy here in OrderedReady).
        let first_unhealthy = condemned
            .iter()
            .rev()
            .find(|p| !healthy(p))
            .map(|p| p.name_any());
        for p in condemned {
            if deleting(p) {
                if monotonic {
                    stop = true;
                    break;
                }
                continue;
            }
            if monotonic
                && !available(p, &mut out)
                && first_unhealthy.as_deref() != Some(&p.name_any())
            {
                stop = true;
                break;
            }
            out.delete.push(p.name_any());
            stop = true;
            if monotonic {
                break;
            }
        }
    }

    // Rolling update: from the top down to the partition, one pod at a time.
    if !stop && rolling {
        for index in (partition..replicas).rev() {
            let Some(p) = members.get(&(start + index)) else {
                break;
            };
            if revision_of(p) != Some(&update_rev) && !deleting(p) {
                out.delete.push(p.name_any());
                break;
            }
            if !available(p, &mut out) {
                break;
            }
        }
    }

    out.status = status;
    out
}

/// The pod for `ordinal` of `sts`, from `template` at `revision`.
pub fn pod_for(sts: &StatefulSet, ordinal: i32, revision: &str, template: &PodTemplateSpec) -> Pod {
    let name = format!("{}-{ordinal}", sts.name_any());
    let mut meta = template.metadata.clone().unwrap_or_default();
    meta.name = Some(name.clone());
    meta.generate_name = None;
    meta.namespace = sts.namespace();
    meta.resource_version = None;
    meta.uid = None;
    meta.owner_references = Some(vec![controller_ref(sts)]);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_LABEL.into(), revision.to_string());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name);
    let service = sts
        .spec
        .as_ref()
        .map(|s| s.service_name.clone())
        .unwrap_or_default();
    if !service.is_empty() {
        spec.subdomain = Some(service);
    }
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}

// ControllerRevisions, shared with the DaemonSet controller.

/// A ControllerRevision to record for an owner's current template.
pub struct Revision<'a> {
    pub namespace: &'a str,
    /// The owner (DaemonSet or StatefulSet), as the controller reference.
    pub owner: OwnerReference,
    /// `<owner>-<hash>`.
    pub name: String,
    pub hash: String,
    pub template: &'a PodTemplateSpec,
    /// Old revisions kept beyond those in use (`revisionHistoryLimit`).
    pub history_limit: usize,
    /// Revision names in use (by pods, as the current revision): never pruned.
    pub in_use: BTreeSet<String>,
}

/// What to do to an owner's ControllerRevisions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RevisionSteps {
    /// Create the revision, with this number.
    pub create: Option<i64>,
    /// The revision exists but is not the newest (the template went back to it): renumber it.
    pub bump: Option<i64>,
    /// Old revisions beyond the history limit, oldest first.
    pub prune: Vec<String>,
}

/// The steps that make `name` the newest of `owned` revisions, keeping `limit` old ones that
/// are not in use.
pub fn revision_steps(
    owned: &[ControllerRevision],
    name: &str,
    limit: usize,
    in_use: &BTreeSet<String>,
) -> RevisionSteps {
    let mut out = RevisionSteps::default();
    let max = owned.iter().map(|r| r.revision).max().unwrap_or(0);
    match owned
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(name))
    {
        None => out.create = Some(max + 1),
        Some(r) if r.revision < max => out.bump = Some(max + 1),
        Some(_) => {}
    }
    let mut old: Vec<&ControllerRevision> = owned
        .iter()
        .filter(|r| {
            let n = r.metadata.name.as_deref().unwrap_or_default();
            n != name && !in_use.contains(n)
        })
        .collect();
    old.sort_by_key(|r| r.revision);
    if old.len() > limit {
        out.prune = old[..old.len() - limit]
            .iter()
            .filter_map(|r| r.metadata.name.clone())
            .collect();
    }
    out
}

/// Owner uid → the ControllerRevision a controller last recorded for it, so a revision is
/// written once per template and run of the controller, not every pass. Kept in the
/// controller's `Context`.
#[derive(Default)]
pub struct RecordedRevisions(Mutex<BTreeMap<String, String>>);

impl RecordedRevisions {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Makes `r` the newest ControllerRevision of its owner (as Kubernetes stores them: the
/// template as a strategic merge patch that replaces `spec.template`, labelled with the
/// template's labels and the hash) and prunes old ones beyond the history limit, unless
/// `recorded` says it was made so already.
pub async fn record_revision(
    client: &kube::Client,
    recorded: &RecordedRevisions,
    r: Revision<'_>,
) -> Result<(), kube::Error> {
    let uid = r.owner.uid.clone();
    if recorded.lock().get(&uid) == Some(&r.name) {
        return Ok(());
    }
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), r.namespace);
    let owned: Vec<ControllerRevision> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|cr| {
            cr.owner_references()
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true))
        })
        .collect();
    let steps = revision_steps(&owned, &r.name, r.history_limit, &r.in_use);
    if let Some(revision) = steps.create {
        let mut template = serde_json::to_value(r.template).unwrap_or_else(|_| json!({}));
        if let Some(t) = template.as_object_mut() {
            t.insert("$patch".into(), json!("replace"));
        }
        let mut labels = r
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(REVISION_LABEL.into(), r.hash.clone());
        let cr = ControllerRevision {
            metadata: ObjectMeta {
                name: Some(r.name.clone()),
                namespace: Some(r.namespace.to_string()),
                labels: Some(labels),
                owner_references: Some(vec![r.owner.clone()]),
                ..Default::default()
            },
            data: Some(RawExtension(json!({"spec": {"template": template}}))),
            revision,
        };
        match api.create(&PostParams::default(), &cr).await {
            Ok(_) => {}
            // Made meanwhile, or left by an earlier owner of the name (the garbage
            // collector's): nothing to record now.
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    if let Some(revision) = steps.bump {
        api.patch(
            &r.name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"revision": revision})),
        )
        .await?;
    }
    for name in &steps.prune {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    recorded.lock().insert(uid, r.name);
    Ok(())
}

/// The pod template a ControllerRevision recorded, if it exists and holds one.
pub async fn revision_template(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<PodTemplateSpec>, kube::Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    let Some(cr) = api.get_opt(name).await? else {
        return Ok(None);
    };
    let mut template: Value = cr
        .data
        .map(|d| d.0["spec"]["template"].clone())
        .unwrap_or_default();
    if let Some(t) = template.as_object_mut() {
        t.remove("$patch");
    }
    Ok(serde_json::from_value(template).ok())
}

pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    /// The ControllerRevision last recorded per StatefulSet uid.
    pub revisions: RecordedRevisions,
}

fn status_patch(s: &StatefulSetStatus) -> Value {
    json!({"status": {
        "replicas": s.replicas,
        "readyReplicas": s.ready_replicas.unwrap_or(0),
        "availableReplicas": s.available_replicas.unwrap_or(0),
        "currentReplicas": s.current_replicas.unwrap_or(0),
        "updatedReplicas": s.updated_replicas.unwrap_or(0),
        "currentRevision": s.current_revision,
        "updateRevision": s.update_revision,
        "observedGeneration": s.observed_generation.unwrap_or(0),
    }})
}

fn status_changed(old: &StatefulSetStatus, new: &StatefulSetStatus) -> bool {
    let n = |v: Option<i32>| v.unwrap_or(0);
    old.replicas != new.replicas
        || n(old.ready_replicas) != n(new.ready_replicas)
        || n(old.available_replicas) != n(new.available_replicas)
        || n(old.current_replicas) != n(new.current_replicas)
        || n(old.updated_replicas) != n(new.updated_replicas)
        || old.current_revision != new.current_revision
        || old.update_revision != new.update_revision
        || old.observed_generation != new.observed_generation
}

/// Carries out the plan for one StatefulSet.
pub async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = sts.namespace().unwrap_or_else(|| "default".into());
    let name = sts.name_any();
    let uid = sts.metadata.uid.clone().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .collect();
    let plan = plan(&sts, &pods, Utc::now());
    let spec = sts.spec.clone().unwrap_or_default();
    let update_rev = update_revision(&sts);

    // The template's ControllerRevision: needed later to recreate pods below a partition at
    // the old revision, and by `kubectl rollout history|undo`. A failure is logged and tried
    // again next pass; it does not hold the pods up.
    let mut in_use: BTreeSet<String> = pods
        .iter()
        .filter(|p| controller_uid(p) == Some(uid.as_str()))
        .filter_map(|p| revision_of(p).cloned())
        .collect();
    in_use.extend(plan.status.current_revision.clone());
    let record = Revision {
        namespace: &ns,
        owner: controller_ref(&*sts),
        hash: update_rev
            .strip_prefix(&format!("{name}-"))
            .unwrap_or_default()
            .to_string(),
        name: update_rev.clone(),
        template: &spec.template,
        history_limit: spec.revision_history_limit.unwrap_or(10).max(0) as usize,
        in_use,
    };
    if let Err(e) = record_revision(&ctx.client, &ctx.revisions, record).await {
        tracing::warn!("statefulset {ns}/{name}: recording its ControllerRevision: {e}");
    }

    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for pod in &plan.adopt {
        let patch = json!({"metadata": {"ownerReferences": [controller_ref(&*sts)]}});
        api.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(failed(format!(
                "statefulset {ns}/{name}: adopting pod {pod}"
            )))?;
    }
    for pod in &plan.release {
        let patch = json!({"metadata": {"ownerReferences": null}});
        api.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(failed(format!(
                "statefulset {ns}/{name}: releasing pod {pod}"
            )))?;
    }
    // Deleted by uid: a stale cache must not delete a pod's replacement of the same name.
    let uids: BTreeMap<String, Option<String>> = pods
        .iter()
        .map(|p| (p.name_any(), p.metadata.uid.clone()))
        .collect();
    for pod in &plan.delete {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: uids.get(pod).cloned().flatten(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(pod, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => {
                return Err(failed(format!(
                    "statefulset {ns}/{name}: deleting pod {pod}"
                ))(e))
            }
        }
    }
    for (ordinal, revision) in &plan.create {
        let mut revision = revision.clone();
        let template = if revision == update_rev {
            spec.template.clone()
        } else {
            let old = revision_template(&ctx.client, &ns, &revision)
                .await
                .map_err(failed(format!(
                    "statefulset {ns}/{name}: reading revision {revision}"
                )))?;
            match old {
                Some(t) => t,
                None => {
                    tracing::warn!(
                        "statefulset {ns}/{name}: revision {revision} is not recorded; \
                         {name}-{ordinal} gets the current template"
                    );
                    revision = update_rev.clone();
                    spec.template.clone()
                }
            }
        };
        let pod = pod_for(&sts, *ordinal, &revision, &template);
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => {}
            // Made already; the cache has not shown it yet.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                return Err(failed(format!(
                    "statefulset {ns}/{name}: creating pod {name}-{ordinal}"
                ))(e))
            }
        }
    }

    let old = sts.status.clone().unwrap_or_default();
    if status_changed(&old, &plan.status) {
        let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        sets.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&status_patch(&plan.status)),
        )
        .await
        .map_err(failed(format!("statefulset {ns}/{name}: writing status")))?;
    }

    // Work under way is looked at again soon, in case the cache that woke this reconcile ran
    // ahead of the one it decided from; the rest (pods turning ready, going away) arrives as
    // pod events.
    let busy = !plan.create.is_empty() || !plan.delete.is_empty();
    Ok(requeue::after_success(busy, plan.wake_in))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const T0: &str = "2026-01-01T00:00:00Z";

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// A StatefulSet; `extra` is merged into its spec.
    fn sts(extra: Value) -> StatefulSet {
        let mut s = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "sts-uid", "generation": 2},
            "spec": {"replicas": 3, "serviceName": "web", "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "i"}]}}},
        });
        for (k, v) in extra.as_object().unwrap() {
            s["spec"][k] = v.clone();
        }
        serde_json::from_value(s).unwrap()
    }

    fn with_status(mut s: StatefulSet, status: Value) -> StatefulSet {
        s.status = Some(serde_json::from_value(status).unwrap());
        s
    }

    #[derive(Clone, Copy)]
    enum State {
        Pending,
        Ready,
        Unready,
        Failed,
        Deleting,
    }

    fn pod(s: &StatefulSet, ordinal: i32, state: State, revision: &str) -> Arc<Pod> {
        let mut p = pod_for(s, ordinal, revision, &s.spec.as_ref().unwrap().template);
        p.metadata.creation_timestamp = Some(Time(t(T0)));
        p.metadata.uid = Some(format!("uid-{ordinal}"));
        let (phase, ready) = match state {
            State::Pending => ("Pending", false),
            State::Ready | State::Deleting => ("Running", true),
            State::Unready => ("Running", false),
            State::Failed => ("Failed", false),
        };
        if let State::Deleting = state {
            p.metadata.deletion_timestamp = Some(Time(t(T0)));
        }
        p.status = Some(
            serde_json::from_value(json!({"phase": phase,
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                                "lastTransitionTime": T0}]}))
            .unwrap(),
        );
        Arc::new(p)
    }

    fn ordinals(p: &Plan) -> Vec<i32> {
        p.create.iter().map(|(o, _)| *o).collect()
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_after_the_lower_are_ready() {
        let s = sts(json!({}));
        let rev = update_revision(&s);
        let now = t(T0);
        let p = plan(&s, &[], now);
        assert_eq!(p.create, vec![(0, rev.clone())]);
        // web-0 exists but is not ready: nothing more.
        let pods = [pod(&s, 0, State::Pending, &rev)];
        let p = plan(&s, &pods, now);
        assert!(p.create.is_empty() && p.delete.is_empty());
        let pods = [pod(&s, 0, State::Unready, &rev)];
        assert!(plan(&s, &pods, now).create.is_empty());
        // Ready: web-1.
        let pods = [pod(&s, 0, State::Ready, &rev)];
        assert_eq!(ordinals(&plan(&s, &pods, now)), vec![1]);
        // A gap below is filled first.
        let pods = [pod(&s, 1, State::Ready, &rev)];
        assert_eq!(ordinals(&plan(&s, &pods, now)), vec![0]);
    }

    #[test]
    fn parallel_creates_and_deletes_at_once() {
        let s = sts(json!({"podManagementPolicy": "Parallel", "replicas": 4}));
        let rev = update_revision(&s);
        let pods = [pod(&s, 1, State::Pending, &rev)];
        let p = plan(&s, &pods, t(T0));
        assert_eq!(ordinals(&p), vec![0, 2, 3]);
        let s = sts(json!({"podManagementPolicy": "Parallel", "replicas": 1}));
        let pods = [
            pod(&s, 0, State::Ready, &rev),
            pod(&s, 1, State::Unready, &rev),
            pod(&s, 2, State::Ready, &rev),
        ];
        let p = plan(&s, &pods, t(T0));
        assert_eq!(p.delete, vec!["web-2", "web-1"]);
    }

    #[test]
    fn scale_down_removes_the_highest_first_one_at_a_time() {
        let s = sts(json!({"replicas": 1}));
        let rev = update_revision(&s);
        let now = t(T0);
        let all_ready = [
            pod(&s, 0, State::Ready, &rev),
            pod(&s, 1, State::Ready, &rev),
            pod(&s, 2, State::Ready, &rev),
        ];
        let p = plan(&s, &all_ready, now);
        assert_eq!(p.delete, vec!["web-2"]);
        // web-2 going: wait for it.
        let pods = [
            pod(&s, 0, State::Ready, &rev),
            pod(&s, 1, State::Ready, &rev),
            pod(&s, 2, State::Deleting, &rev),
        ];
        assert!(plan(&s, &pods, now).delete.is_empty());
        // Gone: web-1 next.
        let p = plan(&s, &all_ready[..2], now);
        assert_eq!(p.delete, vec!["web-1"]);
        // A remaining replica that is not ready holds the scale-down.
        let pods = [
            pod(&s, 0, State::Unready, &rev),
            pod(&s, 1, State::Ready, &rev),
        ];
        assert!(plan(&s, &pods, now).delete.is_empty());
        // The lowest unhealthy condemned pod may go while unhealthy.
        let pods = [
            pod(&s, 0, State::Ready, &rev),
            pod(&s, 1, State::Unready, &rev),
        ];
        assert_eq!(plan(&s, &pods, now).delete, vec!["web-1"]);
    }

    #[test]
    fn a_failed_pod_is_recreated_with_the_same_name() {
        let s = sts(json!({}));
        let rev = update_revision(&s);
        let now = t(T0);
        let pods = [
            pod(&s, 0, State::Ready, &rev),
            pod(&s, 1, State::Failed, &rev),
            pod(&s, 2, State::Ready, &rev),
        ];
        let p = plan(&s, &pods, now);
        assert_eq!(p.delete, vec!["web-1"]);
        assert!(p.create.is_empty(), "the name is taken until it is gone");
        // Being deleted: still waiting.
        let pods = [
            pod(&s, 0, State::Ready, &rev),
            pod(&s, 1, State::Deleting, &rev),
            pod(&s, 2, State::Ready, &rev),
        ];
        let p = plan(&s, &pods, now);
        assert!(p.create.is_empty() && p.delete.is_empty());
        // Gone: made again, as web-1.
        let pods = [
            pod(&s, 0, State::Ready, &rev),
            pod(&s, 2, State::Ready, &rev),
        ];
        let p = plan(&s, &pods, now);
        assert_eq!(p.create, vec![(1, rev.clone())]);
        let made = pod_for(&s, 1, &rev, &s.spec.as_ref().unwrap().template);
        assert_eq!(made.metadata.name.as_deref(), Some("web-1"));
    }

    #[test]
    fn rolling_update_goes_from_the_top_down_to_the_partition() {
        let old = sts(json!({}));
        let old_rev = update_revision(&old);
        let mut s = sts(
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}}),
        );
        s.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("i:2".into());
        let s = with_status(s, json!({"replicas": 3, "currentRevision": old_rev}));
        let new_rev = update_revision(&s);
        assert_ne!(old_rev, new_rev);
        let now = t(T0);
        let all_old = [
            pod(&s, 0, State::Ready, &old_rev),
            pod(&s, 1, State::Ready, &old_rev),
            pod(&s, 2, State::Ready, &old_rev),
        ];
        let p = plan(&s, &all_old, now);
        assert_eq!(p.delete, vec!["web-2"]);
        assert_eq!(p.status.current_revision.as_deref(), Some(old_rev.as_str()));
        assert_eq!(p.status.update_revision.as_deref(), Some(new_rev.as_str()));
        assert_eq!(
            (p.status.current_replicas, p.status.updated_replicas),
            (Some(3), Some(0))
        );
        // web-2 replaced but not ready: wait.
        let pods = [
            pod(&s, 0, State::Ready, &old_rev),
            pod(&s, 1, State::Ready, &old_rev),
            pod(&s, 2, State::Unready, &new_rev),
        ];
        assert!(plan(&s, &pods, now).delete.is_empty());
        // Ready: web-1 next; web-0 is below the partition and stays.
        let pods = [
            pod(&s, 0, State::Ready, &old_rev),
            pod(&s, 1, State::Ready, &old_rev),
            pod(&s, 2, State::Ready, &new_rev),
        ];
        assert_eq!(plan(&s, &pods, now).delete, vec!["web-1"]);
        let pods = [
            pod(&s, 0, State::Ready, &old_rev),
            pod(&s, 1, State::Ready, &new_rev),
            pod(&s, 2, State::Ready, &new_rev),
        ];
        let p = plan(&s, &pods, now);
        assert!(p.delete.is_empty() && p.create.is_empty());
        assert_eq!(p.status.updated_replicas, Some(2));
        assert_eq!(p.status.current_revision.as_deref(), Some(old_rev.as_str()));
        // web-0 lost: made again at the current (old) revision, below the partition.
        let p = plan(&s, &pods[1..], now);
        assert_eq!(p.create, vec![(0, old_rev.clone())]);
        // Partition 0 and everything updated: the update revision becomes current.
        let mut done = s.clone();
        done.spec.as_mut().unwrap().update_strategy = None;
        let pods = [
            pod(&s, 0, State::Ready, &new_rev),
            pod(&s, 1, State::Ready, &new_rev),
            pod(&s, 2, State::Ready, &new_rev),
        ];
        let p = plan(&done, &pods, now);
        assert_eq!(p.status.current_revision.as_deref(), Some(new_rev.as_str()));
        assert_eq!(p.status.current_replicas, Some(3));
        // OnDelete: nothing is replaced.
        let mut on_delete = s.clone();
        on_delete.spec.as_mut().unwrap().update_strategy =
            serde_json::from_value(json!({"type": "OnDelete"})).unwrap();
        assert!(plan(&on_delete, &all_old, now).delete.is_empty());
    }

    #[test]
    fn status_counts_and_pod_identity() {
        let s = sts(json!({"minReadySeconds": 10}));
        let rev = update_revision(&s);
        let pods = [
            pod(&s, 0, State::Ready, &rev),
            pod(&s, 1, State::Unready, &rev),
            pod(&s, 2, State::Deleting, &rev),
        ];
        let p = plan(&s, &pods, t("2026-01-01T00:00:04Z"));
        let st = &p.status;
        assert_eq!(
            (
                st.replicas,
                st.ready_replicas,
                st.available_replicas,
                st.updated_replicas
            ),
            (2, Some(1), Some(0), Some(2))
        );
        assert_eq!(st.observed_generation, Some(2));
        assert_eq!(p.wake_in, Some(Duration::from_secs(6)));
        let pod = pod_for(&s, 2, &rev, &s.spec.as_ref().unwrap().template);
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(
            labels.get(POD_NAME_LABEL).map(String::as_str),
            Some("web-2")
        );
        assert_eq!(labels.get(POD_INDEX_LABEL).map(String::as_str), Some("2"));
        assert_eq!(labels.get(REVISION_LABEL), Some(&rev));
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("web"));
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("StatefulSet", Some(true))
        );
        assert!(rev.starts_with("web-"));
    }

    #[test]
    fn start_ordinal_and_names() {
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
        assert_eq!(ordinal_of("web", "web-api-0"), None);
        assert_eq!(ordinal_of("web", "webby-0"), None);
        let s = sts(json!({"ordinals": {"start": 5}, "replicas": 2}));
        assert_eq!(ordinals(&plan(&s, &[], t(T0))), vec![5]);
    }

    #[test]
    fn orphans_of_our_names_are_adopted() {
        let s = sts(json!({}));
        let rev = update_revision(&s);
        let mut orphan = (*pod(&s, 0, State::Ready, &rev)).clone();
        orphan.metadata.owner_references = None;
        let mut other = orphan.clone();
        other.metadata.name = Some("other-0".into());
        let p = plan(&s, &[Arc::new(orphan), Arc::new(other)], t(T0));
        assert_eq!(p.adopt, vec!["web-0"]);
        assert_eq!(ordinals(&p), vec![1]);
    }

    #[test]
    fn revisions_are_numbered_and_pruned() {
        let cr = |name: &str, revision: i64| ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: None,
            revision,
        };
        let owned = vec![
            cr("web-a", 1),
            cr("web-b", 2),
            cr("web-c", 3),
            cr("web-d", 4),
        ];
        let in_use = BTreeSet::from(["web-b".to_string()]);
        let steps = revision_steps(&owned, "web-e", 1, &in_use);
        assert_eq!(steps.create, Some(5));
        assert_eq!(steps.prune, vec!["web-a", "web-c"]);
        // Back to an old template: it is renumbered as the newest.
        let steps = revision_steps(&owned, "web-a", 10, &in_use);
        assert_eq!((steps.create, steps.bump), (None, Some(5)));
        assert!(steps.prune.is_empty());
        assert_eq!(
            revision_steps(&owned, "web-d", 10, &in_use),
            RevisionSteps::default()
        );
    }
}
