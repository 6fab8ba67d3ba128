//! AppendEntries over one persistent connection per replication stream.
//!
//! A leader's replication stream to a follower (and, apart from it, its heartbeat stream: openraft
//! keeps heartbeats on a client of their own so that a long append never delays them) opens one
//! connection to the follower's Raft address and keeps it. The connection starts as an HTTP
//! request, `POST /raft/append-stream` with `Upgrade: tandem-append/1`, which passes the check
//! every `/raft/` route passes (the cluster secret, the target's id, a cut link) on its head
//! alone: a peer without the secret is refused before a single frame is read. Once the follower
//! answers `101 Switching Protocols`, both sides speak frames: a 4-byte big-endian length, then
//! that many bytes of MessagePack. The leader sends AppendEntries requests; the follower hands
//! them to `Raft::stream_append`, which processes them in order, and sends back one
//! [`StreamReply`] per request, in the same order.
//!
//! The leader keeps at most [`APPEND_PIPELINE`] requests unanswered (`NodeConfig::append_pipeline`):
//! openraft builds each request when the stream is polled, so a request built while the previous
//! one is on its way carries every entry proposed in between (batching is kept), and the
//! follower's log writer merges appends that arrive together into one write and one fsync.
//!
//! A request whose entries encode to more than the payload bound (`append_payload`) goes as
//! several frames, each a request for the next run of entries (its `prev_log_id` the previous
//! run's last); openraft sees one answer, the last run's.
//!
//! Failures: a connection that cannot be opened, breaks, or is closed by the follower is
//! `Unreachable` (openraft backs off and opens a new one); an answer that does not come in time
//! is a `Network` error (counted in `tandem_raft_rpc_timeouts_total`), and the connection is
//! dropped either way, so no answer is ever matched to the wrong request. A follower that
//! answers an upgrade with 404 predates this transport: its appends go as HTTP requests (one at a
//! time, as before) and the upgrade is tried again a minute later.
//!
//! After answering an error (a conflict, a higher vote) or on its Raft's end, the follower closes
//! the connection: openraft's receiving stream ends there, and the leader starts a new session
//! on a new connection. A connection is reused across sessions only when every request sent on
//! it was answered, and not after it idled for half of `append_stream_idle` (the follower closes
//! a stream without a frame for that long, so one whose leader vanished is not kept for good).
//! A voter serves at most [`MAX_APPEND_STREAMS`] at once (upgraded connections leave the
//! server's connection bound).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{FutureExt, SinkExt, Stream, StreamExt};
use metrics::counter;
use openraft::OptionalSend;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, Unreachable};
use openraft::network::{RPCOption, stream_append_sequential};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::{
    APPEND_MIN_TIMEOUT, FROM_HEADER, NetworkFaults, PeerClient, PeerRoutes, StreamSettings, Transport, append_timeout,
    encode,
};
use crate::type_config::{Entry, LogId, NodeId, Raft, TypeConfig};

/// The protocol named in the `Upgrade` header of the request that opens an append stream.
pub const APPEND_STREAM_PROTOCOL: &str = "tandem-append/1";
/// The route (under `/raft/`) that opens an append stream.
pub const APPEND_STREAM_ROUTE: &str = "append-stream";
/// How many AppendEntries a leader keeps unanswered on one stream, by default.
pub const APPEND_PIPELINE: usize = 2;
/// A follower closes an append stream on which no frame came for this long, and a leader does not
/// reuse one it has not used for half of it (by default: `NodeConfig::append_stream_idle`). Without it, a stream whose leader vanished without
/// closing it (its packets dropped by a partition, its host gone) would be kept for good on the
/// follower. An idle replication stream costs one new connection per half of this.
pub const APPEND_STREAM_IDLE: Duration = Duration::from_secs(60);
/// The most append streams a voter serves at once: a leader opens two to each follower (appends
/// and heartbeats), and a few more may linger after leadership changes until they idle out.
pub const MAX_APPEND_STREAMS: usize = 64;
/// How long after a follower said it has no append stream its appends go as HTTP requests
/// before the upgrade is tried again (a rolling upgrade replaces it in the meantime).
const HTTP_APPENDS_FOR: Duration = Duration::from_secs(60);

/// What a follower sends back for each request frame: openraft's answer, or, when its Raft has
/// stopped, why (the leader reports that as `Unreachable`, as it does a stopped peer over HTTP).
pub type StreamReply = Result<StreamAppendResult<TypeConfig>, String>;

/// The framing of an append stream: frames of at most `max_frame` bytes after a 4-byte
/// big-endian length. A longer frame is refused from its length, before its bytes are read.
pub fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().length_field_type::<u32>().max_frame_length(max_frame).new_codec()
}

