//! The voters' transport: openraft's RPCs as HTTP POSTs with MessagePack bodies, but for
//! AppendEntries, which go over one persistent framed connection per replication stream
//! ([`append_stream`]; HTTP appends remain for peers of the previous version).
//!
//! The server side is an axum router under `/raft/`; the client side is one shared
//! `reqwest::Client` (a connection pool), cloned into a cheap per-peer handle whenever openraft
//! asks for one. Every request names its sender and its intended target in headers: a request
//! meant for another node id (an address reused after a replacement) is refused, and when the
//! cluster has a secret, a request without it is refused too.
//!
//! Errors keep openraft's distinction: a refused connection is `Unreachable` (openraft backs off),
//! anything else that went wrong on the way is a `Network` error (retried at once). A remote
//! `Fatal` (the peer's Raft has stopped) is reported as `Unreachable`.
//!
//! [`NetworkFaults`] lets tests cut links in either direction, and lose chosen requests,
//! in-process, on any machine.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use metrics::counter;
use openraft::alias::SnapshotOf;
use openraft::base::BoxFuture;
use openraft::errors::{NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;

mod append_stream;

pub use append_stream::{
    APPEND_PIPELINE, APPEND_STREAM_IDLE, APPEND_STREAM_PROTOCOL, APPEND_STREAM_ROUTE, MAX_APPEND_STREAMS, StreamReply,
    codec,
};

use crate::state_machine::snapshot::ReceiveError;
use crate::state_machine::{SnapshotData, StateMachineStore};
use crate::type_config::{Entry, NodeId, NodeInfo, Raft, SnapshotMeta, TypeConfig, Vote};

/// Header naming the sending node id.
pub const FROM_HEADER: &str = "x-tandem-from";
/// Header naming the node id the request is meant for.
pub const TARGET_HEADER: &str = "x-tandem-target";
pub use wire::SECRET_HEADER;
/// Content type of every body on these routes.
pub const MSGPACK: &str = "application/msgpack";
/// Snapshots may be large and the receiver writes them to disk: give them time, at least this
/// much, and more for a large one (see [`snapshot_timeout`]).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);
/// The rate a snapshot's deadline allows for its bytes: transfer, decoding the table and writing
/// and fsyncing the file on a slow disk.
const SNAPSHOT_BYTES_PER_SECOND: f64 = 8.0 * (1 << 20) as f64;
/// The header that carries a streamed snapshot's vote and metadata (hex of their MessagePack);
/// the body is the snapshot's table bytes alone.
pub const SNAPSHOT_HEAD_HEADER: &str = "x-tandem-snapshot-head";
/// The header that carries the CRC-32 of a streamed snapshot's table (8 hex digits); the
/// receiver refuses bytes with another. Optional, for senders of the previous version.
pub const SNAPSHOT_CRC_HEADER: &str = "x-tandem-snapshot-crc";
/// The size of the pieces a snapshot's table is read from its file in, as it is sent.
const SNAPSHOT_CHUNK: usize = 256 << 10;

/// The deadline of sending a snapshot of `bytes`: [`SNAPSHOT_TIMEOUT`], or the time its bytes
/// take at [`SNAPSHOT_BYTES_PER_SECOND`] if longer, or openraft's own if longer still.
fn snapshot_timeout(hard_ttl: Duration, bytes: u64) -> Duration {
    hard_ttl.max(SNAPSHOT_TIMEOUT).max(Duration::from_secs_f64(bytes as f64 / SNAPSHOT_BYTES_PER_SECOND))
}

/// The largest AppendEntries body a voter reads. A leader whose batch of entries encodes to more
/// sends the longest prefix that fits and reports a partial success, so openraft sends the rest
/// next (see [`PeerClient::append_entries`]): the limit can never wedge a follower, unless a
/// single entry outgrows it. No entry comes near: the largest are an enqueue batch (512 jobs,
/// about 180 KiB with 256-byte idempotency keys) and a command from one worker request (at
/// most `wire::worker::MAX_BODY_BYTES`).
pub const APPEND_BODY_LIMIT: usize = 64 << 20;
/// The most bytes of entries a leader sends a follower in one AppendEntries: a catch-up (up to
/// openraft's 300 entries, each up to an enqueue batch) goes as a run of requests of about this
/// size, each answered within [`append_timeout`], instead of one of tens of MiB that outlasts
/// every deadline. One round trip per MiB costs a follower little: at ~5 ms per round (transfer,
/// decode, one fsync) it catches up at ~200 MiB/s.
pub const APPEND_PAYLOAD_BYTES: usize = 1 << 20;
/// The rate an append's deadline allows for its body, beyond openraft's per-round deadline (the
/// heartbeat interval, 50 ms): transfer, decoding and one fsync on a slow disk. 1 MiB gets 125 ms
/// more; a heartbeat's few hundred bytes nothing to speak of.
const APPEND_BYTES_PER_SECOND: f64 = 8.0 * (1 << 20) as f64;

/// The least time an AppendEntries that carries entries is given. openraft's per-round deadline
/// is the heartbeat interval (50 ms), which a follower's fsync alone can outlast on a busy disk:
/// under `bench catchup` (128 clients, every process on 2 cores) appends of a few KiB to a
/// healthy follower and to the witness timed out, and each one is sent again after a backoff.
/// A follower that is really gone is seen at once (the connection is refused) or by its missed
/// heartbeats, which keep openraft's deadline.
pub const APPEND_MIN_TIMEOUT: Duration = Duration::from_millis(500);

/// The deadline of an AppendEntries whose body is `bytes` long: a heartbeat (no entries) gets
/// openraft's `hard_ttl`; one with entries at least [`APPEND_MIN_TIMEOUT`], plus the time the
/// body takes at [`APPEND_BYTES_PER_SECOND`].
pub fn append_timeout(hard_ttl: Duration, heartbeat: bool, bytes: usize) -> Duration {
    if heartbeat {
        return hard_ttl;
    }
    hard_ttl.max(APPEND_MIN_TIMEOUT) + Duration::from_secs_f64(bytes as f64 / APPEND_BYTES_PER_SECOND)
}

/// The largest forwarded proposal: one entry (see [`APPEND_BODY_LIMIT`]), the largest being a
/// command from one worker request (a follower coordinator forwards a worker's heartbeat).
pub const PROPOSE_BODY_LIMIT: usize = wire::worker::MAX_BODY_BYTES + (64 << 10);
/// The largest snapshot in the previous format (`/raft/snapshot`: the vote, the metadata and the
/// bytes in one MessagePack body), still read from leaders of the previous version during a
/// rolling upgrade. Snapshots are sent streamed (`/raft/snapshot-stream`), with no ceiling.
pub const SNAPSHOT_BODY_LIMIT: usize = 512 << 20;
/// Votes, transfers, read-index, status, failover and voter replacement: fixed-size messages of
/// a few hundred bytes (a membership with its addresses at most).
pub const CONTROL_BODY_LIMIT: usize = 64 << 10;

/// A route's body limit of `max` bytes: a request that announces a longer body (its
/// Content-Length) is answered 413 from its head, before any of the body is read; a body sent
/// without a length is cut off at `max`, and the extractors buffer no more than that.
pub fn body_limit(max: usize) -> (RequestBodyLimitLayer, DefaultBodyLimit) {
    (RequestBodyLimitLayer::new(max), DefaultBodyLimit::max(max))
}

/// Links cut and requests lost for fault injection. Empty in production.
#[derive(Debug, Default)]
pub struct NetworkFaults {
    /// Peers this node neither sends to nor accepts requests from.
    isolated_from: RwLock<BTreeSet<NodeId>>,
    /// How many of the next requests to (peer, route) are lost on the way; `lossy` says whether
    /// any are, so that a request in production takes no lock for it.
    losses: Mutex<BTreeMap<(NodeId, String), usize>>,
    lossy: AtomicBool,
}

impl NetworkFaults {
    /// Cut the link between this node and `peer`, both ways.
    pub fn isolate_from(&self, peer: NodeId) {
        self.isolated_from.write().unwrap_or_else(|p| p.into_inner()).insert(peer);
    }

    /// Restore the link to `peer`.
    pub fn heal(&self, peer: NodeId) {
        self.isolated_from.write().unwrap_or_else(|p| p.into_inner()).remove(&peer);
    }

    /// Restore every link.
    pub fn heal_all(&self) {
        self.isolated_from.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Whether the link to `peer` is cut.
    pub fn is_cut(&self, peer: NodeId) -> bool {
        self.isolated_from.read().unwrap_or_else(|p| p.into_inner()).contains(&peer)
    }

    /// Lose the next `count` requests this node sends to `peer` on `/raft/{route}` (the sender
    /// sees a network error, the peer nothing).
    pub fn lose_next(&self, peer: NodeId, route: &str, count: usize) {
        let mut losses = self.losses.lock().unwrap_or_else(|p| p.into_inner());
        match count {
            0 => losses.remove(&(peer, route.to_owned())),
            _ => losses.insert((peer, route.to_owned()), count),
        };
        self.lossy.store(!losses.is_empty(), Ordering::Release);
    }

    /// Whether this request to `peer` on `route` is to be lost (and count it).
    fn lose(&self, peer: NodeId, route: &str) -> bool {
        if !self.lossy.load(Ordering::Acquire) {
            return false;
        }
        let mut losses = self.losses.lock().unwrap_or_else(|p| p.into_inner());
        let key = (peer, route.to_owned());
        let Some(left) = losses.get_mut(&key) else { return false };
        *left -= 1;
        if *left == 0 {
            losses.remove(&key);
            self.lossy.store(!losses.is_empty(), Ordering::Release);
        }
        true
    }
}

/// How a node's appends went: for tests, which check the transport used.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Append streams opened (connections upgraded), to every peer.
    pub append_streams_opened: AtomicU64,
    /// AppendEntries sent as HTTP requests (to a peer without append streams).
    pub http_appends: AtomicU64,
}

/// What a node needs to talk to its peers.
#[derive(Clone)]
pub struct Transport {
    /// This node's id, sent as [`FROM_HEADER`].
    pub self_id: NodeId,
    /// The shared HTTP client (one connection pool for all peers).
    pub http: reqwest::Client,
    /// The cluster secret, sent with every request when set.
    pub secret: Option<Arc<str>>,
    /// Fault hooks.
    pub faults: Arc<NetworkFaults>,
    /// The largest AppendEntries body sent: the receiver's limit ([`APPEND_BODY_LIMIT`]).
    pub append_limit: usize,
    /// The bytes of entries sent in one AppendEntries ([`APPEND_PAYLOAD_BYTES`]); always at
    /// least one entry.
    pub append_payload: usize,
    /// The most AppendEntries unanswered on one append stream ([`APPEND_PIPELINE`]).
    pub append_pipeline: usize,
    /// An append stream unused for half of this is not reused ([`APPEND_STREAM_IDLE`]).
    pub append_stream_idle: Duration,
    /// Counts of how appends went.
    pub stats: Arc<TransportStats>,
}

impl Transport {
    /// A transport for node `self_id`.
    pub fn new(self_id: NodeId, secret: Option<Arc<str>>, faults: Arc<NetworkFaults>) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            // Below the servers' header timeout (10 s by default), after which they close an idle
            // connection: a pooled one is dropped first rather than raced.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .expect("a reqwest client with static settings always builds");
        Transport {
            self_id,
            http,
            secret,
            faults,
            append_limit: APPEND_BODY_LIMIT,
            append_payload: APPEND_PAYLOAD_BYTES,
            append_pipeline: APPEND_PIPELINE,
            append_stream_idle: APPEND_STREAM_IDLE,
            stats: Arc::default(),
        }
    }

    /// POST `body` to `path` on `target` at `raft_addr`, with the cluster headers, and decode the
    /// MessagePack answer. Transport failures come back as [`RPCError`]s.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        raft_addr: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        self.call_encoded(target, raft_addr, path, path, Vec::new(), encode(req)?.into(), timeout).await
    }

    /// [`Transport::call`] with the request already encoded (or streamed); `kind` names it in the
    /// timeout counter (the path, or "heartbeat" for an append without entries); `headers` are
    /// sent besides the transport's own.
    #[allow(clippy::too_many_arguments)]
    async fn call_encoded<Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        raft_addr: &str,
        path: &str,
        kind: &str,
        headers: Vec<(&'static str, String)>,
        body: reqwest::Body,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        if self.faults.is_cut(target) {
            return Err(cut_link(target));
        }
        if self.faults.lose(target, path) {
            return Err(RPCError::Network(NetworkError::from_string(format!(
                "request to node {target} on /raft/{path} lost by fault injection"
            ))));
        }
        let mut request = self.post(target, raft_addr, path).timeout(timeout).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| self.send_error(target, kind, e))?;
        if !response.status().is_success() {
            return Err(refused(target, raft_addr, path, response).await);
        }
        let bytes = response.bytes().await.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        wire::from_msgpack(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    /// A POST to `/raft/{path}` on `target` at `raft_addr`, with the cluster headers.
    fn post(&self, target: NodeId, raft_addr: &str, path: &str) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(format!("http://{raft_addr}/raft/{path}"))
            .header(header::CONTENT_TYPE, MSGPACK)
            .header(FROM_HEADER, self.self_id)
            .header(TARGET_HEADER, target);
        if let Some(secret) = &self.secret {
            request = request.header(SECRET_HEADER, secret.as_ref());
        }
        request
    }

    /// A request to `target` that failed on the way: `Unreachable` if no connection was made,
    /// else a `Network` error (a timeout counted under `kind`).
    fn send_error(&self, target: NodeId, kind: &str, e: reqwest::Error) -> RPCError<TypeConfig> {
        if e.is_timeout() {
            counter!("tandem_raft_rpc_timeouts_total", "peer" => target.to_string(), "kind" => kind.to_owned())
                .increment(1);
        }
        if e.is_connect() {
            RPCError::Unreachable(Unreachable::new(&e))
        } else {
            RPCError::Network(NetworkError::new(&e))
        }
    }
}

