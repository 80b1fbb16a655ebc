//! Authorization decisions: Kubernetes RBAC over Role/ClusterRole/RoleBinding/ClusterRoleBinding
//! objects, the node authorizer's rules, and the default cluster roles. Pure: the API server
//! hands in the objects and the request, and gets a yes or no.

use std::collections::HashMap;

use serde_json::{json, Value};

/// Who is asking, as authentication established it (or impersonation replaced it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    /// Empty when the credential carries none.
    pub uid: String,
    /// Extra attributes (impersonation's `Impersonate-Extra-*`), reported by reviews.
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// The group whose members may do anything, as in Kubernetes (the admin token's user is in it).
pub const MASTERS: &str = "system:masters";
/// The group every node's user is in; node users are named `system:node:<node name>`.
pub const NODES: &str = "system:nodes";

impl User {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The node this user speaks for, if it is a node's credential.
    pub fn node_name(&self) -> Option<&str> {
        self.name
            .strip_prefix("system:node:")
            .filter(|_| self.in_group(NODES))
    }

    /// `(namespace, name)` if this is a ServiceAccount's user.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        self.name
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
    }
}

/// What a request wants to do, in RBAC's terms.
#[derive(Clone, Debug, Default)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    /// Set for resource requests.
    pub resource: Option<ResourceAttributes<'a>>,
    /// The URL path of a non-resource request (`/version`, `/apis`, ...).
    pub path: &'a str,
}

#[derive(Clone, Debug, Default)]
pub struct ResourceAttributes<'a> {
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl ResourceAttributes<'_> {
    /// `pods` or `pods/status`.
    pub fn full_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// The message Kubernetes gives a forbidden request.
pub fn forbidden_message(user: &User, a: &Attributes) -> String {
    match &a.resource {
        Some(r) => {
            let what = match r.name {
                "" => r.full_resource().to_string(),
                name => format!("{} {name:?}", r.full_resource()),
            };
            let scope = match r.namespace {
                "" => "at the cluster scope".to_string(),
                ns => format!("in the namespace {ns:?}"),
            };
            format!(
                "{what} is forbidden: User {:?} cannot {} resource {:?} in API group {:?} {scope}",
                user.name,
                a.verb,
                r.full_resource(),
                r.group
            )
        }
        None => format!(
            "forbidden: User {:?} cannot {} path {:?}",
            user.name, a.verb, a.path
        ),
    }
}

#[derive(Clone, Debug, Default)]
pub struct PolicyRule {
    verbs: Vec<String>,
    api_groups: Vec<String>,
    resources: Vec<String>,
    resource_names: Vec<String>,
    non_resource_urls: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl PolicyRule {
    fn from_json(v: &Value) -> PolicyRule {
        PolicyRule {
            verbs: strings(&v["verbs"]),
            api_groups: strings(&v["apiGroups"]),
            resources: strings(&v["resources"]),
            resource_names: strings(&v["resourceNames"]),
            non_resource_urls: strings(&v["nonResourceURLs"]),
        }
    }

    fn rules_of(role: &Value) -> Vec<PolicyRule> {
        role["rules"]
            .as_array()
            .map(|r| r.iter().map(PolicyRule::from_json).collect())
            .unwrap_or_default()
    }

    /// Whether this rule grants the request (Kubernetes' `RuleAllows`).
    pub fn allows(&self, a: &Attributes) -> bool {
        let any = |list: &[String], x: &str| list.iter().any(|v| v == "*" || v == x);
        if !any(&self.verbs, a.verb) {
            return false;
        }
        match &a.resource {
            Some(r) => {
                let full = r.full_resource();
                let resource_ok = self.resources.iter().any(|v| {
                    v == "*"
                        || *v == full
                        || (!r.subresource.is_empty()
                            && v.strip_prefix("*/") == Some(r.subresource))
                });
                any(&self.api_groups, r.group)
                    && resource_ok
                    && (self.resource_names.is_empty()
                        || self.resource_names.iter().any(|n| n == r.name))
            }
            None => self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || u == a.path
                    || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
            }),
        }
    }

    /// The (verb, group, resource) triples this rule grants, for escalation checks; wildcards
    /// stay literal, so only a holder of the same wildcard covers them.
    fn grants(&self) -> Vec<(String, String, String, String)> {
        let mut out = Vec::new();
        let names: Vec<String> = if self.resource_names.is_empty() {
            vec![String::new()]
        } else {
            self.resource_names.clone()
        };
        for verb in &self.verbs {
            for group in &self.api_groups {
                for resource in &self.resources {
                    for name in &names {
                        out.push((verb.clone(), group.clone(), resource.clone(), name.clone()));
                    }
                }
            }
        }
        out
    }
}

