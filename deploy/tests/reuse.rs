//! Content-addressed reuse end to end: the real coordinator and worker binaries on 127.0.0.1
//! (as `deploy local` starts them). The work the workers did is read from their own
//! `tandem_worker_hashes_total` counters; every expected result is a reference vector (Python's
//! hashlib) or the tests' own chain, never the code under test.

use std::collections::BTreeSet;
use std::time::Duration;

use deploy::local::LocalCluster;
use tempfile::TempDir;
use wire::api::{JobState, ReuseView};
use wire::client::ApiClient;

mod common;

use common::*;

/// A cluster of `workers` workers besides the witness's, once its leader has enabled reuse
/// (every member runs this version: it says so within a probe round or two).
async fn start_reusing(dir: &TempDir, workers: usize) -> LocalCluster {
    let cluster = start(dir, workers).await;
    let client = ApiClient::new(cluster.api_urls()[0].clone());
    wait_for("reuse enabled", Duration::from_secs(30), || async {
        client.cluster().await.ok().filter(|view| view.queue.reuse_enabled).map(|_| ())
    })
    .await;
    cluster
}

/// The chain steps every worker of `cluster` computed, from their metrics (the witness runs
/// the first worker).
async fn hashes(cluster: &mut LocalCluster, workers: &[&str]) -> u64 {
    let mut total = 0;
    for name in workers {
        let url = cluster.process(name).metrics_url.clone();
        let text =
            reqwest::get(&url).await.and_then(|r| r.error_for_status()).expect("metrics").text().await.expect("text");
        total += text
            .lines()
            .find_map(|line| line.strip_prefix("tandem_worker_hashes_total "))
            .map_or(0, |value| value.trim().parse::<f64>().expect("a number") as u64);
    }
    total
}

/// Wait until the workers' counters stop at `expected` steps (they are published every
/// second), and fail if they pass it.
async fn wait_for_hashes(cluster: &mut LocalCluster, workers: &[&str], expected: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = hashes(cluster, workers).await;
        assert!(seen <= expected, "the workers computed {seen} chain steps, more than the {expected} expected");
        if seen == expected {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the workers computed {seen} chain steps, not {expected}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_chain_of_the_same_body_computes_only_the_iterations_the_shorter_one_left() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = start_reusing(&dir, 0).await;
    let clients = cluster.api_urls().map(ApiClient::new);
    let workers = ["witness"];
    let short = vectors().into_iter().find(|c| c.seed == 4 && c.iterations == 1_000).expect("the 1,000 vector");
    let long = more_vectors().into_iter().find(|c| c.seed == 4 && c.iterations == 2_000).expect("the 2,000 vector");
    let data = body(&short);
    assert_eq!(data, body(&long), "one body");

    let first = clients[0].enqueue(data.clone(), 1_000, None).await.expect("enqueue");
    let results = wait_for_results(&clients[1], &BTreeSet::from([first]), Duration::from_secs(60)).await;
    assert_eq!(results[&first], short.result_hex);
    // The first hash is taken at ingest: a worker computes the other 999.
    wait_for_hashes(&mut cluster, &workers, 999).await;

    let second = clients[1].enqueue(data.clone(), 2_000, None).await.expect("enqueue");
    let results = wait_for_results(&clients[0], &BTreeSet::from([second]), Duration::from_secs(60)).await;
    assert_eq!(results[&second], long.result_hex);
    wait_for_hashes(&mut cluster, &workers, 999 + 1_000).await;
    let view = clients[0].job(second).await.expect("job");
    assert_eq!(view.reused, Some(ReuseView { job: first, from_iteration: 1_000 }), "{view:?}");
    assert_eq!(view.resumed_from, Some(1_000));

    // The same chain again is served whole, at once, under its own id; opting out computes it.
    let again = clients[0].enqueue(data.clone(), 2_000, None).await.expect("enqueue");
    let view = clients[1].job(again).await.expect("job");
    assert_eq!((view.state, view.result.as_ref()), (JobState::Completed, Some(&long.result_hex)), "{view:?}");
    assert_eq!(view.reused, Some(ReuseView { job: second, from_iteration: 2_000 }));
    let own = clients[0].enqueue_with_reuse(data, 2_000, None, false).await.expect("enqueue");
    let results = wait_for_results(&clients[1], &BTreeSet::from([own]), Duration::from_secs(60)).await;
    assert_eq!(results[&own], long.result_hex);
    assert_eq!(clients[1].job(own).await.expect("job").reused, None);
    wait_for_hashes(&mut cluster, &workers, 999 + 1_000 + 1_999).await;
    let queue = clients[0].cluster().await.expect("cluster").queue;
    assert_eq!((queue.reused_total, queue.iterations_saved_total), (2, 999 + 1_999));
    cluster.stop(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_job_enqueued_a_hundred_times_at_once_is_computed_once() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = start_reusing(&dir, 1).await;
    let clients = cluster.api_urls().map(ApiClient::new);
    let case = vectors().into_iter().find(|c| c.iterations == 12_345).expect("the 12,345 vector");
    let data = body(&case);
    let enqueues = (0..100).map(|i| {
        let (client, data) = (clients[i % 2].clone(), data.clone());
        tokio::spawn(async move { client.enqueue(data, case.iterations, None).await.expect("enqueue") })
    });
    let mut ids = BTreeSet::new();
    for enqueue in enqueues {
        assert!(ids.insert(enqueue.await.expect("task")), "an id was given twice");
    }
    let results = wait_for_results(&clients[0], &ids, Duration::from_secs(120)).await;
    assert!(results.values().all(|result| *result == case.result_hex), "a wrong result");
    wait_for_hashes(&mut cluster, &["witness", "worker-1"], case.iterations - 1).await;
    let queue = clients[1].cluster().await.expect("cluster").queue;
    assert_eq!(queue.reused_total, 99, "{queue:?}");
    cluster.stop(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_following_one_whose_worker_is_killed_all_complete_correctly_once() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = start_reusing(&dir, 1).await;
    let clients = cluster.api_urls().map(ApiClient::new);
    let data = b"a long job that others wait on".to_vec();
    let iterations = 6_000_000;
    let leader = clients[0].enqueue(data.clone(), iterations, None).await.expect("enqueue");
    let mut ids = BTreeSet::from([leader]);
    for i in 0..5 {
        let id = clients[i % 2].enqueue(data.clone(), iterations, None).await.expect("enqueue");
        let view = clients[0].job(id).await.expect("job");
        assert_eq!((view.state, view.following), (JobState::Following, Some(leader)), "{view:?}");
        ids.insert(id);
    }
    // Kill the worker computing it once it has checkpointed.
    let (_, survivor) = kill_the_holder_once_checkpointed(&mut cluster, &clients, leader).await;
    let survivor = &clients[survivor];
    // Each appears once in the walk of completions (`wait_for_results` checks), all correct.
    let results = wait_for_results(survivor, &ids, Duration::from_secs(180)).await;
    let expected = reference_chain(&data, iterations);
    assert!(ids.iter().all(|id| results[id] == expected), "a wrong result");
    assert!(survivor.job(leader).await.expect("job").attempts >= 1, "the killed lease counts as an attempt");
    for id in ids.iter().filter(|id| **id != leader) {
        let view = survivor.job(*id).await.expect("job");
        assert_eq!(view.reused, Some(ReuseView { job: leader, from_iteration: iterations }), "{view:?}");
    }
    cluster.stop(Duration::from_secs(10));
}
