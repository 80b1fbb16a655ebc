//! Bounds on what one request may cost, with Kubernetes' answers: bodies over 3 MiB (413),
//! bodies that are not the JSON object a kind or review is (400, never a panic), and the cap on
//! requests in flight (429 with Retry-After).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{call, call_with_type};
use serde_json::json;
use std::future::Future;

use tower::ServiceExt;

#[tokio::test]
async fn bodies_that_are_too_large_or_not_objects_are_refused() {
    let (_dir, _node, app) = common::start().await;
    let cms = "/api/v1/namespaces/default/configmaps";
    let big = json!({"metadata": {"name": "big"}, "data": {"k": "x".repeat(4 * 1024 * 1024)}});
    let (code, status) = call(&app, "POST", cms, Some(big)).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{status}");
    assert_eq!(status["reason"], "RequestEntityTooLarge");

    for body in [json!([]), json!("a string"), json!(42), json!(null)] {
        let (code, status) =
            call_with_type(&app, "POST", cms, body.clone(), "application/json").await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}: {status}");
    }
    // Reviews, which once panicked on `[]`.
    for review in [
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        "/apis/authentication.k8s.io/v1/tokenreviews",
    ] {
        let (code, status) =
            call_with_type(&app, "POST", review, json!([]), "application/json").await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{review}: {status}");
    }
    // A JSON patch that turns an object into something else.
    call(&app, "POST", cms, Some(json!({"metadata": {"name": "a"}}))).await;
    for value in [json!([]), json!("x"), json!(null)] {
        let patch = json!([{"op": "replace", "path": "", "value": value}]);
        let (code, status) = call_with_type(
            &app,
            "PATCH",
            &format!("{cms}/a"),
            patch,
            "application/json-patch+json",
        )
        .await;
        assert!(code.is_client_error(), "{value}: {code} {status}");
    }
    // The server is still whole.
    let (code, _) = call(&app, "GET", &format!("{cms}/a"), None).await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn requests_past_the_cap_get_429_with_retry_after() {
    let (_dir, _node, app) = common::start_with(apiserver::inflight::Inflight::new(1, 1)).await;
    // One read in flight: its body never ends until we say so.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let slow = Request::builder()
        .method("GET")
        .uri("/api/v1/namespaces")
        .header("authorization", "Bearer t")
        .body(Body::from_stream(tokio_stream_from(rx)))
        .unwrap();
    // Polled once, it takes the only place for reads and waits for the rest of its body.
    let mut held = Box::pin(app.clone().oneshot(slow));
    std::future::poll_fn(|cx| {
        assert!(
            held.as_mut().poll(cx).is_pending(),
            "the slow read ended early"
        );
        std::task::Poll::Ready(())
    })
    .await;
    let refused = {
        let req = Request::builder()
            .uri("/api/v1/namespaces")
            .header("authorization", "Bearer t")
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        (resp.status() == StatusCode::TOO_MANY_REQUESTS).then_some(resp)
    };
    let resp = refused.expect("a second read while one is in flight was never refused");
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["reason"], "TooManyRequests");
    assert_eq!(status["details"]["retryAfterSeconds"], 1);
    // Writes have places of their own; watches and health checks are not counted.
    let (code, _) = call(
        &app,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(json!({"metadata": {"name": "w"}})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, _) = call(&app, "GET", "/healthz", None).await;
    assert_eq!(code, StatusCode::OK);
    let watch = common::call_raw(
        &app,
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1",
    )
    .await;
    assert!(watch.contains("ADDED"), "{watch}");
    // The place comes back when the slow request ends.
    drop(tx);
    assert_eq!(held.await.unwrap().status(), StatusCode::OK);
    let (code, _) = call(&app, "GET", "/api/v1/namespaces", None).await;
    assert_eq!(code, StatusCode::OK);
}

/// A stream of the channel's items (enough of tokio-stream's ReceiverStream).
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
