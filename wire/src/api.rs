//! The client API's JSON bodies.

use serde::{Deserialize, Serialize};

/// `PUT /enqueue` answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EnqueueResponse {
    /// The new job's id (or the first job's, for a repeated idempotency key).
    pub id: u64,
}

/// One completed job in `POST /pullCompleted`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CompletedJob {
    /// The job's id.
    pub id: u64,
    /// Its completion sequence number: the cursor position of this result.
    pub seq: u64,
    /// The chain's result, 128 lowercase hex characters.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]{128}$"))]
    pub result: String,
    /// Iterations computed.
    pub iterations: u64,
    /// When it was enqueued (ms since the Unix epoch).
    pub enqueued_at_ms: u64,
    /// When its result was recorded (ms since the Unix epoch).
    pub completed_at_ms: u64,
}

/// `POST /pullCompleted` answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PullResponse {
    /// Newest first with `top` alone; oldest first with `after`.
    pub jobs: Vec<CompletedJob>,
    /// With `after`: pass this as the next `after` to continue with no gap and no repeat.
    pub cursor: u64,
    /// The newest completion sequence number recorded so far.
    pub last_seq: u64,
    /// With `after`: completions after the cursor whose results retention had already dropped
    /// (the oldest are dropped once more than `--completed-retention` are kept), so no answer
    /// can return them. 0 unless the client fell that far behind.
    #[serde(default)]
    pub skipped: u64,
}

/// Where a job is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// Leased to a worker.
    Running,
    /// Finished; `result` is set.
    Completed,
    /// Waiting on another job computing the same chain (same body and iterations), named by
    /// `following`; it completes when that job does.
    Following,
}

/// Where a job's chain came from when it was served from another job's (see `JobView::reused`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReuseView {
    /// The job whose result or checkpoint it started from.
    pub job: u64,
    /// The iteration it started at: that job's chain value there was its own. Its own
    /// iterations when it was served whole.
    pub from_iteration: u64,
}

/// `GET /jobs/{id}` answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JobView {
    /// The job's id.
    pub id: u64,
    /// Queued, running or completed.
    pub state: JobState,
    /// Total iterations.
    pub iterations: u64,
    /// Iterations done as of the last checkpoint (all of them once completed).
    pub iterations_done: u64,
    /// The result, once completed.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]{128}$"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The worker holding it, while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<u64>,
    /// Leases of this job that ended without a result.
    pub attempts: u32,
    /// Once completed: the iterations already done when its last lease began (above 1 when the
    /// job resumed from a checkpoint after a worker was lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<u64>,
    /// When it was enqueued (ms since the Unix epoch).
    pub enqueued_at_ms: u64,
    /// When its result was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at_ms: Option<u64>,
    /// While following: the job it waits on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub following: Option<u64>,
    /// Set when it was served from another job's chain (the same body), whole or from an
    /// iteration on, rather than computed from its start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused: Option<ReuseView>,
}

/// One voter in `GET /cluster`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VoterView {
    /// Its node id.
    pub id: u64,
    /// "coordinator" or "witness".
    pub role: String,
    /// Its client API address (empty for the witness).
    pub api_addr: String,
    /// Its Raft address.
    pub raft_addr: String,
    /// Whether this node reached it just now.
    pub reachable: bool,
    /// Whether it leads.
    pub is_leader: bool,
    /// Its own account: "leader", "follower", "candidate", "learner", "shutdown", or
    /// "unreachable" when it did not answer.
    pub state: String,
    /// Its term, as it reported it.
    pub term: Option<u64>,
    /// The last index in its log, as it reported it.
    pub last_log_index: Option<u64>,
    /// The last index it applied, as it reported it.
    pub applied_index: Option<u64>,
    /// The last index the leader knows it holds (only when the answering node leads).
    pub matched_index: Option<u64>,
    /// Entries it lacks, as the leader sees it (only when the answering node leads).
    pub lag_entries: Option<u64>,
    /// Milliseconds since the leader last heard from it (only when the answering node leads).
    pub last_contact_ms: Option<u64>,
}

/// Queue figures in `GET /cluster` (the replicated state as the answering node holds it).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct QueueView {
    /// Jobs waiting for a worker.
    pub queued: u64,
    /// Jobs waiting on another job computing the same chain.
    #[serde(default)]
    pub following: u64,
    /// Iterations still to compute over the waiting jobs.
    pub queued_iterations: u64,
    /// Age of the oldest waiting job (0 when none waits).
    pub oldest_queued_age_ms: u64,
    /// Jobs leased to workers.
    pub running: u64,
    /// Jobs ever created.
    pub enqueued_total: u64,
    /// Results ever recorded.
    pub completed_total: u64,
    /// Leases that ended without a result.
    pub requeued_total: u64,
    /// Whether reuse is on: once every member of the cluster runs a version that has it.
    #[serde(default)]
    pub reuse_enabled: bool,
    /// Jobs served, whole or in part, from another job's chain.
    #[serde(default)]
    pub reused_total: u64,
    /// Iterations those jobs did not compute.
    #[serde(default)]
    pub iterations_saved_total: u64,
    /// Results still retained (answerable by `GET /jobs/{id}`).
    pub completed_retained: u64,
    /// The newest completion sequence number.
    pub last_completion_seq: u64,
    /// The replicated limits the cluster runs with: jobs that may wait...
    #[serde(default)]
    pub max_queued: u64,
    /// ...and results kept.
    #[serde(default)]
    pub completed_retention: u64,
}