#[derive(Clone, Debug)]
struct Binding {
    /// None for a ClusterRoleBinding.
    namespace: Option<String>,
    role_kind: String,
    role_name: String,
    subjects: Vec<(String, String, String)>, // kind, name, namespace
}

impl Binding {
    fn from_json(v: &Value, namespaced: bool) -> Binding {
        Binding {
            namespace: namespaced.then(|| {
                v["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            }),
            role_kind: v["roleRef"]["kind"].as_str().unwrap_or("").to_string(),
            role_name: v["roleRef"]["name"].as_str().unwrap_or("").to_string(),
            subjects: v["subjects"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|s| {
                            let f = |k: &str| s[k].as_str().unwrap_or("").to_string();
                            (f("kind"), f("name"), f("namespace"))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn applies_to(&self, user: &User) -> bool {
        self.subjects
            .iter()
            .any(|(kind, name, ns)| match kind.as_str() {
                "User" => *name == user.name,
                "Group" => user.in_group(name),
                "ServiceAccount" => {
                    let ns = if ns.is_empty() {
                        self.namespace.as_deref().unwrap_or("")
                    } else {
                        ns
                    };
                    user.name == format!("system:serviceaccount:{ns}:{name}")
                }
                _ => false,
            })
    }
}

/// Every RBAC object of the cluster, parsed.
#[derive(Clone, Debug, Default)]
pub struct Rbac {
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    bindings: Vec<Binding>,
}

impl Rbac {
    pub fn from_objects(
        cluster_roles: &[Value],
        roles: &[Value],
        cluster_role_bindings: &[Value],
        role_bindings: &[Value],
    ) -> Rbac {
        let name = |v: &Value, f: &str| v["metadata"][f].as_str().unwrap_or("").to_string();
        Rbac {
            cluster_roles: cluster_roles
                .iter()
                .map(|r| (name(r, "name"), PolicyRule::rules_of(r)))
                .collect(),
            roles: roles
                .iter()
                .map(|r| {
                    (
                        (name(r, "namespace"), name(r, "name")),
                        PolicyRule::rules_of(r),
                    )
                })
                .collect(),
            bindings: cluster_role_bindings
                .iter()
                .map(|b| Binding::from_json(b, false))
                .chain(role_bindings.iter().map(|b| Binding::from_json(b, true)))
                .collect(),
        }
    }

    fn role_rules(&self, b: &Binding) -> &[PolicyRule] {
        let rules = match (b.role_kind.as_str(), &b.namespace) {
            ("ClusterRole", _) => self.cluster_roles.get(&b.role_name),
            ("Role", Some(ns)) => self.roles.get(&(ns.clone(), b.role_name.clone())),
            _ => None,
        };
        rules.map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether RBAC (or membership of system:masters) grants the request.
    pub fn allows(&self, user: &User, a: &Attributes) -> bool {
        if user.in_group(MASTERS) {
            return true;
        }
        let namespace = a.resource.as_ref().map(|r| r.namespace).unwrap_or("");
        self.bindings.iter().any(|b| {
            // A RoleBinding grants only inside its namespace.
            let in_scope = match &b.namespace {
                None => true,
                Some(ns) => !namespace.is_empty() && ns == namespace,
            };
            in_scope && b.applies_to(user) && self.role_rules(b).iter().any(|r| r.allows(a))
        })
    }

    /// Whether `user` holds every permission of `rules` in `namespace` ("" for cluster-wide):
    /// Kubernetes refuses to let anybody grant what they do not have themselves.
    pub fn covers(&self, user: &User, namespace: &str, rules: &[Value]) -> Result<(), String> {
        for rule in rules.iter().map(PolicyRule::from_json) {
            for (verb, group, resource, name) in rule.grants() {
                let (resource, sub) = resource.split_once('/').unwrap_or((&resource, ""));
                let a = Attributes {
                    verb: &verb,
                    resource: Some(ResourceAttributes {
                        group: &group,
                        resource,
                        subresource: sub,
                        namespace,
                        name: &name,
                    }),
                    path: "",
                };
                if !self.allows(user, &a) {
                    return Err(format!(
                        "user {:?} cannot grant {verb} on {resource}{} in API group {group:?}: they do not hold it themselves",
                        user.name,
                        if sub.is_empty() { String::new() } else { format!("/{sub}") }
                    ));
                }
            }
            for url in &rule.non_resource_urls {
                for verb in &rule.verbs {
                    let a = Attributes {
                        verb,
                        resource: None,
                        path: url,
                    };
                    if !self.allows(user, &a) {
                        return Err(format!(
                            "user {:?} cannot grant {verb} on {url}: they do not hold it themselves",
                            user.name
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The rules `user` holds in `namespace` ("" for the cluster scope) as
    /// SelfSubjectRulesReview lists them: (resource rules, non-resource rules).
    pub fn rules_for(&self, user: &User, namespace: &str) -> (Vec<Value>, Vec<Value>) {
        if user.in_group(MASTERS) {
            return (
                vec![json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})],
                vec![json!({"verbs": ["*"], "nonResourceURLs": ["*"]})],
            );
        }
        let (mut resources, mut non_resources) = (Vec::new(), Vec::new());
        for b in &self.bindings {
            let in_scope = b.namespace.as_ref().is_none_or(|ns| ns == namespace);
            if !in_scope || !b.applies_to(user) {
                continue;
            }
            for r in self.role_rules(b) {
                if !r.resources.is_empty() {
                    let mut rule = json!({"verbs": r.verbs, "apiGroups": r.api_groups,
                                          "resources": r.resources});
                    if !r.resource_names.is_empty() {
                        rule["resourceNames"] = json!(r.resource_names);
                    }
                    resources.push(rule);
                }
                if !r.non_resource_urls.is_empty() {
                    non_resources
                        .push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
                }
            }
        }
        (resources, non_resources)
    }

    /// The rules of the role a binding refers to, if it exists.
    pub fn rules_of_ref(&self, namespace: &str, kind: &str, name: &str) -> Option<Vec<Value>> {
        let rules = match kind {
            "ClusterRole" => self.cluster_roles.get(name)?,
            "Role" => self.roles.get(&(namespace.to_string(), name.to_string()))?,
            _ => return None,
        };
        Some(
            rules
                .iter()
                .map(|r| {
                    json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources,
                           "resourceNames": r.resource_names, "nonResourceURLs": r.non_resource_urls})
                })
                .collect(),
        )
    }
}

/// What the node authorizer knows of the cluster: which node a pod is bound to, and whether
/// a pod bound to a node references an object (the graph of [`crate::nodegraph`]).
pub trait NodeFacts {
    fn pod_node(&self, namespace: &str, name: &str) -> Option<String>;
    fn references(&self, node: &str, kind: &str, namespace: &str, name: &str) -> bool;
}

/// What the node authorizer decides for a node's own credential, as Kubernetes' node
/// authorizer and `system:node` role: a node reads what it needs to run its pods and program
/// the network (nodes, pods, Services and their endpoints, NetworkPolicies, namespaces), reads
/// Secrets, ConfigMaps, claims and ServiceAccounts only while a pod bound to it references
/// them, asks tokens only for its pods' ServiceAccounts, and writes only its own Node and
/// Lease, its pods' status and deletion, and Events. What a write may change (a Node's
/// labels, a Lease's name in the body, a token's pod) is checked on the object
/// (NodeRestriction, in the API's strategies).
pub fn node_allows(node: &str, a: &Attributes, facts: &impl NodeFacts) -> bool {
    let Some(r) = &a.resource else {
        return matches!(a.verb, "get") && is_discovery_path(a.path);
    };
    let reads = matches!(a.verb, "get" | "list" | "watch");
    let own = |name: &str| name == node;
    match (r.group, r.resource, r.subresource) {
        ("", "nodes", "") => {
            reads
                || (matches!(a.verb, "create" | "update" | "patch")
                    && (own(r.name) || (r.name.is_empty() && a.verb == "create")))
        }
        ("", "nodes", "status") => matches!(a.verb, "get" | "update" | "patch") && own(r.name),
        ("coordination.k8s.io", "leases", "") => {
            r.namespace == "kube-node-lease"
                && matches!(a.verb, "get" | "create" | "update" | "patch")
                && (own(r.name) || (r.name.is_empty() && a.verb == "create"))
        }
        ("", "pods", "") => {
            reads
                || (a.verb == "delete"
                    && facts.pod_node(r.namespace, r.name).as_deref() == Some(node))
        }
        ("", "pods", "status") => {
            matches!(a.verb, "get" | "update" | "patch")
                && facts.pod_node(r.namespace, r.name).as_deref() == Some(node)
        }
        ("", "services" | "endpoints" | "namespaces", "")
        | ("discovery.k8s.io", "endpointslices", "")
        | ("networking.k8s.io", "networkpolicies", "")
        // The node's function router: where each Knative route's traffic goes.
        | (crate::knative::GROUP, "routes" | "revisions", "") => reads,
        // ... which wakes a revision scaled to zero (`revisions/activate`: 0 → 1, no more).
        (crate::knative::GROUP, "revisions", "activate") => a.verb == "create",
        (
            "",
            kind @ ("secrets" | "configmaps" | "persistentvolumeclaims" | "serviceaccounts"),
            "",
        ) => a.verb == "get" && facts.references(node, kind, r.namespace, r.name),
        // Pulls from the cluster registry, of what its pods run.
        ("registry.drover.dev", "repositories", "") => {
            a.verb == "get" && facts.references(node, "repositories", r.namespace, r.name)
        }
        ("", "serviceaccounts", "token") => {
            a.verb == "create" && facts.references(node, "serviceaccounts", r.namespace, r.name)
        }
        ("", "events", "") | ("events.k8s.io", "events", "") => {
            matches!(a.verb, "create" | "update" | "patch")
        }
        // A node checks the tokens callers of its log endpoint present.
        ("authentication.k8s.io", "tokenreviews", "") => a.verb == "create",
        _ => false,
    }
}

/// Paths every authenticated user may read: discovery, OpenAPI, version, health.
pub fn is_discovery_path(path: &str) -> bool {
    matches!(
        path,
        "/api" | "/apis" | "/version" | "/healthz" | "/livez" | "/readyz" | "/openapi/v2"
    ) || path.starts_with("/api/")
        || path.starts_with("/apis/")
        || path.starts_with("/openapi/")
}

/// A rule as JSON, for the default roles below.
fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "delete",
    "deletecollection",
    "patch",
    "update",
];

/// The namespaced resources the `view`/`edit`/`admin` roles cover, by API group.
const WORKLOADS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "pods",
            "pods/log",
            "pods/status",
            "services",
            "services/status",
            "endpoints",
            "configmaps",
            "serviceaccounts",
            "events",
            "replicationcontrollers",
            "persistentvolumeclaims",
        ],
    ),
    (
        "apps",
        &[
            "deployments",
            "deployments/scale",
            "deployments/status",
            "replicasets",
            "replicasets/scale",
            "replicasets/status",
            "daemonsets",
            "daemonsets/status",
            "statefulsets",
            "statefulsets/scale",
            "statefulsets/status",
            "controllerrevisions",
        ],
    ),
    (
        "batch",
        &["jobs", "jobs/status", "cronjobs", "cronjobs/status"],
    ),
    (
        "autoscaling",
        &[
            "horizontalpodautoscalers",
            "horizontalpodautoscalers/status",
        ],
    ),
    ("networking.k8s.io", &["networkpolicies"]),
    ("discovery.k8s.io", &["endpointslices"]),
    ("events.k8s.io", &["events"]),
    // The cluster registry's repositories (`/v2/NAMESPACE/NAME`): get pulls, create pushes.
    ("registry.drover.dev", &["repositories"]),
];

/// The default ClusterRoles (cluster-admin, admin, edit, view, system:discovery) and the
/// bindings that give system:masters everything and every authenticated user discovery.
pub fn default_roles() -> (Vec<Value>, Vec<Value>) {
    let view_rules: Vec<Value> = WORKLOADS
        .iter()
        .map(|(g, r)| rule(&[g], r, READ))
        .chain([rule(&[""], &["namespaces"], READ)])
        .collect();
    let mut edit_rules = view_rules.clone();
    edit_rules.extend(WORKLOADS.iter().map(|(g, r)| {
        let writable: Vec<&str> = r
            .iter()
            .copied()
            .filter(|r| !r.ends_with("/status") && !r.ends_with("/log"))
            .filter(|r| !matches!(*r, "events" | "controllerrevisions"))
            .collect();
        rule(&[g], &writable, WRITE)
    }));
    edit_rules.push(rule(&[""], &["secrets"], READ_WRITE));
    // Streams into pods (authorized as `create`), as Kubernetes' edit role has them.
    edit_rules.push(rule(
        &[""],
        &["pods/attach", "pods/exec", "pods/portforward"],
        READ_WRITE,
    ));
    edit_rules.push(rule(
        &[""],
        &["pods/eviction", "serviceaccounts/token"],
        &["create"],
    ));
    let mut admin_rules = edit_rules.clone();
    admin_rules.push(rule(
        &["rbac.authorization.k8s.io"],
        &["roles", "rolebindings"],
        READ_WRITE,
    ));
    let cluster_role = |name: &str, rules: Vec<Value>| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
               "rules": rules})
    };
    let mut roles = vec![
        cluster_role(
            "cluster-admin",
            vec![
                rule(&["*"], &["*"], &["*"]),
                json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
            ],
        ),
        cluster_role("admin", admin_rules),
        cluster_role("edit", edit_rules),
        cluster_role("view", view_rules),
        cluster_role(
            "system:discovery",
            vec![
                json!({"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*", "/version", "/version/", "/healthz", "/livez", "/readyz"], "verbs": ["get"]}),
            ],
        ),
    ];
    roles.push(cluster_role(
        "system:basic-user",
        vec![
            rule(
                &["authorization.k8s.io"],
                &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                &["create"],
            ),
            rule(
                &["authentication.k8s.io"],
                &["selfsubjectreviews"],
                &["create"],
            ),
        ],
    ));
    let binding = |name: &str, role: &str, group: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]})
    };
    let bindings = vec![
        binding("cluster-admin", "cluster-admin", MASTERS),
        binding(
            "system:discovery",
            "system:discovery",
            "system:authenticated",
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            "system:authenticated",
        ),
    ];
    (roles, bindings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    fn res<'a>(verb: &'a str, group: &'a str, resource: &'a str, ns: &'a str) -> Attributes<'a> {
        Attributes {
            verb,
            resource: Some(ResourceAttributes {
                group,
                resource,
                namespace: ns,
                ..Default::default()
            }),
            path: "",
        }
    }

    fn defaults_plus(bindings: &[Value]) -> Rbac {
        let (roles, mut crbs) = default_roles();
        let mut rbs = Vec::new();
        for b in bindings {
            if b["kind"] == "RoleBinding" {
                rbs.push(b.clone());
            } else {
                crbs.push(b.clone());
            }
        }
        Rbac::from_objects(&roles, &[], &crbs, &rbs)
    }

    #[test]
    fn masters_may_do_anything_and_strangers_only_discovery() {
        let rbac = defaults_plus(&[]);
        let admin = user("admin", &[MASTERS, "system:authenticated"]);
        let sa = user("system:serviceaccount:default:x", &["system:authenticated"]);
        assert!(rbac.allows(&admin, &res("delete", "", "nodes", "")));
        assert!(!rbac.allows(&sa, &res("list", "", "pods", "default")));
        let version = Attributes {
            verb: "get",
            resource: None,
            path: "/version",
        };
        assert!(rbac.allows(&sa, &version));
        let apis = Attributes {
            verb: "get",
            resource: None,
            path: "/apis/apps/v1",
        };
        assert!(rbac.allows(&sa, &apis));
    }

    #[test]
    fn a_role_binding_grants_its_role_only_in_its_namespace() {
        let rb = json!({"kind": "RoleBinding", "metadata": {"name": "v", "namespace": "shop"},
            "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "x", "namespace": "default"}]});
        let rbac = defaults_plus(&[rb]);
        let sa = user("system:serviceaccount:default:x", &["system:authenticated"]);
        assert!(rbac.allows(&sa, &res("list", "", "pods", "shop")));
        assert!(rbac.allows(&sa, &res("get", "apps", "deployments", "shop")));
        assert!(!rbac.allows(&sa, &res("create", "", "pods", "shop")));
        assert!(
            !rbac.allows(&sa, &res("list", "", "secrets", "shop")),
            "view excludes secrets"
        );
        assert!(!rbac.allows(&sa, &res("list", "", "pods", "default")));
        assert!(
            !rbac.allows(&sa, &res("list", "", "pods", "")),
            "not across namespaces"
        );
    }

    #[test]
    fn editors_write_workloads_but_neither_bind_pods_nor_grant_roles() {
        let rb = json!({"kind": "RoleBinding", "metadata": {"name": "e", "namespace": "shop"},
            "roleRef": {"kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": "ed"}]});
        let rbac = defaults_plus(&[rb]);
        let ed = user("ed", &["system:authenticated"]);
        assert!(rbac.allows(&ed, &res("create", "apps", "deployments", "shop")));
        assert!(rbac.allows(&ed, &res("get", "", "secrets", "shop")));
        let mut bind = res("create", "", "pods", "shop");
        if let Some(r) = bind.resource.as_mut() {
            r.subresource = "binding";
        }
        assert!(!rbac.allows(&ed, &bind), "binding is the scheduler's");
        assert!(!rbac.allows(
            &ed,
            &res(
                "create",
                "rbac.authorization.k8s.io",
                "rolebindings",
                "shop"
            )
        ));
    }

    #[test]
    fn rules_match_subresources_names_and_wildcards() {
        let r = PolicyRule::from_json(&json!({"apiGroups": ["apps"], "resources": ["*/scale"],
            "verbs": ["update"], "resourceNames": ["web"]}));
        let mut a = res("update", "apps", "deployments", "d");
        if let Some(x) = a.resource.as_mut() {
            x.subresource = "scale";
            x.name = "web";
        }
        assert!(r.allows(&a));
        if let Some(x) = a.resource.as_mut() {
            x.name = "other";
        }
        assert!(!r.allows(&a));
        let urls =
            PolicyRule::from_json(&json!({"nonResourceURLs": ["/healthz/*"], "verbs": ["get"]}));
        assert!(urls.allows(&Attributes {
            verb: "get",
            resource: None,
            path: "/healthz/etcd"
        }));
        assert!(!urls.allows(&Attributes {
            verb: "get",
            resource: None,
            path: "/version"
        }));
    }

    #[test]
    fn nobody_grants_what_they_do_not_hold() {
        let rb = json!({"kind": "RoleBinding", "metadata": {"name": "e", "namespace": "shop"},
            "roleRef": {"kind": "ClusterRole", "name": "admin"},
            "subjects": [{"kind": "User", "name": "alice"}]});
        let rbac = defaults_plus(&[rb]);
        let alice = user("alice", &["system:authenticated"]);
        let pods = [rule(&[""], &["pods"], &["get", "create"])];
        assert!(rbac.covers(&alice, "shop", &pods).is_ok());
        assert!(rbac.covers(&alice, "default", &pods).is_err());
        let nodes = [rule(&[""], &["nodes"], &["get"])];
        assert!(rbac.covers(&alice, "shop", &nodes).is_err());
        let everything = [rule(&["*"], &["*"], &["*"])];
        assert!(rbac.covers(&alice, "shop", &everything).is_err());
    }

    #[test]
    fn nodes_change_only_their_own_node_lease_and_pods_and_read_only_what_their_pods_use() {
        struct Facts;
        impl NodeFacts for Facts {
            fn pod_node(&self, ns: &str, name: &str) -> Option<String> {
                (ns == "default" && name == "mine").then(|| "n1".to_string())
            }
            fn references(&self, node: &str, kind: &str, ns: &str, name: &str) -> bool {
                node == "n1" && ns == "default" && name == "used" && kind != "pods"
            }
        }
        let on = &Facts;
        let named = |verb: &'static str,
                     group: &'static str,
                     resource: &'static str,
                     sub: &'static str,
                     ns: &'static str,
                     name: &'static str| Attributes {
            verb,
            resource: Some(ResourceAttributes {
                group,
                resource,
                subresource: sub,
                namespace: ns,
                name,
            }),
            path: "",
        };
        let yes = [
            named("update", "", "nodes", "", "", "n1"),
            named("patch", "", "nodes", "status", "", "n1"),
            named("list", "", "nodes", "", "", ""),
            named("delete", "", "pods", "", "default", "mine"),
            named("patch", "", "pods", "status", "default", "mine"),
            named("watch", "", "pods", "", "", ""),
            named(
                "update",
                "coordination.k8s.io",
                "leases",
                "",
                "kube-node-lease",
                "n1",
            ),
            named(
                "create",
                "coordination.k8s.io",
                "leases",
                "",
                "kube-node-lease",
                "",
            ),
            named("get", "", "secrets", "", "default", "used"),
            named("get", "", "configmaps", "", "default", "used"),
            named("create", "", "serviceaccounts", "token", "default", "used"),
            named("list", "discovery.k8s.io", "endpointslices", "", "", ""),
            named("watch", "networking.k8s.io", "networkpolicies", "", "", ""),
            named("create", "", "events", "", "default", ""),
        ];
        for a in &yes {
            assert!(node_allows("n1", a, on), "{a:?}");
        }
        let no = [
            named("update", "", "nodes", "", "", "n2"),
            named("delete", "", "nodes", "", "", "n1"),
            named("delete", "", "pods", "", "default", "theirs"),
            named("patch", "", "pods", "", "default", "mine"),
            named("create", "", "pods", "", "default", ""),
            named("patch", "", "pods", "status", "default", "theirs"),
            named(
                "update",
                "coordination.k8s.io",
                "leases",
                "",
                "kube-node-lease",
                "n2",
            ),
            named(
                "update",
                "coordination.k8s.io",
                "leases",
                "",
                "default",
                "n1",
            ),
            named("get", "", "secrets", "", "kube-system", "used"),
            named("get", "", "secrets", "", "default", "unused"),
            named("list", "", "secrets", "", "default", ""),
            named("watch", "", "configmaps", "", "", ""),
            named(
                "create",
                "",
                "serviceaccounts",
                "token",
                "default",
                "unused",
            ),
            named("list", "", "events", "", "", ""),
            named("create", "apps", "deployments", "", "default", ""),
            named("list", "rbac.authorization.k8s.io", "roles", "", "", ""),
            named("get", "apps", "deployments", "", "default", "d"),
            named("create", "", "nodes", "token", "", "n1"),
        ];
        for a in &no {
            assert!(!node_allows("n1", a, on), "{a:?}");
        }
    }
}
