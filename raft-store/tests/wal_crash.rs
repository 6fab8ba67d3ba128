//! Crash tests of the log store on real files: SIGKILL under load, torn tails at every kind of
//! offset, damage in the middle, votes across a crash, and compaction.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Process, Stdio};

use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{Entry, EntryPayload, LogId};
use raft_store::job_table::{Command, NewJob};
use raft_store::log_store::{LogStore, LogStoreOptions, WAL_FILE};
use raft_store::type_config::{Entry as TandemEntry, Vote};
use raft_store::wal::{SECTOR_LEN, WalError};
use raft_store::{Digest, TypeConfig};
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

const CHILD_ENV: &str = "TANDEM_WAL_CRASH_CHILD_DIR";

fn log_id(term: u64, index: u64) -> raft_store::type_config::LogId {
    LogId::new(openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 }, index)
}

/// An entry whose payload identifies its index, so a recovered entry can be checked.
fn entry(term: u64, index: u64) -> TandemEntry {
    let mut digest = [0u8; 64];
    digest[..8].copy_from_slice(&index.to_le_bytes());
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::Enqueue {
            jobs: vec![NewJob {
                digest: Digest(digest),
                iterations: index + 1,
                enqueued_at_ms: index,
                idempotency_key: None,
                reuse: false,
            }],
        }),
    }
}

fn assert_is_original(entry: &TandemEntry, term: u64) {
    let index = entry.log_id.index;
    assert_eq!(entry.log_id, log_id(term, index));
    assert_eq!(entry.payload, entry_payload(term, index), "entry {index} payload differs");
}

fn entry_payload(term: u64, index: u64) -> EntryPayload<Command, u64, raft_store::NodeInfo> {
    entry(term, index).payload
}

fn open(dir: &Path) -> Result<LogStore, WalError> {
    LogStore::open(dir, LogStoreOptions::default()).map(|(store, _)| store)
}

async fn append_durably(store: &mut LogStore, entries: Vec<TandemEntry>) {
    let (tx, rx) = TypeConfig::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await.expect("append");
    rx.await.expect("callback").expect("fsync");
}

async fn all_entries(store: &mut LogStore) -> Vec<TandemEntry> {
    store.try_get_log_entries(..).await.expect("read")
}

/// The child half of the SIGKILL test: append as fast as possible, pipelined like openraft does,
/// and print each index once its callback has fired. Each vote is announced ("voting T") before
/// it is saved and reported ("vote T") once durable, so whatever the parent reads, the durable
/// vote lies between the last reported and the last announced. Runs only as the parent's child
/// process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of sigkill_while_appending_loses_no_acknowledged_entry"]
async fn crash_child_appender() {
    let dir = std::env::var(CHILD_ENV).expect("started by the parent test with the data dir");
    let mut store = open(Path::new(&dir)).expect("open");
    let (acks_tx, mut acks_rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        use std::io::Write;
        let mut out = std::io::stdout();
        while let Some((kind, value, rx)) = acks_rx.recv().await {
            let rx: tokio::sync::oneshot::Receiver<std::io::Result<()>> = rx;
            rx.await.expect("callback").expect("fsync");
            writeln!(out, "{kind} {value}").expect("stdout");
            out.flush().expect("stdout");
        }
    });
    let mut index = 0;
    for term in 1u64.. {
        // A vote, durable before save_vote returns, then a burst of appends in its term. It is
        // announced first, on this thread, so no vote reaches the disk before the parent can
        // know of it.
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "voting {term}").expect("stdout");
            out.flush().expect("stdout");
        }
        store.save_vote(&Vote::new_committed(term, 1)).await.expect("vote");
        let (tx, rx) = tokio::sync::oneshot::channel();
        tx.send(Ok(())).expect("fresh channel");
        acks_tx.send(("vote", term, rx)).expect("printer alive");
        for _ in 0..50 {
            let batch: Vec<_> = (index..index + 8).map(|i| entry(1, i)).collect();
            index += 8;
            let (tx, rx) = TypeConfig::oneshot();
            store.append(batch, IOFlushed::signal(tx)).await.expect("append");
            acks_tx.send(("acked", index - 1, rx)).expect("printer alive");
        }
        tokio::task::yield_now().await;
    }
    drop(printer);
}