/// The error of a link cut by fault injection: unreachable, without touching the network.
fn cut_link(target: NodeId) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(format!("link to node {target} is cut")))
}

/// The error of a request `target` answered with an HTTP error status, with the status and text.
async fn refused(target: NodeId, raft_addr: &str, path: &str, response: reqwest::Response) -> RPCError<TypeConfig> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    RPCError::Network(NetworkError::from_string(format!(
        "HTTP {status} from node {target} at {raft_addr}/raft/{path}: {text}"
    )))
}

/// How many of `entries`, from the first, make a request of at most `budget` bytes, given that
/// the request with all of them encodes to `request_len`; at least one.
fn prefix_within(entries: &[Entry], request_len: usize, budget: usize) -> usize {
    let sizes = entry_sizes(entries);
    // The vote, the previous log id, the commit index: what the request holds besides entries.
    let fixed = request_len.saturating_sub(sizes.iter().sum());
    runs_of(&sizes, fixed, budget)[0]
}

/// The lengths of the runs `entries` split into so that each run makes a request of at most
/// `budget` bytes (a run of one entry may be larger), given that a request holds `fixed` bytes
/// besides its entries. Never empty: a request without entries is one run of none.
fn runs_within(entries: &[Entry], fixed: usize, budget: usize) -> Vec<usize> {
    runs_of(&entry_sizes(entries), fixed, budget)
}

