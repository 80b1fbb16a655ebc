//! The request path: the router, authentication and authorization, and one dispatcher that
//! parses the path and routes a request for objects by its verb (and by resource and
//! subresource for the subresources that act) to a method of [`Call`], the one request against
//! one resource.
//!
//! `Call`'s methods are spread over this module's files by what they do: here the basics every
//! handler uses (keys, reads, the one `commit` of every write, views of subresources); reads,
//! writes, deletes and the subresources that act each in a file of their own. What is
//! particular to one kind is not here but in its [`crate::strategy`].

mod delete;
mod read;
mod subresources;
mod write;

use std::sync::Arc;

use api::convert;
use api::object::{self, status};
use api::rbac::User;
use api::registry::Resource;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use raft_store::{Consistency, KeySpan, KeyValue, RangeRequest, StoreError, Txn};
use serde_json::{json, Value};

use crate::auth::RequestInfo;
use crate::discovery;
use crate::path::{self, ObjectPath, PathError, Target};
use crate::respond::{bad_request, failure, invalid, json_response, not_found};
use crate::state::ApiState;
use crate::stored::from_kv;
use crate::strategy::{self, Strategy};
use subresources::PodStream;

/// The API: version, health and OpenAPI documents, then everything else through `dispatch`,
/// all behind `authenticate`.
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
            crate::join::PATH_JOIN,
            axum::routing::post(crate::join::grant),
        )
        .route(crate::join::PATH_JOIN_TOKEN, get(crate::join::token))
        .route(
            "/drover/v1/function-stats",
            get(crate::metrics::function_stats),
        )
        .route(
            crate::join::PATH_JOIN_CA,
            axum::routing::post(crate::join::prove_ca),
        )
        .route(
            crate::rotation::PATH_ROTATE,
            axum::routing::post(crate::rotation::rotate),
        )
        .route(
            crate::nodecerts::ROUTE,
            axum::routing::post(crate::nodecerts::issue),
        )
        // The registry answers in its own protocol's terms (its challenge, its error codes)
        // and authenticates its requests itself: `authenticate` lets them through.
        .route("/v2", axum::routing::any(crate::registry::serve))
        .route("/v2/", axum::routing::any(crate::registry::serve))
        .route("/v2/{*rest}", axum::routing::any(crate::registry::serve))
        .route("/openapi/v2", get(crate::openapi_v2::serve))
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
        // After authentication, as kube-apiserver's filter: only authenticated requests take
        // a place, so nobody can fill the cap without a credential (open endpoints do not count).
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limit_inflight,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn(crate::compress::gzip_large))
        .with_state(state)
}

/// The cap on requests in flight: a place for the request's lifetime, or 429 at once.
async fn limit_inflight(State(st): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let query = crate::query::of(&req);
    let anonymous = req.extensions().get::<User>().is_none();
    if anonymous || crate::inflight::exempt(req.method(), req.uri().path(), &query) {
        return next.run(req).await;
    }
    let Some(_place) = st.inflight.admit(req.method()) else {
        return crate::inflight::too_many_requests();
    };
    next.run(req).await
}

