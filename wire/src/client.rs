//! A typed client of the client API, as any HTTP client would use it.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::api::{
    ClusterView, EnqueueResponse, ErrorBody, FailoverResponse, JobView, PullResponse, ReplaceMemberRequest,
    ReplaceMemberResponse, WorkerStateResponse,
};

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("HTTP {status}: {error}")]
    Status {
        /// The status code.
        status: u16,
        /// The `error` field of the body (or the raw body).
        error: String,
        /// The `Retry-After` header, in seconds, if given.
        retry_after: Option<u64>,
    },
    /// The request did not get an answer (refused, reset, timed out).
    #[error("transport: {0}")]
    Transport(String),
    /// The answer was not what the API promises.
    #[error("undecodable answer: {0}")]
    Decode(String),
}

impl ClientError {
    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether asking again shortly may succeed: a 503 (no leader confirmed a read, an election
    /// under way, a full queue) or no answer at all.
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Status { status: 503, .. } | ClientError::Transport(_))
    }
}

/// A client of one coordinator's API.
#[derive(Clone, Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    /// The client token sent on the client API's calls, if the cluster requires one.
    token: Option<std::sync::Arc<str>>,
}

impl ApiClient {
    /// A client of the coordinator at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            // Below the coordinators' header timeout, after which they close an idle connection.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .expect("a reqwest client with static settings always builds");
        Self::with_http(http, base)
    }

    /// A client sharing an existing connection pool.
    pub fn with_http(http: reqwest::Client, base: impl Into<String>) -> Self {
        ApiClient { http, base: base.into().trim_end_matches('/').to_owned(), token: None }
    }

    /// The same client, sending `token` (`--client-token`) on enqueues, pulls and job reads.
    pub fn with_client_token(mut self, token: Option<&str>) -> Self {
        self.token = token.map(std::sync::Arc::from);
        self
    }

    /// A client-API request, with the client token if there is one.
    fn client_call(&self, method: reqwest::Method, path_and_query: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path_and_query}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `PUT /enqueue?iterations=N` with `body`; the job's id.
    pub async fn enqueue(
        &self,
        body: Vec<u8>,
        iterations: u64,
        idempotency_key: Option<&str>,
    ) -> Result<u64, ClientError> {
        self.enqueue_with_reuse(body, iterations, idempotency_key, true).await
    }

    /// [`ApiClient::enqueue`], saying whether the job may be served from another job with the
    /// same body (`reuse=true`, the default) or must be computed from its start.
    pub async fn enqueue_with_reuse(
        &self,
        body: Vec<u8>,
        iterations: u64,
        idempotency_key: Option<&str>,
        reuse: bool,
    ) -> Result<u64, ClientError> {
        let path = format!("/enqueue?iterations={iterations}&reuse={reuse}");
        let mut request = self.client_call(reqwest::Method::PUT, &path).body(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let answer: EnqueueResponse = decode(request.send().await).await?;
        Ok(answer.id)
    }

    /// `POST /pullCompleted?top=N`: the newest results, newest first.
    pub async fn pull_completed(&self, top: u64) -> Result<PullResponse, ClientError> {
        decode(self.client_call(reqwest::Method::POST, &format!("/pullCompleted?top={top}")).send().await).await
    }

    /// `POST /pullCompleted?after=SEQ&top=N`: results after a cursor, oldest first.
    pub async fn pull_after(&self, after: u64, top: u64) -> Result<PullResponse, ClientError> {
        let call = self.client_call(reqwest::Method::POST, &format!("/pullCompleted?after={after}&top={top}"));
        decode(call.send().await).await
    }

    /// `GET /jobs/{id}`.
    pub async fn job(&self, id: u64) -> Result<JobView, ClientError> {
        decode(self.client_call(reqwest::Method::GET, &format!("/jobs/{id}")).send().await).await
    }

    /// `GET /cluster`.
    pub async fn cluster(&self) -> Result<ClusterView, ClientError> {
        decode(self.http.get(format!("{}/cluster", self.base)).send().await).await
    }

    /// `POST /admin/failover[?to=ID]` with the admin token: leadership moves to the other
    /// coordinator (or to `to`).
    pub async fn failover(&self, token: &str, to: Option<u64>) -> Result<FailoverResponse, ClientError> {
        let mut url = format!("{}/admin/failover", self.base);
        if let Some(to) = to {
            url.push_str(&format!("?to={to}"));
        }
        decode(self.http.post(url).bearer_auth(token).send().await).await
    }

    /// `POST /admin/members/replace` with the admin token. It waits for the new node to catch up
    /// (up to a minute on the leader), so it gets a longer timeout than other calls.
    pub async fn replace_member(
        &self,
        token: &str,
        request: &ReplaceMemberRequest,
    ) -> Result<ReplaceMemberResponse, ClientError> {
        let url = format!("{}/admin/members/replace", self.base);
        let call = self.http.post(url).bearer_auth(token).json(request).timeout(Duration::from_secs(120));
        decode(call.send().await).await
    }

    /// `POST /admin/workers/{id}/drain` (or `/resume` when `drain` is false) with the admin token.
    pub async fn set_worker_draining(
        &self,
        token: &str,
        worker: u64,
        drain: bool,
    ) -> Result<WorkerStateResponse, ClientError> {
        let action = if drain { "drain" } else { "resume" };
        let url = format!("{}/admin/workers/{worker}/{action}", self.base);
        decode(self.http.post(url).bearer_auth(token).send().await).await
    }

    /// `GET /readyz`: whether the node can serve linearizable reads and forward writes.
    pub async fn ready(&self) -> Result<bool, ClientError> {
        let response = self
            .http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(response.status().is_success())
    }
}

async fn decode<T: DeserializeOwned>(sent: Result<reqwest::Response, reqwest::Error>) -> Result<T, ClientError> {
    let response = sent.map_err(|e| ClientError::Transport(e.to_string()))?;
    let status = response.status();
    let retry_after =
        response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let bytes = response.bytes().await.map_err(|e| ClientError::Transport(e.to_string()))?;
    if !status.is_success() {
        let error = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|body| body.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        return Err(ClientError::Status { status: status.as_u16(), error, retry_after });
    }
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
}
