//! openraft's state machine over the [`JobTable`], with snapshots on disk.
//!
//! The table lives in memory. Snapshots are rmp-serde encodings of it; the builder encodes a copy
//! taken when openraft asks for a builder (openraft serializes that call with `apply`, so the copy
//! is consistent with its `last_applied`), and encoding and writing run on a blocking thread while
//! apply goes on. A snapshot file is written to a temporary name, fsynced, renamed and its
//! directory fsynced, so a crash leaves either the old snapshot or the new one, never half of one.
//!
//! openraft builds snapshots in a task of their own, so a build may still be writing when the
//! leader's snapshot is installed. Writes are serialized and a snapshot older than the one on disk
//! is never written: a build that finishes late cannot replace the newer snapshot the log was
//! already purged up to (the voter could not restart from it).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, TryStreamExt};
use openraft::alias::SnapshotOf;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};

use crate::job_table::{CommandResponse, JobTable};
use crate::type_config::{LogId, SnapshotMeta, StoredMembership, TypeConfig};

/// The current snapshot's file name inside a data directory.
pub const SNAPSHOT_FILE: &str = "snapshot.bin";
const SNAPSHOT_MAGIC: &[u8; 8] = b"TNDMSNP1";

/// The bytes of a snapshot as openraft moves them: the rmp-serde encoding of a [`JobTable`].
pub type SnapshotData = Vec<u8>;

