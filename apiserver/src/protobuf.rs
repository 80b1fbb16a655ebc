//! Protobuf request bodies, turned into the JSON the rest of the server works with.
//!
//! client-go's typed clients — kubectl's generators (`create namespace|configmap|secret|
//! deployment`, `run`, `expose`, `autoscale`) among them — send built-in objects as Kubernetes
//! protobuf: the magic `k8s\0`, then a `runtime.Unknown` envelope naming apiVersion and kind
//! around the object's own message. The message layouts come from `proto_schema.json`, which
//! `scripts/gen-proto-schema.py` generates from the published API definitions (field tags,
//! wire types, and the JSON names such as `podIP`). Responses stay JSON: clients accept both.
//!
//! Hand-written because no maintained crate decodes Kubernetes protobuf into its JSON form:
//! k8s-pb has the prost types but no JSON mapping, and the Kubernetes JSON differs from the
//! generic protobuf JSON mapping (times as RFC 3339 strings, int-or-string, quantities).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Map, Value};

/// message key → tag → (JSON name, type, repeated)
type Schema = HashMap<String, HashMap<u32, (String, String, bool)>>;

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let raw: HashMap<String, HashMap<String, (String, String, bool)>> =
            serde_json::from_str(include_str!("proto_schema.json"))
                .expect("the generated schema is valid JSON");
        raw.into_iter()
            .map(|(k, fields)| {
                (
                    k,
                    fields
                        .into_iter()
                        .filter_map(|(t, f)| Some((t.parse().ok()?, f)))
                        .collect(),
                )
            })
            .collect()
    })
}

const MAGIC: &[u8] = b"k8s\0";

/// The message key of a built-in kind, e.g. `apps/v1` `Deployment` → `api.apps.v1.Deployment`.
/// The options kinds of apimachinery (DeleteOptions above all: client-go sends it in protobuf
/// with `helm uninstall`) travel as `v1` or `meta.k8s.io/v1` and live under `meta.v1`.
fn message_key(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.split_once('/').unwrap_or(("core", api_version));
    let group = group.split('.').next().unwrap_or(group);
    let built_in = format!("api.{group}.{version}.{kind}");
    let meta = format!("apimachinery.pkg.apis.meta.{version}.{kind}");
    if !schema().contains_key(&built_in)
        && matches!(group, "core" | "meta")
        && schema().contains_key(&meta)
    {
        return meta;
    }
    built_in
}

