//! The MVCC engine: the replicated state machine's data, in memory.
//!
//! It owns revisions, per-key history, the change index that watches read, and compaction. It
//! knows nothing of Raft: the Raft layer hands it committed commands in log order plus an opaque
//! `applied` blob (last applied log id and membership) that is kept with the data, so the data
//! and the record of what was applied can never disagree.
//!
//! State:
//! - `keys`:    key → its retained history, oldest first: (revision, value or tombstone). The
//!   last entry is the key's live state; reads at a past revision search the history.
//! - `changes`: revision → the keys written at that revision; watches walk it in order.
//! - counters (`revision`, `compact_revision`) and the `applied` blob.
//!
//! Durability comes from Raft, as in Nomad's and Consul's state stores: every applied command is
//! in the fsynced log, snapshots of this state are written to disk before the log is purged,
//! and a restarted member loads its snapshot and replays the log after it. Keeping the state in
//! memory (rather than in an on-disk B-tree, as the first version did with redb) removed the
//! largest CPU cost per write; the price is that the key space and its uncompacted history
//! must fit in memory, which the compaction interval bounds.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::mvcc::{
    Event, EventKind, KeySpan, KeyValue, Op, OpResult, RangeRequest, RangeResponse, Revision,
    StoreError, Txn, TxnResponse, WatchBatch,
};

/// A replicated command: what the Raft log carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Txn(Txn),
    /// Transactions from many clients in one log entry, applied in order as if each had its
    /// own entry (each gets its own revision). The leader batches concurrent writes this way so
    /// that one fsync covers many of them.
    Batch(Vec<Txn>),
    /// Forget history older than this revision.
    Compact(Revision),
}

/// What applying one log entry produced, returned to the proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Applied {
    /// A blank or membership entry.
    #[default]
    Nothing,
    Txn(TxnResponse),
    Batch(Vec<TxnResponse>),
    Compacted {
        revision: Revision,
    },
    /// The command was valid when proposed but refused deterministically on apply (every member
    /// refuses it the same way), e.g. compacting to a future revision.
    Refused(StoreError),
}

/// The head of the store: the newest revision and the compaction point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub revision: Revision,
    pub compact_revision: Revision,
}

/// The value half of a key, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    value: Vec<u8>,
    create_revision: Revision,
    mod_revision: Revision,
    version: u64,
}

impl Stored {
    fn with_key(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}

/// One key's retained history, oldest first.
type History = Vec<(Revision, Option<Stored>)>;

/// Everything the engine holds; also the payload of a Raft snapshot.
#[derive(Default, Serialize, Deserialize)]
struct State {
    revision: Revision,
    compact_revision: Revision,
    applied: Option<Vec<u8>>,
    keys: BTreeMap<Vec<u8>, History>,
    changes: BTreeMap<Revision, Vec<Vec<u8>>>,
    /// Snapshots being built ([`Engine::export`]): while any is, compaction only moves
    /// `compact_revision` and leaves the history in place, because an export reads the history
    /// at its revision a chunk at a time.
    #[serde(skip)]
    exports: usize,
    /// The compaction whose history removal waits for the exports to end.
    #[serde(skip)]
    pending_prune: Option<Revision>,
    /// How many times the state was replaced by an installed snapshot: an export that sees it
    /// change starts again.
    #[serde(skip)]
    generation: u64,
}

impl State {
    fn head(&self) -> Head {
        Head {
            revision: self.revision,
            compact_revision: self.compact_revision,
        }
    }