/// One committed autoscaler decision in `GET /cluster`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ScalerDecisionView {
    /// When it was decided (ms since the Unix epoch).
    pub at_ms: u64,
    /// "launch", "launch failed", "scale in", "resume", "terminate" or "held".
    pub action: String,
    /// The launch token, worker or instance it concerns, if any.
    pub detail: String,
    /// Why, in a sentence.
    #[serde(default)]
    pub why: String,
}

/// The autoscaler's state in `GET /cluster`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ScalerView {
    /// Where workers come from: "off", "local" or "ec2".
    #[serde(default)]
    pub provider: String,
    /// Workers (the witness's not counted) the policy wants, from this node's view (with the
    /// provider `off` too: what it would do).
    pub desired_workers: Option<u64>,
    /// Workers (the witness's not counted) registered now.
    #[serde(default)]
    pub workers: u64,
    /// Launches committed and not yet registered.
    #[serde(default)]
    pub launches_in_flight: u64,
    /// Why the policy holds back from what the load asks for, if it does.
    #[serde(default)]
    pub held: Vec<String>,
    /// Launch to registration, as observed (ms).
    #[serde(default)]
    pub boot_ms: Option<u64>,
    /// Launches failed since the last one that registered.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Launches, launch failures and terminations since the cluster began.
    #[serde(default)]
    pub launches_total: u64,
    /// See `launches_total`.
    #[serde(default)]
    pub launch_failures_total: u64,
    /// See `launches_total`.
    #[serde(default)]
    pub terminations_total: u64,
    /// Its most recent committed decisions (at most 50), newest first.
    pub decisions: Vec<ScalerDecisionView>,
}

/// `GET /cluster` answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    /// The answering node's id.
    pub node_id: u64,
    /// The answering node's role.
    pub role: String,
    /// The answering node's clock (ms since the Unix epoch), to age the timestamps below.
    pub now_ms: u64,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// The current term.
    pub term: u64,
    /// The last log index and the last applied index on this node.
    pub last_log_index: Option<u64>,
    /// The last applied log index on this node.
    pub last_applied_index: Option<u64>,
    /// Every voter.
    pub voters: Vec<VoterView>,
    /// When the other voters in `voters` last answered a probe (ms since the Unix epoch): one
    /// probe round serves every `/cluster` request for 100 ms, so their states can be that old.
    #[serde(default)]
    pub voters_probed_at_ms: u64,
    /// Jobs waiting.
    pub queued: u64,
    /// Jobs leased to workers.
    pub running: u64,
    /// Results retained.
    pub completed_retained: u64,
    /// Queue figures.
    pub queue: QueueView,
    /// Registered workers.
    pub workers: Vec<WorkerView>,
    /// The autoscaler's decisions.
    pub scaler: ScalerView,
}

/// One registered worker in `GET /cluster`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorkerView {
    /// Its registry id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Cores it hashes on.
    pub cores: u32,
    /// "active" or "draining".
    pub state: String,
    /// Leases it holds.
    pub leases: u32,
    /// The last time it was heard from (ms since the Unix epoch).
    pub last_seen_ms: u64,
    /// When it registered (ms since the Unix epoch).
    pub registered_at_ms: u64,
    /// The EC2 instance it runs on, if any.
    pub instance_id: Option<String>,
    /// Chain steps per second, as of its last heartbeat.
    pub hash_rate: u64,
    /// The witness's worker (never scaled in).
    #[serde(default)]
    pub witness: bool,
}

/// `POST /admin/failover` answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FailoverResponse {
    /// Who led before.
    pub previous_leader: u64,
    /// Who leads now.
    pub leader: u64,
    /// How long the hand-over took, in milliseconds.
    pub took_ms: u64,
}

/// `POST /admin/members/replace` request: replace voter `remove` (lost, or about to be shut
/// down) by the new node `add`, already running with an empty data directory at `addr`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplaceMemberRequest {
    /// The voter to remove.
    pub remove: u64,
    /// The new node's id: never used before, higher than every id in the membership.
    pub add: u64,
    /// `coordinator` or `witness`, as the removed voter was.
    #[cfg_attr(feature = "openapi", schema(pattern = "^(coordinator|witness)$"))]
    pub role: String,
    /// The new node's `host:port` (its API and Raft address for a coordinator, its Raft address
    /// for a witness).
    #[cfg_attr(feature = "openapi", schema(pattern = "^.+:[0-9]{1,5}$"))]
    pub addr: String,
}

/// `POST /admin/members/replace` answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReplaceMemberResponse {
    /// The voters now.
    pub voters: Vec<u64>,
    /// How long the replacement took (mostly the new node catching up), in milliseconds.
    pub took_ms: u64,
}

/// `POST /admin/workers/{id}/drain` and `/resume` answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WorkerStateResponse {
    /// The worker.
    pub worker: u64,
    /// Its state now: "draining" or "active".
    #[cfg_attr(feature = "openapi", schema(pattern = "^(draining|active)$"))]
    pub state: String,
}

/// Every error's body.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub error: String,
}
