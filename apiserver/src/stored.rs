//! How objects are stored: JSON under `/registry/<group>/<resource>/[<namespace>/]<name>`. An
//! object's `resourceVersion` is the store's `mod_revision` of its key: it is never stored, it
//! is filled in on the way out, and writes that carry one are compare-and-swaps on it. Also
//! what the server stamps on a new object (uid, creation time, generation) and the times it
//! writes and shows.

use std::time::{Duration, SystemTime};

use api::object;
use raft_store::KeyValue;
use serde_json::{json, Value};

/// The bytes to store for `obj`: its JSON without the resourceVersion.
pub(crate) fn to_bytes(obj: &Value) -> Vec<u8> {
    let mut stored = obj.clone();
    // The resourceVersion is the key's mod revision; it is never stored.
    if let Some(m) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&stored).expect("a JSON value serialises")
}

/// The stored object with its resourceVersion filled in.
pub(crate) fn from_kv(kv: &KeyValue) -> Value {
    let mut obj: Value = serde_json::from_slice(&kv.value).unwrap_or_else(|_| json!({}));
    object::metadata_mut(&mut obj)
        .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    obj
}

/// Now, as Kubernetes writes times (RFC 3339, seconds).
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// A random uid in the 8-4-4-4-12 form.
pub(crate) fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// What every new object gets: uid, creation time, generation.
pub(crate) fn stamp_new(obj: &mut Value) {
    let m = object::metadata_mut(obj);
    m.insert("uid".into(), json!(new_uid()));
    m.insert("creationTimestamp".into(), json!(now_rfc3339()));
    m.insert("generation".into(), json!(1));
    m.remove("resourceVersion");
}

/// How long ago `ts` was, as kubectl prints ages.
pub(crate) fn age(ts: Option<&str>) -> String {
    let Some(t) = ts.and_then(|t| humantime::parse_rfc3339(t).ok()) else {
        return "<unknown>".into();
    };
    let s = SystemTime::now()
        .duration_since(t)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=599 => format!("{}m{}s", s / 60, s % 60),
        600..=10799 => format!("{}m", s / 60),
        10800..=172799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