/// The answers of a `stream_append` session, in the order of its requests.
pub(super) type Answers<'s> = BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>;

/// An open append stream, on the leader's side.
pub(super) type Connection = Framed<reqwest::Upgraded, LengthDelimitedCodec>;

/// An append stream kept between sessions, and when it last carried a frame.
pub(super) struct Kept {
    connection: Connection,
    since: Instant,
}

fn unreachable(message: String) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(message))
}

fn network(message: String) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(message))
}

impl Transport {
    /// Open an append stream to `target` at `raft_addr` within `timeout`; `None` if the target
    /// serves no append streams (it predates them: the route is unknown to it).
    pub(super) async fn open_append_stream(
        &self,
        target: NodeId,
        raft_addr: &str,
        timeout: Duration,
    ) -> Result<Option<Connection>, RPCError<TypeConfig>> {
        if self.faults.is_cut(target) {
            return Err(super::cut_link(target));
        }
        let request = self
            .post(target, raft_addr, APPEND_STREAM_ROUTE)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, APPEND_STREAM_PROTOCOL);
        let opening = async {
            let response = request.send().await.map_err(|e| self.send_error(target, "append-stream", e))?;
            match response.status() {
                StatusCode::SWITCHING_PROTOCOLS => {
                    response.upgrade().await.map(Some).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
                }
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Ok(None),
                _ => Err(super::refused(target, raft_addr, APPEND_STREAM_ROUTE, response).await),
            }
        };
        let upgraded = match tokio::time::timeout(timeout, opening).await {
            Ok(opened) => opened?,
            Err(_) => {
                counter!("tandem_raft_rpc_timeouts_total", "peer" => target.to_string(), "kind" => "append-stream")
                    .increment(1);
                return Err(network(format!("opening an append stream to node {target} took over {timeout:?}")));
            }
        };
        Ok(upgraded.map(|upgraded| {
            self.stats.append_streams_opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            counter!("tandem_raft_append_streams_opened_total", "peer" => target.to_string()).increment(1);
            Framed::new(upgraded, codec(self.append_limit))
        }))
    }
}

impl PeerClient {
    /// The slot of the append stream kept between sessions.
    fn kept_connection(&mut self) -> &mut Option<Kept> {
        self.connection.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The append stream to use for a session, and when it last carried a frame: the one kept
    /// from the last session (the session replaces it before its first frame if it went stale,
    /// [`Session::replace_if_stale`]), else a new one; `None` if the target serves none.
    async fn append_connection(&mut self, timeout: Duration) -> Result<Option<Kept>, RPCError<TypeConfig>> {
        if let Some(kept) = self.kept_connection().take() {
            return Ok(Some(kept));
        }
        let opened = self.transport.open_append_stream(self.target, &self.raft_addr, timeout).await?;
        Ok(opened.map(|connection| Kept { connection, since: Instant::now() }))
    }

    /// [`openraft::network::RaftNetworkV2::stream_append`]: the requests of `input` over this
    /// peer's append stream, at most `append_pipeline` unanswered; over HTTP, one at a time, to
    /// a follower that has no append stream.
    pub(super) fn stream_append_over_connection<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<Answers<'s>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            if self.http_appends_until.is_some_and(|until| Instant::now() < until) {
                return stream_append_sequential(self, input, option).await;
            }
            let hard_ttl = option.hard_ttl();
            let Some(Kept { connection, since }) = self.append_connection(hard_ttl.max(APPEND_MIN_TIMEOUT)).await?
            else {
                tracing::warn!(
                    target = self.target,
                    "the follower has no append stream (an older version): appends go as HTTP requests"
                );
                self.http_appends_until = Some(Instant::now() + HTTP_APPENDS_FOR);
                return stream_append_sequential(self, input, option).await;
            };
            self.http_appends_until = None;
            let session = Session {
                connection: Some(connection),
                client: self,
                input: input.fuse(),
                queued: VecDeque::new(),
                sent: VecDeque::new(),
                hard_ttl,
                last_io: since,
                ended: false,
                broken: false,
            };
            let answers = futures::stream::unfold(session, |mut session| async move {
                let answer = session.next().await?;
                Some((answer, session))
            });
            let answers: Answers<'s> = Box::pin(answers);
            Ok(answers)
        })
    }
}

/// A frame ready to go: one request, or one run of a request's entries.
struct Piece {
    bytes: Bytes,
    /// For a run before the last, the answer that lets the next go on (the follower holds the
    /// run's last entry); `None` for the last run, whose answer is the request's.
    run_ends_at: Option<Option<LogId>>,
    heartbeat: bool,
}

