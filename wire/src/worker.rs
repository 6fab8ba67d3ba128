//! Worker ↔ coordinator messages, MessagePack over HTTP POST under `/worker/`.
//!
//! A worker registers, then long-polls `lease` for as many jobs as it has free cores, reports
//! progress with `heartbeat` (which also keeps its leases alive), sends results with `complete`
//! and, when draining, hands unfinished jobs back with `release`. A coordinator answers 410 Gone
//! when it no longer knows the worker (register again), 503 when it cannot commit (try the other
//! coordinator), 400 for a malformed message, and 401 when the coordinators have a cluster
//! secret and the request does not carry it in the `x-tandem-secret` header.
//!
//! One route needs no cluster secret: [`JOIN`], where a worker the leader launched exchanges the
//! one-time join secret from its user-data for the cluster secret, once. It answers 403 when no
//! launch in flight has that token and that secret, and 410 when the join secret was used
//! already or has expired.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Routes, relative to a coordinator's base URL.
pub const REGISTER: &str = "/worker/register";
/// Long-poll for jobs.
pub const LEASE: &str = "/worker/lease";
/// Progress and lease renewal.
pub const HEARTBEAT: &str = "/worker/heartbeat";
/// Results.
pub const COMPLETE: &str = "/worker/complete";
/// Hand jobs back.
pub const RELEASE: &str = "/worker/release";
/// Exchange a one-time join secret for the cluster secret (no cluster secret needed).
pub const JOIN: &str = "/worker/join";
/// `GET`: the worker binary a coordinator serves (`--worker-binary-file`), for an instance the
/// leader launched: with its launch token in [`LAUNCH_TOKEN_HEADER`] and its join secret as the
/// bearer token (or the cluster secret).
pub const BINARY: &str = "/worker/binary";
/// The header naming the launch a request of [`BINARY`] comes from.
pub const LAUNCH_TOKEN_HEADER: &str = "x-tandem-launch-token";
/// The largest body a coordinator reads on [`JOIN`]: a launch token and a join secret.
pub const MAX_JOIN_BODY_BYTES: usize = 1024;
/// The longest join secret a coordinator takes.
pub const MAX_JOIN_SECRET_BYTES: usize = 256;
/// The most cores a worker may declare: it is leased a job per free core.
pub const MAX_CORES: u32 = 1024;
/// The most jobs a worker holds per core (a backlog of short jobs; long ones are held one per
/// core).
pub const MAX_JOBS_PER_CORE: u32 = 256;
/// The most one job's entry in a worker's message takes, encoded: a [`Progress`] (job id, steps
/// done, a 64-byte digest, their field names) or a [`Finished`] (checked by a test at their
/// largest values).
pub const MAX_JOB_ENTRY_BYTES: usize = 128;
/// The largest body a coordinator reads on a worker route, from the maxima above: a heartbeat or
/// a release lists every job the worker holds, a completion every job it finished, and a worker
/// of [`MAX_CORES`] cores holds at most [`MAX_JOBS_PER_CORE`] jobs on each (about 32 MiB; a
/// 256-core worker's full heartbeat is about 7 MiB). Only checked after the cluster secret, so
/// only a worker can send one.
pub const MAX_BODY_BYTES: usize = MAX_CORES as usize * MAX_JOBS_PER_CORE as usize * MAX_JOB_ENTRY_BYTES + (64 << 10);

/// Join the registry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RegisterRequest {
    /// A human name (host and pid).
    pub name: String,
    /// Cores it hashes on.
    pub cores: u32,
    /// The EC2 instance it runs on, if any.
    pub instance_id: Option<String>,
    /// It is the witness's worker (the autoscaler never scales it in).
    #[serde(default)]
    pub witness: bool,
    /// The autoscaler's launch that started it, if one did (its idempotency token).
    #[serde(default)]
    pub launch_token: Option<String>,
}

/// A launched worker's one-time join secret, to exchange for the cluster secret.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// The launch that started it (its idempotency token, as in its user-data).
    pub launch_token: String,
    /// The join secret from its user-data: the coordinators hold only its SHA-256.
    pub join_secret: String,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest").field("launch_token", &self.launch_token).finish_non_exhaustive()
    }
}

/// The cluster secret, for a worker whose join secret was accepted (once).
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct JoinResponse {
    /// The secret every other worker route, and a witness's Raft routes, require.
    pub cluster_secret: String,
}

impl std::fmt::Debug for JoinResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinResponse").finish_non_exhaustive()
    }
}

/// The worker's identity and timing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RegisterResponse {
    /// Use this id in every later message.
    pub worker: u64,
    /// How long a lease lives without a heartbeat.
    pub lease_ms: u64,
    /// How often to heartbeat.
    pub heartbeat_ms: u64,
}

