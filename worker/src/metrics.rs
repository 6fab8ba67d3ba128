//! The worker's Prometheus metrics on `--metrics-listen` (`GET /metrics`): what it computed and
//! how busy it is, and, with `--witness`, the witness voter's Raft gauges.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::RunningWorker;

/// Install the process's recorder (once) and describe the worker's metrics.
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .install_recorder()
                // Another recorder is installed (a test process): render what this one sees.
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle());
            describe_counter!("tandem_worker_hashes_total", "Chain steps this worker computed.");
            describe_counter!("tandem_worker_jobs_completed_total", "Jobs this worker finished and reported.");
            describe_gauge!("tandem_worker_busy_cores", "Cores hashing right now.");
            describe_gauge!("tandem_worker_cores", "Cores this worker hashes on.");
            describe_gauge!("tandem_worker_jobs_held", "Jobs leased to this worker (running or waiting for a core).");
            describe_gauge!("tandem_worker_draining", "1 while the coordinators have this worker drained.");
            raft_store::raft_metrics::describe();
            raft_store::raft_metrics::spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// Serve `/metrics` on `listen` and sample the worker's state once a second until `shutdown`.
pub(crate) async fn serve(
    listen: SocketAddr,
    shared: Arc<RunningWorker>,
    witness: Option<raft_store::Node>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let handle = install();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics listener {listen}"))?;
    tracing::info!(addr = %listener.local_addr()?, "metrics serving");
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                raft_store::raft_metrics::collect_process();
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
            }
        }),
    );
    let sampler = tokio::spawn(sample(shared, witness, shutdown.clone()));
    let served = axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
    sampler.abort();
    served.context("serving metrics")
}

async fn sample(shared: Arc<RunningWorker>, witness: Option<raft_store::Node>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut raft = raft_store::raft_metrics::RaftGauges::default();
    let cores = shared.config.cores();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        counter!("tandem_worker_hashes_total").absolute(shared.hashes.load(Ordering::Relaxed));
        counter!("tandem_worker_jobs_completed_total").absolute(shared.jobs_completed.load(Ordering::Relaxed));
        gauge!("tandem_worker_cores").set(cores as f64);
        gauge!("tandem_worker_busy_cores").set(cores.saturating_sub(shared.cores.available_permits()) as f64);
        gauge!("tandem_worker_jobs_held").set(shared.running().len() as f64);
        gauge!("tandem_worker_draining").set(f64::from(u8::from(shared.draining.load(Ordering::Relaxed))));
        if let Some(node) = &witness {
            raft.sample(node);
        }
    }
}
