//! Replacing a voter: the way back to three voters after one was lost with its disk.
//!
//! A node id is never reused with an empty log (openraft's FAQ: a reused id can split the
//! cluster). The replacement therefore joins under a new id, higher than every id in the
//! membership: since a replacement always removes one id and adds a higher one, the highest id
//! never goes down, and no id that has left can come back.
//!
//! On the leader: add the new node as a learner, wait until it holds the whole log (openraft's
//! `add_learner(blocking)` returns long before that), then swap the voters in one joint change,
//! guarded so that a concurrent membership change makes it fail rather than be overwritten.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ServerState;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::raft::Precondition;
use serde::{Deserialize, Serialize};

use super::Node;
use crate::type_config::{NodeId, NodeInfo, RaftMetrics, TypeConfig};

/// Why a voter was not replaced.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq, Eq)]
pub enum MembershipError {
    /// Only the leader changes the membership.
    #[error("this node is not the leader; the leader is {0:?}")]
    NotLeader(Option<NodeId>),
    /// The request contradicts the membership (nothing was changed).
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
}

/// The voters after a successful replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    /// The voter ids now.
    pub voters: BTreeSet<NodeId>,
}

impl Node {
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
        let raft = &self.inner.raft;
        let metrics = self.metrics();
        check_replacement(&metrics, old, new, &info)?;
        let already_learner = metrics.membership_config.membership().get_node(&new).is_some();
        if !already_learner {
            within(catch_up, raft.add_learner(new, info.clone(), false)).await?;
        }

        // The learner must hold everything up to the leader's last entry as of now (the
        // learner entry included), not merely be "close", before it may vote.
        let target = self.metrics().last_log_index.unwrap_or(0);
        let caught_up = raft
            .wait(Some(catch_up))
            .metrics(|m| matched_index(m, new).is_some_and(|index| index >= target), "the new node caught up")
            .await;
        if caught_up.is_err() {
            return Err(MembershipError::CatchUpTimedOut {
                node: new,
                matched: matched_index(&self.metrics(), new),
                target,
                waited_ms: catch_up.as_millis() as u64,
            });
        }

        let metrics = self.metrics();
        check_replacement(&metrics, old, new, &info)?;
        let voters: BTreeSet<NodeId> =
            metrics.membership_config.membership().voter_ids().filter(|id| *id != old).chain([new]).collect();
        let based_on =
            Precondition::LastMembershipLogId { last_membership_log_id: *metrics.membership_config.log_id() };
        within(catch_up, raft.change_membership_if(voters.clone(), false, [based_on])).await?;
        tracing::info!(removed = old, added = new, ?voters, "replaced a voter");
        Ok(Replaced { voters })
    }
}

/// The last log index the leader knows `id` holds.
fn matched_index(metrics: &RaftMetrics, id: NodeId) -> Option<u64> {
    metrics.replication.as_ref()?.get(&id).cloned().flatten().map(|log_id| log_id.index)
}

/// Everything that can be said against the replacement before touching the membership.
fn check_replacement(metrics: &RaftMetrics, old: NodeId, new: NodeId, info: &NodeInfo) -> Result<(), MembershipError> {
    if metrics.state != ServerState::Leader {
        return Err(MembershipError::NotLeader(metrics.current_leader));
    }
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let refuse = |why: String| Err(MembershipError::Refused(why));
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

/// Run a membership write, giving up after `timeout` (it cannot commit without a majority).
async fn within<T>(
    timeout: Duration,
    write: impl std::future::Future<Output = Result<T, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>>,
) -> Result<T, MembershipError> {
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(MembershipError::NotLeader(f.leader_id))
        }
        Ok(Err(other)) => Err(MembershipError::Raft(other.to_string())),
        Err(_) => Err(MembershipError::Raft(format!(
            "not committed within {} ms: are a majority of the voters up? (it may still commit)",
            timeout.as_millis()
        ))),
    }
}
