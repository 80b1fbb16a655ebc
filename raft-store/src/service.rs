//! The member's HTTP service: Raft RPCs from peers and the store API for clients, both on the
//! member's one address. Bodies are bincode; store-level outcomes (including errors) travel as
//! a bincode `Result` with status 200, and HTTP errors mean the request never reached the store.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::{
    encode_frame, FORWARDED_HEADER, PATH_COMPACT, PATH_JOIN, PATH_RANGE, PATH_REMOVE, PATH_STATUS,
    PATH_TXN, PATH_WATCH,
};
use crate::mvcc::{Consistency, KeySpan, RangeRequest, Revision, StoreError, Txn};
use crate::network::{CLUSTER_HEADER, PATH_APPEND, PATH_SNAPSHOT, PATH_VOTE};
use crate::node::StoreNode;
use crate::raft::{NodeId, TypeConfig};

/// The routes of one member. The API server mounts its own routes beside these.
pub fn router(node: Arc<StoreNode>) -> Router {
    Router::new()
        .route(PATH_APPEND, post(append))
        .route(PATH_VOTE, post(vote))
        .route(PATH_SNAPSHOT, post(snapshot))
        .route(PATH_STATUS, get(status))
        .route(PATH_TXN, post(txn))
        .route(PATH_RANGE, post(range))
        .route(PATH_COMPACT, post(compact))
        .route(PATH_JOIN, post(join))
        .route(PATH_REMOVE, post(remove))
        .route(PATH_WATCH, post(watch))
        // Snapshots and large txns exceed axum's 2 MiB default.
        .layer(axum::extract::DefaultBodyLimit::max(512 * 1024 * 1024))
        .with_state(node)
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, msg).into_response()
}

fn reply<T: Serialize>(value: &T) -> Response {
    match bincode::serialize(value) {
        Ok(bytes) => ([("content-type", "application/octet-stream")], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// A bincode request body; a malformed one is answered 400 before the handler runs.
struct Bincode<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Bincode<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        bincode::deserialize(&body)
            .map(Bincode)
            .map_err(|e| bad_request(format!("malformed request body: {e}")))
    }
}

/// A request from a peer of this member's cluster; anything else is refused (409) before Raft
/// sees it.
struct Peer;

impl FromRequestParts<Arc<StoreNode>> for Peer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        node: &Arc<StoreNode>,
    ) -> Result<Self, Response> {
        let theirs = parts
            .headers
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if theirs != node.identity.cluster_id {
            return Err((
                StatusCode::CONFLICT,
                format!(
                    "this member belongs to cluster {}, the request came from cluster {theirs:?}",
                    node.identity.cluster_id
                ),
            )
                .into_response());
        }
        Ok(Peer)
    }
}

/// Whether another member already forwarded this request (so it must not be forwarded again).
struct Forwarded(bool);

impl<S: Send + Sync> FromRequestParts<S> for Forwarded {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Forwarded(parts.headers.contains_key(FORWARDED_HEADER)))
    }
}

type Node = State<Arc<StoreNode>>;

async fn append(
    State(node): Node,
    _: Peer,
    Bincode(req): Bincode<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    reply(&node.raft().append_entries(req).await)
}

async fn vote(State(node): Node, _: Peer, Bincode(req): Bincode<VoteRequest<NodeId>>) -> Response {
    reply(&node.raft().vote(req).await)
}

async fn snapshot(
    State(node): Node,
    _: Peer,
    Bincode(req): Bincode<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    reply(&node.raft().install_snapshot(req).await)
}

async fn status(State(node): Node) -> Response {
    Json(node.status()).into_response()
}

async fn txn(State(node): Node, Forwarded(fwd): Forwarded, Bincode(req): Bincode<Txn>) -> Response {
    reply(&node.txn(req, fwd).await)
}

async fn range(
    State(node): Node,
    Forwarded(fwd): Forwarded,
    Bincode((req, consistency)): Bincode<(RangeRequest, Consistency)>,
) -> Response {
    reply(&node.range(req, consistency, fwd).await)
}

async fn compact(
    State(node): Node,
    Forwarded(fwd): Forwarded,
    Bincode(rev): Bincode<Revision>,
) -> Response {
    reply(&node.compact(rev, fwd).await)
}

async fn join(
    State(node): Node,
    Forwarded(fwd): Forwarded,
    Bincode((id, addr)): Bincode<(NodeId, String)>,
) -> Response {
    reply(&node.add_member(id, addr, fwd).await)
}

async fn remove(
    State(node): Node,
    Forwarded(fwd): Forwarded,
    Bincode(id): Bincode<NodeId>,
) -> Response {
    reply(&node.remove_member(id, fwd).await)
}

/// A watch served by this member from its own applied state, as a stream of frames.
async fn watch(State(node): Node, Bincode((span, from)): Bincode<(KeySpan, Revision)>) -> Response {
    if let Err(e) = node.config.limits.check_span(&span, "span") {
        return reply(&Err::<(), StoreError>(e));
    }
    let watcher = node.watch(span, from);
    let frames = futures_util::stream::unfold(watcher, |mut w| async move {
        let item = w.next().await?;
        Some((Ok::<_, std::io::Error>(Bytes::from(encode_frame(&item))), w))
    });
    Body::from_stream(frames).into_response()
}

/// Serves `app` on `listener` with Nagle's algorithm off (small exchanges — votes, heartbeats,
/// puts — must not wait for delayed ACKs), over mutual TLS when `tls` is given.
///
/// Bounds, so that nobody holds the member's resources for free: at most [`MAX_CONNECTIONS`]
/// connections (more wait in the kernel's backlog), a TLS handshake within
/// [`HANDSHAKE_TIMEOUT`], and request headers within [`HEADER_TIMEOUT`] (also how long an idle
/// connection is kept: longer than clients keep theirs in their pools, so a pooled connection
/// is never closed under a request being sent on it).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the connections we have.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        let (app, acceptor) = (app.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let served = match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => serve_connection(tls, app).await,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "refused a peer connection");
                            return;
                        }
                        Err(_) => return,
                    }
                }
                None => serve_connection(tcp, app).await,
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "peer connection ended with an error");
            }
        });
    }
}

pub const MAX_CONNECTIONS: usize = 1024;
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn serve_connection<IO>(io: IO, app: Router) -> Result<(), hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(
            hyper_util::rt::TokioIo::new(io),
            hyper_util::service::TowerToHyperService::new(app),
        )
        .await
}
