//! metrics.k8s.io/v1beta1, served by the API server itself (Kubernetes needs metrics-server
//! for it): PodMetrics and NodeMetrics, gathered on each request from the nodes' usage
//! endpoints (`/metrics/pods`, rates over the last seconds). `kubectl top` and the
//! HorizontalPodAutoscaler read them. Beside cpu and memory, a container's usage carries
//! `drover.dev/requests-per-second` for HTTP functions.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use api::object;
use api::selector::LabelSelector;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use crate::respond::{failure, json_response};
use crate::state::ApiState;
use crate::stored::from_kv;

pub const REQUESTS_PER_SECOND: &str = "drover.dev/requests-per-second";

/// Where a node's agent serves the API server (logs, usage), from its status.
pub fn node_endpoint(node: &Value) -> Option<SocketAddr> {
    let address = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .and_then(|a| a.parse::<IpAddr>().ok())?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())?;
    Some(SocketAddr::new(address, port))
}

/// A short-lived token the node accepts as the API server's.
pub fn node_token(st: &ApiState, node: &str) -> String {
    st.auth.signer.issue(&crate::auth::Claims {
        sub: "system:kube-apiserver".into(),
        groups: vec![],
        exp: crate::auth::unix_now() + 60,
        uid: None,
        aud: vec![format!("drover-node:{node}")],
        pod: None,
    })
}

/// One node's report, or None when it cannot be reached in time.
async fn node_report(
    st: &ApiState,
    name: String,
    node: Value,
    path: &str,
) -> Option<(String, Value)> {
    let addr = node_endpoint(&node)?;
    let token = node_token(st, &name);
    let fetch = async {
        let target = crate::proxy::NodeTarget {
            tls: st.node_tls.get(),
            addr,
            name: &name,
        };
        let resp = crate::proxy::get(&target, path, &token).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = axum::body::to_bytes(axum::body::Body::new(resp.into_body()), 16 << 20)
            .await
            .ok()?;
        serde_json::from_slice::<Value>(&body).ok()
    };
    let report = tokio::time::timeout(Duration::from_secs(3), fetch)
        .await
        .ok()??;
    Some((name, report))
}

fn quantity_cpu(nanocores: u64) -> String {
    format!("{nanocores}n")
}

fn quantity_memory(bytes: u64) -> String {
    format!("{}Ki", bytes.div_ceil(1024))
}

/// The PodMetrics of nodes' usage `reports` (node name, report), for the pods that exist
/// (`pod_of(namespace, name)`) and match the request. A node speaks for its own pods only:
/// usage it reports for another node's pods (to steer an autoscaler) is not taken.
fn pod_items(
    reports: &[(String, Value)],
    pod_of: impl Fn(&str, &str) -> Option<Value>,
    namespace: Option<&str>,
    name: Option<&str>,
    selector: &LabelSelector,
    kind: &str,
) -> Vec<Value> {
    let mut items = Vec::new();
    for (reporter, report) in reports {
        for p in report["pods"].as_array().into_iter().flatten() {
            let (Some(ns), Some(pod)) = (p["namespace"].as_str(), p["name"].as_str()) else {
                continue;
            };
            if namespace.is_some_and(|want| want != ns) || name.is_some_and(|want| want != pod) {
                continue;
            }
            // Only pods that exist, with their labels for the selector.
            let Some(obj) = pod_of(ns, pod) else {
                continue;
            };
            // A node speaks for its own pods only: usage it reports for another node's
            // pods (to steer an autoscaler) is not taken.
            if obj["spec"]["nodeName"].as_str() != Some(reporter.as_str()) {
                continue;
            }
            let labels = object::labels(&obj);
            if !selector.matches(&labels) {
                continue;
            }
            let containers: Vec<Value> = p["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    json!({"name": c["name"], "usage": {
                        "cpu": quantity_cpu(c["cpuNanoCores"].as_u64().unwrap_or(0)),
                        "memory": quantity_memory(c["memoryBytes"].as_u64().unwrap_or(0)),
                        REQUESTS_PER_SECOND: format!("{}m", (c["requestsPerSecond"].as_f64().unwrap_or(0.0) * 1000.0).round() as u64),
                    }})
                })
                .collect();
            if containers.is_empty() {
                continue; // not sampled twice yet: no rates to give
            }
            items.push(json!({
                "kind": kind, "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {"name": pod, "namespace": ns, "labels": labels,
                             "creationTimestamp": obj["metadata"]["creationTimestamp"]},
                "timestamp": p["timestamp"],
                "window": format!("{}s", p["windowSeconds"].as_f64().unwrap_or(0.0).round() as u64),
                "containers": containers,
            }));
        }
    }
    items
}

