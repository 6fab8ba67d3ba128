//! The client API and worker routes of two real coordinators (in-process, on port 0) with a
//! witness: validation, the job flow through the worker protocol, cursors, idempotency.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use coordinator::config::Config;
use raft_store::network::NetworkFaults;
#[path = "../../deploy/tests/common/mod.rs"]
mod common;

use common::reference_chain;
use raft_store::node::serve;
use raft_store::test_cluster::answer_without_body;
use raft_store::{Node, NodeConfig, Role};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use wire::client::{ApiClient, ClientError};
use wire::worker::{
    CompleteRequest, CompleteResponse, Finished, LeaseRequest, LeaseResponse, RegisterRequest, RegisterResponse,
};

struct Cluster {
    _dir: TempDir,
    urls: [String; 2],
    shutdown: CancellationToken,
    witness: Node,
    http: reqwest::Client,
    /// The cluster secret every voter has, which the worker routes require.
    secret: String,
}

/// The cluster secret of the tests that do not choose their own.
const TEST_SECRET: &str = "api-test-cluster-secret";

impl Cluster {
    async fn start(extra: &[&str]) -> Cluster {
        Cluster::start_with_secret(extra, TEST_SECRET).await
    }

    /// Start the cluster with `secret` as its cluster secret on every voter.
    async fn start_with_secret(extra: &[&str], secret: &str) -> Cluster {
        Cluster::start_each([extra, extra], secret).await
    }

