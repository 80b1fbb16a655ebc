//! Who a request is from, and whether they may make it.
//!
//! Authentication: a bearer token is either the cluster's admin token (user `admin` in
//! `system:masters`) or a token this cluster signed — issued through the TokenRequest
//! subresources `serviceaccounts/token` (what `kubectl create token` calls) and `nodes/token`
//! (a node's credential, user `system:node:<name>` in `system:nodes`), signed as
//! [`crate::signing`] says. A ServiceAccount's token stops working when the ServiceAccount is
//! deleted, a node's when its Node is (their uids are in the claims: deleting a Node revokes
//! its credentials), a pod-bound token when its pod is; every token expires.
//!
//! Authorization: the node authorizer for node users, then RBAC over the roles and bindings in
//! the watch cache (decisions in `api::rbac`).

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use api::rbac::{self, Attributes, Rbac, ResourceAttributes, User};
use serde::{Deserialize, Serialize};

use crate::cache::{Index, WatchCache};
use crate::path::{self, Target};
use crate::signing::{KeySet, TokenSigner};

/// Where the RBAC objects live; the watch cache tracks when they last changed.
pub const RBAC_PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

/// What a signed token says about its holder.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user name.
    pub sub: String,
    pub groups: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// The uid of the object the user is (a ServiceAccount, a Node), which must still exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Whom the token is for (JWT's `aud`, one string or a list). Empty: the API. A token for
    /// other audiences only (a TokenRequest's `spec.audiences`, the API server's tokens for
    /// nodes' endpoints) is never accepted as an API credential.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    pub aud: Vec<String>,
    /// For a token bound to a pod (TokenRequest `boundObjectRef`): it dies with that pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<BoundPod>,
}

/// The pod a token is bound to, in the ServiceAccount's namespace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BoundPod {
    pub name: String,
    pub uid: String,
}

/// The audiences that name this API (what Kubernetes' TokenRequest puts in by default).
pub const API_AUDIENCES: &[&str] = &[
    "https://kubernetes.default.svc.cluster.local",
    "https://kubernetes.default.svc",
    "kubernetes",
];

/// The longest a signed token may live, whatever is asked (kube-apiserver's
/// `--service-account-max-token-expiration`): a year.
pub const MAX_TOKEN_SECONDS: u64 = 365 * 86400;

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(a) => a,
    })
}

/// Whether a token for `token_audiences` may be used by one who wants `wanted` (either empty
/// means the API's audiences).
pub fn meant_for(token_audiences: &[String], wanted: &[String]) -> bool {
    let api = || {
        API_AUDIENCES
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
    };
    let token = if token_audiences.is_empty() {
        api()
    } else {
        token_audiences.to_vec()
    };
    let wanted = if wanted.is_empty() {
        api()
    } else {
        wanted.to_vec()
    };
    token.iter().any(|a| wanted.contains(a))
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The user a ServiceAccount's token authenticates as.
pub fn service_account_user(namespace: &str, name: &str) -> User {
    User {
        name: format!("system:serviceaccount:{namespace}:{name}"),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".into(),
        ],
        ..Default::default()
    }
}

/// The user a node's credential authenticates as.
pub fn node_user(node: &str) -> User {
    User {
        name: format!("system:node:{node}"),
        groups: vec![rbac::NODES.into(), "system:authenticated".into()],
        ..Default::default()
    }
}

pub fn admin_user() -> User {
    User {
        name: "admin".into(),
        groups: vec![rbac::MASTERS.into(), "system:authenticated".into()],
        ..Default::default()
    }
}

/// The Kubernetes verb of a request.
pub fn verb(method: &axum::http::Method, has_name: bool, watch: bool) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET | Method::HEAD if has_name => "get",
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if has_name => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

