//! The MVCC engine: the replicated state machine's data, kept in one redb database.
//!
//! It owns revisions, per-key history, the change index that watches read, and compaction. It
//! knows nothing of Raft: the Raft layer hands it committed commands in log order plus an opaque
//! `applied` blob (last applied log id and membership) that is stored in the same transaction,
//! so the data and the record of what was applied can never disagree.
//!
//! Tables:
//! - `latest`:  key → the live value (absent once deleted); serves reads at the head revision.
//! - `history`: (key, revision) → the value written at that revision, or a tombstone.
//! - `changes`: revision → the keys written at that revision; watches walk it in order.
//! - `meta`:    counters (`revision`, `compact_revision`) and the Raft `applied` blob.
//!
//! Durability: state-machine commits are not fsynced one by one (redb `Durability::None`); a
//! durable commit happens at least every [`FLUSH_INTERVAL`] and before any snapshot. That is
//! safe because the Raft log is fsynced before a write is acknowledged and is only purged up to
//! a snapshot, which is built from durable state; after a crash the log replays what the engine
//! lost.

use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::mvcc::{
    Event, EventKind, KeySpan, KeyValue, Op, OpResult, RangeRequest, RangeResponse, Revision,
    StoreError, Txn, TxnResponse, WatchBatch,
};

const LATEST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("latest");
const HISTORY: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("history");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");

const REVISION: &str = "revision";
const COMPACT_REVISION: &str = "compact_revision";
const APPLIED: &str = "applied";

/// Longest time a state-machine change may stay un-fsynced (the log still has it).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

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
    fn with_key(self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}

/// Everything the engine holds, as shipped in a Raft snapshot. `latest` is derived from
/// `history` on install, so it is not carried.
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    revision: Revision,
    compact_revision: Revision,
    applied: Option<Vec<u8>>,
    history: Vec<(Vec<u8>, Revision, Option<Stored>)>,
    changes: Vec<(Revision, Vec<Vec<u8>>)>,
}

fn storage_err(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("storage: {context}: {e}"))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory bincode encoding cannot fail")
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    bincode::deserialize(bytes).map_err(|e| storage_err(&format!("corrupt {what}"), e))
}

/// The engine. Cheap to clone; one writer (the Raft state machine), many concurrent readers.
#[derive(Clone)]
pub struct Engine {
    db: Arc<Database>,
    head: Arc<watch::Sender<Head>>,
    last_flush: Arc<Mutex<Instant>>,
}

