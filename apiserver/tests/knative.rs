//! Knative Serving's kinds through the API router against a real store: Knative's defaults and
//! errors, revisions that never change, a Knative Service beside a core Service of the same
//! name, and what a node's function router may do (wake a revision; nothing more).

mod common;

use axum::http::StatusCode;
use common::{call, call_as, call_as_with_type, call_with_type};
use serde_json::{json, Value};

const KSVC: &str = "/apis/serving.knative.dev/v1/namespaces/default/services";
const REVISIONS: &str = "/apis/serving.knative.dev/v1/namespaces/default/revisions";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";

async fn node_token(app: &axum::Router, node: &str) -> String {
    let (code, body) = call(
        app,
        "POST",
        &format!("/api/v1/nodes/{node}/token"),
        Some(json!({"spec": {}})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    body["status"]["token"].as_str().unwrap().to_string()
}

fn hello() -> Value {
    json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "hello"},
        "spec": {"template": {"spec": {"containers": [{"image": "hello-world:v1", "ports": [{"containerPort": 8080}]}]}}}})
}

fn revision(name: &str) -> Value {
    json!({"apiVersion": "serving.knative.dev/v1", "kind": "Revision", "metadata": {"name": name},
        "spec": {"containers": [{"image": "hello-world:v1"}]}})
}

fn deployment(name: &str, replicas: i64, owner: Option<(&str, &str)>) -> Value {
    let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "hello-world:v1"}]}}}});
    if let Some((rev, uid)) = owner {
        d["metadata"]["ownerReferences"] = json!([{"apiVersion": "serving.knative.dev/v1", "kind": "Revision",
            "name": rev, "uid": uid, "controller": true}]);
    }
    d
}

async fn replicas(app: &axum::Router, name: &str) -> i64 {
    let (code, d) = call(app, "GET", &format!("{DEPLOYMENTS}/{name}"), None).await;
    assert_eq!(code, StatusCode::OK, "{d}");
    d["spec"]["replicas"].as_i64().unwrap()
}

