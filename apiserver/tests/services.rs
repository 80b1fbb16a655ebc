//! Service IP and port allocation against a real single-member store, through the API router
//! in process: concurrent creates never share a ClusterIP or NodePort, and deletes release them.

mod common;

use std::collections::HashSet;

use axum::http::StatusCode;
use common::{call, start};
use raft_store::{Consistency, KeySpan, RangeRequest};
use serde_json::{json, Value};

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
           "spec": {"type": "NodePort", "selector": {"app": name}, "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_share_an_ip_or_port_and_deletes_release_them() {
    let (_dir, node, app) = start().await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            call(
                &app,
                "POST",
                "/api/v1/namespaces/default/services",
                Some(service(&format!("s{i}"))),
            )
            .await
        }));
    }
    let (mut ips, mut ports) = (HashSet::new(), HashSet::new());
    for t in tasks {
        let (code, svc) = t.await.unwrap();
        assert_eq!(code, StatusCode::CREATED, "{svc}");
        assert!(
            ips.insert(svc["spec"]["clusterIP"].as_str().unwrap().to_string()),
            "duplicate IP: {svc}"
        );
        for p in svc["spec"]["ports"].as_array().unwrap() {
            assert!(
                ports.insert(p["nodePort"].as_i64().unwrap()),
                "duplicate node port: {svc}"
            );
        }
    }
    assert!(
        !ips.contains("10.96.0.1") && !ips.contains("10.96.0.10"),
        "the kubernetes and kube-dns Services' IPs are never handed out"
    );

    // A port someone holds cannot be taken by name, and the error names the field.
    let held = *ports.iter().next().unwrap();
    let mut clash = service("clash");
    clash["spec"]["ports"][0]["nodePort"] = json!(held);
    let (code, status) = call(
        &app,
        "POST",
        "/api/v1/namespaces/default/services",
        Some(clash),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "spec.ports[0].nodePort"
    );

    // Deleting releases: only the kubernetes and kube-dns Services' reservations are left.
    for i in 0..40 {
        let (code, _) = call(
            &app,
            "DELETE",
            &format!("/api/v1/namespaces/default/services/s{i}"),
            None,
        )
        .await;
        assert_eq!(code, StatusCode::OK);
    }
    let left = node
        .range(
            RangeRequest::new(KeySpan::prefix("/registry/ranges/")),
            Consistency::Linearizable,
            false,
        )
        .await
        .unwrap();
    let keys: Vec<String> = left
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    assert_eq!(
        keys,
        vec![
            "/registry/ranges/serviceips/10.96.0.1",
            "/registry/ranges/serviceips/10.96.0.10"
        ]
    );
}

#[tokio::test]
async fn updates_take_and_give_back_node_ports() {
    let (_dir, _node, app) = start().await;
    let svcs = "/api/v1/namespaces/default/services";
    let mut a = service("a");
    a["spec"]["ports"][0]["nodePort"] = json!(30080);
    assert_eq!(
        call(&app, "POST", svcs, Some(a)).await.0,
        StatusCode::CREATED
    );
    let mut b = service("b");
    b["spec"]["ports"][0]["nodePort"] = json!(30081);
    assert_eq!(
        call(&app, "POST", svcs, Some(b)).await.0,
        StatusCode::CREATED
    );

    // b cannot move onto a's port, and the error names the field.
    let patch = |ports: Value| json!({"spec": {"ports": ports}});
    let (code, status) = common::call_as(
        &app,
        "t",
        "PATCH",
        &format!("{svcs}/b"),
        Some(patch(json!([{"name": "http", "port": 80, "nodePort": 30080}, {"name": "https", "port": 443}]))),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("already allocated"),
        "{status}"
    );

    // a becomes a ClusterIP Service: its node ports are free, and b can take one.
    let (code, a) = common::call_as(
        &app,
        "t",
        "PATCH",
        &format!("{svcs}/a"),
        Some(json!({"spec": {"type": "ClusterIP"}})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{a}");
    assert!(a["spec"]["ports"][0].get("nodePort").is_none(), "{a}");
    let (code, b) = common::call_as(
        &app,
        "t",
        "PATCH",
        &format!("{svcs}/b"),
        Some(patch(json!([{"name": "http", "port": 80, "nodePort": 30080}, {"name": "https", "port": 443}]))),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{b}");
    assert_eq!(b["spec"]["ports"][0]["nodePort"], 30080);
    // b's old port 30081 went back: a new Service may have it.
    let mut c = service("c");
    c["spec"]["ports"][0]["nodePort"] = json!(30081);
    assert_eq!(
        call(&app, "POST", svcs, Some(c)).await.0,
        StatusCode::CREATED
    );
}

/// A node's pod range is its for life: its pods hold addresses of it. Only the first one may
/// be set; changing or clearing it is a 422 naming the field (kube-apiserver's Node rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_its_pod_range_for_life() {
    let (_dir, _node, app) = start().await;
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {}});
    let (code, created) = call(&app, "POST", "/api/v1/nodes", Some(node)).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let merge = "application/merge-patch+json";
    let range = |cidr: &str| json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
    let (code, body) = common::call_with_type(
        &app,
        "PATCH",
        "/api/v1/nodes/n1",
        range("10.42.0.0/24"),
        merge,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    for change in [
        range("10.42.1.0/24"),
        json!({"spec": {"podCIDR": null}}),
        json!({"spec": {"podCIDRs": ["10.42.0.0/24", "10.42.9.0/24"]}}),
    ] {
        let (code, status) =
            common::call_with_type(&app, "PATCH", "/api/v1/nodes/n1", change.clone(), merge).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{change}: {status}");
        assert!(
            status["details"]["causes"][0]["field"]
                .as_str()
                .unwrap()
                .starts_with("spec.podCIDR"),
            "{status}"
        );
    }
    // A whole-object update that carries the range unchanged is fine.
    let (_, current) = call(&app, "GET", "/api/v1/nodes/n1", None).await;
    let (code, body) = call(&app, "PUT", "/api/v1/nodes/n1", Some(current)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["spec"]["podCIDR"], "10.42.0.0/24");
}
