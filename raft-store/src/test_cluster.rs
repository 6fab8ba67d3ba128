//! An in-process cluster of three voters (two coordinators and a witness) on 127.0.0.1, each with
//! its own data directory and its own HTTP server on a free port. For tests and benchmarks:
//! voters can be killed (Raft stopped, server closed) and restarted on their data.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::network::NetworkFaults;
use crate::node::{Node, NodeConfig, serve};
use crate::type_config::{NodeId, NodeInfo, Role};

/// The id of the first coordinator.
pub const COORDINATOR_1: NodeId = 1;
/// The id of the second coordinator.
pub const COORDINATOR_2: NodeId = 2;
/// The id of the witness.
pub const WITNESS: NodeId = 3;

struct Member {
    config: NodeConfig,
    addr: SocketAddr,
    faults: Arc<NetworkFaults>,
    running: Option<Running>,
}

struct Running {
    node: Node,
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

/// Three voters in this process.
pub struct TestCluster {
    members: BTreeMap<NodeId, Member>,
}

impl TestCluster {
    /// Start voters 1 and 2 (coordinators) and 3 (the witness) under `dir`, adjusting each
    /// voter's config with `tune`, and initialize the cluster from voter 1.
    pub async fn start(dir: &Path, tune: impl Fn(&mut NodeConfig)) -> TestCluster {
        let mut members = BTreeMap::new();
        let mut listeners = BTreeMap::new();
        for (id, role) in
            [(COORDINATOR_1, Role::Coordinator), (COORDINATOR_2, Role::Coordinator), (WITNESS, Role::Witness)]
        {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
            let addr = listener.local_addr().expect("bound");
            let mut config = NodeConfig::new(id, role, dir.join(format!("node-{id}")));
            tune(&mut config);
            members.insert(id, Member { config, addr, faults: Arc::new(NetworkFaults::default()), running: None });
            listeners.insert(id, listener);
        }
        let mut cluster = TestCluster { members };
        for (id, listener) in listeners {
            cluster.launch(id, listener).await;
        }
        let infos = cluster.infos();
        let initialized = cluster.node(COORDINATOR_1).initialize(infos).await.expect("initialize");
        assert!(initialized, "a fresh cluster initializes");
        cluster
    }

    /// The membership this cluster was formed with.
    pub fn infos(&self) -> BTreeMap<NodeId, NodeInfo> {
        self.members.iter().map(|(id, m)| (*id, NodeInfo::at(m.config.role, m.addr.to_string()))).collect()
    }

    async fn launch(&mut self, id: NodeId, listener: tokio::net::TcpListener) {
        let member = self.members.get_mut(&id).expect("known member");
        // A voter stopped a moment ago may still be closing its log (openraft's tasks end
        // asynchronously): wait for it to let go of the data directory.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let node = loop {
            match Node::start(member.config.clone(), member.faults.clone()).await {
                Ok(node) => break node,
                Err(crate::node::StartError::Log(crate::wal::WalError::Locked { .. }))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("start node {id}: {e}"),
            }
        };
        let (stop_server, stopped) = oneshot::channel::<()>();
        let router = node.router();
        let server = tokio::spawn(async move {
            let _ = serve(listener, router, async move {
                let _ = stopped.await;
            })
            .await;
        });
        member.running = Some(Running { node, stop_server, server });
    }

