//! The real worker (`worker::run`, in-process) against a fake coordinator on 127.0.0.1:0.
//! Results are checked against the chain computed here with `wire::chain`, independently of the
//! worker's chunked computation.

mod fake_coordinator;

use std::time::Duration;

use clap::Parser;
use fake_coordinator::FakeCoordinator;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wire::Digest;
use worker::config::Config;

/// Generous bound for a condition that normally holds within milliseconds.
const WITHIN: Duration = Duration::from_secs(8);
/// Never finishes within a test.
const ENDLESS: u64 = u64::MAX / 2;

/// A worker running in-process; cancelled (not awaited) when dropped.
struct RunningWorker {
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningWorker {
    fn start(urls: &[String], extra: &[&str]) -> RunningWorker {
        let urls = urls.join(",");
        let mut args = vec![
            "worker",
            "--coordinator",
            &urls,
            "--cores",
            "2",
            "--name",
            "test-worker",
            "--long-poll-ms",
            "100",
            "--chunk-iterations",
            "500",
            "--drain-timeout-ms",
            "2000",
        ];
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args).expect("valid flags");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(worker::run(config, shutdown.clone()));
        RunningWorker { shutdown, handle: Some(handle) }
    }

    /// Cancel and wait for `run` to return, which must happen within `within`.
    async fn stop(mut self, within: Duration) {
        self.shutdown.cancel();
        self.returned(within).await;
    }

