//! The durable Raft log: an in-memory index over one append-only WAL file, written by one thread
//! that batches fsyncs.
//!
//! Every change updates the in-memory [`LogIndex`] first (so a reader sees appended entries as
//! soon as `append` returns, as openraft requires) and then goes, in the same order, down one
//! channel to the writer thread. The writer drains whatever has queued up, writes it as one
//! batch with one `write`, fsyncs it, and only then completes the waiters: `append` callbacks,
//! `save_vote` and `truncate_after`. Records nobody waits for ride with the next batch that
//! somebody does. Because there is one file and
//! one ordered writer, a later write can never become durable before an earlier one, which is the
//! I/O ordering openraft's safety relies on (a vote is on disk before any entry of its term).
//!
//! The writer keeps zeros ahead of the last batch: it overwrites preallocated space rather than
//! growing the file, so an fsync persists only data, not a new file size too (measured on this
//! project's ext4 disks: about 125 µs instead of 185 µs, and a third less CPU). The space is
//! extended a chunk at a time, after a flush has released its waiters.
//!
//! After purges have made most of the file dead, the writer rewrites it as a compact image
//! (vote, committed, purge point, live entries) into a temporary file, fsyncs it, renames it over
//! the log and fsyncs the directory. The image is taken where changes are made, in time O(live
//! entries) but cheap (entries are shared, not copied), and encoded and written by the writer
//! thread: the log's size never weighs on an async runtime (the witness runs a one-thread
//! runtime next to its election timeouts).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};

use crate::state_machine::SNAPSHOT_FILE;
use crate::type_config::{Entry, LogId, TypeConfig, Vote};
use crate::wal::{self, Record, ScanSummary, WalError};

mod writer;
use writer::{Waiter, WriteOp, Writer};

/// The WAL's file name inside a data directory.
pub const WAL_FILE: &str = "raft.wal";
const LOCK_FILE: &str = "LOCK";
/// Entries per record when the compactor rewrites the log.
const COMPACT_ENTRIES_PER_RECORD: usize = 1024;
/// Most operations the writer takes into one batch.
const MAX_BATCH_OPS: usize = 8192;
/// Records nobody waits for are written once this many bytes of them have waited.
const DEFERRED_BYTES: usize = 1 << 20;

/// Tuning for the log store.
#[derive(Clone, Copy, Debug)]
pub struct LogStoreOptions {
    /// Rewrite the file once this many bytes were written since the last rewrite and a purge
    /// made part of it dead.
    pub compact_after_bytes: u64,
    /// Zeros kept ahead of the last record (0: none, the file grows with every write). The
    /// writer extends the file by this much once less than half of it is left.
    pub preallocate_bytes: u64,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        // 1 MiB of zeros takes 1 to 2 ms to write and fsync here; 4 MiB took up to 21 ms.
        LogStoreOptions { compact_after_bytes: 64 << 20, preallocate_bytes: 1 << 20 }
    }
}

/// Counters of the writer's work, for metrics and the group-commit benchmark.
#[derive(Debug, Default)]
pub struct WalStats {
    fsyncs: AtomicU64,
    fsync_nanos: AtomicU64,
    synced_entries: AtomicU64,
    synced_waiters: AtomicU64,
    bytes_written: AtomicU64,
    compactions: AtomicU64,
    /// Fault injection: when set, the next write fails as a failing disk's would.
    fail_writes: std::sync::atomic::AtomicBool,
    /// Length of the last compaction image written (0 before the first).
    last_image_bytes: AtomicU64,
}

/// A copy of [`WalStats`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WalStatsSnapshot {
    /// fsyncs performed.
    pub fsyncs: u64,
    /// Total time spent in fsync, in nanoseconds.
    pub fsync_nanos: u64,
    /// Log entries made durable.
    pub synced_entries: u64,
    /// Callers (appends, votes, truncations) released by an fsync.
    pub synced_waiters: u64,
    /// Bytes of records written to the file (preallocated zeros not counted).
    pub bytes_written: u64,
    /// Rewrites of the file after purges.
    pub compactions: u64,
}

impl WalStats {
    /// Fault injection (tests only): make every write from now on fail with an I/O error, as a
    /// failing or full disk would. The voter's Raft then stops.
    pub fn inject_write_failure(&self) {
        self.fail_writes.store(true, Ordering::Relaxed);
    }

