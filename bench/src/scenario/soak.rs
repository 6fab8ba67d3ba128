//! `soak`: a steady open-loop load at a share (default 80 %) of the sustainable rate for M
//! minutes, with workers computing every job and the bench checking every result against its
//! own chain. Every few seconds it samples each process's resident memory, the enqueue and
//! completion latency over the interval, jobs acknowledged and completed, and the queue depth.
//!
//! The sustainable rate is measured first, unless given: a closed loop of clients enqueueing the
//! same workload for a few seconds, with the workers computing; the rate is the lesser of jobs
//! acknowledged and jobs completed per second (a queue that grows is not sustained).
//!
//! "Memory levels off" is defined on the soak's thirds by time: for each voter, the growth of
//! the last third's mean RSS over the middle third's, in MiB per 10 minutes, must be under
//! `--level-mib-per-10min`. Completed results are retained up to `--completed-retention`
//! (1,000,000 by default), so memory rightly grows until that many results are kept; the report
//! says whether the run reached the bound, and a run that did not cannot show levelling.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use wire::client::ApiClient;

use crate::cpu::rss_bytes_of;
use crate::report::{Chart, Report};
use crate::scenario::flow::{Follower, Page, body, expected_result, skipped_failure};
use crate::stats::{Latencies, Summary};
use crate::target::{Target, TargetArgs};

/// The coordinators' default `--completed-retention`.
const DEFAULT_RETENTION: u64 = 1_000_000;
/// The pause between cursor polls that found less than a full page.
const POLL_PAUSE: Duration = Duration::from_millis(10);
/// How often the open loop sends what has come due.
const TICK: Duration = Duration::from_millis(10);
/// Enqueues in flight at most; a tick that would exceed it sheds its jobs (counted).
const MAX_IN_FLIGHT: usize = 4_096;
/// Attempts of one enqueue (alternating coordinators) before the bench gives it up.
const ATTEMPTS: u32 = 50;
/// The processes whose memory the verdict judges: the three voters.
const VOTERS: [&str; 3] = ["coordinator-1", "coordinator-2", "witness"];

/// Options of `soak`.
#[derive(clap::Args, Clone, Debug)]
pub struct SoakArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Minutes of steady load.
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Jobs/s the cluster sustains with this workload (default: measured first, in a saturation
    /// phase of --saturation-s seconds).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Share of the sustainable rate offered during the soak.
    #[arg(long, default_value_t = 0.8)]
    pub share: f64,
    /// Seconds of the saturation phase.
    #[arg(long, default_value_t = 30.0)]
    pub saturation_s: f64,
    /// Concurrent clients of the saturation phase.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Smallest body in bytes (each job's size is drawn between the two, from its number).
    #[arg(long, default_value_t = 16_384)]
    pub min_body_bytes: usize,
    /// Largest body in bytes.
    #[arg(long, default_value_t = 262_144)]
    pub max_body_bytes: usize,
    /// Iterations per job.
    #[arg(long, default_value_t = 200)]
    pub iterations: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    pub sample_s: f64,
    /// With --local: the coordinators' --completed-retention (results kept); memory can level
    /// off only once the cluster holds this many.
    #[arg(long)]
    pub completed_retention: Option<u64>,
    /// Growth of a voter's mean RSS from the middle third of the soak to the last, in MiB per
    /// 10 minutes, under which its memory counts as level.
    #[arg(long, default_value_t = 8.0)]
    pub level_mib_per_10min: f64,
}

/// The jobs of a soak: job `n` has a body of a size drawn from `n` between the bounds.
#[derive(Clone, Copy, Debug)]
struct Workload {
    min_body: usize,
    max_body: usize,
    iterations: u64,
}

impl Workload {
    /// Job `n`'s body size: spread evenly between the bounds by a hash of `n` (splitmix64).
    fn size(&self, n: u64) -> usize {
        let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let span = self.max_body.saturating_sub(self.min_body) as u64 + 1;
        self.min_body + (z % span) as usize
    }

    fn expected(&self, n: u64) -> String {
        expected_result(n, self.size(n), self.iterations)
    }
}

/// What happened since the last sample.
#[derive(Default)]
struct Interval {
    enqueue: Latencies,
    completion: Latencies,
    acked: u64,
    completed: u64,
    errors: u64,
}

