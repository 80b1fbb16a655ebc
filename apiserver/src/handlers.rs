//! The API's request handling: authentication, then one dispatcher that parses the path and
//! runs get, list, watch, create, update, patch or delete against raft-store.
//!
//! Objects are stored as JSON under `/registry/<group>/<resource>/[<namespace>/]<name>`. An
//! object's `resourceVersion` is the store's `mod_revision` of its key: it is never stored, it
//! is filled in on the way out, and writes that carry one are compare-and-swaps on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use api::convert;
use api::object::{self, status};
use api::rbac::User;
use api::registry::{Resource, REGISTRY};
use api::selector::{FieldSelector, LabelSelector};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use raft_store::{
    Compare, CompareOp, Consistency, EventKind, KeySpan, KeyValue, Op, RangeRequest, StoreError,
    StoreNode, Txn,
};
use serde_json::{json, Value};

use crate::admission;
use crate::auth::{self, Auth, RequestInfo};
use crate::cache::{Feed, WatchCache};
use crate::discovery;
use crate::encryption::SecretBox;
use crate::path::{self, ObjectPath, PathError, Target};

pub struct ApiState {
    pub store: Arc<StoreNode>,
    /// host:port clients use to reach this server.
    pub address: String,
    pub cache: Arc<WatchCache>,
    pub auth: Auth,
    /// Seals Secrets on their way into the store and opens them on the way out.
    pub sealer: Arc<SecretBox>,
}

impl ApiState {
    /// The API's state over a store member; starts the watch cache (inside a Tokio runtime).
    pub fn new(
        store: Arc<StoreNode>,
        admin_token: String,
        address: String,
        sealer: Arc<SecretBox>,
    ) -> Arc<ApiState> {
        let opener = sealer.clone();
        let cache = WatchCache::start(
            store.engine().clone(),
            &[auth::RBAC_PREFIX],
            Arc::new(move |kv: &mut KeyValue| opener.open_kv(kv)),
        );
        Arc::new(ApiState {
            store,
            address,
            auth: Auth::new(admin_token, cache.clone()),
            cache,
            sealer,
        })
    }

    /// A write to the store, with Secrets sealed.
    async fn txn(&self, txn: Txn) -> Result<raft_store::TxnResponse, StoreError> {
        self.store.txn(self.sealer.seal_txn(txn), false).await
    }
}

/// How long a list waits for the watch cache to reach the store's current revision before it
/// reads the store instead.
const CACHE_WAIT: Duration = Duration::from_secs(3);

/// The namespaces that exist from the start, as in Kubernetes.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route(
            "/version",
            get(|| async { json_response(StatusCode::OK, &discovery::version()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/openapi/v3",
            get(|| async { json_response(StatusCode::OK, &discovery::openapi_v3_index()) }),
        )
        .route(
            "/openapi/v3/{*path}",
            get(
                |axum::extract::Path(path): axum::extract::Path<String>| async move {
                    match discovery::openapi_v3(&path) {
                        Some(doc) => (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, "application/json")],
                            doc,
                        )
                            .into_response(),
                        None => failure(
                            StatusCode::NOT_FOUND,
                            "NotFound",
                            "no such OpenAPI document",
                        ),
                    }
                },
            ),
        )
        .fallback(dispatch)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

/// The cluster's CA and admin token, shared by all members through the store: the first member
/// to ask makes them (create-if-absent), the others read what it made. They are sealed with the
/// cluster's encryption key, like Secrets.
pub async fn cluster_secrets(
    store: &StoreNode,
    sealer: &SecretBox,
) -> Result<crate::pki::ClusterSecrets, StoreError> {
    const KEY: &str = "/drover/pki/cluster";
    let decode = |kv: &KeyValue| -> Result<crate::pki::ClusterSecrets, StoreError> {
        let plain = sealer
            .open(&kv.key, &kv.value)
            .map_err(StoreError::Internal)?;
        let v: Value = serde_json::from_slice(&plain)
            .map_err(|e| StoreError::Internal(format!("{KEY}: {e}")))?;
        let field = |f: &str| {
            v[f].as_str()
                .map(String::from)
                .ok_or_else(|| StoreError::Internal(format!("{KEY} has no {f}")))
        };
        Ok(crate::pki::ClusterSecrets {
            ca_pem: field("ca")?,
            ca_key_pem: field("caKey")?,
            admin_token: field("token")?,
        })
    };
    let fresh = crate::pki::ClusterSecrets::generate().map_err(StoreError::Internal)?;
    let value = json!({"ca": fresh.ca_pem, "caKey": fresh.ca_key_pem, "token": fresh.admin_token});
    let txn = Txn::put(
        KEY.as_bytes(),
        serde_json::to_vec(&value).expect("serialises"),
    )
    .when(Compare::exists(KEY.as_bytes(), false))
    .or_else(Op::get(KEY.as_bytes()));
    let resp = store.txn(sealer.seal_txn(txn), false).await?;
    if resp.succeeded {
        return Ok(fresh);
    }
    match resp.range(0).and_then(|r| r.kvs.first()) {
        Some(kv) => decode(kv),
        None => Err(StoreError::Internal(format!(
            "{KEY} vanished while it was read"
        ))),
    }
}

/// Creates what a cluster has from the start, where it is missing: the system namespaces, the
/// `kubernetes` Service (10.96.0.1:443) with Endpoints pointing at this API server, and the
/// default RBAC roles.
pub async fn bootstrap(store: &StoreNode, api_address: &str) -> Result<(), StoreError> {
    let create = |key: String, obj: Value, extra: Option<String>| async move {
        let mut txn =
            Txn::put(key.as_bytes(), to_bytes(&obj)).when(Compare::exists(key.as_bytes(), false));
        let owner = format!(
            "{}/{}",
            object::namespace(&obj).unwrap_or_default(),
            object::name(&obj).unwrap_or_default()
        );
        if let Some(reservation) = extra {
            txn = txn.and_then(Op::put(reservation.as_bytes(), owner.into_bytes()));
        }
        store.txn(txn, false).await.map(|_| ())
    };
    let find = |name| api::registry::find("", "v1", name).expect("registered");
    for name in SYSTEM_NAMESPACES {
        let mut obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        stamp_new(&mut obj);
        create(find("namespaces").key(None, name), obj, None).await?;
    }
    let (host, port) = api_address
        .rsplit_once(':')
        .unwrap_or((api_address, "6443"));
    let port: u16 = port.parse().unwrap_or(6443);
    let ip = admission::API_SERVICE_IP.to_string();
    let mut svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
        "status": {"loadBalancer": {}}});
    stamp_new(&mut svc);
    let reservation = admission::service_reservations(&svc).into_iter().next();
    create(
        find("services").key(Some("default"), "kubernetes"),
        svc,
        reservation,
    )
    .await?;
    // The cluster DNS: every node answers this address itself (node::network), so the
    // Service has no selector and no endpoints.
    let dns_ip = admission::DNS_SERVICE_IP.to_string();
    let mut dns = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS", "kubernetes.io/cluster-service": "true"}},
        "spec": {"type": "ClusterIP", "clusterIP": dns_ip, "clusterIPs": [dns_ip], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]},
        "status": {"loadBalancer": {}}});
    stamp_new(&mut dns);
    let reservation = admission::service_reservations(&dns).into_iter().next();
    create(
        find("services").key(Some("kube-system"), "kube-dns"),
        dns,
        reservation,
    )
    .await?;
    let mut ep = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": host}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]});
    stamp_new(&mut ep);
    create(
        find("endpoints").key(Some("default"), "kubernetes"),
        ep,
        None,
    )
    .await?;
    // The default ClusterRoles and their bindings (cluster-admin for system:masters, discovery
    // for every authenticated user); made once, so that an operator may edit them after.
    let rbac =
        |name| api::registry::find("rbac.authorization.k8s.io", "v1", name).expect("registered");
    let (roles, bindings) = api::rbac::default_roles();
    for (resource, objects) in [("clusterroles", roles), ("clusterrolebindings", bindings)] {
        for mut obj in objects {
            stamp_new(&mut obj);
            let name = object::name(&obj).unwrap_or_default().to_string();
            create(rbac(resource).key(None, &name), obj, None).await?;
        }
    }
    Ok(())
}

pub(crate) fn json_response(code: StatusCode, value: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(value).unwrap_or_default(),
    )
        .into_response()
}

pub(crate) fn failure(code: StatusCode, reason: &str, message: &str) -> Response {
    json_response(code, &status(code.as_u16(), reason, message, None))
}

fn not_found(r: &Resource, name: &str) -> Response {
    let msg = format!("{} \"{name}\" not found", r.name);
    json_response(
        StatusCode::NOT_FOUND,
        &status(
            404,
            "NotFound",
            &msg,
            Some(json!({"name": name, "group": r.group, "kind": r.name})),
        ),
    )
}

fn invalid(r: &Resource, name: &str, field: &str, message: &str) -> Response {
    let cause = api::semantic::Cause {
        field: field.to_string(),
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {message}"),
    };
    invalid_causes(r, name, &[cause])
}

