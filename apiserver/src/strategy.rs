//! What is particular to one kind in the generic request path, as Kubernetes' registry
//! strategies: how its objects are named, what the server sets on a new one, what it reserves
//! beyond its key (a Service's ClusterIP and NodePorts), who may write it beyond RBAC's verbs,
//! and how it is deleted (gracefully, or after what it contains).
//!
//! The request path (`request`) asks [`of`] for the strategy of the resource addressed and
//! never branches on a resource's name: a new kind with something particular is one more
//! `Strategy` here, a kind with nothing particular gets the default.

use api::object;
use api::rbac::{Rbac, User};
use api::registry::Resource;
use serde_json::{json, Value};

use crate::admission::{self, Reservation, ServiceChange};
use crate::auth::Auth;

/// What is particular to one kind in the generic request path (Kubernetes' "registry
/// strategy"). Every method has the default of a kind with nothing particular.
pub trait Strategy: Sync {
    /// Why `name` cannot name an object of this kind (a DNS subdomain by default; a DNS label
    /// for Namespaces).
    fn name_problem(&self, name: &str) -> Option<String> {
        object::invalid_subdomain(name)
    }

    /// Why `user` may not write `obj` (named `name`) although RBAC lets them write the kind:
    /// the message of a 403. A node writes only its own Node; a Role or binding may grant only
    /// what its writer holds (RBAC's escalation rule).
    fn forbids(&self, _auth: &Auth, _user: &User, _obj: &Value, _name: &str) -> Option<String> {
        None
    }

    /// Whether a write to the object itself may change its status, where the kind has a
    /// `/status` subresource (otherwise the stored status is kept). A Namespace's may.
    fn main_endpoint_writes_status(&self) -> bool {
        false
    }

    /// Fields the server sets on a new object (a Namespace's status.phase Active).
    fn prepare_create(&self, _obj: &mut Value) {}

    /// What a new object reserves beyond its key (a Service's ClusterIP and NodePorts), filling
    /// in what it picked. Err: the field at fault and why, for a 422.
    fn allocate(&self, _obj: &mut Value) -> Result<Vec<Reservation>, (String, String)> {
        Ok(vec![])
    }

    /// Why an update of `old` to `new` is invalid although `new` is a valid object: the field
    /// at fault and why, for a 422 (a field that may not change once set).
    fn update_problem(&self, _old: &Value, _new: &Value) -> Option<(String, String)> {
        None
    }

    /// Why `user` may not make this change of `old` (Null for a create) to `new` although it
    /// may write the object: the message of a 403 (a node changing the labels that say what
    /// role it has).
    fn forbids_change(&self, _user: &User, _old: &Value, _new: &Value) -> Option<String> {
        None
    }

    /// What an update of `old` to `new` reserves and releases, completing `new`. Err: the field
    /// at fault and why, for a 422.
    fn reallocate(
        &self,
        _old: &Value,
        _new: &mut Value,
    ) -> Result<ServiceChange, (String, String)> {
        Ok(ServiceChange::default())
    }

    /// The reservation keys a stored object holds, released with it.
    fn held(&self, _obj: &Value) -> Vec<String> {
        vec![]
    }

    /// What a delete with grace period `grace` marks on the object before it decides how to
    /// delete it (a pod deleted with grace 0 is marked so, and goes at once).
    fn prepare_delete(&self, _obj: &mut Value, _grace: i64) {}

    /// Whether a delete must wait for a node to stop the object (a pod bound to a node, unless
    /// its grace period is 0): it is then only marked, and the node's final delete removes it.
    fn graceful(&self, _obj: &Value) -> bool {
        false
    }

    /// Whether a new object of this kind may go into a namespace being deleted (Events may:
    /// they report the deletion itself, as kube-apiserver's NamespaceLifecycle lets them).
    fn created_while_namespace_terminates(&self) -> bool {
        false
    }

