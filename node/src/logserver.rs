//! The node's endpoint for the API server: container logs, which `pods/log` proxies to
//! (`GET /containerLogs/{namespace}/{pod}/{container}?follow&tailLines&previous&timestamps`),
//! commands in containers, which `pods/exec` splices kubectl's connection to
//! (`/exec/{namespace}/{pod}/{container}?command=..`, see [`crate::exec`]) and `pods/attach`
//! to its main process (`/attach/{namespace}/{pod}/{container}`), connections to
//! pods' ports, which `pods/portforward` splices to (`/portForward/{namespace}/{pod}`, see
//! [`crate::portforward`]), both over a WebSocket or SPDY, and the pods' resource usage,
//! which metrics.k8s.io serves (`GET /metrics/pods`).
//!
//! Callers authenticate with a bearer token the API server signed for this node's audience;
//! the node asks the API server to review it (TokenReview, as the kubelet does) and accepts
//! only the API server's own user. Reviews are remembered for a minute.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path as UrlPath, Query, RawQuery, Request, State};
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
    /// Opens the connections of `kubectl port-forward`.
    pub dial: Arc<dyn crate::portforward::Dial>,
    reviewed: Mutex<HashMap<String, Instant>>,
    /// The function router, whose meters `/functions/stats` serves.
    functions: Option<Arc<crate::functions::FunctionRouter>>,
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
        dial: Arc<dyn crate::portforward::Dial>,
    ) -> LogServer {
        LogServer {
            node_name,
            pods_dir,
            index,
            usage,
            client,
            exec,
            dial,
            reviewed: Mutex::new(HashMap::new()),
            functions: None,
        }
    }

    /// Serves the function router's meters at `/functions/stats` (for the autoscaler).
    pub fn with_functions(mut self, router: Arc<crate::functions::FunctionRouter>) -> LogServer {
        self.functions = Some(router);
        self
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
            // GET for WebSocket clients, POST for SPDY ones.
            .route(
                "/exec/{ns}/{pod}/{container}",
                get(exec_in_container).post(exec_in_container),
            )
            .route(
                "/attach/{ns}/{pod}/{container}",
                get(attach_to_container).post(attach_to_container),
            )
            .route(
                "/portForward/{ns}/{pod}",
                get(port_forward).post(port_forward),
            )
            .route("/metrics/pods", get(pod_metrics))
            .route("/functions/stats", get(function_stats))
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

async fn function_stats(State(server): State<Arc<LogServer>>, headers: HeaderMap) -> Response {
    if !from_api_server(&server, &headers).await {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let stats = server
        .functions
        .as_ref()
        .map_or_else(|| serde_json::json!({"revisions": {}}), |f| f.stats());
    let body = serde_json::to_vec(&stats).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The upgrade a streaming request asks for.
enum Upgrade {
    WebSocket(WebSocketUpgrade),
    /// SPDY/3.1, with the stream protocols the client offers (`X-Stream-Protocol-Version`).
    Spdy(hyper::upgrade::OnUpgrade, Vec<String>),
}

impl Upgrade {
    /// Err: the refusal (400) for a request that is neither.
    async fn of(request: Request, what: &str) -> Result<Upgrade, Response> {
        let (mut parts, _) = request.into_parts();
        let asked = parts
            .headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if asked.eq_ignore_ascii_case(crate::spdy::UPGRADE) {
            let offered = parts
                .headers
                .get_all("x-stream-protocol-version")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect();
            return match parts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
                Some(on) => Ok(Upgrade::Spdy(on, offered)),
                None => Err(text(
                    StatusCode::BAD_REQUEST,
                    "the connection cannot be upgraded",
                )),
            };
        }
        WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map(Upgrade::WebSocket)
            .map_err(|e| {
                text(
                    StatusCode::BAD_REQUEST,
                    &format!("{what} streams over a WebSocket or SPDY/3.1, and this request asks for neither ({e})"),
                )
            })
    }
}

/// Switches to SPDY with `protocol` and runs `session` on the connection.
fn switch_to_spdy<F, Fut>(on: hyper::upgrade::OnUpgrade, protocol: &str, session: F) -> Response
where
    F: FnOnce(hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        match on.await {
            Ok(upgraded) => session(hyper_util::rt::TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!("a SPDY upgrade failed: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, crate::spdy::UPGRADE)
        .header("X-Stream-Protocol-Version", protocol)
        .body(Body::empty())
        .unwrap_or_default()
}

async fn exec_in_container(
    State(server): State<Arc<LogServer>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let query = query.unwrap_or_default();
    let parsed = crate::exec::ExecRequest::parse(ns, pod, container, &query);
    stream_with_container(server, parsed, request).await
}

async fn attach_to_container(
    State(server): State<Arc<LogServer>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let query = query.unwrap_or_default();
    let parsed = crate::exec::ExecRequest::parse_attach(ns, pod, container, &query);
    stream_with_container(server, parsed, request).await
}

/// An exec or attach session, over whichever transport the client asked for.
async fn stream_with_container(
    server: Arc<LogServer>,
    parsed: Result<crate::exec::ExecRequest, String>,
    request: Request,
) -> Response {
    if !from_api_server(&server, request.headers()).await {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let exec = match parsed {
        Ok(r) => r,
        Err(message) => return text(StatusCode::BAD_REQUEST, &message),
    };
    let what = if exec.attach { "attach" } else { "exec" };
    match Upgrade::of(request, what).await {
        Ok(Upgrade::WebSocket(ws)) => crate::exec::upgrade(ws, server.exec.clone(), exec),
        Ok(Upgrade::Spdy(on, offered)) => match crate::exec::spdy_protocol(&offered) {
            Ok(protocol) => {
                let runner = server.exec.clone();
                switch_to_spdy(on, protocol, move |io| {
                    crate::exec::spdy_session(io, runner, exec, protocol)
                })
            }
            Err(message) => text(StatusCode::FORBIDDEN, &message),
        },
        Err(refusal) => refusal,
    }
}

async fn port_forward(
    State(server): State<Arc<LogServer>>,
    UrlPath((ns, pod)): UrlPath<(String, String)>,
    request: Request,
) -> Response {
    use crate::portforward::{CHANNELS, PROTOCOL, TUNNEL};
    if !from_api_server(&server, request.headers()).await {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let dial = server.dial.clone();
    let query = request.uri().query().unwrap_or_default().to_string();
    match Upgrade::of(request, "port-forward").await {
        Ok(Upgrade::WebSocket(ws)) => {
            let ws = ws.protocols([TUNNEL, CHANNELS[0], CHANNELS[1]]);
            match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
                Some(TUNNEL) => ws.on_upgrade(move |socket| {
                    crate::portforward::session(crate::portforward::tunnel(socket), dial, ns, pod)
                }),
                Some(_) => match crate::portforward::ports(&query) {
                    Ok(ports) => ws.on_upgrade(move |socket| {
                        crate::portforward::channel_session(socket, dial, ns, pod, ports)
                    }),
                    Err(message) => text(StatusCode::BAD_REQUEST, &message),
                },
                // Not a 101: client-go then falls back to SPDY.
                None => text(
                    StatusCode::BAD_REQUEST,
                    &format!("port-forward over a WebSocket speaks the subprotocols {TUNNEL}, {} and {}; the client offered none", CHANNELS[0], CHANNELS[1]),
                ),
            }
        }
        Ok(Upgrade::Spdy(on, offered)) => {
            let speaks = offered.is_empty()
                || offered
                    .iter()
                    .flat_map(|v| v.split(','))
                    .any(|p| p.trim() == PROTOCOL);
            if !speaks {
                return text(
                    StatusCode::FORBIDDEN,
                    &format!("unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts [\"{PROTOCOL}\"]"),
                );
            }
            switch_to_spdy(on, PROTOCOL, move |io| {
                crate::portforward::session(io, dial, ns, pod)
            })
        }
        Err(refusal) => refusal,
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