    /// Read every counter.
    pub fn snapshot(&self) -> WalStatsSnapshot {
        WalStatsSnapshot {
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            fsync_nanos: self.fsync_nanos.load(Ordering::Relaxed),
            synced_entries: self.synced_entries.load(Ordering::Relaxed),
            synced_waiters: self.synced_waiters.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            compactions: self.compactions.load(Ordering::Relaxed),
        }
    }
}

/// What [`LogStore::open`] found on disk.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The scan of the WAL, including any torn tail it dropped.
    pub scan: ScanSummary,
    /// The last log id after replay.
    pub last_log_id: Option<LogId>,
    /// The vote after replay.
    pub vote: Option<Vote>,
}

/// The log's state in memory: everything the file says, already replayed.
#[derive(Debug, Default, Clone)]
struct LogIndex {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    /// Shared with compaction images ([`Image`]) under way: taking one copies no entry.
    entries: BTreeMap<u64, Arc<Entry>>,
}

impl LogIndex {
    fn last_log_id(&self) -> Option<LogId> {
        self.entries.values().next_back().map(|entry| entry.log_id).or(self.last_purged)
    }

    fn append(&mut self, entries: impl IntoIterator<Item = Arc<Entry>>) {
        for entry in entries {
            self.entries.insert(entry.log_id.index, entry);
        }
    }

    /// Why `record` cannot follow this state in a log, if it cannot: appended entries continue
    /// the log at the index after its last (entry or purge), one index after another, with no gap
    /// and no overlap. Only the first entry of an empty, never purged log may start anywhere.
    fn check(&self, record: &Record) -> Result<(), String> {
        let Record::Entries(entries) = record else { return Ok(()) };
        let mut expected = match self.last_log_id() {
            Some(last) => Some(last.index.checked_add(1).ok_or("an entry after index u64::MAX")?),
            None => None,
        };
        for entry in entries {
            let index = entry.log_id.index;
            if let Some(expected) = expected
                && index != expected
            {
                let what = if index > expected { "a gap" } else { "an overlap" };
                return Err(format!("entry {index} appended where {expected} was due ({what})"));
            }
            expected = Some(index.checked_add(1).ok_or("an entry after index u64::MAX")?);
        }
        Ok(())
    }

    fn truncate_after(&mut self, last: Option<LogId>) {
        // Nothing can follow the last possible index (a record can say so: no overflow).
        let Some(from) = last.map_or(Some(0), |id| id.index.checked_add(1)) else { return };
        self.entries.split_off(&from);
    }

    fn purge(&mut self, upto: LogId) {
        if self.last_purged.is_some_and(|purged| purged.index >= upto.index) {
            return;
        }
        self.last_purged = Some(upto);
        self.entries = match upto.index.checked_add(1) {
            Some(from) => self.entries.split_off(&from),
            None => BTreeMap::new(),
        };
    }

    fn apply(&mut self, record: Record) {
        match record {
            Record::Entries(entries) => self.append(entries.into_iter().map(Arc::new)),
            Record::Vote(vote) => self.vote = Some(vote),
            Record::Committed(committed) => self.committed = committed,
            Record::TruncateAfter(last) => self.truncate_after(last),
            Record::Purge(upto) => self.purge(upto),
        }
    }

    /// What a compaction writes: this state, its entries shared rather than copied.
    fn image(&self) -> Image {
        Image {
            vote: self.vote,
            committed: self.committed,
            last_purged: self.last_purged,
            entries: self.entries.values().cloned().collect(),
        }
    }
}

/// The state a compaction writes, taken from a [`LogIndex`] at one moment.
pub(super) struct Image {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    entries: Vec<Arc<Entry>>,
}

impl Image {
    /// The records that rebuild exactly this state, framed, after the magic header. The purge
    /// point comes after the entries: replayed before them, it would make them continue it, and
    /// a purge below the first entry (which replay accepts) would not read back.
    pub(super) fn encode(&self) -> io::Result<Vec<u8>> {
        let mut out = wal::MAGIC.to_vec();
        let mut head = Vec::new();
        if let Some(vote) = self.vote {
            head.extend(wal::encode(&Record::Vote(vote))?);
        }
        head.extend(wal::encode(&Record::Committed(self.committed))?);
        out.extend(wal::batch(&head)?);
        // A batch per record of entries, so that no batch outgrows the frame limit.
        for chunk in self.entries.chunks(COMPACT_ENTRIES_PER_RECORD) {
            let record = wal::encode(&Record::Entries(chunk.iter().map(|e| Entry::clone(e)).collect()))?;
            out.extend(wal::batch(&record)?);
        }
        if let Some(purged) = self.last_purged {
            out.extend(wal::batch(&wal::encode(&Record::Purge(purged))?)?);
        }
        Ok(out)
    }
}

