//! Events from the control plane (core/v1 Event, as kube-controller-manager and the scheduler
//! write them): SuccessfulCreate, ScalingReplicaSet, Scheduled, FailedScheduling, ..., so that
//! `kubectl describe` and `kubectl get events` tell what the controllers did. A repeat of the
//! same event on the same object counts up the first one. Best effort: a failure to write one
//! is logged, never fatal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

/// Repeats are counted into the first event for this long; then a new event starts.
const REPEAT_WINDOW: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Normal,
    Warning,
}

/// An event's identity for counting repeats: (object uid, reason, message).
type Key = (String, String, String);

pub struct Recorder {
    client: kube::Client,
    component: String,
    /// Events written lately: name, count, when first written.
    seen: Mutex<HashMap<Key, (String, i32, Instant)>>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Recorder {
    pub fn new(client: kube::Client, component: &str) -> Recorder {
        Recorder {
            client,
            component: component.to_string(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event about `obj`, in the background.
    pub fn record<K>(&self, obj: &K, kind: Type, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        let ns = obj.namespace().unwrap_or_else(|| "default".into());
        let name = obj.name_any();
        let uid = obj.meta().uid.clone().unwrap_or_default();
        let key: Key = (uid.clone(), reason.to_string(), message.to_string());
        let (event_name, repeat) = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            // Forget old events, so the map stays as small as the recent past.
            if seen.len() > 10_000 {
                seen.retain(|_, (_, _, at)| at.elapsed() < REPEAT_WINDOW);
            }
            let fresh = seen
                .get(&key)
                .is_none_or(|(_, _, at)| at.elapsed() >= REPEAT_WINDOW);
            if fresh {
                let suffix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                seen.insert(
                    key.clone(),
                    (format!("{name}.{suffix:x}"), 0, Instant::now()),
                );
            }
            let entry = seen.get_mut(&key).expect("inserted above");
            entry.1 += 1;
            (entry.0.clone(), (!fresh).then_some(entry.1))
        };
        let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(self.client.clone(), &ns);
        let involved = json!({"kind": K::kind(&()), "apiVersion": K::api_version(&()),
            "namespace": ns, "name": name, "uid": uid,
            "resourceVersion": obj.meta().resource_version});
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": event_name, "namespace": ns},
            "involvedObject": involved,
            "reason": reason, "message": message,
            "type": if kind == Type::Normal { "Normal" } else { "Warning" },
            "source": {"component": self.component},
            "reportingComponent": self.component, "reportingInstance": self.component,
            "firstTimestamp": now(), "lastTimestamp": now(), "count": 1,
        });
        tokio::spawn(async move {
            let result = match repeat {
                Some(count) => api
                    .patch(
                        &event_name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"count": count, "lastTimestamp": now()})),
                    )
                    .await
                    .map(|_| ()),
                None => match serde_json::from_value(event) {
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