/// The parts of a request RBAC looks at, owned (see [`RequestInfo::attributes`]).
pub struct RequestInfo {
    pub verb: &'static str,
    pub path: String,
    pub resource: Option<(String, &'static str, String, String, String)>, // group, resource, sub, ns, name
}

impl RequestInfo {
    pub fn new(method: &axum::http::Method, path_str: &str, watch: bool) -> RequestInfo {
        match path::parse(path_str) {
            Ok(Target::Object(o)) => {
                let name = o.name.clone().unwrap_or_default();
                // A Namespace's own namespace is itself, so RoleBindings in it can grant it.
                let namespace = if o.resource.name == "namespaces" {
                    name.clone()
                } else {
                    o.namespace.clone().unwrap_or_default()
                };
                // Kubernetes authorizes opening a stream into a pod as `create`, whether the
                // client asks with POST (SPDY) or GET (a WebSocket).
                let stream = o.resource.name == "pods"
                    && o.resource.group.is_empty()
                    && matches!(
                        o.subresource.as_deref(),
                        Some("exec" | "attach" | "portforward")
                    );
                RequestInfo {
                    verb: if stream {
                        "create"
                    } else {
                        verb(method, o.name.is_some(), watch)
                    },
                    path: path_str.to_string(),
                    resource: Some((
                        o.resource.group.to_string(),
                        o.resource.name,
                        o.subresource.clone().unwrap_or_default(),
                        namespace,
                        name,
                    )),
                }
            }
            _ => RequestInfo {
                verb: match *method {
                    axum::http::Method::GET | axum::http::Method::HEAD => "get",
                    axum::http::Method::POST => "post",
                    axum::http::Method::PUT => "put",
                    axum::http::Method::PATCH => "patch",
                    axum::http::Method::DELETE => "delete",
                    _ => "unknown",
                },
                path: path_str.to_string(),
                resource: None,
            },
        }
    }

    pub fn attributes(&self) -> Attributes<'_> {
        Attributes {
            verb: self.verb,
            path: &self.path,
            resource: self
                .resource
                .as_ref()
                .map(|(group, resource, sub, ns, name)| ResourceAttributes {
                    group,
                    resource,
                    subresource: sub,
                    namespace: ns,
                    name,
                }),
        }
    }
}

/// Authentication and authorization for one API server.
pub struct Auth {
    admin_token: String,
    pub signer: Arc<TokenSigner>,
    cache: Arc<WatchCache>,
    /// Which node each pod is bound to and what it references (the node authorizer's graph).
    pods: Arc<PodGraph>,
    /// The parsed RBAC objects and the revision of the last RBAC change they reflect.
    rbac: Mutex<(u64, Arc<Rbac>)>,
}

impl Auth {
    pub fn new(admin_token: String, cache: Arc<WatchCache>, pods: Arc<PodGraph>) -> Auth {
        Auth {
            signer: Arc::new(TokenSigner::new(KeySet::derived(&admin_token))),
            admin_token,
            cache,
            pods,
            rbac: Mutex::new((u64::MAX, Arc::new(Rbac::default()))),
        }
    }

    /// The user a bearer token belongs to, if any.
    pub fn authenticate(&self, token: &str) -> Option<User> {
        self.review(token, &[])
    }

    /// The user of a token meant for one of `audiences` (none: the API itself), as a
    /// TokenReview answers it.
    pub fn review(&self, token: &str, audiences: &[String]) -> Option<User> {
        if constant_time_eq(token.as_bytes(), self.admin_token.as_bytes()) {
            return meant_for(&[], audiences).then(admin_user);
        }
        let now = unix_now();
        let claims: Claims = self.signer.verify(token, now)?;
        if claims.exp <= now || !meant_for(&claims.aud, audiences) {
            return None;
        }
        if let Some(uid) = &claims.uid {
            // The token lives as long as the ServiceAccount or Node it was issued for.
            let key = if let Some(node) = claims.sub.strip_prefix("system:node:") {
                format!("/registry/core/nodes/{node}")
            } else {
                let (ns, name) = claims
                    .sub
                    .strip_prefix("system:serviceaccount:")?
                    .split_once(':')?;
                format!("/registry/core/serviceaccounts/{ns}/{name}")
            };
            if self.uid_of(&key)?.as_str() != uid {
                return None;
            }
            // A token bound to a pod lives as long as that pod.
            if let Some(pod) = &claims.pod {
                let ns = claims
                    .sub
                    .strip_prefix("system:serviceaccount:")?
                    .split_once(':')?
                    .0;
                if self.uid_of(&format!("/registry/core/pods/{ns}/{}", pod.name))? != pod.uid {
                    return None;
                }
            }
        }
        Some(User {
            name: claims.sub,
            groups: claims.groups,
            ..Default::default()
        })
    }

