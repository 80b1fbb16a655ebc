//! `pods/exec` through the API router: authorized as `create`, the pod and container checked,
//! then the upgrade passed to a (fake) node and the two connections spliced.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use common::{call, call_as};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the fake node was asked: the path with its query, and the headers that matter.
#[derive(Debug, Clone)]
struct Asked {
    path: String,
    authorization: String,
    websocket_key: String,
    protocol: String,
}

/// Serves `app` on `listener` as a node's endpoint: over TLS with a certificate of the test CA
/// for the node `name` (None: plain HTTP, as an impostor might), upgrades allowed.
fn serve_as_node(listener: tokio::net::TcpListener, app: axum::Router, name: Option<&str>) {
    let tls = name.map(|name| {
        let (cert, key) = common::test_ca().node_serving_credentials(name).unwrap();
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
            apiserver::pki::node_server_tls(&cert, &key).unwrap(),
        ))
    });
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (tls, app) = (tls.clone(), app.clone());
            tokio::spawn(async move {
                let service = hyper_util::service::TowerToHyperService::new(app);
                let builder = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    Some(tls) => {
                        let Ok(stream) = tls.accept(tcp).await else {
                            return;
                        };
                        builder
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .with_upgrades()
                            .await
                    }
                    None => {
                        builder
                            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                            .with_upgrades()
                            .await
                    }
                };
            });
        }
    });
}

/// A node endpoint that switches protocols for any container but `refused` and then echoes
/// what it gets back with a `node:` prefix, serving as node `name` (None: plain HTTP).
async fn fake_node_as(name: Option<&str>) -> (u16, Arc<Mutex<Vec<Asked>>>) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    let handler = move |mut req: Request| {
        let seen = seen.clone();
        async move {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            seen.lock().unwrap().push(Asked {
                path: req.uri().to_string(),
                authorization: header("authorization"),
                websocket_key: header("sec-websocket-key"),
                protocol: header("sec-websocket-protocol"),
            });
            if req.uri().path().ends_with("/refused") {
                return Response::builder()
                    .status(400)
                    .body(Body::from("the node refuses this one\n"))
                    .unwrap();
            }
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = hyper_util::rt::TokioIo::new(upgrade.await.unwrap());
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut answer = b"node:".to_vec();
                    answer.extend_from_slice(&buf[..n]);
                    if io.write_all(&answer).await.is_err() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(101)
                .header("upgrade", "websocket")
                .header("connection", "Upgrade")
                .header("sec-websocket-accept", "accepted")
                .header("sec-websocket-protocol", "v5.channel.k8s.io")
                .header("x-not-for-the-client", "1")
                .body(Body::empty())
                .unwrap()
        }
    };
    let app =
        axum::Router::new().route("/exec/{ns}/{pod}/{container}", axum::routing::get(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    serve_as_node(listener, app, name);
    (port, asked)
}

async fn fake_node() -> (u16, Arc<Mutex<Vec<Asked>>>) {
    fake_node_as(Some("n1")).await
}

/// An HTTP/1.1 upgrade request as kubectl sends it; returns the response head and body (the
/// body only when it is not a 101) and the connection.
async fn exec_over_tcp(api: &str, path: &str) -> (String, String, TcpStream) {
    let mut tcp = TcpStream::connect(api).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut byte))
            .await
            .expect("the API server answers")
            .unwrap();
        assert_eq!(n, 1, "the connection closed within the head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|l| l.trim().parse::<usize>().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    tcp.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8(body).unwrap(), tcp)
}

async fn patch_status(app: &axum::Router, uri: &str, status: Value) {
    let (code, body) = call_as(app, "t", "PATCH", uri, Some(json!({"status": status}))).await;
    assert_eq!(code, StatusCode::OK, "{uri}: {body}");
}

async fn make_pod(app: &axum::Router, name: &str, containers: &[&str], status: Value) {
    let containers: Vec<Value> = containers
        .iter()
        .map(|c| json!({"name": c, "image": "x"}))
        .collect();
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": {"kubectl.kubernetes.io/default-container": "b"}},
        "spec": {"nodeName": "n1", "containers": containers}});
    let (code, body) = call(app, "POST", "/api/v1/namespaces/default/pods", Some(pod)).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    patch_status(
        app,
        &format!("/api/v1/namespaces/default/pods/{name}/status"),
        status,
    )
    .await;
}

