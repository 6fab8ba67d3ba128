//! The replicated job state machine: a pure, deterministic table of jobs, leases, results and
//! workers.
//!
//! [`JobTable::apply`] is the whole contract: given the same sequence of [`Command`]s, every
//! replica reaches the same table and returns the same [`CommandResponse`]s. It therefore reads no clock
//! (times arrive inside commands, stamped by the leader from a [`Proposal`]), draws no random numbers, performs no
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
//!
//! ## Reuse
//!
//! A job is exactly its first digest `d` (the chain after iteration 1) and its iterations `n`,
//! and the chain is deterministic, so the table serves a job from what it already knows of
//! `d`'s chain, decided here in apply (a replay decides the same):
//!
//! - `(d, n)` completed and retained: the new job is completed at once with that result, under
//!   its own completion sequence number.
//! - `(d, n)` queued or running: the new job follows that job (`following`) and completes with
//!   it, whatever happens to it on the way (a lost lease requeues it; nothing drops it).
//! - else, the furthest state of `d`'s chain short of `n` (a retained result of `(d, m)`, or
//!   the checkpoint of a job computing `d`'s chain): the new job starts from it, with `n - m`
//!   iterations left.
//!
//! `chain_results` maps `(d, n)` to the newest retained completion of it, `chain_live` to the
//! job computing it; both are kept in step by enqueue, completion and retention. A job whose
//! chain value moved past its first digest (a checkpoint, a start from another chain), and one
//! that opted out, keeps that digest in `origins` until it completes. Only jobs added by
//! [`Command::EnqueueReusing`] take part: jobs of [`Command::Enqueue`] (logs from before reuse,
//! and batches in which every job opted out) are neither served nor indexed, so a voter that
//! replayed old entries and one that installed an old version's snapshot hold the same indexes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use wire::Digest;

mod command;
mod proposal;
mod reads;
mod records;
mod scaler;
#[cfg(test)]
mod tests;

pub use command::*;
pub use proposal::*;
pub use records::*;

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
    completed: BTreeMap<CompletionSeq, CompletedRecord>,
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
    /// Each coordinator's limits as it last configured them ([`Command::ConfigureLimits`]).
    #[serde(default)]
    limits_configured: BTreeMap<u64, Limits>,
    /// The newest retained completion of each (first digest, iterations).
    #[serde(default)]
    chain_results: BTreeMap<(Digest, u64), CompletionSeq>,
    /// The job queued or running for each (first digest, iterations) that others may follow.
    #[serde(default)]
    chain_live: BTreeMap<(Digest, u64), JobId>,
    /// The first digest of each job not yet completed whose chain value is past it.
    #[serde(default)]
    origins: BTreeMap<JobId, Digest>,
    /// Where each job not yet completed that started from another job's chain started.
    #[serde(default)]
    reuse_starts: BTreeMap<JobId, Reuse>,
    /// Jobs waiting on another, by id.
    #[serde(default)]
    following: BTreeMap<JobId, FollowingJob>,
    /// (job followed, follower) for each following job.
    #[serde(default)]
    followers: BTreeSet<(JobId, JobId)>,
    /// Every voter runs a version that has reuse ([`Command::EnableReuse`]).
    #[serde(default)]
    reuse_enabled: bool,
}

/// The most jobs that follow one job: completing it completes them in the same apply, so this
/// bounds that apply's work like a worker's batch of results. A copy beyond it is computed on
/// its own (and indexed).
pub const MAX_FOLLOWERS: usize = 1024;

