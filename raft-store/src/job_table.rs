//! The replicated job state machine: a pure, deterministic table of jobs, leases, results and
//! workers.
//!
//! [`JobTable::apply`] is the whole contract: given the same sequence of [`Command`]s, every
//! replica reaches the same table and returns the same [`CommandResponse`]s. It therefore reads no clock
//! (times arrive inside commands, stamped by the proposer), draws no random numbers, performs no
//! I/O and iterates only ordered collections. Expected rejections (an unknown worker, a lease that
//! moved on) are responses, never errors or panics: a command that arrives through Raft has been
//! committed and must be applied the same way everywhere.
//!
//! A job is in exactly one place at a time:
//!
//! ```text
//!   Enqueue ──▶ queue ──Lease──▶ leases ──Complete──▶ completed ──retention──▶ (dropped)
//!                         ▲          │
//!                         │          │ ExpireLeases / Release / RemoveWorker
//!               requeued ◀┴──────────┘   (keeps the last checkpoint)
//! ```
//!
//! `queue` holds jobs never leased, in id order; `requeued` holds jobs that came back from a lease.
//! Every requeued id is smaller than every id still in `queue` (jobs leave `queue` only from the
//! front), so leasing from `requeued` first hands out the oldest job first.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use wire::Digest;

/// A job's id, assigned in apply: unique whichever coordinator received the job.
pub type JobId = u64;
/// A worker's id, assigned in apply when it registers.
pub type WorkerId = u64;
/// The position of a completion in the order results were recorded, starting at 1.
pub type CompletionSeq = u64;

/// Bounds the table enforces. Replicated (see [`Command::SetLimits`]) so every replica agrees.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How many completed results are kept; the oldest is dropped first.
    pub completed_retention: u64,
    /// How many jobs may wait (queued or requeued) before enqueues are refused.
    pub max_queued: u64,
    /// The most jobs one lease command hands to one worker.
    pub max_lease_batch: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { completed_retention: 1_000_000, max_queued: 10_000_000, max_lease_batch: 1024 }
    }
}

/// A job to add, as the ingesting coordinator prepared it: the body is already reduced to its
/// first digest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    /// SHA-512 of the body: the chain after iteration 1.
    pub digest: Digest,
    /// Total iterations asked for, at least 1.
    pub iterations: u64,
    /// When the coordinator received it (ms since the Unix epoch, the proposer's clock).
    pub enqueued_at_ms: u64,
    /// A client-chosen key that makes a retried enqueue return the first job's id.
    pub idempotency_key: Option<String>,
}

/// A worker's progress on a leased job: the chain value after `done` iterations.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The job.
    pub job: JobId,
    /// Iterations completed so far (at least 1).
    pub done: u64,
    /// The chain value after `done` iterations.
    pub digest: Digest,
}

/// A finished job's result as a worker reports it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobResult {
    /// The job.
    pub job: JobId,
    /// The chain value after all iterations.
    pub result: Digest,
}

/// Whether a registered worker takes new work.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkerState {
    /// Takes leases.
    Active,
    /// Finishes or hands back what it holds and takes nothing new.
    Draining,
}

/// The autoscaler's decisions, committed before they are acted on so that a deposed leader
/// cannot act twice. The policy that makes them arrives with the autoscaling issue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ScalerCommand {
    /// The leader decided to launch one worker; `token` is the EC2 idempotency token.
    LaunchRequested { token: String, at_ms: u64 },
    /// The launch with `token` produced `instance_id`.
    InstanceSeen { token: String, instance_id: String, at_ms: u64 },
    /// The leader decided to terminate `instance_id`.
    TerminationRequested { instance_id: String, at_ms: u64 },
}

/// Everything that changes the table. Each is one Raft entry's payload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Add jobs (a batch, so concurrent enqueues can share one entry).
    Enqueue { jobs: Vec<NewJob> },
    /// Hand up to `max_jobs` waiting jobs to `worker` until `deadline_ms`.
    Lease { worker: WorkerId, max_jobs: u32, now_ms: u64, deadline_ms: u64 },
    /// `worker` is alive and running the jobs it lists: extend those leases to `deadline_ms`
    /// and record their checkpoints and its current hash rate.
    Heartbeat {
        worker: WorkerId,
        now_ms: u64,
        deadline_ms: u64,
        checkpoints: Vec<Checkpoint>,
        /// Chain steps per second over its last heartbeat period (0 from older workers).
        #[serde(default)]
        hashes_per_s: u64,
    },
    /// Record results. Idempotent per job.
    Complete { worker: WorkerId, now_ms: u64, results: Vec<JobResult> },
    /// `worker` hands leased jobs back (draining): they are requeued from these checkpoints.
    Release { worker: WorkerId, checkpoints: Vec<Checkpoint> },
    /// Requeue every lease whose deadline is at or before `now_ms`.
    ExpireLeases { now_ms: u64 },
    /// Add a worker to the registry; its id is assigned here.
    RegisterWorker { name: String, cores: u32, instance_id: Option<String>, now_ms: u64 },
    /// Change a worker's state (drain it, or make it active again).
    UpdateWorker { worker: WorkerId, state: WorkerState, now_ms: u64 },
    /// Remove a worker; its leases are requeued.
    RemoveWorker { worker: WorkerId },
    /// Replace the table's limits.
    SetLimits(Limits),
    /// Record an autoscaler decision.
    Scaler(ScalerCommand),
}

impl Command {
    /// Put the times in this command on the clock of the node that commits it (`now_ms` on
    /// that clock), keeping each duration it carries (a lease's length).
    ///
    /// Commands are stamped by the node that proposes them, and a follower forwards its
    /// proposals to the leader. Lease expiry and worker removal compare with the leader's
    /// clock, so a lease stamped by a follower whose clock runs an hour fast would outlive its
    /// worker by that hour (and one from a slow clock would expire at once). The leader calls
    /// this on every command it is forwarded, so that every time in the log is its own.
    pub fn restamp(&mut self, now_ms: u64) {
        match self {
            Command::Enqueue { jobs } => jobs.iter_mut().for_each(|job| job.enqueued_at_ms = now_ms),
            Command::Lease { now_ms: at, deadline_ms, .. } | Command::Heartbeat { now_ms: at, deadline_ms, .. } => {
                *deadline_ms = now_ms.saturating_add(deadline_ms.saturating_sub(*at));
                *at = now_ms;
            }
            Command::Complete { now_ms: at, .. }
            | Command::ExpireLeases { now_ms: at }
            | Command::RegisterWorker { now_ms: at, .. }
            | Command::UpdateWorker { now_ms: at, .. } => *at = now_ms,
            Command::Scaler(
                ScalerCommand::LaunchRequested { at_ms, .. }
                | ScalerCommand::InstanceSeen { at_ms, .. }
                | ScalerCommand::TerminationRequested { at_ms, .. },
            ) => *at_ms = now_ms,
            Command::Release { .. } | Command::RemoveWorker { .. } | Command::SetLimits(_) => {}
        }
    }
}

