//! Serving a router on a port with bounds a hostile client cannot get around: at most
//! `max_connections` connections at once (the rest wait in the kernel's accept queue), and a
//! connection that has not sent a whole request head within `header_timeout` (a slow-loris
//! client, or a keep-alive connection left idle) is closed. Bounds on a request once its head is
//! in (how long it may take, how large its body may be) are layers on the routes.
//!
//! `axum::serve` takes neither bound: it gives hyper no timer, so hyper's header timeout never
//! fires. This is the same accept loop over hyper-util's connection builder, with both.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How many connections a server holds and how long a request head may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeBounds {
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// The longest a connection may take to send a request head, counted from when the server
    /// starts waiting for one (so an idle keep-alive connection is closed after this too).
    pub header_timeout: Duration,
}

impl Default for ServeBounds {
    fn default() -> Self {
        ServeBounds { max_connections: 4096, header_timeout: Duration::from_secs(10) }
    }
}

/// Serve `router` on `listener` within `bounds` until `shutdown` resolves; then let the
/// requests in progress finish (at most `grace`) and return.
pub async fn serve_bounded(
    listener: TcpListener,
    router: Router,
    bounds: ServeBounds,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let stopping = CancellationToken::new();
    let signal = stopping.clone();
    tokio::spawn(async move {
        shutdown.await;
        signal.cancel();
    });
    let permits = Arc::new(Semaphore::new(bounds.max_connections.max(1)));
    let connections = TaskTracker::new();
    // HTTP/1 only: every client of these routes speaks it, and hyper-util's protocol-detecting
    // builder waits for a connection's first bytes with no timeout at all.
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(bounds.header_timeout);
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = stopping.cancelled() => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopping.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service =
            TowerToHyperService::new(router.clone().map_request(|r: Request<Incoming>| r.map(axum::body::Body::new)));
        let (builder, stopping) = (builder.clone(), stopping.clone());
        connections.spawn(async move {
            let _permit = permit;
            // With upgrades: a peer's append stream starts as an HTTP request and leaves the server.
            let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service).with_upgrades());
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stopping.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    connections.close();
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::warn!(?grace, "connections still open at shutdown were dropped");
    }
    Ok(())
}
