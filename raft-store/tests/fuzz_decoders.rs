//! Bounded-time fuzzing of raft-store's decoders: the WAL (its scan and replay, and opening a
//! log whose file was damaged), the snapshot file and the table inside it, and the Raft messages
//! a voter decodes from its peers (openraft's requests and responses, `/raft/propose`,
//! `/raft/failover`). Each must return an error or a value for any input: never panic, never
//! hang, never allocate in proportion to a length field instead of its input.
//!
//! Inputs are mostly structure-aware mutations of real encodings: a WAL file written by the real
//! log store (its batches and records re-framed with valid checksums after a record's payload
//! was mutated, so that the mutation reaches the MessagePack decoder and the replay, or framed
//! badly on purpose), WAL records built with extreme log ids, real snapshot files, and real
//! messages; then bit flips, truncation, splices, length fields and MessagePack length headers
//! rewritten to huge values (0xFFFFFFFF), and deep nesting. A few cases are plain random bytes.
//!
//! Why `arbtest`: it runs inside `cargo test` on stable (no nightly, no sanitizers, no
//! separate fuzz crate), it is small (one file over `arbitrary`, whose `Unstructured` drives the
//! mutations), and a failing case prints a seed that reproduces it alone, and can minimize it.
//! Its own search seeds come from the OS, so the harness (`fuzz_support`) feeds it a fixed
//! sequence of seeds instead: every run tries the same cases, in the same order.
//!
//! Running:
//! - By default each target runs for about 2.5 s of a debug build, on the same seeds.
//! - `FUZZ_BUDGET_MS=60000` runs each target for a minute; `FUZZ_SEED=<n or 0xhex>` tries
//!   another sequence of cases (`FUZZ_SEED=$RANDOM` for a new one each run).
//! - A failure prints `arbtest failed! Seed: 0x...` and the input in hex; `ARBTEST_SEED=0x...
//!   cargo test -p raft-store --test fuzz_decoders <target>` runs that one case again.
//!
//! Allocation is measured by a counting global allocator on the thread that decodes; the bounds
//! are in `fuzz_support::assert_bounded` (a single request at most `8 × input + 1 MiB + 64 KiB`:
//! serde's cautious preallocation is the only constant term).

mod fuzz_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;

use arbtest::arbitrary::{self, Unstructured};
use axum::extract::FromRequest;
use fuzz_support::{
    BUDGET_MS, CASE_LIMIT, Checker, Watchdog, assert_bounded, edgy_u64, encode_all, fuzz, fuzz_messages, measure,
    mutate,
};
use openraft::impls::leader_id_adv::LeaderId;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, VoteRequest, VoteResponse};
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use openraft::{Entry, EntryPayload, Membership};
use raft_store::job_table::{Checkpoint, Command, JobRequest, JobResult, LeaseBudget, Limits, NewJob, Proposal};
use raft_store::job_table::{JoinTerms, ScalerCommand, WorkerState};
use raft_store::log_store::{LogStore, LogStoreOptions, WAL_FILE, replay_wal_bytes};
use raft_store::network::MsgPack;
use raft_store::state_machine::{
    SNAPSHOT_FILE, StateMachineStore, decode_snapshot_file_bytes, decode_table, encode_table,
};
use raft_store::type_config::{Entry as TandemEntry, LogId, SnapshotMeta, StoredMembership, Vote};
use raft_store::wal::{self, Record};
use raft_store::{Digest, JobTable, NodeInfo, Role, TypeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tempfile::TempDir;

#[global_allocator]
static ALLOC: fuzz_support::CountingAlloc = fuzz_support::CountingAlloc;

// ---------------------------------------------------------------------------------------------
// Real values to encode.

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id: 1 }, index)
}

fn membership() -> Membership<u64, NodeInfo> {
    let nodes = BTreeMap::from([
        (1, NodeInfo::at(Role::Coordinator, "127.0.0.1:7001")),
        (2, NodeInfo::at(Role::Coordinator, "127.0.0.1:7002")),
        (3, NodeInfo::at(Role::Witness, "127.0.0.1:7003")),
    ]);
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes).expect("a membership")
}

