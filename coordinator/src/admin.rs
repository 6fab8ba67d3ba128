//! Operator routes under `/admin/`, each requiring the admin token (`Authorization: Bearer ...`).
//!
//! `POST /admin/failover[?to=ID]` moves leadership to the other coordinator (or to `to`): the
//! leader checks that the target is a caught-up, recently heard-from coordinator and transfers;
//! a follower asks the leader to (over the voters' transport, once). The answer says who leads
//! now.
//!
//! `POST /admin/members/replace` replaces a voter lost with its disk by a new node under a new
//! id (see [`raft_store::Node::replace_voter`]); a follower asks the leader too.
//!
//! `POST /admin/workers/{id}/drain` and `/resume` change a worker's state through Raft.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use raft_store::job_table::{CommandResponse, Proposal, WorkerState};
use raft_store::{MembershipError, NodeInfo, ProposeError, Role, TransferError};
use wire::api::{ErrorBody, FailoverResponse, ReplaceMemberRequest, ReplaceMemberResponse, WorkerStateResponse};

use crate::App;

/// The largest body an admin route reads: a voter replacement's small JSON object.
pub const BODY_LIMIT: usize = 16 << 10;
/// How long a follower waits for the leader's answer to a forwarded failover.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the leader waits for a new node to hold the whole log (a snapshot of a large job
/// table included) before it answers that the node did not catch up.
const CATCH_UP: Duration = Duration::from_secs(60);

/// A failure on an admin route, with its status. Every message is written for the operator;
/// none carries an internal error's text beyond what the cluster reports of itself.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No admin token is configured, or the request does not carry it: 401.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A parameter or the body is wrong: 400.
    #[error("{0}")]
    BadRequest(String),
    /// No such worker: 404.
    #[error("{0}")]
    NotFound(String),
    /// The cluster refuses the change as asked: 409.
    #[error("refused: {0}")]
    Refused(String),
    /// The cluster cannot do it right now (no leader, leadership moving, no quorum): 503.
    #[error("{0}")]
    Unavailable(String),
}

impl From<TransferError> for AdminError {
    fn from(e: TransferError) -> Self {
        match e {
            TransferError::NoEligibleTarget(why) => AdminError::Refused(why),
            TransferError::NotLeader => AdminError::Unavailable("leadership moved meanwhile; retry".into()),
            TransferError::NoLeader => AdminError::Unavailable("no leader right now; retry shortly".into()),
            other => AdminError::Unavailable(other.to_string()),
        }
    }
}

impl From<MembershipError> for AdminError {
    fn from(e: MembershipError) -> Self {
        match e {
            MembershipError::Refused(why) => AdminError::Refused(why),
            MembershipError::NotLeader(_) => AdminError::Unavailable("leadership moved meanwhile; retry".into()),
            other => AdminError::Unavailable(other.to_string()),
        }
    }
}

