//! Tandem's worker: pulls jobs from the coordinators, computes them on every core, reports the
//! results; with `--witness` it also runs the cluster's third Raft voter.
//!
//! - [`config`]: flags and defaults.
//! - [`coordinator_client`]: the worker protocol over one HTTP client, failing over between
//!   coordinators.
//! - [`compute`]: one job's chain, in chunks, checkpointed and stoppable.
//! - `worker_state`: the registration and the held jobs, shared by the tasks below.
//! - `heartbeat`: checkpoints to the coordinators, lost leases and drain requests back.
//! - `reporter`: results in batches, retried until acknowledged.
//! - [`witness`]: the witness voter on its own thread and runtime.
//!
//! [`run`] is the whole worker: register, then long-poll for as many jobs as there is room for
//! (one per core for long jobs, a short backlog of short ones), compute each on a blocking
//! thread with at most one computation per core, heartbeat the checkpoints (which keeps the
//! leases alive) and report results in batches. On shutdown, or when the coordinators ask it to
//! drain, it stops leasing, stops what runs at the next chunk boundary, hands the checkpoints
//! back with `release`, flushes the results and returns. If no coordinator answers, it gives up
//! after `--drain-timeout-ms`: the leases then expire and the jobs resume from their last
//! heartbeat checkpoint elsewhere.

pub mod compute;
pub mod config;
pub mod coordinator_client;
mod heartbeat;
mod reporter;
pub mod witness;
mod worker_state;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wire::worker::{
    Assignment, Finished, LeaseRequest, LeaseResponse, Progress, RegisterRequest, RegisterResponse, ReleaseRequest,
    ReleaseResponse,
};

use crate::compute::RunningJob;
use crate::config::Config;
use crate::coordinator_client::CallError;
use crate::witness::Witness;
use crate::worker_state::WorkerState;

/// Timeout of one call to one coordinator (a lease adds its long-poll wait).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before retrying a call that no coordinator took.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Registration backs off from [`RETRY_PAUSE`] up to this.
const MAX_REGISTER_PAUSE: Duration = Duration::from_secs(2);
/// Results get at least this long to be flushed after the jobs were handed back, even when
/// handing them back used up the drain timeout.
const REPORT_FLUSH: Duration = Duration::from_secs(1);
/// After giving up, how long to wait for the tasks to notice before returning anyway.
const GIVE_UP_GRACE: Duration = Duration::from_secs(1);

/// Run the worker (and, with `--witness`, the witness voter) until `shutdown` is cancelled or
/// the coordinators ask it to drain; then drain and return.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let witness = if config.witness {
        let witness = Witness::start(config.witness_config()).await.context("starting the witness voter")?;
        Some(witness)
    } else {
        None
    };
    let outcome = work(config, shutdown).await;
    // The witness outlives the drain: with one coordinator down, handing jobs back needs it.
    if let Some(witness) = witness {
        witness.stop().await;
    }
    outcome
}

/// The worker without the witness.
async fn work(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let state = Arc::new(WorkerState::new(config, shutdown.child_token())?);
    if !register(&state).await? {
        return Ok(());
    }
    let tasks = TaskTracker::new();
    let (results_tx, results_rx) = mpsc::unbounded_channel();
    let stop_heartbeats = CancellationToken::new();
    let give_up = CancellationToken::new();
    tasks.spawn(reporter::report(state.clone(), results_rx, give_up.clone()));
    tasks.spawn(heartbeat::heartbeat(state.clone(), stop_heartbeats.clone()));

    let leasing = lease_loop(&state, &tasks, &results_tx).await;
    let deadline = Instant::now() + Duration::from_millis(state.config.drain_timeout_ms);
    let unfinished = stop_jobs(&state, deadline).await;
    stop_heartbeats.cancel();
    drop(results_tx);
    release(&state, unfinished, deadline).await;

    tasks.close();
    let flush_deadline = deadline.max(Instant::now() + REPORT_FLUSH);
    if tokio::time::timeout_at(flush_deadline, tasks.wait()).await.is_err() {
        give_up.cancel();
        if tokio::time::timeout(GIVE_UP_GRACE, tasks.wait()).await.is_err() {
            tracing::warn!(tasks = tasks.len(), "tasks still running at exit");
        }
    }
    tracing::info!("worker stopped");
    leasing
}

/// Register (again), backing off while no coordinator takes it. `false` if told to stop first.
async fn register(state: &WorkerState) -> anyhow::Result<bool> {
    let cores = state.config.cores();
    let request = RegisterRequest {
        name: state.config.name(),
        cores: u32::try_from(cores).unwrap_or(u32::MAX),
        instance_id: state.config.instance_id.clone(),
    };
    let mut pause = RETRY_PAUSE;
    let mut failing = false;
    loop {
        let answer = tokio::select! {
            _ = state.stop_leasing.cancelled() => return Ok(false),
            answer = state.coordinators.call::<_, RegisterResponse>(wire::worker::REGISTER, &request, CALL_TIMEOUT) => answer,
        };
        match answer {
            Ok(answer) => {
                state.registered(&answer);
                tracing::info!(
                    worker = answer.worker,
                    name = %request.name,
                    cores,
                    lease_ms = answer.lease_ms,
                    heartbeat_ms = answer.heartbeat_ms,
                    via = state.coordinators.current(),
                    "registered"
                );
                return Ok(true);
            }
            Err(CallError::Rejected(e)) => {
                return Err(anyhow::anyhow!(e)).context("the coordinator refused to register this worker");
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "registration failed; retrying");
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = state.stop_leasing.cancelled() => return Ok(false),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_REGISTER_PAUSE);
    }
}