fn digest(seed: u8) -> Digest {
    Digest(std::array::from_fn(|i| seed.wrapping_add(i as u8)))
}

/// One command of every kind, as a leader would commit them.
fn sample_commands() -> Vec<Command> {
    vec![
        Command::RegisterWorker {
            name: "host-a/1234".into(),
            cores: 4,
            instance_id: Some("i-0abc".into()),
            now_ms: 10,
            witness: false,
            launch_token: Some("launch-1".into()),
        },
        Command::Enqueue {
            jobs: (0..3u8)
                .map(|i| NewJob {
                    digest: digest(i),
                    iterations: 1000 + u64::from(i),
                    enqueued_at_ms: 20,
                    idempotency_key: (i == 1).then(|| "key-1".to_string()),
                    reuse: false,
                })
                .collect(),
        },
        Command::Lease {
            worker: 1,
            max_jobs: 2,
            now_ms: 30,
            deadline_ms: 3030,
            budget: Some(LeaseBudget { free_cores: 2, iterations: 5000 }),
        },
        Command::Heartbeat {
            worker: 1,
            now_ms: 40,
            deadline_ms: 3040,
            checkpoints: vec![Checkpoint { job: 1, done: 10, digest: digest(9) }],
            hashes_per_s: 123_456,
        },
        Command::Complete { worker: 1, now_ms: 50, results: vec![JobResult { job: 1, result: digest(7) }] },
        Command::Release { worker: 1, checkpoints: vec![Checkpoint { job: 2, done: 5, digest: digest(5) }] },
        Command::ExpireLeases { now_ms: 60 },
        Command::UpdateWorker { worker: 1, state: WorkerState::Draining, now_ms: 70 },
        Command::Scaler(ScalerCommand::LaunchRequested {
            token: "launch-2".into(),
            at_ms: 80,
            why: "load".into(),
            join: Some(JoinTerms { secret_sha256: "ab".repeat(32), valid_ms: 600_000 }),
        }),
        Command::Scaler(ScalerCommand::ReplaceWitness {
            token: "w-1".into(),
            replaces: 3,
            node_id: 4,
            at_ms: 90,
            why: "silent".into(),
            join: None,
        }),
        Command::Scaler(ScalerCommand::JoinRenewed {
            token: "launch-2".into(),
            join: JoinTerms { secret_sha256: "cd".repeat(32), valid_ms: 600_000 },
            at_ms: 91,
        }),
        Command::UseJoin { launch_token: "launch-2".into(), secret_sha256: "cd".repeat(32), now_ms: 92 },
        Command::SetLimits(Limits { completed_retention: 100, max_queued: 1000, max_lease_batch: 16 }),
        Command::RemoveWorker { worker: 1, last_seen_ms: Some(95) },
    ]
}

/// Entries 1..: a membership, a blank, then one of every command, in `term`.
fn sample_entries(term: u64, first: u64) -> Vec<TandemEntry> {
    let mut payloads = vec![EntryPayload::Membership(membership()), EntryPayload::Blank];
    payloads.extend(sample_commands().into_iter().map(EntryPayload::Normal));
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| Entry { log_id: log_id(term, first + i as u64), payload })
        .collect()
}

