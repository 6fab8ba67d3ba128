//! The null-ingest baseline: a minimal axum server that reads the body, hashes it and answers,
//! with no Raft. The cluster's ingest rate is reported as a ratio of this one, measured in the
//! same run on the same machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::put;
use sha2::{Digest as _, Sha512};

async fn enqueue(State(next): State<Arc<AtomicU64>>, body: Bytes) -> axum::Json<wire::api::EnqueueResponse> {
    std::hint::black_box(Sha512::digest(&body));
    axum::Json(wire::api::EnqueueResponse { id: next.fetch_add(1, Ordering::Relaxed) })
}

/// Serve the baseline on 127.0.0.1 (a free port) on its own runtime thread; returns its URL.
/// The runtime lives until the process ends (the bench is short-lived).
pub fn start() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let url = format!("http://{}", listener.local_addr()?);
    std::thread::Builder::new().name("null-ingest".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let app = Router::new()
                .route("/enqueue", put(enqueue))
                .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
                .with_state(Arc::new(AtomicU64::new(1)));
            let _ = axum::serve(listener, app).await;
        });
    })?;
    Ok(url)
}