/// Ask for up to `max_jobs`, waiting up to `wait_ms` if none is queued.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaseRequest {
    /// The worker's id.
    pub worker: u64,
    /// The most jobs to hand over.
    pub max_jobs: u32,
    /// Long-poll budget.
    pub wait_ms: u64,
    /// Cores not computing a job now. With `budget_iterations`, the grant is by work: one job
    /// per free core, then waiting jobs only while they fit in the budget.
    #[serde(default)]
    pub free_cores: Option<u32>,
    /// Iterations this worker can finish within its backlog target beyond what it holds (its
    /// measured rate times its cores times the target, less the work left in its jobs).
    #[serde(default)]
    pub budget_iterations: Option<u64>,
}

/// A job to compute: continue from `digest` (after `done` iterations) to `iterations`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The job's id.
    pub job: u64,
    /// Total iterations.
    pub iterations: u64,
    /// Iterations already done.
    pub done: u64,
    /// The chain value after `done` iterations.
    pub digest: Digest,
}

/// Jobs now leased to the worker (possibly none, when the wait ran out).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaseResponse {
    /// The assignments.
    pub jobs: Vec<Assignment>,
}

/// Progress on one job.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The job's id.
    pub job: u64,
    /// Iterations done.
    pub done: u64,
    /// The chain value after `done` iterations.
    pub digest: Digest,
}

/// Keep leases alive and record checkpoints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatRequest {
    /// The worker's id.
    pub worker: u64,
    /// Checkpoints of running jobs.
    pub progress: Vec<Progress>,
    /// Chain steps computed per second since the previous heartbeat (0 if unknown).
    #[serde(default)]
    pub hashes_per_s: u64,
}

/// What the worker should know.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatResponse {
    /// Jobs it no longer holds: stop computing them.
    pub lost: Vec<u64>,
    /// Stop taking work and hand back what it holds.
    pub draining: bool,
}

/// A finished job.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The job's id.
    pub job: u64,
    /// The chain's result.
    pub result: Digest,
}

/// Report results.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CompleteRequest {
    /// The worker's id.
    pub worker: u64,
    /// The results.
    pub results: Vec<Finished>,
}

/// How the results were taken.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CompleteResponse {
    /// Recorded now.
    pub recorded: u32,
    /// Already recorded earlier (harmless).
    pub duplicate: u32,
    /// Not recordable (unknown job, or one never leased).
    pub unknown: u32,
}

/// Hand jobs back with their checkpoints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReleaseRequest {
    /// The worker's id.
    pub worker: u64,
    /// Where each job stands.
    pub progress: Vec<Progress>,
}

/// How many jobs went back to the queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReleaseResponse {
    /// Requeued jobs.
    pub requeued: u32,
}

/// The body of a non-2xx answer on `/worker/` routes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorkerErrorBody {
    /// What went wrong.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Digest;

    fn largest_progress() -> Progress {
        Progress { job: u64::MAX, done: u64::MAX, digest: Digest([0xff; 64]) }
    }

    #[test]
    fn one_jobs_entry_fits_its_bound_at_its_largest_values() {
        let progress = rmp_serde::to_vec_named(&largest_progress()).expect("encode");
        let finished =
            rmp_serde::to_vec_named(&Finished { job: u64::MAX, result: Digest([0xff; 64]) }).expect("encode");
        assert!(progress.len() <= MAX_JOB_ENTRY_BYTES, "{} bytes", progress.len());
        assert!(finished.len() <= MAX_JOB_ENTRY_BYTES, "{} bytes", finished.len());
    }

    #[test]
    fn the_largest_worker_messages_fit_the_body_limit() {
        let held = (MAX_CORES * MAX_JOBS_PER_CORE) as usize;
        let heartbeat =
            HeartbeatRequest { worker: u64::MAX, progress: vec![largest_progress(); held], hashes_per_s: u64::MAX };
        let heartbeat = rmp_serde::to_vec_named(&heartbeat).expect("encode");
        assert!(heartbeat.len() <= MAX_BODY_BYTES, "{} > {MAX_BODY_BYTES}", heartbeat.len());
        let release = ReleaseRequest { worker: u64::MAX, progress: vec![largest_progress(); held] };
        assert!(rmp_serde::to_vec_named(&release).expect("encode").len() <= MAX_BODY_BYTES);
        let results = vec![Finished { job: u64::MAX, result: Digest([0xff; 64]) }; held];
        let complete = CompleteRequest { worker: u64::MAX, results };
        assert!(rmp_serde::to_vec_named(&complete).expect("encode").len() <= MAX_BODY_BYTES);
    }
}