    /// The uid of the object stored at `key`, as the watch cache has it.
    fn uid_of(&self, key: &str) -> Option<String> {
        let kv = self.cache.get(key)?;
        let obj: serde_json::Value = serde_json::from_slice(&kv.value).ok()?;
        obj["metadata"]["uid"].as_str().map(str::to_string)
    }

    /// The RBAC objects as of the watch cache, re-read only when one of them changed.
    pub fn rbac(&self) -> Arc<Rbac> {
        let changed = self.cache.changed_at(RBAC_PREFIX);
        let mut memo = self.rbac.lock().unwrap_or_else(|p| p.into_inner());
        if memo.0 != changed {
            let load = |resource: &str| -> Vec<serde_json::Value> {
                self.cache
                    .range(&format!("{RBAC_PREFIX}{resource}/"), None)
                    .kvs
                    .iter()
                    .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                    .collect()
            };
            let rbac = Rbac::from_objects(
                &load("clusterroles"),
                &load("roles"),
                &load("clusterrolebindings"),
                &load("rolebindings"),
            );
            *memo = (changed, Arc::new(rbac));
        }
        memo.1.clone()
    }

    /// Whether `user` may do what `a` describes (also what SelfSubjectAccessReview asks).
    pub fn allows_attributes(&self, user: &User, a: &Attributes) -> bool {
        let a = a.clone();
        if let Some(node) = user.node_name() {
            if rbac::node_allows(node, &a, self.pods.as_ref()) {
                return true;
            }
        }
        self.rbac().allows(user, &a)
    }
}

/// The node authorizer's graph over the pods in the watch cache, kept in step with it (an
/// [`Index`] of the cache: one pod's change is one update, an authorization one lookup).
#[derive(Default)]
pub struct PodGraph(Mutex<api::nodegraph::NodeGraph>);

const PODS_PREFIX: &str = "/registry/core/pods/";

impl PodGraph {
    fn graph(&self) -> std::sync::MutexGuard<'_, api::nodegraph::NodeGraph> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Index for PodGraph {
    fn reset(&self, objects: &mut dyn Iterator<Item = &raft_store::KeyValue>) {
        let mut graph = self.graph();
        graph.clear();
        for kv in objects.filter(|kv| kv.key.starts_with(PODS_PREFIX.as_bytes())) {
            if let Ok(pod) = serde_json::from_slice::<serde_json::Value>(&kv.value) {
                graph.put_pod(&String::from_utf8_lossy(&kv.key), &pod);
            }
        }
    }

    fn changed(&self, key: &[u8], now: Option<&raft_store::KeyValue>) {
        if !key.starts_with(PODS_PREFIX.as_bytes()) {
            return;
        }
        let key = String::from_utf8_lossy(key);
        let pod = now.and_then(|kv| serde_json::from_slice::<serde_json::Value>(&kv.value).ok());
        match pod {
            Some(pod) => self.graph().put_pod(&key, &pod),
            None => self.graph().remove_pod(&key),
        }
    }
}

impl rbac::NodeFacts for PodGraph {
    fn pod_node(&self, namespace: &str, name: &str) -> Option<String> {
        self.graph()
            .node_of(&format!("{PODS_PREFIX}{namespace}/{name}"))
            .map(str::to_string)
    }

    fn references(&self, node: &str, kind: &str, namespace: &str, name: &str) -> bool {
        self.graph().references(node, kind, namespace, name)
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_serves_only_its_audiences() {
        let api: Vec<String> = vec![];
        let vault = vec!["vault".to_string()];
        assert!(meant_for(&api, &api));
        assert!(meant_for(
            &api,
            &["https://kubernetes.default.svc".to_string()]
        ));
        assert!(
            !meant_for(&vault, &api),
            "a token for vault is no API credential"
        );
        assert!(meant_for(&vault, &vault));
        assert!(!meant_for(&api, &vault));
        let both = vec!["vault".to_string(), "kubernetes".to_string()];
        assert!(meant_for(&both, &api) && meant_for(&both, &vault));
        // The audience of older tokens, one string.
        let old: Claims =
            serde_json::from_str(r#"{"sub":"s","groups":[],"exp":1,"aud":"x"}"#).unwrap();
        assert_eq!(old.aud, vec!["x".to_string()]);
    }
}
