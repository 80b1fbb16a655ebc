//! Knative Serving's API (`serving.knative.dev/v1`), served as built-in kinds: a Service is a
//! Configuration (what to run: its template) and a Route (where its traffic goes); each change
//! of the template makes an immutable Revision, named `{configuration}-{generation:05}` as
//! Knative names it. The types here are Knative's (its `pkg/apis/serving/v1`), written out
//! with serde because no maintained Rust crate carries them; a revision's spec is a pod spec
//! (k8s-openapi's) with Knative's few fields beside it. Defaults and validation messages
//! follow Knative's webhook, so its users read the errors they know.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cause::Cause;

pub const GROUP: &str = "serving.knative.dev";
pub const API_VERSION: &str = "serving.knative.dev/v1";

/// Labels Knative puts on what it makes, read by the controllers and the node's router.
pub mod labels {
    pub const SERVICE: &str = "serving.knative.dev/service";
    pub const CONFIGURATION: &str = "serving.knative.dev/configuration";
    pub const CONFIGURATION_GENERATION: &str = "serving.knative.dev/configurationGeneration";
    pub const REVISION: &str = "serving.knative.dev/revision";
    pub const REVISION_UID: &str = "serving.knative.dev/revisionUID";
    pub const ROUTE: &str = "serving.knative.dev/route";
}

/// The container name Knative gives a revision's only container when it has none.
pub const DEFAULT_CONTAINER_NAME: &str = "user-container";
/// A request's default deadline (Knative's `revision-timeout-seconds`).
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 300;
/// Knative's upper bound of `containerConcurrency` (`container-concurrency-max-limit`).
pub const MAX_CONTAINER_CONCURRENCY: i64 = 1000;

/// A Knative condition (knative.dev/pkg's `apis.Condition`: a severity beside Kubernetes'
/// fields).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What runs: a pod spec and how requests reach it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSpec {
    #[serde(flatten)]
    pub pod: PodSpec,
    /// Requests one instance serves at once; 0 is no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_concurrency: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_start_timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionTemplateSpec {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RevisionSpec,
}

/// One share of a Route's traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Addressable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The status every Knative kind shares (`duckv1.Status`) with each kind's own fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    // Route and Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
    // Configuration and Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_revision_name: Option<String>,
    // Revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub template: RevisionTemplateSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationSpec {
    #[serde(default)]
    pub template: RevisionTemplateSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

