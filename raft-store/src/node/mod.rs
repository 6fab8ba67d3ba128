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
//! One concept per module: [`propose`] (commit, forward, retry), [`read_barrier`], [`leadership`]
//! (failover and the witness's hand-back), [`membership`] (replacing a voter), [`leader_calls`]
//! (the one way to reach the leader or another voter), [`views`] (this voter's Raft state in
//! Tandem's types), [`quorum_watch`] (leadership changes and quorum loss), [`snapshot_policy`], [`log_retention`]
//! and [`rpc_routes`]. Decisions that depend on time take the time as an argument, and are
//! unit-tested with tables.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::RaftError;
use openraft::{Config, SnapshotPolicy};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::log_store::{LogStore, LogStoreOptions, WalStats, WalStatsSnapshot};
use crate::network::{NetworkFaults, Transport, TransportStats};
use crate::state_machine::StateMachineStore;
use crate::type_config::{NodeId, NodeInfo, Raft, RaftMetrics, Role};
use crate::wal::WalError;

mod leader_calls;
mod leadership;
mod log_retention;
mod membership;
mod propose;
mod quorum_watch;
mod read_barrier;
mod rpc_routes;
mod snapshot_policy;
mod views;

pub use leader_calls::CallError;
pub use leadership::{Failover, Leadership, TransferError};
pub use membership::{MembershipError, Replaced};
pub use propose::ProposeError;
pub use read_barrier::ReadError;
pub use rpc_routes::{FaultSettings, serve};
pub use views::{Member, NodeView, PeerReplication, VoterState, VoterStatus};

