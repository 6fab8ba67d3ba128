//! openraft's storage conformance suite against the WAL log store and the job state machine.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use raft_store::TypeConfig;
use raft_store::log_store::{LogStore, LogStoreOptions};
use raft_store::state_machine::StateMachineStore;
use tempfile::TempDir;

struct WalStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for WalStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = TempDir::new().expect("temp dir");
        // Compact eagerly so the suite's purges exercise the rewrite path too.
        let (log, _) =
            LogStore::open(dir.path(), LogStoreOptions { compact_after_bytes: 1, ..LogStoreOptions::default() })
                .expect("open log store");
        let sm = StateMachineStore::open(dir.path()).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(WalStoreBuilder).await.expect("storage suite");
}
