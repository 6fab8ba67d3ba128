//! The bounded server every voter serves on: idle and slow connections are closed after the
//! header timeout, and connections beyond the bound wait to be accepted.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use raft_store::server::{ServeBounds, serve_bounded};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Serve a one-route router within `bounds`; its address and the token that stops it.
async fn start(bounds: ServeBounds) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let stop = CancellationToken::new();
    let router = Router::new().route("/", get(|| async { "ok" }));
    let shutdown = stop.clone();
    tokio::spawn(serve_bounded(listener, router, bounds, async move { shutdown.cancelled().await }, Duration::ZERO));
    (addr, stop)
}

/// Read until the server closes the connection; what it sent meanwhile.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&answer).into_owned(),
            Ok(Ok(n)) => answer.extend_from_slice(&buffer[..n]),
            Err(_) => panic!("the server kept the connection open for {within:?}"),
        }
    }
}

const HEADER_TIMEOUT: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_no_request_head_in_time_is_closed() {
    let (addr, stop) = start(ServeBounds { max_connections: 64, header_timeout: HEADER_TIMEOUT }).await;

    // Silent from the start.
    let started = Instant::now();
    let mut silent = TcpStream::connect(&addr).await.expect("connect");
    read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(started.elapsed() >= HEADER_TIMEOUT - Duration::from_millis(50), "closed before the timeout");

    // A slow-loris head: one byte every 50 ms, never finished.
    let started = Instant::now();
    let mut slow = TcpStream::connect(&addr).await.expect("connect");
    let mut closed = false;
    for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if slow.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut probe = [0u8; 256];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "a head trickled over {:?} was still being read", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3), "closed only after {:?}", started.elapsed());

    // A keep-alive connection is served, then closed once it idles past the timeout.
    let mut kept = TcpStream::connect(&addr).await.expect("connect");
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("send");
    let answer = read_until_closed(&mut kept, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_bound_wait_until_one_is_released() {
    let timeout = Duration::from_millis(600);
    let (addr, stop) = start(ServeBounds { max_connections: 2, header_timeout: timeout }).await;
    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    // Served at once while a slot is free.
    let started = Instant::now();
    assert_eq!(http.get(format!("http://{addr}/")).send().await.expect("send").status(), 200);
    drop(http);
    let free = started.elapsed();
    // Two silent connections take both slots; a third waits until the header timeout closes one.
    let _silent =
        [TcpStream::connect(&addr).await.expect("connect"), TcpStream::connect(&addr).await.expect("connect")];
    tokio::time::sleep(Duration::from_millis(50)).await; // both accepted
    let started = Instant::now();
    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    assert_eq!(http.get(format!("http://{addr}/")).send().await.expect("send").status(), 200);
    let waited = started.elapsed();
    assert!(
        waited >= timeout - Duration::from_millis(150),
        "the third connection was served after {waited:?}, before a slot was free (a free slot: {free:?})"
    );
    stop.cancel();
}
