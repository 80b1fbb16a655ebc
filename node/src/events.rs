//! Events about pods (core/v1 Event, as the kubelet writes them): Pulled, Created, Started,
//! Killing, BackOff, Unhealthy, Failed, so `kubectl describe pod` and `kubectl get events`
//! tell what happened. A repeat of the same event on the same pod counts up the first one
//! instead of writing another, as Kubernetes' event recorder does. Events are best effort:
//! a failure to write one is logged, never fatal.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Normal,
    Warning,
}

/// An event's identity for counting repeats: (pod uid, reason, message).
type Key = (String, String, String);

pub struct Recorder {
    client: kube::Client,
    node: String,
    /// The events written so far: their names and counts.
    seen: Mutex<HashMap<Key, (String, i32)>>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Recorder {
    pub fn new(client: kube::Client, node: String) -> Recorder {
        Recorder {
            client,
            node,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event about `pod` (and one of its containers), in the background.
    pub fn pod(&self, pod: &Pod, container: Option<&str>, kind: Type, reason: &str, message: &str) {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let key: Key = (uid.clone(), reason.to_string(), message.to_string());
        // Some((name, count)) for a repeat; a first occurrence gets a new name.
        let (event_name, repeat) = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let first = !seen.contains_key(&key);
            let entry = seen.entry(key).or_insert_with(|| {
                let suffix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                (format!("{name}.{suffix:x}"), 0)
            });
            entry.1 += 1;
            (entry.0.clone(), (!first).then_some(entry.1))
        };
        let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(self.client.clone(), &ns);
        let node = self.node.clone();
        let (reason, message) = (reason.to_string(), message.to_string());
        let field_path = container.map(|c| format!("spec.containers{{{c}}}"));
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
                None => {
                    let mut involved = json!({"kind": "Pod", "apiVersion": "v1", "namespace": ns, "name": name, "uid": uid});
                    if let Some(f) = field_path {
                        involved["fieldPath"] = json!(f);
                    }
                    let event = json!({
                        "apiVersion": "v1", "kind": "Event",
                        "metadata": {"name": event_name, "namespace": ns},
                        "involvedObject": involved,
                        "reason": reason, "message": message,
                        "type": if kind == Type::Normal { "Normal" } else { "Warning" },
                        "source": {"component": "kubelet", "host": node},
                        "reportingComponent": "kubelet", "reportingInstance": node,
                        "firstTimestamp": now(), "lastTimestamp": now(), "count": 1,
                    });
                    match serde_json::from_value(event) {
                        Ok(e) => api.create(&PostParams::default(), &e).await.map(|_| ()),
                        Err(e) => {
                            tracing::warn!("event: {e}");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!("cannot record an event: {e}");
            }
        });
    }
}
