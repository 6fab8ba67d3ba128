//! schemathesis against the local cluster: it reads `GET /openapi.json` from each coordinator and
//! sends requests generated from it (valid and invalid parameters, headers and bodies, boundary
//! values, methods the document does not list), at least 1,000 across the two coordinators, and
//! checks that no answer is a 5xx and that every answer conforms to the document (its status,
//! content type, headers and body schema). Then no process has crashed, and the cluster still
//! computes the reference vectors correctly.
//!
//! `scripts/test` installs schemathesis into a virtualenv and sets `TANDEM_SCHEMATHESIS` to it
//! and `TANDEM_REQUIRE_SCHEMATHESIS`; without either, the test looks on PATH and in
//! `target/schemathesis-venv`, and is skipped when it finds none (unless required, or in CI).
//!
//! The cluster's admin token is not given to schemathesis, so every admin route (failover, voter
//! replacement, worker drain and resume) answers it 401 before reading anything: the fuzzer
//! cannot move leadership, change the membership or drain the workers the vectors need, and the
//! 401 answers are still checked against the document. The test itself uses the token to drain
//! the workers while schemathesis runs (the jobs it enqueues wait instead of taking both cores
//! from the coordinators under test) and to resume them after. The client API is open (no
//! `--client-token`), so every client route is exercised past authentication.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{body, vectors, wait_for_results};
use deploy::local::{LocalCluster, random_token};
use tempfile::TempDir;
use wire::api::JobState;
use wire::client::ApiClient;

const TEST_NAME: &str = "schemathesis_finds_no_server_error_and_the_cluster_still_computes_the_vectors";
/// Generated test cases per operation and coordinator: 12 operations (schemathesis leaves out
/// `GET /openapi.json`, the document it reads), on two coordinators, about 1,300 cases in all
/// (the coverage phase's boundary cases and the methods a route lacks come on top).
const MAX_EXAMPLES: &str = "60";
/// The least number of requests the two runs together must make.
const MIN_REQUESTS: usize = 1_000;
/// A run that takes longer than this is killed and fails the test.
const RUN_TIMEOUT: Duration = Duration::from_secs(150);
/// Largest job the fuzzer may enqueue: the largest reference vector, so that the jobs it
/// creates (all computed by the cluster's workers before the vectors, which queue behind them)
/// stay within the test's time, and `iterations`' upper bound is still fuzzed.
const MAX_ITERATIONS: &str = "1000000";
/// The checks: no 5xx, and each answer as the document describes it.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,unsupported_method";

/// `TANDEM_SCHEMATHESIS`, `schemathesis` on PATH, or the one `scripts/test` installs.
fn find_schemathesis() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TANDEM_SCHEMATHESIS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("schemathesis"));
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/schemathesis-venv/bin/schemathesis");
    on_path.chain([venv]).find(|path| path.is_file())
}

/// One schemathesis run against `url`: the requests it made (entries of its HAR log), or its
/// output if it reports a failure. Fails the test if it does not finish within [`RUN_TIMEOUT`].
fn run_schemathesis(schemathesis: &Path, url: &str, work: &Path, seed: u64) -> Result<usize, String> {
    let har = work.join(format!("requests-{seed}.har"));
    // One worker: with several threads, Python 3.11's parser (hypothesis describes its filters
    // from their source) fails now and then with "AST constructor recursion depth mismatch".
    let mut child = Command::new(schemathesis)
        .current_dir(work)
        .args(["run", &format!("{url}/openapi.json"), "--checks", CHECKS, "--max-examples", MAX_EXAMPLES])
        .args(["--seed", &seed.to_string(), "--workers", "1", "--request-timeout", "20", "--no-color"])
        .args(["--generation-database", "none", "--suppress-health-check", "all"])
        .args(["--report", "har", "--report-har-path"])
        .arg(&har)
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start schemathesis");
    // Read its output on threads, so that a full pipe does not stall it.
    let (mut stdout, mut stderr) = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
    let out = std::thread::spawn(move || std::io::read_to_string(&mut stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(&mut stderr).unwrap_or_default());
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for schemathesis") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis against {url} ran longer than {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = format!("{}\n{}", out.join().expect("the stdout reader"), err.join().expect("the stderr reader"));
    println!("schemathesis against {url}:\n{output}");
    if !status.success() {
        return Err(format!("schemathesis against {url} found failures ({status}):\n{output}"));
    }
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&har).expect("the HAR report")).expect("the HAR report is JSON");
    Ok(log["log"]["entries"].as_array().expect("HAR entries").len())
}