impl std::fmt::Display for Command {
    /// A one-line summary for openraft's logs (never the whole batch).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Enqueue { jobs } => write!(f, "Enqueue({} jobs)", jobs.len()),
            Command::Lease { worker, max_jobs, .. } => write!(f, "Lease(worker {worker}, up to {max_jobs})"),
            Command::Heartbeat { worker, checkpoints, .. } => {
                write!(f, "Heartbeat(worker {worker}, {} checkpoints)", checkpoints.len())
            }
            Command::Complete { worker, results, .. } => {
                write!(f, "Complete(worker {worker}, {} results)", results.len())
            }
            Command::Release { worker, checkpoints } => {
                write!(f, "Release(worker {worker}, {} jobs)", checkpoints.len())
            }
            Command::ExpireLeases { now_ms } => write!(f, "ExpireLeases(as of {now_ms})"),
            Command::RegisterWorker { name, cores, .. } => {
                write!(f, "RegisterWorker({name}, {cores} cores)")
            }
            Command::UpdateWorker { worker, state, .. } => {
                write!(f, "UpdateWorker({worker} -> {state:?})")
            }
            Command::RemoveWorker { worker } => write!(f, "RemoveWorker({worker})"),
            Command::SetLimits(limits) => write!(f, "SetLimits({limits:?})"),
            Command::Scaler(decision) => write!(f, "Scaler({decision:?})"),
        }
    }
}

/// What happened to one job of an [`Command::Enqueue`] batch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// A new job with this id.
    Created(JobId),
    /// The idempotency key was seen before, with the same request: this is the first job's id.
    Duplicate(JobId),
    /// The idempotency key was first used for job `JobId` with another body or iteration count:
    /// nothing was added (answering with that job's id would hand the client another's result).
    KeyReused(JobId),
    /// The queue is at its limit; nothing was added.
    QueueFull,
    /// Iterations was 0; nothing was added.
    Invalid,
}

/// A job handed to a worker: continue the chain from `digest` for `iterations - done` more steps.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeasedJob {
    /// The job.
    pub job: JobId,
    /// Total iterations.
    pub iterations: u64,
    /// Iterations already done (the checkpoint the worker resumes from).
    pub done: u64,
    /// The chain value after `done` iterations.
    pub digest: Digest,
}

/// What happened to one result of a [`Command::Complete`] batch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompleteOutcome {
    /// Recorded now, at this completion sequence number.
    Recorded(CompletionSeq),
    /// Already recorded earlier (the first result stands).
    AlreadyCompleted(CompletionSeq),
    /// The job is unknown, was never leased, or its result has left retention.
    Unknown,
}

/// Why a command was refused. Refusals change nothing.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No worker with that id is registered.
    UnknownWorker,
    /// The worker is draining and takes no new leases.
    WorkerDraining,
    /// A limit was out of range (a retention or queue bound of zero).
    InvalidLimits,
}

/// The answer to one applied command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CommandResponse {
    /// For entries that carry no command (blank and membership entries).
    None,
    /// One outcome per job of the batch, in order.
    Enqueued(Vec<EnqueueOutcome>),
    /// The jobs now leased to the worker (possibly none).
    Leased(Vec<LeasedJob>),
    /// Heartbeat applied. `lost` lists checkpointed jobs the worker no longer holds; `state` tells
    /// the worker whether to keep taking work.
    HeartbeatAck { lost: Vec<JobId>, state: WorkerState },
    /// One outcome per result, in order.
    Completed(Vec<CompleteOutcome>),
    /// How many jobs went back to the queue.
    Requeued(Vec<JobId>),
    /// The new worker's id.
    WorkerRegistered(WorkerId),
    /// Applied, nothing to report.
    Done,
    /// Refused; nothing changed.
    Rejected(Rejection),
}

/// A job waiting for a worker, with the chain value it resumes from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedJob {
    /// The job.
    pub id: JobId,
    /// When it was enqueued (proposer's clock, ms).
    pub enqueued_at_ms: u64,
    /// Total iterations.
    pub iterations: u64,
    /// Iterations done: 1 at enqueue, more after a checkpoint.
    pub done: u64,
    /// How many leases of this job ended without a result.
    pub attempts: u32,
    /// The chain value after `done` iterations.
    pub digest: Digest,
}

/// A job a worker holds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The job and its last checkpoint.
    pub job: QueuedJob,
    /// Who holds it.
    pub worker: WorkerId,
    /// When it was leased (proposer's clock, ms).
    pub leased_at_ms: u64,
    /// Iterations already done when it was leased: where this attempt resumed.
    pub leased_from: u64,
    /// When it expires unless a heartbeat extends it.
    pub deadline_ms: u64,
}

/// A finished job.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompletedJob {
    /// The job.
    pub id: JobId,
    /// Its place in the order of completions.
    pub seq: CompletionSeq,
    /// Total iterations.
    pub iterations: u64,
    /// When it was enqueued (ms).
    pub enqueued_at_ms: u64,
    /// When its result was recorded (ms).
    pub completed_at_ms: u64,
    /// Leases of it that ended without a result before this one.
    pub attempts: u32,
    /// Iterations already done when the lease that finished it began (1 unless it resumed from
    /// a checkpoint).
    pub resumed_from: u64,
    /// The chain value after all iterations.
    pub result: Digest,
}

/// A registered worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Worker {
    /// A human name (host and process).
    pub name: String,
    /// Cores it hashes on.
    pub cores: u32,
    /// The EC2 instance it runs on, if any.
    pub instance_id: Option<String>,
    /// Whether it takes work.
    pub state: WorkerState,
    /// When it registered (ms).
    pub registered_at_ms: u64,
    /// The last time a command of its was applied (ms).
    pub last_seen_ms: u64,
    /// How many leases it holds.
    pub leases: u32,
    /// Its hash rate (chain steps per second) as of its last heartbeat.
    #[serde(default)]
    pub hashes_per_s: u64,
}