    /// Wait for `run` to return by itself within `within`; it must return Ok.
    async fn returned(&mut self, within: Duration) {
        let handle = self.handle.take().expect("not yet awaited");
        tokio::time::timeout(within, handle)
            .await
            .expect("run returns in time")
            .expect("run does not panic")
            .expect("run returns Ok");
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn body(i: usize) -> Vec<u8> {
    format!("body {i} ").repeat(1 + i * 37).into_bytes()
}

/// The chain value after `done` iterations over `body`.
fn chain(body: &[u8], done: u64) -> Digest {
    wire::chain::continue_chain(wire::chain::first_digest(body), done - 1)
}

/// A URL where nothing listens.
async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("an address");
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn computes_jobs_and_reports_correct_results() {
    let fake = FakeCoordinator::start(1).await;
    let iterations = [1, 2, 3, 499, 500, 501, 1_000, 2_500, 1, 7, 4_000, 64];
    let jobs: Vec<(u64, Vec<u8>, u64)> =
        iterations.iter().enumerate().map(|(i, &n)| (fake.enqueue(&body(i), n), body(i), n)).collect();
    // A job requeued with a checkpoint resumes from it (the worker never sees the body).
    let resumed_body = b"resumed".to_vec();
    let resumed = fake.enqueue_from(1_234, chain(&resumed_body, 1_234), 3_000);

    let worker = RunningWorker::start(fake.urls(), &[]);
    fake.wait_for("every result", WITHIN, |t| t.completed.len() == jobs.len() + 1).await;
    worker.stop(WITHIN).await;

    fake.with(|table| {
        for (job, body, iterations) in &jobs {
            let expected = wire::chain::sha512_chain(body, *iterations);
            assert_eq!(table.completed[job], expected, "job {job} of {iterations} iterations");
        }
        assert_eq!(table.completed[&resumed], wire::chain::sha512_chain(&resumed_body, 3_000));
        assert_eq!(table.registrations.len(), 1);
        assert_eq!(table.registrations[0].1.cores, 2);
        assert_eq!(table.registrations[0].1.name, "test-worker");
        // Every result is reported exactly once, and nothing was left to hand back.
        let reported: usize = table.completions.iter().map(|c| c.results.len()).sum();
        assert_eq!(reported, jobs.len() + 1);
        assert!(table.releases.is_empty(), "{:?}", table.releases);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_past_a_closed_port() {
    let fake = FakeCoordinator::start(1).await;
    let urls = vec![closed_port_url().await, fake.urls()[0].clone()];
    let job = fake.enqueue(b"failover", 300);
    let worker = RunningWorker::start(&urls, &[]);
    fake.wait_for("the result", WITHIN, |t| t.completed.contains_key(&job)).await;
    worker.stop(WITHIN).await;
    fake.with(|table| {
        assert_eq!(table.completed[&job], wire::chain::sha512_chain(b"failover", 300));
        assert_eq!(table.registrations.len(), 1);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_when_the_coordinator_in_use_cannot_commit() {
    let fake = FakeCoordinator::start(2).await;
    let worker = RunningWorker::start(fake.urls(), &[]);
    let first = fake.enqueue(b"first", 10);
    fake.wait_for("the first result", WITHIN, |t| t.completed.contains_key(&first)).await;

    // The coordinator in use answers 503 from now on; the other one takes over every route.
    fake.set_unavailable(0, true);
    let second = fake.enqueue(b"second", 20);
    fake.wait_for("the second result", WITHIN, |t| t.completed.contains_key(&second)).await;
    let heartbeats = fake.with(|t| t.heartbeats.len());
    fake.wait_for("heartbeats through the other coordinator", WITHIN, |t| t.heartbeats.len() >= heartbeats + 2).await;
    worker.stop(WITHIN).await;
    fake.with(|table| {
        assert_eq!(table.completed[&second], wire::chain::sha512_chain(b"second", 20));
        assert_eq!(table.registrations.len(), 1, "a 503 is not a reason to register again");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_again_when_forgotten_and_resumes_through_the_new_id() {
    let fake = FakeCoordinator::start(1).await;
    let long = fake.enqueue(b"long", ENDLESS);
    let worker = RunningWorker::start(fake.urls(), &[]);
    fake.wait_for("a checkpoint of the long job", WITHIN, |t| t.checkpoints(long).iter().any(|(done, _)| *done > 1))
        .await;

    // The coordinators forget the worker (410 from now on) and requeue its job from the
    // checkpoint. The worker registers again and leases the job anew under its new id.
    fake.forget_workers();
    fake.wait_for("a second registration", WITHIN, |t| t.registrations.len() == 2).await;
    let (old_id, new_id) = fake.with(|t| (t.registrations[0].0, t.registrations[1].0));
    assert_ne!(old_id, new_id);
    let short = fake.enqueue(b"short", 50);
    fake.wait_for("the short job's result", WITHIN, |t| t.completed.contains_key(&short)).await;
    fake.wait_for("the long job leased again", WITHIN, |t| t.leases.get(&long).is_some_and(|(w, _)| *w == new_id))
        .await;
    fake.wait_for("heartbeats from the new id", WITHIN, |t| {
        t.heartbeats.iter().any(|h| h.worker == new_id && h.progress.iter().any(|p| p.job == long && p.done > 1))
    })
    .await;
    worker.stop(WITHIN).await;

    fake.with(|table| {
        assert_eq!(table.completed[&short], wire::chain::sha512_chain(b"short", 50));
        let regrant = table.granted.iter().rev().find(|(_, a)| a.job == long).expect("the long job was leased");
        assert_eq!(regrant.0, new_id);
        assert!(regrant.1.done > 1, "the requeued job carries its checkpoint");
        // The job was handed back under the new id (the old one is unknown).
        let release = table.releases.last().expect("a release");
        assert_eq!(release.worker, new_id);
        let progress = release.progress.iter().find(|p| p.job == long).expect("the long job is handed back");
        assert!(progress.done >= regrant.1.done);
        assert_eq!(progress.digest, chain(b"long", progress.done));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_increasing_checkpoints() {
    let fake = FakeCoordinator::start(1).await;
    let job = fake.enqueue(b"heartbeat", ENDLESS);
    let worker = RunningWorker::start(fake.urls(), &[]);
    fake.wait_for("three advancing checkpoints", WITHIN, |t| {
        let mut done: Vec<u64> = t.checkpoints(job).iter().map(|(done, _)| *done).collect();
        done.dedup();
        done.len() >= 4
    })
    .await;
    worker.stop(WITHIN).await;

    let checkpoints = fake.with(|t| t.checkpoints(job));
    for pair in checkpoints.windows(2) {
        assert!(
            pair[0].0 <= pair[1].0,
            "checkpoints never go back: {:?}",
            pair.iter().map(|c| c.0).collect::<Vec<_>>()
        );
    }
    let last = checkpoints.last().expect("checkpoints").0;
    assert!(last > checkpoints[0].0);
    // Each checkpoint is the chain's true value after `done` iterations.
    let mut digest = wire::chain::first_digest(b"heartbeat");
    let mut at = 1;
    for (done, checkpoint) in &checkpoints {
        digest = wire::chain::continue_chain(digest, done - at);
        at = *done;
        assert_eq!(*checkpoint, digest, "checkpoint at {done}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_back_the_checkpoint_and_returns() {
    let fake = FakeCoordinator::start(1).await;
    let long = fake.enqueue(b"stop me", ENDLESS);
    let worker = RunningWorker::start(fake.urls(), &["--cores", "1"]);
    fake.wait_for("a checkpoint", WITHIN, |t| t.checkpoints(long).iter().any(|(done, _)| *done > 1)).await;
    let last_heartbeat = fake.with(|t| t.checkpoints(long).last().expect("a checkpoint").0);
    worker.stop(WITHIN).await;

    fake.with(|table| {
        assert_eq!(table.releases.len(), 1, "one release with every unfinished job");
        let release = &table.releases[0];
        assert_eq!(release.worker, table.registrations[0].0);
        assert_eq!(release.progress.len(), 1);
        let progress = release.progress[0];
        assert_eq!(progress.job, long);
        assert!(progress.done > 1 && progress.done >= last_heartbeat);
        assert_eq!(progress.digest, chain(b"stop me", progress.done));
        // The fake requeued it from there, as the real coordinators do.
        assert_eq!(table.queue.front().map(|a| a.done), Some(progress.done));
        assert!(table.completed.is_empty());
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_stops_the_job_and_drops_it() {
    let fake = FakeCoordinator::start(1).await;
    let lost = fake.enqueue(b"lost", ENDLESS);
    let kept = fake.enqueue(b"kept", ENDLESS);
    let worker = RunningWorker::start(fake.urls(), &[]);
    fake.wait_for("checkpoints of both jobs", WITHIN, |t| {
        t.checkpoints(lost).iter().any(|(done, _)| *done > 1) && t.checkpoints(kept).iter().any(|(done, _)| *done > 1)
    })
    .await;
    let told = fake.with(|t| {
        t.lose.push(lost);
        t.heartbeats.len()
    });
    // The heartbeat after the one that was told no longer speaks for the lost job.
    fake.wait_for("heartbeats after the loss", WITHIN, |t| t.heartbeats.len() >= told + 3).await;
    worker.stop(WITHIN).await;

    fake.with(|table| {
        let later = &table.heartbeats[told + 1..];
        assert!(later.iter().all(|h| h.progress.iter().all(|p| p.job != lost)), "the lost job is still reported");
        assert!(later.iter().all(|h| h.progress.iter().any(|p| p.job == kept)), "the kept job is still reported");
        assert!(table.completed.is_empty());
        let released: Vec<u64> = table.releases.iter().flat_map(|r| r.progress.iter().map(|p| p.job)).collect();
        assert_eq!(released, [kept], "only the job still held is handed back");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_when_told_hands_back_and_exits() {
    let fake = FakeCoordinator::start(1).await;
    let job = fake.enqueue(b"drain", ENDLESS);
    let mut worker = RunningWorker::start(fake.urls(), &[]);
    fake.wait_for("a checkpoint", WITHIN, |t| t.checkpoints(job).iter().any(|(done, _)| *done > 1)).await;
    fake.with(|t| t.draining = true);
    // No shutdown: the worker stops by itself.
    worker.returned(WITHIN).await;
    fake.with(|table| {
        let progress =
            table.releases.iter().flat_map(|r| r.progress.iter()).find(|p| p.job == job).expect("handed back");
        assert!(progress.done > 1);
        assert_eq!(progress.digest, chain(b"drain", progress.done));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_wait_out_an_outage_and_go_in_batches() {
    let fake = FakeCoordinator::start(2).await;
    fake.with(|t| t.refuse_completions = true);
    let jobs: Vec<u64> = (0..150).map(|i| fake.enqueue(&body(i), 1 + (i as u64 % 3))).collect();
    let worker = RunningWorker::start(fake.urls(), &[]);
    // Every job computed (all leased, and then a heartbeat with nothing left to report) while
    // every completion is refused.
    fake.wait_for("every job computed", WITHIN, |t| {
        t.granted.len() == jobs.len()
            && t.heartbeats.last().is_some_and(|h| h.progress.is_empty())
            && t.refused_completions >= 2
    })
    .await;
    assert!(fake.with(|t| t.completed.is_empty()));
    fake.with(|t| t.refuse_completions = false);
    fake.wait_for("every result", WITHIN, |t| t.completed.len() == jobs.len()).await;
    worker.stop(WITHIN).await;

    fake.with(|table| {
        for (i, job) in jobs.iter().enumerate() {
            assert_eq!(table.completed[job], wire::chain::sha512_chain(&body(i), 1 + (i as u64 % 3)));
        }
        let sizes: Vec<usize> = table.completions.iter().map(|c| c.results.len()).collect();
        assert!(sizes.iter().all(|&n| n <= 64), "batches of at most 64: {sizes:?}");
        assert!(sizes.contains(&64), "the backlog goes in full batches: {sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), jobs.len(), "each result reported once: {sizes:?}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_on_unreachable_coordinators_at_shutdown() {
    let fake = FakeCoordinator::start(2).await;
    let job = fake.enqueue(b"stranded", ENDLESS);
    let worker = RunningWorker::start(fake.urls(), &["--drain-timeout-ms", "500"]);
    fake.wait_for("a checkpoint", WITHIN, |t| t.checkpoints(job).iter().any(|(done, _)| *done > 1)).await;
    fake.set_unavailable(0, true);
    fake.set_unavailable(1, true);
    let started = std::time::Instant::now();
    // The drain timeout plus at most the result flush and the give-up grace.
    worker.stop(Duration::from_secs(4)).await;
    assert!(started.elapsed() >= Duration::from_millis(400), "it did try to hand the job back");
    assert!(fake.with(|t| t.releases.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_before_any_coordinator_answers_returns() {
    let urls = vec![closed_port_url().await, closed_port_url().await];
    let worker = RunningWorker::start(&urls, &[]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    worker.stop(Duration::from_secs(2)).await;
}
