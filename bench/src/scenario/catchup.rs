//! `catchup`: a follower coordinator killed under enqueue load, kept down, then restarted: how
//! long until its log is level with the leader's again, how many of the leader's appends to it
//! outlasted their deadline, how many catch-up appends carried a prefix of openraft's batch, and
//! whether the leader fell back to sending a snapshot. Local cluster only (it kills a process).

use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;
use wire::client::ApiClient;

use crate::cpu::labelled_sum;
use crate::report::Report;
use crate::scenario::ingest;
use crate::target::{Target, TargetArgs};

/// Options of `catchup`.
#[derive(clap::Args, Clone, Debug)]
pub struct CatchupArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Concurrent enqueue clients, all on the leader.
    #[arg(long, default_value_t = 128)]
    pub clients: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 16_384)]
    pub body_bytes: usize,
    /// Seconds the follower stays down (under load).
    #[arg(long, default_value_t = 60)]
    pub down_s: u64,
    /// Seconds of load before the kill, and after the restart.
    #[arg(long, default_value_t = 5)]
    pub settle_s: u64,
    /// Give up waiting for the follower after this many seconds from its restart.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
}

/// The leader's counters about one peer, read from its `/metrics`.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
struct PeerCounters {
    append_timeouts: f64,
    heartbeat_timeouts: f64,
    appends_split: f64,
    snapshots_sent: f64,
}

impl PeerCounters {
    async fn read(http: &reqwest::Client, base: &str, peer: u64) -> anyhow::Result<PeerCounters> {
        let text = http.get(format!("{base}/metrics")).send().await?.error_for_status()?.text().await?;
        let peer = peer.to_string();
        let sum = |name: &str, kind: Option<&str>| {
            let mut labels = vec![("peer", peer.as_str())];
            labels.extend(kind.map(|kind| ("kind", kind)));
            labelled_sum(&text, name, &labels)
        };
        Ok(PeerCounters {
            append_timeouts: sum("tandem_raft_rpc_timeouts_total", Some("append")),
            heartbeat_timeouts: sum("tandem_raft_rpc_timeouts_total", Some("heartbeat")),
            // Split appends: over HTTP (a prefix, the rest next), or over an append stream (runs).
            appends_split: sum("tandem_raft_append_prefixes_total", None)
                + sum("tandem_raft_append_splits_total", None),
            snapshots_sent: sum("tandem_raft_snapshots_sent_total", None),
        })
    }

    fn since(self, before: PeerCounters) -> PeerCounters {
        PeerCounters {
            append_timeouts: self.append_timeouts - before.append_timeouts,
            heartbeat_timeouts: self.heartbeat_timeouts - before.heartbeat_timeouts,
            appends_split: self.appends_split - before.appends_split,
            snapshots_sent: self.snapshots_sent - before.snapshots_sent,
        }
    }
}

/// The client of the coordinator with this node id.
async fn client_of(clients: &[ApiClient], id: u64) -> anyhow::Result<ApiClient> {
    for client in clients {
        if client.cluster().await.is_ok_and(|view| view.node_id == id) {
            return Ok(client.clone());
        }
    }
    anyhow::bail!("no coordinator answers as node {id}")
}