    /// What an update through the object's own path keeps of the stored `old` in `new`
    /// (a Namespace's spec.finalizers, which only `/finalize` changes).
    fn keep_on_update(&self, _old: &Value, _new: &mut Value) {}
}

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The strategy of the kind `resource` serves.
pub fn of(resource: &Resource) -> &'static dyn Strategy {
    match (resource.group, resource.name) {
        ("", "namespaces") => &Namespaces,
        ("", "pods") => &Pods,
        ("", "services") => &Services,
        ("", "nodes") => &Nodes,
        ("coordination.k8s.io", "leases") => &Leases,
        ("" | "events.k8s.io", "events") => &Events,
        (RBAC_GROUP, "roles") => &Roles { resource: "roles" },
        (RBAC_GROUP, "clusterroles") => &Roles {
            resource: "clusterroles",
        },
        (RBAC_GROUP, "rolebindings") => &Bindings {
            resource: "rolebindings",
        },
        (RBAC_GROUP, "clusterrolebindings") => &Bindings {
            resource: "clusterrolebindings",
        },
        (api::knative::GROUP, "revisions") => &Knative {
            immutable_spec: true,
        },
        (api::knative::GROUP, _) => &Knative {
            immutable_spec: false,
        },
        _ => &Plain,
    }
}

/// Knative's kinds: named by DNS labels (Knative's rule: a name becomes hosts, labels and
/// other objects' names), a status only their controllers write (dropped on create: the node
/// routers trust a route's URL and traffic), and Revisions, immutable snapshots of what a
/// Configuration ran, whose spec never changes.
struct Knative {
    immutable_spec: bool,
}

impl Strategy for Knative {
    fn name_problem(&self, name: &str) -> Option<String> {
        object::invalid_label(name)
    }

    fn prepare_create(&self, obj: &mut Value) {
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
    }

    fn update_problem(&self, old: &Value, new: &Value) -> Option<(String, String)> {
        (self.immutable_spec && old["spec"] != new["spec"]).then(|| {
            (
                "spec".to_string(),
                "Immutable fields changed: a Revision's spec never changes; change its Configuration's or Service's template to make a new Revision".to_string(),
            )
        })
    }
}

/// Every kind with nothing particular.
struct Plain;

impl Strategy for Plain {}

/// Events (core and events.k8s.io): what goes on in a namespace, its deletion included.
struct Events;

impl Strategy for Events {
    fn created_while_namespace_terminates(&self) -> bool {
        true
    }
}

/// Namespaces: named by a DNS label, Active from their creation, their status written through
/// the object too. A delete marks the namespace Terminating and keeps it while its
/// `kubernetes` finalizer (spec.finalizers) is there: the namespace controller deletes what is
/// inside — gracefully, waiting for the contents' own finalizers — and then removes that
/// finalizer through `/finalize`, and the namespace goes.
struct Namespaces;

/// The finalizer of a namespace's contents (spec.finalizers), as Kubernetes names it.
const NAMESPACE_FINALIZER: &str = "kubernetes";

impl Strategy for Namespaces {
    fn name_problem(&self, name: &str) -> Option<String> {
        object::invalid_label(name)
    }

    fn main_endpoint_writes_status(&self) -> bool {
        true
    }

    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Active"});
        let mut finalizers = obj["spec"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !finalizers.contains(&json!(NAMESPACE_FINALIZER)) {
            finalizers.push(json!(NAMESPACE_FINALIZER));
        }
        obj["spec"]["finalizers"] = json!(finalizers);
    }

    fn keep_on_update(&self, old: &Value, new: &mut Value) {
        match old["spec"].get("finalizers") {
            Some(f) => new["spec"]["finalizers"] = f.clone(),
            None => {
                new.get_mut("spec")
                    .and_then(Value::as_object_mut)
                    .map(|spec| spec.remove("finalizers"));
            }
        }
    }

    fn prepare_delete(&self, obj: &mut Value, _grace: i64) {
        // A namespace from before finalizers were set gets one now: its contents go first.
        if obj["metadata"].get("deletionTimestamp").is_none() {
            obj["spec"]["finalizers"] = json!([NAMESPACE_FINALIZER]);
        }
        obj["status"]["phase"] = json!("Terminating");
    }

