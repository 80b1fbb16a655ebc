//! The Raft log and vote, in their own redb file, written with group commit.
//!
//! openraft 0.9 hands the log one append per client write and waits for `append` to return
//! before it handles the next message. An fsync per append would cap a member at one write per
//! fsync. So `append` only queues its entries (they are readable at once, from memory) and
//! returns; one writer thread takes everything queued, commits it in one redb transaction with
//! `Durability::Immediate` (one fsync), and only then tells openraft the entries are flushed —
//! the point after which a write may be acknowledged. Truncate, purge and vote writes go through
//! the same queue, in order, and their callers wait for them.
//!
//! The log lives apart from the state machine so its fsync never waits behind the state
//! machine's commit. redb detects torn and corrupt pages (checksums, two commit slots): after a
//! crash the file opens at its last completed commit, so a torn tail is exactly an
//! un-acknowledged append.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::raft::{Entry, NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_logs(openraft::AnyError::error(e.to_string())).into()
}
fn write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_logs(openraft::AnyError::error(e.to_string())).into()
}

/// Work for the writer thread, applied in queue order.
enum LogOp {
    Append {
        rows: Vec<(LogId<NodeId>, Vec<u8>)>,
        done: LogFlushed<TypeConfig>,
    },
    /// Remove entries from this index on.
    Truncate {
        from: u64,
        done: oneshot::Sender<std::result::Result<(), String>>,
    },
    /// Remove entries up to and including this log id, and remember it.
    Purge {
        upto: LogId<NodeId>,
        done: oneshot::Sender<std::result::Result<(), String>>,
    },
    Meta {
        name: &'static str,
        bytes: Vec<u8>,
        done: oneshot::Sender<std::result::Result<(), String>>,
    },
}

/// Entries appended but not yet on disk, readable meanwhile.
type Pending = Arc<Mutex<BTreeMap<u64, (LogId<NodeId>, Entry)>>>;

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    pending: Pending,
    queue: mpsc::Sender<LogOp>,
}

impl LogStore {
    pub fn open(path: &Path) -> std::result::Result<LogStore, String> {
        let db = Database::create(path)
            .map_err(|e| format!("cannot open the Raft log {}: {e}", path.display()))?;
        let tx = db.begin_write().map_err(|e| e.to_string())?;
        tx.open_table(LOG).map_err(|e| e.to_string())?;
        tx.open_table(META).map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        let db = Arc::new(db);
        // Decode every entry once at start: a corrupt log is reported now, clearly, instead of
        // surfacing later as a failed replication.
        verify(&db).map_err(|e| {
            format!(
                "the Raft log {} is damaged: {e}; restore this member from a peer",
                path.display()
            )
        })?;
        let pending: Pending = Arc::default();
        let (queue, rx) = mpsc::channel();
        let (wdb, wpending) = (db.clone(), pending.clone());
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer(wdb, wpending, rx))
            .map_err(|e| format!("cannot start the log writer: {e}"))?;
        Ok(LogStore { db, pending, queue })
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let meta = tx.open_table(META).map_err(read_err)?;
        match meta.get(name).map_err(read_err)? {
            Some(v) => Ok(Some(bincode::deserialize(v.value()).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    /// Queues an operation and waits until the writer has made it durable.
    async fn submit(
        &self,
        make: impl FnOnce(oneshot::Sender<std::result::Result<(), String>>) -> LogOp,
    ) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(make(tx))
            .map_err(|_| write_err("the log writer has stopped"))?;
        rx.await
            .map_err(|_| write_err("the log writer has stopped"))?
            .map_err(write_err)
    }

    async fn put_meta<T: serde::Serialize>(&self, name: &'static str, value: &T) -> Result<()> {
        let bytes = bincode::serialize(value).map_err(write_err)?;
        self.submit(|done| LogOp::Meta { name, bytes, done }).await
    }
}

fn verify(db: &Database) -> std::result::Result<(), String> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let log = tx.open_table(LOG).map_err(|e| e.to_string())?;
    let mut expected: Option<u64> = None;
    for row in log.iter().map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| e.to_string())?;
        let entry: Entry = bincode::deserialize(v.value())
            .map_err(|e| format!("entry {} does not decode: {e}", k.value()))?;
        if entry.log_id.index != k.value() || expected.is_some_and(|x| x != k.value()) {
            return Err(format!("entry {} is out of sequence", k.value()));
        }
        expected = Some(k.value() + 1);
    }
    Ok(())
}