/// The encoded size of each of `entries`.
fn entry_sizes(entries: &[Entry]) -> Vec<usize> {
    /// Counts what is written to it.
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    entries
        .iter()
        .map(|entry| {
            let mut counter = Counter(0);
            // An entry that does not encode fails the request's own encoding, with its error.
            let _ = rmp_serde::encode::write_named(&mut counter, entry);
            counter.0
        })
        .collect()
}

/// [`runs_within`], given the entries' sizes.
fn runs_of(sizes: &[usize], fixed: usize, budget: usize) -> Vec<usize> {
    let mut runs = vec![0];
    let mut used = fixed;
    for &size in sizes {
        let run = runs.last_mut().expect("never empty");
        if *run > 0 && used + size > budget {
            runs.push(1);
            used = fixed + size;
        } else {
            *run += 1;
            used += size;
        }
    }
    runs
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RPCError<TypeConfig>> {
    rmp_serde::to_vec_named(value).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

impl RaftNetworkFactory<TypeConfig> for Transport {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            transport: self.clone(),
            target,
            raft_addr: node.raft_addr.clone(),
            connection: std::sync::Mutex::new(None),
            http_appends_until: None,
        }
    }
}

/// openraft's handle to one peer: a clone of the shared client plus the peer's address, and the
/// append stream this handle keeps open to it ([`append_stream`]). openraft holds one handle per
/// replication stream and one for heartbeats, and makes one per vote (which never opens a
/// stream).
pub struct PeerClient {
    transport: Transport,
    target: NodeId,
    raft_addr: String,
    /// The append stream kept between sessions, every request on it answered. (In a mutex only
    /// because openraft wants the handle `Sync`; it is reached through `&mut self`, unlocked.)
    connection: std::sync::Mutex<Option<append_stream::Kept>>,
    /// Until when appends go as HTTP requests: the peer said it has no append stream.
    http_appends_until: Option<Instant>,
}

