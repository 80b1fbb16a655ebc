//! Discovery documents, built from the kind registry: `/version`, `/api`, `/apis`, and the
//! resource list of each group version.

use api::registry::{self, VERBS};
use serde_json::{json, Value};

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": concat!("v1.32.0-drover.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_doc(group: &str, versions: &[&str]) -> Value {
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": gvs, "preferredVersion": gvs[0]})
}

pub fn groups() -> Value {
    let groups: Vec<Value> = registry::groups()
        .into_iter()
        .map(|(g, v)| group_doc(g, &v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(name: &str) -> Option<Value> {
    let (g, v) = registry::groups().into_iter().find(|(g, _)| *g == name)?;
    let mut doc = group_doc(g, &v);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

pub fn resources(group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = registry::REGISTRY
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(|r| {
            let mut doc = json!({
                "name": r.name,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": VERBS,
            });
            if !r.short_names.is_empty() {
                doc["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                doc["categories"] = json!(r.categories);
            }
            let mut docs = vec![doc];
            let sub_verbs = ["get", "patch", "update"];
            if r.has_status() {
                docs.push(json!({"name": format!("{}/status", r.name), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": sub_verbs}));
            }
            if r.has_scale() {
                docs.push(json!({"name": format!("{}/scale", r.name), "singularName": "", "namespaced": r.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": sub_verbs}));
            }
            for a in r.actions() {
                docs.push(json!({"name": format!("{}/{}", r.name, a.name), "singularName": "", "namespaced": r.namespaced, "group": a.group, "version": a.version, "kind": a.kind, "verbs": a.verbs}));
            }
            docs
        })
        .collect();
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

/// The OpenAPI v3 index: one document per group version.
pub fn openapi_v3_index() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs: Vec<String> = vec!["api/v1".into()];
    gvs.extend(
        registry::groups()
            .into_iter()
            .flat_map(|(g, vs)| vs.into_iter().map(move |v| format!("apis/{g}/{v}"))),
    );
    for gv in gvs {
        paths.insert(gv.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={}", env!("CARGO_PKG_VERSION"))}));
    }
    json!({"paths": paths})
}

/// The OpenAPI v3 document of one group version (`api/v1` or `apis/{group}/{version}`).
///
/// The schemas are permissive for now (any object of the kind is accepted here, and the server
/// checks what it needs): enough for kubectl's client-side validation to find every kind. The
/// real schemas, for `kubectl explain` and strict validation, come with typed validation.
pub fn openapi_v3(path: &str) -> Option<Value> {
    let (group, version) = match path
        .trim_matches('/')
        .split('/')
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["api", v] => (String::new(), (*v).to_string()),
        ["apis", g, v] => ((*g).to_string(), (*v).to_string()),
        _ => return None,
    };
    let mut schemas = serde_json::Map::new();
    let mut paths = serde_json::Map::new();
    for r in registry::REGISTRY
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        // kubectl looks for the `fieldValidation` parameter on an object's PATCH to know that
        // the server validates fields itself (then it sends fieldValidation=Strict instead of
        // validating on the client).
        let root = if group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group}/{version}")
        };
        let item = if r.namespaced {
            format!("{root}/namespaces/{{namespace}}/{}/{{name}}", r.name)
        } else {
            format!("{root}/{}/{{name}}", r.name)
        };
        let gvk = json!({"group": group, "kind": r.kind, "version": version});
        let param = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
        paths.insert(
            item,
            json!({"patch": {
                "operationId": format!("patch{}", r.kind),
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation"), param("force")],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
        let go_group = if group.is_empty() {
            "core".to_string()
        } else {
            group.split('.').next().unwrap_or("").to_string()
        };
        schemas.insert(
            format!("io.k8s.api.{go_group}.{version}.{}", r.kind),
            json!({
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "x-kubernetes-group-version-kind": [{"group": group, "kind": r.kind, "version": version}],
            }),
        );
    }
    if schemas.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Drover", "version": version},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
