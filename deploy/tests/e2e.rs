//! End to end: the real coordinator and worker binaries as processes on 127.0.0.1 (free ports),
//! started by the same code as `deploy local`. Build them first: `cargo build --workspace --bins`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deploy::local::{LocalCluster, LocalOptions, random_token};
use nix::sys::signal::Signal;
use tempfile::TempDir;
use wire::api::JobState;
use wire::client::ApiClient;

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_vectors_through_both_coordinators_and_a_restart() {
    let dir = TempDir::new().expect("temp dir");
    let layout = options(&dir, 1);
    let mut cluster = LocalCluster::start(layout.clone()).expect("start the local cluster");
    cluster.wait_ready(Duration::from_secs(60)).await.expect("cluster ready");
    let clients = cluster.api_urls().map(ApiClient::new);
    let cases = vectors();
    let mut expected = BTreeMap::new();
    for (i, case) in cases.iter().enumerate() {
        let id = clients[i % 2].enqueue(body(case), case.iterations, None).await.expect("enqueue");
        expected.insert(id, case.result_hex.clone());
    }
    let ids: BTreeSet<u64> = expected.keys().copied().collect();
    for client in &clients {
        let results = wait_for_results(client, &ids, Duration::from_secs(180)).await;
        for (id, want) in &expected {
            assert_eq!(&results[id], want, "job {id} on {}", client.base());
            let view = client.job(*id).await.expect("job");
            assert_eq!(view.state, JobState::Completed);
            assert_eq!(view.result.as_ref(), Some(want));
        }
        let latest = client.pull_completed(100).await.expect("pull");
        assert_eq!(latest.jobs.len(), cases.len());
        assert!(latest.jobs.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    }
    // Stop everything and start again on the same data and addresses: the results are there.
    cluster.stop(Duration::from_secs(10));
    drop(cluster);
    let mut cluster = LocalCluster::start(layout).expect("restart the local cluster");
    cluster.wait_ready(Duration::from_secs(60)).await.expect("cluster ready after restart");
    for client in &clients {
        let results = wait_for_results(client, &ids, Duration::from_secs(30)).await;
        for (id, want) in &expected {
            assert_eq!(&results[id], want, "job {id} after restart");
        }
    }
    cluster.stop(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_job_resumes_from_its_checkpoint_elsewhere() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = start(&dir, 1).await;
    let clients = cluster.api_urls().map(ApiClient::new);
    let body = b"a long job".to_vec();
    let iterations = 6_000_000;
    let id = clients[0].enqueue(body.clone(), iterations, None).await.expect("enqueue");
    // Kill the worker holding it once it has checkpointed progress through its heartbeats.
    let (checkpoint, survivor) = kill_the_holder_once_checkpointed(&mut cluster, &clients, id).await;
    // Another worker finishes it, starting from the checkpoint, with the right result.
    let ids = BTreeSet::from([id]);
    let survivor = &clients[survivor];
    let results = wait_for_results(survivor, &ids, Duration::from_secs(120)).await;
    assert_eq!(results[&id], reference_chain(&body, iterations));
    let view = survivor.job(id).await.expect("job");
    assert!(view.attempts >= 1, "the killed lease must count as an attempt: {view:?}");
    let resumed_from = view.resumed_from.expect("completed jobs say where they resumed");
    assert!(resumed_from >= checkpoint && resumed_from > 1, "resumed from {resumed_from}, checkpoint was {checkpoint}");
    cluster.stop(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_coordinator_costs_its_workers_no_lease() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = start(&dir, 0).await;
    let client = ApiClient::new(cluster.api_urls()[1].clone());
    // Far longer than the test: what matters is that its one lease survives.
    let id = client.enqueue(b"outlives two frozen coordinators".to_vec(), 1_000_000_000, None).await.expect("enqueue");
    wait_for("the job to start", Duration::from_secs(60), || async {
        (client.job(id).await.expect("job").iterations_done >= 2).then_some(())
    })
    .await;
    // Freeze each coordinator in turn for well over a lease (1.5 s here), so that whichever
    // one the worker talks to hangs under it. Its heartbeats must reach the other in time.
    for name in ["coordinator-1", "coordinator-2"] {
        let before = client_for_the_other(&cluster, name).job(id).await.expect("job").iterations_done;
        assert!(cluster.process(name).signal(Signal::SIGSTOP), "{name} was running");
        tokio::time::sleep(Duration::from_secs(4)).await;
        let view = client_for_the_other(&cluster, name).job(id).await.expect("job while one is frozen");
        assert_eq!(view.attempts, 0, "a lease expired while {name} was frozen: {view:?}");
        assert!(view.iterations_done > before, "no checkpoint reached the other coordinator: {view:?}");
        assert!(cluster.process(name).signal(Signal::SIGCONT), "{name} was running");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let view = client.job(id).await.expect("job");
    assert_eq!((view.state, view.attempts), (JobState::Running, 0), "{view:?}");
    cluster.stop(Duration::from_secs(10));
}

/// A client of the coordinator that is not `name`.
fn client_for_the_other(cluster: &LocalCluster, name: &str) -> ApiClient {
    ApiClient::new(cluster.api_urls()[usize::from(name == "coordinator-1")].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_the_registry_dropped_registers_again_at_its_next_heartbeat() {
    let dir = TempDir::new().expect("temp dir");
    let mut layout = options(&dir, 1);
    layout.coordinator_args.extend(["--worker-timeout-ms".into(), "3000".into()]);
    let mut cluster = LocalCluster::start(layout).expect("start the local cluster");
    cluster.wait_ready(Duration::from_secs(60)).await.expect("cluster ready");
    let client = ApiClient::new(cluster.api_urls()[0].clone());
    let worker_1 = || async {
        let view = client.cluster().await.expect("cluster");
        view.workers.iter().find(|w| w.name == "worker-1").map(|w| (w.id, w.leases))
    };
    // One long job for each one-core worker, so that worker-1's lease loop has nothing to do.
    for i in 0..2u8 {
        client.enqueue(vec![i; 64], 1_000_000_000, None).await.expect("enqueue");
    }
    let before = wait_for("worker-1 to take a job", Duration::from_secs(60), || async {
        worker_1().await.and_then(|(id, leases)| (leases == 1).then_some(id))
    })
    .await;
    // Silent past the registry's 3 s: it is removed and its job requeued.
    assert!(cluster.process("worker-1").signal(Signal::SIGSTOP), "worker-1 was running");
    wait_for("worker-1 to be removed", Duration::from_secs(30), || async { worker_1().await.is_none().then_some(()) })
        .await;
    assert!(cluster.process("worker-1").signal(Signal::SIGCONT), "worker-1 was running");
    // Back, it learns at its next heartbeat (0.5 s) that it was dropped, and registers again.
    let after = wait_for("worker-1 to register again (within 5 s of waking)", Duration::from_secs(5), || async {
        worker_1().await.map(|(id, _)| id)
    })
    .await;
    assert_ne!(after, before, "a new registration has a new id");
    cluster.stop(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_enqueue() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = start(&dir, 1).await;
    let urls = cluster.api_urls();
    let leader = ApiClient::new(urls[0].clone()).cluster().await.expect("cluster").leader.expect("a leader");
    assert!(leader == 1 || leader == 2, "a coordinator leads once ready");
    let killed_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    for stream in 0..2usize {
        let (urls, stop, killed_at) = (urls.clone(), stop.clone(), killed_at.clone());
        streams.push(tokio::spawn(async move {
            // Each stream starts on its own coordinator and moves to the other on failure,
            // retrying with the same idempotency key until it gets an answer.
            let clients = [ApiClient::new(urls[stream].clone()), ApiClient::new(urls[1 - stream].clone())];
            let mut acknowledged = BTreeMap::new();
            let mut after_kill = 0;
            let mut current = 0;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = format!("stream {stream} job {n}").into_bytes();
                let key = format!("s{stream}-{n}");
                let give_up = Instant::now() + Duration::from_secs(30);
                loop {
                    assert!(Instant::now() < give_up, "enqueue {key} got no answer for 30 s");
                    match clients[current].enqueue(body.clone(), 1 + n % 3, Some(&key)).await {
                        Ok(id) => {
                            assert!(acknowledged.insert(id, (body.clone(), 1 + n % 3)).is_none(), "id {id} twice");
                            if killed_at.lock().expect("lock").is_some() {
                                after_kill += 1;
                            }
                            break;
                        }
                        Err(_) => {
                            current = 1 - current;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                n += 1;
            }
            (acknowledged, after_kill)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let victim = format!("coordinator-{leader}");
    assert!(cluster.process(&victim).signal(Signal::SIGKILL));
    *killed_at.lock().expect("lock") = Some(Instant::now());
    cluster.process(&victim).kill();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = BTreeMap::new();
    let mut after_kill = 0;
    for stream in streams {
        let (acks, after) = stream.await.expect("stream");
        after_kill += after;
        acknowledged.extend(acks);
    }
    assert!(after_kill > 0, "no enqueue succeeded after the leader was killed");
    let survivor = ApiClient::new(urls[if leader == 1 { 1 } else { 0 }].clone());
    let ids: BTreeSet<u64> = acknowledged.keys().copied().collect();
    let results = wait_for_results(&survivor, &ids, Duration::from_secs(120)).await;
    for (id, (body, iterations)) in &acknowledged {
        assert_eq!(results[id], reference_chain(body, *iterations), "job {id}");
    }
    eprintln!("{} acknowledged ({} after the kill), all completed correctly", acknowledged.len(), after_kill);
    cluster.stop(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_hands_its_job_back_at_once() {
    let dir = TempDir::new().expect("temp dir");
    let mut layout = options(&dir, 1);
    // Leases far longer than the test: only the hand-back can requeue the job in time.
    layout.coordinator_args = vec!["--lease-ms".into(), "60000".into()];
    let mut cluster = LocalCluster::start(layout).expect("start the local cluster");
    cluster.wait_ready(Duration::from_secs(60)).await.expect("cluster ready");
    let client = ApiClient::new(cluster.api_urls()[0].clone());
    let id = client.enqueue(b"stop me".to_vec(), 500_000_000, None).await.expect("enqueue");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (holder, checkpoint) = loop {
        let view = client.job(id).await.expect("job");
        if view.state == JobState::Running && view.iterations_done > 1 {
            break (view.worker.expect("running jobs have a worker"), view.iterations_done);
        }
        assert!(Instant::now() < deadline, "no checkpoint within 60 s: {view:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let name =
        client.cluster().await.expect("cluster").workers.into_iter().find(|w| w.id == holder).expect("holder").name;
    let process = if name == "witness-worker" { "witness" } else { name.as_str() };
    assert!(cluster.process(process).signal(Signal::SIGTERM));
    assert!(cluster.process(process).wait_for_exit(Duration::from_secs(15)), "{process} did not exit on SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let view = client.job(id).await.expect("job");
        if view.attempts >= 1 {
            assert!(view.iterations_done >= checkpoint, "the hand-back lost progress: {view:?}");
            assert!(view.worker != Some(holder), "still held by the stopped worker: {view:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the job was not handed back: {view:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.stop(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_wrong_cluster_secret_exits_and_takes_no_job() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = start(&dir, 0).await;
    // The flag overrides the right secret the cluster put in the worker's environment.
    let args = ["--name".into(), "intruder".into(), "--cluster-secret".into(), "not-the-secret".into()];
    cluster.add_worker("intruder", &args).expect("start the worker");
    let status = wait_for_exit_status(&mut cluster, "intruder", Duration::from_secs(20)).await;
    assert!(!status.success(), "it exited with {status}");
    let log = std::fs::read_to_string(dir.path().join("intruder.log")).expect("its log");
    assert!(log.contains("refused this worker's cluster secret"), "the refusal is not in its log:\n{log}");
    // The cluster never saw it, and the witness's worker (with the right secret) still computes.
    let client = ApiClient::new(cluster.api_urls()[0].clone());
    let view = client.cluster().await.expect("cluster");
    assert!(view.workers.iter().all(|w| w.name != "intruder"), "registered: {:?}", view.workers);
    let case = vectors().into_iter().find(|c| c.length == 16_384 && c.iterations == 1_000).expect("a 16 KB case");
    let id = client.enqueue(body(&case), case.iterations, None).await.expect("enqueue");
    let results = wait_for_results(&client, &BTreeSet::from([id]), Duration::from_secs(30)).await;
    assert_eq!(results[&id], case.result_hex);
    cluster.stop(Duration::from_secs(10));
}

/// Wait up to `timeout` for process `name` to exit; its exit status.
async fn wait_for_exit_status(cluster: &mut LocalCluster, name: &str, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = cluster.process(name).exit_status() {
            return status;
        }
        assert!(Instant::now() < deadline, "{name} kept running for {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_worker_exits_once_restarted_coordinators_refuse_its_secret() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = start(&dir, 1).await;
    let client = ApiClient::new(cluster.api_urls()[0].clone());
    wait_for("worker-1 to register", Duration::from_secs(30), || async {
        client.cluster().await.ok()?.workers.iter().any(|w| w.name == "worker-1").then_some(())
    })
    .await;
    // The coordinators come back with another secret (the two are a majority without the
    // witness, which keeps the old one): the registered worker's calls now get 401.
    cluster.options.cluster_secret = Some(random_token().expect("secret"));
    for name in ["coordinator-1", "coordinator-2"] {
        cluster.restart(name).expect("restart");
    }
    let status = wait_for_exit_status(&mut cluster, "worker-1", Duration::from_secs(30)).await;
    assert!(!status.success(), "it exited with {status}");
    let log = std::fs::read_to_string(dir.path().join("worker-1.log")).expect("its log");
    assert!(log.contains("refused this worker's cluster secret"), "the refusal is not in its log:\n{log}");
    // The coordinators carry on with a worker that has the new secret.
    cluster.wait_ready(Duration::from_secs(60)).await.expect("ready with the new secret");
    cluster.add_worker("worker-new", &["--name".into(), "worker-new".into()]).expect("start a worker");
    let case = vectors().into_iter().find(|c| c.length == 16_384 && c.iterations == 1_000).expect("a 16 KB case");
    let id = client.enqueue(body(&case), case.iterations, None).await.expect("enqueue");
    let results = wait_for_results(&client, &BTreeSet::from([id]), Duration::from_secs(30)).await;
    assert_eq!(results[&id], case.result_hex);
    cluster.stop(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_coordinator_exposes_metrics_and_exactly_one_leads() {
    let dir = TempDir::new().expect("temp dir");
    let mut cluster = start(&dir, 0).await;
    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    let deadline = Instant::now() + Duration::from_secs(15);
    // Both coordinators share this machine: each runs on half its cores.
    let threads = format!("tandem_runtime_threads {}", LocalOptions::shared_runtime_threads());
    loop {
        let mut leaders = 0;
        let mut sampled = 0;
        let mut on_half_the_cores = 0;
        for url in cluster.api_urls() {
            let text = http.get(format!("{url}/metrics")).send().await.expect("scrape").text().await.expect("body");
            sampled += usize::from(text.contains("tandem_raft_term"));
            leaders += usize::from(text.lines().any(|line| line == "tandem_raft_is_leader 1"));
            on_half_the_cores += usize::from(text.lines().any(|line| line == threads));
        }
        if sampled == 2 && leaders == 1 && on_half_the_cores == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected one leader among two sampled coordinators, each reporting `{threads}` ({on_half_the_cores} did)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.stop(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_failover_moves_leadership_and_requires_the_token() {
    let dir = TempDir::new().expect("temp dir");
    let mut layout = options(&dir, 0);
    layout.admin_token = Some("s3cret-token".into());
    // A layout without a cluster secret gets a generated one: a local cluster is never open.
    layout.cluster_secret = None;
    let mut cluster = LocalCluster::start(layout).expect("start the local cluster");
    let secret = cluster.options.cluster_secret.clone().expect("the cluster generated a secret");
    cluster.wait_ready(Duration::from_secs(60)).await.expect("cluster ready");
    // The token and the secret reach the processes in their environment, never on their command
    // line (which `ps` shows every user); only coordinators get the admin token.
    for process in &cluster.processes {
        let pid = process.pid().expect("running");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).expect("environ"))
            .split('\0')
            .map(str::to_owned)
            .collect::<Vec<_>>();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(!cmdline.contains("s3cret-token") && !cmdline.contains(&secret), "{}: {cmdline}", process.name);
        assert!(environ.contains(&format!("TANDEM_CLUSTER_SECRET={secret}")), "{} lacks the secret", process.name);
        assert!(
            !environ.iter().any(|v| v.starts_with("TANDEM_INSECURE_NO_CLUSTER_SECRET")),
            "{} was told to run insecure",
            process.name
        );
        let has_token = environ.iter().any(|v| v == "TANDEM_ADMIN_TOKEN=s3cret-token");
        assert_eq!(has_token, process.name.starts_with("coordinator"), "{}: admin token in environ", process.name);
    }
    let urls = cluster.api_urls();
    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    let leader_now =
        || async { ApiClient::new(urls[0].clone()).cluster().await.expect("cluster").leader.expect("leader") };
    let before = leader_now().await;
    // Without the token, or with a wrong one: 401 and nothing moves.
    for auth in [None, Some("Bearer guess")] {
        let mut request = http.post(format!("{}/admin/failover", urls[0]));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 401);
        assert!(response.text().await.expect("body").contains("admin token"));
    }
    assert_eq!(leader_now().await, before);
    // Never to the witness.
    let response = http
        .post(format!("{}/admin/failover?to=3", urls[0]))
        .header("Authorization", "Bearer s3cret-token")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 409, "{}", response.text().await.unwrap_or_default());
    // Asked on the follower: forwarded to the leader, which hands over to the other coordinator.
    let follower_url = &urls[if before == 1 { 1 } else { 0 }];
    let response = http
        .post(format!("{follower_url}/admin/failover"))
        .header("Authorization", "Bearer s3cret-token")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.expect("json");
    let expected = if before == 1 { 2 } else { 1 };
    assert_eq!(answer["leader"], expected);
    assert_eq!(answer["previous_leader"], before);
    assert_eq!(leader_now().await, expected);
    // And the cluster still takes writes.
    ApiClient::new(urls[0].clone()).enqueue(b"after failover".to_vec(), 1, None).await.expect("enqueue");
    cluster.stop(Duration::from_secs(10));
}

/// `binary` from the build under test with `args`, its output piped, and neither the cluster
/// secret nor the insecure flag in its environment (whatever this test process has).
fn without_a_secret(binary: &str, args: &[&str]) -> Command {
    let mut command = Command::new(bin_dir().join(binary));
    command
        .args(args)
        .env_remove("TANDEM_CLUSTER_SECRET")
        .env_remove("TANDEM_INSECURE_NO_CLUSTER_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Run `command` to its exit (killing it after `timeout`); its status and its output.
fn exit_and_output(mut command: Command, timeout: Duration) -> (std::process::ExitStatus, String) {
    let mut child = command.spawn().expect("start the binary");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            child.kill().expect("kill");
            panic!("it kept running for {timeout:?} instead of refusing to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status, text)
}

#[test]
fn a_coordinator_worker_or_witness_without_a_cluster_secret_refuses_to_start() {
    let dir = TempDir::new().expect("temp dir");
    let data_dir = dir.path().join("coordinator-1").display().to_string();
    let witness_dir = dir.path().join("witness").display().to_string();
    let coordinator = ["--listen", "127.0.0.1:0", "--member", "1=coordinator@127.0.0.1:9", "--data-dir", &data_dir];
    let cases = [
        ("coordinator", without_a_secret("coordinator", &coordinator)),
        ("worker", without_a_secret("worker", &["--coordinator", "http://127.0.0.1:9"])),
        (
            "witness",
            without_a_secret(
                "worker",
                &["--witness", "--witness-listen", "127.0.0.1:0", "--witness-data-dir", &witness_dir],
            ),
        ),
    ];
    for (what, command) in cases {
        let (status, output) = exit_and_output(command, Duration::from_secs(20));
        assert!(!status.success(), "the {what} exited with {status}: {output}");
        assert!(output.contains("TANDEM_CLUSTER_SECRET"), "the {what} does not name the variable: {output}");
        assert!(output.contains("--insecure-no-cluster-secret"), "the {what} does not name the flag: {output}");
    }
    assert!(!std::path::Path::new(&data_dir).exists(), "the refused coordinator opened its data directory");
    assert!(!std::path::Path::new(&witness_dir).exists(), "the refused witness opened its data directory");
}

#[test]
fn a_coordinator_with_the_insecure_flag_starts_and_warns() {
    let dir = TempDir::new().expect("temp dir");
    let data_dir = dir.path().join("coordinator-1").display().to_string();
    let args = [
        "--insecure-no-cluster-secret",
        "--listen",
        "127.0.0.1:0",
        "--member",
        "1=coordinator@127.0.0.1:9",
        "--data-dir",
        &data_dir,
        "--log-format",
        "json",
    ];
    let mut child = without_a_secret("coordinator", &args).spawn().expect("start the coordinator");
    let stdout = child.stdout.take().expect("piped");
    // Kill it however the test ends.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = KillOnDrop(child);
    let warning = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|line| line.contains("running without a cluster secret"))
        .expect("the warning, before its output ends");
    assert!(warning.contains("WARN"), "not a warning: {warning}");
}
