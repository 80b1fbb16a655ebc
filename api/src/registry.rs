//! Every resource the API serves: one table, read by discovery, routing and storage.

/// One served resource (at its one served version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// Plural, lower case, as in URLs.
    pub name: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
}

/// A subresource that performs an action (see [`Resource::actions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    pub name: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub verbs: &'static [&'static str],
}

/// The verbs every resource here supports.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl Resource {
    /// "v1" for the core group, else "group/version".
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The name the per-kind rules (defaults, validation, table columns, field selectors)
    /// know this resource by: its plural, or `plural.group` for a kind whose plural a core kind
    /// already has (Knative's Service).
    pub fn rule_key(&self) -> &'static str {
        match (self.group, self.name) {
            (crate::knative::GROUP, "services") => "services.serving.knative.dev",
            _ => self.name,
        }
    }

    /// Whether `status` is written only through the `/status` subresource.
    pub fn has_status(&self) -> bool {
        self.group == crate::knative::GROUP
            || matches!(
                self.name,
                "pods"
                    | "services"
                    | "nodes"
                    | "namespaces"
                    | "deployments"
                    | "replicasets"
                    | "daemonsets"
                    | "statefulsets"
                    | "jobs"
                    | "cronjobs"
                    | "horizontalpodautoscalers"
            )
    }

    /// Whether the resource has a `/scale` subresource (an `autoscaling/v1` Scale).
    pub fn has_scale(&self) -> bool {
        matches!(self.name, "deployments" | "replicasets" | "statefulsets")
    }

    /// Whether this is a review (create-only, never stored; see [`REVIEWS`]).
    pub fn is_review(&self) -> bool {
        REVIEWS
            .iter()
            .any(|r| r.name == self.name && r.group == self.group)
    }

    /// Whether this is a resource metrics kind (see [`METRICS`]).
    pub fn is_metrics(&self) -> bool {
        self.group == "metrics.k8s.io"
    }

    /// Subresources that act rather than store (POST only, or a stream): name, the group and
    /// version of the kind they take, that kind, and the verbs.
    pub fn actions(&self) -> &'static [Action] {
        match self.name {
            "pods" => &[
                Action {
                    name: "binding",
                    group: "",
                    version: "v1",
                    kind: "Binding",
                    verbs: &["create"],
                },
                Action {
                    name: "eviction",
                    group: "policy",
                    version: "v1",
                    kind: "Eviction",
                    verbs: &["create"],
                },
            ],
            "serviceaccounts" => &[Action {
                name: "token",
                group: "authentication.k8s.io",
                version: "v1",
                kind: "TokenRequest",
                verbs: &["create"],
            }],
            "revisions" if self.group == crate::knative::GROUP => &[Action {
                name: "activate",
                group: "",
                version: "v1",
                kind: "Status",
                verbs: &["create"],
            }],
            _ => &[],
        }
    }

    /// The store key prefix of this resource's objects, ending in '/'.
    pub fn key_prefix(&self) -> String {
        let group = match storage_group(self) {
            "" => "core",
            g => g,
        };
        format!("/registry/{group}/{}/", self.name)
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one positional row per resource keeps the table below readable"
)]
const fn r(
    group: &'static str,
    version: &'static str,
    name: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
) -> Resource {
    Resource {
        group,
        version,
        name,
        singular,
        kind,
        namespaced,
        short_names,
        categories,
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];
const KNATIVE: &[&str] = &["all", "knative", "serving"];

/// The served resources. Subresources (status, scale, binding, log, eviction) come with the
/// handlers that give them meaning.
#[rustfmt::skip]
pub static REGISTRY: &[Resource] = &[
    r("", "v1", "namespaces", "namespace", "Namespace", false, &["ns"], NONE),
    r("", "v1", "pods", "pod", "Pod", true, &["po"], ALL),
    r("", "v1", "services", "service", "Service", true, &["svc"], ALL),
    r("", "v1", "endpoints", "endpoints", "Endpoints", true, &["ep"], NONE),
    r("", "v1", "configmaps", "configmap", "ConfigMap", true, &["cm"], NONE),
    r("", "v1", "secrets", "secret", "Secret", true, NONE, NONE),
    r("", "v1", "nodes", "node", "Node", false, &["no"], NONE),
    r("", "v1", "events", "event", "Event", true, &["ev"], NONE),
    r("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", true, &["sa"], NONE),
    r("apps", "v1", "deployments", "deployment", "Deployment", true, &["deploy"], ALL),
    r("apps", "v1", "replicasets", "replicaset", "ReplicaSet", true, &["rs"], ALL),
    r("apps", "v1", "daemonsets", "daemonset", "DaemonSet", true, &["ds"], ALL),
    r("apps", "v1", "statefulsets", "statefulset", "StatefulSet", true, &["sts"], ALL),
    r("apps", "v1", "controllerrevisions", "controllerrevision", "ControllerRevision", true, NONE, NONE),
    r("batch", "v1", "jobs", "job", "Job", true, NONE, ALL),
    r("batch", "v1", "cronjobs", "cronjob", "CronJob", true, &["cj"], ALL),
    r("autoscaling", "v2", "horizontalpodautoscalers", "horizontalpodautoscaler", "HorizontalPodAutoscaler", true, &["hpa"], ALL),
    // Served too (kubectl autoscale writes v1); stored as v2 and converted by `convert`.
    r("autoscaling", "v1", "horizontalpodautoscalers", "horizontalpodautoscaler", "HorizontalPodAutoscaler", true, &["hpa"], ALL),
    r("networking.k8s.io", "v1", "networkpolicies", "networkpolicy", "NetworkPolicy", true, &["netpol"], NONE),
    r("discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", true, NONE, NONE),
    r("coordination.k8s.io", "v1", "leases", "lease", "Lease", true, NONE, NONE),
    r("node.k8s.io", "v1", "runtimeclasses", "runtimeclass", "RuntimeClass", false, NONE, NONE),
    r("events.k8s.io", "v1", "events", "event", "Event", true, &["ev"], NONE),
    r("rbac.authorization.k8s.io", "v1", "roles", "role", "Role", true, NONE, NONE),
    r("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding", "RoleBinding", true, NONE, NONE),
    r("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole", "ClusterRole", false, NONE, NONE),
    r("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", false, NONE, NONE),
    // Knative Serving (`knative`), served natively; its categories are Knative's.
    r("serving.knative.dev", "v1", "services", "service", "Service", true, &["kservice", "ksvc"], KNATIVE),
    r("serving.knative.dev", "v1", "configurations", "configuration", "Configuration", true, &["config", "cfg"], KNATIVE),
    r("serving.knative.dev", "v1", "revisions", "revision", "Revision", true, &["rev"], KNATIVE),
    r("serving.knative.dev", "v1", "routes", "route", "Route", true, &["rt"], KNATIVE),
];

/// Reviews: resources that are only ever created, answered and never stored (TokenReview for
/// nodes checking the API server's tokens, SelfSubjectReview for `kubectl auth whoami`,
/// SelfSubjectAccessReview and SelfSubjectRulesReview for `kubectl auth can-i [--list]`,
/// SubjectAccessReview and LocalSubjectAccessReview for webhooks and operators asking for
/// somebody else).
#[rustfmt::skip]
pub static REVIEWS: &[Resource] = &[
    r("authentication.k8s.io", "v1", "tokenreviews", "tokenreview", "TokenReview", false, NONE, NONE),
    r("authentication.k8s.io", "v1", "selfsubjectreviews", "selfsubjectreview", "SelfSubjectReview", false, NONE, NONE),
    r("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "selfsubjectaccessreview", "SelfSubjectAccessReview", false, NONE, NONE),
    r("authorization.k8s.io", "v1", "selfsubjectrulesreviews", "selfsubjectrulesreview", "SelfSubjectRulesReview", false, NONE, NONE),
    r("authorization.k8s.io", "v1", "subjectaccessreviews", "subjectaccessreview", "SubjectAccessReview", false, NONE, NONE),
    r("authorization.k8s.io", "v1", "localsubjectaccessreviews", "localsubjectaccessreview", "LocalSubjectAccessReview", true, NONE, NONE),
];

/// Resource metrics (metrics.k8s.io, what metrics-server serves in Kubernetes): read-only,
/// never stored, gathered from the nodes on each request (`kubectl top`, the autoscaler).
#[rustfmt::skip]
pub static METRICS: &[Resource] = &[
    r("metrics.k8s.io", "v1beta1", "pods", "", "PodMetrics", true, NONE, NONE),
    r("metrics.k8s.io", "v1beta1", "nodes", "", "NodeMetrics", false, NONE, NONE),
];

/// The resource named `name` in `group`/`version`, if it is served.
pub fn find(group: &str, version: &str, name: &str) -> Option<&'static Resource> {
    REGISTRY
        .iter()
        .chain(REVIEWS)
        .chain(METRICS)
        .find(|r| r.group == group && r.version == version && r.name == name)
}

/// The groups other than core with their served versions, the preferred (storage) version
/// first, in a stable order.
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in REGISTRY
        .iter()
        .chain(REVIEWS)
        .chain(METRICS)
        .filter(|r| !r.group.is_empty())
    {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
            Some(_) => {}
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}

/// The group whose objects this resource's are: its own, except for `events.k8s.io` Events,
/// which are core Events seen another way (as in kube-apiserver, where both read one store).
pub fn storage_group(r: &Resource) -> &'static str {
    match (r.group, r.name) {
        ("events.k8s.io", "events") => "",
        (group, _) => group,
    }
}

