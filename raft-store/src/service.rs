//! The member's HTTP service: Raft RPCs from peers and the store API for clients, both on the
//! member's one address. Bodies are bincode; store-level outcomes (including errors) travel as
//! a bincode `Result` with status 200, and HTTP errors mean the request never reached the store.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
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

fn decode<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    bincode::deserialize(body).map_err(|e| bad_request(format!("malformed request body: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Response {
    match bincode::serialize(value) {
        Ok(bytes) => ([("content-type", "application/octet-stream")], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Peers must name this member's cluster; anything else is refused before Raft sees it.
fn check_peer(node: &StoreNode, headers: &HeaderMap) -> Result<(), Response> {
    let theirs = headers
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
    Ok(())
}

fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_HEADER)
}

async fn append(State(node): State<Arc<StoreNode>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = check_peer(&node, &headers) {
        return r;
    }
    let req: AppendEntriesRequest<TypeConfig> = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    reply(&node.raft().append_entries(req).await)
}

async fn vote(State(node): State<Arc<StoreNode>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = check_peer(&node, &headers) {
        return r;
    }
    let req: VoteRequest<NodeId> = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    reply(&node.raft().vote(req).await)
}

async fn snapshot(State(node): State<Arc<StoreNode>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = check_peer(&node, &headers) {
        return r;
    }
    let req: InstallSnapshotRequest<TypeConfig> = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    reply(&node.raft().install_snapshot(req).await)
}

async fn status(State(node): State<Arc<StoreNode>>) -> Response {
    Json(node.status()).into_response()
}

async fn txn(State(node): State<Arc<StoreNode>>, headers: HeaderMap, body: Bytes) -> Response {
    let req: Txn = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    reply(&node.txn(req, forwarded(&headers)).await)
}

async fn range(State(node): State<Arc<StoreNode>>, headers: HeaderMap, body: Bytes) -> Response {
    let (req, consistency): (RangeRequest, Consistency) = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    reply(&node.range(req, consistency, forwarded(&headers)).await)
}

async fn compact(State(node): State<Arc<StoreNode>>, headers: HeaderMap, body: Bytes) -> Response {
    let rev: Revision = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    reply(&node.compact(rev, forwarded(&headers)).await)
}

async fn join(State(node): State<Arc<StoreNode>>, headers: HeaderMap, body: Bytes) -> Response {
    let (id, addr): (NodeId, String) = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    reply(&node.add_member(id, addr, forwarded(&headers)).await)
}

async fn remove(State(node): State<Arc<StoreNode>>, headers: HeaderMap, body: Bytes) -> Response {
    let id: NodeId = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    reply(&node.remove_member(id, forwarded(&headers)).await)
}

/// A watch served by this member from its own applied state, as a stream of frames.
async fn watch(State(node): State<Arc<StoreNode>>, body: Bytes) -> Response {
    let (span, from): (KeySpan, Revision) = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
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

/// Serves `app` on `listener` with Nagle's algorithm off: small request/response exchanges
/// (votes, heartbeats, puts) must not wait for delayed ACKs.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app).await
}