macro_rules! kind {
    ($ty:ident, $spec:ty, $kind:literal, $plural:literal) => {
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        pub struct $ty {
            #[serde(default)]
            pub metadata: ObjectMeta,
            #[serde(default)]
            pub spec: $spec,
            #[serde(default)]
            pub status: Status,
        }

        impl k8s_openapi::Resource for $ty {
            const API_VERSION: &'static str = API_VERSION;
            const GROUP: &'static str = GROUP;
            const KIND: &'static str = $kind;
            const VERSION: &'static str = "v1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = k8s_openapi::NamespaceResourceScope;
        }

        impl k8s_openapi::ListableResource for $ty {
            const LIST_KIND: &'static str = concat!($kind, "List");
        }

        impl k8s_openapi::Metadata for $ty {
            type Ty = ObjectMeta;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

kind!(Service, ServiceSpec, "Service", "services");
kind!(
    Configuration,
    ConfigurationSpec,
    "Configuration",
    "configurations"
);
kind!(Revision, RevisionSpec, "Revision", "revisions");
kind!(Route, RouteSpec, "Route", "routes");

/// The port a revision's requests go to: its (one) declared container port, else 8080, where
/// a function without a port listens (`$PORT`, which its Deployment sets, defaults to it).
pub fn port(spec: &RevisionSpec) -> i32 {
    spec.pod
        .containers
        .iter()
        .find_map(|c| {
            c.ports
                .as_ref()
                .and_then(|p| p.first())
                .map(|p| p.container_port)
        })
        .unwrap_or(8080)
}

/// The environment Knative gives a revision's containers before their own (which win): `PORT`,
/// `K_REVISION`, `K_CONFIGURATION`, `K_SERVICE`. One list for the revision's Deployment and
/// for the node's in-process start, so both run the function alike.
pub fn function_env(rev: &Revision) -> Vec<(String, String)> {
    let mut env = vec![
        ("PORT".to_string(), port(&rev.spec).to_string()),
        (
            "K_REVISION".to_string(),
            rev.metadata.name.clone().unwrap_or_default(),
        ),
    ];
    let labels = rev.metadata.labels.as_ref();
    for (var, label) in [
        ("K_CONFIGURATION", labels::CONFIGURATION),
        ("K_SERVICE", labels::SERVICE),
    ] {
        if let Some(v) = labels.and_then(|l| l.get(label)) {
            env.push((var.to_string(), v.clone()));
        }
    }
    env
}

/// The label that keeps a Knative Service (and its Route) inside the cluster.
pub const VISIBILITY_LABEL: &str = "networking.knative.dev/visibility";

/// Whether a route (or the Service that made it, whose labels it carries) is
/// `cluster-local`: its URLs are in-cluster names, answered to clients in the cluster only.
pub fn cluster_local(labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(VISIBILITY_LABEL))
        .is_some_and(|v| v == "cluster-local")
}

/// The domain of a route's URLs: `svc.cluster.local` for a cluster-local one (Knative's
/// form: `{name}.{namespace}.svc.cluster.local`, tags `{tag}-{name}...`), else `domain`.
pub fn route_domain<'a>(route: &Route, domain: &'a str) -> &'a str {
    if cluster_local(route.metadata.labels.as_ref()) {
        "svc.cluster.local"
    } else {
        domain
    }
}

/// The pod annotation that carries a revision's `containerConcurrency` to the node, whose
/// runtime holds it per instance (Drover's own: Knative's queue-proxy holds it in the pod).
pub const CONTAINER_CONCURRENCY_ANNOTATION: &str = "drover.dev/container-concurrency";

/// The name of the revision a configuration makes at `generation`.
pub fn revision_name(configuration: &str, generation: i64) -> String {
    format!("{configuration}-{generation:05}")
}

/// The host a route, or one of its tags, answers on (Knative's default domain template
/// `{{.Name}}.{{.Namespace}}.{{.Domain}}`, tags as `{{.Tag}}-{{.Name}}`).
pub fn host(name: &str, namespace: &str, tag: Option<&str>, domain: &str) -> String {
    match tag {
        Some(tag) => format!("{tag}-{name}.{namespace}.{domain}"),
        None => format!("{name}.{namespace}.{domain}"),
    }
}

/// Fills in Knative's defaults for a new or updated object of `resource` (plural name in
/// serving.knative.dev).
pub fn apply_defaults(resource: &str, obj: &mut Value) {
    match resource {
        "services" | "configurations" => {
            if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
                revision_spec_defaults(spec);
            }
            if resource == "services" {
                let spec = &mut obj["spec"];
                if !spec.is_object() {
                    return;
                }
                let traffic = spec
                    .as_object_mut()
                    .expect("checked above")
                    .entry("traffic")
                    .or_insert_with(|| json!([]));
                if traffic.as_array().is_some_and(Vec::is_empty) {
                    *traffic = json!([{"latestRevision": true, "percent": 100}]);
                }
                traffic_defaults(traffic);
            }
        }
        "routes" => traffic_defaults(&mut obj["spec"]["traffic"]),
        "revisions" => {
            if let Some(spec) = obj.get_mut("spec") {
                revision_spec_defaults(spec);
            }
        }
        _ => {}
    }
}

fn revision_spec_defaults(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    spec.entry("containerConcurrency").or_insert(json!(0));
    spec.entry("timeoutSeconds")
        .or_insert(json!(DEFAULT_TIMEOUT_SECONDS));
    spec.entry("enableServiceLinks").or_insert(json!(false));
    if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
        let several = containers.len() > 1;
        for (i, c) in containers.iter_mut().enumerate() {
            let Some(c) = c.as_object_mut() else { continue };
            if c.get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                let name = if several {
                    format!("{DEFAULT_CONTAINER_NAME}-{i}")
                } else {
                    DEFAULT_CONTAINER_NAME.to_string()
                };
                c.insert("name".into(), json!(name));
            }
            c.entry("resources").or_insert(json!({}));
        }
    }
}