/// Bookkeeping for when to compact: bytes queued for the file since the last image was queued
/// (since it was opened, at first: the file's length); the image's own length is reported by the
/// writer once it has encoded it ([`WalStats`]).
#[derive(Debug, Default)]
struct CompactionState {
    bytes_since: u64,
}

/// What an open log is made of, shared by its clones: its index, its writer thread and the
/// directory lock.
struct LogParts {
    dir: PathBuf,
    index: RwLock<LogIndex>,
    tx: Mutex<Option<mpsc::Sender<WriteOp>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<WalStats>,
    options: LogStoreOptions,
    compaction: Mutex<CompactionState>,
    /// Held for the store's lifetime: the OS lock that keeps a second process out.
    _lock: File,
}

impl Drop for LogParts {
    fn drop(&mut self) {
        // Closing the channel ends the writer after it has finished what was queued; joining it
        // releases the file before a new store may open the same directory.
        drop(self.tx.lock().unwrap_or_else(|poison| poison.into_inner()).take());
        if let Some(handle) = self.writer.lock().unwrap_or_else(|poison| poison.into_inner()).take() {
            let _ = handle.join();
        }
    }
}

/// The durable Raft log of one voter. Cheap to clone; clones share one index and one writer.
#[derive(Clone)]
pub struct LogStore {
    parts: Arc<LogParts>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("dir", &self.parts.dir).finish()
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalError + use<'a> {
    move |source| WalError::Io { op, path: path.to_owned(), source }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all`, then fsync every directory it created and the parent of the topmost, so a
/// power loss cannot take away a new data directory whose log was already fsynced into it.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|path| !path.as_os_str().is_empty() && !path.exists()) {
        missing.push(path);
        at = path.parent();
    }
    std::fs::create_dir_all(dir)?;
    if let Some(topmost) = missing.last() {
        let parent = topmost.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sync_dir(parent)?;
        for created in &missing {
            sync_dir(created)?;
        }
    }
    Ok(())
}

/// Replace `path` (in `dir`) with a file holding `bytes`, atomically and durably: written to a
/// temporary file (`path` with `suffix` added), fsynced, renamed over `path`, the directory
/// fsynced. A crash leaves the old file or the new one, never part of either.
fn replace_file(dir: &Path, path: &Path, suffix: &str, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".");
    tmp.push(suffix);
    let tmp = PathBuf::from(tmp);
    let mut out = File::create(&tmp)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Scan the WAL file `path` whose bytes are `bytes` and replay its records into an index.
fn replay(path: &Path, bytes: &[u8]) -> Result<(LogIndex, ScanSummary), WalError> {
    let mut index = LogIndex::default();
    let scan = wal::scan(path, bytes, |offset, record| {
        index.check(&record).map_err(|reason| WalError::Inconsistent { path: path.to_owned(), offset, reason })?;
        index.apply(record);
        Ok(())
    })?;
    Ok((index, scan))
}

/// What [`LogStore::open`] would recover from a WAL file with these bytes, without touching a
/// disk, with the number of entries it would hold. For the decoders' fuzz tests.
#[cfg(any(test, feature = "test-util"))]
pub fn replay_wal_bytes(bytes: &[u8]) -> Result<(Recovery, usize), WalError> {
    let (index, scan) = replay(Path::new(WAL_FILE), bytes)?;
    Ok((Recovery { scan, last_log_id: index.last_log_id(), vote: index.vote }, index.entries.len()))
}

impl LogStore {
    /// Open (or create) the log in `dir`, replaying the WAL. A torn tail is cut off and reported
    /// in [`Recovery::scan`]; damage before the tail is an error and nothing is changed.
    pub fn open(dir: &Path, options: LogStoreOptions) -> Result<(LogStore, Recovery), WalError> {
        create_dir_durably(dir).map_err(io_err("create directory", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(WalError::Locked { path: lock_path });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(WalError::Io { op: "lock", path: lock_path, source });
            }
        }

        let path = dir.join(WAL_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            // The log is created, durably, before any snapshot can exist beside it, and only
            // ever replaced by a rename. A snapshot without it means the directory was edited or
            // half restored by hand: starting with an empty log would forget this voter's vote
            // and let it vote twice in one term.
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir.join(SNAPSHOT_FILE).exists() => {
                return Err(WalError::Inconsistent {
                    path,
                    offset: 0,
                    reason: format!(
                        "the log is missing but {SNAPSHOT_FILE} is there (was the directory restored or \
                         edited by hand?); an empty log would forget this voter's vote. Start it as a new \
                         voter under a new id instead"
                    ),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(WalError::Io { op: "read", path, source });
            }
        };
        let (index, scan) = replay(&path, &bytes)?;
        if scan.records == 0 && dir.join(SNAPSHOT_FILE).exists() {
            // As with a missing log: every log that lived beside a snapshot held records (the
            // vote at least; a compacted one starts with them), so an empty or header-only file
            // was damaged or replaced, and would forget the vote.
            return Err(WalError::Inconsistent {
                path,
                offset: 0,
                reason: format!(
                    "the log holds no record ({} bytes) but {SNAPSHOT_FILE} is there; an empty log would \
                     forget this voter's vote. Start it as a new voter under a new id instead",
                    bytes.len()
                ),
            });
        }
        if let Some(torn) = &scan.torn_tail {
            tracing::warn!(
                path = %path.display(),
                offset = torn.offset,
                dropped_bytes = torn.dropped_bytes,
                reason = %torn.reason,
                "dropped a torn record at the end of the log (a crash mid-write); it was never acknowledged"
            );
        }

        let rewrite = if scan.legacy {
            // Written by an older Tandem: rewrite it in the current format (the records that
            // rebuild exactly the state just read) before anything is appended to it.
            Some(index.image().encode().map_err(io_err("encode", &path))?)
        } else if scan.valid_len < wal::MAGIC.len() as u64 {
            // New, or only a partial header survived: start the file afresh.
            Some(wal::MAGIC.to_vec())
        } else {
            None
        };
        let end = match &rewrite {
            Some(bytes) => {
                replace_file(dir, &path, "new", bytes).map_err(io_err("rewrite", &path))?;
                if scan.legacy {
                    tracing::info!(path = %path.display(), bytes = bytes.len(), "rewrote the log in the current format");
                }
                bytes.len() as u64
            }
            None => scan.valid_len,
        };
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io_err("open", &path))?;
        if scan.torn_tail.is_some() && rewrite.is_none() {
            // Cut the torn bytes: what follows the last record must be zeros.
            file.set_len(end).map_err(io_err("truncate", &path))?;
            file.sync_all().map_err(io_err("fsync", &path))?;
        }
        let allocated = file.metadata().map_err(io_err("stat", &path))?.len();

        let recovery = Recovery { scan: scan.clone(), last_log_id: index.last_log_id(), vote: index.vote };
        let stats = Arc::new(WalStats::default());
        let (tx, rx) = mpsc::channel();
        let dir_for_error = dir.to_owned();
        let writer = {
            let stats = stats.clone();
            let dir = dir.to_owned();
            std::thread::Builder::new()
                .name("wal-writer".into())
                .spawn(move || {
                    let preallocate = options.preallocate_bytes;
                    Writer { dir, path, file, end, allocated, preallocate, stats, failed: None }.run(rx)
                })
                .map_err(io_err("spawn the writer thread for", &dir_for_error))?
        };
        let store = LogStore {
            parts: Arc::new(LogParts {
                dir: dir.to_owned(),
                index: RwLock::new(index),
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
                stats,
                options,
                compaction: Mutex::new(CompactionState { bytes_since: end }),
                _lock: lock,
            }),
        };
        Ok((store, recovery))
    }

    /// The writer's counters.
    pub fn stats(&self) -> WalStatsSnapshot {
        self.parts.stats.snapshot()
    }

    /// A handle to the writer's counters that does not keep the log open.
    pub fn stats_handle(&self) -> Arc<WalStats> {
        self.parts.stats.clone()
    }

    /// The data directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.parts.dir
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, LogIndex> {
        self.parts.index.read().unwrap_or_else(|poison| poison.into_inner())
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, LogIndex> {
        self.parts.index.write().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Apply `change` to the index and queue `op` for the writer as one step with respect to
    /// compaction (both under the compaction lock, which [`LogStore::maybe_compact`] holds from
    /// taking its image to queueing it): a change is either in an image and queued after it, or
    /// queued before it and not in it, never in it and queued after it again, nor queued before
    /// it and missing from it.
    fn record(&self, change: impl FnOnce(&mut LogIndex), op: WriteOp) -> io::Result<()> {
        let mut state = self.parts.compaction.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut self.index_mut());
        if let WriteOp::Append { frame, .. } = &op {
            state.bytes_since += frame.len() as u64;
        }
        self.queue(op)
    }

    /// Hand `op` to the writer thread.
    fn queue(&self, op: WriteOp) -> io::Result<()> {
        let tx = self.parts.tx.lock().unwrap_or_else(|poison| poison.into_inner());
        let tx = tx.as_ref().ok_or_else(|| io::Error::other("log store is closed"))?;
        tx.send(op).map_err(|_| io::Error::other("WAL writer has stopped"))
    }

    /// [`LogStore::record`], then wait until the record is durable.
    async fn record_durably(&self, change: impl FnOnce(&mut LogIndex), record: &Record) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let frame = wal::encode(record)?;
        self.record(change, WriteOp::Append { frame, entries: 0, waiter: Waiter::Notify(tx) })?;
        rx.await.map_err(|_| io::Error::other("WAL writer has stopped"))?
    }

    /// Queue a rewrite if purges have left enough dead bytes behind.
    fn maybe_compact(&self) -> io::Result<()> {
        let mut state = self.parts.compaction.lock().unwrap_or_else(|p| p.into_inner());
        let last_image = self.parts.stats.last_image_bytes.load(Ordering::Relaxed);
        if last_image + state.bytes_since < self.parts.options.compact_after_bytes.max(2 * last_image) {
            return Ok(());
        }
        // Image and queueing under the one lock every change takes (see `record`): everything
        // queued before is in the image, everything queued after goes to the new file.
        let image = self.index().image();
        state.bytes_since = 0;
        self.queue(WriteOp::Compact { image })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.index().entries.range(range).map(|(_, entry)| Entry::clone(entry)).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.index().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let index = self.index();
        Ok(LogState { last_purged_log_id: index.last_purged, last_log_id: index.last_log_id() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let vote = *vote;
        self.record_durably(|index| index.vote = Some(vote), &Record::Vote(vote)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Losing the committed mark only delays re-applying entries after a restart: no fsync.
        let frame = wal::encode(&Record::Committed(committed))?;
        self.record(|index| index.committed = committed, WriteOp::Append { frame, entries: 0, waiter: Waiter::Nobody })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.index().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let count = entries.len() as u64;
        let record = Record::Entries(entries);
        let frame = wal::encode(&record)?;
        let Record::Entries(entries) = record else { unreachable!("built above") };
        let op = WriteOp::Append { frame, entries: count, waiter: Waiter::Flushed(callback) };
        self.record(|index| index.append(entries.into_iter().map(Arc::new)), op)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.record_durably(|index| index.truncate_after(last_log_id), &Record::TruncateAfter(last_log_id)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Losing a purge only resurrects entries a snapshot already covers: no fsync.
        let frame = wal::encode(&Record::Purge(log_id))?;
        self.record(|index| index.purge(log_id), WriteOp::Append { frame, entries: 0, waiter: Waiter::Nobody })?;
        self.maybe_compact()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(index: u64) -> LogId {
        LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 }, index)
    }

    /// Found by `raft-store/tests/fuzz_decoders.rs`: a WAL whose checksummed records held a
    /// `Purge` or `TruncateAfter` at index `u64::MAX` made replay panic ("attempt to add with
    /// overflow") in debug builds and, in release builds, purge nothing instead of everything.
    #[test]
    fn purge_and_truncation_at_the_last_possible_index_do_not_overflow() {
        let entry = |index| Entry { log_id: log_id(index), payload: openraft::EntryPayload::Blank };
        let mut index = LogIndex::default();
        index.apply(Record::Entries(vec![entry(1), entry(2)]));
        index.apply(Record::TruncateAfter(Some(log_id(u64::MAX))));
        assert_eq!(index.entries.len(), 2, "nothing follows the last index: nothing is truncated");
        index.apply(Record::Purge(log_id(u64::MAX)));
        assert!(index.entries.is_empty(), "everything up to the last index is purged");
        assert_eq!(index.last_log_id(), Some(log_id(u64::MAX)));
    }
}