#[test]
fn sigkill_while_appending_loses_no_acknowledged_entry() {
    for round in 0..3 {
        let dir = TempDir::new().expect("temp dir");
        let mut child = Process::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "crash_child_appender", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut acked = None;
        // The last vote the child reported durable, and the last it announced it would save.
        let (mut voted, mut announced) = (0, 0);
        let mut read = |line: std::io::Result<String>| {
            let line = line.expect("child output");
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next().and_then(|v| v.parse::<u64>().ok())) {
                (Some("acked"), Some(index)) => acked = Some(index),
                (Some("vote"), Some(term)) => voted = term,
                (Some("voting"), Some(term)) => announced = term,
                _ => {}
            }
            acked
        };
        let kill_after = 2_000 + round * 3_000;
        for line in lines.by_ref() {
            if read(line).is_some_and(|index| index >= kill_after) {
                break;
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        // Everything the child printed before it died: a vote on disk was announced first.
        lines.for_each(|line| {
            read(line);
        });
        let acked = acked.expect("child acknowledged appends before the kill");

        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let (mut store, recovery) = LogStore::open(dir.path(), LogStoreOptions::default()).expect("reopen");
            let entries = all_entries(&mut store).await;
            assert!(entries.len() as u64 > acked, "round {round}: acked {acked} but recovered {}", entries.len());
            for (i, entry) in entries.iter().enumerate() {
                assert_eq!(entry.log_id.index, i as u64, "round {round}: a hole at {i}");
                assert_is_original(entry, 1);
            }
            let vote = store.read_vote().await.expect("vote").expect("a vote was saved");
            assert!(vote >= Vote::new_committed(voted, 1), "round {round}: vote went back");
            assert!(
                vote <= Vote::new_committed(announced, 1),
                "round {round}: vote {vote} was never announced (last announced {announced})"
            );
            eprintln!(
                "round {round}: acked {acked}, recovered {}, torn tail {:?}",
                entries.len(),
                recovery.scan.torn_tail.map(|t| t.dropped_bytes)
            );
        });
    }
}

/// Write a log with appends, votes, a truncation and a purge; return its bytes.
async fn build_history(dir: &Path) -> Vec<u8> {
    let mut store = open(dir).expect("open");
    store.save_vote(&Vote::new_committed(1, 1)).await.expect("vote");
    for start in (0..200).step_by(10) {
        append_durably(&mut store, (start..start + 10).map(|i| entry(1, i)).collect()).await;
    }
    store.truncate_after(Some(log_id(1, 149))).await.expect("truncate");
    store.save_vote(&Vote::new_committed(2, 1)).await.expect("vote");
    for start in (150..300).step_by(10) {
        append_durably(&mut store, (start..start + 10).map(|i| entry(2, i)).collect()).await;
    }
    store.purge(log_id(1, 49)).await.expect("purge");
    store.save_committed(Some(log_id(2, 290))).await.expect("committed");
    append_durably(&mut store, vec![entry(2, 300)]).await;
    drop(store);
    std::fs::read(dir.join(WAL_FILE)).expect("read wal")
}

