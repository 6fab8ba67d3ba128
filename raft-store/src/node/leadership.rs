//! Who leads, and handing leadership over: an operator's failover, and the witness's hand-back
//! (a witness never keeps leadership: whenever it leads, it hands leadership to a coordinator
//! that is caught up and recently heard from).
//!
//! Which coordinator may take over is decided by [`eligible_target`], a pure function of one
//! [`NodeView`] (the freshness of each peer was measured when the view was read).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use tokio::time::Instant;

use super::Node;
use super::leader_calls::CallError;
use super::views::NodeView;
use crate::type_config::{NodeId, Role};

/// The most entries a transfer target may trail by once the leader stopped waiting for it.
const TRANSFER_MAX_LAG: u64 = 64;

/// Who leads, as this node last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leadership {
    /// The leader, if one is known.
    pub leader: Option<NodeId>,
    /// The term.
    pub term: u64,
    /// Whether this node is the leader.
    pub is_self: bool,
}

/// Why a leadership transfer was refused.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq, Eq)]
pub enum TransferError {
    /// Only the leader can hand leadership over (and leadership moved before it could).
    #[error("this node is not the leader")]
    NotLeader,
    /// No leader is known right now (an election is under way).
    #[error("no leader right now; retry shortly")]
    NoLeader,
    /// The requested target is not a coordinator, or no coordinator is eligible.
    #[error("{0}")]
    NoEligibleTarget(String),
    /// A coordinator that may lead is not ready to right now: it trails the leader's log, or
    /// has not answered recently (a busy or overloaded host). Retrying shortly may succeed.
    #[error("{0}")]
    NotReady(String),
    /// The target did not take over in time (it may still; the cluster elects a leader anyway).
    #[error("node {0} did not take over within the deadline")]
    TimedOut(NodeId),
    /// The leader could not be asked, or its answer was lost.
    #[error("could not reach the leader: {0}")]
    Unreachable(String),
    /// The local Raft has stopped.
    #[error("raft has stopped: {0}")]
    Stopped(String),
}

impl From<CallError> for TransferError {
    fn from(e: CallError) -> Self {
        TransferError::Unreachable(e.to_string())
    }
}

/// What a failover did.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failover {
    /// The leader that handed over.
    pub previous_leader: NodeId,
    /// The leader now.
    pub leader: NodeId,
}

impl Node {
    /// Hand leadership to `to`, or to any eligible coordinator when `None`, wherever this node
    /// stands: the leader transfers; a follower asks the leader to, within `timeout`.
    pub async fn failover(&self, to: Option<NodeId>, timeout: Duration) -> Result<Failover, TransferError> {
        let Some(leader) = self.parts.leadership.borrow().leader else {
            return Err(TransferError::NoLeader);
        };
        if leader == self.id() {
            return self.failover_local(to).await;
        }
        self.call_voter::<_, Result<Failover, TransferError>>(leader, "failover", &to, timeout).await?
    }

    /// [`Node::failover`] on the leader itself.
    pub(super) async fn failover_local(&self, to: Option<NodeId>) -> Result<Failover, TransferError> {
        let previous_leader = self.id();
        self.transfer_leadership(to).await.map(|leader| Failover { previous_leader, leader })
    }

    /// Hand leadership to `to`, or to any eligible coordinator when `None`. Only a coordinator
    /// that is fully caught up and was heard from within the election timeout is eligible: a
    /// transfer has no abort, and one to a lagging or dead node leaves the cluster leaderless
    /// until the next election. Returns the new leader.
    ///
    /// A transfer can fail to start: the request to the target is lost, or the target did not
    /// flush the leader's log within its wait (`election_min`) and ignored it. The leader then
    /// sits in transfer mode, taking no writes, until an election. So while this node still
    /// leads in the same term it asks the same target again every half `election_min`; if it
    /// leads again after an election, it chooses afresh. It gives up after four `election_max`.
    pub async fn transfer_leadership(&self, to: Option<NodeId>) -> Result<NodeId, TransferError> {
        let timing = self.parts.config.timing;
        let reask = Duration::from_millis((timing.election_min_ms / 2).max(10));
        let deadline = Instant::now() + Duration::from_millis(4 * timing.election_max_ms);
        let mut leadership = self.leadership();
        // The transfer under way: the term it was asked in, and its target.
        let mut asked: Option<(u64, NodeId)> = None;
        loop {
            let now = *leadership.borrow_and_update();
            if let Some((_, target)) = asked {
                if now.leader == Some(target) {
                    return Ok(target);
                }
                if Instant::now() >= deadline {
                    return Err(TransferError::TimedOut(target));
                }
            }
            if now.is_self {
                let target = match asked {
                    Some((term, target)) if term == now.term => {
                        tracing::info!(to = target, "the target has not taken over yet: asking again");
                        Some(target)
                    }
                    None => Some(self.choose_target(to).await?),
                    Some(_) => match self.choose_target(to).await {
                        Ok(target) => Some(target),
                        // Leadership moved while choosing: wait to see where it went.
                        Err(TransferError::NotLeader) => None,
                        Err(e) => return Err(e),
                    },
                };
                if let Some(target) = target {
                    self.parts
                        .raft
                        .trigger()
                        .transfer_leader(target)
                        .await
                        .map_err(|e| TransferError::Stopped(e.to_string()))?;
                    asked = Some((now.term, target));
                }
            } else if asked.is_none() {
                return Err(TransferError::NotLeader);
            }
            // Wait for leadership to change, or for the time to ask again.
            let wake = (Instant::now() + reask).min(deadline);
            if let Ok(Err(_)) = tokio::time::timeout_at(wake, leadership.changed()).await {
                return Err(TransferError::Stopped("the node is shutting down".into()));
            }
        }
    }

