//! What a node asks the leader to commit: a [`Proposal`] carries durations, never times. Only
//! the leader turns it into a [`Command`], stamping its own clock, once, in one place
//! ([`Proposal::stamp`], called by `Node::propose_local` just before the entry is appended).
//!
//! So every time in the log is on the clock of the leader that committed it, and lease expiry
//! and worker removal (which the leader decides on its own clock) compare one clock with itself,
//! whatever the clocks of the nodes that took the requests.

use serde::{Deserialize, Serialize};
use wire::Digest;

use super::{
    Checkpoint, Command, JobResult, JoinTerms, LeaseBudget, Limits, NewJob, ScalerCommand, WorkerId, WorkerState,
};

/// A job to add, as the ingesting coordinator prepared it: the body is already reduced to its
/// first digest. The leader adds the time it was enqueued.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JobRequest {
    /// SHA-512 of the body: the chain after iteration 1.
    pub digest: Digest,
    /// Total iterations asked for, at least 1.
    pub iterations: u64,
    /// A client-chosen key that makes a retried enqueue return the first job's id.
    pub idempotency_key: Option<String>,
    /// Whether it may be served from another job's chain (the default; a client opts out to
    /// have its job computed from its start).
    #[serde(default = "reuse_by_default")]
    pub reuse: bool,
}

fn reuse_by_default() -> bool {
    true
}

/// An autoscaler decision, as proposed (the leader adds when it was made). See
/// [`super::ScalerCommand`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ScalerProposal {
    /// Launch one worker; `token` is the provider's idempotency key, `join` its worker's join
    /// secret by hash.
    LaunchRequested { token: String, why: String, join: Option<JoinTerms> },
    /// The launch with `token` produced `instance_id`.
    InstanceSeen { token: String, instance_id: String },
    /// Terminate `instance_id`.
    TerminationRequested { instance_id: String },
    /// The launch with `token` failed.
    LaunchFailed { token: String, why: String },
    /// Begin scaling `worker` in.
    ScaleIn { worker: WorkerId, why: String },
    /// Stop scaling `worker` in.
    Resume { worker: WorkerId, why: String },
    /// The leader held back.
    Held { why: String },
    /// Replace the silent witness `replaces` by voter `node_id`, launched under `token`.
    ReplaceWitness { token: String, replaces: u64, node_id: u64, why: String, join: Option<JoinTerms> },
    /// A new join secret for the launch under `token`, launched again.
    JoinRenewed { token: String, join: JoinTerms },
    /// The replacement witness was launched.
    WitnessLaunched { token: String, instance_id: String, raft_addr: String },
    /// The replacement is done.
    WitnessReplaced { token: String },
    /// The replacement failed.
    WitnessFailed { token: String, why: String },
}

impl ScalerProposal {
    /// The command, decided at `at_ms`.
    fn stamp(self, at_ms: u64) -> ScalerCommand {
        match self {
            ScalerProposal::LaunchRequested { token, why, join } => {
                ScalerCommand::LaunchRequested { token, at_ms, why, join }
            }
            ScalerProposal::InstanceSeen { token, instance_id } => {
                ScalerCommand::InstanceSeen { token, instance_id, at_ms }
            }
            ScalerProposal::TerminationRequested { instance_id } => {
                ScalerCommand::TerminationRequested { instance_id, at_ms }
            }
            ScalerProposal::LaunchFailed { token, why } => ScalerCommand::LaunchFailed { token, at_ms, why },
            ScalerProposal::ScaleIn { worker, why } => ScalerCommand::ScaleIn { worker, at_ms, why },
            ScalerProposal::Resume { worker, why } => ScalerCommand::Resume { worker, at_ms, why },
            ScalerProposal::Held { why } => ScalerCommand::Held { at_ms, why },
            ScalerProposal::ReplaceWitness { token, replaces, node_id, why, join } => {
                ScalerCommand::ReplaceWitness { token, replaces, node_id, at_ms, why, join }
            }
            ScalerProposal::JoinRenewed { token, join } => ScalerCommand::JoinRenewed { token, join, at_ms },
            ScalerProposal::WitnessLaunched { token, instance_id, raft_addr } => {
                ScalerCommand::WitnessLaunched { token, instance_id, raft_addr, at_ms }
            }
            ScalerProposal::WitnessReplaced { token } => ScalerCommand::WitnessReplaced { token, at_ms },
            ScalerProposal::WitnessFailed { token, why } => ScalerCommand::WitnessFailed { token, at_ms, why },
        }
    }
}

