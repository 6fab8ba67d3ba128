//! Helpers shared by the end-to-end test files: the reference vectors, an independent chain,
//! and the local cluster's layout for tests (free ports, one core per worker).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use deploy::local::{LocalCluster, LocalOptions, random_token};
use sha2::{Digest as _, Sha256, Sha512};
use tempfile::TempDir;
use wire::api::JobState;
use wire::client::ApiClient;

pub mod history;
pub mod netns;
pub mod sshd;

/// The reference cases, computed by Python's hashlib (copied from shared/vectors).
#[derive(serde::Deserialize)]
pub struct Vectors {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize, Clone)]
pub struct Case {
    pub length: usize,
    pub seed: u64,
    pub iterations: u64,
    pub body_sha256: String,
    pub result_hex: String,
}

pub fn vectors() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/sha512_chain.json");
    let text = std::fs::read_to_string(path).expect("testdata/sha512_chain.json");
    serde_json::from_str::<Vectors>(&text).expect("vectors").cases
}

/// The extra reference results (`testdata/sha512_chain_more.json`, computed by Python's
/// hashlib like the others): one body at more iteration counts, for the reuse tests.
pub fn more_vectors() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/sha512_chain_more.json");
    let text = std::fs::read_to_string(path).expect("testdata/sha512_chain_more.json");
    serde_json::from_str::<Vectors>(&text).expect("vectors").cases
}

/// byte i = (i * 31 + seed * 7 + (i >> 8)) mod 251, as the vectors' description says.
pub fn body(case: &Case) -> Vec<u8> {
    let body: Vec<u8> =
        (0..case.length).map(|i| ((i as u64 * 31 + case.seed * 7 + (i as u64 >> 8)) % 251) as u8).collect();
    assert_eq!(hex(&Sha256::digest(&body)), case.body_sha256, "body generator disagrees with the vectors");
    body
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An independent chain (not the code under test) for jobs beyond the vectors.
pub fn reference_chain(body: &[u8], iterations: u64) -> String {
    let mut out: [u8; 64] = Sha512::digest(body).into();
    for _ in 1..iterations {
        out = Sha512::digest(out).into();
    }
    hex(&out)
}

/// Where the coordinator and worker binaries are (`target/debug`), built once per test binary:
/// `cargo test -p deploy` alone would otherwise run whatever was built last.
pub fn bin_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary");
        let dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir").to_owned();
        deploy::local::build_binaries(&dir).expect("building the coordinator and worker");
        dir
    })
    .clone()
}

pub fn options(dir: &TempDir, workers: usize) -> LocalOptions {
    let ports = LocalOptions::free_ports().expect("ports");
    let secret = Some(random_token().expect("secret"));
    LocalOptions {
        workers,
        worker_cores: Some(1),
        coordinator_args: vec!["--lease-ms".into(), "1500".into()],
        ..LocalOptions::on_loopback(bin_dir(), dir.path().to_owned(), ports, None, secret)
    }
}

pub async fn start(dir: &TempDir, workers: usize) -> LocalCluster {
    let mut cluster = LocalCluster::start(options(dir, workers)).expect("start the local cluster");
    cluster.wait_ready(Duration::from_secs(60)).await.expect("cluster ready");
    cluster
}

/// Wait until `ids` are all completed as seen from `client`; return id -> result.
pub async fn wait_for_results(client: &ApiClient, ids: &BTreeSet<u64>, timeout: Duration) -> BTreeMap<u64, String> {
    let deadline = Instant::now() + timeout;
    let mut results = BTreeMap::new();
    let mut cursor = 0;
    loop {
        if let Ok(page) = client.pull_after(cursor, 1_000).await {
            for job in page.jobs {
                assert!(
                    results.insert(job.id, job.result).is_none(),
                    "job {} appeared twice in the cursor walk",
                    job.id
                );
            }
            cursor = page.cursor;
        }
        if ids.iter().all(|id| results.contains_key(id)) {
            return results;
        }
        if Instant::now() >= deadline {
            let mut missing = Vec::new();
            for id in ids.iter().filter(|id| !results.contains_key(id)).take(5) {
                missing.push(format!("{id}: {:?}", client.job(*id).await));
            }
            panic!("only {} of {} results within {timeout:?}; missing: {missing:?}", results.len(), ids.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait (up to 60 s) until job `id` runs with a checkpoint past its first iteration, then
/// SIGKILL the process of the worker holding it (the witness runs the first worker). Returns
/// the checkpoint, and the index in `clients` of a coordinator to ask afterwards.
pub async fn kill_the_holder_once_checkpointed(
    cluster: &mut LocalCluster,
    clients: &[ApiClient; 2],
    id: u64,
) -> (u64, usize) {
    let (holder, checkpoint) = wait_for("a checkpoint", Duration::from_secs(60), || async {
        let view = clients[1].job(id).await.expect("job");
        assert!(view.state != JobState::Completed, "the job finished before a worker could be killed");
        (view.state == JobState::Running && view.iterations_done > 1)
            .then(|| (view.worker.expect("running jobs have a worker"), view.iterations_done))
    })
    .await;
    let workers = clients[0].cluster().await.expect("cluster").workers;
    let name = workers.into_iter().find(|w| w.id == holder).expect("the holder is registered").name;
    let process = if name == "witness-worker" { "witness".to_owned() } else { name };
    assert!(cluster.process(&process).pid().is_some(), "{process} was running");
    // SIGKILL, and reap it.
    cluster.process(&process).kill();
    (checkpoint, if process == "witness" { 0 } else { 1 })
}

/// Poll `check` every 50 ms until it gives a value; fail the test after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
