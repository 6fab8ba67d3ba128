//! The worker's side of the worker protocol: MessagePack POSTs to whichever coordinator answers.
//!
//! One shared reqwest client; the coordinator in use changes when one is unreachable or cannot
//! commit (503), so a worker keeps working through the loss of either coordinator.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::header::HeaderValue;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wire::SECRET_HEADER;
use wire::worker::WorkerErrorBody;

/// Why a call failed after trying every coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The coordinator does not know this worker id: register again.
    UnknownWorker,
    /// The coordinator refused the message as malformed (a bug; retrying will not help).
    Rejected(String),
    /// Every coordinator refused this worker's cluster secret (missing or wrong).
    Unauthorized,
    /// No coordinator could take it right now.
    Unavailable(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::UnknownWorker => f.write_str("unknown worker"),
            CallError::Rejected(e) => write!(f, "rejected: {e}"),
            CallError::Unauthorized => {
                f.write_str("the coordinators refused this worker's cluster secret (TANDEM_CLUSTER_SECRET)")
            }
            CallError::Unavailable(e) => write!(f, "no coordinator available: {e}"),
        }
    }
}

/// The coordinators, and which one is in use.
#[derive(Debug)]
pub struct Coordinators {
    http: reqwest::Client,
    urls: Vec<String>,
    current: AtomicUsize,
    secret: Option<HeaderValue>,
}

impl Coordinators {
    /// Talk to `urls` (base URLs), starting with the first, sending `secret` (the cluster
    /// secret) with every request when given.
    pub fn new(urls: Vec<String>, secret: Option<&str>) -> anyhow::Result<Self> {
        anyhow::ensure!(!urls.is_empty(), "at least one --coordinator is needed");
        let secret = match secret {
            Some(secret) => {
                let mut value = HeaderValue::from_str(secret)
                    .map_err(|_| anyhow::anyhow!("the cluster secret must be printable ASCII"))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let http = reqwest::Client::builder().no_proxy().tcp_nodelay(true).build()?;
        let urls = urls.into_iter().map(|u| u.trim_end_matches('/').to_owned()).collect();
        Ok(Coordinators { http, urls, current: AtomicUsize::new(0), secret })
    }

    /// The coordinator in use.
    pub fn current(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    fn fail_over(&self, from: usize) {
        // Only the first caller to notice moves on; others already see the new one.
        let _ = self.current.compare_exchange(from, (from + 1) % self.urls.len(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// POST `req` to `path`, trying each coordinator once (starting with the one in use).
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let body = rmp_serde::to_vec_named(req).map_err(|e| CallError::Rejected(e.to_string()))?;
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
            let sent = request.send().await;
            let response = match sent {
                Ok(response) => response,
                Err(e) => {
                    last = format!("{url}: {e}");
                    self.fail_over(index);
                    continue;
                }
            };
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
                return rmp_serde::from_slice(&bytes)
                    .map_err(|e| CallError::Rejected(format!("undecodable answer: {e}")));
            }
            let error = rmp_serde::from_slice::<WorkerErrorBody>(&bytes).map(|b| b.error).unwrap_or_default();
            match status.as_u16() {
                410 => return Err(CallError::UnknownWorker),
                400 => return Err(CallError::Rejected(error)),
                // One coordinator with another secret (a misconfiguration): try the other.
                401 => refused_secret += 1,
                _ => {}
            }
            last = format!("{url}: HTTP {status}: {error}");
            self.fail_over(index);
        }
        if refused_secret == self.urls.len() {
            return Err(CallError::Unauthorized);
        }
        Err(CallError::Unavailable(last))
    }
}
