//! The MVCC data model: keys, revisions, ranges, transactions, watch events and the errors a
//! client can see. Plain data, serialisable, no I/O: the engine applies it, the server carries it.

use std::ops::Bound;

use serde::{Deserialize, Serialize};

/// A cluster-wide revision. Every committed write transaction gets the next one; 0 means
/// "none" (no such key, or "latest" in a request).
pub type Revision = u64;

/// One key as seen at some revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Revision of the put that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last put to the key.
    pub mod_revision: Revision,
    /// Number of puts since the key was created; 1 after the first.
    pub version: u64,
}

/// A span as start and end bounds on byte-string keys.
pub type KeyBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// Which keys an operation touches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeySpan {
    /// Exactly one key.
    Key(Vec<u8>),
    /// Every key that starts with these bytes (all keys if empty).
    Prefix(Vec<u8>),
    /// `[start, end)`; `end: None` means no upper bound.
    Range {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

impl KeySpan {
    pub fn key(k: impl Into<Vec<u8>>) -> Self {
        KeySpan::Key(k.into())
    }
    pub fn prefix(p: impl Into<Vec<u8>>) -> Self {
        KeySpan::Prefix(p.into())
    }

    /// The span as byte-string bounds, or `None` when it is empty (an end before its start),
    /// so that callers never hand an inverted range to a map.
    pub fn bounds(&self) -> Option<KeyBounds> {
        let (start, end) = match self {
            KeySpan::Key(k) => (k.clone(), Bound::Included(k.clone())),
            KeySpan::Prefix(p) => (
                p.clone(),
                prefix_end(p).map_or(Bound::Unbounded, Bound::Excluded),
            ),
            KeySpan::Range { start, end } => (
                start.clone(),
                end.clone().map_or(Bound::Unbounded, Bound::Excluded),
            ),
        };
        let empty = match &end {
            Bound::Included(e) => *e < start,
            Bound::Excluded(e) => *e <= start,
            Bound::Unbounded => false,
        };
        (!empty).then_some((Bound::Included(start), end))
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeySpan::Key(k) => k == key,
            KeySpan::Prefix(p) => key.starts_with(p),
            KeySpan::Range { start, end } => {
                key >= start.as_slice() && end.as_ref().is_none_or(|e| key < e.as_slice())
            }
        }
    }

    /// The same span, starting just after `key`: how a limited range continues.
    pub fn after(&self, key: &[u8]) -> KeySpan {
        let mut start = key.to_vec();
        start.push(0);
        let end = match self.bounds() {
            Some((_, Bound::Excluded(e))) => Some(e),
            Some((_, Bound::Unbounded)) => None,
            // A single key (or an empty span) has nothing after it: an empty range.
            _ => Some(start.clone()),
        };
        KeySpan::Range { start, end }
    }

    fn longest_key(&self) -> usize {
        match self {
            KeySpan::Key(k) | KeySpan::Prefix(k) => k.len(),
            KeySpan::Range { start, end } => start.len().max(end.as_ref().map_or(0, Vec::len)),
        }
    }
}

/// The smallest key greater than every key with this prefix, if there is one.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    pub span: KeySpan,
    /// Read at this revision; 0 reads the latest.
    pub revision: Revision,
    /// At most this many keys; 0 means no limit.
    pub limit: u64,
    /// Only count the keys, return none.
    pub count_only: bool,
}

