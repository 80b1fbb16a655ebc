//! Helpers on objects as JSON: metadata access, name rules, the Status error object.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

pub fn metadata(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata")?.as_object()
}

pub fn name(obj: &Value) -> Option<&str> {
    metadata(obj)?.get("name")?.as_str()
}

pub fn namespace(obj: &Value) -> Option<&str> {
    metadata(obj)?.get("namespace")?.as_str()
}

pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    metadata(obj)
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The object's metadata map, created if missing.
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("just made an object")
}

/// Why `name` is not a valid DNS-1123 subdomain (most object names), if it is not.
pub fn invalid_subdomain(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a name is required".into());
    }
    if name.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    let ok = name.split('.').all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !part.starts_with('-')
            && !part.ends_with('-')
    });
    (!ok).then(|| {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', \
         and must start and end with an alphanumeric character"
            .into()
    })
}

/// Why `name` is not a valid DNS-1123 label (namespace names), if it is not.
pub fn invalid_label(name: &str) -> Option<String> {
    if name.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    if name.contains('.') {
        return Some("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".into());
    }
    invalid_subdomain(name)
}

/// A Kubernetes `Status` failure object.
pub fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert!(invalid_subdomain("web-1.example").is_none());
        assert!(invalid_subdomain("Web").is_some());
        assert!(invalid_subdomain("-web").is_some());
        assert!(invalid_subdomain("").is_some());
        assert!(invalid_label("a.b").is_some());
        assert!(invalid_label("kube-system").is_none());
    }

    #[test]
    fn metadata_helpers() {
        let mut o = json!({"metadata": {"name": "a", "labels": {"app": "x"}}});
        assert_eq!(name(&o), Some("a"));
        assert_eq!(labels(&o).get("app").map(String::as_str), Some("x"));
        metadata_mut(&mut o).insert("uid".into(), json!("u"));
        assert_eq!(o["metadata"]["uid"], "u");
        let mut bare = json!({});
        metadata_mut(&mut bare).insert("name".into(), json!("b"));
        assert_eq!(name(&bare), Some("b"));
    }
}
