//! The read barrier: after it, a read of the local state machine is linearizable, on the leader
//! and on followers alike. Concurrent readers share one read-index round, one that starts after
//! all of them arrived.

use std::future::Future;
use std::pin::Pin;

use futures::FutureExt;
use futures::future::Shared;
use openraft::ReadPolicy;
use openraft::errors::{LinearizableReadError, RaftError};
use serde::{Deserialize, Serialize};

use super::{Node, RETRY_PAUSE};
use crate::type_config::NodeId;

/// Why a read barrier failed. Retrying is always safe.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq, Eq)]
pub enum ReadError {
    /// No leader could confirm its leadership before the deadline.
    #[error("no leader confirmed a read index within the deadline: {0}")]
    Unavailable(String),
    /// The local Raft has stopped.
    #[error("raft has stopped: {0}")]
    Stopped(String),
}

/// A read-index round that readers can join while it has not started.
pub(super) type ReadRound = Shared<Pin<Box<dyn Future<Output = Result<(), ReadError>> + Send>>>;

/// Why the leader could not give a read index (the answer of `/raft/read-index`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum ReadIndexError {
    NotLeader(Option<NodeId>),
    NoQuorum(String),
    Stopped(String),
}

impl Node {
    /// Wait until this node's state machine includes every write committed before the call, so
    /// that a read of [`Node::state_machine`] that follows is linearizable. Concurrent callers
    /// share one read-index round (one that starts after all of them arrived).
    pub async fn read_barrier(&self) -> Result<(), ReadError> {
        let round = {
            let mut pending = self.parts.pending_read.lock().unwrap_or_else(|p| p.into_inner());
            match pending.as_ref() {
                Some(round) => round.clone(),
                None => {
                    let node = self.clone();
                    let round: ReadRound = (Box::pin(async move { node.read_round().await })
                        as Pin<Box<dyn Future<Output = Result<(), ReadError>> + Send>>)
                        .shared();
                    *pending = Some(round.clone());
                    round
                }
            }
        };
        round.await
    }

    async fn read_round(&self) -> Result<(), ReadError> {
        let _running = self.parts.read_running.lock().await;
        // From here on, arriving readers form the next round: this one may predate their writes.
        self.parts.pending_read.lock().unwrap_or_else(|p| p.into_inner()).take();
        let deadline = tokio::time::Instant::now() + self.parts.config.request_timeout;
        let mut last;
        loop {
            match self.read_index_local().await {
                Ok(_) => return Ok(()),
                Err(ReadIndexError::Stopped(e)) => return Err(ReadError::Stopped(e)),
                Err(ReadIndexError::NotLeader(Some(leader))) if leader != self.id() => {
                    // As for writes: a replaced leader is not waited for; reads just retry.
                    let remote: Result<Result<u64, ReadIndexError>, _> =
                        self.call_leader(leader, "read-index", &(), deadline).await;
                    match remote {
                        Ok(Ok(index)) => {
                            let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
                            return match self
                                .parts
                                .raft
                                .wait(Some(timeout))
                                .applied_index_at_least(Some(index), "read barrier")
                                .await
                            {
                                Ok(_) => Ok(()),
                                Err(e) => Err(ReadError::Unavailable(format!("applying up to {index}: {e}"))),
                            };
                        }
                        Ok(Err(e)) => last = format!("leader {leader}: {e:?}"),
                        Err(e) => last = format!("asking leader {leader} for a read index: {e}"),
                    }
                }
                Err(ReadIndexError::NotLeader(leader)) => last = format!("no leader (known: {leader:?})"),
                // Cut off from a majority for longer than an election: another leader has most
                // likely taken over, and retrying here until the deadline cannot succeed.
                Err(ReadIndexError::NoQuorum(e)) if *self.parts.quorum_lost.borrow() => {
                    return Err(ReadError::Unavailable(format!("{e} (this leader has lost contact with a majority)")));
                }
                Err(ReadIndexError::NoQuorum(e)) => last = e,
            }
            if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                return Err(ReadError::Unavailable(last));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// On the leader: confirm leadership with a quorum and wait for the local apply; returns the
    /// read index.
    pub(super) async fn read_index_local(&self) -> Result<u64, ReadIndexError> {
        let timeout = self.parts.config.request_timeout;
        let Ok(result) =
            tokio::time::timeout(timeout, self.parts.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await
        else {
            return Err(ReadIndexError::NoQuorum(format!("no quorum confirmed leadership within {timeout:?}")));
        };
        match result {
            Ok(read_log_id) => Ok(read_log_id.index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(ReadIndexError::NotLeader(f.leader_id))
            }
            Err(RaftError::APIError(e)) => Err(ReadIndexError::NoQuorum(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ReadIndexError::Stopped(e.to_string())),
        }
    }
}