impl PeerClient {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        self.rpc_encoded(path, path, encode(req)?, timeout).await
    }

    async fn rpc_encoded<Resp: DeserializeOwned>(
        &self,
        path: &str,
        kind: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let result: Result<Resp, RaftError<TypeConfig>> = self
            .transport
            .call_encoded(self.target, &self.raft_addr, path, kind, Vec::new(), body.into(), timeout)
            .await?;
        result.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // Send the longest prefix of the entries that fits the payload bound (and, halving
        // until it does, the receiver's limit: only for an entry of unusual size), and report a
        // partial success so that openraft sends the rest next.
        let mut req = req;
        let all = req.entries.len();
        let mut body = encode(&req)?;
        let budget = self.transport.append_payload.min(self.transport.append_limit);
        if body.len() > budget && all > 1 {
            req.entries.truncate(prefix_within(&req.entries, body.len(), budget));
            body = encode(&req)?;
        }
        while body.len() > self.transport.append_limit && req.entries.len() > 1 {
            req.entries.truncate(req.entries.len() / 2);
            body = encode(&req)?;
        }
        let heartbeat = req.entries.is_empty();
        self.transport.stats.http_appends.fetch_add(1, Ordering::Relaxed);
        let timeout = append_timeout(option.hard_ttl(), heartbeat, body.len());
        let kind = if heartbeat { "heartbeat" } else { "append" };
        let response = self.rpc_encoded("append", kind, body, timeout).await?;
        match (response, req.entries.last()) {
            (AppendEntriesResponse::Success, Some(last)) if req.entries.len() < all => {
                tracing::debug!(target = self.target, sent = req.entries.len(), of = all, "sent a prefix of an append");
                counter!("tandem_raft_append_prefixes_total", "peer" => self.target.to_string()).increment(1);
                Ok(AppendEntriesResponse::PartialSuccess(Some(last.log_id)))
            }
            (response, _) => Ok(response),
        }
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<append_stream::Answers<'s>, RPCError<TypeConfig>>>
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        self.stream_append_over_connection(input, option)
    }

    async fn vote(
        &mut self,
        req: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc("vote", &req, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        req: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc("pre-vote", &req, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        counter!("tandem_raft_snapshots_sent_total", "peer" => self.target.to_string()).increment(1);
        // The vote and metadata in a header, the table's bytes as the body, read from the
        // snapshot's file as they are sent: no copy in memory and no ceiling on their size.
        let data = &snapshot.snapshot;
        let headers = vec![
            (SNAPSHOT_HEAD_HEADER, hex::encode(encode(&(vote, &snapshot.meta))?)),
            (SNAPSHOT_CRC_HEADER, format!("{:08x}", data.table_crc())),
            (header::CONTENT_LENGTH.as_str(), data.table_len().to_string()),
        ];
        let timeout = snapshot_timeout(option.hard_ttl(), data.table_len());
        let stream = data.table_stream(SNAPSHOT_CHUNK).map_err(|e| Unreachable::new(&e))?;
        let body = reqwest::Body::wrap_stream(stream);
        let (transport, target, addr) = (&self.transport, self.target, &self.raft_addr);
        let call = transport.call_encoded(target, addr, "snapshot-stream", "snapshot", headers, body, timeout);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = call => {
                let result: Result<SnapshotResponse<TypeConfig>, RaftError<TypeConfig>> = result?;
                Ok(result.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?)
            }
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc("transfer-leader", &req, option.hard_ttl()).await
    }
}

/// What the check in front of every `/raft/` route needs.
#[derive(Clone)]
pub struct PeerCheck {
    /// This node's id: requests for another id are refused.
    pub self_id: NodeId,
    /// Required in [`SECRET_HEADER`] when set.
    pub secret: Option<Arc<str>>,
    /// Fault hooks: requests from a cut peer are refused.
    pub faults: Arc<NetworkFaults>,
}

/// Encode `value` as a MessagePack response.
pub fn msgpack_response<T: Serialize>(value: &T) -> Response {
    match rmp_serde::to_vec_named(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, HeaderValue::from_static(MSGPACK))], bytes).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not encode a Raft RPC response");
            (StatusCode::INTERNAL_SERVER_ERROR, "response encoding failed").into_response()
        }
    }
}