    /// The running voter `id`. Panics if it is stopped.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.members[&id].running.as_ref().unwrap_or_else(|| panic!("node {id} is not running")).node
    }

    /// Whether voter `id` runs.
    pub fn is_running(&self, id: NodeId) -> bool {
        self.members[&id].running.is_some()
    }

    /// Voter `id`'s data directory.
    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.members[&id].config.data_dir.clone()
    }

    /// Voter `id`'s fault hooks (they survive restarts).
    pub fn faults(&self, id: NodeId) -> &Arc<NetworkFaults> {
        &self.members[&id].faults
    }

    /// Cut the link between `a` and `b`, both ways.
    pub fn cut(&self, a: NodeId, b: NodeId) {
        self.faults(a).isolate_from(b);
        self.faults(b).isolate_from(a);
    }

    /// Restore every link.
    pub fn heal_all(&self) {
        for member in self.members.values() {
            member.faults.heal_all();
        }
    }

    /// Stop voter `id` as a crash would look from outside: Raft stops, the port closes.
    pub async fn kill(&mut self, id: NodeId) {
        let member = self.members.get_mut(&id).expect("known member");
        let Some(running) = member.running.take() else { return };
        running.node.shutdown().await;
        let _ = running.stop_server.send(());
        let server = running.server;
        if tokio::time::timeout(Duration::from_millis(500), async { server.await.ok() }).await.is_err() {
            tracing::debug!(node = id, "server did not stop gracefully");
        }
    }

    /// Start voter `id` again on its data directory and its old address.
    pub async fn restart(&mut self, id: NodeId) {
        let listener = bind_when_free(self.members[&id].addr).await;
        self.launch(id, listener).await;
    }

    /// Delete voter `id`'s data directory (it must be stopped): its disk is lost.
    pub fn wipe(&self, id: NodeId) {
        assert!(!self.is_running(id), "node {id} must be stopped before its disk is wiped");
        let dir = self.data_dir(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("wipe {}: {e}", dir.display()));
        }
    }

    /// Voter `id`'s address.
    pub fn addr(&self, id: NodeId) -> SocketAddr {
        self.members[&id].addr
    }

    /// Start a new node `id` with an empty data directory, configured like voter `like` (same
    /// role and timing), on `at` (for example the address of the voter it replaces) or on a
    /// free port. It belongs to no membership until the leader adds it
    /// ([`Node::replace_voter`]); returns the record to add it with.
    pub async fn start_replacement(&mut self, id: NodeId, like: NodeId, at: Option<SocketAddr>) -> NodeInfo {
        assert!(!self.members.contains_key(&id), "node {id} exists");
        let template = &self.members[&like];
        let mut config = template.config.clone();
        config.id = id;
        config.data_dir = template.config.data_dir.with_file_name(format!("node-{id}"));
        let listener = match at {
            Some(addr) => bind_when_free(addr).await,
            None => tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a free port"),
        };
        let addr = listener.local_addr().expect("bound");
        let role = config.role;
        self.members.insert(id, Member { config, addr, faults: Arc::new(NetworkFaults::default()), running: None });
        self.launch(id, listener).await;
        NodeInfo::at(role, addr.to_string())
    }

    /// Wait until every running voter in `among` agrees on one leader that is itself running;
    /// return it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> NodeId {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let views: Vec<(NodeId, Option<NodeId>, bool)> = self
                .members
                .iter()
                .filter_map(|(id, m)| m.running.as_ref().map(|r| (*id, r.node.metrics())))
                .map(|(id, metrics)| (id, metrics.current_leader, metrics.state == openraft::ServerState::Leader))
                .collect();
            let leaders: Vec<NodeId> = views.iter().filter(|(_, _, leads)| *leads).map(|(id, _, _)| *id).collect();
            if let [leader] = leaders.as_slice()
                && views.iter().all(|(_, seen, _)| *seen == Some(*leader))
            {
                return *leader;
            }
            assert!(tokio::time::Instant::now() < deadline, "no agreed leader within {timeout:?}: {views:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop every voter.
    pub async fn shutdown(&mut self) {
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        for id in ids {
            self.kill(id).await;
        }
    }
}

/// The coordinator that is not `id` (the first one when `id` is the witness).
pub fn other_coordinator(id: NodeId) -> NodeId {
    if id == COORDINATOR_1 { COORDINATOR_2 } else { COORDINATOR_1 }
}

/// On the leader `node`: leave the membership joint, from voters `from` to voters `to` (every
/// node of `to` already a member), as a change does when leadership is lost between its two
/// steps.
pub async fn stop_change_half_way(node: &Node, from: BTreeSet<NodeId>, to: BTreeSet<NodeId>) {
    let observed = node.metrics().membership_config.clone();
    let nodes: BTreeMap<NodeId, NodeInfo> = observed.membership().nodes().map(|(id, n)| (*id, n.clone())).collect();
    let joint = openraft::Membership::new(vec![from, to], nodes).expect("a joint membership");
    let based_on = openraft::raft::Precondition::LastMembershipLogId { last_membership_log_id: *observed.log_id() };
    node.raft().append_membership(joint, openraft::EntryPayload::Blank, [based_on]).await.expect("append it");
}

/// Bind `addr`, waiting for a voter stopped a moment ago to let go of it.
async fn bind_when_free(addr: SocketAddr) -> tokio::net::TcpListener {
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Send `head` (a whole HTTP/1.1 request head, ending in an empty line, that announces a body)
/// to `addr` and read the answer, its head and its body by its content-length, without ever
/// sending the body. Shows that a request is refused from its head alone; a client that sent
/// the body could instead see the connection closed under it, as a server does not read what it
/// refused. Panics without a whole answer within 10 s.
pub async fn answer_without_body(addr: &str, head: &str) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send the head");
    let mut answer = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return (head, answer[end + 4..end + 4 + length].to_vec());
            }
        }
        let mut buffer = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .expect("an answer before the body is sent")
            .expect("read the answer");
        assert!(n > 0, "closed before a whole answer: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buffer[..n]);
    }
}