/// The version objects of this resource are stored in: the first one registered in its
/// storage group.
pub fn storage_version(r: &Resource) -> &'static str {
    let group = storage_group(r);
    REGISTRY
        .iter()
        .find(|s| s.group == group && s.name == r.name)
        .map_or(r.version, |s| s.version)
}

/// Whether objects of `r` are stored exactly as `r` serves them (no conversion either way).
pub fn served_as_stored(r: &Resource) -> bool {
    storage_group(r) == r.group && storage_version(r) == r.version
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_groups_namespaces_and_names() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(
            pods.key(Some("default"), "web"),
            "/registry/core/pods/default/web"
        );
        let ns = find("", "v1", "namespaces").unwrap();
        assert_eq!(ns.key(None, "default"), "/registry/core/namespaces/default");
        let deploy = find("apps", "v1", "deployments").unwrap();
        assert_eq!(deploy.api_version(), "apps/v1");
        // Both events resources read one store: events.k8s.io's are core Events converted.
        let ev = find("", "v1", "events").unwrap();
        let ev2 = find("events.k8s.io", "v1", "events").unwrap();
        assert_eq!(ev.key_prefix(), ev2.key_prefix());
        assert!(served_as_stored(ev) && !served_as_stored(ev2));
    }

    #[test]
    fn every_resource_is_listed_once_per_group_version() {
        for (i, a) in REGISTRY.iter().enumerate() {
            for b in &REGISTRY[i + 1..] {
                let same = a.group == b.group && a.name == b.name && a.version == b.version;
                assert!(!same, "{} listed twice", a.name);
            }
        }
        assert!(groups().contains(&("apps", vec!["v1"])));
        assert!(groups().contains(&("autoscaling", vec!["v2", "v1"])));
    }
}