/// A target without a revision name follows the latest ready revision; one with a revision
/// name stays there.
fn traffic_defaults(traffic: &mut Value) {
    for t in traffic.as_array_mut().into_iter().flatten() {
        let Some(t) = t.as_object_mut() else { continue };
        if !t.contains_key("latestRevision") {
            let latest = !t.contains_key("revisionName");
            t.insert("latestRevision".into(), json!(latest));
        }
    }
}

fn cause(field: impl Into<String>, reason: &'static str, message: impl Into<String>) -> Cause {
    Cause {
        field: field.into(),
        reason,
        message: message.into(),
    }
}

fn invalid(field: impl Into<String>, value: impl std::fmt::Display) -> Cause {
    cause(
        field,
        "FieldValueInvalid",
        format!("invalid value: {value}"),
    )
}

/// Checks an object of `resource` after defaulting; empty when valid. Messages are Knative's
/// (`Traffic targets sum to 90, want 100`, `expected exactly one, got both`).
pub fn check(resource: &str, obj: &Value) -> Vec<Cause> {
    let mut c = Vec::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    match resource {
        "services" => {
            template(&obj["spec"]["template"], name, "spec.template", &mut c);
            traffic(&obj["spec"]["traffic"], true, "spec.traffic", &mut c);
        }
        "configurations" => template(&obj["spec"]["template"], name, "spec.template", &mut c),
        "routes" => traffic(&obj["spec"]["traffic"], false, "spec.traffic", &mut c),
        "revisions" => revision_spec(&obj["spec"], "spec", &mut c),
        _ => {}
    }
    c
}

fn template(t: &Value, owner: &str, path: &str, c: &mut Vec<Cause>) {
    if let Some(name) = t["metadata"]["name"].as_str() {
        let prefix = format!("{owner}-");
        if !name.starts_with(&prefix) {
            c.push(invalid(
                format!("{path}.metadata.name"),
                format!("{name:?} must have prefix {prefix:?}"),
            ));
        } else if let Some(why) = crate::object::invalid_subdomain(name) {
            c.push(invalid(format!("{path}.metadata.name"), why));
        }
    }
    for (key, value) in t["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if let Some(why) = annotation_problem(key, value.as_str().unwrap_or_default()) {
            c.push(cause(
                format!("{path}.metadata.annotations.{key}"),
                "FieldValueInvalid",
                why,
            ));
        }
    }
    revision_spec(&t["spec"], &format!("{path}.spec"), c);
}