fn running(names: &[&str]) -> Value {
    let statuses: Vec<Value> = names
        .iter()
        .map(|n| json!({"name": n, "ready": true, "restartCount": 0, "image": "x", "imageID": "", "state": {"running": {}}}))
        .collect();
    json!({"phase": "Running", "containerStatuses": statuses})
}

#[tokio::test]
async fn exec_checks_the_pod_then_splices_the_client_to_the_node() {
    let (_dir, _store, app) = common::start().await;
    let (node_port, asked) = fake_node().await;
    let (code, body) = call(
        &app,
        "POST",
        "/api/v1/nodes",
        Some(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    patch_status(
        &app,
        "/api/v1/nodes/n1/status",
        json!({"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
               "daemonEndpoints": {"kubeletEndpoint": {"Port": node_port}}}),
    )
    .await;
    make_pod(
        &app,
        "web",
        &["a", "b", "refused"],
        running(&["a", "b", "refused"]),
    )
    .await;
    make_pod(
        &app,
        "crashing",
        &["c"],
        json!({"phase": "Running", "containerStatuses": [{"name": "c", "ready": false, "restartCount": 3, "image": "x", "imageID": "",
               "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}),
    )
    .await;
    make_pod(&app, "done", &["c"], json!({"phase": "Succeeded"})).await;
    make_pod(&app, "starting", &["c"], json!({"phase": "Pending"})).await;

    let exec = "/api/v1/namespaces/default/pods/web/exec?command=sh&command=-c&command=echo+hi&stdout=true";
    // The node's address reaches the watch cache a moment after it was written.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = call(&app, "GET", exec, None).await;
        if body["message"]
            .as_str()
            .unwrap_or("")
            .contains("can be upgraded")
        {
            assert_eq!(code, StatusCode::BAD_REQUEST);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node never became known: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app.clone()).await });

    // Switched and spliced: the node's negotiation reaches the client, bytes flow both ways.
    let (head, _, mut tcp) = exec_over_tcp(&api, &format!("{exec}&container=a")).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-protocol: v5.channel.k8s.io"),
        "{head}"
    );
    assert!(head.contains("sec-websocket-accept: accepted"), "{head}");
    assert!(!head.contains("x-not-for-the-client"), "{head}");
    tcp.write_all(b"hello").await.unwrap();
    let mut echoed = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut echoed))
        .await
        .expect("the node's answer comes back")
        .unwrap();
    assert_eq!(&echoed, b"node:hello");
    let first = asked.lock().unwrap()[0].clone();
    assert_eq!(
        first.path,
        "/exec/default/web/a?command=sh&command=-c&command=echo+hi&stdout=true&container=a"
    );
    assert!(
        first.authorization.starts_with("Bearer drover."),
        "the node gets the API server's token, not the client's: {first:?}"
    );
    assert_eq!(first.websocket_key, "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(first.protocol, "v5.channel.k8s.io");

    // No container named: the annotated default.
    let (head, _, _) = exec_over_tcp(&api, exec).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(asked.lock().unwrap()[1]
        .path
        .starts_with("/exec/default/web/b?"));

    // The node's refusal reaches the client as a Status.
    let (head, body, _) = exec_over_tcp(&api, &format!("{exec}&container=refused")).await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["message"], "the node refuses this one", "{status}");

    // Refused before the node is asked.
    let asked_before = asked.lock().unwrap().len();
    for (path, code, message) in [
        (
            format!("{exec}&container=zzz"),
            400,
            "container zzz is not valid for pod web",
        ),
        (
            "/api/v1/namespaces/default/pods/crashing/exec?command=ls&stdout=true".into(),
            400,
            "container c in pod crashing is not running (waiting: CrashLoopBackOff)",
        ),
        (
            "/api/v1/namespaces/default/pods/done/exec?command=ls&stdout=true".into(),
            400,
            "cannot exec into a container in a completed pod; current phase is Succeeded",
        ),
        (
            "/api/v1/namespaces/default/pods/starting/exec?command=ls&stdout=true".into(),
            400,
            "pod starting is not running (phase Pending)",
        ),
        (
            "/api/v1/namespaces/default/pods/nope/exec?command=ls&stdout=true".into(),
            404,
            "pods \"nope\" not found",
        ),
        (
            "/api/v1/namespaces/default/pods/starting/portforward?ports=80".into(),
            400,
            "pod starting is not running (phase Pending); port-forward needs a running pod",
        ),
        (
            "/api/v1/namespaces/default/pods/web/attach?stdout=true&container=zzz".into(),
            400,
            "container zzz is not valid for pod web",
        ),
    ] {
        let (head, body, _) = exec_over_tcp(&api, &path).await;
        assert!(
            head.starts_with(&format!("http/1.1 {code}")),
            "{path}: {head}"
        );
        let status: Value = serde_json::from_str(&body).unwrap();
        assert!(
            status["message"].as_str().unwrap().contains(message),
            "{path}: {status}"
        );
    }
    assert_eq!(asked.lock().unwrap().len(), asked_before);
}

#[tokio::test]
async fn exec_is_authorized_as_create_on_pods_exec() {
    let (_dir, _store, app) = common::start().await;
    let (code, _) = call(
        &app,
        "POST",
        "/api/v1/namespaces/default/serviceaccounts",
        Some(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "dev"}})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED);
    let (_, token) = call(
        &app,
        "POST",
        "/api/v1/namespaces/default/serviceaccounts/dev/token",
        Some(json!({"spec": {}})),
    )
    .await;
    let token = token["status"]["token"].as_str().unwrap().to_string();
    let exec = "/api/v1/namespaces/default/pods/web/exec?command=ls&stdout=true";
    let bind = |role: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("dev-{role}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "dev", "namespace": "default"}]})
    };
    let rolebindings = "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings";

    // A viewer reads pods but may not run commands in them, with GET (WebSocket) or POST.
    let (code, _) = call(&app, "POST", rolebindings, Some(bind("view"))).await;
    assert_eq!(code, StatusCode::CREATED);
    for method in ["GET", "POST"] {
        let (code, body) = call_as(&app, &token, method, exec, None).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{method}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(
                "cannot create resource \"pods/exec\" in API group \"\" in the namespace \"default\""
            ),
            "{body}"
        );
    }
    let (code, body) = call_as(
        &app,
        &token,
        "GET",
        "/api/v1/namespaces/default/pods/web/portforward",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");

    // An editor may: the request gets past authorization (to "no such pod").
    let (code, _) = call(&app, "POST", rolebindings, Some(bind("edit"))).await;
    assert_eq!(code, StatusCode::CREATED);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (code, body) = call_as(&app, &token, "GET", exec, None).await;
        if code == StatusCode::NOT_FOUND {
            assert_eq!(body["message"], "pods \"web\" not found");
            break;
        }
        assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "edit never allowed exec"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The API server trusts no address a node publishes: whatever answers there must prove with a
/// certificate of the cluster CA that it is the node. A plain-HTTP listener, or another node's
/// certificate, gets neither the request nor the token meant for the node.
#[tokio::test]
async fn only_the_node_itself_is_given_exec_and_its_token() {
    let (_dir, _store, app) = common::start().await;
    call(
        &app,
        "POST",
        "/api/v1/nodes",
        Some(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})),
    )
    .await;
    make_pod(&app, "web", &["a"], running(&["a"])).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap().to_string();
    let served = app.clone();
    tokio::spawn(async move { axum::serve(listener, served).await });
    let exec = "/api/v1/namespaces/default/pods/web/exec?command=ls&stdout=true&container=a";
    for impostor in [None, Some("n2")] {
        let (port, asked) = fake_node_as(impostor).await;
        patch_status(
            &app,
            "/api/v1/nodes/n1/status",
            json!({"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}),
        )
        .await;
        // Until the cache has the new port, the previous impostor's answer is the same refusal.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (head, body, _) = exec_over_tcp(&api, exec).await;
            assert!(
                !head.starts_with("http/1.1 101"),
                "{impostor:?} was spliced: {head}"
            );
            if body.contains(&format!(":{port}")) {
                assert!(body.contains("did not prove to be node n1"), "{body}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            asked.lock().unwrap().is_empty(),
            "{impostor:?} received a request: {:?}",
            asked.lock().unwrap()
        );
    }
}
