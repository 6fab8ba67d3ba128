//! openraft's state machine over the [`JobTable`], with snapshots on disk.
//!
//! The table lives in memory. A snapshot is a file ([`snapshot`]): the builder encodes a copy of
//! the table taken when openraft asks for a builder (openraft serializes that call with `apply`,
//! so the copy is consistent with its `last_applied`) straight into a file, on a blocking thread
//! while apply goes on; a follower receives the leader's into a file; either is renamed into
//! place once fsynced (and its directory fsynced), so a crash leaves either the old snapshot or
//! the new one, never half of one.
//!
//! openraft builds snapshots in a task of their own, so a build may still be writing when the
//! leader's snapshot is installed. The snapshot in place is replaced only by a newer one: a build
//! that finishes late cannot replace the newer snapshot the log was already purged up to (the
//! voter could not restart from it).

pub mod snapshot;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, TryStreamExt};
use openraft::alias::SnapshotOf;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend};

use crate::job_table::{CommandResponse, JobTable};
use crate::type_config::{LogId, SnapshotMeta, StoredMembership, TypeConfig};
#[cfg(any(test, feature = "test-util"))]
pub use snapshot::decode_file_bytes as decode_snapshot_file_bytes;
pub use snapshot::{SNAPSHOT_FILE, SnapshotData, decode_table, encode_table};

/// What the table's owner knows besides the table.
#[derive(Debug, Clone, Default)]
struct Applied {
    table: JobTable,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

/// What the state machine store is made of, shared by its clones.
struct MachineParts {
    dir: PathBuf,
    state: RwLock<Applied>,
    /// Metadata of the snapshot on disk, if any. Held while a snapshot file is put in place.
    current: Mutex<Option<SnapshotMeta>>,
    /// The last applied log index, published after every apply batch and snapshot install.
    applied: tokio::sync::watch::Sender<u64>,
    /// Size of the newest snapshot built or installed, for the snapshot policy.
    snapshot_bytes: std::sync::atomic::AtomicU64,
}

/// The job state machine of one voter. Cheap to clone; clones share the table.
#[derive(Clone)]
pub struct StateMachineStore {
    parts: Arc<MachineParts>,
}

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore").field("dir", &self.parts.dir).finish()
    }
}

impl StateMachineStore {
    /// Open the state machine of the voter whose data lives in `dir`. The table starts empty;
    /// openraft restores the snapshot on disk (if newer) and re-applies committed entries.
    pub fn open(dir: &Path) -> io::Result<StateMachineStore> {
        std::fs::create_dir_all(dir)?;
        snapshot::remove_pending(dir)?;
        snapshot::upgrade_legacy(dir)?;
        let file = SnapshotData::open(&dir.join(SNAPSHOT_FILE))?;
        let snapshot_bytes = file.as_ref().map_or(0, SnapshotData::table_len);
        let current = file.map(|file| file.meta().clone());
        Ok(StateMachineStore {
            parts: Arc::new(MachineParts {
                dir: dir.to_owned(),
                state: RwLock::new(Applied::default()),
                current: Mutex::new(current),
                applied: tokio::sync::watch::Sender::new(0),
                snapshot_bytes: snapshot_bytes.into(),
            }),
        })
    }

    /// Read the table. Runs `read` under a read lock: keep it short and never await inside.
    pub fn read<R>(&self, read: impl FnOnce(&JobTable) -> R) -> R {
        read(&self.parts.state.read().unwrap_or_else(|poison| poison.into_inner()).table)
    }