/// How many jobs computing a chain an enqueue looks at, on each side of its own iterations,
/// for a checkpoint to start from: bounds apply's work whatever a client enqueues.
const LIVE_CHAINS_SCANNED: usize = 16;

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
            limits_configured: BTreeMap::new(),
            chain_results: BTreeMap::new(),
            chain_live: BTreeMap::new(),
            origins: BTreeMap::new(),
            reuse_starts: BTreeMap::new(),
            following: BTreeMap::new(),
            followers: BTreeSet::new(),
            reuse_enabled: false,
        }
    }

    /// Whether enqueues may use reuse ([`Command::EnableReuse`] was applied).
    pub fn reuse_enabled(&self) -> bool {
        self.reuse_enabled
    }

    fn set_limits(&mut self, limits: Limits) -> CommandResponse {
        if limits.completed_retention == 0 || limits.max_queued == 0 || limits.max_lease_batch == 0 {
            return CommandResponse::Rejected(Rejection::InvalidLimits);
        }
        self.limits = limits;
        self.enforce_retention();
        CommandResponse::Done
    }

    /// Apply one committed command. Deterministic; never panics on any input.
    pub fn apply(&mut self, command: &Command) -> CommandResponse {
        match command {
            Command::Enqueue { jobs } => self.enqueue_batch(jobs, false),
            Command::EnqueueReusing { jobs } => self.enqueue_batch(jobs, self.reuse_enabled),
            Command::EnableReuse => {
                self.reuse_enabled = true;
                CommandResponse::Done
            }
            Command::Lease { worker, max_jobs, now_ms, deadline_ms, budget } => {
                self.lease(*worker, *max_jobs, *now_ms, *deadline_ms, *budget)
            }
            Command::Heartbeat { worker, now_ms, deadline_ms, checkpoints, hashes_per_s } => {
                self.heartbeat(*worker, *now_ms, *deadline_ms, checkpoints, *hashes_per_s)
            }
            Command::Complete { worker, now_ms, results } => self.complete(*worker, *now_ms, results),
            Command::Release { worker, checkpoints } => self.release(*worker, checkpoints),
            Command::ExpireLeases { now_ms } => self.expire_leases(*now_ms),
            Command::RegisterWorker { name, cores, instance_id, now_ms, witness, launch_token } => {
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
                        witness: *witness,
                        last_busy_ms: *now_ms,
                    },
                );
                self.link_registration(launch_token.as_deref(), instance_id.as_deref(), *now_ms);
                CommandResponse::WorkerRegistered(id)
            }
            Command::UpdateWorker { worker, state, now_ms } => match self.workers.get_mut(worker) {
                Some(w) => {
                    w.state = *state;
                    w.last_seen_ms = w.last_seen_ms.max(*now_ms);
                    // An operator's word overrides the autoscaler's scale-in.
                    self.scaler.scaling_in.remove(worker);
                    CommandResponse::Done
                }
                None => CommandResponse::Rejected(Rejection::UnknownWorker),
            },
            Command::RemoveWorker { worker, last_seen_ms } => {
                let Some(w) = self.workers.get(worker) else {
                    return CommandResponse::Rejected(Rejection::UnknownWorker);
                };
                if last_seen_ms.is_some_and(|seen| w.last_seen_ms > seen) {
                    return CommandResponse::Rejected(Rejection::HeardFromSince);
                }
                let held: Vec<JobId> =
                    self.leases.iter().filter(|(_, lease)| lease.worker == *worker).map(|(id, _)| *id).collect();
                for id in &held {
                    self.requeue(*id);
                }
                if let Some(removed) = self.workers.remove(worker) {
                    self.forget_scaled_worker(*worker, removed.instance_id.as_deref());
                }
                CommandResponse::Requeued(held)
            }
            Command::SetLimits(limits) => self.set_limits(*limits),
            Command::ConfigureLimits { node, limits } => {
                let answer = self.set_limits(*limits);
                if answer == CommandResponse::Done {
                    self.limits_configured.insert(*node, *limits);
                }
                answer
            }
            Command::Scaler(decision) => self.apply_scaler(decision),
            Command::UseJoin { launch_token, secret_sha256, now_ms } => {
                self.use_join(launch_token, secret_sha256, *now_ms)
            }
        }
    }

    fn enqueue_batch(&mut self, jobs: &[NewJob], reusing: bool) -> CommandResponse {
        let outcomes = jobs.iter().map(|job| self.enqueue(job, reusing)).collect();
        // Jobs served whole at enqueue add completions.
        self.enforce_retention();
        CommandResponse::Enqueued(outcomes)
    }

    /// Add one job; in a batch that is `reusing`, served from its chain if it asks for reuse,
    /// and indexed for others either way.
    fn enqueue(&mut self, job: &NewJob, reusing: bool) -> EnqueueOutcome {
        let reuse = reusing && job.reuse;
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
        let known = match reuse.then(|| self.furthest_known(job.digest, job.iterations)).flatten() {
            Some(Known::Computing(leader)) if self.followers_of(leader) >= MAX_FOLLOWERS => None,
            known => known,
        };
        // A job served whole at once does not wait; every other does, here or behind another.
        let waits = !matches!(known, Some(Known::Result { .. }));
        if waits && self.queued_len() + self.following.len() as u64 >= self.limits.max_queued {
            self.totals.rejected_queue_full += 1;
            return EnqueueOutcome::QueueFull;
        }
        let id = self.next_job_id;
        self.next_job_id += 1;
        let chain = (job.digest, job.iterations);
        match known {
            Some(Known::Result { job: source, result }) => {
                self.record_reused(id, job.enqueued_at_ms, chain, result, Reuse { job: source, from: job.iterations });
            }
            Some(Known::Computing(leader)) => {
                let following =
                    FollowingJob { id, leader, enqueued_at_ms: job.enqueued_at_ms, iterations: job.iterations };
                self.following.insert(id, following);
                self.followers.insert((leader, id));
                self.count_reuse(job.iterations);
            }
            Some(Known::Partway { job: source, done, digest }) => {
                self.origins.insert(id, job.digest);
                self.reuse_starts.insert(id, Reuse { job: source, from: done });
                self.count_reuse(done);
                self.add_waiting(QueuedJob {
                    id,
                    enqueued_at_ms: job.enqueued_at_ms,
                    iterations: job.iterations,
                    done,
                    attempts: 0,
                    digest,
                });
                self.chain_live.insert(chain, id);
            }
            None => {
                self.add_waiting(QueuedJob {
                    id,
                    enqueued_at_ms: job.enqueued_at_ms,
                    iterations: job.iterations,
                    done: 1,
                    attempts: 0,
                    digest: job.digest,
                });
                if reuse && !self.chain_live.contains_key(&chain) {
                    self.chain_live.insert(chain, id);
                } else if reusing {
                    // Computed on its own (as asked, or past the followers one job may have);
                    // its result is indexed all the same.
                    self.origins.insert(id, job.digest);
                }
            }
        }
        if let Some(key) = &job.idempotency_key {
            self.idempotency.insert(key.clone(), id);
            self.idempotency_by_job.insert(id, key.clone());
            self.idempotency_requests.insert(id, RequestFingerprint::of(job));
        }
        self.totals.enqueued += 1;
        EnqueueOutcome::Created(id)
    }

    /// How many jobs follow `leader`, counted up to [`MAX_FOLLOWERS`].
    fn followers_of(&self, leader: JobId) -> usize {
        self.followers.range((leader, 0)..=(leader, JobId::MAX)).take(MAX_FOLLOWERS).count()
    }

    fn add_waiting(&mut self, job: QueuedJob) {
        self.queued_iterations = self.queued_iterations.saturating_add(job.iterations - job.done);
        self.queue.push_back(job);
    }

    /// Count a job served from another's chain at `from` iterations.
    fn count_reuse(&mut self, from: u64) {
        self.totals.reused += 1;
        self.totals.iterations_saved = self.totals.iterations_saved.saturating_add(from.saturating_sub(1));
    }

    /// The furthest state of the chain of first digest `digest` the table knows, up to
    /// `iterations`: that very result, a job computing it, or a state partway (beyond the
    /// first iteration).
    fn furthest_known(&self, digest: Digest, iterations: u64) -> Option<Known> {
        if let Some(seq) = self.chain_results.get(&(digest, iterations))
            && let Some(record) = self.completed.get(seq)
        {
            return Some(Known::Result { job: record.id, result: record.result });
        }
        if let Some(leader) = self.chain_live.get(&(digest, iterations)) {
            return Some(Known::Computing(*leader));
        }
        let mut best: Option<Known> = None;
        let mut consider = |candidate: Known| {
            if candidate.done() > best.as_ref().map_or(1, Known::done) {
                best = Some(candidate);
            }
        };
        if let Some((&(_, m), seq)) = self.chain_results.range((digest, 0)..(digest, iterations)).next_back()
            && let Some(record) = self.completed.get(seq)
        {
            consider(Known::Partway { job: record.id, done: m, digest: record.result });
        }
        // Jobs computing this chain, the nearest on each side of `iterations`: their checkpoints.
        let below = self.chain_live.range((digest, 0)..(digest, iterations)).rev().take(LIVE_CHAINS_SCANNED);
        let above = self
            .chain_live
            .range((Bound::Excluded((digest, iterations)), Bound::Included((digest, u64::MAX))))
            .take(LIVE_CHAINS_SCANNED);
        for (_, id) in below.chain(above) {
            if let Some(job) = self.waiting_or_running(*id)
                && job.done <= iterations
            {
                if job.done == iterations {
                    return Some(Known::Result { job: job.id, result: job.digest });
                }
                consider(Known::Partway { job: job.id, done: job.done, digest: job.digest });
            }
        }
        best
    }

    /// Job `id` with its chain state, if it is queued, requeued or leased.
    fn waiting_or_running(&self, id: JobId) -> Option<&QueuedJob> {
        if let Some(lease) = self.leases.get(&id) {
            return Some(&lease.job);
        }
        self.requeued
            .get(&id)
            .or_else(|| self.queue.binary_search_by_key(&id, |job| job.id).ok().map(|at| &self.queue[at]))
    }

    /// Record job `id` as completed at enqueue with `result`, served from `reuse`.
    fn record_reused(&mut self, id: JobId, now_ms: u64, chain: (Digest, u64), result: Digest, reuse: Reuse) {
        let seq = self.next_completion_seq;
        self.next_completion_seq += 1;
        self.completed.insert(
            seq,
            CompletedRecord {
                id,
                seq,
                iterations: chain.1,
                enqueued_at_ms: now_ms,
                completed_at_ms: now_ms,
                attempts: 0,
                resumed_from: chain.1,
                result,
                origin: Some(chain.0),
                reused: Some(reuse),
            },
        );
        self.completed_by_job.insert(id, seq);
        self.chain_results.insert(chain, seq);
        self.totals.completed += 1;
        self.count_reuse(chain.1);
    }

    fn lease(
        &mut self,
        worker: WorkerId,
        max_jobs: u32,
        now_ms: u64,
        deadline_ms: u64,
        budget: Option<LeaseBudget>,
    ) -> CommandResponse {
        let Some(w) = self.workers.get_mut(&worker) else {
            return CommandResponse::Rejected(Rejection::UnknownWorker);
        };
        if w.state == WorkerState::Draining {
            return CommandResponse::Rejected(Rejection::WorkerDraining);
        }
        w.last_seen_ms = w.last_seen_ms.max(now_ms);
        let max_jobs = max_jobs.min(self.limits.max_lease_batch);
        let mut leased = Vec::new();
        let mut budget = budget;
        while leased.len() < max_jobs as usize {
            if let Some(left) = budget.as_mut() {
                let Some(next) = self.next_waiting() else { break };
                let cost = next.iterations - next.done;
                if !left.admits(cost) {
                    // Too long to wait behind this worker's jobs: it stays for a free core.
                    break;
                }
                left.take(cost);
            }
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
            if !leased.is_empty() {
                w.last_busy_ms = w.last_busy_ms.max(now_ms);
            }
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
        if w.leases > 0 {
            w.last_busy_ms = w.last_busy_ms.max(now_ms);
        }
        let state = w.state;
        // Only the leases the worker reports on are extended: a lease whose grant never reached
        // the worker (the answer was lost in a failover) must expire, not live on forever.
        let mut lost = Vec::new();
        for checkpoint in checkpoints {
            match self.leases.get_mut(&checkpoint.job) {
                Some(lease) if lease.worker == worker => {
                    lease.deadline_ms = lease.deadline_ms.max(deadline_ms);
                    record_checkpoint(&mut lease.job, checkpoint, &mut self.origins, &self.chain_live);
                }
                _ => lost.push(checkpoint.job),
            }
        }
        CommandResponse::HeartbeatAck { lost, state }
    }

    fn complete(&mut self, worker: WorkerId, now_ms: u64, results: &[JobResult]) -> CommandResponse {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.last_seen_ms = w.last_seen_ms.max(now_ms);
            // Finishing a job is work: the idle clock starts after the last result.
            w.last_busy_ms = w.last_busy_ms.max(now_ms);
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
        // Its first digest, if it takes part in reuse: kept aside, or its chain value while it
        // is still that digest.
        let computing = self.chain_live.get(&(job.digest, job.iterations)) == Some(&job.id);
        let origin = self.origins.remove(&job.id).or((job.done == 1 && computing).then_some(job.digest));
        let seq = self.next_completion_seq;
        self.next_completion_seq += 1;
        self.completed.insert(
            seq,
            CompletedRecord {
                id: job.id,
                seq,
                iterations: job.iterations,
                enqueued_at_ms: job.enqueued_at_ms,
                completed_at_ms: now_ms,
                attempts: job.attempts,
                resumed_from,
                result: result.result,
                origin,
                reused: self.reuse_starts.remove(&job.id),
            },
        );
        self.completed_by_job.insert(job.id, seq);
        self.totals.completed += 1;
        if let Some(digest) = origin {
            let chain = (digest, job.iterations);
            self.chain_results.insert(chain, seq);
            if self.chain_live.get(&chain) == Some(&job.id) {
                self.chain_live.remove(&chain);
            }
            // The jobs that waited on it complete with it.
            let waiting: Vec<JobId> =
                self.followers.range((job.id, 0)..=(job.id, JobId::MAX)).map(|&(_, follower)| follower).collect();
            for follower in waiting {
                self.followers.remove(&(job.id, follower));
                if let Some(waited) = self.following.remove(&follower) {
                    self.complete_follower(&waited, chain, result.result, now_ms);
                }
            }
        }
        CompleteOutcome::Recorded(seq)
    }

    /// Record `follower` as completed with `result`, the result of the job it waited on.
    fn complete_follower(&mut self, follower: &FollowingJob, chain: (Digest, u64), result: Digest, now_ms: u64) {
        let seq = self.next_completion_seq;
        self.next_completion_seq += 1;
        self.completed.insert(
            seq,
            CompletedRecord {
                id: follower.id,
                seq,
                iterations: follower.iterations,
                enqueued_at_ms: follower.enqueued_at_ms,
                completed_at_ms: now_ms,
                attempts: 0,
                resumed_from: follower.iterations,
                result,
                origin: Some(chain.0),
                reused: Some(Reuse { job: follower.leader, from: follower.iterations }),
            },
        );
        self.completed_by_job.insert(follower.id, seq);
        self.chain_results.insert(chain, seq);
        self.totals.completed += 1;
    }

    fn release(&mut self, worker: WorkerId, checkpoints: &[Checkpoint]) -> CommandResponse {
        let mut requeued = Vec::new();
        for checkpoint in checkpoints {
            if let Some(lease) = self.leases.get_mut(&checkpoint.job)
                && lease.worker == worker
            {
                record_checkpoint(&mut lease.job, checkpoint, &mut self.origins, &self.chain_live);
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
            if let Some(digest) = dropped.origin {
                let chain = (digest, dropped.iterations);
                if self.chain_results.get(&chain) == Some(&dropped.seq) {
                    self.chain_results.remove(&chain);
                }
            }
            if let Some(key) = self.idempotency_by_job.remove(&dropped.id) {
                self.idempotency.remove(&key);
                self.idempotency_requests.remove(&dropped.id);
            }
        }
    }
}

/// Take a checkpoint only if it moves the job forward and stays within its iterations. When
/// the chain value of a job that computes its chain for others (`chain_live`) moves past its
/// first digest, that digest is kept in `origins` (it indexes the job's result once it
/// completes).
fn record_checkpoint(
    job: &mut QueuedJob,
    checkpoint: &Checkpoint,
    origins: &mut BTreeMap<JobId, Digest>,
    chain_live: &BTreeMap<(Digest, u64), JobId>,
) {
    if checkpoint.done > job.done && checkpoint.done <= job.iterations {
        if job.done == 1 && chain_live.get(&(job.digest, job.iterations)) == Some(&job.id) {
            origins.insert(job.id, job.digest);
        }
        job.done = checkpoint.done;
        job.digest = checkpoint.digest;
    }
}

/// What an enqueue finds of its chain.
enum Known {
    /// The very result, of this job (a completion, or a checkpoint at exactly the iterations).
    Result { job: JobId, result: Digest },
    /// A job computing it.
    Computing(JobId),
    /// The chain value after `done` iterations, from this job.
    Partway { job: JobId, done: u64, digest: Digest },
}

impl Known {
    fn done(&self) -> u64 {
        match self {
            Known::Partway { done, .. } => *done,
            _ => u64::MAX,
        }
    }
}
