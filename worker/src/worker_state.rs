//! What the worker's tasks share: its registration, the jobs it holds, and the signals between
//! the lease loop, the job tasks and the heartbeat.
//!
//! Only std mutexes, held for a copy or a map operation and never across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use wire::worker::RegisterResponse;

use crate::compute::RunningJob;
use crate::config::Config;
use crate::coordinator_client::Coordinators;

/// Jobs held per core at most, when jobs are short enough to keep a backlog.
const MAX_BACKLOG_PER_CORE: u64 = 256;
/// How much work (by recent job durations) a worker keeps in hand per core: enough that short
/// jobs do not wait on lease round trips, little enough that long jobs are not hoarded.
const BACKLOG_TARGET: Duration = Duration::from_millis(250);
/// Heartbeat period until a coordinator says otherwise, and the shortest one taken from it.
const DEFAULT_HEARTBEAT_MS: u64 = 1_000;
const MIN_HEARTBEAT_MS: u64 = 20;

/// Who the coordinators know this worker as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Registration {
    /// The worker id to put in every message.
    pub worker: u64,
    /// How long a lease lives without a heartbeat.
    pub lease_ms: u64,
    /// How often to heartbeat.
    pub heartbeat_ms: u64,
    /// A coordinator answered 410 for this id: register again before leasing.
    pub forgotten: bool,
}

/// The state every task of one worker shares.
pub(crate) struct WorkerState {
    /// The configuration.
    pub config: Config,
    /// The coordinators, with failover.
    pub coordinators: Coordinators,
    /// Cancelled to stop taking work: shutdown, or the coordinators said drain.
    pub stop_leasing: CancellationToken,
    /// One permit per core: held jobs beyond the cores wait here for their turn.
    pub cores: Arc<Semaphore>,
    /// Woken when a held job ends, so that the lease loop can ask for more.
    pub job_ended: Notify,
    /// Woken when a coordinator forgot this worker, so that the lease loop registers again even
    /// while it is not leasing.
    pub forgotten: Notify,
    registration: Mutex<Registration>,
    held: Mutex<HashMap<u64, Arc<RunningJob>>>,
    /// Recent mean computation time per job in microseconds (moving average); `u64::MAX` until
    /// the first job ends.
    mean_job_micros: AtomicU64,
}

impl WorkerState {
    /// State for a worker that has not registered yet.
    pub fn new(config: Config, stop_leasing: CancellationToken) -> anyhow::Result<WorkerState> {
        Ok(WorkerState {
            coordinators: Coordinators::new(&config.coordinators)?,
            stop_leasing,
            cores: Arc::new(Semaphore::new(config.cores())),
            job_ended: Notify::new(),
            forgotten: Notify::new(),
            registration: Mutex::new(Registration {
                worker: 0,
                lease_ms: 0,
                heartbeat_ms: DEFAULT_HEARTBEAT_MS,
                forgotten: false,
            }),
            held: Mutex::new(HashMap::new()),
            mean_job_micros: AtomicU64::new(u64::MAX),
            config,
        })
    }

