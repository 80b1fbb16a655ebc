//! Validation of an object's shape against its Kubernetes type (from k8s-openapi): wrong types
//! are reported with the field's path (`spec.replicas: invalid type: string "three", expected
//! i32`), and with strict field validation (what kubectl asks for) unknown fields are errors
//! naming the field (`unknown field "spec.replicass"`), as kube-apiserver reports them.

use k8s_openapi::api::{
    apps, autoscaling, batch, coordination, core, discovery, events, networking, node, rbac,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Why an object does not fit its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    /// A field has the wrong type or an impossible value (HTTP 422, field named).
    Invalid { field: String, message: String },
    /// A field the type does not have (HTTP 400 under strict field validation).
    UnknownField(String),
}

/// Checks `obj` as a `T`: Ok with the unknown fields found (none under `strict`, where the
/// first is the error).
fn check_as<T: DeserializeOwned + Serialize>(
    obj: &mut Value,
    strict: bool,
) -> Result<Vec<String>, ShapeError> {
    // Go writes a kind's status even when nothing set it (a struct, not a pointer): an
    // empty one is tried here so that its required fields come back at zero below.
    let status_added = obj.is_object() && obj.get("status").is_none_or(Value::is_null);
    if status_added {
        obj["status"] = Value::Object(Default::default());
    }
    let typed: T = serde_path_to_error::deserialize(&*obj).map_err(|e| {
        let field = e.path().to_string();
        ShapeError::Invalid {
            field: if field == "." { String::new() } else { field },
            message: e.into_inner().to_string(),
        }
    })?;
    let known = serde_json::to_value(&typed).map_err(|e| ShapeError::Invalid {
        field: String::new(),
        message: e.to_string(),
    })?;
    let mut unknown = Vec::new();
    unknown_fields(obj, &known, "", &mut unknown);
    if strict && !unknown.is_empty() {
        return Err(ShapeError::UnknownField(unknown.swap_remove(0)));
    }
    match known.get("status") {
        Some(known) => add_zero_fields(&mut obj["status"], known),
        // The kind has no status.
        None if status_added => {
            obj.as_object_mut().map(|o| o.remove("status"));
        }
        None => {}
    }
    Ok(unknown)
}

/// Adds to `sent` the fields the typed round trip `known` has and `sent` lacks: the required
/// fields of the type, at their zero value. Go's encoder writes those (`numberReady: 0` in a
/// new DaemonSet's status), and clients that check required fields (the Python client) raise
/// without them. Only under `status`: in a spec, a missing required field is the client's
/// error to report, not a zero to invent.
fn add_zero_fields(sent: &mut Value, known: &Value) {
    match (sent, known) {
        (Value::Object(s), Value::Object(k)) => {
            for (key, kv) in k {
                match s.get_mut(key) {
                    Some(sv) => add_zero_fields(sv, kv),
                    None => {
                        s.insert(key.clone(), kv.clone());
                    }
                }
            }
        }
        (Value::Array(s), Value::Array(k)) => {
            for (sv, kv) in s.iter_mut().zip(k) {
                add_zero_fields(sv, kv);
            }
        }
        _ => {}
    }
}

