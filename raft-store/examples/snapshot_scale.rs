//! A snapshot at the sizes the defaults allow, through the real state machine store: a table
//! with `RESULTS` completed results and `QUEUED` queued jobs (1,000,000 each by default), every
//! job with a 256-byte idempotency key (the longest accepted). Reports the snapshot's size, the
//! time and the peak resident memory above the live table to build one (copy the table, encode
//! it into the file, fsync) and to install one (decode the file, rename it into place, swap the
//! table; in a process of its own, as a restart or a follower's install does).
//!
//! `cargo run --release -p raft-store --example snapshot_scale [-- RESULTS QUEUED]`

use std::time::Instant;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use raft_store::Digest;
use raft_store::job_table::{Command, CommandResponse, JobResult, JobTable, Limits, NewJob};
use raft_store::state_machine::{StateMachineStore, snapshot};
use raft_store::type_config::{LogId, SnapshotMeta};

#[path = "support/memory.rs"]
mod memory;
use memory::{reset_peak, rss_mib};

fn job(i: u64) -> NewJob {
    let mut digest = [0u8; 64];
    digest[..8].copy_from_slice(&i.to_le_bytes());
    NewJob {
        digest: Digest(digest),
        iterations: 1 + i % 1_000,
        enqueued_at_ms: 1_700_000_000_000 + i,
        idempotency_key: Some(format!("{i:0>256}")),
        reuse: false,
    }
}

fn table(results: u64, queued: u64) -> JobTable {
    let mut table = JobTable::new(Limits { completed_retention: results, max_queued: u64::MAX, max_lease_batch: 1024 });
    let CommandResponse::WorkerRegistered(worker) = table.apply(&Command::RegisterWorker {
        name: "scale".into(),
        cores: 1024,
        instance_id: None,
        now_ms: 1,
        witness: false,
        launch_token: None,
    }) else {
        panic!("no worker registered")
    };
    let mut next = 0;
    while next < results {
        let batch: Vec<NewJob> = (next..(next + 1024).min(results)).map(job).collect();
        next += batch.len() as u64;
        table.apply(&Command::Enqueue { jobs: batch });
        let CommandResponse::Leased(leased) =
            table.apply(&Command::Lease { worker, max_jobs: 1024, now_ms: 2, deadline_ms: u64::MAX / 2, budget: None })
        else {
            panic!("no lease")
        };
        let results = leased.iter().map(|l| JobResult { job: l.job, result: l.digest }).collect();
        table.apply(&Command::Complete { worker, now_ms: 3, results });
    }
    while next < results + queued {
        let batch: Vec<NewJob> = (next..(next + 1024).min(results + queued)).map(job).collect();
        next += batch.len() as u64;
        table.apply(&Command::Enqueue { jobs: batch });
    }
    table
}

/// Open a store on `dir` and install its snapshot, as a voter's restart does (or a follower's
/// install of the file it received): in a process of its own, so that its memory is the
/// install's alone. Prints the time, the live table's RSS and the peak above it.
async fn install_in_this_process(dir: &str) -> std::io::Result<()> {
    let (rss_empty, _) = rss_mib();
    let started = Instant::now();
    let mut store = StateMachineStore::open(std::path::Path::new(dir))?;
    let current = store.get_current_snapshot().await.map_err(std::io::Error::other)?.expect("the snapshot");
    let meta = current.meta.clone();
    store.install_snapshot(&meta, current.snapshot).await.map_err(std::io::Error::other)?;
    let took = started.elapsed().as_secs_f64();
    let (rss_live, peak) = rss_mib();
    println!(
        "install (a fresh process opens the store and decodes the file): {took:.2} s; RSS {rss_empty:.0} MiB empty, \
         {rss_live:.0} MiB with the live table, peak {peak:.0} MiB: {:.0} MiB above the live table",
        peak - rss_live
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, dir] = args.as_slice()
        && mode == "--install"
    {
        return install_in_this_process(dir).await;
    }
    let mut args = args.iter().map(|a| a.parse::<u64>().expect("a number"));
    let results = args.next().unwrap_or(1_000_000);
    let queued = args.next().unwrap_or(1_000_000);
    let started = Instant::now();
    let table = table(results, queued);
    println!(
        "table: {results} results, {queued} queued, 256-byte keys, built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The snapshot file, as a follower has it once received.
    let dir = tempfile::TempDir::new()?;
    let meta = SnapshotMeta {
        last_log_id: Some(LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 }, 1_000)),
        last_membership: Default::default(),
    };
    let mut written = snapshot::write_table(dir.path(), &meta, &table)?;
    written.persist(&dir.path().join(snapshot::SNAPSHOT_FILE))?;
    let bytes = written.table_len();
    println!("snapshot: {:.1} MiB", bytes as f64 / (1 << 20) as f64);
    drop((written, table));

    // Installing it, in a process of its own.
    let status = std::process::Command::new(std::env::current_exe()?).arg("--install").arg(dir.path()).status()?;
    assert!(status.success(), "the install failed: {status}");

    // Building one from a store that holds the table, as every voter does.
    let mut store = StateMachineStore::open(dir.path())?;
    let current = store.get_current_snapshot().await.map_err(std::io::Error::other)?.expect("the snapshot");
    store.install_snapshot(&meta, current.snapshot).await.map_err(std::io::Error::other)?;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (rss_live, _) = rss_mib();
    reset_peak();
    let started = Instant::now();
    let mut builder = store.get_snapshot_builder().await;
    let copied_s = started.elapsed().as_secs_f64();
    let snapshot = builder.build_snapshot().await.map_err(std::io::Error::other)?;
    let build_s = started.elapsed().as_secs_f64();
    let (_, peak) = rss_mib();
    println!(
        "build: {build_s:.2} s (of which the copy {copied_s:.2} s); live {rss_live:.0} MiB, peak {peak:.0} MiB: \
         {:.0} MiB above the live table ({:.1} times the snapshot's size)",
        peak - rss_live,
        (peak - rss_live) * (1 << 20) as f64 / bytes as f64
    );
    assert_eq!(snapshot.snapshot.table_len(), bytes);
    Ok(())
}
