//! Shared by the API tests: a real single-member store and the API router, called in process.
#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;

use apiserver::{bootstrap, router, ApiState};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use raft_store::{StoreConfig, StoreNode};
use serde_json::Value;
use tower::ServiceExt;

/// The CA the API trusts nodes' certificates by in these tests (one per test binary); fake
/// nodes serve certificates it signs.
pub fn test_ca() -> &'static apiserver::pki::ClusterSecrets {
    static CA: std::sync::OnceLock<apiserver::pki::ClusterSecrets> = std::sync::OnceLock::new();
    CA.get_or_init(|| apiserver::pki::ClusterSecrets::generate().unwrap())
}

pub async fn start() -> (tempfile::TempDir, Arc<StoreNode>, axum::Router) {
    start_with(Default::default()).await
}

/// The same with a cap of its own on requests in flight.
pub async fn start_with(
    inflight: apiserver::inflight::Inflight,
) -> (tempfile::TempDir, Arc<StoreNode>, axum::Router) {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = StoreNode::open(StoreConfig::new(
        dir.path().join("data"),
        listener.local_addr().unwrap(),
    ))
    .await
    .unwrap();
    tokio::spawn(raft_store::service::serve(
        listener,
        raft_store::service::router(node.clone()),
        None,
    ));
    node.bootstrap().await.unwrap();
    let addr = node.identity.addr.clone();
    for _ in 0..100 {
        if bootstrap(&node, &addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let sealer = Arc::new(apiserver::encryption::SecretBox::new(&[1; 32]));
    let state = ApiState::with_inflight(node.clone(), "t".into(), addr, sealer, inflight);
    state.trust_nodes(&test_ca().ca_pem).unwrap();
    (dir, node, router(state))
}

pub async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    call_with_type(
        app,
        method,
        uri,
        body.unwrap_or(Value::Null),
        "application/json",
    )
    .await
}

pub async fn call_with_type(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Value,
    content_type: &str,
) -> (StatusCode, Value) {
    call_as_with_type(app, "t", method, uri, body, content_type).await
}

/// A JSON call with the bearer token `token` ("t" is the admin's).
pub async fn call_as(
    app: &axum::Router,
    token: &str,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body.unwrap_or(Value::Null);
    let content_type = match method {
        "PATCH" => "application/merge-patch+json",
        _ => "application/json",
    };
    call_as_with_type(app, token, method, uri, body, content_type).await
}

pub async fn call_as_with_type(
    app: &axum::Router,
    token: &str,
    method: &str,
    uri: &str,
    body: Value,
    content_type: &str,
) -> (StatusCode, Value) {
    call_with_headers(
        app,
        token,
        method,
        uri,
        body,
        &[("content-type", content_type)],
    )
    .await
}

/// A call with the bearer token `token` and these headers.
pub async fn call_with_headers(
    app: &axum::Router,
    token: &str,
    method: &str,
    uri: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(if body.is_null() {
            Body::empty()
        } else {
            Body::from(body.to_string())
        })
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The whole body of a response as text (for watches that end by `timeoutSeconds`).
#[allow(
    dead_code,
    reason = "used by some of the test binaries that include this module"
)]
pub async fn call_raw(app: &axum::Router, method: &str, uri: &str) -> String {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", "Bearer t")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    String::from_utf8(
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap()
}