    fn graceful(&self, obj: &Value) -> bool {
        obj["spec"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    }
}

/// Pods: one bound to a node is deleted gracefully, by the node, unless with grace 0.
struct Pods;

impl Strategy for Pods {
    fn update_problem(&self, old: &Value, new: &Value) -> Option<(String, String)> {
        pod_spec_change_problem(&old["spec"], &new["spec"]).map(|why| ("spec".to_string(), why))
    }

    fn prepare_delete(&self, obj: &mut Value, grace: i64) {
        if grace == 0 {
            object::metadata_mut(obj).insert("deletionGracePeriodSeconds".into(), json!(0));
        }
    }

    fn graceful(&self, obj: &Value) -> bool {
        obj["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
            && obj["metadata"]["deletionGracePeriodSeconds"].as_i64() != Some(0)
    }
}

/// Where a pod's containers find their ServiceAccount's token, the cluster CA and their
/// namespace (what in-cluster clients read).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The ServiceAccount a pod runs as: `spec.serviceAccountName`, or the older
/// `spec.serviceAccount`, or `default`.
pub fn service_account_name(pod: &Value) -> &str {
    let spec = &pod["spec"];
    [&spec["serviceAccountName"], &spec["serviceAccount"]]
        .into_iter()
        .find_map(|v| v.as_str().filter(|s| !s.is_empty()))
        .unwrap_or("default")
}

/// The ServiceAccount admission of Kubernetes, for a new pod: its ServiceAccount is `default`
/// unless it names one (`spec.serviceAccount`, the old name, is kept equal); and it gets a
/// projected volume `kube-api-access-<random>` (a token for its ServiceAccount, bound to the
/// pod and renewed by its node; the `kube-root-ca.crt` ConfigMap; its namespace) mounted
/// read-only in every container at [`SERVICE_ACCOUNT_DIR`], unless a container mounts
/// something there already, or `automountServiceAccountToken` is false on the pod, or on
/// `account` (the ServiceAccount's object, when it exists) where the pod does not say.
pub fn admit_service_account(pod: &mut Value, account: impl FnOnce(&str) -> Option<Value>) {
    let name = service_account_name(pod).to_string();
    let spec = &mut pod["spec"];
    spec["serviceAccountName"] = json!(name);
    spec["serviceAccount"] = json!(name);
    let automount = match spec["automountServiceAccountToken"].as_bool() {
        Some(pod_says) => pod_says,
        None => account(&name)
            .and_then(|sa| sa["automountServiceAccountToken"].as_bool())
            .unwrap_or(true),
    };
    if !automount {
        return;
    }
    let already = |c: &Value| {
        c["volumeMounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["mountPath"] == SERVICE_ACCOUNT_DIR))
    };
    let suffix: String = (0..5)
        .map(|_| {
            let n = rand::random::<u8>() % 36;
            char::from_digit(n as u32, 36).expect("below 36")
        })
        .collect();
    let name = format!("kube-api-access-{suffix}");
    let mut mounted = false;
    for group in ["initContainers", "containers"] {
        for c in spec[group].as_array_mut().into_iter().flatten() {
            if already(c) {
                continue;
            }
            let mount = json!({"name": name, "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": true});
            match c["volumeMounts"].as_array_mut() {
                Some(m) => m.push(mount),
                None => c["volumeMounts"] = json!([mount]),
            }
            mounted = true;
        }
    }
    if !mounted {
        return;
    }
    let volume = json!({"name": name, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}});
    match spec["volumes"].as_array_mut() {
        Some(v) => v.push(volume),
        None => spec["volumes"] = json!([volume]),
    }
}

/// Services: a ClusterIP and NodePorts, each a key of its own reserved in the Service's own
/// transactions (see `admission`).
struct Services;

impl Strategy for Services {
    fn allocate(&self, obj: &mut Value) -> Result<Vec<Reservation>, (String, String)> {
        admission::service_create(obj)
    }

