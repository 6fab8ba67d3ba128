//! `ingest`: enqueue throughput and latency against the cluster and, in the same run, against the
//! null-ingest baseline. The headline is the ratio cluster / baseline.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use wire::client::ApiClient;

use crate::cpu::CpuMeter;
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
    /// Seconds of load for each of the cluster and the baseline, in every round.
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    /// Rounds, each the baseline then the cluster: the headline is the median round's ratio.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Leave the workers computing while measuring. By default they are drained first
    /// (`POST /admin/workers/{id}/drain`), so the figure is the enqueue path alone, as the
    /// baseline's is; `flow` measures enqueues and computation together.
    #[arg(long)]
    pub keep_workers: bool,
}

/// Outcome of one load run (or of several, absorbed into one).
#[derive(Default)]
pub struct Load {
    /// Acknowledged enqueues.
    pub acked: u64,
    /// Failed requests.
    pub errors: u64,
    /// Seconds of load.
    pub seconds: f64,
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
    let mut result = Load::default();
    for task in tasks {
        let Ok((latencies, series, ids, errors)) = task.await else { continue };
        result.latencies.merge(&latencies);
        result.series.extend(series);
        result.acked += ids.len() as u64;
        result.ids.extend(ids);
        result.errors += errors;
    }
    result.seconds = started.elapsed().as_secs_f64();
    result
}

impl Load {
    /// Acknowledgements per second.
    pub fn rate(&self) -> f64 {
        self.acked as f64 / self.seconds.max(1e-9)
    }

