//! The voters' transport: error mapping, the cluster secret, misdirected requests, body limits.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::other_coordinator;
use openraft::errors::RPCError;
use raft_store::job_table::{CommandResponse, EnqueueOutcome, JobRequest, Proposal};
use raft_store::network::{
    CONTROL_BODY_LIMIT, NetworkFaults, PROPOSE_BODY_LIMIT, SECRET_HEADER, TARGET_HEADER, Transport,
};
use raft_store::test_cluster::{COORDINATOR_1, COORDINATOR_2, TestCluster, WITNESS, answer_without_body};
use raft_store::{Digest, NodeId, ProposeError};
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(5);

async fn probe(
    transport: &Transport,
    target: NodeId,
    addr: &str,
) -> Result<Result<u64, String>, RPCError<raft_store::TypeConfig>> {
    // read-index answers any well-formed request; its body is ignored.
    let answer: Result<serde_json::Value, _> = transport.call(target, addr, "read-index", &(), TIMEOUT).await;
    answer.map(|_| Ok(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let transport = Transport::new(9, None, Arc::new(NetworkFaults::default()));
    assert!(matches!(probe(&transport, 1, &addr).await, Err(RPCError::Unreachable(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_is_required_and_the_target_must_match() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = TestCluster::start(dir.path(), |config| config.secret = Some("s3cret".into())).await;
    // The cluster itself works with the secret.
    cluster.wait_for_leader(Duration::from_secs(10)).await;
    let response = cluster.node(COORDINATOR_2).propose(Proposal::ExpireLeases).await;
    assert_eq!(response, Ok(CommandResponse::Requeued(vec![])));
    let addr = cluster.infos()[&COORDINATOR_1].raft_addr.clone();

    let faults = Arc::new(NetworkFaults::default());
    let without = Transport::new(COORDINATOR_2, None, faults.clone());
    match probe(&without, COORDINATOR_1, &addr).await {
        Err(RPCError::Network(e)) => assert!(e.to_string().contains("401"), "{e}"),
        other => panic!("expected a 401 network error, got {other:?}"),
    }
    let wrong = Transport::new(COORDINATOR_2, Some(Arc::from("guess")), faults.clone());
    assert!(matches!(probe(&wrong, COORDINATOR_1, &addr).await, Err(RPCError::Network(_))));
    // Right secret, wrong node id: refused, so traffic never reaches the wrong voter.
    let right = Transport::new(COORDINATOR_2, Some(Arc::from("s3cret")), faults.clone());
    match probe(&right, COORDINATOR_2, &addr).await {
        Err(RPCError::Network(e)) => assert!(e.to_string().contains("421"), "{e}"),
        other => panic!("expected a 421 network error, got {other:?}"),
    }
    assert!(probe(&right, COORDINATOR_1, &addr).await.is_ok());
    // A cut link is unreachable without touching the network.
    faults.isolate_from(COORDINATOR_1);
    assert!(matches!(probe(&right, COORDINATOR_1, &addr).await, Err(RPCError::Unreachable(_))));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_proposals_fail_instead_of_hanging() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = TestCluster::start(dir.path(), |config| config.request_timeout = Duration::from_secs(2)).await;
    cluster.wait_for_leader(Duration::from_secs(10)).await;
    cluster.kill(raft_store::test_cluster::WITNESS).await;
    cluster.kill(COORDINATOR_2).await;
    let started = std::time::Instant::now();
    let result = cluster.node(COORDINATOR_1).propose(Proposal::ExpireLeases).await;
    assert!(matches!(result, Err(ProposeError::Unavailable(_)) | Err(ProposeError::Unknown(_))), "{result:?}");
    let read = cluster.node(COORDINATOR_1).read_barrier().await;
    assert!(read.is_err(), "a lone voter must not serve linearizable reads");
    assert!(started.elapsed() < Duration::from_secs(8));
    cluster.shutdown().await;
}

/// Every route a voter serves under `/raft/` but the health check.
const RAFT_ROUTES: [&str; 13] = [
    "append",
    "append-stream",
    "vote",
    "pre-vote",
    "snapshot",
    "snapshot-stream",
    "transfer-leader",
    "propose",
    "read-index",
    "status",
    "failover",
    "replace-voter",
    "faults",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_raft_route_refuses_a_request_without_the_secret_and_changes_nothing() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = TestCluster::start(dir.path(), |config| {
        config.secret = Some("s3cret".into());
        config.fault_injection = true;
    })
    .await;
    let leader = common::wait_for_coordinator_leader(&cluster).await;
    let before = cluster.node(leader).status();
    let http = reqwest::Client::new();
    // Bodies that would each change something if they were read: a vote for a far term, a
    // proposal, faults that cut every link.
    let far_vote: openraft::raft::VoteRequest<raft_store::TypeConfig> =
        openraft::raft::VoteRequest::new(raft_store::type_config::Vote::new(1_000, WITNESS), None);
    let vote = rmp_serde::to_vec_named(&far_vote).expect("encode");
    let proposal = rmp_serde::to_vec_named(&Proposal::Enqueue { jobs: vec![common::job(1)] }).expect("encode");
    let body = |route: &str| match route {
        "faults" => br#"{"isolated_from":[1,2,3]}"#.to_vec(),
        "vote" | "pre-vote" => vote.clone(),
        _ => proposal.clone(),
    };
    for node in [COORDINATOR_1, COORDINATOR_2, WITNESS] {
        let addr = cluster.infos()[&node].raft_addr.clone();
        for route in RAFT_ROUTES {
            for secret in [None, Some("guess"), Some("")] {
                let mut request = http
                    .post(format!("http://{addr}/raft/{route}"))
                    .header(TARGET_HEADER, node)
                    .header("content-type", "application/msgpack")
                    .body(body(route));
                if let Some(secret) = secret {
                    request = request.header(SECRET_HEADER, secret);
                }
                let response = request.send().await.expect("send");
                assert_eq!(response.status(), 401, "/raft/{route} on node {node} with secret {secret:?}");
            }
        }
    }
    // Nothing moved: the same leader in the same term, no link cut, and the cluster still
    // commits (a cut link or a bumped term would show here).
    let after = cluster.node(leader).status();
    assert_eq!((after.leader, after.term), (before.leader, before.term), "{before:?} -> {after:?}");
    for node in [COORDINATOR_1, COORDINATOR_2, WITNESS] {
        for peer in [COORDINATOR_1, COORDINATOR_2, WITNESS] {
            assert!(!cluster.faults(node).is_cut(peer), "node {node} cut from {peer}");
        }
    }
    let id = common::enqueue(cluster.node(other_coordinator(leader)), 7).await;
    common::assert_visible(cluster.node(leader), &[id]).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_snapshot_without_its_head_or_its_whole_body_is_refused_and_installs_nothing() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = TestCluster::start(dir.path(), |config| config.secret = Some("s3cret".into())).await;
    let leader = common::wait_for_coordinator_leader(&cluster).await;
    let id = common::enqueue(cluster.node(leader), 1).await;
    let follower = other_coordinator(leader);
    common::assert_visible(cluster.node(follower), &[id]).await;
    let addr = cluster.infos()[&follower].raft_addr.clone();
    let http = reqwest::Client::new();
    let post = |head: Option<&str>| {
        let mut request = http
            .post(format!("http://{addr}/raft/snapshot-stream"))
            .header(TARGET_HEADER, follower)
            .header(SECRET_HEADER, "s3cret")
            .body(vec![0u8; 4096]);
        if let Some(head) = head {
            request = request.header(raft_store::network::SNAPSHOT_HEAD_HEADER, head);
        }
        request
    };
    for head in [None, Some("not hex"), Some("00ff")] {
        let response = post(head).send().await.expect("send");
        assert_eq!(response.status(), 400, "head {head:?}");
    }
    // A valid head, and a body that stops short of its announced length (the sender closes its
    // side): refused, and nothing is installed.
    let meta = raft_store::type_config::SnapshotMeta {
        last_log_id: Some(raft_store::type_config::LogId::new(
            openraft::impls::leader_id_adv::LeaderId { term: 99, node_id: leader },
            1_000_000,
        )),
        last_membership: Default::default(),
    };
    let vote = raft_store::type_config::Vote::new_committed(99, leader);
    let head = hex::encode(rmp_serde::to_vec_named(&(vote, &meta)).expect("encode"));
    let request = format!(
        "POST /raft/snapshot-stream HTTP/1.1\r\nHost: {addr}\r\n{TARGET_HEADER}: {follower}\r\n{SECRET_HEADER}: s3cret\r\n\
         {}: {head}\r\ncontent-length: 100000\r\n\r\n",
        raft_store::network::SNAPSHOT_HEAD_HEADER
    );
    let answer = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("head");
        stream.write_all(&[7u8; 1000]).await.expect("part of the body");
        stream.shutdown().await.expect("close the sending side");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("broke off"), "{answer}");
    assert!(cluster.node(follower).metrics().current_term < 99, "the head's vote was not taken");
    // The follower still holds the job and follows the leader.
    let id2 = common::enqueue(cluster.node(leader), 2).await;
    common::assert_visible(cluster.node(follower), &[id, id2]).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_a_routes_limit_is_refused_with_413_before_it_is_read() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = TestCluster::start(dir.path(), |config| config.secret = Some("s3cret".into())).await;
    cluster.wait_for_leader(Duration::from_secs(10)).await;
    let addr = cluster.infos()[&COORDINATOR_1].raft_addr.clone();
    // (read-index and status never read their bodies.) Only the heads are sent: the refusal
    // comes from the declared length.
    let routes = ["vote", "pre-vote", "transfer-leader", "failover", "replace-voter"].map(|r| (r, CONTROL_BODY_LIMIT));
    for (route, limit) in routes.into_iter().chain([("propose", PROPOSE_BODY_LIMIT)]) {
        let head = format!(
            "POST /raft/{route} HTTP/1.1\r\nHost: {addr}\r\n{TARGET_HEADER}: {COORDINATOR_1}\r\n{SECRET_HEADER}: s3cret\r\ncontent-length: {}\r\n\r\n",
            limit + 1
        );
        let (head, _) = answer_without_body(&addr, &head).await;
        assert!(head.starts_with("HTTP/1.1 413"), "/raft/{route}: {head}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_catches_up_in_appends_that_each_fit_the_limit() {
    // With a 16 KiB limit and entries of about 5 KiB, the 300 entries openraft sends a lagging
    // follower at once would be a 1.5 MiB body: the receiver refuses it (413), and without the
    // leader splitting it the follower would never catch up.
    catch_up_in_parts(|config| config.append_body_limit = 16 << 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_catches_up_in_appends_of_the_payload_bound() {
    // The same catch-up, the receiver's limit the default, the leader's payload bound 16 KiB:
    // every append carries the longest prefix of entries within it, and the rest follows.
    catch_up_in_parts(|config| config.append_payload_bytes = 16 << 10).await;
}

/// A follower cut off while 60 batches of 16 enqueues (about 5 KiB an entry) commit, then
/// healed: it catches up (with `configure`'s limits) and sees every job.
async fn catch_up_in_parts(configure: impl Fn(&mut raft_store::NodeConfig)) {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = TestCluster::start(dir.path(), configure).await;
    let leader = common::wait_for_coordinator_leader(&cluster).await;
    let follower = other_coordinator(leader);
    cluster.cut(leader, follower);
    cluster.cut(WITNESS, follower);
    let mut ids = Vec::new();
    for batch in 0..60u64 {
        let jobs: Vec<JobRequest> = (0..16u64)
            .map(|i| JobRequest {
                digest: Digest([(batch * 16 + i) as u8; 64]),
                iterations: 1 + i,
                idempotency_key: Some(format!("{batch:03}-{i:02}-{}", "k".repeat(240))),
                reuse: false,
            })
            .collect();
        match cluster.node(leader).propose(Proposal::Enqueue { jobs }).await {
            Ok(CommandResponse::Enqueued(outcomes)) => {
                for outcome in outcomes {
                    let EnqueueOutcome::Created(id) = outcome else { panic!("{outcome:?}") };
                    ids.push(id);
                }
            }
            other => panic!("enqueue batch {batch}: {other:?}"),
        }
    }
    cluster.heal_all();
    // The read barrier on the follower waits until it has applied the leader's commit index.
    common::assert_visible(cluster.node(follower), &ids).await;
    cluster.shutdown().await;
}
