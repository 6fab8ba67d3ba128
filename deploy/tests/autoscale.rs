//! The autoscaler end to end, with the default provider: the real binaries on 127.0.0.1, the
//! leader starting and stopping worker processes itself. And leases sized by work, without
//! which a worker the autoscaler adds would find every job hoarded by the others.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use deploy::local::{Autoscale, LocalCluster, LocalOptions};
use tempfile::TempDir;
use wire::api::ClusterView;
use wire::client::ApiClient;

mod common;

use common::*;

/// One scenario at a time: they share two cores and measure speed.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Chain steps per second of one core of this machine, in this build (the workers run the same
/// profile), measured on the independent reference chain.
fn core_rate() -> u64 {
    let steps = 200_000;
    let started = Instant::now();
    // The workers' own chain code, built as theirs is: the reference chain of this test crate
    // runs at another speed.
    std::hint::black_box(wire::chain::continue_chain(wire::Digest([1; 64]), steps));
    (steps as f64 / started.elapsed().as_secs_f64()) as u64
}

/// Enqueue 12 jobs of `iterations` (one body: the reference chain, which takes as long as a
/// job, is computed once, after the enqueues; each job opts out of reuse, so that all 12 are
/// computed and load the fleet); their ids and the expected result.
async fn enqueue_burst(client: &ApiClient, iterations: u64) -> (BTreeSet<u64>, String) {
    let body = job_body(iterations);
    let mut ids = BTreeSet::new();
    for _ in 0..12 {
        ids.insert(client.enqueue_with_reuse(body.clone(), iterations, None, false).await.expect("enqueue"));
    }
    let expected = tokio::task::spawn_blocking(move || reference_chain(&body, iterations)).await.expect("reference");
    (ids, expected)
}

fn job_body(i: u64) -> Vec<u8> {
    format!("autoscale job {i:08}").into_bytes()
}

async fn view(client: &ApiClient) -> ClusterView {
    client.cluster().await.expect("cluster view")
}

fn scaled_workers(view: &ClusterView) -> usize {
    view.workers.iter().filter(|w| !w.witness).count()
}

/// Worker processes an autoscaler started for the cluster at `url` (a coordinator's), anywhere
/// on this machine: the local provider gives each its launch token and the coordinators' URLs.
fn launched_processes(url: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("--launch-token") && cmdline.contains(url) {
            pids.push(pid);
        }
    }
    pids
}

fn autoscaled(dir: &TempDir, max_workers: u32) -> LocalOptions {
    let mut layout = options(dir, 0);
    layout.autoscale = Some(Autoscale { min_workers: 0, max_workers });
    layout.coordinator_args.extend(
        ["--scale-in-idle-ms", "3000", "--scale-out-cooldown-ms", "3000", "--drain-target-ms", "5000"]
            .map(String::from),
    );
    layout
}

/// The sequence a new user tried (2026-12-05): after 1,500 one-iteration jobs, 20 long ones.
/// Leased by count, each of the two workers took 10 on its 2 cores and the queue was empty; by
/// work, each takes one per core and the other 16 wait where a new worker (or the autoscaler's
/// policy) can see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_jobs_after_short_ones_are_leased_one_per_free_core_not_hoarded() {
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new().expect("temp dir");
    let mut layout = options(&dir, 1);
    layout.worker_cores = Some(2);
    let mut cluster = LocalCluster::start(layout).expect("start");
    cluster.wait_ready(Duration::from_secs(60)).await.expect("ready");
    cluster.wait_workers(Duration::from_secs(30)).await.expect("workers");
    let client = ApiClient::new(cluster.api_urls()[0].clone());

    let mut enqueues = tokio::task::JoinSet::new();
    for batch in 0..15 {
        let client = client.clone();
        enqueues.spawn(async move {
            for i in 0..100 {
                client.enqueue(job_body(batch * 100 + i), 1, None).await.expect("enqueue a short job");
            }
        });
    }
    enqueues.join_all().await;
    wait_for("1,500 short jobs done", Duration::from_secs(120), || async {
        (view(&client).await.queue.completed_total >= 1_500).then_some(())
    })
    .await;
    // Long enough that none finishes during the check, on any machine.
    let iterations = 50_000_000;
    for i in 0..20 {
        client.enqueue(job_body(10_000 + i), iterations, None).await.expect("enqueue a long job");
    }
    wait_for("every core busy", Duration::from_secs(20), || async { (view(&client).await.running == 4).then_some(()) })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = view(&client).await;
    for worker in &seen.workers {
        assert!(worker.leases <= 2, "worker {} ({}) holds {} leases on 2 cores", worker.id, worker.name, worker.leases);
    }
    assert_eq!((seen.running, seen.queued), (4, 16), "four running, one per core; the rest waiting");
    drop(cluster);
}

