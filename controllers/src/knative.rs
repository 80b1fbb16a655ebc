//! Knative Serving, natively (no Istio, no activator, no queue-proxy): the controllers behind
//! `serving.knative.dev/v1` (`api::knative`). A Service makes a Configuration and a Route of
//! its name; each template a Configuration has had makes an immutable Revision
//! (`{configuration}-{generation:05}`); a Revision runs as a Deployment `{revision}-deployment`
//! (scaled by [`autoscale`], from the node routers' own measurements) and a ClusterIP Service
//! `{revision}`; a Route resolves its traffic targets to revisions and publishes its URL. The
//! node agents' routers (`node::functions`) read Routes, Revisions and pods and carry the
//! requests.
//!
//! Each reconcile derives what should exist from the object and the caches (`plan_*`, pure)
//! and writes it with server-side apply under the field manager [`MANAGER`], so a reconcile
//! that finds nothing to change writes nothing. Statuses are merge patches of `/status`.

pub mod autoscale;

use std::collections::BTreeMap;
use std::sync::Arc;

use api::knative::{self, labels, Configuration, Revision, Route, Service as KService};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use serde_json::{json, Value};

use crate::error::{failed, Error};

/// The field manager of everything these controllers write.
pub const MANAGER: &str = "knative-serving";

pub struct Context {
    pub client: kube::Client,
    pub services: Store<k8s_openapi::api::core::v1::Service>,
    pub nodes: Store<k8s_openapi::api::core::v1::Node>,
    pub configurations: Store<Configuration>,
    pub routes: Store<Route>,
    pub revisions: Store<Revision>,
    pub deployments: Store<Deployment>,
    pub pods: Store<Pod>,
    /// Routes' URLs are `http://{name}.{namespace}.{domain}`.
    pub domain: String,
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

fn owner_reference<K: Resource<DynamicType = ()>>(owner: &K) -> Value {
    json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "name": owner.meta().name,
        "uid": owner.meta().uid,
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

fn now() -> String {
    k8s_openapi::chrono::Utc::now().to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true)
}

/// A condition as Knative writes it, keeping its transition time when its status is unchanged.
fn condition(
    old: &[knative::Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
) -> Value {
    let kept = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone());
    let mut c =
        json!({"type": type_, "status": status, "lastTransitionTime": kept.unwrap_or_else(now)});
    if !reason.is_empty() {
        c["reason"] = json!(reason);
    }
    if !message.is_empty() {
        c["message"] = json!(message);
    }
    c
}

/// The status of a Knative object's Ready condition: "True", "False" or "Unknown".
fn ready(status: &knative::Status) -> (&str, &str, &str) {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| {
            (
                c.status.as_str(),
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or(""),
            )
        })
        .unwrap_or(("Unknown", "", ""))
}