    fn keys_in<'a>(
        &'a self,
        span: &KeySpan,
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a History)> + 'a {
        span.bounds()
            .into_iter()
            .flat_map(move |bounds| self.keys.range(bounds))
    }

    fn latest(&self, key: &[u8]) -> Option<KeyValue> {
        let (_, stored) = self.keys.get(key)?.last()?;
        stored.as_ref().map(|s| s.with_key(key))
    }

    /// A read at the latest or a past revision.
    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let at = if req.revision == 0 {
            self.revision
        } else {
            req.revision
        };
        if at > self.revision {
            return Err(StoreError::FutureRevision {
                requested: at,
                current: self.revision,
            });
        }
        if at < self.compact_revision {
            return Err(StoreError::Compacted {
                requested: at,
                compact_revision: self.compact_revision,
            });
        }
        Ok(self.range_at(req, at))
    }

    /// The keys of `req.span` as they were at revision `at` (already checked to be readable).
    fn range_at(&self, req: &RangeRequest, at: Revision) -> RangeResponse {
        let limit = if req.limit == 0 { u64::MAX } else { req.limit };
        let mut resp = RangeResponse {
            kvs: Vec::new(),
            more: false,
            count: 0,
            revision: at,
        };
        for (key, history) in self.keys_in(&req.span) {
            // The newest entry at or before `at`; a tombstone or nothing means absent.
            let idx = history.partition_point(|(r, _)| *r <= at);
            let Some((_, Some(stored))) = idx.checked_sub(1).map(|i| &history[i]) else {
                continue;
            };
            resp.count += 1;
            if req.count_only {
                continue;
            }
            if (resp.kvs.len() as u64) < limit {
                resp.kvs.push(stored.with_key(key));
            } else {
                resp.more = true;
            }
        }
        resp
    }

    /// The event that `key`'s entry at `rev` represents, with the value before it.
    fn event_at(&self, key: &[u8], rev: Revision) -> Result<Event, StoreError> {
        let missing = || {
            StoreError::Internal(format!(
                "history of {:?} has no entry for revision {rev}",
                String::from_utf8_lossy(key)
            ))
        };
        let history = self.keys.get(key).ok_or_else(missing)?;
        let idx = history
            .binary_search_by_key(&rev, |(r, _)| *r)
            .map_err(|_| missing())?;
        let prev = idx
            .checked_sub(1)
            .and_then(|i| history[i].1.as_ref())
            .map(|s| s.with_key(key));
        Ok(match &history[idx].1 {
            Some(stored) => Event {
                kind: EventKind::Put,
                kv: stored.with_key(key),
                prev_kv: prev,
            },
            None => Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.to_vec(),
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: rev,
                    version: 0,
                },
                prev_kv: prev,
            },
        })
    }

    fn txn(&mut self, txn: &Txn) -> TxnResponse {
        let succeeded = txn
            .compare
            .iter()
            .all(|c| c.holds(self.latest(&c.key).as_ref()));
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        // Every write of this txn shares one new revision.
        let rev = self.revision + 1;
        let mut changed: Vec<Vec<u8>> = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                Op::Put { key, value } => {
                    let prev = self.latest(key);
                    let stored = Stored {
                        value: value.clone(),
                        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                        mod_revision: rev,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                    };
                    self.keys
                        .entry(key.clone())
                        .or_default()
                        .push((rev, Some(stored)));
                    changed.push(key.clone());
                    OpResult::Put { prev }
                }
                Op::Delete { span } => {
                    let doomed: Vec<KeyValue> = self
                        .keys_in(span)
                        .filter_map(|(k, h)| h.last()?.1.as_ref().map(|s| s.with_key(k)))
                        .collect();
                    for kv in &doomed {
                        self.keys
                            .get_mut(&kv.key)
                            .expect("just read")
                            .push((rev, None));
                        changed.push(kv.key.clone());
                    }
                    OpResult::Delete { deleted: doomed }
                }
                // A latest read sees this txn's earlier writes (at `rev`); a read at a revision
                // that cannot be served returns nothing (a txn result carries no error).
                Op::Range(req) => {
                    let at = match req.revision {
                        0 if changed.is_empty() => self.revision,
                        0 => rev,
                        r => r,
                    };
                    if at > rev || at < self.compact_revision {
                        OpResult::Range(RangeResponse {
                            kvs: Vec::new(),
                            more: false,
                            count: 0,
                            revision: at,
                        })
                    } else {
                        OpResult::Range(self.range_at(req, at))
                    }
                }
            });
        }
        if !changed.is_empty() {
            self.revision = rev;
            self.changes.insert(rev, changed);
            for r in &mut results {
                if let OpResult::Range(resp) = r {
                    resp.revision = rev;
                }
            }
        }
        TxnResponse {
            succeeded,
            revision: self.revision,
            results,
        }
    }

    /// Drops history that no read at or after `rev` and no watch from after `rev` can need:
    /// per key, every entry older than the newest one at or before `rev`, and that one too if
    /// it is a deletion.
    fn compact(&mut self, rev: Revision) -> Result<(), StoreError> {
        if rev > self.revision {
            return Err(StoreError::FutureRevision {
                requested: rev,
                current: self.revision,
            });
        }
        if rev <= self.compact_revision {
            return Err(StoreError::Compacted {
                requested: rev,
                compact_revision: self.compact_revision,
            });
        }
        self.compact_revision = rev;
        if self.exports > 0 {
            self.pending_prune = Some(rev);
        } else {
            self.prune(rev);
        }
        Ok(())
    }

    /// Removes history older than `rev` (keeping each key's live value at `rev`), and the
    /// change index before it. Reads below `compact_revision` are refused either way; this
    /// frees the memory.
    fn prune(&mut self, rev: Revision) {
        self.keys.retain(|_, history| {
            let idx = history.partition_point(|(r, _)| *r <= rev);
            let keep_from = match idx.checked_sub(1) {
                Some(newest) if history[newest].1.is_some() => newest,
                _ => idx,
            };
            history.drain(..keep_from);
            !history.is_empty()
        });
        self.changes = self.changes.split_off(&(rev + 1));
    }
}