impl From<ProposeError> for AdminError {
    fn from(e: ProposeError) -> Self {
        tracing::warn!(error = %e, "admin write not committed");
        match e {
            ProposeError::Unknown(_) => {
                AdminError::Unavailable("the change may or may not have been committed; repeating it is safe".into())
            }
            _ => AdminError::Unavailable("no leader with a quorum; retry shortly".into()),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Refused(_) => StatusCode::CONFLICT,
            AdminError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut response = (status, Json(ErrorBody { error: self.to_string() })).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The layer in front of every admin route: a request without the admin token is refused
/// before its body is read.
pub async fn require_token(State(app): State<App>, request: Request, next: Next) -> Response {
    match authorize(&app, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// Refuse requests without the configured admin token.
fn authorize(app: &App, headers: &HeaderMap) -> Result<(), AdminError> {
    let Some(token) = &app.config.admin_token else {
        return Err(AdminError::Unauthorized("admin routes are disabled: no --admin-token is configured"));
    };
    if !crate::api::bearer_matches(headers, token) {
        return Err(AdminError::Unauthorized("missing or wrong admin token (Authorization: Bearer ...)"));
    }
    Ok(())
}

/// `POST /admin/failover[?to=ID]`
#[utoipa::path(
    post,
    path = "/admin/failover",
    tag = "admin",
    summary = "Move leadership",
    description = "Moves leadership to the other coordinator, or to `to`, once the target is a caught-up, recently heard-from coordinator. A follower asks the leader.",
    params(("to" = Option<u64>, Query, description = "The node id to hand leadership to.")),
    responses(
        (status = 200, description = "Who led before and who leads now.", body = wire::api::FailoverResponse),
        (status = 400, description = "`to` is not a node id, or the query string is malformed.", body = wire::api::ErrorBody),
        (status = 409, description = "No eligible target (not a coordinator, not caught up, not heard from recently).", body = wire::api::ErrorBody),
        (status = 503, description = "No leader right now, or leadership moved meanwhile. Retry after the `Retry-After` delay.", body = wire::api::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
    security(("admin_token" = [])),
)]
pub async fn failover(
    State(app): State<App>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<FailoverResponse>, AdminError> {
    let to = match params.map(|Query(p)| p.get("to").cloned()) {
        Ok(None) => None,
        Ok(Some(raw)) => {
            Some(raw.parse::<u64>().map_err(|_| AdminError::BadRequest(format!("to must be a node id, got {raw:?}")))?)
        }
        Err(e) => return Err(AdminError::BadRequest(format!("malformed query string: {e}"))),
    };
    let started = Instant::now();
    let done = app.node.failover(to, FAILOVER_TIMEOUT).await?;
    Ok(Json(FailoverResponse {
        previous_leader: done.previous_leader,
        leader: done.leader,
        took_ms: started.elapsed().as_millis() as u64,
    }))
}

/// `POST /admin/members/replace` with a [`ReplaceMemberRequest`].
#[utoipa::path(
    post,
    path = "/admin/members/replace",
    tag = "admin",
    summary = "Replace a voter",
    description = "Replaces voter `remove` (lost with its disk, or about to be shut down) by the new node `add`, already running with an empty data directory at `addr`; answers once the new node caught up and the membership changed. A follower asks the leader.",
    request_body(content = wire::api::ReplaceMemberRequest, content_type = "application/json", description = "At most 16 KiB."),
    responses(
        (status = 200, description = "The voters now.", body = wire::api::ReplaceMemberResponse),
        (status = 400, description = "The body is not the JSON object described (or larger than 16 KiB), `role` is neither `coordinator` nor `witness`, or `addr` is not `HOST:PORT`.", body = wire::api::ErrorBody),
        (status = 409, description = "The cluster refuses the change as asked (an unknown or reused id, a role mismatch, the new node did not catch up).", body = wire::api::ErrorBody),
        (status = 503, description = "No leader with a quorum right now, or leadership moved meanwhile. Retry after the `Retry-After` delay.", body = wire::api::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
    security(("admin_token" = [])),
)]
pub async fn replace_member(
    State(app): State<App>,
    body: Result<Json<ReplaceMemberRequest>, JsonRejection>,
) -> Result<Json<ReplaceMemberResponse>, AdminError> {
    let Json(request) = body.map_err(|e| {
        AdminError::BadRequest(format!(
            "expected a JSON body {{\"remove\": ID, \"add\": NEW_ID, \"role\": \"coordinator\" or \"witness\", \
             \"addr\": \"HOST:PORT\"}}: {}",
            e.body_text()
        ))
    })?;
    let role: Role = request.role.parse().map_err(AdminError::BadRequest)?;
    let valid_addr =
        request.addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid_addr {
        return Err(AdminError::BadRequest(format!("addr must be HOST:PORT, got {:?}", request.addr)));
    }
    let info = NodeInfo::at(role, request.addr.clone());
    let started = Instant::now();
    let replaced = app.node.replace_member(request.remove, request.add, info, CATCH_UP).await?;
    Ok(Json(ReplaceMemberResponse {
        voters: replaced.voters.into_iter().collect(),
        took_ms: started.elapsed().as_millis() as u64,
    }))
}

/// `POST /admin/workers/{id}/drain`: the worker hands its jobs back (with their checkpoints) at
/// its next heartbeat and takes no new ones until resumed. It stays registered and running.
#[utoipa::path(
    post,
    path = "/admin/workers/{id}/drain",
    tag = "admin",
    summary = "Drain a worker",
    description = "The worker hands its jobs back (with their checkpoints) at its next heartbeat and takes no new ones until resumed.",
    params(("id" = u64, Path, description = "The worker's registry id (`GET /cluster`).")),
    responses(
        (status = 200, description = "The worker's state now.", body = wire::api::WorkerStateResponse),
        (status = 400, description = "The id is not a non-negative integer.", body = wire::api::ErrorBody),
        (status = 404, description = "No such worker is registered.", body = wire::api::ErrorBody),
        (status = 503, description = "No leader with a quorum committed the change in time (repeating it is safe). Retry after the `Retry-After` delay.", body = wire::api::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
    security(("admin_token" = [])),
)]
pub async fn drain_worker(
    State(app): State<App>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<WorkerStateResponse>, AdminError> {
    set_worker_state(app, id, WorkerState::Draining).await
}

/// `POST /admin/workers/{id}/resume`: a drained worker takes work again.
#[utoipa::path(
    post,
    path = "/admin/workers/{id}/resume",
    tag = "admin",
    summary = "Resume a worker",
    description = "A drained worker takes work again.",
    params(("id" = u64, Path, description = "The worker's registry id (`GET /cluster`).")),
    responses(
        (status = 200, description = "The worker's state now.", body = wire::api::WorkerStateResponse),
        (status = 400, description = "The id is not a non-negative integer.", body = wire::api::ErrorBody),
        (status = 404, description = "No such worker is registered.", body = wire::api::ErrorBody),
        (status = 503, description = "No leader with a quorum committed the change in time (repeating it is safe). Retry after the `Retry-After` delay.", body = wire::api::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
    security(("admin_token" = [])),
)]
pub async fn resume_worker(
    State(app): State<App>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<WorkerStateResponse>, AdminError> {
    set_worker_state(app, id, WorkerState::Active).await
}

async fn set_worker_state(
    app: App,
    id: Result<Path<u64>, PathRejection>,
    state: WorkerState,
) -> Result<Json<WorkerStateResponse>, AdminError> {
    let Path(worker) = id.map_err(|_| AdminError::BadRequest("the worker id must be a non-negative integer".into()))?;
    let command = Proposal::UpdateWorker { worker, state };
    match app.node.propose(command).await? {
        CommandResponse::Done => {
            let state = if state == WorkerState::Draining { "draining" } else { "active" };
            Ok(Json(WorkerStateResponse { worker, state: state.into() }))
        }
        CommandResponse::Rejected(_) => Err(AdminError::NotFound(format!("no worker {worker} is registered"))),
        other => {
            tracing::error!(?other, "unexpected answer to a worker state change");
            Err(AdminError::Unavailable("the cluster gave an unexpected answer; retry".into()))
        }
    }
}