/// Why a `/raft/` request was refused, with the status it gets.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal { status, message: message.into() }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, self.message).into_response()
    }
}

/// Refuse requests that are not for this node, lack the secret, or come over a cut link.
fn check_request(check: &PeerCheck, headers: &HeaderMap) -> Result<(), Refusal> {
    if let Some(secret) = &check.secret {
        let given = headers.get(SECRET_HEADER).and_then(|v| v.to_str().ok());
        if !wire::secret_matches(given, secret) {
            return Err(Refusal::new(StatusCode::UNAUTHORIZED, "missing or wrong cluster secret"));
        }
    }
    let header_id = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<NodeId>().ok());
    match header_id(TARGET_HEADER) {
        Some(target) if target == check.self_id => {}
        Some(target) => {
            return Err(Refusal::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!("this is node {}, not node {target}", check.self_id),
            ));
        }
        None => {
            return Err(Refusal::new(StatusCode::BAD_REQUEST, format!("missing {TARGET_HEADER} header")));
        }
    }
    if let Some(from) = header_id(FROM_HEADER)
        && check.faults.is_cut(from)
    {
        return Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "link cut by fault injection"));
    }
    Ok(())
}

/// The layer in front of every `/raft/` route: it refuses a request that is not for this
/// node, lacks the secret or comes over a cut link, before its body is read.
pub async fn require_peer(State(check): State<PeerCheck>, request: Request, next: Next) -> Response {
    match check_request(&check, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// A MessagePack request body, decoded; a body that does not decode is a 400.
pub struct MsgPack<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for MsgPack<T> {
    type Rejection = Refusal;

    async fn from_request(request: Request, state: &S) -> Result<Self, Refusal> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|e| Refusal::new(e.status(), format!("could not read the body: {}", e.body_text())))?;
        wire::from_msgpack(&body)
            .map(MsgPack)
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("undecodable MessagePack body: {e}")))
    }
}