/// Authentication, then authorization, for every request. Health and version are open to
/// anybody, as `system:public-info-viewer` makes them in Kubernetes; so are the join endpoint,
/// which checks the join secret itself, and nodes' serving certificates, which check the node.
async fn authenticate(State(st): State<Arc<ApiState>>, mut req: Request, next: Next) -> Response {
    // The query is parsed once, here: the same value is what the cap and the dispatcher read,
    // so what is authorized is what is served.
    if crate::path::is_registry(req.uri().path()) {
        return next.run(req).await;
    }
    let query = Arc::new(parse_query(req.uri().query()));
    req.extensions_mut()
        .insert(crate::query::Parsed(query.clone()));
    let open = matches!(
        req.uri().path(),
        "/version"
            | "/healthz"
            | "/livez"
            | "/readyz"
            | crate::join::PATH_JOIN
            | crate::join::PATH_JOIN_CA
    ) || crate::nodecerts::is_route(req.uri().path());
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(api::credentials::bearer_token);
    let user = match token {
        Some(t) => crate::access::authenticated(&st, t).await,
        None => None,
    };
    let Some(user) = user else {
        if open {
            return next.run(req).await;
        }
        return failure(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    };
    let user = match impersonate(&st, user, req.headers()).await {
        Ok(user) => user,
        Err(refusal) => return refusal,
    };
    let watch = is_true(query.get("watch"));
    let info = RequestInfo::new(req.method(), req.uri().path(), watch);
    let allowed = open || crate::access::allows_soon(&st, &user, &info.attributes()).await;
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

/// The user a request is served as: the authenticated one, or the one its `Impersonate-*`
/// headers name when the caller may impersonate every part of it (403 naming the first part
/// it may not, 400 for headers that make no sense together).
async fn impersonate(st: &ApiState, user: User, headers: &HeaderMap) -> Result<User, Response> {
    use api::impersonation;
    let pairs = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
    let requested = match impersonation::requested(pairs) {
        Ok(None) => return Ok(user),
        Ok(Some(r)) => r,
        Err(e) => return Err(bad_request(&e.to_string())),
    };
    for check in impersonation::checks(&requested) {
        let a = impersonation::attributes(&check);
        if !crate::access::allows_soon(st, &user, &a).await {
            let message = api::rbac::forbidden_message(&user, &a);
            let details = json!({"name": check.4, "group": check.0, "kind": check.1});
            return Err(json_response(
                StatusCode::FORBIDDEN,
                &status(403, "Forbidden", &message, Some(details)),
            ));
        }
    }
    Ok(impersonation::user(&requested))
}

use crate::query::{is_true, parse_query, Query};

/// Everything after authentication that the routes above do not take: the path is parsed into
/// a target, discovery documents are answered, and a request for objects goes to the handler
/// of its verb (or of its subresource), each a method of [`Call`].
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
            ..Default::default()
        });
    let query = crate::query::of(&req);
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
    // What is created, replaced or sent as DeleteOptions is a JSON object: anything else is
    // refused here, once, before a handler indexes into it (a review of `[]` once panicked).
    if matches!(method, Method::POST | Method::PUT | Method::DELETE) && !body.is_empty() {
        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
            if !v.is_object() {
                return bad_request(&format!(
                    "the request body must be a JSON object, not {}",
                    match v {
                        Value::Array(_) => "an array",
                        Value::String(_) => "a string",
                        Value::Number(_) => "a number",
                        Value::Bool(_) => "a boolean",
                        _ => "null",
                    }
                ));
            }
        }
    }
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
        Target::CoreVersions | Target::Groups => {
            let core = matches!(target, Target::CoreVersions);
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
            if let Some(version) = discovery::aggregated_version(accept) {
                let mut response =
                    json_response(StatusCode::OK, &discovery::aggregated(core, version));
                if let Ok(v) = discovery::aggregated_content_type(version).parse() {
                    response.headers_mut().insert(header::CONTENT_TYPE, v);
                }
                return response;
            }
            if core {
                json_response(StatusCode::OK, &discovery::core_versions(&st.address))
            } else {
                json_response(StatusCode::OK, &discovery::groups())
            }
        }
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
            let view = View::asked(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
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
            let manager = match field_manager(&query, &headers) {
                Ok(m) => m,
                Err(r) => return r,
            };
            let call = Call {
                st: &st,
                o: &o,
                query: &query,
                view,
                user: &user,
                dry_run,
                manager,
                warnings: Default::default(),
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
                return match (&method, &o.name, o.resource.name) {
                    (&Method::POST, None, "tokenreviews") => call.token_review(&body),
                    (&Method::POST, None, "selfsubjectreviews") => call.self_review(&body),
                    (&Method::POST, None, "selfsubjectaccessreviews") => {
                        call.self_access_review(&body)
                    }
                    (&Method::POST, None, "selfsubjectrulesreviews") => call.rules_review(&body),
                    (&Method::POST, None, _) => call.subject_access_review(&body),
                    _ => failure(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "MethodNotAllowed",
                        &format!("{} can only be created", o.resource.name),
                    ),
                };
            }
            // The subresources that act are one kind's each: routed by resource and
            // subresource. Then the verbs every kind has, with what is particular to a kind in
            // its strategy.
            let kind = (o.resource.group, o.resource.name);
            match (&method, kind, o.name.as_deref(), o.subresource.as_deref()) {
                (&Method::GET, ("", "pods"), Some(name), Some("log")) => call.pod_log(name).await,
                // GET for WebSocket clients (kubectl 1.30+), POST for SPDY ones.
                (
                    &Method::GET | &Method::POST,
                    ("", "pods"),
                    Some(name),
                    Some(sub @ ("exec" | "attach" | "portforward")),
                ) => {
                    let stream = match sub {
                        "exec" => PodStream::Exec,
                        "attach" => PodStream::Attach,
                        _ => PodStream::PortForward,
                    };
                    call.pod_stream(
                        name,
                        stream,
                        &method,
                        &headers,
                        uri.query().unwrap_or(""),
                        client_upgrade,
                    )
                    .await
                }
                (&Method::POST, ("", "serviceaccounts"), Some(name), Some("token")) => {
                    call.token_request(name, &body, Some(TokenFor::ServiceAccount))
                        .await
                }
                (&Method::POST, ("", "nodes"), Some(name), Some("token")) => {
                    call.token_request(name, &body, Some(TokenFor::Node)).await
                }
                // Another kind's token: the request is checked, then refused as not served.
                (&Method::POST, _, Some(name), Some("token")) => {
                    call.token_request(name, &body, None).await
                }
                (&Method::POST, ("", "pods"), Some(name), Some("binding")) => {
                    call.bind(name, &body).await
                }
                (&Method::POST, ("", "pods"), Some(name), Some("eviction")) => {
                    call.evict(name, &body).await
                }
                (
                    &Method::POST,
                    (api::knative::GROUP, "revisions"),
                    Some(name),
                    Some("activate"),
                ) => call.activate(name).await,
                // Another kind's log, exec, binding or eviction: there is no such object.
                (&Method::GET, _, Some(name), Some("log"))
                | (&Method::GET | &Method::POST, _, Some(name), Some("exec"))
                | (&Method::POST, _, Some(name), Some("binding" | "eviction")) => {
                    not_found(o.resource, name)
                }
                (&Method::GET, _, Some(name), _) => call.get(name).await,
                (&Method::GET, _, None, _) if is_true(query.get("watch")) => call.watch().await,
                (&Method::GET, _, None, _) => call.list().await,
                (&Method::POST, _, None, _) => call.create(&body).await,
                (&Method::PUT, _, Some(name), _) => call.update(name, &body).await,
                (&Method::PATCH, _, Some(name), _) => call.patch(name, &content_type, &body).await,
                (&Method::DELETE, _, Some(name), _) => call.delete(name, &body).await,
                (&Method::DELETE, _, None, _) => call.delete_collection(&body).await,
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

/// Who a write is recorded as in managedFields: the `fieldManager` parameter, or else the
/// program name that begins the client's User-Agent (`kubectl/v1.32.0 (linux/amd64) …` is
/// `kubectl`), as kube-apiserver defaults it.
fn field_manager(query: &Query, headers: &HeaderMap) -> Result<String, Response> {
    const MAX: usize = 128;
    if let Some(m) = query.get("fieldManager").filter(|m| !m.is_empty()) {
        if m.len() > MAX || m.chars().any(|c| c.is_control()) {
            return Err(bad_request(&format!(
                "fieldManager: must be at most {MAX} printable characters"
            )));
        }
        return Ok(m.clone());
    }
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .map(|p| {
            p.trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX)
                .collect::<String>()
        })
        .filter(|p| !p.is_empty());
    Ok(agent.unwrap_or_else(|| "unknown".into()))
}

/// Whose token a TokenRequest asks for.
enum TokenFor {
    /// A ServiceAccount's (`serviceaccounts/{name}/token`), for an hour by default.
    ServiceAccount,
    /// A node agent's credential (`nodes/{name}/token`), for a year by default.
    Node,
}

/// The shape the client asked its objects in (the `as=` of its Accept header), as
/// kube-apiserver negotiates it: the objects themselves, a Table for `kubectl get`, or only
/// their metadata (`PartialObjectMetadata`, what metadata informers and the dynamic client's
/// metadata-only lists ask for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Object,
    Table,
    Metadata,
}