    /// The current registration.
    pub fn registration(&self) -> Registration {
        *self.registration.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a coordinator's answer to `register`.
    pub fn registered(&self, answer: &RegisterResponse) {
        *self.registration.lock().unwrap_or_else(|p| p.into_inner()) = Registration {
            worker: answer.worker,
            lease_ms: answer.lease_ms,
            heartbeat_ms: answer.heartbeat_ms.max(MIN_HEARTBEAT_MS),
            forgotten: false,
        };
    }

    /// A coordinator does not know `worker`. If that is still this worker's id, ask the lease
    /// loop to register again; an answer about an id already replaced changes nothing.
    pub fn forget(&self, worker: u64) {
        let mut registration = self.registration.lock().unwrap_or_else(|p| p.into_inner());
        if registration.worker == worker && !registration.forgotten {
            registration.forgotten = true;
            drop(registration);
            self.forgotten.notify_one();
        }
    }

    /// The jobs held: waiting for a core, computing, or finishing.
    pub fn held(&self) -> MutexGuard<'_, HashMap<u64, Arc<RunningJob>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hold `job`. A job of the same id held before (under a lease since lost, then leased to
    /// this worker again) is marked lost: its computation stops and its result is dropped.
    pub fn hold(&self, job: Arc<RunningJob>) {
        if let Some(previous) = self.held().insert(job.job, job) {
            previous.mark_lost();
        }
    }

    /// `job` ended: stop holding it (unless its id is held again under a newer lease) and wake
    /// the lease loop.
    pub fn job_ended(&self, job: &Arc<RunningJob>) {
        {
            let mut held = self.held();
            if held.get(&job.job).is_some_and(|current| Arc::ptr_eq(current, job)) {
                held.remove(&job.job);
            }
        }
        self.job_ended.notify_one();
    }

    /// Record how long one job's computation took.
    pub fn record_job_time(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let mean = self.mean_job_micros.load(Ordering::Relaxed);
        let mean = if mean == u64::MAX { micros } else { mean.saturating_mul(7).saturating_add(micros) / 8 };
        self.mean_job_micros.store(mean, Ordering::Relaxed);
    }

    /// How many jobs to hold: one per core for long jobs (or before any job ended), a backlog
    /// of up to [`BACKLOG_TARGET`] of work per core for short ones.
    pub fn capacity(&self) -> usize {
        let mean = self.mean_job_micros.load(Ordering::Relaxed).max(1);
        let target = u64::try_from(BACKLOG_TARGET.as_micros()).unwrap_or(u64::MAX);
        let per_core = (target / mean).clamp(1, MAX_BACKLOG_PER_CORE);
        self.config.cores().saturating_mul(usize::try_from(per_core).unwrap_or(1))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use wire::worker::Assignment;

    use super::*;

    fn state(cores: &str) -> WorkerState {
        let config = Config::try_parse_from(["worker", "--cores", cores]).expect("valid flags");
        WorkerState::new(config, CancellationToken::new()).expect("a state")
    }

    fn job(id: u64) -> Arc<RunningJob> {
        Arc::new(RunningJob::new(&Assignment { job: id, iterations: 10, done: 1, digest: wire::Digest([0; 64]) }))
    }

    #[test]
    fn capacity_is_one_per_core_until_jobs_prove_short() {
        let state = state("2");
        assert_eq!(state.capacity(), 2);
        state.record_job_time(Duration::from_secs(2));
        assert_eq!(state.capacity(), 2);
        for _ in 0..100 {
            state.record_job_time(Duration::from_micros(50));
        }
        assert_eq!(state.capacity(), 2 * MAX_BACKLOG_PER_CORE as usize);
        for _ in 0..100 {
            state.record_job_time(Duration::from_millis(25));
        }
        assert_eq!(state.capacity(), 2 * 10);
    }

    #[test]
    fn forgetting_an_old_id_changes_nothing() {
        let state = state("1");
        state.registered(&RegisterResponse { worker: 7, lease_ms: 3_000, heartbeat_ms: 1_000 });
        state.forget(6);
        assert!(!state.registration().forgotten);
        state.forget(7);
        assert!(state.registration().forgotten);
        state.registered(&RegisterResponse { worker: 8, lease_ms: 3_000, heartbeat_ms: 5 });
        assert_eq!(
            state.registration(),
            Registration { worker: 8, lease_ms: 3_000, heartbeat_ms: MIN_HEARTBEAT_MS, forgotten: false }
        );
    }

    #[test]
    fn a_job_held_again_replaces_and_outlives_the_old_one() {
        let state = state("1");
        let old = job(1);
        let new = job(1);
        state.hold(old.clone());
        state.hold(new.clone());
        assert!(old.is_lost() && !new.is_lost());
        // The old computation ending does not drop the new lease.
        state.job_ended(&old);
        assert!(state.held().get(&1).is_some_and(|held| Arc::ptr_eq(held, &new)));
        state.job_ended(&new);
        assert!(state.held().is_empty());
    }
}