/// The bytes of a log file up to its last record, without the preallocated zeros after it.
fn records_of(file: &[u8]) -> &[u8] {
    &file[..file.iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_at_random_offsets_recovers_a_valid_prefix() {
    let origin = TempDir::new().expect("temp dir");
    let file = build_history(origin.path()).await;
    let spans = raft_store::wal::batch_spans(&file);
    let bytes = &file[..spans.last().expect("batches").1];
    assert_eq!(bytes, records_of(&file), "the batches are everything before the zeros");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a4d3e);
    let mut offsets: Vec<usize> = (0..60).map(|_| rng.random_range(0..bytes.len())).collect();
    offsets.extend([0, 1, 7, 8, 9, bytes.len() - 1]);
    for (i, cut) in offsets.into_iter().enumerate() {
        let dir = TempDir::new().expect("temp dir");
        // Half the cuts end the file there (it grew with the write); half leave the zeros of
        // preallocated space after the torn bytes (there is none before the header is whole:
        // the header is written and renamed into place before any record). A disk persists
        // whole sectors: the zeros start at the sector holding the cut, or at its batch's start
        // if that is later (the sector's bytes before it were written and fsynced before).
        let mut torn = bytes[..cut].to_vec();
        if i % 2 == 1 && cut >= raft_store::wal::MAGIC.len() {
            let batch_start = spans.iter().map(|&(start, _)| start).filter(|&start| start <= cut).max();
            let zeros_from = (cut - cut % SECTOR_LEN).max(batch_start.unwrap_or(cut));
            torn.truncate(zeros_from);
            torn.resize(file.len(), 0);
        }
        std::fs::write(dir.path().join(WAL_FILE), &torn).expect("write");
        let (mut store, recovery) = LogStore::open(dir.path(), LogStoreOptions::default())
            .unwrap_or_else(|e| panic!("cut at {cut} must recover: {e}"));
        assert!(recovery.scan.valid_len <= cut as u64);
        let entries = all_entries(&mut store).await;
        // A prefix of the history: contiguous, each entry as written in its term.
        for pair in entries.windows(2) {
            assert_eq!(pair[1].log_id.index, pair[0].log_id.index + 1, "cut at {cut}: hole");
        }
        for entry in &entries {
            let term = if entry.log_id.index >= 150 && entry.log_id.leader_id.term == 2 { 2 } else { 1 };
            assert_is_original(entry, term);
        }
        // The recovered log takes new appends, and they survive a reopen.
        let next = entries.last().map_or(0, |e| e.log_id.index + 1);
        append_durably(&mut store, vec![entry(3, next)]).await;
        drop(store);
        let mut store = open(dir.path()).expect("reopen after append");
        let again = all_entries(&mut store).await;
        assert_eq!(again.len(), entries.len() + 1, "cut at {cut}");
        assert_eq!(again.last().expect("appended").log_id, log_id(3, next));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_history_replays_to_the_same_state() {
    let dir = TempDir::new().expect("temp dir");
    build_history(dir.path()).await;
    let mut store = open(dir.path()).expect("open");
    let state = store.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 49)));
    assert_eq!(state.last_log_id, Some(log_id(2, 300)));
    assert_eq!(store.read_committed().await.expect("committed"), Some(log_id(2, 290)));
    assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new_committed(2, 1)));
    let entries = all_entries(&mut store).await;
    assert_eq!(entries.first().expect("entries").log_id.index, 50);
    assert!(entries.iter().all(|e| e.log_id.leader_id.term == if e.log_id.index < 150 { 1 } else { 2 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_middle_is_refused_with_file_and_offset() {
    let dir = TempDir::new().expect("temp dir");
    let bytes = build_history(dir.path()).await;
    let mut damaged = bytes.clone();
    let middle = records_of(&bytes).len() / 2;
    damaged[middle] ^= 0x01;
    std::fs::write(dir.path().join(WAL_FILE), &damaged).expect("write");
    match LogStore::open(dir.path(), LogStoreOptions::default()) {
        Err(WalError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, dir.path().join(WAL_FILE));
            assert!(offset as usize <= middle, "offset {offset} must be at or before the flipped byte {middle}");
            let message = WalError::Corrupt { path, offset, reason: String::new() }.to_string();
            assert!(message.contains("refusing to start") && message.contains(&offset.to_string()));
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("a damaged log must not open"),
    }
    // Nothing was changed: the damaged file is left for the operator.
    assert_eq!(std::fs::read(dir.path().join(WAL_FILE)).expect("read"), damaged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_without_its_log_is_refused_rather_than_started_empty() {
    let dir = TempDir::new().expect("temp dir");
    build_history(dir.path()).await;
    // A hand-made restore: the snapshot came back, the log did not.
    std::fs::write(dir.path().join(raft_store::state_machine::SNAPSHOT_FILE), b"a snapshot").expect("write");
    std::fs::remove_file(dir.path().join(WAL_FILE)).expect("remove the log");
    match open(dir.path()) {
        Err(error @ WalError::Inconsistent { .. }) => {
            let message = error.to_string();
            assert!(message.contains("the log is missing") && message.contains("refusing to start"), "{message}");
        }
        Err(other) => panic!("expected Inconsistent, got {other}"),
        Ok(_) => panic!("a voter must not start with an empty log beside its snapshot"),
    }
    assert!(!dir.path().join(WAL_FILE).exists(), "nothing was created");
    // A new data directory still opens, and one without a snapshot starts empty as before.
    open(&dir.path().join("new").join("voter")).expect("a new, nested data directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_header_only_log_beside_a_snapshot_is_refused() {
    for (what, log) in [("empty", Vec::new()), ("header only", raft_store::wal::MAGIC.to_vec())] {
        let dir = TempDir::new().expect("temp dir");
        build_history(dir.path()).await;
        std::fs::write(dir.path().join(raft_store::state_machine::SNAPSHOT_FILE), b"a snapshot").expect("write");
        std::fs::write(dir.path().join(WAL_FILE), &log).expect("replace the log");
        match open(dir.path()) {
            Err(error @ WalError::Inconsistent { .. }) => {
                let message = error.to_string();
                assert!(
                    message.contains("holds no record") && message.contains("refusing to start"),
                    "{what}: {message}"
                );
            }
            Err(other) => panic!("{what}: expected Inconsistent, got {other}"),
            Ok(_) => panic!("{what}: a voter must not start with an empty log beside its snapshot"),
        }
        assert_eq!(std::fs::read(dir.path().join(WAL_FILE)).expect("read"), log, "{what}: the file was left as it was");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_whose_entries_skip_an_index_is_refused_with_the_offset() {
    // Every record checksummed and decodable, but entry 5 follows entry 3: no crash does that.
    let dir = TempDir::new().expect("temp dir");
    let first = raft_store::wal::encode(&raft_store::wal::Record::Entries(vec![entry(1, 1), entry(1, 2), entry(1, 3)]));
    let first = first.expect("encode");
    let mut records = first.clone();
    records.extend(raft_store::wal::encode(&raft_store::wal::Record::Entries(vec![entry(1, 5)])).expect("encode"));
    let mut file = raft_store::wal::MAGIC.to_vec();
    // Where the second record starts: after the header, the batch's frame and the first record.
    let second = file.len() + raft_store::wal::BATCH_HEADER_LEN + first.len();
    file.extend(raft_store::wal::batch(&records).expect("batch"));
    std::fs::write(dir.path().join(WAL_FILE), &file).expect("write");
    match open(dir.path()) {
        Err(WalError::Inconsistent { offset, reason, .. }) => {
            assert!(reason.contains("entry 5 appended where 4 was due (a gap)"), "{reason}");
            assert_eq!(offset as usize, second, "the offending record's offset");
        }
        Err(other) => panic!("expected Inconsistent, got {other}"),
        Ok(_) => panic!("a log with a gap must not open"),
    }
    // The same with an overlap: entry 2 again after entry 3.
    let mut records = Vec::new();
    for entries in [vec![entry(1, 1), entry(1, 2), entry(1, 3)], vec![entry(1, 2)]] {
        records.extend(raft_store::wal::encode(&raft_store::wal::Record::Entries(entries)).expect("encode"));
    }
    let mut file = raft_store::wal::MAGIC.to_vec();
    file.extend(raft_store::wal::batch(&records).expect("batch"));
    std::fs::write(dir.path().join(WAL_FILE), &file).expect("write");
    match open(dir.path()) {
        Err(WalError::Inconsistent { reason, .. }) => assert!(reason.contains("(an overlap)"), "{reason}"),
        other => panic!("expected Inconsistent, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_cannot_open_the_same_directory() {
    let dir = TempDir::new().expect("temp dir");
    let _first = open(dir.path()).expect("open");
    assert!(matches!(open(dir.path()), Err(WalError::Locked { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_bounds_the_file_and_keeps_the_state() {
    let dir = TempDir::new().expect("temp dir");
    let options = LogStoreOptions { compact_after_bytes: 64 << 10, preallocate_bytes: 4 << 10 };
    let (mut store, _) = LogStore::open(dir.path(), options).expect("open");
    store.save_vote(&Vote::new_committed(1, 1)).await.expect("vote");
    let mut largest = 0;
    for start in (0..20_000u64).step_by(100) {
        append_durably(&mut store, (start..start + 100).map(|i| entry(1, i)).collect()).await;
        if start >= 1_000 {
            store.purge(log_id(1, start - 1_000)).await.expect("purge");
        }
        largest = largest.max(std::fs::metadata(dir.path().join(WAL_FILE)).expect("stat").len());
    }
    let stats = store.stats();
    assert!(stats.compactions > 0, "no compaction happened");
    // Without compaction the file would hold every entry ever written.
    assert!(stats.bytes_written > 4 * largest, "file reached {largest} of {} written", stats.bytes_written);
    let before = store.get_log_state().await.expect("state");
    let entries_before = all_entries(&mut store).await;
    drop(store);
    let mut store = open(dir.path()).expect("reopen");
    assert_eq!(store.get_log_state().await.expect("state"), before);
    assert_eq!(all_entries(&mut store).await, entries_before);
    assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new_committed(1, 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_overwrite_preallocated_zeros_and_a_reopen_continues_after_the_last_one() {
    let dir = TempDir::new().expect("temp dir");
    let wal = dir.path().join(WAL_FILE);
    let options = LogStoreOptions { preallocate_bytes: 64 << 10, ..LogStoreOptions::default() };
    let (mut store, _) = LogStore::open(dir.path(), options).expect("open");
    append_durably(&mut store, (0..10).map(|i| entry(1, i)).collect()).await;
    // The writer extends the zeros just after it has released the append's waiters.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (records, allocated) = loop {
        let records = records_of(&std::fs::read(&wal).expect("read")).len() as u64;
        let allocated = std::fs::metadata(&wal).expect("stat").len();
        if allocated >= records + (32 << 10) {
            break (records, allocated);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{allocated} bytes for {records} of records: no space kept ahead"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    drop(store);

    let (mut store, recovery) = LogStore::open(dir.path(), options).expect("reopen");
    assert_eq!(recovery.scan.torn_tail, None, "preallocated zeros are the clean end, not damage");
    assert!(recovery.scan.valid_len >= records && recovery.scan.valid_len < allocated);
    append_durably(&mut store, (10..20).map(|i| entry(1, i)).collect()).await;
    // The new records went over the zeros, right after the old ones: the file did not grow.
    assert_eq!(std::fs::metadata(&wal).expect("stat").len(), allocated);
    drop(store);

    let mut store = open(dir.path()).expect("reopen again");
    let entries = all_entries(&mut store).await;
    assert_eq!(entries.len(), 20);
    for entry in &entries {
        assert_is_original(entry, 1);
    }
}

/// A log file of `bytes` records' worth of entries in batches of 100 (a batch of `last_batch`
/// entries at the end), with a mebibyte of preallocated zeros after them; and its batches' spans.
fn big_log(bytes: usize, last_batch: u64) -> (Vec<u8>, Vec<(usize, usize)>) {
    use raft_store::wal::{MAGIC, Record, batch, encode};
    let mut file = MAGIC.to_vec();
    let mut index = 1;
    let mut add = |file: &mut Vec<u8>, count: u64| {
        let entries = (index..index + count).map(|i| entry(1, i)).collect();
        index += count;
        file.extend(batch(&encode(&Record::Entries(entries)).expect("encode")).expect("batch"));
    };
    add(&mut file, 1);
    while file.len() < bytes {
        add(&mut file, 100);
    }
    add(&mut file, last_batch);
    let spans = raft_store::wal::batch_spans(&file);
    assert_eq!(spans.last().map(|&(_, end)| end), Some(file.len()));
    file.resize(file.len() + (1 << 20), 0);
    (file, spans)
}

/// Open a log whose file holds `file`; how long the open took.
fn open_timed(file: &[u8]) -> (Result<(LogStore, raft_store::log_store::Recovery), WalError>, TempDir) {
    let dir = TempDir::new().expect("temp dir");
    std::fs::write(dir.path().join(WAL_FILE), file).expect("write");
    let started = std::time::Instant::now();
    let result = LogStore::open(dir.path(), LogStoreOptions::default());
    eprintln!(
        "opened {} MiB in {:?}: {:?}",
        file.len() >> 20,
        started.elapsed(),
        result.as_ref().map(|(_, r)| &r.scan)
    );
    (result, dir)
}

/// Recovery at the size the default compaction threshold lets a log reach (64 MiB): damage that
/// a crash explains is trimmed, damage it does not is refused, and deciding which reads the file
/// a bounded number of times, whatever the damage. (The times are printed, not asserted: the
/// test checks the verdicts; `cargo test --release -p raft-store --test wal_crash 64_mib --
/// --nocapture` shows them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_log_is_trimmed_or_refused_as_its_damage_says() {
    let (file, spans) = big_log(64 << 20, 20_000);
    let (first, last) = (spans[0], *spans.last().expect("batches"));
    let kept_entries = |recovery: &raft_store::log_store::Recovery| recovery.last_log_id.map(|id| id.index);
    let entries_before_last = {
        let (store, _dir) = open_timed(&file[..last.0]);
        store.expect("the prefix opens").1.last_log_id.map(|id| id.index)
    };

    // One flipped byte in the first batch's header: refused at once, naming the offset.
    let mut damaged = file.clone();
    damaged[first.0 + 2] ^= 0x04;
    match open_timed(&damaged).0 {
        Err(WalError::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset as usize, first.0);
            assert!(reason.contains("header checksum mismatch"), "{reason}");
        }
        other => panic!("expected corruption, got {:?}", other.map(|(_, r)| r.scan)),
    }

    // The last batch torn: its sectors after the first never reached the disk.
    let mut torn = file.clone();
    let written = last.0 - last.0 % SECTOR_LEN + SECTOR_LEN;
    torn[written..last.1].fill(0);
    let (store, _dir) = open_timed(&torn);
    let recovery = store.expect("a torn last batch is trimmed").1;
    assert_eq!(recovery.scan.torn_tail.as_ref().map(|t| t.offset), Some(last.0 as u64));
    assert_eq!(kept_entries(&recovery), entries_before_last);

    // The last batch's header sector never reached the disk, its later sectors did: the scan
    // looks for a whole batch after it (there is none) in one pass.
    let mut headless = file.clone();
    headless[last.0..last.0 - last.0 % SECTOR_LEN + SECTOR_LEN].fill(0);
    let (store, _dir) = open_timed(&headless);
    let recovery = store.expect("a torn header is trimmed").1;
    assert_eq!(recovery.scan.torn_tail.as_ref().map(|t| t.offset), Some(last.0 as u64));

    // A flipped byte inside the last batch, fsynced whole (every sector of it holds data) and
    // followed by nothing but the preallocated zeros: bit rot, not a crash. Refused.
    let whole_sectors = (last.0..last.1)
        .step_by(SECTOR_LEN)
        .map(|at| at - at % SECTOR_LEN)
        .all(|sector| file[sector.max(last.0)..(sector + SECTOR_LEN).min(last.1)].iter().any(|&b| b != 0));
    assert!(whole_sectors, "every sector of the last batch holds data");
    let mut rotten = file.clone();
    rotten[(last.0 + last.1) / 2] ^= 0x20;
    match open_timed(&rotten).0 {
        Err(WalError::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset as usize, last.0);
            assert!(reason.contains("every sector of it was written"), "{reason}");
        }
        other => panic!("expected corruption, got {:?}", other.map(|(_, r)| r.scan)),
    }
}

/// A log written by the previous format (`TNDMWAL2`, no checksum on batch headers) opens with
/// the same state and is rewritten in the current format before anything is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_in_the_previous_format_is_read_and_rewritten() {
    use raft_store::wal::{MAGIC, Record, encode, legacy};
    let dir = TempDir::new().expect("temp dir");
    let vote = Vote::new_committed(3, 1);
    let old = legacy::legacy_file(&[
        encode(&Record::Vote(vote)).expect("encode"),
        encode(&Record::Entries((1..=10).map(|i| entry(1, i)).collect())).expect("encode"),
        [
            encode(&Record::Entries((11..=20).map(|i| entry(1, i)).collect())).expect("encode"),
            encode(&Record::Purge(log_id(1, 4))).expect("encode"),
        ]
        .concat(),
    ]);
    assert!(old.starts_with(legacy::LEGACY_MAGIC));
    std::fs::write(dir.path().join(WAL_FILE), &old).expect("write");
    let (mut store, recovery) = LogStore::open(dir.path(), LogStoreOptions::default()).expect("open");
    assert!(recovery.scan.legacy);
    assert_eq!((recovery.vote, recovery.last_log_id), (Some(vote), Some(log_id(1, 20))));
    let entries = all_entries(&mut store).await;
    assert_eq!(entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), (5..=20).collect::<Vec<_>>());
    assert!(std::fs::read(dir.path().join(WAL_FILE)).expect("read").starts_with(MAGIC), "rewritten");
    append_durably(&mut store, vec![entry(2, 21)]).await;
    drop(store);
    let (mut store, recovery) = LogStore::open(dir.path(), LogStoreOptions::default()).expect("reopen");
    assert!(!recovery.scan.legacy && recovery.scan.torn_tail.is_none());
    assert_eq!(recovery.vote, Some(vote));
    assert_eq!(store.get_log_state().await.expect("state").last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(all_entries(&mut store).await.len(), 17);
}
