//! One voter: the small API the coordinator and the worker's witness use.
//!
//! [`Node::start`] opens the log and state machine in a data directory and starts openraft.
//! [`Node::router`] gives the `/raft/` routes to serve (the coordinator merges them into its own
//! router; the witness serves them alone). Then:
//!
//! - [`Node::initialize`] forms a fresh three-voter cluster, once;
//! - [`Node::propose`] commits a command and returns its response, forwarding to the leader when
//!   this node does not lead and retrying while an election is under way;
//! - [`Node::read_barrier`] makes the next read of [`Node::state_machine`] linearizable, on the
//!   leader and on followers alike; concurrent callers share one read-index round;
//! - [`Node::leadership`] reports leadership changes; [`Node::metrics`] the rest.
//!
//! A witness never keeps leadership: whenever it leads, it hands leadership to a coordinator that
//! is caught up and recently heard from (see `hand_back_leadership`).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::post;
use futures::FutureExt;
use futures::future::Shared;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RPCError, RaftError};
use openraft::{Config, Instant as _, ReadPolicy, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::job_table::{Command, Response};
use crate::log_store::{LogStore, LogStoreOptions, WalStats, WalStatsSnapshot};
use crate::network::{
    NetworkFaults, RaftRoutesState, Transport, check_request, decode_body, msgpack_response, raft_rpc_router,
};
use crate::state_machine::StateMachineStore;
use crate::type_config::{NodeId, NodeInfo, Raft, RaftMetrics, Role};
use crate::wal::WalError;

mod membership;
pub use membership::{MembershipError, Replaced};

/// Raft timing. The same on every voter, the witness included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Leader heartbeat period, and the AppendEntries deadline: keep it above a round trip plus a
    /// follower's fsync.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_min_ms: u64,
    /// Upper bound; also the leader lease. Crash failover takes about this plus a random timeout.
    pub election_max_ms: u64,
}

impl Timing {
    /// How long a leader may go without an acknowledgement from a majority before it gives up
    /// its writes and refuses new ones: twice the longest election timeout, by when the others
    /// have had time to elect a leader, and a stall shorter than that is waited out.
    pub fn quorum_timeout(&self) -> Duration {
        Duration::from_millis(2 * self.election_max_ms)
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing { heartbeat_ms: 50, election_min_ms: 200, election_max_ms: 400 }
    }
}

/// How to start one voter.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This voter's id; never reused with an empty data directory.
    pub id: NodeId,
    /// Coordinator or witness.
    pub role: Role,
    /// Where the log and snapshots live.
    pub data_dir: PathBuf,
    /// The cluster secret for `/raft/` routes; `None` leaves them open (tests, local runs).
    pub secret: Option<String>,
    /// Serve `POST /raft/faults`, which lets a test harness in another process cut this voter's
    /// links to chosen peers. Off unless asked for; never in production.
    pub fault_injection: bool,
    /// Raft timing.
    pub timing: Timing,
    /// Build a snapshot after at most this many entries since the last one. Before that, a
    /// snapshot is built once the log written since the last one outgrows both the snapshot
    /// itself and `snapshot_min_log_bytes`: snapshotting costs O(state), so it waits until the
    /// log has grown by as much, which bounds its share of the work whatever the state's size.
    pub snapshot_every: u64,
    /// Log bytes written since the last snapshot below which no size-triggered snapshot is built.
    pub snapshot_min_log_bytes: u64,
    /// Entries kept in the log behind a snapshot, so that a briefly lagging follower catches up
    /// from the log rather than from a snapshot.
    pub logs_kept_after_snapshot: u64,
    /// How long [`Node::propose`] and [`Node::read_barrier`] keep trying before giving up.
    pub request_timeout: Duration,
    /// Log store tuning.
    pub log: LogStoreOptions,
}

