//! The follower's side of append streams, against real voters: frames however they arrive, a
//! stream cut off mid-frame, the secret and the frame limit checked before anything is decoded,
//! and a follower restarted under a leader with appends in flight.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::other_coordinator;
use openraft::raft::{AppendEntriesRequest, StreamAppendError};
use raft_store::network::{APPEND_STREAM_PROTOCOL, FROM_HEADER, SECRET_HEADER, StreamReply, TARGET_HEADER};
use raft_store::test_cluster::{TestCluster, WITNESS};
use raft_store::type_config::{Entry, LogId, Vote};
use raft_store::{NodeId, TypeConfig};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "s3cret";

/// An append from a leader of a term long gone: any voter refuses it with its own higher vote,
/// and nothing changes.
fn stale_append() -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(0, WITNESS),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    }
}

/// An append from a leader of a far term, padded to at least `bytes` bytes with a field no
/// one reads: a voter that took it would adopt term 1,000 at once (and lose its leader). Nothing
/// in these tests may let it through.
fn far_term_append(bytes: usize) -> Vec<u8> {
    /// `AppendEntriesRequest`'s fields, and one more, which its decoder skips.
    #[derive(serde::Serialize)]
    struct Padded {
        vote: Vote,
        prev_log_id: Option<LogId>,
        leader_commit: Option<LogId>,
        entries: Vec<Entry>,
        padding: String,
    }
    let padded = Padded {
        vote: Vote::new_committed(1_000, WITNESS),
        prev_log_id: None,
        leader_commit: None,
        entries: vec![],
        padding: "p".repeat(bytes),
    };
    rmp_serde::to_vec_named(&padded).expect("encode")
}

/// `request` as a frame: its length, then its MessagePack.
fn frame(request: &AppendEntriesRequest<TypeConfig>) -> Vec<u8> {
    frame_of(rmp_serde::to_vec_named(request).expect("encode"))
}

/// `body` as a frame: its length, then the bytes.
fn frame_of(body: Vec<u8>) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Ask voter `target` at `addr` to open an append stream, as a leader would.
async fn ask_to_open(addr: &str, target: NodeId, secret: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{addr}/raft/append-stream"))
        .header("connection", "upgrade")
        .header("upgrade", APPEND_STREAM_PROTOCOL)
        .header(FROM_HEADER, WITNESS)
        .header(TARGET_HEADER, target)
        .header(SECRET_HEADER, secret)
        .send()
        .await
        .expect("send")
}

/// Open an append stream to voter `target` at `addr`, as a leader would.
async fn open(addr: &str, target: NodeId, secret: &str) -> reqwest::Upgraded {
    let response = ask_to_open(addr, target, secret).await;
    assert_eq!(response.status(), 101, "{:?}", response.text().await);
    response.upgrade().await.expect("upgraded")
}

/// Read one answer frame, within 10 s.
async fn answer(stream: &mut reqwest::Upgraded) -> StreamReply {
    tokio::time::timeout(Duration::from_secs(10), async {
        let len = stream.read_u32().await.expect("an answer's length");
        let mut body = vec![0; len as usize];
        stream.read_exact(&mut body).await.expect("an answer's bytes");
        wire::from_msgpack(&body).expect("an answer")
    })
    .await
    .expect("an answer within 10 s")
}

/// Read until the peer closes the connection (within 10 s); what came before.
async fn until_closed(stream: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("closed within 10 s")
        .ok();
    rest
}

fn is_higher_vote(reply: &StreamReply) -> bool {
    matches!(reply, Ok(Err(StreamAppendError::HigherVote(_))))
}

/// The term `node` is in.
fn term(cluster: &TestCluster, node: NodeId) -> u64 {
    cluster.node(node).metrics().current_term
}

