//! A typed client of the worker protocol: MessagePack POSTs to whichever coordinator answers.
//! The worker uses it, and so do the bench's simulated workers.
//!
//! One shared reqwest client; the coordinator in use changes when one is unreachable or cannot
//! commit (503), so a worker keeps working through the loss of either coordinator.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::header::HeaderValue;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::SECRET_HEADER;
use crate::worker::{
    COMPLETE, CompleteRequest, CompleteResponse, HEARTBEAT, HeartbeatRequest, HeartbeatResponse, JOIN, JoinRequest,
    JoinResponse, LEASE, LeaseRequest, LeaseResponse, REGISTER, RELEASE, RegisterRequest, RegisterResponse,
    ReleaseRequest, ReleaseResponse, WorkerErrorBody,
};

/// Why a call failed after trying every coordinator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerCallError {
    /// The coordinator does not know this worker id: register again.
    #[error("unknown worker")]
    UnknownWorker,
    /// The coordinator refused the message as malformed (a bug; retrying will not help).
    #[error("rejected: {0}")]
    Rejected(String),
    /// Every coordinator refused this worker's cluster secret (missing or wrong).
    #[error("the coordinators refused this worker's cluster secret (TANDEM_CLUSTER_SECRET)")]
    Unauthorized,
    /// No coordinator could take it right now.
    #[error("no coordinator available: {0}")]
    Unavailable(String),
}

/// Why a join secret was not exchanged for the cluster secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// Refused for good: every coordinator that answered refused the join secret as unknown or
    /// wrong (403), or one said it was used or has expired (410). Retrying will not help.
    #[error("the join secret was refused: {0}")]
    Refused(String),
    /// No coordinator could answer right now: try again.
    #[error("no coordinator available: {0}")]
    Unavailable(String),
}