impl NodeConfig {
    /// A config with defaults for everything but the identity and the directory.
    pub fn new(id: NodeId, role: Role, data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            id,
            role,
            data_dir: data_dir.into(),
            secret: None,
            fault_injection: false,
            timing: Timing::default(),
            snapshot_every: 200_000,
            snapshot_min_log_bytes: 16 << 20,
            logs_kept_after_snapshot: 1_000,
            request_timeout: Duration::from_secs(5),
            log: LogStoreOptions::default(),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The log could not be opened (I/O, corruption, or the directory is in use).
    #[error(transparent)]
    Log(#[from] WalError),
    /// The state machine's snapshot could not be read.
    #[error("opening the state machine in {dir}: {source}")]
    StateMachine {
        /// The data directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// openraft refused the configuration or failed to start.
    #[error("starting Raft: {0}")]
    Raft(String),
}

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

/// Why a leadership transfer was refused.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq, Eq)]
pub enum TransferError {
    /// Only the leader can hand leadership over.
    #[error("this node is not the leader")]
    NotLeader,
    /// The requested target is not a coordinator, or no coordinator is eligible.
    #[error("{0}")]
    NoEligibleTarget(String),
    /// The target did not take over in time (it may still; the cluster elects a leader anyway).
    #[error("node {0} did not take over within the deadline")]
    TimedOut(NodeId),
    /// The local Raft has stopped.
    #[error("raft has stopped: {0}")]
    Stopped(String),
}

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

/// One voter's own account of itself (served on `/raft/status`, shown by `GET /cluster`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VoterStatus {
    /// Its node id.
    pub id: NodeId,
    /// "leader", "follower", "candidate", "learner" or "shutdown".
    pub state: String,
    /// Its term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// The last index in its log.
    pub last_log_index: Option<u64>,
    /// The last index applied to its state machine.
    pub applied_index: Option<u64>,
}

/// A peer as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerReplication {
    /// The last log index it is known to hold.
    pub matched_index: Option<u64>,
    /// How long ago it last answered the leader.
    pub last_contact: Option<Duration>,
}

type ReadRound = Shared<Pin<Box<dyn Future<Output = Result<(), ReadError>> + Send>>>;

struct NodeInner {
    config: NodeConfig,
    raft: Raft,
    state_machine: StateMachineStore,
    /// Only the counters: the log itself belongs to openraft, so that stopping Raft closes it
    /// (and releases the data directory) even while clones of this node linger.
    wal_stats: Arc<WalStats>,
    transport: Transport,
    leadership: watch::Receiver<Leadership>,
    /// Becomes true once openraft's core has ended (shutdown, a storage failure, a panic).
    stopped: watch::Receiver<bool>,
    /// True while this node leads but has not heard from a majority for longer than
    /// [`Timing::quorum_timeout`]: it has most likely been replaced, and cannot commit.
    quorum_lost: watch::Receiver<bool>,
    /// The read round that has not started yet: readers arriving now join it.
    pending_read: Mutex<Option<ReadRound>>,
    /// Held by the read round in progress, so that the next one starts after it.
    read_running: tokio::sync::Mutex<()>,
    /// Held by the voter replacement in progress: one at a time per node.
    replacing: tokio::sync::Mutex<()>,
    /// Background tasks (leadership watch, snapshot policy), aborted on shutdown.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A running voter. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

impl Node {
    /// Open the voter's data directory and start Raft. Safe to call on a directory from an
    /// earlier run: the log, vote and snapshot are recovered.
    pub async fn start(config: NodeConfig, faults: Arc<NetworkFaults>) -> Result<Node, StartError> {
        let (log, recovery) = LogStore::open(&config.data_dir, config.log)?;
        if config.fault_injection {
            tracing::warn!(node = config.id, "fault injection is enabled (POST /raft/faults): for tests only");
        }
        tracing::info!(
            node = config.id,
            role = %config.role,
            records = recovery.scan.records,
            last_log = ?recovery.last_log_id,
            "recovered the log"
        );
        let state_machine = StateMachineStore::open(&config.data_dir)
            .map_err(|source| StartError::StateMachine { dir: config.data_dir.clone(), source })?;
        let raft_config = Config {
            cluster_name: "tandem".into(),
            heartbeat_interval: config.timing.heartbeat_ms,
            election_timeout_min: config.timing.election_min_ms,
            election_timeout_max: config.timing.election_max_ms,
            install_snapshot_timeout: 10_000,
            // Snapshots are triggered by `snapshot_policy` below, which also weighs sizes.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
            purge_batch_size: config.logs_kept_after_snapshot.clamp(1, 256),
            enable_pre_vote: Some(true),
            // A follower whose log lost acknowledged entries (a disk that lied about fsync, a
            // truncated file) is re-sent them. Without this, openraft's leader panics on seeing
            // the follower's log go backwards: one voter's disk fault would stop the healthy
            // leader too. (Shown by the fault suite's truncate-tail scenario.)
            allow_log_reversion: Some(true),
            // A leader that restarts stands for election like any voter. openraft would let it
            // resume its old term at once, but its log may have lost the tail it had sent to
            // the followers (appended in memory, not yet written when it died): it would then
            // propose different entries under the same log ids as theirs, and the replicas
            // would diverge for good. Its committed mark may be stale too, so its reads would
            // go back in time. (Shown by the fault suite's power-loss scenario.)
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let transport = Transport::new(config.id, config.secret.as_deref().map(Arc::from), faults);
        let wal_stats = log.stats_handle();
        let raft = Raft::new(config.id, Arc::new(raft_config), transport.clone(), log, state_machine.clone())
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;

        let (leadership_tx, leadership) = watch::channel(Leadership { leader: None, term: 0, is_self: false });
        let (stopped_tx, stopped) = watch::channel(false);
        let (quorum_lost_tx, quorum_lost) = watch::channel(false);
        let node = Node {
            inner: Arc::new(NodeInner {
                config,
                raft,
                state_machine,
                wal_stats,
                transport,
                leadership,
                stopped,
                quorum_lost,
                pending_read: Mutex::new(None),
                read_running: tokio::sync::Mutex::new(()),
                replacing: tokio::sync::Mutex::new(()),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        let watcher =
            tokio::spawn(watch_metrics(Arc::downgrade(&node.inner), leadership_tx, stopped_tx, quorum_lost_tx));
        let snapshots = tokio::spawn(snapshot_policy(Arc::downgrade(&node.inner)));
        node.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).extend([watcher, snapshots]);
        Ok(node)
    }

    /// This voter's id.
    pub fn id(&self) -> NodeId {
        self.inner.config.id
    }

    /// This voter's role.
    pub fn role(&self) -> Role {
        self.inner.config.role
    }

    /// The openraft handle, for what this API does not cover.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The job table (read it after [`Node::read_barrier`] for linearizable reads).
    pub fn state_machine(&self) -> &StateMachineStore {
        &self.inner.state_machine
    }

    /// The fault hooks of this node's transport.
    pub fn faults(&self) -> &Arc<NetworkFaults> {
        &self.inner.transport.faults
    }

    /// The log writer's counters.
    pub fn wal_stats(&self) -> WalStatsSnapshot {
        self.inner.wal_stats.snapshot()
    }

    /// A copy of openraft's metrics now.
    pub fn metrics(&self) -> RaftMetrics {
        self.inner.raft.metrics().borrow_watched().clone()
    }

    /// This voter's own status.
    pub fn status(&self) -> VoterStatus {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow_watched();
        let state = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        VoterStatus {
            id: self.id(),
            state: state.into(),
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.map(|id| id.index),
        }
    }

    /// On the leader: for each peer, the last log index it is known to hold and how long ago it
    /// last answered. Empty on a node that does not lead.
    pub fn peer_replication(&self) -> BTreeMap<NodeId, PeerReplication> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow_watched();
        let (Some(replication), Some(heartbeat)) = (&metrics.replication, &metrics.heartbeat) else {
            return BTreeMap::new();
        };
        replication
            .iter()
            .map(|(id, matched)| {
                let last_contact = heartbeat.get(id).cloned().flatten().map(|at| at.elapsed());
                (*id, PeerReplication { matched_index: matched.map(|log_id| log_id.index), last_contact })
            })
            .collect()
    }

    /// Ask voter `id` for its status (this node answers for itself without a round trip).
    pub async fn voter_status(&self, id: NodeId, timeout: Duration) -> Result<VoterStatus, String> {
        if id == self.id() {
            return Ok(self.status());
        }
        let addr = self.raft_addr_of(id).ok_or_else(|| format!("node {id} is not a member"))?;
        self.inner.transport.call(id, &addr, "status", &(), timeout).await.map_err(|e| e.to_string())
    }

    /// Resolves once openraft's core has ended: after [`Node::shutdown`], or on its own after a
    /// storage failure or an internal panic, when the voter can no longer do anything useful
    /// and its process should exit so that a supervisor restarts it.
    pub async fn stopped(&self) {
        let mut stopped = self.inner.stopped.clone();
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }

    /// Leadership as this node sees it, updated on every change.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.inner.leadership.clone()
    }

    /// The `/raft/` routes to serve on this voter's Raft address.
    pub fn router(&self) -> Router {
        let state = RaftRoutesState {
            raft: self.inner.raft.clone(),
            self_id: self.id(),
            secret: self.inner.transport.secret.clone(),
            faults: self.inner.transport.faults.clone(),
        };
        let mut app_routes = Router::new()
            .route("/raft/propose", post(handle_propose))
            .route("/raft/read-index", post(handle_read_index))
            .route("/raft/status", post(handle_status))
            .route("/raft/health", axum::routing::get(|| async { "ok" }))
            .with_state((self.clone(), state.clone()));
        if self.inner.config.fault_injection {
            app_routes = app_routes.merge(
                Router::new().route("/raft/faults", post(handle_faults)).with_state((self.clone(), state.clone())),
            );
        }
        raft_rpc_router(state).merge(app_routes)
    }

    /// Form a new cluster of `members`, if this node has never been part of one. Returns whether
    /// it did. Call it on one node only, with the same members every time.
    pub async fn initialize(&self, members: BTreeMap<NodeId, NodeInfo>) -> Result<bool, StartError> {
        let initialized = self.inner.raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))?;
        if initialized {
            return Ok(false);
        }
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(openraft::errors::InitializeError::NotAllowed(_))) => Ok(false),
            Err(e) => Err(StartError::Raft(e.to_string())),
        }
    }

    /// Commit `command` on this node if it leads; otherwise say who does. Gives up after the
    /// request timeout (a leader that lost its quorum cannot commit).
    pub async fn propose_local(&self, command: Command) -> Result<Response, ProposeError> {
        let timeout = self.inner.config.request_timeout;
        let quorum_timeout = self.inner.config.timing.quorum_timeout();
        let mut quorum_lost = self.inner.quorum_lost.clone();
        // A leader cut off from its peers cannot commit: refuse at once rather than append an
        // entry that would only time out. Nothing was written, so the caller may retry anywhere.
        if *quorum_lost.borrow_and_update() {
            return Err(ProposeError::Unavailable(format!(
                "this leader has not heard from a majority for over {quorum_timeout:?}"
            )));
        }
        let enqueue = matches!(command, Command::Enqueue { .. });
        let proposed = std::time::Instant::now();
        let written = tokio::select! {
            written = tokio::time::timeout(timeout, client_write(&self.inner.raft, command)) => written,
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

    /// Commit `command` through whichever node leads, and return its response.
    ///
    /// Retries while there is no leader or the leader is not yet writable, until the request
    /// timeout. A command is sent again only when it certainly was not appended; when the outcome
    /// is unknown the caller gets [`ProposeError::Unknown`].
    pub async fn propose(&self, command: Command) -> Result<Response, ProposeError> {
        let deadline = tokio::time::Instant::now() + self.inner.config.request_timeout;
        let mut last;
        loop {
            // A follower that knows the leader forwards at once, without asking its own core.
            let known = self.inner.leadership.borrow().leader;
            let attempt = match known {
                Some(leader) if leader != self.id() => Err(ProposeError::NotLeader { leader: Some(leader) }),
                _ => self.propose_local(command.clone()).await,
            };
            match attempt {
                Err(ProposeError::NotLeader { leader: Some(leader) }) if leader != self.id() => {
                    // A leader that froze or was cut off can hold the request until the
                    // deadline although another leader took over long before: stop waiting
                    // once this node knows of another leader. The write may still have been
                    // committed, so the outcome is unknown (idempotent callers retry).
                    let forwarded = tokio::select! {
                        result = self.forward(leader, &command, deadline) => result,
                        () = self.replaced(leader) => Err(ProposeError::Unknown(format!(
                            "leader {leader} was replaced while the write was in flight"
                        ))),
                    };
                    match forwarded {
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

    /// Resolves once this node learns of a leader other than `leader` in a later term than it
    /// knew when called (the watch may still show an older leader than `leader` at first: that
    /// one does not count).
    async fn replaced(&self, leader: NodeId) {
        let mut leadership = self.leadership();
        let term = leadership.borrow().term;
        let _ = leadership.wait_for(|now| now.term > term && now.leader.is_some_and(|now| now != leader)).await;
    }

    async fn forward(
        &self,
        leader: NodeId,
        command: &Command,
        deadline: tokio::time::Instant,
    ) -> Result<Response, ProposeError> {
        let Some(addr) = self.raft_addr_of(leader) else {
            return Err(ProposeError::Unavailable(format!("leader {leader} is not in the membership")));
        };
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        let result: Result<Result<Response, ProposeError>, _> =
            self.inner.transport.call(leader, &addr, "propose", command, timeout).await;
        match result {
            Ok(answer) => answer,
            Err(RPCError::Unreachable(e)) => Err(ProposeError::Unavailable(e.to_string())),
            // The request may have reached the leader and been committed.
            Err(e) => Err(ProposeError::Unknown(e.to_string())),
        }
    }

    fn raft_addr_of(&self, id: NodeId) -> Option<String> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics.membership_config.membership().get_node(&id).map(|node| node.raft_addr.clone())
    }

    /// Wait until this node's state machine includes every write committed before the call, so
    /// that a read of [`Node::state_machine`] that follows is linearizable. Concurrent callers
    /// share one read-index round (one that starts after all of them arrived).
    pub async fn read_barrier(&self) -> Result<(), ReadError> {
        let round = {
            let mut pending = self.inner.pending_read.lock().unwrap_or_else(|p| p.into_inner());
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
        let _running = self.inner.read_running.lock().await;
        // From here on, arriving readers form the next round: this one may predate their writes.
        self.inner.pending_read.lock().unwrap_or_else(|p| p.into_inner()).take();
        let deadline = tokio::time::Instant::now() + self.inner.config.request_timeout;
        let mut last;
        loop {
            match self.read_index_local().await {
                Ok(_) => return Ok(()),
                Err(ReadIndexError::Stopped(e)) => return Err(ReadError::Stopped(e)),
                Err(ReadIndexError::NotLeader(Some(leader))) if leader != self.id() => {
                    // As for writes: a replaced leader is not waited for; reads just retry.
                    let remote = tokio::select! {
                        index = self.read_index_remote(leader, deadline) => index,
                        () = self.replaced(leader) => Err(format!("leader {leader} was replaced")),
                    };
                    match remote {
                        Ok(index) => {
                            let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
                            return match self
                                .inner
                                .raft
                                .wait(Some(timeout))
                                .applied_index_at_least(Some(index), "read barrier")
                                .await
                            {
                                Ok(_) => Ok(()),
                                Err(e) => Err(ReadError::Unavailable(format!("applying up to {index}: {e}"))),
                            };
                        }
                        Err(e) => last = e,
                    }
                }
                Err(ReadIndexError::NotLeader(leader)) => last = format!("no leader (known: {leader:?})"),
                // Cut off from a majority for longer than an election: another leader has most
                // likely taken over, and retrying here until the deadline cannot succeed.
                Err(ReadIndexError::NoQuorum(e)) if *self.inner.quorum_lost.borrow() => {
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
    async fn read_index_local(&self) -> Result<u64, ReadIndexError> {
        let timeout = self.inner.config.request_timeout;
        let Ok(result) =
            tokio::time::timeout(timeout, self.inner.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await
        else {
            return Err(ReadIndexError::NoQuorum(format!("no quorum confirmed leadership within {timeout:?}")));
        };
        match result {
            Ok(read_log_id) => Ok(read_log_id.index()),
            Err(RaftError::APIError(openraft::errors::LinearizableReadError::ForwardToLeader(f))) => {
                Err(ReadIndexError::NotLeader(f.leader_id))
            }
            Err(RaftError::APIError(e)) => Err(ReadIndexError::NoQuorum(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ReadIndexError::Stopped(e.to_string())),
        }
    }

    async fn read_index_remote(&self, leader: NodeId, deadline: tokio::time::Instant) -> Result<u64, String> {
        let addr = self.raft_addr_of(leader).ok_or_else(|| format!("leader {leader} is not in the membership"))?;
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        let answer: Result<u64, ReadIndexError> = self
            .inner
            .transport
            .call(leader, &addr, "read-index", &(), timeout)
            .await
            .map_err(|e| format!("asking leader {leader} for a read index: {e}"))?;
        answer.map_err(|e| format!("leader {leader}: {e:?}"))
    }

    /// Hand leadership to `to`, or to any eligible coordinator when `None`. Only a coordinator
    /// that is fully caught up and was heard from within the election timeout is eligible: a
    /// transfer has no abort, and one to a lagging or dead node leaves the cluster leaderless
    /// until the next election. Returns the new leader.
    pub async fn transfer_leadership(&self, to: Option<NodeId>) -> Result<NodeId, TransferError> {
        let timing = self.inner.config.timing;
        // Under load the target trails by the entries in flight; give it a moment to match the
        // leader exactly, then accept a small lag it will close while the transfer starts.
        let patience = tokio::time::Instant::now() + Duration::from_millis(timing.election_min_ms);
        let target = loop {
            match eligible_target(&self.metrics(), to, timing.election_min_ms, 0) {
                Ok(target) => break target,
                Err(e) if tokio::time::Instant::now() >= patience => {
                    break eligible_target(&self.metrics(), to, timing.election_min_ms, TRANSFER_MAX_LAG)
                        .map_err(|_| e)?;
                }
                Err(TransferError::NotLeader) => return Err(TransferError::NotLeader),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        self.inner.raft.trigger().transfer_leader(target).await.map_err(|e| TransferError::Stopped(e.to_string()))?;
        let timeout = Duration::from_millis(2 * self.inner.config.timing.election_max_ms);
        self.inner
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader == Some(target), "leadership transfer")
            .await
            .map(|_| target)
            .map_err(|_| TransferError::TimedOut(target))
    }

    /// Stop Raft and the background tasks. The data directory can be opened again afterwards.
    pub async fn shutdown(&self) {
        for task in self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(node = self.id(), error = %e, "raft shutdown reported an error");
        }
    }
}

const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// The most entries a transfer target may trail by once the leader stopped waiting for it.
const TRANSFER_MAX_LAG: u64 = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum ReadIndexError {
    NotLeader(Option<NodeId>),
    NoQuorum(String),
    Stopped(String),
}

/// The coordinator to hand leadership to: `wanted` if eligible, else the first eligible one.
fn eligible_target(
    metrics: &RaftMetrics,
    wanted: Option<NodeId>,
    fresh_ms: u64,
    max_lag: u64,
) -> Result<NodeId, TransferError> {
    if metrics.state != ServerState::Leader {
        return Err(TransferError::NotLeader);
    }
    let membership = metrics.membership_config.membership();
    let last_log = metrics.last_log_index;
    let replication = metrics.replication.clone().unwrap_or_default();
    let heartbeat = metrics.heartbeat.clone().unwrap_or_default();
    let verdict = |id: NodeId| -> Result<(), String> {
        let node = membership.get_node(&id).ok_or(format!("node {id} is not a member"))?;
        if id == metrics.id {
            return Err(format!("node {id} already leads"));
        }
        if node.role != Role::Coordinator {
            return Err(format!("node {id} is a {}: only a coordinator may lead", node.role));
        }
        if !membership.voter_ids().any(|voter| voter == id) {
            return Err(format!("node {id} is not a voter"));
        }
        let matched = replication.get(&id).cloned().flatten().map(|log_id| log_id.index);
        let lag = last_log.unwrap_or(0).saturating_sub(matched.unwrap_or(0));
        if matched.is_none() && last_log.is_some() || lag > max_lag {
            return Err(format!("node {id} is not caught up (has {matched:?} of {last_log:?})"));
        }
        let fresh =
            heartbeat.get(&id).cloned().flatten().is_some_and(|at| at.elapsed() < Duration::from_millis(fresh_ms));
        if !fresh {
            return Err(format!("node {id} has not answered recently"));
        }
        Ok(())
    };
    match wanted {
        Some(id) => verdict(id).map(|()| id).map_err(TransferError::NoEligibleTarget),
        None => {
            let mut reasons = Vec::new();
            for (id, _) in membership.nodes() {
                match verdict(*id) {
                    Ok(()) => return Ok(*id),
                    Err(reason) => reasons.push(reason),
                }
            }
            Err(TransferError::NoEligibleTarget(format!("no eligible coordinator: {}", reasons.join("; "))))
        }
    }
}

/// Trigger a snapshot when enough log has accumulated since the last one (see
/// [`NodeConfig::snapshot_every`]), and wait for it before looking again.
async fn snapshot_policy(node: std::sync::Weak<NodeInner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Log bytes written when the last snapshot was asked for (or when this node started).
    let mut written_at_last = None;
    loop {
        tick.tick().await;
        let Some(inner) = node.upgrade() else { return };
        let (applied, snapshot) = {
            let metrics = inner.raft.metrics();
            let metrics = metrics.borrow_watched();
            (metrics.last_applied.map_or(0, |id| id.index), metrics.snapshot.map_or(0, |id| id.index))
        };
        let written = inner.wal_stats.snapshot().bytes_written;
        let grown = written.saturating_sub(*written_at_last.get_or_insert(written));
        let since = applied.saturating_sub(snapshot);
        let config = &inner.config;
        let outgrown = grown >= config.snapshot_min_log_bytes.max(inner.state_machine.last_snapshot_bytes());
        if since < config.snapshot_every.min(1_000) || !(outgrown || since >= config.snapshot_every) {
            continue;
        }
        written_at_last = Some(written);
        if inner.raft.trigger().snapshot().await.is_err() {
            return;
        }
        let built = inner
            .raft
            .wait(Some(Duration::from_secs(300)))
            .metrics(|m| m.snapshot.is_some_and(|id| id.index >= applied), "snapshot built")
            .await;
        if let Err(e) = built {
            tracing::warn!(node = config.id, error = %e, "a snapshot did not complete; trying again later");
        }
    }
}

/// Publish leadership changes, and make a witness that leads hand leadership back.
async fn watch_metrics(
    node: std::sync::Weak<NodeInner>,
    leadership: watch::Sender<Leadership>,
    stopped: watch::Sender<bool>,
    quorum_lost: watch::Sender<bool>,
) {
    let Some(inner) = node.upgrade() else { return };
    let mut metrics_rx = inner.raft.metrics();
    let role = inner.config.role;
    let quorum_timeout = inner.config.timing.quorum_timeout();
    drop(inner);
    let mut handback_tick = tokio::time::interval(Duration::from_millis(20));
    handback_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut handback: Option<tokio::task::JoinHandle<()>> = None;
    // The age of the last quorum acknowledgement grows without any metrics change: look again
    // a few times per timeout while leading.
    let quorum_check = quorum_timeout / 8;
    let mut quorum_tick = tokio::time::interval(quorum_check);
    quorum_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the acknowledgement first looked too old. A process that was stalled (CPU
    // starvation) wakes with its peers' answers still queued for the core: it declares the
    // quorum lost only if the acknowledgement still looks too old a check later, once the core
    // has had the chance to take them in.
    let mut stale_since: Option<std::time::Instant> = None;
    loop {
        // Read the fields in place: the metrics change several times per entry, and cloning
        // them whole (membership, replication maps) each time is measurable.
        let (now, state, lost) = {
            let metrics = metrics_rx.borrow_watched();
            let now = Leadership {
                leader: metrics.current_leader,
                term: metrics.current_term,
                is_self: metrics.state == ServerState::Leader,
            };
            // Only a leader can lose its quorum; a lone voter is its own quorum (openraft does
            // not refresh its acknowledgement). Checked in this order, a follower pays nothing.
            let stale = now.is_self
                && metrics.last_quorum_acked.as_ref().is_some_and(|at| at.elapsed() > quorum_timeout)
                && metrics.membership_config.membership().voter_ids().nth(1).is_some();
            let since = match (stale, stale_since) {
                (false, _) => None,
                (true, None) => Some(std::time::Instant::now()),
                (true, since) => since,
            };
            stale_since = since;
            let lost = since.is_some_and(|since| since.elapsed() >= quorum_check);
            (now, metrics.state, lost)
        };
        leadership.send_if_modified(|seen| {
            let changed = *seen != now;
            *seen = now;
            changed
        });
        quorum_lost.send_if_modified(|seen| {
            let changed = *seen != lost;
            match (changed, lost) {
                (true, true) => tracing::warn!("this leader lost contact with a majority: refusing writes"),
                (true, false) => tracing::info!("no longer cut off from a majority (or no longer leading)"),
                _ => {}
            }
            *seen = lost;
            changed
        });
        let witness_leads = role == Role::Witness && state == ServerState::Leader;
        tokio::select! {
            changed = metrics_rx.changed() => if changed.is_err() {
                // The core has ended: its metrics sender is gone.
                stopped.send_replace(true);
                return;
            },
            _ = handback_tick.tick(), if witness_leads && handback.as_ref().is_none_or(|h| h.is_finished()) => {
                // In a task of its own: a transfer can take a second, and meanwhile this loop
                // must keep publishing leadership and quorum changes.
                let Some(inner) = node.upgrade() else { return };
                handback = Some(tokio::spawn(hand_back_leadership(Node { inner })));
            }
            _ = quorum_tick.tick(), if state == ServerState::Leader => {}
        }
    }
}

/// Append `command` through this node's openraft core and wait for its commit and response.
async fn client_write(raft: &Raft, command: Command) -> Result<Response, ProposeError> {
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

/// A witness that leads transfers leadership to a caught-up coordinator. If none is eligible it
/// keeps leading (so the cluster stays live) and tries again on the next tick.
async fn hand_back_leadership(node: Node) {
    match node.transfer_leadership(None).await {
        Ok(target) => tracing::info!(witness = node.id(), to = target, "witness handed leadership back"),
        Err(TransferError::NotLeader) => {}
        Err(e) => {
            tracing::debug!(witness = node.id(), error = %e, "witness keeps leadership for now")
        }
    }
}

async fn handle_propose(
    State((node, routes)): State<(Node, RaftRoutesState)>,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    if let Err(refusal) = check_request(&routes, &headers) {
        return refusal.into_response();
    }
    let mut command: Command = match decode_body(&body) {
        Ok(command) => command,
        Err(refusal) => return refusal.into_response(),
    };
    // The times in the log are the committing leader's, whatever the forwarding node's clock.
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    command.restamp(now_ms);
    // One hop only: the receiver never forwards again, so a stale view cannot make a loop.
    msgpack_response(&node.propose_local(command).await)
}

/// The body of `POST /raft/faults`: the peers this voter is cut off from (both ways), replacing
/// the previous set; an empty list heals every link.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct FaultSettings {
    /// Peers this voter neither sends to nor accepts requests from.
    pub isolated_from: Vec<NodeId>,
    /// Make every later write to this voter's log fail, as a failing disk would (one way: the
    /// voter's Raft stops and its process exits).
    #[serde(default)]
    pub fail_storage: bool,
}

async fn handle_faults(
    State((node, routes)): State<(Node, RaftRoutesState)>,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    if let Err(refusal) = check_request(&routes, &headers) {
        return refusal.into_response();
    }
    let Ok(settings) = serde_json::from_slice::<FaultSettings>(&body) else {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            "expected {\"isolated_from\": [node ids], \"fail_storage\": bool}",
        )
            .into_response();
    };
    let faults = node.faults();
    faults.heal_all();
    for peer in &settings.isolated_from {
        faults.isolate_from(*peer);
    }
    if settings.fail_storage {
        node.inner.wal_stats.inject_write_failure();
    }
    tracing::warn!(
        node = node.id(),
        isolated_from = ?settings.isolated_from,
        fail_storage = settings.fail_storage,
        "fault injection: faults changed"
    );
    axum::Json(settings).into_response()
}

async fn handle_status(State((node, routes)): State<(Node, RaftRoutesState)>, headers: HeaderMap) -> HttpResponse {
    if let Err(refusal) = check_request(&routes, &headers) {
        return refusal.into_response();
    }
    msgpack_response(&node.status())
}

async fn handle_read_index(State((node, routes)): State<(Node, RaftRoutesState)>, headers: HeaderMap) -> HttpResponse {
    if let Err(refusal) = check_request(&routes, &headers) {
        return refusal.into_response();
    }
    msgpack_response(&node.read_index_local().await)
}

/// Serve `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