/// Writes `status` unless the object already has it (conditions' times aside).
async fn patch_status<K>(
    api: &Api<K>,
    name: &str,
    old: &knative::Status,
    status: Value,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    // Nulls (fields the merge patch removes) are absent in the typed form.
    let mut present = status.clone();
    if let Some(fields) = present.as_object_mut() {
        fields.retain(|_, v| !v.is_null());
    }
    let mut new: knative::Status = match serde_json::from_value(present) {
        Ok(s) => s,
        // Not comparable: written as it is.
        Err(_) => knative::Status {
            observed_generation: Some(-1),
            ..Default::default()
        },
    };
    // Only a change of something other than transition times is worth a write.
    let strip = |s: &mut knative::Status| {
        s.conditions
            .iter_mut()
            .for_each(|c| c.last_transition_time = None);
    };
    let mut old = old.clone();
    strip(&mut old);
    strip(&mut new);
    if old == new {
        return Ok(());
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .map(|_| ())
    .map_err(failed(format!(
        "{} {name}: writing its status",
        K::kind(&())
    )))
}

// ---- Service ----

/// The Configuration and Route a Knative Service owns.
pub fn plan_service(svc: &KService) -> (Value, Value) {
    let name = svc.name_any();
    let mut labels = svc.labels().clone();
    labels.insert(labels::SERVICE.into(), name.clone());
    let meta = json!({"name": name, "namespace": svc.namespace(), "labels": labels,
        "ownerReferences": [owner_reference(svc)]});
    let configuration = json!({"apiVersion": knative::API_VERSION, "kind": "Configuration",
        "metadata": meta, "spec": {"template": svc.spec.template}});
    let traffic: Vec<Value> = svc
        .spec
        .traffic
        .iter()
        .map(|t| {
            let mut t = serde_json::to_value(t).expect("serialises");
            if t["revisionName"].is_null() {
                t["configurationName"] = json!(name);
            }
            t
        })
        .collect();
    let route = json!({"apiVersion": knative::API_VERSION, "kind": "Route",
        "metadata": meta, "spec": {"traffic": traffic}});
    (configuration, route)
}

pub async fn reconcile_service(svc: Arc<KService>, ctx: Arc<Context>) -> Result<Action, Error> {
    if svc.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let (configuration, route) = plan_service(&svc);
    let configs: Api<Configuration> = Api::namespaced(ctx.client.clone(), &ns);
    configs
        .patch(&name, &apply_params(), &Patch::Apply(configuration))
        .await
        .map_err(failed(format!(
            "service {ns}/{name}: applying its configuration"
        )))?;
    let routes: Api<Route> = Api::namespaced(ctx.client.clone(), &ns);
    routes
        .patch(&name, &apply_params(), &Patch::Apply(route))
        .await
        .map_err(failed(format!("service {ns}/{name}: applying its route")))?;

    let config = ctx
        .configurations
        .get(&ObjectRef::new(&name).within(&ns))
        .filter(|c| {
            c.meta()
                .owner_references
                .iter()
                .flatten()
                .any(|o| Some(&o.uid) == svc.meta().uid.as_ref())
        });
    let route = ctx.routes.get(&ObjectRef::new(&name).within(&ns));
    let old = &svc.status.conditions;
    let (config_status, config_reason, config_message) = config
        .as_ref()
        .filter(|c| c.status.observed_generation == c.meta().generation)
        .map_or(("Unknown", "", ""), |c| ready(&c.status));
    let (route_status, route_reason, route_message) = route
        .as_ref()
        .filter(|r| r.status.observed_generation == r.meta().generation)
        .map_or(("Unknown", "", ""), |r| ready(&r.status));
    let (status, reason, message) = match (config_status, route_status) {
        ("False", _) => ("False", config_reason, config_message),
        (_, "False") => ("False", route_reason, route_message),
        ("True", "True") => ("True", "", ""),
        ("True", _) => ("Unknown", route_reason, route_message),
        _ => ("Unknown", config_reason, config_message),
    };
    let mut st = json!({
        "observedGeneration": svc.meta().generation,
        "conditions": [
            condition(old, "ConfigurationsReady", config_status, config_reason, config_message),
            condition(old, "Ready", status, reason, message),
            condition(old, "RoutesReady", route_status, route_reason, route_message),
        ],
    });
    if let Some(c) = &config {
        st["latestCreatedRevisionName"] = json!(c.status.latest_created_revision_name);
        st["latestReadyRevisionName"] = json!(c.status.latest_ready_revision_name);
    }
    if let Some(r) = &route {
        st["url"] = json!(r.status.url);
        st["address"] = json!(r.status.address);
        st["traffic"] = json!(r.status.traffic);
    }
    patch_status(
        &Api::<KService>::namespaced(ctx.client.clone(), &ns),
        &name,
        &svc.status,
        st,
    )
    .await?;
    Ok(Action::await_change())
}

// ---- Configuration ----

/// The name of the revision a configuration's current template makes.
pub fn current_revision_name(cfg: &Configuration) -> String {
    cfg.spec.template.metadata.name.clone().unwrap_or_else(|| {
        knative::revision_name(&cfg.name_any(), cfg.meta().generation.unwrap_or(1))
    })
}

/// The Revision a configuration's current template makes.
pub fn plan_revision(cfg: &Configuration) -> Value {
    let template = &cfg.spec.template;
    let mut labels = template.metadata.labels.clone().unwrap_or_default();
    labels.insert(labels::CONFIGURATION.into(), cfg.name_any());
    labels.insert(
        labels::CONFIGURATION_GENERATION.into(),
        cfg.meta().generation.unwrap_or(1).to_string(),
    );
    if let Some(svc) = cfg.labels().get(labels::SERVICE) {
        labels.insert(labels::SERVICE.into(), svc.clone());
    }
    json!({"apiVersion": knative::API_VERSION, "kind": "Revision",
        "metadata": {"name": current_revision_name(cfg), "namespace": cfg.namespace(),
            "labels": labels, "annotations": template.metadata.annotations,
            "ownerReferences": [owner_reference(cfg)]},
        "spec": template.spec})
}

fn generation_of(rev: &Revision) -> i64 {
    rev.labels()
        .get(labels::CONFIGURATION_GENERATION)
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

pub async fn reconcile_configuration(
    cfg: Arc<Configuration>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if cfg.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = cfg.namespace().unwrap_or_default();
    let name = cfg.name_any();
    let latest = current_revision_name(&cfg);
    let revisions: Api<Revision> = Api::namespaced(ctx.client.clone(), &ns);
    if ctx
        .revisions
        .get(&ObjectRef::new(&latest).within(&ns))
        .is_none()
    {
        let rev: Revision = serde_json::from_value(plan_revision(&cfg)).expect("a revision");
        match revisions.create(&PostParams::default(), &rev).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                return Err(failed(format!(
                    "configuration {ns}/{name}: creating revision {latest}"
                ))(e))
            }
        }
    }
    let uid = cfg.meta().uid.clone();
    let owned: Vec<Arc<Revision>> = ctx
        .revisions
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(&ns))
        .filter(|r| {
            r.meta()
                .owner_references
                .iter()
                .flatten()
                .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .collect();
    let latest_ready = owned
        .iter()
        .filter(|r| ready(&r.status).0 == "True")
        .max_by_key(|r| generation_of(r))
        .map(|r| r.name_any());
    let created = owned.iter().find(|r| r.name_any() == latest);
    let (status, reason, message) = match created.map(|r| ready(&r.status)) {
        Some(("True", _, _)) => ("True", "", ""),
        Some(("False", reason, message)) => (
            "False",
            "RevisionFailed",
            if message.is_empty() { reason } else { message },
        ),
        _ => ("Unknown", "", ""),
    };
    let message = if status == "False" {
        format!("Revision {latest:?} failed with message: {message}.")
    } else {
        String::new()
    };
    let st = json!({
        "observedGeneration": cfg.meta().generation,
        "latestCreatedRevisionName": latest,
        "latestReadyRevisionName": latest_ready,
        "conditions": [condition(&cfg.status.conditions, "Ready", status, reason, &message)],
    });
    patch_status(
        &Api::<Configuration>::namespaced(ctx.client.clone(), &ns),
        &name,
        &cfg.status,
        st,
    )
    .await?;
    Ok(Action::await_change())
}

// ---- Revision ----

/// The annotation `key` of the revision as an integer.
fn annotation_int(rev: &Revision, keys: &[&str]) -> Option<i32> {
    keys.iter()
        .find_map(|k| rev.annotations().get(*k))
        .and_then(|v| v.parse().ok())
}

/// How many instances a new revision starts with (Knative's initial scale: 1 unless the
/// annotation says otherwise, at least min-scale).
pub fn initial_scale(rev: &Revision) -> i32 {
    let initial = annotation_int(
        rev,
        &[
            "autoscaling.knative.dev/initial-scale",
            "autoscaling.knative.dev/initialScale",
        ],
    )
    .unwrap_or(1);
    initial.max(
        annotation_int(
            rev,
            &[
                "autoscaling.knative.dev/min-scale",
                "autoscaling.knative.dev/minScale",
            ],
        )
        .unwrap_or(0),
    )
}

/// The Deployment (without its replica count, which the autoscaler owns) and the Service that
/// run a revision.
pub fn plan_revision_workload(rev: &Revision) -> (Value, Value) {
    let name = rev.name_any();
    let uid = rev.meta().uid.clone().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = rev.labels().clone();
    labels.insert(labels::REVISION.into(), name.clone());
    labels.insert(labels::REVISION_UID.into(), uid.clone());
    let port = knative::port(&rev.spec);
    let mut pod = serde_json::to_value(&rev.spec.pod).expect("serialises");
    let env: Vec<Value> = knative::function_env(rev)
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    for c in pod["containers"].as_array_mut().into_iter().flatten() {
        let own = c["env"].as_array().cloned().unwrap_or_default();
        let mut all: Vec<Value> = env
            .iter()
            .filter(|e| !own.iter().any(|o| o["name"] == e["name"]))
            .cloned()
            .collect();
        all.extend(own);
        c["env"] = json!(all);
    }
    let mut template_annotations = rev.annotations().clone();
    if let Some(n) = rev.spec.container_concurrency.filter(|n| *n > 0) {
        template_annotations.insert(
            knative::CONTAINER_CONCURRENCY_ANNOTATION.into(),
            n.to_string(),
        );
    }
    let meta = json!({"namespace": rev.namespace(), "labels": labels,
        "ownerReferences": [owner_reference(rev)]});
    let mut deployment_meta = meta.clone();
    deployment_meta["name"] = json!(format!("{name}-deployment"));
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": deployment_meta,
    "spec": {
        "selector": {"matchLabels": {labels::REVISION_UID: uid}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
        "template": {"metadata": {"labels": labels, "annotations": template_annotations}, "spec": pod},
    }});
    let mut service_meta = meta;
    service_meta["name"] = json!(name);
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": service_meta,
        "spec": {"selector": {labels::REVISION_UID: uid},
            "ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}]}});
    (deployment, service)
}

/// Whether a revision has been Ready (it stays Ready at zero once it has).
pub fn ready_once(rev: &Revision) -> bool {
    ready(&rev.status).0 == "True"
}

/// Why a revision's pods fail, as Knative's reasons: a missing image is `ContainerMissing`, a
/// container that exits is `ExitCode{n}`.
pub fn pod_failure(pods: &[Arc<Pod>]) -> Option<(String, String)> {
    for p in pods {
        for cs in p
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
        {
            let state = cs.state.as_ref();
            if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
                let reason = w.reason.clone().unwrap_or_default();
                let message = w.message.clone().unwrap_or_default();
                match reason.as_str() {
                    "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" => {
                        return Some(("ContainerMissing".into(), message))
                    }
                    "CreateContainerError" | "CreateContainerConfigError" => {
                        return Some((reason, message))
                    }
                    "CrashLoopBackOff" => {
                        if let Some(t) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref())
                        {
                            return Some((
                                format!("ExitCode{}", t.exit_code),
                                format!(
                                    "Container failed with: {}",
                                    t.message.clone().unwrap_or_default()
                                ),
                            ));
                        }
                        return Some((reason, message));
                    }
                    _ => {}
                }
            }
        }
    }
    None
}

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub async fn reconcile_revision(rev: Arc<Revision>, ctx: Arc<Context>) -> Result<Action, Error> {
    if rev.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = rev.namespace().unwrap_or_default();
    let name = rev.name_any();
    let (deployment, service) = plan_revision_workload(&rev);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let deployment_name = format!("{name}-deployment");
    let existing = ctx
        .deployments
        .get(&ObjectRef::new(&deployment_name).within(&ns));
    // A Deployment or Service of these names that the revision does not control is left alone
    // (applying over it would let whoever may create a Knative Service rewrite it), and the
    // revision says so, as Knative does.
    let uid = rev.meta().uid.clone().unwrap_or_default();
    let controls = |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
        refs.iter()
            .any(|o| o.uid == uid && o.controller == Some(true))
    };
    let not_owned = if existing
        .as_ref()
        .is_some_and(|d| !controls(d.owner_references()))
    {
        Some(format!(
            "There is an existing Deployment \"{deployment_name}\" that we do not own."
        ))
    } else if ctx
        .services
        .get(&ObjectRef::new(&name).within(&ns))
        .is_some_and(|s| !controls(s.owner_references()))
    {
        Some(format!(
            "There is an existing Service \"{name}\" that we do not own."
        ))
    } else {
        None
    };
    if let Some(message) = not_owned {
        let old = &rev.status.conditions;
        let st = json!({
            "observedGeneration": rev.meta().generation,
            "conditions": [
                condition(old, "ContainerHealthy", "Unknown", "", ""),
                condition(old, "Ready", "False", "NotOwned", &message),
                condition(old, "ResourcesAvailable", "False", "NotOwned", &message),
            ],
        });
        patch_status(
            &Api::<Revision>::namespaced(ctx.client.clone(), &ns),
            &name,
            &rev.status,
            st,
        )
        .await?;
        return Ok(Action::await_change());
    }
    if existing.is_none() {
        // Created with its first replica count; from then on only the autoscaler changes it
        // (a create records no managed fields, so later applies without it leave it alone).
        let mut first = deployment.clone();
        first["spec"]["replicas"] = json!(initial_scale(&rev));
        let first: Deployment = serde_json::from_value(first).expect("a deployment");
        match deployments.create(&PostParams::default(), &first).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                return Err(failed(format!(
                    "revision {ns}/{name}: creating its deployment"
                ))(e))
            }
        }
    } else {
        deployments
            .patch(&deployment_name, &apply_params(), &Patch::Apply(deployment))
            .await
            .map_err(failed(format!(
                "revision {ns}/{name}: applying its deployment"
            )))?;
    }
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(ctx.client.clone(), &ns)
        .patch(&name, &apply_params(), &Patch::Apply(service))
        .await
        .map_err(failed(format!(
            "revision {ns}/{name}: applying its service"
        )))?;

    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(&ns) && p.labels().get(labels::REVISION) == Some(&name)
        })
        .collect();
    let ready_pods = pods.iter().filter(|p| pod_ready(p)).count() as i32;
    let desired = existing
        .as_ref()
        .and_then(|d| d.spec.as_ref()?.replicas)
        .unwrap_or(initial_scale(&rev));
    let old = &rev.status.conditions;
    let was_ready = ready(&rev.status).0 == "True";
    let failure = pod_failure(&pods);
    let (status, reason, message) = match (&failure, ready_pods, was_ready) {
        // A revision that served stays Ready when scaled to zero (Knative: Active False).
        (_, n, _) if n > 0 => ("True", String::new(), String::new()),
        (None, 0, true) => ("True", String::new(), String::new()),
        (Some((reason, message)), _, _) => ("False", reason.clone(), message.clone()),
        _ => ("Unknown", "Deploying".to_string(), String::new()),
    };
    let (active, active_reason) = if ready_pods > 0 {
        ("True", "")
    } else if desired == 0 {
        ("False", "NoTraffic")
    } else {
        ("Unknown", "Activating")
    };
    let st = json!({
        "observedGeneration": rev.meta().generation,
        "actualReplicas": ready_pods,
        "desiredReplicas": desired,
        "conditions": [
            condition(old, "Active", active, active_reason, ""),
            condition(old, "ContainerHealthy", if failure.is_some() { "False" } else { "True" }, failure.as_ref().map_or("", |f| f.0.as_str()), failure.as_ref().map_or("", |f| f.1.as_str())),
            condition(old, "Ready", status, &reason, &message),
            condition(old, "ResourcesAvailable", if status == "False" && reason == "ContainerMissing" { "False" } else { "True" }, "", ""),
        ],
    });
    patch_status(
        &Api::<Revision>::namespaced(ctx.client.clone(), &ns),
        &name,
        &rev.status,
        st,
    )
    .await?;
    Ok(Action::await_change())
}