/// Keys (or change-index revisions) copied per hold of the lock while exporting a snapshot.
const EXPORT_CHUNK: usize = 4096;

/// The engine. Cheap to clone; one writer (the Raft state machine), many concurrent readers.
#[derive(Clone)]
pub struct Engine {
    state: Arc<RwLock<State>>,
    head: Arc<watch::Sender<Head>>,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    pub fn new() -> Engine {
        Engine {
            state: Arc::default(),
            head: Arc::new(watch::channel(Head::default()).0),
        }
    }

    /// The newest revision and compaction point, as last applied on this member.
    pub fn head(&self) -> Head {
        *self.head.borrow()
    }

    /// A receiver that wakes whenever the head moves: how watchers learn of new revisions
    /// without the writer ever waiting for them.
    pub fn subscribe(&self) -> watch::Receiver<Head> {
        self.head.subscribe()
    }

    fn write(&self) -> parking_lot::RwLockWriteGuard<'_, State> {
        self.state.write()
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read()
    }

    /// The opaque record of what has been applied, kept with the data it describes.
    pub fn applied(&self) -> Option<Vec<u8>> {
        self.read().applied.clone()
    }

    /// Applies commands in order and records `applied` with them. `None` entries are log
    /// entries without a command (blank, membership): they only move `applied`.
    pub fn apply(&self, commands: &[Option<Command>], applied: &[u8]) -> Vec<Applied> {
        let mut state = self.write();
        let results = commands
            .iter()
            .map(|command| match command {
                None => Applied::Nothing,
                Some(Command::Txn(txn)) => Applied::Txn(state.txn(txn)),
                Some(Command::Batch(txns)) => {
                    Applied::Batch(txns.iter().map(|t| state.txn(t)).collect())
                }
                Some(Command::Compact(rev)) => match state.compact(*rev) {
                    Ok(()) => Applied::Compacted { revision: *rev },
                    Err(refused) => Applied::Refused(refused),
                },
            })
            .collect();
        state.applied = Some(applied.to_vec());
        let head = state.head();
        drop(state);
        self.head.send_replace(head);
        results
    }

    /// A read at the latest or a past revision.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
        self.read().range(req)
    }

    /// The changes to keys in `span` from revision `from` on, for at most `max_revisions`
    /// revisions, in revision order. `batch.revision` is the last revision covered, so the next
    /// call starts at `batch.revision + 1`; when `from` is past the head the batch is empty and
    /// its revision is the head.
    pub fn changes_since(
        &self,
        span: &KeySpan,
        from: Revision,
        max_revisions: u64,
    ) -> Result<WatchBatch, StoreError> {
        let state = self.read();
        // Watching from the compaction point itself would need the events *of* that revision,
        // whose previous values are gone: only later revisions are complete.
        if from <= state.compact_revision && state.compact_revision > 0 {
            return Err(StoreError::Compacted {
                requested: from,
                compact_revision: state.compact_revision,
            });
        }
        let from = from.max(1);
        if from > state.revision {
            return Ok(WatchBatch {
                events: Vec::new(),
                revision: state.revision,
            });
        }
        let last = state
            .revision
            .min(from.saturating_add(max_revisions.max(1) - 1));
        let mut events = Vec::new();
        for (rev, keys) in state.changes.range(from..=last) {
            for key in keys.iter().filter(|k| span.contains(k)) {
                events.push(state.event_at(key, *rev)?);
            }
        }
        Ok(WatchBatch {
            events,
            revision: last,
        })
    }

    /// Serialises the whole engine for a Raft snapshot, from one consistent view. Returns the
    /// payload and the `applied` blob it corresponds to.
    pub fn export(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        self.export_in_chunks(EXPORT_CHUNK, &mut || {})
    }

    /// [`Engine::export`], `chunk` keys per hold of the lock, calling `between` each time the
    /// lock is let go (tests apply commands there, as the state machine would).
    pub fn export_in_chunks(
        &self,
        chunk: usize,
        between: &mut dyn FnMut(),
    ) -> (Vec<u8>, Option<Vec<u8>>) {
        let snapshot = loop {
            if let Some(snapshot) = self.try_export(chunk.max(1), between) {
                break snapshot;
            }
            // A snapshot was installed meanwhile (the state was replaced): start again.
        };
        let applied = snapshot.applied.clone();
        (
            bincode::serialize(&snapshot).expect("in-memory bincode encoding cannot fail"),
            applied,
        )
    }

    /// The state as of now, copied a chunk of keys at a time with the lock released in between,
    /// so applies wait for one chunk at most (milliseconds), not for the whole state (seconds at
    /// a million keys). History only grows at its end while no compaction prunes it (pruning
    /// waits for exports), so the state at revision `at` is every key's history up to `at`.
    /// `None` if the state was replaced by an installed snapshot meanwhile.
    fn try_export(&self, chunk: usize, between: &mut dyn FnMut()) -> Option<State> {
        let (mut snapshot, generation) = {
            let mut state = self.write();
            state.exports += 1;
            let snapshot = State {
                revision: state.revision,
                compact_revision: state.compact_revision,
                applied: state.applied.clone(),
                ..State::default()
            };
            (snapshot, state.generation)
        };
        let at = snapshot.revision;
        let mut complete = true;
        let mut after: Option<Vec<u8>> = None;
        'keys: loop {
            let state = self.read();
            if state.generation != generation {
                complete = false;
                break 'keys;
            }
            let rest = match &after {
                Some(key) => state
                    .keys
                    .range::<Vec<u8>, _>((Bound::Excluded(key), Bound::Unbounded)),
                None => state.keys.range::<Vec<u8>, _>(..),
            };
            // A chunk ends after `chunk` keys or `chunk` history entries, whichever comes
            // first: a few hot keys with long histories must not make one long hold.
            let (mut keys, mut entries, mut done) = (0, 0, true);
            for (key, history) in rest {
                if keys == chunk || entries >= chunk {
                    done = false;
                    break;
                }
                let upto = history.partition_point(|(r, _)| *r <= at);
                if upto > 0 {
                    snapshot.keys.insert(key.clone(), history[..upto].to_vec());
                }
                after = Some(key.clone());
                keys += 1;
                entries += upto;
            }
            // Handed straight to a waiting apply: a plain unlock lets this loop take the lock
            // again before the woken writer runs, starving applies for most of the export.
            RwLockReadGuard::unlock_fair(state);
            if done {
                break 'keys;
            }
            between();
        }
        let mut from = 0;
        while complete && from <= at {
            let state = self.read();
            if state.generation != generation {
                complete = false;
                break;
            }
            let changes: Vec<_> = state
                .changes
                .range(from..=at)
                .take(chunk)
                .map(|(r, keys)| (*r, keys.clone()))
                .collect();
            RwLockReadGuard::unlock_fair(state);
            let Some(&(last, _)) = changes.last() else {
                break;
            };
            snapshot.changes.extend(changes);
            from = last + 1;
            between();
        }
        let mut state = self.write();
        state.exports -= 1;
        if state.exports == 0 {
            if let Some(rev) = state.pending_prune.take() {
                state.prune(rev);
            }
        }
        complete.then_some(snapshot)
    }

    /// Replaces everything with a snapshot's contents.
    pub fn import(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let mut imported: State = bincode::deserialize(bytes)
            .map_err(|e| StoreError::Internal(format!("storage: corrupt snapshot: {e}")))?;
        let head = imported.head();
        let mut state = self.write();
        // Exports in progress see the new generation and start again; they still count.
        imported.exports = state.exports;
        imported.generation = state.generation + 1;
        *state = imported;
        drop(state);
        self.head.send_replace(head);
        Ok(())
    }
}