    /// Start the cluster with `extra[i]` given to coordinator `i + 1`.
    async fn start_each(extra: [&[&str]; 2], secret: &str) -> Cluster {
        let dir = TempDir::new().expect("temp dir");
        let mut listeners = Vec::new();
        for _ in 0..3 {
            listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        }
        let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().expect("addr").to_string()).collect();
        let members = format!("1=coordinator@{},2=coordinator@{},3=witness@{}", addrs[0], addrs[1], addrs[2]);
        let shutdown = CancellationToken::new();
        let witness_listener = listeners.pop().expect("three");
        for (i, listener) in listeners.into_iter().enumerate() {
            let id = (i + 1).to_string();
            let data = dir.path().join(format!("c{id}"));
            let mut args = vec![
                "coordinator".to_owned(),
                "--id".into(),
                id.clone(),
                "--member".into(),
                members.clone(),
                "--data-dir".into(),
                data.display().to_string(),
                "--lease-ms".into(),
                "1000".into(),
            ];
            if i == 0 {
                args.push("--initialize".into());
            }
            args.extend(extra[i].iter().map(|s| s.to_string()));
            args.extend(["--cluster-secret".to_owned(), secret.to_owned()]);
            let config = Config::parse_from(args);
            tokio::spawn(coordinator::run(config, listener, shutdown.child_token()));
        }
        let mut witness_config = NodeConfig::new(3, Role::Witness, dir.path().join("w3"));
        witness_config.secret = Some(secret.to_owned());
        let witness = Node::start(witness_config, Arc::new(NetworkFaults::default())).await.expect("witness");
        let router = witness.router();
        let stop = shutdown.child_token();
        tokio::spawn(serve(witness_listener, router, async move { stop.cancelled().await }));
        let cluster = Cluster {
            _dir: dir,
            urls: [format!("http://{}", addrs[0]), format!("http://{}", addrs[1])],
            shutdown,
            witness,
            http: reqwest::Client::builder().no_proxy().build().expect("client"),
            secret: secret.to_owned(),
        };
        for url in &cluster.urls {
            let client = ApiClient::new(url.clone());
            wait_until(|| {
                let client = client.clone();
                async move { client.ready().await.unwrap_or(false) }
            })
            .await;
        }
        cluster
    }

    fn client(&self, i: usize) -> ApiClient {
        ApiClient::new(self.urls[i].clone())
    }

    async fn worker_call<Req: Serialize, Resp: DeserializeOwned>(&self, i: usize, path: &str, req: &Req) -> Resp {
        let response = self
            .http
            .post(format!("{}{path}", self.urls[i]))
            .header(wire::SECRET_HEADER, &self.secret)
            .header("content-type", "application/msgpack")
            .body(rmp_serde::to_vec_named(req).expect("encode"))
            .send()
            .await
            .expect("send");
        assert!(response.status().is_success(), "{path}: {}", response.status());
        rmp_serde::from_slice(&response.bytes().await.expect("body")).expect("decode")
    }

    /// As worker `worker`: lease through node `lease_on`, compute, and report through node
    /// `complete_on` until `jobs` results are recorded.
    async fn compute_all(&self, worker: u64, jobs: usize, lease_on: usize, complete_on: usize) {
        let mut done = 0;
        while done < jobs {
            let leased: LeaseResponse = self
                .worker_call(
                    lease_on,
                    wire::worker::LEASE,
                    &LeaseRequest { worker, max_jobs: 64, wait_ms: 2000, free_cores: None, budget_iterations: None },
                )
                .await;
            assert!(!leased.jobs.is_empty(), "jobs are waiting");
            let results = leased
                .jobs
                .iter()
                .map(|a| Finished { job: a.job, result: wire::chain::continue_chain(a.digest, a.iterations - a.done) })
                .collect::<Vec<_>>();
            done += results.len();
            let answer: CompleteResponse =
                self.worker_call(complete_on, wire::worker::COMPLETE, &CompleteRequest { worker, results }).await;
            assert_eq!(answer.unknown, 0);
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.witness.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_routes_refuse_a_missing_or_wrong_cluster_secret() {
    let secret = "worker-routes-secret";
    let cluster = Cluster::start_with_secret(&[], secret).await;
    let register =
        RegisterRequest { name: "intruder".into(), cores: 8, instance_id: None, witness: false, launch_token: None };
    let body = rmp_serde::to_vec_named(&register).expect("encode");
    let status = |node: usize, given: Option<&'static str>| {
        let request = cluster
            .http
            .post(format!("{}{}", cluster.urls[node], wire::worker::REGISTER))
            .header("content-type", "application/msgpack")
            .body(body.clone());
        let request = match given {
            Some(given) => request.header(wire::SECRET_HEADER, given),
            None => request,
        };
        async move { request.send().await.expect("send").status().as_u16() }
    };
    for node in 0..2 {
        assert_eq!(status(node, None).await, 401, "no secret, node {node}");
        assert_eq!(status(node, Some("worker-routes-secreT")).await, 401, "wrong secret, node {node}");
        assert_eq!(status(node, Some("")).await, 401, "empty secret, node {node}");
    }
    // Every worker route is behind the check, not just registration.
    for path in [wire::worker::LEASE, wire::worker::HEARTBEAT, wire::worker::COMPLETE, wire::worker::RELEASE] {
        for node in 0..2 {
            for given in [None, Some("worker-routes-secreT")] {
                let mut request = cluster.http.post(format!("{}{path}", cluster.urls[node])).body(vec![0x80]);
                if let Some(given) = given {
                    request = request.header(wire::SECRET_HEADER, given);
                }
                let response = request.send().await.expect("send");
                assert_eq!(response.status(), 401, "{path} on node {node} with {given:?}");
            }
        }
    }
    let refused = cluster.client(0).cluster().await.expect("cluster view");
    assert!(refused.workers.is_empty(), "a refused worker was registered: {:?}", refused.workers);
    // With the secret the same request registers, on either node. (`/cluster` reads this
    // node's state machine without a read barrier: wait until it has applied the registration.)
    for node in 0..2 {
        assert_eq!(status(node, Some(secret)).await, 200, "right secret, node {node}");
    }
    wait_until(|| {
        let client = cluster.client(0);
        async move {
            let view = client.cluster().await.expect("cluster view");
            view.workers.iter().filter(|w| w.name == "intruder").count() == 2
        }
    })
    .await;
    let metrics = cluster.http.get(format!("{}/metrics", cluster.urls[0])).send().await.expect("scrape");
    let text = metrics.text().await.expect("body");
    assert!(
        text.lines().any(|line| line.starts_with("tandem_worker_requests_refused_total ")),
        "refusals are counted: {text}"
    );
    cluster.stop().await;
}

async fn wait_until<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "condition not met within 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status_of(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Status { status, error, .. }) => (status, error),
        other => panic!("expected an error status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_flow_through_the_worker_protocol_with_cursors_and_idempotency() {
    let cluster = Cluster::start(&[]).await;
    let bodies: Vec<Vec<u8>> = (0..12).map(|i| vec![i as u8; 100 + i]).collect();
    let mut ids = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        ids.push(cluster.client(i % 2).enqueue(body.clone(), 1 + i as u64, None).await.expect("enqueue"));
    }
    // A retried enqueue with the same key gets the same id, on either node.
    let first = cluster.client(0).enqueue(b"keyed body".to_vec(), 3, Some("key-1")).await.expect("enqueue");
    let again = cluster.client(1).enqueue(b"keyed body".to_vec(), 3, Some("key-1")).await.expect("enqueue");
    assert_eq!(first, again);
    // The same key for another request is refused, on either node: its id would carry another
    // job's result. Nothing is added.
    for (node, body, iterations) in [(0, b"keyed body".to_vec(), 4), (1, b"other body".to_vec(), 3)] {
        let (status, error) = status_of(cluster.client(node).enqueue(body, iterations, Some("key-1")).await);
        assert_eq!(status, 422, "{error}");
        assert!(error.contains(&format!("first used for job {first}")), "{error}");
    }
    ids.push(first);
    let mut expected: HashMap<u64, String> = ids[..12]
        .iter()
        .zip(&bodies)
        .enumerate()
        .map(|(i, (id, body))| (*id, reference_chain(body, 1 + i as u64)))
        .collect();
    expected.insert(first, reference_chain(b"keyed body", 3));
    // Multipart with one file part is accepted too.
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(b"form body".to_vec()).file_name("f"));
    let response = cluster
        .http
        .put(format!("{}/enqueue?iterations=2", cluster.urls[1]))
        .multipart(form)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let multipart_id = response.json::<wire::api::EnqueueResponse>().await.expect("json").id;
    expected.insert(multipart_id, reference_chain(b"form body", 2));
    // And a text field, as `curl -F data=<file` sends one (no file name, text/plain).
    let form = reqwest::multipart::Form::new().text("data", "text field body");
    let response = cluster
        .http
        .put(format!("{}/enqueue?iterations=2", cluster.urls[0]))
        .multipart(form)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let text_id = response.json::<wire::api::EnqueueResponse>().await.expect("json").id;
    expected.insert(text_id, reference_chain(b"text field body", 2));

    let queued = cluster.client(1).job(ids[0]).await.expect("job");
    assert_eq!(queued.state, wire::api::JobState::Queued);

    // A worker registers on node 2, leases everything, computes, reports to node 1.
    let registered: RegisterResponse = cluster
        .worker_call(
            1,
            wire::worker::REGISTER,
            &RegisterRequest { name: "test".into(), cores: 64, instance_id: None, witness: false, launch_token: None },
        )
        .await;
    // Asking for no jobs is a malformed lease (it could only make the long-poll spin).
    let empty = LeaseRequest {
        worker: registered.worker,
        max_jobs: 0,
        wait_ms: 1_000,
        free_cores: None,
        budget_iterations: None,
    };
    let response = cluster
        .http
        .post(format!("{}{}", cluster.urls[0], wire::worker::LEASE))
        .header(wire::SECRET_HEADER, &cluster.secret)
        .header("content-type", "application/msgpack")
        .body(rmp_serde::to_vec_named(&empty).expect("encode"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400, "max_jobs 0");
    cluster.compute_all(registered.worker, expected.len(), 1, 0).await;
    // Results, from both nodes, against an independent computation.
    for i in 0..2 {
        let client = cluster.client(i);
        let latest = client.pull_completed(100).await.expect("pull");
        assert_eq!(latest.jobs.len(), expected.len());
        assert!(latest.jobs.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
        for job in &latest.jobs {
            assert_eq!(Some(&job.result), expected.get(&job.id), "job {}", job.id);
            let view = client.job(job.id).await.expect("job");
            assert_eq!(view.result.as_ref(), Some(&job.result));
        }
        // Walk the cursor in pages of 5: every completion once, in order.
        let mut cursor = 0;
        let mut seen = Vec::new();
        loop {
            let page = client.pull_after(cursor, 5).await.expect("pull after");
            if page.jobs.is_empty() {
                assert_eq!(page.cursor, cursor);
                break;
            }
            seen.extend(page.jobs.iter().map(|j| j.seq));
            cursor = page.cursor;
        }
        assert_eq!(seen, (1..=expected.len() as u64).collect::<Vec<_>>());
    }
    // A late duplicate result is harmless.
    let duplicate: CompleteResponse = cluster
        .worker_call(
            1,
            wire::worker::COMPLETE,
            &CompleteRequest {
                worker: registered.worker,
                results: vec![Finished { job: ids[0], result: wire::Digest([0; 64]) }],
            },
        )
        .await;
    assert_eq!(duplicate.duplicate, 1);
    assert_eq!(cluster.client(0).job(ids[0]).await.expect("job").result.as_ref(), expected.get(&ids[0]));
    let (status, _) = status_of(cluster.client(0).job(9_999).await);
    assert_eq!(status, 404);
    cluster.stop().await;
}

/// `promtool check metrics` on an exposition: its complaints (empty when clean).
fn promtool_check(exposition: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by ./scripts/test (Debian package prometheus)");
    child.stdin.take().expect("stdin").write_all(exposition.as_bytes()).expect("write");
    let output = child.wait_with_output().expect("promtool");
    let complaints = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() || !complaints.is_empty(), "promtool failed silently");
    complaints
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_describe_the_cluster() {
    let cluster = Cluster::start(&[]).await;
    let id = cluster.client(1).enqueue(b"metric body".to_vec(), 5, None).await.expect("enqueue");
    assert!(id > 0);
    let _ = cluster.client(0).enqueue(Vec::new(), 1, None).await; // a rejection, counted by reason
    for url in &cluster.urls {
        let url = format!("{url}/metrics");
        // Replicated figures are sampled once a second: wait for a sample that includes the job.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let exposition = loop {
            let text = cluster.http.get(&url).send().await.expect("scrape").text().await.expect("body");
            if text.contains("tandem_raft_term") && text.contains("tandem_queue_depth 1") {
                break text;
            }
            assert!(tokio::time::Instant::now() < deadline, "{url} never showed the queued job:\n{text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for name in [
            "tandem_raft_is_leader",
            "tandem_raft_has_leader 1",
            "tandem_raft_applied_index",
            "tandem_queue_iterations 4",
            "tandem_leases_outstanding 0",
            "tandem_jobs_created_total 1",
            "tandem_wal_fsync_seconds_bucket",
            "tandem_wal_batch_entries_bucket",
            "# HELP tandem_queue_depth",
            "# HELP process_cpu_seconds_total",
            "process_resident_memory_bytes",
        ] {
            assert!(exposition.contains(name), "{url} lacks {name}:\n{exposition}");
        }
        let complaints = promtool_check(&exposition);
        assert!(complaints.trim().is_empty(), "promtool on {url}: {complaints}");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_view_probes_the_other_voters_at_most_every_100_ms_however_often_asked() {
    let cluster = Cluster::start(&[]).await;
    let client = cluster.client(0);
    let started = std::time::Instant::now();
    let views = futures::future::join_all((0..200).map(|_| client.cluster())).await;
    let elapsed = started.elapsed();
    let mut rounds = std::collections::BTreeSet::new();
    for view in views {
        let view = view.expect("GET /cluster");
        assert_eq!(view.voters.len(), 3);
        for voter in &view.voters {
            // Shared answers are still every voter's own: all three reachable, each in its state.
            assert!(voter.reachable, "voter {} unreachable in {view:?}", voter.id);
            let expected = if view.leader == Some(voter.id) { "leader" } else { "follower" };
            assert_eq!(voter.state, expected, "voter {}", voter.id);
        }
        rounds.insert(view.voters_probed_at_ms);
    }
    // One round per 100 ms at most, plus the one already under way when the first request came.
    let bound = 2 + (elapsed.as_millis() / 100) as usize;
    assert!(rounds.len() <= bound, "{} probe rounds for 200 requests in {elapsed:?}", rounds.len());
    // Later requests are answered from a new round.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let later = client.cluster().await.expect("GET /cluster");
    assert!(later.voters_probed_at_ms > *rounds.last().expect("a round"));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_behind_retention_is_told_how_many_results_it_missed() {
    let cluster = Cluster::start(&["--completed-retention", "2"]).await;
    let client = cluster.client(0);
    let bodies: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 32]).collect();
    for body in &bodies {
        client.enqueue(body.clone(), 1, None).await.expect("enqueue");
    }
    let registered: RegisterResponse = cluster
        .worker_call(
            0,
            wire::worker::REGISTER,
            &RegisterRequest { name: "w".into(), cores: 4, instance_id: None, witness: false, launch_token: None },
        )
        .await;
    cluster.compute_all(registered.worker, bodies.len(), 0, 1).await;
    for node in 0..2 {
        let client = cluster.client(node);
        // Three completions, two kept: a cursor at 0 gets the last two and learns one is gone.
        let page = client.pull_after(0, 10).await.expect("pull after 0");
        assert_eq!(page.jobs.iter().map(|j| j.seq).collect::<Vec<_>>(), [2, 3], "node {node}");
        assert_eq!((page.skipped, page.cursor, page.last_seq), (1, 3, 3), "node {node}");
        // A client that kept up misses nothing.
        let page = client.pull_after(1, 10).await.expect("pull after 1");
        assert_eq!((page.jobs.len(), page.skipped), (2, 0), "node {node}");
        let page = client.pull_after(3, 10).await.expect("pull after 3");
        assert_eq!((page.jobs.len(), page.skipped, page.cursor), (0, 0, 3), "node {node}");
        // A cursor past the newest completion is not this cluster's.
        let (status, body) = status_of(client.pull_after(4, 10).await);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("past the newest completion"), "{body}");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_token_the_client_api_refuses_requests_without_it_before_reading_them() {
    let token = "the-client-token";
    let cluster = Cluster::start(&["--client-token", token, "--admin-token", "the-admin-token"]).await;
    let http = &cluster.http;
    let body = vec![7u8; 16 << 10];
    for (node, url) in cluster.urls.iter().enumerate() {
        for given in [None, Some("the-client-tokeN"), Some("")] {
            let auth = |request: reqwest::RequestBuilder| match given {
                Some(given) => request.bearer_auth(given),
                None => request,
            };
            let calls = [
                auth(http.put(format!("{url}/enqueue?iterations=1")).body(body.clone())),
                auth(http.post(format!("{url}/pullCompleted?top=5"))),
                auth(http.get(format!("{url}/jobs/1"))),
            ];
            for call in calls {
                let response = call.send().await.expect("send");
                assert_eq!(response.status(), 401, "node {node}, token {given:?}");
                assert_eq!(response.headers()["www-authenticate"], "Bearer");
                let error: serde_json::Value = response.json().await.expect("a JSON error");
                assert!(error["error"].as_str().is_some_and(|e| e.contains("client token")), "{error}");
            }
        }
        // Checked before the body is read: a body over the limit is refused for the token
        // (401), not for its size (413), and so is an admin request's, from the head alone.
        let addr = url.trim_start_matches("http://");
        for request in ["PUT /enqueue?iterations=1", "POST /admin/members/replace"] {
            let length = (1 << 20) + (64 << 10);
            let head = format!("{request} HTTP/1.1\r\nHost: {addr}\r\ncontent-length: {length}\r\n\r\n");
            let (head, _) = answer_without_body(addr, &head).await;
            assert!(head.starts_with("HTTP/1.1 401"), "{request}: {head}");
        }
        // What carries no job data stays open.
        for path in ["/cluster", "/healthz", "/readyz", "/metrics", "/"] {
            let response = http.get(format!("{url}{path}")).send().await.expect("send");
            assert_eq!(response.status(), 200, "{path} on node {node}");
        }
    }
    // With the token, on either node; and the refused enqueues made no job: the first job has
    // id 1 and the second id 2.
    let first = cluster.client(0).with_client_token(Some(token));
    let second = cluster.client(1).with_client_token(Some(token));
    assert_eq!(first.enqueue(body.clone(), 1, None).await.expect("enqueue"), 1);
    assert_eq!(second.enqueue(vec![8u8; 16 << 10], 1, None).await.expect("enqueue"), 2);
    assert_eq!(second.job(1).await.expect("job 1").id, 1);
    assert!(first.pull_completed(5).await.expect("pull").jobs.is_empty());
    let metrics = http.get(format!("{}/metrics", cluster.urls[0])).send().await.expect("scrape");
    let text = metrics.text().await.expect("body");
    let refused = text
        .lines()
        .find(|l| l.starts_with("tandem_jobs_rejected_total{") && l.contains("reason=\"unauthorized\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(refused.is_some_and(|n| n >= 10.0), "refusals counted: {refused:?}");
    cluster.stop().await;
}

/// Send a PUT /enqueue head and half of a 16 KiB body to `url`; the connection holds its
/// enqueue slot until the rest is sent.
async fn half_sent_enqueue(url: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!("PUT /enqueue?iterations=1 HTTP/1.1\r\nHost: {addr}\r\ncontent-length: 16384\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&[5u8; 8192]).await.expect("half the body");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueues_beyond_the_concurrency_bound_are_shed_with_503_before_their_bodies_are_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = Cluster::start(&["--max-concurrent-enqueues", "2"]).await;
    let url = cluster.urls[0].clone();
    let mut held = vec![half_sent_enqueue(&url).await, half_sent_enqueue(&url).await];
    // Both slots are taken by bodies still arriving: a third enqueue is refused at once, even
    // one whose body is over the limit (it is not read), and reads are still served.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Only the request head is sent: the answer must come without the body (a client that
    // sends its whole body anyway may see the connection closed under it, as the server does
    // not read what it refused).
    for length in [16usize << 10, 2 << 20] {
        let addr = url.trim_start_matches("http://");
        let head = format!("PUT /enqueue?iterations=1 HTTP/1.1\r\nHost: {addr}\r\ncontent-length: {length}\r\n\r\n");
        let (head, body) = answer_without_body(addr, &head).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert!(head.lines().any(|l| l.trim_end().eq_ignore_ascii_case("retry-after: 1")), "{head}");
        let error: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert!(error["error"].as_str().is_some_and(|e| e.contains("retry")), "{error}");
    }
    assert!(cluster.client(0).pull_completed(5).await.is_ok(), "reads are not shed");
    // The other coordinator has its own bound.
    assert!(cluster.client(1).enqueue(vec![2u8; 16 << 10], 1, None).await.is_ok());
    // The held enqueues finish and are acknowledged.
    for stream in &mut held {
        stream.write_all(&[5u8; 8192]).await.expect("the rest of the body");
        let mut answer = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
            .await
            .expect("answer")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"id\""), "{answer}");
    }
    // With the slots free again, an enqueue goes through.
    assert!(cluster.client(0).enqueue(vec![3u8; 16 << 10], 1, None).await.is_ok());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_enqueues_with_503_and_keeps_serving_the_rest() {
    let cluster = Cluster::start(&["--max-queued", "3"]).await;
    for i in 0..3u8 {
        cluster.client(usize::from(i % 2)).enqueue(vec![i; 16 << 10], 1, None).await.expect("room in the queue");
    }
    for node in 0..2 {
        match cluster.client(node).enqueue(vec![9u8; 16 << 10], 1, None).await {
            Err(ClientError::Status { status: 503, retry_after: Some(1), error }) => {
                assert!(error.contains("queue is full"), "{error}")
            }
            other => panic!("a fourth job on node {node}: {other:?}"),
        }
    }
    // Everything else still works, and once the queue drains there is room again.
    assert_eq!(cluster.client(1).job(3).await.expect("job 3").id, 3);
    let registered: RegisterResponse = cluster
        .worker_call(
            0,
            wire::worker::REGISTER,
            &RegisterRequest { name: "w".into(), cores: 4, instance_id: None, witness: false, launch_token: None },
        )
        .await;
    cluster.compute_all(registered.worker, 3, 0, 1).await;
    assert_eq!(cluster.client(0).pull_completed(10).await.expect("pull").jobs.len(), 3);
    assert!(cluster.client(1).enqueue(vec![9u8; 16 << 10], 1, None).await.is_ok());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_configured_with_different_limits_do_not_overwrite_each_other_at_every_failover() {
    let admin = ["--admin-token", "the-admin-token"];
    let one = [&admin[..], &["--max-queued", "1000"]].concat();
    let two = [&admin[..], &["--max-queued", "2000"]].concat();
    let cluster = Cluster::start_each([&one, &two], TEST_SECRET).await;
    let max_queued = |node: usize| {
        let client = cluster.client(node);
        async move { client.cluster().await.expect("cluster view").queue.max_queued }
    };
    let lead = |node: u64| {
        let client = cluster.client(0);
        async move {
            match client.failover("the-admin-token", Some(node)).await {
                Ok(answer) => assert_eq!(answer.leader, node),
                Err(ClientError::Status { status: 409, error, .. }) if error.contains("already leads") => {}
                Err(e) => panic!("failover to {node}: {e}"),
            }
        }
    };
    // Whoever leads first writes its limits; each coordinator, on leading, writes its own once.
    lead(1).await;
    wait_until(|| async { max_queued(0).await == 1000 && max_queued(1).await == 1000 }).await;
    lead(2).await;
    wait_until(|| async { max_queued(0).await == 2000 && max_queued(1).await == 2000 }).await;
    // Coordinator 1 leads again: its configuration is the one it already wrote, so the newer one
    // (coordinator 2's) holds, instead of flipping back at every change of leader.
    lead(1).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await; // five of the leader's duty ticks
    assert_eq!((max_queued(0).await, max_queued(1).await), (2000, 2000));
    cluster.stop().await;
}

/// `POST /worker/join` with `launch_token` and `join_secret` on node `node`, with no cluster
/// secret: its status and its body (the cluster secret when 200).
async fn join(cluster: &Cluster, node: usize, launch_token: &str, join_secret: &str) -> (u16, Vec<u8>) {
    let request = wire::worker::JoinRequest { launch_token: launch_token.into(), join_secret: join_secret.into() };
    let response = cluster
        .http
        .post(format!("{}{}", cluster.urls[node], wire::worker::JOIN))
        .header("content-type", "application/msgpack")
        .body(rmp_serde::to_vec_named(&request).expect("encode"))
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("body").to_vec())
}

/// Commit a launch under `token` whose worker's join secret is `join_secret`, good for
/// `valid_ms`, as the leader's autoscaler does (the witness's voter forwards it to the leader).
async fn commit_launch(cluster: &Cluster, token: &str, join_secret: &str, valid_ms: u64) {
    use raft_store::job_table::{CommandResponse, JoinTerms, Proposal, ScalerProposal};
    let join = Some(JoinTerms { secret_sha256: wire::join_secret_sha256(join_secret), valid_ms });
    let launch = ScalerProposal::LaunchRequested { token: token.into(), why: "test".into(), join };
    let answer = cluster.witness.propose(Proposal::Scaler(launch)).await.expect("committed");
    assert_eq!(answer, CommandResponse::Done);
}

/// What the autoscaler's table holds, as the witness's voter has applied it.
fn scaler_state(cluster: &Cluster) -> raft_store::job_table::ScalerState {
    cluster.witness.state_machine().read(|table| table.scaler().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launched_worker_exchanges_its_join_secret_once_for_the_cluster_secret_and_registers() {
    let cluster = Cluster::start(&[]).await;
    let join_secret = "tandem-join-0123456789abcdef0123456789abcdef";
    commit_launch(&cluster, "tandem-launch-1", join_secret, 600_000).await;
    wait_until(|| async { scaler_state(&cluster).launches.contains_key("tandem-launch-1") }).await;
    let committed = format!("{:?}", scaler_state(&cluster));
    assert!(!committed.contains(join_secret), "only the join secret's hash is committed");

    // A wrong join secret, another launch's token, a malformed or oversized body: refused, and
    // nothing changes.
    let before = scaler_state(&cluster);
    for node in 0..2 {
        let (status, body) = join(&cluster, node, "tandem-launch-1", "tandem-join-not-the-right-secret-0000").await;
        assert_eq!(status, 403, "a wrong join secret on node {node}");
        let error: wire::worker::WorkerErrorBody = wire::from_msgpack(&body).expect("a MessagePack error");
        assert!(error.error.contains("join refused"), "{error:?}");
        assert!(!String::from_utf8_lossy(&body).contains(TEST_SECRET));
        assert_eq!(join(&cluster, node, "tandem-launch-9", join_secret).await.0, 403, "an unknown launch token");
        let garbage = cluster.http.post(format!("{}{}", cluster.urls[node], wire::worker::JOIN)).body(vec![0xc1]);
        assert_eq!(garbage.send().await.expect("send").status(), 400);
        let oversized = vec![0u8; wire::worker::MAX_JOIN_BODY_BYTES + 1];
        let oversized = cluster.http.post(format!("{}{}", cluster.urls[node], wire::worker::JOIN)).body(oversized);
        assert_eq!(oversized.send().await.expect("send").status(), 413);
    }
    assert_eq!(scaler_state(&cluster), before, "a refused join changed the table");

    // The real worker, given only the join secret and its launch token: it gets the cluster
    // secret, registers (which needs it), and the launch counts as registered.
    let stop = cluster.shutdown.child_token();
    let config = worker::config::Config::parse_from([
        "worker",
        "--coordinator",
        &cluster.urls.join(","),
        "--cores",
        "1",
        "--name",
        "joined-worker",
        "--launch-token",
        "tandem-launch-1",
        "--join-token",
        join_secret,
    ]);
    let running = tokio::spawn(worker::run(config, stop.clone()));
    wait_until(|| async {
        let view = cluster.client(0).cluster().await.expect("cluster view");
        view.workers.iter().any(|w| w.name == "joined-worker") && view.scaler.launches_in_flight == 0
    })
    .await;

    // The same join secret again, on either coordinator: refused, and changes nothing.
    let before = scaler_state(&cluster);
    for node in 0..2 {
        assert_eq!(join(&cluster, node, "tandem-launch-1", join_secret).await.0, 403, "reused, node {node}");
    }
    assert_eq!(scaler_state(&cluster), before);

    // Exchanged by hand on one coordinator, the secret is refused as used on the other (the
    // use was committed through the leader), and expired ones are refused too.
    commit_launch(&cluster, "tandem-launch-2", "tandem-join-second-0123456789abcdef", 600_000).await;
    commit_launch(&cluster, "tandem-launch-3", "tandem-join-expired-0123456789abcde", 0).await;
    wait_until(|| async { scaler_state(&cluster).launches.contains_key("tandem-launch-3") }).await;
    let (status, body) = join(&cluster, 1, "tandem-launch-2", "tandem-join-second-0123456789abcdef").await;
    assert_eq!(status, 200);
    let answer: wire::worker::JoinResponse = wire::from_msgpack(&body).expect("decode");
    assert_eq!(answer.cluster_secret, TEST_SECRET);
    for node in [0, 1] {
        let (status, body) = join(&cluster, node, "tandem-launch-2", "tandem-join-second-0123456789abcdef").await;
        assert_eq!(status, 410, "used, on node {node}");
        assert!(String::from_utf8_lossy(&body).contains("used already"));
    }
    let (status, body) = join(&cluster, 0, "tandem-launch-3", "tandem-join-expired-0123456789abcde").await;
    assert_eq!(status, 410, "expired");
    assert!(String::from_utf8_lossy(&body).contains("expired"));
    let launch_3 = scaler_state(&cluster).launches["tandem-launch-3"].clone();
    assert_eq!(launch_3.join.and_then(|j| j.used_at_ms), None, "an expired join secret is not used up");

    stop.cancel();
    running.await.expect("the worker task").expect("the worker stopped cleanly");
    cluster.shutdown.cancel();
}
