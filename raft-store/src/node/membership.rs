//! Replacing a voter: the way back to three voters after one was lost with its disk.
//!
//! A node id is never reused with an empty log (openraft's FAQ: a reused id can split the
//! cluster). The replacement therefore joins under a new id, higher than every id in the
//! membership: since a replacement always removes one id and adds a higher one, the highest id
//! never goes down, and no id that has left can come back.
//!
//! On the leader: add the new node as a learner, wait until it holds the whole log (openraft's
//! `add_learner(blocking)` returns long before that), then swap the voters in one joint change,
//! guarded so that a concurrent membership change makes it fail rather than be overwritten, and
//! drop any learner an earlier, failed attempt left behind.
//!
//! The changes run in their own task: a caller that goes away (an HTTP client that hangs up)
//! must not stop a joint change half-way. If one stops half-way anyway (leadership lost between
//! its two steps), the cluster stays in the joint configuration, where old and new voters both
//! count; repeating the request that started it finishes it.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::raft::Precondition;
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};

use super::Node;
use super::leader_calls::CallError;
use super::rpc_routes::ReplaceVoter;
use crate::type_config::{NodeId, NodeInfo, Raft, RaftMetrics, TypeConfig};

/// Why a voter was not replaced.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq, Eq)]
pub enum MembershipError {
    /// Only the leader changes the membership.
    #[error("this node is not the leader; the leader is {0:?}")]
    NotLeader(Option<NodeId>),
    /// The request contradicts the membership, or another change came first. Nothing was
    /// changed, except when a change was overtaken between its two steps (the message says so).
    #[error("{0}")]
    Refused(String),
    /// The new node did not receive the whole log in time. It stays a learner, which votes in
    /// nothing; the same request may be repeated once it runs.
    #[error(
        "node {node} did not catch up within {waited_ms} ms (it holds index {matched:?} of {target}): \
         is it running at its address, with an empty data directory and the cluster secret? \
         It stays a non-voting learner; repeat the request once it runs"
    )]
    CatchUpTimedOut {
        /// The new node.
        node: NodeId,
        /// The last index it was known to hold.
        matched: Option<u64>,
        /// The index it had to reach.
        target: u64,
        /// How long the leader waited.
        waited_ms: u64,
    },
    /// openraft refused or failed the change (another change in progress, leadership lost).
    #[error("membership change failed: {0}")]
    Raft(String),
    /// No leader is known right now (an election is under way).
    #[error("no leader right now; retry shortly")]
    NoLeader,
    /// The leader could not be asked, or its answer was lost (the change may be under way:
    /// repeating the request is safe).
    #[error("could not reach the leader: {0}")]
    Unreachable(String),
}

impl From<CallError> for MembershipError {
    fn from(e: CallError) -> Self {
        MembershipError::Unreachable(e.to_string())
    }
}

/// How much longer than the leader's catch-up wait a follower waits for the leader's answer:
/// the two membership changes after the catch-up.
const FORWARDED_CHANGE_MARGIN: Duration = Duration::from_secs(30);

/// The voters after a successful replacement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replaced {
    /// The voter ids now.
    pub voters: BTreeSet<NodeId>,
}

impl Node {
    /// Replace voter `old` by the new node `new` wherever this node stands: the leader does it
    /// ([`Node::replace_voter`]); a follower asks the leader to, and waits a little longer than
    /// `catch_up` for its answer.
    pub async fn replace_member(
        &self,
        old: NodeId,
        new: NodeId,
        info: NodeInfo,
        catch_up: Duration,
    ) -> Result<Replaced, MembershipError> {
        let Some(leader) = self.parts.leadership.borrow().leader else {
            return Err(MembershipError::NoLeader);
        };
        if leader == self.id() {
            return self.replace_voter(old, new, info, catch_up).await;
        }
        let request = ReplaceVoter { old, new, info, catch_up_ms: catch_up.as_millis() as u64 };
        let timeout = catch_up + FORWARDED_CHANGE_MARGIN;
        self.call_voter::<_, Result<Replaced, MembershipError>>(leader, "replace-voter", &request, timeout).await?
    }

