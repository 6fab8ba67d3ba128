//! The client API: enqueue, pull completed results, job status, cluster status, health.
//!
//! Writes go through Raft (forwarded to the leader when this node follows); reads wait on a
//! linearizable read barrier and are then served from this node's memory.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use raft_store::job_table::{EnqueueOutcome, JobRequest, JobStatus, Reuse};
use wire::api::{
    ClusterView, CompletedJob, EnqueueResponse, JobState, JobView, PullResponse, QueueView, ReuseView,
    ScalerDecisionView, ScalerView, VoterView, WorkerView,
};

use crate::App;
use crate::api_error::ApiError;

/// `top` when none is given.
pub const DEFAULT_TOP: u64 = 10;
/// The largest `top` accepted.
pub const MAX_TOP: u64 = 10_000;
/// The longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
/// Bodies above this are hashed on a blocking thread rather than on the async runtime.
const INLINE_HASH_LIMIT: usize = 64 << 10;

fn parse_u64(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(raw) => raw.trim().parse::<u64>().map(Some).map_err(|_| {
            ApiError::BadRequest(format!("query parameter {name} must be a non-negative integer, got {raw:?}"))
        }),
    }
}

fn query(
    params: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<HashMap<String, String>, ApiError> {
    params.map(|Query(params)| params).map_err(|e| ApiError::BadRequest(format!("malformed query string: {e}")))
}

/// The body of an enqueue: raw bytes, or the one file part of a multipart form.
async fn read_body(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let too_large = |status: StatusCode, text: String| {
        if status == StatusCode::PAYLOAD_TOO_LARGE { ApiError::TooLarge { limit } } else { ApiError::BadRequest(text) }
    };
    if !is_multipart {
        return Bytes::from_request(request, &())
            .await
            .map_err(|e| too_large(e.status(), format!("could not read the body: {}", e.body_text())));
    }
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::BadRequest(format!("malformed multipart form: {}", e.body_text())))?;
    let mut body = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| too_large(e.status(), format!("malformed multipart form: {}", e.body_text())))?
    {
        if body.is_some() {
            return Err(ApiError::BadRequest("the multipart form must hold exactly one part".into()));
        }
        body =
            Some(field.bytes().await.map_err(|e| too_large(e.status(), format!("malformed part: {}", e.body_text())))?);
    }
    body.ok_or_else(|| ApiError::BadRequest("the multipart form has no part".into()))
}

/// Whether `headers` carry `Authorization: Bearer TOKEN` with `token` (compared in constant time).
pub(crate) fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    wire::secret_matches(given, token)
}

