//! Tandem's worker: pulls jobs from the coordinators, computes them on every core, reports the
//! results; with `--witness` it also runs the cluster's third voter.
//!
//! - [`config`]: flags and defaults.
//! - [`compute`]: one job's chain, in chunks, checkpointed and cancellable.
//! - [`witness`]: the witness voter on its own runtime.
//! - [`metrics`]: `/metrics` on `--metrics-listen`.
//!
//! [`run`] is the whole worker: exchange its one-time join secret for the cluster secret if it
//! was launched with one (EC2 workers are: their launch data never holds the cluster secret), register, then long-poll for as many jobs as there are free cores,
//! compute each on a blocking thread, heartbeat the checkpoints (which keeps the leases alive),
//! and report results in batches. On shutdown it stops leasing, cancels what runs, hands the
//! checkpoints back with `release`, flushes results and returns.

pub mod compute;
pub mod config;
pub mod metrics;
pub mod witness;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use wire::worker::{
    CompleteRequest, Finished, HeartbeatRequest, JoinRequest, LeaseRequest, Progress, RegisterRequest, ReleaseRequest,
};
use wire::worker_client::{JoinError, WorkerCallError, WorkerClient};

use crate::compute::RunningJob;
use crate::config::Config;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A heartbeat waits for one coordinator at most its period (a third of a lease), and not less
/// than this: one that hangs (frozen, or its packets dropped) must not hold the next heartbeat
/// past the lease, so the worker tries the other coordinator while its leases still stand.
const HEARTBEAT_TIMEOUT_MIN: Duration = Duration::from_millis(250);
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const REPORT_BATCH: usize = 64;
/// How long the first result of a report waits for others: half a job's recent duration, within
/// these bounds, so short jobs report quickly and long ones share a Raft entry.
const REPORT_LINGER_MIN: Duration = Duration::from_millis(2);
const REPORT_LINGER_MAX: Duration = Duration::from_millis(20);
/// How long a shutting-down worker tries to hand its jobs back before giving up.
const DRAIN_BUDGET: Duration = Duration::from_secs(5);
/// At least this long is left for flushing results at the end of a drain.
const REPORT_FLUSH: Duration = Duration::from_secs(1);

/// Jobs held per core at most, when jobs are short enough to keep a backlog: what the
/// coordinators' body limits are sized for.
const MAX_BACKLOG_PER_CORE: usize = wire::worker::MAX_JOBS_PER_CORE as usize;
/// How much queued work (by recent job durations) a worker keeps in hand per core: enough that
/// short jobs do not wait on lease round trips, little enough that long jobs are not hoarded.
const BACKLOG_TARGET: Duration = Duration::from_millis(250);

/// A running worker: what its tasks (lease loop, heartbeat, reporter, jobs) share.
pub(crate) struct RunningWorker {
    config: Config,
    coordinators: WorkerClient,
    worker_id: AtomicU64,
    heartbeat_ms: AtomicU64,
    running: Mutex<HashMap<u64, Arc<RunningJob>>>,
    /// Woken whenever a job ends, so the lease loop can ask for more.
    job_ended: Notify,
    /// Cancelled to stop taking work for good (shutdown, or the secret refused).
    stop_leasing: CancellationToken,
    /// The coordinators refused this worker's cluster secret after it had registered (they
    /// were restarted with another one): it stops, hands back what it can and exits with an
    /// error, since retrying cannot fix its configuration.
    refused: std::sync::atomic::AtomicBool,
    /// No coordinator answered for `--give-up-after-ms`: the worker stops and exits with an
    /// error.
    orphaned: std::sync::atomic::AtomicBool,
    /// The coordinators asked this worker to drain: it hands its jobs back and takes no new
    /// ones, but keeps running (and heartbeating) until it is told to resume or shut down.
    draining: std::sync::atomic::AtomicBool,
    /// Woken (all waiters) whenever `draining` changes. Separate from `job_ended`, whose single
    /// wake-ups belong to the lease loop alone.
    drain_changed: Notify,
    /// One permit per core: held jobs beyond the cores wait here for their turn.
    cores: Arc<tokio::sync::Semaphore>,
    /// Recent mean computation time per job, in microseconds (an exponential moving average).
    mean_job_micros: AtomicU64,
    /// Chain steps computed so far.
    hashes: AtomicU64,
    /// Chain steps per second of one core: measured at start, then from the jobs it computes.
    core_rate: AtomicU64,
    /// Jobs finished and handed to the reporter.
    jobs_completed: AtomicU64,
}

