//! `flow`: J jobs of I iterations from N clients, until every result is visible through
//! `pullCompleted` cursors; jobs/s, enqueue-to-visible latency, and the coordination overhead as
//! the ratio of the elapsed time to the ideal (total iterations / measured per-core rate / cores).
//!
//! With `--repeated-percent P`, P of every 100 jobs repeat another job's body and iterations,
//! and the workload runs twice on the same cluster: first with reuse off (every job computed),
//! then with reuse on (other bodies, the same shape): jobs/s of both, their ratio, and the jobs
//! reused and iterations saved as the cluster counted them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use wire::client::ApiClient;

use crate::reference::{chain, hex, median, plain_loop_rate_median, plain_loop_rates_parallel};
use crate::report::Report;
use crate::stats::Latencies;
use crate::target::{Target, TargetArgs};

/// Results asked for per `pullCompleted`.
const PAGE: usize = 10_000;
/// The pause between polls that found less than a full page: about one job's computing time,
/// within these bounds. Each poll is a read barrier (a round to the peers): polling much faster
/// than results can arrive only takes CPU from the workers, while the pause bounds how late the
/// bench sees the last result.
const POLL_PAUSE_MIN: Duration = Duration::from_millis(5);
const POLL_PAUSE_MAX: Duration = Duration::from_millis(50);

/// Options of `flow`.
#[derive(clap::Args, Clone, Debug)]
pub struct FlowArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Jobs.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: u64,
    /// Iterations per job.
    #[arg(long, default_value_t = 1)]
    pub iterations: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 16_384)]
    pub body_bytes: usize,
    /// Give up waiting for results after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// Worker cores of the cluster, for the ideal time (default: known for --local).
    #[arg(long)]
    pub ideal_cores: Option<usize>,
    /// Percent of jobs (0 to 99) that repeat another job's body and iterations; above 0, the
    /// workload runs with reuse off, then on, and both are reported.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..100))]
    pub repeated_percent: u64,
}

/// Body numbers of the run with reuse on start here: no body of the run with reuse off repeats.
const REUSE_ON_BODIES: u64 = 1 << 40;

/// The body job `n` sends when `percent` of every 100 jobs repeat another's: the body of the
/// last job of its block of 100 for the first `percent` of the block, its own otherwise.
pub fn body_number(n: u64, percent: u64) -> u64 {
    if n % 100 < percent { n / 100 * 100 + 99 } else { n }
}

/// Job `n`'s body: deterministic, so it need not be kept for the check.
pub fn body(n: u64, size: usize) -> Vec<u8> {
    let mut body = vec![(n % 251) as u8; size.max(8)];
    body[..8].copy_from_slice(&n.to_le_bytes());
    body
}

/// The result job `n` (a body of `size` bytes, `iterations`) must have, from the bench's own chain.
pub fn expected_result(n: u64, size: usize, iterations: u64) -> String {
    hex(&chain(&body(n, size), iterations))
}

/// What one step of a [`Follower`] saw.
pub enum Page {
    /// Results after the cursor, oldest first; `full` when more may be waiting right away.
    Results { jobs: Vec<wire::api::CompletedJob>, full: bool },
    /// Nothing new (or the coordinator asked did not answer).
    Nothing,
    /// Retention dropped this many results before they were read.
    Skipped(u64),
}

/// Follows the completions with a `pullCompleted` cursor, alternating coordinators.
#[derive(Default)]
pub struct Follower {
    cursor: u64,
    reader: usize,
}

impl Follower {
    /// A follower of the completions after `cursor`.
    pub fn after(cursor: u64) -> Follower {
        Follower { cursor, reader: 0 }
    }

    /// The next page of results from one of `clients`.
    pub async fn next(&mut self, clients: &[ApiClient]) -> Page {
        let client = &clients[self.reader % clients.len()];
        self.reader += 1;
        match client.pull_after(self.cursor, PAGE as u64).await {
            Ok(page) if page.skipped > 0 => Page::Skipped(page.skipped),
            Ok(page) if !page.jobs.is_empty() => {
                self.cursor = page.cursor;
                let full = page.jobs.len() >= PAGE;
                Page::Results { jobs: page.jobs, full }
            }
            _ => Page::Nothing,
        }
    }
}

