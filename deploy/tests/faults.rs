//! The fault-injection suite: real processes on 127.0.0.1, a workload of self-describing jobs on
//! both coordinators, one fault per scenario, then heal, drain and check the whole history (see
//! `common/history.rs` for the checker's properties). Each scenario prints a summary line.
//!
//! Partitions use the voters' transport fault hooks (`--fault-injection`, `POST /raft/faults`),
//! which drop every request between the chosen voters in both directions, and, when the tests
//! run as root, iptables rules between voters in network namespaces of their own (real packets
//! dropped; see `common/netns.rs`). Scenarios run one at a time: they share two cores.

use std::time::{Duration, Instant};

use deploy::local::LocalCluster;
use nix::sys::signal::Signal;
use tempfile::TempDir;
use wire::api::ClusterView;
use wire::client::ApiClient;

mod common;

use common::history::Workload;
use common::netns::VoterNetwork;
use common::*;

/// One scenario at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TOKEN: &str = "faults-token";
/// Every scenario must acknowledge at least this many jobs.
const MIN_ACKED: usize = 200;
const WRITERS: usize = 4;
const READERS: usize = 2;
const DRAIN: Duration = Duration::from_secs(90);

struct Env {
    cluster: LocalCluster,
    urls: [String; 2],
    http: reqwest::Client,
    /// The voters' namespaces, when partitions drop real packets (dropped after the cluster).
    net: Option<VoterNetwork>,
    dir: Option<TempDir>,
}

impl Drop for Env {
    /// Keep the logs and data of a failed scenario for a post-mortem.
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("kept the failed scenario's logs and data in {}", dir.keep().display());
        }
    }
}

fn name_of(id: u64) -> &'static str {
    match id {
        1 => "coordinator-1",
        2 => "coordinator-2",
        _ => "witness",
    }
}

impl Env {
    async fn start(workers: usize) -> Env {
        Env::start_on(workers, None, &[]).await
    }