/// One launch the autoscaler decided on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// When the launch was decided (ms).
    pub requested_at_ms: u64,
    /// The instance it produced, once seen.
    pub instance_id: Option<String>,
}

/// The autoscaler's committed decisions.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ScalerState {
    /// Launches by idempotency token.
    pub launches: BTreeMap<String, Launch>,
    /// Terminations requested, by instance id, with when (ms).
    pub terminations: BTreeMap<String, u64>,
}

/// One page of completions (see [`JobTable::completed_page`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPage<'a> {
    /// The completions on this page.
    pub jobs: Vec<&'a CompletedJob>,
    /// The cursor to continue from.
    pub cursor: CompletionSeq,
    /// The newest completion recorded.
    pub last_seq: CompletionSeq,
    /// Completions between the reader's cursor and this page that retention dropped.
    pub skipped: u64,
}

/// A cursor past the newest completion: not one this table handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("after={after} is past the newest completion ({last_seq}): not a cursor from this cluster")]
pub struct CursorAhead {
    /// The cursor given.
    pub after: CompletionSeq,
    /// The newest completion.
    pub last_seq: CompletionSeq,
}

/// Where a job is, as a reader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus<'a> {
    /// Waiting for a worker.
    Queued(&'a QueuedJob),
    /// Leased to a worker; `job.done` is the last checkpoint.
    Running(&'a Lease),
    /// Finished.
    Completed(&'a CompletedJob),
    /// Once existed, but its result left retention.
    Forgotten,
}

/// Running totals, part of the replicated state (and so of snapshots).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Jobs ever created.
    pub enqueued: u64,
    /// Results ever recorded.
    pub completed: u64,
    /// Leases that ended without a result.
    pub requeued: u64,
    /// Enqueues refused because the queue was full.
    pub rejected_queue_full: u64,
}

/// What a keyed enqueue asked for: the first 8 bytes of its body's digest and its iteration
/// count (16 bytes per keyed job; telling an accidental reuse apart needs no more).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
struct RequestFingerprint {
    digest_prefix: [u8; 8],
    iterations: u64,
}

impl RequestFingerprint {
    fn of(job: &NewJob) -> Self {
        let mut digest_prefix = [0; 8];
        digest_prefix.copy_from_slice(&job.digest.0[..8]);
        RequestFingerprint { digest_prefix, iterations: job.iterations }
    }
}

/// The state machine's data. See the module documentation for the contract.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JobTable {
    limits: Limits,
    next_job_id: JobId,
    next_worker_id: WorkerId,
    next_completion_seq: CompletionSeq,
    queue: VecDeque<QueuedJob>,
    requeued: BTreeMap<JobId, QueuedJob>,
    leases: BTreeMap<JobId, Lease>,
    completed: BTreeMap<CompletionSeq, CompletedJob>,
    completed_by_job: BTreeMap<JobId, CompletionSeq>,
    idempotency: BTreeMap<String, JobId>,
    idempotency_by_job: BTreeMap<JobId, String>,
    /// What each keyed job was asked for, to tell a retry from a reuse of its key (absent for
    /// keys recorded before it existed: those are taken as retries).
    #[serde(default)]
    idempotency_requests: BTreeMap<JobId, RequestFingerprint>,
    workers: BTreeMap<WorkerId, Worker>,
    scaler: ScalerState,
    /// Iterations still to compute over every waiting job.
    queued_iterations: u64,
    totals: Totals,
}

impl Default for JobTable {
    fn default() -> Self {
        JobTable::new(Limits::default())
    }
}

impl JobTable {
    /// An empty table with these limits.
    pub fn new(limits: Limits) -> Self {
        JobTable {
            limits,
            next_job_id: 1,
            next_worker_id: 1,
            next_completion_seq: 1,
            queue: VecDeque::new(),
            requeued: BTreeMap::new(),
            leases: BTreeMap::new(),
            completed: BTreeMap::new(),
            completed_by_job: BTreeMap::new(),
            idempotency: BTreeMap::new(),
            idempotency_by_job: BTreeMap::new(),
            idempotency_requests: BTreeMap::new(),
            workers: BTreeMap::new(),
            scaler: ScalerState::default(),
            queued_iterations: 0,
            totals: Totals::default(),
        }
    }

    /// Apply one committed command. Deterministic; never panics on any input.
    pub fn apply(&mut self, command: &Command) -> CommandResponse {
        match command {
            Command::Enqueue { jobs } => CommandResponse::Enqueued(jobs.iter().map(|job| self.enqueue(job)).collect()),
            Command::Lease { worker, max_jobs, now_ms, deadline_ms } => {
                self.lease(*worker, *max_jobs, *now_ms, *deadline_ms)
            }
            Command::Heartbeat { worker, now_ms, deadline_ms, checkpoints, hashes_per_s } => {
                self.heartbeat(*worker, *now_ms, *deadline_ms, checkpoints, *hashes_per_s)
            }
            Command::Complete { worker, now_ms, results } => self.complete(*worker, *now_ms, results),
            Command::Release { worker, checkpoints } => self.release(*worker, checkpoints),
            Command::ExpireLeases { now_ms } => self.expire_leases(*now_ms),
            Command::RegisterWorker { name, cores, instance_id, now_ms } => {
                let id = self.next_worker_id;
                self.next_worker_id += 1;
                self.workers.insert(
                    id,
                    Worker {
                        name: name.clone(),
                        cores: *cores,
                        instance_id: instance_id.clone(),
                        state: WorkerState::Active,
                        registered_at_ms: *now_ms,
                        last_seen_ms: *now_ms,
                        leases: 0,
                        hashes_per_s: 0,
                    },
                );
                CommandResponse::WorkerRegistered(id)
            }
            Command::UpdateWorker { worker, state, now_ms } => match self.workers.get_mut(worker) {
                Some(w) => {
                    w.state = *state;
                    w.last_seen_ms = w.last_seen_ms.max(*now_ms);
                    CommandResponse::Done
                }
                None => CommandResponse::Rejected(Rejection::UnknownWorker),
            },
            Command::RemoveWorker { worker } => {
                if !self.workers.contains_key(worker) {
                    return CommandResponse::Rejected(Rejection::UnknownWorker);
                }
                let held: Vec<JobId> =
                    self.leases.iter().filter(|(_, lease)| lease.worker == *worker).map(|(id, _)| *id).collect();
                for id in &held {
                    self.requeue(*id);
                }
                self.workers.remove(worker);
                CommandResponse::Requeued(held)
            }
            Command::SetLimits(limits) => {
                if limits.completed_retention == 0 || limits.max_queued == 0 || limits.max_lease_batch == 0 {
                    return CommandResponse::Rejected(Rejection::InvalidLimits);
                }
                self.limits = *limits;
                self.enforce_retention();
                CommandResponse::Done
            }
            Command::Scaler(decision) => {
                self.apply_scaler(decision);
                CommandResponse::Done
            }
        }
    }

