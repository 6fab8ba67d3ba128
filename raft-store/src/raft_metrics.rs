//! Prometheus gauges of one voter's Raft state, shared by the coordinators and the witness.
//!
//! [`RaftGauges::sample`] copies this node's view into `tandem_raft_*` gauges; call it once a
//! second. The WAL's own counters and histograms are recorded by the log writer as it works.
//! [`collect_process`] refreshes the standard `process_*` metrics; call it on every scrape.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::Node;
use crate::type_config::NodeId;

/// Describe every metric raft-store records (once per process).
pub fn describe() {
    describe_gauge!("tandem_raft_term", "The Raft term this node is in.");
    describe_gauge!("tandem_raft_is_leader", "1 if this node leads.");
    describe_gauge!("tandem_raft_has_leader", "1 if this node knows a leader.");
    describe_counter!("tandem_raft_leader_changes_total", "Leader changes seen by this node.");
    // At zero from the start: `increase()` over a series that appears at its first event
    // misses that event.
    metrics::counter!("tandem_raft_leader_changes_total").increment(0);
    describe_gauge!("tandem_raft_last_log_index", "Index of the last entry in this node's log.");
    describe_gauge!("tandem_raft_applied_index", "Index of the last entry applied to this node's state.");
    describe_gauge!(
        "tandem_raft_replication_lag_entries",
        "Entries a peer lacks, as the leader sees it (0 on a node that does not lead)."
    );
    describe_gauge!("tandem_raft_snapshot_bytes", "Size of this node's newest snapshot.");
    describe_counter!(
        "tandem_raft_rpc_timeouts_total",
        "Raft requests to a peer that outlasted their deadline, by peer and kind (append: one carrying entries; heartbeat; append-stream: opening one; vote; snapshot; ...)."
    );
    describe_counter!(
        "tandem_raft_append_prefixes_total",
        "HTTP appends to a peer (one without append streams) that carried a prefix of openraft's batch (it was over the payload bound): a catch-up in progress."
    );
    describe_counter!(
        "tandem_raft_append_splits_total",
        "Appends to a peer sent as several frames (over the payload bound), by peer: a catch-up in progress."
    );
    describe_counter!(
        "tandem_raft_append_streams_opened_total",
        "Append streams this leader opened to a peer, by peer: one per replication and heartbeat stream, and one more after each broken connection or refused append."
    );
    describe_counter!("tandem_raft_snapshots_sent_total", "Snapshots this leader sent to a peer, by peer.");
    describe_counter!(
        "tandem_raft_appends_received_total",
        "AppendEntries (heartbeats included) this node received and handed to Raft, by sender: replication rounds."
    );
    describe_counter!("tandem_wal_fsyncs_total", "fsyncs of this node's write-ahead log.");
    describe_histogram!("tandem_wal_fsync_seconds", "Duration of one WAL fsync.");
    describe_histogram!("tandem_wal_batch_entries", "Log entries made durable by one fsync.");
    describe_histogram!(
        "tandem_raft_enqueue_commit_seconds",
        "On the leader: time from proposing an enqueue entry to its commit and apply."
    );
}

/// How often [`spawn_upkeep`] folds histogram samples into their buckets: the period
/// metrics-exporter-prometheus's own `install` uses.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Fold the samples recorded into histograms into their buckets every [`UPKEEP_PERIOD`], for the
/// life of the process, on a thread of its own (so on no async runtime).
///
/// A recorder installed with `install_recorder` keeps every histogram sample in a growing list
/// until the next `/metrics` render or upkeep: a node nobody scrapes (or scrapes rarely) grew by
/// about 23 MiB per 10 minutes under `bench soak`, eight bytes for every enqueue, fsync and
/// commit it timed. Call once per recorder.
pub fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_PERIOD);
            handle.run_upkeep();
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("metrics upkeep thread not started ({e}): histograms are folded only when /metrics is scraped");
    }
}

/// What the sampler remembers between samples.
#[derive(Debug, Default)]
pub struct RaftGauges {
    leader: Option<NodeId>,
}

impl RaftGauges {
    /// Copy `node`'s Raft state into the gauges.
    pub fn sample(&mut self, node: &Node) {
        let raft = node.metrics();
        if raft.current_leader != self.leader {
            if self.leader.is_some() {
                counter!("tandem_raft_leader_changes_total").increment(1);
            }
            self.leader = raft.current_leader;
        }
        gauge!("tandem_raft_term").set(raft.current_term as f64);
        let is_leader = node.leadership().borrow().is_self;
        gauge!("tandem_raft_is_leader").set(f64::from(u8::from(is_leader)));
        gauge!("tandem_raft_has_leader").set(f64::from(u8::from(raft.current_leader.is_some())));
        gauge!("tandem_raft_last_log_index").set(raft.last_log_index.unwrap_or(0) as f64);
        gauge!("tandem_raft_applied_index").set(raft.last_applied.map_or(0, |id| id.index) as f64);
        gauge!("tandem_raft_snapshot_bytes").set(node.state_machine().last_snapshot_bytes() as f64);
        let last = raft.last_log_index.unwrap_or(0);
        let replication = raft.replication.clone().unwrap_or_default();
        // Every peer in the membership, every second (a series not set for a while is dropped,
        // as a removed peer's should be); a node that does not lead reports no lag.
        for (peer, _) in raft.membership_config.membership().nodes().filter(|(id, _)| **id != raft.id) {
            let matched = replication.get(peer).cloned().flatten();
            let lag = if replication.is_empty() { 0 } else { last.saturating_sub(matched.map_or(0, |id| id.index)) };
            gauge!("tandem_raft_replication_lag_entries", "peer" => peer.to_string()).set(lag as f64);
        }
    }
}

/// Refresh Prometheus's standard process metrics (`process_cpu_seconds_total`, resident memory,
/// threads, open file descriptors) from the OS. Called on every scrape, so that each scrape
/// sees the process as it is then. (The CPU counter counts whole seconds.)
pub fn collect_process() {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR
        .get_or_init(|| {
            let collector = metrics_process::Collector::default();
            collector.describe();
            collector
        })
        .collect();
}
