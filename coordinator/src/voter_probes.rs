//! The other voters' own accounts of themselves, for `GET /cluster`.
//!
//! `/cluster` needs no credentials, and each answer asks every other voter for its status over
//! the Raft port. Without a limit every request would become two Raft RPCs, so a client that
//! polls it hard (or a browser tab per operator) would cost the voters in proportion. Here one
//! probe round serves every request that arrives while it runs and for [`REUSE`] after it ends,
//! so the voters see at most a few rounds a second however often `/cluster` is asked.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raft_store::{Node, NodeId, VoterStatus};

/// How long one round's answers serve later requests.
pub const REUSE: Duration = Duration::from_millis(100);
/// How long a round waits for a voter before calling it unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// One probe round's answers: `None` for a voter that did not answer in time.
#[derive(Clone, Debug)]
pub struct Round {
    /// When the round ended, in ms since the Unix epoch.
    pub at_ms: u64,
    /// Each probed voter's status.
    pub statuses: BTreeMap<NodeId, Option<VoterStatus>>,
}

/// The latest round, shared by every handler of one coordinator.
#[derive(Default)]
pub struct VoterProbes {
    latest: tokio::sync::Mutex<Option<(Instant, Round)>>,
}

impl VoterProbes {
    /// The statuses of `voters` other than `node` itself, from a round that ended less than
    /// [`REUSE`] ago and asked all of them, or from a new one. Concurrent callers wait for the
    /// round under way rather than start their own.
    pub async fn others(&self, node: &Node, voters: &[NodeId]) -> Round {
        let wanted: Vec<NodeId> = voters.iter().copied().filter(|id| *id != node.id()).collect();
        let mut latest = self.latest.lock().await;
        if let Some((ended, round)) = latest.as_ref()
            && ended.elapsed() < REUSE
            && wanted.iter().all(|id| round.statuses.contains_key(id))
        {
            return round.clone();
        }
        let probes = wanted.iter().map(|&id| async move { (id, node.voter_status(id, PROBE_TIMEOUT).await.ok()) });
        let statuses = futures::future::join_all(probes).await.into_iter().collect();
        let round = Round { at_ms: wire::now_ms(), statuses };
        *latest = Some((Instant::now(), round.clone()));
        round
    }
}
