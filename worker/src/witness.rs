//! The witness voter, on its own runtime and threads so that hashing on every core can never
//! delay its heartbeats or votes.

use std::sync::Arc;

use anyhow::Context;
use raft_store::network::NetworkFaults;
use raft_store::{Node, NodeConfig, Role};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// A running witness; stops when dropped or when [`Witness::stop`] is called.
pub struct Witness {
    node: Node,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Witness {
    /// Start the witness voter described by `config` and wait until it serves.
    pub fn start(config: &Config) -> anyhow::Result<Witness> {
        let mut node_config = NodeConfig::new(config.witness_id, Role::Witness, config.witness_data_dir.clone());
        node_config.secret = config.cluster_secret.clone();
        node_config.fault_injection = config.fault_injection;
        let listen = config.witness_listen;
        let stop = CancellationToken::new();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<anyhow::Result<Node>>();
        let token = stop.clone();
        let thread = std::thread::Builder::new().name("witness".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("witness-rt")
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = started_tx.send(Err(e.into()));
                    return;
                }
            };
            runtime.block_on(async move {
                let started = async {
                    let listener = tokio::net::TcpListener::bind(listen)
                        .await
                        .with_context(|| format!("binding the witness to {listen}"))?;
                    let node = Node::start(node_config, Arc::new(NetworkFaults::default()))
                        .await
                        .context("starting the witness voter")?;
                    anyhow::Ok((listener, node))
                };
                let (listener, node) = match started.await {
                    Ok(parts) => parts,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(node.clone()));
                tracing::info!(addr = %listen, node = node.id(), "witness voter serving");
                let shutdown = token.clone();
                let router = node.router();
                let stopped = node.clone();
                let raft_died = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let died = raft_died.clone();
                let until = async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = stopped.stopped() => died.store(true, std::sync::atomic::Ordering::Relaxed),
                    }
                };
                if let Err(e) = raft_store::node::serve(listener, router, until).await {
                    tracing::error!(error = %e, "witness server failed");
                }
                if raft_died.load(std::sync::atomic::Ordering::Relaxed) && !token.is_cancelled() {
                    // A voter that can no longer vote is worse than none: exit, so that the
                    // supervisor restarts the process (worker and witness) on its data.
                    tracing::error!("the witness's Raft stopped on its own; exiting so that it is restarted");
                    std::process::exit(1);
                }
                node.shutdown().await;
            });
        })?;
        let node = started_rx.recv().context("the witness thread ended during start-up")??;
        Ok(Witness { node, stop, thread: Some(thread) })
    }

    /// The witness voter (for its metrics; it runs on the witness's own runtime).
    pub fn node(&self) -> Node {
        self.node.clone()
    }

    /// Stop the voter and wait for its thread.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.stop_now();
    }
}