/// The revision a pod runs, for the revision controller's watch of pods.
pub fn revision_of_pod(pod: &Pod) -> Option<ObjectRef<Revision>> {
    let name = pod.labels().get(labels::REVISION)?;
    Some(ObjectRef::new(name).within(&pod.namespace()?))
}

// ---- Route ----

/// A route's traffic resolved to revisions, or why it cannot be (reason, message).
pub fn resolve_traffic(
    route: &Route,
    configurations: &Store<Configuration>,
    revisions: &Store<Revision>,
    domain: &str,
) -> Result<Vec<Value>, (String, String)> {
    let ns = route.namespace().unwrap_or_default();
    let name = route.name_any();
    let mut out = Vec::new();
    for t in &route.spec.traffic {
        let revision = match (&t.revision_name, &t.configuration_name) {
            (Some(r), _) => r.clone(),
            (None, Some(c)) => {
                let cfg = configurations
                    .get(&ObjectRef::new(c).within(&ns))
                    .ok_or_else(|| {
                        (
                            "ConfigurationMissing".to_string(),
                            format!("Configuration {c:?} referenced in traffic not found."),
                        )
                    })?;
                cfg.status
                    .latest_ready_revision_name
                    .clone()
                    .ok_or_else(|| {
                        let failed = ready(&cfg.status).0 == "False";
                        (
                            if failed {
                                "RevisionFailed"
                            } else {
                                "RevisionMissing"
                            }
                            .to_string(),
                            format!("Configuration {c:?} does not have any ready Revision."),
                        )
                    })?
            }
            (None, None) => continue,
        };
        let rev = revisions
            .get(&ObjectRef::new(&revision).within(&ns))
            .ok_or_else(|| {
                (
                    "RevisionMissing".to_string(),
                    format!("Revision {revision:?} referenced in traffic not found."),
                )
            })?;
        if ready(&rev.status).0 != "True" {
            let (_, reason, message) = ready(&rev.status);
            return Err((
                if ready(&rev.status).0 == "False" {
                    "RevisionFailed"
                } else {
                    "RevisionMissing"
                }
                .to_string(),
                format!("Revision {revision:?} is not ready: {reason} {message}")
                    .trim()
                    .to_string(),
            ));
        }
        let mut target = json!({"revisionName": revision, "percent": t.percent.unwrap_or(0),
            "latestRevision": t.latest_revision.unwrap_or(false)});
        if let Some(c) = &t.configuration_name {
            if t.revision_name.is_none() {
                target["configurationName"] = json!(c);
            }
        }
        if let Some(tag) = &t.tag {
            target["tag"] = json!(tag);
            target["url"] = json!(format!(
                "http://{}",
                knative::host(&name, &ns, Some(tag), domain)
            ));
        }
        out.push(target);
    }
    Ok(out)
}