/// A burst of long jobs grows the workers from none toward the maximum; once the load is gone
/// and the idle time has passed they shrink back. Nothing is lost or computed wrong, no job is
/// requeued (a worker is terminated only when it holds nothing), the witness's worker stays,
/// and no launched process outlives the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_grows_the_fleet_to_the_maximum_and_idleness_shrinks_it_back() {
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = LocalCluster::start(autoscaled(&dir, 3)).expect("start");
    cluster.wait_ready(Duration::from_secs(60)).await.expect("ready");
    let client = ApiClient::new(cluster.api_urls()[0].clone());
    let witness = wait_for("the witness's worker", Duration::from_secs(30), || async {
        view(&client).await.workers.iter().find(|w| w.witness).map(|w| w.id)
    })
    .await;
    assert_eq!(scaled_workers(&view(&client).await), 0, "min 0: only the witness's worker at first");

    // 12 jobs of about 3 s of one core: 36 core-seconds against a 5 s target wants 8 cores.
    let (ids, expected) = enqueue_burst(&client, core_rate() * 3).await;
    let most = std::sync::atomic::AtomicUsize::new(0);
    let most = &most;
    wait_for("three workers launched", Duration::from_secs(60), || async {
        let now = scaled_workers(&view(&client).await);
        most.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        (now == 3).then_some(())
    })
    .await;
    let results = wait_for_results(&client, &ids, Duration::from_secs(180)).await;
    assert!(results.values().all(|result| *result == expected), "every result, against the reference chain");

    let shrunk = wait_for("back to no scaled worker", Duration::from_secs(60), || async {
        let seen = view(&client).await;
        most.fetch_max(scaled_workers(&seen), std::sync::atomic::Ordering::Relaxed);
        (scaled_workers(&seen) == 0).then_some(seen)
    })
    .await;
    assert_eq!(most.load(std::sync::atomic::Ordering::Relaxed), 3, "never past the maximum");
    let scaler = &shrunk.scaler;
    assert_eq!((scaler.launches_total, scaler.terminations_total, scaler.launch_failures_total), (3, 3, 0));
    assert_eq!(shrunk.queue.requeued_total, 0, "no job was taken from a worker that was stopped");
    assert!(shrunk.workers.iter().any(|w| w.witness && w.id == witness), "the witness's worker is untouched");
    let actions: Vec<&str> = scaler.decisions.iter().map(|d| d.action.as_str()).collect();
    for action in ["launch", "scale in", "terminate"] {
        assert!(actions.contains(&action), "no {action:?} among the decisions: {actions:?}");
    }
    assert!(scaler.decisions.iter().all(|d| !d.why.is_empty()), "every decision has a reason");
    assert!(launched_processes(&cluster.api_urls()[0]).is_empty(), "terminated workers are gone");
    cluster.stop(Duration::from_secs(10));
}

