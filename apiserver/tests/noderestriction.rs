//! Least privilege for nodes, through the API router against a real store: each attack a
//! node's credential could make before the node authorizer had its graph and NodeRestriction
//! its checks, and the answer it gets now.

mod common;

use axum::http::StatusCode;
use common::{call, call_as, call_as_with_type};
use serde_json::{json, Value};

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

async fn create(app: &axum::Router, uri: &str, obj: Value) {
    let (code, body) = call(app, "POST", uri, Some(obj)).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
}

/// A pod bound to `node` (created by the admin, as a scheduler would bind it) using the
/// Secret `secret` and the ServiceAccount `app`.
fn pod(name: &str, node: &str, secret: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"nodeName": node, "serviceAccountName": "app",
                    "volumes": [{"name": "s", "secret": {"secretName": secret}}],
                    "containers": [{"name": "c", "image": "hello.wasm"}]}})
}

#[tokio::test]
async fn a_node_reads_only_what_its_pods_use_and_asks_tokens_only_for_them() {
    let (_dir, _node, app) = common::start().await;
    let n1 = node_token(&app, "n1").await;
    node_token(&app, "n2").await;
    for (ns, name) in [
        ("default", "used"),
        ("default", "other"),
        ("kube-system", "crown-jewels"),
    ] {
        create(
            &app,
            &format!("/api/v1/namespaces/{ns}/secrets"),
            json!({"metadata": {"name": name}, "stringData": {"k": "v"}}),
        )
        .await;
    }
    create(
        &app,
        "/api/v1/namespaces/default/serviceaccounts",
        json!({"metadata": {"name": "app"}}),
    )
    .await;
    create(
        &app,
        "/api/v1/namespaces/default/pods",
        pod("mine", "n1", "used"),
    )
    .await;
    create(
        &app,
        "/api/v1/namespaces/default/pods",
        pod("theirs", "n2", "other"),
    )
    .await;

    let get = |uri: String| {
        let (app, n1) = (app.clone(), n1.clone());
        async move { call_as(&app, &n1, "GET", &uri, None).await.0 }
    };
    assert_eq!(
        get("/api/v1/namespaces/default/secrets/used".into()).await,
        StatusCode::OK
    );
    for denied in [
        "/api/v1/namespaces/default/secrets/other",
        "/api/v1/namespaces/kube-system/secrets/crown-jewels",
        "/api/v1/namespaces/default/secrets",
        "/api/v1/secrets",
        "/api/v1/configmaps",
        "/apis/apps/v1/deployments",
    ] {
        assert_eq!(get(denied.into()).await, StatusCode::FORBIDDEN, "{denied}");
    }
    // What a node needs for the network stays readable.
    for allowed in [
        "/api/v1/pods",
        "/api/v1/services",
        "/api/v1/nodes",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/apis/networking.k8s.io/v1/networkpolicies",
        "/api/v1/namespaces",
    ] {
        assert_eq!(get(allowed.into()).await, StatusCode::OK, "{allowed}");
    }

    // Tokens: only for its pods' ServiceAccount, bound to one of its pods.
    let token_request = |pod: Option<&str>| {
        let mut spec = json!({"audiences": ["https://kubernetes.default.svc"]});
        if let Some(p) = pod {
            spec["boundObjectRef"] = json!({"kind": "Pod", "apiVersion": "v1", "name": p});
        }
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
    };
    let sa_token = "/api/v1/namespaces/default/serviceaccounts/app/token";
    let (code, body) = call_as(&app, &n1, "POST", sa_token, Some(token_request(None))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "unbound: {body}");
    let (code, body) = call_as(
        &app,
        &n1,
        "POST",
        sa_token,
        Some(token_request(Some("theirs"))),
    )
    .await;
    assert_eq!(
        code,
        StatusCode::UNPROCESSABLE_ENTITY,
        "another node's pod: {body}"
    );
    let (code, body) = call_as(
        &app,
        &n1,
        "POST",
        sa_token,
        Some(token_request(Some("mine"))),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    create(
        &app,
        "/api/v1/namespaces/kube-system/serviceaccounts",
        json!({"metadata": {"name": "admin-bot"}}),
    )
    .await;
    let (code, _) = call_as(
        &app,
        &n1,
        "POST",
        "/api/v1/namespaces/kube-system/serviceaccounts/admin-bot/token",
        Some(token_request(Some("mine"))),
    )
    .await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "a ServiceAccount none of its pods runs as"
    );

    // Once its pod is gone, so is its access.
    let (code, _) = call(
        &app,
        "DELETE",
        "/api/v1/namespaces/default/pods/mine?gracePeriodSeconds=0",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        get("/api/v1/namespaces/default/secrets/used".into()).await,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn a_node_cannot_move_its_pod_relabel_itself_or_take_another_nodes_lease() {
    let (_dir, _node, app) = common::start().await;
    let n1 = node_token(&app, "n1").await;
    node_token(&app, "n2").await;
    create(
        &app,
        "/api/v1/namespaces/default/secrets",
        json!({"metadata": {"name": "s"}}),
    )
    .await;
    create(
        &app,
        "/api/v1/namespaces/default/serviceaccounts",
        json!({"metadata": {"name": "app"}}),
    )
    .await;
    create(
        &app,
        "/api/v1/namespaces/default/pods",
        pod("mine", "n1", "s"),
    )
    .await;
    let merge = "application/merge-patch+json";
    let uri = "/api/v1/namespaces/default/pods/mine";

    // The attack: its own pod onto another node, as root, with the host's disk.
    let escape = json!({"spec": {"nodeName": "n2", "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
                                 "containers": [{"name": "c", "image": "hello.wasm", "command": ["sh"]}]}});
    let (code, body) = call_as_with_type(&app, &n1, "PATCH", uri, escape.clone(), merge).await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "a node writes its pods' status only: {body}"
    );
    // Nobody changes a pod's spec beyond what Kubernetes allows, the admin neither.
    let (code, body) = common::call_with_type(&app, "PATCH", uri, escape, merge).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"]["causes"][0]["field"], "spec", "{body}");
    let (code, body) = common::call_with_type(&app, "PATCH", uri, json!({"spec": {"containers": [{"name": "c", "image": "hello:v2"}], "activeDeadlineSeconds": 60, "tolerations": [{"key": "k", "operator": "Exists"}]}}), "application/strategic-merge-patch+json").await;
    assert_eq!(
        code,
        StatusCode::OK,
        "image (merged by name, as kubectl set image does), deadline and an added toleration may change: {body}"
    );
    let (code, _) = call_as_with_type(
        &app,
        &n1,
        "PATCH",
        &format!("{uri}/status"),
        json!({"status": {"phase": "Running"}}),
        merge,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "its pod's status");

    // Its own labels, but not those that say what role it has.
    let node_uri = "/api/v1/nodes/n1";
    for label in [
        "node-role.kubernetes.io/control-plane",
        "node-restriction.kubernetes.io/pci",
        "x.node-restriction.kubernetes.io/y",
    ] {
        let (code, body) = call_as_with_type(
            &app,
            &n1,
            "PATCH",
            node_uri,
            json!({"metadata": {"labels": {label: ""}}}),
            merge,
        )
        .await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{label}: {body}");
        assert!(body["message"].as_str().unwrap().contains(label), "{body}");
    }
    let (code, _) = call_as_with_type(
        &app,
        &n1,
        "PATCH",
        node_uri,
        json!({"metadata": {"labels": {"team": "a"}}}),
        merge,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    // Set by an admin, the role label stays through the node's own writes, which cannot drop it.
    let (code, _) = common::call_with_type(
        &app,
        "PATCH",
        node_uri,
        json!({"metadata": {"labels": {"node-role.kubernetes.io/worker": ""}}}),
        merge,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call_as_with_type(
        &app,
        &n1,
        "PATCH",
        node_uri,
        json!({"metadata": {"labels": {"team": "b"}}}),
        merge,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call_as_with_type(
        &app,
        &n1,
        "PATCH",
        node_uri,
        json!({"metadata": {"labels": {"node-role.kubernetes.io/worker": null}}}),
        merge,
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN);

    // Its own Lease only, whatever the create's path says.
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let lease = |n: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": n}});
    let (code, body) = call_as(&app, &n1, "POST", leases, Some(lease("n2"))).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    let (code, _) = call_as(&app, &n1, "POST", leases, Some(lease("n1"))).await;
    assert_eq!(code, StatusCode::CREATED);
}
