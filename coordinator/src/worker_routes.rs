//! The worker routes: register, lease (a long-poll), heartbeat, complete, release. MessagePack
//! in and out; see `wire::worker` for the protocol and its status codes. Every worker route
//! requires the cluster secret (as the `/raft/` routes do): without it anyone who reaches the
//! port could register, take jobs and report made-up results. Only a coordinator started with
//! `--insecure-no-cluster-secret` has none, and serves them open.
//!
//! One route needs no cluster secret, since it is how a worker the leader launched gets it:
//! `POST /worker/join` exchanges the one-time join secret from the worker's launch data for the
//! cluster secret, once. The table holds only the join secret's SHA-256; the exchange is
//! checked on this coordinator's copy first (a guess costs no log entry), then committed as
//! `UseJoin` through the leader, whose apply checks it again against the committed state (so
//! two exchanges of one join secret, on either coordinator, across a failover, succeed once),
//! and only then is the cluster secret sent.
//!
//! `GET /worker/binary` serves the worker binary (`--worker-binary-file`) to the instances the
//! leader launches, before they join: to a request with a launch token and that launch's join
//! secret (checked, not used up), or with the cluster secret. The instance runs it only if its
//! SHA-256 is the one its launch data names.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use raft_store::job_table::{
    Checkpoint, CommandResponse, CompleteOutcome, JobResult, LeaseBudget, Proposal, Rejection, WorkerState,
};
use raft_store::network::body_limit;
use raft_store::{ProposeError, ReadError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wire::worker::{
    Assignment, CompleteRequest, CompleteResponse, HeartbeatRequest, HeartbeatResponse, LeaseRequest, LeaseResponse,
    Progress, RegisterRequest, RegisterResponse, ReleaseRequest, ReleaseResponse, WorkerErrorBody,
};
use wire::worker::{
    JoinRequest, JoinResponse, LAUNCH_TOKEN_HEADER, MAX_CORES, MAX_JOIN_BODY_BYTES, MAX_JOIN_SECRET_BYTES,
};
use wire::{SECRET_HEADER, secret_matches};

use crate::App;

/// The longest instance id or launch token a worker may give: both are kept in the replicated
/// registry (an EC2 instance id has 19 characters, a launch token about 30).
const MAX_ID_BYTES: usize = 128;

/// A failure on a worker route, with the status the protocol gives it.
#[derive(Debug, thiserror::Error)]
pub enum WorkerRouteError {
    /// Malformed message: 400.
    #[error("{0}")]
    BadRequest(String),
    /// The cluster secret is missing or wrong: 401.
    #[error("missing or wrong cluster secret")]
    Unauthorized,
    /// The worker id is unknown: 410, register again.
    #[error("unknown worker: register again")]
    UnknownWorker,
    /// No launch in flight has that launch token and that join secret (or this cluster has no
    /// secret to hand out): 403.
    #[error("join refused: no launch in flight has that launch token and join secret")]
    JoinRefused,
    /// The join secret was exchanged already: 410.
    #[error("join refused: the join secret was used already")]
    JoinUsed,
    /// The join secret has expired: 410.
    #[error("join refused: the join secret has expired")]
    JoinExpired,
    /// Nothing can be committed now: 503, try the other coordinator.
    #[error("{0}")]
    Unavailable(String),
    /// This coordinator serves no worker binary: 404.
    #[error("this coordinator serves no worker binary (--worker-binary-file)")]
    NoBinary,
}

impl From<ProposeError> for WorkerRouteError {
    fn from(e: ProposeError) -> Self {
        WorkerRouteError::Unavailable(e.to_string())
    }
}

impl From<ReadError> for WorkerRouteError {
    fn from(e: ReadError) -> Self {
        WorkerRouteError::Unavailable(e.to_string())
    }
}

impl IntoResponse for WorkerRouteError {
    fn into_response(self) -> Response {
        let status = match self {
            WorkerRouteError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WorkerRouteError::Unauthorized => StatusCode::UNAUTHORIZED,
            WorkerRouteError::UnknownWorker | WorkerRouteError::JoinUsed | WorkerRouteError::JoinExpired => {
                StatusCode::GONE
            }
            WorkerRouteError::JoinRefused => StatusCode::FORBIDDEN,
            WorkerRouteError::NoBinary => StatusCode::NOT_FOUND,
            WorkerRouteError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let body = rmp_serde::to_vec_named(&WorkerErrorBody { error: self.to_string() }).unwrap_or_default();
        (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/msgpack"))], body).into_response()
    }
}

/// The worker routes, behind the cluster-secret check, and the join and binary routes, which
/// check a launch's join secret instead.
pub fn router(app: App) -> Router<App> {
    let join = Router::new()
        .route(wire::worker::JOIN, post(join))
        .route(wire::worker::BINARY, get(binary))
        .layer(body_limit(MAX_JOIN_BODY_BYTES));
    Router::new()
        .route(wire::worker::REGISTER, post(register))
        .route(wire::worker::LEASE, post(lease))
        .route(wire::worker::HEARTBEAT, post(heartbeat))
        .route(wire::worker::COMPLETE, post(complete))
        .route(wire::worker::RELEASE, post(release))
        .layer(body_limit(wire::worker::MAX_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(app, require_secret))
        .merge(join)
}

/// Refuse a worker request without the cluster secret (unless this coordinator was started
/// with `--insecure-no-cluster-secret`).
async fn require_secret(State(app): State<App>, request: Request, next: Next) -> Response {
    if let Some(secret) = &app.config.cluster_secret {
        let given = request.headers().get(SECRET_HEADER).and_then(|v| v.to_str().ok());
        if !secret_matches(given, secret) {
            metrics::counter!("tandem_worker_requests_refused_total").increment(1);
            return WorkerRouteError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, WorkerRouteError> {
    wire::from_msgpack(body).map_err(|e| WorkerRouteError::BadRequest(format!("undecodable message: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Response {
    match rmp_serde::to_vec_named(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/msgpack"))], bytes).into_response(),
        Err(e) => WorkerRouteError::Unavailable(format!("encoding the answer failed: {e}")).into_response(),
    }
}

fn checkpoints(progress: &[Progress]) -> Vec<Checkpoint> {
    progress.iter().map(|p| Checkpoint { job: p.job, done: p.done, digest: p.digest }).collect()
}

fn unexpected(response: CommandResponse) -> WorkerRouteError {
    tracing::error!(?response, "unexpected response to a worker command");
    WorkerRouteError::Unavailable("unexpected response".into())
}

/// `POST /worker/register`
pub async fn register(State(app): State<App>, body: Bytes) -> Result<Response, WorkerRouteError> {
    let request: RegisterRequest = decode(&body)?;
    let too_long = |field: &Option<String>| field.as_ref().is_some_and(|v| v.len() > MAX_ID_BYTES);
    if request.cores == 0 || request.cores > MAX_CORES || request.name.len() > 256 {
        return Err(WorkerRouteError::BadRequest(format!(
            "cores must be 1 to {MAX_CORES} and the name at most 256 bytes"
        )));
    }
    if too_long(&request.instance_id) || too_long(&request.launch_token) {
        return Err(WorkerRouteError::BadRequest(format!(
            "the instance id and the launch token must be at most {MAX_ID_BYTES} bytes"
        )));
    }
    let command = Proposal::RegisterWorker {
        name: request.name,
        cores: request.cores,
        instance_id: request.instance_id,
        witness: request.witness,
        launch_token: request.launch_token,
    };
    match app.node.propose(command).await? {
        CommandResponse::WorkerRegistered(worker) => Ok(reply(&RegisterResponse {
            worker,
            lease_ms: app.config.lease_ms,
            heartbeat_ms: (app.config.lease_ms / 3).max(100),
        })),
        other => Err(unexpected(other)),
    }
}

fn join_refusal(rejection: Rejection) -> WorkerRouteError {
    metrics::counter!("tandem_worker_joins_refused_total").increment(1);
    match rejection {
        Rejection::JoinUsed => WorkerRouteError::JoinUsed,
        Rejection::JoinExpired => WorkerRouteError::JoinExpired,
        _ => WorkerRouteError::JoinRefused,
    }
}

/// Whether a launch in flight has `launch_token` and `join_secret`, unused and unexpired, on this
/// coordinator's copy (a guess costs no log entry; nothing is used up): the secret's SHA-256.
fn check_join(app: &App, launch_token: &str, join_secret: &str) -> Result<String, WorkerRouteError> {
    let secret_sha256 = wire::join_secret_sha256(join_secret);
    let allowed =
        app.node.state_machine().read(|table| table.join_allowed(launch_token, &secret_sha256, wire::now_ms()));
    allowed.map_err(join_refusal)?;
    Ok(secret_sha256)
}

/// `POST /worker/join`: the cluster secret, once, for a launched worker's join secret.
pub async fn join(State(app): State<App>, body: Bytes) -> Result<Response, WorkerRouteError> {
    let request: JoinRequest = decode(&body)?;
    if request.launch_token.len() > MAX_ID_BYTES || request.join_secret.len() > MAX_JOIN_SECRET_BYTES {
        return Err(WorkerRouteError::BadRequest(format!(
            "the launch token must be at most {MAX_ID_BYTES} bytes and the join secret {MAX_JOIN_SECRET_BYTES}"
        )));
    }
    // Without a cluster secret there is nothing to hand out (and its workers need none).
    let Some(cluster_secret) = app.config.cluster_secret.clone() else {
        return Err(join_refusal(Rejection::JoinRefused));
    };
    let secret_sha256 = check_join(&app, &request.launch_token, &request.join_secret)?;
    let launch_token = request.launch_token;
    match app.node.propose(Proposal::UseJoin { launch_token: launch_token.clone(), secret_sha256 }).await? {
        CommandResponse::Done => {
            tracing::info!(launch_token, "a launched worker exchanged its join secret for the cluster secret");
            Ok(reply(&JoinResponse { cluster_secret }))
        }
        CommandResponse::Rejected(rejection) => Err(join_refusal(rejection)),
        other => Err(unexpected(other)),
    }
}

/// The worker binary a coordinator serves, read once at start.
pub struct ServedBinary {
    /// Its bytes.
    pub bytes: Bytes,
    /// Their SHA-256, lower-case hex.
    pub sha256: String,
}

impl ServedBinary {
    /// Read and hash the binary at `path`.
    pub async fn load(path: &std::path::Path) -> anyhow::Result<ServedBinary> {
        use anyhow::Context as _;
        let bytes = tokio::fs::read(path)
            .await
            .with_context(|| format!("reading the worker binary to serve (--worker-binary-file {})", path.display()))?;
        let sha256 = wire::sha256_hex(&bytes);
        Ok(ServedBinary { bytes: Bytes::from(bytes), sha256 })
    }
}

/// `GET /worker/binary`: the worker binary, to an instance the leader launched (its launch
/// token and join secret, checked on this coordinator's copy and not used up: the worker joins
/// once it runs) or to a holder of the cluster secret.
pub async fn binary(State(app): State<App>, headers: HeaderMap) -> Result<Response, WorkerRouteError> {
    let Some(served) = app.worker_binary.clone() else {
        return Err(WorkerRouteError::NoBinary);
    };
    if let Some(cluster_secret) = &app.config.cluster_secret {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if !secret_matches(text(SECRET_HEADER), cluster_secret) {
            let join_secret = text(header::AUTHORIZATION.as_str()).and_then(|v| v.strip_prefix("Bearer "));
            let (Some(launch_token), Some(join_secret)) = (text(LAUNCH_TOKEN_HEADER), join_secret) else {
                return Err(join_refusal(Rejection::JoinRefused));
            };
            if launch_token.len() > MAX_ID_BYTES || join_secret.len() > MAX_JOIN_SECRET_BYTES {
                return Err(join_refusal(Rejection::JoinRefused));
            }
            check_join(&app, launch_token, join_secret)?;
        }
    }
    let sha256 = HeaderValue::from_str(&served.sha256).map_err(|e| WorkerRouteError::Unavailable(e.to_string()))?;
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")), (header::ETAG, sha256)],
        served.bytes.clone(),
    )
        .into_response())
}

/// Jobs that lease proposals in flight on this node may take: while they are pending, other
/// long-polls wait instead of proposing for the same jobs. Released on drop.
struct LeaseClaim<'a> {
    claims: &'a AtomicU64,
    jobs: u64,
}

impl<'a> LeaseClaim<'a> {
    fn take(claims: &'a AtomicU64, queued: u64, max_jobs: u32) -> Option<LeaseClaim<'a>> {
        let mut current = claims.load(Ordering::Relaxed);
        loop {
            let jobs = queued.saturating_sub(current).min(u64::from(max_jobs.max(1)));
            if jobs == 0 {
                return None;
            }
            match claims.compare_exchange_weak(current, current + jobs, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(LeaseClaim { claims, jobs }),
                Err(seen) => current = seen,
            }
        }
    }
}

impl Drop for LeaseClaim<'_> {
    fn drop(&mut self) {
        self.claims.fetch_sub(self.jobs, Ordering::AcqRel);
    }
}

/// `POST /worker/lease`: jobs for the worker's free cores, waiting up to `wait_ms` for some.
pub async fn lease(State(app): State<App>, body: Bytes) -> Result<Response, WorkerRouteError> {
    let request: LeaseRequest = decode(&body)?;
    if request.max_jobs == 0 {
        // Nothing to hand out: proposing would only wake this long-poll again, over and over.
        return Err(WorkerRouteError::BadRequest("max_jobs must be at least 1".into()));
    }
    let wait = Duration::from_millis(request.wait_ms.min(app.config.long_poll_max_ms));
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = app.node.state_machine().subscribe();
    let budget = match (request.free_cores, request.budget_iterations) {
        (Some(free_cores), Some(iterations)) => Some(LeaseBudget { free_cores, iterations }),
        _ => None,
    };
    loop {
        changes.mark_unchanged();
        // Only the jobs this request could be granted count: a busy worker whose budget no
        // waiting job fits must not propose an empty lease at every change of the table.
        let (known, queued) = app.node.state_machine().read(|table| {
            let grantable = if table.lease_would_grant(budget) { table.queued_len() } else { 0 };
            (table.workers().contains_key(&request.worker), grantable)
        });
        // Claim some of the waiting jobs before proposing, so that one enqueue does not make
        // every waiting long-poll propose a lease (a thundering herd of empty leases). A stale
        // local view only costs a wasted proposal, never a wrong answer: apply decides.
        let claim = LeaseClaim::take(&app.lease_claims, queued, request.max_jobs);
        if claim.is_some() || !known {
            let command = Proposal::Lease {
                worker: request.worker,
                max_jobs: request.max_jobs,
                lease_ms: app.config.lease_ms,
                budget,
            };
            match app.node.propose(command).await? {
                CommandResponse::Leased(jobs) if !jobs.is_empty() => {
                    let jobs = jobs
                        .into_iter()
                        .map(|j| Assignment { job: j.job, iterations: j.iterations, done: j.done, digest: j.digest })
                        .collect();
                    return Ok(reply(&LeaseResponse { jobs }));
                }
                CommandResponse::Leased(_) => {}
                CommandResponse::Rejected(Rejection::UnknownWorker) => return Err(WorkerRouteError::UnknownWorker),
                CommandResponse::Rejected(Rejection::WorkerDraining) => {
                    return Ok(reply(&LeaseResponse { jobs: vec![] }));
                }
                other => return Err(unexpected(other)),
            }
        }
        drop(claim);
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Ok(reply(&LeaseResponse { jobs: vec![] })),
            changed = changes.changed() => if changed.is_err() {
                return Err(WorkerRouteError::Unavailable("shutting down".into()));
            },
        }
    }
}

/// `POST /worker/heartbeat`
pub async fn heartbeat(State(app): State<App>, body: Bytes) -> Result<Response, WorkerRouteError> {
    let request: HeartbeatRequest = decode(&body)?;
    let command = Proposal::Heartbeat {
        worker: request.worker,
        lease_ms: app.config.lease_ms,
        checkpoints: checkpoints(&request.progress),
        hashes_per_s: request.hashes_per_s,
    };
    match app.node.propose(command).await? {
        CommandResponse::HeartbeatAck { lost, state } => {
            Ok(reply(&HeartbeatResponse { lost, draining: state == WorkerState::Draining }))
        }
        CommandResponse::Rejected(Rejection::UnknownWorker) => Err(WorkerRouteError::UnknownWorker),
        other => Err(unexpected(other)),
    }
}

/// `POST /worker/complete`
pub async fn complete(State(app): State<App>, body: Bytes) -> Result<Response, WorkerRouteError> {
    let request: CompleteRequest = decode(&body)?;
    let results = request.results.iter().map(|r| JobResult { job: r.job, result: r.result }).collect();
    match app.node.propose(Proposal::Complete { worker: request.worker, results }).await? {
        CommandResponse::Completed(outcomes) => {
            let mut answer = CompleteResponse { recorded: 0, duplicate: 0, unknown: 0 };
            for outcome in outcomes {
                match outcome {
                    CompleteOutcome::Recorded(_) => answer.recorded += 1,
                    CompleteOutcome::AlreadyCompleted(_) => answer.duplicate += 1,
                    CompleteOutcome::Unknown => answer.unknown += 1,
                }
            }
            Ok(reply(&answer))
        }
        other => Err(unexpected(other)),
    }
}

/// `POST /worker/release`
pub async fn release(State(app): State<App>, body: Bytes) -> Result<Response, WorkerRouteError> {
    let request: ReleaseRequest = decode(&body)?;
    let command = Proposal::Release { worker: request.worker, checkpoints: checkpoints(&request.progress) };
    match app.node.propose(command).await? {
        CommandResponse::Requeued(jobs) => Ok(reply(&ReleaseResponse { requeued: jobs.len() as u32 })),
        other => Err(unexpected(other)),
    }
}
