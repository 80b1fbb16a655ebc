//! The node's endpoint for the API server: container logs, which `pods/log` proxies to
//! (`GET /containerLogs/{namespace}/{pod}/{container}?follow&tailLines&previous&timestamps`),
//! commands in containers, which `pods/exec` splices kubectl's WebSocket to
//! (`GET /exec/{namespace}/{pod}/{container}?command=..`, see [`crate::exec`]), and the pods'
//! resource usage, which metrics.k8s.io serves (`GET /metrics/pods`).
//!
//! Callers authenticate with a bearer token the API server signed for this node's audience;
//! the node asks the API server to review it (TokenReview, as the kubelet does) and accepts
//! only the API server's own user. Reviews are remembered for a minute.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path as UrlPath, Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

/// Which containers are running now, so a follow ends when its container does.
#[derive(Default)]
pub struct LogIndex {
    running: Mutex<HashMap<String, bool>>,
}

impl LogIndex {
    fn key(ns: &str, pod: &str, container: &str) -> String {
        format!("{ns}/{pod}/{container}")
    }

    pub fn set_running(&self, ns: &str, pod: &str, container: &str, running: bool) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Self::key(ns, pod, container), running);
    }

    fn is_running(&self, ns: &str, pod: &str, container: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&Self::key(ns, pod, container))
            .copied()
            .unwrap_or(false)
    }
}

pub struct LogServer {
    pub node_name: String,
    pub pods_dir: PathBuf,
    pub index: Arc<LogIndex>,
    pub usage: Arc<crate::metrics::PodUsage>,
    pub client: kube::Client,
    /// Starts the commands of `kubectl exec`.
    pub exec: Arc<dyn crate::exec::Exec>,
    reviewed: Mutex<HashMap<String, Instant>>,
}

/// The audience the API server signs log-proxy tokens for.
pub fn audience(node: &str) -> String {
    format!("drover-node:{node}")
}

/// The user the API server's log-proxy tokens name.
pub const API_SERVER_USER: &str = "system:kube-apiserver";

impl LogServer {
    pub fn new(
        node_name: String,
        pods_dir: PathBuf,
        index: Arc<LogIndex>,
        usage: Arc<crate::metrics::PodUsage>,
        client: kube::Client,
        exec: Arc<dyn crate::exec::Exec>,
    ) -> LogServer {
        LogServer {
            node_name,
            pods_dir,
            index,
            usage,
            client,
            exec,
            reviewed: Mutex::new(HashMap::new()),
        }
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
            // POST too: kubectl falls back to SPDY (a POST) when the WebSocket is refused, and
            // should then hear why rather than "405".
            .route(
                "/exec/{ns}/{pod}/{container}",
                get(exec_in_container).post(exec_in_container),
            )
            .route("/metrics/pods", get(pod_metrics))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self)
    }

    /// Whether `token` is the API server's, for this node (TokenReview).
    async fn authorized(&self, token: &str) -> bool {
        if let Some(at) = self
            .reviewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
        {
            if at.elapsed() < Duration::from_secs(60) {
                return true;
            }
        }
        let review = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience(&self.node_name)]}
        });
        let req = http::Request::post("/apis/authentication.k8s.io/v1/tokenreviews")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&review).expect("serialises"))
            .expect("a valid request");
        let Ok(answer) = self.client.request::<serde_json::Value>(req).await else {
            return false;
        };
        let ok = answer["status"]["authenticated"] == true
            && answer["status"]["user"]["username"] == API_SERVER_USER;
        if ok {
            let mut seen = self.reviewed.lock().unwrap_or_else(|p| p.into_inner());
            seen.retain(|_, at| at.elapsed() < Duration::from_secs(60));
            seen.insert(token.to_string(), Instant::now());
        }
        ok
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    follow: Option<bool>,
    tail_lines: Option<usize>,
    previous: Option<bool>,
    timestamps: Option<bool>,
}

fn text(code: StatusCode, message: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain")],
        format!("{message}\n"),
    )
        .into_response()
}

