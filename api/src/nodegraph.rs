//! The node authorizer's graph, as Kubernetes' (`plugin/pkg/auth/authorizer/node`): which
//! node each pod is bound to, and what each pod references — Secrets, ConfigMaps,
//! PersistentVolumeClaims, its ServiceAccount, and the cluster registry's repositories its
//! images come from. A node may read an object of those kinds only while a pod bound to it
//! references that object.
//!
//! Kept incrementally, one pod at a time ([`NodeGraph::put_pod`], [`NodeGraph::remove_pod`]),
//! and answered from a count per (node, kind, namespace, name): an authorization is one hash
//! lookup however big the cluster.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

/// The kinds a node may read only through its pods.
pub const REFERENCED_KINDS: &[&str] = &[
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "serviceaccounts",
    "repositories",
];

/// (kind, namespace, name) of one referenced object.
type Target = (&'static str, String, String);

#[derive(Default, Debug)]
pub struct NodeGraph {
    /// Pod key → the node it is bound to and what it references.
    pods: HashMap<String, (String, BTreeSet<Target>)>,
    /// (node, target) → how many of the node's pods reference the target.
    edges: HashMap<(String, Target), usize>,
}

impl NodeGraph {
    /// Records the pod stored at `key` as it is now (replacing what it was).
    pub fn put_pod(&mut self, key: &str, pod: &Value) {
        self.remove_pod(key);
        let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
            return;
        };
        let targets = references(pod);
        for t in &targets {
            *self.edges.entry((node.to_string(), t.clone())).or_default() += 1;
        }
        self.pods
            .insert(key.to_string(), (node.to_string(), targets));
    }

    /// Forgets the pod stored at `key`.
    pub fn remove_pod(&mut self, key: &str) {
        let Some((node, targets)) = self.pods.remove(key) else {
            return;
        };
        for t in targets {
            let edge = (node.clone(), t);
            if let Some(n) = self.edges.get_mut(&edge) {
                *n -= 1;
                if *n == 0 {
                    self.edges.remove(&edge);
                }
            }
        }
    }

    /// Forgets everything (before the graph is built again from every pod).
    pub fn clear(&mut self) {
        self.pods.clear();
        self.edges.clear();
    }

    /// The node the pod stored at `key` is bound to.
    pub fn node_of(&self, key: &str) -> Option<&str> {
        self.pods.get(key).map(|(node, _)| node.as_str())
    }

    /// Whether a pod bound to `node` references the object `kind` `namespace/name`.
    pub fn references(&self, node: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let Some(kind) = REFERENCED_KINDS.iter().find(|k| **k == kind) else {
            return false;
        };
        self.edges.contains_key(&(
            node.to_string(),
            (*kind, namespace.to_string(), name.to_string()),
        ))
    }
}

/// What `pod` references, in its namespace: the Secrets and ConfigMaps of its volumes
/// (projected ones too), environment and image pull secrets, its claims (ephemeral volumes'
/// claims are named `<pod>-<volume>`) and its ServiceAccount.
pub fn references(pod: &Value) -> BTreeSet<Target> {
    let ns = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let mut out = BTreeSet::new();
    let mut add = |kind: &'static str, name: Option<&str>| {
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            out.insert((kind, ns.clone(), n.to_string()));
        }
    };
    let spec = &pod["spec"];
    add(
        "serviceaccounts",
        Some(spec["serviceAccountName"].as_str().unwrap_or("default")),
    );
    for s in list(&spec["imagePullSecrets"]) {
        add("secrets", s["name"].as_str());
    }
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    for v in list(&spec["volumes"]) {
        add("secrets", v["secret"]["secretName"].as_str());
        add("configmaps", v["configMap"]["name"].as_str());
        add(
            "persistentvolumeclaims",
            v["persistentVolumeClaim"]["claimName"].as_str(),
        );
        if v.get("ephemeral").is_some() {
            let claim = format!("{pod_name}-{}", v["name"].as_str().unwrap_or_default());
            add("persistentvolumeclaims", Some(&claim));
        }
        for source in list(&v["projected"]["sources"]) {
            add("secrets", source["secret"]["name"].as_str());
            add("configmaps", source["configMap"]["name"].as_str());
        }
        for secret_ref in ["nodePublishSecretRef", "secretRef"] {
            add("secrets", v["csi"][secret_ref]["name"].as_str());
        }
    }
    for group in ["initContainers", "containers", "ephemeralContainers"] {
        for c in list(&spec[group]) {
            if let Some(name) = c["image"].as_str().and_then(|i| repository_in(i, &ns)) {
                add("repositories", Some(name));
            }
            for e in list(&c["env"]) {
                add("secrets", e["valueFrom"]["secretKeyRef"]["name"].as_str());
                add(
                    "configmaps",
                    e["valueFrom"]["configMapKeyRef"]["name"].as_str(),
                );
            }
            for e in list(&c["envFrom"]) {
                add("secrets", e["secretRef"]["name"].as_str());
                add("configmaps", e["configMapRef"]["name"].as_str());
            }
        }
    }
    out
}

