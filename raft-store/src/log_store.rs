//! The Raft log (a [`Wal`]) and the vote (a small meta file), written with group commit.
//!
//! openraft 0.9 hands the log one append per client write and waits for `append` to return
//! before it handles the next message. An fsync per append would cap a member at one write per
//! fsync. So `append` only queues its entries (they are readable at once, from memory) and
//! returns; one writer thread takes everything queued, writes it as one WAL frame and
//! `fdatasync`s once, and only then tells openraft the entries are flushed — the point after
//! which a write may be acknowledged. Truncate, purge and vote writes go through the same
//! queue, in order, and their callers wait for them.
//!
//! The log lives apart from the state machine so its fsync never waits behind the state
//! machine's commit. A torn tail after a crash is cut off by the WAL (it was never
//! acknowledged); corruption anywhere else stops the member with a clear error.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::raft::{Entry, NodeId, TypeConfig};
use crate::wal::Wal;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_logs(openraft::AnyError::error(e.to_string())).into()
}
fn write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_logs(openraft::AnyError::error(e.to_string())).into()
}

/// What the log keeps beside its entries, rewritten atomically when it changes.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

type Done = oneshot::Sender<std::result::Result<(), String>>;

/// Work for the writer thread, applied in queue order.
enum LogOp {
    Append {
        rows: Vec<(LogId<NodeId>, Vec<u8>)>,
        done: LogFlushed<TypeConfig>,
    },
    /// Remove entries from this index on.
    Truncate {
        from: u64,
        done: Done,
    },
    /// Remove entries up to and including this log id, and remember it.
    Purge {
        upto: LogId<NodeId>,
        done: Done,
    },
    Vote {
        vote: Vote<NodeId>,
        done: Done,
    },
}

/// Entries appended but not yet on disk, readable meanwhile.
type Pending = Arc<Mutex<BTreeMap<u64, (LogId<NodeId>, Entry)>>>;

#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Mutex<Wal>>,
    meta: Arc<Mutex<Meta>>,
    pending: Pending,
    queue: mpsc::Sender<LogOp>,
    blocked: Blocked,
    durable: Durable,
    dir: PathBuf,
}

/// What a log held on disk when it was opened, for the check that a restarted member's data
/// is not older than what it already acknowledged (`node::refuse_if_behind`).
#[derive(Clone, Debug, Default)]
pub struct Durable {
    /// The last index it holds (or purged into a snapshot).
    pub last_index: Option<u64>,
    /// The members' addresses in the last membership entry it holds (empty if that entry was
    /// purged into the snapshot).
    pub members: Vec<String>,
}

/// Why the log cannot grow right now (its disk is full), if it cannot: shared with the member,
/// which then refuses new writes with that reason instead of letting them time out.
pub type Blocked = Arc<Mutex<Option<String>>>;

/// Whether an I/O error means the disk (or the user's quota) is full: a state that passes when
/// space is freed, so the writer waits instead of failing the log for good.
fn out_of_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// How often a blocked writer tries again.
const RETRY_FULL_DISK: std::time::Duration = std::time::Duration::from_millis(500);

const META_FILE: &str = "raft-meta.bin";

fn write_meta(dir: &Path, meta: &Meta) -> std::result::Result<(), String> {
    let bytes = bincode::serialize(meta).map_err(|e| e.to_string())?;
    crate::files::write_private(&dir.join(META_FILE), &bytes)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot write {META_FILE}: {e}"))
}

impl LogStore {
    /// Opens the log in `dir` (created if new). Every entry is checked; a damaged log is
    /// reported with what to do, instead of surfacing later as a failed replication.
    pub fn open(dir: &Path) -> std::result::Result<LogStore, String> {
        let damaged = |e: String| {
            format!("the Raft log in {} is damaged: {e}; remove this member and join it again with a fresh data dir", dir.display())
        };
        crate::files::private_dir(dir)?;
        let meta: Meta = match std::fs::read(dir.join(META_FILE)) {
            Ok(bytes) => {
                bincode::deserialize(&bytes).map_err(|e| damaged(format!("{META_FILE}: {e}")))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Meta::default(),
            Err(e) => {
                return Err(format!(
                    "cannot read {}: {e}",
                    dir.join(META_FILE).display()
                ))
            }
        };
        let wal = Wal::open(dir, meta.last_purged.map(|l| l.index))
            .map_err(|e| damaged(e.to_string()))?;
        if wal.repaired_bytes > 0 {
            tracing::warn!(
                bytes = wal.repaired_bytes,
                "cut a torn write off the end of the Raft log (a batch that was never acknowledged)"
            );
        }
        let mut recorded_members = Vec::new();
        for (index, loc) in wal.locate(..) {
            let bytes = loc.read().map_err(|e| damaged(e.to_string()))?;
            let entry: Entry = bincode::deserialize(&bytes)
                .map_err(|e| damaged(format!("entry {index} does not decode: {e}")))?;
            if entry.log_id.index != index {
                return Err(damaged(format!(
                    "record {index} holds entry {}",
                    entry.log_id.index
                )));
            }
            if let openraft::EntryPayload::Membership(m) = &entry.payload {
                recorded_members = m.nodes().map(|(_, n)| n.addr.clone()).collect();
            }
        }
        let last_index = wal.last_index().or(meta.last_purged.map(|l| l.index));
        let wal = Arc::new(Mutex::new(wal));
        let meta = Arc::new(Mutex::new(meta));
        let pending: Pending = Arc::default();
        let (queue, rx) = mpsc::channel();
        let blocked: Blocked = Arc::default();
        let writer = Writer {
            dir: dir.to_path_buf(),
            wal: wal.clone(),
            meta: meta.clone(),
            pending: pending.clone(),
            blocked: blocked.clone(),
        };
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("cannot start the log writer: {e}"))?;
        Ok(LogStore {
            wal,
            meta,
            pending,
            queue,
            blocked,
            durable: Durable {
                last_index,
                members: recorded_members,
            },
            dir: dir.to_path_buf(),
        })
    }

