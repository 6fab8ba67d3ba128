//! Operator routes under `/admin/`, each requiring the admin token (`Authorization: Bearer ...`).
//!
//! `POST /admin/failover[?to=ID]` moves leadership to the other coordinator (or to `to`): the
//! leader checks that the target is a caught-up, recently heard-from coordinator and transfers;
//! a follower forwards the request to the leader. The answer says who leads now.
//!
//! `POST /admin/workers/{id}/drain` and `/resume` change a worker's state through Raft.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use raft_store::TransferError;
use raft_store::job_table::{Command, Response as CommandResponse, WorkerState};
use wire::api::{ErrorBody, FailoverResponse, WorkerStateResponse};

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
    if given != Some(token.as_str()) {
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
        return forward(&app, leader, &headers, to).await;
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

/// Send the request to the leader coordinator's API (one hop: the leader never forwards).
async fn forward(app: &App, leader: u64, headers: &HeaderMap, to: Option<u64>) -> Response {
    let membership = app.node.metrics().membership_config.clone();
    let Some(node) = membership.membership().get_node(&leader).filter(|n| !n.api_addr.is_empty()) else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the leader is the witness, which hands over by itself; retry");
    };
    let mut url = format!("http://{}/admin/failover", node.api_addr);
    if let Some(to) = to {
        url.push_str(&format!("?to={to}"));
    }
    let mut request = app.http.post(url).timeout(Duration::from_secs(10));
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        request = request.header(header::AUTHORIZATION, auth.clone());
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
