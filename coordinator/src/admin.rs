//! Operator routes under `/admin/`, each requiring the admin token (`Authorization: Bearer ...`).
//!
//! `POST /admin/failover[?to=ID]` moves leadership to the other coordinator (or to `to`): the
//! leader checks that the target is a caught-up, recently heard-from coordinator and transfers;
//! a follower forwards the request to the leader. The answer says who leads now.
//!
//! `POST /admin/members/replace` replaces a voter lost with its disk by a new node under a new
//! id (see [`raft_store::Node::replace_voter`]); a follower forwards it to the leader too.
//!
//! `POST /admin/workers/{id}/drain` and `/resume` change a worker's state through Raft.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use raft_store::job_table::{Command, Response as CommandResponse, WorkerState};
use raft_store::{MembershipError, NodeInfo, Role, TransferError};
use wire::api::{ErrorBody, FailoverResponse, ReplaceMemberRequest, ReplaceMemberResponse, WorkerStateResponse};

use crate::App;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: message.into() })).into_response()
}

/// Refuse requests without the configured admin token; the error says why (for a 401).
fn authorize(app: &App, headers: &HeaderMap) -> Result<(), &'static str> {
    let Some(token) = &app.config.admin_token else {
        return Err("admin routes are disabled: no --admin-token is configured");
    };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if !raft_store::network::secret_matches(given, token) {
        return Err("missing or wrong admin token (Authorization: Bearer ...)");
    }
    Ok(())
}

/// `POST /admin/failover[?to=ID]`
pub async fn failover(
    State(app): State<App>,
    headers: HeaderMap,
    params: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(why) = authorize(&app, &headers) {
        return error(StatusCode::UNAUTHORIZED, why);
    }
    let to = match params.map(|Query(p)| p.get("to").cloned()) {
        Ok(None) => None,
        Ok(Some(raw)) => match raw.parse::<u64>() {
            Ok(id) => Some(id),
            Err(_) => return error(StatusCode::BAD_REQUEST, format!("to must be a node id, got {raw:?}")),
        },
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed query string: {e}")),
    };
    let leadership = *app.node.leadership().borrow();
    let Some(leader) = leadership.leader else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no leader right now; retry shortly");
    };
    if !leadership.is_self {
        let path = to.map_or("/admin/failover".to_owned(), |to| format!("/admin/failover?to={to}"));
        return forward(&app, leader, &headers, &path, None, Duration::from_secs(10)).await;
    }
    let started = Instant::now();
    match app.node.transfer_leadership(to).await {
        Ok(new_leader) => Json(FailoverResponse {
            previous_leader: leader,
            leader: new_leader,
            took_ms: started.elapsed().as_millis() as u64,
        })
        .into_response(),
        Err(TransferError::NoEligibleTarget(why)) => error(StatusCode::CONFLICT, format!("refused: {why}")),
        Err(TransferError::NotLeader) => error(StatusCode::SERVICE_UNAVAILABLE, "leadership moved meanwhile; retry"),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Marks a request one coordinator forwarded to another: it is not forwarded again, so two
/// nodes with stale views of the leader cannot bounce it between them.
const FORWARDED_HEADER: &str = "x-tandem-forwarded";

/// Send the request to the leader coordinator's API, once.
async fn forward(
    app: &App,
    leader: u64,
    headers: &HeaderMap,
    path: &str,
    json: Option<Vec<u8>>,
    timeout: Duration,
) -> Response {
    if headers.contains_key(FORWARDED_HEADER) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "leadership is moving (this node does not lead either); retry");
    }
    let membership = app.node.metrics().membership_config.clone();
    let Some(node) = membership.membership().get_node(&leader).filter(|n| !n.api_addr.is_empty()) else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the leader is the witness, which hands over by itself; retry");
    };
    let mut request =
        app.http.post(format!("http://{}{path}", node.api_addr)).header(FORWARDED_HEADER, "1").timeout(timeout);
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        request = request.header(header::AUTHORIZATION, auth.clone());
    }
    if let Some(json) = json {
        request = request.header(header::CONTENT_TYPE, "application/json").body(json);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            let body = response.bytes().await.unwrap_or_default();
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("could not reach the leader: {e}")),
    }
}