/// The writer thread: drains the queue, commits the batch with one fsync, then reports.
fn writer(db: Arc<Database>, pending: Pending, rx: mpsc::Receiver<LogOp>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let result = commit_batch(&db, &batch);
        if result.is_ok() {
            // Flushed entries are on disk now; drop them from memory unless a truncate and a
            // new append replaced them meanwhile.
            let mut pending = pending.lock().expect("poisoned");
            for op in &batch {
                if let LogOp::Append { rows, .. } = op {
                    for (log_id, _) in rows {
                        if pending
                            .get(&log_id.index)
                            .is_some_and(|(id, _)| id == log_id)
                        {
                            pending.remove(&log_id.index);
                        }
                    }
                }
            }
        }
        for op in batch {
            let outcome = result.clone();
            match op {
                LogOp::Append { done, .. } => {
                    done.log_io_completed(outcome.map_err(std::io::Error::other))
                }
                LogOp::Truncate { done, .. }
                | LogOp::Purge { done, .. }
                | LogOp::Meta { done, .. } => {
                    let _ = done.send(outcome);
                }
            }
        }
    }
}

fn commit_batch(db: &Database, batch: &[LogOp]) -> std::result::Result<(), String> {
    let mut tx = db.begin_write().map_err(|e| e.to_string())?;
    tx.set_durability(Durability::Immediate)
        .map_err(|e| e.to_string())?;
    {
        let mut log = tx.open_table(LOG).map_err(|e| e.to_string())?;
        let mut meta = tx.open_table(META).map_err(|e| e.to_string())?;
        for op in batch {
            match op {
                LogOp::Append { rows, .. } => {
                    for (log_id, bytes) in rows {
                        log.insert(log_id.index, bytes.as_slice())
                            .map_err(|e| e.to_string())?;
                    }
                }
                LogOp::Truncate { from, .. } => {
                    log.retain_in(*from.., |_, _| false)
                        .map_err(|e| e.to_string())?;
                }
                LogOp::Purge { upto, .. } => {
                    let bytes = bincode::serialize(upto).map_err(|e| e.to_string())?;
                    meta.insert(LAST_PURGED, bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                    log.retain_in(..=upto.index, |_, _| false)
                        .map_err(|e| e.to_string())?;
                }
                LogOp::Meta { name, bytes, .. } => {
                    meta.insert(*name, bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                }
            }
        }
    }
    tx.commit().map_err(|e| e.to_string())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        // Memory first, then disk: an entry that is flushed in between is then found on disk.
        let mut entries: BTreeMap<u64, Entry> = {
            let pending = self.pending.lock().expect("poisoned");
            pending
                .range(bounds)
                .map(|(i, (_, e))| (*i, e.clone()))
                .collect()
        };
        let tx = self.db.begin_read().map_err(read_err)?;
        let log = tx.open_table(LOG).map_err(read_err)?;
        for row in log.range(bounds).map_err(read_err)? {
            let (k, v) = row.map_err(read_err)?;
            if !entries.contains_key(&k.value()) {
                entries.insert(
                    k.value(),
                    bincode::deserialize(v.value()).map_err(read_err)?,
                );
            }
        }
        Ok(entries.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let in_memory = self
            .pending
            .lock()
            .expect("poisoned")
            .values()
            .next_back()
            .map(|(id, _)| *id);
        let last_purged_log_id: Option<LogId<NodeId>> = self.meta(LAST_PURGED)?;
        let tx = self.db.begin_read().map_err(read_err)?;
        let log = tx.open_table(LOG).map_err(read_err)?;
        let on_disk = match log.last().map_err(read_err)? {
            Some((_, v)) => Some(
                bincode::deserialize::<Entry>(v.value())
                    .map_err(read_err)?
                    .log_id,
            ),
            None => None,
        };
        let last = in_memory.max(on_disk).or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.put_meta(VOTE, vote).await.map_err(|e| {
            StorageIOError::write_vote(openraft::AnyError::error(e.to_string())).into()
        })
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.meta(VOTE)
    }

    /// Queued without waiting: openraft calls this on every commit from its main loop, and an
    /// fsync round trip there would serialise all writes. The committed id is only a hint for
    /// how far to re-apply after a restart; it rides along with the next flush.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        let bytes = bincode::serialize(&committed).map_err(write_err)?;
        let (done, _ignored) = oneshot::channel();
        self.queue
            .send(LogOp::Meta {
                name: COMMITTED,
                bytes,
                done,
            })
            .map_err(|_| write_err("the log writer has stopped"))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(self.meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        {
            let mut pending = self.pending.lock().expect("poisoned");
            for entry in entries {
                rows.push((entry.log_id, bincode::serialize(&entry).map_err(write_err)?));
                pending.insert(entry.log_id.index, (entry.log_id, entry));
            }
        }
        self.queue
            .send(LogOp::Append {
                rows,
                done: callback,
            })
            .map_err(|_| write_err("the log writer has stopped"))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.pending
            .lock()
            .expect("poisoned")
            .retain(|i, _| *i < log_id.index);
        self.submit(|done| LogOp::Truncate {
            from: log_id.index,
            done,
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.submit(|done| LogOp::Purge { upto: log_id, done })
            .await?;
        self.pending
            .lock()
            .expect("poisoned")
            .retain(|i, _| *i > log_id.index);
        Ok(())
    }
}