    /// On the leader: replace voter `old` by the new node `new` (a fresh process with an empty
    /// data directory, already running at `info.raft_addr`). Waits up to `catch_up` for the new
    /// node to hold the whole log before it becomes a voter. Safe to repeat after a failure.
    pub async fn replace_voter(
        &self,
        old: NodeId,
        new: NodeId,
        info: NodeInfo,
        catch_up: Duration,
    ) -> Result<Replaced, MembershipError> {
        let raft = &self.parts.raft;
        let metrics = self.metrics();
        if metrics.state != ServerState::Leader {
            return Err(MembershipError::NotLeader(metrics.current_leader));
        }
        // One at a time: a second replacement would decide on a membership the first is about to
        // change, and the first's learner sweep would remove the second's learner.
        let Ok(_one_at_a_time) = self.parts.replacing.try_lock() else {
            return Err(MembershipError::Refused(
                "another voter replacement is in progress on this leader; repeat this one once it has finished".into(),
            ));
        };
        if let [from, to] = metrics.membership_config.membership().get_joint_config().as_slice() {
            return finish_joint_change(raft, &metrics, from, to, old, new, catch_up).await;
        }
        check_replacement(&metrics, old, new, &info)?;
        let already_learner = metrics.membership_config.membership().get_node(&new).is_some();
        if !already_learner {
            let (raft, info) = (raft.clone(), info.clone());
            within(catch_up, async move { raft.add_learner(new, info, false).await }).await?;
        }

        // The learner must hold everything up to the leader's last entry as of now (the
        // learner entry included), not merely be "close", before it may vote.
        let target = self.metrics().last_log_index.unwrap_or(0);
        let caught_up = raft
            .wait(Some(catch_up))
            .metrics(
                |m| m.state != ServerState::Leader || matched_index(m, new).is_some_and(|index| index >= target),
                "the new node caught up or this node stopped leading",
            )
            .await;
        let metrics = self.metrics();
        if metrics.state != ServerState::Leader {
            return Err(MembershipError::NotLeader(metrics.current_leader));
        }
        if caught_up.is_err() {
            return Err(MembershipError::CatchUpTimedOut {
                node: new,
                matched: matched_index(&metrics, new),
                target,
                waited_ms: catch_up.as_millis() as u64,
            });
        }

        check_replacement(&metrics, old, new, &info)?;
        let voters: BTreeSet<NodeId> =
            metrics.membership_config.membership().voter_ids().filter(|id| *id != old).chain([new]).collect();
        change_voters(raft, &metrics, voters.clone(), catch_up).await?;
        tracing::info!(removed = old, added = new, ?voters, "replaced a voter");
        Ok(Replaced { voters })
    }
}

/// The membership is joint: an earlier change stopped between its two steps. Finish it if it is
/// the one this request asks for; else say which request would.
async fn finish_joint_change(
    raft: &Raft,
    metrics: &RaftMetrics,
    from: &BTreeSet<NodeId>,
    to: &BTreeSet<NodeId>,
    old: NodeId,
    new: NodeId,
    timeout: Duration,
) -> Result<Replaced, MembershipError> {
    let asked: BTreeSet<NodeId> = from.iter().copied().filter(|id| *id != old).chain([new]).collect();
    if !from.contains(&old) || *to != asked {
        return Err(MembershipError::Refused(format!(
            "a membership change stopped half-way, from voters {from:?} to {to:?}: repeat the request that \
             started it to finish it"
        )));
    }
    // From the joint configuration of `from` and `to`, changing to `to` is one step: openraft
    // bridges c1c2 to c2 directly.
    change_voters(raft, metrics, to.clone(), timeout).await?;
    tracing::info!(removed = old, added = new, voters = ?to, "finished a voter replacement that had stopped half-way");
    Ok(Replaced { voters: to.clone() })
}

/// Make `voters` the voters, if the membership is still the one in `metrics`; then drop every
/// learner. Tandem keeps none, so any is left from a replacement that failed (a wrong address,
/// or an id given up on), and the leader would otherwise replicate to it and report its lag
/// forever.
async fn change_voters(
    raft: &Raft,
    metrics: &RaftMetrics,
    voters: BTreeSet<NodeId>,
    timeout: Duration,
) -> Result<(), MembershipError> {
    let based_on = Precondition::LastMembershipLogId { last_membership_log_id: *metrics.membership_config.log_id() };
    let raft = raft.clone();
    within(timeout, async move {
        raft.change_membership_if(voters, false, [based_on]).await?;
        let learners: BTreeSet<NodeId> = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow_watched();
            metrics.membership_config.membership().learner_ids().collect()
        };
        if !learners.is_empty() {
            tracing::info!(?learners, "removing learners left by an earlier replacement");
            raft.change_membership(ChangeMembers::RemoveNodes(learners), false).await?;
        }
        Ok(())
    })
    .await
}