    /// Makes the stored vote a vote not known to be granted, before Raft starts (a restart).
    ///
    /// openraft 0.9 makes a member whose stored vote is its own granted leadership leader
    /// again at once, in the same term and without a new no-op entry. It does not know the
    /// commit index after a restart (it is not stored), so its read index was its old no-op or
    /// what it had re-committed so far, and linearizable reads that followers still following
    /// it confirmed (nobody had noticed the restart) were served from a state machine still
    /// replaying its log: seconds stale. That was the root fault test's non-linearizable
    /// history (ARCHITECTURE.md, "Invariants"). Not granted, the vote still forbids voting for
    /// anyone else in its term, and the member starts as a follower: leadership comes back
    /// only through an election in a new term, whose no-op commits everything before it.
    pub fn forget_granted_leadership(&self) -> std::result::Result<(), String> {
        let mut meta = self.meta.lock().expect("poisoned").clone();
        match &mut meta.vote {
            Some(vote) if vote.committed => vote.committed = false,
            _ => return Ok(()),
        }
        write_meta(&self.dir, &meta)?;
        *self.meta.lock().expect("poisoned") = meta;
        Ok(())
    }

    /// What the log held on disk when it was opened.
    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    /// Why the log cannot be written now, while its disk is full.
    pub fn blocked(&self) -> Blocked {
        self.blocked.clone()
    }

    /// Queues an operation and waits until the writer has made it durable.
    async fn submit(&self, make: impl FnOnce(Done) -> LogOp) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(make(tx))
            .map_err(|_| write_err("the log writer has stopped"))?;
        rx.await
            .map_err(|_| write_err("the log writer has stopped"))?
            .map_err(write_err)
    }
}

/// The writer thread's state: the only code that changes the log on disk.
struct Writer {
    dir: PathBuf,
    wal: Arc<Mutex<Wal>>,
    meta: Arc<Mutex<Meta>>,
    pending: Pending,
    blocked: Blocked,
}