/// Run `catchup`.
pub async fn run(args: &CatchupArgs, quick: bool) -> anyhow::Result<Report> {
    anyhow::ensure!(args.target.local, "catchup kills a coordinator: it needs --local");
    let down = Duration::from_secs(if quick { args.down_s.min(10) } else { args.down_s });
    let settle = Duration::from_secs(args.settle_s);
    let mut report = Report::new(
        "catchup",
        serde_json::json!({
            "clients": args.clients, "body_bytes": args.body_bytes, "down_s": down.as_secs(),
            "settle_s": settle.as_secs(),
        }),
    );
    let mut target = Target::open(&args.target, &[]).await?;
    let leader = target.clients[0].cluster().await?.leader.context("no leader")?;
    let follower = if leader == 1 { 2 } else { 1 };
    let leader_client = client_of(&target.clients, leader).await?;
    let follower_client = client_of(&target.clients, follower).await?;
    let http = reqwest::Client::new();

    // Load on the leader alone, for the whole run: before, during and after the outage.
    let load_s = (settle * 2 + down).as_secs_f64() + 10.0;
    let load = tokio::spawn({
        let (clients, body_bytes) = (args.clients, args.body_bytes);
        let leader_client = leader_client.clone();
        async move { ingest::load(&[leader_client], clients, body_bytes, load_s, 1).await }
    });
    tokio::time::sleep(settle).await;
    let victim = format!("coordinator-{follower}");
    let cluster = target.local.as_mut().expect("--local");
    cluster.process(&victim).signal(Signal::SIGKILL);
    cluster.process(&victim).kill();
    let before_down = leader_client.cluster().await?.last_log_index.unwrap_or(0);
    tokio::time::sleep(down).await;
    let counters_before = PeerCounters::read(&http, leader_client.base(), follower).await?;
    let at_restart = leader_client.cluster().await?.last_log_index.unwrap_or(0);
    cluster.restart(&victim)?;
    let restarted = Instant::now();

    // Level: the follower's last log index reaches what the leader's was just before it looked.
    let deadline = restarted + Duration::from_secs(args.timeout_s);
    let mut first_seen = None;
    let caught_up = loop {
        let theirs = leader_client.cluster().await.ok().and_then(|view| view.last_log_index).unwrap_or(0);
        if let Ok(view) = follower_client.cluster().await {
            let mine = view.last_log_index.unwrap_or(0);
            first_seen.get_or_insert((restarted.elapsed(), mine));
            if mine >= theirs {
                break Some(restarted.elapsed());
            }
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let counters = PeerCounters::read(&http, leader_client.base(), follower).await?.since(counters_before);
    let load = load.await.context("load task")?;
    // What the leader logged about its requests that timed out, to see which they were.
    let cluster = target.local.as_mut().expect("--local");
    let leader_log = std::fs::read_to_string(cluster.log_path(&format!("coordinator-{leader}"))).unwrap_or_default();
    let timeouts: Vec<&str> = leader_log.lines().filter(|line| line.contains("timed out")).take(10).collect();
    report.figure("leader_log_timeouts", &timeouts);

    report.figure("leader", leader);
    report.figure("follower", follower);
    report.figure("entries_behind_at_restart", at_restart.saturating_sub(before_down));
    if let Some((after, index)) = first_seen {
        report.figure("follower_answering_after_s", after.as_secs_f64());
        report.figure("follower_last_log_index_when_first_answering", index);
    }
    report.figure("caught_up_after_restart_s", caught_up.map(|d| d.as_secs_f64()));
    report.figure("append_timeouts", counters.append_timeouts);
    report.figure("heartbeat_timeouts", counters.heartbeat_timeouts);
    report.figure("catch_up_appends_split", counters.appends_split);
    report.figure("snapshots_sent", counters.snapshots_sent);
    report.figure("enqueues_acked", load.acked);
    report.figure("enqueue_errors", load.errors);
    report.figure("enqueues_per_s", load.rate());
    let mut missed = Vec::new();
    match caught_up {
        None => report
            .failures
            .push(format!("the follower was not level with the leader {}s after its restart", args.timeout_s)),
        Some(d) if d > Duration::from_secs(10) => {
            missed.push(format!("caught up in {:.1} s (target 10 s)", d.as_secs_f64()))
        }
        Some(_) => {}
    }
    if counters.snapshots_sent > 0.0 {
        missed.push(format!("{} snapshot sends (target 0)", counters.snapshots_sent));
    }
    if counters.append_timeouts > 0.0 {
        missed.push(format!("{} append timeouts (target 0)", counters.append_timeouts));
    }
    report.figure("target_met", missed.is_empty());
    report.figure("target_missed_by", &missed);
    report.series = load.series;
    Ok(report)
}