impl View {
    /// From the Accept header; its media-type parameters are case-insensitive names.
    fn asked(accept: Option<&str>) -> View {
        let Some(accept) = accept else {
            return View::Object;
        };
        // The first media range that names a shape wins (clients list their preference first).
        for range in accept.split(',') {
            for param in range.split(';').skip(1) {
                let Some((name, value)) = param.split_once('=') else {
                    continue;
                };
                if name.trim().eq_ignore_ascii_case("as") {
                    match value.trim() {
                        "Table" => return View::Table,
                        "PartialObjectMetadata" | "PartialObjectMetadataList" => {
                            return View::Metadata
                        }
                        _ => {}
                    }
                }
            }
        }
        View::Object
    }

    /// An object as a `meta.k8s.io/v1` PartialObjectMetadata.
    fn metadata_only(obj: &Value) -> Value {
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
    }

    /// A watch event's object in this view (a Table watch gets the objects themselves).
    fn shape(self, obj: Value) -> Value {
        match self {
            View::Metadata => View::metadata_only(&obj),
            View::Object | View::Table => obj,
        }
    }
}

/// One request against one resource.
struct Call<'a> {
    st: &'a ApiState,
    o: &'a ObjectPath,
    query: &'a Query,
    view: View,
    user: &'a User,
    /// `dryRun=All`: every write goes through `commit`, which then writes nothing.
    dry_run: bool,
    /// Who a write is recorded as in managedFields ([`field_manager`]).
    manager: String,
    /// What admission warns the client of (`Warning` headers of the answer).
    warnings: std::sync::Mutex<Vec<String>>,
}