/// A frame sent and not yet answered.
struct Sent {
    /// When its answer is due: never before the answer of a frame sent before it.
    deadline: tokio::time::Instant,
    run_ends_at: Option<Option<LogId>>,
    heartbeat: bool,
}

/// One `stream_append` call: openraft's requests in, answers out, over one connection.
struct Session<'s, S> {
    client: &'s mut PeerClient,
    /// Present until the session ends; then kept by the client if every frame was answered.
    connection: Option<Connection>,
    input: futures::stream::Fuse<S>,
    /// Frames of a request split in runs, not sent yet (the pipeline was full).
    queued: VecDeque<Piece>,
    sent: VecDeque<Sent>,
    hard_ttl: Duration,
    /// When the connection last carried a frame either way.
    last_io: Instant,
    ended: bool,
    /// An answer came that openraft cannot be told about run by run: the session ends after
    /// it, and so does the connection.
    broken: bool,
}

/// What the session waited for.
enum Event {
    Answer(Option<std::io::Result<tokio_util::bytes::BytesMut>>),
    Late,
    Request(Option<AppendEntriesRequest<TypeConfig>>),
}

impl<S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin> Session<'_, S> {
    async fn next(&mut self) -> Option<Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> {
        if self.ended {
            return None;
        }
        let step = self.step().await;
        self.ended = self.broken || !matches!(step, Ok(Some(Ok(_))));
        if self.broken {
            self.connection = None;
        }
        match step {
            Ok(Some(answer)) => Some(Ok(answer)),
            Ok(None) => {
                // Every request answered and no more to come: the connection serves the next
                // session.
                let connection = self.connection.take().filter(|_| self.sent.is_empty());
                let since = self.last_io;
                *self.client.kept_connection() = connection.map(|connection| Kept { connection, since });
                None
            }
            Err(e) => {
                self.connection = None;
                Some(Err(e))
            }
        }
    }

    /// Send and receive until openraft's next answer is in (`None` once the input has ended
    /// and every request is answered).
    async fn step(&mut self) -> Result<Option<StreamAppendResult<TypeConfig>>, RPCError<TypeConfig>> {
        let pipeline = self.client.transport.append_pipeline.max(1);
        loop {
            while self.sent.len() < pipeline
                && let Some(piece) = self.queued.pop_front()
            {
                self.send(piece).await?;
            }
            let room = self.sent.len() < pipeline && self.queued.is_empty() && !self.input.is_done();
            if self.sent.is_empty() && !room {
                return Ok(None);
            }
            let target = self.client.target;
            let connection = self.connection.as_mut().ok_or_else(|| unreachable("append stream closed".into()))?;
            let waiting = !self.sent.is_empty();
            let due = self.sent.front().map_or_else(far_future, |sent| sent.deadline);
            let event = tokio::select! {
                biased;
                answer = tokio::time::timeout_at(due, connection.next()), if waiting => match answer {
                    Ok(answer) => Event::Answer(answer),
                    Err(_) => Event::Late,
                },
                request = self.input.next(), if room => Event::Request(request),
            };
            match event {
                Event::Request(None) => {}
                Event::Request(Some(request)) => {
                    let transport = &self.client.transport;
                    let budget = transport.append_payload.min(transport.append_limit);
                    self.queued.extend(pieces(request, budget, target)?);
                }
                Event::Late => {
                    let sent = self.sent.front().expect("an answer was awaited");
                    let kind = if sent.heartbeat { "heartbeat" } else { "append" };
                    counter!("tandem_raft_rpc_timeouts_total", "peer" => target.to_string(), "kind" => kind)
                        .increment(1);
                    return Err(network(format!("node {target} did not answer an append in time")));
                }
                Event::Answer(None) => return Err(unreachable(format!("node {target} closed the append stream"))),
                Event::Answer(Some(Err(e))) => {
                    return Err(unreachable(format!("the append stream to node {target} broke: {e}")));
                }
                Event::Answer(Some(Ok(frame))) => {
                    self.last_io = Instant::now();
                    let sent = self.sent.pop_front().expect("an answer was awaited");
                    let reply: StreamReply = wire::from_msgpack(&frame)
                        .map_err(|e| network(format!("undecodable answer from node {target}: {e}")))?;
                    let answer = reply.map_err(|e| unreachable(format!("node {target}'s Raft has stopped: {e}")))?;
                    match sent.run_ends_at {
                        None => return Ok(Some(answer)),
                        // A run before the last, taken whole: the next run goes on.
                        Some(end) if answer == Ok(end) => {}
                        // Anything else is the request's answer (openraft acts on a conflict or
                        // a higher vote; a short match, which a follower never gives, is
                        // progress up to it), and the runs after it are not waited for.
                        Some(_) => {
                            self.broken = true;
                            return Ok(Some(answer));
                        }
                    }
                }
            }
        }
    }

    async fn send(&mut self, piece: Piece) -> Result<(), RPCError<TypeConfig>> {
        let (transport, target) = (&self.client.transport, self.client.target);
        if transport.faults.is_cut(target) {
            return Err(super::cut_link(target));
        }
        if transport.faults.lose(target, "append") {
            return Err(network(format!("an append to node {target} lost by fault injection")));
        }
        if self.sent.is_empty() {
            self.replace_if_stale().await?;
        }
        let timeout = append_timeout(self.hard_ttl, piece.heartbeat, piece.bytes.len());
        // An answer comes after the answers to what was sent before it: never due before them.
        let deadline = (tokio::time::Instant::now() + timeout)
            .max(self.sent.back().map_or_else(tokio::time::Instant::now, |sent| sent.deadline));
        let connection = self.connection.as_mut().ok_or_else(|| unreachable("append stream closed".into()))?;
        match tokio::time::timeout_at(deadline, connection.send(piece.bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(unreachable(format!("the append stream to node {target} broke: {e}"))),
            Err(_) => return Err(network(format!("node {target} did not take an append in time"))),
        }
        self.last_io = Instant::now();
        self.sent.push_back(Sent { deadline, run_ends_at: piece.run_ends_at, heartbeat: piece.heartbeat });
        Ok(())
    }

    /// With nothing unanswered, open a new connection in place of one the follower closed or is
    /// about to close for idleness (a replication stream waits as long as no writes come), rather
    /// than write into it and report the follower unreachable.
    async fn replace_if_stale(&mut self) -> Result<(), RPCError<TypeConfig>> {
        let idle = self.client.transport.append_stream_idle;
        let stale = match self.connection.as_mut() {
            Some(connection) => self.last_io.elapsed() >= idle / 2 || connection.next().now_or_never().is_some(),
            None => true,
        };
        if !stale {
            return Ok(());
        }
        self.connection = None;
        let (target, timeout) = (self.client.target, self.hard_ttl.max(APPEND_MIN_TIMEOUT));
        let opened = self.client.transport.open_append_stream(target, &self.client.raft_addr, timeout).await?;
        let connection = opened.ok_or_else(|| network(format!("node {target} no longer serves append streams")))?;
        self.connection = Some(connection);
        self.last_io = Instant::now();
        Ok(())
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

/// `request` as frames of at most `budget` bytes each (a single entry may be larger): one frame
/// if it fits, else one per run of entries that fits.
fn pieces(
    request: AppendEntriesRequest<TypeConfig>,
    budget: usize,
    target: NodeId,
) -> Result<Vec<Piece>, RPCError<TypeConfig>> {
    let heartbeat = request.entries.is_empty();
    let bytes = encode(&request)?;
    if bytes.len() <= budget || request.entries.len() <= 1 {
        return Ok(vec![Piece { bytes: bytes.into(), run_ends_at: None, heartbeat }]);
    }
    let AppendEntriesRequest { vote, mut prev_log_id, leader_commit, entries } = request;
    // What every run holds besides its entries, at its largest: the vote, the commit, a previous
    // log id, and the entries' array header.
    let last = entries.last().map(|entry| entry.log_id);
    let around = AppendEntriesRequest::<TypeConfig> { vote, prev_log_id: last, leader_commit, entries: Vec::new() };
    let fixed = encode(&around)?.len() + 4;
    let runs = super::runs_within(&entries, fixed, budget);
    let mut rest = entries;
    let mut pieces = Vec::with_capacity(runs.len());
    for (i, len) in runs.iter().enumerate() {
        let tail = rest.split_off(*len);
        let run: Vec<Entry> = std::mem::replace(&mut rest, tail);
        let next_prev = run.last().map(|entry| entry.log_id);
        let part = AppendEntriesRequest::<TypeConfig> { vote, prev_log_id, leader_commit, entries: run };
        let run_ends_at = (i + 1 < runs.len()).then_some(next_prev);
        pieces.push(Piece { bytes: encode(&part)?.into(), run_ends_at, heartbeat: false });
        prev_log_id = next_prev;
    }
    counter!("tandem_raft_append_splits_total", "peer" => target.to_string()).increment(1);
    Ok(pieces)
}

/// `POST /raft/append-stream` (behind the peer check, so only a peer with the cluster secret
/// gets here): switch the connection to append frames and serve them until it closes.
pub(super) async fn open(State(peer): State<PeerRoutes>, headers: HeaderMap, mut request: Request) -> Response {
    let asked = headers.get(header::UPGRADE).and_then(|value| value.to_str().ok());
    if asked != Some(APPEND_STREAM_PROTOCOL) {
        let message = format!("expected Upgrade: {APPEND_STREAM_PROTOCOL}");
        return (StatusCode::BAD_REQUEST, message).into_response();
    }
    let Some(upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return (StatusCode::BAD_REQUEST, "this connection cannot be upgraded").into_response();
    };
    // An upgraded connection leaves the server's connection bound: streams have their own.
    let Ok(permit) = peer.streams.open.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many append streams open").into_response();
    };
    let from = headers.get(FROM_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<NodeId>().ok());
    tokio::spawn(async move {
        let _permit = permit;
        match upgrade.await {
            Ok(upgraded) => serve(hyper_util::rt::TokioIo::new(upgraded), peer.raft, from, peer.streams).await,
            Err(e) => tracing::debug!(?from, error = %e, "an append stream's upgrade failed"),
        }
    });
    switching_protocols()
}

/// The answer that turns a connection into an append stream.
fn switching_protocols() -> Response {
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    response.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(APPEND_STREAM_PROTOCOL));
    response
}

