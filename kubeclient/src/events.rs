//! Events (core/v1 Event), as Kubernetes' components write them: the controllers'
//! SuccessfulCreate or ScalingReplicaSet, the scheduler's Scheduled or FailedScheduling, the
//! node's Pulled, Started, Killing, BackOff or Unhealthy — so that `kubectl describe` and
//! `kubectl get events` tell what happened.
//!
//! A repeat of the same event on the same object within ten minutes counts up the first one
//! instead of writing another, as client-go's event correlator does; events older than that are
//! forgotten, so the recorder's memory stays as small as the recent past. Best effort: a failure
//! to write an event is logged, never fatal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::{json, Value};

/// Repeats are counted into the first event for this long; then a new event starts.
const REPEAT_WINDOW: Duration = Duration::from_secs(600);
/// Past this many remembered events, those older than the window are forgotten.
const REMEMBERED: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Normal,
    Warning,
}

/// Who writes the events: a control-plane component, or the agent of one node.
#[derive(Clone, Debug)]
pub enum Source {
    /// `deployment-controller`, `default-scheduler`, ...
    Component(String),
    /// The node agent ("kubelet", as kubectl and dashboards expect) on the named node.
    Node(String),
}

/// An event's identity for counting repeats: (object uid, reason, message).
type Key = (String, String, String);

/// What the recorder remembers of an event it wrote: its name, its count, when it was first
/// written.
struct Written {
    name: String,
    count: i32,
    first: Instant,
}

pub struct Recorder {
    client: kube::Client,
    source: Source,
    seen: Mutex<HashMap<Key, Written>>,
    /// Places for writes in flight: a burst of events waits for them rather than becoming as
    /// many concurrent requests (the API's cap would answer them, and everyone else, 429).
    writes: Arc<tokio::sync::Semaphore>,
    /// Events waiting for a place.
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

/// Events written at once by one recorder.
const CONCURRENT_WRITES: usize = 4;
/// Events waiting for a place beyond which new ones are dropped (as client-go's broadcaster
/// drops past its queue of 1,000).
const QUEUED_WRITES: usize = 1000;

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Recorder {
    pub fn new(client: kube::Client, source: Source) -> Recorder {
        Recorder {
            client,
            source,
            seen: Mutex::new(HashMap::new()),
            writes: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_WRITES)),
            waiting: Default::default(),
        }
    }

    /// A control-plane component's recorder.
    pub fn component(client: kube::Client, name: &str) -> Recorder {
        Recorder::new(client, Source::Component(name.to_string()))
    }

    /// Records an event about `obj`, in the background.
    pub fn record<K>(&self, obj: &K, kind: Type, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        let involved = json!({"kind": K::kind(&()), "apiVersion": K::api_version(&()),
            "namespace": obj.namespace().unwrap_or_else(|| "default".into()),
            "name": obj.name_any(), "uid": obj.meta().uid.clone().unwrap_or_default(),
            "resourceVersion": obj.meta().resource_version});
        self.write(involved, kind, reason, message);
    }

    /// Records an event about `pod` and, when named, one of its containers (the involved
    /// object's `fieldPath`, as the kubelet writes it), in the background.
    pub fn pod(&self, pod: &Pod, container: Option<&str>, kind: Type, reason: &str, message: &str) {
        let mut involved = json!({"kind": "Pod", "apiVersion": "v1",
            "namespace": pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            "name": pod.metadata.name.clone().unwrap_or_default(),
            "uid": pod.metadata.uid.clone().unwrap_or_default()});
        if let Some(c) = container {
            involved["fieldPath"] = json!(format!("spec.containers{{{c}}}"));
        }
        self.write(involved, kind, reason, message);
    }

    /// The event's name, and its new count if it repeats one written lately.
    fn remember(&self, key: Key, object_name: &str) -> (String, Option<i32>) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > REMEMBERED {
            seen.retain(|_, w| w.first.elapsed() < REPEAT_WINDOW);
        }
        let fresh = seen
            .get(&key)
            .is_none_or(|w| w.first.elapsed() >= REPEAT_WINDOW);
        if fresh {
            let suffix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            seen.insert(
                key.clone(),
                Written {
                    name: format!("{object_name}.{suffix:x}"),
                    count: 0,
                    first: Instant::now(),
                },
            );
        }
        let entry = seen.get_mut(&key).expect("inserted above");
        entry.count += 1;
        (entry.name.clone(), (!fresh).then_some(entry.count))
    }

    fn write(&self, involved: Value, kind: Type, reason: &str, message: &str) {
        let ns = involved["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let object_name = involved["name"].as_str().unwrap_or_default().to_string();
        let uid = involved["uid"].as_str().unwrap_or_default().to_string();
        let (event_name, repeat) =
            self.remember((uid, reason.to_string(), message.to_string()), &object_name);
        let (source, reporter, instance) = match &self.source {
            Source::Component(c) => (json!({"component": c}), c.clone(), c.clone()),
            Source::Node(node) => (
                json!({"component": "kubelet", "host": node}),
                "kubelet".to_string(),
                node.clone(),
            ),
        };
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": event_name, "namespace": ns},
            "involvedObject": involved,
            "reason": reason, "message": message,
            "type": if kind == Type::Normal { "Normal" } else { "Warning" },
            "source": source,
            "reportingComponent": reporter, "reportingInstance": instance,
            "firstTimestamp": now(), "lastTimestamp": now(), "count": 1,
        });
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let queued = CONCURRENT_WRITES.saturating_sub(self.writes.available_permits())
            + self.waiting.load(std::sync::atomic::Ordering::Relaxed);
        if queued > QUEUED_WRITES {
            tracing::debug!("too many events waiting; dropped {reason}: {message}");
            return;
        }
        let (writes, waiting) = (self.writes.clone(), self.waiting.clone());
        waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let _place = writes.acquire_owned().await.expect("never closed");
            waiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let result = match repeat {
                Some(count) => api
                    .patch(
                        &event_name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"count": count, "lastTimestamp": now()})),
                    )
                    .await
                    .map(|_| ()),
                None => match serde_json::from_value::<Event>(event) {
                    Ok(e) => api.create(&PostParams::default(), &e).await.map(|_| ()),
                    Err(e) => {
                        tracing::warn!("event: {e}");
                        Ok(())
                    }
                },
            };
            if let Err(e) = result {
                tracing::debug!("cannot record an event: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn repeats_count_up_the_first_event_and_others_start_their_own() {
        // No request is made: the client is only held.
        let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        let recorder = Recorder::component(kube::Client::try_from(config).unwrap(), "test");
        let key = |message: &str| ("uid".to_string(), "Reason".to_string(), message.to_string());
        let (first, repeat) = recorder.remember(key("a"), "web");
        assert!(first.starts_with("web.") && repeat.is_none());
        assert_eq!(recorder.remember(key("a"), "web"), (first.clone(), Some(2)));
        assert_eq!(recorder.remember(key("a"), "web"), (first.clone(), Some(3)));
        let (other, repeat) = recorder.remember(key("b"), "web");
        assert!(other != first && repeat.is_none());
    }
}
