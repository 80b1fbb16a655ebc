//! The subresources that act rather than store, each by nature one kind's and routed to by
//! resource and subresource in the dispatcher: the reviews (TokenReview,
//! SelfSubjectAccessReview), `pods/log` and `pods/exec` (passed to the node the pod runs on),
//! `pods/binding` (the scheduler's decision), `pods/eviction` (a graceful delete), and the
//! TokenRequests of `serviceaccounts/token` and `nodes/token`.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use raft_store::{Compare, CompareOp, Txn};
use serde_json::{json, Value};

use api::rbac::User;

use super::{Call, TokenFor};
use crate::auth;
use crate::path::ObjectPath;
use crate::respond::{
    bad_request, conflict, failure, invalid, json_response, not_found, store_failure,
};
use crate::stored::{from_kv, now_rfc3339, to_bytes};

/// A node's answer other than the one hoped for, as a Status: its text is the message.
async fn node_refusal(resp: hyper::Response<hyper::body::Incoming>) -> Response {
    let code = resp.status();
    let text = axum::body::to_bytes(Body::new(resp.into_body()), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    if code.is_client_error() {
        bad_request(&text)
    } else {
        failure(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &text)
    }
}

/// The container of `pod` a command is to run in: the one asked for, else the one the
/// `kubectl.kubernetes.io/default-container` annotation names, else the first. Err: why
/// there is none to run in now (the words kube-apiserver uses where it has them).
fn exec_container(name: &str, pod: &Value, asked: Option<&String>) -> Result<String, String> {
    let statuses = [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ];
    let spec_names: Vec<&str> = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    let first = pod["spec"]["containers"][0]["name"].as_str();
    let annotated = pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"]
        .as_str()
        .filter(|c| spec_names.contains(c));
    let container = match asked.map(String::as_str).filter(|c| !c.is_empty()) {
        Some(c) if spec_names.contains(&c) => c,
        Some(c) => return Err(format!("container {c} is not valid for pod {name}")),
        None => match annotated.or(first) {
            Some(c) => c,
            None => return Err(format!("pod {name} has no containers")),
        },
    };
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    match phase {
        "Running" => {}
        "Succeeded" | "Failed" => {
            return Err(format!(
                "cannot exec into a container in a completed pod; current phase is {phase}"
            ))
        }
        _ => {
            return Err(format!(
                "pod {name} is not running (phase {phase}); exec needs a running container"
            ))
        }
    }
    // A running pod may still have this container waiting (restarting) or finished.
    let status = statuses
        .iter()
        .flat_map(|list| pod["status"][list].as_array().into_iter().flatten())
        .find(|s| s["name"] == container);
    if let Some(state) = status.map(|s| &s["state"]).filter(|s| s.is_object()) {
        if state.get("running").is_none() {
            let why = state
                .as_object()
                .and_then(|o| o.iter().next())
                .map(|(k, v)| match v["reason"].as_str() {
                    Some(reason) => format!("{k}: {reason}"),
                    None => k.clone(),
                })
                .unwrap_or_default();
            return Err(format!(
                "container {container} in pod {name} is not running ({why})"
            ));
        }
    }
    Ok(container.to_string())
}

impl Call<'_> {
    /// TokenReview: is this token valid, for these audiences, and whose is it?
    pub(super) fn token_review(&self, body: &Bytes) -> Response {
        self.review(body, |spec| {
            let Some(token) = spec["token"].as_str() else {
                return Err(invalid(self.resource(), "", "spec.token", "Required value"));
            };
            let audiences: Vec<String> = spec["audiences"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            Ok(match self.st.auth.review(token, &audiences) {
                Some(user) => {
                    json!({"authenticated": true, "user": {"username": user.name, "groups": user.groups}, "audiences": audiences})
                }
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            })
        })
    }

    /// SelfSubjectAccessReview: may I do this?
    pub(super) fn self_access_review(&self, body: &Bytes) -> Response {
        self.review(body, |spec| Ok(self.decide(self.user, spec)))
    }

    /// SubjectAccessReview (cluster-wide) and LocalSubjectAccessReview (in the URL's
    /// namespace): may this user, with these groups, do this?
    pub(super) fn subject_access_review(&self, body: &Bytes) -> Response {
        let r = self.resource();
        self.review(body, |spec| {
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            };
            let user = User {
                name: spec["user"].as_str().unwrap_or("").to_string(),
                groups: strings(&spec["groups"]),
                uid: spec["uid"].as_str().unwrap_or("").to_string(),
                extra: spec["extra"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), strings(v)))
                    .collect(),
            };
            if user.name.is_empty() && user.groups.is_empty() {
                return Err(invalid(
                    r,
                    "",
                    "spec.user",
                    "at least one of user or group must be specified",
                ));
            }
            let (resource, non_resource) = (
                spec["resourceAttributes"].is_object(),
                spec["nonResourceAttributes"].is_object(),
            );
            if resource == non_resource {
                return Err(invalid(
                    r,
                    "",
                    "spec.resourceAttributes",
                    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                ));
            }
            let mut spec = spec.clone();
            if r.namespaced {
                let ns = self.o.namespace.as_deref().unwrap_or("");
                match spec["resourceAttributes"]["namespace"].as_str() {
                    None | Some("") if resource => {
                        spec["resourceAttributes"]["namespace"] = json!(ns)
                    }
                    Some(sent) if sent != ns => {
                        return Err(invalid(
                            r,
                            "",
                            "spec.resourceAttributes.namespace",
                            &format!("must be the request's namespace {ns:?}"),
                        ))
                    }
                    _ if non_resource => {
                        return Err(invalid(
                            r,
                            "",
                            "spec.nonResourceAttributes",
                            "disallowed on this kind of request",
                        ))
                    }
                    _ => {}
                }
            }
            Ok(self.decide(&user, &spec))
        })
    }

    /// Whether `user` may do what an access review's `spec` describes: the review's status.
    fn decide(&self, user: &User, spec: &Value) -> Value {
        let ra = &spec["resourceAttributes"];
        let nra = &spec["nonResourceAttributes"];
        let field = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
        let (verb, group, resource, sub, ns, name, path) = (
            field(if ra.is_object() { ra } else { nra }, "verb"),
            field(ra, "group"),
            field(ra, "resource"),
            field(ra, "subresource"),
            field(ra, "namespace"),
            field(ra, "name"),
            field(nra, "path"),
        );
        let a = api::rbac::Attributes {
            verb: &verb,
            resource: ra.is_object().then_some(api::rbac::ResourceAttributes {
                group: &group,
                resource: &resource,
                subresource: &sub,
                namespace: &ns,
                name: &name,
            }),
            path: &path,
        };
        let allowed = self.st.auth.allows_attributes(user, &a);
        json!({"allowed": allowed, "reason": if allowed { "allowed by RBAC" } else { "" }})
    }

    /// SelfSubjectRulesReview: what may I do in this namespace? (`kubectl auth can-i --list`)
    pub(super) fn rules_review(&self, body: &Bytes) -> Response {
        self.review(body, |spec| {
            let ns = spec["namespace"].as_str().unwrap_or("");
            let (resource_rules, non_resource_rules) = self.st.auth.rbac().rules_for(self.user, ns);
            // A node's rights come from the node authorizer, which has no list of rules.
            let incomplete = self.user.node_name().is_some();
            Ok(
                json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules,
                      "incomplete": incomplete}),
            )
        })
    }

    /// SelfSubjectReview: who am I? (`kubectl auth whoami`)
    pub(super) fn self_review(&self, body: &Bytes) -> Response {
        self.review(body, |_| {
            let mut info = json!({"username": self.user.name, "groups": self.user.groups});
            if !self.user.uid.is_empty() {
                info["uid"] = json!(self.user.uid);
            }
            if !self.user.extra.is_empty() {
                info["extra"] = json!(self.user.extra);
            }
            Ok(json!({"userInfo": info}))
        })
    }

    /// A review, answered and not stored: the review sent, with the `status` that `answer`
    /// gives for its spec (Err: why the review cannot be answered).
    fn review(
        &self,
        body: &Bytes,
        answer: impl FnOnce(&Value) -> Result<Value, Response>,
    ) -> Response {
        let r = self.resource();
        let review: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad_request(&format!("the {} is not valid JSON: {e}", r.kind)),
        };
        let status = match answer(&review["spec"]) {
            Ok(status) => status,
            Err(refusal) => return refusal,
        };
        let mut out = review;
        out["status"] = status;
        out["apiVersion"] = json!(r.api_version());
        out["kind"] = json!(r.kind);
        json_response(StatusCode::CREATED, &out)
    }

    /// `pods/{name}/log`: proxied to the node the pod runs on, with a short-lived token the
    /// node accepts only for itself.
    pub(super) async fn pod_log(&self, name: &str) -> Response {
        let r = self.resource();
        let pod = match self.read(name).await {
            Ok(Some(kv)) => from_kv(&kv),
            Ok(None) => return not_found(r, name),
            Err(e) => return store_failure(e),
        };
        let names = |list: &str| -> Vec<String> {
            pod["spec"][list]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        };
        let (main, init) = (names("containers"), names("initContainers"));
        let container = match self.query.get("container").filter(|c| !c.is_empty()) {
            Some(c) if main.contains(c) || init.contains(c) => c.clone(),
            Some(c) => {
                return bad_request(&format!("container {c} is not valid for pod {name}"));
            }
            None if main.len() == 1 => main[0].clone(),
            None => {
                return bad_request(&format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    main.join(" ")
                ))
            }
        };
        let (node_name, endpoint) = match self.pod_node(name, &pod) {
            Ok(found) => found,
            Err(refusal) => return refusal,
        };
        let token = crate::metrics::node_token(self.st, &node_name);
        let mut query = Vec::new();
        for key in ["follow", "previous", "timestamps", "tailLines"] {
            if let Some(v) = self.query.get(key) {
                query.push(format!("{key}={v}"));
            }
        }
        let ns = self.o.namespace.clone().unwrap_or_default();
        let path = format!("/containerLogs/{ns}/{name}/{container}?{}", query.join("&"));
        let target = crate::proxy::NodeTarget {
            tls: self.st.node_tls.get(),
            addr: endpoint,
            name: &node_name,
        };
        match crate::proxy::get(&target, &path, &token).await {
            Ok(resp) if resp.status().is_success() => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain")],
                Body::new(resp.into_body()),
            )
                .into_response(),
            Ok(resp) => node_refusal(resp).await,
            Err(e) => failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                &format!("cannot reach node {node_name} at {endpoint} for logs: {e}"),
            ),
        }
    }

    /// The node a pod runs on and the address of the node's endpoint (logs, exec); Err: the
    /// Status saying why there is none.
    fn pod_node(
        &self,
        name: &str,
        pod: &Value,
    ) -> Result<(String, std::net::SocketAddr), Response> {
        let Some(node_name) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
            return Err(bad_request(&format!(
                "pod {name} does not have a host assigned"
            )));
        };
        let node_key = api::registry::find("", "v1", "nodes")
            .expect("registered")
            .key(None, node_name);
        let Some(node) = self.st.cache.get(&node_key).map(|kv| from_kv(&kv)) else {
            return Err(bad_request(&format!(
                "node {node_name} of pod {name} is not registered"
            )));
        };
        let Some(endpoint) = crate::metrics::node_endpoint(&node) else {
            return Err(failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                &format!("node {node_name} has not published its address"),
            ));
        };
        Ok((node_name.to_string(), endpoint))
    }

    /// `pods/{name}/exec`, `attach` and `portforward`: checked here (the pod runs; for exec
    /// and attach, the container is one of its own), then the client's upgrade (a WebSocket or SPDY/3.1)
    /// is passed to the node the pod runs on, and once the node has switched protocols the two
    /// connections are spliced. The stream itself (channels, the exit status, forwarded
    /// connections) is between the client and the node.
    pub(super) async fn pod_stream(
        &self,
        name: &str,
        stream: PodStream,
        method: &Method,
        headers: &HeaderMap,
        raw_query: &str,
        client: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response {
        let r = self.resource();
        let pod = match self.read(name).await {
            Ok(Some(kv)) => from_kv(&kv),
            Ok(None) => return not_found(r, name),
            Err(e) => return store_failure(e),
        };
        let ns = self.o.namespace.clone().unwrap_or_default();
        let path = match stream {
            PodStream::Exec => match exec_container(name, &pod, self.query.get("container")) {
                Ok(container) => format!("/exec/{ns}/{name}/{container}?{raw_query}"),
                Err(message) => return bad_request(&message),
            },
            PodStream::Attach => match exec_container(name, &pod, self.query.get("container")) {
                Ok(container) => format!("/attach/{ns}/{name}/{container}?{raw_query}"),
                Err(message) => return bad_request(&message),
            },
            PodStream::PortForward => {
                let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
                if phase != "Running" {
                    return bad_request(&format!(
                        "pod {name} is not running (phase {phase}); port-forward needs a running pod"
                    ));
                }
                format!("/portForward/{ns}/{name}?{raw_query}")
            }
        };
        let what = stream.what();
        let (node_name, endpoint) = match self.pod_node(name, &pod) {
            Ok(found) => found,
            Err(refusal) => return refusal,
        };
        let Some(client) = client else {
            return bad_request(&format!(
                "{what} needs a connection that can be upgraded: a WebSocket or SPDY/3.1 over HTTP/1.1"
            ));
        };
        let token = crate::metrics::node_token(self.st, &node_name);
        let target = crate::proxy::NodeTarget {
            tls: self.st.node_tls.get(),
            addr: endpoint,
            name: &node_name,
        };
        let mut resp = match crate::proxy::upgrade(&target, method, &path, &token, headers).await {
            Ok(resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => resp,
            Ok(resp) => return node_refusal(resp).await,
            Err(e) => {
                return failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    &format!("cannot reach node {node_name} at {endpoint} for {what}: {e}"),
                )
            }
        };
        let node = match hyper::upgrade::on(&mut resp).await {
            Ok(io) => io,
            Err(e) => {
                return failure(
                    StatusCode::BAD_GATEWAY,
                    "InternalError",
                    &format!("node {node_name} switched protocols but its connection could not be taken over: {e}"),
                )
            }
        };
        tokio::spawn(crate::proxy::splice(client, node));
        let mut switched = Response::new(Body::empty());
        *switched.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        for (name, value) in resp.headers() {
            if crate::proxy::is_upgrade_header(name) {
                switched.headers_mut().append(name, value.clone());
            }
        }
        switched
    }

    /// `pods/{name}/binding`: the scheduler's decision, setting `spec.nodeName` once. A pod
    /// already bound elsewhere is a conflict, as in Kubernetes.
    pub(super) async fn bind(&self, name: &str, body: &Bytes) -> Response {
        let r = self.resource();
        let binding: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad_request(&format!("the Binding is not valid JSON: {e}")),
        };
        let Some(node) = binding["target"]["name"].as_str().filter(|n| !n.is_empty()) else {
            return invalid(
                r,
                name,
                "target.name",
                "Required value: the node to bind to",
            );
        };
        if binding["target"]["kind"]
            .as_str()
            .is_some_and(|k| k != "Node")
        {
            return invalid(r, name, "target.kind", "must be Node");
        }
        for _ in 0..5 {
            let current = match self.read(name).await {
                Ok(Some(kv)) => kv,
                Ok(None) => return not_found(r, name),
                Err(e) => return store_failure(e),
            };
            let mut pod = self.load(&current);
            // A binding names the pod it was decided for; a same-named successor is another.
            let want_uid = binding["metadata"]["uid"]
                .as_str()
                .filter(|u| !u.is_empty());
            if let Some(uid) = want_uid {
                if pod["metadata"]["uid"].as_str() != Some(uid) {
                    return failure(
                        StatusCode::CONFLICT,
                        "Conflict",
                        &format!("Operation cannot be fulfilled on pods/binding \"{name}\": the pod's UID is not {uid} (the pod was replaced)"),
                    );
                }
            }
            match pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                Some(bound) => {
                    return failure(
                        StatusCode::CONFLICT,
                        "Conflict",
                        &format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{bound}\""),
                    )
                }
                None => pod["spec"]["nodeName"] = json!(node),
            }
            if pod["metadata"]["deletionTimestamp"].is_string() {
                return failure(
                    StatusCode::CONFLICT,
                    "Conflict",
                    &format!("pod {name} is being deleted, cannot be assigned to a host"),
                );
            }
            let txn =
                Txn::put(self.key(name).as_bytes(), to_bytes(&pod)).when(Compare::mod_revision(
                    self.key(name).as_bytes(),
                    CompareOp::Equal,
                    current.mod_revision,
                ));
            match self.commit(txn).await {
                Ok(resp) if resp.succeeded => {
                    return json_response(
                        StatusCode::CREATED,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                    )
                }
                Ok(_) => continue,
                Err(e) => return store_failure(e),
            }
        }
        conflict(self.resource(), name)
    }

    /// `pods/{name}/eviction`: a graceful delete of the pod with the Eviction's DeleteOptions
    /// (no PodDisruptionBudgets are served, so none can refuse it).
    pub(super) async fn evict(&self, name: &str, body: &Bytes) -> Response {
        let eviction: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad_request(&format!("the Eviction is not valid JSON: {e}")),
        };
        let options = eviction.get("deleteOptions").cloned().unwrap_or(json!({}));
        let path = ObjectPath {
            subresource: None,
            ..self.o.clone()
        };
        let plain = Call {
            st: self.st,
            o: &path,
            query: self.query,
            view: self.view,
            user: self.user,
            dry_run: self.dry_run,
            manager: self.manager.clone(),
            warnings: Default::default(),
        };
        let resp = plain
            .delete(
                name,
                &Bytes::from(serde_json::to_vec(&options).expect("serialises")),
            )
            .await;
        if !resp.status().is_success() {
            return resp;
        }
        json_response(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        )
    }

    /// `revisions/{name}/activate` (Drover's; Knative's activator does this inside its
    /// mesh): a node's function router holds requests for a revision scaled to zero and asks
    /// for one instance. It scales the revision's Deployment from 0 to 1 and does nothing
    /// when it already runs, so a node may wake a function but never size one: scaling is the
    /// autoscaler's, and a node may ask this only of the revisions' own Deployments.
    pub(super) async fn activate(&self, name: &str) -> Response {
        let ns = self.o.namespace.clone().unwrap_or_default();
        let Some(revision) = self
            .read_linearizable(&self.resource().key(Some(&ns), name))
            .await
        else {
            return not_found(self.resource(), name);
        };
        let deployments = api::registry::find("apps", "v1", "deployments").expect("served");
        let deployment_name = format!("{name}-deployment");
        let deployment = self
            .read_linearizable(&deployments.key(Some(&ns), &deployment_name))
            .await;
        // Only the revision's own Deployment: a revision named after somebody else's
        // Deployment must not let a node scale that.
        let owned = deployment.as_ref().is_some_and(|d| {
            d["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["uid"] == revision["metadata"]["uid"] && o["controller"] == json!(true))
        });
        let Some(deployment) = deployment.filter(|_| owned) else {
            return failure(
                StatusCode::CONFLICT,
                "Conflict",
                &format!("revision {name:?} has no Deployment of its own to wake (expected {deployment_name:?}, controlled by the revision)"),
            );
        };

        let path = ObjectPath {
            resource: deployments,
            namespace: self.o.namespace.clone(),
            name: Some(deployment_name.clone()),
            subresource: Some("scale".into()),
        };
        let scale = Call {
            st: self.st,
            o: &path,
            query: self.query,
            view: self.view,
            user: self.user,
            dry_run: self.dry_run,
            manager: "function-router".into(),
            warnings: Default::default(),
        };
        // A test of the current count makes the wake a compare-and-swap (two routers waking
        // one function, or a wake racing the autoscaler, never set a count twice); the uid
        // pins the Deployment checked above, not one made since under its name.
        let wake = json!([{"op": "test", "path": "/metadata/uid", "value": deployment["metadata"]["uid"]},
                          {"op": "test", "path": "/spec/replicas", "value": 0},
                          {"op": "replace", "path": "/spec/replicas", "value": 1}]);
        let resp = scale
            .patch(
                &deployment_name,
                "application/json-patch+json",
                &Bytes::from(wake.to_string()),
            )
            .await;
        let woke = resp.status().is_success();
        if !woke && resp.status() != StatusCode::UNPROCESSABLE_ENTITY {
            return resp;
        }
        json_response(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201,
                "reason": if woke { "Activated" } else { "AlreadyActive" }}),
        )
    }

    /// The object at `key`, read linearizably; None when it does not exist or cannot be read.
    async fn read_linearizable(&self, key: &str) -> Option<Value> {
        let resp = self
            .st
            .store
            .range(
                raft_store::RangeRequest::new(raft_store::KeySpan::key(key.as_bytes())),
                raft_store::Consistency::Linearizable,
                false,
            )
            .await
            .ok()?;
        resp.kvs.first().map(from_kv)
    }

    /// `serviceaccounts/{name}/token` and `nodes/{name}/token`: a TokenRequest answered with a
    /// token this cluster signed for the ServiceAccount, or for the node's agent. `None`: the
    /// `token` of a kind that has none, checked as the others and then refused (404).
    /// The pod a TokenRequest's `boundObjectRef` names, which must exist in the namespace (with
    /// the uid given, if one is).
    async fn bound_pod(&self, ns: &str, bound: &Value) -> Result<auth::BoundPod, String> {
        if bound["kind"] != "Pod" {
            return Err(format!(
                "Unsupported value: {}: supported values: \"Pod\"",
                bound["kind"]
            ));
        }
        let name = bound["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or("name: Required value")?;
        let key = format!("/registry/core/pods/{ns}/{name}");
        let pod = match self
            .st
            .store
            .range(
                raft_store::RangeRequest::new(raft_store::KeySpan::key(key.as_bytes())),
                raft_store::Consistency::Linearizable,
                false,
            )
            .await
        {
            Ok(resp) => resp
                .kvs
                .first()
                .map(from_kv)
                .ok_or(format!("pod {ns}/{name} not found"))?,
            Err(e) => return Err(e.to_string()),
        };
        let account = crate::strategy::service_account_name(&pod);
        // A node asks only for its own pods' tokens (the authorizer saw the ServiceAccount; the
        // pod is here).
        if let Some(node) = self.user.node_name() {
            if pod["spec"]["nodeName"].as_str() != Some(node) {
                return Err(format!("the pod {ns}/{name} is not bound to node {node}"));
            }
        }
        let asker = self.o.name.as_deref().unwrap_or_default();
        if account != asker {
            return Err(format!(
                "the pod {ns}/{name} runs as ServiceAccount {account}, not {asker}"
            ));
        }
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(asked) = bound["uid"].as_str().filter(|u| !u.is_empty()) {
            if asked != uid {
                return Err(format!(
                    "uid: the pod {ns}/{name} has uid {uid}, not {asked}"
                ));
            }
        }
        Ok(auth::BoundPod {
            name: name.to_string(),
            uid,
        })
    }

    pub(super) async fn token_request(
        &self,
        name: &str,
        body: &Bytes,
        subject: Option<TokenFor>,
    ) -> Response {
        let r = self.resource();
        let request: Value = if body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return bad_request(&format!("the TokenRequest is not valid JSON: {e}")),
            }
        };
        let default_ttl = match subject {
            Some(TokenFor::Node) => 365 * 86400,
            _ => 3600,
        };
        // Past the longest a token may live, the token lives that long (as kube-apiserver caps
        // it with --service-account-max-token-expiration); the answer says how long.
        let ttl = match request["spec"]["expirationSeconds"].as_i64() {
            None => default_ttl,
            Some(s) if (600..=(1i64 << 32)).contains(&s) => (s as u64).min(auth::MAX_TOKEN_SECONDS),
            Some(_) => {
                return invalid(
                    r,
                    name,
                    "spec.expirationSeconds",
                    "may not specify a duration less than 10 minutes or more than 2^32 seconds",
                )
            }
        };
        let audiences: Vec<String> = match &request["spec"]["audiences"] {
            Value::Null => vec![],
            Value::Array(a) if a.iter().all(|v| v.as_str().is_some_and(|s| !s.is_empty())) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => {
                return invalid(
                    r,
                    name,
                    "spec.audiences",
                    "must be a list of non-empty strings",
                )
            }
        };
        let bound = &request["spec"]["boundObjectRef"];
        let (user, uid, pod) = match subject {
            Some(TokenFor::ServiceAccount) => {
                let ns = self.o.namespace.clone().unwrap_or_default();
                let sa = match self.read(name).await {
                    Ok(Some(kv)) => from_kv(&kv),
                    Ok(None) => return not_found(r, name),
                    Err(e) => return store_failure(e),
                };
                let uid = sa["metadata"]["uid"].as_str().map(str::to_string);
                let pod = if bound.is_null() {
                    if self.user.node_name().is_some() {
                        return invalid(
                            r,
                            name,
                            "spec.boundObjectRef",
                            "a node's token request must be bound to one of its pods",
                        );
                    }
                    None
                } else {
                    match self.bound_pod(&ns, bound).await {
                        Ok(pod) => Some(pod),
                        Err(msg) => return invalid(r, name, "spec.boundObjectRef", &msg),
                    }
                };
                (auth::service_account_user(&ns, name), uid, pod)
            }
            Some(TokenFor::Node) => match crate::nodetokens::node_uid(self.st, name).await {
                Ok(uid) => (auth::node_user(name), Some(uid), None),
                Err(crate::nodetokens::Failure::Name(why)) => {
                    return invalid(r, name, "metadata.name", &why)
                }
                Err(crate::nodetokens::Failure::Store(e)) => return store_failure(e),
            },
            None => {
                return failure(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{}/token is not served", r.name),
                )
            }
        };
        let exp = auth::unix_now() + ttl;
        let token = self.st.auth.signer.issue(&auth::Claims {
            sub: user.name,
            groups: user.groups,
            exp,
            uid,
            aud: audiences.clone(),
            pod: pod.clone(),
        });
        let expires =
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(exp))
                .to_string();
        json_response(
            StatusCode::CREATED,
            &json!({
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": self.o.namespace, "creationTimestamp": now_rfc3339()},
                "spec": {
                    "audiences": if audiences.is_empty() { vec![auth::API_AUDIENCES[0].to_string()] } else { audiences },
                    "expirationSeconds": ttl,
                    "boundObjectRef": pod.map(|p| json!({"kind": "Pod", "apiVersion": "v1", "name": p.name, "uid": p.uid})),
                },
                "status": {"token": token, "expirationTimestamp": expires},
            }),
        )
    }
}

/// The streams of a pod the API server splices to its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PodStream {
    Exec,
    Attach,
    PortForward,
}

impl PodStream {
    fn what(self) -> &'static str {
        match self {
            PodStream::Exec => "exec",
            PodStream::Attach => "attach",
            PodStream::PortForward => "port-forward",
        }
    }
}