/// Serve one append stream on `io` from peer `from`: hand the decoded requests to openraft in
/// order and send back each answer, until the peer closes the connection or sends nothing for
/// `settings.idle`, a frame is longer than `settings.append_limit` or does not decode, the link
/// is cut, openraft answers an error or stops, or `settings.closed` is cancelled (this voter is
/// shutting down).
async fn serve<T>(io: T, raft: Raft, from: Option<NodeId>, settings: StreamSettings)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let StreamSettings { append_limit, faults, idle, open: _, closed } = settings;
    let (mut answers_out, frames_in) = Framed::new(io, codec(append_limit)).split();
    // The frames until none has come for `idle`, this voter shuts down, or this loop ends (the
    // read half belongs to openraft's task then: ending its input closes the connection).
    let done = closed.child_token();
    let _close_on_return = done.clone().drop_guard();
    let frames_in = Box::pin(frames_in.take_until(done.cancelled_owned()));
    let frames_in = futures::stream::unfold(frames_in, move |mut frames| async move {
        let frame = tokio::time::timeout(idle, frames.next()).await.ok()??;
        Some((frame, frames))
    });
    let peer = from.map_or_else(|| "unknown".to_owned(), |from| from.to_string());
    let requests = {
        let peer = peer.clone();
        // Resolved once per stream, not looked up by its labels for every frame.
        let received = counter!("tandem_raft_appends_received_total", "from" => peer.clone());
        // `scan` ends the stream at the first `None`.
        frames_in.scan((), move |(), frame| {
            let request = request_of(frame, from, &faults, &peer);
            if request.is_some() {
                received.increment(1);
            }
            futures::future::ready(request)
        })
    };
    let answers = raft.stream_append(requests);
    let mut answers = std::pin::pin!(answers);
    loop {
        let answer = tokio::select! {
            answer = answers.next() => answer,
            _ = closed.cancelled() => break,
        };
        let Some(answer) = answer else { break };
        let reply: StreamReply = answer.map_err(|fatal| fatal.to_string());
        let last = !matches!(reply, Ok(Ok(_)));
        let Ok(bytes) = rmp_serde::to_vec_named(&reply) else {
            tracing::error!(peer, "could not encode an append answer");
            break;
        };
        if answers_out.send(Bytes::from(bytes)).await.is_err() || last {
            break;
        }
    }
}

