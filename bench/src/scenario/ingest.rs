//! `ingest`: enqueue throughput and latency against the cluster and, in the same run, against the
//! null-ingest baseline. The headline is the ratio cluster / baseline.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use wire::client::ApiClient;

use crate::report::Report;
use crate::stats::Latencies;
use crate::target::{Target, TargetArgs};

/// Options of `ingest`.
#[derive(clap::Args, Clone, Debug)]
pub struct IngestArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 16_384)]
    pub body_bytes: usize,
    /// Seconds of load for each of the cluster and the baseline.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Leave the workers computing while measuring. By default they are drained first
    /// (`POST /admin/workers/{id}/drain`), so the figure is the enqueue path alone, as the
    /// baseline's is; `flow` measures enqueues and computation together.
    #[arg(long)]
    pub keep_workers: bool,
}

/// Outcome of one load run.
pub struct Load {
    /// Acknowledged enqueues.
    pub acked: u64,
    /// Failed requests.
    pub errors: u64,
    /// Acknowledgements per second.
    pub rate: f64,
    /// Enqueue latencies.
    pub latencies: Latencies,
    /// (t, latency) samples.
    pub series: Vec<(f64, f64)>,
    /// Job ids answered (to check they are unique).
    pub ids: Vec<u64>,
}

/// Drive `clients` concurrent enqueue loops over `targets` for `seconds`.
pub async fn load(targets: &[ApiClient], clients: usize, body_bytes: usize, seconds: f64, iterations: u64) -> Load {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = targets[c % targets.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            let mut series = Vec::new();
            let mut ids = Vec::new();
            let mut errors = 0;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let mut body = vec![(c % 251) as u8; body_bytes];
                body[..8].copy_from_slice(&n.to_le_bytes());
                let sent = Instant::now();
                match client.enqueue(body, iterations, None).await {
                    Ok(id) => {
                        latencies.record(sent.elapsed());
                        if n.is_multiple_of(16) {
                            series
                                .push((sent.duration_since(started).as_secs_f64(), sent.elapsed().as_secs_f64() * 1e3));
                        }
                        ids.push(id);
                    }
                    Err(_) => errors += 1,
                }
                n += 1;
            }
            (latencies, series, ids, errors)
        }));
    }
    let mut result =
        Load { acked: 0, errors: 0, rate: 0.0, latencies: Latencies::default(), series: vec![], ids: vec![] };
    for task in tasks {
        let Ok((latencies, series, ids, errors)) = task.await else { continue };
        result.latencies.merge(&latencies);
        result.series.extend(series);
        result.acked += ids.len() as u64;
        result.ids.extend(ids);
        result.errors += errors;
    }
    result.rate = result.acked as f64 / started.elapsed().as_secs_f64();
    result
}

/// Drain every registered worker and wait until none holds a lease; returns how many.
async fn drain_workers(target: &Target) -> anyhow::Result<usize> {
    let token = target.admin_token.as_deref().context("draining workers needs --admin-token (or --keep-workers)")?;
    let client = &target.clients[0];
    let workers = client.cluster().await?.workers;
    for worker in &workers {
        client
            .set_worker_draining(token, worker.id, true)
            .await
            .with_context(|| format!("draining worker {}", worker.id))?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.cluster().await?.queue.running > 0 {
        anyhow::ensure!(Instant::now() < deadline, "workers still hold leases 30 s after the drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(workers.len())
}

/// Run `ingest`.
pub async fn run(args: &IngestArgs, quick: bool) -> anyhow::Result<Report> {
    let seconds = if quick { args.seconds.min(3.0) } else { args.seconds };
    let mut report = Report::new(
        "ingest",
        serde_json::json!({ "clients": args.clients, "body_bytes": args.body_bytes, "seconds": seconds }),
    );
    let baseline_url = crate::null_ingest::start()?;
    let baseline = load(&[ApiClient::new(baseline_url)], args.clients, args.body_bytes, seconds, 1).await;
    let target = Target::open(&args.target, &[]).await?;
    let drained = if args.keep_workers { 0 } else { drain_workers(&target).await? };
    let cluster = load(&target.clients, args.clients, args.body_bytes, seconds, 1).await;
    let unique: HashSet<u64> = cluster.ids.iter().copied().collect();
    if unique.len() != cluster.ids.len() {
        report.failures.push(format!("{} ids were answered twice", cluster.ids.len() - unique.len()));
    }
    report.figure("baseline_enqueues_per_s", baseline.rate);
    report.figure("baseline_latency", baseline.latencies.summary());
    report.figure("cluster_enqueues_per_s", cluster.rate);
    report.figure("cluster_latency", cluster.latencies.summary());
    report.figure("cluster_errors", cluster.errors);
    report.figure("workers_drained", drained);
    report.figure("ratio_cluster_to_baseline", cluster.rate / baseline.rate.max(1e-9));
    report.series = cluster.series;
    Ok(report)
}
