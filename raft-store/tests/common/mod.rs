//! Helpers shared by the in-process cluster tests.

use std::time::{Duration, Instant};

use raft_store::job_table::{EnqueueOutcome, JobRequest, JobStatus, Proposal};
use raft_store::test_cluster::TestCluster;
use raft_store::{CommandResponse, Digest, Node, NodeId, Role};

pub const ELECTION: Duration = Duration::from_secs(10);

pub fn job(i: u64) -> JobRequest {
    JobRequest { digest: Digest([(i % 251) as u8; 64]), iterations: i + 1, idempotency_key: None, reuse: false }
}

/// Enqueue one job through `node` (forwarded to the leader if need be); return its id.
pub async fn enqueue(node: &Node, i: u64) -> u64 {
    match node.propose(Proposal::Enqueue { jobs: vec![job(i)] }).await {
        Ok(CommandResponse::Enqueued(outcomes)) => match outcomes.as_slice() {
            [EnqueueOutcome::Created(id)] => *id,
            other => panic!("unexpected outcome {other:?}"),
        },
        other => panic!("enqueue {i} through node {} failed: {other:?}", node.id()),
    }
}

/// After a read barrier on `node`, every id in `ids` is queued there.
pub async fn assert_visible(node: &Node, ids: &[u64]) {
    node.read_barrier().await.unwrap_or_else(|e| panic!("read barrier on node {}: {e}", node.id()));
    node.state_machine().read(|table| {
        for id in ids {
            assert!(
                matches!(table.job_status(*id), Some(JobStatus::Queued(_))),
                "job {id} not visible on node {}",
                node.id()
            );
        }
    });
}

pub async fn wait_for_coordinator_leader(cluster: &TestCluster) -> NodeId {
    let deadline = Instant::now() + ELECTION;
    loop {
        let leader = cluster.wait_for_leader(ELECTION).await;
        if cluster.node(leader).role() == Role::Coordinator {
            return leader;
        }
        assert!(Instant::now() < deadline, "the witness kept leadership");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub use raft_store::test_cluster::other_coordinator;
