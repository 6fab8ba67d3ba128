//! Replacing a voter lost with its disk by a new node under a new id, in-process: the cluster
//! is back to surviving the loss of any one voter, and requests that could do harm are refused
//! without changing the membership.

use std::collections::BTreeSet;
use std::time::Duration;

use raft_store::test_cluster::{COORDINATOR_1, COORDINATOR_2, TestCluster, WITNESS, stop_change_half_way};
use raft_store::{MembershipError, Node, NodeId, NodeInfo, Role};
use tempfile::TempDir;

mod common;

use common::*;

const CATCH_UP: Duration = Duration::from_secs(20);

/// Enqueue jobs `range` through `node`; return their ids.
async fn enqueue_all(node: &Node, range: std::ops::Range<u64>) -> Vec<u64> {
    let mut ids = Vec::new();
    for i in range {
        ids.push(enqueue(node, i).await);
    }
    ids
}

fn voters(node: &Node) -> BTreeSet<NodeId> {
    node.metrics().membership_config.membership().voter_ids().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_coordinator_is_replaced_under_a_new_id_and_the_cluster_again_survives_any_one_loss() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = TestCluster::start(dir.path(), |_| {}).await;
    let leader = wait_for_coordinator_leader(&cluster).await;
    let lost = other_coordinator(leader);
    let mut ids = enqueue_all(cluster.node(leader), 0..30).await;

    // The follower coordinator dies with its disk; the other two carry on.
    cluster.kill(lost).await;
    cluster.wipe(lost);
    ids.extend(enqueue_all(cluster.node(leader), 30..60).await);

    // Its successor runs on the same address, empty, under a new id.
    let info = cluster.start_replacement(4, lost, Some(cluster.addr(lost))).await;
    let replaced = cluster.node(leader).replace_voter(lost, 4, info, CATCH_UP).await.expect("replace");
    let expected: BTreeSet<NodeId> = [leader, WITNESS, 4].into();
    assert_eq!(replaced.voters, expected);
    assert_eq!(voters(cluster.node(leader)), expected);
    assert_visible(cluster.node(4), &ids).await;

    // Node 4 votes: with the witness gone, the leader commits only with it.
    cluster.kill(WITNESS).await;
    ids.extend(enqueue_all(cluster.node(4), 60..70).await);
    assert_visible(cluster.node(leader), &ids).await;

    // And node 4 can lead: the old leader dies, the witness comes back.
    cluster.restart(WITNESS).await;
    cluster.kill(leader).await;
    let new_leader = wait_for_coordinator_leader(&cluster).await;
    assert_eq!(new_leader, 4, "the only coordinator left must lead");
    ids.extend(enqueue_all(cluster.node(4), 70..80).await);
    assert_visible(cluster.node(WITNESS), &ids).await;
    assert_eq!(voters(cluster.node(4)), expected);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_witness_is_replaced_on_a_new_address_and_counts_in_the_quorum() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = TestCluster::start(dir.path(), |_| {}).await;
    let leader = wait_for_coordinator_leader(&cluster).await;
    let mut ids = enqueue_all(cluster.node(leader), 0..20).await;
    cluster.kill(WITNESS).await;
    cluster.wipe(WITNESS);

    let info = cluster.start_replacement(4, WITNESS, None).await;
    assert_eq!(info.role, Role::Witness);
    let replaced = cluster.node(leader).replace_voter(WITNESS, 4, info, CATCH_UP).await.expect("replace");
    assert_eq!(replaced.voters, [COORDINATOR_1, COORDINATOR_2, 4].into());

    // The other coordinator dies: the leader and the new witness are a majority.
    cluster.kill(other_coordinator(leader)).await;
    ids.extend(enqueue_all(cluster.node(leader), 20..30).await);
    assert_visible(cluster.node(4), &ids).await;
    cluster.shutdown().await;
}

fn coordinator_at(addr: &str) -> NodeInfo {
    NodeInfo::at(Role::Coordinator, addr)
}

fn witness_at(addr: &str) -> NodeInfo {
    NodeInfo::at(Role::Witness, addr)
}

fn assert_refused<T: std::fmt::Debug>(result: Result<T, MembershipError>, needle: &str) {
    match result {
        Err(MembershipError::Refused(why)) => assert!(why.contains(needle), "refused, but for {why:?}, not {needle:?}"),
        other => panic!("expected a refusal ({needle}), got {other:?}"),
    }
}