/// The keys of `sent` that the typed round trip `known` dropped, as dotted paths, in order.
fn unknown_fields(sent: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, known) {
        (Value::Object(s), Value::Object(k)) => {
            for (key, v) in s {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    Some(kv) => unknown_fields(v, kv, &here, out),
                    // A null or empty value the type leaves out is not an unknown field.
                    None if v.is_null()
                        || v == &Value::Object(Default::default())
                        || v == &Value::Array(vec![]) => {}
                    None if ["apiVersion", "kind"].contains(&key.as_str()) && path.is_empty() => {}
                    None => out.push(here),
                }
            }
        }
        (Value::Array(s), Value::Array(k)) => {
            for (i, (sv, kv)) in s.iter().zip(k).enumerate() {
                unknown_fields(sv, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Checks `obj` against the type of `group`/`version` `kind`, and gives back the unknown fields
/// it has (for `fieldValidation=Warn`). Kinds without a known type pass.
pub fn check(
    group: &str,
    version: &str,
    kind: &str,
    obj: &mut Value,
    strict: bool,
) -> Result<Vec<String>, ShapeError> {
    match (group, version, kind) {
        ("", "v1", "Namespace") => check_as::<core::v1::Namespace>(obj, strict),
        ("", "v1", "Pod") => check_as::<core::v1::Pod>(obj, strict),
        ("", "v1", "Service") => check_as::<core::v1::Service>(obj, strict),
        ("", "v1", "Endpoints") => check_as::<core::v1::Endpoints>(obj, strict),
        ("", "v1", "ConfigMap") => check_as::<core::v1::ConfigMap>(obj, strict),
        ("", "v1", "Secret") => check_as::<core::v1::Secret>(obj, strict),
        ("", "v1", "Node") => check_as::<core::v1::Node>(obj, strict),
        ("", "v1", "Event") => check_as::<core::v1::Event>(obj, strict),
        ("", "v1", "ServiceAccount") => check_as::<core::v1::ServiceAccount>(obj, strict),
        ("apps", "v1", "Deployment") => check_as::<apps::v1::Deployment>(obj, strict),
        ("apps", "v1", "ReplicaSet") => check_as::<apps::v1::ReplicaSet>(obj, strict),
        ("apps", "v1", "DaemonSet") => check_as::<apps::v1::DaemonSet>(obj, strict),
        ("apps", "v1", "StatefulSet") => check_as::<apps::v1::StatefulSet>(obj, strict),
        ("apps", "v1", "ControllerRevision") => {
            check_as::<apps::v1::ControllerRevision>(obj, strict)
        }
        ("batch", "v1", "Job") => check_as::<batch::v1::Job>(obj, strict),
        ("batch", "v1", "CronJob") => check_as::<batch::v1::CronJob>(obj, strict),
        ("autoscaling", "v2", "HorizontalPodAutoscaler") => {
            check_as::<autoscaling::v2::HorizontalPodAutoscaler>(obj, strict)
        }
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => {
            check_as::<autoscaling::v1::HorizontalPodAutoscaler>(obj, strict)
        }
        ("networking.k8s.io", "v1", "NetworkPolicy") => {
            check_as::<networking::v1::NetworkPolicy>(obj, strict)
        }
        ("discovery.k8s.io", "v1", "EndpointSlice") => {
            check_as::<discovery::v1::EndpointSlice>(obj, strict)
        }
        ("coordination.k8s.io", "v1", "Lease") => check_as::<coordination::v1::Lease>(obj, strict),
        ("node.k8s.io", "v1", "RuntimeClass") => check_as::<node::v1::RuntimeClass>(obj, strict),
        ("events.k8s.io", "v1", "Event") => check_as::<events::v1::Event>(obj, strict),
        ("rbac.authorization.k8s.io", "v1", "Role") => check_as::<rbac::v1::Role>(obj, strict),
        ("rbac.authorization.k8s.io", "v1", "RoleBinding") => {
            check_as::<rbac::v1::RoleBinding>(obj, strict)
        }
        ("rbac.authorization.k8s.io", "v1", "ClusterRole") => {
            check_as::<rbac::v1::ClusterRole>(obj, strict)
        }
        ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding") => {
            check_as::<rbac::v1::ClusterRoleBinding>(obj, strict)
        }
        (crate::knative::GROUP, "v1", "Service") => {
            check_as::<crate::knative::Service>(obj, strict)
        }
        (crate::knative::GROUP, "v1", "Configuration") => {
            check_as::<crate::knative::Configuration>(obj, strict)
        }
        (crate::knative::GROUP, "v1", "Revision") => {
            check_as::<crate::knative::Revision>(obj, strict)
        }
        (crate::knative::GROUP, "v1", "Route") => check_as::<crate::knative::Route>(obj, strict),
        _ => Ok(vec![]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(spec: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": spec})
    }

    #[test]
    fn wrong_types_name_the_field() {
        let bad = deployment(json!({"replicas": "three", "selector": {}, "template": {}}));
        match check("apps", "v1", "Deployment", &mut bad.clone(), true) {
            Err(ShapeError::Invalid { field, message }) => {
                assert_eq!(field, "spec.replicas");
                assert!(message.contains("invalid type"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_fields_are_found_when_strict() {
        let typo = deployment(
            json!({"replicass": 3, "selector": {}, "template": {"spec": {"containers": [{"name": "a", "imagee": "x"}]}}}),
        );
        assert_eq!(
            check("apps", "v1", "Deployment", &mut typo.clone(), true),
            Err(ShapeError::UnknownField("spec.replicass".into()))
        );
        assert_eq!(
            check("apps", "v1", "Deployment", &mut typo.clone(), false),
            Ok(vec![
                "spec.replicass".to_string(),
                "spec.template.spec.containers[0].imagee".to_string()
            ])
        );
        let nested = deployment(
            json!({"selector": {}, "template": {"spec": {"containers": [{"name": "a", "imagee": "x"}]}}}),
        );
        assert_eq!(
            check("apps", "v1", "Deployment", &mut nested.clone(), true),
            Err(ShapeError::UnknownField(
                "spec.template.spec.containers[0].imagee".into()
            ))
        );
    }

    #[test]
    fn valid_objects_pass_including_int_or_string_and_quantities() {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"a": "b"}},
            "spec": {"ports": [{"port": 80, "targetPort": "http"}], "selector": {"app": "x"}}});
        assert_eq!(
            check("", "v1", "Service", &mut svc.clone(), true),
            Ok(vec![])
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}}}]}});
        assert_eq!(check("", "v1", "Pod", &mut pod.clone(), true), Ok(vec![]));
    }

    /// Go writes a status's required fields at zero; the Python client raises without them.
    #[test]
    fn a_status_gets_its_required_fields_at_zero_and_keeps_what_was_sent() {
        let mut ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "d"},
            "spec": {"selector": {}, "template": {}}, "status": {"numberReady": 2, "x-kept": 1}});
        check("apps", "v1", "DaemonSet", &mut ds, false).unwrap();
        let mut fresh = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "d"},
            "spec": {"selector": {}, "template": {}}});
        check("apps", "v1", "DaemonSet", &mut fresh, true).unwrap();
        assert_eq!(fresh["status"]["numberMisscheduled"], 0);
        // A kind without a status gets none.
        let mut map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m"}});
        check("", "v1", "ConfigMap", &mut map, true).unwrap();
        assert!(map.get("status").is_none());
        assert_eq!(
            ds["status"],
            json!({"currentNumberScheduled": 0, "desiredNumberScheduled": 0,
                "numberMisscheduled": 0, "numberReady": 2, "x-kept": 1})
        );
        // A spec is left as sent: a missing required field there is the client's to fix.
        assert!(ds["spec"].get("template").unwrap().get("spec").is_none());
    }
}