/// The request in `frame` from peer `from`, or `None` to close the stream: the frame did not
/// arrive whole, does not decode, or the link to `from` is cut.
fn request_of(
    frame: std::io::Result<tokio_util::bytes::BytesMut>,
    from: Option<NodeId>,
    faults: &NetworkFaults,
    peer: &str,
) -> Option<AppendEntriesRequest<TypeConfig>> {
    if from.is_some_and(|from| faults.is_cut(from)) {
        return None;
    }
    let frame = frame.map_err(|e| tracing::warn!(peer, error = %e, "an append stream broke")).ok()?;
    let request = wire::from_msgpack::<AppendEntriesRequest<TypeConfig>>(&frame)
        .map_err(|e| tracing::warn!(peer, error = %e, "an undecodable append frame: closing the stream"))
        .ok()?;
    Some(request)
}

#[cfg(test)]
mod tests {
    //! The leader's side against a follower played by the test: what goes on the wire, in
    //! which order, how many at once, and what a broken connection turns into.

    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::routing::post;
    use hyper_util::rt::TokioIo;
    use openraft::network::{RaftNetworkFactory, v2::RaftNetworkV2};
    use openraft::raft::AppendEntriesResponse;
    use openraft::{EntryPayload, impls::leader_id_adv::LeaderId};

