//! Conversion between the served versions of a resource and the version it is stored in:
//! HorizontalPodAutoscaler, stored as `autoscaling/v2` and served as `autoscaling/v1` too (what
//! `kubectl autoscale` writes); Event, stored as core `v1` and served as `events.k8s.io/v1`
//! too (what client-go's new event recorder and `kubectl events` use).

use serde_json::{json, Map, Value};

use crate::registry::{served_as_stored, Resource};

/// Field names of `events.k8s.io/v1` Event and the core `v1` Event field each is.
const EVENT_FIELDS: [(&str, &str); 7] = [
    ("note", "message"),
    ("regarding", "involvedObject"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// Renames an object's top-level fields `from` → `to` per pair.
fn rename(obj: &mut Value, pairs: impl Iterator<Item = (&'static str, &'static str)>) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let mut moved = Map::new();
    for (from, to) in pairs {
        if let Some(v) = map.remove(from) {
            moved.insert(to.to_string(), v);
        }
    }
    map.extend(moved);
}

/// `obj`, sent to `r`'s version, in the storage version.
pub fn to_storage(r: &Resource, mut obj: Value) -> Value {
    if served_as_stored(r) {
        return obj;
    }
    if r.group == "events.k8s.io" && r.name == "events" {
        obj["apiVersion"] = json!("v1");
        rename(&mut obj, EVENT_FIELDS.into_iter());
        return obj;
    }
    if r.name == "horizontalpodautoscalers" && r.version == "v1" {
        obj["apiVersion"] = json!("autoscaling/v2");
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            if let Some(cpu) = spec.remove("targetCPUUtilizationPercentage") {
                spec.insert(
                    "metrics".into(),
                    json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}}}]),
                );
            }
        }
        if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
            if let Some(cpu) = status.remove("currentCPUUtilizationPercentage") {
                status.insert(
                    "currentMetrics".into(),
                    json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": cpu}}}]),
                );
            }
        }
    }
    obj
}

/// `obj`, stored in the storage version, as `r`'s version shows it.
pub fn from_storage(r: &Resource, mut obj: Value) -> Value {
    if served_as_stored(r) {
        return obj;
    }
    if r.group == "events.k8s.io" && r.name == "events" {
        obj["apiVersion"] = json!("events.k8s.io/v1");
        rename(
            &mut obj,
            EVENT_FIELDS.into_iter().map(|(new, old)| (old, new)),
        );
        return obj;
    }
    if r.name == "horizontalpodautoscalers" && r.version == "v1" {
        obj["apiVersion"] = json!("autoscaling/v1");
        let cpu = |list: &Value, field: &str| {
            list.as_array()?
                .iter()
                .find(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu")
                .map(|m| m["resource"][field]["averageUtilization"].clone())
        };
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            if let Some(metrics) = spec.remove("metrics") {
                if let Some(u) = cpu(&metrics, "target") {
                    spec.insert("targetCPUUtilizationPercentage".into(), u);
                }
            }
            spec.remove("behavior");
        }
        if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
            if let Some(metrics) = status.remove("currentMetrics") {
                if let Some(u) = cpu(&metrics, "current") {
                    status.insert("currentCPUUtilizationPercentage".into(), u);
                }
            }
            status.remove("conditions");
        }
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;

    #[test]
    fn events_of_either_group_are_one_core_event() {
        let new = find("events.k8s.io", "v1", "events").unwrap();
        let served = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e1", "namespace": "default"},
            "eventTime": "2026-12-07T12:00:00.000000Z", "reason": "Started", "type": "Normal",
            "note": "it began", "action": "Start", "reportingController": "me/ctl",
            "reportingInstance": "me-1", "regarding": {"kind": "Pod", "name": "web"},
            "deprecatedCount": 2});
        let stored = to_storage(new, served.clone());
        assert_eq!(stored["apiVersion"], "v1");
        assert_eq!(stored["message"], "it began");
        assert_eq!(stored["involvedObject"]["name"], "web");
        assert_eq!(stored["reportingComponent"], "me/ctl");
        assert_eq!(stored["count"], 2);
        assert!(stored.get("note").is_none());
        assert_eq!(from_storage(new, stored), served);
    }

    #[test]
    fn hpa_v1_round_trips_through_v2() {
        let v1 = find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let obj = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "spec": {"minReplicas": 1, "maxReplicas": 10, "targetCPUUtilizationPercentage": 50,
                     "scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"}}});
        let stored = to_storage(v1, obj.clone());
        assert_eq!(stored["apiVersion"], "autoscaling/v2");
        assert_eq!(
            stored["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            50
        );
        assert_eq!(from_storage(v1, stored), obj);
        let v2 = find("autoscaling", "v2", "horizontalpodautoscalers").unwrap();
        assert_eq!(
            to_storage(v2, obj.clone()),
            obj,
            "the storage version passes through"
        );
    }
}