impl RangeRequest {
    pub fn new(span: KeySpan) -> Self {
        RangeRequest {
            span,
            revision: 0,
            limit: 0,
            count_only: false,
        }
    }
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }
    pub fn at(mut self, revision: Revision) -> Self {
        self.revision = revision;
        self
    }
    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }

    /// The request for the next page after `resp`, pinned to the same revision so the pages
    /// form one consistent view. `None` when `resp` was the last page.
    pub fn next_page(&self, resp: &RangeResponse) -> Option<RangeRequest> {
        let last = resp.kvs.last()?;
        if !resp.more {
            return None;
        }
        Some(RangeRequest {
            span: self.span.after(&last.key),
            revision: resp.revision,
            ..self.clone()
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// More keys exist in the span after the last one returned.
    pub more: bool,
    /// How many keys the whole span holds at this revision, regardless of `limit`.
    pub count: u64,
    /// The revision the read was served at.
    pub revision: Revision,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (read index on the leader).
    #[default]
    Linearizable,
    /// Whatever this member has applied: faster, possibly stale.
    Serializable,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: Vec<u8>,
    pub target: CompareTarget,
    pub op: CompareOp,
}

/// What a comparison looks at. A missing key has mod, create revision and version 0 and no value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    ModRevision(Revision),
    CreateRevision(Revision),
    Version(u64),
    Value(Vec<u8>),
    /// `op` is ignored: true when the key's existence equals the flag.
    Exists(bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl Compare {
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, rev: Revision) -> Self {
        Compare {
            key: key.into(),
            target: CompareTarget::ModRevision(rev),
            op,
        }
    }
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: u64) -> Self {
        Compare {
            key: key.into(),
            target: CompareTarget::Version(version),
            op,
        }
    }
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Compare {
            key: key.into(),
            target: CompareTarget::Value(value.into()),
            op,
        }
    }
    pub fn exists(key: impl Into<Vec<u8>>, exists: bool) -> Self {
        Compare {
            key: key.into(),
            target: CompareTarget::Exists(exists),
            op: CompareOp::Equal,
        }
    }

    /// Whether the comparison holds for the key's current state.
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ordering = match &self.target {
            CompareTarget::Exists(want) => return current.is_some() == *want,
            CompareTarget::Value(v) => match current {
                Some(kv) => kv.value.as_slice().cmp(v.as_slice()),
                // etcd's rule: a value comparison against a missing key is false.
                None => return false,
            },
            CompareTarget::ModRevision(r) => current.map_or(0, |kv| kv.mod_revision).cmp(r),
            CompareTarget::CreateRevision(r) => current.map_or(0, |kv| kv.create_revision).cmp(r),
            CompareTarget::Version(v) => current.map_or(0, |kv| kv.version).cmp(v),
        };
        match self.op {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Less => ordering == Ordering::Less,
            CompareOp::Greater => ordering == Ordering::Greater,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        span: KeySpan,
    },
    /// A read inside the transaction; it sees the writes of earlier ops in the same branch.
    Range(RangeRequest),
}

impl Op {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Op::Delete {
            span: KeySpan::Key(key.into()),
        }
    }
    pub fn get(key: impl Into<Vec<u8>>) -> Self {
        Op::Range(RangeRequest::new(KeySpan::Key(key.into())))
    }
}

