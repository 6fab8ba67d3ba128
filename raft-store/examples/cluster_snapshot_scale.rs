//! Snapshots at the sizes the defaults allow, through a whole cluster: three voters in this
//! process (the real log store, state machine and HTTP transport on 127.0.0.1), a table of
//! `RESULTS` completed results and `QUEUED` queued jobs (1,000,000 each by default), every job
//! with a 256-byte idempotency key (the longest accepted). One coordinator is down while the
//! table is filled. Then, in turn:
//!
//! 1. the leader builds a snapshot, then the witness does: the time each takes, the process's
//!    peak memory above its level before, and the longest the leader went without an answer
//!    from the witness meanwhile (its heartbeats are due every 50 ms; an election starts after
//!    150 to 300 ms without one), and whether leadership or the term changed;
//! 2. the leader purges its log behind its snapshot, and the coordinator that was down restarts:
//!    it can only catch up from the snapshot, streamed to it; the time until it holds the
//!    leader's table, and the process's peak memory above where it ended;
//! 3. that coordinator is replaced by a new node with an empty disk: the time the replacement
//!    takes (it too catches up from the snapshot).
//!
//! The voters share this process, so the memory figures are the process's rise during each
//! step, when only that step's voter does O(state) work.
//!
//! `cargo run --release -p raft-store --example cluster_snapshot_scale [-- RESULTS QUEUED]`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use openraft::Instant as _;
use openraft::async_runtime::WatchReceiver;
use raft_store::job_table::{JobRequest, JobResult, Proposal};
use raft_store::test_cluster::{TestCluster, WITNESS, other_coordinator};
use raft_store::{CommandResponse, Digest, Node, NodeId, Role};

#[path = "support/memory.rs"]
mod memory;
use memory::{reset_peak, rss_mib};

const BATCH: u64 = 1024;
/// Entries each voter keeps behind its snapshot (1,000 by default: a few at the small sizes this
/// example can also run at).
const KEPT_AFTER_SNAPSHOT: u64 = 10;

fn job(i: u64) -> JobRequest {
    let mut digest = [0u8; 64];
    digest[..8].copy_from_slice(&i.to_le_bytes());
    JobRequest {
        digest: Digest(digest),
        iterations: 1 + i % 1_000,
        idempotency_key: Some(format!("{i:0>256}")),
        reuse: false,
    }
}

async fn propose(node: &Node, proposal: Proposal) -> CommandResponse {
    node.propose(proposal).await.unwrap_or_else(|e| panic!("proposal refused: {e}"))
}

/// Fill the table through the leader: `results` jobs enqueued, leased and completed, then
/// `queued` jobs enqueued.
async fn fill(leader: &Node, results: u64, queued: u64) {
    let CommandResponse::WorkerRegistered(worker) = propose(
        leader,
        Proposal::RegisterWorker {
            name: "scale".into(),
            cores: 1024,
            instance_id: None,
            witness: false,
            launch_token: None,
        },
    )
    .await
    else {
        panic!("no worker registered")
    };
    for start in (0..results).step_by(BATCH as usize) {
        let jobs = (start..(start + BATCH).min(results)).map(job).collect();
        propose(leader, Proposal::Enqueue { jobs }).await;
        let lease = Proposal::Lease { worker, max_jobs: BATCH as u32, lease_ms: 3_600_000, budget: None };
        let CommandResponse::Leased(leased) = propose(leader, lease).await else { panic!("no lease") };
        let results = leased.iter().map(|l| JobResult { job: l.job, result: l.digest }).collect();
        propose(leader, Proposal::Complete { worker, results }).await;
    }
    let batches = (results..results + queued).step_by(BATCH as usize).map(|start| {
        let jobs = (start..(start + BATCH).min(results + queued)).map(job).collect();
        propose(leader, Proposal::Enqueue { jobs })
    });
    futures::stream::iter(batches).buffer_unordered(4).for_each(|_| async {}).await;
}

/// Samples how long the leader has gone without an answer from `peer`, every 5 ms, until
/// stopped; returns the longest.
struct AckGap {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Duration>,
}