/// Knative's autoscaling annotations, checked as its webhook checks them.
fn annotation_problem(key: &str, value: &str) -> Option<String> {
    let name = key.strip_prefix("autoscaling.knative.dev/")?;
    let number = || value.parse::<f64>().ok().filter(|v| v.is_finite());
    let whole = || value.parse::<i64>().ok();
    match name {
        "class" => (!["kpa.autoscaling.knative.dev", "hpa.autoscaling.knative.dev"]
            .contains(&value))
        .then(|| format!("invalid value: {value}")),
        "metric" => (!["concurrency", "rps", "cpu", "memory"].contains(&value))
            .then(|| format!("invalid value: {value}")),
        "target" => match number() {
            Some(v) if v >= 0.01 => None,
            _ => Some(format!("expected 0.01 <= {value} <= +Inf")),
        },
        "target-utilization-percentage" => match number() {
            Some(v) if (1.0..=100.0).contains(&v) => None,
            _ => Some(format!("expected 1 <= {value} <= 100")),
        },
        // Knative's allow-zero-initial-scale is false: a revision that starts at zero would
        // never be seen Ready.
        "initial-scale" | "initialScale" => match whole() {
            Some(v) if v >= 1 => None,
            Some(0) => Some("invalid value: 0: initial scale of 0 is not allowed".into()),
            _ => Some(format!("expected 1 <= {value} <= 2147483647")),
        },
        "min-scale" | "minScale" | "max-scale" | "maxScale" => match whole() {
            Some(v) if v >= 0 => None,
            _ => Some(format!("expected 0 <= {value} <= 2147483647")),
        },
        "window" => match duration(value) {
            Some(d) if (6.0..=3600.0).contains(&d) => None,
            _ => Some(format!("expected 6s <= {value} <= 1h0m0s")),
        },
        "panic-window-percentage" => match number() {
            Some(v) if (1.0..=100.0).contains(&v) => None,
            _ => Some(format!("expected 1.0 <= {value} <= 100.0")),
        },
        "panic-threshold-percentage" => match number() {
            Some(v) if (110.0..=1000.0).contains(&v) => None,
            _ => Some(format!("expected 110.0 <= {value} <= 1000.0")),
        },
        "scale-to-zero-pod-retention-period" | "scale-down-delay" => match duration(value) {
            Some(d) if d >= 0.0 => None,
            _ => Some(format!("invalid value: {value}")),
        },
        _ => None,
    }
}