    /// Notified whenever the table changes (the value is the last applied log index), e.g. to
    /// wake long-polls when jobs arrive.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.parts.applied.subscribe()
    }

    fn publish_applied(&self, index: Option<u64>) {
        self.parts.applied.send_replace(index.unwrap_or(0));
    }

    /// The last log id applied to the table.
    pub fn last_applied(&self) -> Option<LogId> {
        self.parts.state.read().unwrap_or_else(|poison| poison.into_inner()).last_applied
    }

    /// Size in bytes of the newest snapshot this voter built or installed (0 before the first).
    pub fn last_snapshot_bytes(&self) -> u64 {
        self.parts.snapshot_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The directory snapshots are written to.
    pub fn dir(&self) -> &Path {
        &self.parts.dir
    }

    /// A pending snapshot of `meta` holding the table bytes `data` (as an install takes it).
    /// Blocking.
    pub fn snapshot_from_bytes(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<SnapshotData> {
        snapshot::write_bytes(&self.parts.dir, meta, data)
    }

    /// Put `data` in place as the snapshot on disk, unless the one there is at least as new
    /// (then `false`, and a pending `data` is removed once dropped). Blocking.
    fn store_snapshot(&self, data: &mut SnapshotData) -> io::Result<bool> {
        let mut current = self.parts.current.lock().unwrap_or_else(|poison| poison.into_inner());
        if current.as_ref().is_some_and(|c| c.last_log_id >= data.meta().last_log_id) {
            return Ok(false);
        }
        data.persist(&self.parts.dir.join(SNAPSHOT_FILE))?;
        *current = Some(data.meta().clone());
        self.parts.snapshot_bytes.store(data.table_len(), std::sync::atomic::Ordering::Relaxed);
        Ok(true)
    }
}

/// Builds one snapshot from a copy of the table.
pub struct SnapshotBuilder {
    store: StateMachineStore,
    copy: Option<Applied>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotData>, io::Error> {
        let copy = self.copy.take().ok_or_else(|| {
            io::Error::other("no copy of the table to snapshot (the copy failed, or the builder was used twice)")
        })?;
        let meta = SnapshotMeta { last_log_id: copy.last_applied, last_membership: copy.last_membership.clone() };
        let (store, file_meta) = (self.store.clone(), meta.clone());
        let (data, stored) = tokio::task::spawn_blocking(move || -> io::Result<(SnapshotData, bool)> {
            let mut data = snapshot::write_table(&store.parts.dir, &file_meta, &copy.table)?;
            drop(copy);
            let stored = store.store_snapshot(&mut data)?;
            Ok((data, stored))
        })
        .await
        .map_err(io::Error::other)??;
        if stored {
            tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.table_len(), "built a snapshot");
        } else {
            // openraft ignores a snapshot older than the one it has.
            tracing::info!(last_log_id = ?meta.last_log_id, "built a snapshot older than the one on disk; kept that one");
        }
        Ok(Snapshot { meta, snapshot: data })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let state = self.parts.state.read().unwrap_or_else(|poison| poison.into_inner());
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut last = None;
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = {
                let mut state = self.parts.state.write().unwrap_or_else(|poison| poison.into_inner());
                state.last_applied = Some(entry.log_id);
                match &entry.payload {
                    EntryPayload::Blank => CommandResponse::None,
                    EntryPayload::Normal(command) => state.table.apply(command),
                    EntryPayload::Membership(membership) => {
                        state.last_membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                        CommandResponse::None
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(response);
            }
            last = Some(entry.log_id.index);
        }
        if last.is_some() {
            self.publish_applied(last);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The copy takes time in proportion to the table (hundreds of ms at a million jobs):
        // on a blocking thread, so that the runtime keeps serving (the witness runs a one-thread
        // runtime beside its election timeouts). openraft applies nothing until this returns,
        // so the copy is of the state at its last applied entry either way.
        let parts = self.parts.clone();
        let copy = tokio::task::spawn_blocking(move || parts.state.read().unwrap_or_else(|p| p.into_inner()).clone())
            .await
            .ok();
        SnapshotBuilder { store: self.clone(), copy }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        if snapshot.meta() != meta {
            return Err(io::Error::other(format!(
                "the snapshot file is of {:?}, not of the {:?} it is installed as",
                snapshot.meta().last_log_id,
                meta.last_log_id
            )));
        }
        let store = self.clone();
        let table = tokio::task::spawn_blocking(move || -> io::Result<JobTable> {
            let mut snapshot = snapshot;
            let table = snapshot.decode_table()?;
            store.store_snapshot(&mut snapshot)?;
            Ok(table)
        })
        .await
        .map_err(io::Error::other)??;
        let replaced = {
            let mut state = self.parts.state.write().unwrap_or_else(|poison| poison.into_inner());
            let installed =
                Applied { table, last_applied: meta.last_log_id, last_membership: meta.last_membership.clone() };
            std::mem::replace(&mut *state, installed)
        };
        // Freeing the old table takes time in proportion to it too: not on the runtime.
        tokio::task::spawn_blocking(move || drop(replaced));
        self.publish_applied(meta.last_log_id.map(|id| id.index));
        tracing::info!(last_log_id = ?meta.last_log_id, "installed a snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, SnapshotData>>, io::Error> {
        let path = self.parts.dir.join(SNAPSHOT_FILE);
        let file = tokio::task::spawn_blocking(move || SnapshotData::open(&path)).await.map_err(io::Error::other)??;
        Ok(file.map(|file| Snapshot { meta: file.meta().clone(), snapshot: file }))
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot::tests::{meta_at, table_with_jobs};
    use super::*;

    /// openraft builds snapshots in a task of their own while the state machine goes on, so a
    /// leader's snapshot can be installed while an older build is still under way. The build
    /// that finishes last must not replace the newer snapshot on disk.
    #[tokio::test]
    async fn a_build_that_finishes_after_a_newer_install_keeps_the_newer_snapshot() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let mut store = StateMachineStore::open(dir.path()).expect("open");
        let first = store.snapshot_from_bytes(&meta_at(10), &encode_table(&table_with_jobs(1)).expect("encode"));
        store.install_snapshot(&meta_at(10), first.expect("write")).await.expect("install");
        // A build starts from the table as of index 10 ...
        let mut builder = store.get_snapshot_builder().await;
        // ... the leader's snapshot at index 20 is installed meanwhile ...
        let newer = table_with_jobs(2);
        let second = store.snapshot_from_bytes(&meta_at(20), &encode_table(&newer).expect("encode"));
        store.install_snapshot(&meta_at(20), second.expect("write")).await.expect("install");
        // ... and the build finishes last.
        let built = builder.build_snapshot().await.expect("build");
        assert_eq!(built.meta, meta_at(10), "the build describes the table it copied");

        let current = store.get_current_snapshot().await.expect("read").expect("a snapshot");
        assert_eq!(current.meta, meta_at(20), "the newer snapshot stays on disk");
        assert_eq!(current.snapshot.decode_table().expect("decode"), newer);
        // And a restart finds it too.
        drop(store);
        let mut reopened = StateMachineStore::open(dir.path()).expect("reopen");
        let on_disk = reopened.get_current_snapshot().await.expect("read").expect("a snapshot");
        assert_eq!(on_disk.meta, meta_at(20));
    }
}
