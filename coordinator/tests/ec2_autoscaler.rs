//! The leader's autoscaler driving EC2, end to end, against moto's server on 127.0.0.1: two real
//! coordinator processes built with `--features ec2` and started with `--scaler ec2`, and real
//! workers (in this process) playing the instances the leader launches, since moto never runs
//! user-data.
//!
//! One scenario, in the order a cluster lives it:
//!
//! 1. The cluster's first leader reconciles: an instance tagged as this cluster's worker under a
//!    launch token nobody committed is terminated; the witness's instance (tagged with its voter
//!    id, its worker not registered yet), another cluster's worker and this cluster's
//!    coordinator instance are not.
//! 2. A backlog of long jobs: the leader launches instances carrying the cluster and role tags,
//!    a launch token, the instance profile, IMDSv2 required and user-data holding no AWS key,
//!    never more than `--max-workers`.
//! 3. The leader is SIGKILLed as soon as its first launch shows in moto, before any registers:
//!    the new leader adopts the launches in flight (by their tokens) and launches no machine
//!    twice.
//! 4. Each instance's worker registers with the instance id and token moto shows: the launches
//!    count as registered, the backlog completes with the reference chain's results.
//! 5. Idle, the workers are drained and their instances terminated; the witness's, the other
//!    cluster's and the coordinator's instances survive.
//!
//! Run by `scripts/test` (`cargo test -p coordinator --features ec2 --test ec2_autoscaler`);
//! skipped where moto is not installed, unless `CI` or `TANDEM_REQUIRE_MOTO` is set.
#![cfg(feature = "ec2")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use deploy::provider::ec2::aws_sdk_ec2::types::{HttpTokensState, Instance};
use deploy::provider::ec2::launch::{CLUSTER_TAG, LAUNCH_TOKEN_TAG, ROLE_TAG, VOTER_ID_TAG, find_access_key_id};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use wire::api::ClusterView;
use wire::client::ApiClient;

#[path = "../../deploy/tests/common/mod.rs"]
mod common;
#[path = "support/ec2_coordinators.rs"]
mod ec2_coordinators;
#[path = "../../deploy/tests/common/moto.rs"]
mod moto;

use common::{reference_chain, wait_for};
use ec2_coordinators::{Coordinators, SECRET};

use moto::{DUMMY_SECRET_ACCESS_KEY, INSTANCE_PROFILE, World, tag};

const TEST_NAME: &str = "the_leaders_autoscaler_launches_adopts_and_terminates_ec2_workers";
const CLUSTER: &str = "scaled";
const MAX_WORKERS: usize = 3;
const JOBS: usize = 6;
/// The witness's instance, as `deploy aws` would launch it.
const WITNESS_TOKEN: &str = "deploy-witness-3";

#[test]
fn the_leaders_autoscaler_launches_adopts_and_terminates_ec2_workers() {
    let Some(moto_server) = moto::in_child_with_dummy_credentials(TEST_NAME) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(scenario(&moto_server));
}

/// Chain steps per second of one core here, with the workers' own chain code (the jobs are sized
/// from it, so that they last seconds on any machine).
fn core_rate() -> u64 {
    let steps = 200_000;
    let started = Instant::now();
    std::hint::black_box(wire::chain::continue_chain(wire::Digest([1; 64]), steps));
    (steps as f64 / started.elapsed().as_secs_f64()) as u64
}

