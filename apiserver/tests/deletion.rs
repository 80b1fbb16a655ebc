//! Deletion as Kubernetes does it: preconditions, finalizers that hold an object with a
//! deletionTimestamp until they are removed, and graceful deletion of pods on a node.

mod common;

use axum::http::StatusCode;
use common::{call, start};
use serde_json::json;

const CM: &str = "/api/v1/namespaces/default/configmaps";
const PODS: &str = "/api/v1/namespaces/default/pods";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preconditions_must_match() {
    let (_dir, _node, app) = start().await;
    let (_, cm) = call(&app, "POST", CM, Some(json!({"metadata": {"name": "a"}}))).await;
    let wrong = json!({"preconditions": {"uid": "not-the-uid"}});
    let (code, status) = call(&app, "DELETE", &format!("{CM}/a"), Some(wrong)).await;
    assert_eq!(code, StatusCode::CONFLICT, "{status}");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("Precondition failed: uid"));
    let right = json!({"preconditions": {"uid": cm["metadata"]["uid"], "resourceVersion": cm["metadata"]["resourceVersion"]}});
    let (code, _) = call(&app, "DELETE", &format!("{CM}/a"), Some(right)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        call(&app, "GET", &format!("{CM}/a"), None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_an_object_until_they_are_removed() {
    let (_dir, _node, app) = start().await;
    call(
        &app,
        "POST",
        CM,
        Some(json!({"metadata": {"name": "held", "finalizers": ["example.com/wait"]}})),
    )
    .await;
    let (code, obj) = call(&app, "DELETE", &format!("{CM}/held"), None).await;
    assert_eq!(code, StatusCode::OK);
    assert!(obj["metadata"]["deletionTimestamp"].is_string(), "{obj}");
    let (code, still) = call(&app, "GET", &format!("{CM}/held"), None).await;
    assert_eq!(
        code,
        StatusCode::OK,
        "the object stays while a finalizer is on it"
    );
    // An update cannot take the deletionTimestamp away.
    let mut edited = still.clone();
    edited["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("deletionTimestamp");
    edited["data"] = json!({"k": "v"});
    let (code, after) = call(&app, "PUT", &format!("{CM}/held"), Some(edited)).await;
    assert_eq!(code, StatusCode::OK);
    assert!(after["metadata"]["deletionTimestamp"].is_string());
    // Removing the last finalizer completes the deletion.
    let patch = json!([{"op": "remove", "path": "/metadata/finalizers"}]);
    let req_uri = format!("{CM}/held");
    let (code, _) = common::call_with_type(
        &app,
        "PATCH",
        &req_uri,
        patch,
        "application/json-patch+json",
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        call(&app, "GET", &req_uri, None).await.0,
        StatusCode::NOT_FOUND
    );
    // Foreground propagation holds the owner with the foregroundDeletion finalizer.
    call(
        &app,
        "POST",
        CM,
        Some(json!({"metadata": {"name": "owner"}})),
    )
    .await;
    let (_, obj) = call(
        &app,
        "DELETE",
        &format!("{CM}/owner"),
        Some(json!({"propagationPolicy": "Foreground"})),
    )
    .await;
    assert_eq!(obj["metadata"]["finalizers"], json!(["foregroundDeletion"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_a_node_are_deleted_gracefully() {
    let (_dir, _node, app) = start().await;
    let pod = |name: &str, node: Option<&str>| json!({"metadata": {"name": name}, "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x:1"}]}});
    // Not scheduled: gone at once.
    call(&app, "POST", PODS, Some(pod("pending", None))).await;
    call(&app, "DELETE", &format!("{PODS}/pending"), None).await;
    assert_eq!(
        call(&app, "GET", &format!("{PODS}/pending"), None).await.0,
        StatusCode::NOT_FOUND
    );
    // On a node: marked with the grace period; the node's final delete (grace 0) removes it.
    call(&app, "POST", PODS, Some(pod("running", Some("node-1")))).await;
    let (_, marked) = call(&app, "DELETE", &format!("{PODS}/running"), None).await;
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
    assert_eq!(
        call(&app, "GET", &format!("{PODS}/running"), None).await.0,
        StatusCode::OK
    );
    call(
        &app,
        "DELETE",
        &format!("{PODS}/running?gracePeriodSeconds=0"),
        None,
    )
    .await;
    assert_eq!(
        call(&app, "GET", &format!("{PODS}/running"), None).await.0,
        StatusCode::NOT_FOUND
    );
}