/// The directory of a container's logs, for the pod named (any uid).
fn container_dir(pods_dir: &Path, ns: &str, pod: &str, container: &str) -> Option<PathBuf> {
    // A pod recreated under the same name has a new uid: the newest directory is its.
    let prefix = format!("{ns}_{pod}_");
    std::fs::read_dir(pods_dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join("containers").join(container))
        .filter(|p| p.is_dir())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

/// The numbered log files of a container, oldest first.
fn runs(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut out: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_suffix(".log")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Whether the request carries the API server's token for this node.
async fn from_api_server(server: &LogServer, headers: &HeaderMap) -> bool {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(api::credentials::bearer_token);
    match token {
        Some(t) => server.authorized(t).await,
        None => false,
    }
}

async fn pod_metrics(State(server): State<Arc<LogServer>>, headers: HeaderMap) -> Response {
    if !from_api_server(&server, &headers).await {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let body = serde_json::to_vec(&server.usage.report()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn exec_in_container(
    State(server): State<Arc<LogServer>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    websocket: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !from_api_server(&server, &headers).await {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let request =
        match crate::exec::ExecRequest::parse(ns, pod, container, query.as_deref().unwrap_or("")) {
            Ok(r) => r,
            Err(message) => return text(StatusCode::BAD_REQUEST, &message),
        };
    match websocket {
        Ok(ws) => crate::exec::upgrade(ws, server.exec.clone(), request),
        Err(e) => text(
            StatusCode::BAD_REQUEST,
            &format!(
                "exec streams over a WebSocket ({} or {}), and this request is not one ({e}); SPDY is not supported",
                crate::exec::PROTOCOL_V5,
                crate::exec::PROTOCOL_V4
            ),
        ),
    }
}

async fn container_logs(
    State(server): State<Arc<LogServer>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Response {
    if !from_api_server(&server, &headers).await {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let Some(dir) = container_dir(&server.pods_dir, &ns, &pod, &container) else {
        return text(
            StatusCode::NOT_FOUND,
            &format!("container {container:?} in pod {pod:?} has no logs on this node (it has not started)"),
        );
    };
    let all = runs(&dir);
    let chosen = if q.previous == Some(true) {
        match all.len() {
            0 | 1 => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "previous terminated container {container:?} in pod {pod:?} not found"
                    ),
                )
            }
            n => all[n - 2].1.clone(),
        }
    } else {
        match all.last() {
            Some((_, p)) => p.clone(),
            None => return text(StatusCode::NOT_FOUND, "no logs yet"),
        }
    };
    let timestamps = q.timestamps == Some(true);
    let lines = match runtime::logs::read(&chosen, timestamps, q.tail_lines) {
        Ok(l) => l,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot read the log: {e}"),
            )
        }
    };
    let follow = q.follow == Some(true) && q.previous != Some(true);
    let body = lines.concat();
    if !follow {
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], body).into_response();
    }
    // Follow: what is there, then new lines as they come, until the container stops.
    let already = std::fs::metadata(&chosen).map(|m| m.len()).unwrap_or(0);
    let stream = futures_util::stream::unfold(
        (Some(body), chosen, already, server, ns, pod, container),
        move |(first, path, offset, server, ns, pod, container)| async move {
            if let Some(b) = first {
                return Some((
                    Ok::<_, std::io::Error>(b),
                    (None, path, offset, server, ns, pod, container),
                ));
            }
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(offset);
                // A rotated file starts again from its beginning.
                let offset = if len < offset { 0 } else { offset };
                if len > offset {
                    let bytes = std::fs::read(&path).unwrap_or_default();
                    let len = bytes.len() as u64;
                    let new =
                        String::from_utf8_lossy(bytes.get(offset as usize..).unwrap_or_default())
                            .into_owned();
                    let out: String = new
                        .lines()
                        .filter_map(runtime::logs::parse_line)
                        .map(|l| runtime::logs::render(&l, timestamps))
                        .collect();
                    return Some((Ok(out), (None, path, len, server, ns, pod, container)));
                }
                if !server.index.is_running(&ns, &pod, &container) {
                    return None;
                }
            }
        },
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response()
}