    fn enqueue(&mut self, job: &NewJob) -> EnqueueOutcome {
        if let Some(key) = &job.idempotency_key
            && let Some(id) = self.idempotency.get(key)
        {
            return match self.idempotency_requests.get(id) {
                Some(first) if *first != RequestFingerprint::of(job) => EnqueueOutcome::KeyReused(*id),
                _ => EnqueueOutcome::Duplicate(*id),
            };
        }
        if job.iterations == 0 {
            return EnqueueOutcome::Invalid;
        }
        if self.queued_len() >= self.limits.max_queued {
            self.totals.rejected_queue_full += 1;
            return EnqueueOutcome::QueueFull;
        }
        let id = self.next_job_id;
        self.next_job_id += 1;
        self.queue.push_back(QueuedJob {
            id,
            enqueued_at_ms: job.enqueued_at_ms,
            iterations: job.iterations,
            done: 1,
            attempts: 0,
            digest: job.digest,
        });
        self.queued_iterations = self.queued_iterations.saturating_add(job.iterations - 1);
        if let Some(key) = &job.idempotency_key {
            self.idempotency.insert(key.clone(), id);
            self.idempotency_by_job.insert(id, key.clone());
            self.idempotency_requests.insert(id, RequestFingerprint::of(job));
        }
        self.totals.enqueued += 1;
        EnqueueOutcome::Created(id)
    }

    fn lease(&mut self, worker: WorkerId, max_jobs: u32, now_ms: u64, deadline_ms: u64) -> CommandResponse {
        let Some(w) = self.workers.get_mut(&worker) else {
            return CommandResponse::Rejected(Rejection::UnknownWorker);
        };
        if w.state == WorkerState::Draining {
            return CommandResponse::Rejected(Rejection::WorkerDraining);
        }
        w.last_seen_ms = w.last_seen_ms.max(now_ms);
        let max_jobs = max_jobs.min(self.limits.max_lease_batch);
        let mut leased = Vec::new();
        while leased.len() < max_jobs as usize {
            let job = match self.requeued.pop_first() {
                Some((_, job)) => job,
                None => match self.queue.pop_front() {
                    Some(job) => job,
                    None => break,
                },
            };
            self.queued_iterations = self.queued_iterations.saturating_sub(job.iterations - job.done);
            leased.push(LeasedJob { job: job.id, iterations: job.iterations, done: job.done, digest: job.digest });
            self.leases.insert(job.id, Lease { job, worker, leased_at_ms: now_ms, leased_from: job.done, deadline_ms });
        }
        if let Some(w) = self.workers.get_mut(&worker) {
            w.leases += leased.len() as u32;
        }
        CommandResponse::Leased(leased)
    }

    fn heartbeat(
        &mut self,
        worker: WorkerId,
        now_ms: u64,
        deadline_ms: u64,
        checkpoints: &[Checkpoint],
        hashes_per_s: u64,
    ) -> CommandResponse {
        let Some(w) = self.workers.get_mut(&worker) else {
            return CommandResponse::Rejected(Rejection::UnknownWorker);
        };
        w.last_seen_ms = w.last_seen_ms.max(now_ms);
        w.hashes_per_s = hashes_per_s;
        let state = w.state;
        // Only the leases the worker reports on are extended: a lease whose grant never reached
        // the worker (the answer was lost in a failover) must expire, not live on forever.
        let mut lost = Vec::new();
        for checkpoint in checkpoints {
            match self.leases.get_mut(&checkpoint.job) {
                Some(lease) if lease.worker == worker => {
                    lease.deadline_ms = lease.deadline_ms.max(deadline_ms);
                    record_checkpoint(&mut lease.job, checkpoint);
                }
                _ => lost.push(checkpoint.job),
            }
        }
        CommandResponse::HeartbeatAck { lost, state }
    }

