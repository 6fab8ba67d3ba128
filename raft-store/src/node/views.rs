//! This voter's Raft state in Tandem's own types: what the coordinator shows and decides from,
//! so that openraft's metrics are read in this module alone.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use serde::{Deserialize, Serialize};

use super::Node;
use crate::type_config::{Instant, NodeId, NodeInfo, RaftMetrics};

/// What a voter is doing in Raft right now.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VoterState {
    /// It leads.
    Leader,
    /// It follows a leader (or waits for one).
    Follower,
    /// It stands for election.
    Candidate,
    /// It receives the log but does not vote.
    Learner,
    /// Its Raft has stopped.
    Shutdown,
}

impl fmt::Display for VoterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VoterState::Leader => "leader",
            VoterState::Follower => "follower",
            VoterState::Candidate => "candidate",
            VoterState::Learner => "learner",
            VoterState::Shutdown => "shutdown",
        })
    }
}

impl From<ServerState> for VoterState {
    fn from(state: ServerState) -> Self {
        match state {
            ServerState::Leader => VoterState::Leader,
            ServerState::Follower => VoterState::Follower,
            ServerState::Candidate => VoterState::Candidate,
            ServerState::Learner => VoterState::Learner,
            ServerState::Shutdown => VoterState::Shutdown,
        }
    }
}

/// One voter's own account of itself (served on `/raft/status`, shown by `GET /cluster`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VoterStatus {
    /// Its node id.
    pub id: NodeId,
    /// What it is doing.
    pub state: VoterState,
    /// Its term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// The last index in its log.
    pub last_log_index: Option<u64>,
    /// The last index applied to its state machine.
    pub applied_index: Option<u64>,
    /// Whether it runs a version that has content-addressed reuse (older versions' answers
    /// lack the field): a leader enables reuse once every voter says so.
    #[serde(default)]
    pub reuse: bool,
}

impl VoterStatus {
    /// The status `metrics` describe.
    fn of(metrics: &RaftMetrics) -> VoterStatus {
        VoterStatus {
            id: metrics.id,
            state: metrics.state.into(),
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.map(|id| id.index),
            reuse: true,
        }
    }
}

/// A peer as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerReplication {
    /// The last log index it is known to hold.
    pub matched_index: Option<u64>,
    /// How long ago it last answered the leader.
    pub last_contact: Option<Duration>,
}

/// A member of the cluster as the membership records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its node id.
    pub id: NodeId,
    /// Its role and addresses.
    pub info: NodeInfo,
    /// Whether it votes (a learner does not).
    pub voter: bool,
}

/// One consistent reading of this voter's Raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// This voter's own status.
    pub status: VoterStatus,
    /// Every member, voters and learners, in id order.
    pub members: Vec<Member>,
    /// On the leader: each peer's replication; empty elsewhere.
    pub peers: BTreeMap<NodeId, PeerReplication>,
}

impl NodeView {
    /// Read `metrics` as seen at `now`.
    pub(crate) fn of(metrics: &RaftMetrics, now: Instant) -> NodeView {
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, info)| Member { id: *id, info: info.clone(), voter: voters.contains(id) })
            .collect();
        let peers = match (&metrics.replication, &metrics.heartbeat) {
            (Some(replication), Some(heartbeat)) => replication
                .iter()
                .map(|(id, matched)| {
                    let heard = heartbeat.get(id).cloned().flatten().map(|at| *at);
                    let last_contact = heard.map(|at| if now > at { now - at } else { Duration::ZERO });
                    (*id, PeerReplication { matched_index: matched.map(|log_id| log_id.index), last_contact })
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        NodeView { status: VoterStatus::of(metrics), members, peers }
    }

    /// Whether this voter leads.
    pub fn is_leader(&self) -> bool {
        self.status.state == VoterState::Leader
    }

    /// The member with id `id`.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|member| member.id == id)
    }

    /// The ids of every member.
    pub fn member_ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|member| member.id).collect()
    }
}

impl Node {
    /// This voter's Raft state now, in one reading.
    pub fn view(&self) -> NodeView {
        let metrics = self.parts.raft.metrics();
        let metrics = metrics.borrow_watched();
        NodeView::of(&metrics, <Instant as openraft::Instant>::now())
    }

    /// This voter's own status.
    pub fn status(&self) -> VoterStatus {
        VoterStatus::of(&self.parts.raft.metrics().borrow_watched())
    }

    /// Ask voter `id` for its status (this node answers for itself without a round trip).
    pub async fn voter_status(&self, id: NodeId, timeout: Duration) -> Result<VoterStatus, String> {
        if id == self.id() {
            return Ok(self.status());
        }
        self.call_voter(id, "status", &(), timeout).await.map_err(|e| e.to_string())
    }
}