/// Serves GET on pods or nodes of metrics.k8s.io (a list, or one object by name).
pub async fn serve(
    st: &ApiState,
    resource: &api::registry::Resource,
    namespace: Option<&str>,
    name: Option<&str>,
    query: &HashMap<String, String>,
) -> Response {
    let selector = match LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
    {
        Ok(s) => s,
        Err(e) => {
            return failure(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string());
        }
    };
    let nodes_resource = api::registry::find("", "v1", "nodes").expect("registered");
    let nodes: Vec<(String, Value)> = st
        .cache
        .range(&nodes_resource.key_prefix(), None)
        .kvs
        .iter()
        .map(from_kv)
        .filter_map(|n| Some((n["metadata"]["name"].as_str()?.to_string(), n)))
        .filter(|(n, _)| resource.name != "nodes" || name.is_none_or(|want| want == n))
        .collect();
    let reports: Vec<(String, Value)> = futures_util::future::join_all(
        nodes
            .iter()
            .map(|(n, v)| node_report(st, n.clone(), v.clone(), "/metrics/pods")),
    )
    .await
    .into_iter()
    .flatten()
    .collect();
    let kind = resource.kind;
    let mut items = Vec::new();
    if resource.name == "pods" {
        let pods_resource = api::registry::find("", "v1", "pods").expect("registered");
        let pod = |ns: &str, pod: &str| {
            st.cache
                .get(&pods_resource.key(Some(ns), pod))
                .map(|kv| from_kv(&kv))
        };
        items = pod_items(&reports, pod, namespace, name, &selector, kind);
    } else {
        let by_name: BTreeMap<&str, &Value> = nodes.iter().map(|(n, v)| (n.as_str(), v)).collect();
        for (node, report) in &reports {
            let labels = by_name
                .get(node.as_str())
                .map(|n| object::labels(n))
                .unwrap_or_default();
            if !selector.matches(&labels) {
                continue;
            }
            let (mut cpu, mut memory) = (0u64, 0u64);
            for c in report["pods"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|p| p["containers"].as_array().into_iter().flatten())
            {
                cpu += c["cpuNanoCores"].as_u64().unwrap_or(0);
                memory += c["memoryBytes"].as_u64().unwrap_or(0);
            }
            items.push(json!({
                "kind": kind, "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {"name": node, "labels": labels},
                "timestamp": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                "window": "4s",
                "usage": {"cpu": quantity_cpu(cpu), "memory": quantity_memory(memory)},
            }));
        }
    }
    match name {
        Some(n) => match items.into_iter().next() {
            Some(item) => json_response(StatusCode::OK, &item),
            None => failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{}.metrics.k8s.io \"{n}\" not found", resource.name),
            ),
        },
        None => json_response(
            StatusCode::OK,
            &json!({"kind": format!("{kind}List"), "apiVersion": "metrics.k8s.io/v1beta1",
                    "metadata": {}, "items": items}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that reports usage for another node's pod (to steer that pod's autoscaler) is
    /// not believed; its own pod's usage is served.
    #[test]
    fn a_node_speaks_for_its_own_pods_only() {
        let report = json!({"pods": [
            {"namespace": "shop", "name": "mine", "timestamp": "t", "windowSeconds": 4,
             "containers": [{"name": "c", "cpuNanoCores": 5_000_000, "memoryBytes": 2048}]},
            {"namespace": "shop", "name": "theirs", "timestamp": "t", "windowSeconds": 4,
             "containers": [{"name": "c", "cpuNanoCores": 900_000_000_000u64, "memoryBytes": 1}]},
            {"namespace": "shop", "name": "gone", "timestamp": "t", "windowSeconds": 4,
             "containers": [{"name": "c", "cpuNanoCores": 1, "memoryBytes": 1}]},
        ]});
        let pod_of = |ns: &str, name: &str| {
            let node = match name {
                "mine" => "n1",
                "theirs" => "n2",
                _ => return None,
            };
            Some(
                json!({"metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
                        "spec": {"nodeName": node}}),
            )
        };
        let all = LabelSelector::parse("").unwrap();
        let items = pod_items(
            &[("n1".to_string(), report)],
            pod_of,
            None,
            None,
            &all,
            "PodMetrics",
        );
        let names: Vec<&str> = items
            .iter()
            .filter_map(|i| i["metadata"]["name"].as_str())
            .collect();
        assert_eq!(names, ["mine"]);
        assert_eq!(items[0]["containers"][0]["usage"]["cpu"], "5000000n");
    }
}