/// A worker running in this process, as the instance it plays would run it: with the cluster
/// secret (the witness's, which `deploy aws up` provides), or with `extra` giving it a join secret.
fn start_worker(urls: &[String], extra: &[&str], stop: &CancellationToken) -> tokio::task::JoinHandle<()> {
    let mut args = vec!["worker".to_owned(), "--coordinator".into(), urls.join(","), "--cores".into(), "1".into()];
    if !extra.contains(&"--join-token") {
        args.extend(["--cluster-secret".into(), SECRET.into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let config = worker::config::Config::parse_from(args);
    let stop = stop.clone();
    tokio::spawn(async move {
        if let Err(e) = worker::run(config, stop).await {
            eprintln!("a worker stopped: {e:#}");
        }
    })
}

/// This cluster's worker instances the autoscaler launched (not the witness's, not the stray the
/// test planted), in any state: instance id -> the instance.
async fn launched(world: &World, planted: &BTreeSet<String>) -> BTreeMap<String, Instance> {
    world
        .all_tagged(CLUSTER)
        .await
        .into_iter()
        .filter(|i| tag(i, ROLE_TAG) == Some("worker") && tag(i, VOTER_ID_TAG).is_none())
        .filter_map(|i| Some((i.instance_id()?.to_owned(), i)))
        .filter(|(id, _)| !planted.contains(id))
        .collect()
}

fn state(instance: &Instance) -> &str {
    instance.state().and_then(|s| s.name()).map_or("", |n| n.as_str())
}

fn is_ending(instance: &Instance) -> bool {
    matches!(state(instance), "shutting-down" | "terminated")
}

/// Everything a launch must carry, checked on moto's record of it; its worker's join secret.
async fn check_launch(world: &World, instance: &Instance) -> String {
    let id = instance.instance_id().expect("id");
    assert_eq!(tag(instance, CLUSTER_TAG), Some(CLUSTER), "{id}'s cluster tag");
    assert_eq!(tag(instance, ROLE_TAG), Some("worker"), "{id}'s role tag");
    let token = tag(instance, LAUNCH_TOKEN_TAG).unwrap_or_else(|| panic!("{id} has no launch token tag"));
    assert!(token.starts_with("tandem-"), "{id}'s token {token}");
    assert_eq!(instance.image_id(), Some(world.ami.as_str()));
    assert_eq!(instance.subnet_id(), Some(world.subnet.as_str()));
    let profile = instance.iam_instance_profile().and_then(|p| p.arn()).expect("an instance profile");
    assert!(profile.ends_with(&format!(":instance-profile/{INSTANCE_PROFILE}")), "{profile}");
    let metadata = instance.metadata_options().expect("metadata options");
    assert_eq!(metadata.http_tokens(), Some(&HttpTokensState::Required), "IMDSv2 required on {id}");
    let script = world.user_data(id).await;
    assert!(script.contains(&format!("TANDEM_LAUNCH_TOKEN={token}\n")), "{id}'s user-data names its token");
    assert!(
        !script.contains(SECRET) && !script.contains("TANDEM_CLUSTER_SECRET"),
        "the cluster secret in {id}'s user-data"
    );
    assert_eq!(find_access_key_id(&script), None, "no access key id in {id}'s user-data");
    assert!(!script.contains(DUMMY_SECRET_ACCESS_KEY) && !script.contains("AWS_"), "no AWS credential in user-data");
    let join_secret = script.lines().find_map(|line| line.strip_prefix("TANDEM_JOIN_TOKEN="));
    join_secret.unwrap_or_else(|| panic!("{id}'s user-data holds no join secret")).to_owned()
}

async fn view(client: &ApiClient) -> Option<ClusterView> {
    client.cluster().await.ok()
}

async fn scenario(moto_server: &Path) {
    let world = World::set_up(moto_server).await;
    let dir = TempDir::new().expect("temp dir");
    // Instances that exist before the cluster: the witness's (its worker not registered yet), a
    // stray launch of this cluster under a token nobody committed, another cluster's worker and
    // this cluster's coordinator.
    let witness_instance = world
        .launch_directly(&[
            (CLUSTER_TAG, CLUSTER),
            (ROLE_TAG, "worker"),
            (VOTER_ID_TAG, "3"),
            (LAUNCH_TOKEN_TAG, WITNESS_TOKEN),
        ])
        .await;
    let stray = world
        .launch_directly(&[(CLUSTER_TAG, CLUSTER), (ROLE_TAG, "worker"), (LAUNCH_TOKEN_TAG, "tandem-nobody-committed")])
        .await;
    let foreign = world
        .launch_directly(&[(CLUSTER_TAG, "other"), (ROLE_TAG, "worker"), (LAUNCH_TOKEN_TAG, "tandem-other")])
        .await;
    let coordinator_instance = world.launch_directly(&[(CLUSTER_TAG, CLUSTER), (ROLE_TAG, "coordinator")]).await;
    let planted: BTreeSet<String> = [&witness_instance, &stray].into_iter().cloned().collect();

    let addrs: [String; 3] =
        std::array::from_fn(|_| format!("127.0.0.1:{}", deploy::local::free_port().expect("a free port")));
    let max_workers = MAX_WORKERS.to_string();
    let scaling = [
        "--min-workers",
        "0",
        "--max-workers",
        &max_workers,
        "--scaler-worker-cores",
        "1",
        // Sized by the policy from this rate until a worker measured its own: the backlog calls
        // for every worker allowed.
        "--assumed-core-rate",
        "1000",
        "--drain-target-ms",
        "4000",
        "--scale-in-idle-ms",
        "2000",
        "--scale-out-cooldown-ms",
        "2000",
        // The test boots its "instances" at once: with EC2's 45 s assumed, the backlog (seconds
        // of work) finishes before a boot as soon as the witness's worker reports its measured
        // rate, and the policy rightly launches nothing (the test then raced that report).
        "--assumed-boot-ms",
        "1000",
        // Longer than the scenario: no launch is given up while the test plays its boot.
        "--boot-timeout-ms",
        "120000",
    ];
    let mut coordinators = Coordinators::start(dir.path(), &world, &addrs, CLUSTER, &scaling);
    coordinators.wait_ready().await;

    println!("1. the first leader reconciles: the stray goes, the witness's instance stays");
    wait_for("the stray terminated", Duration::from_secs(30), || async {
        is_ending(&world.describe(&stray).await).then_some(())
    })
    .await;
    for (what, id) in
        [("witness", &witness_instance), ("other cluster's", &foreign), ("coordinator", &coordinator_instance)]
    {
        assert_eq!(world.state(id).await, "running", "the {what} instance {id} survives reconciliation");
    }

    // The witness's worker boots: it runs the third voter and registers on its instance.
    let stop_all = CancellationToken::new();
    let witness_worker = start_worker(
        &coordinators.urls,
        &[
            "--witness",
            "--witness-id",
            "3",
            "--witness-listen",
            &addrs[2],
            "--witness-data-dir",
            &dir.path().join("witness").display().to_string(),
            "--name",
            "witness-worker",
            "--instance-id",
            &witness_instance,
            "--launch-token",
            WITNESS_TOKEN,
        ],
        &stop_all,
    );
    let client = coordinators.client(0);
    wait_for("the witness's worker registered", Duration::from_secs(30), || async {
        view(&client).await?.workers.iter().any(|w| w.witness).then_some(())
    })
    .await;
    // The witness voter caught up, so that the cluster survives the loss of a coordinator.
    wait_for("the witness voting and caught up", Duration::from_secs(30), || async {
        for i in 0..2 {
            let view = view(&coordinators.client(i)).await?;
            if view.leader == Some(view.node_id) {
                let witness = view.voters.iter().find(|v| v.id == 3)?;
                return (witness.reachable && witness.lag_entries == Some(0)).then_some(());
            }
        }
        None
    })
    .await;

    println!("2. a backlog of long jobs: the leader launches");
    let iterations = (core_rate() * 2).max(100_000);
    let bodies = [b"ec2 autoscaler job A".to_vec(), b"ec2 autoscaler job B".to_vec()];
    let leader = view(&client).await.and_then(|v| v.leader).expect("a leader") as usize - 1;
    let mut jobs = BTreeMap::new();
    for j in 0..JOBS {
        let body = bodies[j % 2].clone();
        let id = coordinators.client(leader).enqueue(body, iterations, None).await.expect("enqueue");
        jobs.insert(id, j % 2);
    }
    let first = wait_for("the leader's first launch in moto", Duration::from_secs(30), || async {
        launched(&world, &planted).await.into_keys().next()
    })
    .await;

    println!("3. the leader is killed with its launch {first} in flight");
    coordinators.kill(leader);
    let survivor = 1 - leader;
    let client = coordinators.client(survivor);
    wait_for("the other coordinator leads", Duration::from_secs(30), || async {
        (view(&client).await?.leader == Some(survivor as u64 + 1)).then_some(())
    })
    .await;

    println!("4. each instance's worker boots and registers; the backlog completes");
    let expected = {
        let bodies = bodies.clone();
        tokio::task::spawn_blocking(move || bodies.map(|b| reference_chain(&b, iterations)))
    };
    // instance id -> (its token, its worker's stop token); every instance the autoscaler ever
    // launched is in it.
    let mut booted: BTreeMap<String, (String, CancellationToken)> = BTreeMap::new();
    let mut most_live = 0;
    // Instances whose worker was seen in the registry (an early one may be scaled in again
    // before the last job is done).
    let mut registered = BTreeSet::new();
    let mut results = BTreeMap::new();
    let mut cursor = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let instances = launched(&world, &planted).await;
        let live = instances.values().filter(|i| !is_ending(i)).count();
        most_live = most_live.max(live);
        assert!(live <= MAX_WORKERS, "{live} instances live, more than --max-workers {MAX_WORKERS}");
        for (id, instance) in &instances {
            if booted.contains_key(id) || is_ending(instance) {
                continue;
            }
            // The instance's worker starts as its user-data has it: with the join secret only.
            let join_secret = check_launch(&world, instance).await;
            let token = tag(instance, LAUNCH_TOKEN_TAG).expect("checked").to_owned();
            let stop = stop_all.child_token();
            let name = format!("worker-{id}");
            let args = ["--instance-id", id, "--launch-token", &token, "--name", &name, "--join-token", &join_secret];
            start_worker(&coordinators.urls, &args, &stop);
            booted.insert(id.clone(), (token, stop));
        }
        if let Some(view) = view(&client).await {
            registered.extend(view.workers.iter().filter_map(|w| w.instance_id.clone()));
        }
        if let Ok(page) = client.pull_after(cursor, 100).await {
            for job in page.jobs {
                assert!(results.insert(job.id, job.result).is_none(), "job {} completed twice", job.id);
            }
            cursor = page.cursor;
        }
        if jobs.keys().all(|id| results.contains_key(id)) {
            break;
        }
        assert!(Instant::now() < deadline, "only {} of {JOBS} jobs done within 120 s", results.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected = expected.await.expect("reference chains");
    for (id, body) in &jobs {
        assert_eq!(results[id], expected[*body], "job {id}'s result");
    }

    // No machine launched twice: one instance per token, never more than the maximum, and every
    // launch the cluster committed accounted for by exactly one instance.
    let instances = launched(&world, &planted).await;
    let tokens: BTreeSet<&str> = booted.values().map(|(t, _)| t.as_str()).collect();
    assert_eq!(tokens.len(), booted.len(), "one instance per launch token: {booted:?}");
    assert_eq!(instances.len(), booted.len(), "every instance launched was booted");
    assert!((1..=MAX_WORKERS).contains(&instances.len()), "{} instances launched", instances.len());
    let seen = wait_for("every launch registered", Duration::from_secs(30), || async {
        let view = view(&client).await?;
        (view.scaler.launches_in_flight == 0).then_some(view)
    })
    .await;
    assert_eq!(
        seen.scaler.launches_total,
        booted.len() as u64,
        "every committed launch has one instance, none two: {:?}",
        seen.scaler
    );
    assert_eq!(seen.scaler.launch_failures_total, 0, "no launch given up: {:?}", seen.scaler);
    assert!(seen.scaler.boot_ms.is_some(), "a boot time was measured");
    let seen_now = seen.workers.iter().filter_map(|w| w.instance_id.clone());
    registered.extend(seen_now);
    for id in booted.keys() {
        assert!(registered.contains(id), "the worker on {id} registered: {registered:?}");
    }
    println!("   {} instances launched (at most {most_live} live at once), each adopted once", booted.len());

    println!("5. idle: the leader terminates the workers' instances, and only theirs");
    let terminated = wait_for("every launched instance terminated", Duration::from_secs(60), || async {
        let instances = launched(&world, &planted).await;
        for (id, instance) in &instances {
            if is_ending(instance) {
                // The machine is gone, and its worker with it.
                booted[id].1.cancel();
            }
        }
        instances.values().all(is_ending).then_some(instances.len())
    })
    .await;
    assert_eq!(terminated, booted.len());
    wait_for("no worker but the witness's registered", Duration::from_secs(30), || async {
        let view = view(&client).await?;
        view.workers.iter().all(|w| w.witness).then_some(())
    })
    .await;
    for (what, id) in
        [("witness", &witness_instance), ("other cluster's", &foreign), ("coordinator", &coordinator_instance)]
    {
        assert_eq!(world.state(id).await, "running", "the {what} instance {id} survives");
    }
    assert_eq!(launched(&world, &planted).await.len(), booted.len(), "nothing launched after the load");

    stop_all.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), witness_worker).await;
    drop(coordinators);
    println!("every step passed");
}
