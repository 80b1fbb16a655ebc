//! The storage conformance suite: openraft's own suite of log-store and state-machine duties
//! (vote persistence, log append/truncate/purge, membership tracking, snapshots), run against
//! Drover's redb log store and MVCC state machine. Any engine put behind the store must pass it.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use raft_store::engine::Engine;
use raft_store::log_store::LogStore;
use raft_store::raft::{StateMachine, TypeConfig};

struct RedbStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbStores {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("raft-log")).expect("log store");
        let engine = Engine::open(&dir.path().join("state.redb")).expect("engine");
        let sm = StateMachine::new(engine, dir.path());
        Ok((dir, log, sm))
    }
}

#[test]
fn redb_stores_pass_openraft_storage_suite() {
    Suite::test_all(RedbStores).unwrap();
}
