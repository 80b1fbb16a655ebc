//! Defaulting: the fields Kubernetes fills in when a client leaves them out, applied on create.
//! Only what a user of `kubectl get -o yaml` or a controller would rely on; more comes with
//! typed validation.

use serde_json::{json, Value};

/// Sets `key` unless the client gave it a value. An empty string counts as not given: typed
/// clients send zero values of non-pointer fields (protobuf `""`, `{}`), which Kubernetes
/// defaults too. A default object fills in the missing fields of an object already there.
fn default(obj: &mut Value, key: &str, value: Value) {
    if !obj.is_object() {
        return;
    }
    match (obj.get_mut(key), value) {
        (Some(existing @ Value::Object(_)), Value::Object(fields)) => {
            for (k, v) in fields {
                default(existing, &k, v);
            }
        }
        (Some(existing), value) if existing.is_null() || existing.as_str() == Some("") => {
            *existing = value
        }
        (Some(_), _) => {}
        (None, value) => obj[key] = value,
    }
}

/// Pod spec defaults; Jobs' pods get no restart policy (they must choose OnFailure or Never).
fn pod_spec(spec: &mut Value, restart_policy: Option<&str>) {
    if let Some(policy) = restart_policy {
        default(spec, "restartPolicy", json!(policy));
    }
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "securityContext", json!({}));
    for list in ["initContainers", "containers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers {
                let latest = c["image"].as_str().is_some_and(|i| {
                    !i.rsplit('/').next().unwrap_or(i).contains(':') || i.ends_with(":latest")
                });
                default(
                    c,
                    "imagePullPolicy",
                    json!(if latest { "Always" } else { "IfNotPresent" }),
                );
                default(c, "terminationMessagePath", json!("/dev/termination-log"));
                default(c, "terminationMessagePolicy", json!("File"));
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        default(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

/// Fills in defaults for a new object of `resource` (plural name).
pub fn apply(resource: &str, obj: &mut Value) {
    match resource {
        "services.serving.knative.dev" => crate::knative::apply_defaults("services", obj),
        "configurations" | "revisions" | "routes" => crate::knative::apply_defaults(resource, obj),
        "secrets" => default(obj, "type", json!("Opaque")),
        "services" => {
            default(obj, "spec", json!({}));
            let spec = &mut obj["spec"];
            default(spec, "type", json!("ClusterIP"));
            default(spec, "sessionAffinity", json!("None"));
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    default(p, "protocol", json!("TCP"));
                    let port = p["port"].clone();
                    default(p, "targetPort", port);
                }
            }
        }
        "pods" => {
            default(obj, "spec", json!({}));
            pod_spec(&mut obj["spec"], Some("Always"));
            default(
                obj,
                "status",
                json!({"phase": "Pending", "qosClass": "BestEffort"}),
            );
        }
        "deployments" | "replicasets" | "statefulsets" | "daemonsets" | "jobs" => {
            default(obj, "spec", json!({}));
            let spec = &mut obj["spec"];
            if resource != "daemonsets" && resource != "jobs" {
                default(spec, "replicas", json!(1));
            }
            if resource == "deployments" {
                default(
                    spec,
                    "strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
                );
                default(spec, "revisionHistoryLimit", json!(10));
                default(spec, "progressDeadlineSeconds", json!(600));
            }
            if resource == "daemonsets" {
                default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
                );
                default(spec, "revisionHistoryLimit", json!(10));
            }
            if resource == "statefulsets" {
                default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                );
                default(spec, "podManagementPolicy", json!("OrderedReady"));
                default(spec, "revisionHistoryLimit", json!(10));
            }
            if resource == "jobs" {
                default(spec, "backoffLimit", json!(6));
                default(spec, "completions", json!(1));
                default(spec, "parallelism", json!(1));
            }
            if let Some(template) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                let policy = (resource != "jobs").then_some("Always");
                pod_spec(template, policy);
            }
            default(obj, "status", json!({}));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_only_what_is_missing() {
        let mut svc = json!({"spec": {"ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": 5353}]}});
        apply("services", &mut svc);
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(svc["spec"]["ports"][1]["protocol"], "UDP");
        assert_eq!(svc["spec"]["ports"][1]["targetPort"], 5353);
        let mut d = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "reg:5000/x:1"}]}}}});
        apply("deployments", &mut d);
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
        let c = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["imagePullPolicy"], "Always");
        assert_eq!(c[1]["imagePullPolicy"], "IfNotPresent");
        let mut s = json!({});
        apply("secrets", &mut s);
        assert_eq!(s["type"], "Opaque");
    }
}