    use super::*;
    use crate::server::{ServeBounds, serve_bounded};
    use crate::type_config::{LogId, NodeInfo, Role, Vote};
    use tokio_util::sync::CancellationToken;

    /// The follower's side of an append stream, as the test sees it.
    type FollowerSide = Framed<TokioIo<hyper::upgrade::Upgraded>, LengthDelimitedCodec>;

    fn log_id(index: u64) -> LogId {
        LogId::new(LeaderId { term: 2, node_id: 1 }, index)
    }

    /// An append of blank entries `first..=last` after `first - 1` (a heartbeat when `first >
    /// last`).
    fn append(first: u64, last: u64) -> AppendEntriesRequest<TypeConfig> {
        let entries = (first..=last).map(|i| Entry { log_id: log_id(i), payload: EntryPayload::Blank }).collect();
        let prev_log_id = (first > 1).then(|| log_id(first - 1));
        AppendEntriesRequest { vote: Vote::new_committed(2, 1), prev_log_id, entries, leader_commit: None }
    }

    /// What a follower answers to `request` when it takes it all.
    fn taken(request: &AppendEntriesRequest<TypeConfig>) -> Bytes {
        let last = request.entries.last().map(|entry| entry.log_id).or(request.prev_log_id);
        let reply: StreamReply = Ok(Ok(last));
        rmp_serde::to_vec_named(&reply).expect("encode").into()
    }

    fn decode(frame: &[u8]) -> AppendEntriesRequest<TypeConfig> {
        wire::from_msgpack(frame).expect("a request")
    }

    /// A follower's script that takes every request whole, until the leader goes away.
    async fn take_all(mut side: FollowerSide) {
        while let Some(Ok(frame)) = side.next().await {
            side.send(taken(&decode(&frame))).await.expect("answer");
        }
    }

