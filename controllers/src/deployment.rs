//! The Deployment controller: one ReplicaSet per pod template (named by the template's hash,
//! as `pod-template-hash`), rolled from old to new under the strategy — RollingUpdate within
//! maxSurge and maxUnavailable, or Recreate — with revision numbers on the ReplicaSets, so
//! that `kubectl rollout status|history|undo` and `kubectl set image` work as in Kubernetes.
//!
//! [`plan`] decides from the Deployment and its ReplicaSets alone; [`reconcile`] writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::chrono::{DateTime, SecondsFormat, Utc};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

use crate::requeue;

const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";

/// Kubernetes' alphabet for generated name suffixes (no vowels, no confusable characters).
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The hash of a pod template, as a name suffix.
pub fn template_hash(template: &Value) -> String {
    let bytes = serde_json::to_vec(template).expect("serialises");
    let h = bytes.iter().fold(0x811c9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x01000193)
    });
    h.to_string()
        .bytes()
        .map(|b| SAFE[b as usize % SAFE.len()] as char)
        .collect()
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// An int-or-percent of `total`, rounded up (surge) or down (unavailable).
fn scaled(v: Option<&IntOrString>, total: i32, default: &str, round_up: bool) -> i32 {
    let v = v.cloned().unwrap_or(IntOrString::String(default.into()));
    match v {
        IntOrString::Int(n) => n.max(0),
        IntOrString::String(s) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let x = f64::from(total) * pct / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as i32
        }
    }
}

/// What the controller should do for one Deployment.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// The ReplicaSet to create for the current template (name, revision), if none exists.
    pub create: Option<(String, i64)>,
    /// ReplicaSet name → replicas to set.
    pub scale: BTreeMap<String, i32>,
    /// The current ReplicaSet's revision to raise to (after an undo), if any.
    pub bump_revision: Option<(String, i64)>,
    /// Old, empty ReplicaSets beyond revisionHistoryLimit.
    pub delete: Vec<String>,
    pub status: Value,
}

/// Whether a ReplicaSet's pod template is `template`, ignoring the pod-template-hash label.
fn same_template(rs: &ReplicaSet, template: &Value) -> bool {
    let mut theirs = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .map(|t| serde_json::to_value(t).unwrap_or_default())
        .unwrap_or_default();
    if let Some(labels) = theirs["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    without_empties(theirs) == without_empties(template.clone())
}

/// A value with nulls and empty objects left out: clients write `resources: {}` and
/// `creationTimestamp: null` into templates they copy, which mean what their absence means.
fn without_empties(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, without_empties(v)))
                .filter(|(_, v)| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_empties).collect()),
        other => other,
    }
}

