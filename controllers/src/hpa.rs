//! The HorizontalPodAutoscaler controller (autoscaling/v2): every sync period (Kubernetes:
//! 15 s) it reads the target's scale, the pods' usage from metrics.k8s.io, and sets the
//! replicas Kubernetes' algorithm gives:
//!
//! - `Resource` cpu (or memory) with `Utilization` (usage over requests, in percent) or
//!   `AverageValue`; `Pods` metric `requests-per-second` (HTTP functions: Drover's nodes count
//!   the requests) with `AverageValue`;
//! - desired = ceil(current × metric / target), unchanged within a 10 % tolerance, the
//!   largest over the metrics, within minReplicas..maxReplicas;
//! - scale-down stabilization (default 300 s: the highest recommendation of the window
//!   wins), scale-up limited to doubling or +4 pods per period, as Kubernetes' default
//!   behavior.
//!
//! [`recommend`] and [`stabilize`] are pure; [`run`] does the reading and writing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscaler, MetricSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::chrono::{SecondsFormat, Utc};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

pub const TOLERANCE: f64 = 0.1;
pub const REQUESTS_PER_SECOND: &str = "drover.dev/requests-per-second";

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub sync_period: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sync_period: Duration::from_secs(15),
        }
    }
}

/// One pod as the autoscaler sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodSample {
    /// Sum of the containers' requests, by resource ("cpu" in millicores, "memory" in bytes).
    pub requests: BTreeMap<String, f64>,
    /// Usage by resource (millicores, bytes) and requests per second; None without metrics.
    pub usage: Option<BTreeMap<String, f64>>,
}

/// A metric's current value, for the HPA's status.
#[derive(Clone, Debug, PartialEq)]
pub struct Current {
    pub spec_index: usize,
    /// Average per pod (millicores, bytes or requests per second).
    pub average: f64,
    /// Percent of requests, for utilization targets.
    pub utilization: Option<i32>,
}

fn quantity(
    q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    resource: &str,
) -> Option<f64> {
    match resource {
        "cpu" => api::quantity::millicores_exact(&q.0),
        "memory" => api::quantity::bytes(&q.0).map(|b| b as f64),
        // Requests per second are written like CPU: "10" or "500m".
        _ => api::quantity::millicores_exact(&q.0).map(|m| m / 1000.0),
    }
}

/// The replicas the metrics ask for (before bounds and stabilization), and their values.
/// None when no metric can be computed (no pod has metrics yet).
pub fn recommend(
    metrics: &[MetricSpec],
    current_replicas: i32,
    pods: &[PodSample],
) -> Option<(i32, Vec<Current>)> {
    let measured: Vec<&PodSample> = pods.iter().filter(|p| p.usage.is_some()).collect();
    if measured.is_empty() {
        return None;
    }
    let n = measured.len() as f64;
    let mut best: Option<i32> = None;
    let mut currents = Vec::new();
    for (i, m) in metrics.iter().enumerate() {
        let (key, target, utilization_target) = match (m.type_.as_str(), &m.resource, &m.pods) {
            ("Resource", Some(r), _) => {
                let t = &r.target;
                match (t.type_.as_str(), t.average_utilization, &t.average_value) {
                    ("Utilization", Some(u), _) => (r.name.clone(), None, Some(u)),
                    ("AverageValue", _, Some(v)) => (r.name.clone(), quantity(v, &r.name), None),
                    _ => continue,
                }
            }
            ("Pods", _, Some(p)) => {
                let name = p.metric.name.replace('_', "-");
                if !name.ends_with("requests-per-second") {
                    continue; // the only pod metric Drover's nodes report
                }
                let Some(v) = &p.target.average_value else {
                    continue;
                };
                (REQUESTS_PER_SECOND.to_string(), quantity(v, "rps"), None)
            }
            _ => continue,
        };
        let usage: f64 = measured
            .iter()
            .map(|p| {
                p.usage
                    .as_ref()
                    .and_then(|u| u.get(&key))
                    .copied()
                    .unwrap_or(0.0)
            })
            .sum();
        let average = usage / n;
        let ratio = match (utilization_target, target) {
            (Some(percent), _) => {
                let requested: f64 = measured
                    .iter()
                    .map(|p| p.requests.get(&key).copied().unwrap_or(0.0))
                    .sum();
                if requested <= 0.0 || percent <= 0 {
                    continue; // utilization needs requests (Kubernetes reports the same)
                }
                let utilization = usage * 100.0 / requested;
                currents.push(Current {
                    spec_index: i,
                    average,
                    utilization: Some(utilization.round() as i32),
                });
                utilization / f64::from(percent)
            }
            (None, Some(t)) if t > 0.0 => {
                currents.push(Current {
                    spec_index: i,
                    average,
                    utilization: None,
                });
                average / t
            }
            _ => continue,
        };
        let mut desired = if (ratio - 1.0).abs() <= TOLERANCE {
            current_replicas
        } else {
            (ratio * n).ceil() as i32
        };
        // Counted over the measured pods only: when some are missing (not ready, no metrics
        // yet), never move against the metric's direction.
        if (ratio > 1.0 && desired < current_replicas)
            || (ratio < 1.0 && desired > current_replicas)
        {
            desired = current_replicas;
        }
        best = Some(best.map_or(desired, |b| b.max(desired)));
    }
    best.map(|b| (b, currents))
}