/// The leader is killed right after it committed its first launches. The new leader adopts
/// what was started (one process per committed launch, never two) and the fleet still grows to
/// the maximum; once the cluster stops, no launched process is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_while_scaling_out_leaves_no_double_launch_and_no_orphan() {
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = LocalCluster::start(autoscaled(&dir, 3)).expect("start");
    cluster.wait_ready(Duration::from_secs(60)).await.expect("ready");
    let urls = cluster.api_urls();
    let clients = urls.clone().map(ApiClient::new);
    let (ids, expected) = enqueue_burst(&clients[0], core_rate() * 3 + 1).await;
    let leader = wait_for("a launch committed", Duration::from_secs(30), || async {
        let seen = clients[0].cluster().await.ok()?;
        (seen.scaler.launches_total > 0).then_some(seen.leader?)
    })
    .await;
    cluster.process(&format!("coordinator-{leader}")).kill();
    let survivor = &clients[if leader == 1 { 1 } else { 0 }];
    let results = wait_for_results(survivor, &ids, Duration::from_secs(180)).await;
    assert!(results.values().all(|result| *result == expected), "every result, against the reference chain");
    let seen = view(survivor).await;
    // Every worker the autoscaler started registered once, under its own token: as many
    // launched processes ever ran as launches were committed.
    let logs = std::fs::read_dir(dir.path().join("launched-workers"))
        .expect("launch records")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .count() as u64;
    assert_eq!(logs, seen.scaler.launches_total, "one process per committed launch");
    assert!(seen.scaler.launches_total <= 3 + seen.scaler.terminations_total, "{:?}", seen.scaler);
    cluster.restart(&format!("coordinator-{leader}")).expect("restart the old leader");
    cluster.stop(Duration::from_secs(10));
    assert!(launched_processes(&urls[0]).is_empty(), "a launched worker outlived its cluster");
}

/// The witness's worker killed for good: after the witness timeout the leader launches a new
/// worker in the witness role and makes it a voter under a new id in place of the old; the
/// cluster then survives the loss of a coordinator, as it did before it lost its witness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_lost_for_good_is_replaced_and_the_cluster_again_survives_a_coordinator_loss() {
    const WITNESS_TIMEOUT: Duration = Duration::from_secs(3);
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new().expect("temp dir");
    let mut layout = autoscaled(&dir, 1);
    layout.coordinator_args.extend(["--witness-timeout-ms".into(), WITNESS_TIMEOUT.as_millis().to_string()]);
    let mut cluster = LocalCluster::start(layout).expect("start");
    cluster.wait_ready(Duration::from_secs(60)).await.expect("ready");
    let clients = cluster.api_urls().map(ApiClient::new);
    let witness_voters =
        |view: &ClusterView| -> Vec<u64> { view.voters.iter().filter(|v| v.role == "witness").map(|v| v.id).collect() };
    assert_eq!(witness_voters(&view(&clients[0]).await), [3]);
    cluster.process("witness").kill();
    let killed = Instant::now();
    // The timeout, a worker's start and its catch-up (a few seconds here; the boot timeout
    // bounds it).
    // The voters are swapped a moment before the leader records it as done.
    let (new_witness, seen) = wait_for("a new witness voter, recorded", Duration::from_secs(60), || async {
        let seen = clients[0].cluster().await.ok()?;
        let recorded = seen.scaler.decisions.iter().any(|d| d.action == "witness replaced");
        match witness_voters(&seen).as_slice() {
            [id] if *id != 3 && seen.voters.len() == 3 && recorded => Some((*id, seen)),
            _ => None,
        }
    })
    .await;
    assert!(new_witness > 3, "a new id, never the old one: {new_witness}");
    assert!(killed.elapsed() >= WITNESS_TIMEOUT, "replaced before the timeout: {:?}", killed.elapsed());
    let actions: Vec<&str> = seen.scaler.decisions.iter().map(|d| d.action.as_str()).collect();
    assert!(actions.contains(&"replace witness"), "{actions:?}");
    // Lose a coordinator: the survivor and the new witness are a majority, and work goes on.
    let leader = seen.leader.expect("a leader");
    cluster.process(&format!("coordinator-{leader}")).kill();
    let survivor = &clients[if leader == 1 { 1 } else { 0 }];
    let body = job_body(7);
    let id = wait_for("an enqueue after the coordinator's loss", Duration::from_secs(30), || async {
        survivor.enqueue(body.clone(), 1_000, None).await.ok()
    })
    .await;
    let results = wait_for_results(survivor, &BTreeSet::from([id]), Duration::from_secs(60)).await;
    assert_eq!(results[&id], reference_chain(&body, 1_000), "against the reference chain");
    cluster.stop(Duration::from_secs(10));
}