/// 422 Invalid, worded as kube-apiserver does: `Deployment.apps "web" is invalid: [a, b]`.
fn invalid_causes(r: &Resource, name: &str, causes: &[api::semantic::Cause]) -> Response {
    let kind = if r.group.is_empty() {
        r.kind.to_string()
    } else {
        format!("{}.{}", r.kind, r.group)
    };
    let lines: Vec<String> = causes.iter().map(|c| c.line()).collect();
    let listed = match lines.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let msg = format!("{kind} \"{name}\" is invalid: {listed}");
    let causes: Vec<Value> = causes
        .iter()
        .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
        .collect();
    let details = json!({"name": name, "group": r.group, "kind": r.kind, "causes": causes});
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &status(422, "Invalid", &msg, Some(details)),
    )
}

fn forbidden(message: &str) -> Response {
    json_response(
        StatusCode::FORBIDDEN,
        &status(403, "Forbidden", message, None),
    )
}

fn bad_request(message: &str) -> Response {
    failure(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// A store failure as the client should see it.
fn store_failure(e: StoreError) -> Response {
    match e {
        StoreError::Compacted { .. } => failure(
            StatusCode::GONE,
            "Expired",
            &format!("too old resource version: {e}"),
        ),
        StoreError::InvalidArgument(m) => bad_request(&m),
        StoreError::FutureRevision { .. } => failure(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            &format!("Too large resource version: {e}"),
        ),
        StoreError::NoLeader | StoreError::Unavailable(_) => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &e.to_string(),
        ),
        other => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &other.to_string(),
        ),
    }
}

/// Authentication, then authorization, for every request. Health and version are open to
/// anybody, as `system:public-info-viewer` makes them in Kubernetes.
async fn authenticate(State(st): State<Arc<ApiState>>, mut req: Request, next: Next) -> Response {
    let open = matches!(
        req.uri().path(),
        "/version" | "/healthz" | "/livez" | "/readyz"
    );
    let user = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| st.auth.authenticate(token.trim()));
    let Some(user) = user else {
        if open {
            return next.run(req).await;
        }
        return failure(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    };
    let watch = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let info = RequestInfo::new(req.method(), req.uri().path(), watch);
    let mut allowed = open || st.auth.allows(&user, &info);
    if !allowed {
        // RBAC is read from the watch cache, which follows this member's store a moment
        // behind: a binding written just before this request must still count.
        let head = st.store.engine().head().revision;
        if st.cache.wait_for(head, Duration::from_secs(1)).await {
            allowed = st.auth.allows(&user, &info);
        }
    }
    if !allowed {
        let message = api::rbac::forbidden_message(&user, &info.attributes());
        let details = info.resource.as_ref().map(
            |(group, resource, _, _, name)| json!({"name": name, "group": group, "kind": resource}),
        );
        return json_response(
            StatusCode::FORBIDDEN,
            &status(403, "Forbidden", &message, details),
        );
    }
    req.extensions_mut().insert(user);
    next.run(req).await
}

type Query = HashMap<String, String>;

async fn dispatch(
    State(st): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    mut req: Request,
) -> Response {
    let uri = req.uri().clone();
    // A stream's upgrade (pods/exec) is taken now: reading the body drops the request's parts.
    let client_upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
    let user = req
        .extensions()
        .get::<User>()
        .cloned()
        .unwrap_or_else(|| User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        });
    let query: Query = serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
    let body = match axum::body::to_bytes(req.into_body(), 3 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            return failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "the request body is larger than 3 MiB",
            )
        }
    };
    // Typed clients (kubectl's generators among them) send built-in objects as protobuf.
    let sent_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body = if !body.is_empty() && sent_type.contains("protobuf") {
        match crate::protobuf::decode_body(&body) {
            Ok(obj) => Bytes::from(serde_json::to_vec(&obj).expect("serialises")),
            Err(e) => return bad_request(&format!("the protobuf body could not be decoded: {e}")),
        }
    } else {
        body
    };
    let target = match path::parse(uri.path()) {
        Ok(t) => t,
        Err(PathError::NotFound) => {
            return failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            )
        }
        Err(PathError::Scope(m)) => return failure(StatusCode::NOT_FOUND, "NotFound", &m),
    };
    if method != Method::GET && !matches!(target, Target::Object(_)) {
        return failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "discovery documents are read-only",
        );
    }
    match target {
        Target::CoreVersions => {
            json_response(StatusCode::OK, &discovery::core_versions(&st.address))
        }
        Target::Groups => json_response(StatusCode::OK, &discovery::groups()),
        Target::Group(g) => match discovery::group(&g) {
            Some(doc) => json_response(StatusCode::OK, &doc),
            None => failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            ),
        },
        Target::Resources { group, version } => match discovery::resources(&group, &version) {
            Some(doc) => json_response(StatusCode::OK, &doc),
            None => failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            ),
        },
        Target::Object(o) => {
            let table = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("as=Table"));
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_string();
            // DeleteOptions travel in the body of a delete and inside an Eviction.
            let delete_options = method == Method::DELETE
                || (method == Method::POST && o.subresource.as_deref() == Some("eviction"));
            let dry_run = match dry_run(&query, delete_options.then_some(&body)) {
                Ok(d) => d,
                Err(r) => return r,
            };
            let call = Call {
                st: &st,
                o: &o,
                query: &query,
                table,
                user: &user,
                dry_run,
            };
            if o.resource.is_metrics() {
                return match (&method, &o.subresource) {
                    (&Method::GET, None) => {
                        crate::metrics::serve(
                            &st,
                            o.resource,
                            o.namespace.as_deref(),
                            o.name.as_deref(),
                            &query,
                        )
                        .await
                    }
                    _ => failure(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "MethodNotAllowed",
                        "resource metrics are read-only",
                    ),
                };
            }
            if o.resource.is_review() {
                return match (&method, &o.name) {
                    (&Method::POST, None) => call.review(&body),
                    _ => failure(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "MethodNotAllowed",
                        &format!("{} can only be created", o.resource.name),
                    ),
                };
            }
            match (&method, &o.name) {
                (&Method::GET, Some(name)) if o.subresource.as_deref() == Some("log") => {
                    call.pod_log(name).await
                }
                // GET for WebSocket clients (kubectl 1.30+), POST for SPDY ones.
                (&Method::GET | &Method::POST, Some(name))
                    if o.subresource.as_deref() == Some("exec") =>
                {
                    call.pod_exec(
                        name,
                        &method,
                        &headers,
                        uri.query().unwrap_or(""),
                        client_upgrade,
                    )
                    .await
                }
                (&Method::GET | &Method::POST, Some(_))
                    if o.resource.name == "pods"
                        && matches!(o.subresource.as_deref(), Some("portforward" | "attach")) =>
                {
                    let what = match o.subresource.as_deref() {
                        Some("portforward") => "port-forward",
                        _ => "attach",
                    };
                    bad_request(&format!("{what} is not supported yet"))
                }
                (&Method::POST, Some(name)) if o.subresource.as_deref() == Some("token") => {
                    call.token_request(name, &body).await
                }
                (&Method::POST, Some(name)) if o.subresource.as_deref() == Some("binding") => {
                    call.bind(name, &body).await
                }
                (&Method::POST, Some(name)) if o.subresource.as_deref() == Some("eviction") => {
                    call.evict(name, &body).await
                }
                (&Method::GET, Some(name)) => call.get(name).await,
                (&Method::GET, None) if is_true(query.get("watch")) => call.watch().await,
                (&Method::GET, None) => call.list().await,
                (&Method::POST, None) => call.create(&body).await,
                (&Method::PUT, Some(name)) => call.update(name, &body).await,
                (&Method::PATCH, Some(name)) => call.patch(name, &content_type, &body).await,
                (&Method::DELETE, Some(name)) => call.delete(name, &body).await,
                (&Method::DELETE, None) => call.delete_collection().await,
                _ => failure(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    &format!("{method} is not supported here"),
                ),
            }
        }
    }
}

/// `dryRun=All`: the request is admitted, defaulted, validated and checked against the store
/// as usual, and answered as if it were carried out, but nothing is written. Kubernetes knows
/// no other value; an empty one means a real request. A delete may say it in the query or in
/// its DeleteOptions (kubectl does the latter), an eviction in the Eviction's DeleteOptions.
fn dry_run(query: &Query, delete_options: Option<&Bytes>) -> Result<bool, Response> {
    let mut asked: Vec<String> = query.get("dryRun").cloned().into_iter().collect();
    if let Some(body) = delete_options {
        if let Ok(options) = serde_json::from_slice::<Value>(body) {
            let options = options.get("deleteOptions").unwrap_or(&options);
            if let Some(list) = options["dryRun"].as_array() {
                asked.extend(list.iter().map(|v| v.as_str().unwrap_or("?").to_string()));
            }
        }
    }
    match asked.iter().find(|v| !v.is_empty() && *v != "All") {
        None => Ok(asked.iter().any(|v| v == "All")),
        Some(other) => Err(json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &status(
                422,
                "Invalid",
                &format!("dryRun: Unsupported value: \"{other}\": supported values: \"All\""),
                Some(
                    json!({"causes": [{"reason": "FieldValueNotSupported", "message": format!("Unsupported value: \"{other}\": supported values: \"All\""), "field": "dryRun"}]}),
                ),
            ),
        )),
    }
}