/// Applies bounds, the scale-up limit and scale-down stabilization to a recommendation.
/// `history` holds earlier recommendations (when, replicas); the new one is added.
pub fn stabilize(
    recommended: i32,
    current: i32,
    min: i32,
    max: i32,
    window: Duration,
    history: &mut VecDeque<(Instant, i32)>,
    now: Instant,
) -> i32 {
    history.push_back((now, recommended));
    while history
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > window)
    {
        history.pop_front();
    }
    let mut desired = recommended;
    if desired < current {
        // Scale down only to the highest recommendation of the window.
        desired = history
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(desired)
            .min(current);
    }
    if desired > current {
        desired = desired.min((current * 2).max(current + 4));
    }
    desired.clamp(min.max(1), max.max(min.max(1)))
}

pub struct Context {
    pub client: kube::Client,
    pub hpas: Store<HorizontalPodAutoscaler>,
    pub pods: Store<Pod>,
    pub events: kubeclient::events::Recorder,
    pub settings: Settings,
}

fn requests_of(pod: &Pod) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        for (k, q) in c.resources.iter().flat_map(|r| r.requests.iter()).flatten() {
            if let Some(v) = quantity(q, k) {
                *out.entry(k.clone()).or_insert(0.0) += v;
            }
        }
    }
    out
}

fn is_ready(pod: &Pod) -> bool {
    api::pods::is_ready(pod) && pod.metadata.deletion_timestamp.is_none()
}

/// The usage of the pods selected by `selector` in `ns`, from metrics.k8s.io: pod name →
/// resource → value (millicores, bytes, requests per second).
async fn pod_usage(
    client: &kube::Client,
    ns: &str,
    selector: &str,
) -> Result<HashMap<String, BTreeMap<String, f64>>, kube::Error> {
    let url = format!(
        "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector={}",
        form_encode(selector)
    );
    let req = http::Request::get(url)
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    let list: Value = client.request(req).await?;
    let mut out = HashMap::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let Some(name) = item["metadata"]["name"].as_str() else {
            continue;
        };
        let mut usage = BTreeMap::new();
        for c in item["containers"].as_array().into_iter().flatten() {
            for (k, v) in c["usage"].as_object().into_iter().flatten() {
                let q = k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                    v.as_str().unwrap_or("0").to_string(),
                );
                let resource = if k == REQUESTS_PER_SECOND {
                    "rps"
                } else {
                    k.as_str()
                };
                if let Some(v) = quantity(&q, resource) {
                    *usage.entry(k.clone()).or_insert(0.0) += v;
                }
            }
        }
        out.insert(name.to_string(), usage);
    }
    Ok(out)
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The selector string of a scale subresource (`app=web,tier=front`) as a map; set-based
/// selectors are not written by Drover's scale endpoints.
fn parse_selector(s: &str) -> BTreeMap<String, String> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.trim_start_matches('=').trim().to_string(),
            )
        })
        .collect()
}