async fn append(
    State(raft): State<Raft>,
    headers: HeaderMap,
    MsgPack(req): MsgPack<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    counter!("tandem_raft_appends_received_total", "from" => header_value(&headers, FROM_HEADER)).increment(1);
    msgpack_response(&raft.append_entries(req).await)
}

/// A header's value as text, "unknown" when absent or not text.
fn header_value(headers: &HeaderMap, name: &str) -> String {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("unknown").to_owned()
}

async fn vote(State(raft): State<Raft>, MsgPack(req): MsgPack<VoteRequest<TypeConfig>>) -> Response {
    msgpack_response(&raft.vote(req).await)
}

async fn pre_vote(State(raft): State<Raft>, MsgPack(req): MsgPack<VoteRequest<TypeConfig>>) -> Response {
    msgpack_response(&raft.pre_vote(req).await)
}

/// A snapshot in the previous format (see [`SNAPSHOT_BODY_LIMIT`]): written to a file, then
/// installed like a streamed one.
async fn snapshot(
    State(peer): State<PeerRoutes>,
    MsgPack((vote, meta, data)): MsgPack<(Vote, SnapshotMeta, serde_bytes::ByteBuf)>,
) -> Response {
    let (store, file_meta) = (peer.store.clone(), meta.clone());
    let written = tokio::task::spawn_blocking(move || store.snapshot_from_bytes(&file_meta, &data)).await;
    match written.map_err(io::Error::other).and_then(|written| written) {
        Ok(data) => install(&peer.raft, vote, meta, data).await,
        Err(e) => {
            Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, format!("writing the snapshot failed: {e}")).into_response()
        }
    }
}