/// `POST /worker/join` to each of `urls` in turn, until one exchanges `request`'s join secret for
/// the cluster secret. It needs no cluster secret (that is what it asks for).
pub async fn join(
    http: &reqwest::Client,
    urls: &[String],
    request: &JoinRequest,
    timeout: Duration,
) -> Result<JoinResponse, JoinError> {
    let body = rmp_serde::to_vec_named(request).map_err(|e| JoinError::Refused(e.to_string()))?;
    let mut last = String::from("no coordinator given");
    let mut refused = 0;
    for base in urls {
        let url = format!("{}{JOIN}", base.trim_end_matches('/'));
        let sent = http.post(&url).header("content-type", "application/msgpack").timeout(timeout).body(body.clone());
        let response = match sent.send().await {
            Ok(response) => response,
            Err(e) => {
                last = format!("{url}: {e}");
                continue;
            }
        };
        let status = response.status();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => {
                last = format!("{url}: {e}");
                continue;
            }
        };
        if status.is_success() {
            return crate::from_msgpack(&bytes).map_err(|e| JoinError::Unavailable(format!("undecodable answer: {e}")));
        }
        let error = crate::from_msgpack::<WorkerErrorBody>(&bytes).map(|b| b.error).unwrap_or_default();
        last = format!("{url}: HTTP {status}: {error}");
        match status.as_u16() {
            // Used or expired: the table says so, and no coordinator will say otherwise.
            410 | 400 => return Err(JoinError::Refused(last)),
            // Unknown or wrong here; a coordinator that lags behind the launch's commit might
            // say so too, so the others are asked.
            401 | 403 => refused += 1,
            _ => {}
        }
    }
    if refused > 0 && refused == urls.len() {
        return Err(JoinError::Refused(last));
    }
    Err(JoinError::Unavailable(last))
}

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum WorkerClientError {
    /// No coordinator URL was given.
    #[error("at least one coordinator is needed")]
    NoCoordinator,
    /// The secret cannot travel in an HTTP header.
    #[error("the cluster secret must be printable ASCII")]
    BadSecret,
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// The coordinators, and which one is in use.
#[derive(Debug)]
pub struct WorkerClient {
    http: reqwest::Client,
    urls: Vec<String>,
    current: AtomicUsize,
    secret: Option<HeaderValue>,
    /// When a coordinator last answered anything (ms since the Unix epoch).
    last_answer_ms: std::sync::atomic::AtomicU64,
}

impl WorkerClient {
    /// Talk to `urls` (base URLs), starting with the first, sending `secret` (the cluster
    /// secret) with every request when given.
    pub fn new(urls: Vec<String>, secret: Option<&str>) -> Result<Self, WorkerClientError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            // Below the coordinators' header timeout, after which they close an idle connection.
            .pool_idle_timeout(std::time::Duration::from_secs(5))
            .build()?;
        Self::with_http(http, urls, secret)
    }

    /// As [`WorkerClient::new`], over an HTTP client shared with others (many simulated
    /// workers in one process share one connection pool).
    pub fn with_http(
        http: reqwest::Client,
        urls: Vec<String>,
        secret: Option<&str>,
    ) -> Result<Self, WorkerClientError> {
        if urls.is_empty() {
            return Err(WorkerClientError::NoCoordinator);
        }
        let secret = match secret {
            Some(secret) => {
                let mut value = HeaderValue::from_str(secret).map_err(|_| WorkerClientError::BadSecret)?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let urls = urls.into_iter().map(|u| u.trim_end_matches('/').to_owned()).collect();
        let last_answer_ms = std::sync::atomic::AtomicU64::new(crate::now_ms());
        Ok(WorkerClient { http, urls, current: AtomicUsize::new(0), secret, last_answer_ms })
    }

    /// When a coordinator last answered (any status; ms since the Unix epoch), or when this
    /// client was made if none has yet.
    pub fn last_answer_ms(&self) -> u64 {
        self.last_answer_ms.load(Ordering::Relaxed)
    }

    /// The coordinator in use.
    pub fn current(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// `POST /worker/register`.
    pub async fn register(
        &self,
        request: &RegisterRequest,
        timeout: Duration,
    ) -> Result<RegisterResponse, WorkerCallError> {
        self.call(REGISTER, request, timeout).await
    }

    /// `POST /worker/lease` (a long-poll: give a timeout above the request's `wait_ms`).
    pub async fn lease(&self, request: &LeaseRequest, timeout: Duration) -> Result<LeaseResponse, WorkerCallError> {
        self.call(LEASE, request, timeout).await
    }

    /// `POST /worker/heartbeat`.
    pub async fn heartbeat(
        &self,
        request: &HeartbeatRequest,
        timeout: Duration,
    ) -> Result<HeartbeatResponse, WorkerCallError> {
        self.call(HEARTBEAT, request, timeout).await
    }

    /// `POST /worker/complete`.
    pub async fn complete(
        &self,
        request: &CompleteRequest,
        timeout: Duration,
    ) -> Result<CompleteResponse, WorkerCallError> {
        self.call(COMPLETE, request, timeout).await
    }

    /// `POST /worker/release`.
    pub async fn release(
        &self,
        request: &ReleaseRequest,
        timeout: Duration,
    ) -> Result<ReleaseResponse, WorkerCallError> {
        self.call(RELEASE, request, timeout).await
    }

    fn fail_over(&self, from: usize) {
        // Only the first caller to notice moves on; others already see the new one.
        let _ = self.current.compare_exchange(from, (from + 1) % self.urls.len(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// POST `req` to `path`, trying each coordinator once (starting with the one in use).
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, WorkerCallError> {
        let body = rmp_serde::to_vec_named(req).map_err(|e| WorkerCallError::Rejected(e.to_string()))?;
        let mut last = String::new();
        // Counted per coordinator: each is tried once here, whatever concurrent calls do to
        // the one in use, so a refusal means every coordinator refused.
        let mut refused_secret = 0;
        let start = self.current.load(Ordering::Relaxed);
        for index in (0..self.urls.len()).map(|step| (start + step) % self.urls.len()) {
            let url = format!("{}{path}", self.urls[index]);
            let mut request =
                self.http.post(&url).header("content-type", "application/msgpack").timeout(timeout).body(body.clone());
            if let Some(secret) = &self.secret {
                request = request.header(SECRET_HEADER, secret.clone());
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => {
                    last = format!("{url}: {e}");
                    self.fail_over(index);
                    continue;
                }
            };
            self.last_answer_ms.fetch_max(crate::now_ms(), Ordering::Relaxed);
            let status = response.status();
            let bytes = match response.bytes().await {
                Ok(bytes) => bytes,
                Err(e) => {
                    last = format!("{url}: {e}");
                    self.fail_over(index);
                    continue;
                }
            };
            if status.is_success() {
                return crate::from_msgpack(&bytes)
                    .map_err(|e| WorkerCallError::Rejected(format!("undecodable answer: {e}")));
            }
            let error = crate::from_msgpack::<WorkerErrorBody>(&bytes).map(|b| b.error).unwrap_or_default();
            match status.as_u16() {
                410 => return Err(WorkerCallError::UnknownWorker),
                400 => return Err(WorkerCallError::Rejected(error)),
                // One coordinator with another secret (a misconfiguration): try the other.
                401 => refused_secret += 1,
                _ => {}
            }
            last = format!("{url}: HTTP {status}: {error}");
            self.fail_over(index);
        }
        if refused_secret == self.urls.len() {
            return Err(WorkerCallError::Unauthorized);
        }
        Err(WorkerCallError::Unavailable(last))
    }
}