async fn sync_one(
    ctx: &Context,
    hpa: &HorizontalPodAutoscaler,
    history: &mut VecDeque<(Instant, i32)>,
) -> Result<(), String> {
    let ns = hpa.namespace().unwrap_or_else(|| "default".into());
    let spec = hpa.spec.clone().unwrap_or_default();
    let target = &spec.scale_target_ref;
    let group = target
        .api_version
        .clone()
        .unwrap_or_else(|| "apps/v1".into());
    let plural = format!("{}s", target.kind.to_lowercase());
    let scale_url = format!(
        "/apis/{group}/namespaces/{ns}/{plural}/{}/scale",
        target.name
    );
    let req = http::Request::get(&scale_url)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let scale: Value = ctx.client.request(req).await.map_err(|e| {
        format!(
            "cannot read the scale of {}/{}: {e}",
            target.kind, target.name
        )
    })?;
    let current = scale["spec"]["replicas"].as_i64().unwrap_or(0) as i32;
    if current == 0 && spec.min_replicas.unwrap_or(1) > 0 {
        // Scaled to zero by hand: autoscaling is off until someone scales it up, as in
        // Kubernetes.
        let status = json!({"currentReplicas": 0, "desiredReplicas": 0,
            "conditions": [{"type": "ScalingActive", "status": "False", "reason": "ScalingDisabled",
                "message": "scaling is disabled since the replica count of the target is zero"}]});
        return write_status(ctx, hpa, status).await;
    }
    let selector = scale["status"]["selector"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let labels = parse_selector(&selector);
    let usage = pod_usage(&ctx.client, &ns, &selector)
        .await
        .map_err(|e| format!("cannot read the pods' metrics: {e}"))?;
    let samples: Vec<PodSample> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| !labels.is_empty() && labels.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
        .filter(|p| is_ready(p))
        .map(|p| PodSample {
            requests: requests_of(p),
            usage: usage.get(&p.name_any()).cloned(),
        })
        .collect();
    let metrics = spec.metrics.clone().unwrap_or_default();
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let now = Instant::now();
    let window = spec
        .behavior
        .as_ref()
        .and_then(|b| b.scale_down.as_ref())
        .and_then(|d| d.stabilization_window_seconds)
        .map_or(Duration::from_secs(300), |s| {
            Duration::from_secs(s.max(0) as u64)
        });
    let (desired, currents, active) = match recommend(&metrics, current, &samples) {
        Some((r, c)) => (
            stabilize(r, current, min, max, window, history, now),
            c,
            true,
        ),
        None => (current.clamp(min.max(1), max.max(1)), Vec::new(), false),
    };
    let mut status = json!({
        "currentReplicas": current,
        "desiredReplicas": desired,
        "observedGeneration": hpa.metadata.generation,
        "currentMetrics": currents.iter().map(|c| {
            let m = &metrics[c.spec_index];
            if m.type_ == "Pods" {
                json!({"type": "Pods", "pods": {"metric": {"name": m.pods.as_ref().map(|p| p.metric.name.clone())},
                    "current": {"averageValue": format!("{}m", (c.average * 1000.0).round() as i64)}}})
            } else {
                let name = m.resource.as_ref().map(|r| r.name.clone()).unwrap_or_default();
                let value = if name == "cpu" { format!("{}m", c.average.round() as i64) } else { format!("{}", c.average.round() as i64) };
                let mut current = json!({"averageValue": value});
                if let Some(u) = c.utilization { current["averageUtilization"] = json!(u); }
                json!({"type": "Resource", "resource": {"name": name, "current": current}})
            }
        }).collect::<Vec<_>>(),
        "conditions": [
            {"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale", "message": "recommended size matches current size"},
            {"type": "ScalingActive", "status": if active { "True" } else { "False" },
             "reason": if active { "ValidMetricFound" } else { "FailedGetResourceMetric" },
             "message": if active { "the HPA was able to successfully calculate a replica count" } else { "no metrics returned for the target's pods yet" }},
        ],
    });
    if desired != current {
        let patch = json!({"spec": {"replicas": desired}});
        let req = http::Request::patch(&scale_url)
            .header("content-type", "application/merge-patch+json")
            .body(serde_json::to_vec(&patch).expect("serialises"))
            .map_err(|e| e.to_string())?;
        ctx.client
            .request::<Value>(req)
            .await
            .map_err(|e| format!("cannot scale {}/{}: {e}", target.kind, target.name))?;
        let reason = currents
            .first()
            .map(|c| match c.utilization {
                Some(u) => format!("cpu resource utilization (percentage of request) {u}%"),
                None => format!("metric value {:.2}", c.average),
            })
            .unwrap_or_default();
        let verb = if desired > current { "above" } else { "below" };
        ctx.events.record(
            hpa,
            kubeclient::events::Type::Normal,
            "SuccessfulRescale",
            &format!("New size: {desired}; reason: {reason} {verb} target"),
        );
        status["lastScaleTime"] = json!(Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true));
    } else if let Some(t) = hpa.status.as_ref().and_then(|s| s.last_scale_time.as_ref()) {
        status["lastScaleTime"] = json!(t.0.to_rfc3339_opts(SecondsFormat::Secs, true));
    }
    write_status(ctx, hpa, status).await
}