async fn cluster_with_secret(dir: &TempDir, configure: impl Fn(&mut raft_store::NodeConfig)) -> (TestCluster, NodeId) {
    let cluster = TestCluster::start(dir.path(), |config| {
        config.secret = Some(SECRET.into());
        configure(config);
    })
    .await;
    let leader = common::wait_for_coordinator_leader(&cluster).await;
    (cluster, leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_split_across_many_reads_is_read_whole_and_answered() {
    let dir = TempDir::new().expect("temp dir");
    let (mut cluster, leader) = cluster_with_secret(&dir, |_| {}).await;
    let follower = other_coordinator(leader);
    let mut stream = open(&cluster.infos()[&follower].raft_addr, follower, SECRET).await;
    // Two frames, the first sent a few bytes at a time (its length split too), the second
    // glued to the end of the first.
    let (first, second) = (frame(&stale_append()), frame(&stale_append()));
    let mut bytes = first.clone();
    bytes.extend_from_slice(&second[..3]);
    for piece in bytes.chunks(3) {
        stream.write_all(piece).await.expect("write");
        stream.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let reply = answer(&mut stream).await;
    assert!(is_higher_vote(&reply), "{reply:?}");
    // The follower answered an error, so it closes the stream, whatever else came.
    stream.write_all(&second[3..]).await.ok();
    until_closed(&mut stream).await;
    // And serves the next stream.
    let mut again = open(&cluster.infos()[&follower].raft_addr, follower, SECRET).await;
    again.write_all(&frame(&stale_append())).await.expect("write");
    assert!(is_higher_vote(&answer(&mut again).await));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_off_mid_frame_applies_nothing() {
    let dir = TempDir::new().expect("temp dir");
    let (mut cluster, leader) = cluster_with_secret(&dir, |_| {}).await;
    let follower = other_coordinator(leader);
    let before = term(&cluster, follower);
    let mut stream = open(&cluster.infos()[&follower].raft_addr, follower, SECRET).await;
    let far = frame_of(far_term_append(100));
    stream.write_all(&far[..far.len() / 2]).await.expect("write half");
    stream.flush().await.expect("flush");
    drop(stream);
    // Whatever the follower made of it, it is over once a stream opened after it is answered.
    let mut after = open(&cluster.infos()[&follower].raft_addr, follower, SECRET).await;
    after.write_all(&frame(&stale_append())).await.expect("write");
    let reply = answer(&mut after).await;
    assert!(is_higher_vote(&reply), "{reply:?}");
    assert_eq!(term(&cluster, follower), before, "half a frame changed the follower's term");
    assert!(before < 1_000);
    let id = common::enqueue(cluster.node(leader), 1).await;
    common::assert_visible(cluster.node(follower), &[id]).await;
    // The same frame whole is taken: the follower moves to term 1,000 (what every test here
    // shows did not happen).
    let mut whole = open(&cluster.infos()[&follower].raft_addr, follower, SECRET).await;
    whole.write_all(&far).await.expect("write");
    let reply = answer(&mut whole).await;
    assert!(matches!(reply, Ok(Ok(None))), "{reply:?}");
    cluster
        .node(follower)
        .raft()
        .wait(Some(Duration::from_secs(5)))
        .metrics(|metrics| metrics.current_term >= 1_000, "the far term adopted")
        .await
        .expect("the follower adopts term 1,000");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_the_secret_is_refused_before_any_frame_is_read() {
    let dir = TempDir::new().expect("temp dir");
    let (mut cluster, leader) = cluster_with_secret(&dir, |_| {}).await;
    let follower = other_coordinator(leader);
    let before = term(&cluster, follower);
    let addr = cluster.infos()[&follower].raft_addr.clone();
    for secret in [None, Some("guess"), Some("")] {
        // The head and a frame that would move the follower to term 1,000, in one write: the
        // frame is there to be read, if anything read it.
        let mut head = format!(
            "POST /raft/append-stream HTTP/1.1\r\nhost: {addr}\r\nconnection: upgrade\r\nupgrade: {APPEND_STREAM_PROTOCOL}\r\n{TARGET_HEADER}: {follower}\r\n{FROM_HEADER}: {WITNESS}\r\n"
        );
        if let Some(secret) = secret {
            head.push_str(&format!("{SECRET_HEADER}: {secret}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&frame_of(far_term_append(100)));
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        tcp.write_all(&bytes).await.expect("write");
        let answer = String::from_utf8_lossy(&until_closed(&mut tcp).await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 401"), "secret {secret:?}: {answer}");
        assert!(!answer.contains(" 101 "), "secret {secret:?}: {answer}");
    }
    // Nothing was applied: the term is the cluster's, which still commits.
    let id = common::enqueue(cluster.node(leader), 1).await;
    common::assert_visible(cluster.node(follower), &[id]).await;
    assert_eq!(term(&cluster, follower), before);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_limit_closes_the_stream_from_its_length() {
    let dir = TempDir::new().expect("temp dir");
    let (mut cluster, leader) = cluster_with_secret(&dir, |config| config.append_body_limit = 16 << 10).await;
    let follower = other_coordinator(leader);
    let before = term(&cluster, follower);
    let far = frame_of(far_term_append(20 << 10));
    assert!(far.len() > (16 << 10) + 4, "{} bytes", far.len());
    let mut stream = open(&cluster.infos()[&follower].raft_addr, follower, SECRET).await;
    // The whole frame is sent: the follower must refuse it from the length, not after reading.
    stream.write_all(&far).await.ok();
    until_closed(&mut stream).await;
    assert_eq!(term(&cluster, follower), before, "an oversize frame changed the follower's term");
    // The cluster itself, under the same limit, still replicates.
    let id = common::enqueue(cluster.node(leader), 1).await;
    common::assert_visible(cluster.node(follower), &[id]).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_restarted_with_appends_in_flight_gets_every_acknowledged_entry() {
    let dir = TempDir::new().expect("temp dir");
    let (mut cluster, leader) = cluster_with_secret(&dir, |_| {}).await;
    let follower = other_coordinator(leader);
    // Enqueues through the leader, one after another, all along.
    let node = cluster.node(leader).clone();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(async move {
        let mut ids = Vec::new();
        let mut i = 0;
        while !*stopped.borrow_and_update() {
            ids.push(common::enqueue(&node, i).await);
            i += 1;
        }
        ids
    });
    let stats = cluster.node(leader).transport_stats().clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let opened = stats.append_streams_opened.load(Ordering::SeqCst);
    cluster.kill(follower).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.restart(follower).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(true).expect("the writer runs");
    let ids = writer.await.expect("the writer");
    assert!(ids.len() > 20, "only {} enqueues", ids.len());
    common::assert_visible(cluster.node(follower), &ids).await;
    // The leader opened new streams to the restarted follower, and sent nothing over HTTP.
    assert!(stats.append_streams_opened.load(Ordering::SeqCst) > opened);
    assert_eq!(stats.http_appends.load(Ordering::SeqCst), 0);
    // And the follower holds the leader's log, entry for entry.
    let leader_log = cluster.node(leader).metrics().last_log_index;
    let follower_log = cluster.node(follower).metrics().last_log_index;
    assert_eq!(leader_log, follower_log);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_go_over_a_few_streams_and_a_cut_link_closes_them() {
    let dir = TempDir::new().expect("temp dir");
    let (mut cluster, leader) = cluster_with_secret(&dir, |_| {}).await;
    let follower = other_coordinator(leader);
    let stats = cluster.node(leader).transport_stats().clone();
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(common::enqueue(cluster.node(leader), i).await);
    }
    common::assert_visible(cluster.node(follower), &ids).await;
    // Two streams to each follower (replication and heartbeats), none over HTTP.
    let opened = stats.append_streams_opened.load(Ordering::SeqCst);
    assert!((2..=4).contains(&opened), "{opened} streams for 200 enqueues");
    assert_eq!(stats.http_appends.load(Ordering::SeqCst), 0);
    // A link cut by the hooks closes the streams over it: the follower falls behind...
    cluster.cut(leader, follower);
    let during: Vec<u64> = [common::enqueue(cluster.node(leader), 1_000).await].into();
    assert!(cluster.node(follower).metrics().last_log_index < cluster.node(leader).metrics().last_log_index);
    // ... and catches up over new streams once it is healed.
    cluster.heal_all();
    common::assert_visible(cluster.node(follower), &during).await;
    assert!(stats.append_streams_opened.load(Ordering::SeqCst) > opened);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_is_closed_by_the_follower_and_not_reused_by_the_leader() {
    let dir = TempDir::new().expect("temp dir");
    let idle = Duration::from_millis(400);
    let (mut cluster, leader) = cluster_with_secret(&dir, |config| config.append_stream_idle = idle).await;
    let follower = other_coordinator(leader);
    // A stream on which nothing is sent (a leader that vanished without closing it) is closed.
    let mut silent = open(&cluster.infos()[&follower].raft_addr, follower, SECRET).await;
    let started = std::time::Instant::now();
    until_closed(&mut silent).await;
    assert!(started.elapsed() >= idle, "closed after {:?}", started.elapsed());
    // The leader's replication stream idles as long, and the next write still goes through, on
    // a new stream rather than on the one the follower closed.
    let stats = cluster.node(leader).transport_stats().clone();
    let first = common::enqueue(cluster.node(leader), 1).await;
    let opened = stats.append_streams_opened.load(Ordering::SeqCst);
    tokio::time::sleep(idle * 2).await;
    let second = common::enqueue(cluster.node(leader), 2).await;
    common::assert_visible(cluster.node(follower), &[first, second]).await;
    assert!(stats.append_streams_opened.load(Ordering::SeqCst) > opened);
    assert_eq!(stats.http_appends.load(Ordering::SeqCst), 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_serves_a_bounded_number_of_append_streams() {
    let dir = TempDir::new().expect("temp dir");
    let (mut cluster, leader) = cluster_with_secret(&dir, |_| {}).await;
    let follower = other_coordinator(leader);
    let addr = cluster.infos()[&follower].raft_addr.clone();
    let mut held = Vec::new();
    let refused = loop {
        let response = ask_to_open(&addr, follower, SECRET).await;
        if response.status() != 101 {
            break response.status();
        }
        held.push(response.upgrade().await.expect("upgraded"));
        assert!(held.len() <= raft_store::network::MAX_APPEND_STREAMS, "no bound");
    };
    assert_eq!(refused, 503);
    // The leader's own streams were open before: the cluster still replicates to the follower.
    let id = common::enqueue(cluster.node(leader), 1).await;
    common::assert_visible(cluster.node(follower), &[id]).await;
    // Closed streams give their places back.
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if ask_to_open(&addr, follower, SECRET).await.status() == 101 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "places not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.shutdown().await;
}
