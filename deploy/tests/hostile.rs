//! Hostile input against the real binaries: what an unauthenticated client can make a voter
//! hold, and how long a slow one can hold it. The coordinators run as processes (as
//! `deploy local` starts them), so their memory is the process's own resident set.

use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

/// A process's resident memory, in bytes, from `/proc/PID/status`.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("a VmRSS line");
    kib * 1024
}

/// POST `total` bytes to `path` as a chunked body (so that no Content-Length lets the server
/// refuse it by size: only reading it would tell), without the cluster secret. Returns the
/// status line the server answered with and how many body bytes it took before it closed.
async fn post_unauthenticated(addr: String, path: &'static str, target: u64, total: usize) -> (String, usize) {
    let stream = TcpStream::connect(&addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nx-tandem-target: {target}\r\ncontent-type: application/msgpack\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    let send = tokio::spawn(async move {
        const CHUNK: usize = 1 << 20;
        let chunk = [format!("{CHUNK:x}\r\n").into_bytes(), vec![0x91; CHUNK], b"\r\n".to_vec()].concat();
        writer.write_all(head.as_bytes()).await.expect("send the head");
        let mut sent = 0;
        while sent < total {
            if writer.write_all(&chunk).await.is_err() {
                break; // the server closed the connection
            }
            sent += CHUNK;
        }
        let _ = writer.write_all(b"0\r\n\r\n").await;
        sent
    });
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(Duration::from_secs(30), reader.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buffer[..n]),
            other => panic!("no answer on {path}: {other:?}"),
        }
    }
    drop(reader);
    let sent = send.await.expect("sender");
    let status = String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned();
    (status, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_concurrent_400_mib_bodies_without_the_secret_leave_a_voters_memory_alone() {
    const BODY: usize = 400 << 20;
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = common::start(&dir, 0).await;
    let pid = cluster.process("coordinator-1").pid().expect("coordinator 1 runs");
    let addr = cluster.raft_addr(1);
    let before = resident_bytes(pid);
    // The snapshot route reads up to 512 MiB and append up to 64 MiB once the secret is
    // checked; the worker routes about 32 MiB: none of it may be read before.
    let routes = ["/raft/snapshot", "/raft/append", "/raft/propose", "/worker/register"];
    let sends: Vec<_> =
        routes.iter().map(|path| tokio::spawn(post_unauthenticated(addr.clone(), path, 1, BODY))).collect();
    let mut peak = before;
    let started = Instant::now();
    while !sends.iter().all(|s| s.is_finished()) {
        peak = peak.max(resident_bytes(pid));
        assert!(started.elapsed() < Duration::from_secs(60), "the unauthenticated sends did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (path, send) in routes.iter().zip(sends) {
        let (status, sent) = send.await.expect("send task");
        assert!(status.starts_with("HTTP/1.1 401"), "{path}: {status:?}");
        assert!(sent < BODY, "{path}: the server read the whole body ({sent} bytes) rather than close at once");
    }
    let grew = peak.saturating_sub(before);
    println!("coordinator-1 resident: {} MiB before, peak growth {} KiB", before >> 20, grew >> 10);
    assert!(grew < 8 << 20, "the voter's resident memory grew by {} KiB", grew >> 10);
    // It still serves.
    let client = wire::client::ApiClient::new(cluster.api_urls()[0].clone());
    assert!(client.ready().await.expect("readyz"), "coordinator 1 stopped serving");
    cluster.stop(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_body_is_answered_408_and_enqueues_nothing() {
    const TIMEOUT: Duration = Duration::from_millis(1500);
    let dir = TempDir::new().expect("temp dir");
    let mut options = common::options(&dir, 0);
    options.coordinator_args.extend(["--client-request-timeout-ms".into(), TIMEOUT.as_millis().to_string()]);
    let mut cluster = deploy::local::LocalCluster::start(options).expect("start");
    cluster.wait_ready(Duration::from_secs(60)).await.expect("cluster ready");
    let url = cluster.api_urls()[0].clone();
    let addr = url.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    let head = format!("PUT /enqueue?iterations=1 HTTP/1.1\r\nHost: {addr}\r\ncontent-length: 16384\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("send the head");
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        // One byte every 100 ms: the body would take 27 minutes.
        while writer.write_all(&[7]).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let client = wire::client::ApiClient::new(url.clone());
    assert!(client.ready().await.expect("readyz"), "others are served meanwhile");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("}") {
        match tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buffer[..n]),
            other => panic!("no answer after {:?}: {other:?}", started.elapsed()),
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/json") && answer.contains("\"error\""), "{answer}");
    assert!(started.elapsed() >= TIMEOUT - Duration::from_millis(100), "answered after {:?}", started.elapsed());
    trickle.abort();
    // Nothing was enqueued.
    match client.job(1).await {
        Err(wire::client::ClientError::Status { status: 404, .. }) => {}
        other => panic!("job 1 after a refused enqueue: {other:?}"),
    }
    cluster.stop(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overload_every_enqueue_is_acknowledged_and_completed_or_refused_with_retry_after() {
    // 48 clients without pause against coordinators that take 4 enqueues at once each: far
    // beyond what they take, so most are shed.
    const CLIENTS: usize = 48;
    const LOAD: Duration = Duration::from_secs(4);
    let dir = TempDir::new().expect("temp dir");
    let mut options = common::options(&dir, 1);
    options.coordinator_args.extend(["--max-concurrent-enqueues".into(), "4".into()]);
    let mut cluster = deploy::local::LocalCluster::start(options).expect("start");
    cluster.wait_ready(Duration::from_secs(60)).await.expect("cluster ready");
    let pid = cluster.process("coordinator-1").pid().expect("coordinator 1 runs");
    let before = resident_bytes(pid);
    let urls = cluster.api_urls();
    let deadline = Instant::now() + LOAD;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let client = wire::client::ApiClient::new(urls[c % 2].clone());
            tokio::spawn(async move {
                let (mut acked, mut shed, mut other) = (Vec::new(), 0usize, Vec::new());
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let body = format!("overload client {c} job {n}").into_bytes().repeat(512);
                    let iterations = 1 + n % 7;
                    match client.enqueue(body.clone(), iterations, None).await {
                        Ok(id) => acked.push((id, common::reference_chain(&body, iterations))),
                        Err(wire::client::ClientError::Status { status: 503, retry_after: Some(_), .. }) => shed += 1,
                        Err(e) => other.push(e.to_string()),
                    }
                    n += 1;
                }
                (acked, shed, other)
            })
        })
        .collect();
    let mut peak = before;
    while !clients.iter().all(|c| c.is_finished()) {
        peak = peak.max(resident_bytes(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut expected, mut shed, mut other) = (std::collections::BTreeMap::new(), 0, Vec::new());
    for client in clients {
        let (acked, refused, failed) = client.await.expect("client task");
        expected.extend(acked);
        shed += refused;
        other.extend(failed);
    }
    println!(
        "overload: {} acknowledged, {shed} shed with 503 + Retry-After, {} other; coordinator-1 resident \
         {} MiB, peak growth {} MiB",
        expected.len(),
        other.len(),
        before >> 20,
        peak.saturating_sub(before) >> 20
    );
    assert!(other.is_empty(), "answers other than an id or a 503 with Retry-After: {other:?}");
    assert!(shed > 0, "the load never passed the bound: nothing was shed");
    assert!(!expected.is_empty(), "nothing was acknowledged");
    assert!(peak.saturating_sub(before) < 64 << 20, "resident memory grew by {} MiB", (peak - before) >> 20);
    // Every acknowledged job completes, with the right result.
    let client = wire::client::ApiClient::new(urls[1].clone());
    let ids = expected.keys().copied().collect();
    let results = common::wait_for_results(&client, &ids, Duration::from_secs(120)).await;
    for (id, result) in &expected {
        assert_eq!(&results[id], result, "job {id}");
    }
    cluster.stop(Duration::from_secs(5));
}
