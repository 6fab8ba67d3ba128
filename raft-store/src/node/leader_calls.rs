//! Calls from this voter to another over the voters' transport: the one way to reach the leader
//! (a forwarded proposal, a read index, an operator's failover or voter replacement) and to ask
//! another voter for its status. Every call is answered on the receiving voter alone: it never
//! forwards again, so two voters with stale views cannot bounce a request between them.
//!
//! One error mapping for all of them: a call that certainly did not reach the other voter
//! ([`CallError::NotDelivered`]) may be retried anywhere; one whose answer was lost
//! ([`CallError::Lost`]) may have taken effect.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::RPCError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Node;
use crate::type_config::NodeId;

/// Why a call to another voter has no answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    /// It certainly did not reach the other voter (not a member, refused connection, cut link).
    #[error("{0}")]
    NotDelivered(String),
    /// It may have reached the other voter and taken effect; the answer did not come back.
    #[error("{0}")]
    Lost(String),
}

impl Node {
    /// POST `request` to voter `id`'s `/raft/{path}` and decode its answer, within `timeout`.
    pub(crate) async fn call_voter<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        id: NodeId,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let Some(addr) = self.raft_addr_of(id) else {
            return Err(CallError::NotDelivered(format!("node {id} is not in the membership")));
        };
        self.parts.transport.call(id, &addr, path, request, timeout).await.map_err(|e| match e {
            RPCError::Unreachable(e) => CallError::NotDelivered(format!("node {id} is unreachable: {e}")),
            e => CallError::Lost(format!("calling node {id}: {e}")),
        })
    }

    /// As [`Node::call_voter`] to `leader`, until `deadline`, but stop waiting once this node
    /// learns that another leader took over: a leader that froze or was cut off can hold a
    /// request until the deadline although it was replaced long before.
    pub(crate) async fn call_leader<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        leader: NodeId,
        path: &str,
        request: &Req,
        deadline: tokio::time::Instant,
    ) -> Result<Resp, CallError> {
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::select! {
            answer = self.call_voter(leader, path, request, timeout) => answer,
            () = self.replaced(leader) => {
                Err(CallError::Lost(format!("leader {leader} was replaced while the request was in flight")))
            }
        }
    }

    /// Resolves once this node learns of a leader other than `leader` in a later term than it
    /// knew when called (the watch may still show an older leader than `leader` at first: that
    /// one does not count).
    async fn replaced(&self, leader: NodeId) {
        let mut leadership = self.leadership();
        let term = leadership.borrow().term;
        let _ = leadership.wait_for(|now| now.term > term && now.leader.is_some_and(|now| now != leader)).await;
    }

    fn raft_addr_of(&self, id: NodeId) -> Option<String> {
        let metrics = self.parts.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics.membership_config.membership().get_node(&id).map(|node| node.raft_addr.clone())
    }
}