/// Compare-and-swap: if every comparison holds, run `success`, else `failure`; atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Txn {
            success: vec![Op::put(key, value)],
            ..Txn::default()
        }
    }
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Txn {
            success: vec![Op::delete(key)],
            ..Txn::default()
        }
    }
    pub fn when(mut self, compare: Compare) -> Self {
        self.compare.push(compare);
        self
    }
    pub fn and_then(mut self, op: Op) -> Self {
        self.success.push(op);
        self
    }
    pub fn or_else(mut self, op: Op) -> Self {
        self.failure.push(op);
        self
    }

    /// The same comparisons and reads with every write left out: what the transaction would
    /// answer, without changing anything (the API server's `dryRun`). Each write becomes a
    /// count-only read of what it would touch, so the results keep their positions.
    pub fn without_writes(self) -> Txn {
        let read_only = |ops: Vec<Op>| -> Vec<Op> {
            ops.into_iter()
                .map(|op| match op {
                    Op::Put { key, .. } => Op::Range(RangeRequest {
                        count_only: true,
                        ..RangeRequest::new(KeySpan::Key(key))
                    }),
                    Op::Delete { span } => Op::Range(RangeRequest {
                        count_only: true,
                        ..RangeRequest::new(span)
                    }),
                    read @ Op::Range(_) => read,
                })
                .collect()
        };
        Txn {
            compare: self.compare,
            success: read_only(self.success),
            failure: read_only(self.failure),
        }
    }

    /// Checks sizes and shape before the transaction is proposed, so a bad request is refused
    /// with a clear message and never reaches the log.
    pub fn validate(&self, limits: &Limits) -> Result<(), StoreError> {
        let ops = self.compare.len() + self.success.len() + self.failure.len();
        if ops > limits.max_txn_ops {
            return Err(StoreError::invalid(format!(
                "txn has {ops} compares and ops; the limit is {}",
                limits.max_txn_ops
            )));
        }
        // Field names are only formatted for an error: this runs for every write.
        let fail = |field: String, why: String| Err(StoreError::invalid(format!("{field}: {why}")));
        for (i, c) in self.compare.iter().enumerate() {
            if let Some(why) = limits.key_problem(&c.key) {
                return fail(format!("compare[{i}].key"), why);
            }
            if let CompareTarget::Value(v) = &c.target {
                if let Some(why) = limits.value_problem(v) {
                    return fail(format!("compare[{i}].value"), why);
                }
            }
        }
        for (branch, ops) in [("success", &self.success), ("failure", &self.failure)] {
            let mut written: Vec<&[u8]> = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                match op {
                    Op::Put { key, value } => {
                        if let Some(why) = limits.key_problem(key) {
                            return fail(format!("{branch}[{i}].key"), why);
                        }
                        if let Some(why) = limits.value_problem(value) {
                            return fail(format!("{branch}[{i}].value"), why);
                        }
                        if written.contains(&key.as_slice()) {
                            let why = format!(
                                "key {:?} is written twice in one txn",
                                String::from_utf8_lossy(key)
                            );
                            return fail(format!("{branch}[{i}].key"), why);
                        }
                        written.push(key);
                    }
                    Op::Delete { span } | Op::Range(RangeRequest { span, .. }) => {
                        if let Some(why) = limits.span_problem(span) {
                            return fail(format!("{branch}[{i}].span"), why);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Put { prev: Option<KeyValue> },
    Delete { deleted: Vec<KeyValue> },
    Range(RangeResponse),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether the comparisons held (so `success` ran).
    pub succeeded: bool,
    /// The store's revision after the txn: the txn's own revision if it wrote anything.
    pub revision: Revision,
    pub results: Vec<OpResult>,
}

impl TxnResponse {
    /// The result of a single-key read that the txn ran, if it ran one at `index`.
    pub fn range(&self, index: usize) -> Option<&RangeResponse> {
        match self.results.get(index) {
            Some(OpResult::Range(r)) => Some(r),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key, as a watcher sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// For a delete: the key with `mod_revision` = the deletion's revision and no value.
    pub kv: KeyValue,
    /// The key before this change, if it existed.
    pub prev_kv: Option<KeyValue>,
}

/// What a watcher receives: the events of consecutive revisions, up to and including
/// `revision`. A batch with no events is a progress notification: nothing in the watched
/// span changed up to `revision`, so a watcher can resume from `revision + 1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchBatch {
    pub events: Vec<Event>,
    pub revision: Revision,
}

/// Size limits, checked before a request is proposed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // etcd's defaults: 1.5 MiB requests, 128 ops per txn. Kubernetes keys are short paths.
        Limits {
            max_key_bytes: 4096,
            max_value_bytes: 1536 * 1024,
            max_txn_ops: 128,
        }
    }
}

impl Limits {
    fn key_problem(&self, key: &[u8]) -> Option<String> {
        if key.is_empty() {
            return Some("key must not be empty".into());
        }
        (key.len() > self.max_key_bytes).then(|| {
            format!(
                "key is {} bytes; the limit is {}",
                key.len(),
                self.max_key_bytes
            )
        })
    }

    fn value_problem(&self, value: &[u8]) -> Option<String> {
        (value.len() > self.max_value_bytes).then(|| {
            format!(
                "value is {} bytes; the limit is {}",
                value.len(),
                self.max_value_bytes
            )
        })
    }

    fn span_problem(&self, span: &KeySpan) -> Option<String> {
        if span.longest_key() > self.max_key_bytes {
            return Some(format!(
                "key is longer than the limit of {} bytes",
                self.max_key_bytes
            ));
        }
        match span {
            KeySpan::Key(k) => self.key_problem(k),
            _ => None,
        }
    }

    /// Checks a span a read or watch names; the error names `field`.
    pub fn check_span(&self, span: &KeySpan, field: &str) -> Result<(), StoreError> {
        match self.span_problem(span) {
            Some(why) => Err(StoreError::invalid(format!("{field}: {why}"))),
            None => Ok(()),
        }
    }
}

/// Every error a store client can see. Serialisable: it crosses the wire unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StoreError {
    /// The request is malformed or too large; the message names the field.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The revision asked for has been compacted away. List again, then watch from the list.
    #[error("revision {requested} has been compacted; the oldest available is {}", compact_revision + 1)]
    Compacted {
        requested: Revision,
        compact_revision: Revision,
    },
    #[error("revision {requested} is in the future; the current revision is {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    /// The watcher did not keep up and was cut off. Watch again from `resume_from`.
    #[error("watcher fell too far behind and was cut off; resume from revision {resume_from}")]
    WatcherTooSlow { resume_from: Revision },
    /// No leader is known right now (an election is under way). Retry shortly.
    #[error("no leader is known right now; retry shortly")]
    NoLeader,
    /// The request may or may not have been applied: the member lost contact with the leader
    /// after sending it on. Read back before retrying a non-idempotent write.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// The member is not usable for this request (shutting down, not yet joined, ...).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A peer or data dir belongs to a different cluster.
    #[error("cluster mismatch: {0}")]
    ClusterMismatch(String),
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        StoreError::InvalidArgument(msg.into())
    }

    /// Whether retrying the same request elsewhere or later is safe and may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::NoLeader | StoreError::Unavailable(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_that_can_be() {
        assert_eq!(prefix_end(b"/pods/"), Some(b"/pods0".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn spans_contain_what_their_bounds_say() {
        let p = KeySpan::prefix("/a/");
        assert!(p.contains(b"/a/x"));
        assert!(!p.contains(b"/b"));
        let r = KeySpan::Range {
            start: b"b".to_vec(),
            end: Some(b"d".to_vec()),
        };
        assert!(r.contains(b"b") && r.contains(b"c\xff") && !r.contains(b"d"));
        let after = p.after(b"/a/x");
        let inverted = KeySpan::Range {
            start: b"b".to_vec(),
            end: Some(b"a".to_vec()),
        };
        assert!(inverted.bounds().is_none());
        assert!(KeySpan::key("k").after(b"k").bounds().is_none());
        assert!(!after.contains(b"/a/x") && after.contains(b"/a/x\0") && !after.contains(b"/b"));
    }

    #[test]
    fn a_txn_without_writes_keeps_its_comparisons_and_the_places_of_its_results() {
        let txn = Txn::put("/a", "1")
            .when(Compare::exists("/a", false))
            .and_then(Op::delete("/b"))
            .and_then(Op::get("/c"))
            .or_else(Op::get("/a"));
        let dry = txn.clone().without_writes();
        assert_eq!(dry.compare, txn.compare);
        assert_eq!(dry.success.len(), 3);
        assert!(dry
            .success
            .iter()
            .chain(&dry.failure)
            .all(|op| matches!(op, Op::Range(_))));
        assert_eq!(dry.success[2], Op::get("/c"));
        assert_eq!(dry.failure, txn.failure);
    }

    #[test]
    fn compare_on_a_missing_key() {
        assert!(Compare::mod_revision("k", CompareOp::Equal, 0).holds(None));
        assert!(Compare::exists("k", false).holds(None));
        assert!(!Compare::value("k", CompareOp::NotEqual, "x").holds(None));
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            create_revision: 3,
            mod_revision: 5,
            version: 2,
        };
        assert!(Compare::mod_revision("k", CompareOp::Greater, 4).holds(Some(&kv)));
        assert!(Compare::version("k", CompareOp::Less, 3).holds(Some(&kv)));
        assert!(!Compare::exists("k", false).holds(Some(&kv)));
    }

    #[test]
    fn validation_names_the_field() {
        let limits = Limits {
            max_key_bytes: 4,
            max_value_bytes: 2,
            max_txn_ops: 3,
        };
        let err = Txn::put("toolong", "v").validate(&limits).unwrap_err();
        assert!(err.to_string().contains("success[0].key"), "{err}");
        let err = Txn::put("k", "vvv").validate(&limits).unwrap_err();
        assert!(err.to_string().contains("success[0].value"), "{err}");
        let err = Txn::put("k", "v")
            .and_then(Op::put("k", "w"))
            .validate(&limits)
            .unwrap_err();
        assert!(err.to_string().contains("written twice"), "{err}");
        let err = Txn::put("", "v").validate(&limits).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        assert!(Txn::put("k", "v").validate(&limits).is_ok());
    }
}