/// A Go duration of the forms Knative's annotations use (`60s`, `1m30s`, `500ms`, `1h`), in
/// seconds.
pub fn duration(s: &str) -> Option<f64> {
    if s == "0" {
        return Some(0.0);
    }
    let mut total = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (scale, unit_len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else {
            return None;
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Some(total)
}

fn revision_spec(spec: &Value, path: &str, c: &mut Vec<Cause>) {
    let containers = spec["containers"].as_array().map_or(&[][..], Vec::as_slice);
    if containers.is_empty() {
        c.push(cause(
            format!("{path}.containers"),
            "FieldValueRequired",
            "missing field(s)",
        ));
    }
    let mut with_port = 0;
    for (i, ctr) in containers.iter().enumerate() {
        let here = format!("{path}.containers[{i}]");
        if ctr["image"].as_str().is_none_or(str::is_empty) {
            c.push(cause(
                format!("{here}.image"),
                "FieldValueRequired",
                "missing field(s)",
            ));
        }
        let ports = ctr["ports"].as_array().map_or(&[][..], Vec::as_slice);
        if ports.len() > 1 {
            c.push(cause(
                format!("{here}.ports"),
                "FieldValueInvalid",
                "more than one container port is set",
            ));
        }
        if let Some(p) = ports.first() {
            with_port += 1;
            if let Some(name) = p["name"].as_str() {
                if !["", "h2c", "http1"].contains(&name) {
                    c.push(invalid(format!("{here}.ports.name"), name));
                }
            }
            if let Some(port) = p["containerPort"].as_i64() {
                // Knative reserves the ports its queue-proxy listens on.
                if [8012, 8013, 8022, 9090, 9091].contains(&port) || !(0..=65535).contains(&port) {
                    c.push(invalid(format!("{here}.ports.containerPort"), port));
                }
            }
        }
    }
    if containers.len() > 1 && with_port != 1 {
        c.push(cause(
            format!("{path}.containers"),
            "FieldValueInvalid",
            "expected exactly one, got neither or more than one container port",
        ));
    }
    if let Some(cc) = spec["containerConcurrency"].as_i64() {
        if !(0..=MAX_CONTAINER_CONCURRENCY).contains(&cc) {
            c.push(cause(
                format!("{path}.containerConcurrency"),
                "FieldValueInvalid",
                format!("expected 0 <= {cc} <= {MAX_CONTAINER_CONCURRENCY}"),
            ));
        }
    }
    for field in [
        "timeoutSeconds",
        "responseStartTimeoutSeconds",
        "idleTimeoutSeconds",
    ] {
        if let Some(t) = spec[field].as_i64() {
            if !(0..=600).contains(&t) {
                c.push(cause(
                    format!("{path}.{field}"),
                    "FieldValueInvalid",
                    format!("expected 0 <= {t} <= 600"),
                ));
            }
        }
    }
}

fn traffic(traffic: &Value, in_service: bool, path: &str, c: &mut Vec<Cause>) {
    let targets = traffic.as_array().map_or(&[][..], Vec::as_slice);
    let mut sum = 0i64;
    let mut tags: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, t) in targets.iter().enumerate() {
        let here = format!("{path}[{i}]");
        let revision = t["revisionName"].as_str().filter(|s| !s.is_empty());
        let configuration = t["configurationName"].as_str().filter(|s| !s.is_empty());
        let latest = t["latestRevision"].as_bool();
        if in_service && configuration.is_some() {
            c.push(cause(
                format!("{here}.configurationName"),
                "FieldValueForbidden",
                "disallowed field",
            ));
        }
        match (revision, configuration, latest) {
            (Some(_), Some(_), _) => c.push(cause(
                format!("{here}.configurationName, {here}.revisionName"),
                "FieldValueInvalid",
                "expected exactly one, got both",
            )),
            (Some(_), None, Some(true)) => c.push(cause(
                format!("{here}.latestRevision"),
                "FieldValueInvalid",
                "may not set revisionName when latestRevision is true",
            )),
            (None, _, Some(false)) => c.push(cause(
                format!("{here}.latestRevision"),
                "FieldValueInvalid",
                "may not set false when revisionName is unset",
            )),
            (None, None, _) if !in_service => c.push(cause(
                format!("{here}.configurationName, {here}.revisionName"),
                "FieldValueRequired",
                "expected exactly one, got neither",
            )),
            _ => {}
        }
        if let Some(name) = revision {
            if let Some(why) = crate::object::invalid_subdomain(name) {
                c.push(invalid(format!("{here}.revisionName"), why));
            }
        }
        match &t["percent"] {
            Value::Null => {}
            p => match p.as_i64() {
                Some(p) if (0..=100).contains(&p) => sum += p,
                _ => c.push(invalid(format!("{here}.percent"), p)),
            },
        }
        if let Some(tag) = t["tag"].as_str() {
            if let Some(why) = crate::object::invalid_label(tag) {
                c.push(invalid(format!("{here}.tag"), format!("{tag:?}: {why}")));
            }
            if let Some(first) = tags.insert(tag, i) {
                c.push(cause(
                    format!("{path}[{first}].tag, {here}.tag"),
                    "FieldValueInvalid",
                    format!("Multiple definitions for {tag:?}"),
                ));
            }
        }
        if t.get("url").is_some_and(|u| !u.is_null()) {
            c.push(cause(
                format!("{here}.url"),
                "FieldValueForbidden",
                "disallowed field",
            ));
        }
    }
    if !targets.is_empty() && sum != 100 {
        c.push(cause(
            path.to_string(),
            "FieldValueInvalid",
            format!("Traffic targets sum to {sum}, want 100"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ksvc(spec: Value) -> Value {
        json!({"apiVersion": API_VERSION, "kind": "Service", "metadata": {"name": "hello", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn the_documentations_hello_world_gets_knatives_defaults() {
        let mut s = ksvc(json!({"template": {"spec": {"containers": [{
            "image": "ghcr.io/knative/helloworld-go:latest",
            "ports": [{"containerPort": 8080}],
            "env": [{"name": "TARGET", "value": "World"}]}]}}}));
        apply_defaults("services", &mut s);
        assert_eq!(
            s["spec"]["traffic"],
            json!([{"latestRevision": true, "percent": 100}])
        );
        let spec = &s["spec"]["template"]["spec"];
        assert_eq!(spec["containers"][0]["name"], "user-container");
        assert_eq!(spec["containerConcurrency"], 0);
        assert_eq!(spec["timeoutSeconds"], 300);
        assert!(
            check("services", &s).is_empty(),
            "{:?}",
            check("services", &s)
        );
        // The typed form keeps every field (nothing is an unknown field).
        let typed: Service = serde_json::from_value(s.clone()).unwrap();
        assert_eq!(
            typed.spec.template.spec.pod.containers[0].name,
            "user-container"
        );
        assert_eq!(typed.spec.template.spec.container_concurrency, Some(0));
    }

    #[test]
    fn traffic_must_sum_to_100_and_name_exactly_one_target() {
        let mut s = ksvc(
            json!({"template": {"spec": {"containers": [{"image": "x"}]}},
            "traffic": [{"revisionName": "hello-00001", "percent": 80},
                        {"latestRevision": true, "percent": 10, "tag": "Bad_Tag"},
                        {"revisionName": "hello-00002", "latestRevision": true, "percent": 0, "tag": "Bad_Tag"}]}),
        );
        apply_defaults("services", &mut s);
        let lines: Vec<String> = check("services", &s).iter().map(Cause::line).collect();
        assert!(
            lines.contains(&"spec.traffic: Traffic targets sum to 90, want 100".to_string()),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("spec.traffic[1].tag: invalid value: \"Bad_Tag\"")),
            "{lines:?}"
        );
        assert!(
            lines.contains(
                &"spec.traffic[1].tag, spec.traffic[2].tag: Multiple definitions for \"Bad_Tag\""
                    .to_string()
            ),
            "{lines:?}"
        );
        assert!(lines.contains(&"spec.traffic[2].latestRevision: may not set revisionName when latestRevision is true".to_string()), "{lines:?}");
        let mut route = json!({"spec": {"traffic": [{"percent": 100}]}});
        apply_defaults("routes", &mut route);
        let lines: Vec<String> = check("routes", &route).iter().map(Cause::line).collect();
        assert_eq!(lines, ["spec.traffic[0].configurationName, spec.traffic[0].revisionName: expected exactly one, got neither"]);
    }

    #[test]
    fn templates_names_concurrency_ports_and_annotations_are_checked() {
        let mut s = ksvc(json!({"template": {
            "metadata": {"name": "other-v1", "annotations": {
                "autoscaling.knative.dev/min-scale": "-1", "autoscaling.knative.dev/window": "2s",
                "autoscaling.knative.dev/target": "10"}},
            "spec": {"containerConcurrency": 1001, "containers": [
                {"image": "x", "ports": [{"containerPort": 8012}]}]}}}));
        apply_defaults("services", &mut s);
        let lines: Vec<String> = check("services", &s).iter().map(Cause::line).collect();
        assert_eq!(
            lines,
            [
                "spec.template.metadata.name: invalid value: \"other-v1\" must have prefix \"hello-\"",
                "spec.template.metadata.annotations.autoscaling.knative.dev/min-scale: expected 0 <= -1 <= 2147483647",
                "spec.template.metadata.annotations.autoscaling.knative.dev/window: expected 6s <= 2s <= 1h0m0s",
                "spec.template.spec.containers[0].ports.containerPort: invalid value: 8012",
                "spec.template.spec.containerConcurrency: expected 0 <= 1001 <= 1000",
            ]
        );
    }

    #[test]
    fn a_revision_may_not_start_at_zero() {
        assert_eq!(
            annotation_problem("autoscaling.knative.dev/initial-scale", "0").as_deref(),
            Some("invalid value: 0: initial scale of 0 is not allowed")
        );
        assert_eq!(
            annotation_problem("autoscaling.knative.dev/initial-scale", "2"),
            None
        );
        assert_eq!(
            annotation_problem("autoscaling.knative.dev/min-scale", "0"),
            None
        );
    }

    #[test]
    fn durations_and_names() {
        assert_eq!(duration("60s"), Some(60.0));
        assert_eq!(duration("1m30s"), Some(90.0));
        assert_eq!(duration("500ms"), Some(0.5));
        assert_eq!(duration("x"), None);
        assert_eq!(duration(""), None);
        assert_eq!(revision_name("hello", 3), "hello-00003");
        assert_eq!(
            host("hello", "default", Some("canary"), "example.com"),
            "canary-hello.default.example.com"
        );
    }
}
