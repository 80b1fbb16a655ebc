//! The columns `kubectl get` shows for each kind (served as `meta.k8s.io/v1` Tables), as
//! kube-apiserver's printers define them. Columns with priority 1 appear with `-o wide`.
//! Name and age are added by the caller around these.

use serde_json::Value;

pub struct Column {
    pub name: &'static str,
    /// 0: always shown; 1: only with `-o wide`.
    pub priority: u8,
    pub cell: fn(&Value) -> String,
}

const fn col(name: &'static str, priority: u8, cell: fn(&Value) -> String) -> Column {
    Column {
        name,
        priority,
        cell,
    }
}

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(v, |v, p| v.get(p).unwrap_or(&Value::Null))
}

fn text(v: &Value, path: &str) -> String {
    match at(v, path) {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

fn int(v: &Value, path: &str) -> i64 {
    at(v, path).as_i64().unwrap_or(0)
}

fn array<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    at(v, path).as_array().map_or(&[], Vec::as_slice)
}

fn pod_ready(p: &Value) -> String {
    let statuses = array(p, "status.containerStatuses");
    let total = array(p, "spec.containers").len();
    let ready = statuses
        .iter()
        .filter(|s| s["ready"].as_bool() == Some(true))
        .count();
    format!("{ready}/{total}")
}

fn pod_status(p: &Value) -> String {
    if !at(p, "metadata.deletionTimestamp").is_null() {
        return "Terminating".into();
    }
    // A waiting or terminated container's reason says more than the phase (CrashLoopBackOff).
    for s in array(p, "status.containerStatuses") {
        for state in ["waiting", "terminated"] {
            if let Some(reason) = s["state"][state]["reason"].as_str() {
                return reason.into();
            }
        }
    }
    let reason = text(p, "status.reason");
    if !reason.is_empty() {
        return reason;
    }
    or_none(text(p, "status.phase")).replace("<none>", "Pending")
}

fn pod_restarts(p: &Value) -> String {
    array(p, "status.containerStatuses")
        .iter()
        .map(|s| s["restartCount"].as_i64().unwrap_or(0))
        .sum::<i64>()
        .to_string()
}

/// Services without a `spec.type` are ClusterIP services.
fn service_type(s: &Value) -> String {
    let t = text(s, "spec.type");
    if t.is_empty() {
        "ClusterIP".into()
    } else {
        t
    }
}

fn service_ports(s: &Value) -> String {
    let ports: Vec<String> = array(s, "spec.ports")
        .iter()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(np) => format!("{}:{np}/{proto}", p["port"]),
                None => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    or_none(ports.join(","))
}

fn external_ip(s: &Value) -> String {
    let mut ips: Vec<String> = array(s, "spec.externalIPs")
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    ips.extend(
        array(s, "status.loadBalancer.ingress")
            .iter()
            .filter_map(|i| {
                i["ip"]
                    .as_str()
                    .or(i["hostname"].as_str())
                    .map(String::from)
            }),
    );
    match (ips.is_empty(), text(s, "spec.type").as_str()) {
        (false, _) => ips.join(","),
        (true, "LoadBalancer") => "<pending>".into(),
        (true, "ExternalName") => text(s, "spec.externalName"),
        _ => "<none>".into(),
    }
}

fn selector(v: &Value, path: &str) -> String {
    let sel = at(v, path);
    let map = sel.get("matchLabels").unwrap_or(sel);
    let parts: Vec<String> = map.as_object().map_or(vec![], |m| {
        m.iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect()
    });
    or_none(parts.join(","))
}

fn template_field(v: &Value, field: &str) -> String {
    array(v, "spec.template.spec.containers")
        .iter()
        .map(|c| c[field].as_str().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(",")
}

fn count_data(v: &Value) -> String {
    let n = at(v, "data").as_object().map_or(0, |m| m.len())
        + at(v, "binaryData").as_object().map_or(0, |m| m.len());
    n.to_string()
}

fn node_status(n: &Value) -> String {
    let ready = array(n, "status.conditions")
        .iter()
        .find(|c| c["type"] == "Ready");
    let mut status = match ready.and_then(|c| c["status"].as_str()) {
        Some("True") => "Ready".to_string(),
        _ => "NotReady".to_string(),
    };
    if at(n, "spec.unschedulable").as_bool() == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_roles(n: &Value) -> String {
    let roles: Vec<String> = at(n, "metadata.labels").as_object().map_or(vec![], |l| {
        l.keys()
            .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/").map(String::from))
            .collect()
    });
    or_none(roles.join(","))
}

fn replicas_ready(v: &Value) -> String {
    format!(
        "{}/{}",
        int(v, "status.readyReplicas"),
        int(v, "spec.replicas")
    )
}

/// `cpu: 12%/50%` for each resource metric, as kubectl shows HPA targets.
fn hpa_targets(v: &Value) -> String {
    let current = array(v, "status.currentMetrics");
    let targets: Vec<String> = array(v, "spec.metrics")
        .iter()
        .filter(|m| m["type"] == "Resource")
        .map(|m| {
            let name = m["resource"]["name"].as_str().unwrap_or("");
            let target = &m["resource"]["target"];
            let now = current
                .iter()
                .find(|c| c["resource"]["name"] == name)
                .and_then(|c| c["resource"]["current"]["averageUtilization"].as_i64())
                .map_or("<unknown>".to_string(), |u| format!("{u}%"));
            match target["averageUtilization"].as_i64() {
                Some(u) => format!("{name}: {now}/{u}%"),
                None => format!(
                    "{name}: {now}/{}",
                    target["averageValue"].as_str().unwrap_or("?")
                ),
            }
        })
        .collect();
    or_none(targets.join(", "))
}

/// The kind-specific columns of `resource` (by plural name).
pub fn columns(resource: &str) -> Vec<Column> {
    match resource {
        "namespaces" => vec![col("Status", 0, |v| text(v, "status.phase"))],
        "pods" => vec![
            col("Ready", 0, pod_ready),
            col("Status", 0, pod_status),
            col("Restarts", 0, pod_restarts),
            col("IP", 1, |v| or_none(text(v, "status.podIP"))),
            col("Node", 1, |v| or_none(text(v, "spec.nodeName"))),
        ],
        "deployments" => vec![
            col("Ready", 0, replicas_ready),
            col("Up-to-date", 0, |v| {
                int(v, "status.updatedReplicas").to_string()
            }),
            col("Available", 0, |v| {
                int(v, "status.availableReplicas").to_string()
            }),
            col("Containers", 1, |v| template_field(v, "name")),
            col("Images", 1, |v| template_field(v, "image")),
            col("Selector", 1, |v| selector(v, "spec.selector")),
        ],
        "replicasets" | "statefulsets" => vec![
            col("Desired", 0, |v| int(v, "spec.replicas").to_string()),
            col("Current", 0, |v| int(v, "status.replicas").to_string()),
            col("Ready", 0, |v| int(v, "status.readyReplicas").to_string()),
        ],
        "daemonsets" => vec![
            col("Desired", 0, |v| {
                int(v, "status.desiredNumberScheduled").to_string()
            }),
            col("Current", 0, |v| {
                int(v, "status.currentNumberScheduled").to_string()
            }),
            col("Ready", 0, |v| int(v, "status.numberReady").to_string()),
            col("Up-to-date", 0, |v| {
                int(v, "status.updatedNumberScheduled").to_string()
            }),
            col("Available", 0, |v| {
                int(v, "status.numberAvailable").to_string()
            }),
        ],
        "services" => vec![
            col("Type", 0, service_type),
            col("Cluster-IP", 0, |v| or_none(text(v, "spec.clusterIP"))),
            col("External-IP", 0, external_ip),
            col("Port(s)", 0, service_ports),
            col("Selector", 1, |v| selector(v, "spec.selector")),
        ],
        "configmaps" => vec![col("Data", 0, count_data)],
        "events" => vec![
            col("Type", 0, |v| text(v, "type")),
            col("Reason", 0, |v| text(v, "reason")),
            col("Object", 0, |v| {
                format!(
                    "{}/{}",
                    text(v, "involvedObject.kind").to_lowercase(),
                    text(v, "involvedObject.name")
                )
            }),
            col("Message", 0, |v| text(v, "message")),
        ],
        "secrets" => vec![
            col("Type", 0, |v| text(v, "type")),
            col("Data", 0, count_data),
        ],
        "nodes" => vec![
            col("Status", 0, node_status),
            col("Roles", 0, node_roles),
            col("Version", 0, |v| text(v, "status.nodeInfo.kubeletVersion")),
            col("Internal-IP", 1, |v| {
                array(v, "status.addresses")
                    .iter()
                    .find(|a| a["type"] == "InternalIP")
                    .map_or("<none>".into(), |a| text(a, "address"))
            }),
        ],
        "jobs" => vec![col("Completions", 0, |v| {
            format!(
                "{}/{}",
                int(v, "status.succeeded"),
                at(v, "spec.completions").as_i64().unwrap_or(1)
            )
        })],
        "cronjobs" => vec![
            col("Schedule", 0, |v| text(v, "spec.schedule")),
            col("Suspend", 0, |v| {
                at(v, "spec.suspend")
                    .as_bool()
                    .unwrap_or(false)
                    .to_string()
                    .replace("true", "True")
                    .replace("false", "False")
            }),
            col("Active", 0, |v| array(v, "status.active").len().to_string()),
        ],
        "horizontalpodautoscalers" => vec![
            col("Reference", 0, |v| {
                format!(
                    "{}/{}",
                    text(v, "spec.scaleTargetRef.kind"),
                    text(v, "spec.scaleTargetRef.name")
                )
            }),
            col("Targets", 0, hpa_targets),
            col("MinPods", 0, |v| {
                at(v, "spec.minReplicas").as_i64().unwrap_or(1).to_string()
            }),
            col("MaxPods", 0, |v| int(v, "spec.maxReplicas").to_string()),
            col("Replicas", 0, |v| {
                int(v, "status.currentReplicas").to_string()
            }),
        ],
        "endpoints" => vec![col("Endpoints", 0, |v| {
            let eps: Vec<String> = array(v, "subsets")
                .iter()
                .flat_map(|s| {
                    let ports: Vec<i64> = s["ports"].as_array().map_or(vec![], |p| {
                        p.iter().filter_map(|p| p["port"].as_i64()).collect()
                    });
                    s["addresses"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .flat_map(move |a| {
                            let ip = a["ip"].as_str().unwrap_or("").to_string();
                            ports.clone().into_iter().map(move |p| format!("{ip}:{p}"))
                        })
                })
                .collect();
            or_none(eps.join(","))
        })],
        "services.serving.knative.dev" => vec![
            col("URL", 0, |v| text(v, "status.url")),
            col("LatestCreated", 0, |v| {
                text(v, "status.latestCreatedRevisionName")
            }),
            col("LatestReady", 0, |v| {
                text(v, "status.latestReadyRevisionName")
            }),
            col("Ready", 0, |v| knative_ready(v, "status")),
            col("Reason", 0, |v| knative_ready(v, "reason")),
        ],
        "configurations" => vec![
            col("LatestCreated", 0, |v| {
                text(v, "status.latestCreatedRevisionName")
            }),
            col("LatestReady", 0, |v| {
                text(v, "status.latestReadyRevisionName")
            }),
            col("Ready", 0, |v| knative_ready(v, "status")),
            col("Reason", 0, |v| knative_ready(v, "reason")),
        ],
        "revisions" => vec![
            col("Config Name", 0, |v| {
                label(v, crate::knative::labels::CONFIGURATION)
            }),
            col("Generation", 0, |v| {
                label(v, crate::knative::labels::CONFIGURATION_GENERATION)
            }),
            col("Ready", 0, |v| knative_ready(v, "status")),
            col("Reason", 0, |v| knative_ready(v, "reason")),
            col("Actual Replicas", 0, |v| text(v, "status.actualReplicas")),
            col("Desired Replicas", 0, |v| text(v, "status.desiredReplicas")),
        ],
        "routes" => vec![
            col("URL", 0, |v| text(v, "status.url")),
            col("Ready", 0, |v| knative_ready(v, "status")),
            col("Reason", 0, |v| knative_ready(v, "reason")),
        ],
        _ => vec![],
    }
}

fn label(v: &Value, key: &str) -> String {
    v["metadata"]["labels"][key]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A field of a Knative object's Ready condition (its printer columns' `Ready` and `Reason`).
fn knative_ready(v: &Value, field: &str) -> String {
    array(v, "status.conditions")
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| text(c, field))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cells(resource: &str, v: &Value) -> Vec<String> {
        columns(resource).iter().map(|c| (c.cell)(v)).collect()
    }

    #[test]
    fn pod_columns_read_container_statuses() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"ready": true, "restartCount": 2, "state": {"running": {}}},
                {"ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        assert_eq!(
            cells("pods", &pod),
            vec!["1/2", "CrashLoopBackOff", "3", "10.0.0.5", "n1"]
        );
        assert_eq!(
            cells("pods", &json!({"spec": {"containers": [{}]}}))[1],
            "Pending"
        );
    }

    #[test]
    fn service_and_deployment_columns() {
        let svc = json!({"spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 8080, "nodePort": 30080, "protocol": "TCP"}], "type": "NodePort", "selector": {"app": "hw"}}});
        assert_eq!(
            cells("services", &svc),
            vec![
                "NodePort",
                "10.96.0.10",
                "<none>",
                "8080:30080/TCP",
                "app=hw"
            ]
        );
        assert_eq!(cells("services", &json!({"spec": {}}))[0], "ClusterIP");
        let d = json!({"spec": {"replicas": 3, "selector": {"matchLabels": {"app": "hw"}}, "template": {"spec": {"containers": [{"name": "web", "image": "hw:1"}]}}}, "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        assert_eq!(
            cells("deployments", &d),
            vec!["2/3", "3", "2", "web", "hw:1", "app=hw"]
        );
    }
}
