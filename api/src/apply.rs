//! Server-side apply: merging an applied configuration into the live object, with the fields
//! each manager applied recorded in `metadata.managedFields` (FieldsV1), so that
//!
//! - a field a manager applied before and leaves out now is removed (unless another manager
//!   also applied it),
//! - a manager that applies a different value to a field another manager applied gets a
//!   conflict, unless it forces, and then takes the field over.
//!
//! Lists of objects with a merge key (containers by name, ports by port, ...) are associative:
//! each item is owned on its own (`k:{"name":"web"}`); other lists are owned whole. Plain
//! writes (PUT, PATCH) record the fields they change as their manager's `Update` entry
//! ([`record_update`]), so an apply of a field `kubectl edit` or a controller set conflicts,
//! as in Kubernetes. Creates are not recorded (the API server's choice, for object size) and
//! status is not tracked (no apply configuration here sets it).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::patch::{merge_key, strategic_merge};

/// One step of a field path: a map field, or a list item named by its key (`{"name":"web"}`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seg {
    Field(String),
    Key(String),
}

pub type FieldPath = Vec<Seg>;
pub type FieldSet = BTreeSet<FieldPath>;

/// Metadata fields the server owns; never part of a manager's set.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The fields `obj` sets, as an apply configuration owns them.
pub fn field_set(obj: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    if let Value::Object(m) = obj {
        for (k, v) in m {
            if k == "apiVersion" || k == "kind" || k == "status" {
                continue;
            }
            let mut path = vec![Seg::Field(k.clone())];
            if k == "metadata" {
                if let Value::Object(meta) = v {
                    for (mk, mv) in meta
                        .iter()
                        .filter(|(mk, _)| !SERVER_METADATA.contains(&mk.as_str()))
                    {
                        path.push(Seg::Field(mk.clone()));
                        collect(mv, &mut path, &mut out);
                        path.pop();
                    }
                }
                continue;
            }
            collect(v, &mut path, &mut out);
        }
    }
    out
}

fn collect(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(Seg::Field(k.clone()));
                collect(child, path, out);
                path.pop();
            }
        }
        Value::Array(items) => match merge_key(items) {
            Some(key) => {
                for item in items {
                    path.push(Seg::Key(json!({key: item[key]}).to_string()));
                    out.insert(path.clone());
                    collect(item, path, out);
                    path.pop();
                }
            }
            None => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The FieldsV1 form of a set (`{"f:spec":{"f:replicas":{}}}`).
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for seg in path {
            let name = match seg {
                Seg::Field(f) => format!("f:{f}"),
                Seg::Key(k) => format!("k:{k}"),
            };
            node = node
                .entry(name)
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("FieldsV1 nodes are objects");
        }
        if matches!(path.last(), Some(Seg::Key(_))) {
            node.insert(".".into(), json!({}));
        }
    }
    Value::Object(root)
}

/// The set a FieldsV1 value describes.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    read_fields_v1(v, &mut Vec::new(), &mut out);
    out
}

fn read_fields_v1(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
    let Value::Object(m) = v else { return };
    for (k, child) in m {
        let seg = if k == "." {
            out.insert(path.clone());
            continue;
        } else if let Some(f) = k.strip_prefix("f:") {
            Seg::Field(f.to_string())
        } else if let Some(key) = k.strip_prefix("k:") {
            Seg::Key(key.to_string())
        } else {
            continue; // v: (set items) and i: are not produced here
        };
        path.push(seg);
        if child.as_object().is_some_and(Map::is_empty) {
            out.insert(path.clone());
        } else {
            read_fields_v1(child, path, out);
        }
        path.pop();
    }
}

fn key_matches(item: &Value, key: &str) -> bool {
    let Ok(Value::Object(k)) = serde_json::from_str::<Value>(key) else {
        return false;
    };
    k.iter().all(|(name, want)| item.get(name) == Some(want))
}

/// The value at `path`, if there is one.
pub fn value_at<'a>(obj: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |v, seg| match seg {
        Seg::Field(f) => v.get(f),
        Seg::Key(k) => v.as_array()?.iter().find(|i| key_matches(i, k)),
    })
}

/// Removes what `path` names from `obj` (a map entry, or a list item).
fn remove_at(obj: &mut Value, path: &[Seg]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut parent = obj;
    for seg in parent_path {
        let next = match seg {
            Seg::Field(f) => parent.get_mut(f),
            Seg::Key(k) => parent
                .as_array_mut()
                .and_then(|a| a.iter_mut().find(|i| key_matches(i, k))),
        };
        match next {
            Some(n) => parent = n,
            None => return,
        }
    }
    match last {
        Seg::Field(f) => {
            if let Some(m) = parent.as_object_mut() {
                m.remove(f);
            }
        }
        Seg::Key(k) => {
            if let Some(a) = parent.as_array_mut() {
                a.retain(|i| !key_matches(i, k));
            }
        }
    }
}

