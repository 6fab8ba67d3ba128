//! The `/raft/` routes a voter serves besides openraft's own (see [`crate::network`]): the calls
//! of [`super::leader_calls`] (propose, read index, status, failover, voter replacement) and,
//! in tests, the fault hooks. Every route but `/raft/health` sits behind the cluster-secret and
//! target check, applied before the body is read.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::Node;
use crate::job_table::Proposal;
use crate::network::{
    CONTROL_BODY_LIMIT, MsgPack, PROPOSE_BODY_LIMIT, PeerCheck, StreamSettings, body_limit, msgpack_response,
    raft_rpc_router, require_peer,
};
use crate::server::ServeBounds;
use crate::type_config::{NodeId, NodeInfo};

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

/// The body of `POST /raft/replace-voter`, forwarded by a follower to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ReplaceVoter {
    pub old: NodeId,
    pub new: NodeId,
    pub info: NodeInfo,
    pub catch_up_ms: u64,
}

impl Node {
    /// The `/raft/` routes to serve on this voter's Raft address.
    pub fn router(&self) -> Router {
        let check = PeerCheck {
            self_id: self.id(),
            secret: self.parts.transport.secret.clone(),
            faults: self.parts.transport.faults.clone(),
        };
        let control = body_limit(CONTROL_BODY_LIMIT);
        let mut calls = Router::new()
            .route("/raft/propose", post(propose).layer(body_limit(PROPOSE_BODY_LIMIT)))
            .route("/raft/read-index", post(read_index).layer(control))
            .route("/raft/status", post(status).layer(control))
            .route("/raft/failover", post(failover).layer(control))
            .route("/raft/replace-voter", post(replace_voter).layer(control));
        if self.parts.config.fault_injection {
            calls = calls.route("/raft/faults", post(faults).layer(control));
        }
        let streams = StreamSettings {
            append_limit: self.parts.config.append_body_limit,
            faults: self.parts.transport.faults.clone(),
            idle: self.parts.config.append_stream_idle,
            open: self.parts.append_streams.clone(),
            closed: self.parts.streams_closed.clone(),
        };
        raft_rpc_router(self.parts.raft.clone(), self.parts.state_machine.clone(), streams)
            .merge(calls.with_state(self.clone()))
            .route_layer(axum::middleware::from_fn_with_state(check, require_peer))
            .route("/raft/health", get(|| async { "ok" }))
    }
}

async fn propose(State(node): State<Node>, MsgPack(proposal): MsgPack<Proposal>) -> Response {
    // One hop only: the receiver never forwards again, so a stale view cannot make a loop.
    msgpack_response(&node.propose_local(proposal).await)
}

async fn read_index(State(node): State<Node>) -> Response {
    msgpack_response(&node.read_index_local().await)
}

async fn status(State(node): State<Node>) -> Response {
    msgpack_response(&node.status())
}

async fn failover(State(node): State<Node>, MsgPack(to): MsgPack<Option<NodeId>>) -> Response {
    msgpack_response(&node.failover_local(to).await)
}

async fn replace_voter(State(node): State<Node>, MsgPack(request): MsgPack<ReplaceVoter>) -> Response {
    let catch_up = Duration::from_millis(request.catch_up_ms);
    msgpack_response(&node.replace_voter(request.old, request.new, request.info, catch_up).await)
}

async fn faults(State(node): State<Node>, body: Bytes) -> Response {
    let Ok(settings) = serde_json::from_slice::<FaultSettings>(&body) else {
        return (StatusCode::BAD_REQUEST, "expected {\"isolated_from\": [node ids], \"fail_storage\": bool}")
            .into_response();
    };
    let faults = node.faults();
    faults.heal_all();
    for peer in &settings.isolated_from {
        faults.isolate_from(*peer);
    }
    if settings.fail_storage {
        node.parts.wal_stats.inject_write_failure();
    }
    tracing::warn!(
        node = node.id(),
        isolated_from = ?settings.isolated_from,
        fail_storage = settings.fail_storage,
        "fault injection: faults changed"
    );
    axum::Json(settings).into_response()
}

/// Serve `router` on `listener` with the default [`ServeBounds`] until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::server::serve_bounded(listener, router, ServeBounds::default(), shutdown, SHUTDOWN_GRACE).await
}

/// How long requests in progress may finish after a shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
