//! Proposing a command: commit it on this node if it leads, else forward it to the leader, and
//! retry while an election is under way. The leader stamps a proposal's times with its own
//! clock just before it appends it ([`Proposal::stamp`]): the one place time enters the log.

use openraft::errors::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};

use super::leader_calls::CallError;
use super::{Node, RETRY_PAUSE};
use crate::job_table::{Command, CommandResponse, Proposal};
use crate::type_config::{NodeId, Raft};

/// Why a proposal has no response.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq, Eq)]
pub enum ProposeError {
    /// No leader could take it before the deadline (no quorum, or an election that did not end).
    #[error("no leader accepted the write within the deadline: {0}")]
    Unavailable(String),
    /// It may or may not have been committed (the leader changed, or the answer was lost).
    /// Retrying is safe only for idempotent commands.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// This node does not lead (only from [`Node::propose_local`]).
    #[error("not the leader; the leader is {leader:?}")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// The local Raft has stopped (a storage failure, or shutdown).
    #[error("raft has stopped: {0}")]
    Stopped(String),
}

impl From<CallError> for ProposeError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::NotDelivered(why) => ProposeError::Unavailable(why),
            // The request may have reached the leader and been committed.
            CallError::Lost(why) => ProposeError::Unknown(why),
        }
    }
}

impl Node {
    /// Commit `proposal` on this node if it leads, stamped with this node's clock; otherwise say
    /// who does. Gives up after the request timeout (a leader that lost its quorum cannot
    /// commit).
    pub async fn propose_local(&self, proposal: Proposal) -> Result<CommandResponse, ProposeError> {
        let timeout = self.parts.config.request_timeout;
        let quorum_timeout = self.parts.config.timing.quorum_timeout();
        let mut quorum_lost = self.parts.quorum_lost.clone();
        // A leader cut off from its peers cannot commit: refuse at once rather than append an
        // entry that would only time out. Nothing was written, so the caller may retry anywhere.
        if *quorum_lost.borrow_and_update() {
            return Err(ProposeError::Unavailable(format!(
                "this leader has not heard from a majority for over {quorum_timeout:?}"
            )));
        }
        let enqueue = proposal.is_enqueue();
        let proposed = std::time::Instant::now();
        // Stamped here and nowhere else: if this node does not lead after all, openraft refuses
        // the entry and the caller forwards the proposal, unstamped, to the leader.
        // Only an enqueue's command depends on it: no read of the table for the rest.
        let reuse_enabled = enqueue && self.parts.state_machine.read(|table| table.reuse_enabled());
        let command = proposal.stamp(wire::now_ms(), reuse_enabled);
        let written = tokio::select! {
            written = tokio::time::timeout(timeout, client_write(&self.parts.raft, command)) => written,
            _ = quorum_lost.wait_for(|lost| *lost) => {
                return Err(ProposeError::Unknown(format!(
                    "this leader lost contact with a majority for over {quorum_timeout:?} while the write was in flight"
                )));
            }
        };
        let Ok(result) = written else {
            return Err(ProposeError::Unknown(format!("not committed within {timeout:?}; it may commit later")));
        };
        if enqueue && result.is_ok() {
            metrics::histogram!("tandem_raft_enqueue_commit_seconds").record(proposed.elapsed().as_secs_f64());
        }
        result
    }

    /// Commit `proposal` on this node, and only while it leads in `term`: for what the leader
    /// decides on its own from its own view (lease expiry, removing silent workers, scaling).
    /// Never forwarded: a deposed leader that wakes up believing it leads must not have its
    /// stale decisions committed by the leader that replaced it. A node that led in `term`,
    /// lost it and leads again in a later term has a view from another reign: refused too.
    /// What remains between this check and the append is covered by apply's re-checks (see
    /// [`Proposal::RemoveWorker`]) and by Raft itself (an entry appended in a term that lost its
    /// quorum is never committed).
    pub async fn propose_as_leader(&self, term: u64, proposal: Proposal) -> Result<CommandResponse, ProposeError> {
        let deadline = tokio::time::Instant::now() + self.parts.config.request_timeout;
        loop {
            let now = *self.parts.leadership.borrow();
            if !now.is_self || now.term != term {
                return Err(ProposeError::NotLeader { leader: now.leader });
            }
            match self.propose_local(proposal.clone()).await {
                // Just elected, the core may not take writes yet: wait while this node still
                // leads in `term`, as `propose` waits out an election.
                Err(ProposeError::NotLeader { .. }) if tokio::time::Instant::now() + RETRY_PAUSE < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    /// Commit `proposal` through whichever node leads, and return its response.
    ///
    /// Retries while there is no leader or the leader is not yet writable, until the request
    /// timeout. A command is sent again only when it certainly was not appended; when the outcome
    /// is unknown the caller gets [`ProposeError::Unknown`].
    pub async fn propose(&self, proposal: Proposal) -> Result<CommandResponse, ProposeError> {
        let deadline = tokio::time::Instant::now() + self.parts.config.request_timeout;
        let mut last;
        loop {
            // A follower that knows the leader forwards at once, without asking its own core.
            let known = self.parts.leadership.borrow().leader;
            let attempt = match known {
                Some(leader) if leader != self.id() => Err(ProposeError::NotLeader { leader: Some(leader) }),
                _ => self.propose_local(proposal.clone()).await,
            };
            match attempt {
                Err(ProposeError::NotLeader { leader: Some(leader) }) if leader != self.id() => {
                    // One hop only: the leader never forwards again, so a stale view cannot
                    // make a loop. The leader stamps the proposal's times with its own clock.
                    let forwarded: Result<Result<CommandResponse, ProposeError>, CallError> =
                        self.call_leader(leader, "propose", &proposal, deadline).await;
                    match forwarded.map_err(ProposeError::from).and_then(|answer| answer) {
                        Ok(response) => return Ok(response),
                        Err(ProposeError::NotLeader { .. }) | Err(ProposeError::Unavailable(_)) => {
                            last = format!("leader {leader} did not take the write");
                        }
                        Err(other) => return Err(other),
                    }
                }
                Err(ProposeError::NotLeader { leader }) => {
                    last = format!("no writable leader (known: {leader:?})");
                }
                other => return other,
            }
            if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                return Err(ProposeError::Unavailable(last));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// Append `command` through this node's openraft core and wait for its commit and response.
async fn client_write(raft: &Raft, command: Command) -> Result<CommandResponse, ProposeError> {
    match raft.client_write(command).await {
        Ok(written) => Ok(written.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(ProposeError::NotLeader { leader: forward.leader_id })
        }
        Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(forward))) => Err(ProposeError::Unknown(format!(
            "entry discarded on a leader change (leader now {:?})",
            forward.leader_id
        ))),
        Err(RaftError::APIError(other)) => Err(ProposeError::Unknown(other.to_string())),
        Err(RaftError::Fatal(fatal)) => Err(ProposeError::Stopped(fatal.to_string())),
    }
}
