//! Discovery documents, built from the kind registry: `/version`, `/api`, `/apis`, and the
//! resource list of each group version.

use std::collections::BTreeMap;

use api::registry::{self, VERBS};
use bytes::Bytes;
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
    let reviews = registry::REVIEWS
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| json!({"name": r.name, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": ["create"]}));
    let metrics = registry::METRICS
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| json!({"name": r.name, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "list"]}));
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
        .chain(reviews)
        .chain(metrics)
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

/// The aggregated discovery version (`apidiscovery.k8s.io` v2, or v2beta1 for kubectl 1.27
/// to 1.29) the Accept header asks for first, if any: then `/api` and `/apis` answer with
/// every resource at once (one request instead of one per group version).
pub fn aggregated_version(accept: Option<&str>) -> Option<&'static str> {
    for range in accept?.split(',') {
        let mut params = std::collections::HashMap::new();
        for p in range.split(';').skip(1) {
            if let Some((k, v)) = p.split_once('=') {
                params.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let discovery = params.get("g").map(String::as_str) == Some("apidiscovery.k8s.io")
            && params.get("as").map(String::as_str) == Some("APIGroupDiscoveryList");
        if discovery {
            match params.get("v").map(String::as_str) {
                Some("v2") => return Some("v2"),
                Some("v2beta1") => return Some("v2beta1"),
                _ => {}
            }
        }
    }
    None
}

/// The Content-Type of an aggregated discovery answer, which is how clients know it is one.
pub fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

/// `APIGroupDiscoveryList` for `/api` (core) or `/apis` (every group): each group version's
/// resources with their subresources, from the same documents as the per-version discovery.
pub fn aggregated(core: bool, version: &str) -> Value {
    let groups: Vec<(&str, Vec<&str>)> = if core {
        vec![("", vec!["v1"])]
    } else {
        registry::groups()
    };
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .filter_map(|v| {
                    let list = resources(group, v)?;
                    Some(json!({
                        "version": v,
                        "resources": aggregated_resources(group, v, &list),
                        "freshness": "Current",
                    }))
                })
                .collect();
            json!({"metadata": {"name": group}, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

/// An APIResourceList's entries as APIResourceDiscovery: `name/sub` entries become the
/// subresources of `name`.
fn aggregated_resources(group: &str, version: &str, list: &Value) -> Vec<Value> {
    let entries = list["resources"].as_array().cloned().unwrap_or_default();
    let kind_of = |e: &Value| {
        json!({
            "group": e["group"].as_str().unwrap_or(group),
            "version": e["version"].as_str().unwrap_or(version),
            "kind": e["kind"],
        })
    };
    let mut out: Vec<Value> = Vec::new();
    for e in &entries {
        let name = e["name"].as_str().unwrap_or_default();
        if name.contains('/') {
            continue;
        }
        let mut doc = json!({
            "resource": name,
            "responseKind": kind_of(e),
            "scope": if e["namespaced"] == true { "Namespaced" } else { "Cluster" },
            "singularResource": e["singularName"],
            "verbs": e["verbs"],
        });
        for field in ["shortNames", "categories"] {
            if let Some(v) = e.get(field) {
                doc[field] = v.clone();
            }
        }
        let subresources: Vec<Value> = entries
            .iter()
            .filter_map(|s| {
                let (parent, sub) = s["name"].as_str()?.split_once('/')?;
                (parent == name).then(
                    || json!({"subresource": sub, "responseKind": kind_of(s), "verbs": s["verbs"]}),
                )
            })
            .collect();
        if !subresources.is_empty() {
            doc["subresources"] = json!(subresources);
        }
        out.push(doc);
    }
    out
}

/// The schemas of every served kind, with Kubernetes' descriptions, generated from
/// k8s-openapi by `tools/gen-openapi` (see there to regenerate).
static SCHEMAS: &str = include_str!("openapi_schemas.json");

/// Each group version's OpenAPI v3 document, serialised once, and its hash for the index.
static OPENAPI_V3: std::sync::LazyLock<BTreeMap<String, (Bytes, String)>> =
    std::sync::LazyLock::new(|| {
        let mut all: Value = serde_json::from_str(SCHEMAS).expect("the embedded schemas are JSON");
        add_knative_schemas(&mut all);
        let mut gvs: Vec<(String, String)> = vec![(String::new(), "v1".into())];
        gvs.extend(
            registry::groups()
                .into_iter()
                .flat_map(|(g, vs)| vs.into_iter().map(move |v| (g.to_string(), v.to_string()))),
        );
        gvs.into_iter()
            .map(|(group, version)| {
                let doc = openapi_v3_document(&all, &group, &version);
                let bytes = serde_json::to_vec(&doc).expect("serialises");
                let hash = format!("{:016X}", fnv1a(&bytes));
                let path = if group.is_empty() {
                    format!("api/{version}")
                } else {
                    format!("apis/{group}/{version}")
                };
                (path, (Bytes::from(bytes), hash))
            })
            .collect()
    });

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// The OpenAPI v3 index: one document per group version, with a hash clients cache by.
pub fn openapi_v3_index() -> Value {
    let paths: serde_json::Map<String, Value> = OPENAPI_V3
        .iter()
        .map(|(path, (_, hash))| {
            (
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            )
        })
        .collect();
    json!({"paths": paths})
}

/// The OpenAPI v3 document of one group version (`api/v1` or `apis/{group}/{version}`).
pub fn openapi_v3(path: &str) -> Option<Bytes> {
    OPENAPI_V3
        .get(path.trim_matches('/'))
        .map(|(b, _)| b.clone())
}

/// Knative Serving's kinds, written here (k8s-openapi has no Knative types): a revision's spec
/// is the pod spec's schema with Knative's fields beside it, so `kubectl explain
/// ksvc.spec.template.spec.containers` reads Kubernetes' own descriptions.
fn add_knative_schemas(all: &mut Value) {
    const PREFIX: &str = "dev.knative.serving.v1.";
    let r = |name: &str| json!({"$ref": format!("#/components/schemas/{PREFIX}{name}")});
    let meta = json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "description": "Standard object's metadata."});
    let string = |d: &str| json!({"type": "string", "description": d});
    let integer = |d: &str| json!({"type": "integer", "format": "int64", "description": d});
    let mut revision_spec = all["schemas"]["io.k8s.api.core.v1.PodSpec"].clone();
    revision_spec["description"] = json!("RevisionSpec holds the desired state of the Revision (from the client): a pod spec, and how requests reach it.");
    let props = &mut revision_spec["properties"];
    props["containerConcurrency"] = integer("ContainerConcurrency specifies the maximum allowed in-flight (concurrent) requests per container of the Revision. Defaults to 0 which means concurrency to the application is not limited, and the system decides the target concurrency for the autoscaler.");
    props["timeoutSeconds"] = integer("TimeoutSeconds is the maximum duration in seconds that the request instance is allowed to respond to a request. If unspecified, a system default will be provided.");
    props["responseStartTimeoutSeconds"] = integer("ResponseStartTimeoutSeconds is the maximum duration in seconds that the request routing layer will wait for a request delivered to a container to begin sending any network traffic.");
    props["idleTimeoutSeconds"] = integer("IdleTimeoutSeconds is the maximum duration in seconds a request will be allowed to stay open while not receiving any bytes from the user's application.");
    let condition = json!({"type": "object", "description": "Condition defines a readiness condition for a Knative resource.",
        "required": ["type", "status"], "properties": {
        "type": string("Type of condition."), "status": string("Status of the condition, one of True, False, Unknown."),
        "severity": string("Severity with which to treat failures of this type of condition. When this is not specified, it defaults to Error."),
        "lastTransitionTime": string("LastTransitionTime is the last time the condition transitioned from one status to another."),
        "reason": string("The reason for the condition's last transition."),
        "message": string("A human readable message indicating details about the transition.")}});
    let traffic = json!({"type": "object", "description": "TrafficTarget holds a single entry of the routing table for a Route.", "properties": {
        "tag": string("Tag is optionally used to expose a dedicated url for referencing this target exclusively."),
        "revisionName": string("RevisionName of a specific revision to which to send this portion of traffic. This is mutually exclusive with ConfigurationName."),
        "configurationName": string("ConfigurationName of a configuration to whose latest revision we will send this portion of traffic. When the \"status.latestReadyRevisionName\" of the referenced configuration changes, we will automatically migrate traffic from the prior \"latest ready\" revision to the new one."),
        "latestRevision": {"type": "boolean", "description": "LatestRevision may be optionally provided to indicate that the latest ready Revision of the Configuration should be used for this traffic target. When provided LatestRevision must be true if RevisionName is empty; it must be false when RevisionName is non-empty."},
        "percent": integer("Percent indicates that percentage based routing should be used and the value indicates the percent of traffic that is be routed to this Revision or Configuration. `0` (zero) mean no traffic, `100` means all traffic."),
        "url": string("URL displays the URL for accessing named traffic targets. URL is displayed in status, and is disallowed on spec.")}});
    let status = |extra: Value| {
        let mut props = json!({
            "observedGeneration": integer("ObservedGeneration is the 'Generation' of the object that was last processed by the controller."),
            "conditions": {"type": "array", "items": r("Condition"), "description": "Conditions the latest available observations of a resource's current state."},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Annotations is additional Status fields for the Resource to save some additional State as well as convey more information to the user."}});
        props
            .as_object_mut()
            .expect("object")
            .extend(extra.as_object().cloned().unwrap_or_default());
        json!({"type": "object", "properties": props})
    };
    let routing = json!({
        "url": string("URL holds the url that will distribute traffic over the provided traffic targets."),
        "address": {"type": "object", "properties": {"url": string("URL of the addressable.")}, "description": "Address holds the information needed for a Route to be the target of an event."},
        "traffic": {"type": "array", "items": r("TrafficTarget"), "description": "Traffic holds the configured traffic distribution."}});
    let revisions = json!({
        "latestReadyRevisionName": string("LatestReadyRevisionName holds the name of the latest Revision stamped out from this Configuration that has had its \"Ready\" condition become \"True\"."),
        "latestCreatedRevisionName": string("LatestCreatedRevisionName is the last revision that was created from this Configuration. It might not be ready yet, for that use LatestReadyRevisionName.")});
    let mut service_status = routing.clone();
    service_status
        .as_object_mut()
        .expect("object")
        .extend(revisions.as_object().cloned().unwrap_or_default());
    let template = json!({"type": "object", "description": "RevisionTemplateSpec describes the data a revision should have when created from a template.",
        "properties": {"metadata": meta, "spec": r("RevisionSpec")}});
    let kind = |desc: &str, spec: &str, status: &str| {
        json!({"type": "object", "description": desc, "properties": {
        "apiVersion": string("APIVersion defines the versioned schema of this representation of an object."),
        "kind": string("Kind is a string value representing the REST resource this object represents."),
        "metadata": meta, "spec": r(spec), "status": r(status)}})
    };
    let schemas = all["schemas"]
        .as_object_mut()
        .expect("schemas is an object");
    for (name, schema) in [
        ("Condition", condition),
        ("TrafficTarget", traffic),
        ("RevisionSpec", revision_spec),
        ("RevisionTemplateSpec", template),
        ("ServiceSpec", json!({"type": "object", "description": "ServiceSpec represents the configuration for the Service object: a Configuration's template and a Route's traffic.", "properties": {
            "template": r("RevisionTemplateSpec"), "traffic": {"type": "array", "items": r("TrafficTarget"), "description": "Traffic specifies how to distribute traffic over a collection of revisions and configurations."}}})),
        ("ServiceStatus", status(service_status)),
        ("ConfigurationSpec", json!({"type": "object", "description": "ConfigurationSpec holds the desired state of the Configuration (from the client).", "properties": {"template": r("RevisionTemplateSpec")}})),
        ("ConfigurationStatus", status(revisions)),
        ("RevisionStatus", status(json!({
            "logUrl": string("LogURL specifies the generated logging url for this particular revision."),
            "actualReplicas": integer("ActualReplicas reflects the amount of ready pods running this revision."),
            "desiredReplicas": integer("DesiredReplicas reflects the desired amount of pods running this revision.")}))),
        ("RouteSpec", json!({"type": "object", "description": "RouteSpec holds the desired state of the Route (from the client).", "properties": {
            "traffic": {"type": "array", "items": r("TrafficTarget"), "description": "Traffic specifies how to distribute traffic over a collection of revisions and configurations."}}})),
        ("RouteStatus", status(routing)),
        ("Service", kind("Service acts as a top-level container that manages a Route and Configuration which implement a network service.", "ServiceSpec", "ServiceStatus")),
        ("Configuration", kind("Configuration represents the \"floating HEAD\" of a linear history of Revisions. Users create new Revisions by updating the Configuration's spec.", "ConfigurationSpec", "ConfigurationStatus")),
        ("Revision", kind("Revision is an immutable snapshot of code and configuration.", "RevisionSpec", "RevisionStatus")),
        ("Route", kind("Route is responsible for configuring ingress over a collection of Revisions.", "RouteSpec", "RouteStatus")),
    ] {
        schemas.insert(format!("{PREFIX}{name}"), schema);
    }
    let kinds = all["kinds"].as_object_mut().expect("kinds is an object");
    for kind in ["Service", "Configuration", "Revision", "Route"] {
        kinds.insert(
            format!("{PREFIX}{kind}"),
            json!([{"group": api::knative::GROUP, "kind": kind, "version": "v1"}]),
        );
    }
}

/// The names of the schemas `name` refers to, transitively.
fn referenced(all: &Value, name: &str, into: &mut BTreeMap<String, Value>) {
    if into.contains_key(name) {
        return;
    }
    let Some(schema) = all["schemas"].get(name) else {
        return;
    };
    into.insert(name.to_string(), schema.clone());
    let mut refs = Vec::new();
    collect_refs(schema, &mut refs);
    for r in refs {
        referenced(all, &r, into);
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                out.push(r.trim_start_matches("#/components/schemas/").to_string());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

fn openapi_v3_document(all: &Value, group: &str, version: &str) -> Value {
    let mut schemas = BTreeMap::new();
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
        let kind_schema = all["kinds"].as_object().and_then(|kinds| {
            kinds.iter().find_map(|(name, gvks)| {
                let g = &gvks[0];
                (g["group"] == group && g["version"] == version && g["kind"] == r.kind)
                    .then(|| name.clone())
            })
        });
        if let Some(name) = kind_schema {
            referenced(all, &name, &mut schemas);
            schemas.get_mut(&name).expect("just added")["x-kubernetes-group-version-kind"] =
                json!([gvk]);
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_discovery_is_asked_for_by_version_and_lists_subresources() {
        let kubectl_132 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(Some(kubectl_132)), Some("v2"));
        let kubectl_127 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(Some(kubectl_127)), Some("v2beta1"));
        assert_eq!(aggregated_version(Some("application/json")), None);
        assert_eq!(aggregated_version(None), None);

        let apis = aggregated(false, "v2");
        assert_eq!(apis["apiVersion"], "apidiscovery.k8s.io/v2");
        let apps = apis["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["metadata"]["name"] == "apps")
            .unwrap();
        let deployments = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        assert_eq!(deployments["scope"], "Namespaced");
        assert_eq!(
            deployments["responseKind"],
            json!({"group": "apps", "version": "v1", "kind": "Deployment"})
        );
        let subs: Vec<&str> = deployments["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["subresource"].as_str().unwrap())
            .collect();
        assert!(
            subs.contains(&"status") && subs.contains(&"scale"),
            "{subs:?}"
        );
        let scale = deployments["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subresource"] == "scale")
            .unwrap();
        assert_eq!(scale["responseKind"]["group"], "autoscaling");
        // Every resource of the per-version documents is in it, and only those.
        let api = aggregated(true, "v2");
        let core = &api["items"][0]["versions"][0]["resources"];
        let legacy = resources("", "v1").unwrap();
        let top = legacy["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| !r["name"].as_str().unwrap().contains('/'))
            .count();
        assert_eq!(core.as_array().unwrap().len(), top);
    }
}
