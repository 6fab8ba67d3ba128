//! The bootstrap of a worker instance, for real: the user-data script the leader sends to EC2
//! (moto's server on 127.0.0.1), rendered for a directory of this machine standing for the
//! instance, run by bash. It asks a metadata service (a fake one here) for the instance id,
//! downloads the worker binary from the coordinators (`GET /worker/binary`, with the launch's join
//! secret), checks its SHA-256 and only then runs it; the worker exchanges its join secret for the
//! cluster secret, registers as that instance and computes a correct result. A tampered binary is
//! refused and nothing runs.
//!
//! Run by `scripts/test` (`cargo test -p coordinator --features ec2 --test ec2_bootstrap`); skipped
//! where moto is not installed, unless `CI` or `TANDEM_REQUIRE_MOTO` is set.
#![cfg(feature = "ec2")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use deploy::provider::ec2::Ec2Options;
use deploy::provider::ec2::launch::{BootTarget, CLUSTER_TAG, FROM_COORDINATORS, LAUNCH_TOKEN_TAG, ROLE_TAG};
use tempfile::TempDir;

#[path = "../../deploy/tests/common/mod.rs"]
mod common;
#[path = "support/ec2_coordinators.rs"]
mod ec2_coordinators;
#[path = "../../deploy/tests/common/moto.rs"]
mod moto;

use common::{body, vectors, wait_for};
use ec2_coordinators::{Coordinators, SECRET};
use moto::{INSTANCE_PROFILE, REGION, World, tag};

const TEST_NAME: &str = "a_launched_instance_fetches_checks_and_runs_the_served_worker";
const CLUSTER: &str = "booted";
/// The session token the fake metadata service hands out and then requires.
const IMDS_TOKEN: &str = "imds-session-token-of-the-test";

#[test]
fn a_launched_instance_fetches_checks_and_runs_the_served_worker() {
    let Some(moto_server) = moto::in_child_with_dummy_credentials(TEST_NAME) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(scenario(&moto_server));
}

/// The worker binary of this workspace's dev build, built if need be (only the worker: the
/// coordinator beside it is this test's own `ec2` build).
fn worker_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_coordinator")).with_file_name("worker");
    if let Ok(cargo) = std::env::var("CARGO") {
        let status = Command::new(cargo).args(["build", "-p", "worker", "--bin", "worker"]).status().expect("cargo");
        assert!(status.success(), "building the worker failed");
    }
    assert!(path.is_file(), "{} is missing: cargo build -p worker", path.display());
    path
}

/// What the fake metadata service and the tampering server answer with.
struct Fakes {
    instance_id: String,
    tampered_binary: Vec<u8>,
}