/// Decodes a `application/vnd.kubernetes.protobuf` body into the object's JSON.
pub fn decode_body(body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("not a Kubernetes protobuf body (no k8s magic)")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    for field in Fields::new(envelope) {
        let (tag, value) = field?;
        match (tag, value) {
            (1, Wire::Len(type_meta)) => {
                for f in Fields::new(type_meta) {
                    match f? {
                        (1, Wire::Len(v)) => api_version = utf8(v)?,
                        (2, Wire::Len(v)) => kind = utf8(v)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Len(bytes)) => raw = Some(bytes),
            _ => {}
        }
    }
    let key = message_key(&api_version, &kind);
    if !schema().contains_key(&key) {
        return Err(format!(
            "no protobuf layout is known for {api_version} {kind}; send JSON"
        ));
    }
    let mut obj = decode(raw.unwrap_or_default(), &key)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

/// The fields of one message, in wire order.
struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("truncated field".into());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Wire<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let item = (|| {
            let key = self.varint()?;
            let tag = u32::try_from(key >> 3).map_err(|_| "field tag out of range")?;
            let wire = match key & 7 {
                0 => Wire::Varint(self.varint()?),
                1 => Wire::Fixed64(u64::from_le_bytes(
                    self.take(8)?.try_into().expect("8 bytes"),
                )),
                2 => {
                    let n = usize::try_from(self.varint()?).map_err(|_| "length out of range")?;
                    Wire::Len(self.take(n)?)
                }
                5 => Wire::Fixed32(u32::from_le_bytes(
                    self.take(4)?.try_into().expect("4 bytes"),
                )),
                other => return Err(format!("unsupported wire type {other}")),
            };
            Ok((tag, wire))
        })();
        if item.is_err() {
            self.buf = &[]; // stop after the first error
        }
        Some(item)
    }
}

fn utf8(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a string field is not UTF-8".into())
}

fn rfc3339(seconds: i64, nanos: i64, micro: bool) -> String {
    let t = UNIX_EPOCH
        + Duration::from_secs(seconds.max(0) as u64)
        + Duration::from_nanos(nanos.max(0) as u64);
    if micro {
        humantime::format_rfc3339_micros(t).to_string()
    } else {
        humantime::format_rfc3339_seconds(t).to_string()
    }
}

/// One scalar or message value of type `ty`.
fn value(wire: Wire<'_>, ty: &str) -> Result<Value, String> {
    Ok(match (ty, wire) {
        ("string", Wire::Len(b)) => json!(utf8(b)?),
        ("bytes", Wire::Len(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        ("bool", Wire::Varint(v)) => json!(v != 0),
        ("int32", Wire::Varint(v)) => json!(v as i64 as i32),
        ("int64", Wire::Varint(v)) => json!(v as i64),
        ("double", Wire::Fixed64(v)) => json!(f64::from_bits(v)),
        ("float", Wire::Fixed32(v)) => json!(f32::from_bits(v)),
        (m, Wire::Len(b)) if m.starts_with("m:") => decode(b, &m[2..])?,
        (ty, _) => return Err(format!("a field of type {ty} has the wrong wire type")),
    })
}

/// Decodes one message of `key` into its Kubernetes JSON form.
fn decode(buf: &[u8], key: &str) -> Result<Value, String> {
    // The types whose JSON is not an object of their fields.
    let short = key.rsplit('.').next().unwrap_or(key);
    if key.starts_with("apimachinery.") {
        match short {
            "Time" | "MicroTime" => {
                let (mut s, mut n) = (0i64, 0i64);
                for f in Fields::new(buf) {
                    match f? {
                        (1, Wire::Varint(v)) => s = v as i64,
                        (2, Wire::Varint(v)) => n = v as i64,
                        _ => {}
                    }
                }
                return Ok(json!(rfc3339(s, n, short == "MicroTime")));
            }
            "Quantity" => {
                for f in Fields::new(buf) {
                    if let (1, Wire::Len(b)) = f? {
                        return Ok(json!(utf8(b)?));
                    }
                }
                return Ok(json!("0"));
            }
            "IntOrString" => {
                let (mut is_string, mut int, mut string) = (false, 0i64, String::new());
                for f in Fields::new(buf) {
                    match f? {
                        (1, Wire::Varint(v)) => is_string = v == 1,
                        (2, Wire::Varint(v)) => int = v as i64 as i32 as i64,
                        (3, Wire::Len(b)) => string = utf8(b)?,
                        _ => {}
                    }
                }
                return Ok(if is_string { json!(string) } else { json!(int) });
            }
            "RawExtension" | "FieldsV1" | "JSON" => {
                for f in Fields::new(buf) {
                    if let (1, Wire::Len(b)) = f? {
                        return serde_json::from_slice(b)
                            .map_err(|e| format!("embedded JSON in {short}: {e}"));
                    }
                }
                return Ok(json!({}));
            }
            "Duration" => {
                for f in Fields::new(buf) {
                    if let (1, Wire::Varint(v)) = f? {
                        return Ok(json!(format!("{}s", (v as i64) as f64 / 1e9)));
                    }
                }
                return Ok(json!("0s"));
            }
            _ => {}
        }
    }
    let fields = schema()
        .get(key)
        .ok_or_else(|| format!("no protobuf layout for {key}"))?;
    let mut out = Map::new();
    for f in Fields::new(buf) {
        let (tag, wire) = f?;
        let Some((name, ty, repeated)) = fields.get(&tag) else {
            continue;
        };
        if let Some(value_type) = ty.strip_prefix("map:") {
            let Wire::Len(entry) = wire else {
                return Err(format!("{key}.{name}: a map entry must be a message"));
            };
            let (mut k, mut v) = (String::new(), Value::Null);
            for ef in Fields::new(entry) {
                match ef? {
                    (1, Wire::Len(b)) => k = utf8(b)?,
                    (2, w) => v = value(w, value_type)?,
                    _ => {}
                }
            }
            if v.is_null() {
                v = if value_type == "string" || value_type == "bytes" {
                    json!("")
                } else {
                    json!({})
                };
            }
            out.entry(name.clone()).or_insert_with(|| json!({}))[&k] = v;
        } else if *repeated {
            let list = out.entry(name.clone()).or_insert_with(|| json!([]));
            let items = list.as_array_mut().expect("a list");
            match (ty.as_str(), wire) {
                // Packed numbers.
                ("int32" | "int64", Wire::Len(b)) => {
                    let mut packed = Fields { buf: b };
                    while !packed.buf.is_empty() {
                        let v = packed.varint()? as i64;
                        items.push(if ty == "int32" {
                            json!(v as i32)
                        } else {
                            json!(v)
                        });
                    }
                }
                (_, w) => items.push(value(w, ty)?),
            }
        } else {
            let v = value(wire, ty)?;
            // Go's protobuf writes empty strings that its JSON would omit (`omitempty`), e.g.
            // `metadata.namespace: ""`; as JSON they would read as "set to empty".
            if v.as_str() != Some("") {
                out.insert(name.clone(), v);
            }
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn field(tag: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(tag) << 3 | 2, &mut out);
        varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    }
    fn int_field(tag: u32, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(tag) << 3, &mut out);
        varint(v, &mut out);
        out
    }

    #[test]
    fn a_configmap_in_an_envelope_decodes_to_kubernetes_json() {
        let label = [field(1, b"app"), field(2, b"web")].concat();
        let meta = [
            field(1, b"cfg"),
            field(3, b"shop"),
            field(11, &label),
            field(8, &[int_field(1, 0), int_field(2, 0)].concat()),
        ]
        .concat();
        let data = [field(1, b"k"), field(2, b"v")].concat();
        let bin = [field(1, b"b"), field(2, b"\x00\x01")].concat();
        let cm = [field(1, &meta), field(2, &data), field(3, &bin)].concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &cm)].concat();
        let obj = decode_body(&body).unwrap();
        assert_eq!(obj["kind"], "ConfigMap");
        assert_eq!(obj["apiVersion"], "v1");
        assert_eq!(obj["metadata"]["name"], "cfg");
        assert_eq!(obj["metadata"]["namespace"], "shop");
        assert_eq!(obj["metadata"]["labels"]["app"], "web");
        assert_eq!(obj["metadata"]["creationTimestamp"], "1970-01-01T00:00:00Z");
        assert_eq!(obj["data"]["k"], "v");
        assert_eq!(obj["binaryData"]["b"], "AAE=");
    }

    /// `helm uninstall` (client-go) sends its DeleteOptions in protobuf as `v1`.
    #[test]
    fn delete_options_decode_as_the_meta_kind() {
        let preconditions = field(1, b"uid-1");
        let options = [
            int_field(1, 0),
            field(2, &preconditions),
            field(4, b"Background"),
            field(5, b"All"),
        ]
        .concat();
        for api_version in ["v1", "meta.k8s.io/v1"] {
            let type_meta = [field(1, api_version.as_bytes()), field(2, b"DeleteOptions")].concat();
            let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &options)].concat();
            let obj = decode_body(&body).unwrap();
            assert_eq!(obj["kind"], "DeleteOptions");
            assert_eq!(obj["gracePeriodSeconds"], 0);
            assert_eq!(obj["preconditions"]["uid"], "uid-1");
            assert_eq!(obj["propagationPolicy"], "Background");
            assert_eq!(obj["dryRun"], json!(["All"]));
        }
    }

    #[test]
    fn int_or_string_and_json_names_follow_kubernetes() {
        let target = [int_field(1, 1), field(3, b"http")].concat();
        let port = [int_field(3, 80), field(4, &target)].concat();
        let spec = [field(1, &port), field(3, b"10.96.0.1")].concat();
        let obj = decode(&spec, "api.core.v1.ServiceSpec").unwrap();
        assert_eq!(obj["ports"][0]["port"], 80);
        assert_eq!(obj["ports"][0]["targetPort"], "http");
        assert_eq!(obj["clusterIP"], "10.96.0.1");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_body(b"nope").is_err());
        assert!(decode_body(b"k8s\0\x0a\xff\xff\xff").is_err());
        let unknown = [
            MAGIC.to_vec(),
            field(
                1,
                &[field(1, b"example.com/v1"), field(2, b"Widget")].concat(),
            ),
        ]
        .concat();
        assert!(decode_body(&unknown).unwrap_err().contains("send JSON"));
    }
}