impl Engine {
    /// Opens (or creates) the engine's database file.
    pub fn open(path: &Path) -> Result<Engine, StoreError> {
        let db = Database::create(path)
            .map_err(|e| storage_err(&format!("open {}", path.display()), e))?;
        let engine = Engine {
            db: Arc::new(db),
            head: Arc::new(watch::channel(Head::default()).0),
            last_flush: Arc::new(Mutex::new(Instant::now())),
        };
        // Make sure every table exists so readers never meet a missing one.
        let tx = engine
            .db
            .begin_write()
            .map_err(|e| storage_err("begin", e))?;
        {
            tx.open_table(LATEST)
                .map_err(|e| storage_err("create table", e))?;
            tx.open_table(HISTORY)
                .map_err(|e| storage_err("create table", e))?;
            tx.open_table(CHANGES)
                .map_err(|e| storage_err("create table", e))?;
            tx.open_table(COUNTERS)
                .map_err(|e| storage_err("create table", e))?;
            tx.open_table(BLOBS)
                .map_err(|e| storage_err("create table", e))?;
        }
        tx.commit().map_err(|e| storage_err("commit", e))?;
        let head = engine.read_head()?;
        engine.head.send_replace(head);
        Ok(engine)
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

    fn read_head(&self) -> Result<Head, StoreError> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| storage_err("begin read", e))?;
        let counters = tx
            .open_table(COUNTERS)
            .map_err(|e| storage_err("open", e))?;
        Ok(Head {
            revision: counter(&counters, REVISION)?,
            compact_revision: counter(&counters, COMPACT_REVISION)?,
        })
    }

    /// The opaque record of what has been applied, stored with the data it describes.
    pub fn applied(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| storage_err("begin read", e))?;
        let blobs = tx.open_table(BLOBS).map_err(|e| storage_err("open", e))?;
        let applied = blobs
            .get(APPLIED)
            .map_err(|e| storage_err("read applied", e))?
            .map(|g| g.value().to_vec());
        Ok(applied)
    }

    /// Applies commands in order in one transaction and records `applied` with them.
    /// `None` entries are log entries without a command (blank, membership): they only move
    /// `applied`.
    pub fn apply(
        &self,
        commands: &[Option<Command>],
        applied: &[u8],
    ) -> Result<Vec<Applied>, StoreError> {
        let mut tx = self.db.begin_write().map_err(|e| storage_err("begin", e))?;
        let durable = self.last_flush.lock().expect("poisoned").elapsed() >= FLUSH_INTERVAL;
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| storage_err("durability", e))?;
        let mut results = Vec::with_capacity(commands.len());
        let head;
        {
            let mut w = Writer::open(&tx)?;
            for command in commands {
                results.push(match command {
                    None => Applied::Nothing,
                    Some(Command::Txn(txn)) => Applied::Txn(w.txn(txn)?),
                    Some(Command::Batch(txns)) => {
                        Applied::Batch(txns.iter().map(|t| w.txn(t)).collect::<Result<_, _>>()?)
                    }
                    Some(Command::Compact(rev)) => match w.compact(*rev)? {
                        Ok(()) => Applied::Compacted { revision: *rev },
                        Err(refused) => Applied::Refused(refused),
                    },
                });
            }
            w.blobs
                .insert(APPLIED, applied)
                .map_err(|e| storage_err("write applied", e))?;
            w.save_head()?;
            head = w.head;
        }
        tx.commit().map_err(|e| storage_err("commit", e))?;
        if durable {
            *self.last_flush.lock().expect("poisoned") = Instant::now();
        }
        self.head.send_replace(head);
        Ok(results)
    }

    /// Makes every applied change durable now.
    pub fn flush(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| storage_err("begin", e))?;
        tx.commit().map_err(|e| storage_err("flush", e))?;
        *self.last_flush.lock().expect("poisoned") = Instant::now();
        Ok(())
    }

    /// A read at the latest or a past revision.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| storage_err("begin read", e))?;
        let counters = tx
            .open_table(COUNTERS)
            .map_err(|e| storage_err("open", e))?;
        let head = Head {
            revision: counter(&counters, REVISION)?,
            compact_revision: counter(&counters, COMPACT_REVISION)?,
        };
        let latest = tx.open_table(LATEST).map_err(|e| storage_err("open", e))?;
        let history = tx.open_table(HISTORY).map_err(|e| storage_err("open", e))?;
        range_in(&latest, &history, head, req)
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
        let tx = self
            .db
            .begin_read()
            .map_err(|e| storage_err("begin read", e))?;
        let counters = tx
            .open_table(COUNTERS)
            .map_err(|e| storage_err("open", e))?;
        let revision = counter(&counters, REVISION)?;
        let compact_revision = counter(&counters, COMPACT_REVISION)?;
        // Watching from the compaction point itself would need the events *of* that revision,
        // whose previous values are gone: only later revisions are complete.
        if from <= compact_revision && compact_revision > 0 {
            return Err(StoreError::Compacted {
                requested: from,
                compact_revision,
            });
        }
        let from = from.max(1);
        if from > revision {
            return Ok(WatchBatch {
                events: Vec::new(),
                revision,
            });
        }
        let last = revision.min(from.saturating_add(max_revisions.max(1) - 1));
        let changes = tx.open_table(CHANGES).map_err(|e| storage_err("open", e))?;
        let history = tx.open_table(HISTORY).map_err(|e| storage_err("open", e))?;
        let mut events = Vec::new();
        for row in changes
            .range(from..=last)
            .map_err(|e| storage_err("scan changes", e))?
        {
            let (rev, keys) = row.map_err(|e| storage_err("scan changes", e))?;
            let rev = rev.value();
            let keys: Vec<Vec<u8>> = decode("change index", keys.value())?;
            for key in keys.iter().filter(|k| span.contains(k)) {
                events.push(event_at(&history, key, rev)?);
            }
        }
        Ok(WatchBatch {
            events,
            revision: last,
        })
    }

    /// Serialises the whole engine for a Raft snapshot, from one consistent read, after making
    /// the applied state durable. Returns the payload and the `applied` blob it corresponds to.
    pub fn export(&self) -> Result<(Vec<u8>, Option<Vec<u8>>), StoreError> {
        self.flush()?;
        let tx = self
            .db
            .begin_read()
            .map_err(|e| storage_err("begin read", e))?;
        let counters = tx
            .open_table(COUNTERS)
            .map_err(|e| storage_err("open", e))?;
        let blobs = tx.open_table(BLOBS).map_err(|e| storage_err("open", e))?;
        let applied = blobs
            .get(APPLIED)
            .map_err(|e| storage_err("read", e))?
            .map(|g| g.value().to_vec());
        let mut payload = SnapshotPayload {
            revision: counter(&counters, REVISION)?,
            compact_revision: counter(&counters, COMPACT_REVISION)?,
            applied: applied.clone(),
            history: Vec::new(),
            changes: Vec::new(),
        };
        let history = tx.open_table(HISTORY).map_err(|e| storage_err("open", e))?;
        for row in history.iter().map_err(|e| storage_err("scan", e))? {
            let (k, v) = row.map_err(|e| storage_err("scan", e))?;
            let (key, rev) = k.value();
            payload
                .history
                .push((key.to_vec(), rev, decode("history", v.value())?));
        }
        let changes = tx.open_table(CHANGES).map_err(|e| storage_err("open", e))?;
        for row in changes.iter().map_err(|e| storage_err("scan", e))? {
            let (rev, keys) = row.map_err(|e| storage_err("scan", e))?;
            payload
                .changes
                .push((rev.value(), decode("change index", keys.value())?));
        }
        Ok((encode(&payload), applied))
    }

    /// Replaces everything with a snapshot's contents, durably.
    pub fn import(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let payload: SnapshotPayload = decode("snapshot", bytes)?;
        let tx = self.db.begin_write().map_err(|e| storage_err("begin", e))?;
        let head = Head {
            revision: payload.revision,
            compact_revision: payload.compact_revision,
        };
        {
            let mut latest = tx.open_table(LATEST).map_err(|e| storage_err("open", e))?;
            let mut history = tx.open_table(HISTORY).map_err(|e| storage_err("open", e))?;
            let mut changes = tx.open_table(CHANGES).map_err(|e| storage_err("open", e))?;
            let mut counters = tx
                .open_table(COUNTERS)
                .map_err(|e| storage_err("open", e))?;
            let mut blobs = tx.open_table(BLOBS).map_err(|e| storage_err("open", e))?;
            latest
                .retain(|_, _| false)
                .map_err(|e| storage_err("clear", e))?;
            history
                .retain(|_, _| false)
                .map_err(|e| storage_err("clear", e))?;
            changes
                .retain(|_, _| false)
                .map_err(|e| storage_err("clear", e))?;
            blobs
                .retain(|_, _| false)
                .map_err(|e| storage_err("clear", e))?;
            // History is sorted by (key, revision): the last entry of each key is its live state.
            let mut rows = payload.history.iter().peekable();
            while let Some((key, rev, stored)) = rows.next() {
                history
                    .insert((key.as_slice(), *rev), encode(stored).as_slice())
                    .map_err(|e| storage_err("write", e))?;
                let is_last = rows.peek().is_none_or(|(next, _, _)| next != key);
                if let (true, Some(stored)) = (is_last, stored) {
                    latest
                        .insert(key.as_slice(), encode(stored).as_slice())
                        .map_err(|e| storage_err("write", e))?;
                }
            }
            for (rev, keys) in &payload.changes {
                changes
                    .insert(*rev, encode(keys).as_slice())
                    .map_err(|e| storage_err("write", e))?;
            }
            counters
                .insert(REVISION, head.revision)
                .map_err(|e| storage_err("write", e))?;
            counters
                .insert(COMPACT_REVISION, head.compact_revision)
                .map_err(|e| storage_err("write", e))?;
            if let Some(applied) = &payload.applied {
                blobs
                    .insert(APPLIED, applied.as_slice())
                    .map_err(|e| storage_err("write", e))?;
            }
        }
        tx.commit().map_err(|e| storage_err("commit", e))?;
        *self.last_flush.lock().expect("poisoned") = Instant::now();
        self.head.send_replace(head);
        Ok(())
    }
}