/// The failure when retention dropped `skipped` results before the bench read them.
pub fn skipped_failure(skipped: u64) -> String {
    format!(
        "the cluster's retention dropped {skipped} results before the bench read them: \
         run it with a larger --completed-retention"
    )
}

/// Run `flow`.
pub async fn run(args: &FlowArgs, quick: bool) -> anyhow::Result<Report> {
    let jobs = if quick { args.jobs.min(1_000) } else { args.jobs };
    let mut report = Report::new(
        "flow",
        serde_json::json!({ "jobs": jobs, "iterations": args.iterations, "clients": args.clients, "body_bytes": args.body_bytes }),
    );
    // The reference rates are measured before and after the load (the load itself takes every
    // core), from several short runs each.
    let reference_seconds = if quick { 0.5 } else { 2.0 };
    let target = Target::open(&args.target, &[]).await?;
    let cores = args.ideal_cores.or(target.worker_cores());
    let plain_before = plain_loop_rate_median(reference_seconds, 5);
    let poll_pause =
        Duration::from_secs_f64(args.iterations as f64 / plain_before.max(1.0)).clamp(POLL_PAUSE_MIN, POLL_PAUSE_MAX);
    let together_before = cores.map(|cores| plain_loop_rates_parallel(reference_seconds, cores, 3));
    let phase = Phase { jobs, poll_pause, repeated_percent: args.repeated_percent };
    // The elapsed time of the run in which every job is computed (the ideal's measure).
    let computed_elapsed = if args.repeated_percent == 0 {
        let elapsed = phase.run(&target, args, 0, true, "", &mut report).await;
        report.figure("elapsed_s", elapsed);
        report.figure("jobs_per_s", jobs as f64 / elapsed);
        elapsed
    } else {
        let off = phase.run(&target, args, 0, false, "reuse_off_", &mut report).await;
        // A leader enables reuse once it has heard every member say it can (seconds after a
        // cluster starts).
        let waiting_since = Instant::now();
        while !target.clients[0].cluster().await?.queue.reuse_enabled {
            if waiting_since.elapsed() > Duration::from_secs(30) {
                report.failures.push("reuse was not enabled within 30 s: does every member run this version?".into());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let before = target.clients[0].cluster().await?.queue;
        let on = phase.run(&target, args, REUSE_ON_BODIES, true, "reuse_on_", &mut report).await;
        let after = target.clients[0].cluster().await?.queue;
        report.figure("reuse_off_elapsed_s", off);
        report.figure("reuse_on_elapsed_s", on);
        report.figure("reuse_off_jobs_per_s", jobs as f64 / off);
        report.figure("reuse_on_jobs_per_s", jobs as f64 / on);
        report.figure("ratio_reuse_on_to_off_jobs_per_s", off / on);
        report.figure("jobs_reused", after.reused_total - before.reused_total);
        report.figure("iterations_saved", after.iterations_saved_total - before.iterations_saved_total);
        off
    };
    let plain_after = plain_loop_rate_median(reference_seconds, 5);
    let per_core = (plain_before + plain_after) / 2.0;
    report.figure("plain_loop_hashes_per_s_per_core", per_core);
    report.figure("plain_loop_before_after", serde_json::json!([plain_before, plain_after]));
    if let (Some(cores), Some(together_before)) = (cores, together_before) {
        // The ideal uses what `cores` plain loops hash together when all run at once, not one
        // loop's rate times the cores (on this VM the two vCPUs do not add up to twice one). It
        // is the median of short runs before and after the load: the VM's speed drifts, and
        // the median ignores a run that a neighbour slowed down.
        let together_after = plain_loop_rates_parallel(reference_seconds, cores, 3);
        let samples = [together_before, together_after].concat();
        let together = median(&samples);
        let ideal = (jobs * args.iterations) as f64 / together;
        report.figure("plain_loops_together_hashes_per_s", together);
        report.figure("plain_loops_together_samples", &samples);
        report.figure("worker_cores", cores);
        report.figure("ideal_s", ideal);
        report.figure("ratio_elapsed_to_ideal", computed_elapsed / ideal);
    }
    Ok(report)
}

/// One run of the workload: what it enqueues and how it follows the results.
struct Phase {
    jobs: u64,
    poll_pause: Duration,
    repeated_percent: u64,
}

impl Phase {
    /// Enqueue the jobs (bodies numbered from `first_body`, with or without `reuse`) and follow
    /// their results until all are visible; check each, record the latencies and retries in
    /// `report` (names prefixed with `prefix`; the series of the last run) and return the
    /// seconds it took.
    async fn run(
        &self,
        target: &Target,
        args: &FlowArgs,
        first_body: u64,
        reuse: bool,
        prefix: &str,
        report: &mut Report,
    ) -> f64 {
        let (jobs, poll_pause, percent) = (self.jobs, self.poll_pause, self.repeated_percent);
        // Results of an earlier run are all recorded by now: follow those after them.
        let after = match target.clients[0].cluster().await {
            Ok(cluster) => cluster.queue.last_completion_seq,
            Err(e) => {
                report.failures.push(format!("the cluster's status: {e}"));
                0
            }
        };
        // job id -> (body number, enqueue sent)
        let enqueued: Arc<Mutex<HashMap<u64, (u64, Instant)>>> = Arc::default();
        let started = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for c in 0..args.clients {
            let client = target.clients[c % target.clients.len()].clone();
            let (enqueued, next) = (enqueued.clone(), next.clone());
            let (size, iterations) = (args.body_bytes, args.iterations);
            tasks.push(tokio::spawn(async move {
                let mut errors = 0u64;
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= jobs {
                        return errors;
                    }
                    let sent = Instant::now();
                    let number = first_body + body_number(n, percent);
                    let key = format!("flow-{first_body}-{n}");
                    loop {
                        match client.enqueue_with_reuse(body(number, size), iterations, Some(&key), reuse).await {
                            Ok(id) => {
                                enqueued.lock().await.insert(id, (number, sent));
                                break;
                            }
                            Err(_) => {
                                errors += 1;
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                }
            }));
        }
        // Follow the completions with a cursor, alternating coordinators.
        let mut visible: HashMap<u64, (String, Instant)> = HashMap::new();
        let mut follower = Follower::after(after);
        let give_up = started + Duration::from_secs(args.timeout_s);
        let progress = crate::report::progress_bar(jobs, "results visible");
        while (visible.len() as u64) < jobs {
            progress.set_position(visible.len() as u64);
            if Instant::now() > give_up {
                report.failures.push(format!(
                    "only {} of {jobs} results visible after {} s",
                    visible.len(),
                    args.timeout_s
                ));
                break;
            }
            match follower.next(&target.clients).await {
                Page::Skipped(skipped) => {
                    report.failures.push(skipped_failure(skipped));
                    break;
                }
                Page::Results { jobs, full } => {
                    let now = Instant::now();
                    for job in jobs {
                        if visible.insert(job.id, (job.result, now)).is_some() {
                            report.failures.push(format!("job {} seen twice in the cursor walk", job.id));
                        }
                    }
                    // A full page means more are waiting; otherwise pause, so the bench's polling
                    // (a read barrier each) does not take the CPU the workers hash on.
                    if !full {
                        tokio::time::sleep(poll_pause).await;
                    }
                }
                Page::Nothing => tokio::time::sleep(poll_pause).await,
            }
        }
        progress.finish_and_clear();
        let elapsed = started.elapsed().as_secs_f64();
        let mut enqueue_errors = 0;
        for task in tasks {
            enqueue_errors += task.await.unwrap_or(0);
        }
        // Check every result against the bench's own chain.
        let enqueued = enqueued.lock().await;
        let mut latencies = Latencies::default();
        let mut series = Vec::new();
        for (id, (result, seen_at)) in &visible {
            let Some((number, sent)) = enqueued.get(id) else {
                report.failures.push(format!("result for job {id}, which this run never enqueued"));
                continue;
            };
            let latency = seen_at.duration_since(*sent);
            latencies.record(latency);
            series.push((sent.duration_since(started).as_secs_f64(), latency.as_secs_f64() * 1e3));
            if *result != expected_result(*number, args.body_bytes, args.iterations) {
                report.failures.push(format!("job {id} has a wrong result"));
            }
        }
        let lost = enqueued.keys().filter(|id| !visible.contains_key(id)).count();
        if lost > 0 {
            report.failures.push(format!("{lost} acknowledged jobs never became visible"));
        }
        report.figure(&format!("{prefix}enqueue_to_visible_latency"), latencies.summary());
        report.figure(&format!("{prefix}enqueue_retries"), enqueue_errors);
        report.series = series;
        elapsed
    }
}