/// State shared by the enqueuers, the checker and the sampler.
#[derive(Default)]
struct Shared {
    /// Acknowledged jobs whose result has not been seen: job id -> (job number, enqueue sent).
    pending: Mutex<HashMap<u64, (u64, Instant)>>,
    interval: Mutex<Interval>,
    acked: AtomicU64,
    checked: AtomicU64,
    wrong: AtomicU64,
    given_up: AtomicU64,
    in_flight: AtomicU64,
    /// Set once no more jobs will be enqueued: the checker stops when nothing is pending.
    done: AtomicBool,
    /// A failure the checker saw (retention overtook it, a job seen twice).
    failures: Mutex<Vec<String>>,
}

impl Shared {
    fn pending(&self) -> usize {
        self.pending.lock().expect("pending").len()
    }
}

/// Enqueue job `n` with an idempotency key, retrying on the other coordinator; record its
/// acknowledgement.
async fn enqueue(shared: Arc<Shared>, clients: Arc<Vec<ApiClient>>, n: u64, workload: Workload) {
    let body = body(n, workload.size(n));
    let key = format!("soak-{n}");
    let sent = Instant::now();
    let mut current = n as usize % clients.len();
    for _ in 0..ATTEMPTS {
        match clients[current].enqueue(body.clone(), workload.iterations, Some(&key)).await {
            Ok(id) => {
                let latency = sent.elapsed();
                shared.pending.lock().expect("pending").insert(id, (n, sent));
                let mut interval = shared.interval.lock().expect("interval");
                interval.enqueue.record(latency);
                interval.acked += 1;
                shared.acked.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => {
                shared.interval.lock().expect("interval").errors += 1;
                current = (current + 1) % clients.len();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    shared.given_up.fetch_add(1, Ordering::Relaxed);
}

/// Follow the results with the cursor and check each against the bench's chain, until the load
/// is done and nothing is pending (or `give_up` passes after it is done). Returns the results
/// of jobs the bench never saw acknowledged.
async fn check(shared: Arc<Shared>, clients: Arc<Vec<ApiClient>>, workload: Workload) -> usize {
    let mut follower = Follower::default();
    // Checking a result hashes its body again: it runs in a task of its own, so that a slow
    // check does not delay reading the next page (and the completion latency measures the
    // cluster, not the checker).
    let (to_verifier, mut batches) = tokio::sync::mpsc::unbounded_channel::<Vec<(u64, String)>>();
    let verifier = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(batch) = batches.recv().await {
                let count = batch.len() as u64;
                let wrong = tokio::task::spawn_blocking(move || {
                    batch.iter().filter(|(n, result)| *result != workload.expected(*n)).count() as u64
                })
                .await
                .unwrap_or(count);
                shared.wrong.fetch_add(wrong, Ordering::Relaxed);
                shared.checked.fetch_add(count, Ordering::Relaxed);
            }
        })
    };
    // Results seen before their enqueue's answer reached the bench: id -> (result, seen).
    let mut early: HashMap<u64, (String, Instant)> = HashMap::new();
    let mut give_up: Option<Instant> = None;
    loop {
        if shared.done.load(Ordering::Relaxed) {
            if shared.pending() == 0 {
                break;
            }
            let deadline = *give_up.get_or_insert_with(|| Instant::now() + Duration::from_secs(120));
            if Instant::now() > deadline {
                break;
            }
        }
        let (jobs, full) = match follower.next(&clients).await {
            Page::Results { jobs, full } => (jobs, full),
            Page::Skipped(skipped) => {
                shared.failures.lock().expect("failures").push(skipped_failure(skipped));
                break;
            }
            Page::Nothing => (Vec::new(), false),
        };
        let now = Instant::now();
        for job in jobs {
            if early.insert(job.id, (job.result, now)).is_some() {
                shared.failures.lock().expect("failures").push(format!("job {} seen twice in the cursor walk", job.id));
            }
        }
        // Match what was seen with the acknowledged jobs, then check them off this thread.
        let mut matched = Vec::new();
        {
            let mut pending = shared.pending.lock().expect("pending");
            early.retain(|id, (result, seen)| match pending.remove(id) {
                Some((n, sent)) => {
                    matched.push((n, std::mem::take(result), seen.duration_since(sent)));
                    false
                }
                None => true,
            });
        }
        if !matched.is_empty() {
            let mut interval = shared.interval.lock().expect("interval");
            interval.completed += matched.len() as u64;
            let batch = matched
                .into_iter()
                .map(|(n, result, latency)| {
                    interval.completion.record(latency);
                    (n, result)
                })
                .collect();
            drop(interval);
            if to_verifier.send(batch).is_err() {
                break;
            }
        }
        if !full {
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }
    drop(to_verifier);
    let _ = verifier.await;
    early.len()
}

/// One sample of the soak.
#[derive(Serialize, Clone, Debug)]
struct Sample {
    /// Seconds since the soak began.
    t_s: f64,
    /// Resident memory by process (MiB); `bench` is the load generator itself.
    rss_mib: BTreeMap<String, f64>,
    /// Enqueue latency over the interval.
    enqueue: Summary,
    /// Enqueue to result seen by the bench, over the interval.
    completion: Summary,
    /// Enqueues acknowledged in the interval, per second.
    acked_per_s: f64,
    /// Results the bench saw in the interval, per second.
    completed_per_s: f64,
    /// Failed enqueue attempts (retried) in the interval.
    enqueue_errors: u64,
    /// From `/cluster`: jobs waiting.
    queued: Option<u64>,
    /// From `/cluster`: jobs leased to workers.
    running: Option<u64>,
    /// From `/cluster`: results retained.
    retained: Option<u64>,
}

/// Resident memory of every local process and of the bench, in MiB.
fn rss_now(processes: &[(String, Option<u32>)]) -> BTreeMap<String, f64> {
    let mib = |bytes: u64| (bytes as f64 / (1 << 20) as f64 * 10.0).round() / 10.0;
    let mut rss: BTreeMap<String, f64> =
        processes.iter().filter_map(|(name, pid)| Some((name.clone(), mib(rss_bytes_of((*pid)?)?)))).collect();
    if let Some(own) = rss_bytes_of(std::process::id()) {
        rss.insert("bench".into(), mib(own));
    }
    rss
}

/// Take the interval's figures and the cluster's, as a sample at `t_s`.
async fn sample(
    shared: &Shared,
    clients: &[ApiClient],
    processes: &[(String, Option<u32>)],
    t_s: f64,
    seconds: f64,
) -> (Sample, Latencies, Latencies) {
    let interval = std::mem::take(&mut *shared.interval.lock().expect("interval"));
    let mut view = None;
    for client in clients {
        if let Ok(answer) = client.cluster().await {
            view = Some(answer);
            break;
        }
    }
    let sample = Sample {
        t_s,
        rss_mib: rss_now(processes),
        enqueue: interval.enqueue.summary(),
        completion: interval.completion.summary(),
        acked_per_s: interval.acked as f64 / seconds.max(1e-9),
        completed_per_s: interval.completed as f64 / seconds.max(1e-9),
        enqueue_errors: interval.errors,
        queued: view.as_ref().map(|v| v.queued),
        running: view.as_ref().map(|v| v.running),
        retained: view.as_ref().map(|v| v.completed_retained),
    };
    (sample, interval.enqueue, interval.completion)
}

/// Mean RSS over the first, middle and last thirds of the soak (by time), and the growth from
/// the middle third to the last in MiB per 10 minutes.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct Thirds {
    /// Mean over the first third (MiB).
    pub start_mib: f64,
    /// Mean over the middle third (MiB).
    pub middle_mib: f64,
    /// Mean over the last third (MiB).
    pub end_mib: f64,
    /// (end - middle) over the time between the thirds' centres, per 10 minutes.
    pub growth_mib_per_10min: f64,
}

/// [`Thirds`] of `(t_s, value)` points over a soak of `duration_s`; `None` if a third is empty.
pub fn thirds(points: &[(f64, f64)], duration_s: f64) -> Option<Thirds> {
    let third = duration_s / 3.0;
    let mean_in = |k: f64| {
        // The last third keeps the final sample, taken at the very end.
        let upper = if k >= 2.0 { f64::INFINITY } else { (k + 1.0) * third };
        let values: Vec<f64> = points.iter().filter(|(t, _)| *t >= k * third && *t < upper).map(|p| p.1).collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let (start, middle, end) = (mean_in(0.0)?, mean_in(1.0)?, mean_in(2.0)?);
    // The thirds' centres are one third apart.
    let growth = (end - middle) / third.max(1e-9) * 600.0;
    let round = |x: f64| (x * 10.0).round() / 10.0;
    Some(Thirds {
        start_mib: round(start),
        middle_mib: round(middle),
        end_mib: round(end),
        growth_mib_per_10min: round(growth),
    })
}

/// Run `soak`.
pub async fn run(args: &SoakArgs, quick: bool) -> anyhow::Result<Report> {
    anyhow::ensure!(args.min_body_bytes >= 8 && args.min_body_bytes <= args.max_body_bytes, "body bounds");
    anyhow::ensure!(args.share > 0.0 && args.iterations > 0, "--share and --iterations must be positive");
    let soak_s = if quick { (args.minutes * 60.0).min(6.0) } else { args.minutes * 60.0 };
    let saturation_s = if quick { args.saturation_s.min(3.0) } else { args.saturation_s };
    let sample_s = if quick { args.sample_s.min(1.0) } else { args.sample_s };
    let clients_n = if quick { args.clients.min(8) } else { args.clients };
    let workload =
        Workload { min_body: args.min_body_bytes, max_body: args.max_body_bytes, iterations: args.iterations };
    let retention = args.completed_retention.unwrap_or(DEFAULT_RETENTION);
    let mut report = Report::new(
        "soak",
        serde_json::json!({
            "minutes": soak_s / 60.0, "share": args.share, "rate_given": args.rate,
            "saturation_s": saturation_s, "saturation_clients": clients_n,
            "body_bytes": [args.min_body_bytes, args.max_body_bytes], "iterations": args.iterations,
            "sample_s": sample_s, "completed_retention": retention,
        }),
    );
    let retention_arg = args.completed_retention.map(|r| r.to_string());
    let coordinator_args: Vec<&str> = match &retention_arg {
        Some(r) => vec!["--completed-retention", r.as_str()],
        None => vec![],
    };
    let target = Target::open(&args.target, &coordinator_args).await?;
    let clients = Arc::new(target.clients.clone());
    let processes: Vec<(String, Option<u32>)> =
        target.metered_processes().into_iter().map(|p| (p.name, p.pid)).collect();
    report.figure("rss_mib_before_load", rss_now(&processes));
    let shared = Arc::new(Shared::default());
    let checker = tokio::spawn(check(shared.clone(), clients.clone(), workload));
    let next = Arc::new(AtomicU64::new(0));

    // The sustainable rate: given, or measured under a closed loop.
    let sustainable = match args.rate {
        Some(rate) => rate,
        None => {
            let completed_before = completed_total(&clients).await;
            let started = Instant::now();
            let deadline = started + Duration::from_secs_f64(saturation_s);
            let mut loops = Vec::new();
            for _ in 0..clients_n {
                let (shared, clients, next) = (shared.clone(), clients.clone(), next.clone());
                loops.push(tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        enqueue(shared.clone(), clients.clone(), n, workload).await;
                    }
                }));
            }
            for task in loops {
                task.await?;
            }
            let elapsed = started.elapsed().as_secs_f64();
            let completed = completed_total(&clients).await.zip(completed_before).map(|(after, before)| after - before);
            let acked = shared.acked.load(Ordering::Relaxed);
            let acked_rate = acked as f64 / elapsed;
            let completed_rate = completed.map(|c| c as f64 / elapsed);
            report.figure("saturation_acked_per_s", acked_rate);
            report.figure("saturation_completed_per_s", completed_rate);
            let rate = completed_rate.map_or(acked_rate, |c| c.min(acked_rate));
            // Let the saturation's backlog drain before the soak starts.
            let drain_deadline = Instant::now() + Duration::from_secs(120);
            while shared.pending() > 0 && Instant::now() < drain_deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            rate
        }
    };
    anyhow::ensure!(sustainable > 0.0, "no sustainable rate (nothing was acknowledged)");
    let offered = args.share * sustainable;
    report.figure("sustainable_jobs_per_s", sustainable);
    report.figure("offered_jobs_per_s", offered);

    // The soak: an open loop sending what has come due every tick, sampled every `sample_s`.
    let started = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_sample = sample_s;
    let mut last_sample_at = 0.0;
    let mut samples: Vec<Sample> = Vec::new();
    let mut latencies_by_sample: Vec<(Latencies, Latencies)> = Vec::new();
    let (mut sent, mut shed) = (0u64, 0u64);
    let acked_before = shared.acked.load(Ordering::Relaxed);
    let progress = crate::report::progress_bar(soak_s.ceil() as u64, "seconds of soak");
    // Drop the saturation's figures from the first interval.
    drop(std::mem::take(&mut *shared.interval.lock().expect("interval")));
    loop {
        tick.tick().await;
        let t = started.elapsed().as_secs_f64();
        progress.set_position(t as u64);
        if t >= next_sample || t >= soak_s {
            let (s, enqueue, completion) = sample(&shared, &clients, &processes, t, t - last_sample_at).await;
            samples.push(s);
            latencies_by_sample.push((enqueue, completion));
            last_sample_at = t;
            next_sample += sample_s;
        }
        if t >= soak_s {
            break;
        }
        let due = (offered * t) as u64;
        while sent < due {
            sent += 1;
            if shared.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT as u64 {
                shed += 1;
                continue;
            }
            let n = next.fetch_add(1, Ordering::Relaxed);
            let (shared, clients) = (shared.clone(), clients.clone());
            shared.in_flight.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                enqueue(shared.clone(), clients, n, workload).await;
                shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
    progress.finish_and_clear();
    let soak_elapsed = started.elapsed().as_secs_f64();
    let soak_acked = shared.acked.load(Ordering::Relaxed) - acked_before;
    // Wait for the enqueues still in flight, then for their results.
    let flight_deadline = Instant::now() + Duration::from_secs(60);
    while shared.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < flight_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared.done.store(true, Ordering::Relaxed);
    let unacknowledged_results = checker.await?;

    // Correctness.
    let acked = shared.acked.load(Ordering::Relaxed);
    let checked = shared.checked.load(Ordering::Relaxed);
    let wrong = shared.wrong.load(Ordering::Relaxed);
    let lost = shared.pending();
    let given_up = shared.given_up.load(Ordering::Relaxed);
    report.failures.extend(shared.failures.lock().expect("failures").drain(..));
    if wrong > 0 {
        report.failures.push(format!("{wrong} wrong results"));
    }
    if lost > 0 {
        report.failures.push(format!("{lost} acknowledged jobs never completed"));
    }
    if given_up > 0 {
        report.failures.push(format!("{given_up} enqueues failed {ATTEMPTS} times and were given up"));
    } else if unacknowledged_results > 0 {
        report.failures.push(format!("{unacknowledged_results} results for jobs this run never had acknowledged"));
    }
    report.figure("acknowledged", acked);
    report.figure("checked", checked);
    report.figure("wrong", wrong);
    report.figure("lost", lost);
    report.figure("soak_s", soak_elapsed);
    report.figure("soak_acked_per_s", soak_acked as f64 / soak_elapsed.max(1e-9));
    report.figure("shed_by_bench", shed);
    report.figure("samples", samples.len());

    // Summary by thirds: memory per process, latency.
    let names: Vec<String> = samples
        .iter()
        .flat_map(|s| s.rss_mib.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut rss_thirds = serde_json::Map::new();
    let mut verdicts = Vec::new();
    let mut level = true;
    for name in &names {
        let points: Vec<(f64, f64)> = samples.iter().filter_map(|s| Some((s.t_s, *s.rss_mib.get(name)?))).collect();
        let Some(thirds) = thirds(&points, soak_elapsed) else { continue };
        if VOTERS.contains(&name.as_str()) {
            level &= thirds.growth_mib_per_10min <= args.level_mib_per_10min;
            verdicts.push(format!("{name} {:+.1}", thirds.growth_mib_per_10min));
        }
        rss_thirds.insert(name.clone(), serde_json::to_value(thirds)?);
    }
    report.figure("rss_mib_by_third", rss_thirds);
    let third_of = |k: usize| {
        let mut enqueue = Latencies::default();
        let mut completion = Latencies::default();
        for (s, (e, c)) in samples.iter().zip(&latencies_by_sample) {
            if ((s.t_s / soak_elapsed.max(1e-9) * 3.0) as usize).min(2) == k {
                enqueue.merge(e);
                completion.merge(c);
            }
        }
        (enqueue.summary(), completion.summary())
    };
    let (first, last) = (third_of(0), third_of(2));
    report.figure("enqueue_latency_first_third", first.0);
    report.figure("enqueue_latency_last_third", last.0);
    report.figure("completion_latency_first_third", first.1);
    report.figure("completion_latency_last_third", last.1);
    let max_retained = samples.iter().filter_map(|s| s.retained).max().unwrap_or(0);
    let reached = max_retained >= retention;
    report.figure("max_results_retained", max_retained);
    report.figure("retention_bound_reached", reached);
    report.figure("memory_levels_off", level && reached);
    let growth = verdicts.join(", ");
    let threshold = args.level_mib_per_10min;
    let verdict = match (level, reached) {
        (true, true) => format!(
            "verdict: memory levels off (RSS growth from the middle third to the last, MiB per 10 min: {growth}; all under {threshold})"
        ),
        (false, true) => format!(
            "verdict: memory does NOT level off (RSS growth from the middle third to the last, MiB per 10 min: {growth}; limit {threshold})"
        ),
        (_, false) => format!(
            "verdict: undecided: the cluster kept at most {max_retained} results, below the retention bound of {retention}, \
             so it still accumulates results (RSS growth MiB per 10 min: {growth}); run longer or with a smaller --completed-retention"
        ),
    };
    report.text.push(verdict);
    report.detail = serde_json::json!({ "samples": samples });
    report.charts = charts(&samples);
    Ok(report)
}

/// `completed_total` as one of the coordinators reports it.
async fn completed_total(clients: &[ApiClient]) -> Option<u64> {
    for client in clients {
        if let Ok(view) = client.cluster().await {
            return Some(view.queue.completed_total);
        }
    }
    None
}

/// RSS, latency and throughput over time.
fn charts(samples: &[Sample]) -> Vec<Chart> {
    let minutes = |s: &Sample| s.t_s / 60.0;
    let mut names: Vec<&String> = samples.iter().flat_map(|s| s.rss_mib.keys()).collect();
    names.sort();
    names.dedup();
    let line = |name: &str, value: &dyn Fn(&Sample) -> Option<f64>| {
        (name.to_owned(), samples.iter().filter_map(|s| Some((minutes(s), value(s)?))).collect::<Vec<_>>())
    };
    let rss = names.iter().map(|name| line(name, &|s: &Sample| s.rss_mib.get(*name).copied())).collect();
    let counted = |summary: &Summary, value: f64| (summary.count > 0).then_some(value);
    vec![
        Chart { title: "soak: resident memory".into(), x_desc: "minutes".into(), y_desc: "MiB".into(), lines: rss },
        Chart {
            title: "soak: latency over each sample interval".into(),
            x_desc: "minutes".into(),
            y_desc: "ms".into(),
            lines: vec![
                line("enqueue p50", &|s: &Sample| counted(&s.enqueue, s.enqueue.p50_ms)),
                line("enqueue p99", &|s: &Sample| counted(&s.enqueue, s.enqueue.p99_ms)),
                line("completion p50", &|s: &Sample| counted(&s.completion, s.completion.p50_ms)),
                line("completion p99", &|s: &Sample| counted(&s.completion, s.completion.p99_ms)),
            ],
        },
        Chart {
            title: "soak: jobs per second and queue depth".into(),
            x_desc: "minutes".into(),
            y_desc: "jobs/s, jobs".into(),
            lines: vec![
                line("acknowledged/s", &|s: &Sample| Some(s.acked_per_s)),
                line("completed/s", &|s: &Sample| Some(s.completed_per_s)),
                line("queued + running", &|s: &Sample| Some((s.queued? + s.running?) as f64)),
            ],
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::{Workload, thirds};

    #[test]
    fn thirds_split_by_time_and_give_growth_per_ten_minutes() {
        // 30 minutes, one sample a minute: flat at 100 for 20 minutes, then +1 MiB a minute.
        let points: Vec<(f64, f64)> =
            (0..30).map(|m| (m as f64 * 60.0, if m < 20 { 100.0 } else { 100.0 + (m - 19) as f64 })).collect();
        let t = thirds(&points, 1800.0).expect("thirds");
        assert_eq!((t.start_mib, t.middle_mib, t.end_mib), (100.0, 100.0, 105.5));
        assert_eq!(t.growth_mib_per_10min, 5.5);
        assert!(thirds(&points[..5], 1800.0).is_none());
    }

    #[test]
    fn body_sizes_cover_the_bounds() {
        let w = Workload { min_body: 16_384, max_body: 262_144, iterations: 1 };
        let sizes: Vec<usize> = (0..10_000).map(|n| w.size(n)).collect();
        assert!(sizes.iter().all(|s| (16_384..=262_144).contains(s)));
        let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
        assert!((130_000.0..148_000.0).contains(&mean), "mean {mean}");
        assert_eq!(Workload { min_body: 8, max_body: 8, iterations: 1 }.size(5), 8);
    }
}