#[tokio::test]
async fn knatives_defaults_and_errors_and_a_core_service_of_the_same_name() {
    let (_dir, _node, app) = common::start().await;
    let (code, svc) = call(&app, "POST", KSVC, Some(hello())).await;
    assert_eq!(code, StatusCode::CREATED, "{svc}");
    assert_eq!(
        svc["spec"]["traffic"],
        json!([{"latestRevision": true, "percent": 100}])
    );
    assert_eq!(
        svc["spec"]["template"]["spec"]["containers"][0]["name"],
        "user-container"
    );
    assert_eq!(svc["spec"]["template"]["spec"]["timeoutSeconds"], 300);
    // A core Service "hello" is another object, with a ClusterIP; the Knative one has none.
    let (code, core) = call(
        &app,
        "POST",
        "/api/v1/namespaces/default/services",
        Some(json!({"metadata": {"name": "hello"}, "spec": {"ports": [{"port": 80}]}})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{core}");
    assert!(
        core["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.")),
        "{core}"
    );
    let (_, ksvc) = call(&app, "GET", &format!("{KSVC}/hello"), None).await;
    assert_eq!(ksvc["kind"], "Service");
    assert_eq!(ksvc["apiVersion"], "serving.knative.dev/v1");
    assert!(ksvc["spec"].get("clusterIP").is_none(), "{ksvc}");

    let mut bad = hello();
    bad["metadata"]["name"] = json!("bad");
    bad["spec"]["traffic"] =
        json!([{"revisionName": "bad-00001", "latestRevision": true, "percent": 50}]);
    let (code, status) = call(&app, "POST", KSVC, Some(bad)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    let fields: Vec<&str> = status["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["spec.traffic[0].latestRevision", "spec.traffic"],
        "{status}"
    );
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("Traffic targets sum to 50, want 100"),
        "{status}"
    );

    let mut unknown = hello();
    unknown["metadata"]["name"] = json!("typo");
    unknown["spec"]["template"]["spec"]["containerConcurrencyy"] = json!(1);
    let (code, status) = call(
        &app,
        "POST",
        &format!("{KSVC}?fieldValidation=Strict"),
        Some(unknown),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("spec.template.spec.containerConcurrencyy"),
        "{status}"
    );

    // A status is the controllers' to write: one sent with a create is dropped (the routers
    // trust a route's URL); names are DNS labels (they become hosts).
    let (code, route) = call(&app, "POST", "/apis/serving.knative.dev/v1/namespaces/default/routes",
        Some(json!({"metadata": {"name": "evil"}, "spec": {"traffic": [{"revisionName": "x", "percent": 100}]},
            "status": {"url": "http://hello.default.example.com", "traffic": [{"revisionName": "x", "percent": 100}]}}))).await;
    assert_eq!(code, StatusCode::CREATED, "{route}");
    assert!(route["status"].get("url").is_none(), "{route}");
    let mut dotted = hello();
    dotted["metadata"]["name"] = json!("hello.default.svc");
    let (code, status) = call(&app, "POST", KSVC, Some(dotted)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");

    // A revision's spec never changes.
    let (code, rev) = call(&app, "POST", REVISIONS, Some(revision("hello-00001"))).await;
    assert_eq!(code, StatusCode::CREATED, "{rev}");
    let (code, status) = call_with_type(
        &app,
        "PATCH",
        &format!("{REVISIONS}/hello-00001"),
        json!({"spec": {"containerConcurrency": 2}}),
        "application/merge-patch+json",
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    let (code, _) = call_with_type(
        &app,
        "PATCH",
        &format!("{REVISIONS}/hello-00001"),
        json!({"metadata": {"labels": {"team": "a"}}}),
        "application/merge-patch+json",
    )
    .await;
    assert_eq!(code, StatusCode::OK, "its metadata does");
}

#[tokio::test]
async fn a_node_wakes_a_revisions_own_deployment_from_zero_and_nothing_else() {
    let (_dir, _node, app) = common::start().await;
    let node = node_token(&app, "n1").await;
    let (code, rev) = call(&app, "POST", REVISIONS, Some(revision("fn-00001"))).await;
    assert_eq!(code, StatusCode::CREATED, "{rev}");
    let uid = rev["metadata"]["uid"].as_str().unwrap().to_string();
    let (code, d) = call(
        &app,
        "POST",
        DEPLOYMENTS,
        Some(deployment(
            "fn-00001-deployment",
            0,
            Some(("fn-00001", &uid)),
        )),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{d}");

    // The attack: a revision named after somebody else's Deployment ("victim-deployment", not
    // the revision's), which a node then "wakes".
    let (code, _) = call(
        &app,
        "POST",
        DEPLOYMENTS,
        Some(deployment("victim-deployment", 0, None)),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, _) = call(&app, "POST", REVISIONS, Some(revision("victim"))).await;
    assert_eq!(code, StatusCode::CREATED);
    let activate = |name: &str| format!("{REVISIONS}/{name}/activate");
    let (code, status) = call_as(&app, &node, "POST", &activate("victim"), Some(json!({}))).await;
    assert_eq!(code, StatusCode::CONFLICT, "{status}");
    assert_eq!(
        replicas(&app, "victim-deployment").await,
        0,
        "a Deployment the revision does not own stays as it is"
    );

    // Its own Deployment: 0 → 1, and never more.
    let (code, status) = call_as(&app, &node, "POST", &activate("fn-00001"), Some(json!({}))).await;
    assert_eq!(code, StatusCode::CREATED, "{status}");
    assert_eq!(status["reason"], "Activated");
    assert_eq!(replicas(&app, "fn-00001-deployment").await, 1);
    let (code, status) = call_as(&app, &node, "POST", &activate("fn-00001"), Some(json!({}))).await;
    assert_eq!(code, StatusCode::CREATED, "{status}");
    assert_eq!(status["reason"], "AlreadyActive");
    assert_eq!(replicas(&app, "fn-00001-deployment").await, 1);
    let (code, status) = call_as(&app, &node, "POST", &activate("nothing"), Some(json!({}))).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{status}");

    // What else a node might try with the same credential.
    let (code, _) = call_as_with_type(
        &app,
        &node,
        "PATCH",
        &format!("{DEPLOYMENTS}/fn-00001-deployment/scale"),
        json!({"spec": {"replicas": 50}}),
        "application/merge-patch+json",
    )
    .await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "a node does not size functions"
    );
    let (code, _) = call_as(&app, &node, "POST", REVISIONS, Some(revision("planted"))).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, _) = call_as_with_type(
        &app,
        &node,
        "PATCH",
        &format!("{REVISIONS}/fn-00001"),
        json!({"metadata": {"labels": {"x": "y"}}}),
        "application/merge-patch+json",
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, _) = call_as(
        &app,
        &node,
        "GET",
        "/apis/serving.knative.dev/v1/routes",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "the router reads routes");
    let (code, _) = call_as(&app, &node, "GET", "/drover/v1/function-stats", None).await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "only the control plane reads every function's traffic"
    );
}