impl Call<'_> {
    fn resource(&self) -> &'static Resource {
        self.o.resource
    }

    /// What is particular to the kind addressed.
    fn strategy(&self) -> &'static dyn Strategy {
        strategy::of(self.resource())
    }

    /// The store key of the object `name` in the namespace addressed.
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

    /// The stored object `name`, by a linearizable read.
    async fn read(&self, name: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self
            .range(RangeRequest::new(KeySpan::key(self.key(name))))
            .await?;
        Ok(resp.kvs.into_iter().next())
    }

    /// An object as the answer, or as a one-row Table when the client asked for one.
    fn respond(&self, code: StatusCode, obj: Value) -> Response {
        let mut response = match self.view {
            View::Table => json_response(code, &self.to_table(std::slice::from_ref(&obj), None)),
            View::Metadata => json_response(code, &View::metadata_only(&obj)),
            View::Object => json_response(code, &obj),
        };
        let warnings = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
        for w in warnings.iter() {
            if let Ok(v) = crate::podsecurity::warning_header(w).parse() {
                response.headers_mut().append(header::WARNING, v);
            }
        }
        response
    }

    /// Err: the subresource addressed is not one a get, update or patch serves (only `status`
    /// and `scale`, where the kind has them, and a namespace's `finalize`).
    fn check_subresource(&self) -> Result<(), Response> {
        let r = self.resource();
        match self.o.subresource.as_deref() {
            None => Ok(()),
            Some("status") if r.has_status() => Ok(()),
            Some("scale") if r.has_scale() => Ok(()),
            Some("finalize") if (r.group, r.name) == ("", "namespaces") => Ok(()),
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
    /// the main endpoint cannot change status (unless the kind's strategy says it may), `/status`
    /// changes only status, `/scale` only `spec.replicas`.
    fn unview(&self, stored: &Value, incoming: Value) -> Result<Value, Response> {
        let r = self.resource();
        match self.o.subresource.as_deref() {
            None => {
                let mut obj = incoming;
                self.strategy().keep_on_update(stored, &mut obj);
                if r.has_status() && !self.strategy().main_endpoint_writes_status() {
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
            // A namespace's spec.finalizers, and nothing else (the namespace controller
            // removes `kubernetes` once the namespace is empty).
            Some("finalize") => {
                let mut obj = stored.clone();
                obj["spec"]["finalizers"] = match &incoming["spec"]["finalizers"] {
                    Value::Null => json!([]),
                    f => f.clone(),
                };
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
}

#[cfg(test)]
mod tests {
    use super::View;

    #[test]
    fn the_view_is_the_first_shape_the_accept_header_names() {
        assert_eq!(View::asked(None), View::Object);
        assert_eq!(View::asked(Some("application/json")), View::Object);
        assert_eq!(
            View::asked(Some(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
            )),
            View::Table
        );
        // The Python dynamic client's spelling, and a parameter name in another case.
        assert_eq!(
            View::asked(Some(
                "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
            )),
            View::Metadata
        );
        assert_eq!(
            View::asked(Some(
                "application/json; AS=PartialObjectMetadata; g=meta.k8s.io"
            )),
            View::Metadata
        );
        assert_eq!(
            View::asked(Some("application/json;as=Nothing,application/json")),
            View::Object
        );
    }
}