/// What the voters logged at WARN and above (elections, commits that timed out), for a failure.
fn voter_warnings(cluster: &LocalCluster) -> String {
    let mut found = String::new();
    for name in ["coordinator-1", "coordinator-2", "witness"] {
        let log = std::fs::read_to_string(cluster.log_path(name)).unwrap_or_default();
        let lines: Vec<&str> =
            log.lines().filter(|line| [" WARN ", " ERROR "].iter().any(|level| line.contains(level))).collect();
        found += &format!("\n{name}: {} warnings, the last:\n", lines.len());
        found += &lines[lines.len().saturating_sub(15)..].join("\n");
    }
    found
}

/// No process of the cluster (coordinators, witness, workers) has exited.
fn assert_all_running(cluster: &mut LocalCluster, when: &str) {
    let exited: Vec<_> =
        cluster.processes.iter_mut().filter_map(|p| p.exit_status().map(|status| (p.name.clone(), status))).collect();
    assert!(exited.is_empty(), "processes exited {when}: {exited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_the_cluster_still_computes_the_vectors() {
    let Some(schemathesis) = find_schemathesis() else {
        let required =
            ["CI", "TANDEM_REQUIRE_SCHEMATHESIS"].iter().any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
        assert!(
            !required,
            "schemathesis not found: set TANDEM_SCHEMATHESIS to its path or put it on PATH (scripts/test installs \
             it into target/schemathesis-venv)"
        );
        eprintln!("{TEST_NAME}: SKIPPED, no schemathesis (set TANDEM_SCHEMATHESIS or run scripts/test)");
        return;
    };
    let dir = TempDir::new().expect("temp dir");
    let mut options = common::options(&dir, 1);
    options.coordinator_args.extend(["--max-iterations".to_owned(), MAX_ITERATIONS.to_owned()]);
    let admin_token = random_token().expect("an admin token");
    options.admin_token = Some(admin_token.clone());
    let mut cluster = LocalCluster::start(options).expect("start the local cluster");
    cluster.wait_ready(Duration::from_secs(60)).await.expect("cluster ready");
    cluster.wait_workers(Duration::from_secs(60)).await.expect("workers registered");
    let urls = cluster.api_urls();
    let client = ApiClient::new(urls[0].clone());
    let workers: Vec<u64> = client.cluster().await.expect("cluster").workers.iter().map(|w| w.id).collect();
    for &worker in &workers {
        client.set_worker_draining(&admin_token, worker, true).await.expect("drain a worker");
    }
    let work = TempDir::new().expect("schemathesis's directory");

    let started = Instant::now();
    let mut requests = 0;
    for (seed, url) in (1..).zip(&urls) {
        let (schemathesis, url, work) = (schemathesis.clone(), url.clone(), work.path().to_owned());
        let run = tokio::task::spawn_blocking(move || run_schemathesis(&schemathesis, &url, &work, seed));
        match run.await.expect("run") {
            Ok(made) => requests += made,
            Err(failures) => panic!("{failures}\nThe voters' warnings:{}", voter_warnings(&cluster)),
        }
    }
    let took = started.elapsed();
    println!("{TEST_NAME}: schemathesis made {requests} requests in {took:?}");
    assert!(requests >= MIN_REQUESTS, "schemathesis made {requests} requests, fewer than {MIN_REQUESTS}");

    assert_all_running(&mut cluster, "under the fuzzer");
    cluster.wait_ready(Duration::from_secs(30)).await.expect("the cluster is still ready");

    // The cluster still computes correct results, whatever the fuzzer enqueued before them.
    for &worker in &workers {
        client.set_worker_draining(&admin_token, worker, false).await.expect("resume a worker");
    }
    let other = ApiClient::new(urls[1].clone());
    let mut expected = BTreeMap::new();
    for case in vectors() {
        let id = client.enqueue(body(&case), case.iterations, None).await.expect("enqueue a vector");
        expected.insert(id, case.result_hex);
    }
    let ids: BTreeSet<u64> = expected.keys().copied().collect();
    let results = wait_for_results(&other, &ids, Duration::from_secs(150)).await;
    for (id, want) in &expected {
        assert_eq!(&results[id], want, "job {id}");
        let view = client.job(*id).await.expect("job");
        assert_eq!(view.state, JobState::Completed);
        assert_eq!(view.result.as_ref(), Some(want));
    }
    assert_all_running(&mut cluster, "computing the vectors");
    cluster.stop(Duration::from_secs(10));
}
