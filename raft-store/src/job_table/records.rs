//! What the table holds, and what its readers get: jobs in each place, workers, the
//! autoscaler's decisions, totals, pages of completions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wire::Digest;

use super::{CompletionSeq, JobId, WorkerId, WorkerState};

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
pub struct CompletedRecord {
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
    pub jobs: Vec<&'a CompletedRecord>,
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
    Completed(&'a CompletedRecord),
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
