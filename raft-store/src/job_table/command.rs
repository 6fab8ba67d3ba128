//! The commands that change the table, and what applying one answers.

use serde::{Deserialize, Serialize};
use wire::Digest;

use super::{CompletionSeq, JobId, JoinTerms, Limits, WorkerId};

/// A job to add, as the leader stamped it (see [`super::JobRequest`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    /// SHA-512 of the body: the chain after iteration 1.
    pub digest: Digest,
    /// Total iterations asked for, at least 1.
    pub iterations: u64,
    /// When the leader appended it (ms since the Unix epoch, the leader's clock).
    pub enqueued_at_ms: u64,
    /// A client-chosen key that makes a retried enqueue return the first job's id.
    pub idempotency_key: Option<String>,
    /// Whether it may be served from what the table knows of its chain (only in
    /// [`Command::EnqueueReusing`]).
    #[serde(default)]
    pub reuse: bool,
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

/// What a worker can take on, so that a lease is sized by work and not by count: one job per
/// free core, whatever its size, then more waiting jobs only while their iterations fit in
/// `iterations`. A long job is then never held behind another on a busy core while a core
/// elsewhere is free: it stays queued for the next worker with a free core (and the
/// autoscaler sees it waiting).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseBudget {
    /// Cores not computing a job.
    pub free_cores: u32,
    /// Iterations the worker can finish within its backlog target beyond what it holds.
    pub iterations: u64,
}

impl LeaseBudget {
    /// Whether a waiting job of `cost` iterations is granted: on a free core whatever its size,
    /// else only if it fits in what is left of the budget.
    pub fn admits(&self, cost: u64) -> bool {
        self.free_cores > 0 || cost <= self.iterations
    }

    /// Grant a job of `cost` iterations (one [`LeaseBudget::admits`]).
    pub(super) fn take(&mut self, cost: u64) {
        if self.free_cores > 0 {
            self.free_cores -= 1;
        }
        self.iterations = self.iterations.saturating_sub(cost);
    }
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
/// cannot act twice, each with the reason the policy gave (`why`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ScalerCommand {
    /// The leader decided to launch one worker; `token` is the provider's idempotency key (EC2
    /// `ClientToken`), so a retry or a new leader never launches twice.
    LaunchRequested {
        token: String,
        at_ms: u64,
        #[serde(default)]
        why: String,
        /// Its worker's one-time join secret, by hash: chosen by the leader before proposing.
        #[serde(default)]
        join: Option<JoinTerms>,
    },
    /// The launch with `token` produced `instance_id`.
    InstanceSeen { token: String, instance_id: String, at_ms: u64 },
    /// The leader decided to terminate `instance_id`. Refused while a worker on that instance
    /// holds a lease ([`Rejection::WorkerBusy`]): scale-in drains first.
    TerminationRequested { instance_id: String, at_ms: u64 },
    /// The launch with `token` failed: the provider refused it, or it never registered. Counts
    /// toward the backoff.
    LaunchFailed { token: String, at_ms: u64, why: String },
    /// Begin scaling `worker` in: it drains (hands its leases back, takes no new ones).
    ScaleIn { worker: WorkerId, at_ms: u64, why: String },
    /// Stop scaling `worker` in: it takes work again.
    Resume { worker: WorkerId, at_ms: u64, why: String },
    /// The leader held back from what the load asked for (backing off, at the maximum, ...).
    /// Recorded only when it differs from the last record.
    Held { at_ms: u64, why: String },
    /// Replace the silent witness voter `replaces` by a new worker in the witness role, voter
    /// `node_id`, launched under `token`. Refused while another replacement is under way, and
    /// when `node_id` is not above every id handed out before.
    ReplaceWitness {
        token: String,
        replaces: u64,
        node_id: u64,
        at_ms: u64,
        why: String,
        /// The new witness's one-time join secret, by hash.
        #[serde(default)]
        join: Option<JoinTerms>,
    },
    /// The launch (or witness launch) under `token` is launched again by a leader that does not
    /// know its join secret (its predecessor chose it, and only the hash was committed): a new
    /// one is added beside it (see `JoinGrant`). Refused when the launch is not in flight or
    /// its join secret was used.
    JoinRenewed { token: String, join: JoinTerms, at_ms: u64 },
    /// The replacement witness under `token` was launched: `instance_id`, its voter at `raft_addr`.
    WitnessLaunched { token: String, instance_id: String, raft_addr: String, at_ms: u64 },
    /// The replacement under `token` is done: its witness is a voter in place of the old one.
    WitnessReplaced { token: String, at_ms: u64 },
    /// The replacement under `token` failed (the launch was refused, or the new witness never
    /// caught up): it is dropped, and a later one may be decided.
    WitnessFailed { token: String, at_ms: u64, why: String },
}