/// How long the leader waits for a new node to hold the whole log (a snapshot of a large job
/// table included) before it answers that the node did not catch up.
const CATCH_UP: Duration = Duration::from_secs(60);

/// `POST /admin/members/replace` with a [`ReplaceMemberRequest`].
pub async fn replace_member(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<ReplaceMemberRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(why) = authorize(&app, &headers) {
        return error(StatusCode::UNAUTHORIZED, why);
    }
    let request = match body {
        Ok(Json(request)) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected a JSON body {{\"remove\": ID, \"add\": NEW_ID, \"role\": \"coordinator\" or \"witness\", \
                     \"addr\": \"HOST:PORT\"}}: {}",
                    e.body_text()
                ),
            );
        }
    };
    let role: Role = match request.role.parse() {
        Ok(role) => role,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let valid_addr =
        request.addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid_addr {
        return error(StatusCode::BAD_REQUEST, format!("addr must be HOST:PORT, got {:?}", request.addr));
    }
    let leadership = *app.node.leadership().borrow();
    let Some(leader) = leadership.leader else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no leader right now; retry shortly");
    };
    if !leadership.is_self {
        let json = serde_json::to_vec(&request).expect("a plain struct always serializes");
        return forward(
            &app,
            leader,
            &headers,
            "/admin/members/replace",
            Some(json),
            CATCH_UP + Duration::from_secs(30),
        )
        .await;
    }
    let info = NodeInfo::at(role, request.addr.clone());
    let started = Instant::now();
    match app.node.replace_voter(request.remove, request.add, info, CATCH_UP).await {
        Ok(replaced) => Json(ReplaceMemberResponse {
            voters: replaced.voters.into_iter().collect(),
            took_ms: started.elapsed().as_millis() as u64,
        })
        .into_response(),
        Err(MembershipError::Refused(why)) => error(StatusCode::CONFLICT, format!("refused: {why}")),
        Err(MembershipError::NotLeader(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "leadership moved meanwhile; retry")
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `POST /admin/workers/{id}/drain`: the worker hands its jobs back (with their checkpoints) at
/// its next heartbeat and takes no new ones until resumed. It stays registered and running.
pub async fn drain_worker(
    State(app): State<App>,
    headers: HeaderMap,
    id: Result<axum::extract::Path<u64>, axum::extract::rejection::PathRejection>,
) -> Response {
    set_worker_state(app, headers, id, WorkerState::Draining).await
}

/// `POST /admin/workers/{id}/resume`: a drained worker takes work again.
pub async fn resume_worker(
    State(app): State<App>,
    headers: HeaderMap,
    id: Result<axum::extract::Path<u64>, axum::extract::rejection::PathRejection>,
) -> Response {
    set_worker_state(app, headers, id, WorkerState::Active).await
}

async fn set_worker_state(
    app: App,
    headers: HeaderMap,
    id: Result<axum::extract::Path<u64>, axum::extract::rejection::PathRejection>,
    state: WorkerState,
) -> Response {
    if let Err(why) = authorize(&app, &headers) {
        return error(StatusCode::UNAUTHORIZED, why);
    }
    let Ok(axum::extract::Path(worker)) = id else {
        return error(StatusCode::BAD_REQUEST, "the worker id must be a non-negative integer");
    };
    let command = Command::UpdateWorker { worker, state, now_ms: crate::now_ms() };
    match app.node.propose(command).await {
        Ok(CommandResponse::Done) => {
            let state = if state == WorkerState::Draining { "draining" } else { "active" };
            Json(WorkerStateResponse { worker, state: state.into() }).into_response()
        }
        Ok(CommandResponse::Rejected(_)) => error(StatusCode::NOT_FOUND, format!("no worker {worker} is registered")),
        Ok(other) => error(StatusCode::SERVICE_UNAVAILABLE, format!("unexpected answer {other:?}")),
        Err(e) => crate::api_error::ApiError::from(e).into_response(),
    }
}