/// A [`Command`] before the leader gives it times: see the module documentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Proposal {
    /// Add jobs (a batch, so concurrent enqueues can share one entry).
    Enqueue { jobs: Vec<JobRequest> },
    /// Hand up to `max_jobs` waiting jobs (within `budget`, if given) to `worker` for `lease_ms`.
    Lease { worker: WorkerId, max_jobs: u32, lease_ms: u64, budget: Option<LeaseBudget> },
    /// `worker` is alive and running the jobs it lists: extend those leases by `lease_ms` and
    /// record their checkpoints and its hash rate.
    Heartbeat { worker: WorkerId, lease_ms: u64, checkpoints: Vec<Checkpoint>, hashes_per_s: u64 },
    /// Record results. Idempotent per job.
    Complete { worker: WorkerId, results: Vec<JobResult> },
    /// `worker` hands leased jobs back: they are requeued from these checkpoints.
    Release { worker: WorkerId, checkpoints: Vec<Checkpoint> },
    /// Requeue every lease whose deadline has passed.
    ExpireLeases,
    /// Add a worker to the registry.
    RegisterWorker {
        name: String,
        cores: u32,
        instance_id: Option<String>,
        witness: bool,
        launch_token: Option<String>,
    },
    /// Change a worker's state.
    UpdateWorker { worker: WorkerId, state: WorkerState },
    /// Remove a worker; its leases are requeued. `last_seen_ms`, when given, is the last time
    /// the proposer heard from it: the removal is a no-op if it was heard from since.
    RemoveWorker { worker: WorkerId, last_seen_ms: Option<u64> },
    /// Replace the table's limits.
    SetLimits(Limits),
    /// Record an autoscaler decision.
    Scaler(ScalerProposal),
    /// A launched worker exchanges its join secret, by hash (see [`Command::UseJoin`]).
    UseJoin { launch_token: String, secret_sha256: String },
    /// Every voter can reuse (see [`Command::EnableReuse`]).
    EnableReuse,
    /// Coordinator `node`'s configured limits (see [`Command::ConfigureLimits`]).
    ConfigureLimits {
        /// The coordinator whose configuration these are.
        node: u64,
        /// Its limits.
        limits: Limits,
    },
}

impl Proposal {
    /// The command to append, with `now_ms` (the leader's clock) as its time; enqueues may use
    /// reuse if `reuse_enabled` (the leader's table says every voter can).
    pub fn stamp(self, now_ms: u64, reuse_enabled: bool) -> Command {
        let until = |lease_ms: u64| now_ms.saturating_add(lease_ms);
        match self {
            Proposal::Enqueue { jobs } => {
                let jobs = jobs
                    .into_iter()
                    .map(|job| NewJob {
                        digest: job.digest,
                        iterations: job.iterations,
                        enqueued_at_ms: now_ms,
                        idempotency_key: job.idempotency_key,
                        reuse: job.reuse,
                    })
                    .collect();
                if reuse_enabled { Command::EnqueueReusing { jobs } } else { Command::Enqueue { jobs } }
            }
            Proposal::Lease { worker, max_jobs, lease_ms, budget } => {
                Command::Lease { worker, max_jobs, now_ms, deadline_ms: until(lease_ms), budget }
            }
            Proposal::Heartbeat { worker, lease_ms, checkpoints, hashes_per_s } => {
                Command::Heartbeat { worker, now_ms, deadline_ms: until(lease_ms), checkpoints, hashes_per_s }
            }
            Proposal::Complete { worker, results } => Command::Complete { worker, now_ms, results },
            Proposal::Release { worker, checkpoints } => Command::Release { worker, checkpoints },
            Proposal::ExpireLeases => Command::ExpireLeases { now_ms },
            Proposal::RegisterWorker { name, cores, instance_id, witness, launch_token } => {
                Command::RegisterWorker { name, cores, instance_id, now_ms, witness, launch_token }
            }
            Proposal::UpdateWorker { worker, state } => Command::UpdateWorker { worker, state, now_ms },
            Proposal::RemoveWorker { worker, last_seen_ms } => Command::RemoveWorker { worker, last_seen_ms },
            Proposal::SetLimits(limits) => Command::SetLimits(limits),
            Proposal::Scaler(decision) => Command::Scaler(decision.stamp(now_ms)),
            Proposal::UseJoin { launch_token, secret_sha256 } => {
                Command::UseJoin { launch_token, secret_sha256, now_ms }
            }
            Proposal::ConfigureLimits { node, limits } => Command::ConfigureLimits { node, limits },
            Proposal::EnableReuse => Command::EnableReuse,
        }
    }