impl Writer {
    /// Drains the queue, writes the appends of a batch as one frame with one fsync, reports.
    fn run(self, rx: mpsc::Receiver<LogOp>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let mut rows: Vec<(LogId<NodeId>, Vec<u8>)> = Vec::new();
            let mut flushed: Vec<LogFlushed<TypeConfig>> = Vec::new();
            for op in batch {
                match op {
                    LogOp::Append { rows: r, done } => {
                        rows.extend(r);
                        flushed.push(done);
                    }
                    // Anything else first writes out the appends queued before it, in order.
                    other => {
                        let result = self.write_appends(&mut rows);
                        report(&mut flushed, &result);
                        let result = result.and_then(|_| self.apply(&other));
                        match other {
                            LogOp::Truncate { done, .. }
                            | LogOp::Purge { done, .. }
                            | LogOp::Vote { done, .. } => {
                                let _ = done.send(result);
                            }
                            LogOp::Append { .. } => unreachable!("handled above"),
                        }
                    }
                }
            }
            let result = self.write_appends(&mut rows);
            report(&mut flushed, &result);
        }
    }

    /// Writes `rows` as one frame and syncs it. On a full disk it waits and tries again until
    /// space is freed (saying so in the log and through [`LogStore::blocked`]): the entries
    /// stay unacknowledged meanwhile, and nothing half-written stays behind.
    fn write_appends(
        &self,
        rows: &mut Vec<(LogId<NodeId>, Vec<u8>)>,
    ) -> std::result::Result<(), String> {
        let mut said = false;
        loop {
            match self.write_frame(rows) {
                Ok(()) => {
                    if said {
                        tracing::warn!("the Raft log is written again: the disk has space");
                        *self.blocked.lock().expect("poisoned") = None;
                    }
                    return Ok(());
                }
                Err(e) if out_of_space(&e) => {
                    if !said {
                        let why = format!("{e} in {}", self.dir.display());
                        tracing::error!(error = %why, "cannot write the Raft log: waiting for space; this member takes no writes meanwhile");
                        *self.blocked.lock().expect("poisoned") = Some(why);
                        said = true;
                    }
                    std::thread::sleep(RETRY_FULL_DISK);
                }
                Err(e) => return Err(format!("append to the Raft log: {e}")),
            }
        }
    }

    /// One attempt of [`Writer::write_appends`]; a failed one leaves the WAL as it was.
    fn write_frame(&self, rows: &mut Vec<(LogId<NodeId>, Vec<u8>)>) -> std::io::Result<()> {
        let Some(first) = rows.first().map(|(id, _)| id.index) else {
            return Ok(());
        };
        let records: Vec<(u64, &[u8])> = rows
            .iter()
            .map(|(id, b)| (id.index, b.as_slice()))
            .collect();
        // The fsync runs outside the WAL's lock: readers (openraft's replication, on the
        // runtime's worker threads) only locate records under it, and would otherwise block a
        // worker for as long as the disk takes. Records located before the sync ends are also
        // still in `pending`, which stays the truth until they are durable; and nothing else
        // changes the WAL meanwhile, as this thread is its only writer.
        let synced = {
            let mut wal = self.wal.lock().expect("poisoned");
            wal.append(&records).map(|_| wal.current_file())
        }
        .and_then(|file| file.sync_data());
        if let Err(e) = synced {
            // An append that got as far as the index (its sync failed) is taken back, so a
            // retry does not write the records twice.
            let mut wal = self.wal.lock().expect("poisoned");
            if wal.last_index() >= Some(first) {
                wal.truncate(first)?;
            }
            return Err(e);
        }
        // On disk now: drop from memory unless a truncate and a new append replaced them.
        let mut pending = self.pending.lock().expect("poisoned");
        for (id, _) in rows.iter() {
            if pending.get(&id.index).is_some_and(|(p, _)| p == id) {
                pending.remove(&id.index);
            }
        }
        rows.clear();
        Ok(())
    }

    fn apply(&self, op: &LogOp) -> std::result::Result<(), String> {
        match op {
            LogOp::Truncate { from, .. } => self
                .wal
                .lock()
                .expect("poisoned")
                .truncate(*from)
                .map_err(|e| format!("truncate the Raft log: {e}")),
            LogOp::Purge { upto, .. } => {
                let mut meta = self.meta.lock().expect("poisoned").clone();
                meta.last_purged = Some(*upto);
                write_meta(&self.dir, &meta)?;
                *self.meta.lock().expect("poisoned") = meta;
                self.wal
                    .lock()
                    .expect("poisoned")
                    .purge(upto.index)
                    .map_err(|e| format!("purge the Raft log: {e}"))
            }
            LogOp::Vote { vote, .. } => {
                let mut meta = self.meta.lock().expect("poisoned").clone();
                meta.vote = Some(*vote);
                write_meta(&self.dir, &meta)?;
                *self.meta.lock().expect("poisoned") = meta;
                Ok(())
            }
            LogOp::Append { .. } => Ok(()),
        }
    }
}

fn report(flushed: &mut Vec<LogFlushed<TypeConfig>>, result: &std::result::Result<(), String>) {
    for done in flushed.drain(..) {
        done.log_io_completed(result.clone().map_err(std::io::Error::other));
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        // Memory first, then disk: an entry flushed in between is then found on disk.
        let mut entries: BTreeMap<u64, Entry> = {
            let pending = self.pending.lock().expect("poisoned");
            pending
                .range(bounds)
                .map(|(i, (_, e))| (*i, e.clone()))
                .collect()
        };
        let located = self.wal.lock().expect("poisoned").locate(bounds);
        for (index, loc) in located {
            if let std::collections::btree_map::Entry::Vacant(slot) = entries.entry(index) {
                let bytes = loc.read().map_err(read_err)?;
                slot.insert(bincode::deserialize(&bytes).map_err(read_err)?);
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
        let last_purged_log_id = self.meta.lock().expect("poisoned").last_purged;
        let last_on_disk = self.wal.lock().expect("poisoned").locate(..).pop();
        let on_disk = match last_on_disk {
            Some((_, loc)) => {
                let bytes = loc.read().map_err(read_err)?;
                Some(
                    bincode::deserialize::<Entry>(&bytes)
                        .map_err(read_err)?
                        .log_id,
                )
            }
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
        let vote = *vote;
        self.submit(|done| LogOp::Vote { vote, done })
            .await
            .map_err(|e| {
                StorageIOError::write_vote(openraft::AnyError::error(e.to_string())).into()
            })
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        Ok(self.meta.lock().expect("poisoned").vote)
    }

    // `save_committed` keeps openraft's default (not persisted): it would be called on every
    // commit from openraft's main loop. After a restart the committed index is learned again
    // from the leader (or, alone, by committing a new entry), and everything up to it replays.

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