/// What the table's owner knows besides the table.
#[derive(Debug, Clone, Default)]
struct Applied {
    table: JobTable,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// What the state machine store is made of, shared by its clones.
struct MachineParts {
    dir: PathBuf,
    state: RwLock<Applied>,
    /// Metadata of the snapshot on disk, if any. Held while a snapshot file is written.
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

fn invalid_data(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Encode a table as snapshot bytes.
pub fn encode_table(table: &JobTable) -> io::Result<Vec<u8>> {
    encode_table_with_capacity(table, 0)
}

/// Encode a table into a buffer that starts with room for `capacity` bytes: given about the
/// last snapshot's size, the buffer is allocated once rather than grown by doubling through a
/// series of ever larger (and then freed) copies.
fn encode_table_with_capacity(table: &JobTable, capacity: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(capacity);
    rmp_serde::encode::write_named(&mut out, table).map_err(io::Error::other)?;
    Ok(out)
}

/// Decode snapshot bytes into a table.
pub fn decode_table(data: &[u8]) -> io::Result<JobTable> {
    wire::from_msgpack(data).map_err(invalid_data)
}

/// What [`write_snapshot_file`] encodes: a [`SnapshotFile`] that borrows the table's bytes
/// (the same MessagePack, so [`decode_snapshot_file`] reads it back as a `SnapshotFile`).
#[derive(Serialize)]
struct SnapshotFileRef<'a> {
    meta: &'a SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
}

/// A writer that passes bytes on and keeps the CRC-32 of what it passed.
struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.crc.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Write the snapshot file: the magic, the CRC-32 of the payload, then the payload (the
/// MessagePack of the metadata and `data`). The payload is encoded straight into the file and
/// its checksum written last, over the placeholder: `data` is not copied (a snapshot is tens of
/// MiB, and every transient copy of it is heap the allocator may keep).
fn write_snapshot_file(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut out = io::BufWriter::new(File::create(&tmp)?);
    out.write_all(SNAPSHOT_MAGIC)?;
    out.write_all(&[0; 4])?;
    let mut payload = CrcWriter { inner: out, crc: crc32fast::Hasher::new() };
    rmp_serde::encode::write_named(&mut payload, &SnapshotFileRef { meta, data }).map_err(io::Error::other)?;
    let crc = payload.crc.finalize();
    let file = payload.inner.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.write_all_at(&crc.to_le_bytes(), SNAPSHOT_MAGIC.len() as u64)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    File::open(dir)?.sync_all()
}

fn read_snapshot_file(dir: &Path) -> io::Result<Option<SnapshotFile>> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    decode_snapshot_file(&path, &bytes).map(Some)
}

/// Decode the bytes of a snapshot file (header, checksum, then the metadata and table bytes).
fn decode_snapshot_file(path: &Path, bytes: &[u8]) -> io::Result<SnapshotFile> {
    let corrupt = |what: &str| invalid_data(format!("snapshot {} is corrupt: {what}", path.display()));
    if bytes.len() < 12 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt("bad header"));
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[12..]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    wire::from_msgpack(&bytes[12..]).map_err(|e| corrupt(&e.to_string()))
}

/// Decode the bytes of a snapshot file as a restart reads `snapshot.bin`: its metadata and the
/// table's bytes (for [`decode_table`]). For the decoders' fuzz tests.
#[cfg(any(test, feature = "test-util"))]
pub fn decode_snapshot_file_bytes(bytes: &[u8]) -> io::Result<(SnapshotMeta, SnapshotData)> {
    decode_snapshot_file(Path::new(SNAPSHOT_FILE), bytes).map(|file| (file.meta, file.data))
}

impl StateMachineStore {
    /// Open the state machine of the voter whose data lives in `dir`. The table starts empty;
    /// openraft restores the snapshot on disk (if newer) and re-applies committed entries.
    pub fn open(dir: &Path) -> io::Result<StateMachineStore> {
        std::fs::create_dir_all(dir)?;
        let file = read_snapshot_file(dir)?;
        let snapshot_bytes = file.as_ref().map_or(0, |file| file.data.len() as u64);
        let current = file.map(|file| file.meta);
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

    /// Make `data` the snapshot on disk, unless the one there is at least as new (then `false`).
    /// Blocking: call it off the runtime.
    fn store_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<bool> {
        let mut current = self.parts.current.lock().unwrap_or_else(|poison| poison.into_inner());
        if current.as_ref().is_some_and(|c| c.last_log_id >= meta.last_log_id) {
            return Ok(false);
        }
        write_snapshot_file(&self.parts.dir, meta, data)?;
        *current = Some(meta.clone());
        self.parts.snapshot_bytes.store(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
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
        let (data, stored) = tokio::task::spawn_blocking(move || -> io::Result<(Vec<u8>, bool)> {
            // Room for the last snapshot and an eighth more: the table changes little between two.
            let last = store.last_snapshot_bytes() as usize;
            let data = encode_table_with_capacity(&copy.table, last.saturating_add(last / 8))?;
            let stored = store.store_snapshot(&file_meta, &data)?;
            Ok((data, stored))
        })
        .await
        .map_err(io::Error::other)??;
        if stored {
            tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "built a snapshot");
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
        let (store, file_meta) = (self.clone(), meta.clone());
        let table = tokio::task::spawn_blocking(move || -> io::Result<JobTable> {
            let table = decode_table(&snapshot)?;
            store.store_snapshot(&file_meta, &snapshot)?;
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
        let dir = self.parts.dir.clone();
        let file = tokio::task::spawn_blocking(move || read_snapshot_file(&dir)).await.map_err(io::Error::other)??;
        Ok(file.map(|file| Snapshot { meta: file.meta, snapshot: file.data }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job_table::{Command, NewJob};
    use wire::Digest;

    fn meta_at(index: u64) -> SnapshotMeta {
        let leader = openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 };
        SnapshotMeta { last_log_id: Some(LogId::new(leader, index)), last_membership: StoredMembership::default() }
    }

    fn table_with_jobs(jobs: u64) -> JobTable {
        let mut table = JobTable::default();
        for i in 0..jobs {
            let job = NewJob { digest: Digest([i as u8; 64]), iterations: 1, enqueued_at_ms: i, idempotency_key: None };
            table.apply(&Command::Enqueue { jobs: vec![job] });
        }
        table
    }

    /// The file is written without copying the table's bytes, in the format it always had:
    /// magic, the CRC-32 of the payload, then the MessagePack of the metadata and the bytes.
    #[test]
    fn the_snapshot_file_is_the_encoding_of_its_metadata_and_bytes() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let (meta, data) = (meta_at(7), encode_table(&table_with_jobs(3)).expect("encode"));
        write_snapshot_file(dir.path(), &meta, &data).expect("write");

        let payload =
            rmp_serde::to_vec_named(&SnapshotFile { meta: meta.clone(), data: data.clone() }).expect("encode");
        let mut expected = SNAPSHOT_MAGIC.to_vec();
        expected.extend(crc32fast::hash(&payload).to_le_bytes());
        expected.extend(&payload);
        assert_eq!(std::fs::read(dir.path().join(SNAPSHOT_FILE)).expect("read"), expected);
        let file = read_snapshot_file(dir.path()).expect("decode").expect("a snapshot");
        assert_eq!((file.meta, file.data), (meta, data));
    }

    /// A buffer sized for the last snapshot holds the same bytes as one grown from empty.
    #[test]
    fn encoding_into_a_sized_buffer_gives_the_same_bytes() {
        let table = table_with_jobs(50);
        let grown = encode_table(&table).expect("encode");
        for capacity in [0, 16, grown.len(), grown.len() * 2] {
            assert_eq!(encode_table_with_capacity(&table, capacity).expect("encode"), grown, "capacity {capacity}");
        }
    }

    /// openraft builds snapshots in a task of their own while the state machine goes on, so a
    /// leader's snapshot can be installed while an older build is still under way. The build
    /// that finishes last must not replace the newer snapshot on disk.
    #[tokio::test]
    async fn a_build_that_finishes_after_a_newer_install_keeps_the_newer_snapshot() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let mut store = StateMachineStore::open(dir.path()).expect("open");
        store
            .install_snapshot(&meta_at(10), encode_table(&table_with_jobs(1)).expect("encode"))
            .await
            .expect("install");
        // A build starts from the table as of index 10 ...
        let mut builder = store.get_snapshot_builder().await;
        // ... the leader's snapshot at index 20 is installed meanwhile ...
        let newer = table_with_jobs(2);
        store.install_snapshot(&meta_at(20), encode_table(&newer).expect("encode")).await.expect("install");
        // ... and the build finishes last.
        let built = builder.build_snapshot().await.expect("build");
        assert_eq!(built.meta, meta_at(10), "the build describes the table it copied");

        let current = store.get_current_snapshot().await.expect("read").expect("a snapshot");
        assert_eq!(current.meta, meta_at(20), "the newer snapshot stays on disk");
        assert_eq!(decode_table(&current.snapshot).expect("decode"), newer);
        // And a restart finds it too.
        drop(store);
        let mut reopened = StateMachineStore::open(dir.path()).expect("reopen");
        let on_disk = reopened.get_current_snapshot().await.expect("read").expect("a snapshot");
        assert_eq!(on_disk.meta, meta_at(20));
    }
}
