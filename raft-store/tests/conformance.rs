//! The storage conformance suite: openraft's own suite of log-store and state-machine duties
//! (vote persistence, log append/truncate/purge, membership tracking, snapshots), run against
//! Drover's WAL log store and MVCC state machine. Any engine put behind the store must pass it.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use raft_store::engine::Engine;
use raft_store::log_store::LogStore;
use raft_store::raft::{StateMachine, TypeConfig};

struct DroverStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for DroverStores {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("raft-log")).expect("log store");
        let sm = StateMachine::open(Engine::new(), dir.path()).expect("state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn wal_log_and_mvcc_state_machine_pass_openraft_storage_suite() {
    Suite::test_all(DroverStores).unwrap();
}