    /// A follower at a free port that hands every append stream opened to it to `script` (with
    /// none, it has no append streams, as the previous version), and answers HTTP appends with
    /// success, counting them. Stops when the returned token is dropped.
    async fn fake_follower<F, Fut>(script: Option<F>) -> (String, Arc<AtomicUsize>, tokio_util::sync::DropGuard)
    where
        F: Fn(FollowerSide) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let http_appends = Arc::new(AtomicUsize::new(0));
        let counted = http_appends.clone();
        let streams = script.is_some();
        let open = move |mut request: Request| {
            let script = script.clone().expect("only routed with a script");
            async move {
                let upgrade = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>().expect("upgradable");
                tokio::spawn(async move {
                    let io = upgrade.await.expect("upgraded");
                    script(Framed::new(TokioIo::new(io), codec(1 << 20))).await;
                });
                switching_protocols()
            }
        };
        let append = move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { super::super::msgpack_response(&Ok::<_, String>(AppendEntriesResponse::<TypeConfig>::Success)) }
        };
        let mut router = Router::new().route("/raft/append", post(append));
        if streams {
            router = router.route("/raft/append-stream", post(open));
        }
        let stop = CancellationToken::new();
        let serving =
            serve_bounded(listener, router, ServeBounds::default(), stop.clone().cancelled_owned(), Duration::ZERO);
        tokio::spawn(serving);
        (addr, http_appends, stop.drop_guard())
    }

    async fn client(addr: &str, configure: impl FnOnce(&mut Transport)) -> PeerClient {
        let mut transport = Transport::new(1, None, Arc::new(NetworkFaults::default()));
        configure(&mut transport);
        transport.new_client(2, &NodeInfo::at(Role::Coordinator, addr)).await
    }

    fn option() -> RPCOption {
        RPCOption::new(Duration::from_millis(500))
    }

    /// Every answer of one `stream_append` call with `requests` as its input.
    async fn session(
        client: &mut PeerClient,
        requests: Vec<AppendEntriesRequest<TypeConfig>>,
    ) -> Vec<Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> {
        let answers = client.stream_append(futures::stream::iter(requests), option()).await.expect("opened");
        answers.collect().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_the_pipeline_is_unanswered_and_answers_come_in_order() {
        // The follower reads what arrives, and answers only once nothing more has come for a
        // while: it sees how many requests the leader sends without an answer.
        let most_unanswered = Arc::new(AtomicUsize::new(0));
        let seen = most_unanswered.clone();
        let (addr, _, _stop) = fake_follower(Some(move |mut side: FollowerSide| {
            let seen = seen.clone();
            async move {
                let mut unanswered = Vec::new();
                loop {
                    match tokio::time::timeout(Duration::from_millis(400), side.next()).await {
                        Ok(Some(frame)) => unanswered.push(decode(&frame.expect("a frame"))),
                        Ok(None) => return,
                        Err(_) => {
                            seen.fetch_max(unanswered.len(), Ordering::SeqCst);
                            for request in unanswered.drain(..) {
                                side.send(taken(&request)).await.expect("answer");
                            }
                        }
                    }
                }
            }
        }))
        .await;
        let mut client = client(&addr, |_| {}).await;
        let requests: Vec<_> = (0..5).map(|i| append(i * 3 + 1, i * 3 + 3)).collect();
        let answers = session(&mut client, requests).await;
        let acked: Vec<_> = answers.into_iter().map(|answer| answer.expect("answered").expect("taken")).collect();
        assert_eq!(acked, (0..5).map(|i| Some(log_id(i * 3 + 3))).collect::<Vec<_>>());
        assert_eq!(most_unanswered.load(Ordering::SeqCst), APPEND_PIPELINE);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_connection_serves_session_after_session() {
        let opened = Arc::new(AtomicUsize::new(0));
        let count = opened.clone();
        let (addr, http_appends, _stop) = fake_follower(Some(move |side: FollowerSide| {
            count.fetch_add(1, Ordering::SeqCst);
            take_all(side)
        }))
        .await;
        let mut client = client(&addr, |_| {}).await;
        for i in 0..10 {
            let answers = session(&mut client, vec![append(i + 1, i + 1), append(i + 2, i + 1)]).await;
            assert_eq!(answers.len(), 2);
            assert!(answers.iter().all(|answer| matches!(answer, Ok(Ok(_)))), "{answers:?}");
        }
        assert_eq!(opened.load(Ordering::SeqCst), 1, "one stream for every session");
        assert_eq!(client.transport.stats.append_streams_opened.load(Ordering::SeqCst), 1);
        assert_eq!(http_appends.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_broken_with_requests_unanswered_is_unreachable_and_never_an_answer() {
        // The follower reads two requests, answers the first, and closes the connection.
        let (addr, _, _stop) = fake_follower(Some(|mut side: FollowerSide| async move {
            let first = decode(&side.next().await.expect("a frame").expect("whole"));
            let _second = side.next().await.expect("a frame").expect("whole");
            side.send(taken(&first)).await.expect("answer");
        }))
        .await;
        let mut client = client(&addr, |_| {}).await;
        let answers = session(&mut client, (0..4).map(|i| append(i + 1, i + 1)).collect()).await;
        assert_eq!(answers.len(), 2, "{answers:?}");
        assert!(matches!(answers[0], Ok(Ok(Some(id))) if id == log_id(1)), "{answers:?}");
        assert!(matches!(answers[1], Err(RPCError::Unreachable(_))), "{answers:?}");
        // The next session opens a new connection, and meets the same end.
        let answers = session(&mut client, vec![append(2, 2), append(3, 3)]).await;
        assert!(matches!(answers[..], [Ok(Ok(_)), Err(RPCError::Unreachable(_))]), "{answers:?}");
        assert_eq!(client.transport.stats.append_streams_opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_that_does_not_come_is_a_timeout_and_the_connection_is_dropped() {
        let (addr, _, _stop) = fake_follower(Some(|mut side: FollowerSide| async move {
            // Read and never answer, until the leader goes away.
            while let Some(Ok(_)) = side.next().await {}
        }))
        .await;
        let mut client = client(&addr, |_| {}).await;
        let answers = session(&mut client, vec![append(1, 1)]).await;
        assert!(matches!(answers[..], [Err(RPCError::Network(_))]), "{answers:?}");
        assert!(client.kept_connection().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_over_the_payload_bound_goes_in_runs_and_is_answered_once() {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let log = frames.clone();
        let (addr, _, _stop) = fake_follower(Some(move |mut side: FollowerSide| {
            let log = log.clone();
            async move {
                while let Some(Ok(frame)) = side.next().await {
                    let request = decode(&frame);
                    side.send(taken(&request)).await.expect("answer");
                    log.lock().expect("frames").push((frame.len(), request));
                }
            }
        }))
        .await;
        let mut client = client(&addr, |transport| transport.append_payload = 200).await;
        let answers = session(&mut client, vec![append(1, 40)]).await;
        assert!(matches!(answers[..], [Ok(Ok(Some(id)))] if id == log_id(40)), "{answers:?}");
        let frames = frames.lock().expect("frames");
        assert!(frames.len() > 2, "{} frames", frames.len());
        let mut next = 1;
        for (len, request) in frames.iter() {
            assert!(*len <= 200, "a frame of {len} bytes");
            assert_eq!(request.prev_log_id, (next > 1).then(|| log_id(next - 1)), "runs follow each other");
            next = request.entries.last().expect("entries").log_id.index + 1;
        }
        assert_eq!(next, 41, "every entry sent once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_sent_behind_a_slow_append_is_due_after_it() {
        // The follower takes 200 ms for the append (its fsync on a busy disk); the entry-less
        // request behind it (the commit) has a 50 ms deadline of its own, but its answer can
        // only come after the append's.
        let (addr, _, _stop) = fake_follower(Some(|mut side: FollowerSide| async move {
            while let Some(Ok(frame)) = side.next().await {
                let request = decode(&frame);
                if !request.entries.is_empty() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                side.send(taken(&request)).await.expect("answer");
            }
        }))
        .await;
        let mut client = client(&addr, |_| {}).await;
        let answers = client
            .stream_append(
                futures::stream::iter(vec![append(1, 3), append(4, 3)]),
                RPCOption::new(Duration::from_millis(50)),
            )
            .await
            .expect("opened");
        let answers: Vec<_> = answers.collect().await;
        assert!(
            matches!(answers[..], [Ok(Ok(Some(a))), Ok(Ok(Some(b)))] if a == log_id(3) && b == log_id(3)),
            "{answers:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_closed_or_idle_between_sessions_is_replaced_without_an_error() {
        // The follower closes every stream after one answer, as it does after an error or when
        // it idles out.
        let opened = Arc::new(AtomicUsize::new(0));
        let count = opened.clone();
        let (addr, _, _stop) = fake_follower(Some(move |mut side: FollowerSide| {
            count.fetch_add(1, Ordering::SeqCst);
            async move {
                if let Some(Ok(frame)) = side.next().await {
                    side.send(taken(&decode(&frame))).await.expect("answer");
                }
            }
        }))
        .await;
        let mut closing = client(&addr, |transport| transport.append_stream_idle = Duration::from_secs(3600)).await;
        for i in 0..3 {
            let answers = session(&mut closing, vec![append(i + 1, i + 1)]).await;
            assert!(matches!(answers[..], [Ok(Ok(_))]), "session {i}: {answers:?}");
            // Let the close arrive.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(opened.load(Ordering::SeqCst), 3);
        // One kept past half the idle limit is replaced too, though it is still open.
        let (addr, _, _stop) = fake_follower(Some(take_all)).await;
        let mut client = client(&addr, |transport| transport.append_stream_idle = Duration::from_millis(200)).await;
        for i in 0..2 {
            let answers = session(&mut client, vec![append(i + 1, i + 1)]).await;
            assert!(matches!(answers[..], [Ok(Ok(_))]), "session {i}: {answers:?}");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert_eq!(client.transport.stats.append_streams_opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_not_taken_whole_is_the_requests_answer_and_ends_the_session() {
        // The follower answers the first run of a split request with less than its last entry.
        let (addr, _, _stop) = fake_follower(Some(|mut side: FollowerSide| async move {
            while let Some(Ok(frame)) = side.next().await {
                let request = decode(&frame);
                let short: StreamReply = Ok(Ok(request.prev_log_id));
                let reply = rmp_serde::to_vec_named(&short).expect("encode");
                side.send(Bytes::from(reply)).await.expect("answer");
            }
        }))
        .await;
        let mut client = client(&addr, |transport| transport.append_payload = 200).await;
        let answers = session(&mut client, vec![append(1, 40), append(41, 41)]).await;
        assert!(matches!(answers[..], [Ok(Ok(None))]), "{answers:?}");
        assert!(client.kept_connection().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_without_append_streams_is_sent_http_appends() {
        // A follower of the previous version: the route is unknown to it.
        let (addr, http_appends, _stop) = fake_follower(None::<fn(FollowerSide) -> std::future::Ready<()>>).await;
        let mut client = client(&addr, |_| {}).await;
        let answers = session(&mut client, (0..3).map(|i| append(i + 1, i + 1)).collect()).await;
        assert_eq!(answers.len(), 3);
        assert!(answers.iter().all(|answer| matches!(answer, Ok(Ok(_)))), "{answers:?}");
        assert_eq!(http_appends.load(Ordering::SeqCst), 3);
        assert_eq!(client.transport.stats.append_streams_opened.load(Ordering::SeqCst), 0);
        assert_eq!(client.transport.stats.http_appends.load(Ordering::SeqCst), 3);
    }
}