/// The layer in front of the client API when `--client-token` is set: a request without the
/// token is refused (401, counted as rejected) before its body is read.
pub async fn require_client_token(State(app): State<App>, request: Request, next: Next) -> Response {
    if let Some(token) = &app.config.client_token
        && !bearer_matches(request.headers(), token)
    {
        metrics::counter!("tandem_jobs_rejected_total", "reason" => ApiError::Unauthorized.reason()).increment(1);
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
}

/// A JSON body for the error answers that layers give without one or in plain text (408 from
/// the request timeout, 413 from a body limit): every client and admin error is
/// `{"error": "..."}`.
pub async fn json_error_body(response: Response) -> Response {
    let status = response.status();
    let json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let message = match status {
        StatusCode::REQUEST_TIMEOUT => "the request took longer than the server allows (its body arrived too slowly?)",
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is larger than the limit of this route",
        _ => status.canonical_reason().unwrap_or("the request failed"),
    };
    let mut answer = (status, Json(wire::api::ErrorBody { error: message.to_owned() })).into_response();
    for name in [header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = response.headers().get(&name) {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer
}

/// The answer to an enqueue shed by the concurrency limit on `/enqueue` (the only error that
/// limit's load shedding gives).
pub async fn enqueue_shed(_: tower::BoxError) -> ApiError {
    metrics::counter!("tandem_jobs_rejected_total", "reason" => ApiError::Overloaded.reason()).increment(1);
    ApiError::Overloaded
}

/// `PUT /enqueue?iterations=N`
#[utoipa::path(
    put,
    path = "/enqueue",
    tag = "client",
    summary = "Enqueue a job",
    description = "Creates a job: the SHA-512 chain of the body, `iterations` times. The body is the raw bytes (`application/octet-stream`, or any content type but multipart) or the one part of a `multipart/form-data` form. With an `Idempotency-Key`, a repeated request (same key, body and iterations) answers the first job's id instead of creating another.",
    params(
        ("iterations" = u64, Query, description = "How many times to apply SHA-512: 1 to `--max-iterations`."),
        ("reuse" = Option<bool>, Query, description = "`true` (the default): the job may be served from another job with the same body (its result, a shorter chain's result or a running job's checkpoint to start from, or that job itself to wait on; see `GET /jobs/{id}`). `false`: computed from its start."),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: visible ASCII, surrounding spaces trimmed."),
    ),
    request_body(
        description = "The job's bytes: not empty, at most `--max-body-bytes`.",
        content(
            (inline(crate::openapi::JobBytes) = "application/octet-stream"),
            (inline(crate::openapi::EnqueueForm) = "multipart/form-data"),
        ),
    ),
    responses(
        (status = 200, description = "The job exists (created now, or earlier with this Idempotency-Key).", body = wire::api::EnqueueResponse),
        (status = 400, description = "`iterations` missing, not an integer or out of bounds; `reuse` neither `true` nor `false`; the body empty; a malformed multipart form or one without exactly one part; a malformed Idempotency-Key.", body = wire::api::ErrorBody),
        (status = 413, description = "The body is larger than `--max-body-bytes`.", body = wire::api::ErrorBody),
        (status = 422, description = "The Idempotency-Key was first used for another body or iterations.", body = wire::api::ErrorBody),
        (status = 503, description = "The queue holds `--max-queued` jobs, this coordinator already handles `--max-concurrent-enqueues` enqueues (refused before the body is read), or no leader with a quorum committed the job in time (the write may or may not have been committed: retry with the same Idempotency-Key). Retry after the `Retry-After` delay.", body = wire::api::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
    security((), ("client_token" = [])),
)]
pub async fn enqueue(
    State(app): State<App>,
    params: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<Json<EnqueueResponse>, ApiError> {
    let started = std::time::Instant::now();
    let result = enqueue_job(app, params, request).await;
    match &result {
        Ok(_) => {
            metrics::counter!("tandem_jobs_enqueued_total").increment(1);
            metrics::histogram!("tandem_enqueue_duration_seconds").record(started.elapsed().as_secs_f64());
        }
        Err(e) => metrics::counter!("tandem_jobs_rejected_total", "reason" => e.reason()).increment(1),
    }
    result
}

async fn enqueue_job(
    app: App,
    params: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<Json<EnqueueResponse>, ApiError> {
    let params = query(params)?;
    let iterations = parse_u64(&params, "iterations")?
        .ok_or_else(|| ApiError::BadRequest("query parameter iterations is required, e.g. ?iterations=1000".into()))?;
    if iterations == 0 {
        return Err(ApiError::BadRequest("iterations must be at least 1".into()));
    }
    if iterations > app.config.max_iterations {
        return Err(ApiError::BadRequest(format!(
            "iterations must be at most {} (got {iterations})",
            app.config.max_iterations
        )));
    }
    let reuse = match params.get("reuse").map(|raw| raw.trim()) {
        None | Some("true") => true,
        Some("false") => false,
        Some(raw) => {
            return Err(ApiError::BadRequest(format!("query parameter reuse must be true or false, got {raw:?}")));
        }
    };
    let idempotency_key = idempotency_key(request.headers())?;
    let body = read_body(request, app.config.max_body_bytes).await?;
    if body.is_empty() {
        return Err(ApiError::BadRequest("the body is empty: send the job's bytes".into()));
    }
    if body.len() > app.config.max_body_bytes {
        return Err(ApiError::TooLarge { limit: app.config.max_body_bytes });
    }
    // The body is only ever read by the first hash: reduce it to its digest here, so the log,
    // the peers and the workers carry 64 bytes instead of the body.
    let digest = if body.len() <= INLINE_HASH_LIMIT {
        wire::chain::first_digest(&body)
    } else {
        tokio::task::spawn_blocking(move || wire::chain::first_digest(&body))
            .await
            .map_err(|e| ApiError::Unavailable(format!("hashing failed: {e}")))?
    };
    let job = JobRequest { digest, iterations, idempotency_key, reuse };
    match app.enqueue.enqueue(job).await? {
        EnqueueOutcome::Created(id) | EnqueueOutcome::Duplicate(id) => Ok(Json(EnqueueResponse { id })),
        EnqueueOutcome::KeyReused(id) => Err(ApiError::KeyReused(format!(
            "this Idempotency-Key was first used for job {id}, with another body or iterations: use a new key for a new job"
        ))),
        EnqueueOutcome::QueueFull => Err(ApiError::QueueFull),
        EnqueueOutcome::Invalid => Err(ApiError::BadRequest("iterations must be at least 1".into())),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?.trim();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::BadRequest(format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters")));
    }
    Ok(Some(key.to_owned()))
}

/// `POST /pullCompleted?top=N[&after=SEQ]`
#[utoipa::path(
    post,
    path = "/pullCompleted",
    tag = "client",
    summary = "Completed results",
    description = "With `top` alone: the `top` newest completed jobs, newest first. With `after`: up to `top` jobs completed after that completion sequence number, oldest first; pass the answer's `cursor` as the next `after` to walk every result with no gap and no repeat. A linearizable read.",
    params(
        ("top" = Option<u64>, Query, description = "How many jobs at most."),
        ("after" = Option<u64>, Query, description = "A completion sequence number (a previous answer's `cursor`; 0 for the beginning)."),
    ),
    responses(
        (status = 200, description = "A page of completed jobs.", body = wire::api::PullResponse),
        (status = 400, description = "`top` or `after` not an integer, or `top` out of bounds.", body = wire::api::ErrorBody),
        (status = 503, description = "No leader confirmed the read in time. Retry after the `Retry-After` delay.", body = wire::api::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
    security((), ("client_token" = [])),
)]
pub async fn pull_completed(
    State(app): State<App>,
    params: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PullResponse>, ApiError> {
    let params = query(params)?;
    let top = parse_u64(&params, "top")?.unwrap_or(DEFAULT_TOP);
    if !(1..=MAX_TOP).contains(&top) {
        return Err(ApiError::BadRequest(format!("top must be between 1 and {MAX_TOP} (got {top})")));
    }
    let after = parse_u64(&params, "after")?;
    app.node.read_barrier().await?;
    let response = app.node.state_machine().read(|table| {
        let page = table.completed_page(after, top as usize).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let jobs = page
            .jobs
            .iter()
            .map(|job| CompletedJob {
                id: job.id,
                seq: job.seq,
                result: job.result.to_hex(),
                iterations: job.iterations,
                enqueued_at_ms: job.enqueued_at_ms,
                completed_at_ms: job.completed_at_ms,
            })
            .collect();
        Ok::<_, ApiError>(PullResponse { jobs, cursor: page.cursor, last_seq: page.last_seq, skipped: page.skipped })
    })?;
    Ok(Json(response))
}

/// `GET /jobs/{id}`
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    tag = "client",
    summary = "A job's state",
    description = "Queued, running (with its worker and progress) or completed (with its result), as a linearizable read.",
    params(("id" = u64, Path, description = "The job's id, as `PUT /enqueue` answered it.")),
    responses(
        (status = 200, description = "The job.", body = wire::api::JobView),
        (status = 400, description = "The id is not a non-negative integer.", body = wire::api::ErrorBody),
        (status = 404, description = "No such job, or it completed so long ago that its result left retention.", body = wire::api::ErrorBody),
        (status = 503, description = "No leader confirmed the read in time. Retry after the `Retry-After` delay.", body = wire::api::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
    security((), ("client_token" = [])),
)]
pub async fn job(
    State(app): State<App>,
    id: Result<Path<u64>, axum::extract::rejection::PathRejection>,
) -> Result<Json<JobView>, ApiError> {
    let Path(id) = id.map_err(|_| ApiError::BadRequest("the job id must be a positive integer".into()))?;
    app.node.read_barrier().await?;
    let view = app.node.state_machine().read(|table| match table.job_status(id) {
        None => Err(ApiError::NotFound(format!("no job {id}"))),
        Some(JobStatus::Forgotten) => {
            Err(ApiError::NotFound(format!("job {id} completed long ago; its result left retention")))
        }
        Some(JobStatus::Queued(job)) => Ok(JobView {
            id,
            state: JobState::Queued,
            iterations: job.iterations,
            iterations_done: job.done,
            result: None,
            worker: None,
            attempts: job.attempts,
            resumed_from: None,
            enqueued_at_ms: job.enqueued_at_ms,
            completed_at_ms: None,
            following: None,
            reused: table.reuse_start(id).map(reuse_view),
        }),
        Some(JobStatus::Running(lease)) => Ok(JobView {
            id,
            state: JobState::Running,
            iterations: lease.job.iterations,
            iterations_done: lease.job.done,
            result: None,
            worker: Some(lease.worker),
            attempts: lease.job.attempts,
            resumed_from: None,
            enqueued_at_ms: lease.job.enqueued_at_ms,
            completed_at_ms: None,
            following: None,
            reused: table.reuse_start(id).map(reuse_view),
        }),
        Some(JobStatus::Following(job)) => Ok(JobView {
            id,
            state: JobState::Following,
            iterations: job.iterations,
            iterations_done: 1,
            result: None,
            worker: None,
            attempts: 0,
            resumed_from: None,
            enqueued_at_ms: job.enqueued_at_ms,
            completed_at_ms: None,
            following: Some(job.leader),
            reused: None,
        }),
        Some(JobStatus::Completed(job)) => Ok(JobView {
            id,
            state: JobState::Completed,
            iterations: job.iterations,
            iterations_done: job.iterations,
            result: Some(job.result.to_hex()),
            worker: None,
            attempts: job.attempts,
            resumed_from: Some(job.resumed_from),
            enqueued_at_ms: job.enqueued_at_ms,
            completed_at_ms: Some(job.completed_at_ms),
            following: None,
            reused: job.reused.map(reuse_view),
        }),
    })?;
    Ok(Json(view))
}

fn reuse_view(reuse: Reuse) -> ReuseView {
    ReuseView { job: reuse.job, from_iteration: reuse.from }
}

/// `GET /cluster`: this node's view of the voters (each other voter's own status as it answered
/// a probe at most 100 ms ago), the queue, the workers and the autoscaler's decisions.
#[utoipa::path(
    get,
    path = "/cluster",
    tag = "status",
    summary = "Cluster status",
    description = "This node's view of the voters, the queue, the workers and the autoscaler. Open: no job data.",
    responses((status = 200, description = "The cluster as this node sees it.", body = wire::api::ClusterView)),
)]
pub async fn cluster(State(app): State<App>) -> Json<ClusterView> {
    // Probe first, then read this node's own state, so that the answer is of one moment (the
    // probes can wait for a round under way); probe again if the membership changed meanwhile.
    let ids = app.node.view().member_ids();
    let mut probed = app.voter_probes.others(&app.node, &ids).await;
    let mut view = app.node.view();
    if view.member_ids() != ids {
        probed = app.voter_probes.others(&app.node, &view.member_ids()).await;
        view = app.node.view();
    }
    let now = wire::now_ms();
    let leading = view.is_leader();
    let last_log = view.status.last_log_index.unwrap_or(0);
    let voters = view
        .members
        .iter()
        .map(|member| {
            let id = member.id;
            let peer = view.peers.get(&id).copied();
            let matched = peer.and_then(|p| p.matched_index);
            let last_contact_ms = peer.and_then(|p| p.last_contact).map(|d| d.as_millis() as u64);
            let is_self = id == view.status.id;
            let status = if is_self { Some(view.status.clone()) } else { probed.statuses.get(&id).cloned().flatten() };
            VoterView {
                id,
                role: member.info.role.to_string(),
                api_addr: member.info.api_addr.clone(),
                raft_addr: member.info.raft_addr.clone(),
                reachable: status.is_some(),
                is_leader: view.status.leader == Some(id),
                state: status.as_ref().map_or_else(|| "unreachable".to_owned(), |s| s.state.to_string()),
                term: status.as_ref().map(|s| s.term),
                last_log_index: status.as_ref().and_then(|s| s.last_log_index),
                applied_index: status.as_ref().and_then(|s| s.applied_index),
                matched_index: if is_self && leading { view.status.last_log_index } else { matched },
                lag_entries: leading.then(|| if is_self { 0 } else { last_log.saturating_sub(matched.unwrap_or(0)) }),
                last_contact_ms: if is_self && leading { Some(0) } else { last_contact_ms },
            }
        })
        .collect();
    let (queue, workers, scaler) = app.node.state_machine().read(|table| {
        let totals = table.totals();
        let queue = QueueView {
            queued: table.queued_len(),
            following: table.following_len(),
            queued_iterations: table.queued_iterations(),
            oldest_queued_age_ms: table.oldest_queued_at_ms().map_or(0, |at| now.saturating_sub(at)),
            running: table.leases().len() as u64,
            enqueued_total: totals.enqueued,
            completed_total: totals.completed,
            requeued_total: totals.requeued,
            reuse_enabled: table.reuse_enabled(),
            reused_total: totals.reused,
            iterations_saved_total: totals.iterations_saved,
            completed_retained: table.completed_len() as u64,
            last_completion_seq: table.last_completion_seq(),
            max_queued: table.limits().max_queued,
            completed_retention: table.limits().completed_retention,
        };
        let workers = table
            .workers()
            .iter()
            .map(|(id, w)| WorkerView {
                id: *id,
                name: w.name.clone(),
                cores: w.cores,
                state: format!("{:?}", w.state).to_lowercase(),
                leases: w.leases,
                last_seen_ms: w.last_seen_ms,
                registered_at_ms: w.registered_at_ms,
                instance_id: w.instance_id.clone(),
                hash_rate: w.hashes_per_s,
                witness: w.witness,
            })
            .collect();
        let status = app.scaler.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (queue, workers, scaler_view(table.scaler(), &status, table.workers_besides_the_witness() as u64))
    });
    Json(ClusterView {
        node_id: app.node.id(),
        role: app.node.role().to_string(),
        now_ms: now,
        leader: view.status.leader,
        term: view.status.term,
        last_log_index: view.status.last_log_index,
        last_applied_index: view.status.applied_index,
        voters,
        voters_probed_at_ms: probed.at_ms,
        queued: queue.queued,
        running: queue.running,
        completed_retained: queue.completed_retained,
        queue,
        workers,
        scaler,
    })
}

/// The autoscaler: what this node's policy wants, and its committed decisions, newest first.
fn scaler_view(
    scaler: &raft_store::job_table::ScalerState,
    status: &crate::scaler::ScalerStatus,
    workers: u64,
) -> ScalerView {
    let decisions = scaler
        .records
        .iter()
        .rev()
        .map(|record| ScalerDecisionView {
            at_ms: record.at_ms,
            action: record.action.clone(),
            detail: record.subject.clone().unwrap_or_default(),
            why: record.why.clone(),
        })
        .collect();
    let plan = status.plan.as_ref();
    ScalerView {
        provider: status.provider.into(),
        desired_workers: plan.map(|p| u64::from(p.desired_workers)),
        workers,
        launches_in_flight: scaler.launches.len() as u64,
        held: plan.map(|p| p.held.iter().map(ToString::to_string).collect()).unwrap_or_default(),
        boot_ms: scaler.boot_ms,
        consecutive_failures: scaler.consecutive_failures,
        launches_total: scaler.totals.launches,
        launch_failures_total: scaler.totals.launch_failures,
        terminations_total: scaler.totals.terminations,
        decisions,
    }
}

/// `GET /`: the status page, one self-contained HTML file that polls `/cluster`.
#[utoipa::path(
    get,
    path = "/",
    tag = "status",
    summary = "Status page",
    description = "A self-contained HTML page that polls `/cluster`.",
    responses((status = 200, description = "The page.", content_type = "text/html", body = String)),
)]
pub async fn status_page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("status_page.html"))
}

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "status",
    summary = "Liveness",
    responses((status = 200, description = "The process is up: `{\"status\": \"ok\"}`.", body = crate::openapi::Health)),
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: this node can serve linearizable reads (and so forward writes) right now.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "status",
    summary = "Readiness",
    responses(
        (status = 200, description = "A leader confirmed a linearizable read within 1 s: `{\"status\": \"ready\"}`.", body = crate::openapi::Health),
        (status = 503, description = "No leader confirmed a read within 1 s. Retry after the `Retry-After` delay.", body = wire::api::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub async fn readyz(State(app): State<App>) -> Response {
    match tokio::time::timeout(Duration::from_secs(1), app.node.read_barrier()).await {
        Ok(Ok(())) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(_) => ApiError::Unavailable("no leader confirmed a read within 1 s".into()).into_response(),
    }
}

/// Anything else: a JSON 404 rather than an empty one.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see README.md for the API".into())
}

/// A known route with the wrong method: a JSON 405 that says which methods exist.
pub async fn method_not_allowed() -> Response {
    let body = wire::api::ErrorBody {
        error: "method not allowed: PUT /enqueue, POST /pullCompleted, GET /jobs/{id}, GET /cluster".into(),
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

/// `GET /metrics`: the Prometheus exposition.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "status",
    summary = "Prometheus metrics",
    responses((status = 200, description = "The Prometheus text exposition.", content_type = "text/plain", body = String)),
)]
pub async fn metrics(State(app): State<App>) -> Response {
    raft_store::raft_metrics::collect_process();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render()).into_response()
}