/// The instance metadata service (IMDSv2: a session token, then the instance id with it), and a
/// "coordinator" serving a tampered worker binary, on one free port of 127.0.0.1.
async fn start_fakes(fakes: Fakes) -> String {
    let app = Router::new()
        .route("/latest/api/token", put(|| async { IMDS_TOKEN }))
        .route(
            "/latest/meta-data/instance-id",
            get(|State(fakes): State<Arc<Fakes>>, headers: HeaderMap| async move {
                match headers.get("x-aws-ec2-metadata-token").and_then(|v| v.to_str().ok()) {
                    Some(IMDS_TOKEN) => (StatusCode::OK, fakes.instance_id.clone()),
                    _ => (StatusCode::UNAUTHORIZED, String::new()),
                }
            }),
        )
        .route(
            wire::worker::BINARY,
            get(|State(fakes): State<Arc<Fakes>>| async move { fakes.tampered_binary.clone() }),
        )
        .with_state(Arc::new(fakes));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A rendered script running under bash, killed on drop (it `exec`s the worker, so this is the
/// worker once the script is through).
struct Boot {
    child: Child,
    log: PathBuf,
}

impl Boot {
    fn start(root: &Path, script: &str) -> Boot {
        std::fs::create_dir_all(root).expect("the instance's root");
        let path = root.join("user-data.sh");
        std::fs::write(&path, script).expect("write the script");
        let log = root.join("boot.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new("bash")
            .arg(&path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("bash");
        Boot { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The script's exit status, once it ended, within `timeout`.
    async fn ended(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the script still runs after {timeout:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {}:\n{}", self.log.display(), self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The provider's settings, as the coordinators' flags give them.
fn ec2_options(world: &World, coordinators: &[String]) -> Ec2Options {
    Ec2Options {
        cluster_name: Some(CLUSTER.into()),
        ami: Some(world.ami.clone()),
        instance_type: "c7i.large".into(),
        subnet: Some(world.subnet.clone()),
        security_groups: vec![world.security_group.clone()],
        instance_profile: Some(INSTANCE_PROFILE.into()),
        region: Some(REGION.into()),
        endpoint_url: Some(world.moto.url.clone()),
        worker_binary: FROM_COORDINATORS.into(),
        worker_binary_sha256: None,
        coordinators: coordinators.to_vec(),
        worker_give_up_after_ms: 900_000,
        witness_port: 8090,
    }
}

async fn scenario(moto_server: &Path) {
    let world = World::set_up(moto_server).await;
    let dir = TempDir::new().expect("temp dir");
    // The binary the coordinators serve: a copy, so that a rebuild meanwhile changes nothing.
    let served = dir.path().join("served-worker");
    std::fs::copy(worker_binary(), &served).expect("copy the worker binary");
    let genuine = std::fs::read(&served).expect("read it");
    let sha256 = wire::sha256_hex(&genuine);

    let addrs: [String; 3] =
        std::array::from_fn(|_| format!("127.0.0.1:{}", deploy::local::free_port().expect("a free port")));
    let served_flag = served.display().to_string();
    let flags = [
        "--worker-binary-file",
        &served_flag,
        "--ec2-worker-binary",
        FROM_COORDINATORS,
        "--min-workers",
        "1",
        "--max-workers",
        "1",
        "--scaler-worker-cores",
        "1",
        "--boot-timeout-ms",
        "300000",
    ];
    let coordinators = Coordinators::start(dir.path(), &world, &addrs, CLUSTER, &flags);
    coordinators.wait_ready().await;

    println!("1. the leader launches the minimum's worker; its user-data is the script rendered here");
    let instance = wait_for("the leader's launch in moto", Duration::from_secs(60), || async {
        world
            .all_tagged(CLUSTER)
            .await
            .into_iter()
            .find(|i| tag(i, ROLE_TAG) == Some("worker") && tag(i, CLUSTER_TAG) == Some(CLUSTER))
    })
    .await;
    let instance_id = instance.instance_id().expect("an id").to_owned();
    let token = tag(&instance, LAUNCH_TOKEN_TAG).expect("a launch token").to_owned();
    let user_data = world.user_data(&instance_id).await;
    let join_secret =
        user_data.lines().find_map(|l| l.strip_prefix("TANDEM_JOIN_TOKEN=")).expect("a join secret").to_owned();
    let launch = ec2_options(&world, &coordinators.urls)
        .worker_launch(Some(SECRET.into()), None, Some(&sha256))
        .expect("the coordinators' settings");
    let rendered = launch.render(&BootTarget::instance(), &token, None, &join_secret).expect("rendered");
    assert_eq!(rendered, user_data, "the leader's user-data is the launch rendered for an instance");
    assert!(user_data.contains(&format!("echo '{sha256}  /opt/tandem/bin/worker.download' | sha256sum --check")));

    println!("2. /worker/binary: only to the launch's join secret or the cluster secret");
    let http = reqwest::Client::new();
    let binary_url = format!("{}{}", coordinators.urls[0], wire::worker::BINARY);
    let status = |request: reqwest::RequestBuilder| async move { request.send().await.expect("GET").status() };
    assert_eq!(status(http.get(&binary_url)).await, StatusCode::FORBIDDEN, "no credential");
    let wrong = http
        .get(&binary_url)
        .header(wire::worker::LAUNCH_TOKEN_HEADER, &token)
        .bearer_auth("tandem-join-not-the-right-one-0000");
    assert_eq!(status(wrong).await, StatusCode::FORBIDDEN, "a wrong join secret");
    let by_secret = http.get(&binary_url).header(wire::SECRET_HEADER, SECRET).send().await.expect("GET");
    assert_eq!(by_secret.status(), StatusCode::OK);
    assert_eq!(wire::sha256_hex(&by_secret.bytes().await.expect("the binary")), sha256);

    let mut flipped = genuine.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let fakes = start_fakes(Fakes { instance_id: instance_id.clone(), tampered_binary: flipped }).await;
    let metadata_url = format!("{fakes}/latest");

    println!("3. a tampered binary is refused, and nothing runs");
    let tampering = {
        let mut settings = launch.clone();
        settings.coordinators = vec![fakes.clone()];
        settings
    };
    let root = dir.path().join("instance-tampered");
    let script = tampering
        .render(&BootTarget::local(&root.display().to_string(), &metadata_url), &token, None, &join_secret)
        .expect("rendered");
    let mut boot = Boot::start(&root, &script);
    let exit = boot.ended(Duration::from_secs(60)).await;
    assert!(!exit.success(), "the script went on with a tampered binary:\n{}", boot.log());
    assert!(boot.log().contains(&format!("does not have SHA-256 {sha256}: nothing runs")), "{}", boot.log());
    for leftover in ["opt/tandem/bin/worker", "opt/tandem/bin/worker.download"] {
        assert!(!root.join(leftover).exists(), "{leftover} left on the tampered instance");
    }
    let view = coordinators.client(0).cluster().await.expect("/cluster");
    assert!(view.workers.iter().all(|w| w.instance_id.as_deref() != Some(&instance_id)), "a worker registered");

    println!("4. the genuine bootstrap: fetched, checked, started; it joins and computes");
    let root = dir.path().join("instance");
    let script = launch
        .render(&BootTarget::local(&root.display().to_string(), &metadata_url), &token, None, &join_secret)
        .expect("rendered");
    let _boot = Boot::start(&root, &script);
    let client = coordinators.client(1);
    wait_for("the instance's worker registered", Duration::from_secs(60), || async {
        let view = client.cluster().await.ok()?;
        view.workers.iter().any(|w| w.instance_id.as_deref() == Some(instance_id.as_str())).then_some(())
    })
    .await;
    assert_eq!(std::fs::read(root.join("opt/tandem/bin/worker")).expect("installed"), genuine);
    let case = vectors().into_iter().find(|c| c.iterations >= 1_000).expect("a vector of 1,000 iterations or more");
    let id = client.enqueue(body(&case), case.iterations, None).await.expect("enqueue");
    let results = common::wait_for_results(&client, &[id].into(), Duration::from_secs(60)).await;
    assert_eq!(results[&id], case.result_hex, "the booted worker's result against the reference vector");
    // The join secret was exchanged and the launch registered: nothing is served for it any more
    // (no launch in flight has that token).
    let used = http.get(&binary_url).header(wire::worker::LAUNCH_TOKEN_HEADER, &token).bearer_auth(&join_secret);
    assert_eq!(status(used).await, StatusCode::FORBIDDEN, "the join secret of a registered launch");
}