/// The name of the repository in namespace `ns` that image reference `image` names, as the
/// cluster registry lays repositories out (`HOST/NAMESPACE/NAME[:TAG][@DIGEST]`), if its
/// namespace is `ns`. A pod's node may pull only its own namespace's images: a pod naming
/// another namespace's image pulls it with its imagePullSecrets, as any private image.
pub fn repository_in<'a>(image: &'a str, ns: &str) -> Option<&'a str> {
    let (host, path) = image.split_once('/')?;
    // The first part is a registry host only if it looks like one (Docker's rule).
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        return None;
    }
    let path = path.split_once('@').map_or(path, |(p, _)| p);
    // A tag is after the last ':' of the last part (a port was in the host).
    let path = match path.rsplit_once(':') {
        Some((p, tag)) if !tag.contains('/') => p,
        _ => path,
    };
    let (namespace, name) = path.split_once('/')?;
    (namespace == ns && !name.is_empty()).then_some(name)
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: Option<&str>, secret: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns"},
               "spec": {"nodeName": node, "serviceAccountName": "app",
                        "volumes": [{"name": "v", "secret": {"secretName": secret}},
                                    {"name": "p", "projected": {"sources": [{"configMap": {"name": "cm"}}]}},
                                    {"name": "e", "ephemeral": {}}],
                        "containers": [{"name": "c",
                                        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}}],
                                        "envFrom": [{"configMapRef": {"name": "env-cm"}}]}]}})
    }

    #[test]
    fn images_of_the_pods_namespace_name_its_repositories() {
        for (image, ns, want) in [
            ("10.0.0.1:6443/team/app:1", "team", Some("app")),
            (
                "registry.drover.internal/team/tools/app@sha256:00",
                "team",
                Some("tools/app"),
            ),
            (
                "registry.drover.internal/team/app:1@sha256:00",
                "team",
                Some("app"),
            ),
            ("localhost/team/app", "team", Some("app")),
            ("10.0.0.1:6443/other/app:1", "team", None),
            ("team/app:1", "team", None),
            ("docker.io/library/busybox", "team", None),
            ("10.0.0.1:6443/team", "team", None),
        ] {
            assert_eq!(repository_in(image, ns), want, "{image}");
        }
        let mut g = NodeGraph::default();
        let p = json!({"metadata": {"name": "p", "namespace": "team"},
                       "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "10.0.0.1:6443/team/app:1"}],
                                "initContainers": [{"name": "i", "image": "10.0.0.1:6443/other/secret:1"}]}});
        g.put_pod("p", &p);
        assert!(g.references("n1", "repositories", "team", "app"));
        assert!(!g.references("n1", "repositories", "other", "secret"));
        assert!(!g.references("n2", "repositories", "team", "app"));
    }

    #[test]
    fn a_node_reaches_what_its_pods_reference_while_they_do() {
        let mut g = NodeGraph::default();
        g.put_pod("a", &pod("a", Some("n1"), "s1"));
        g.put_pod("b", &pod("b", Some("n1"), "s1"));
        for (kind, name) in [
            ("secrets", "s1"),
            ("secrets", "env-secret"),
            ("configmaps", "cm"),
            ("configmaps", "env-cm"),
            ("serviceaccounts", "app"),
            ("persistentvolumeclaims", "a-e"),
        ] {
            assert!(g.references("n1", kind, "ns", name), "{kind} {name}");
            assert!(!g.references("n2", kind, "ns", name), "{kind} {name}");
        }
        assert!(!g.references("n1", "secrets", "other", "s1"), "namespaced");
        assert!(
            !g.references("n1", "pods", "ns", "a"),
            "not a referenced kind"
        );
        // Two pods reference s1: it stays reachable until both are gone.
        g.remove_pod("a");
        assert!(g.references("n1", "secrets", "ns", "s1"));
        assert!(!g.references("n1", "persistentvolumeclaims", "ns", "a-e"));
        // A pod moved (its update seen) takes its edges along.
        g.put_pod("b", &pod("b", Some("n2"), "s2"));
        assert!(!g.references("n1", "secrets", "ns", "s1"));
        assert!(g.references("n2", "secrets", "ns", "s2"));
        // Unbound pods give nobody anything.
        g.put_pod("b", &pod("b", None, "s2"));
        assert!(!g.references("n2", "secrets", "ns", "s2"));
        assert!(g.edges.is_empty() && g.pods.is_empty());
    }
}
