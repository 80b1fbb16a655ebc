//! Blobs on more than one server. An upload is acknowledged only once a majority of the
//! store's voters hold the blob, so a push survives the loss of any minority of servers as
//! the manifests in the Raft store do; the remaining voters get their copy in the background,
//! and a server asked for a blob it lacks fetches it from the others first.
//!
//! Copies travel between members on their peer address (mutual TLS with the cluster CA, the
//! store's own transport): `PUT` and `GET` of `/blobs/v1/sha256/{hex}`. Only members reach
//! it, and a copy is named by its digest only once its bytes hash to it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::Router;
use futures_util::stream::{FuturesUnordered, StreamExt};
use raft_store::StoreNode;

use super::blobs::Blobs;
use super::path::Digest;
use super::RegistryError;

const PEER_PATH: &str = "/blobs/v1/sha256/";

/// The routes the peer address serves for other members.
pub fn peer_router(blobs: Arc<Blobs>) -> Router {
    Router::new()
        .route("/blobs/v1/sha256/{hex}", put(take_copy).get(give_copy))
        .with_state(blobs)
}

fn digest_of(hex: &str) -> Result<Digest, Response> {
    Digest::parse(&format!("sha256:{hex}"))
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()).into_response())
}

async fn take_copy(
    State(blobs): State<Arc<Blobs>>,
    Path(hex): Path<String>,
    req: Request,
) -> Response {
    let digest = match digest_of(&hex) {
        Ok(d) => d,
        Err(r) => return r,
    };
    match blobs
        .receive(&digest, req.into_body().into_data_stream())
        .await
    {
        Ok(_) => StatusCode::CREATED.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn give_copy(State(blobs): State<Arc<Blobs>>, Path(hex): Path<String>) -> Response {
    let digest = match digest_of(&hex) {
        Ok(d) => d,
        Err(r) => return r,
    };
    match tokio::fs::File::open(blobs.path(&digest)).await {
        Ok(file) => Body::from_stream(super::file_stream(file, None)).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// How long a copy may go without a byte moving before it is given up.
const IDLE: Duration = Duration::from_secs(30);

/// The other voters' peer addresses, and how many of them must also hold a blob for a
/// majority of all voters to hold it (this server counts only if it is a voter itself: a
/// learner's copy is not one a majority can be rebuilt from).
fn others_and_needed(store: &StoreNode) -> (Vec<String>, usize) {
    let voters = store.voters();
    let quorum = voters.len() / 2 + 1;
    let me = store.peer_address();
    let voting = voters.values().any(|a| a == me);
    let others = voters.into_values().filter(|a| a != me).collect();
    (others, quorum - usize::from(voting))
}

/// `stream`, failing when no chunk arrives for [`IDLE`] (a peer stopped mid-copy).
fn idle_limited<S, E>(stream: S) -> impl futures_util::Stream<Item = Result<bytes::Bytes, String>>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    futures_util::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(IDLE, stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(e.to_string()), None)),
            Ok(None) => None,
            Err(_) => Some((Err(format!("no data for {} s", IDLE.as_secs())), None)),
        }
    })
}

/// Sends this server's copy of `digest` to the other voters; returns once a majority of voters
/// hold it (this server counts), leaving the other copies to finish in the background.
pub async fn to_quorum(
    store: &Arc<StoreNode>,
    blobs: &Arc<Blobs>,
    digest: &Digest,
) -> Result<(), RegistryError> {
    let (others, mut needed) = others_and_needed(store);
    let quorum = store.voters().len() / 2 + 1;
    let mut copies: FuturesUnordered<_> = others
        .into_iter()
        .map(|peer| {
            let (store, blobs, digest) = (store.clone(), blobs.clone(), digest.clone());
            tokio::spawn(async move { send(&store, &blobs, &peer, &digest).await })
        })
        .collect();
    let mut failures = Vec::new();
    while needed > 0 {
        match copies.next().await {
            Some(Ok(Ok(()))) => needed -= 1,
            Some(Ok(Err(e))) => failures.push(e),
            Some(Err(e)) => failures.push(e.to_string()),
            None => {
                return Err(RegistryError::Unavailable(format!(
                    "the blob could not be copied to a majority of the servers ({quorum} of \
                     them must hold it): {}",
                    failures.join("; ")
                )))
            }
        }
    }
    // The spawned copies still running carry on without us.
    Ok(())
}

async fn send(store: &StoreNode, blobs: &Blobs, peer: &str, digest: &Digest) -> Result<(), String> {
    let file = tokio::fs::File::open(blobs.path(digest))
        .await
        .map_err(|e| format!("cannot read blob {digest}: {e}"))?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or_default();
    // A stalled peer must not hold the push for ever: as long as 1 MiB/s would take, and 30 s.
    let limit = IDLE + Duration::from_secs(size >> 20);
    let response = store
        .transport()
        .put(peer, &format!("{PEER_PATH}{}", digest.hex()))
        .timeout(limit)
        .body(reqwest::Body::wrap_stream(super::file_stream(file, None)))
        .send()
        .await
        .map_err(|e| format!("{peer}: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        Err(format!("{peer}: {status} {text}"))
    }
}

/// Fetches blob `digest` from another voter into this server's store; whether one had it.
pub async fn fetch(
    store: &StoreNode,
    blobs: &Blobs,
    digest: &Digest,
) -> Result<bool, RegistryError> {
    let (others, _) = others_and_needed(store);
    for peer in others {
        let asked = store
            .transport()
            .get(&peer, &format!("{PEER_PATH}{}", digest.hex()))
            .send();
        let response = match tokio::time::timeout(IDLE, asked).await {
            Ok(Ok(r)) if r.status().is_success() => r,
            _ => continue,
        };
        let bytes = idle_limited(Box::pin(response.bytes_stream()));
        match blobs.receive(digest, bytes).await {
            Ok(_) => return Ok(true),
            Err(e) => tracing::warn!(%peer, error = %e, "a copy of blob {digest} failed"),
        }
    }
    Ok(false)
}