/// The last log index the leader knows `id` holds.
fn matched_index(metrics: &RaftMetrics, id: NodeId) -> Option<u64> {
    metrics.replication.as_ref()?.get(&id).cloned().flatten().map(|log_id| log_id.index)
}

/// Everything that can be said against the replacement before touching the membership.
/// The caller has checked that this node leads.
fn check_replacement(metrics: &RaftMetrics, old: NodeId, new: NodeId, info: &NodeInfo) -> Result<(), MembershipError> {
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let refuse = |why: String| Err(MembershipError::Refused(why));
    // Another change is half-way (it may have started while this one waited for its node to
    // catch up): the voters of a joint membership are both sets together, and a swap computed
    // from them would bring back the voter that change removes.
    if let [from, to] = membership.get_joint_config().as_slice() {
        return refuse(format!(
            "another membership change is under way, from voters {from:?} to {to:?}: look at the voters again"
        ));
    }
    let Some(old_info) = membership.get_node(&old).filter(|_| voters.contains(&old)) else {
        return refuse(format!("node {old} is not a voter (voters: {voters:?})"));
    };
    if old == metrics.id {
        return refuse(format!("node {old} leads: hand leadership over first (POST /admin/failover)"));
    }
    if voters.contains(&new) {
        return refuse(format!("node {new} is already a voter"));
    }
    if old_info.role != info.role {
        return refuse(format!("node {old} is a {} and cannot be replaced by a {}", old_info.role, info.role));
    }
    if info.raft_addr.is_empty() {
        return refuse(format!("node {new} needs an address"));
    }
    match membership.get_node(&new) {
        // A learner from an earlier attempt at this same replacement: carry on with it.
        Some(learner) if learner == info => Ok(()),
        Some(learner) => {
            refuse(format!("node {new} is already a learner at {}, not at {}", learner.raft_addr, info.raft_addr))
        }
        None => {
            let highest = membership.nodes().map(|(id, _)| *id).max().unwrap_or(0);
            if new <= highest {
                return refuse(format!(
                    "node id {new} may have been used before: a replacement takes a new id, higher than \
                     every id in the membership (the highest is {highest})"
                ));
            }
            Ok(())
        }
    }
}

