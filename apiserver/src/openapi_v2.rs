//! `/openapi/v2`: the Swagger 2.0 document kubectl 1.27 and 1.28 fetch before apply, create,
//! replace, edit, diff and explain (client-go asks for it in protobuf only, the gnostic
//! `openapi.v2.Document` message, and fails the command when it cannot be read).
//!
//! What it carries is what those kubectl versions read from it: for every served kind, the
//! PATCH operation of its object path, marked with `x-kubernetes-group-version-kind` and
//! listing the `fieldValidation` query parameter, so kubectl knows the server validates fields
//! itself. No definitions: kubectl then validates nothing on the client and computes apply's
//! strategic merge from the types compiled into it; the schemas live in `/openapi/v3`, which
//! every kubectl since 1.27 prefers for explain.
//!
//! The protobuf encoding is hand-written: the document is three levels of a handful of fields
//! (field numbers from gnostic's `openapiv2/OpenAPIv2.proto`), less than a generated crate for
//! the whole gnostic schema would bring.

use std::sync::LazyLock;

use api::registry;
use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// What client-go sends (the deprecated `@` spelling) and the current spelling.
const PROTOBUF_TYPES: [&str; 2] = [
    "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
];
const PROTOBUF_CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// One PATCH operation of the document: its object path, kind and operation id.
struct Patch {
    path: String,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
}

/// The query parameters every PATCH takes (kubectl reads `fieldValidation`).
const PATCH_PARAMETERS: [&str; 4] = ["dryRun", "fieldManager", "fieldValidation", "force"];

fn patches() -> Vec<Patch> {
    registry::REGISTRY
        .iter()
        .map(|r| {
            let root = if r.group.is_empty() {
                format!("/api/{}", r.version)
            } else {
                format!("/apis/{}/{}", r.group, r.version)
            };
            let path = if r.namespaced {
                format!("{root}/namespaces/{{namespace}}/{}/{{name}}", r.name)
            } else {
                format!("{root}/{}/{{name}}", r.name)
            };
            Patch {
                path,
                group: r.group,
                version: r.version,
                kind: r.kind,
            }
        })
        .collect()
}

fn gvk(p: &Patch) -> Value {
    json!({"group": p.group, "kind": p.kind, "version": p.version})
}

fn json_document(patches: &[Patch]) -> Value {
    let paths: Map<String, Value> = patches
        .iter()
        .map(|p| {
            let parameters: Vec<Value> = PATCH_PARAMETERS
                .iter()
                .map(|n| json!({"name": n, "in": "query", "type": "string", "uniqueItems": true}))
                .collect();
            let op = json!({"patch": {
                "operationId": format!("patch{}", p.kind),
                "parameters": parameters,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk(p),
            }});
            (p.path.clone(), op)
        })
        .collect();
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "definitions": {},
    })
}

/// Protobuf wire format: field `tag` as a varint or as length-delimited bytes.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(tag) << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn bool_field(tag: u32, v: bool, out: &mut Vec<u8>) {
    varint(u64::from(tag) << 3, out);
    varint(u64::from(v), out);
}

/// A message built by `fill`, as field `tag`.
fn message(tag: u32, out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    fill(&mut inner);
    bytes_field(tag, &inner, out);
}

/// `NamedAny` as field `tag`: a vendor extension, its value as YAML text (JSON is YAML), which
/// is how gnostic carries it and how kubectl parses it back.
fn extension(tag: u32, name: &str, value: &Value, out: &mut Vec<u8>) {
    message(tag, out, |named| {
        bytes_field(1, name.as_bytes(), named);
        message(2, named, |any| {
            bytes_field(2, format!("{value}\n").as_bytes(), any)
        });
    });
}

fn protobuf_document(patches: &[Patch]) -> Vec<u8> {
    let mut doc = Vec::new();
    bytes_field(1, b"2.0", &mut doc); // swagger
    message(2, &mut doc, |info| {
        bytes_field(1, b"Kubernetes", info); // title
        bytes_field(2, b"v1.32.0", info); // version
    });
    message(8, &mut doc, |paths| {
        for p in patches {
            message(2, paths, |named| {
                bytes_field(1, p.path.as_bytes(), named);
                message(2, named, |item| {
                    message(8, item, |op| operation(p, op)); // PathItem.patch
                });
            });
        }
    });
    message(9, &mut doc, |_| {}); // definitions: none
    doc
}

