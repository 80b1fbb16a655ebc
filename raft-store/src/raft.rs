//! Binds the MVCC engine to openraft: the type configuration and the state machine, with
//! snapshots kept as one file beside the engine.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::engine::{Applied, Command, Engine};

openraft::declare_raft_types!(
    /// Drover's Raft types: commands are MVCC transactions and compactions.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = u64,
        Node = BasicNode,
);

pub type NodeId = u64;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Membership = StoredMembership<NodeId, BasicNode>;

/// What the engine stores as its opaque `applied` record.
#[derive(Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
}

fn sm_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(openraft::AnyError::error(e.to_string())).into()
}
fn snap_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, openraft::AnyError::error(e.to_string())).into()
}

/// The Raft state machine: the engine plus the current snapshot file.
#[derive(Clone)]
pub struct StateMachine {
    engine: Engine,
    snapshot_path: PathBuf,
}

/// A snapshot as stored on disk: its metadata and the engine's payload.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, BasicNode>,
    payload: Vec<u8>,
}

impl StateMachine {
    /// The state machine over `engine`, with its snapshot file in `dir`. A snapshot found there
    /// is loaded into the engine: the state is in memory, and the snapshot plus the log after it
    /// is how a restarted member gets it back.
    pub fn open(engine: Engine, dir: &Path) -> Result<Self, String> {
        let sm = StateMachine {
            engine,
            snapshot_path: dir.join("snapshot.bin"),
        };
        match std::fs::read(&sm.snapshot_path) {
            Ok(bytes) => {
                let file: SnapshotFile = bincode::deserialize(&bytes).map_err(|e| {
                    format!("snapshot {} is damaged: {e}", sm.snapshot_path.display())
                })?;
                sm.engine.import(&file.payload).map_err(|e| e.to_string())?;
                tracing::info!(snapshot = %file.meta.snapshot_id, "loaded snapshot");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", sm.snapshot_path.display())),
        }
        Ok(sm)
    }

    /// The members' addresses in the membership the state holds (from its snapshot).
    pub fn member_addrs(&self) -> Vec<String> {
        StateMachine::applied_state(self)
            .map(|s| {
                s.membership
                    .membership()
                    .nodes()
                    .map(|(_, n)| n.addr.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn applied_state(&self) -> Result<AppliedState, StorageError<NodeId>> {
        match self.engine.applied() {
            Some(bytes) => bincode::deserialize(&bytes).map_err(sm_err),
            None => Ok(AppliedState::default()),
        }
    }

    /// Writes the snapshot file atomically: a crash leaves the old file or the new, never half.
    fn save_snapshot(&self, file: &SnapshotFile) -> Result<(), StorageError<NodeId>> {
        let tmp = self.snapshot_path.with_extension("tmp");
        let bytes = bincode::serialize(file).map_err(snap_err)?;
        {
            use std::io::Write;
            let mut f = crate::files::private_file()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&tmp)
                .map_err(snap_err)?;
            f.write_all(&bytes).map_err(snap_err)?;
            f.sync_all().map_err(snap_err)?;
        }
        std::fs::rename(&tmp, &self.snapshot_path).map_err(snap_err)?;
        if let Some(dir) = self.snapshot_path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(snap_err)?;
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let (payload, applied) = this.engine.export();
            let applied: AppliedState = match applied {
                Some(bytes) => bincode::deserialize(&bytes).map_err(snap_err)?,
                None => AppliedState::default(),
            };
            let snapshot_id = match applied.last_applied {
                Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, rand::random::<u32>()),
                None => format!("0-0-{}", rand::random::<u32>()),
            };
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership,
                snapshot_id,
            };
            let file = SnapshotFile { meta: meta.clone(), payload };
            this.save_snapshot(&file)?;
            tracing::info!(snapshot = %meta.snapshot_id, bytes = file.payload.len(), "built snapshot");
            Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(file.payload)) })
        })
        .await
        .map_err(snap_err)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let state = StateMachine::applied_state(self)?;
        Ok((state.last_applied, state.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut state = StateMachine::applied_state(self)?;
        let mut commands = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            commands.push(match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(command) => Some(command),
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m);
                    None
                }
            });
        }
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let applied = bincode::serialize(&state).map_err(sm_err)?;
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.apply(&commands, &applied))
            .await
            .map_err(sm_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let this = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            let payload = snapshot.into_inner();
            this.engine.import(&payload).map_err(snap_err)?;
            tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
            this.save_snapshot(&SnapshotFile { meta, payload })
        })
        .await
        .map_err(snap_err)?
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let bytes = match std::fs::read(&self.snapshot_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(snap_err(e)),
        };
        let file: SnapshotFile = bincode::deserialize(&bytes).map_err(snap_err)?;
        Ok(Some(Snapshot {
            meta: file.meta,
            snapshot: Box::new(Cursor::new(file.payload)),
        }))
    }
}