    fn complete(&mut self, worker: WorkerId, now_ms: u64, results: &[JobResult]) -> CommandResponse {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.last_seen_ms = w.last_seen_ms.max(now_ms);
        }
        let outcomes = results.iter().map(|result| self.complete_one(result, now_ms)).collect();
        self.enforce_retention();
        CommandResponse::Completed(outcomes)
    }

    fn complete_one(&mut self, result: &JobResult, now_ms: u64) -> CompleteOutcome {
        if let Some(seq) = self.completed_by_job.get(&result.job) {
            return CompleteOutcome::AlreadyCompleted(*seq);
        }
        // A result is accepted from whoever computed it, as long as the job was handed out at
        // some point: the chain is deterministic, so a late result equals the one a current
        // holder would report. A job never leased (still in `queue`) cannot have a result.
        let (job, resumed_from) = if let Some(lease) = self.leases.remove(&result.job) {
            if let Some(holder) = self.workers.get_mut(&lease.worker) {
                holder.leases = holder.leases.saturating_sub(1);
            }
            (lease.job, lease.leased_from)
        } else if let Some(job) = self.requeued.remove(&result.job) {
            self.queued_iterations = self.queued_iterations.saturating_sub(job.iterations - job.done);
            (job, job.done)
        } else {
            return CompleteOutcome::Unknown;
        };
        let seq = self.next_completion_seq;
        self.next_completion_seq += 1;
        self.completed.insert(
            seq,
            CompletedJob {
                id: job.id,
                seq,
                iterations: job.iterations,
                enqueued_at_ms: job.enqueued_at_ms,
                completed_at_ms: now_ms,
                attempts: job.attempts,
                resumed_from,
                result: result.result,
            },
        );
        self.completed_by_job.insert(job.id, seq);
        self.totals.completed += 1;
        CompleteOutcome::Recorded(seq)
    }

    fn release(&mut self, worker: WorkerId, checkpoints: &[Checkpoint]) -> CommandResponse {
        let mut requeued = Vec::new();
        for checkpoint in checkpoints {
            if let Some(lease) = self.leases.get_mut(&checkpoint.job)
                && lease.worker == worker
            {
                record_checkpoint(&mut lease.job, checkpoint);
                self.requeue(checkpoint.job);
                requeued.push(checkpoint.job);
            }
        }
        CommandResponse::Requeued(requeued)
    }

    fn expire_leases(&mut self, now_ms: u64) -> CommandResponse {
        let expired: Vec<JobId> =
            self.leases.iter().filter(|(_, lease)| lease.deadline_ms <= now_ms).map(|(id, _)| *id).collect();
        for id in &expired {
            self.requeue(*id);
        }
        CommandResponse::Requeued(expired)
    }

    /// Move a leased job back to the waiting jobs, keeping its last checkpoint.
    fn requeue(&mut self, id: JobId) {
        let Some(lease) = self.leases.remove(&id) else {
            return;
        };
        if let Some(holder) = self.workers.get_mut(&lease.worker) {
            holder.leases = holder.leases.saturating_sub(1);
        }
        let mut job = lease.job;
        job.attempts = job.attempts.saturating_add(1);
        self.queued_iterations = self.queued_iterations.saturating_add(job.iterations - job.done);
        self.requeued.insert(id, job);
        self.totals.requeued += 1;
    }

    fn enforce_retention(&mut self) {
        while self.completed.len() as u64 > self.limits.completed_retention {
            let Some((_, dropped)) = self.completed.pop_first() else {
                break;
            };
            self.completed_by_job.remove(&dropped.id);
            if let Some(key) = self.idempotency_by_job.remove(&dropped.id) {
                self.idempotency.remove(&key);
                self.idempotency_requests.remove(&dropped.id);
            }
        }
    }

    fn apply_scaler(&mut self, decision: &ScalerCommand) {
        match decision {
            ScalerCommand::LaunchRequested { token, at_ms } => {
                self.scaler
                    .launches
                    .entry(token.clone())
                    .or_insert(Launch { requested_at_ms: *at_ms, instance_id: None });
            }
            ScalerCommand::InstanceSeen { token, instance_id, at_ms } => {
                let launch = self
                    .scaler
                    .launches
                    .entry(token.clone())
                    .or_insert(Launch { requested_at_ms: *at_ms, instance_id: None });
                launch.instance_id = Some(instance_id.clone());
            }
            ScalerCommand::TerminationRequested { instance_id, at_ms } => {
                self.scaler.terminations.entry(instance_id.clone()).or_insert(*at_ms);
            }
        }
    }

    // ---- reads -------------------------------------------------------------------------------

    /// Where job `id` is, or `None` if no such job was ever created.
    pub fn job_status(&self, id: JobId) -> Option<JobStatus<'_>> {
        if id == 0 || id >= self.next_job_id {
            return None;
        }
        if let Some(seq) = self.completed_by_job.get(&id) {
            return self.completed.get(seq).map(JobStatus::Completed);
        }
        if let Some(lease) = self.leases.get(&id) {
            return Some(JobStatus::Running(lease));
        }
        if let Some(job) = self.requeued.get(&id) {
            return Some(JobStatus::Queued(job));
        }
        if let Ok(at) = self.queue.binary_search_by_key(&id, |job| job.id) {
            return Some(JobStatus::Queued(&self.queue[at]));
        }
        Some(JobStatus::Forgotten)
    }

    /// Up to `top` most recent completions, newest first.
    pub fn latest_completed(&self, top: usize) -> impl Iterator<Item = &CompletedJob> {
        self.completed.values().rev().take(top)
    }

    /// Up to `limit` completions with a sequence number above `after`, oldest first.
    pub fn completed_after(&self, after: CompletionSeq, limit: usize) -> impl Iterator<Item = &CompletedJob> {
        self.completed.range(after.saturating_add(1)..).map(|(_, job)| job).take(limit)
    }

    /// The oldest completion still retained (`None` when none is).
    pub fn oldest_retained_completion_seq(&self) -> Option<CompletionSeq> {
        self.completed.keys().next().copied()
    }

    /// A page of completions for a reader: the `top` newest when `after` is `None`, newest
    /// first; else up to `top` after the cursor `after`, oldest first, with the number of
    /// completions retention dropped between the cursor and the first one kept. A cursor past
    /// the newest completion was never handed out by this table.
    pub fn completed_page(&self, after: Option<CompletionSeq>, top: usize) -> Result<CompletedPage<'_>, CursorAhead> {
        let last_seq = self.last_completion_seq();
        let Some(after) = after else {
            let jobs = self.latest_completed(top).collect();
            return Ok(CompletedPage { jobs, cursor: last_seq, last_seq, skipped: 0 });
        };
        if after > last_seq {
            return Err(CursorAhead { after, last_seq });
        }
        let jobs: Vec<&CompletedJob> = self.completed_after(after, top).collect();
        let cursor = jobs.last().map_or(after, |job| job.seq);
        // Completion numbers have no holes, so what retention dropped is the distance from the
        // cursor to the oldest one kept.
        let first_kept = self.oldest_retained_completion_seq().unwrap_or(last_seq + 1);
        let skipped = first_kept.saturating_sub(after + 1);
        Ok(CompletedPage { jobs, cursor, last_seq, skipped })
    }

    /// Workers not heard from for `timeout_ms` or longer at `now_ms`.
    pub fn silent_workers(&self, now_ms: u64, timeout_ms: u64) -> Vec<WorkerId> {
        self.workers
            .iter()
            .filter(|(_, worker)| worker.last_seen_ms.saturating_add(timeout_ms) <= now_ms)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether any lease has reached its deadline at `now_ms`.
    pub fn any_lease_expired(&self, now_ms: u64) -> bool {
        self.leases.values().any(|lease| lease.deadline_ms <= now_ms)
    }

    /// The newest completion sequence number recorded, 0 before the first.
    pub fn last_completion_seq(&self) -> CompletionSeq {
        self.next_completion_seq - 1
    }

    /// Jobs waiting for a worker (never leased plus requeued).
    pub fn queued_len(&self) -> u64 {
        (self.queue.len() + self.requeued.len()) as u64
    }

    /// Iterations still to compute over all waiting jobs.
    pub fn queued_iterations(&self) -> u64 {
        self.queued_iterations
    }

    /// When the oldest waiting job was enqueued (ms), if any waits.
    pub fn oldest_queued_at_ms(&self) -> Option<u64> {
        let requeued = self.requeued.values().map(|job| job.enqueued_at_ms).min();
        let queued = self.queue.front().map(|job| job.enqueued_at_ms);
        requeued.into_iter().chain(queued).min()
    }

    /// Every outstanding lease, by job id.
    pub fn leases(&self) -> &BTreeMap<JobId, Lease> {
        &self.leases
    }

    /// The worker registry.
    pub fn workers(&self) -> &BTreeMap<WorkerId, Worker> {
        &self.workers
    }

    /// The autoscaler's committed decisions.
    pub fn scaler(&self) -> &ScalerState {
        &self.scaler
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Running totals.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// How many completed results are retained.
    pub fn completed_len(&self) -> usize {
        self.completed.len()
    }

    /// Check every structural invariant; `Err` names the first one broken. Used by tests after
    /// every step, and cheap enough for debug assertions on small tables.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        let mut place = |id: JobId, where_: &str| -> Result<(), String> {
            if id == 0 || id >= self.next_job_id {
                return Err(format!("job {id} in {where_} was never assigned"));
            }
            if !seen.insert(id) {
                return Err(format!("job {id} is in {where_} and somewhere else too"));
            }
            Ok(())
        };
        for job in &self.queue {
            place(job.id, "queue")?;
        }
        for (id, job) in &self.requeued {
            if *id != job.id {
                return Err(format!("requeued key {id} holds job {}", job.id));
            }
            place(*id, "requeued")?;
        }
        for (id, lease) in &self.leases {
            if *id != lease.job.id {
                return Err(format!("lease key {id} holds job {}", lease.job.id));
            }
            place(*id, "leases")?;
        }
        for (id, seq) in &self.completed_by_job {
            match self.completed.get(seq) {
                Some(job) if job.id == *id && job.seq == *seq => {}
                _ => {
                    return Err(format!("completed_by_job {id} -> {seq} does not match completed"));
                }
            }
            place(*id, "completed")?;
        }
        if self.completed.len() != self.completed_by_job.len() {
            return Err("completed and completed_by_job differ in size".into());
        }
        if self.completed.len() as u64 > self.limits.completed_retention {
            return Err("more completions retained than the limit".into());
        }
        if !self.queue.iter().zip(self.queue.iter().skip(1)).all(|(a, b)| a.id < b.id) {
            return Err("queue is not in id order".into());
        }
        if let (Some((last_requeued, _)), Some(front)) = (self.requeued.last_key_value(), self.queue.front())
            && *last_requeued >= front.id
        {
            return Err("a requeued job is newer than a never-leased one".into());
        }
        let waiting = self.queue.iter().chain(self.requeued.values());
        let mut iterations = 0u64;
        for job in waiting.chain(self.leases.values().map(|lease| &lease.job)) {
            if job.done == 0 || job.done > job.iterations {
                return Err(format!("job {} has done {} of {}", job.id, job.done, job.iterations));
            }
        }
        for job in self.queue.iter().chain(self.requeued.values()) {
            iterations = iterations.saturating_add(job.iterations - job.done);
        }
        if iterations != self.queued_iterations {
            return Err(format!("queued_iterations {} but jobs sum to {iterations}", self.queued_iterations));
        }
        for (worker_id, worker) in &self.workers {
            let held = self.leases.values().filter(|lease| lease.worker == *worker_id).count() as u32;
            if held != worker.leases {
                return Err(format!("worker {worker_id} counts {} leases but holds {held}", worker.leases));
            }
        }
        for (key, id) in &self.idempotency {
            if self.idempotency_by_job.get(id) != Some(key) {
                return Err(format!("idempotency key {key:?} -> {id} has no reverse entry"));
            }
        }
        if self.idempotency.len() != self.idempotency_by_job.len() {
            return Err("idempotency maps differ in size".into());
        }
        if let Some(id) = self.idempotency_requests.keys().find(|id| !self.idempotency_by_job.contains_key(id)) {
            return Err(format!("job {id} has a request fingerprint but no idempotency key"));
        }
        Ok(())
    }
}

