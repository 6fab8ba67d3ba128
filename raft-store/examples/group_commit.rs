//! Group commit under load: 64 concurrent proposers against an in-process three-voter cluster on
//! loopback, each voter with its WAL on the disk under `--dir` (default: a temporary directory).
//!
//! `cargo run --release -p raft-store --example group_commit [-- SECONDS PROPOSERS]`
//!
//! Prints committed entries/s, each voter's fsyncs/s and entries per fsync, and the disk's own
//! fsync rate measured in the same run (write 64 bytes + fdatasync in a loop), so the figures
//! compare with what the disk allows.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raft_store::job_table::{JobRequest, Proposal};
use raft_store::test_cluster::{COORDINATOR_1, COORDINATOR_2, TestCluster, WITNESS};
use raft_store::{CommandResponse, Digest};

fn disk_fsync_rate(dir: &std::path::Path, for_how_long: Duration) -> f64 {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).expect("probe file");
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < for_how_long {
        file.write_all(&[0u8; 64]).expect("write");
        file.sync_data().expect("fdatasync");
        syncs += 1;
    }
    let _ = std::fs::remove_file(path);
    syncs as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let proposers: u64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let dir = tempfile::Builder::new()
        .prefix("group-commit")
        .tempdir_in(std::env::current_dir().expect("cwd"))
        .expect("temp dir");
    let disk = disk_fsync_rate(dir.path(), Duration::from_secs(2));

    let mut cluster = TestCluster::start(dir.path(), |_| {}).await;
    let leader = loop {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        if leader != WITNESS {
            break leader;
        }
    };
    let committed = Arc::new(AtomicU64::new(0));
    let before: Vec<_> =
        [COORDINATOR_1, COORDINATOR_2, WITNESS].iter().map(|id| cluster.node(*id).wal_stats()).collect();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for p in 0..proposers {
        let node = cluster.node(leader).clone();
        let committed = committed.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let job =
                    JobRequest { digest: Digest([p as u8; 64]), iterations: 1, idempotency_key: None, reuse: false };
                match node.propose(Proposal::Enqueue { jobs: vec![job] }).await {
                    Ok(CommandResponse::Enqueued(_)) => {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("proposal failed: {other:?}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("proposer");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let entries = committed.load(Ordering::Relaxed);
    println!("disk fsync rate (64 B + fdatasync loop): {disk:.0}/s");
    println!("proposers: {proposers}, seconds: {elapsed:.1}");
    println!("committed entries: {entries} ({:.0}/s)", entries as f64 / elapsed);
    for (i, id) in [COORDINATOR_1, COORDINATOR_2, WITNESS].iter().enumerate() {
        let after = cluster.node(*id).wal_stats();
        let fsyncs = after.fsyncs - before[i].fsyncs;
        let synced = after.synced_entries - before[i].synced_entries;
        let fsync_ms = (after.fsync_nanos - before[i].fsync_nanos) as f64 / 1e6 / fsyncs.max(1) as f64;
        println!(
            "node {id}{}: {:.0} fsyncs/s, {:.1} entries per fsync, mean fsync {fsync_ms:.2} ms",
            if *id == leader { " (leader)" } else { "" },
            fsyncs as f64 / elapsed,
            synced as f64 / fsyncs.max(1) as f64,
        );
    }
    cluster.shutdown().await;
}