    /// Whether this adds jobs (for the commit-latency histogram of enqueues).
    pub fn is_enqueue(&self) -> bool {
        matches!(self, Proposal::Enqueue { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_s_clock_gives_every_time_and_each_duration_is_kept() {
        const NOW: u64 = 1_000_000;
        let stamped = |proposal: Proposal| proposal.stamp(NOW, false);
        let request =
            JobRequest { digest: Digest([1; 64]), iterations: 5, idempotency_key: Some("k".into()), reuse: false };
        let job = NewJob {
            digest: Digest([1; 64]),
            iterations: 5,
            enqueued_at_ms: NOW,
            idempotency_key: Some("k".into()),
            reuse: false,
        };
        let reusing = JobRequest { reuse: true, ..request.clone() };
        let batch = vec![request, reusing];
        let jobs = vec![job.clone(), NewJob { reuse: true, ..job }];
        // Until every voter can reuse, enqueues are stamped as the command older versions know.
        assert_eq!(stamped(Proposal::Enqueue { jobs: batch.clone() }), Command::Enqueue { jobs: jobs.clone() });
        assert_eq!(Proposal::Enqueue { jobs: batch }.stamp(NOW, true), Command::EnqueueReusing { jobs });
        assert_eq!(
            stamped(Proposal::Lease { worker: 2, max_jobs: 3, lease_ms: 3_000, budget: None }),
            Command::Lease { worker: 2, max_jobs: 3, now_ms: NOW, deadline_ms: NOW + 3_000, budget: None }
        );
        assert_eq!(
            stamped(Proposal::Heartbeat { worker: 2, lease_ms: 3_000, checkpoints: vec![], hashes_per_s: 9 }),
            Command::Heartbeat {
                worker: 2,
                now_ms: NOW,
                deadline_ms: NOW + 3_000,
                checkpoints: vec![],
                hashes_per_s: 9
            }
        );
        assert_eq!(
            stamped(Proposal::Lease { worker: 2, max_jobs: 1, lease_ms: u64::MAX, budget: None }),
            Command::Lease { worker: 2, max_jobs: 1, now_ms: NOW, deadline_ms: u64::MAX, budget: None },
            "a deadline saturates, never wraps"
        );
        assert_eq!(stamped(Proposal::ExpireLeases), Command::ExpireLeases { now_ms: NOW });
        assert_eq!(
            stamped(Proposal::RegisterWorker {
                name: "w".into(),
                cores: 2,
                instance_id: None,
                witness: true,
                launch_token: Some("t".into())
            }),
            Command::RegisterWorker {
                name: "w".into(),
                cores: 2,
                instance_id: None,
                now_ms: NOW,
                witness: true,
                launch_token: Some("t".into())
            }
        );
        assert_eq!(
            stamped(Proposal::Scaler(ScalerProposal::LaunchRequested {
                token: "t".into(),
                why: "w".into(),
                join: None
            })),
            Command::Scaler(super::super::ScalerCommand::LaunchRequested {
                token: "t".into(),
                at_ms: NOW,
                why: "w".into(),
                join: None
            })
        );
        assert_eq!(
            stamped(Proposal::UseJoin { launch_token: "t".into(), secret_sha256: "h".into() }),
            Command::UseJoin { launch_token: "t".into(), secret_sha256: "h".into(), now_ms: NOW },
            "a join is used at the leader's time"
        );
    }
}