fn counter(t: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64, StoreError> {
    Ok(t.get(name)
        .map_err(|e| storage_err("read counter", e))?
        .map_or(0, |g| g.value()))
}

/// The event that `key`'s entry at `rev` represents, with the value before it.
fn event_at(
    history: &impl ReadableTable<(&'static [u8], u64), &'static [u8]>,
    key: &[u8],
    rev: Revision,
) -> Result<Event, StoreError> {
    let mut rows = history
        .range((key, 0u64)..=(key, rev))
        .map_err(|e| storage_err("scan history", e))?
        .rev();
    let current = match rows.next() {
        Some(row) => {
            let (k, v) = row.map_err(|e| storage_err("scan history", e))?;
            if k.value().1 != rev {
                return Err(storage_err(
                    "history",
                    format!("no entry for a change at {rev}"),
                ));
            }
            decode::<Option<Stored>>("history", v.value())?
        }
        None => {
            return Err(storage_err(
                "history",
                format!("no entry for a change at {rev}"),
            ))
        }
    };
    let prev = match rows.next() {
        Some(row) => {
            let (_, v) = row.map_err(|e| storage_err("scan history", e))?;
            decode::<Option<Stored>>("history", v.value())?.map(|s| s.with_key(key))
        }
        None => None,
    };
    Ok(match current {
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

/// A range read over any readable view (a read transaction, or the write transaction of a txn
/// whose earlier ops it must see).
fn range_in(
    latest: &impl ReadableTable<&'static [u8], &'static [u8]>,
    history: &impl ReadableTable<(&'static [u8], u64), &'static [u8]>,
    head: Head,
    req: &RangeRequest,
) -> Result<RangeResponse, StoreError> {
    let at = if req.revision == 0 {
        head.revision
    } else {
        req.revision
    };
    if at > head.revision {
        return Err(StoreError::FutureRevision {
            requested: at,
            current: head.revision,
        });
    }
    if at < head.compact_revision {
        return Err(StoreError::Compacted {
            requested: at,
            compact_revision: head.compact_revision,
        });
    }
    let limit = if req.limit == 0 { u64::MAX } else { req.limit };
    let mut resp = RangeResponse {
        kvs: Vec::new(),
        more: false,
        count: 0,
        revision: at,
    };
    let mut found = |kv: KeyValue| {
        resp.count += 1;
        if req.count_only {
            return;
        }
        if (resp.kvs.len() as u64) < limit {
            resp.kvs.push(kv);
        } else {
            resp.more = true;
        }
    };
    let (start, end) = req.span.bounds();
    if at == head.revision {
        let end_ref = match &end {
            Bound::Included(e) => Bound::Included(e.as_slice()),
            Bound::Excluded(e) => Bound::Excluded(e.as_slice()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let rows = latest
            .range::<&[u8]>((Bound::Included(start.as_slice()), end_ref))
            .map_err(|e| storage_err("scan", e))?;
        for row in rows {
            let (k, v) = row.map_err(|e| storage_err("scan", e))?;
            let stored: Stored = decode("value", v.value())?;
            found(stored.with_key(k.value()));
        }
    } else {
        // Walk every retained entry of every key in the span, keeping per key the newest
        // entry at or before `at`. Compaction bounds how many entries there are.
        let end_ref = match &end {
            Bound::Included(e) => Bound::Included((e.as_slice(), u64::MAX)),
            Bound::Excluded(e) => Bound::Excluded((e.as_slice(), 0)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let rows = history
            .range::<(&[u8], u64)>((Bound::Included((start.as_slice(), 0)), end_ref))
            .map_err(|e| storage_err("scan history", e))?;
        let mut current: Option<(Vec<u8>, Option<Stored>)> = None;
        for row in rows {
            let (k, v) = row.map_err(|e| storage_err("scan history", e))?;
            let (key, rev) = k.value();
            if current.as_ref().is_some_and(|(ck, _)| ck.as_slice() != key) {
                if let Some((ck, Some(stored))) = current.take() {
                    found(stored.with_key(&ck));
                }
                current = None;
            }
            if rev <= at {
                current = Some((key.to_vec(), decode("history", v.value())?));
            } else if current.is_none() {
                current = Some((key.to_vec(), None));
            }
        }
        if let Some((ck, Some(stored))) = current {
            found(stored.with_key(&ck));
        }
    }
    Ok(resp)
}

/// The tables of one write transaction, and the head as it moves.
struct Writer<'tx> {
    latest: redb::Table<'tx, &'static [u8], &'static [u8]>,
    history: redb::Table<'tx, (&'static [u8], u64), &'static [u8]>,
    changes: redb::Table<'tx, u64, &'static [u8]>,
    counters: redb::Table<'tx, &'static str, u64>,
    blobs: redb::Table<'tx, &'static str, &'static [u8]>,
    head: Head,
}

impl<'tx> Writer<'tx> {
    fn open(tx: &'tx redb::WriteTransaction) -> Result<Self, StoreError> {
        let counters = tx
            .open_table(COUNTERS)
            .map_err(|e| storage_err("open", e))?;
        let head = Head {
            revision: counter(&counters, REVISION)?,
            compact_revision: counter(&counters, COMPACT_REVISION)?,
        };
        Ok(Writer {
            latest: tx.open_table(LATEST).map_err(|e| storage_err("open", e))?,
            history: tx.open_table(HISTORY).map_err(|e| storage_err("open", e))?,
            changes: tx.open_table(CHANGES).map_err(|e| storage_err("open", e))?,
            counters,
            blobs: tx.open_table(BLOBS).map_err(|e| storage_err("open", e))?,
            head,
        })
    }

    fn save_head(&mut self) -> Result<(), StoreError> {
        self.counters
            .insert(REVISION, self.head.revision)
            .map_err(|e| storage_err("write", e))?;
        self.counters
            .insert(COMPACT_REVISION, self.head.compact_revision)
            .map_err(|e| storage_err("write", e))?;
        Ok(())
    }

    fn get_latest(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        match self.latest.get(key).map_err(|e| storage_err("read", e))? {
            Some(v) => Ok(Some(decode::<Stored>("value", v.value())?.with_key(key))),
            None => Ok(None),
        }
    }

    fn txn(&mut self, txn: &Txn) -> Result<TxnResponse, StoreError> {
        let mut succeeded = true;
        for c in &txn.compare {
            if !c.holds(self.get_latest(&c.key)?.as_ref()) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        // Every write of this txn shares one new revision, assigned on its first write.
        let rev = self.head.revision + 1;
        let mut changed: Vec<Vec<u8>> = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                Op::Put { key, value } => {
                    let prev = self.get_latest(key)?;
                    let stored = Stored {
                        value: value.clone(),
                        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                        mod_revision: rev,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                    };
                    self.write(key, rev, Some(&stored))?;
                    changed.push(key.clone());
                    OpResult::Put { prev }
                }
                Op::Delete { span } => {
                    let doomed = range_in(
                        &self.latest,
                        &self.history,
                        self.head,
                        &RangeRequest::new(span.clone()),
                    )?
                    .kvs;
                    for kv in &doomed {
                        self.write(&kv.key, rev, None)?;
                        changed.push(kv.key.clone());
                    }
                    OpResult::Delete { deleted: doomed }
                }
                // A latest read sees this txn's earlier writes: they are already in `latest`.
                Op::Range(req) => {
                    OpResult::Range(range_in(&self.latest, &self.history, self.head, req)?)
                }
            });
        }
        if !changed.is_empty() {
            self.head.revision = rev;
            self.changes
                .insert(rev, encode(&changed).as_slice())
                .map_err(|e| storage_err("write change index", e))?;
            for r in &mut results {
                if let OpResult::Range(resp) = r {
                    resp.revision = rev;
                }
            }
        }
        Ok(TxnResponse {
            succeeded,
            revision: self.head.revision,
            results,
        })
    }

    fn write(
        &mut self,
        key: &[u8],
        rev: Revision,
        stored: Option<&Stored>,
    ) -> Result<(), StoreError> {
        match stored {
            Some(s) => self
                .latest
                .insert(key, encode(s).as_slice())
                .map_err(|e| storage_err("write", e))?,
            None => self
                .latest
                .remove(key)
                .map_err(|e| storage_err("write", e))?,
        };
        self.history
            .insert((key, rev), encode(&stored).as_slice())
            .map_err(|e| storage_err("write history", e))?;
        Ok(())
    }

    /// Drops history that no read at or after `rev` and no watch from after `rev` can need:
    /// per key, every entry older than the newest one at or before `rev`, and that one too if
    /// it is a deletion. The outer error is a storage failure; the inner one a refusal.
    fn compact(&mut self, rev: Revision) -> Result<Result<(), StoreError>, StoreError> {
        if rev > self.head.revision {
            return Ok(Err(StoreError::FutureRevision {
                requested: rev,
                current: self.head.revision,
            }));
        }
        if rev <= self.head.compact_revision {
            return Ok(Err(StoreError::Compacted {
                requested: rev,
                compact_revision: self.head.compact_revision,
            }));
        }
        let mut doomed: Vec<(Vec<u8>, u64)> = Vec::new();
        {
            // (key, rev, is_tombstone) of the newest entry at or before `rev` seen so far.
            let mut newest: Option<(Vec<u8>, u64, bool)> = None;
            for row in self
                .history
                .iter()
                .map_err(|e| storage_err("scan history", e))?
            {
                let (k, v) = row.map_err(|e| storage_err("scan history", e))?;
                let (key, r) = k.value();
                let same_key = newest
                    .as_ref()
                    .is_some_and(|(nk, _, _)| nk.as_slice() == key);
                if !same_key {
                    if let Some((nk, nr, true)) = newest.take() {
                        doomed.push((nk, nr));
                    }
                    newest = None;
                }
                if r > rev {
                    continue;
                }
                if let Some((nk, nr, _)) = newest.take() {
                    doomed.push((nk, nr));
                }
                let tombstone = decode::<Option<Stored>>("history", v.value())?.is_none();
                newest = Some((key.to_vec(), r, tombstone));
            }
            if let Some((nk, nr, true)) = newest {
                doomed.push((nk, nr));
            }
        }
        for (key, r) in &doomed {
            self.history
                .remove((key.as_slice(), *r))
                .map_err(|e| storage_err("compact history", e))?;
        }
        self.changes
            .retain_in(..=rev, |_, _| false)
            .map_err(|e| storage_err("compact change index", e))?;
        self.head.compact_revision = rev;
        Ok(Ok(()))
    }
}