/// Everything that changes the table. Each is one Raft entry's payload, stamped by the leader
/// from a [`super::Proposal`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Add jobs (a batch, so concurrent enqueues can share one entry), each computed from its
    /// start whatever its `reuse`: how logs written before reuse add jobs, and batches in which
    /// no job asks for reuse.
    Enqueue { jobs: Vec<NewJob> },
    /// Add jobs; each with `reuse` set is served from what the table knows of its chain, and
    /// every one is indexed for later jobs (see [`super::JobTable`]). Stamped only once reuse
    /// is enabled ([`Command::EnableReuse`]); applied as [`Command::Enqueue`] before that.
    EnqueueReusing { jobs: Vec<NewJob> },
    /// Every voter runs a version that has reuse: enqueues may use it from now on. Proposed by
    /// a leader once each voter of the membership said so; a version from before reuse cannot
    /// decode this command (nor anything after it), so it stops replicating rather than apply
    /// what it does not know.
    EnableReuse,
    /// Hand up to `max_jobs` waiting jobs to `worker` until `deadline_ms`; with a `budget`, by
    /// work rather than by count (see [`LeaseBudget`]).
    Lease {
        worker: WorkerId,
        max_jobs: u32,
        now_ms: u64,
        deadline_ms: u64,
        #[serde(default)]
        budget: Option<LeaseBudget>,
    },
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
    RegisterWorker {
        name: String,
        cores: u32,
        instance_id: Option<String>,
        now_ms: u64,
        /// The witness's worker.
        #[serde(default)]
        witness: bool,
        /// The autoscaler's launch that started it, if one did.
        #[serde(default)]
        launch_token: Option<String>,
    },
    /// Change a worker's state (drain it, or make it active again).
    UpdateWorker { worker: WorkerId, state: WorkerState, now_ms: u64 },
    /// Remove a worker; its leases are requeued.
    ///
    /// A removal decided from the worker's silence carries the last time the proposer had heard
    /// from it, and is a no-op if the worker has been heard from since: the leader's view may
    /// have been stale (a leader paused past the worker timeout), and apply is where that is
    /// checked against the committed state. `None` removes unconditionally.
    RemoveWorker {
        worker: WorkerId,
        #[serde(default)]
        last_seen_ms: Option<u64>,
    },
    /// Replace the table's limits (in logs written before [`Command::ConfigureLimits`]).
    SetLimits(Limits),
    /// Record an autoscaler decision.
    Scaler(ScalerCommand),
    /// A launched worker exchanges its one-time join secret (by hash) for the cluster secret:
    /// accepted once, if a launch in flight under `launch_token` has that hash, it was not used
    /// yet and `now_ms` is before it expires; refused ([`Rejection::JoinRefused`],
    /// [`Rejection::JoinUsed`], [`Rejection::JoinExpired`]) with no change otherwise.
    UseJoin { launch_token: String, secret_sha256: String, now_ms: u64 },
    /// Coordinator `node`'s configured limits, proposed by it as leader when they differ from
    /// the last it configured: they become the table's, and are recorded as `node`'s. So two
    /// coordinators started with different limits do not overwrite each other at every change
    /// of leader: each writes its limits once per configuration, and the newest configuration
    /// holds.
    ConfigureLimits {
        /// The coordinator whose configuration these are.
        node: u64,
        /// Its limits.
        limits: Limits,
    },
}

impl std::fmt::Display for Command {
    /// A one-line summary for openraft's logs (never the whole batch).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Enqueue { jobs } => write!(f, "Enqueue({} jobs)", jobs.len()),
            Command::EnqueueReusing { jobs } => write!(f, "EnqueueReusing({} jobs)", jobs.len()),
            Command::EnableReuse => write!(f, "EnableReuse"),
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
            Command::RemoveWorker { worker, .. } => write!(f, "RemoveWorker({worker})"),
            Command::SetLimits(limits) => write!(f, "SetLimits({limits:?})"),
            Command::Scaler(decision) => write!(f, "Scaler({decision:?})"),
            Command::UseJoin { launch_token, .. } => write!(f, "UseJoin({launch_token})"),
            Command::ConfigureLimits { node, limits } => write!(f, "ConfigureLimits(node {node}: {limits:?})"),
        }
    }
}

/// What happened to one job of an [`Command::Enqueue`] batch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// A new job with this id (queued, or served from another job's chain: see
    /// [`super::JobTable::job_status`]).
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
    /// A removal for silence, but the worker was heard from after the proposer last saw it.
    HeardFromSince,
    /// A termination of an instance whose worker holds leases: it must drain first.
    WorkerBusy,
    /// A scaler decision about a worker or launch that is not (or no longer) there.
    StaleDecision,
    /// No launch in flight has that launch token and that join secret.
    JoinRefused,
    /// The join secret was exchanged already.
    JoinUsed,
    /// The join secret has expired.
    JoinExpired,
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