fn rich_table() -> JobTable {
    let mut table = JobTable::default();
    for command in sample_commands() {
        table.apply(&command);
    }
    // Leave jobs queued, leased and completed, and a worker registered.
    table.apply(&Command::RegisterWorker {
        name: "host-b/1".into(),
        cores: 2,
        instance_id: None,
        now_ms: 100,
        witness: true,
        launch_token: None,
    });
    let jobs = (0..4u8)
        .map(|i| NewJob {
            digest: digest(40 + i),
            iterations: 10,
            enqueued_at_ms: 110,
            idempotency_key: Some(format!("k{i}")),
            reuse: false,
        })
        .collect();
    table.apply(&Command::Enqueue { jobs });
    table.apply(&Command::Lease { worker: 2, max_jobs: 2, now_ms: 120, deadline_ms: 5000, budget: None });
    table.apply(&Command::Complete { worker: 2, now_ms: 130, results: vec![JobResult { job: 4, result: digest(1) }] });
    table.check_invariants().expect("a consistent table");
    table
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// A data directory for one case: on tmpfs when there is one (fsync there costs nothing).
fn scratch_dir() -> TempDir {
    if Path::new("/dev/shm").is_dir()
        && let Ok(dir) = TempDir::new_in("/dev/shm")
    {
        return dir;
    }
    TempDir::new().expect("temp dir")
}

async fn append_durably(store: &mut LogStore, entries: Vec<TandemEntry>) {
    let (tx, rx) = TypeConfig::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await.expect("append");
    rx.await.expect("callback").expect("fsync");
}

/// A WAL file written by the real log store: votes, entries of every kind, a commit mark, a
/// truncation, a purge; followed by `preallocate_bytes` of zeros at most.
fn real_wal(preallocate_bytes: u64) -> Vec<u8> {
    let dir = scratch_dir();
    runtime().block_on(async {
        let options = LogStoreOptions { compact_after_bytes: u64::MAX, preallocate_bytes };
        let (mut store, _) = LogStore::open(dir.path(), options).expect("open");
        store.save_vote(&Vote::new(1, 1)).await.expect("vote");
        store.save_vote(&Vote::new_committed(1, 1)).await.expect("vote");
        append_durably(&mut store, sample_entries(1, 1)).await;
        store.save_committed(Some(log_id(1, 5))).await.expect("committed");
        store.truncate_after(Some(log_id(1, 10))).await.expect("truncate");
        store.save_vote(&Vote::new_committed(2, 2)).await.expect("vote");
        append_durably(&mut store, sample_entries(2, 11)).await;
        store.purge(log_id(1, 3)).await.expect("purge");
        store.save_committed(Some(log_id(2, 12))).await.expect("committed");
        // A durable write after the two that nobody waits for, so that they are on disk too.
        store.save_vote(&Vote::new_committed(2, 2)).await.expect("vote");
    });
    std::fs::read(dir.path().join(WAL_FILE)).expect("read the WAL")
}

fn snapshot_meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: Some(log_id(2, index)),
        last_membership: StoredMembership::new(Some(log_id(1, 1)), membership()),
    }
}

/// A snapshot file written by the real state machine store, of `table`.
fn real_snapshot_file(table: &JobTable) -> Vec<u8> {
    let dir = scratch_dir();
    runtime().block_on(async {
        let mut store = StateMachineStore::open(dir.path()).expect("open");
        let meta = snapshot_meta(40);
        let data = store.snapshot_from_bytes(&meta, &encode_table(table).expect("encode")).expect("write");
        store.install_snapshot(&meta, data).await.expect("install");
    });
    std::fs::read(dir.path().join(SNAPSHOT_FILE)).expect("read the snapshot")
}

// ---------------------------------------------------------------------------------------------
// The WAL.