/// The annotation on which a node says the port its function router answers on.
pub const FUNCTION_PORT_ANNOTATION: &str = "drover.dev/function-port";
/// Who manages the EndpointSlices of routes' in-cluster Services.
const SLICE_MANAGER: &str = "knative-serving.drover.dev";

/// The function routers a route's in-cluster Service leads to: the Ready nodes' addresses,
/// grouped by the port their router answers on.
pub fn routers(
    nodes: &[Arc<k8s_openapi::api::core::v1::Node>],
) -> BTreeMap<i32, Vec<(String, String)>> {
    let mut by_port: BTreeMap<i32, Vec<(String, String)>> = BTreeMap::new();
    for n in nodes {
        let Some(port) = n
            .annotations()
            .get(FUNCTION_PORT_ANNOTATION)
            .and_then(|p| p.parse::<i32>().ok())
            .filter(|p| (1..=65535).contains(p))
        else {
            continue;
        };
        let status = n.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let ip = status
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone());
        if let (true, Some(ip)) = (ready, ip) {
            by_port.entry(port).or_default().push((ip, n.name_any()));
        }
    }
    by_port
}

/// A route's in-cluster address (`{name}.{namespace}.svc.cluster.local`): a Service of its
/// name without a selector, whose EndpointSlices lead to the nodes' function routers (which
/// know the route by that Host). Err: the Service's name is somebody else's.
async fn apply_in_cluster_service(
    route: &Route,
    ctx: &Context,
) -> Result<Result<(), String>, Error> {
    let ns = route.namespace().unwrap_or_default();
    let name = route.name_any();
    if let Some(existing) = ctx.services.get(&ObjectRef::new(&name).within(&ns)) {
        let ours = existing
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == route.meta().uid.as_ref());
        if !ours {
            return Ok(Err(format!(
                "service {name:?} exists and is not owned by the route"
            )));
        }
    }
    let owner = json!([owner_reference(route)]);
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "ownerReferences": owner, "labels": {labels::ROUTE: name}},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}});
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(ctx.client.clone(), &ns)
        .patch(&name, &apply_params(), &Patch::Apply(service))
        .await
        .map_err(failed(format!(
            "route {ns}/{name}: applying its in-cluster service"
        )))?;
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(ctx.client.clone(), &ns);
    for (port, nodes) in routers(&ctx.nodes.state()) {
        let endpoints: Vec<Value> = nodes
            .iter()
            .map(|(ip, node)| json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": node}))
            .collect();
        let slice_name = format!("{name}-routers-{port}");
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": slice_name, "namespace": ns, "ownerReferences": owner,
                "labels": {api::wellknown::SERVICE_NAME_LABEL: name, api::wellknown::SLICE_MANAGED_BY_LABEL: SLICE_MANAGER}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]});
        slices
            .patch(&slice_name, &apply_params(), &Patch::Apply(slice))
            .await
            .map_err(failed(format!(
                "route {ns}/{name}: applying the routers' endpoints"
            )))?;
    }
    Ok(Ok(()))
}

