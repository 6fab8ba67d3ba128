//! What the table holds, and what its readers get: jobs in each place, workers, the
//! autoscaler's decisions, totals, pages of completions.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

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
    /// a checkpoint or started from another job's chain; its iterations if it was served
    /// whole from another job).
    pub resumed_from: u64,
    /// The chain value after all iterations.
    pub result: Digest,
    /// Its first digest (the chain after iteration 1), which indexes its result for reuse;
    /// `None` for jobs recorded before reuse, whose first digest is not known.
    #[serde(default)]
    pub origin: Option<Digest>,
    /// Set when it was served from another job's chain rather than computed from its start.
    #[serde(default)]
    pub reused: Option<Reuse>,
}

/// Where a job's chain came from when it was served from another job's: it started at
/// iteration `from` with `job`'s chain value there (`from` is the job's own iterations when
/// it was served whole: completed at enqueue, or completed with the job it waited on).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reuse {
    /// The job whose result or checkpoint it started from.
    pub job: JobId,
    /// The iterations that chain value stands for.
    pub from: u64,
}

/// A job waiting on another job with the same first digest and iterations: it completes with
/// that job's result when that job completes (see [`super::JobTable`]).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowingJob {
    /// The job.
    pub id: JobId,
    /// The job computing its chain.
    pub leader: JobId,
    /// When it was enqueued (ms).
    pub enqueued_at_ms: u64,
    /// Total iterations (the leader's too).
    pub iterations: u64,
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
    /// The witness's worker (the autoscaler never scales it in).
    #[serde(default)]
    pub witness: bool,
    /// The last time it was seen holding a lease (ms); it has been idle since then if it holds
    /// none now.
    #[serde(default)]
    pub last_busy_ms: u64,
}

/// A launch the autoscaler committed that has not registered as a worker yet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// When the launch was decided (ms).
    pub requested_at_ms: u64,
    /// The instance it produced, once the provider said so.
    pub instance_id: Option<String>,
    /// Its worker's one-time join secret (none in logs written before join secrets, and for a
    /// provider whose workers are given the cluster secret).
    #[serde(default)]
    pub join: Option<JoinGrant>,
}

/// A one-time join secret as the leader chose it, before commit: the secret itself is never
/// committed, only its SHA-256 and how long it is good for from the launch's time.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JoinTerms {
    /// SHA-256 of the join secret, lower-case hex (`wire::join_secret_sha256`).
    pub secret_sha256: String,
    /// It expires this long after the command's time (the boot timeout).
    pub valid_ms: u64,
}

/// A launched worker's one-time join secret, as committed: exchanged once, before it expires,
/// for the cluster secret (`Command::UseJoin`).
///
/// A launch relaunched by a leader that never knew the secret gets another
/// (`ScalerCommand::JoinRenewed`), added beside the first rather than replacing it: the relaunch
/// may find the first machine after all (one token, one machine), whose worker holds the first
/// secret. Either joins; after one use, none does.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JoinGrant {
    /// SHA-256 of each join secret given for the launch, lower-case hex, oldest first (at most
    /// [`JOIN_SECRETS_KEPT`]).
    pub secret_sha256s: Vec<String>,
    /// They are refused at and after this time (ms, the committing leader's clock).
    pub expires_at_ms: u64,
    /// When one was exchanged (ms); then every one is refused.
    pub used_at_ms: Option<u64>,
}

/// How many join secrets a launch keeps (one per leader that relaunched it).
pub const JOIN_SECRETS_KEPT: usize = 4;

impl JoinGrant {
    /// The grant `terms` give at `at_ms`.
    pub fn new(terms: &JoinTerms, at_ms: u64) -> Self {
        JoinGrant {
            secret_sha256s: vec![terms.secret_sha256.clone()],
            expires_at_ms: at_ms.saturating_add(terms.valid_ms),
            used_at_ms: None,
        }
    }

    /// Another join secret for a relaunch at `at_ms`, good for its own time from then.
    pub fn renew(&mut self, terms: &JoinTerms, at_ms: u64) {
        if self.secret_sha256s.len() >= JOIN_SECRETS_KEPT {
            self.secret_sha256s.remove(0);
        }
        self.secret_sha256s.push(terms.secret_sha256.clone());
        self.expires_at_ms = self.expires_at_ms.max(at_ms.saturating_add(terms.valid_ms));
    }