/// A WAL file as batches of record payloads (the corpus files are valid: every frame checks).
fn parse_wal(file: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let record_at = |buf: &[u8], pos: usize| -> Option<(usize, usize)> {
        let header = buf.get(pos..pos + wal::RECORD_HEADER_LEN)?;
        let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
        let end = pos + wal::RECORD_HEADER_LEN + len;
        (len > 0 && end <= buf.len()).then_some((pos + wal::RECORD_HEADER_LEN, end))
    };
    let mut batches = Vec::new();
    for (start, end) in wal::batch_spans(file) {
        let mut records = Vec::new();
        let mut at = start + wal::BATCH_HEADER_LEN;
        while let Some((payload_start, payload_end)) = record_at(&file[..end], at) {
            records.push(file[payload_start..payload_end].to_vec());
            at = payload_end;
        }
        batches.push(records);
    }
    batches
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend(crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A WAL file of these batches, every frame valid; and where each frame header is.
fn build_wal(batches: &[Vec<Vec<u8>>]) -> (Vec<u8>, Vec<usize>) {
    let mut file = wal::MAGIC.to_vec();
    let mut headers = Vec::new();
    for batch in batches {
        let batch_at = file.len();
        headers.push(batch_at);
        let mut records = Vec::new();
        for record in batch {
            headers.push(batch_at + wal::BATCH_HEADER_LEN + records.len());
            records.extend(frame(record));
        }
        file.extend(wal::batch(&records).expect("batch"));
    }
    (file, headers)
}

/// [`build_wal`] in the previous format (`TNDMWAL2`: a batch header of 8 bytes, no checksum
/// of its own).
fn build_legacy_wal(batches: &[Vec<Vec<u8>>]) -> (Vec<u8>, Vec<usize>) {
    let framed: Vec<Vec<u8>> = batches.iter().map(|batch| batch.iter().flat_map(|r| frame(r)).collect()).collect();
    let file = wal::legacy::legacy_file(&framed);
    let mut headers = Vec::new();
    let mut at = wal::legacy::LEGACY_MAGIC.len();
    for (batch, records) in batches.iter().zip(&framed) {
        headers.push(at);
        let mut record_at = at + wal::RECORD_HEADER_LEN;
        for record in batch {
            headers.push(record_at);
            record_at += wal::RECORD_HEADER_LEN + record.len();
        }
        at += wal::RECORD_HEADER_LEN + records.len();
    }
    assert_eq!(at, file.len());
    (file, headers)
}

fn edgy_log_id(u: &mut Unstructured<'_>) -> arbitrary::Result<LogId> {
    Ok(LogId::new(LeaderId { term: edgy_u64(u)?, node_id: edgy_u64(u)? }, edgy_u64(u)?))
}

/// A record with extreme log ids and votes, such as a buggy or hostile writer could frame.
fn edgy_record(u: &mut Unstructured<'_>) -> arbitrary::Result<Record> {
    let maybe_id = |u: &mut Unstructured<'_>| -> arbitrary::Result<Option<LogId>> {
        if u.arbitrary()? { Ok(Some(edgy_log_id(u)?)) } else { Ok(None) }
    };
    Ok(match u.int_in_range(0..=4)? {
        0 => {
            let commands = sample_commands();
            let count = u.int_in_range(0..=3)?;
            let mut entries = Vec::new();
            for _ in 0..count {
                let payload = match u.int_in_range(0..=2)? {
                    0 => EntryPayload::Blank,
                    1 => EntryPayload::Membership(membership()),
                    _ => EntryPayload::Normal(u.choose(&commands)?.clone()),
                };
                entries.push(Entry { log_id: edgy_log_id(u)?, payload });
            }
            Record::Entries(entries)
        }
        1 => {
            let (term, node) = (edgy_u64(u)?, edgy_u64(u)?);
            Record::Vote(if u.arbitrary()? { Vote::new_committed(term, node) } else { Vote::new(term, node) })
        }
        2 => Record::Committed(maybe_id(u)?),
        3 => Record::TruncateAfter(maybe_id(u)?),
        _ => Record::Purge(edgy_log_id(u)?),
    })
}

fn record_payload(record: &Record) -> Vec<u8> {
    wal::encode(record).expect("encode")[wal::RECORD_HEADER_LEN..].to_vec()
}

struct WalCorpus {
    files: Vec<Vec<u8>>,
    parsed: Vec<Vec<Vec<Vec<u8>>>>,
    payloads: Vec<Vec<u8>>,
}

fn wal_corpus() -> &'static WalCorpus {
    static CORPUS: OnceLock<WalCorpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let files = vec![real_wal(0), real_wal(4096)];
        let parsed: Vec<_> = files.iter().map(|file| parse_wal(file)).collect();
        for (file, batches) in files.iter().zip(&parsed) {
            assert!(batches.len() >= 4, "the corpus WAL has its batches: {}", batches.len());
            let (rebuilt, _) = build_wal(batches);
            assert!(file.starts_with(&rebuilt), "parse_wal and build_wal agree with the log store");
        }
        let payloads = parsed.iter().flatten().flatten().cloned().collect();
        WalCorpus { files, parsed, payloads }
    })
}

