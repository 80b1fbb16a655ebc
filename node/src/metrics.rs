//! What the pods on this node use, as the API server's metrics.k8s.io (`kubectl top`) and the
//! HorizontalPodAutoscaler read it: CPU in nanocores, memory in bytes, and requests per second
//! of HTTP functions, as rates over the last few seconds.
//!
//! The runtime counts per container ([`runtime::usage::Usage`]); a sampler here turns the
//! counters into rates every [`SAMPLE_EVERY`], the way the kubelet's resource metrics do.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use runtime::usage::{rates, Sample, Usage};
use serde_json::{json, Value};

pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept per container: rates are over the last (KEEP - 1) intervals.
const KEEP: usize = 3;

struct Container {
    usage: Arc<Usage>,
    samples: VecDeque<(Instant, Sample)>,
}

struct PodEntry {
    namespace: String,
    name: String,
    containers: BTreeMap<String, Container>,
}

#[derive(Default)]
pub struct PodUsage {
    pods: Mutex<HashMap<String, PodEntry>>,
}

impl PodUsage {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodEntry>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counters of one container, kept across its restarts.
    pub fn container(&self, namespace: &str, name: &str, uid: &str, container: &str) -> Arc<Usage> {
        let mut pods = self.lock();
        let pod = pods.entry(uid.to_string()).or_insert_with(|| PodEntry {
            namespace: namespace.to_string(),
            name: name.to_string(),
            containers: BTreeMap::new(),
        });
        pod.containers
            .entry(container.to_string())
            .or_insert_with(|| Container {
                usage: Arc::default(),
                samples: VecDeque::new(),
            })
            .usage
            .clone()
    }

    /// The pod is gone from this node.
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }

    /// Takes one sample of every container.
    pub fn sample(&self) {
        let now = Instant::now();
        for pod in self.lock().values_mut() {
            for c in pod.containers.values_mut() {
                c.samples.push_back((now, c.usage.sample()));
                while c.samples.len() > KEEP {
                    c.samples.pop_front();
                }
            }
        }
    }

    /// Samples every [`SAMPLE_EVERY`] until dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.sample();
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// Every pod with its containers' rates (those sampled at least twice).
    pub fn report(&self) -> Value {
        let timestamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let pods: Vec<Value> = self
            .lock()
            .values()
            .map(|pod| {
                let mut window = 0.0;
                let containers: Vec<Value> = pod
                    .containers
                    .iter()
                    .filter_map(|(name, c)| {
                        let (t0, first) = *c.samples.front()?;
                        let (t1, last) = *c.samples.back()?;
                        let seconds = t1.duration_since(t0).as_secs_f64();
                        if seconds <= 0.0 {
                            return None;
                        }
                        window = seconds;
                        let (nanocores, rps) = rates(first, last, seconds);
                        Some(json!({"name": name, "cpuNanoCores": nanocores,
                            "memoryBytes": last.memory_bytes, "requestsPerSecond": rps}))
                    })
                    .collect();
                json!({"namespace": pod.namespace, "name": pod.name, "timestamp": timestamp,
                       "windowSeconds": window, "containers": containers})
            })
            .collect();
        json!({"pods": pods})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_appear_after_two_samples_and_forgotten_pods_go() {
        let usage = PodUsage::default();
        let u = usage.container("default", "web", "uid-1", "c");
        usage.sample();
        assert!(usage.report()["pods"][0]["containers"]
            .as_array()
            .unwrap()
            .is_empty());
        u.add_cpu(1_000_000);
        u.request();
        std::thread::sleep(Duration::from_millis(20));
        usage.sample();
        let report = usage.report();
        let c = &report["pods"][0]["containers"][0];
        assert_eq!(c["name"], "c");
        assert!(c["cpuNanoCores"].as_u64().unwrap() > 0);
        assert!(c["requestsPerSecond"].as_f64().unwrap() > 0.0);
        // The same counters after a restart of the container.
        assert!(Arc::ptr_eq(
            &u,
            &usage.container("default", "web", "uid-1", "c")
        ));
        usage.forget("uid-1");
        assert!(usage.report()["pods"].as_array().unwrap().is_empty());
    }
}
