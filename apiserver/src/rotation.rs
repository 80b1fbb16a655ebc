//! `POST /drover/v1/token-keys/rotate?graceSeconds=N` (`drover token rotate`): a new key signs
//! the cluster's tokens from now on; the keys before it verify for `N` more seconds (default a
//! day), then every token they signed is dead. `system:masters` only, as the join token: it
//! decides which credentials live.

use std::sync::Arc;

use api::rbac::User;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use raft_store::Consistency;
use serde_json::json;

use crate::auth::{unix_now, MAX_TOKEN_SECONDS};
use crate::respond::{bad_request, failure, json_response};
use crate::signing::{self, KeySet};
use crate::state::ApiState;

pub const PATH_ROTATE: &str = "/drover/v1/token-keys/rotate";

/// How long the keys before a rotation verify, unless the request says.
pub const DEFAULT_GRACE_SECONDS: u64 = 86400;

pub async fn rotate(
    State(st): State<Arc<ApiState>>,
    user: Option<Extension<User>>,
    query: Option<Extension<crate::query::Parsed>>,
) -> Response {
    let admin = user.is_some_and(|Extension(u)| u.groups.iter().any(|g| g == "system:masters"));
    if !admin {
        return failure(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "only system:masters may rotate the token signing keys",
        );
    }
    let query = query.map(|Extension(q)| q.0).unwrap_or_default();
    let grace = match query.get("graceSeconds").map(|g| g.parse::<u64>()) {
        None => DEFAULT_GRACE_SECONDS,
        Some(Ok(g)) if g <= MAX_TOKEN_SECONDS => g,
        Some(_) => {
            return bad_request(&format!(
                "graceSeconds must be a whole number of seconds from 0 to {MAX_TOKEN_SECONDS}"
            ))
        }
    };
    let unavailable = |e: raft_store::StoreError| {
        failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("cannot rotate the token signing keys: {e}"),
        )
    };
    // Another member may rotate at the same moment: the write is a compare-and-swap, retried
    // over what the other wrote.
    for _ in 0..5 {
        let stored = match signing::load(&st.store, &st.sealer, Consistency::Linearizable).await {
            Ok(s) => s,
            Err(e) => return unavailable(e),
        };
        let (keys, read_at) = match stored {
            Some((keys, revision)) => (keys, Some(revision)),
            None => (st.auth.signer.keys(), None),
        };
        let secret: [u8; 32] = rand::random();
        let kid: String = (0..8)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let rotated = keys.rotated(unix_now(), grace, kid.clone(), &secret);
        match signing::save(&st.store, &st.sealer, read_at, &rotated).await {
            Ok(true) => {
                st.auth.signer.set(rotated.clone());
                return json_response(StatusCode::OK, &answer(&kid, &rotated));
            }
            Ok(false) => continue,
            Err(e) => return unavailable(e),
        }
    }
    failure(
        StatusCode::CONFLICT,
        "Conflict",
        "the signing keys kept changing under this rotation; try again",
    )
}

/// What a rotation answers: the new key, and until when each older one verifies.
fn answer(kid: &str, keys: &KeySet) -> serde_json::Value {
    json!({
        "kid": kid,
        "keys": keys.keys.iter().map(|k| json!({"kid": k.kid, "created": k.created, "verifyUntil": k.verify_until})).collect::<Vec<_>>(),
    })
}