impl RunningWorker {
    /// Every coordinator refused this worker's secret: stop for good.
    fn refuse(&self) {
        if !self.refused.swap(true, Ordering::Relaxed) {
            tracing::error!("{}; stopping", WorkerCallError::Unauthorized);
        }
        self.stop_leasing.cancel();
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<RunningJob>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long the join waits between rounds of the coordinators when none could answer.
const JOIN_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Exchange the configured join secret for the cluster secret (once: the coordinators refuse a
/// second exchange), retrying while no coordinator can answer, until `give_up_after_ms` or
/// `shutdown`. The configuration it returns holds the cluster secret and no join secret.
pub async fn join_cluster(mut config: Config, shutdown: &CancellationToken) -> anyhow::Result<Config> {
    let Some(join_secret) = config.join_secret().map_err(anyhow::Error::msg)? else {
        return Ok(config);
    };
    let request = JoinRequest { launch_token: config.launch_token.clone().unwrap_or_default(), join_secret };
    let http = reqwest::Client::builder().no_proxy().build()?;
    let started = std::time::Instant::now();
    let response = loop {
        match wire::worker_client::join(&http, &config.coordinators, &request, CALL_TIMEOUT).await {
            Ok(response) => break response,
            Err(JoinError::Refused(why)) => {
                anyhow::bail!("the join secret was refused ({why}): this worker cannot join")
            }
            Err(JoinError::Unavailable(why)) => {
                let waited = started.elapsed().as_millis() as u64;
                if config.give_up_after_ms.is_some_and(|limit| waited >= limit) {
                    anyhow::bail!("no coordinator took the join secret within {waited} ms: {why}");
                }
                tracing::info!(error = why, "no coordinator took the join secret yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("stopped before joining"),
                    _ = tokio::time::sleep(JOIN_RETRY_PAUSE) => {}
                }
            }
        }
    };
    wire::check_cluster_secret(Some(&response.cluster_secret), false).map_err(anyhow::Error::msg)?;
    tracing::info!(launch_token = request.launch_token, "exchanged the join secret for the cluster secret");
    config.cluster_secret = Some(response.cluster_secret);
    config.join_token = None;
    config.join_token_file = None;
    Ok(config)
}

/// Run the worker until `shutdown` is cancelled (or the coordinators tell it to drain).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let config = join_cluster(config, &shutdown).await?;
    if config.cluster_secret.is_none() {
        tracing::warn!(
            witness = config.witness,
            "running without a cluster secret (--insecure-no-cluster-secret): only coordinators without one \
             accept this worker, and a witness serves its Raft routes to anyone who reaches its port; for \
             tests on a private machine only"
        );
    }
    let witness_voter = if config.witness { Some(witness::Witness::start(&config)?) } else { None };
    let shared = Arc::new(RunningWorker {
        coordinators: WorkerClient::new(config.coordinators.clone(), config.cluster_secret.as_deref())?,
        worker_id: AtomicU64::new(0),
        heartbeat_ms: AtomicU64::new(1_000),
        running: Mutex::new(HashMap::new()),
        job_ended: Notify::new(),
        stop_leasing: shutdown.child_token(),
        refused: std::sync::atomic::AtomicBool::new(false),
        orphaned: std::sync::atomic::AtomicBool::new(false),
        draining: std::sync::atomic::AtomicBool::new(false),
        drain_changed: Notify::new(),
        cores: Arc::new(tokio::sync::Semaphore::new(config.cores())),
        mean_job_micros: AtomicU64::new(u64::MAX),
        hashes: AtomicU64::new(0),
        jobs_completed: AtomicU64::new(0),
        core_rate: AtomicU64::new(measure_core_rate().await),
        config,
    });
    if let Some(limit) = shared.config.give_up_after_ms {
        tokio::spawn(give_up_when_orphaned(shared.clone(), limit, shutdown.clone()));
    }
    let metrics_server = match shared.config.metrics_listen {
        Some(listen) => {
            let witness_node = witness_voter.as_ref().map(witness::Witness::node);
            Some(tokio::spawn(metrics::serve(listen, shared.clone(), witness_node, shutdown.child_token())))
        }
        None => None,
    };
    match register(&shared, &shutdown).await {
        Ok(true) => {}
        Ok(false) => return Ok(()),
        Err(e) => anyhow::bail!("registration: {e}"),
    }
    let (results_tx, results_rx) = mpsc::unbounded_channel();
    let reporter = tokio::spawn(report(shared.clone(), results_rx));
    let heartbeats = tokio::spawn(heartbeat(shared.clone()));
    let leasing = lease_loop(&shared, &results_tx).await;

    // Shutting down: stop what runs, hand it back, flush results, all within one budget.
    let deadline = tokio::time::Instant::now() + DRAIN_BUDGET;
    hand_back(&shared, deadline).await;
    heartbeats.abort();
    drop(results_tx);
    if tokio::time::timeout_at(deadline.max(tokio::time::Instant::now() + REPORT_FLUSH), reporter).await.is_err() {
        tracing::warn!("results still unreported at exit; their jobs will be computed again");
    }
    if let Some(server) = metrics_server {
        server.abort();
    }
    if shared.refused.load(Ordering::Relaxed) {
        anyhow::bail!("{}", WorkerCallError::Unauthorized);
    }
    if shared.orphaned.load(Ordering::Relaxed) {
        anyhow::bail!(
            "no coordinator answered for {} ms: the cluster is gone",
            shared.config.give_up_after_ms.unwrap_or(0)
        );
    }
    leasing.map_err(|e| anyhow::anyhow!("registering again: {e}"))
}

/// Stop the worker (`shutdown`) once no coordinator has answered for `limit_ms`: a worker an
/// autoscaler started must not run on forever after its whole cluster is gone.
async fn give_up_when_orphaned(shared: Arc<RunningWorker>, limit_ms: u64, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let silent = wire::now_ms().saturating_sub(shared.coordinators.last_answer_ms());
        if silent >= limit_ms {
            tracing::error!(silent_ms = silent, "no coordinator has answered for too long; stopping");
            shared.orphaned.store(true, Ordering::Relaxed);
            shutdown.cancel();
            return;
        }
    }
}

/// Cancel every job this worker holds and hand the unfinished ones back with their checkpoints,
/// so other workers resume them at once instead of waiting for the leases to expire.
async fn hand_back(shared: &RunningWorker, deadline: tokio::time::Instant) {
    let unfinished: Vec<Arc<RunningJob>> = shared.running().values().cloned().collect();
    for job in &unfinished {
        job.cancel();
    }
    while !shared.running().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let progress: Vec<Progress> =
        unfinished.iter().filter(|job| !job.is_finished()).map(|job| job.progress()).collect();
    if progress.is_empty() {
        return;
    }
    let request = ReleaseRequest { worker: shared.worker_id.load(Ordering::Relaxed), progress };
    let release = shared.coordinators.release(&request, CALL_TIMEOUT);
    match tokio::time::timeout_at(deadline, release).await {
        Ok(Ok(answer)) => tracing::info!(requeued = answer.requeued, "handed unfinished jobs back"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not hand jobs back; their leases will expire"),
        Err(_) => tracing::warn!("handing jobs back timed out; their leases will expire"),
    }
}

/// Register (retrying while no coordinator can take it); `Ok(false)` when `shutdown` came first.
/// Refused credentials are an error: retrying cannot fix a worker's configuration.
async fn register(shared: &RunningWorker, shutdown: &CancellationToken) -> Result<bool, WorkerCallError> {
    let request = RegisterRequest {
        name: shared.config.name(),
        cores: shared.config.cores() as u32,
        instance_id: shared.config.instance_id.clone(),
        witness: shared.config.witness,
        launch_token: shared.config.launch_token.clone(),
    };
    loop {
        match shared.coordinators.register(&request, CALL_TIMEOUT).await {
            Ok(answer) => {
                shared.worker_id.store(answer.worker, Ordering::Relaxed);
                shared.heartbeat_ms.store(answer.heartbeat_ms.max(50), Ordering::Relaxed);
                tracing::info!(worker = answer.worker, name = %request.name, cores = request.cores, via = shared.coordinators.current(), "registered");
                return Ok(true);
            }
            Err(WorkerCallError::Unauthorized) => return Err(WorkerCallError::Unauthorized),
            Err(e) => tracing::warn!(error = %e, "registration failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(RETRY_PAUSE * 5) => {}
        }
    }
}

/// Lease and start jobs until told to stop. An error only when registering again was refused.
async fn lease_loop(
    shared: &Arc<RunningWorker>,
    results: &mpsc::UnboundedSender<Finished>,
) -> Result<(), WorkerCallError> {
    let cores = shared.config.cores();
    loop {
        if shared.stop_leasing.is_cancelled() {
            return Ok(());
        }
        if shared.draining.load(Ordering::Relaxed) {
            hand_back(shared, tokio::time::Instant::now() + DRAIN_BUDGET).await;
            tracing::info!("drained: holding no jobs until the coordinators say resume");
            tokio::select! {
                _ = shared.stop_leasing.cancelled() => return Ok(()),
                _ = drain_becomes(shared, false) => {}
            }
            continue;
        }
        let ended = shared.job_ended.notified();
        let capacity = capacity(shared, cores);
        let held = shared.running().len();
        let free = capacity.saturating_sub(held);
        // Top up once half the backlog is gone rather than after every job: a lease is a Raft
        // entry, and one for several jobs costs the cluster what one for a single job does.
        let low_water = if held == 0 { 1 } else { (capacity / 2).max(1) };
        if free < low_water {
            tokio::select! {
                _ = shared.stop_leasing.cancelled() => return Ok(()),
                _ = ended => {}
                _ = drain_becomes(shared, true) => {}
            }
            continue;
        }
        let request = LeaseRequest {
            worker: shared.worker_id.load(Ordering::Relaxed),
            max_jobs: free as u32,
            wait_ms: shared.config.long_poll_ms,
            free_cores: Some(cores.saturating_sub(held) as u32),
            budget_iterations: Some(budget_iterations(shared, cores)),
        };
        let timeout = CALL_TIMEOUT + Duration::from_millis(shared.config.long_poll_ms);
        let answer = tokio::select! {
            _ = shared.stop_leasing.cancelled() => return Ok(()),
            _ = drain_becomes(shared, true) => continue,
            answer = shared.coordinators.lease(&request, timeout) => answer,
        };
        match answer {
            Ok(leased) => {
                for assignment in leased.jobs {
                    start_job(shared, RunningJob::new(&assignment), results.clone());
                }
            }
            Err(WorkerCallError::Unauthorized) => {
                shared.refuse();
                return Err(WorkerCallError::Unauthorized);
            }
            Err(WorkerCallError::UnknownWorker) => {
                // The registry forgot this worker (it was silent too long): its leases are gone.
                for job in shared.running().values() {
                    job.cancel();
                }
                if !register(shared, &shared.stop_leasing).await? {
                    return Ok(());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease failed; retrying");
                tokio::select! {
                    _ = shared.stop_leasing.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(RETRY_PAUSE) => {}
                }
            }
        }
    }
}

/// Resolves once the worker's draining state is `draining` (a drain was requested, or it ended).
async fn drain_becomes(shared: &RunningWorker, draining: bool) {
    loop {
        // Created before the check: a change in between still wakes it.
        let changed = shared.drain_changed.notified();
        if shared.draining.load(Ordering::Relaxed) == draining {
            return;
        }
        changed.await;
    }
}

/// Iterations this worker can finish within its backlog target beyond what it holds: the
/// lease is sized by work, so it never takes a long job it would only hold behind another
/// while a core elsewhere is free.
fn budget_iterations(shared: &RunningWorker, cores: usize) -> u64 {
    let rate = shared.core_rate.load(Ordering::Relaxed);
    let capacity = (rate as u128 * cores as u128 * BACKLOG_TARGET.as_micros() / 1_000_000) as u64;
    let held: u64 = shared.running().values().map(|job| job.iterations.saturating_sub(job.progress().done)).sum();
    capacity.saturating_sub(held)
}

/// Jobs (or parts of jobs) of at least this many steps update the measured core rate.
const RATE_SAMPLE_STEPS: u64 = 20_000;

/// One core's chain steps per second, measured on a few milliseconds of hashing.
async fn measure_core_rate() -> u64 {
    const STEPS: u64 = RATE_SAMPLE_STEPS;
    let measured = tokio::task::spawn_blocking(|| {
        let started = std::time::Instant::now();
        std::hint::black_box(wire::chain::continue_chain(wire::Digest([7; 64]), STEPS));
        started.elapsed()
    })
    .await;
    match measured {
        Ok(elapsed) => (STEPS as f64 / elapsed.as_secs_f64().max(1e-6)) as u64,
        Err(_) => 1_000_000,
    }
}

/// How many jobs to hold: one per core for long jobs, a backlog for short ones.
fn capacity(shared: &RunningWorker, cores: usize) -> usize {
    let mean = shared.mean_job_micros.load(Ordering::Relaxed).max(1);
    let per_core = (BACKLOG_TARGET.as_micros() as u64 / mean).clamp(1, MAX_BACKLOG_PER_CORE as u64);
    cores * per_core as usize
}

fn start_job(shared: &Arc<RunningWorker>, job: RunningJob, results: mpsc::UnboundedSender<Finished>) {
    let job = Arc::new(job);
    if let Some(earlier) = shared.running().insert(job.job, job.clone()) {
        // Leased to this worker again (its earlier lease expired): that lease is over, and the
        // new one resumes from the last checkpoint.
        earlier.cancel();
    }
    let shared = shared.clone();
    let chunk = shared.config.chunk_iterations;
    tokio::spawn(async move {
        let Ok(_core) = shared.cores.clone().acquire_owned().await else { return };
        let computing = job.clone();
        let started = std::time::Instant::now();
        let from = job.progress().done;
        let counting = shared.clone();
        let result = tokio::task::spawn_blocking(move || computing.compute(chunk, &counting.hashes)).await;
        let micros = started.elapsed().as_micros() as u64;
        // A core's rate, from time spent computing (never from wall time, which counts idle
        // cores too), on jobs long enough to time.
        let steps = job.progress().done.saturating_sub(from);
        if steps >= RATE_SAMPLE_STEPS && micros > 0 {
            let sample = steps.saturating_mul(1_000_000) / micros;
            let rate = shared.core_rate.load(Ordering::Relaxed);
            shared.core_rate.store(rate - rate / 4 + sample / 4, Ordering::Relaxed);
        }
        let mean = shared.mean_job_micros.load(Ordering::Relaxed);
        let mean = if mean == u64::MAX { micros } else { (mean * 7 + micros) / 8 };
        shared.mean_job_micros.store(mean, Ordering::Relaxed);
        match result {
            Ok(Some(result)) if !job.is_cancelled() => {
                job.mark_finished();
                shared.jobs_completed.fetch_add(1, Ordering::Relaxed);
                let _ = results.send(Finished { job: job.job, result });
            }
            Ok(_) => tracing::debug!(job = job.job, "computation cancelled"),
            Err(e) => tracing::error!(job = job.job, error = %e, "computation panicked"),
        }
        {
            // Only this task's own entry: a new lease of the same job may have replaced it.
            let mut running = shared.running();
            if running.get(&job.job).is_some_and(|held| Arc::ptr_eq(held, &job)) {
                running.remove(&job.job);
            }
        }
        shared.job_ended.notify_one();
    });
}

fn report_linger(shared: &RunningWorker) -> Duration {
    match shared.mean_job_micros.load(Ordering::Relaxed) {
        u64::MAX => REPORT_LINGER_MIN,
        mean => (Duration::from_micros(mean) / 2).clamp(REPORT_LINGER_MIN, REPORT_LINGER_MAX),
    }
}

/// Report results in batches until the channel closes; never drop one because a coordinator
/// was down.
async fn report(shared: Arc<RunningWorker>, mut results: mpsc::UnboundedReceiver<Finished>) {
    while let Some(first) = results.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(report_linger(&shared));
        tokio::pin!(linger);
        while batch.len() < REPORT_BATCH {
            tokio::select! {
                _ = &mut linger => break,
                next = results.recv() => match next { Some(next) => batch.push(next), None => break },
            }
        }
        loop {
            let request = CompleteRequest { worker: shared.worker_id.load(Ordering::Relaxed), results: batch.clone() };
            match shared.coordinators.complete(&request, CALL_TIMEOUT).await {
                Ok(answer) => {
                    tracing::debug!(recorded = answer.recorded, duplicate = answer.duplicate, "results reported");
                    break;
                }
                Err(WorkerCallError::Unauthorized) => {
                    // Unreportable: their leases expire and other workers compute them again.
                    shared.refuse();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, results = batch.len(), "reporting results failed; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
}

/// Heartbeat checkpoints; cancel jobs the coordinator says are lost; drain when told to.
async fn heartbeat(shared: Arc<RunningWorker>) {
    let mut last = (std::time::Instant::now(), shared.hashes.load(Ordering::Relaxed));
    loop {
        tokio::time::sleep(Duration::from_millis(shared.heartbeat_ms.load(Ordering::Relaxed))).await;
        // The jobs this heartbeat speaks for: an answer about them must not touch a job leased
        // again (under a new lease, or a new registration) while it was in flight.
        let sent: Vec<Arc<RunningJob>> = shared.running().values().cloned().collect();
        let progress: Vec<Progress> = sent.iter().map(|job| job.progress()).collect();
        let worker = shared.worker_id.load(Ordering::Relaxed);
        let now = (std::time::Instant::now(), shared.hashes.load(Ordering::Relaxed));
        let seconds = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
        let hashes_per_s = (now.1.saturating_sub(last.1) as f64 / seconds) as u64;
        last = now;
        let request = HeartbeatRequest { worker, progress, hashes_per_s };
        let timeout = Duration::from_millis(shared.heartbeat_ms.load(Ordering::Relaxed))
            .clamp(HEARTBEAT_TIMEOUT_MIN, CALL_TIMEOUT);
        match shared.coordinators.heartbeat(&request, timeout).await {
            Ok(answer) => {
                for lost in answer.lost {
                    if let Some(job) = sent.iter().find(|job| job.job == lost) {
                        tracing::info!(job = job.job, "lease lost; stopping the job");
                        job.cancel();
                    }
                }
                let was_draining = shared.draining.swap(answer.draining, Ordering::Relaxed);
                if answer.draining != was_draining {
                    let change = if answer.draining { "drain" } else { "resume" };
                    tracing::info!("the coordinators asked this worker to {change}");
                    shared.drain_changed.notify_waiters();
                }
            }
            Err(WorkerCallError::Unauthorized) => {
                shared.refuse();
                return;
            }
            // The registry dropped this worker (silent too long) and requeued its jobs: stop
            // them, so the lease loop, woken as they end, registers again. Waiting for the
            // lease loop alone could take as long as the longest job it holds.
            Err(WorkerCallError::UnknownWorker) if shared.worker_id.load(Ordering::Relaxed) == worker => {
                tracing::warn!(
                    jobs = sent.len(),
                    "the coordinators dropped this worker; stopping its jobs and registering again"
                );
                for job in &sent {
                    job.cancel();
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}