impl AckGap {
    fn watch(leader: &Node, peer: NodeId) -> AckGap {
        let stop = Arc::new(AtomicBool::new(false));
        let (raft, flag) = (leader.raft().clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            while !flag.load(Ordering::Relaxed) {
                let metrics = raft.metrics().borrow_watched().clone();
                let acked = metrics.heartbeat.as_ref().and_then(|h| h.get(&peer).cloned().flatten());
                if let Some(acked) = acked {
                    longest = longest.max(acked.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            longest
        });
        AckGap { stop, task }
    }

    async fn longest(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the sampler")
    }
}

/// Build a snapshot on `builder` and report it, with the leader's longest wait for the witness.
async fn build(cluster: &TestCluster, leader: NodeId, builder: NodeId) {
    let node = cluster.node(builder);
    let term = cluster.node(leader).status().term;
    let before = node.metrics().snapshot;
    let (rss_before, _) = rss_mib();
    reset_peak();
    let gap = AckGap::watch(cluster.node(leader), WITNESS);
    let started = Instant::now();
    node.raft().trigger().snapshot().await.expect("trigger a snapshot");
    node.raft()
        .wait(Some(Duration::from_secs(600)))
        .metrics(|m| m.snapshot.is_some() && m.snapshot != before, "a snapshot is built")
        .await
        .expect("the snapshot was built");
    let took = started.elapsed();
    let longest_gap = gap.longest().await;
    let (_, peak) = rss_mib();
    let status = cluster.node(leader).status();
    println!(
        "build on {} (node {builder}): {:.1} s, {:.0} MiB above the process's {rss_before:.0} MiB at its peak; \
         the leader's longest wait for the witness {} ms; leader {:?} in term {} (before: {leader} in {term})",
        node.role(),
        took.as_secs_f64(),
        peak - rss_before,
        longest_gap.as_millis(),
        status.leader,
        status.term,
    );
}

/// Wait until `node` has installed a snapshot at `snapshot_index` or later and applied what the
/// leader had applied when asked.
async fn caught_up(cluster: &TestCluster, leader: NodeId, node: NodeId, snapshot_index: u64) {
    let target = cluster.node(leader).metrics().last_applied.expect("applied").index;
    cluster
        .node(node)
        .raft()
        .wait(Some(Duration::from_secs(600)))
        .metrics(
            |m| {
                m.snapshot.is_some_and(|s| s.index >= snapshot_index)
                    && m.last_applied.is_some_and(|a| a.index >= target)
            },
            "caught up by snapshot",
        )
        .await
        .expect("caught up from the snapshot");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().expect("a number"));
    let results = args.next().unwrap_or(1_000_000);
    let queued = args.next().unwrap_or(1_000_000);
    let dir = tempfile::TempDir::new().expect("a temporary directory");
    let mut cluster = TestCluster::start(dir.path(), |config| {
        // Snapshots only when this example asks for them, and no log kept for a follower that
        // lacks it: the coordinator that was down must take the snapshot.
        config.snapshot_every = u64::MAX;
        config.snapshot_min_log_bytes = u64::MAX;
        config.log_retained_for_followers_bytes = 0;
        config.logs_kept_after_snapshot = KEPT_AFTER_SNAPSHOT;
    })
    .await;
    let leader = loop {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        if cluster.node(leader).role() == Role::Coordinator {
            break leader;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lagging = other_coordinator(leader);
    cluster.kill(lagging).await;

    let started = Instant::now();
    fill(cluster.node(leader), results, queued).await;
    let (rss, _) = rss_mib();
    println!(
        "filled: {results} results and {queued} queued jobs with 256-byte keys in {:.0} s; the process holds {rss:.0} MiB \
         (two voters' tables and logs)",
        started.elapsed().as_secs_f64()
    );

    build(&cluster, leader, leader).await;
    build(&cluster, leader, WITNESS).await;
    let snapshot = cluster.data_dir(leader).join(raft_store::state_machine::SNAPSHOT_FILE);
    let bytes = std::fs::metadata(&snapshot).expect("the leader's snapshot").len();
    println!("snapshot: {:.0} MiB", bytes as f64 / (1 << 20) as f64);

    // The leader purges behind its snapshot (every 200 ms), past all the down node lacks.
    let snapshot_index = cluster.node(leader).metrics().snapshot.expect("a snapshot").index;
    cluster
        .node(leader)
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.purged.is_some_and(|p| p.index + KEPT_AFTER_SNAPSHOT >= snapshot_index), "the leader purges")
        .await
        .expect("the leader purged its log");

    let (rss_before, _) = rss_mib();
    reset_peak();
    let started = Instant::now();
    cluster.restart(lagging).await;
    caught_up(&cluster, leader, lagging, snapshot_index).await;
    let took = started.elapsed();
    let (rss_after, peak) = rss_mib();
    let tables =
        [leader, lagging].map(|id| cluster.node(id).state_machine().read(|t| (t.completed_len(), t.queued_len())));
    println!(
        "catch-up of node {lagging} by snapshot: {:.1} s from its restart; the process rose from {rss_before:.0} to \
         {rss_after:.0} MiB (its table), peak {peak:.0} MiB: {:.0} MiB above where it ended; tables (completed, queued) \
         {:?}",
        took.as_secs_f64(),
        peak - rss_after,
        tables.iter().copied().zip([leader, lagging]).map(|(t, id)| (id, t)).collect::<BTreeMap<_, _>>(),
    );
    assert_eq!(tables[0], tables[1], "the caught-up table differs from the leader's");

    // The coordinator's disk is lost: a new node replaces it.
    cluster.kill(lagging).await;
    let started = Instant::now();
    let replacement: NodeId = 4;
    let info = cluster.start_replacement(replacement, lagging, None).await;
    let replaced = cluster
        .node(leader)
        .replace_voter(lagging, replacement, info, Duration::from_secs(600))
        .await
        .expect("the replacement completes");
    caught_up(&cluster, leader, replacement, snapshot_index).await;
    println!(
        "replacement of node {lagging} by node {replacement}: {:.1} s; voters now {:?}",
        started.elapsed().as_secs_f64(),
        replaced.voters
    );
    cluster.shutdown().await;
}