/// Lease jobs for the room there is until told to stop; register again when forgotten.
async fn lease_loop(
    state: &Arc<WorkerState>,
    tasks: &TaskTracker,
    results: &mpsc::UnboundedSender<Finished>,
) -> anyhow::Result<()> {
    let mut failing = false;
    loop {
        if state.stop_leasing.is_cancelled() {
            return Ok(());
        }
        let registration = state.registration();
        if registration.forgotten {
            // Its leases are gone with it: stop their computations.
            for job in state.held().values() {
                job.mark_lost();
            }
            if !register(state).await? {
                return Ok(());
            }
            continue;
        }
        // Created before the room is measured, so that an end in between is not missed.
        let job_ended = state.job_ended.notified();
        let forgotten = state.forgotten.notified();
        let room = state.capacity().saturating_sub(state.held().len());
        if room == 0 {
            tokio::select! {
                _ = state.stop_leasing.cancelled() => return Ok(()),
                _ = job_ended => {}
                _ = forgotten => {}
            }
            continue;
        }
        let request = LeaseRequest {
            worker: registration.worker,
            max_jobs: u32::try_from(room).unwrap_or(u32::MAX),
            wait_ms: state.config.long_poll_ms,
        };
        let timeout = CALL_TIMEOUT + Duration::from_millis(state.config.long_poll_ms);
        // A lease answer dropped here (stopping mid-poll) only leaves leases that expire.
        let answer = tokio::select! {
            _ = state.stop_leasing.cancelled() => return Ok(()),
            answer = state.coordinators.call::<_, LeaseResponse>(wire::worker::LEASE, &request, timeout) => answer,
        };
        match answer {
            Ok(leased) => {
                if failing {
                    tracing::info!(via = state.coordinators.current(), "leasing works again");
                    failing = false;
                }
                for assignment in &leased.jobs {
                    start_job(state, tasks, assignment, results.clone());
                }
            }
            Err(CallError::UnknownWorker) => state.forget(request.worker),
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "leasing failed; retrying");
                    failing = true;
                }
                tokio::select! {
                    _ = state.stop_leasing.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(RETRY_PAUSE) => {}
                }
            }
        }
    }
}

/// Hold the job and compute it when a core is free; send its result to the reporter.
fn start_job(
    state: &Arc<WorkerState>,
    tasks: &TaskTracker,
    assignment: &Assignment,
    results: mpsc::UnboundedSender<Finished>,
) {
    let job = Arc::new(RunningJob::new(assignment));
    state.hold(job.clone());
    let state = state.clone();
    tasks.spawn(async move {
        // The semaphore is never closed; without a permit there is nothing to do but end.
        if let Ok(_core) = state.cores.clone().acquire_owned().await {
            let computing = job.clone();
            let chunk = state.config.chunk_iterations;
            let started = std::time::Instant::now();
            match tokio::task::spawn_blocking(move || computing.compute(chunk)).await {
                Ok(Some(result)) if !job.is_lost() => {
                    state.record_job_time(started.elapsed());
                    job.mark_finished();
                    if results.send(Finished { job: job.job, result }).is_err() {
                        tracing::debug!(job = job.job, "result computed after the reporter stopped");
                    }
                }
                Ok(Some(_)) => tracing::debug!(job = job.job, "the lease was lost; result dropped"),
                Ok(None) => tracing::debug!(job = job.job, done = job.progress().done, "computation stopped"),
                Err(e) => tracing::error!(job = job.job, error = %e, "computation failed"),
            }
        }
        state.job_ended(&job);
    });
}

/// Stop every held job at its next chunk boundary and wait (until `deadline`) for them to
/// stop. Returns the checkpoints of those that neither finished nor were lost.
async fn stop_jobs(state: &WorkerState, deadline: Instant) -> Vec<Progress> {
    let held: Vec<Arc<RunningJob>> = state.held().values().cloned().collect();
    for job in &held {
        job.stop();
    }
    loop {
        let ended = state.job_ended.notified();
        if state.held().is_empty() {
            break;
        }
        tokio::select! {
            _ = ended => {}
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(jobs = state.held().len(), "computations did not stop in time");
                break;
            }
        }
    }
    held.iter().filter(|job| !job.is_finished() && !job.is_lost()).map(|job| job.progress()).collect()
}

/// Hand unfinished jobs back with their checkpoints, retrying with failover until `deadline`.
async fn release(state: &WorkerState, progress: Vec<Progress>, deadline: Instant) {
    if progress.is_empty() {
        return;
    }
    let jobs = progress.len();
    let mut request = ReleaseRequest { worker: 0, progress };
    let mut failing = false;
    loop {
        request.worker = state.registration().worker;
        let timeout = deadline.saturating_duration_since(Instant::now()).min(CALL_TIMEOUT);
        if timeout.is_zero() {
            tracing::warn!(jobs, "could not hand jobs back in time; they resume from their last heartbeat");
            return;
        }
        let call = state.coordinators.call::<_, ReleaseResponse>(wire::worker::RELEASE, &request, timeout);
        match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(answer)) => {
                tracing::info!(jobs, requeued = answer.requeued, "handed unfinished jobs back");
                return;
            }
            Ok(Err(e @ (CallError::Rejected(_) | CallError::UnknownWorker))) => {
                tracing::warn!(error = %e, jobs, "could not hand jobs back; their leases will expire");
                return;
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, jobs, "handing jobs back failed; retrying");
                    failing = true;
                }
            }
            Err(_) => continue,
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + RETRY_PAUSE)).await;
    }
}