/// `GET /drover/v1/function-stats`: every node router's measurements of Knative revisions'
/// traffic (`node::functions`), summed per revision and second, for the autoscaler
/// (`controllers::knative::autoscale`). `system:masters` only: it shows what every function
/// is asked.
pub async fn function_stats(
    axum::extract::State(st): axum::extract::State<std::sync::Arc<ApiState>>,
    user: Option<axum::Extension<api::rbac::User>>,
) -> Response {
    let admin =
        user.is_some_and(|axum::Extension(u)| u.groups.iter().any(|g| g == "system:masters"));
    if !admin {
        return failure(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "only system:masters may read the function routers' stats",
        );
    }
    let nodes_resource = api::registry::find("", "v1", "nodes").expect("registered");
    let nodes: Vec<(String, Value)> = st
        .cache
        .range(&nodes_resource.key_prefix(), None)
        .kvs
        .iter()
        .map(from_kv)
        .filter_map(|n| Some((n["metadata"]["name"].as_str()?.to_string(), n)))
        .collect();
    let reports: Vec<Value> = futures_util::future::join_all(
        nodes
            .iter()
            .map(|(n, v)| node_report(&st, n.clone(), v.clone(), "/functions/stats")),
    )
    .await
    .into_iter()
    .flatten()
    .map(|(_, r)| r)
    .collect();
    json_response(StatusCode::OK, &merge_function_stats(&reports))
}

/// A router's measurement as far as one router can have seen it: never negative (which would
/// cancel other routers' traffic) and at most what it can hold at once (its connections, or
/// requests a second at that), so one node cannot make a function scale without bound.
fn plausible(v: Option<f64>) -> f64 {
    const MOST: f64 = 100_000.0;
    v.filter(|v| v.is_finite()).unwrap_or(0.0).clamp(0.0, MOST)
}

/// A revision's cold starts summed over the routers: count, seconds, in process, and the
/// histogram's cumulative count per bucket bound (`le`).
#[derive(Default)]
struct ColdStarts {
    count: f64,
    sum: f64,
    in_process: f64,
    buckets: Vec<(String, f64)>,
}

