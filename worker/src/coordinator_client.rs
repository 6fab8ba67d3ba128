//! The worker's side of the worker protocol: MessagePack POSTs to whichever coordinator answers.
//!
//! One shared reqwest client; the coordinator in use changes when one is unreachable or cannot
//! commit (503), so a worker keeps working through the loss of either coordinator.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wire::worker::WorkerErrorBody;

/// A coordinator that does not accept a connection within this long is taken as down, even
/// when the call itself may take longer (a long-poll).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a call failed after trying every coordinator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The coordinator does not know this worker id (410): register again.
    #[error("the coordinator does not know this worker")]
    UnknownWorker,
    /// The coordinator refused the message as malformed (400), or its answer was undecodable:
    /// a bug on one side; retrying will not help.
    #[error("rejected: {0}")]
    Rejected(String),
    /// No coordinator could take it right now (unreachable, timed out, or 503).
    #[error("no coordinator available: {0}")]
    Unavailable(String),
}

/// The coordinators, and which one is in use.
#[derive(Debug)]
pub struct Coordinators {
    http: reqwest::Client,
    urls: Vec<String>,
    current: AtomicUsize,
}

impl Coordinators {
    /// Talk to `urls` (base URLs), starting with the first.
    pub fn new(urls: &[String]) -> anyhow::Result<Self> {
        let urls: Vec<String> =
            urls.iter().map(|url| url.trim().trim_end_matches('/').to_owned()).filter(|url| !url.is_empty()).collect();
        anyhow::ensure!(!urls.is_empty(), "at least one --coordinator is needed");
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Coordinators { http, urls, current: AtomicUsize::new(0) })
    }

    /// The coordinator in use.
    pub fn current(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    fn fail_over(&self, from: usize) {
        // Only the first caller to notice moves on; others already see the new one.
        let _ = self.current.compare_exchange(from, (from + 1) % self.urls.len(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The coordinators' base URLs.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// POST `req` to `path`, trying each coordinator once (starting with the one in use), each
    /// with `timeout`. Moves on to the next one on a transport error or a status other than
    /// 400 and 410.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let body = rmp_serde::to_vec_named(req).map_err(|e| CallError::Rejected(e.to_string()))?;
        let mut last = String::new();
        for _ in 0..self.urls.len() {
            let index = self.current.load(Ordering::Relaxed) % self.urls.len();
            let url = format!("{}{path}", self.urls[index]);
            let sent = self
                .http
                .post(&url)
                .header("content-type", "application/msgpack")
                .timeout(timeout)
                .body(body.clone())
                .send()
                .await;
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
                _ => {
                    last = format!("{url}: HTTP {status}: {error}");
                    self.fail_over(index);
                }
            }
        }
        Err(CallError::Unavailable(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_trimmed_and_empty_ones_dropped() {
        let coordinators =
            Coordinators::new(&[" http://a:1/ ".into(), String::new(), "http://b:2".into()]).expect("valid urls");
        assert_eq!(coordinators.urls(), ["http://a:1", "http://b:2"]);
        assert_eq!(coordinators.current(), "http://a:1");
    }

    #[test]
    fn no_coordinator_is_an_error() {
        assert!(Coordinators::new(&[]).is_err());
        assert!(Coordinators::new(&[" ".into()]).is_err());
    }

    #[test]
    fn failing_over_moves_once_and_wraps_around() {
        let coordinators = Coordinators::new(&["http://a".into(), "http://b".into()]).expect("valid urls");
        coordinators.fail_over(0);
        // A second caller that saw the same failure does not move it on again.
        coordinators.fail_over(0);
        assert_eq!(coordinators.current(), "http://b");
        coordinators.fail_over(1);
        assert_eq!(coordinators.current(), "http://a");
    }
}
