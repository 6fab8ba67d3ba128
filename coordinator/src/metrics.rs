//! Prometheus metrics of a coordinator: `/metrics`, rendered by metrics-exporter-prometheus.
//!
//! Counters of what this node did (enqueues accepted and refused, by reason) are recorded where
//! it happens; everything that describes the replicated state (queue, leases, workers, totals) or
//! Raft is sampled once a second from this node's copy, so both coordinators report the same
//! cluster figures. Names follow Prometheus conventions: `tandem_` prefix, base units,
//! `_total` counters, `_seconds` histograms.
//!
//! A gauge not set for [`GAUGE_IDLE`] is dropped from the output: the sampler sets every gauge
//! that still describes something once a second, so only series of what is gone (a worker
//! that left the registry, a peer this node no longer replicates to) stop being reported.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use raft_store::Node;
use raft_store::job_table::WorkerState;
use tokio_util::sync::CancellationToken;

const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
/// How long a gauge may go unset before its series is dropped (ten missed samples).
pub const GAUGE_IDLE: Duration = Duration::from_secs(10);

/// The process's Prometheus recorder (installed once; later calls share it).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(GAUGE_IDLE))
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full("tandem_wal_batch_entries".into()), BATCH_BUCKETS))
                .expect("static, non-empty buckets");
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (a test process): render what this one sees.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            describe();
            raft_store::raft_metrics::spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!("tandem_jobs_enqueued_total", "Jobs accepted through this coordinator.");
    describe_counter!("tandem_jobs_rejected_total", "Enqueues refused by this coordinator, by reason.");
    describe_counter!("tandem_jobs_created_total", "Jobs created in the cluster (replicated).");
    describe_counter!("tandem_jobs_completed_total", "Results recorded in the cluster (replicated).");
    describe_counter!("tandem_jobs_requeued_total", "Leases that ended without a result (replicated).");
    describe_counter!(
        "tandem_jobs_reused_total",
        "Jobs served, whole or from an iteration on, from another job's chain with the same body (replicated)."
    );
    describe_counter!("tandem_iterations_saved_total", "Iterations reused jobs did not compute (replicated).");
    describe_gauge!("tandem_jobs_following", "Jobs waiting on another job computing the same chain.");
    describe_gauge!("tandem_reuse_enabled", "1 once every member runs a version with reuse and a leader enabled it.");
    describe_counter!(
        "tandem_worker_requests_refused_total",
        "Worker requests refused by this coordinator for a missing or wrong cluster secret."
    );
    describe_counter!(
        "tandem_worker_joins_refused_total",
        "Join secrets refused by this coordinator: unknown, wrong, used or expired."
    );
    describe_gauge!("tandem_queue_depth", "Jobs waiting for a worker.");
    describe_gauge!(
        "tandem_runtime_threads",
        "Threads of this coordinator's async runtime (--runtime-threads; blocking threads not counted)."
    );
    describe_gauge!("tandem_queue_iterations", "Iterations still to compute over the waiting jobs.");
    describe_gauge!("tandem_oldest_queued_job_age_seconds", "Age of the oldest waiting job.");
    describe_gauge!("tandem_leases_outstanding", "Jobs leased to workers.");
    describe_gauge!("tandem_workers", "Registered workers, by state.");
    describe_gauge!("tandem_worker_hash_rate", "Chain steps per second of each worker, as it last reported.");
    describe_gauge!(
        "tandem_autoscaler_desired_workers",
        "Workers the autoscaling policy wants on this node's view (witness's not counted)."
    );
    describe_gauge!("tandem_autoscaler_workers", "Registered workers, the witness's not counted.");
    describe_gauge!("tandem_autoscaler_launches_in_flight", "Launches committed and not yet registered.");
    describe_gauge!("tandem_autoscaler_consecutive_failures", "Launches failed since the last one that registered.");
    describe_counter!("tandem_autoscaler_launches_total", "Launches the autoscaler committed (replicated).");
    describe_counter!(
        "tandem_autoscaler_launch_failures_total",
        "Launches that failed or never registered (replicated)."
    );
    describe_counter!("tandem_autoscaler_terminations_total", "Terminations the autoscaler committed (replicated).");
    describe_histogram!("tandem_enqueue_duration_seconds", "Time to acknowledge an enqueue on this coordinator.");
    describe_histogram!("tandem_enqueue_to_result_seconds", "Time from enqueue to recorded result.");
    raft_store::raft_metrics::describe();
    // Counters exist at zero from the start: `increase()` over a series that appears at its
    // first event misses that event.
    counter!("tandem_jobs_enqueued_total").increment(0);
    for reason in crate::api_error::ApiError::REASONS {
        counter!("tandem_jobs_rejected_total", "reason" => reason).increment(0);
    }
    counter!("tandem_worker_requests_refused_total").increment(0);
    counter!("tandem_worker_joins_refused_total").increment(0);
}

