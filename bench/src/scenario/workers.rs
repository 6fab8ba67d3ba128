//! `workers`: M simulated workers (long-polling tasks in this process, no hashing) against one
//! cluster, fed a steady stream of 1-iteration jobs. Measures how many connected workers and
//! leases per second the coordinator pair sustains, with lease latency percentiles.
//!
//! A 1-iteration job's result is the digest it is leased with, so simulated workers report the
//! correct result without hashing; the bench then checks every result against its own chain.
//! Lease latency is the time from a job's enqueue acknowledgement to its lease by a worker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use wire::worker::{CompleteRequest, Finished, LeaseRequest, RegisterRequest};
use wire::worker_client::WorkerClient;

use crate::reference::{chain, hex};
use crate::report::Report;
use crate::stats::Latencies;
use crate::target::{Target, TargetArgs};

/// Options of `workers`.
#[derive(clap::Args, Clone, Debug)]
pub struct WorkersArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Simulated workers.
    #[arg(long, default_value_t = 1_000)]
    pub simulated: usize,
    /// Jobs enqueued per second while they run.
    #[arg(long, default_value_t = 500)]
    pub jobs_per_s: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
}

/// How long a simulated worker waits for one answer (a lease long-polls for up to 1 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Run `workers`.
pub async fn run(args: &WorkersArgs, quick: bool) -> anyhow::Result<Report> {
    let (simulated, seconds) =
        if quick { (args.simulated.min(100), args.seconds.min(5.0)) } else { (args.simulated, args.seconds) };
    let mut report = Report::new(
        "workers",
        serde_json::json!({ "simulated": simulated, "jobs_per_s": args.jobs_per_s, "seconds": seconds }),
    );
    let mut target_args = args.target.clone();
    if target_args.local {
        // Only simulated workers should take jobs: the witness worker keeps one core.
        target_args.workers = 0;
        target_args.worker_cores = Some(1);
    }
    let target = Target::open(&target_args, &[]).await?;
    let urls: Vec<String> = target.clients.iter().map(|c| c.base().to_owned()).collect();
    // One connection pool for every simulated worker; each sends the cluster secret, as a real
    // one does.
    let http = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(4_096).build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicU64::new(0));
    let refusal = Arc::new(std::sync::OnceLock::<String>::new());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..simulated {
        let client =
            WorkerClient::with_http(http.clone(), vec![urls[w % urls.len()].clone()], target.cluster_secret.as_deref())
                .context("a simulated worker's client")?;
        let (stop, connected, refusal) = (stop.clone(), connected.clone(), refusal.clone());
        tasks.push(tokio::spawn(async move {
            let mut leases: Vec<(u64, Instant)> = Vec::new();
            let request = RegisterRequest {
                name: format!("simulated-{w}"),
                cores: 1,
                instance_id: None,
                witness: false,
                launch_token: None,
            };
            let registered = match client.register(&request, CALL_TIMEOUT).await {
                Ok(registered) => registered,
                Err(e) => {
                    let _ = refusal.set(e.to_string());
                    return leases;
                }
            };
            connected.fetch_add(1, Ordering::Relaxed);
            while !stop.load(Ordering::Relaxed) {
                let request = LeaseRequest {
                    worker: registered.worker,
                    max_jobs: 1,
                    wait_ms: 1_000,
                    free_cores: None,
                    budget_iterations: None,
                };
                let Ok(answer) = client.lease(&request, CALL_TIMEOUT).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if answer.jobs.is_empty() {
                    continue;
                }
                let now = Instant::now();
                leases.extend(answer.jobs.iter().map(|a| (a.job, now)));
                let results = answer.jobs.iter().map(|a| Finished { job: a.job, result: a.digest }).collect();
                let complete = CompleteRequest { worker: registered.worker, results };
                let _ = client.complete(&complete, CALL_TIMEOUT).await;
            }
            leases
        }));
    }
    // Feed jobs at a steady rate, each enqueue in its own task so a slow answer does not slow
    // the feed.
    let acked: Arc<tokio::sync::Mutex<BTreeMap<u64, (String, Instant)>>> = Arc::default();
    let interval = Duration::from_secs_f64(1.0 / args.jobs_per_s.max(1) as f64);
    let mut tick = tokio::time::interval(interval);
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut feeders = Vec::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        tick.tick().await;
        let client = target.clients[n as usize % target.clients.len()].clone();
        let acked = acked.clone();
        feeders.push(tokio::spawn(async move {
            let body = format!("workers job {n}").into_bytes();
            if let Ok(id) = client.enqueue(body.clone(), 1, None).await {
                acked.lock().await.insert(id, (hex(&chain(&body, 1)), Instant::now()));
            }
        }));
        n += 1;
    }
    for feeder in feeders {
        let _ = feeder.await;
    }
    let acked = acked.lock().await.clone();
    let expected: BTreeMap<u64, String> = acked.iter().map(|(id, (result, _))| (*id, result.clone())).collect();
    // Let the simulated workers drain what is queued, then stop them.
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    let mut results = BTreeMap::new();
    let mut cursor = 0;
    while results.len() < expected.len() && Instant::now() < drain_deadline {
        match target.clients[0].pull_after(cursor, 10_000).await {
            Ok(page) if !page.jobs.is_empty() => {
                cursor = page.cursor;
                results.extend(page.jobs.into_iter().map(|j| (j.id, j.result)));
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = Latencies::default();
    let mut leased = 0;
    for task in tasks {
        let Ok(leases) = task.await else { continue };
        leased += leases.len() as u64;
        for (job, at) in leases {
            if let Some((_, enqueued)) = acked.get(&job) {
                let latency = at.saturating_duration_since(*enqueued);
                latencies.record(latency);
                report.series.push((enqueued.duration_since(started).as_secs_f64(), latency.as_secs_f64() * 1e3));
            }
        }
    }
    let lost = expected.keys().filter(|id| !results.contains_key(id)).count();
    let wrong = expected.iter().filter(|(id, want)| results.get(*id).is_some_and(|got| got != *want)).count();
    if lost > 0 {
        report.failures.push(format!("{lost} acknowledged jobs never completed"));
    }
    if wrong > 0 {
        report.failures.push(format!("{wrong} wrong results"));
    }
    let connected = connected.load(Ordering::Relaxed);
    if connected < simulated as u64 {
        let why = refusal.get().map_or("", String::as_str);
        report
            .failures
            .push(format!("only {connected} of {simulated} simulated workers registered (first refusal: {why})"));
    }
    report.figure("connected_workers", connected);
    report.figure("jobs_enqueued", expected.len());
    report.figure("leases_per_s", leased as f64 / elapsed);
    report.figure("lease_latency", latencies.summary());
    Ok(report)
}
