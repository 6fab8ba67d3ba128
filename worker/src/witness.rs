//! The witness voter, on its own OS thread and tokio runtime so that hashing on every core can
//! never delay its Raft heartbeats or votes.
//!
//! It is an ordinary voter with a durable log (see `raft_store::Node`): it never initializes the
//! cluster (coordinator 1 does), never serves the client API, and hands leadership back to a
//! coordinator by itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use raft_store::network::NetworkFaults;
use raft_store::{Node, NodeConfig, Role};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Runtime threads for the witness: its Raft core, storage and HTTP server need little CPU, but
/// never wait behind one another for a thread.
const WITNESS_RUNTIME_THREADS: usize = 2;

/// What the witness needs to start.
#[derive(Clone, Debug)]
pub struct WitnessConfig {
    /// Its Raft node id.
    pub id: u64,
    /// Where its `/raft/` routes listen (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Its log and snapshots.
    pub data_dir: PathBuf,
    /// The secret of the `/raft/` routes, as the coordinators have it.
    pub secret: Option<String>,
}

/// A running witness. Stop it with [`Witness::stop`]; dropping it only asks it to stop.
#[derive(Debug)]
pub struct Witness {
    stop: CancellationToken,
    local_addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Witness {
    /// Start the witness voter and wait until it serves.
    pub async fn start(config: WitnessConfig) -> anyhow::Result<Witness> {
        let mut node_config = NodeConfig::new(config.id, Role::Witness, config.data_dir.clone());
        node_config.secret = config.secret.clone();
        let stop = CancellationToken::new();
        let (started_tx, started_rx) = oneshot::channel::<anyhow::Result<SocketAddr>>();
        let token = stop.clone();
        let listen = config.listen;
        let thread = std::thread::Builder::new()
            .name("witness".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(WITNESS_RUNTIME_THREADS)
                    .thread_name("witness-rt")
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started_tx.send(Err(anyhow::Error::new(e).context("building the witness runtime")));
                        return;
                    }
                };
                runtime.block_on(serve_witness(node_config, listen, token, started_tx));
            })
            .context("spawning the witness thread")?;
        let local_addr = match started_rx.await {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                return Err(e);
            }
            Err(_) => anyhow::bail!("the witness thread ended during start-up"),
        };
        Ok(Witness { stop, local_addr, thread: Some(thread) })
    }

    /// The address its `/raft/` routes listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop serving, shut the voter down and wait for its thread.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            match tokio::task::spawn_blocking(move || thread.join()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => tracing::error!("the witness thread panicked"),
                Err(e) => tracing::error!(error = %e, "waiting for the witness thread failed"),
            }
        }
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        // Not joined here: a drop must not block an async runtime's thread.
        self.stop.cancel();
    }
}

/// The witness's life on its own runtime: start, report how that went, serve until stopped.
async fn serve_witness(
    node_config: NodeConfig,
    listen: SocketAddr,
    stop: CancellationToken,
    started: oneshot::Sender<anyhow::Result<SocketAddr>>,
) {
    let starting = async {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding the witness to {listen}"))?;
        let local_addr = listener.local_addr().context("reading the witness's address")?;
        let data_dir = node_config.data_dir.clone();
        let node = Node::start(node_config, Arc::new(NetworkFaults::default()))
            .await
            .with_context(|| format!("starting the witness voter in {}", data_dir.display()))?;
        anyhow::Ok((listener, local_addr, node))
    };
    let (listener, local_addr, node) = match starting.await {
        Ok(parts) => parts,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    if started.send(Ok(local_addr)).is_err() {
        // The caller went away during start-up: nobody will stop us, so do not serve.
        node.shutdown().await;
        return;
    }
    tracing::info!(addr = %local_addr, node = node.id(), "witness voter serving");
    let shutdown = stop.clone();
    if let Err(e) = raft_store::node::serve(listener, node.router(), async move { shutdown.cancelled().await }).await {
        tracing::error!(error = %e, "the witness's server failed");
    }
    node.shutdown().await;
    tracing::info!("witness voter stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> WitnessConfig {
        WitnessConfig {
            id: 3,
            listen: "127.0.0.1:0".parse().expect("an address"),
            data_dir: dir.join("witness"),
            secret: None,
        }
    }

    async fn health(addr: SocketAddr) -> String {
        let url = format!("http://{addr}/raft/health");
        let http = reqwest::Client::builder().no_proxy().build().expect("an HTTP client");
        http.get(url).send().await.expect("the witness answers").text().await.expect("a body")
    }

    #[tokio::test]
    async fn serves_raft_routes_and_releases_its_directory_on_stop() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let witness = Witness::start(config(dir.path())).await.expect("the witness starts");
        assert_ne!(witness.local_addr().port(), 0);
        assert_eq!(health(witness.local_addr()).await, "ok");
        witness.stop().await;

        // The same directory opens again: the first voter let go of it.
        let again = Witness::start(config(dir.path())).await.expect("the witness restarts on its directory");
        assert_eq!(health(again.local_addr()).await, "ok");
        again.stop().await;
    }

    #[tokio::test]
    async fn a_taken_address_fails_the_start() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut config = config(dir.path());
        config.listen = taken.local_addr().expect("an address");
        let error = Witness::start(config).await.expect_err("the address is in use");
        assert!(format!("{error:#}").contains("binding the witness"), "{error:#}");
    }
}
