//! The one error type of the client API's HTTP edge: every failure a client can cause or meet,
//! with its status code. Internal causes are logged once here and not leaked.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use raft_store::{ProposeError, ReadError};
use wire::api::ErrorBody;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

/// A client-visible failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A parameter or the body is wrong: 400.
    #[error("{0}")]
    BadRequest(String),
    /// The client token is required and missing or wrong: 401.
    #[error("missing or wrong client token (Authorization: Bearer ...)")]
    Unauthorized,
    /// The body is over the limit: 413.
    #[error("body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// No such job: 404.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with an earlier one (an idempotency key reused): 422.
    #[error("{0}")]
    KeyReused(String),
    /// This coordinator already handles `--max-concurrent-enqueues` enqueues: 503 with
    /// Retry-After, before the body is read.
    #[error("this coordinator is handling as many enqueues as it takes at once; retry shortly")]
    Overloaded,
    /// The queue is at its limit: 503 with Retry-After.
    #[error("the queue is full; retry later")]
    QueueFull,
    /// No quorum or no leader right now: 503 with Retry-After.
    #[error("the cluster cannot serve this right now ({0}); retry later")]
    Unavailable(String),
}

impl ApiError {
    /// Every [`ApiError::reason`], so that each series exists (at zero) before its first refusal.
    pub const REASONS: [&'static str; 8] = [
        "bad_request",
        "unauthorized",
        "too_large",
        "not_found",
        "key_reused",
        "overloaded",
        "queue_full",
        "unavailable",
    ];

    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::NotFound(_) => "not_found",
            ApiError::KeyReused(_) => "key_reused",
            ApiError::Overloaded => "overloaded",
            ApiError::QueueFull => "queue_full",
            ApiError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        tracing::warn!(error = %e, "write not committed");
        match e {
            ProposeError::Unknown(_) => ApiError::Unavailable(
                "the write may or may not have been committed; retry with the same Idempotency-Key".into(),
            ),
            _ => ApiError::Unavailable("no leader with a quorum".into()),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        tracing::warn!(error = %e, "linearizable read not possible");
        ApiError::Unavailable("no leader confirmed the read".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::KeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Overloaded | ApiError::QueueFull | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut response = (status, Json(ErrorBody { error: self.to_string() })).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