    fn reallocate(&self, old: &Value, new: &mut Value) -> Result<ServiceChange, (String, String)> {
        admission::service_update(old, new)
    }

    fn held(&self, obj: &Value) -> Vec<String> {
        admission::service_reservations(obj)
    }
}

/// Nodes: a node's agent writes only its own Node; its pod range, once given, is its for life
/// (its pods hold addresses of it, as kube-apiserver's Node validation says).
struct Nodes;

impl Strategy for Nodes {
    fn forbids(&self, _auth: &Auth, user: &User, _obj: &Value, name: &str) -> Option<String> {
        let node = user.node_name()?;
        (name != node).then(|| {
            format!("node {node:?} may not write the Node {name:?}: a node writes only its own")
        })
    }

    fn forbids_change(&self, user: &User, old: &Value, new: &Value) -> Option<String> {
        user.node_name()?;
        let changed = restricted_labels(new, old);
        (!changed.is_empty())
            .then(|| format!("is not allowed to modify labels: {}", changed.join(", ")))
    }

    fn update_problem(&self, old: &Value, new: &Value) -> Option<(String, String)> {
        for field in ["podCIDR", "podCIDRs"] {
            let before = &old["spec"][field];
            let given = !before.is_null() && before != "" && before != &json!([]);
            if given && &new["spec"][field] != before {
                return Some((
                    format!("spec.{field}"),
                    format!("may not change once set (it is {before})"),
                ));
            }
        }
        None
    }
}

/// The labels a node may not set or change on its own Node (NodeRestriction): those that say
/// what role it has or what it may run, under `node-role.kubernetes.io/` and
/// `node-restriction.kubernetes.io/` — whatever differs between `new` and `old`.
fn restricted_labels(new: &Value, old: &Value) -> Vec<String> {
    let restricted = |k: &String| {
        let prefix = k.split_once('/').map_or("", |(p, _)| p);
        prefix == "node-role.kubernetes.io"
            || prefix == "node-restriction.kubernetes.io"
            || prefix.ends_with(".node-restriction.kubernetes.io")
    };
    let empty = serde_json::Map::new();
    let labels = |v: &Value| {
        v["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_else(|| empty.clone())
    };
    let (new, old) = (labels(new), labels(old));
    let mut keys: Vec<String> = new
        .keys()
        .chain(old.keys())
        .filter(|k| restricted(k) && new.get(*k) != old.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Leases: a node creates and renews only its own, in `kube-node-lease` (the name of a create
/// is in the body, beyond what the authorizer sees).
struct Leases;

impl Strategy for Leases {
    fn forbids(&self, _auth: &Auth, user: &User, obj: &Value, name: &str) -> Option<String> {
        let node = user.node_name()?;
        let ns = object::namespace(obj).unwrap_or_default();
        (ns != "kube-node-lease" || name != node).then(|| {
            format!("node {node:?} may only write its own Lease (kube-node-lease/{node}), not {ns}/{name}")
        })
    }
}

/// Why a pod's spec may not change from `old` to `new`, as kube-apiserver's pod update rule:
/// only images, `activeDeadlineSeconds` (set, or made shorter), added tolerations and removed
/// scheduling gates may change (whoever writes: a node moving its pod to another node with
/// another command is refused like anyone else).
pub fn pod_spec_change_problem(old: &Value, new: &Value) -> Option<String> {
    if old == new {
        return None;
    }
    let mut allowed = new.clone();
    // Images, container by container (same containers, same order).
    for group in ["containers", "initContainers"] {
        let (Some(was), Some(now)) = (old[group].as_array(), allowed[group].as_array_mut()) else {
            continue;
        };
        if was.len() == now.len() {
            for (w, n) in was.iter().zip(now.iter_mut()) {
                if w["name"] == n["name"] {
                    n["image"] = w["image"].clone();
                }
            }
        }
    }
    // activeDeadlineSeconds: set where unset, or lowered, never removed.
    let deadline_ok = match (
        old["activeDeadlineSeconds"].as_i64(),
        new["activeDeadlineSeconds"].as_i64(),
    ) {
        (None, Some(n)) => n > 0,
        (Some(o), Some(n)) => 0 < n && n <= o,
        _ => false,
    };
    if deadline_ok {
        allowed["activeDeadlineSeconds"] = old["activeDeadlineSeconds"].clone();
    }
    // Tolerations: the old ones kept, new ones added.
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let (was, now) = (list(&old["tolerations"]), list(&new["tolerations"]));
    if was.iter().all(|t| now.contains(t)) {
        allowed["tolerations"] = old["tolerations"].clone();
    }
    // Scheduling gates: only removed.
    let (was, now) = (list(&old["schedulingGates"]), list(&new["schedulingGates"]));
    if now.iter().all(|g| was.contains(g)) {
        allowed["schedulingGates"] = old["schedulingGates"].clone();
    }
    let strip_nulls = |v: &mut Value| {
        if let Some(m) = v.as_object_mut() {
            m.retain(|_, x| !x.is_null());
        }
    };
    let mut old = old.clone();
    strip_nulls(&mut old);
    strip_nulls(&mut allowed);
    (allowed != old).then(|| {
        let keys = |v: &Value| v.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
        let changed: std::collections::BTreeSet<String> = keys(&allowed)
            .into_iter()
            .chain(keys(&old))
            .filter(|k| allowed.get(k.as_str()) != old.get(k.as_str()))
            .map(|k| format!("spec.{k}"))
            .collect();
        let changed: Vec<String> = changed.into_iter().collect();
        format!(
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.schedulingGates` (only removals) (changed: {})",
            changed.join(", ")
        )
    })
}

/// Whether `user` may `verb` the RBAC `resource` named `role` in `namespace`.
fn may(rbac: &Rbac, user: &User, verb: &str, resource: &str, namespace: &str, role: &str) -> bool {
    let a = api::rbac::Attributes {
        verb,
        resource: Some(api::rbac::ResourceAttributes {
            group: RBAC_GROUP,
            resource,
            namespace,
            name: role,
            ..Default::default()
        }),
        path: "",
    };
    rbac.allows(user, &a)
}

/// Roles and ClusterRoles (`resource`): RBAC's escalation rule, a role may grant only what its
/// writer holds, unless the writer may `escalate` it.
struct Roles {
    resource: &'static str,
}

impl Strategy for Roles {
    fn forbids(&self, auth: &Auth, user: &User, obj: &Value, name: &str) -> Option<String> {
        let rbac = auth.rbac();
        let ns = object::namespace(obj).unwrap_or("");
        if may(&rbac, user, "escalate", self.resource, ns, name) {
            return None;
        }
        let rules = obj["rules"].as_array().cloned().unwrap_or_default();
        let why = rbac.covers(user, ns, &rules).err()?;
        Some(format!("{} {name:?} is forbidden: {why}", self.resource))
    }
}

/// RoleBindings and ClusterRoleBindings (`resource`): RBAC's escalation rule, a binding may be
/// made only by one who holds what the role grants, or who may `bind` the role.
struct Bindings {
    resource: &'static str,
}

impl Strategy for Bindings {
    fn forbids(&self, auth: &Auth, user: &User, obj: &Value, name: &str) -> Option<String> {
        let rbac = auth.rbac();
        let ns = object::namespace(obj).unwrap_or("");
        let kind = obj["roleRef"]["kind"].as_str().unwrap_or("");
        let role = obj["roleRef"]["name"].as_str().unwrap_or("");
        let resource = if kind == "Role" {
            "roles"
        } else {
            "clusterroles"
        };
        if may(&rbac, user, "bind", resource, ns, role) {
            return None;
        }
        let outcome = match rbac.rules_of_ref(ns, kind, role) {
            Some(rules) => rbac.covers(user, ns, &rules),
            None => Err(format!("roleRef: the {kind} {role:?} does not exist")),
        };
        let why = outcome.err()?;
        Some(format!("{} {name:?} is forbidden: {why}", self.resource))
    }
}
