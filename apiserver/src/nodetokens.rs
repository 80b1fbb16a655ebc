//! Node credentials (`nodes/{name}/token`, `drover token node NAME`, and the node of
//! `drover up`): a token for `system:node:<name>` bound to the uid of the Node, so that deleting
//! the Node revokes every credential it was given (a Node made again has another uid).
//!
//! A node's credential is asked for before its agent first registers, so the Node is made then
//! if it does not exist: empty, without status, until its agent fills it in (the node
//! lifecycle controller reports it NotReady meanwhile, as Kubernetes does a node whose kubelet
//! never posted status).

use raft_store::{Compare, Consistency, KeySpan, Op, RangeRequest, StoreError, Txn};
use serde_json::{json, Value};

use crate::auth::{self, Claims};
use crate::state::ApiState;
use crate::stored::{from_kv, stamp_new, to_bytes};

/// The uid of the Node `name`, made now if it does not exist.
pub async fn node_uid(st: &ApiState, name: &str) -> Result<String, Failure> {
    if let Some(why) = api::object::invalid_subdomain(name) {
        return Err(Failure::Name(why));
    }
    let key = api::registry::find("", "v1", "nodes")
        .expect("nodes are registered")
        .key(None, name);
    let uid_of = |obj: &Value| {
        obj["metadata"]["uid"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Failure::Store(StoreError::Internal(format!("{key} has no uid"))))
    };
    let read = st
        .store
        .range(
            RangeRequest::new(KeySpan::key(key.as_bytes())),
            Consistency::Linearizable,
            false,
        )
        .await
        .map_err(Failure::Store)?;
    if let Some(kv) = read.kvs.first() {
        return uid_of(&from_kv(kv));
    }
    let mut node =
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}});
    stamp_new(&mut node);
    // Made here unless it was made meanwhile (its agent registering): then that one's uid.
    let txn = Txn::put(key.as_bytes(), to_bytes(&node))
        .when(Compare::exists(key.as_bytes(), false))
        .or_else(Op::get(key.as_bytes()));
    let resp = st.txn(txn).await.map_err(Failure::Store)?;
    if resp.succeeded {
        return uid_of(&node);
    }
    match resp.range(0).and_then(|r| r.kvs.first()) {
        Some(kv) => uid_of(&from_kv(kv)),
        None => Err(Failure::Store(StoreError::Internal(format!(
            "{key} vanished while it was read"
        )))),
    }
}

/// The claims of node `name`'s credential, bound to its Node's `uid`, valid until `exp`.
pub fn claims(name: &str, uid: String, exp: u64) -> Claims {
    let user = auth::node_user(name);
    Claims {
        sub: user.name,
        groups: user.groups,
        exp,
        uid: Some(uid),
        aud: vec![],
        pod: None,
    }
}

/// A credential for node `name`, valid for `seconds` (at most a token's longest life).
pub async fn issue(st: &ApiState, name: &str, seconds: u64) -> Result<String, Failure> {
    let uid = node_uid(st, name).await?;
    let exp = auth::unix_now() + seconds.min(auth::MAX_TOKEN_SECONDS);
    Ok(st.auth.signer.issue(&claims(name, uid, exp)))
}

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Name(String),
    #[error("{0}")]
    Store(StoreError),
}