    /// Whether `secret_sha256` is one of its hashes, compared in constant time with each.
    pub fn holds(&self, secret_sha256: &str) -> bool {
        self.secret_sha256s.iter().fold(false, |found, hash| found | wire::secret_matches(Some(secret_sha256), hash))
    }
}

/// One autoscaler decision, as `/cluster` shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ScalerRecord {
    /// When it was committed (ms).
    pub at_ms: u64,
    /// What was done: "launch", "launch failed", "scale in", "resume", "terminate", "held".
    pub action: String,
    /// The worker, instance or launch token it concerns, if any.
    pub subject: Option<String>,
    /// Why, in a sentence.
    pub why: String,
}

/// How many autoscaler decisions the table keeps.
pub const SCALER_RECORDS_KEPT: usize = 50;

/// The autoscaler's committed state: what it decided, and what it must remember between its
/// decisions (the policy itself keeps nothing).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ScalerState {
    /// Launches in flight (committed, not yet registered nor failed), by idempotency token.
    pub launches: BTreeMap<String, Launch>,
    /// Terminations requested and not yet finished, by instance id, with when (ms).
    pub terminations: BTreeMap<String, u64>,
    /// Instances the autoscaler launched and has not terminated: only these it may scale in.
    #[serde(default)]
    pub managed_instances: BTreeSet<String>,
    /// Workers being scaled in (draining, to be terminated once they hold nothing).
    #[serde(default)]
    pub scaling_in: BTreeSet<WorkerId>,
    /// Launches failed since the last one that registered.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// When the last of them failed (ms).
    #[serde(default)]
    pub last_failure_ms: Option<u64>,
    /// The last scale-out (launch or resume) (ms).
    #[serde(default)]
    pub last_scale_out_ms: Option<u64>,
    /// Launch to registration, a moving average over the launches seen (ms).
    #[serde(default)]
    pub boot_ms: Option<u64>,
    /// The last [`SCALER_RECORDS_KEPT`] decisions, oldest first.
    #[serde(default)]
    pub records: VecDeque<ScalerRecord>,
    /// Running totals of launches, launch failures and terminations.
    #[serde(default)]
    pub totals: ScalerTotals,
    /// The last replacement of the witness the leader decided, under way or finished.
    #[serde(default)]
    pub witness: Option<WitnessReplacement>,
    /// The highest voter id a witness replacement was given: ids are never handed out twice.
    #[serde(default)]
    pub highest_node_id: u64,
}

/// A replacement of a silent witness: a new worker in the witness role, voter `node_id`, takes
/// the place of voter `replaces` through the voter-replacement path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WitnessReplacement {
    /// The launch's idempotency token.
    pub token: String,
    /// The witness voter being replaced.
    pub replaces: u64,
    /// The new witness's voter id.
    pub node_id: u64,
    /// When it was decided (ms).
    pub requested_at_ms: u64,
    /// The machine, once the provider launched it.
    pub instance_id: Option<String>,
    /// Where the new voter listens, once launched.
    pub raft_addr: Option<String>,
    /// When the new witness became a voter in place of the old one (ms); until then, under way.
    pub done_at_ms: Option<u64>,
    /// Its worker's one-time join secret (see [`Launch::join`]).
    #[serde(default)]
    pub join: Option<JoinGrant>,
}

impl WitnessReplacement {
    /// Whether it is still under way.
    pub fn pending(&self) -> bool {
        self.done_at_ms.is_none()
    }
}

/// Running totals of the autoscaler's actions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScalerTotals {
    /// Launches committed.
    pub launches: u64,
    /// Launches that failed or never registered.
    pub launch_failures: u64,
    /// Terminations committed.
    pub terminations: u64,
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
    /// Waiting on another job computing the same chain; completes with it.
    Following(&'a FollowingJob),
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
    /// Jobs served, whole or in part, from another job's chain.
    #[serde(default)]
    pub reused: u64,
    /// Iterations those jobs did not have to compute.
    #[serde(default)]
    pub iterations_saved: u64,
}
