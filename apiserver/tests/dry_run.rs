//! `dryRun=All` on every verb: the request is admitted, defaulted and validated and answered
//! as if carried out, and nothing is written — not the object, not a ClusterIP or NodePort,
//! not a revision. Also: an update that changes nothing is not written, and a delete without
//! preconditions is not refused because a controller wrote the object at the same moment, and a
//! JSON patch that would double the object again and again is refused before it grows.

mod common;

use axum::http::StatusCode;
use common::{call, call_with_type, start};
use raft_store::{Consistency, KeySpan, RangeRequest, StoreNode};
use serde_json::{json, Value};

const CM: &str = "/api/v1/namespaces/default/configmaps";
const SVC: &str = "/api/v1/namespaces/default/services";
const DEPLOY: &str = "/apis/apps/v1/namespaces/default/deployments";

/// The store's revision: it moves with every write, so an unchanged revision means nothing
/// was written at all.
async fn revision(node: &StoreNode) -> u64 {
    node.range(
        RangeRequest::new(KeySpan::key("/nothing-here")),
        Consistency::Linearizable,
        false,
    )
    .await
    .unwrap()
    .revision
}

fn deployment(name: &str, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "c", "image": image}]}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_create_update_patch_and_delete_write_nothing() {
    let (_dir, node, app) = start().await;
    let (code, _) = call(
        &app,
        "POST",
        CM,
        Some(json!({"metadata": {"name": "live"}, "data": {"k": "v1"}})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED);
    let before = revision(&node).await;

    // Create: the answer is the object as it would be, with its uid and defaults.
    let (code, dry) = call(
        &app,
        "POST",
        &format!("{CM}?dryRun=All"),
        Some(json!({"metadata": {"name": "ghost"}, "data": {"k": "v"}})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{dry}");
    assert_eq!(dry["metadata"]["name"], "ghost");
    assert!(dry["metadata"]["uid"].is_string(), "{dry}");
    assert!(dry["metadata"].get("resourceVersion").is_none(), "{dry}");
    let (code, _) = call(&app, "GET", &format!("{CM}/ghost"), None).await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "a dry-run create stores nothing"
    );
    // Validation and conflicts answer as they would for real.
    let (code, _) = call(
        &app,
        "POST",
        &format!("{CM}?dryRun=All"),
        Some(json!({"metadata": {"name": "live"}})),
    )
    .await;
    assert_eq!(
        code,
        StatusCode::CONFLICT,
        "AlreadyExists under dry-run too"
    );
    let (code, status) = call(
        &app,
        "POST",
        &format!("{CM}?dryRun=All"),
        Some(json!({"metadata": {"name": "Not_A_Name"}})),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");

    // Update.
    let (_, live) = call(&app, "GET", &format!("{CM}/live"), None).await;
    let mut edited = live.clone();
    edited["data"]["k"] = json!("v2");
    let (code, answer) = call(&app, "PUT", &format!("{CM}/live?dryRun=All"), Some(edited)).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"]["k"], "v2", "the answer shows the change");
    assert_eq!(
        answer["metadata"]["resourceVersion"], live["metadata"]["resourceVersion"],
        "{answer}"
    );

    // Every kind of patch, server-side apply among them.
    let patches = [
        (
            "application/merge-patch+json",
            json!({"data": {"k": "merge"}}),
        ),
        (
            "application/strategic-merge-patch+json",
            json!({"data": {"k": "strategic"}}),
        ),
        (
            "application/json-patch+json",
            json!([{"op": "replace", "path": "/data/k", "value": "json"}]),
        ),
        (
            "application/apply-patch+yaml",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "live"}, "data": {"k": "applied"}}),
        ),
    ];
    for (content_type, patch) in patches {
        let (code, answer) = call_with_type(
            &app,
            "PATCH",
            &format!("{CM}/live?dryRun=All&fieldManager=test&force=true"),
            patch,
            content_type,
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{content_type}: {answer}");
        assert_ne!(answer["data"]["k"], "v1", "{content_type}: {answer}");
    }
    // Server-side apply of an object that does not exist creates nothing.
    let (code, answer) = call_with_type(
        &app,
        "PATCH",
        &format!("{CM}/applied-ghost?dryRun=All&fieldManager=test"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied-ghost"}}),
        "application/apply-patch+yaml",
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{answer}");

    // Delete, one and many; a namespace with its contents.
    let (code, _) = call(&app, "DELETE", &format!("{CM}/live?dryRun=All"), None).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call(&app, "DELETE", &format!("{CM}?dryRun=All"), None).await;
    assert_eq!(code, StatusCode::OK);
    // kubectl says it in the DeleteOptions.
    let options = json!({"kind": "DeleteOptions", "apiVersion": "v1", "dryRun": ["All"]});
    let (code, _) = call(&app, "DELETE", &format!("{CM}/live"), Some(options.clone())).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call(&app, "DELETE", CM, Some(options)).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call(
        &app,
        "DELETE",
        "/api/v1/namespaces/default?dryRun=All",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);

    assert_eq!(revision(&node).await, before, "nothing was written");
    let (code, still) = call(&app, "GET", &format!("{CM}/live"), None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(still, live, "the live object is as it was");
    let (code, _) = call(&app, "GET", &format!("{CM}/applied-ghost"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_allocates_no_cluster_ip_or_node_port() {
    let (_dir, node, app) = start().await;
    let before = revision(&node).await;
    let svc = |name: &str| {
        json!({"metadata": {"name": name}, "spec": {"type": "NodePort", "selector": {"app": "a"},
               "clusterIP": "10.96.7.7", "ports": [{"port": 80, "nodePort": 30123}]}})
    };
    let (code, dry) = call(&app, "POST", &format!("{SVC}?dryRun=All"), Some(svc("a"))).await;
    assert_eq!(code, StatusCode::CREATED, "{dry}");
    assert_eq!(dry["spec"]["clusterIP"], "10.96.7.7");
    assert_eq!(revision(&node).await, before, "no reservation was written");
    // The same IP and port are free for a real Service afterwards...
    let (code, real) = call(&app, "POST", SVC, Some(svc("b"))).await;
    assert_eq!(code, StatusCode::CREATED, "{real}");
    // ...and a dry run that asks for them now hears that they are taken, naming the field.
    let (code, status) = call(&app, "POST", &format!("{SVC}?dryRun=All"), Some(svc("c"))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert!(
        status["details"]["causes"][0]["field"]
            .as_str()
            .is_some_and(|f| f.starts_with("spec.")),
        "{status}"
    );
    // Deleting it under dry-run releases nothing either.
    let (code, _) = call(&app, "DELETE", &format!("{SVC}/b?dryRun=All"), None).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call(&app, "POST", SVC, Some(svc("d"))).await;
    assert_eq!(
        code,
        StatusCode::UNPROCESSABLE_ENTITY,
        "b still holds its IP"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_dry_run_value_is_refused_naming_the_field() {
    let (_dir, _node, app) = start().await;
    let (code, status) = call(
        &app,
        "POST",
        &format!("{CM}?dryRun=Everything"),
        Some(json!({"metadata": {"name": "x"}})),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["field"], "dryRun",
        "{status}"
    );
    let (code, _) = call(&app, "GET", &format!("{CM}/x"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_or_apply_that_changes_nothing_writes_nothing() {
    let (_dir, node, app) = start().await;
    let apply = |obj: Value| {
        let app = app.clone();
        async move {
            call_with_type(
                &app,
                "PATCH",
                &format!("{DEPLOY}/web?fieldManager=kubectl"),
                obj,
                "application/apply-patch+yaml",
            )
            .await
        }
    };
    let (code, first) = apply(deployment("web", "web:v1")).await;
    assert_eq!(code, StatusCode::CREATED, "{first}");
    let before = revision(&node).await;
    let (code, again) = apply(deployment("web", "web:v1")).await;
    assert_eq!(code, StatusCode::OK, "{again}");
    assert_eq!(
        again["metadata"]["generation"],
        first["metadata"]["generation"]
    );
    assert_eq!(
        again["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );
    // A PUT of the object as read is no change either.
    let (_, live) = call(&app, "GET", &format!("{DEPLOY}/web"), None).await;
    let (code, put) = call(&app, "PUT", &format!("{DEPLOY}/web"), Some(live.clone())).await;
    assert_eq!(code, StatusCode::OK, "{put}");
    assert_eq!(
        put["metadata"]["resourceVersion"],
        live["metadata"]["resourceVersion"]
    );
    assert_eq!(revision(&node).await, before, "nothing was written");
    // A real change moves the generation once.
    let (code, changed) = apply(deployment("web", "web:v2")).await;
    assert_eq!(code, StatusCode::OK, "{changed}");
    assert_eq!(
        changed["metadata"]["generation"].as_i64(),
        first["metadata"]["generation"].as_i64().map(|g| g + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_without_preconditions_survives_concurrent_writes() {
    let (_dir, _node, app) = start().await;
    for i in 0..20 {
        let name = format!("busy{i}");
        let (code, _) = call(
            &app,
            "POST",
            CM,
            Some(json!({"metadata": {"name": name}, "data": {"n": "0"}})),
        )
        .await;
        assert_eq!(code, StatusCode::CREATED);
        // A "controller" that keeps writing the object until it is gone.
        let writer = {
            let (app, name) = (app.clone(), name.clone());
            tokio::spawn(async move {
                for n in 1.. {
                    let (code, _) = call_with_type(
                        &app,
                        "PATCH",
                        &format!("{CM}/{name}"),
                        json!({"data": {"n": n.to_string()}}),
                        "application/merge-patch+json",
                    )
                    .await;
                    if code == StatusCode::NOT_FOUND {
                        return n;
                    }
                }
                unreachable!()
            })
        };
        let (code, status) = call(&app, "DELETE", &format!("{CM}/{name}"), None).await;
        assert_eq!(code, StatusCode::OK, "{status}");
        assert!(writer.await.unwrap() > 0);
    }
}

/// A JSON patch whose `copy` operations double the object each time is refused once it has
/// copied 3 MiB, as kube-apiserver bounds it, instead of growing the server's memory without
/// bound (25 such copies of a 1 KB patch would be tens of gigabytes); the object is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_patch_that_doubles_the_object_is_refused_before_it_grows() {
    let (_dir, _node, app) = start().await;
    let (code, _) = call(
        &app,
        "POST",
        CM,
        Some(json!({"metadata": {"name": "bomb"}, "data": {"k": "x".repeat(1000)}})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED);
    let mut ops = vec![json!({"op": "add", "path": "/data", "value": {"a": "x".repeat(1000)}})];
    // Each copy puts the whole /data map under a new key of itself: the map doubles.
    for i in 0..30 {
        ops.push(json!({"op": "copy", "from": "/data", "path": format!("/data/d{i}")}));
    }
    let started = std::time::Instant::now();
    let (code, status) = call_with_type(
        &app,
        "PATCH",
        &format!("{CM}/bomb"),
        json!(ops),
        "application/json-patch+json",
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("copies more than 3 MiB"),
        "{status}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let (_, still) = call(&app, "GET", &format!("{CM}/bomb"), None).await;
    assert_eq!(still["data"]["k"].as_str().unwrap().len(), 1000);
    // Too many operations are refused too.
    let many: Vec<_> = (0..10_001)
        .map(|_| json!({"op": "test", "path": "/metadata/name", "value": "bomb"}))
        .collect();
    let (code, status) = call_with_type(
        &app,
        "PATCH",
        &format!("{CM}/bomb"),
        json!(many),
        "application/json-patch+json",
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
}