    /// The target of a transfer: `to` or the first eligible coordinator (see [`eligible_target`]).
    /// Under load the target trails by the entries in flight, and a busy host answers late: it
    /// is given `election_min` to match the leader's log exactly, then a small lag is accepted
    /// (it closes it while the transfer starts), until `2 × election_max` have passed.
    async fn choose_target(&self, to: Option<NodeId>) -> Result<NodeId, TransferError> {
        let timing = self.parts.config.timing;
        let fresh = Duration::from_millis(timing.election_min_ms);
        let started = Instant::now();
        let patience = started + fresh;
        let deadline = started + Duration::from_millis(2 * timing.election_max_ms);
        loop {
            let max_lag = if Instant::now() < patience { 0 } else { TRANSFER_MAX_LAG };
            match eligible_target(&self.view(), to, fresh, max_lag) {
                Err(TransferError::NotReady(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                decided => return decided,
            }
        }
    }
}

/// The coordinator to hand leadership to: `wanted` if eligible, else the first eligible one.
/// Eligible: a coordinator that votes, trails the leader's log by at most `max_lag` entries,
/// and answered the leader less than `fresh` before the view was read.
pub(crate) fn eligible_target(
    view: &NodeView,
    wanted: Option<NodeId>,
    fresh: Duration,
    max_lag: u64,
) -> Result<NodeId, TransferError> {
    if !view.is_leader() {
        return Err(TransferError::NotLeader);
    }
    let last_log = view.status.last_log_index;
    // Why `id` may not take over: for good (`NoEligibleTarget`), or not yet (`NotReady`).
    let verdict = |id: NodeId| -> Result<(), TransferError> {
        let never = TransferError::NoEligibleTarget;
        let member = view.member(id).ok_or_else(|| never(format!("node {id} is not a member")))?;
        if id == view.status.id {
            return Err(never(format!("node {id} already leads")));
        }
        if member.info.role != Role::Coordinator {
            return Err(never(format!("node {id} is a {}: only a coordinator may lead", member.info.role)));
        }
        if !member.voter {
            return Err(never(format!("node {id} is not a voter")));
        }
        let peer = view.peers.get(&id);
        let matched = peer.and_then(|peer| peer.matched_index);
        let lag = last_log.unwrap_or(0).saturating_sub(matched.unwrap_or(0));
        if matched.is_none() && last_log.is_some() || lag > max_lag {
            return Err(TransferError::NotReady(format!(
                "node {id} is not caught up (has {matched:?} of {last_log:?})"
            )));
        }
        if peer.and_then(|peer| peer.last_contact).is_none_or(|age| age >= fresh) {
            return Err(TransferError::NotReady(format!("node {id} has not answered recently")));
        }
        Ok(())
    };
    match wanted {
        Some(id) => verdict(id).map(|()| id),
        None => {
            let (mut reasons, mut not_ready) = (Vec::new(), false);
            for member in &view.members {
                match verdict(member.id) {
                    Ok(()) => return Ok(member.id),
                    Err(e) => {
                        not_ready |= matches!(e, TransferError::NotReady(_));
                        reasons.push(e.to_string());
                    }
                }
            }
            let reasons = reasons.join("; ");
            Err(match not_ready {
                true => TransferError::NotReady(format!("no coordinator ready to take over: {reasons}")),
                false => TransferError::NoEligibleTarget(format!("no eligible coordinator: {reasons}")),
            })
        }
    }
}

/// A witness that leads transfers leadership to a caught-up coordinator. If none is eligible it
/// keeps leading (so the cluster stays live) and tries again on the next tick.
pub(super) async fn hand_back_leadership(node: Node) {
    match node.transfer_leadership(None).await {
        Ok(target) => tracing::info!(witness = node.id(), to = target, "witness handed leadership back"),
        Err(TransferError::NotLeader) => {}
        Err(e) => {
            tracing::debug!(witness = node.id(), error = %e, "witness keeps leadership for now")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::node::views::{Member, PeerReplication, VoterState, VoterStatus};
    use crate::type_config::NodeInfo;

    const FRESH: Duration = Duration::from_millis(200);

    /// Node 1 (a coordinator) leads at log index 100; node 2 is the other coordinator, node 3
    /// the witness, node 4 a coordinator learner. `peers` says what the leader saw of each.
    fn view(state: VoterState, peers: &[(NodeId, Option<u64>, Option<u64>)]) -> NodeView {
        let member = |id, role, voter| Member { id, info: NodeInfo::at(role, format!("127.0.0.1:{id}")), voter };
        NodeView {
            status: VoterStatus {
                id: 1,
                state,
                term: 3,
                leader: Some(1),
                last_log_index: Some(100),
                applied_index: Some(100),
                reuse: true,
            },
            members: vec![
                member(1, Role::Coordinator, true),
                member(2, Role::Coordinator, true),
                member(3, Role::Witness, true),
                member(4, Role::Coordinator, false),
            ],
            peers: peers
                .iter()
                .map(|&(id, matched, heard_ms_ago)| {
                    let last_contact = heard_ms_ago.map(Duration::from_millis);
                    (id, PeerReplication { matched_index: matched, last_contact })
                })
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn only_a_caught_up_recently_heard_coordinator_voter_may_take_over() {
        let caught_up = [(2, Some(100), Some(10)), (3, Some(100), Some(10)), (4, Some(100), Some(10))];
        // (case, view, wanted, max lag, expected target or the words the refusal must hold)
        type Case = (&'static str, NodeView, Option<NodeId>, u64, Result<NodeId, &'static str>);
        let cases: Vec<Case> = vec![
            ("the other coordinator", view(VoterState::Leader, &caught_up), None, 0, Ok(2)),
            ("asked for by id", view(VoterState::Leader, &caught_up), Some(2), 0, Ok(2)),
            ("not leading", view(VoterState::Follower, &caught_up), None, 0, Err("not the leader")),
            ("the witness", view(VoterState::Leader, &caught_up), Some(3), 0, Err("only a coordinator may lead")),
            ("a learner", view(VoterState::Leader, &caught_up), Some(4), 0, Err("not a voter")),
            ("itself", view(VoterState::Leader, &caught_up), Some(1), 0, Err("already leads")),
            ("a stranger", view(VoterState::Leader, &caught_up), Some(9), 0, Err("not a member")),
            (
                "one entry behind",
                view(VoterState::Leader, &[(2, Some(99), Some(10)), (3, Some(100), Some(10))]),
                None,
                0,
                Err("not caught up"),
            ),
            (
                "behind, within the accepted lag",
                view(VoterState::Leader, &[(2, Some(99), Some(10)), (3, Some(100), Some(10))]),
                None,
                TRANSFER_MAX_LAG,
                Ok(2),
            ),
            (
                "nothing matched yet",
                view(VoterState::Leader, &[(2, None, Some(10)), (3, Some(100), Some(10))]),
                None,
                TRANSFER_MAX_LAG,
                Err("not caught up"),
            ),
            (
                "heard from exactly the freshness limit ago",
                view(VoterState::Leader, &[(2, Some(100), Some(200)), (3, Some(100), Some(10))]),
                None,
                0,
                Err("has not answered recently"),
            ),
            (
                "heard from just within the limit",
                view(VoterState::Leader, &[(2, Some(100), Some(199)), (3, Some(100), Some(10))]),
                None,
                0,
                Ok(2),
            ),
            (
                "never heard from",
                view(VoterState::Leader, &[(2, Some(100), None), (3, Some(100), Some(10))]),
                None,
                0,
                Err("has not answered recently"),
            ),
        ];
        for (case, view, wanted, max_lag, expected) in cases {
            let got = eligible_target(&view, wanted, FRESH, max_lag);
            match (expected, got) {
                (Ok(want), Ok(got)) => assert_eq!(got, want, "{case}"),
                (Err(words), Err(e)) => {
                    assert!(e.to_string().contains(words), "{case}: {e} lacks {words:?}");
                    // A lag or a late answer may pass by itself: the caller may wait and retry.
                    let may_pass = words.contains("caught up") || words.contains("answered recently");
                    assert_eq!(matches!(e, TransferError::NotReady(_)), may_pass, "{case}: {e:?}");
                }
                (expected, got) => panic!("{case}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn with_no_target_named_every_refusal_is_listed() {
        let view = view(VoterState::Leader, &[(2, Some(50), Some(10)), (3, Some(100), Some(10))]);
        let refusal = eligible_target(&view, None, FRESH, 0).expect_err("node 2 lags, node 3 is the witness");
        let text = refusal.to_string();
        for words in ["node 1 already leads", "node 2 is not caught up", "node 3 is a witness", "node 4 is not a voter"]
        {
            assert!(text.contains(words), "{text} lacks {words:?}");
        }
        assert!(matches!(refusal, TransferError::NotReady(_)), "node 2 may catch up: {refusal:?}");
    }
}