pub fn plan(d: &Deployment, owned: &[Arc<ReplicaSet>], now: DateTime<Utc>) -> Plan {
    let spec = d.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1).max(0);
    let template = serde_json::to_value(&spec.template).unwrap_or_default();
    let hash = template_hash(&template);
    let name = format!("{}-{hash}", d.name_any());
    let mut out = Plan::default();
    // The current ReplicaSet is the one whose template is the Deployment's (its own hash label
    // aside), as Kubernetes finds it: after `rollout undo` an old one becomes current again.
    let current = owned
        .iter()
        .find(|rs| same_template(rs, &template))
        .or_else(|| {
            owned
                .iter()
                .find(|rs| rs.labels().get(HASH_LABEL) == Some(&hash))
        });
    let current_name = current.map(|rs| rs.name_any());
    let name = current_name.clone().unwrap_or(name);
    let mut old: Vec<&Arc<ReplicaSet>> = owned
        .iter()
        .filter(|rs| Some(rs.name_any()) != current_name)
        .collect();
    old.sort_by_key(|rs| revision(rs));
    let max_revision = owned.iter().map(|rs| revision(rs)).max().unwrap_or(0);
    let spec_of = |rs: &ReplicaSet| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let status_of = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
    let new_replicas = current.map(|rs| spec_of(rs)).unwrap_or(0);
    match current {
        None => out.create = Some((name.clone(), max_revision + 1)),
        Some(rs) if revision(rs) < max_revision => {
            out.bump_revision = Some((rs.name_any(), max_revision + 1))
        }
        _ => {}
    }
    let paused = spec.paused == Some(true);
    let strategy = spec.strategy.clone().unwrap_or_default();
    let recreate = strategy.type_.as_deref() == Some("Recreate");
    if !paused {
        if recreate {
            let old_running: i32 = old.iter().map(|rs| status_of(rs).replicas).sum();
            for rs in &old {
                if spec_of(rs) != 0 {
                    out.scale.insert(rs.name_any(), 0);
                }
            }
            if old_running == 0 && new_replicas != desired {
                out.scale.insert(name.clone(), desired);
            }
        } else {
            let ru = strategy.rolling_update.clone().unwrap_or_default();
            let surge = scaled(ru.max_surge.as_ref(), desired, "25%", true);
            let mut unavailable = scaled(ru.max_unavailable.as_ref(), desired, "25%", false);
            if surge == 0 && unavailable == 0 {
                unavailable = 1;
            }
            let total: i32 = owned.iter().map(|rs| spec_of(rs)).sum();
            // Scale the new ReplicaSet up as far as the surge allows, or down to the target.
            let mut new_target = new_replicas;
            if new_replicas > desired {
                new_target = desired;
            } else if new_replicas < desired {
                let room = (desired + surge - total).max(0);
                new_target = (new_replicas + room).min(desired);
            }
            if current.is_none() || new_target != new_replicas {
                out.scale.insert(name.clone(), new_target);
            }
            // Scale old ones down as far as availability allows, as Kubernetes does: never below
            // `desired - maxUnavailable` available, the new ReplicaSet's unavailable pods
            // counted as missing, old unavailable pods removed first. A ReplicaSet's available
            // count is capped by its spec, since its status may lag a scale-down.
            let avail = |rs: &ReplicaSet| {
                status_of(rs)
                    .available_replicas
                    .unwrap_or(0)
                    .min(spec_of(rs))
                    .max(0)
            };
            let min_available = desired - unavailable;
            let new_unavailable = current
                .map(|rs| (spec_of(rs) - avail(rs)).max(0))
                .unwrap_or(0);
            let mut room = total - min_available - new_unavailable;
            let mut scaled_old: Vec<(String, i32)> =
                old.iter().map(|rs| (rs.name_any(), spec_of(rs))).collect();
            for (i, rs) in old.iter().enumerate() {
                let unhealthy = (scaled_old[i].1 - avail(rs)).max(0).min(room.max(0));
                scaled_old[i].1 -= unhealthy;
                room -= unhealthy;
            }
            let available_total: i32 = owned.iter().map(|rs| avail(rs)).sum();
            let mut removable = room.min(available_total - min_available).max(0);
            for entry in scaled_old.iter_mut() {
                let take = entry.1.min(removable);
                entry.1 -= take;
                removable -= take;
            }
            for ((name, target), rs) in scaled_old.into_iter().zip(&old) {
                if target != spec_of(rs) {
                    out.scale.insert(name, target);
                }
            }
        }
    }
    // History: old ReplicaSets with nothing left, beyond the limit, oldest first.
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let empty_old: Vec<&&Arc<ReplicaSet>> = old
        .iter()
        .filter(|rs| spec_of(rs) == 0 && status_of(rs).replicas == 0)
        .collect();
    if empty_old.len() > limit {
        out.delete = empty_old[..empty_old.len() - limit]
            .iter()
            .map(|rs| rs.name_any())
            .collect();
    }
    // Status from the ReplicaSets as observed.
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| -> i32 { owned.iter().map(|rs| f(rs)).sum() };
    let replicas = sum(&|rs| status_of(rs).replicas);
    let ready = sum(&|rs| status_of(rs).ready_replicas.unwrap_or(0));
    let available = sum(&|rs| status_of(rs).available_replicas.unwrap_or(0));
    let updated = current.map(|rs| status_of(rs).replicas).unwrap_or(0);
    let unavailable_allowed = if recreate {
        desired
    } else {
        let ru = strategy.rolling_update.clone().unwrap_or_default();
        scaled(ru.max_unavailable.as_ref(), desired, "25%", false)
    };
    let is_available = available >= desired - unavailable_allowed;
    let complete = updated == desired && replicas == desired && available == desired;
    let previous = |t: &str| {
        d.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == t).cloned())
    };
    let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    // A condition keeps its transition time while its status stays, and its update time
    // while nothing about it changes.
    let condition = |t: &str, status: &str, reason: &str, message: String, updated: bool| {
        let prev = previous(t);
        let same_status = prev.as_ref().is_some_and(|p| p.status == status);
        let same = same_status
            && prev
                .as_ref()
                .is_some_and(|p| p.reason.as_deref() == Some(reason));
        let kept = |v: Option<DateTime<Utc>>| stamp(v.unwrap_or(now));
        let transition = if same_status {
            kept(
                prev.as_ref()
                    .and_then(|p| p.last_transition_time.as_ref().map(|t| t.0)),
            )
        } else {
            stamp(now)
        };
        let update = if same && !updated {
            kept(
                prev.as_ref()
                    .and_then(|p| p.last_update_time.as_ref().map(|t| t.0)),
            )
        } else {
            stamp(now)
        };
        json!({"type": t, "status": status, "reason": reason, "message": message,
               "lastUpdateTime": update, "lastTransitionTime": transition})
    };
    let rs_name = current.map(|rs| rs.name_any()).unwrap_or(name);
    // Progress: a new ReplicaSet, a scale, or counts that moved since the last status.
    let old_status = d.status.clone().unwrap_or_default();
    let progressed = out.create.is_some()
        || !out.scale.is_empty()
        || old_status.replicas.unwrap_or(0) != replicas
        || old_status.updated_replicas.unwrap_or(0) != updated
        || old_status.ready_replicas.unwrap_or(0) != ready
        || old_status.available_replicas.unwrap_or(0) != available;
    let deadline = Duration::from_secs(spec.progress_deadline_seconds.unwrap_or(600).max(0) as u64);
    let last_progress = previous("Progressing")
        .filter(|p| p.status == "True")
        .and_then(|p| p.last_update_time.map(|t| t.0));
    let stalled = !complete
        && !progressed
        && last_progress.is_some_and(|t| (now - t).to_std().unwrap_or_default() > deadline);
    let already_exceeded = previous("Progressing")
        .is_some_and(|p| p.reason.as_deref() == Some("ProgressDeadlineExceeded"));
    let progressing = if paused {
        condition(
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
            false,
        )
    } else if complete {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            progressed,
        )
    } else if stalled || (already_exceeded && !progressed) {
        condition(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
            false,
        )
    } else {
        condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{rs_name}\" is progressing."),
            progressed,
        )
    };
    out.status = json!({
        "observedGeneration": d.metadata.generation.unwrap_or(0),
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (desired - available).max(0),
        "conditions": [
            condition("Available", if is_available { "True" } else { "False" },
                if is_available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                format!("Deployment {}.", if is_available { "has minimum availability" } else { "does not have minimum availability" }), false),
            progressing,
        ],
    });
    out
}

