//! Deletes: one object (preconditions, propagation finalizers, graceful deletion by a node)
//! and a collection, each of whose objects is deleted as it would be alone. Kept from the rest of the
//! writes because deletion has rules of its own: an object with finalizers, or one a node must
//! stop first, is only marked, and a delete without preconditions retries when the object
//! moved under it. What an object holds (a Service's reservations) is released with it.

use api::convert;
use api::object;
use api::registry::Resource;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use raft_store::{Compare, CompareOp, KeySpan, Op, RangeRequest, Txn};
use serde_json::{json, Value};

use super::Call;
use crate::respond::{bad_request, conflict, failure, json_response, not_found, store_failure};
use crate::stored::{from_kv, now_rfc3339, to_bytes};
use crate::strategy;

/// How one attempt at a delete ended.
enum Deletion {
    /// Answered: deleted, marked for deletion, or refused.
    Done(Response),
    /// The object changed between the read and the write.
    Moved,
}

/// Whether finalizers still hold `obj`.
pub(super) fn has_finalizers(obj: &Value) -> bool {
    obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

/// The operations that release what a stored object of `r` holds (a Service's IP and node
/// ports).
pub(super) fn release_ops(r: &Resource, obj: &Value) -> Vec<Op> {
    strategy::of(r)
        .held(obj)
        .into_iter()
        .map(|k| Op::delete(k.as_bytes()))
        .collect()
}

impl Call<'_> {
    /// DELETE of one object, with DeleteOptions (preconditions, propagation, grace).
    pub(super) async fn delete(&self, name: &str, body: &Bytes) -> Response {
        let options = match delete_options(body) {
            Ok(o) => o,
            Err(r) => return r,
        };
        // Without preconditions the caller means whatever version is there, so a write that
        // slipped in between (a controller's status update) is read again, as kube-apiserver
        // does, instead of answering 409.
        let preconditions = options["preconditions"]
            .as_object()
            .is_some_and(|p| p.values().any(|v| !v.is_null()));
        // kube-apiserver retries without limit; a bound keeps a pathological writer from holding
        // the request for ever, set far above what any real contention needs.
        let attempts = if preconditions { 1 } else { 64 };
        for _ in 0..attempts {
            match self.delete_once(name, &options).await {
                Deletion::Done(resp) => return resp,
                Deletion::Moved => continue,
            }
        }
        conflict(self.resource(), name)
    }

    /// One attempt at deleting the object as it is now.
    async fn delete_once(&self, name: &str, options: &Value) -> Deletion {
        let current = match self.read(name).await {
            Ok(Some(kv)) => kv,
            Ok(None) => return Deletion::Done(not_found(self.resource(), name)),
            Err(e) => return Deletion::Done(store_failure(e)),
        };
        let mut obj = self.load(&current);
        // Preconditions: the caller means this object, at this version.
        let pre = &options["preconditions"];
        for (field, have) in [
            ("uid", obj["metadata"]["uid"].clone()),
            (
                "resourceVersion",
                obj["metadata"]["resourceVersion"].clone(),
            ),
        ] {
            if let Some(want) = pre[field].as_str() {
                if Some(want) != have.as_str() {
                    let msg = format!(
                        "Precondition failed: {field} in precondition: {want}, {field} in object meta: {}",
                        have.as_str().unwrap_or("")
                    );
                    return Deletion::Done(failure(StatusCode::CONFLICT, "Conflict", &msg));
                }
            }
        }
        let policy = self
            .query
            .get("propagationPolicy")
            .cloned()
            .or_else(|| options["propagationPolicy"].as_str().map(String::from));
        let grace = self
            .query
            .get("gracePeriodSeconds")
            .and_then(|g| g.parse::<i64>().ok())
            .or_else(|| options["gracePeriodSeconds"].as_i64())
            .unwrap_or_else(|| {
                obj["spec"]["terminationGracePeriodSeconds"]
                    .as_i64()
                    .unwrap_or(30)
            });
        // Foreground: the garbage collector deletes the dependents first; Orphan: it frees
        // them. Either way a finalizer holds the object until it has.
        let finalizer = match policy.as_deref() {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        };
        if let Some(finalizer) = finalizer {
            let finalizers = object::metadata_mut(&mut obj)
                .entry("finalizers")
                .or_insert_with(|| json!([]));
            if let Some(list) = finalizers
                .as_array_mut()
                .filter(|l| !l.contains(&json!(finalizer)))
            {
                list.push(json!(finalizer));
            }
        }
        self.strategy().prepare_delete(&mut obj, grace);
        // Finalizers, or a pod on a node: mark the object as being deleted and keep it until
        // the finalizers are removed or the node has stopped the pod (and deletes with grace 0).
        if has_finalizers(&obj) || self.strategy().graceful(&obj) {
            let grace_left = if has_finalizers(&obj) { 0 } else { grace };
            let meta = object::metadata_mut(&mut obj);
            if meta.get("deletionTimestamp").is_none() {
                meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace_left));
            }
            let key = self.key(name);
            let txn = Txn::put(
                key.as_bytes(),
                to_bytes(&convert::to_storage(self.resource(), obj.clone())),
            )
            .when(Compare::mod_revision(
                key.as_bytes(),
                CompareOp::Equal,
                current.mod_revision,
            ));
            return match self.commit(txn).await {
                Ok(resp) if resp.succeeded => {
                    let version = self.written_version(&resp, Some(current.mod_revision));
                    object::metadata_mut(&mut obj).insert("resourceVersion".into(), version);
                    Deletion::Done(self.respond(StatusCode::OK, obj))
                }
                Ok(_) => Deletion::Moved,
                Err(e) => Deletion::Done(store_failure(e)),
            };
        }
        let key = self.key(name);
        let mut ops = vec![Op::delete(key.as_bytes())];
        ops.extend(release_ops(self.resource(), &from_kv(&current)));
        let txn = Txn {
            compare: vec![Compare::mod_revision(
                key.as_bytes(),
                CompareOp::Equal,
                current.mod_revision,
            )],
            success: ops,
            failure: vec![],
        };
        match self.commit(txn).await {
            Ok(resp) if resp.succeeded => {
                Deletion::Done(self.respond(StatusCode::OK, self.load(&current)))
            }
            Ok(_) => Deletion::Moved,
            Err(e) => Deletion::Done(store_failure(e)),
        }
    }

    /// DELETE of a collection: each object that matches the selectors, deleted as a DELETE of
    /// it alone would (finalizers and a node's graceful stop respected, each in its own
    /// transaction; one that changed meanwhile is left alone).
    pub(super) async fn delete_collection(&self, body: &Bytes) -> Response {
        let (labels, fields) = match self.selectors() {
            Ok(s) => s,
            Err(r) => return r,
        };
        let options = match delete_options(body) {
            Ok(o) => o,
            Err(r) => return r,
        };
        let resp = match self
            .range(RangeRequest::new(KeySpan::prefix(self.prefix())))
            .await
        {
            Ok(r) => r,
            Err(e) => return store_failure(e),
        };
        let mut deleted = Vec::new();
        for kv in &resp.kvs {
            let obj = self.load(kv);
            if !labels.matches(&object::labels(&obj)) || !fields.matches(&obj) {
                continue;
            }
            let name = object::name(&obj).unwrap_or("").to_string();
            match self.delete_once(&name, &options).await {
                Deletion::Done(r) if r.status().is_success() => deleted.push(obj),
                Deletion::Done(r) if r.status() == StatusCode::NOT_FOUND => {}
                Deletion::Done(refusal) => return refusal,
                Deletion::Moved => {} // no longer the object that matched
            }
        }
        let r = self.resource();
        json_response(
            StatusCode::OK,
            &json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": {"resourceVersion": resp.revision.to_string()}, "items": deleted}),
        )
    }
}

/// The DeleteOptions of a request's body (none: the defaults).
fn delete_options(body: &Bytes) -> Result<Value, Response> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| bad_request(&format!("the DeleteOptions body is not valid JSON: {e}")))
}