/// Run membership writes in their own task, so that nothing the caller does (dropping this
/// future) can stop them half-way, and wait up to `timeout` for them: they cannot commit
/// without a majority.
async fn within<T: Send + 'static>(
    timeout: Duration,
    writes: impl Future<Output = Result<T, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>> + Send + 'static,
) -> Result<T, MembershipError> {
    match tokio::time::timeout(timeout, tokio::spawn(writes)).await {
        Ok(Ok(Ok(done))) => Ok(done),
        Ok(Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))))) => {
            Err(MembershipError::NotLeader(f.leader_id))
        }
        // Before the first step nothing has changed; before the second, the joint membership
        // stays, and repeating the request that started it finishes it.
        Ok(Ok(Err(RaftError::APIError(ClientWriteError::PreconditionFailed(e))))) => {
            Err(MembershipError::Refused(format!(
                "another membership change came first ({e}); look at the voters again (if they are joint, \
                 repeat the request that started the change to finish it)"
            )))
        }
        Ok(Ok(Err(other))) => Err(MembershipError::Raft(other.to_string())),
        Ok(Err(failed)) => Err(MembershipError::Raft(format!("the membership change task failed: {failed}"))),
        Err(_) => Err(MembershipError::Raft(format!(
            "not committed within {} ms: are a majority of the voters up? (it may still commit)",
            timeout.as_millis()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_cluster::{
        COORDINATOR_1, COORDINATOR_2, TestCluster, WITNESS, other_coordinator, stop_change_half_way,
    };
    use crate::type_config::Role;

    /// The swap is guarded by the membership it was decided on: a change decided before another
    /// change committed is refused, instead of undoing that change. (Two replacements started
    /// together would otherwise both pass their checks, and the second would write voters
    /// computed from a membership that no longer exists.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_decided_on_an_older_membership_is_refused() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let mut cluster = TestCluster::start(dir.path(), |_| {}).await;
        let node = settled_leader(&cluster).await;
        let decided_on = node.metrics();
        // Another membership change commits in between: a learner joins.
        node.parts
            .raft
            .add_learner(9, NodeInfo::at(Role::Coordinator, "127.0.0.1:9".to_string()), false)
            .await
            .expect("add");

        let voters: BTreeSet<NodeId> = [COORDINATOR_1, COORDINATOR_2].into();
        let outcome = change_voters(&node.parts.raft, &decided_on, voters, Duration::from_secs(10)).await;
        assert!(
            matches!(&outcome, Err(MembershipError::Refused(why)) if why.contains("another membership change came first")),
            "a change decided on the older membership went ahead: {outcome:?}"
        );
        let now = node.metrics();
        let voters_now: BTreeSet<NodeId> = now.membership_config.membership().voter_ids().collect();
        assert_eq!(voters_now, [COORDINATOR_1, COORDINATOR_2, WITNESS].into(), "the voters are unchanged");
        assert!(now.membership_config.membership().get_node(&9).is_some(), "the learner that came first stays");
        cluster.shutdown().await;
    }

    /// A replacement re-checks the membership after its node caught up. If another change went
    /// joint meanwhile, it is refused: the joint voters are both sets together, and "all voters
    /// but the old one, plus the new one" computed from them would restore a removed voter.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replacement_that_finds_another_change_half_way_is_refused() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let mut cluster = TestCluster::start(dir.path(), |_| {}).await;
        let node = settled_leader(&cluster).await;
        let leader = node.id();
        let learner = NodeInfo::at(Role::Witness, "127.0.0.1:9".to_string());
        node.parts.raft.add_learner(9, learner, false).await.expect("add");
        // Another replacement (the witness by node 9) stopped between its two steps.
        let from: BTreeSet<NodeId> = [COORDINATOR_1, COORDINATOR_2, WITNESS].into();
        let to: BTreeSet<NodeId> = [COORDINATOR_1, COORDINATOR_2, 9].into();
        stop_change_half_way(&node, from, to).await;

        let other = other_coordinator(leader);
        let outcome =
            check_replacement(&node.metrics(), other, 10, &NodeInfo::at(Role::Coordinator, "127.0.0.1:10".to_string()));
        assert!(
            matches!(&outcome, Err(MembershipError::Refused(why)) if why.contains("under way")),
            "a swap computed from a joint membership was allowed: {outcome:?}"
        );
        cluster.shutdown().await;
    }

    /// A second replacement while one is under way is refused at once, changing nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_replacement_while_one_is_under_way_is_refused() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let mut cluster = TestCluster::start(dir.path(), |_| {}).await;
        let node = settled_leader(&cluster).await;
        let other = other_coordinator(node.id());
        // Nothing runs at this address: the first replacement waits for a node that never catches up.
        let nobody = NodeInfo::at(Role::Coordinator, "127.0.0.1:9".to_string());
        let first = tokio::spawn({
            let node = node.clone();
            async move { node.replace_voter(other, 4, nobody, Duration::from_secs(3)).await }
        });
        // It holds the replacement once its learner is in the membership.
        node.parts
            .raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.membership_config.membership().get_node(&4).is_some(), "the first replacement's learner")
            .await
            .expect("the learner joins");

        let second = node
            .replace_voter(WITNESS, 5, NodeInfo::at(Role::Witness, "127.0.0.1:10".to_string()), Duration::from_secs(3))
            .await;
        assert!(
            matches!(&second, Err(MembershipError::Refused(why)) if why.contains("in progress")),
            "a second replacement went ahead while one was under way: {second:?}"
        );
        let membership = node.metrics().membership_config.membership().clone();
        assert!(membership.get_node(&5).is_none(), "the refused replacement added nothing");
        let first = first.await.expect("the first replacement's task");
        assert!(matches!(first, Err(MembershipError::CatchUpTimedOut { node: 4, .. })), "{first:?}");
        cluster.shutdown().await;
    }

    /// The leader of a fresh cluster, once it has committed an entry of its own (before that,
    /// openraft refuses membership changes: the initial membership is not yet committed).
    async fn settled_leader(cluster: &TestCluster) -> Node {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let node = cluster.node(leader).clone();
        node.propose(crate::job_table::Proposal::ExpireLeases).await.expect("a first write commits");
        node
    }
}