/// Take a checkpoint only if it moves the job forward and stays within its iterations.
fn record_checkpoint(job: &mut QueuedJob, checkpoint: &Checkpoint) {
    if checkpoint.done > job.done && checkpoint.done <= job.iterations {
        job.done = checkpoint.done;
        job.digest = checkpoint.digest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(iterations: u64, at: u64, key: Option<&str>) -> NewJob {
        NewJob {
            digest: Digest([at as u8; 64]),
            iterations,
            enqueued_at_ms: at,
            idempotency_key: key.map(str::to_owned),
        }
    }

    fn register(table: &mut JobTable, name: &str) -> WorkerId {
        match table.apply(&Command::RegisterWorker { name: name.into(), cores: 2, instance_id: None, now_ms: 0 }) {
            CommandResponse::WorkerRegistered(id) => id,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn leased_ids(response: CommandResponse) -> Vec<JobId> {
        match response {
            CommandResponse::Leased(jobs) => jobs.iter().map(|j| j.job).collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A table with completions 1..=5 of which retention keeps the newest 3 (seq 3, 4, 5).
    fn table_with_five_completions_three_kept() -> JobTable {
        let mut table = JobTable::new(Limits { completed_retention: 3, ..Limits::default() });
        let worker = register(&mut table, "w");
        table.apply(&Command::Enqueue { jobs: (1..=5).map(|at| job(1, at, None)).collect() });
        for id in leased_ids(table.apply(&Command::Lease { worker, max_jobs: 5, now_ms: 10, deadline_ms: 99 })) {
            let results = vec![JobResult { job: id, result: Digest([7; 64]) }];
            table.apply(&Command::Complete { worker, now_ms: 11, results });
        }
        table
    }

    #[test]
    fn a_page_of_completions_counts_what_retention_dropped_before_it() {
        let table = table_with_five_completions_three_kept();
        let seqs = |page: &CompletedPage| page.jobs.iter().map(|job| job.seq).collect::<Vec<_>>();
        // (after, top, seqs on the page, cursor, skipped)
        let cases = [
            (None, 2, vec![5, 4], 5, 0),
            (None, 10, vec![5, 4, 3], 5, 0),
            (Some(0), 10, vec![3, 4, 5], 5, 2),
            (Some(1), 1, vec![3], 3, 1),
            (Some(2), 10, vec![3, 4, 5], 5, 0),
            (Some(3), 1, vec![4], 4, 0),
            (Some(5), 10, vec![], 5, 0),
        ];
        for (after, top, expected, cursor, skipped) in cases {
            let page = table.completed_page(after, top).expect("a cursor this table handed out");
            assert_eq!(seqs(&page), expected, "after {after:?} top {top}");
            assert_eq!((page.cursor, page.last_seq, page.skipped), (cursor, 5, skipped), "after {after:?} top {top}");
        }
        assert_eq!(table.completed_page(Some(6), 10), Err(CursorAhead { after: 6, last_seq: 5 }));
        let empty = JobTable::default();
        let page = empty.completed_page(Some(0), 10).expect("cursor 0 before any completion");
        assert_eq!((page.jobs.len(), page.cursor, page.last_seq, page.skipped), (0, 0, 0, 0));
    }

    #[test]
    fn a_worker_is_silent_once_the_timeout_has_passed_since_it_was_last_seen() {
        let mut table = JobTable::default();
        let quiet = register(&mut table, "quiet");
        let chatty = register(&mut table, "chatty");
        let heartbeat =
            Command::Heartbeat { worker: chatty, now_ms: 500, deadline_ms: 600, checkpoints: vec![], hashes_per_s: 0 };
        table.apply(&heartbeat);
        assert_eq!(table.silent_workers(999, 1_000), Vec::<WorkerId>::new());
        assert_eq!(table.silent_workers(1_000, 1_000), vec![quiet]);
        assert_eq!(table.silent_workers(1_500, 1_000), vec![quiet, chatty]);
        assert_eq!(table.silent_workers(1_500, u64::MAX), Vec::<WorkerId>::new(), "the timeout saturates, never wraps");
    }

    #[test]
    fn a_lease_expires_at_its_deadline() {
        let mut table = JobTable::default();
        let worker = register(&mut table, "w");
        table.apply(&Command::Enqueue { jobs: vec![job(1, 1, None)] });
        table.apply(&Command::Lease { worker, max_jobs: 1, now_ms: 10, deadline_ms: 20 });
        assert!(!table.any_lease_expired(19));
        assert!(table.any_lease_expired(20));
    }

    #[test]
    fn ids_are_assigned_in_order_and_idempotency_keys_dedupe() {
        let mut table = JobTable::default();
        let response = table.apply(&Command::Enqueue {
            jobs: vec![
                job(3, 1, Some("a")),
                job(1, 2, None),
                job(3, 1, Some("a")),
                job(0, 4, None),
                // The same key for another request (other iterations, another body): refused.
                job(5, 1, Some("a")),
                job(3, 9, Some("a")),
            ],
        });
        assert_eq!(
            response,
            CommandResponse::Enqueued(vec![
                EnqueueOutcome::Created(1),
                EnqueueOutcome::Created(2),
                EnqueueOutcome::Duplicate(1),
                EnqueueOutcome::Invalid,
                EnqueueOutcome::KeyReused(1),
                EnqueueOutcome::KeyReused(1),
            ])
        );
        assert_eq!(table.queued_len(), 2);
        assert_eq!(table.queued_iterations(), 2);
        table.check_invariants().expect("invariants");
    }

    #[test]
    fn queue_full_refuses_and_counts() {
        let mut table = JobTable::new(Limits { max_queued: 1, ..Limits::default() });
        let response = table.apply(&Command::Enqueue { jobs: vec![job(1, 1, None), job(1, 2, None)] });
        assert_eq!(response, CommandResponse::Enqueued(vec![EnqueueOutcome::Created(1), EnqueueOutcome::QueueFull]));
        assert_eq!(table.totals().rejected_queue_full, 1);
    }

    #[test]
    fn lease_expire_and_resume_from_checkpoint() {
        let mut table = JobTable::default();
        table.apply(&Command::Enqueue { jobs: vec![job(100, 1, None), job(100, 2, None)] });
        let w = register(&mut table, "w1");
        assert_eq!(
            leased_ids(table.apply(&Command::Lease { worker: w, max_jobs: 1, now_ms: 10, deadline_ms: 20 })),
            vec![1]
        );
        let checkpoint = Checkpoint { job: 1, done: 40, digest: Digest([9; 64]) };
        let ack = table.apply(&Command::Heartbeat {
            worker: w,
            now_ms: 15,
            deadline_ms: 25,
            checkpoints: vec![checkpoint, Checkpoint { job: 2, done: 5, digest: Digest([1; 64]) }],
            hashes_per_s: 0,
        });
        assert_eq!(ack, CommandResponse::HeartbeatAck { lost: vec![2], state: WorkerState::Active });
        assert_eq!(table.apply(&Command::ExpireLeases { now_ms: 24 }), CommandResponse::Requeued(vec![]));
        assert_eq!(table.apply(&Command::ExpireLeases { now_ms: 25 }), CommandResponse::Requeued(vec![1]));
        table.check_invariants().expect("invariants");
        // The requeued job (older) comes before job 2, and resumes from the checkpoint.
        let w2 = register(&mut table, "w2");
        match table.apply(&Command::Lease { worker: w2, max_jobs: 4, now_ms: 30, deadline_ms: 40 }) {
            CommandResponse::Leased(jobs) => {
                assert_eq!(jobs.len(), 2);
                assert_eq!(jobs[0], LeasedJob { job: 1, iterations: 100, done: 40, digest: Digest([9; 64]) });
                assert_eq!(jobs[1].job, 2);
                assert_eq!(jobs[1].done, 1);
            }
            other => panic!("unexpected {other:?}"),
        }
        table.check_invariants().expect("invariants");
    }

    #[test]
    fn heartbeats_extend_only_the_leases_the_worker_reports() {
        let mut table = JobTable::default();
        table.apply(&Command::Enqueue { jobs: vec![job(10, 1, None), job(10, 2, None)] });
        let w = register(&mut table, "w");
        leased_ids(table.apply(&Command::Lease { worker: w, max_jobs: 2, now_ms: 0, deadline_ms: 10 }));
        // The worker only learned of job 1 (the answer for job 2 was lost, say).
        table.apply(&Command::Heartbeat {
            worker: w,
            now_ms: 5,
            deadline_ms: 100,
            checkpoints: vec![Checkpoint { job: 1, done: 2, digest: Digest([2; 64]) }],
            hashes_per_s: 0,
        });
        assert_eq!(table.apply(&Command::ExpireLeases { now_ms: 10 }), CommandResponse::Requeued(vec![2]));
        assert!(matches!(table.job_status(1), Some(JobStatus::Running(_))));
        table.check_invariants().expect("invariants");
    }

    #[test]
    fn completion_is_idempotent_and_late_results_are_harmless() {
        let mut table = JobTable::default();
        table.apply(&Command::Enqueue { jobs: vec![job(1, 1, None)] });
        let w1 = register(&mut table, "w1");
        let w2 = register(&mut table, "w2");
        leased_ids(table.apply(&Command::Lease { worker: w1, max_jobs: 1, now_ms: 0, deadline_ms: 5 }));
        table.apply(&Command::ExpireLeases { now_ms: 5 });
        leased_ids(table.apply(&Command::Lease { worker: w2, max_jobs: 1, now_ms: 6, deadline_ms: 50 }));
        let result = JobResult { job: 1, result: Digest([4; 64]) };
        // The expired holder's late result is recorded; the current holder's is a no-op.
        let first = table.apply(&Command::Complete { worker: w1, now_ms: 7, results: vec![result] });
        assert_eq!(first, CommandResponse::Completed(vec![CompleteOutcome::Recorded(1)]));
        let second = table.apply(&Command::Complete {
            worker: w2,
            now_ms: 8,
            results: vec![JobResult { job: 1, result: Digest([5; 64]) }],
        });
        assert_eq!(second, CommandResponse::Completed(vec![CompleteOutcome::AlreadyCompleted(1)]));
        match table.job_status(1) {
            Some(JobStatus::Completed(done)) => assert_eq!(done.result, Digest([4; 64])),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(table.workers()[&w2].leases, 0);
        table.check_invariants().expect("invariants");
    }

    #[test]
    fn never_leased_jobs_cannot_complete() {
        let mut table = JobTable::default();
        table.apply(&Command::Enqueue { jobs: vec![job(1, 1, None)] });
        let response = table.apply(&Command::Complete {
            worker: 1,
            now_ms: 0,
            results: vec![JobResult { job: 1, result: Digest([0; 64]) }],
        });
        assert_eq!(response, CommandResponse::Completed(vec![CompleteOutcome::Unknown]));
        assert!(matches!(table.job_status(1), Some(JobStatus::Queued(_))));
    }

    #[test]
    fn retention_drops_oldest_results_and_their_keys() {
        let mut table = JobTable::new(Limits { completed_retention: 2, ..Limits::default() });
        table.apply(&Command::Enqueue {
            jobs: vec![job(1, 1, Some("k1")), job(1, 2, Some("k2")), job(1, 3, Some("k3"))],
        });
        let w = register(&mut table, "w");
        leased_ids(table.apply(&Command::Lease { worker: w, max_jobs: 3, now_ms: 0, deadline_ms: 9 }));
        let results = (1..=3).map(|job| JobResult { job, result: Digest([job as u8; 64]) }).collect();
        table.apply(&Command::Complete { worker: w, now_ms: 1, results });
        assert_eq!(table.latest_completed(10).map(|j| j.id).collect::<Vec<_>>(), vec![3, 2]);
        assert_eq!(table.completed_after(0, 10).map(|j| j.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(table.job_status(1), Some(JobStatus::Forgotten));
        assert_eq!(table.job_status(4), None);
        // k1 left with its result (any request may take it now); a retry of k2 still deduplicates.
        let again = table.apply(&Command::Enqueue { jobs: vec![job(1, 4, Some("k1")), job(1, 2, Some("k2"))] });
        assert_eq!(again, CommandResponse::Enqueued(vec![EnqueueOutcome::Created(4), EnqueueOutcome::Duplicate(2)]));
        table.check_invariants().expect("invariants");
    }

    #[test]
    fn draining_worker_gets_no_leases_and_release_requeues_checkpoints() {
        let mut table = JobTable::default();
        table.apply(&Command::Enqueue { jobs: vec![job(10, 1, None), job(10, 2, None)] });
        let w = register(&mut table, "w");
        leased_ids(table.apply(&Command::Lease { worker: w, max_jobs: 2, now_ms: 0, deadline_ms: 9 }));
        table.apply(&Command::UpdateWorker { worker: w, state: WorkerState::Draining, now_ms: 1 });
        assert_eq!(
            table.apply(&Command::Lease { worker: w, max_jobs: 1, now_ms: 2, deadline_ms: 9 }),
            CommandResponse::Rejected(Rejection::WorkerDraining)
        );
        let released = table.apply(&Command::Release {
            worker: w,
            checkpoints: vec![Checkpoint { job: 2, done: 7, digest: Digest([7; 64]) }],
        });
        assert_eq!(released, CommandResponse::Requeued(vec![2]));
        match table.job_status(2) {
            Some(JobStatus::Queued(job)) => assert_eq!((job.done, job.attempts), (7, 1)),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(table.apply(&Command::RemoveWorker { worker: w }), CommandResponse::Requeued(vec![1]));
        assert_eq!(table.queued_iterations(), 9 + 3);
        table.check_invariants().expect("invariants");
    }

    #[test]
    fn unknown_worker_is_rejected_without_change() {
        let mut table = JobTable::default();
        table.apply(&Command::Enqueue { jobs: vec![job(1, 1, None)] });
        let before = table.clone();
        for command in [
            Command::Lease { worker: 9, max_jobs: 1, now_ms: 0, deadline_ms: 1 },
            Command::Heartbeat { worker: 9, now_ms: 0, deadline_ms: 1, checkpoints: vec![], hashes_per_s: 0 },
            Command::UpdateWorker { worker: 9, state: WorkerState::Draining, now_ms: 0 },
            Command::RemoveWorker { worker: 9 },
        ] {
            assert_eq!(table.apply(&command), CommandResponse::Rejected(Rejection::UnknownWorker));
        }
        assert_eq!(table, before);
    }
}