/// How long to wait before trying a write or a read again (no leader yet, or not writable).
const RETRY_PAUSE: Duration = Duration::from_millis(20);

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

    /// openraft's `heartbeat_min_interval`: no heartbeat goes to a follower that acknowledged
    /// an append sent within this long, so that under load heartbeats do not double the rounds.
    /// The heartbeat period, or less when the election timeout requires it (openraft requires
    /// heartbeat + this + one tick, `heartbeat * 13 / 64`, below `election_min_ms`).
    pub fn heartbeat_min_interval_ms(&self) -> u64 {
        let tick = (self.heartbeat_ms * 13 / 64).max(1);
        let room = self.election_min_ms.saturating_sub(self.heartbeat_ms + tick + 1);
        self.heartbeat_ms.min(room)
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
    /// On a leader, the most bytes of log kept behind a snapshot for followers that lack them
    /// (beyond `logs_kept_after_snapshot`), so that one back from a short outage catches up
    /// from the log rather than from a snapshot ([`log_retention`]).
    pub log_retained_for_followers_bytes: u64,
    /// How long [`Node::propose`] and [`Node::read_barrier`] keep trying before giving up.
    pub request_timeout: Duration,
    /// Log store tuning.
    pub log: LogStoreOptions,
    /// The largest AppendEntries body this voter reads and sends
    /// ([`crate::network::APPEND_BODY_LIMIT`]; smaller only in tests of the splitting).
    pub append_body_limit: usize,
    /// The bytes a leader sends in one AppendEntries ([`crate::network::APPEND_PAYLOAD_BYTES`]).
    pub append_payload_bytes: usize,
    /// The most AppendEntries a leader keeps unanswered on one follower's append stream
    /// ([`crate::network::APPEND_PIPELINE`]).
    pub append_pipeline: usize,
    /// A follower closes an append stream without a frame for this long; a leader does not reuse
    /// one idle for half of it ([`crate::network::APPEND_STREAM_IDLE`]).
    pub append_stream_idle: Duration,
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
            // A minute of this VM's heaviest enqueue load (7,000 16 KiB enqueues/s) writes about
            // 55 MiB of log: `bench catchup`.
            log_retained_for_followers_bytes: 64 << 20,
            request_timeout: Duration::from_secs(5),
            log: LogStoreOptions::default(),
            append_body_limit: crate::network::APPEND_BODY_LIMIT,
            append_payload_bytes: crate::network::APPEND_PAYLOAD_BYTES,
            append_pipeline: crate::network::APPEND_PIPELINE,
            append_stream_idle: crate::network::APPEND_STREAM_IDLE,
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

/// What a running node is made of, shared by its clones and its background tasks.
struct NodeParts {
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
    pending_read: Mutex<Option<read_barrier::ReadRound>>,
    /// Held by the read round in progress, so that the next one starts after it.
    read_running: tokio::sync::Mutex<()>,
    /// Held by the voter replacement in progress: one at a time per node.
    replacing: tokio::sync::Mutex<()>,
    /// Background tasks (leadership watch, snapshot policy), aborted on shutdown.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Cancelled on shutdown: the append streams this voter serves close with it.
    streams_closed: CancellationToken,
    /// Permits for the append streams this voter serves at once.
    append_streams: Arc<tokio::sync::Semaphore>,
}

/// A running voter. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    parts: Arc<NodeParts>,
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
            heartbeat_min_interval: Some(config.timing.heartbeat_min_interval_ms()),
            election_timeout_min: config.timing.election_min_ms,
            election_timeout_max: config.timing.election_max_ms,
            install_snapshot_timeout: 10_000,
            // Snapshots are triggered by `snapshot_policy` below, which also weighs sizes.
            snapshot_policy: SnapshotPolicy::Never,
            // The log is purged by `log_retention`, which keeps what followers lack.
            max_in_snapshot_log_to_keep: u64::MAX,
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
        let mut transport = Transport::new(config.id, config.secret.as_deref().map(Arc::from), faults);
        transport.append_limit = config.append_body_limit;
        transport.append_payload = config.append_payload_bytes;
        transport.append_pipeline = config.append_pipeline;
        transport.append_stream_idle = config.append_stream_idle;
        let wal_stats = log.stats_handle();
        let raft = Raft::new(config.id, Arc::new(raft_config), transport.clone(), log, state_machine.clone())
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;

        let (leadership_tx, leadership) = watch::channel(Leadership { leader: None, term: 0, is_self: false });
        let (stopped_tx, stopped) = watch::channel(false);
        let (quorum_lost_tx, quorum_lost) = watch::channel(false);
        let node = Node {
            parts: Arc::new(NodeParts {
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
                streams_closed: CancellationToken::new(),
                append_streams: Arc::new(tokio::sync::Semaphore::new(crate::network::MAX_APPEND_STREAMS)),
            }),
        };
        let watcher = tokio::spawn(quorum_watch::watch_metrics(
            Arc::downgrade(&node.parts),
            leadership_tx,
            stopped_tx,
            quorum_lost_tx,
        ));
        let snapshots = tokio::spawn(snapshot_policy::run(Arc::downgrade(&node.parts)));
        let retention = tokio::spawn(log_retention::run(Arc::downgrade(&node.parts)));
        node.parts.tasks.lock().unwrap_or_else(|p| p.into_inner()).extend([watcher, snapshots, retention]);
        Ok(node)
    }

    /// This voter's id.
    pub fn id(&self) -> NodeId {
        self.parts.config.id
    }

    /// This voter's role.
    pub fn role(&self) -> Role {
        self.parts.config.role
    }

    /// The openraft handle, for what this API does not cover.
    pub fn raft(&self) -> &Raft {
        &self.parts.raft
    }

    /// The job table (read it after [`Node::read_barrier`] for linearizable reads).
    pub fn state_machine(&self) -> &StateMachineStore {
        &self.parts.state_machine
    }

    /// The fault hooks of this node's transport.
    pub fn faults(&self) -> &Arc<NetworkFaults> {
        &self.parts.transport.faults
    }

    /// How this voter's appends to its peers went (streams opened, HTTP appends).
    pub fn transport_stats(&self) -> &Arc<TransportStats> {
        &self.parts.transport.stats
    }

    /// The log writer's counters.
    pub fn wal_stats(&self) -> WalStatsSnapshot {
        self.parts.wal_stats.snapshot()
    }

    /// A copy of openraft's metrics now.
    pub fn metrics(&self) -> RaftMetrics {
        self.parts.raft.metrics().borrow_watched().clone()
    }

    /// Resolves once openraft's core has ended: after [`Node::shutdown`], or on its own after a
    /// storage failure or an internal panic, when the voter can no longer do anything useful
    /// and its process should exit so that a supervisor restarts it.
    pub async fn stopped(&self) {
        let mut stopped = self.parts.stopped.clone();
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }

    /// Leadership as this node sees it, updated on every change.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.parts.leadership.clone()
    }

    /// Form a new cluster of `members`, if this node has never been part of one. Returns whether
    /// it did. Call it on one node only, with the same members every time.
    pub async fn initialize(&self, members: BTreeMap<NodeId, NodeInfo>) -> Result<bool, StartError> {
        let initialized = self.parts.raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))?;
        if initialized {
            return Ok(false);
        }
        match self.parts.raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(openraft::errors::InitializeError::NotAllowed(_))) => Ok(false),
            Err(e) => Err(StartError::Raft(e.to_string())),
        }
    }

    /// Stop Raft and the background tasks. The data directory can be opened again afterwards.
    pub async fn shutdown(&self) {
        self.parts.streams_closed.cancel();
        for task in self.parts.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
        if let Err(e) = self.parts.raft.shutdown().await {
            tracing::warn!(node = self.id(), error = %e, "raft shutdown reported an error");
        }
    }
}