    /// Add `other`'s requests and time to this one.
    fn absorb(&mut self, other: Load) {
        self.acked += other.acked;
        self.errors += other.errors;
        self.seconds += other.seconds;
        self.latencies.merge(&other.latencies);
        self.series.extend(other.series);
        self.ids.extend(other.ids);
    }
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

/// Add `deltas` to `totals` element by element; a total stays `None` once a delta was missing.
fn add_each(totals: &mut [Option<f64>], deltas: Vec<Option<f64>>) {
    for (total, delta) in totals.iter_mut().zip(deltas) {
        *total = total.zip(delta).map(|(total, delta)| total + delta);
    }
}

/// Run `ingest`: `rounds` pairs of (baseline, cluster) loads, so that both see the same machine
/// (this VM's speed drifts by a fifth within minutes); the headline is the median pair's ratio.
pub async fn run(args: &IngestArgs, quick: bool) -> anyhow::Result<Report> {
    let seconds = if quick { args.seconds.min(3.0) } else { args.seconds };
    let rounds = if quick { 1 } else { args.rounds.max(1) };
    let mut report = Report::new(
        "ingest",
        serde_json::json!({
            "clients": args.clients, "body_bytes": args.body_bytes, "seconds": seconds, "rounds": rounds,
        }),
    );
    let baseline_target = [ApiClient::new(crate::null_ingest::start()?)];
    let target = Target::open(&args.target, &[]).await?;
    let drained = if args.keep_workers { 0 } else { drain_workers(&target).await? };
    let meter = CpuMeter::new(reqwest::Client::builder().no_proxy().build()?, target.metered_processes());

    let mut baseline = Load::default();
    let mut cluster = Load::default();
    let mut ratios = Vec::new();
    let mut baseline_cpu = 0.0;
    let mut cluster_own_cpu = 0.0;
    let mut cluster_cpu: Vec<Option<f64>> = meter.names().map(|_| Some(0.0)).collect();
    let mut cluster_fsyncs: Vec<Option<f64>> = meter.names().map(|_| Some(0.0)).collect();
    let mut cluster_appends: Vec<Option<f64>> = meter.names().map(|_| Some(0.0)).collect();
    for _ in 0..rounds {
        let before = meter.sample().await;
        let base = load(&baseline_target, args.clients, args.body_bytes, seconds, 1).await;
        let between = meter.sample().await;
        let offset = cluster.seconds;
        let mut this = load(&target.clients, args.clients, args.body_bytes, seconds, 1).await;
        let after = meter.sample().await;

        ratios.push(this.rate() / base.rate().max(1e-9));
        baseline_cpu += between.own_since(&before);
        cluster_own_cpu += after.own_since(&between);
        add_each(&mut cluster_cpu, after.processes_since(&between));
        add_each(&mut cluster_fsyncs, after.fsyncs_since(&between));
        add_each(&mut cluster_appends, after.appends_since(&between));
        this.series.iter_mut().for_each(|(t, _)| *t += offset);
        baseline.absorb(base);
        cluster.absorb(this);
    }

    let unique: HashSet<u64> = cluster.ids.iter().copied().collect();
    if unique.len() != cluster.ids.len() {
        report.failures.push(format!("{} ids were answered twice", cluster.ids.len() - unique.len()));
    }
    report.figure("baseline_enqueues_per_s", baseline.rate());
    report.figure("baseline_latency", baseline.latencies.summary());
    report.figure("cluster_enqueues_per_s", cluster.rate());
    report.figure("cluster_latency", cluster.latencies.summary());
    report.figure("cluster_errors", cluster.errors);
    report.figure("workers_drained", drained);
    report.figure("ratio_each_round", &ratios);
    report.figure("ratio_cluster_to_baseline", crate::reference::median(&ratios));

    // Where the CPU went: microseconds per acknowledged request, by process.
    let per_request = |cpu: f64, requests: u64| (cpu * 1e6 / requests.max(1) as f64 * 10.0).round() / 10.0;
    report.figure("cpu_us_per_baseline_request", per_request(baseline_cpu, baseline.acked));
    let mut by_process = serde_json::Map::new();
    let mut total = Some(cluster_own_cpu);
    for (name, cpu) in meter.names().zip(&cluster_cpu) {
        by_process.insert(name.to_owned(), cpu.map(|cpu| per_request(cpu, cluster.acked)).into());
        total = total.zip(*cpu).map(|(total, cpu)| total + cpu);
    }
    by_process.insert("bench clients".into(), per_request(cluster_own_cpu, cluster.acked).into());
    report.figure("cpu_us_per_cluster_enqueue", by_process);
    // Only when every process was measured: with `--url`, the witness and workers are not.
    if args.target.local {
        let total = total.map(|cpu| per_request(cpu, cluster.acked));
        report.figure("cpu_us_per_cluster_enqueue_total", total);
        // What the cluster spends beyond what the baseline spends on the same request (reading
        // and hashing the body, HTTP): the Raft path's CPU per enqueue.
        let baseline_us = per_request(baseline_cpu, baseline.acked);
        report.figure("raft_path_cpu_us_per_enqueue", total.map(|total| ((total - baseline_us) * 10.0).round() / 10.0));
    }
    // How well commits were batched: enqueues made durable per fsync, by voter.
    let mut batching = serde_json::Map::new();
    for (name, fsyncs) in meter.names().zip(&cluster_fsyncs) {
        if let Some(fsyncs) = fsyncs.filter(|fsyncs| *fsyncs > 0.0) {
            batching.insert(name.to_owned(), ((cluster.acked as f64 / fsyncs * 10.0).round() / 10.0).into());
        }
    }
    report.figure("cluster_enqueues_per_fsync", batching);
    // Replication rounds: the AppendEntries (heartbeats included) each follower received per
    // second of cluster load.
    let mut rounds_per_s = serde_json::Map::new();
    for (name, appends) in meter.names().zip(&cluster_appends) {
        if let Some(appends) = appends.filter(|appends| *appends > 0.0) {
            rounds_per_s.insert(name.to_owned(), (appends / cluster.seconds.max(1e-9)).round().into());
        }
    }
    report.figure("appends_received_per_s", rounds_per_s);
    report.series = cluster.series;
    Ok(report)
}
