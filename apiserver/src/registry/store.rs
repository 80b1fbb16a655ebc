//! What the registry keeps in the Raft store, beside (not under) the Kubernetes objects:
//!
//! - `/oci/blobs/{repo}@{digest}` → the blob's size: the link that lets `repo` read a blob.
//!   Blob files are shared by digest, so without links anyone who can pull from one
//!   namespace could read any other namespace's layers by guessing or learning digests.
//! - `/oci/manifests/{repo}@{digest}` → a JSON header line (media type, artifact type,
//!   subject), a newline, then the manifest's exact bytes.
//! - `/oci/tags/{repo}:{tag}` → the digest.
//! - `/oci/referrers/{repo}@{subject}@{digest}` → the referrer's descriptor.
//!
//! `@` and `:` cannot occur in repository names, so a repository's keys never share a prefix
//! with another repository's (`a/b@` is not a prefix of `a/b/c@...`).

use raft_store::{Consistency, KeySpan, KeyValue, RangeRequest, StoreNode, Txn};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::path::{Digest, Repository};
use super::RegistryError;

/// The largest value the store takes (its default limit, 1.5 MiB), less room for the key.
pub const MAX_VALUE_BYTES: usize = 1536 * 1024 - 8 * 1024;

pub fn blob_key(r: &Repository, d: &Digest) -> String {
    format!("/oci/blobs/{r}@{d}")
}

pub fn manifest_key(r: &Repository, d: &Digest) -> String {
    format!("/oci/manifests/{r}@{d}")
}

pub fn tag_key(r: &Repository, tag: &str) -> String {
    format!("/oci/tags/{r}:{tag}")
}

pub fn tags_prefix(r: &Repository) -> String {
    format!("/oci/tags/{r}:")
}

pub fn referrer_key(r: &Repository, subject: &Digest, d: &Digest) -> String {
    format!("/oci/referrers/{r}@{subject}@{d}")
}

pub fn referrers_prefix(r: &Repository, subject: &Digest) -> String {
    format!("/oci/referrers/{r}@{subject}@")
}

/// A stored manifest's header: what answers and the referrers API need without parsing the
/// manifest again.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
}

pub struct Stored {
    pub header: Header,
    pub bytes: Vec<u8>,
}

pub fn encode(header: &Header, bytes: &[u8]) -> Vec<u8> {
    let mut v = serde_json::to_vec(header).expect("a header serializes");
    v.push(b'\n');
    v.extend_from_slice(bytes);
    v
}

pub fn decode(value: &[u8]) -> Result<Stored, RegistryError> {
    let at = value
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| RegistryError::Internal("a stored manifest has no header".into()))?;
    let header = serde_json::from_slice(&value[..at])
        .map_err(|e| RegistryError::Internal(format!("a stored manifest's header: {e}")))?;
    Ok(Stored {
        header,
        bytes: value[at + 1..].to_vec(),
    })
}

/// One key, read linearizably: a push acknowledged by any server is seen by a pull from any
/// other at once.
pub async fn get(store: &StoreNode, key: &str) -> Result<Option<KeyValue>, RegistryError> {
    let resp = store
        .range(
            RangeRequest::new(KeySpan::key(key.as_bytes().to_vec())),
            Consistency::Linearizable,
            false,
        )
        .await
        .map_err(store_error)?;
    Ok(resp.kvs.into_iter().next())
}

/// Every key under `prefix`, in order, at most `limit` (the rest is left).
pub async fn list(
    store: &StoreNode,
    prefix: &str,
    limit: u64,
) -> Result<(Vec<KeyValue>, bool), RegistryError> {
    let resp = store
        .range(
            RangeRequest::new(KeySpan::prefix(prefix.as_bytes().to_vec())).limit(limit),
            Consistency::Linearizable,
            false,
        )
        .await
        .map_err(store_error)?;
    Ok((resp.kvs, resp.more))
}

pub async fn write(store: &StoreNode, txn: Txn) -> Result<bool, RegistryError> {
    store
        .txn(txn, false)
        .await
        .map(|r| r.succeeded)
        .map_err(store_error)
}

pub fn store_error(e: raft_store::StoreError) -> RegistryError {
    if e.is_retryable() {
        RegistryError::Unavailable(format!("the cluster's store: {e}"))
    } else {
        RegistryError::Internal(format!("the cluster's store: {e}"))
    }
}

/// Whether `namespace` exists (pushes go only into namespaces that do).
pub async fn namespace_exists(store: &StoreNode, namespace: &str) -> Result<bool, RegistryError> {
    let key = api::registry::find("", "v1", "namespaces")
        .expect("registered")
        .key(None, namespace);
    Ok(get(store, &key).await?.is_some())
}