/// The gnostic `Operation` of one PATCH.
fn operation(p: &Patch, op: &mut Vec<u8>) {
    bytes_field(5, format!("patch{}", p.kind).as_bytes(), op); // operation_id
    for name in PATCH_PARAMETERS {
        // ParametersItem → Parameter → NonBodyParameter → QueryParameterSubSchema
        message(8, op, |item| {
            message(1, item, |param| {
                message(2, param, |non_body| {
                    message(3, non_body, |query| {
                        bytes_field(2, b"query", query); // in
                        bytes_field(4, name.as_bytes(), query); // name
                        bytes_field(6, b"string", query); // type
                        bool_field(20, true, query); // unique_items
                    });
                });
            });
        });
    }
    message(9, op, |responses| {
        message(1, responses, |code| {
            bytes_field(1, b"200", code);
            message(2, code, |value| {
                message(1, value, |response| bytes_field(1, b"OK", response));
            });
        });
    });
    extension(13, "x-kubernetes-action", &json!("patch"), op);
    extension(13, "x-kubernetes-group-version-kind", &gvk(p), op);
}

/// Both encodings, made once.
static DOCUMENT: LazyLock<(Bytes, Bytes)> = LazyLock::new(|| {
    let patches = patches();
    let json = serde_json::to_vec(&json_document(&patches)).expect("serialises");
    (Bytes::from(json), Bytes::from(protobuf_document(&patches)))
});

/// GET `/openapi/v2`: protobuf when asked for (client-go), JSON otherwise.
pub async fn serve(headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (body, content_type) = if PROTOBUF_TYPES.iter().any(|t| accept.contains(t)) {
        (DOCUMENT.1.clone(), PROTOBUF_CONTENT_TYPE)
    } else {
        (DOCUMENT.0.clone(), "application/json")
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::VARY, HeaderValue::from_static("Accept")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal protobuf reader for the test: the fields of one message.
    fn fields(mut buf: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        let read = |buf: &mut &[u8]| {
            let (mut v, mut shift) = (0u64, 0);
            loop {
                let b = buf[0];
                *buf = &buf[1..];
                v |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b < 0x80 {
                    return v;
                }
            }
        };
        while !buf.is_empty() {
            let key = read(&mut buf);
            let tag = (key >> 3) as u32;
            if key & 7 == 2 {
                let n = read(&mut buf) as usize;
                out.push((tag, buf[..n].to_vec()));
                buf = &buf[n..];
            } else {
                out.push((tag, read(&mut buf).to_be_bytes().to_vec()));
            }
        }
        out
    }

    fn field(buf: &[u8], tag: u32) -> Vec<u8> {
        fields(buf)
            .into_iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no field {tag}"))
    }

    /// What kubectl's query-parameter verifier reads: a path's PATCH operation, its GVK
    /// extension (YAML it can parse) and a query parameter named fieldValidation.
    #[test]
    fn every_kind_has_a_patch_with_its_gvk_and_field_validation() {
        let doc = protobuf_document(&patches());
        assert_eq!(field(&doc, 1), b"2.0");
        let paths = field(&doc, 8);
        let named: Vec<Vec<u8>> = fields(&paths)
            .into_iter()
            .filter(|(t, _)| *t == 2)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(named.len(), registry::REGISTRY.len());
        let deployment = named
            .iter()
            .find(|n| field(n, 1) == b"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
            .expect("the Deployment path");
        // NamedPathItem.value (2) → PathItem.patch (8)
        let patch = field(&field(deployment, 2), 8);
        let extensions: Vec<Vec<u8>> = fields(&patch)
            .into_iter()
            .filter(|(t, _)| *t == 13)
            .map(|(_, v)| v)
            .collect();
        let gvk = extensions
            .iter()
            .find(|e| field(e, 1) == b"x-kubernetes-group-version-kind")
            .unwrap();
        let yaml = String::from_utf8(field(&field(gvk, 2), 2)).unwrap();
        let parsed: Value = serde_json::from_str(yaml.trim()).unwrap();
        assert_eq!(
            parsed,
            json!({"group": "apps", "kind": "Deployment", "version": "v1"})
        );
        let names: Vec<String> = fields(&patch)
            .into_iter()
            .filter(|(t, _)| *t == 8)
            .map(|(_, item)| {
                let query = field(&field(&field(&item, 1), 2), 3);
                String::from_utf8(field(&query, 4)).unwrap()
            })
            .collect();
        assert!(names.contains(&"fieldValidation".to_string()), "{names:?}");
        // The core group is a present, empty string (kubectl skips a GVK without one).
        let json = json_document(&patches());
        assert_eq!(
            json["paths"]["/api/v1/namespaces/{name}"]["patch"]["x-kubernetes-group-version-kind"],
            json!({"group": "", "kind": "Namespace", "version": "v1"})
        );
    }
}