/// The hosts a route claims: its own and its tags'.
pub fn route_hosts(route: &Route, domain: &str) -> Vec<String> {
    let domain = knative::route_domain(route, domain);
    let ns = route.namespace().unwrap_or_default();
    let name = route.name_any();
    std::iter::once(knative::host(&name, &ns, None, domain))
        .chain(
            route
                .spec
                .traffic
                .iter()
                .filter_map(|t| Some(knative::host(&name, &ns, Some(t.tag.as_deref()?), domain))),
        )
        .collect()
}

/// A host of `route` that an older route already claims (Knative's DomainConflict): the host
/// and that route's name.
pub fn domain_conflict(
    route: &Route,
    routes: &[Arc<Route>],
    domain: &str,
) -> Option<(String, String)> {
    let mine = route_hosts(route, domain);
    let age = |r: &Route| (r.meta().creation_timestamp.clone(), r.name_any());
    routes
        .iter()
        .filter(|r| r.namespace() == route.namespace() && r.name_any() != route.name_any())
        .filter(|r| age(r) < age(route))
        .find_map(|other| {
            let theirs = route_hosts(other, domain);
            mine.iter()
                .find(|h| theirs.contains(h))
                .map(|h| (h.clone(), other.name_any()))
        })
}

pub async fn reconcile_route(route: Arc<Route>, ctx: Arc<Context>) -> Result<Action, Error> {
    if route.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = route.namespace().unwrap_or_default();
    let name = route.name_any();
    let old = &route.status.conditions;
    if let Some((host, owner)) = domain_conflict(&route, &ctx.routes.state(), &ctx.domain) {
        // No URL and no traffic: the node routers serve only published hosts, so the older
        // route keeps its host.
        let message = format!("domain {host:?} is already in use by route {owner:?}");
        let st = json!({
            "observedGeneration": route.meta().generation,
            "url": null, "traffic": null,
            "conditions": [
                condition(old, "AllTrafficAssigned", "True", "", ""),
                condition(old, "IngressReady", "False", "DomainConflict", &message),
                condition(old, "Ready", "False", "DomainConflict", &message),
            ],
        });
        patch_status(
            &Api::<Route>::namespaced(ctx.client.clone(), &ns),
            &name,
            &route.status,
            st,
        )
        .await?;
        return Ok(Action::await_change());
    }
    let in_cluster = apply_in_cluster_service(&route, &ctx).await?;
    let domain = knative::route_domain(&route, &ctx.domain);
    let resolved = resolve_traffic(&route, &ctx.configurations, &ctx.revisions, domain);
    let mut st = json!({
        "observedGeneration": route.meta().generation,
        "url": format!("http://{}", knative::host(&name, &ns, None, domain)),
        "address": {"url": format!("http://{name}.{ns}.svc.cluster.local")},
    });
    match resolved {
        Ok(traffic) => {
            st["traffic"] = json!(traffic);
            let (ingress, reason, message) = match &in_cluster {
                Ok(()) => ("True", "", String::new()),
                Err(why) => ("False", "NotOwned", why.clone()),
            };
            st["conditions"] = json!([
                condition(old, "AllTrafficAssigned", "True", "", ""),
                condition(old, "IngressReady", ingress, reason, &message),
                condition(old, "Ready", ingress, reason, &message),
            ]);
        }
        Err((reason, message)) => {
            // Traffic keeps its last assignment while a new target is not ready (Knative
            // never moves traffic to what cannot serve it).
            st["traffic"] = json!(route.status.traffic);
            let status = if reason == "RevisionMissing" {
                "Unknown"
            } else {
                "False"
            };
            st["conditions"] = json!([
                condition(old, "AllTrafficAssigned", status, &reason, &message),
                condition(old, "IngressReady", "True", "", ""),
                condition(old, "Ready", status, &reason, &message),
            ]);
        }
    }
    patch_status(
        &Api::<Route>::namespaced(ctx.client.clone(), &ns),
        &name,
        &route.status,
        st,
    )
    .await?;
    Ok(Action::await_change())
}

