//! The Raft log and vote, in their own redb file.
//!
//! Every append is committed with `Durability::Immediate` (fsync) before openraft is told the
//! entries are flushed: that is the point after which a write may be acknowledged. The log
//! lives apart from the state machine so the fsync of the next batch never waits behind the
//! state machine's commit of the previous one.
//!
//! redb detects torn and corrupt pages (checksums, two commit slots): after a crash the file
//! opens at its last completed commit, so a torn tail is exactly an un-acknowledged append.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::raft::{Entry, NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_logs(openraft::AnyError::error(e.to_string())).into()
}
fn write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_logs(openraft::AnyError::error(e.to_string())).into()
}

impl LogStore {
    pub fn open(path: &Path) -> std::result::Result<LogStore, String> {
        let db = Database::create(path)
            .map_err(|e| format!("cannot open the Raft log {}: {e}", path.display()))?;
        let tx = db.begin_write().map_err(|e| e.to_string())?;
        tx.open_table(LOG).map_err(|e| e.to_string())?;
        tx.open_table(META).map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        let store = LogStore { db: Arc::new(db) };
        // Decode every entry once at start: a corrupt log is reported now, clearly, instead of
        // surfacing later as a failed replication.
        store.verify().map_err(|e| {
            format!(
                "the Raft log {} is damaged: {e}; restore this member from a peer",
                path.display()
            )
        })?;
        Ok(store)
    }

    fn verify(&self) -> std::result::Result<(), String> {
        let tx = self.db.begin_read().map_err(|e| e.to_string())?;
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

    fn meta<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let meta = tx.open_table(META).map_err(read_err)?;
        match meta.get(name).map_err(read_err)? {
            Some(v) => Ok(Some(bincode::deserialize(v.value()).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    /// Writes one metadata value durably, off the async runtime.
    async fn put_meta<T: serde::Serialize>(&self, name: &'static str, value: &T) -> Result<()> {
        let bytes = bincode::serialize(value).map_err(write_err)?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_write().map_err(write_err)?;
            tx.open_table(META)
                .map_err(write_err)?
                .insert(name, bytes.as_slice())
                .map_err(write_err)?;
            tx.commit().map_err(write_err)
        })
        .await
        .map_err(write_err)?
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let log = tx.open_table(LOG).map_err(read_err)?;
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let mut entries = Vec::new();
        for row in log.range(bounds).map_err(read_err)? {
            let (_, v) = row.map_err(read_err)?;
            entries.push(bincode::deserialize(v.value()).map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.meta(LAST_PURGED)?;
        let tx = self.db.begin_read().map_err(read_err)?;
        let log = tx.open_table(LOG).map_err(read_err)?;
        let last = match log.last().map_err(read_err)? {
            Some((_, v)) => Some(
                bincode::deserialize::<Entry>(v.value())
                    .map_err(read_err)?
                    .log_id,
            ),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
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

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.put_meta(COMMITTED, &committed).await
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
        for entry in entries {
            rows.push((
                entry.log_id.index,
                bincode::serialize(&entry).map_err(write_err)?,
            ));
        }
        let db = self.db.clone();
        let written = tokio::task::spawn_blocking(move || -> std::result::Result<(), String> {
            let mut tx = db.begin_write().map_err(|e| e.to_string())?;
            tx.set_durability(Durability::Immediate)
                .map_err(|e| e.to_string())?;
            {
                let mut log = tx.open_table(LOG).map_err(|e| e.to_string())?;
                for (index, bytes) in &rows {
                    log.insert(*index, bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                }
            }
            tx.commit().map_err(|e| e.to_string())
        })
        .await
        .map_err(write_err)?;
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.clone())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_write().map_err(write_err)?;
            tx.open_table(LOG)
                .map_err(write_err)?
                .retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)?;
            tx.commit().map_err(write_err)
        })
        .await
        .map_err(write_err)?
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let bytes = bincode::serialize(&log_id).map_err(write_err)?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_write().map_err(write_err)?;
            tx.open_table(META)
                .map_err(write_err)?
                .insert(LAST_PURGED, bytes.as_slice())
                .map_err(write_err)?;
            tx.open_table(LOG)
                .map_err(write_err)?
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
            tx.commit().map_err(write_err)
        })
        .await
        .map_err(write_err)?
    }
}