/// How one attempt at a delete ended.
enum Deletion {
    /// Answered: deleted, marked for deletion, or refused.
    Done(Response),
    /// The object changed between the read and the write.
    Moved,
}

fn has_finalizers(obj: &Value) -> bool {
    obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

/// The operations that release what a stored object holds (a Service's IP and node ports).
fn release_ops(r: &Resource, obj: &Value) -> Vec<Op> {
    if r.name != "services" {
        return Vec::new();
    }
    admission::service_reservations(obj)
        .into_iter()
        .map(|k| Op::delete(k.as_bytes()))
        .collect()
}

fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|v| v == "true" || v == "1")
}

fn to_bytes(obj: &Value) -> Vec<u8> {
    let mut stored = obj.clone();
    // The resourceVersion is the key's mod revision; it is never stored.
    if let Some(m) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&stored).expect("a JSON value serialises")
}

/// The stored object with its resourceVersion filled in.
pub(crate) fn from_kv(kv: &KeyValue) -> Value {
    let mut obj: Value = serde_json::from_slice(&kv.value).unwrap_or_else(|_| json!({}));
    object::metadata_mut(&mut obj)
        .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    obj
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// What every new object gets: uid, creation time, generation.
fn stamp_new(obj: &mut Value) {
    let m = object::metadata_mut(obj);
    m.insert("uid".into(), json!(new_uid()));
    m.insert("creationTimestamp".into(), json!(now_rfc3339()));
    m.insert("generation".into(), json!(1));
    m.remove("resourceVersion");
}

/// How long ago `ts` was, as kubectl prints ages.
fn age(ts: Option<&str>) -> String {
    let Some(t) = ts.and_then(|t| humantime::parse_rfc3339(t).ok()) else {
        return "<unknown>".into();
    };
    let s = SystemTime::now()
        .duration_since(t)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=599 => format!("{}m{}s", s / 60, s % 60),
        600..=10799 => format!("{}m", s / 60),
        10800..=172799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

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

/// One request against one resource.
struct Call<'a> {
    st: &'a ApiState,
    o: &'a ObjectPath,
    query: &'a Query,
    table: bool,
    user: &'a User,
    /// `dryRun=All`: every write goes through `commit`, which then writes nothing.
    dry_run: bool,
}

impl Call<'_> {
    fn resource(&self) -> &'static Resource {
        self.o.resource
    }

    fn key(&self, name: &str) -> String {
        self.resource().key(self.o.namespace.as_deref(), name)
    }

    /// A write to the store; under dry-run only its comparisons and reads run, so the answer
    /// (success, conflict, a ClusterIP or NodePort already taken) is the real one and nothing
    /// is stored: not the object, not an allocation.
    async fn commit(&self, txn: Txn) -> Result<raft_store::TxnResponse, StoreError> {
        if self.dry_run {
            self.st.txn(txn.without_writes()).await
        } else {
            self.st.txn(txn).await
        }
    }

    /// The resourceVersion a write answers with: the write's own revision, or under dry-run,
    /// the version the object already had (none for an object that does not exist yet).
    fn written_version(&self, resp: &raft_store::TxnResponse, before: Option<u64>) -> Value {
        match (self.dry_run, before) {
            (false, _) => json!(resp.revision.to_string()),
            (true, Some(rev)) => json!(rev.to_string()),
            (true, None) => json!(""),
        }
    }

    /// A linearizable read from the store.
    async fn range(&self, req: RangeRequest) -> Result<raft_store::RangeResponse, StoreError> {
        let mut resp = self
            .st
            .store
            .range(req, Consistency::Linearizable, false)
            .await?;
        resp.kvs
            .iter_mut()
            .for_each(|kv| self.st.sealer.open_kv(kv));
        Ok(resp)
    }

    /// A stored object, in the version this request addressed.
    fn load(&self, kv: &KeyValue) -> Value {
        convert::from_storage(self.resource(), from_kv(kv))
    }

    /// The key prefix of the collection addressed (one namespace, or all).
    fn prefix(&self) -> String {
        match &self.o.namespace {
            Some(ns) if self.resource().namespaced => {
                format!("{}{ns}/", self.resource().key_prefix())
            }
            _ => self.resource().key_prefix(),
        }
    }

    async fn read(&self, name: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self
            .range(RangeRequest::new(KeySpan::key(self.key(name))))
            .await?;
        Ok(resp.kvs.into_iter().next())
    }

    fn respond(&self, code: StatusCode, obj: Value) -> Response {
        if self.table {
            return json_response(code, &self.to_table(std::slice::from_ref(&obj), None));
        }
        json_response(code, &obj)
    }

    async fn get(&self, name: &str) -> Response {
        if let Err(r) = self.check_subresource() {
            return r;
        }
        match self.read(name).await {
            Ok(Some(kv)) => self.respond(StatusCode::OK, self.view(self.load(&kv))),
            Ok(None) => not_found(self.resource(), name),
            Err(e) => store_failure(e),
        }
    }

    fn selectors(&self) -> Result<(LabelSelector, FieldSelector), Response> {
        let labels =
            LabelSelector::parse(self.query.get("labelSelector").map_or("", String::as_str))
                .map_err(|e| bad_request(&e.to_string()))?;
        let fields =
            FieldSelector::parse(self.query.get("fieldSelector").map_or("", String::as_str))
                .map_err(|e| bad_request(&e.to_string()))?;
        Ok((labels, fields))
    }

    async fn list(&self) -> Response {
        let (labels, fields) = match self.selectors() {
            Ok(s) => s,
            Err(r) => return r,
        };
        let limit = self
            .query
            .get("limit")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|l| *l > 0);
        let resp = match self.list_range().await {
            Ok(r) => r,
            Err(e) => return store_failure(e),
        };
        let r = self.resource();
        // The common case — a plain list in the storage version — is rendered from the stored
        // bytes, parsing only each object's top level and metadata (a 5,000-pod list spent most
        // of its time parsing and re-serialising whole objects).
        let plain = !self.table && self.query.get("fieldSelector").is_none_or(|f| f.is_empty());
        if plain && r.version == api::registry::storage_version(r) {
            if let Some(body) = render_list(r, &resp, &labels, limit) {
                return (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response();
            }
        }
        let mut items = Vec::new();
        let mut next = None;
        for kv in &resp.kvs {
            let obj = self.load(kv);
            if !labels.matches(&object::labels(&obj)) || !fields.matches(&obj) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                let last = items
                    .last()
                    .map(|(k, _): &(String, Value)| k.clone())
                    .unwrap_or_default();
                next = Some(encode_continue(resp.revision, &last));
                break;
            }
            items.push((String::from_utf8_lossy(&kv.key).into_owned(), obj));
        }
        let objects: Vec<Value> = items.into_iter().map(|(_, o)| o).collect();
        let mut meta = json!({"resourceVersion": resp.revision.to_string()});
        if let Some(token) = next {
            meta["continue"] = json!(token);
        }
        if self.table {
            return json_response(StatusCode::OK, &self.to_table(&objects, Some(meta)));
        }
        json_response(
            StatusCode::OK,
            &json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": meta, "items": objects}),
        )
    }

    /// The objects a list returns, before selectors. A first page is served by the watch
    /// cache (at least as new as the resourceVersion asked for, or as the store's current
    /// revision when none is given); later pages and exact past revisions by the store, at the
    /// revision pinned in the continue token.
    async fn list_range(&self) -> Result<raft_store::RangeResponse, StoreError> {
        let prefix = self.prefix();
        if let Some(token) = self.query.get("continue").filter(|c| !c.is_empty()) {
            let Some((revision, after)) = decode_continue(token) else {
                return Err(StoreError::invalid("invalid continue token"));
            };
            let span = match &after {
                Some(after) => KeySpan::prefix(prefix).after(after.as_bytes()),
                None => KeySpan::prefix(prefix),
            };
            return self.range(RangeRequest::new(span).at(revision)).await;
        }
        let rv = self.query.get("resourceVersion").filter(|v| !v.is_empty());
        let rv_number = rv.and_then(|v| v.parse::<u64>().ok());
        if rv.is_some() && rv_number.is_none() {
            return Err(StoreError::invalid(
                "resourceVersion: Invalid value: it must be a number",
            ));
        }
        let exact = self
            .query
            .get("resourceVersionMatch")
            .is_some_and(|m| m == "Exact");
        if exact {
            let span = KeySpan::prefix(prefix);
            return self
                .range(RangeRequest::new(span).at(rv_number.unwrap_or(0)))
                .await;
        }
        let at_least = match rv_number {
            Some(n) => n,
            None => self.current_revision().await?,
        };
        if self.st.cache.wait_for(at_least, CACHE_WAIT).await {
            return Ok(self.st.cache.range(&prefix, None));
        }
        self.range(RangeRequest::new(KeySpan::prefix(prefix))).await
    }

    /// The store's current revision, by a linearizable read: everything acknowledged before
    /// this call is at or below it.
    async fn current_revision(&self) -> Result<u64, StoreError> {
        let probe = RangeRequest::new(KeySpan::key(crate::cache::CACHED_PREFIX)).count_only();
        Ok(self.range(probe).await?.revision)
    }

    /// Checks and completes an object a client sent for `name` (None: a create that may use
    /// generateName). Returns the object and its name.
    fn admit(&self, body: &Bytes, name: Option<&str>) -> Result<(Value, String), Response> {
        let r = self.resource();
        let mut obj: Value = serde_json::from_slice(body).map_err(|e| {
            bad_request(&format!(
                "the body of the request was in an unknown format: {e}"
            ))
        })?;
        if !obj.is_object() {
            return Err(bad_request("the body must be a JSON object"));
        }
        let api_version = r.api_version();
        match obj.get("kind").and_then(Value::as_str) {
            Some(kind) if kind != r.kind => {
                return Err(bad_request(&format!(
                    "the kind {kind:?} does not match the resource {} (kind {})",
                    r.name, r.kind
                )))
            }
            _ => obj["kind"] = json!(r.kind),
        }
        match obj.get("apiVersion").and_then(Value::as_str) {
            Some(v) if v != api_version => {
                return Err(bad_request(&format!(
                    "apiVersion {v:?} is not served for {}; use {api_version}",
                    r.name
                )))
            }
            _ => obj["apiVersion"] = json!(api_version),
        }
        let body_name = object::name(&obj).map(str::to_string);
        let name = match (name, body_name) {
            (Some(url), Some(b)) if url != b => {
                return Err(bad_request(&format!(
                    "the name of the object ({b}) does not match the name on the URL ({url})"
                )))
            }
            (Some(url), _) => url.to_string(),
            (None, Some(b)) => b,
            (None, None) => match object::metadata(&obj)
                .and_then(|m| m.get("generateName"))
                .and_then(Value::as_str)
            {
                Some(prefix) => {
                    let suffix: String = (0..5)
                        .map(|_| {
                            "bcdfghjklmnpqrstvwxz2456789".as_bytes()
                                [rand::random::<u8>() as usize % 27]
                                as char
                        })
                        .collect();
                    format!("{prefix}{suffix}")
                }
                None => {
                    return Err(invalid(
                        r,
                        "",
                        "metadata.name",
                        "name or generateName is required",
                    ))
                }
            },
        };
        // The object must fit its type; with strict field validation (kubectl's default),
        // unknown fields are errors too.
        let strict = self
            .query
            .get("fieldValidation")
            .is_some_and(|v| v == "Strict");
        match api::validate::check(r.group, r.version, r.kind, &obj, strict) {
            Ok(()) => {}
            Err(api::validate::ShapeError::Invalid { field, message }) => {
                return Err(invalid(r, &name, &field, &message))
            }
            Err(api::validate::ShapeError::UnknownField(field)) => {
                return Err(bad_request(&format!(
                    "strict decoding error: unknown field \"{field}\""
                )))
            }
        }
        let rule = if r.name == "namespaces" {
            object::invalid_label(&name)
        } else {
            object::invalid_subdomain(&name)
        };
        if let Some(why) = rule {
            return Err(invalid(
                r,
                &name,
                "metadata.name",
                &format!("\"{name}\": {why}"),
            ));
        }
        let body_ns = object::namespace(&obj).map(str::to_string);
        let meta = object::metadata_mut(&mut obj);
        meta.insert("name".into(), json!(name));
        if r.namespaced {
            let ns = self.o.namespace.clone().unwrap_or_else(|| "default".into());
            if body_ns.as_ref().is_some_and(|b| *b != ns) {
                return Err(bad_request(&format!(
                    "the namespace of the provided object ({}) does not match the namespace sent on the request ({ns})",
                    body_ns.unwrap_or_default()
                )));
            }
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        // Defaults, then the rules beyond the shape (after defaulting, as Kubernetes does).
        api::defaults::apply(r.name, &mut obj);
        let causes = api::semantic::check(r.name, &obj);
        if !causes.is_empty() {
            return Err(invalid_causes(r, &name, &causes));
        }
        self.check_grants(&obj, &name)?;
        if let Some(node) = self.user.node_name() {
            if r.name == "nodes" && name != node {
                return Err(forbidden(&format!(
                    "node {node:?} may not write the Node {name:?}: a node writes only its own"
                )));
            }
        }
        Ok((obj, name))
    }

    /// RBAC's escalation rule: a Role or ClusterRole may only grant what its writer holds, and
    /// a binding may only be made by one who holds what the role grants (or may `bind` it).
    fn check_grants(&self, obj: &Value, name: &str) -> Result<(), Response> {
        let r = self.resource();
        if r.group != "rbac.authorization.k8s.io" {
            return Ok(());
        }
        let rbac = self.st.auth.rbac();
        let ns = object::namespace(obj).unwrap_or("");
        let may = |verb: &str, resource: &str, role: &str| {
            let a = api::rbac::Attributes {
                verb,
                resource: Some(api::rbac::ResourceAttributes {
                    group: "rbac.authorization.k8s.io",
                    resource,
                    namespace: ns,
                    name: role,
                    ..Default::default()
                }),
                path: "",
            };
            rbac.allows(self.user, &a)
        };
        let outcome = match r.name {
            "roles" | "clusterroles" => {
                if may("escalate", r.name, name) {
                    return Ok(());
                }
                let rules = obj["rules"].as_array().cloned().unwrap_or_default();
                rbac.covers(self.user, ns, &rules)
            }
            "rolebindings" | "clusterrolebindings" => {
                let kind = obj["roleRef"]["kind"].as_str().unwrap_or("");
                let role = obj["roleRef"]["name"].as_str().unwrap_or("");
                let resource = if kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                if may("bind", resource, role) {
                    return Ok(());
                }
                match rbac.rules_of_ref(ns, kind, role) {
                    Some(rules) => rbac.covers(self.user, ns, &rules),
                    None => Err(format!("roleRef: the {kind} {role:?} does not exist")),
                }
            }
            _ => Ok(()),
        };
        outcome.map_err(|why| forbidden(&format!("{} {name:?} is forbidden: {why}", r.name)))
    }

    /// TokenReview (is this token valid, for these audiences, and whose is it?) and
    /// SelfSubjectAccessReview (may I do this?), answered and not stored.
    fn review(&self, body: &Bytes) -> Response {
        let r = self.resource();
        let review: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad_request(&format!("the {} is not valid JSON: {e}", r.kind)),
        };
        let spec = &review["spec"];
        let status = match r.name {
            "tokenreviews" => {
                let Some(token) = spec["token"].as_str() else {
                    return invalid(r, "", "spec.token", "Required value");
                };
                let audiences: Vec<String> = spec["audiences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect();
                match self.st.auth.review(token, &audiences) {
                    Some(user) => {
                        json!({"authenticated": true, "user": {"username": user.name, "groups": user.groups}, "audiences": audiences})
                    }
                    None => json!({"authenticated": false, "error": "invalid bearer token"}),
                }
            }
            _ => {
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
                let allowed = self.st.auth.allows_attributes(self.user, &a);
                json!({"allowed": allowed, "reason": if allowed { "allowed by RBAC" } else { "" }})
            }
        };
        let mut out = review;
        out["status"] = status;
        out["apiVersion"] = json!(r.api_version());
        out["kind"] = json!(r.kind);
        json_response(StatusCode::CREATED, &out)
    }

    /// `pods/{name}/log`: proxied to the node the pod runs on, with a short-lived token the
    /// node accepts only for itself.
    async fn pod_log(&self, name: &str) -> Response {
        let r = self.resource();
        if r.name != "pods" {
            return not_found(r, name);
        }
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
        match crate::proxy::get(endpoint, &path, &token).await {
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

    /// `pods/{name}/exec`: checked here (the pod runs, the container is one of its own), then
    /// the client's upgrade (a WebSocket, `v5.channel.k8s.io`) is passed to the node the pod
    /// runs on, and once the node has switched protocols the two connections are spliced. The
    /// stream itself (channels, the exit status) is between kubectl and the node.
    async fn pod_exec(
        &self,
        name: &str,
        method: &Method,
        headers: &HeaderMap,
        raw_query: &str,
        client: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response {
        let r = self.resource();
        if r.name != "pods" {
            return not_found(r, name);
        }
        let pod = match self.read(name).await {
            Ok(Some(kv)) => from_kv(&kv),
            Ok(None) => return not_found(r, name),
            Err(e) => return store_failure(e),
        };
        let container = match exec_container(name, &pod, self.query.get("container")) {
            Ok(c) => c,
            Err(message) => return bad_request(&message),
        };
        let (node_name, endpoint) = match self.pod_node(name, &pod) {
            Ok(found) => found,
            Err(refusal) => return refusal,
        };
        let Some(client) = client else {
            return bad_request(
                "exec needs a connection that can be upgraded: a WebSocket over HTTP/1.1",
            );
        };
        let ns = self.o.namespace.clone().unwrap_or_default();
        let path = format!("/exec/{ns}/{name}/{container}?{raw_query}");
        let token = crate::metrics::node_token(self.st, &node_name);
        let mut resp = match crate::proxy::upgrade(endpoint, method, &path, &token, headers).await {
            Ok(resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => resp,
            Ok(resp) => return node_refusal(resp).await,
            Err(e) => {
                return failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    &format!("cannot reach node {node_name} at {endpoint} for exec: {e}"),
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
    async fn bind(&self, name: &str, body: &Bytes) -> Response {
        let r = self.resource();
        if r.name != "pods" {
            return not_found(r, name);
        }
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
        self.conflict(name)
    }

    /// `pods/{name}/eviction`: a graceful delete of the pod with the Eviction's DeleteOptions
    /// (no PodDisruptionBudgets are served, so none can refuse it).
    async fn evict(&self, name: &str, body: &Bytes) -> Response {
        let r = self.resource();
        if r.name != "pods" {
            return not_found(r, name);
        }
        let eviction: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad_request(&format!("the Eviction is not valid JSON: {e}")),
        };
        let options = eviction.get("deleteOptions").cloned().unwrap_or(json!({}));
        let path = ObjectPath {
            subresource: None,
            ..self.o.clone()
        };
        let plain = Call { o: &path, ..*self };
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

    /// `serviceaccounts/{name}/token` and `nodes/{name}/token`: a TokenRequest answered with a
    /// token this cluster signed for the ServiceAccount, or for the node's agent.
    async fn token_request(&self, name: &str, body: &Bytes) -> Response {
        let r = self.resource();
        let request: Value = if body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return bad_request(&format!("the TokenRequest is not valid JSON: {e}")),
            }
        };
        let default_ttl = if r.name == "nodes" { 365 * 86400 } else { 3600 };
        let ttl = match request["spec"]["expirationSeconds"].as_i64() {
            None => default_ttl,
            Some(s) if (600..=(1i64 << 32)).contains(&s) => s as u64,
            Some(_) => {
                return invalid(
                    r,
                    name,
                    "spec.expirationSeconds",
                    "may not specify a duration less than 10 minutes or more than 2^32 seconds",
                )
            }
        };
        let (user, uid) = match r.name {
            "serviceaccounts" => {
                let ns = self.o.namespace.clone().unwrap_or_default();
                let sa = match self.read(name).await {
                    Ok(Some(kv)) => from_kv(&kv),
                    Ok(None) => return not_found(r, name),
                    Err(e) => return store_failure(e),
                };
                let uid = sa["metadata"]["uid"].as_str().map(str::to_string);
                (auth::service_account_user(&ns, name), uid)
            }
            "nodes" => (auth::node_user(name), None),
            _ => {
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
            aud: None,
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
                "spec": {"audiences": request["spec"]["audiences"].as_array().cloned().unwrap_or_default(), "expirationSeconds": ttl},
                "status": {"token": token, "expirationTimestamp": expires},
            }),
        )
    }

    async fn namespace_exists(&self) -> Result<bool, StoreError> {
        let Some(ns) = &self.o.namespace else {
            return Ok(true);
        };
        let nsr = api::registry::find("", "v1", "namespaces").expect("registered");
        let resp = self
            .range(RangeRequest::new(KeySpan::key(nsr.key(None, ns))))
            .await?;
        Ok(!resp.kvs.is_empty())
    }

    async fn create(&self, body: &Bytes) -> Response {
        let (mut obj, name) = match self.admit(body, None) {
            Ok(x) => x,
            Err(r) => return r,
        };
        if self.resource().namespaced {
            match self.namespace_exists().await {
                Ok(true) => {}
                Ok(false) => {
                    let ns = self.o.namespace.clone().unwrap_or_default();
                    return not_found(
                        api::registry::find("", "v1", "namespaces").expect("registered"),
                        &ns,
                    );
                }
                Err(e) => return store_failure(e),
            }
        }
        stamp_new(&mut obj);
        if self.resource().name == "namespaces" {
            obj["status"] = json!({"phase": "Active"});
        }
        let r = self.resource();
        let key = self.key(&name);
        let holder = format!("{}/{name}", self.o.namespace.as_deref().unwrap_or(""));
        // Reservations (a Service's IP and ports) are picked at random; a clash with another
        // create fails the transaction's comparison and the next attempt picks again.
        for _attempt in 0..16 {
            let mut candidate = obj.clone();
            let reservations = if r.name == "services" {
                match admission::service_create(&mut candidate) {
                    Ok(v) => v,
                    Err((field, msg)) => return invalid(r, &name, &field, &msg),
                }
            } else {
                Vec::new()
            };
            let mut txn = Txn::put(
                key.as_bytes(),
                to_bytes(&convert::to_storage(r, candidate.clone())),
            )
            .when(Compare::exists(key.as_bytes(), false))
            .or_else(Op::get(key.as_bytes()));
            for res in &reservations {
                txn = txn
                    .when(Compare::exists(res.key.as_bytes(), false))
                    .and_then(Op::put(res.key.as_bytes(), holder.as_bytes()));
            }
            let resp = match self.commit(txn).await {
                Ok(resp) => resp,
                Err(e) => return store_failure(e),
            };
            if resp.succeeded {
                let version = self.written_version(&resp, None);
                let meta = object::metadata_mut(&mut candidate);
                if self.dry_run {
                    meta.remove("resourceVersion");
                } else {
                    meta.insert("resourceVersion".into(), version);
                }
                return self.respond(StatusCode::CREATED, candidate);
            }
            if resp
                .range(0)
                .is_some_and(|existing| !existing.kvs.is_empty())
            {
                let msg = format!("{} \"{name}\" already exists", r.name);
                let details = json!({"name": name, "group": r.group, "kind": r.name});
                return json_response(
                    StatusCode::CONFLICT,
                    &status(409, "AlreadyExists", &msg, Some(details)),
                );
            }
            // A reservation clashed. If the client chose it, that is the client's error.
            for res in reservations.iter().filter(|res| res.chosen_by_client) {
                let taken = self
                    .range(RangeRequest::new(KeySpan::key(res.key.as_bytes())))
                    .await;
                if taken.is_ok_and(|t| !t.kvs.is_empty()) {
                    let (field, value) = res.what.split_once(": ").unwrap_or((&res.what, ""));
                    return invalid(
                        r,
                        &name,
                        field,
                        &format!(
                            "{value}: provided {} is already allocated",
                            if field.contains("IP") { "IP" } else { "port" }
                        ),
                    );
                }
            }
        }
        failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "could not allocate a free ClusterIP or NodePort; the ranges may be full",
        )
    }

    /// Writes `obj` over the stored `current` if it has not changed since (`current`'s revision).
    async fn replace(
        &self,
        name: &str,
        current: &KeyValue,
        mut obj: Value,
    ) -> Result<Value, Response> {
        let old = self.load(current);
        let mut change = admission::ServiceChange::default();
        if self.resource().name == "services" {
            match admission::service_update(&old, &mut obj) {
                Ok(c) => change = c,
                Err((field, msg)) => return Err(invalid(self.resource(), name, &field, &msg)),
            }
        }
        // What the server owns is kept: identity, creation time; generation moves with spec.
        let meta = object::metadata_mut(&mut obj);
        for field in ["uid", "creationTimestamp"] {
            match old["metadata"].get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let spec_changed = old.get("spec") != obj.get("spec");
        object::metadata_mut(&mut obj).insert(
            "generation".into(),
            json!(if spec_changed {
                generation + 1
            } else {
                generation
            }),
        );
        // A deletion in progress cannot be undone by an update; once the last finalizer is
        // gone, the update completes the deletion instead.
        for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
            if let Some(v) = old["metadata"].get(field) {
                object::metadata_mut(&mut obj).insert(field.into(), v.clone());
            }
        }
        let key = self.key(name);
        let finished = old["metadata"].get("deletionTimestamp").is_some()
            && !has_finalizers(&obj)
            && !self.graceful_pod(&obj);
        let stored = to_bytes(&convert::to_storage(self.resource(), obj.clone()));
        // An update that changes nothing is not written, as kube-apiserver skips it: the
        // resourceVersion stays, watchers hear nothing, and an apply of the same manifest
        // leaves the object as it was.
        if !finished && change.acquire.is_empty() && change.release.is_empty() {
            let unchanged = serde_json::from_slice::<Value>(&current.value)
                .is_ok_and(|before| serde_json::from_slice::<Value>(&stored).ok() == Some(before));
            if unchanged {
                object::metadata_mut(&mut obj).insert(
                    "resourceVersion".into(),
                    json!(current.mod_revision.to_string()),
                );
                return Ok(obj);
            }
        }
        let mut txn = Txn::put(key.as_bytes(), stored);
        if finished {
            txn = Txn::delete(key.as_bytes());
            txn.success.extend(release_ops(self.resource(), &obj));
        }
        let mut txn = txn.when(Compare::mod_revision(
            key.as_bytes(),
            CompareOp::Equal,
            current.mod_revision,
        ));
        if !finished {
            let holder = format!("{}/{name}", self.o.namespace.as_deref().unwrap_or(""));
            for res in &change.acquire {
                txn = txn
                    .when(Compare::exists(res.key.as_bytes(), false))
                    .and_then(Op::put(res.key.as_bytes(), holder.as_bytes()));
            }
            for k in &change.release {
                txn = txn.and_then(Op::delete(k.as_bytes()));
            }
        }
        match self.commit(txn).await {
            Ok(resp) if resp.succeeded => {
                let version = self.written_version(&resp, Some(current.mod_revision));
                object::metadata_mut(&mut obj).insert("resourceVersion".into(), version);
                Ok(obj)
            }
            Ok(_) if !change.acquire.is_empty() => {
                // The object moved (a conflict), or a node port is taken.
                if self
                    .read(name)
                    .await
                    .ok()
                    .flatten()
                    .map(|kv| kv.mod_revision)
                    != Some(current.mod_revision)
                {
                    return Err(self.conflict(name));
                }
                let taken = change
                    .acquire
                    .iter()
                    .find(|r| r.chosen_by_client)
                    .map(|r| r.what.clone())
                    .unwrap_or_else(|| "spec.ports: a node port".into());
                let (field, value) = taken.split_once(": ").unwrap_or((&taken, ""));
                // A port picked at random that clashed is retried by the caller as a conflict.
                if !change.acquire.iter().any(|r| r.chosen_by_client) {
                    return Err(self.conflict(name));
                }
                Err(invalid(
                    self.resource(),
                    name,
                    field,
                    &format!("{value}: provided port is already allocated"),
                ))
            }
            Ok(_) => Err(self.conflict(name)),
            Err(e) => Err(store_failure(e)),
        }
    }

    fn conflict(&self, name: &str) -> Response {
        let r = self.resource();
        let msg = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            r.name
        );
        json_response(
            StatusCode::CONFLICT,
            &status(
                409,
                "Conflict",
                &msg,
                Some(json!({"name": name, "group": r.group, "kind": r.name})),
            ),
        )
    }

    async fn update(&self, name: &str, body: &Bytes) -> Response {
        if let Err(r) = self.check_subresource() {
            return r;
        }
        let current = match self.read(name).await {
            Ok(Some(kv)) => kv,
            Ok(None) => return not_found(self.resource(), name),
            Err(e) => return store_failure(e),
        };
        let incoming: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return bad_request(&format!(
                    "the body of the request was in an unknown format: {e}"
                ))
            }
        };
        // A resourceVersion in the body must be the current one: optimistic concurrency.
        if let Some(rv) = object::metadata(&incoming)
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
        {
            if rv.parse::<u64>().ok() != Some(current.mod_revision) {
                return self.conflict(name);
            }
        }
        self.write_view(name, &current, incoming)
            .await
            .unwrap_or_else(|r| r)
    }

    /// Writes `incoming` — the object, or its status or scale view — over `current`.
    async fn write_view(
        &self,
        name: &str,
        current: &KeyValue,
        incoming: Value,
    ) -> Result<Response, Response> {
        let stored = self.load(current);
        let merged = self.unview(&stored, incoming)?;
        let bytes = Bytes::from(serde_json::to_vec(&merged).expect("serialises"));
        let (obj, _) = self.admit(&bytes, Some(name))?;
        let obj = self.replace(name, current, obj).await?;
        Ok(self.respond(StatusCode::OK, self.view(obj)))
    }

    fn check_subresource(&self) -> Result<(), Response> {
        let r = self.resource();
        match self.o.subresource.as_deref() {
            None => Ok(()),
            Some("status") if r.has_status() => Ok(()),
            Some("scale") if r.has_scale() => Ok(()),
            Some(other) => Err(failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!(
                    "the server could not find the requested resource ({}/{other} is not served)",
                    r.name
                ),
            )),
        }
    }

    /// What a request to this path sees of a stored object: the object, or its Scale.
    fn view(&self, obj: Value) -> Value {
        if self.o.subresource.as_deref() != Some("scale") {
            return obj;
        }
        let m = &obj["metadata"];
        let selector = obj["spec"]["selector"]["matchLabels"]
            .as_object()
            .map(|l| {
                l.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"], "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
            "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
            "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
        })
    }

    /// The whole object to store when `incoming` is written through this path over `stored`:
    /// the main endpoint cannot change status, `/status` changes only status, `/scale` only
    /// `spec.replicas`.
    fn unview(&self, stored: &Value, incoming: Value) -> Result<Value, Response> {
        let r = self.resource();
        match self.o.subresource.as_deref() {
            None => {
                let mut obj = incoming;
                if r.has_status() && r.name != "namespaces" {
                    match stored.get("status") {
                        Some(st) => obj["status"] = st.clone(),
                        None => {
                            obj.as_object_mut().map(|m| m.remove("status"));
                        }
                    }
                }
                Ok(obj)
            }
            Some("status") => {
                let mut obj = stored.clone();
                obj["status"] = incoming.get("status").cloned().unwrap_or(Value::Null);
                Ok(obj)
            }
            Some("scale") => {
                let Some(replicas) = incoming["spec"]["replicas"].as_i64().filter(|n| *n >= 0)
                else {
                    let name = object::name(stored).unwrap_or("");
                    return Err(invalid(
                        r,
                        name,
                        "spec.replicas",
                        "must be a non-negative integer",
                    ));
                };
                let mut obj = stored.clone();
                obj["spec"]["replicas"] = json!(replicas);
                Ok(obj)
            }
            Some(_) => Err(self
                .check_subresource()
                .expect_err("only served subresources get here")),
        }
    }

    async fn patch(&self, name: &str, content_type: &str, body: &Bytes) -> Response {
        if let Err(r) = self.check_subresource() {
            return r;
        }
        if content_type.starts_with("application/apply-patch") {
            return self.server_side_apply(name, body).await;
        }
        let patch: Value = match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => return bad_request(&format!("the patch is not valid JSON: {e}")),
        };
        // A patch is applied to the latest version and retried if that moved meanwhile.
        for _ in 0..5 {
            let current = match self.read(name).await {
                Ok(Some(kv)) => kv,
                Ok(None) => return not_found(self.resource(), name),
                Err(e) => return store_failure(e),
            };
            let mut obj = self.view(self.load(&current));
            let applied = match content_type.split(';').next().unwrap_or("").trim() {
                "application/json-patch+json" => {
                    match serde_json::from_value::<json_patch::Patch>(patch.clone()) {
                        Ok(p) => json_patch::patch(&mut obj, &p).map_err(|e| e.to_string()),
                        Err(e) => Err(format!("not a JSON patch: {e}")),
                    }
                }
                "application/merge-patch+json" => {
                    json_patch::merge(&mut obj, &patch);
                    Ok(())
                }
                "application/strategic-merge-patch+json" => {
                    api::patch::strategic_merge(&mut obj, &patch);
                    Ok(())
                }
                other => {
                    return failure(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        &format!(
                        "the patch type {other:?} is not supported (server-side apply comes later)"
                    ),
                    )
                }
            };
            if let Err(e) = applied {
                return json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &status(422, "Invalid", &e, None),
                );
            }
            match self.write_view(name, &current, obj).await {
                Ok(resp) => return resp,
                Err(r) if r.status() == StatusCode::CONFLICT => continue,
                Err(r) => return r,
            }
        }
        self.conflict(name)
    }

    /// Server-side apply (`kubectl apply --server-side`): creates the object, or merges the
    /// applied configuration into it with field ownership (see `api::apply`).
    async fn server_side_apply(&self, name: &str, body: &Bytes) -> Response {
        let r = self.resource();
        let Some(manager) = self.query.get("fieldManager").filter(|m| !m.is_empty()) else {
            return bad_request("fieldManager is required for apply requests");
        };
        if self.o.subresource.is_some() {
            return bad_request("apply is served on the object itself, not on a subresource");
        }
        let force = is_true(self.query.get("force"));
        let applied: Value = match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return bad_request("the applied configuration must be an object"),
            Err(e) => {
                return bad_request(&format!(
                    "the applied configuration must be JSON (YAML in its JSON form): {e}"
                ))
            }
        };
        if object::name(&applied).is_some_and(|n| n != name) {
            return bad_request(&format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                object::name(&applied).unwrap_or("")
            ));
        }
        let api_version = r.api_version();
        for _ in 0..5 {
            let current = match self.read(name).await {
                Ok(c) => c,
                Err(e) => return store_failure(e),
            };
            let live = current.as_ref().map(|kv| self.load(kv));
            let merged = match api::apply::apply(
                live.as_ref(),
                &applied,
                manager,
                force,
                &api_version,
                &now_rfc3339(),
            ) {
                Ok(m) => m,
                Err(api::apply::Conflicts(conflicts)) => {
                    let causes: Vec<Value> = conflicts
                        .iter()
                        .map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": f}))
                        .collect();
                    let list: Vec<String> = conflicts
                        .iter()
                        .map(|(m, f)| format!("- {m}: {f}"))
                        .collect();
                    let message = format!(
                        "Apply failed with {} conflict{}: {}",
                        conflicts.len(),
                        if conflicts.len() == 1 { "" } else { "s" },
                        list.join("\n")
                    );
                    return json_response(
                        StatusCode::CONFLICT,
                        &status(
                            409,
                            "Conflict",
                            &message,
                            Some(json!({"name": name, "kind": r.name, "causes": causes})),
                        ),
                    );
                }
            };
            let Some(current) = current else {
                let bytes = Bytes::from(serde_json::to_vec(&merged).expect("serialises"));
                let created = self.create(&bytes).await;
                if created.status() == StatusCode::CONFLICT {
                    continue; // created meanwhile: apply over it
                }
                return created;
            };
            match self.write_view(name, &current, merged).await {
                Ok(resp) => return resp,
                Err(resp) if resp.status() == StatusCode::CONFLICT => continue,
                Err(resp) => return resp,
            }
        }
        self.conflict(name)
    }

    /// Whether `obj` is a pod on a node, which the node must stop before it goes.
    fn graceful_pod(&self, obj: &Value) -> bool {
        self.resource().name == "pods"
            && obj["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            && obj["metadata"]["deletionGracePeriodSeconds"].as_i64() != Some(0)
    }

    async fn delete(&self, name: &str, body: &Bytes) -> Response {
        let options: Value = if body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return bad_request(&format!("the DeleteOptions body is not valid JSON: {e}"))
                }
            }
        };
        // Without preconditions the caller means whatever version is there, so a write that
        // slipped in between (a controller's status update) is read again, as kube-apiserver
        // does, instead of answering 409.
        let preconditions = options["preconditions"]
            .as_object()
            .is_some_and(|p| p.values().any(|v| !v.is_null()));
        let attempts = if preconditions { 1 } else { 8 };
        for _ in 0..attempts {
            match self.delete_once(name, &options).await {
                Deletion::Done(resp) => return resp,
                Deletion::Moved => continue,
            }
        }
        self.conflict(name)
    }

    /// One attempt at deleting the object as it is now.
    async fn delete_once(&self, name: &str, options: &Value) -> Deletion {
        let current = match self.read(name).await {
            Ok(Some(kv)) => kv,
            Ok(None) => return Deletion::Done(not_found(self.resource(), name)),
            Err(e) => return Deletion::Done(store_failure(e)),
        };
        let mut obj = self.load(&current);
        // Preconditions: the caller means this object, at this version.
        let pre = &options["preconditions"];
        for (field, have) in [
            ("uid", obj["metadata"]["uid"].clone()),
            (
                "resourceVersion",
                obj["metadata"]["resourceVersion"].clone(),
            ),
        ] {
            if let Some(want) = pre[field].as_str() {
                if Some(want) != have.as_str() {
                    let msg = format!(
                        "Precondition failed: {field} in precondition: {want}, {field} in object meta: {}",
                        have.as_str().unwrap_or("")
                    );
                    return Deletion::Done(failure(StatusCode::CONFLICT, "Conflict", &msg));
                }
            }
        }
        let policy = self
            .query
            .get("propagationPolicy")
            .cloned()
            .or_else(|| options["propagationPolicy"].as_str().map(String::from));
        let grace = self
            .query
            .get("gracePeriodSeconds")
            .and_then(|g| g.parse::<i64>().ok())
            .or_else(|| options["gracePeriodSeconds"].as_i64())
            .unwrap_or_else(|| {
                obj["spec"]["terminationGracePeriodSeconds"]
                    .as_i64()
                    .unwrap_or(30)
            });
        // Foreground: the garbage collector deletes the dependents first; Orphan: it frees
        // them. Either way a finalizer holds the object until it has.
        let finalizer = match policy.as_deref() {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        };
        if let Some(finalizer) = finalizer {
            let finalizers = object::metadata_mut(&mut obj)
                .entry("finalizers")
                .or_insert_with(|| json!([]));
            if let Some(list) = finalizers
                .as_array_mut()
                .filter(|l| !l.contains(&json!(finalizer)))
            {
                list.push(json!(finalizer));
            }
        }
        if self.resource().name == "pods" && grace == 0 {
            object::metadata_mut(&mut obj).insert("deletionGracePeriodSeconds".into(), json!(0));
        }
        // Finalizers, or a pod on a node: mark the object as being deleted and keep it until
        // the finalizers are removed or the node has stopped the pod (and deletes with grace 0).
        if has_finalizers(&obj) || self.graceful_pod(&obj) {
            let grace_left = if has_finalizers(&obj) { 0 } else { grace };
            let meta = object::metadata_mut(&mut obj);
            if meta.get("deletionTimestamp").is_none() {
                meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace_left));
            }
            let key = self.key(name);
            let txn = Txn::put(
                key.as_bytes(),
                to_bytes(&convert::to_storage(self.resource(), obj.clone())),
            )
            .when(Compare::mod_revision(
                key.as_bytes(),
                CompareOp::Equal,
                current.mod_revision,
            ));
            return match self.commit(txn).await {
                Ok(resp) if resp.succeeded => {
                    let version = self.written_version(&resp, Some(current.mod_revision));
                    object::metadata_mut(&mut obj).insert("resourceVersion".into(), version);
                    Deletion::Done(self.respond(StatusCode::OK, obj))
                }
                Ok(_) => Deletion::Moved,
                Err(e) => Deletion::Done(store_failure(e)),
            };
        }
        let key = self.key(name);
        let mut ops = vec![Op::delete(key.as_bytes())];
        ops.extend(release_ops(self.resource(), &from_kv(&current)));
        // Deleting a namespace deletes what is in it, and what its Services hold, in the same
        // transaction.
        if self.resource().name == "namespaces" {
            let mut prefixes: Vec<String> = REGISTRY
                .iter()
                .filter(|r| r.namespaced)
                .map(|r| format!("{}{name}/", r.key_prefix()))
                .collect();
            prefixes.dedup();
            ops.extend(prefixes.into_iter().map(|p| Op::Delete {
                span: KeySpan::prefix(p),
            }));
            let services = api::registry::find("", "v1", "services").expect("registered");
            let in_ns =
                RangeRequest::new(KeySpan::prefix(format!("{}{name}/", services.key_prefix())));
            match self.range(in_ns).await {
                Ok(resp) => ops.extend(
                    resp.kvs
                        .iter()
                        .flat_map(|kv| release_ops(services, &from_kv(kv))),
                ),
                Err(e) => return Deletion::Done(store_failure(e)),
            }
        }
        let txn = Txn {
            compare: vec![Compare::mod_revision(
                key.as_bytes(),
                CompareOp::Equal,
                current.mod_revision,
            )],
            success: ops,
            failure: vec![],
        };
        match self.commit(txn).await {
            Ok(resp) if resp.succeeded => {
                let mut obj = self.load(&current);
                if self.resource().name == "namespaces" {
                    obj["status"] = json!({"phase": "Terminating"});
                }
                Deletion::Done(self.respond(StatusCode::OK, obj))
            }
            Ok(_) => Deletion::Moved,
            Err(e) => Deletion::Done(store_failure(e)),
        }
    }

    async fn delete_collection(&self) -> Response {
        let (labels, fields) = match self.selectors() {
            Ok(s) => s,
            Err(r) => return r,
        };
        let resp = match self
            .range(RangeRequest::new(KeySpan::prefix(self.prefix())))
            .await
        {
            Ok(r) => r,
            Err(e) => return store_failure(e),
        };
        let mut deleted = Vec::new();
        for kv in &resp.kvs {
            let obj = self.load(kv);
            if !labels.matches(&object::labels(&obj)) || !fields.matches(&obj) {
                continue;
            }
            let mut txn = Txn::delete(kv.key.clone()).when(Compare::mod_revision(
                kv.key.clone(),
                CompareOp::Equal,
                kv.mod_revision,
            ));
            txn.success
                .extend(release_ops(self.resource(), &from_kv(kv)));
            match self.commit(txn).await {
                Ok(r) if r.succeeded => deleted.push(obj),
                Ok(_) => {} // changed meantime: it is no longer the object that matched
                Err(e) => return store_failure(e),
            }
        }
        let r = self.resource();
        json_response(
            StatusCode::OK,
            &json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": {"resourceVersion": resp.revision.to_string()}, "items": deleted}),
        )
    }

    async fn watch(&self) -> Response {
        let (labels, fields) = match self.selectors() {
            Ok(s) => s,
            Err(r) => return r,
        };
        let rv = self
            .query
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let bookmarks = is_true(self.query.get("allowWatchBookmarks"));
        let timeout = self
            .query
            .get("timeoutSeconds")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let prefix = self.prefix();
        // Without a resourceVersion a watch starts with the current objects as ADDED events.
        let mut initial = Vec::new();
        let r = self.resource();
        let load = move |kv: &KeyValue| convert::from_storage(r, from_kv(kv));
        let from = if rv == 0 {
            match self.list_range().await {
                Ok(resp) => {
                    initial = resp
                        .kvs
                        .iter()
                        .map(load)
                        .map(|o| json!({"type": "ADDED", "object": o}))
                        .collect();
                    resp.revision + 1
                }
                Err(e) => return store_failure(e),
            }
        } else {
            rv + 1
        };
        let initial: Vec<Value> = initial
            .into_iter()
            .filter(|e| {
                labels.matches(&object::labels(&e["object"])) && fields.matches(&e["object"])
            })
            .collect();
        let watcher = Feed::Cache(self.st.cache.watch(prefix, from));
        let store = self.st.store.clone();
        let (kind, api_version) = (r.kind, r.api_version());
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let stream = futures_util::stream::unfold(
            (initial.into_iter(), watcher, false),
            move |(mut initial, mut watcher, done)| {
                let (labels, fields, api_version, store) = (
                    labels.clone(),
                    fields.clone(),
                    api_version.clone(),
                    store.clone(),
                );
                async move {
                    if done {
                        return None;
                    }
                    if let Some(ev) = initial.next() {
                        return Some((
                            Ok::<_, std::io::Error>(line(&ev)),
                            (initial, watcher, false),
                        ));
                    }
                    loop {
                        let next = match deadline {
                            Some(d) => match tokio::time::timeout_at(d, watcher.next(&store)).await
                            {
                                Ok(n) => n,
                                Err(_) => return None,
                            },
                            None => watcher.next(&store).await,
                        };
                        match next? {
                            Ok(batch) => {
                                let mut out = Vec::new();
                                for ev in &batch.events {
                                    let matches = |o: &Value| {
                                        labels.matches(&object::labels(o)) && fields.matches(o)
                                    };
                                    let prev = ev.prev_kv.as_ref().map(load);
                                    let before = prev.as_ref().map(matches);
                                    let (after, obj) = match ev.kind {
                                        EventKind::Put => {
                                            let o = load(&ev.kv);
                                            (Some(matches(&o)), o)
                                        }
                                        EventKind::Delete => {
                                            let Some(mut o) = prev else { continue };
                                            object::metadata_mut(&mut o).insert(
                                                "resourceVersion".into(),
                                                json!(ev.kv.mod_revision.to_string()),
                                            );
                                            (None, o)
                                        }
                                    };
                                    if let Some(kind_str) = watch_event_type(before, after) {
                                        out.extend_from_slice(&line(
                                            &json!({"type": kind_str, "object": obj}),
                                        ));
                                    }
                                }
                                if out.is_empty() && batch.events.is_empty() && bookmarks {
                                    let bm = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": batch.revision.to_string()}}});
                                    out.extend_from_slice(&line(&bm));
                                }
                                if !out.is_empty() {
                                    return Some((Ok(Bytes::from(out)), (initial, watcher, false)));
                                }
                            }
                            Err(e) => {
                                let (code, reason) = match e {
                                    StoreError::Compacted { .. } => (410, "Expired"),
                                    _ => (500, "InternalError"),
                                };
                                let ev = json!({"type": "ERROR", "object": status(code, reason, &e.to_string(), None)});
                                return Some((Ok(line(&ev)), (initial, watcher, true)));
                            }
                        }
                    }
                }
            },
        );
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            Body::from_stream(stream),
        )
            .into_response()
    }

    /// A `meta.k8s.io/v1` Table for `kubectl get`, with the usual columns of the kind.
    fn to_table(&self, objects: &[Value], list_meta: Option<Value>) -> Value {
        let kind_columns = api::columns::columns(self.resource().name);
        let column = |name: &str, priority: u8, format: &str| json!({"name": name, "type": "string", "format": format, "description": name, "priority": priority});
        let mut columns = vec![column("Name", 0, "name")];
        columns.extend(kind_columns.iter().map(|c| column(c.name, c.priority, "")));
        columns.push(column("Age", 0, ""));
        let rows: Vec<Value> = objects
            .iter()
            .map(|o| {
                let mut cells = vec![json!(object::name(o).unwrap_or(""))];
                cells.extend(kind_columns.iter().map(|c| json!((c.cell)(o))));
                cells.push(json!(age(o["metadata"]["creationTimestamp"].as_str())));
                json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
            })
            .collect();
        json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": list_meta.unwrap_or_else(|| json!({})),
            "columnDefinitions": columns,
            "rows": rows,
        })
    }
}