pub struct Context {
    pub client: kube::Client,
    pub replicasets: Store<ReplicaSet>,
    pub events: kubeclient::events::Recorder,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Kube(#[from] kube::Error),
}

pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_else(|| "default".into());
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let owned: Vec<Arc<ReplicaSet>> = ctx
        .replicasets
        .state()
        .into_iter()
        .filter(|rs| rs.namespace().as_deref() == Some(ns.as_str()))
        .filter(|rs| {
            rs.owner_references()
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true))
        })
        .collect();
    let plan = plan(&d, &owned, Utc::now());
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let spec = d.spec.clone().unwrap_or_default();
    if let Some((name, revision)) = &plan.create {
        let template = serde_json::to_value(&spec.template).unwrap_or_default();
        let hash = template_hash(&template);
        let mut template = template;
        template["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let mut selector = serde_json::to_value(&spec.selector).unwrap_or_default();
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        let mut labels = template["metadata"]["labels"].clone();
        labels[HASH_LABEL] = json!(hash);
        let initial = plan.scale.get(name).copied().unwrap_or(0);
        let rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": ns, "labels": labels,
                "annotations": {REVISION: revision.to_string(), "deployment.kubernetes.io/desired-replicas": spec.replicas.unwrap_or(1).to_string()},
                "ownerReferences": [api::pods::controller_ref(&*d)]},
            "spec": {"replicas": initial, "minReadySeconds": spec.min_ready_seconds.unwrap_or(0), "selector": selector, "template": template},
        });
        let rs: ReplicaSet = serde_json::from_value(rs).map_err(kube::Error::SerdeError)?;
        match api.create(&PostParams::default(), &rs).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some((name, revision)) = &plan.bump_revision {
        let patch = json!({"metadata": {"annotations": {REVISION: revision.to_string()}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    for (name, replicas) in &plan.scale {
        let from = owned
            .iter()
            .find(|rs| rs.name_any() == *name)
            .and_then(|rs| rs.spec.as_ref().and_then(|s| s.replicas))
            .unwrap_or(0);
        if plan.create.as_ref().is_none_or(|(n, _)| n != name) {
            let patch = json!({"spec": {"replicas": replicas}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        let verb = if *replicas >= from { "up" } else { "down" };
        ctx.events.record(
            &*d,
            kubeclient::events::Type::Normal,
            "ScalingReplicaSet",
            &format!("Scaled {verb} replica set {name} from {from} to {replicas}"),
        );
    }
    for name in &plan.delete {
        let _ = api.delete(name, &DeleteParams::background()).await;
    }
    // The Deployment carries the current revision, as kubectl rollout history reads it.
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let current_revision = plan
        .create
        .as_ref()
        .map(|(_, r)| *r)
        .or(plan.bump_revision.as_ref().map(|(_, r)| *r))
        .or_else(|| {
            let template = serde_json::to_value(&spec.template).unwrap_or_default();
            owned
                .iter()
                .find(|rs| same_template(rs, &template))
                .map(|rs| revision(rs))
        });
    if let Some(r) = current_revision {
        if d.annotations().get(REVISION) != Some(&r.to_string()) {
            let patch = json!({"metadata": {"annotations": {REVISION: r.to_string()}}});
            deployments
                .patch(
                    &d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
        }
    }
    // Rewritten only when something other than the conditions' times changed.
    let timeless = |mut v: Value| {
        for c in v["conditions"].as_array_mut().into_iter().flatten() {
            if let Some(m) = c.as_object_mut() {
                m.remove("lastUpdateTime");
                m.remove("lastTransitionTime");
            }
        }
        v
    };
    let comparable = timeless(plan.status.clone());
    let old_comparable = timeless(serde_json::to_value(&d.status).unwrap_or_default());
    if comparable != old_comparable {
        deployments
            .patch_status(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": plan.status})),
            )
            .await?;
    }
    // A rollout in progress is looked at again soon, whatever the watches deliver.
    let done = plan.scale.is_empty()
        && plan.create.is_none()
        && plan.status["conditions"][1]["reason"] == "NewReplicaSetAvailable";
    Ok(requeue::after_success(!done, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(replicas: i32, image: &str) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}}
        }))
        .unwrap()
    }

    fn rs(
        d: &Deployment,
        image: &str,
        replicas: i32,
        available: i32,
        revision: i64,
    ) -> Arc<ReplicaSet> {
        let template = serde_json::to_value(&deploy(1, image).spec.unwrap().template).unwrap();
        let hash = template_hash(&template);
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("web-{hash}"), "namespace": "default", "labels": {"app": "web", "pod-template-hash": hash},
                             "annotations": {REVISION: revision.to_string()},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": d.name_any(), "uid": "d-uid", "controller": true}]},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}},
                "status": {"replicas": replicas, "availableReplicas": available, "readyReplicas": available}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn a_new_deployment_gets_its_first_replicaset_at_full_scale() {
        let d = deploy(3, "v1");
        let p = plan(&d, &[], Utc::now());
        let (name, revision) = p.create.clone().unwrap();
        assert_eq!(revision, 1);
        assert_eq!(p.scale.get(&name), Some(&3));
    }

    #[test]
    fn a_rolling_update_stays_within_surge_and_unavailability() {
        let d = deploy(3, "v2");
        let old = rs(&d, "v1", 3, 3, 1);
        // Step 1: a new ReplicaSet with one pod (surge 1); one old pod may go (unavailable 1).
        let p = plan(&d, std::slice::from_ref(&old), Utc::now());
        let (new_name, revision) = p.create.clone().unwrap();
        assert_eq!(revision, 2);
        assert_eq!(p.scale.get(&new_name), Some(&1));
        assert_eq!(p.scale.get(&old.name_any()), Some(&2));
        // Later: new has 2 ready of 2, old has 2 (available 2): total 4 = 3 + surge.
        let new = rs(&d, "v2", 2, 2, 2);
        let old = rs(&d, "v1", 2, 2, 1);
        let p = plan(&d, &[old.clone(), new.clone()], Utc::now());
        assert_eq!(p.scale.get(&new.name_any()), None, "no room to surge");
        assert_eq!(
            p.scale.get(&old.name_any()),
            Some(&0),
            "4 available, 2 needed: both old may go"
        );
        // Done: old at 0, new at 3 and available.
        let new = rs(&d, "v2", 3, 3, 2);
        let old = rs(&d, "v1", 0, 0, 1);
        let p = plan(&d, &[old, new], Utc::now());
        assert!(p.scale.is_empty() && p.create.is_none());
        assert_eq!(p.status["updatedReplicas"], 3);
        assert_eq!(
            p.status["conditions"][1]["reason"],
            "NewReplicaSetAvailable"
        );
    }

    #[test]
    fn an_undo_makes_the_old_template_current_with_the_next_revision() {
        let d = deploy(3, "v1");
        let v1 = rs(&d, "v1", 0, 0, 1);
        let v2 = rs(&d, "v2", 3, 3, 2);
        let p = plan(&d, &[v1.clone(), v2], Utc::now());
        assert!(p.create.is_none());
        assert_eq!(p.bump_revision, Some((v1.name_any(), 3)));
        assert_eq!(
            p.scale.get(&v1.name_any()),
            Some(&1),
            "scales up within the surge"
        );
    }

    #[test]
    fn a_rollout_without_progress_past_its_deadline_is_reported() {
        let mut d = deploy(3, "v2");
        d.spec.as_mut().unwrap().progress_deadline_seconds = Some(30);
        // The new pods never become available: one of three is.
        let stuck = [rs(&d, "v1", 0, 0, 1), rs(&d, "v2", 3, 1, 2)];
        let start: DateTime<Utc> = "2027-01-15T08:00:00Z".parse().unwrap();
        let first = plan(&d, &stuck, start);
        assert!(first.scale.is_empty() && first.create.is_none());
        assert_eq!(first.status["conditions"][1]["reason"], "ReplicaSetUpdated");
        d.status = Some(serde_json::from_value(first.status.clone()).unwrap());
        // Nothing moves for 20 s: within the deadline, and the progress time is kept.
        let quiet = plan(
            &d,
            &stuck,
            start + k8s_openapi::chrono::Duration::seconds(20),
        );
        assert_eq!(quiet.status["conditions"][1]["reason"], "ReplicaSetUpdated");
        assert_eq!(
            quiet.status["conditions"][1]["lastUpdateTime"],
            "2027-01-15T08:00:00Z"
        );
        let late = plan(
            &d,
            &stuck,
            start + k8s_openapi::chrono::Duration::seconds(31),
        );
        assert_eq!(late.status["conditions"][1]["status"], "False");
        assert_eq!(
            late.status["conditions"][1]["reason"],
            "ProgressDeadlineExceeded"
        );
        // Progress again (a pod became available) clears it.
        d.status = Some(serde_json::from_value(late.status.clone()).unwrap());
        let moving = [rs(&d, "v1", 0, 0, 1), rs(&d, "v2", 3, 2, 2)];
        let again = plan(
            &d,
            &moving,
            start + k8s_openapi::chrono::Duration::seconds(40),
        );
        assert_eq!(again.status["conditions"][1]["reason"], "ReplicaSetUpdated");
    }
}
