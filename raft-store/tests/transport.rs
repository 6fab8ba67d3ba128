//! The voters' transport: error mapping, the cluster secret, and misdirected requests.

use std::sync::Arc;
use std::time::Duration;

use openraft::errors::RPCError;
use raft_store::job_table::{CommandResponse, Proposal};
use raft_store::network::{NetworkFaults, Transport};
use raft_store::test_cluster::{COORDINATOR_1, COORDINATOR_2, TestCluster};
use raft_store::{NodeId, ProposeError};
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