/// A WAL file derived from a real one: records mutated (and re-framed with valid checksums),
/// replaced by extreme ones, dropped, duplicated or reordered; then perhaps a frame header
/// rewritten, the file torn, zeros appended, a range zeroed or bytes mutated as they lie.
fn wal_case(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let corpus = wal_corpus();
    if u.ratio(1, 32)? {
        let mut file = wal::MAGIC.to_vec();
        file.extend(u.bytes(u.len().min(512))?);
        return Ok(file);
    }
    let mut batches = u.choose(&corpus.parsed)?.clone();
    for _ in 0..u.int_in_range(0..=4)? {
        if batches.is_empty() {
            batches.push(vec![record_payload(&edgy_record(u)?)]);
        }
        let b = u.choose_index(batches.len())?;
        match u.int_in_range(0..=6)? {
            0 | 1 if !batches[b].is_empty() => {
                let r = u.choose_index(batches[b].len())?;
                mutate(u, &mut batches[b][r], &corpus.payloads)?;
            }
            2 => {
                let record = record_payload(&edgy_record(u)?);
                let r = u.int_in_range(0..=batches[b].len())?;
                if u.arbitrary()? && r < batches[b].len() {
                    batches[b][r] = record;
                } else {
                    batches[b].insert(r, record);
                }
            }
            3 => {
                let at = u.int_in_range(0..=batches.len())?;
                batches.insert(at, vec![record_payload(&edgy_record(u)?)]);
            }
            4 => {
                batches.remove(b);
            }
            5 => {
                let copy = batches[b].clone();
                let at = u.int_in_range(0..=batches.len())?;
                batches.insert(at, copy);
            }
            _ => {
                let other = u.choose_index(batches.len())?;
                batches.swap(b, other);
            }
        }
    }
    // Now and then in the previous format, which a log store reads once and rewrites.
    let (mut file, headers) = if u.ratio(1, 8)? { build_legacy_wal(&batches) } else { build_wal(&batches) };
    if u.ratio(1, 3)? {
        file.extend(std::iter::repeat_n(0, u.int_in_range(0..=4096)?));
    }
    match u.int_in_range(0..=7)? {
        0 | 1 => {}
        2 if !headers.is_empty() => {
            // A frame's length rewritten: zero, huge, past the file, one off.
            let at = *u.choose(&headers)?;
            let len = match u.int_in_range(0..=5)? {
                0 => 0,
                1 => u32::MAX,
                2 => (wal::MAX_RECORD_LEN + 1) as u32,
                3 => file.len() as u32,
                _ => u32::from_le_bytes(file[at..at + 4].try_into().expect("4 bytes")).wrapping_add(1),
            };
            file[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        3 => {
            // Torn: the file ends anywhere.
            let cut = u.int_in_range(0..=file.len())?;
            file.truncate(cut);
        }
        4 if !file.is_empty() => {
            // A page that never reached the disk.
            let from = u.choose_index(file.len())?;
            let end = u.int_in_range(from..=file.len().min(from + 4096))?;
            file[from..end].fill(0);
        }
        _ => mutate(u, &mut file, &corpus.files)?,
    }
    Ok(file)
}

/// Replaying `bytes` returns an error or a recovery whose kept prefix replays to the same
/// state with no torn tail; allocation stays in proportion to the input.
fn check_wal_replay(bytes: &[u8]) {
    let (result, usage) = measure(|| replay_wal_bytes(bytes));
    assert_bounded("WAL replay", bytes.len(), usage);
    let Ok((recovery, entries)) = result else { return };
    let scan = &recovery.scan;
    let valid = scan.valid_len as usize;
    assert!(valid <= bytes.len(), "valid length {valid} past the end ({} bytes)", bytes.len());
    if let Some(torn) = &scan.torn_tail {
        assert_eq!(torn.offset, scan.valid_len, "the torn tail starts where the valid prefix ends");
        assert_eq!(torn.dropped_bytes as usize, bytes.len() - valid, "the torn tail is the rest of the file");
    } else {
        assert!(bytes[valid..].iter().all(|&b| b == 0), "only zeros follow a log without a torn tail");
    }
    let (again, again_entries) = replay_wal_bytes(&bytes[..valid]).expect("the kept prefix reads");
    assert_eq!(again.scan.torn_tail, None, "the kept prefix has no torn tail");
    assert_eq!(again.scan.records, scan.records);
    assert_eq!((again.last_log_id, again.vote, again_entries), (recovery.last_log_id, recovery.vote, entries));
}

/// Opening a log whose file holds `bytes`: an error that changed nothing, or a store with
/// what a replay of the bytes finds, that opens again the same with no torn tail.
fn check_wal_open(bytes: Vec<u8>) {
    let dir = scratch_dir();
    let path = dir.path().join(WAL_FILE);
    std::fs::write(&path, &bytes).expect("write the WAL");
    let options = LogStoreOptions { compact_after_bytes: u64::MAX, preallocate_bytes: 4096 };
    let expected = replay_wal_bytes(&bytes);
    match LogStore::open(dir.path(), options) {
        Ok((store, recovery)) => {
            let (expected, _) = expected.expect("open succeeds only where a replay does");
            assert_eq!(recovery.scan, expected.scan);
            assert_eq!((recovery.last_log_id, recovery.vote), (expected.last_log_id, expected.vote));
            drop(store);
            let (store, again) = LogStore::open(dir.path(), options).expect("a log that opened opens again");
            assert_eq!(again.scan.torn_tail, None, "the torn tail was cut the first time");
            assert!(!again.scan.legacy, "a log in the previous format was rewritten the first time");
            if !recovery.scan.legacy {
                // (A rewritten log holds the records that rebuild the state, not the same ones.)
                assert_eq!(again.scan.records, recovery.scan.records);
            }
            assert_eq!((again.last_log_id, again.vote), (recovery.last_log_id, recovery.vote));
            drop(store);
        }
        Err(error) => {
            assert!(expected.is_err(), "open failed ({error}) where a replay succeeds");
            assert_eq!(std::fs::read(&path).expect("read"), bytes, "a refused log is left as it was");
        }
    }
}

#[test]
fn fuzz_wal_replay() {
    let watchdog = Watchdog::new(CASE_LIMIT);
    fuzz("wal replay", BUDGET_MS, |u| {
        let bytes = wal_case(u)?;
        let input = bytes.clone();
        watchdog.run(&input, move || check_wal_replay(&bytes));
        Ok(())
    });
}

#[test]
fn fuzz_wal_open() {
    let watchdog = Watchdog::new(CASE_LIMIT);
    fuzz("wal open", BUDGET_MS, |u| {
        let bytes = wal_case(u)?;
        let input = bytes.clone();
        watchdog.run(&input, move || check_wal_open(bytes));
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Snapshots.

/// A snapshot file in the first format (one checksum over the MessagePack of this), which a
/// store still reads (and rewrites) when it opens.
#[derive(Serialize, serde::Deserialize)]
struct LegacySnapshotFile {
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// A first-format snapshot file with a valid header and checksum around `payload`.
fn seal_legacy_snapshot(payload: &[u8]) -> Vec<u8> {
    let mut file = b"TNDMSNP1".to_vec();
    file.extend(crc32fast::hash(payload).to_le_bytes());
    file.extend_from_slice(payload);
    file
}

/// A snapshot file as `state_machine::snapshot` documents its layout, with valid checksums
/// around the metadata's and the table's bytes.
fn seal_snapshot(meta: &[u8], table: &[u8]) -> Vec<u8> {
    let mut fields = (meta.len() as u32).to_le_bytes().to_vec();
    fields.extend((table.len() as u64).to_le_bytes());
    fields.extend(crc32fast::hash(table).to_le_bytes());
    fields.extend(meta);
    let mut file = b"TNDMSNP2".to_vec();
    file.extend(crc32fast::hash(&fields).to_le_bytes());
    file.extend(fields);
    file.extend(table);
    file
}

/// The metadata's and the table's bytes of a valid snapshot file.
fn unseal_snapshot(file: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let meta_len = u32::from_le_bytes(file[12..16].try_into().expect("4 bytes")) as usize;
    (file[28..28 + meta_len].to_vec(), file[28 + meta_len..].to_vec())
}

struct SnapshotCorpus {
    files: Vec<Vec<u8>>,
    tables: Vec<Vec<u8>>,
    metas: Vec<Vec<u8>>,
}

fn snapshot_corpus() -> &'static SnapshotCorpus {
    static CORPUS: OnceLock<SnapshotCorpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let tables = [rich_table(), JobTable::default()];
        let files: Vec<_> = tables.iter().map(real_snapshot_file).collect();
        let mut metas = Vec::new();
        for (file, table) in files.iter().zip(&tables) {
            let (meta, data) = unseal_snapshot(file);
            assert_eq!(seal_snapshot(&meta, &data), *file, "the mirror writes what the state machine writes");
            assert_eq!(decode_snapshot_file_bytes(file).expect("the corpus decodes").1, *table);
            metas.push(meta);
        }
        let tables = tables.iter().map(|table| encode_table(table).expect("encode")).collect();
        SnapshotCorpus { files, tables, metas }
    })
}

/// A snapshot file from a real one: the table or the metadata inside mutated (the file
/// re-sealed), the file mutated as it lies, table bytes alone, or a file of the first format
/// with its payload mutated and re-sealed.
fn snapshot_case(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let corpus = snapshot_corpus();
    let file = u.choose(&corpus.files)?;
    let (mut meta, mut table) = unseal_snapshot(file);
    Ok(match u.int_in_range(0..=4)? {
        0 => {
            mutate(u, &mut table, &corpus.tables)?;
            seal_snapshot(&meta, &table)
        }
        1 => {
            mutate(u, &mut meta, &corpus.metas)?;
            seal_snapshot(&meta, &table)
        }
        2 => {
            let mut file = file.clone();
            mutate(u, &mut file, &corpus.files)?;
            file
        }
        3 => {
            let mut data = u.choose(&corpus.tables)?.clone();
            mutate(u, &mut data, &corpus.tables)?;
            data
        }
        _ => {
            let meta = wire::from_msgpack(&meta).expect("the corpus's metadata decodes");
            let mut payload = rmp_serde::to_vec_named(&LegacySnapshotFile { meta, data: table }).expect("encode");
            mutate(u, &mut payload, &corpus.tables)?;
            seal_legacy_snapshot(&payload)
        }
    })
}

/// What a restart and an install do with snapshot bytes: decode the file, and the table in it
/// (an install of the previous format's message decodes table bytes alone: try `bytes` as a
/// table too).
fn check_snapshot(bytes: &[u8]) {
    let (decoded, usage) = measure(|| decode_snapshot_file_bytes(bytes));
    assert_bounded("snapshot file", bytes.len(), usage);
    let (table, usage) = measure(|| decode_table(bytes));
    assert_bounded("snapshot table", bytes.len(), usage);
    for table in decoded.map(|(_, table)| table).into_iter().chain(table) {
        // A decoded table need not be consistent, but checking it must not panic, and it
        // encodes to what decodes back the same.
        let _ = table.check_invariants();
        let again = decode_table(&encode_table(&table).expect("a decoded table encodes")).expect("and decodes");
        assert_eq!(again, table);
    }
}

#[test]
fn fuzz_snapshot() {
    let watchdog = Watchdog::new(CASE_LIMIT);
    fuzz("snapshot", BUDGET_MS, |u| {
        let bytes = if u.ratio(1, 32)? { u.bytes(u.len().min(512))?.to_vec() } else { snapshot_case(u)? };
        let input = bytes.clone();
        watchdog.run(&input, move || check_snapshot(&bytes));
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Raft messages.

/// Decode `bytes` as the `/raft/` routes do (the `MsgPack` extractor), then as the transport
/// decodes answers (`wire::from_msgpack`); what decodes must re-encode to bytes that decode
/// to the same encoding again.
fn check_message<T: DeserializeOwned + Serialize>(bytes: &[u8]) {
    let name = std::any::type_name::<T>();
    let (routed, usage) = measure(|| {
        let request = axum::http::Request::new(axum::body::Body::from(bytes.to_vec()));
        futures::executor::block_on(MsgPack::<T>::from_request(request, &()))
    });
    assert_bounded(name, bytes.len(), usage);
    let (decoded, usage) = measure(|| wire::from_msgpack::<T>(bytes));
    assert_bounded(name, bytes.len(), usage);
    assert_eq!(routed.is_ok(), decoded.is_ok(), "{name}: the route and the transport decode alike");
    if let Ok(value) = decoded {
        let encoded = rmp_serde::to_vec_named(&value).expect("a decoded message encodes");
        let again: T = wire::from_msgpack(&encoded).unwrap_or_else(|e| panic!("{name}: re-encoding fails: {e}"));
        assert_eq!(rmp_serde::to_vec_named(&again).expect("encodes"), encoded, "{name}: encoding is stable");
    }
}

type RaftResult<T> = Result<T, openraft::error::RaftError<TypeConfig>>;

/// Each message type a voter decodes, with real encodings of it.
fn message_targets() -> &'static Vec<(Checker, Vec<Vec<u8>>)> {
    static TARGETS: OnceLock<Vec<(Checker, Vec<Vec<u8>>)>> = OnceLock::new();
    TARGETS.get_or_init(|| {
        let vote = Vote::new_committed(2, 1);
        let append = |entries: Vec<TandemEntry>| AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: Some(log_id(1, 10)),
            entries,
            leader_commit: Some(log_id(1, 9)),
        };
        let job = JobRequest { digest: digest(3), iterations: 77, idempotency_key: Some("k".into()), reuse: true };
        let proposals = vec![
            Proposal::Enqueue { jobs: vec![job.clone(), JobRequest { idempotency_key: None, ..job }] },
            Proposal::Lease {
                worker: 1,
                max_jobs: 8,
                lease_ms: 3000,
                budget: Some(LeaseBudget { free_cores: 1, iterations: 9 }),
            },
            Proposal::Heartbeat {
                worker: 1,
                lease_ms: 3000,
                checkpoints: vec![Checkpoint { job: 1, done: 2, digest: digest(2) }],
                hashes_per_s: 5,
            },
            Proposal::Complete { worker: 1, results: vec![JobResult { job: 1, result: digest(4) }] },
            Proposal::ExpireLeases,
            Proposal::RegisterWorker {
                name: "w".into(),
                cores: 2,
                instance_id: Some("i-1".into()),
                witness: false,
                launch_token: None,
            },
        ];
        let table = encode_table(&rich_table()).expect("encode");
        let snapshot = (vote, snapshot_meta(20), serde_bytes::ByteBuf::from(table));
        vec![
            (
                check_message::<AppendEntriesRequest<TypeConfig>> as Checker,
                encode_all(&[append(sample_entries(2, 11)), append(Vec::new())]),
            ),
            (
                check_message::<VoteRequest<TypeConfig>>,
                encode_all(&[VoteRequest::<TypeConfig>::new(vote, Some(log_id(2, 30)))]),
            ),
            (
                check_message::<(Vote, SnapshotMeta, serde_bytes::ByteBuf)>,
                vec![rmp_serde::to_vec_named(&snapshot).expect("encode")],
            ),
            (
                check_message::<TransferLeaderRequest<TypeConfig>>,
                encode_all(&[TransferLeaderRequest::<TypeConfig>::new(vote, 2, Some(log_id(2, 30)))]),
            ),
            (check_message::<Proposal>, encode_all(&proposals)),
            (check_message::<Option<u64>>, encode_all(&[Some(2u64), None])),
            (
                check_message::<RaftResult<AppendEntriesResponse<TypeConfig>>>,
                encode_all::<RaftResult<_>>(&[
                    Ok(AppendEntriesResponse::<TypeConfig>::Success),
                    Ok(AppendEntriesResponse::Conflict),
                    Ok(AppendEntriesResponse::HigherVote(vote)),
                    Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(2, 12)))),
                ]),
            ),
            (
                check_message::<RaftResult<VoteResponse<TypeConfig>>>,
                encode_all::<RaftResult<_>>(&[Ok(VoteResponse::<TypeConfig>::new(vote, Some(log_id(2, 3)), true))]),
            ),
        ]
    })
}

#[test]
fn fuzz_raft_messages() {
    fuzz_messages("raft messages", message_targets());
}