impl ColdStarts {
    /// Adds one router's report (counts that are not finite or are negative count as 0, and
    /// at most 10¹² each; at most 32 bucket bounds, as a router has 13).
    fn add(&mut self, report: &Value) {
        const MOST: f64 = 1e12;
        let n = |v: &Value| {
            v.as_f64()
                .filter(|v| v.is_finite())
                .unwrap_or(0.0)
                .clamp(0.0, MOST)
        };
        self.count += n(&report["count"]);
        self.sum += n(&report["sum"]);
        self.in_process += n(&report["inProcess"]);
        for b in report["buckets"].as_array().into_iter().flatten() {
            let Some(le) = b[0].as_str() else { continue };
            let room = self.buckets.len() < 32 && le.len() <= 16;
            match self.buckets.iter_mut().find(|(l, _)| l == le) {
                Some((_, c)) => *c += n(&b[1]),
                None if room => self.buckets.push((le.to_string(), n(&b[1]))),
                None => {}
            }
        }
    }

    fn report(&self) -> Value {
        let buckets: Vec<Value> = self.buckets.iter().map(|(le, c)| json!([le, c])).collect();
        json!({"count": self.count, "sum": self.sum, "inProcess": self.in_process,
            "buckets": buckets})
    }
}

/// The routers' reports summed: per revision its requests in flight, per second its
/// average concurrency and request count, and its cold starts.
fn merge_function_stats(reports: &[Value]) -> Value {
    /// Per revision: in flight, per second (concurrency, requests), cold starts.
    type Summed = (f64, BTreeMap<u64, (f64, f64)>, ColdStarts);
    let mut merged: BTreeMap<String, Summed> = BTreeMap::new();
    for report in reports {
        for (key, stats) in report["revisions"].as_object().into_iter().flatten() {
            let entry = merged.entry(key.clone()).or_default();
            entry.0 += plausible(stats["inflight"].as_f64());
            entry.2.add(&stats["coldStarts"]);
            for s in stats["seconds"].as_array().into_iter().flatten() {
                let (Some(t), Some(c), Some(r)) = (s[0].as_u64(), s[1].as_f64(), s[2].as_f64())
                else {
                    continue;
                };
                let second = entry.1.entry(t).or_default();
                second.0 += plausible(Some(c));
                second.1 += plausible(Some(r));
            }
        }
    }
    let revisions: serde_json::Map<String, Value> = merged
        .into_iter()
        .map(|(k, (inflight, seconds, cold))| {
            let seconds: Vec<Value> = seconds
                .into_iter()
                .map(|(t, (c, r))| json!([t, c, r]))
                .collect();
            let cold = cold.report();
            (
                k,
                json!({"inflight": inflight, "seconds": seconds, "coldStarts": cold}),
            )
        })
        .collect();
    json!({"revisions": revisions})
}

#[cfg(test)]
mod function_stats_tests {
    use super::*;

    #[test]
    fn routers_reports_add_up_per_revision_and_second() {
        let a = json!({"revisions": {"default/hello-00001": {"inflight": 2.0, "seconds": [[100, 1.5, 3.0], [101, 2.0, 4.0]],
            "coldStarts": {"count": 2, "sum": 0.01, "inProcess": 1, "buckets": [["0.005", 1], ["+Inf", 2]]}}}});
        let b = json!({"revisions": {"default/hello-00001": {"inflight": 1.0, "seconds": [[101, 1.0, 1.0], [102, -5.0, 1e12]],
            "coldStarts": {"count": 1, "sum": 0.2, "inProcess": -4, "buckets": [["0.005", 0], ["+Inf", 1]]}},
            "x/y": {"inflight": 0.0, "seconds": [["bad"]]}}});
        let m = merge_function_stats(&[a, b]);
        let hello = &m["revisions"]["default/hello-00001"];
        assert_eq!(
            hello["seconds"],
            json!([[100, 1.5, 3.0], [101, 3.0, 5.0], [102, 0.0, 100000.0]])
        );
        assert_eq!(hello["inflight"], 3.0);
        assert_eq!(
            hello["coldStarts"],
            json!({"count": 3.0, "sum": 0.21000000000000002, "inProcess": 1.0,
                "buckets": [["0.005", 1.0], ["+Inf", 3.0]]})
        );
        assert_eq!(m["revisions"]["x/y"]["seconds"], json!([]));
    }
}