/// A dotted rendering of a path, as conflicts name fields (`.spec.replicas`).
pub fn render(path: &[Seg]) -> String {
    path.iter()
        .map(|s| match s {
            Seg::Field(f) => format!(".{f}"),
            Seg::Key(k) => format!("[{k}]"),
        })
        .collect()
}

/// Fields another manager applied with a different value: (manager, field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflicts(pub Vec<(String, String)>);

struct Entry {
    manager: String,
    operation: String,
    raw: Value,
    fields: FieldSet,
}

/// Applies `applied` for `manager` over `live` (None: the object does not exist yet) and
/// returns the object to store, `managedFields` updated. `api_version` and `now` go into the
/// manager's entry.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    now: &str,
) -> Result<Value, Conflicts> {
    let empty = json!({});
    let live = live.unwrap_or(&empty);
    let mut entries: Vec<Entry> = live["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| Entry {
                    manager: e["manager"].as_str().unwrap_or("").to_string(),
                    operation: e["operation"].as_str().unwrap_or("").to_string(),
                    fields: from_fields_v1(&e["fieldsV1"]),
                    raw: e.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    let mine = |e: &Entry| e.manager == manager && e.operation == "Apply";
    let new = field_set(applied);
    let previous = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();

    // Fields another manager applied, or set with an update, are theirs: a different value
    // conflicts.
    // A list item (`k:{"name":"web"}`) is owned for its existence, which applying it again
    // does not contest: only fields, and lists owned whole, have values that can differ.
    let contested = |e: &Entry| -> Vec<FieldPath> {
        e.fields
            .intersection(&new)
            .filter(|p| matches!(p.last(), Some(Seg::Field(_))))
            .filter(|p| value_at(live, p) != value_at(applied, p))
            .cloned()
            .collect()
    };
    if !force {
        // kubectl moving an object from client-side to server-side apply takes over, without
        // conflicts, what its client-side applies set (the fields of the last-applied
        // annotation), as kube-apiserver lets it.
        let taken_over = match manager {
            "kubectl" => last_applied_fields(live),
            _ => FieldSet::new(),
        };
        let conflicts: Vec<(String, String)> = entries
            .iter()
            .filter(|e| !mine(e))
            .flat_map(|e| {
                contested(e)
                    .into_iter()
                    .filter(|p| !taken_over.contains(p))
                    .map(|p| (e.manager.clone(), render(&p)))
            })
            .collect();
        if !conflicts.is_empty() {
            return Err(Conflicts(conflicts));
        }
    }
    for e in entries.iter_mut().filter(|e| !mine(e)) {
        for p in contested(e) {
            e.fields.remove(&p);
        }
    }

    let mut obj = live.clone();
    let others: BTreeSet<&FieldPath> = entries
        .iter()
        .filter(|e| !mine(e))
        .flat_map(|e| e.fields.iter())
        .collect();
    let dropped: BTreeSet<&FieldPath> = previous
        .difference(&new)
        .filter(|p| !others.contains(p))
        .collect();
    // A dropped list item goes whole; its own fields need no removal (and once its key field
    // is gone, the item could no longer be found).
    for p in &dropped {
        if !(1..p.len()).any(|n| dropped.contains(&p[..n].to_vec())) {
            remove_at(&mut obj, p);
        }
    }
    let mut config = applied.clone();
    if let Some(m) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    strategic_merge(&mut obj, &config);

    // An apply that owns what it owned before keeps its entry's time and place, so applying
    // the same configuration again changes nothing and the server can skip the write.
    let unchanged = entries
        .iter()
        .find(|e| mine(e))
        .filter(|e| e.fields == new && e.raw["apiVersion"] == json!(api_version))
        .map(|e| e.raw.clone());
    let my_entry = unchanged.unwrap_or_else(|| {
        json!({
            "manager": manager,
            "operation": "Apply",
            "apiVersion": api_version,
            "time": now,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(&new),
        })
    });
    let mut my_entry = Some(my_entry);
    let mut managed: Vec<Value> = entries
        .into_iter()
        .filter_map(|e| {
            if mine(&e) {
                return my_entry.take();
            }
            if e.fields.is_empty() {
                return None;
            }
            let mut raw = e.raw;
            raw["fieldsV1"] = to_fields_v1(&e.fields);
            Some(raw)
        })
        .collect();
    managed.extend(my_entry);
    let meta = obj
        .as_object_mut()
        .map(|m| m.entry("metadata").or_insert_with(|| json!({})));
    if let Some(Value::Object(meta)) = meta {
        meta.insert("managedFields".into(), Value::Array(managed));
    }
    Ok(obj)
}

/// The fields of `live`'s `kubectl.kubernetes.io/last-applied-configuration` (what client-side
/// `kubectl apply` last sent), none without one.
fn last_applied_fields(live: &Value) -> FieldSet {
    live["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .map(|config| field_set(&config))
        .unwrap_or_default()
}

/// Records a write that is not an apply — a create, PUT or PATCH by `manager` (through
/// `subresource`, if any) of `old` (Null for a create) into `new` — in new's managedFields, as
/// kube-apiserver does: the fields the write changed become the manager's (an `Update` entry),
/// taken from whoever held them, so that a later apply of a different value there conflicts
/// with it; fields the write removed are nobody's. A write that changes no field leaves the
/// entries as they were (and the object can stay unwritten).
pub fn record_update(
    old: &Value,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    api_version: &str,
    now: &str,
) {
    // What the writer sent back (a GET's managedFields, as `kubectl edit` does), else the
    // stored entries.
    let sent = new["metadata"]["managedFields"].as_array().cloned();
    let entries = sent
        .filter(|e| !e.is_empty())
        .or_else(|| old["metadata"]["managedFields"].as_array().cloned())
        .unwrap_or_default();
    let (before, after) = (field_set(old), field_set(new));
    let changed: FieldSet = after
        .iter()
        .filter(|p| value_at(old, p) != value_at(new, p))
        .cloned()
        .collect();
    let removed: FieldSet = before.difference(&after).cloned().collect();
    let keep_as_is = |new: &mut Value, entries: Vec<Value>| {
        if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            if entries.is_empty() {
                meta.remove("managedFields");
            } else {
                meta.insert("managedFields".into(), Value::Array(entries));
            }
        }
    };
    if changed.is_empty() && removed.is_empty() {
        keep_as_is(new, entries);
        return;
    }
    let subresource = subresource.unwrap_or("");
    let mine = |e: &Value| {
        e["manager"] == manager
            && e["operation"] == "Update"
            && e["subresource"].as_str().unwrap_or("") == subresource
    };
    let mut my_fields: FieldSet = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| from_fields_v1(&e["fieldsV1"]))
        .unwrap_or_default();
    my_fields.extend(changed.iter().cloned());
    my_fields.retain(|p| !removed.contains(p));
    let mut managed: Vec<Value> = entries
        .into_iter()
        .filter(|e| !mine(e))
        .filter_map(|mut e| {
            let mut fields = from_fields_v1(&e["fieldsV1"]);
            fields.retain(|p| !changed.contains(p) && !removed.contains(p));
            if fields.is_empty() {
                return None;
            }
            e["fieldsV1"] = to_fields_v1(&fields);
            Some(e)
        })
        .collect();
    if !my_fields.is_empty() {
        let mut entry = json!({
            "manager": manager,
            "operation": "Update",
            "apiVersion": api_version,
            "time": now,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(&my_fields),
        });
        if !subresource.is_empty() {
            entry["subresource"] = json!(subresource);
        }
        managed.push(entry);
    }
    keep_as_is(new, managed);
}