/// A snapshot streamed by [`PeerClient::full_snapshot`]: the vote and metadata from
/// [`SNAPSHOT_HEAD_HEADER`], the table's bytes from the body, written to a file as they arrive
/// whatever their length (the sender proved it holds the cluster secret before any of it was
/// read). A body that ends before its announced length is an error of the body stream (hyper
/// holds it to the length), and one whose checksum is not the [`SNAPSHOT_CRC_HEADER`]'s is
/// refused: nothing half-received or damaged is installed, and its file is removed.
async fn snapshot_stream(State(peer): State<PeerRoutes>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let head = headers
        .get(SNAPSHOT_HEAD_HEADER)
        .and_then(|value| hex::decode(value.as_bytes()).ok())
        .and_then(|bytes| wire::from_msgpack::<(Vote, SnapshotMeta)>(&bytes).ok());
    let Some((vote, meta)) = head else {
        return Refusal::new(StatusCode::BAD_REQUEST, format!("missing or undecodable {SNAPSHOT_HEAD_HEADER}"))
            .into_response();
    };
    let crc = match headers.get(SNAPSHOT_CRC_HEADER) {
        None => None,
        Some(value) => match value.to_str().ok().and_then(|value| u32::from_str_radix(value, 16).ok()) {
            Some(crc) => Some(crc),
            None => {
                return Refusal::new(StatusCode::BAD_REQUEST, format!("undecodable {SNAPSHOT_CRC_HEADER}"))
                    .into_response();
            }
        },
    };
    match crate::state_machine::snapshot::receive(peer.store.dir(), &meta, body.into_data_stream(), crc).await {
        Ok(data) => install(&peer.raft, vote, meta, data).await,
        Err(ReceiveError::Body(e)) => Refusal::new(StatusCode::BAD_REQUEST, e).into_response(),
        Err(e @ ReceiveError::Io(_)) => Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Hand a received snapshot to openraft, and answer with what it says.
async fn install(raft: &Raft, vote: Vote, meta: SnapshotMeta, data: SnapshotData) -> Response {
    let result: Result<SnapshotResponse<TypeConfig>, RaftError<TypeConfig>> =
        raft.install_full_snapshot(vote, Snapshot { meta, snapshot: data }).await.map_err(RaftError::Fatal);
    msgpack_response(&result)
}

async fn transfer_leader(
    State(raft): State<Raft>,
    MsgPack(req): MsgPack<TransferLeaderRequest<TypeConfig>>,
) -> Response {
    let result: Result<TransferLeaderResponse<TypeConfig>, RaftError<TypeConfig>> =
        raft.handle_transfer_leader(req).await.map_err(RaftError::Fatal);
    msgpack_response(&result)
}

/// The routes openraft's peers call (append, append-stream, vote, pre-vote, snapshot,
/// transfer-leader), behind [`require_peer`], each with the body limit its traffic needs. Add
/// other `/raft/` routes before the layer is applied (see `Node::router`).
pub fn raft_rpc_router(raft: Raft, store: StateMachineStore, streams: StreamSettings) -> Router {
    let append_limit = streams.append_limit;
    Router::new()
        .route("/raft/append", post(append).layer(body_limit(append_limit)))
        .route("/raft/append-stream", post(append_stream::open))
        .route("/raft/vote", post(vote).layer(body_limit(CONTROL_BODY_LIMIT)))
        .route("/raft/pre-vote", post(pre_vote).layer(body_limit(CONTROL_BODY_LIMIT)))
        .route("/raft/snapshot", post(snapshot).layer(body_limit(SNAPSHOT_BODY_LIMIT)))
        .route("/raft/snapshot-stream", post(snapshot_stream))
        .route("/raft/transfer-leader", post(transfer_leader).layer(body_limit(CONTROL_BODY_LIMIT)))
        .with_state(PeerRoutes { raft, store, streams })
}

/// How a voter serves append streams.
#[derive(Clone)]
pub struct StreamSettings {
    /// The largest frame read: [`APPEND_BODY_LIMIT`] but in tests.
    pub append_limit: usize,
    /// Fault hooks: a stream from a peer whose link is cut is closed at its next frame.
    pub faults: Arc<NetworkFaults>,
    /// A stream without a frame for this long is closed ([`APPEND_STREAM_IDLE`]).
    pub idle: Duration,
    /// Permits for the streams served at once ([`append_stream::MAX_APPEND_STREAMS`]).
    pub open: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the voter shuts down: its streams close with it.
    pub closed: CancellationToken,
}

/// What the peer routes serve from: the Raft, the state machine store snapshots are received
/// into, and how append streams are served.
#[derive(Clone)]
struct PeerRoutes {
    raft: Raft,
    store: StateMachineStore,
    streams: StreamSettings,
}

impl axum::extract::FromRef<PeerRoutes> for Raft {
    fn from_ref(routes: &PeerRoutes) -> Raft {
        routes.raft.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Digest;
    use crate::job_table::{Command, NewJob};
    use crate::type_config::LogId;

    fn request(entries: usize) -> AppendEntriesRequest<TypeConfig> {
        let leader = openraft::impls::leader_id_adv::LeaderId { term: 2, node_id: 1 };
        let entries = (1..=entries as u64)
            .map(|index| Entry {
                log_id: LogId::new(leader, index),
                payload: openraft::EntryPayload::Normal(Command::Enqueue {
                    jobs: (0..index % 7 + 1)
                        .map(|i| NewJob {
                            digest: Digest([i as u8; 64]),
                            iterations: index,
                            enqueued_at_ms: index,
                            idempotency_key: Some("k".repeat(index as usize % 200)),
                            reuse: false,
                        })
                        .collect(),
                }),
            })
            .collect();
        AppendEntriesRequest { vote: Vote::new_committed(2, 1), prev_log_id: None, entries, leader_commit: None }
    }

    #[test]
    fn the_prefix_is_the_longest_that_fits_the_budget() {
        let all = request(300);
        let len = encode(&all).expect("encode").len();
        for budget in [1, 2_000, 10_000, 40_000, len - 1, len] {
            let n = prefix_within(&all.entries, len, budget);
            let with = |n: usize| {
                let mut req = all.clone();
                req.entries.truncate(n);
                encode(&req).expect("encode").len()
            };
            if budget >= len {
                assert_eq!(n, 300, "everything fits");
                continue;
            }
            assert!((1..300).contains(&n), "budget {budget}: {n} entries");
            if n > 1 {
                assert!(with(n) <= budget, "budget {budget}: {n} entries encode to {}", with(n));
            }
            assert!(with(n + 1) > budget, "budget {budget}: one more entry ({}) would fit too", with(n + 1));
        }
    }

    #[test]
    fn a_snapshots_deadline_grows_with_its_size_past_a_minute() {
        let ttl = Duration::from_millis(50);
        assert_eq!(snapshot_timeout(ttl, 1 << 20), SNAPSHOT_TIMEOUT);
        // 4 GiB at 8 MiB/s: 512 s.
        assert_eq!(snapshot_timeout(ttl, 4 << 30), Duration::from_secs(512));
        assert_eq!(snapshot_timeout(Duration::from_secs(600), 0), Duration::from_secs(600));
    }

    #[test]
    fn an_appends_deadline_grows_with_its_body() {
        let ttl = Duration::from_millis(50);
        assert_eq!(append_timeout(ttl, true, 300), ttl, "a heartbeat keeps openraft's deadline");
        let small = append_timeout(ttl, false, 300);
        assert!(small >= APPEND_MIN_TIMEOUT && small < APPEND_MIN_TIMEOUT + Duration::from_millis(1));
        assert_eq!(append_timeout(ttl, false, APPEND_PAYLOAD_BYTES), APPEND_MIN_TIMEOUT + Duration::from_millis(125));
        assert_eq!(append_timeout(Duration::from_secs(2), false, 0), Duration::from_secs(2), "a longer ttl stands");
    }
}
