//! Writes the OpenAPI v3 schemas of every kind Drover serves, with Kubernetes' descriptions,
//! as one JSON object `{ "schemas": {name: schema}, "kinds": {name: [gvk]} }` on stdout:
//!
//!     cargo run --manifest-path tools/gen-openapi/Cargo.toml > apiserver/src/openapi_schemas.json
//!
//! The schemas come from k8s-openapi (generated from Kubernetes' own OpenAPI document); the
//! server wraps them into per-group-version documents at start. References with their own
//! description become `allOf: [{$ref}]`, as kube-apiserver publishes them (kubectl explain reads
//! that form).

use k8s_openapi::api::{
    apps, autoscaling, batch, coordination, core, discovery, events, networking, node, rbac,
};
use schemars::gen::{SchemaGenerator, SchemaSettings};
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

struct Kinds {
    gen: SchemaGenerator,
    kinds: Map<String, Value>,
}

impl Kinds {
    fn add<T: JsonSchema>(&mut self, group: &str, version: &str, kind: &str) {
        self.gen.subschema_for::<T>();
        self.kinds.insert(
            T::schema_name(),
            json!([{"group": group, "version": version, "kind": kind}]),
        );
    }
}

/// Rewrites `{$ref, description, ...}` into `{allOf: [{$ref}], description, ...}`.
fn wrap_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.len() > 1 {
                if let Some(r) = m.remove("$ref") {
                    m.insert("allOf".into(), json!([{"$ref": r}]));
                }
            }
            m.values_mut().for_each(wrap_refs);
        }
        Value::Array(a) => a.iter_mut().for_each(wrap_refs),
        _ => {}
    }
}

/// Strategic-merge-patch metadata kube-apiserver publishes and k8s-openapi does not carry
/// (kubectl's apply computes its patches from it): schema, field, merge key ("" for a merged
/// list of scalars).
const PATCH_MERGE: &[(&str, &str, &str)] = &[
    ("io.k8s.api.core.v1.PodSpec", "containers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "volumes", "name"),
    ("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", "name"),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", "ip"),
    ("io.k8s.api.core.v1.Container", "env", "name"),
    ("io.k8s.api.core.v1.Container", "ports", "containerPort"),
    ("io.k8s.api.core.v1.Container", "volumeMounts", "mountPath"),
    ("io.k8s.api.core.v1.Container", "volumeDevices", "devicePath"),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", "port"),
    ("io.k8s.api.core.v1.PodStatus", "conditions", "type"),
    ("io.k8s.api.core.v1.NodeStatus", "conditions", "type"),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", "type"),
    ("io.k8s.api.apps.v1.DeploymentStatus", "conditions", "type"),
    ("io.k8s.api.apps.v1.ReplicaSetStatus", "conditions", "type"),
    ("io.k8s.api.apps.v1.DaemonSetStatus", "conditions", "type"),
    ("io.k8s.api.apps.v1.StatefulSetStatus", "conditions", "type"),
    ("io.k8s.api.batch.v1.JobStatus", "conditions", "type"),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "ownerReferences", "uid"),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers", ""),
];

fn add_patch_metadata(schemas: &mut Value) {
    for (schema, field, key) in PATCH_MERGE {
        let Some(prop) = schemas.pointer_mut(&format!("/{schema}/properties/{field}")) else {
            panic!("{schema} has no field {field}");
        };
        prop["x-kubernetes-patch-strategy"] = json!("merge");
        if !key.is_empty() {
            prop["x-kubernetes-patch-merge-key"] = json!(key);
            prop["x-kubernetes-list-type"] = json!("map");
            prop["x-kubernetes-list-map-keys"] = json!([key]);
        }
    }
}

fn main() {
    let mut k = Kinds {
        gen: SchemaGenerator::new(SchemaSettings::openapi3()),
        kinds: Map::new(),
    };
    k.add::<core::v1::Namespace>("", "v1", "Namespace");
    k.add::<core::v1::Pod>("", "v1", "Pod");
    k.add::<core::v1::Service>("", "v1", "Service");
    k.add::<core::v1::Endpoints>("", "v1", "Endpoints");
    k.add::<core::v1::ConfigMap>("", "v1", "ConfigMap");
    k.add::<core::v1::Secret>("", "v1", "Secret");
    k.add::<core::v1::Node>("", "v1", "Node");
    k.add::<core::v1::Event>("", "v1", "Event");
    k.add::<core::v1::ServiceAccount>("", "v1", "ServiceAccount");
    k.add::<apps::v1::Deployment>("apps", "v1", "Deployment");
    k.add::<apps::v1::ReplicaSet>("apps", "v1", "ReplicaSet");
    k.add::<apps::v1::DaemonSet>("apps", "v1", "DaemonSet");
    k.add::<apps::v1::StatefulSet>("apps", "v1", "StatefulSet");
    k.add::<apps::v1::ControllerRevision>("apps", "v1", "ControllerRevision");
    k.add::<batch::v1::Job>("batch", "v1", "Job");
    k.add::<batch::v1::CronJob>("batch", "v1", "CronJob");
    k.add::<autoscaling::v1::HorizontalPodAutoscaler>("autoscaling", "v1", "HorizontalPodAutoscaler");
    k.add::<autoscaling::v2::HorizontalPodAutoscaler>("autoscaling", "v2", "HorizontalPodAutoscaler");
    k.add::<autoscaling::v1::Scale>("autoscaling", "v1", "Scale");
    k.add::<networking::v1::NetworkPolicy>("networking.k8s.io", "v1", "NetworkPolicy");
    k.add::<discovery::v1::EndpointSlice>("discovery.k8s.io", "v1", "EndpointSlice");
    k.add::<coordination::v1::Lease>("coordination.k8s.io", "v1", "Lease");
    k.add::<node::v1::RuntimeClass>("node.k8s.io", "v1", "RuntimeClass");
    k.add::<events::v1::Event>("events.k8s.io", "v1", "Event");
    k.add::<rbac::v1::Role>("rbac.authorization.k8s.io", "v1", "Role");
    k.add::<rbac::v1::RoleBinding>("rbac.authorization.k8s.io", "v1", "RoleBinding");
    k.add::<rbac::v1::ClusterRole>("rbac.authorization.k8s.io", "v1", "ClusterRole");
    k.add::<rbac::v1::ClusterRoleBinding>("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding");
    let mut schemas = serde_json::to_value(k.gen.take_definitions()).expect("schemas serialise");
    wrap_refs(&mut schemas);
    add_patch_metadata(&mut schemas);
    let out = json!({"schemas": schemas, "kinds": k.kinds});
    println!("{}", serde_json::to_string(&out).expect("serialises"));
}
