//! `failover`: a steady stream of enqueues on both coordinators while the leader is killed
//! (SIGKILL; the local cluster only) or asked to hand over (`POST /admin/failover`), K times.
//! Reports the longest gap in successful enqueues per trial, and checks that no acknowledged job
//! is lost and no result is wrong.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;
use tokio::sync::Mutex;
use wire::client::ApiClient;

use crate::reference::{chain, hex};
use crate::report::Report;
use crate::target::{Target, TargetArgs};

/// Options of `failover`.
#[derive(clap::Args, Clone, Debug)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Trials (each kills the leader once).
    #[arg(long, default_value_t = 5)]
    pub trials: usize,
    /// Concurrent enqueue streams.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// How the leader goes: killed, or asked to hand over.
    #[arg(long, value_enum, default_value = "kill")]
    pub mode: Mode,
}

/// How a trial removes the leader.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// SIGKILL the leader's process (local cluster only), then restart it.
    Kill,
    /// `POST /admin/failover`: leadership moves to the other coordinator.
    Handover,
}

/// (request sent, acknowledged, job id, body) of every acknowledged enqueue.
type Acks = Arc<Mutex<Vec<(Instant, Instant, u64, Vec<u8>)>>>;

/// Run `failover`.
pub async fn run(args: &FailoverArgs, quick: bool) -> anyhow::Result<Report> {
    anyhow::ensure!(args.target.local || args.mode == Mode::Handover, "killing processes needs --local");
    let trials = if quick { args.trials.min(2) } else { args.trials };
    let mode = format!("{:?}", args.mode).to_lowercase();
    let mut report =
        Report::new("failover", serde_json::json!({ "trials": trials, "clients": args.clients, "mode": mode }));
    let mut target = Target::open(&args.target, &[]).await?;
    let token = match target.admin_token.clone() {
        Some(token) => token,
        None if args.mode == Mode::Handover => anyhow::bail!("--admin-token is needed for hand-overs"),
        None => String::new(),
    };
    let started = Instant::now();
    let acks: Acks = Arc::default();
    let mut gaps = Vec::new();
    let mut leaders = Vec::new();
    let progress = crate::report::progress_bar(trials as u64, "trials");
    for trial in 0..trials {
        progress.set_position(trial as u64);
        let leader = target.clients[0].cluster().await?.leader.unwrap_or(1);
        let stop = Arc::new(AtomicBool::new(false));
        let mut streams = Vec::new();
        for c in 0..args.clients {
            let clients = target.clients.clone();
            let (stop, acks) = (stop.clone(), acks.clone());
            streams.push(tokio::spawn(stream(clients, c, trial, stop, acks)));
        }
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let trial_start = Instant::now();
        let victim = format!("coordinator-{leader}");
        if args.mode == Mode::Kill {
            let cluster = target.local.as_mut().expect("--local");
            cluster.process(&victim).signal(Signal::SIGKILL);
            cluster.process(&victim).kill();
        } else {
            let answer = target.clients[0].failover(&token, None).await.context("hand-over refused")?;
            if answer.leader == leader || answer.previous_leader != leader {
                report.failures.push(format!("trial {trial}: leadership did not move from {leader}: {answer:?}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        stop.store(true, Ordering::Relaxed);
        for s in streams {
            s.await?;
        }
        // The longest interval without any acknowledgement around the kill.
        let mut times: Vec<Instant> = acks
            .lock()
            .await
            .iter()
            .map(|(_, t, _, _)| *t)
            .filter(|t| *t >= trial_start - Duration::from_millis(500))
            .collect();
        times.sort();
        let gap = times.windows(2).map(|w| w[1].duration_since(w[0])).max().unwrap_or_default();
        gaps.push(gap.as_secs_f64());
        let new_leader = leader_seen_by_others(&target.clients, leader).await;
        leaders.push((leader, new_leader));
        if new_leader.is_none_or(|new| new == leader) && args.mode == Mode::Handover {
            report.failures.push(format!("trial {trial}: leader {leader} still leads after the hand-over"));
        }
        if args.mode == Mode::Kill {
            let cluster = target.local.as_mut().expect("--local");
            cluster.restart(&victim)?;
            cluster.wait_ready(Duration::from_secs(30)).await?;
        }
    }
    progress.finish_and_clear();
    // Every acknowledged job must complete with the right result.
    let acks = acks.lock().await;
    let expected: BTreeMap<u64, String> = acks.iter().map(|(_, _, id, body)| (*id, hex(&chain(body, 1)))).collect();
    let results = collect(&target.clients[1], expected.len(), Duration::from_secs(120)).await;
    let lost = expected.keys().filter(|id| !results.contains_key(id)).count();
    let wrong = expected.iter().filter(|(id, want)| results.get(id).is_some_and(|got| got != *want)).count();
    if lost > 0 {
        report.failures.push(format!("{lost} acknowledged jobs lost"));
    }
    if wrong > 0 {
        report.failures.push(format!("{wrong} wrong results"));
    }
    report.figure("acknowledged", expected.len());
    report.figure("lost", lost);
    report.figure("wrong", wrong);
    report.figure("gap_s_per_trial", &gaps);
    report.figure("leader_before_after_per_trial", &leaders);
    report.figure("max_gap_s", gaps.iter().copied().fold(0.0, f64::max));
    report.series = acks
        .iter()
        .map(|(sent, acked, _, _)| {
            (sent.duration_since(started).as_secs_f64(), acked.duration_since(*sent).as_secs_f64() * 1e3)
        })
        .collect();
    Ok(report)
}

async fn stream(clients: Vec<ApiClient>, c: usize, trial: usize, stop: Arc<AtomicBool>, acks: Acks) {
    let mut current = c % clients.len();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let body = format!("failover trial {trial} stream {c} job {n}").into_bytes();
        let key = format!("f{trial}-{c}-{n}");
        let sent = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match clients[current].enqueue(body.clone(), 1, Some(&key)).await {
                Ok(id) => {
                    acks.lock().await.push((sent, Instant::now(), id, body.clone()));
                    break;
                }
                Err(_) => {
                    current = (current + 1) % clients.len();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        n += 1;
    }
}

/// The leader as the coordinators other than `old` see it.
async fn leader_seen_by_others(clients: &[ApiClient], old: u64) -> Option<u64> {
    for client in clients {
        if let Ok(view) = client.cluster().await
            && view.node_id != old
        {
            return view.leader;
        }
    }
    None
}

async fn collect(client: &ApiClient, want: usize, timeout: Duration) -> BTreeMap<u64, String> {
    let deadline = Instant::now() + timeout;
    let mut results = BTreeMap::new();
    let mut cursor = 0;
    while results.len() < want && Instant::now() < deadline {
        match client.pull_after(cursor, 10_000).await {
            Ok(page) if !page.jobs.is_empty() => {
                cursor = page.cursor;
                results.extend(page.jobs.into_iter().map(|j| (j.id, j.result)));
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    results
}
