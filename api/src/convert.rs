//! Conversion between the served versions of a resource and the version it is stored in.
//! Today one resource has two versions: HorizontalPodAutoscaler, stored as `autoscaling/v2`
//! and served as `autoscaling/v1` too (what `kubectl autoscale` writes).

use serde_json::{json, Value};

use crate::registry::{storage_version, Resource};

/// `obj`, sent to `r`'s version, in the storage version.
pub fn to_storage(r: &Resource, mut obj: Value) -> Value {
    if r.version == storage_version(r) {
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
    if r.version == storage_version(r) {
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