/// How many fields each manager owns (for messages and tests).
pub fn owners(obj: &Value) -> BTreeMap<String, usize> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let n = from_fields_v1(&e["fieldsV1"]).len();
                    (e["manager"].as_str().unwrap_or("").to_string(), n)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(replicas: i64, containers: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": containers}}}})
    }

    #[test]
    fn fields_v1_round_trips() {
        let obj = deploy(2, json!([{"name": "a", "image": "x", "args": ["1", "2"]}]));
        let set = field_set(&obj);
        let v1 = to_fields_v1(&set);
        assert_eq!(from_fields_v1(&v1), set);
        assert!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"a\"}"]["."]
                .is_object()
        );
        assert!(v1["f:metadata"]["f:labels"]["f:app"].is_object());
        assert!(
            v1["f:metadata"].get("f:name").is_none(),
            "the server owns names"
        );
    }

    #[test]
    fn reapplying_without_a_field_removes_it_and_keeps_others_changes() {
        let first = deploy(
            2,
            json!([{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]),
        );
        let live = apply(None, &first, "kubectl", false, "apps/v1", "t").unwrap();
        // Someone else changes something outside the applied config.
        let mut live = live;
        live["spec"]["paused"] = json!(true);
        let mut second = deploy(2, json!([{"name": "a", "image": "x2"}]));
        second["metadata"]["labels"] = json!({});
        let out = apply(Some(&live), &second, "kubectl", false, "apps/v1", "t").unwrap();
        let containers = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 1, "b was removed: {out}");
        assert_eq!(containers[0]["image"], "x2");
        assert_eq!(out["spec"]["paused"], true, "not ours to remove");
        assert!(out["metadata"]["labels"].get("app").is_none());
        assert_eq!(
            out["metadata"]["managedFields"].as_array().unwrap().len(),
            1
        );
    }

    #[test]
    fn another_managers_field_conflicts_unless_forced() {
        let live = apply(
            None,
            &deploy(2, json!([{"name": "a", "image": "x"}])),
            "alice",
            false,
            "apps/v1",
            "t",
        )
        .unwrap();
        let bobs = deploy(5, json!([{"name": "a", "image": "x"}]));
        match apply(Some(&live), &bobs, "bob", false, "apps/v1", "t") {
            Err(Conflicts(c)) => {
                assert_eq!(c, vec![("alice".to_string(), ".spec.replicas".to_string())])
            }
            Ok(o) => panic!("no conflict: {o}"),
        }
        // The same value is shared ownership, not a conflict.
        let same = deploy(2, json!([{"name": "a", "image": "x"}]));
        let shared = apply(Some(&live), &same, "bob", false, "apps/v1", "t").unwrap();
        assert_eq!(owners(&shared).len(), 2);
        let forced = apply(Some(&live), &bobs, "bob", true, "apps/v1", "t").unwrap();
        assert_eq!(forced["spec"]["replicas"], 5);
        // Alice no longer owns replicas: leaving it out of her next apply does not remove it.
        let alice_again = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        let out = apply(Some(&forced), &alice_again, "alice", false, "apps/v1", "t").unwrap();
        assert_eq!(out["spec"]["replicas"], 5);
    }

    /// An update takes the fields it changes: a later apply of another value there conflicts
    /// with the updater, and an update that changes nothing records nothing.
    #[test]
    fn an_update_owns_what_it_changed_and_an_apply_then_conflicts() {
        let applied = deploy(2, json!([{"name": "a", "image": "x"}]));
        let live = apply(None, &applied, "kubectl", false, "apps/v1", "t1").unwrap();
        let mut edited = live.clone();
        edited["spec"]["replicas"] = json!(7);
        record_update(&live, &mut edited, "kubectl-edit", None, "apps/v1", "t2");
        assert_eq!(owners(&edited)["kubectl-edit"], 1);
        match apply(Some(&edited), &applied, "kubectl", false, "apps/v1", "t3") {
            Err(Conflicts(c)) => assert_eq!(
                c,
                vec![("kubectl-edit".to_string(), ".spec.replicas".to_string())]
            ),
            Ok(o) => panic!("no conflict: {o}"),
        }
        let mut again = edited.clone();
        record_update(&edited, &mut again, "kubectl-edit", None, "apps/v1", "t4");
        assert_eq!(again, edited, "nothing changed, nothing recorded");
        // A removed field is nobody's.
        let mut unlabelled = edited.clone();
        unlabelled["metadata"]["labels"] = json!({});
        record_update(
            &edited,
            &mut unlabelled,
            "kubectl-label",
            None,
            "apps/v1",
            "t5",
        );
        let kubectl = from_fields_v1(
            &unlabelled["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["manager"] == "kubectl")
                .unwrap()["fieldsV1"],
        );
        assert!(!kubectl.iter().any(|p| render(p).contains("labels")));
    }

    /// Applying a list item that another manager created, with fewer fields than the live
    /// item has (the server defaulted the rest), contests nothing: the Python client's
    /// create-then-apply of the same Deployment conflicted on `containers[{name}]`.
    #[test]
    fn reapplying_an_item_someone_created_is_no_conflict() {
        let applied = deploy(
            1,
            json!([{"name": "a", "image": "x", "ports": [{"containerPort": 80}]}]),
        );
        let mut live = applied.clone();
        record_update(&Value::Null, &mut live, "creator", None, "apps/v1", "t");
        live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("Always");
        live["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"] = json!("TCP");
        apply(Some(&live), &applied, "applier", false, "apps/v1", "t").unwrap();
    }
}