async fn write_status(
    ctx: &Context,
    hpa: &HorizontalPodAutoscaler,
    status: Value,
) -> Result<(), String> {
    let ns = hpa.namespace().unwrap_or_else(|| "default".into());
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(
        &hpa.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .map_err(|e| format!("cannot write the status: {e}"))?;
    Ok(())
}

/// Syncs every HPA each sync period until dropped.
pub async fn run(ctx: Arc<Context>) {
    let mut histories: HashMap<String, VecDeque<(Instant, i32)>> = HashMap::new();
    loop {
        tokio::time::sleep(ctx.settings.sync_period).await;
        let hpas = ctx.hpas.state();
        histories.retain(|uid, _| hpas.iter().any(|h| h.metadata.uid.as_ref() == Some(uid)));
        for hpa in hpas {
            let uid = hpa.metadata.uid.clone().unwrap_or_default();
            let history = histories.entry(uid).or_default();
            if let Err(e) = sync_one(&ctx, &hpa, history).await {
                tracing::warn!(
                    "hpa {}/{}: {e}",
                    hpa.namespace().unwrap_or_default(),
                    hpa.name_any()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu_metric(percent: i32) -> Vec<MetricSpec> {
        serde_json::from_value(json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": percent}}}]))
        .unwrap()
    }

    fn pod(request_m: f64, usage_m: Option<f64>) -> PodSample {
        PodSample {
            requests: [("cpu".to_string(), request_m)].into(),
            usage: usage_m.map(|u| [("cpu".to_string(), u)].into()),
        }
    }

    #[test]
    fn cpu_utilization_scales_in_proportion_with_a_tolerance() {
        // 2 pods at 150% of their 100m: target 50% wants 3× → 6.
        let hot = [pod(100.0, Some(150.0)), pod(100.0, Some(150.0))];
        let (desired, current) = recommend(&cpu_metric(50), 2, &hot).unwrap();
        assert_eq!(desired, 6);
        assert_eq!(current[0].utilization, Some(150));
        // 54% against 50%: within 10%, stays.
        let near = [pod(100.0, Some(54.0)), pod(100.0, Some(54.0))];
        assert_eq!(recommend(&cpu_metric(50), 2, &near).unwrap().0, 2);
        // Idle: down to 1.
        let idle = [pod(100.0, Some(1.0)), pod(100.0, Some(0.0))];
        assert_eq!(recommend(&cpu_metric(50), 2, &idle).unwrap().0, 1);
        // Over target with only 4 of 10 pods measured: never a scale-down.
        let few: Vec<PodSample> = (0..4).map(|_| pod(100.0, Some(75.0))).collect();
        assert_eq!(recommend(&cpu_metric(50), 10, &few).unwrap().0, 10);
        // No metrics yet: no recommendation.
        assert!(recommend(&cpu_metric(50), 2, &[pod(100.0, None)]).is_none());
    }

    #[test]
    fn requests_per_second_average_value() {
        let metrics: Vec<MetricSpec> = serde_json::from_value(json!([{"type": "Pods", "pods": {
            "metric": {"name": "requests-per-second"}, "target": {"type": "AverageValue", "averageValue": "10"}}}]))
        .unwrap();
        let busy = PodSample {
            requests: BTreeMap::new(),
            usage: Some([(REQUESTS_PER_SECOND.to_string(), 45.0)].into()),
        };
        assert_eq!(recommend(&metrics, 1, &[busy]).unwrap().0, 5);
    }

    #[test]
    fn scale_down_waits_for_the_window_and_scale_up_is_limited() {
        let t0 = Instant::now();
        let window = Duration::from_secs(300);
        let mut h = VecDeque::new();
        assert_eq!(stabilize(8, 4, 1, 20, window, &mut h, t0), 8);
        // A lower recommendation within the window keeps the highest.
        assert_eq!(
            stabilize(2, 8, 1, 20, window, &mut h, t0 + Duration::from_secs(60)),
            8
        );
        // Past the window, down it goes.
        assert_eq!(
            stabilize(2, 8, 1, 20, window, &mut h, t0 + Duration::from_secs(400)),
            2
        );
        // Up at most double or +4, and never past max.
        let mut h = VecDeque::new();
        assert_eq!(stabilize(50, 2, 1, 20, window, &mut h, t0), 6);
        assert_eq!(stabilize(50, 10, 1, 15, window, &mut h, t0), 15);
        // Never under min.
        assert_eq!(
            stabilize(0, 3, 2, 10, Duration::ZERO, &mut VecDeque::new(), t0),
            2
        );
    }
}
