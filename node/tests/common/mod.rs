//! What the node endpoint's tests share: an `Exec` that runs host processes, a `Dial` to the
//! host's loopback ports, a stand-in API server answering TokenReviews, and the endpoint.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use node::exec::{Exec, ExecError, ExecIo, Running, WasmExec};
use node::logserver::LogServer;
use node::portforward::Dial;
use serde_json::{json, Value};
use tokio::process::Command;

/// Runs commands on the host; containers `missing` and `wasm` stand for the other outcomes.
pub struct HostExec;

/// The node's own answer for Wasm containers.
static WASM: WasmExec = WasmExec;

impl Exec for HostExec {
    fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        argv: Vec<String>,
        io: ExecIo,
    ) -> runtime::BoxFuture<'_, Result<Running, ExecError>> {
        match container {
            "missing" => {
                let message = format!("container missing is not running in pod {namespace}/{pod}");
                Box::pin(async move { Err(ExecError::NotFound(message)) })
            }
            "wasm" => WASM.exec(namespace, pod, container, argv, io),
            _ => Box::pin(async move {
                let (program, args) = argv.split_first().expect("the endpoint checks");
                let failed =
                    |e: std::io::Error| ExecError::Failed(format!("cannot start {program}: {e}"));
                let ExecIo::Pipes { stdin } = io else {
                    // On a host terminal, as its controlling terminal (util-linux setsid).
                    let (terminal, device) = runtime::terminal::Terminal::open().map_err(failed)?;
                    let stdio = || device.try_clone().map(std::process::Stdio::from);
                    let child = Command::new("setsid")
                        .arg("--ctty")
                        .arg(program)
                        .args(args)
                        .stdin(stdio().map_err(failed)?)
                        .stdout(stdio().map_err(failed)?)
                        .stderr(stdio().map_err(failed)?)
                        .spawn()
                        .map_err(failed)?;
                    return Ok(Running {
                        child,
                        terminal: Some(terminal),
                    });
                };
                let child = Command::new(program)
                    .args(args)
                    .stdin(if stdin {
                        std::process::Stdio::piped()
                    } else {
                        std::process::Stdio::null()
                    })
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(failed)?;
                Ok(Running {
                    child,
                    terminal: None,
                })
            }),
        }
    }
}

/// Dials the host's loopback for every pod: port-forward's connections reach the test's own
/// listeners.
pub struct HostDial;

impl Dial for HostDial {
    fn dial(
        &self,
        _namespace: &str,
        pod: &str,
        port: u16,
    ) -> runtime::BoxFuture<'_, Result<tokio::net::TcpStream, String>> {
        let pod = pod.to_string();
        Box::pin(async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| format!("error forwarding port {port} to pod {pod}: {e}"))
        })
    }
}

/// A stand-in API server whose TokenReview accepts the token `good` as the API server's.
pub async fn api_server() -> SocketAddr {
    let review = |Json(review): Json<Value>| async move {
        let good = review["spec"]["token"] == "good";
        Json(
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "status": {"authenticated": good, "user": {"username": "system:kube-apiserver"}}}),
        )
    };
    let app = axum::Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        axum::routing::post(review),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The node's endpoint, with `HostExec`; returns its address and the temporary pods dir.
pub async fn endpoint() -> (SocketAddr, tempfile::TempDir) {
    let api = api_server().await;
    let config = kube::Config::new(format!("http://{api}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(LogServer::new(
        "n1".into(),
        dir.path().to_path_buf(),
        Arc::default(),
        Arc::default(),
        client,
        Arc::new(HostExec),
        Arc::new(HostDial),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, server.router()).await });
    (addr, dir)
}