/// Every node in the membership (voters and learners).
fn members(node: &Node) -> BTreeSet<NodeId> {
    node.metrics().membership_config.membership().nodes().map(|(id, _)| *id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacements_that_could_do_harm_are_refused_and_change_nothing() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = TestCluster::start(dir.path(), |_| {}).await;
    let leader = wait_for_coordinator_leader(&cluster).await;
    let follower = other_coordinator(leader);
    let node = cluster.node(leader).clone();
    let nowhere = coordinator_at("127.0.0.1:9");

    assert_refused(node.replace_voter(follower, WITNESS, nowhere.clone(), CATCH_UP).await, "already a voter");
    assert_refused(node.replace_voter(9, 4, nowhere.clone(), CATCH_UP).await, "is not a voter");
    assert_refused(node.replace_voter(leader, 4, nowhere.clone(), CATCH_UP).await, "hand leadership over first");
    assert_refused(
        node.replace_voter(follower, 4, witness_at("127.0.0.1:9"), CATCH_UP).await,
        "is a coordinator and cannot be replaced by a witness",
    );
    assert_refused(node.replace_voter(follower, 4, coordinator_at(""), CATCH_UP).await, "needs an address");
    match cluster.node(follower).replace_voter(WITNESS, 4, witness_at("127.0.0.1:9"), CATCH_UP).await {
        Err(MembershipError::NotLeader(Some(known))) => assert_eq!(known, leader),
        other => panic!("a follower must name the leader, got {other:?}"),
    }
    let all: BTreeSet<NodeId> = [COORDINATOR_1, COORDINATOR_2, WITNESS].into();
    assert_eq!(members(&node), all, "a refused request added or removed a node");
    assert_eq!(voters(&node), all);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_cannot_catch_up_stays_a_learner_and_the_request_can_be_repeated() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = TestCluster::start(dir.path(), |_| {}).await;
    let leader = wait_for_coordinator_leader(&cluster).await;
    let lost = other_coordinator(leader);
    let ids = enqueue_all(cluster.node(leader), 0..20).await;
    cluster.kill(lost).await;
    cluster.wipe(lost);
    let node = cluster.node(leader).clone();

    // A first attempt names a wrong address: nothing ever answers there.
    let free = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    match node.replace_voter(lost, 4, coordinator_at(&free().to_string()), Duration::from_secs(1)).await {
        Err(MembershipError::CatchUpTimedOut { node: 4, matched: None, .. }) => {}
        other => panic!("expected a catch-up timeout, got {other:?}"),
    }
    // A second one names the new node before it runs.
    let addr = free();
    let info = coordinator_at(&addr.to_string());
    match node.replace_voter(lost, 5, info.clone(), Duration::from_secs(1)).await {
        Err(MembershipError::CatchUpTimedOut { node: 5, matched: None, .. }) => {}
        other => panic!("expected a catch-up timeout, got {other:?}"),
    }
    let before: BTreeSet<NodeId> = [COORDINATOR_1, COORDINATOR_2, WITNESS].into();
    assert_eq!(voters(&node), before, "the voters changed although no new node caught up");
    assert_eq!(members(&node), [COORDINATOR_1, COORDINATOR_2, WITNESS, 4, 5].into(), "both stay learners");

    // Once it runs, the same request completes, and drops the learner of the wrong address.
    let started = cluster.start_replacement(5, lost, Some(addr)).await;
    assert_eq!(started, info);
    let replaced = node.replace_voter(lost, 5, info, CATCH_UP).await.expect("repeat the replacement");
    let after: BTreeSet<NodeId> = [leader, WITNESS, 5].into();
    assert_eq!(replaced.voters, after);
    assert_eq!(members(&node), after);
    assert_visible(cluster.node(5), &ids).await;

    // The id that left can never come back, not even for another role.
    assert_refused(node.replace_voter(WITNESS, lost, witness_at("127.0.0.1:9"), CATCH_UP).await, "may have been used");
    assert_refused(node.replace_voter(WITNESS, 3, witness_at("127.0.0.1:9"), CATCH_UP).await, "already a voter");
    assert_refused(node.replace_voter(WITNESS, 4, witness_at("127.0.0.1:9"), CATCH_UP).await, "may have been used");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_stopped_half_way_is_finished_by_repeating_it() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = TestCluster::start(dir.path(), |_| {}).await;
    let leader = wait_for_coordinator_leader(&cluster).await;
    let lost = other_coordinator(leader);
    let mut ids = enqueue_all(cluster.node(leader), 0..20).await;
    cluster.kill(lost).await;
    cluster.wipe(lost);
    let info = cluster.start_replacement(4, lost, Some(cluster.addr(lost))).await;
    let node = cluster.node(leader).clone();
    node.raft().add_learner(4, info.clone(), true).await.expect("add the learner");

    // What a joint change leaves when leadership is lost between its two steps: old and new
    // voter sets both count.
    let old: BTreeSet<NodeId> = [COORDINATOR_1, COORDINATOR_2, WITNESS].into();
    let new: BTreeSet<NodeId> = [leader, WITNESS, 4].into();
    stop_change_half_way(&node, old.clone(), new.clone()).await;
    let configs = || node.metrics().membership_config.membership().get_joint_config().clone();
    assert_eq!(configs(), vec![old, new.clone()]);

    // Another replacement is refused, and says what would finish the change.
    assert_refused(node.replace_voter(WITNESS, 5, witness_at("127.0.0.1:9"), CATCH_UP).await, "stopped half-way");
    // Repeating the request that started it does.
    let replaced = node.replace_voter(lost, 4, info, CATCH_UP).await.expect("finish the replacement");
    assert_eq!(replaced.voters, new);
    assert_eq!(configs(), vec![new.clone()]);
    assert_eq!(members(&node), new);
    // No longer joint: with the witness down, the leader and node 4 are a majority.
    cluster.kill(WITNESS).await;
    ids.extend(enqueue_all(cluster.node(4), 20..30).await);
    assert_visible(cluster.node(leader), &ids).await;
    cluster.shutdown().await;
}
