//! Strategic merge patch, as kube-apiserver applies it to built-in types: maps merge, lists of
//! objects merge by their key (containers by name, ports by port, ...), `null` deletes, and the
//! `$patch` directives replace or delete. Server-side apply merges with it too.

use serde_json::{json, Value};

/// Strategic merge patch, enough for kubectl: maps merge recursively, `null` deletes, lists of
/// objects merge by their merge key (`name`, `containerPort`, `port`, `ip`, `type`), other
/// lists are replaced, and the `$`-directives kubectl adds (`$setElementOrder/...`,
/// `$retainKeys`, `$patch`) are honoured or dropped rather than stored.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = match patch {
            Value::Array(items) => Value::Array(fresh_list(items)),
            other => other.clone(),
        };
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut rest = patch_map.clone();
        rest.remove("$patch");
        // What replaces is the patch as it would merge into nothing: no nulls, no directives.
        *target = Value::Null;
        strategic_merge(target, &Value::Object(rest));
        return;
    }
    if !target.is_object() {
        *target = json!({});
    }
    let target_map = target.as_object_mut().expect("object");
    for (k, v) in patch_map {
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                target_map.remove(k);
            }
            Value::Array(items) => {
                let merged = match target_map.get(k) {
                    Some(Value::Array(existing)) => merge_lists(existing, items),
                    _ => fresh_list(items),
                };
                target_map.insert(k.clone(), Value::Array(merged));
            }
            Value::Object(_) => {
                strategic_merge(target_map.entry(k.clone()).or_insert(Value::Null), v)
            }
            other => {
                target_map.insert(k.clone(), other.clone());
            }
        }
    }
}

pub const MERGE_KEYS: &[&str] = &[
    "name",
    "containerPort",
    "port",
    "ip",
    "type",
    "mountPath",
    "devicePath",
];

/// The key a list of objects merges by: the first of [`MERGE_KEYS`] every item has (not null).
pub fn merge_key(items: &[Value]) -> Option<&'static str> {
    if items.is_empty() || !items.iter().all(Value::is_object) {
        return None;
    }
    MERGE_KEYS.iter().copied().find(|k| {
        items
            .iter()
            .all(|p| p.get(*k).is_some_and(|v| !v.is_null()))
    })
}

/// A patch's list as a value of its own (it replaces, or there was none): each element as it
/// would merge into nothing, so that nulls and directives are dropped here as a second
/// application of the same patch would drop them; deletions and directive-only elements are
/// skipped.
fn fresh_list(items: &[Value]) -> Vec<Value> {
    let directive_only = |i: &Value| {
        i.as_object()
            .is_some_and(|m| !m.is_empty() && m.keys().all(|k| k.starts_with('$')))
    };
    items
        .iter()
        .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete") && !directive_only(i))
        .map(|i| {
            let mut item = Value::Null;
            strategic_merge(&mut item, i);
            item
        })
        .collect()
}

fn merge_lists(existing: &[Value], patch: &[Value]) -> Vec<Value> {
    let Some(key) = merge_key(patch) else {
        return fresh_list(patch);
    };
    let mut out: Vec<Value> = existing.to_vec();
    for p in patch {
        let pos = out.iter().position(|e| e.get(key) == p.get(key));
        let delete = p.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (Some(i), false) => strategic_merge(&mut out[i], p),
            (None, false) => {
                let mut item = Value::Null;
                strategic_merge(&mut item, p);
                out.push(item);
            }
            (None, true) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_merges_containers_by_name_and_drops_directives() {
        let mut obj = json!({"spec": {"replicas": 1, "containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}]}});
        let patch = json!({"spec": {"replicas": 3, "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}], "containers": [{"name": "b", "image": "y:2"}]}, "metadata": {"labels": {"l": "v"}}});
        strategic_merge(&mut obj, &patch);
        assert_eq!(obj["spec"]["replicas"], 3);
        assert_eq!(obj["spec"]["containers"][0]["image"], "x:1");
        assert_eq!(obj["spec"]["containers"][1]["image"], "y:2");
        assert!(obj["spec"].get("$setElementOrder/containers").is_none());
        assert_eq!(obj["metadata"]["labels"]["l"], "v");
        strategic_merge(
            &mut obj,
            &json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
        );
        assert_eq!(obj["spec"]["containers"].as_array().unwrap().len(), 1);
        strategic_merge(&mut obj, &json!({"metadata": {"labels": {"l": null}}}));
        assert!(obj["metadata"]["labels"].get("l").is_none());
    }
}