/// One stored object with its resourceVersion filled in, parsing only its top level and its
/// metadata; and its labels. `None` if the stored bytes are not an object with metadata.
fn render_stored(kv: &KeyValue) -> Option<(Vec<u8>, std::collections::BTreeMap<String, String>)> {
    let top: std::collections::BTreeMap<String, &serde_json::value::RawValue> =
        serde_json::from_slice(&kv.value).ok()?;
    let mut out = Vec::with_capacity(kv.value.len() + 40);
    let mut labels = None;
    out.push(b'{');
    for (i, (key, raw)) in top.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key).ok()?;
        out.push(b':');
        if key == "metadata" {
            let mut meta: serde_json::Map<String, Value> = serde_json::from_str(raw.get()).ok()?;
            meta.insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
            labels = Some(object::labels(&json!({"metadata": &meta})));
            serde_json::to_writer(&mut out, &meta).ok()?;
        } else {
            out.extend_from_slice(raw.get().as_bytes());
        }
    }
    out.push(b'}');
    Some((out, labels?))
}

/// A `<Kind>List` of the stored objects in `resp` that match `labels`, written from the stored
/// bytes. `None` when an object cannot take the fast path (the caller then parses fully).
fn render_list(
    r: &Resource,
    resp: &raft_store::RangeResponse,
    labels: &LabelSelector,
    limit: Option<usize>,
) -> Option<Vec<u8>> {
    let mut items: Vec<u8> =
        Vec::with_capacity(resp.kvs.iter().map(|kv| kv.value.len() + 48).sum());
    let (mut count, mut next) = (0usize, None);
    let mut last_key = String::new();
    for kv in &resp.kvs {
        let (bytes, object_labels) = render_stored(kv)?;
        if !labels.matches(&object_labels) {
            continue;
        }
        if limit.is_some_and(|l| count >= l) {
            next = Some(encode_continue(resp.revision, &last_key));
            break;
        }
        if count > 0 {
            items.push(b',');
        }
        items.extend_from_slice(&bytes);
        last_key = String::from_utf8_lossy(&kv.key).into_owned();
        count += 1;
    }
    let mut meta = json!({"resourceVersion": resp.revision.to_string()});
    if let Some(token) = next {
        meta["continue"] = json!(token);
    }
    let mut out = Vec::with_capacity(items.len() + 200);
    out.extend_from_slice(b"{\"apiVersion\":");
    serde_json::to_writer(&mut out, &r.api_version()).ok()?;
    out.extend_from_slice(b",\"items\":[");
    out.extend_from_slice(&items);
    out.extend_from_slice(b"],\"kind\":");
    serde_json::to_writer(&mut out, &format!("{}List", r.kind)).ok()?;
    out.extend_from_slice(b",\"metadata\":");
    serde_json::to_writer(&mut out, &meta).ok()?;
    out.push(b'}');
    Some(out)
}