    /// Start with every voter in a network namespace of its own (`net`), or on 127.0.0.1, and
    /// with `coordinator_args` added to the coordinators' command lines.
    async fn start_on(workers: usize, net: Option<VoterNetwork>, coordinator_args: &[&str]) -> Env {
        let dir = TempDir::new().expect("temp dir");
        let mut layout = options(&dir, workers);
        layout.coordinator_args.extend(coordinator_args.iter().map(|arg| arg.to_string()));
        if let Some(net) = &net {
            layout.voter_hosts = [net.host(1), net.host(2), net.host(3)];
            layout.voter_netns = [Some(net.netns(1)), Some(net.netns(2)), Some(net.netns(3))];
            layout.worker_netns = Some(net.workers());
        }
        layout.admin_token = Some(TOKEN.into());
        layout.coordinator_args.push("--fault-injection".into());
        layout.worker_args.push("--fault-injection".into());
        let mut cluster = LocalCluster::start(layout).expect("start the local cluster");
        cluster.wait_ready(Duration::from_secs(60)).await.expect("cluster ready");
        let urls = cluster.api_urls();
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().expect("client");
        let env = Env { cluster, urls, http, net, dir: Some(dir) };
        // Workers registered, so the workload's jobs are computed from the start.
        let deadline = Instant::now() + Duration::from_secs(30);
        while env.view(0).await.is_none_or(|v| v.workers.len() < workers + 1) {
            assert!(Instant::now() < deadline, "workers did not register");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        env
    }

    async fn view(&self, node: usize) -> Option<ClusterView> {
        let client = ApiClient::with_http(self.http.clone(), self.urls[node].clone());
        client.cluster().await.ok()
    }

    /// The leader, as confirmed by a coordinator that sees it in the "leader" state.
    async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for node in 0..2 {
                if let Some(view) = self.view(node).await
                    && let Some(leader) = view.leader
                    && view.voters.iter().any(|v| v.id == leader && v.state == "leader")
                {
                    return leader;
                }
            }
            assert!(Instant::now() < deadline, "no leader within 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The cluster secret the voters require on `/raft/` routes.
    fn secret(&self) -> &str {
        self.cluster.options.cluster_secret.as_deref().expect("the suite's clusters have a secret")
    }

    /// Cut voter `id` off from `peers`, both ways (an empty list heals it).
    async fn isolate(&self, id: u64, peers: &[u64]) {
        let response = self
            .http
            .post(format!("http://{}/raft/faults", self.cluster.raft_addr(id)))
            .header("x-tandem-target", id.to_string())
            .header(wire::SECRET_HEADER, self.secret())
            .json(&serde_json::json!({ "isolated_from": peers }))
            .send()
            .await
            .expect("fault route");
        assert!(response.status().is_success(), "fault route: {}", response.status());
    }

    /// Cut the links between `a` and each of `b`, on both sides: with iptables when the voters
    /// have namespaces, with the transport's fault hooks otherwise.
    async fn partition(&self, a: u64, b: &[u64]) {
        if let Some(net) = &self.net {
            net.partition(a, b);
            return;
        }
        self.isolate(a, b).await;
        for peer in b {
            self.isolate(*peer, &[a]).await;
        }
    }

    async fn heal(&self) {
        if let Some(net) = &self.net {
            net.heal();
            return;
        }
        for id in 1..=3 {
            self.isolate(id, &[]).await;
        }
    }

    fn kill(&mut self, id: u64) {
        self.cluster.process(name_of(id)).kill();
    }

    fn restart(&mut self, name: &str) {
        self.cluster.restart(name).expect("restart");
    }

    fn workload(&self, scenario: &str) -> Workload {
        Workload::start(scenario, &self.urls, WRITERS, READERS)
    }

    async fn finish(mut self, scenario: &str, workload: Workload, live: &[usize]) {
        // The workload runs on until it has the acknowledgements every scenario asks for: how
        // many fit in a scenario's fixed phases depends on the machine's speed (two-down got 169
        // to 195 of 200 on a loaded machine, and failed).
        wait_for("the workload's acknowledgements", Duration::from_secs(60), || async {
            (workload.acknowledged() >= MIN_ACKED).then_some(())
        })
        .await;
        let summary = workload.finish(scenario, DRAIN, live).await;
        summary.assert_clean(MIN_ACKED);
        self.cluster.stop(Duration::from_secs(10));
    }
}

async fn sleep(seconds: f64) {
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
}

/// Kill voter `victim` (chosen afresh each round), keep it down, restart it; check that the
/// remaining two served writes meanwhile.
async fn kill_repeatedly(scenario: &str, choose: impl Fn(u64) -> u64) {
    let _serial = SERIAL.lock().await;
    let mut env = Env::start(1).await;
    let workload = env.workload(scenario);
    sleep(2.0).await;
    for _ in 0..3 {
        let victim = choose(env.leader().await);
        env.kill(victim);
        let killed = Instant::now();
        sleep(4.0).await;
        let served = workload.acks_received_between(killed + Duration::from_secs(2), Instant::now());
        assert!(served > 0, "[{scenario}] nothing acknowledged while voter {victim} was down");
        env.restart(name_of(victim));
        sleep(2.0).await;
    }
    env.finish(scenario, workload, &[0, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_the_leader_repeatedly() {
    kill_repeatedly("kill-leader", |leader| leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_the_follower_coordinator_repeatedly() {
    kill_repeatedly("kill-follower", |leader| if leader == 1 { 2 } else { 1 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_the_witness_repeatedly() {
    kill_repeatedly("kill-witness", |_| 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_the_leader_past_the_election_timeout() {
    let scenario = "pause-leader";
    let _serial = SERIAL.lock().await;
    let mut env = Env::start(1).await;
    let workload = env.workload(scenario);
    sleep(2.0).await;
    for _ in 0..3 {
        let leader = env.leader().await;
        let process = env.cluster.process(name_of(leader));
        assert!(process.signal(Signal::SIGSTOP));
        // Well past the 400 ms election timeout: the others elect a new leader meanwhile, and
        // the paused one must not acknowledge what it can no longer commit when it resumes.
        sleep(2.5).await;
        assert!(env.cluster.process(name_of(leader)).signal(Signal::SIGCONT));
        sleep(3.0).await;
    }
    env.finish(scenario, workload, &[0, 1]).await;
}

/// The leader is frozen for twice the worker timeout while the workers keep heartbeating to its
/// successor. When it resumes, its table still shows every worker silent since it froze; its
/// duties must not remove them (they are fenced to its own term, and a removal is re-checked
/// against the committed last-heard time), so every worker keeps its registration throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_the_leader_past_the_worker_timeout() {
    let scenario = "pause-leader-past-worker-timeout";
    let _serial = SERIAL.lock().await;
    const WORKER_TIMEOUT_MS: u64 = 3_000;
    let mut env = Env::start_on(1, None, &["--worker-timeout-ms", &WORKER_TIMEOUT_MS.to_string()]).await;
    let workload = env.workload(scenario);
    let registered = |view: &ClusterView| view.workers.iter().map(|w| (w.id, w.registered_at_ms)).collect::<Vec<_>>();
    let before = registered(&env.view(0).await.expect("a view"));
    assert_eq!(before.len(), 2, "the witness's worker and worker-1: {before:?}");
    sleep(2.0).await;
    for _ in 0..2 {
        let leader = env.leader().await;
        assert!(env.cluster.process(name_of(leader)).signal(Signal::SIGSTOP));
        sleep(2.0 * WORKER_TIMEOUT_MS as f64 / 1_000.0).await;
        assert!(env.cluster.process(name_of(leader)).signal(Signal::SIGCONT));
        sleep(3.0).await;
        for node in 0..2 {
            let view = env.view(node).await.expect("both coordinators answer after the pause");
            assert_eq!(registered(&view), before, "[{scenario}] a live worker was removed (seen from node {node})");
        }
    }
    env.finish(scenario, workload, &[0, 1]).await;
}

/// How a partition is made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The voters' transport fault hooks (runs anywhere).
    Hooks,
    /// iptables between network namespaces (root only; skipped, saying so, elsewhere).
    Packets,
}

/// Cut voter `a` off from `b` (both chosen afresh each round, given the leader) for 5 s, twice;
/// check that the majority side served writes meanwhile.
async fn partition_repeatedly(scenario: &str, cut: Cut, sides: impl Fn(u64) -> (u64, Vec<u64>)) {
    let _serial = SERIAL.lock().await;
    let net = match cut {
        Cut::Hooks => None,
        Cut::Packets => {
            if let Some(why) = VoterNetwork::unavailable() {
                println!("[{scenario}] skipped: network namespaces need root, ip and iptables ({why})");
                return;
            }
            Some(VoterNetwork::create().expect("network namespaces"))
        }
    };
    let env = Env::start_on(1, net, &[]).await;
    let workload = env.workload(scenario);
    sleep(2.0).await;
    for _ in 0..2 {
        let (a, b) = sides(env.leader().await);
        env.partition(a, &b).await;
        let cut = Instant::now();
        sleep(5.0).await;
        let served = workload.acks_received_between(cut + Duration::from_secs(2), Instant::now());
        assert!(served > 0, "[{scenario}] nothing acknowledged while {a} was cut off from {b:?}");
        env.heal().await;
        sleep(3.0).await;
    }
    env.finish(scenario, workload, &[0, 1]).await;
}

fn leader_from_peers(leader: u64) -> (u64, Vec<u64>) {
    (leader, (1..=3).filter(|id| *id != leader).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_the_leader_from_both_peers() {
    partition_repeatedly("partition-leader", Cut::Hooks, leader_from_peers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_the_coordinators_from_each_other() {
    // The witness still reaches both: whichever coordinator it sides with keeps a majority.
    partition_repeatedly("partition-coordinators", Cut::Hooks, |_| (1, vec![2])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolate_the_witness() {
    partition_repeatedly("isolate-witness", Cut::Hooks, |_| (3, vec![1, 2])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_the_leader_with_real_packet_loss() {
    partition_repeatedly("netns-partition-leader", Cut::Packets, leader_from_peers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_the_coordinators_with_real_packet_loss() {
    partition_repeatedly("netns-partition-coordinators", Cut::Packets, |_| (1, vec![2])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolate_the_witness_with_real_packet_loss() {
    // The witness's worker shares its namespace, so it is cut off from the coordinators too, as
    // a partitioned host would be: its leases expire and the other worker takes the jobs.
    partition_repeatedly("netns-isolate-witness", Cut::Packets, |_| (3, vec![1, 2])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_of_all_three_voters() {
    let scenario = "power-loss";
    let _serial = SERIAL.lock().await;
    let mut env = Env::start(1).await;
    let workload = env.workload(scenario);
    sleep(3.0).await;
    for _ in 0..2 {
        for id in 1..=3 {
            env.kill(id);
        }
        sleep(1.0).await;
        for id in 1..=3 {
            env.restart(name_of(id));
        }
        env.cluster.wait_ready(Duration::from_secs(60)).await.expect("ready after the restart");
        sleep(3.0).await;
    }
    env.finish(scenario, workload, &[0, 1]).await;
}

fn wal_of(env: &Env, id: u64) -> std::path::PathBuf {
    env.cluster.options.data_dir.join(name_of(id)).join("raft.wal")
}

/// The length of a log file's records: the file ends in preallocated zeros.
fn records_len(wal: &[u8]) -> usize {
    wal.iter().rposition(|&byte| byte != 0).expect("records") + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_log_tail_recovers_and_catches_up() {
    let scenario = "truncate-tail";
    let _serial = SERIAL.lock().await;
    let mut env = Env::start(1).await;
    let workload = env.workload(scenario);
    sleep(4.0).await;
    let leader = env.leader().await;
    let victim = if leader == 1 { 2 } else { 1 };
    env.kill(victim);
    // Cut the last quarter of its log: a torn record at the new end, and before it a valid
    // prefix that lacks entries this voter had fsynced and acknowledged (as a disk that lied
    // about fsync would). The leader sees the follower's log go backwards and must re-send
    // them, not stop.
    let wal = wal_of(&env, victim);
    // Cut in the middle of the batch three quarters in, never on a batch boundary: a cut there
    // would leave a clean end, no torn record.
    let spans = raft_store::wal::batch_spans(&std::fs::read(&wal).expect("wal"));
    assert!(spans.len() >= 8, "[{scenario}] only {} batches in the log", spans.len());
    let (start, end) = spans[spans.len() * 3 / 4];
    let file = std::fs::OpenOptions::new().write(true).open(&wal).expect("open wal");
    file.set_len(((start + end) / 2) as u64).expect("truncate");
    drop(file);
    sleep(1.0).await;
    env.restart(name_of(victim));
    // It starts, and catches up with the leader.
    let node = (victim - 1) as usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(!env.cluster.process(name_of(victim)).has_exited(), "the truncated voter refused to start");
        if let (Some(mine), Some(theirs)) = (env.view(node).await, env.view(1 - node).await)
            && mine.last_applied_index.is_some_and(|a| a + 50 >= theirs.last_log_index.unwrap_or(0))
            && mine.leader.is_some()
        {
            break;
        }
        assert!(Instant::now() < deadline, "[{scenario}] the truncated voter did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!env.cluster.process(name_of(leader)).has_exited(), "the leader stopped");
    let log = std::fs::read_to_string(env.cluster.options.data_dir.join(format!("{}.log", name_of(victim))))
        .expect("its log");
    assert!(log.contains("dropped a torn record"), "the truncation was not noticed:\n{log}");
    sleep(3.0).await;
    env.finish(scenario, workload, &[0, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_log_middle_is_refused_and_the_others_keep_serving() {
    let scenario = "corrupt-middle";
    let _serial = SERIAL.lock().await;
    let mut env = Env::start(1).await;
    let workload = env.workload(scenario);
    sleep(4.0).await;
    let leader = env.leader().await;
    let victim = if leader == 1 { 2 } else { 1 };
    env.kill(victim);
    let wal = wal_of(&env, victim);
    let mut bytes = std::fs::read(&wal).expect("wal");
    let middle = records_len(&bytes) / 2;
    for byte in &mut bytes[middle..middle + 8] {
        *byte ^= 0x5a;
    }
    std::fs::write(&wal, &bytes).expect("write wal");
    env.restart(name_of(victim));
    let refused = Instant::now();
    let deadline = refused + Duration::from_secs(20);
    while !env.cluster.process(name_of(victim)).has_exited() {
        assert!(Instant::now() < deadline, "[{scenario}] a voter with a corrupt log kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(env.cluster.options.data_dir.join(format!("{}.log", name_of(victim))))
        .expect("its log");
    assert!(log.contains("corrupt") && log.contains("offset"), "no clear error in its log:\n{log}");
    // The leader and the witness keep serving.
    sleep(4.0).await;
    let served = workload.acks_received_between(refused + Duration::from_secs(1), Instant::now());
    assert!(served > 0, "[{scenario}] the other two acknowledged nothing");
    env.finish(scenario, workload, &[(leader - 1) as usize]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_stops_its_voter_and_the_others_keep_serving() {
    let scenario = "failing-disk";
    let _serial = SERIAL.lock().await;
    let mut env = Env::start(1).await;
    let workload = env.workload(scenario);
    sleep(3.0).await;
    let leader = env.leader().await;
    // The leader's disk starts failing: its Raft stops, and the process must exit (so that a
    // supervisor restarts it) rather than answer 503 forever.
    let response = env
        .http
        .post(format!("http://{}/raft/faults", env.cluster.raft_addr(leader)))
        .header("x-tandem-target", leader.to_string())
        .header(wire::SECRET_HEADER, env.secret())
        .json(&serde_json::json!({ "isolated_from": [], "fail_storage": true }))
        .send()
        .await
        .expect("fault route");
    assert!(response.status().is_success());
    let failed = Instant::now();
    let deadline = failed + Duration::from_secs(20);
    while !env.cluster.process(name_of(leader)).has_exited() {
        assert!(Instant::now() < deadline, "[{scenario}] a voter whose disk failed kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(env.cluster.options.data_dir.join(format!("{}.log", name_of(leader))))
        .expect("its log");
    assert!(log.contains("WAL write") && log.contains("Raft stopped on its own"), "no clear error:\n{log}");
    // The other two elect a leader and serve; the failed voter, restarted on its data (the disk
    // "replaced"), catches up.
    sleep(4.0).await;
    let served = workload.acks_received_between(failed + Duration::from_secs(2), Instant::now());
    assert!(served > 0, "[{scenario}] the other two acknowledged nothing");
    env.restart(name_of(leader));
    env.cluster.wait_ready(Duration::from_secs(60)).await.expect("ready after the restart");
    sleep(2.0).await;
    env.finish(scenario, workload, &[0, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_a_worker_mid_job() {
    let scenario = "kill-worker";
    let _serial = SERIAL.lock().await;
    let mut env = Env::start(1).await;
    let workload = env.workload(scenario);
    sleep(2.0).await;
    for _ in 0..3 {
        env.cluster.process("worker-1").kill();
        sleep(3.0).await;
        env.restart("worker-1");
        sleep(2.0).await;
    }
    env.finish(scenario, workload, &[0, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_past_its_lease_reports_late() {
    let scenario = "late-worker";
    let _serial = SERIAL.lock().await;
    let mut env = Env::start(1).await;
    let workload = env.workload(scenario);
    sleep(2.0).await;
    for _ in 0..3 {
        // Frozen past its 1.5 s leases: they expire, the jobs move to the witness's worker, and
        // when it wakes it reports results for jobs it no longer holds. Those must not become a
        // second visible result.
        assert!(env.cluster.process("worker-1").signal(Signal::SIGSTOP));
        sleep(4.0).await;
        assert!(env.cluster.process("worker-1").signal(Signal::SIGCONT));
        sleep(2.0).await;
    }
    env.finish(scenario, workload, &[0, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_by_the_network_keeps_computing_and_reports_late() {
    let scenario = "netns-cut-worker";
    let _serial = SERIAL.lock().await;
    if let Some(why) = VoterNetwork::unavailable() {
        println!("[{scenario}] skipped: network namespaces need root, ip and iptables ({why})");
        return;
    }
    let net = VoterNetwork::create().expect("network namespaces");
    let env = Env::start_on(1, Some(net), &[]).await;
    let workload = env.workload(scenario);
    sleep(2.0).await;
    for _ in 0..3 {
        // worker-1 keeps computing what it holds, but cannot heartbeat or report: its leases
        // expire, the witness's worker takes the jobs, and after the heal worker-1 reports
        // results for jobs it no longer holds. None may become a second visible result.
        env.net.as_ref().expect("namespaces").cut_workers_off();
        sleep(4.0).await;
        env.heal().await;
        sleep(3.0).await;
    }
    env.finish(scenario, workload, &[0, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_failovers_in_a_loop() {
    let scenario = "failover-loop";
    let _serial = SERIAL.lock().await;
    let env = Env::start(1).await;
    let workload = env.workload(scenario);
    sleep(2.0).await;
    let client = ApiClient::with_http(env.http.clone(), env.urls[0].clone());
    let mut moved = 0;
    for _ in 0..8 {
        if let Ok(answer) = client.failover(TOKEN, None).await {
            assert_ne!(answer.leader, answer.previous_leader);
            moved += 1;
        }
        sleep(1.5).await;
    }
    assert!(moved >= 6, "[{scenario}] only {moved} of 8 hand-overs happened");
    env.finish(scenario, workload, &[0, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_voters_down_nothing_is_acknowledged() {
    let scenario = "two-down";
    let _serial = SERIAL.lock().await;
    let mut env = Env::start(1).await;
    let workload = env.workload(scenario);
    sleep(3.0).await;
    let leader = env.leader().await;
    let down: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for id in &down {
        env.kill(*id);
    }
    let killed = Instant::now();
    sleep(6.0).await;
    // The survivor cannot commit: it is not ready, and nothing sent after the kill (with a
    // second for requests already replicated) was acknowledged while two voters were down.
    let survivor = if leader == 3 { None } else { Some((leader - 1) as usize) };
    if let Some(node) = survivor {
        let ready = ApiClient::with_http(env.http.clone(), env.urls[node].clone()).ready().await;
        assert_eq!(ready.ok(), Some(false), "[{scenario}] a lone voter says it is ready");
    }
    let restored = Instant::now();
    let acked = workload.acked_between(killed + Duration::from_secs(1), restored, restored);
    assert_eq!(acked, 0, "[{scenario}] {acked} enqueues acknowledged without a quorum");
    for id in &down {
        env.restart(name_of(*id));
    }
    env.cluster.wait_ready(Duration::from_secs(60)).await.expect("ready after the restart");
    sleep(3.0).await;
    let served = workload.acks_received_between(restored, Instant::now());
    assert!(served > 0, "[{scenario}] nothing acknowledged after the quorum came back");
    env.finish(scenario, workload, &[0, 1]).await;
}