/// The routes a changed configuration or revision may affect: every route of its namespace
/// (a namespace has few).
pub fn routes_in_namespace(
    routes: &Store<Route>,
    namespace: Option<String>,
) -> Vec<ObjectRef<Route>> {
    routes
        .state()
        .iter()
        .filter(|r| r.namespace() == namespace)
        .map(|r| ObjectRef::from_obj(&**r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ksvc(spec: Value) -> KService {
        let mut v = json!({"apiVersion": knative::API_VERSION, "kind": "Service",
            "metadata": {"name": "hello", "namespace": "default", "uid": "u1", "generation": 2}, "spec": spec});
        knative::apply_defaults("services", &mut v);
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn statuses_that_remove_fields_still_differ_from_an_empty_one() {
        let mut present = json!({"url": null, "traffic": null, "conditions": [{"type": "Ready", "status": "False"}]});
        present.as_object_mut().unwrap().retain(|_, v| !v.is_null());
        let typed: knative::Status = serde_json::from_value(present).unwrap();
        assert_ne!(typed, knative::Status::default());
    }

    #[test]
    fn a_tag_host_another_route_owns_is_a_domain_conflict_for_the_younger() {
        let route = |name: &str, created: &str, tag: Option<&str>| -> Arc<Route> {
            Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
                "spec": {"traffic": [{"revisionName": "r", "percent": 100, "tag": tag}]}})).unwrap())
        };
        let older = route("canary-hello", "2026-01-01T00:00:00Z", None);
        let younger = route("hello", "2026-01-02T00:00:00Z", Some("canary"));
        let all = [older.clone(), younger.clone()];
        assert_eq!(
            domain_conflict(&younger, &all, "example.com"),
            Some((
                "canary-hello.default.example.com".into(),
                "canary-hello".into()
            ))
        );
        assert_eq!(domain_conflict(&older, &all, "example.com"), None);
    }

    #[test]
    fn a_service_makes_its_configuration_and_route() {
        let svc = ksvc(
            json!({"template": {"spec": {"containers": [{"image": "hello"}]}},
            "traffic": [{"latestRevision": true, "percent": 90}, {"revisionName": "hello-00001", "percent": 10, "tag": "old"}]}),
        );
        let (cfg, route) = plan_service(&svc);
        assert_eq!(cfg["metadata"]["labels"][labels::SERVICE], "hello");
        assert_eq!(cfg["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(
            cfg["spec"]["template"]["spec"]["containers"][0]["name"],
            "user-container"
        );
        assert_eq!(route["spec"]["traffic"][0]["configurationName"], "hello");
        assert!(route["spec"]["traffic"][1]
            .get("configurationName")
            .is_none());
    }

    #[test]
    fn revisions_are_named_by_generation_and_run_with_knatives_environment() {
        let cfg: Configuration = serde_json::from_value(json!({"metadata": {"name": "hello", "namespace": "default",
            "uid": "c1", "generation": 3, "labels": {labels::SERVICE: "hello"}},
            "spec": {"template": {"metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "2"}},
                "spec": {"containers": [{"name": "user-container", "image": "hello", "ports": [{"containerPort": 9000}],
                    "env": [{"name": "PORT", "value": "9000"}]}]}}}})).unwrap();
        let rev = plan_revision(&cfg);
        assert_eq!(rev["metadata"]["name"], "hello-00003");
        assert_eq!(
            rev["metadata"]["labels"][labels::CONFIGURATION_GENERATION],
            "3"
        );
        let mut rev: Revision = serde_json::from_value(rev).unwrap();
        rev.metadata.uid = Some("r1".into());
        assert_eq!(knative::port(&rev.spec), 9000);
        assert_eq!(initial_scale(&rev), 2);
        let (deployment, service) = plan_revision_workload(&rev);
        assert_eq!(deployment["metadata"]["name"], "hello-00003-deployment");
        assert!(deployment["spec"].get("replicas").is_none());
        let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
        let names: Vec<&str> = env
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["K_REVISION", "K_CONFIGURATION", "K_SERVICE", "PORT"]
        );
        assert_eq!(service["spec"]["ports"][0]["targetPort"], 9000);
        assert_eq!(service["spec"]["selector"][labels::REVISION_UID], "r1");
    }
}