/// Sample the replicated state and Raft into gauges once a second until `shutdown`.
pub async fn sample(node: Node, scaler: crate::scaler::SharedStatus, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut raft = raft_store::raft_metrics::RaftGauges::default();
    let mut last_seq = None;
    let runtime_threads = tokio::runtime::Handle::current().metrics().num_workers();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = wire::now_ms();
        gauge!("tandem_runtime_threads").set(runtime_threads as f64);
        raft.sample(&node);
        node.state_machine().read(|table| {
            let totals = table.totals();
            counter!("tandem_jobs_created_total").absolute(totals.enqueued);
            counter!("tandem_jobs_completed_total").absolute(totals.completed);
            counter!("tandem_jobs_requeued_total").absolute(totals.requeued);
            counter!("tandem_jobs_reused_total").absolute(totals.reused);
            counter!("tandem_iterations_saved_total").absolute(totals.iterations_saved);
            gauge!("tandem_jobs_following").set(table.following_len() as f64);
            gauge!("tandem_reuse_enabled").set(f64::from(u8::from(table.reuse_enabled())));
            gauge!("tandem_queue_depth").set(table.queued_len() as f64);
            gauge!("tandem_queue_iterations").set(table.queued_iterations() as f64);
            let age = table.oldest_queued_at_ms().map_or(0, |at| now.saturating_sub(at));
            gauge!("tandem_oldest_queued_job_age_seconds").set(age as f64 / 1_000.0);
            gauge!("tandem_leases_outstanding").set(table.leases().len() as f64);
            for (id, worker) in table.workers() {
                gauge!("tandem_worker_hash_rate", "worker" => id.to_string()).set(worker.hashes_per_s as f64);
            }
            for state in [WorkerState::Active, WorkerState::Draining] {
                let count = table.workers().values().filter(|w| w.state == state).count();
                let label = if state == WorkerState::Active { "active" } else { "draining" };
                gauge!("tandem_workers", "state" => label).set(count as f64);
            }
            // New completions since the last sample (the first sample only sets the cursor).
            let from = *last_seq.get_or_insert(table.last_completion_seq());
            for job in table.completed_after(from, 100_000) {
                let seconds = job.completed_at_ms.saturating_sub(job.enqueued_at_ms) as f64 / 1_000.0;
                histogram!("tandem_enqueue_to_result_seconds").record(seconds);
            }
            last_seq = Some(table.last_completion_seq());
            let state = table.scaler();
            counter!("tandem_autoscaler_launches_total").absolute(state.totals.launches);
            counter!("tandem_autoscaler_launch_failures_total").absolute(state.totals.launch_failures);
            counter!("tandem_autoscaler_terminations_total").absolute(state.totals.terminations);
            gauge!("tandem_autoscaler_launches_in_flight").set(state.launches.len() as f64);
            gauge!("tandem_autoscaler_consecutive_failures").set(f64::from(state.consecutive_failures));
            gauge!("tandem_autoscaler_workers").set(table.workers_besides_the_witness() as f64);
        });
        let desired = scaler.lock().unwrap_or_else(|p| p.into_inner()).plan.as_ref().map(|p| p.desired_workers);
        if let Some(desired) = desired {
            gauge!("tandem_autoscaler_desired_workers").set(f64::from(desired));
        }
    }
}