/// What a change is to a watcher with selectors, as kube-apiserver tells it: `before` and
/// `after` say whether the object matched before and after the change (`None`: it did not
/// exist). An object that starts matching is ADDED, one that stops matching is DELETED.
fn watch_event_type(before: Option<bool>, after: Option<bool>) -> Option<&'static str> {
    match (before, after) {
        (None | Some(false), Some(true)) => Some("ADDED"),
        (Some(true), Some(true)) => Some("MODIFIED"),
        (Some(true), Some(false) | None) => Some("DELETED"),
        _ => None,
    }
}

fn line(v: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(v).expect("serialises");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn encode_continue(revision: u64, last_key: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&json!({"rv": revision, "start": last_key})).expect("serialises"),
    )
}

fn decode_continue(token: &str) -> Option<(u64, Option<String>)> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some((v["rv"].as_u64()?, Some(v["start"].as_str()?.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_with_selectors_see_objects_enter_and_leave() {
        assert_eq!(watch_event_type(None, Some(true)), Some("ADDED"));
        assert_eq!(watch_event_type(Some(false), Some(true)), Some("ADDED"));
        assert_eq!(watch_event_type(Some(true), Some(true)), Some("MODIFIED"));
        assert_eq!(watch_event_type(Some(true), Some(false)), Some("DELETED"));
        assert_eq!(watch_event_type(Some(true), None), Some("DELETED"));
        assert_eq!(watch_event_type(Some(false), Some(false)), None);
        assert_eq!(watch_event_type(Some(false), None), None);
        assert_eq!(watch_event_type(None, Some(false)), None);
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = encode_continue(42, "/registry/core/pods/default/web");
        assert_eq!(
            decode_continue(&t),
            Some((42, Some("/registry/core/pods/default/web".into())))
        );
        assert_eq!(decode_continue("%%%"), None);
    }
}
