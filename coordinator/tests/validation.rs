//! Input validation on the router itself (`Router::oneshot`), over one coordinator that is a
//! cluster of one voter: every bad request gets a clear 4xx with a JSON message, and changes
//! nothing. No sockets, no second coordinator, no witness.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clap::Parser;
use coordinator::Coordinator;
use coordinator::config::Config;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The coordinator's cluster secret, which the worker routes require.
const SECRET: &str = "validation-test-secret";

/// A coordinator that is its own cluster (one voter, leading), with small limits.
struct Single {
    _dir: TempDir,
    router: Router,
    shutdown: CancellationToken,
}

impl Single {
    async fn start(extra: &[&str]) -> Single {
        let dir = TempDir::new().expect("temp dir");
        let mut args = vec![
            "coordinator".to_owned(),
            "--id".into(),
            "1".into(),
            // Never contacted: a cluster of one has no peers.
            "--member".into(),
            "1=coordinator@127.0.0.1:9".into(),
            "--data-dir".into(),
            dir.path().join("c1").display().to_string(),
            "--initialize".into(),
            "--cluster-secret".into(),
            SECRET.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let shutdown = CancellationToken::new();
        let coordinator =
            Coordinator::start(Config::parse_from(args), shutdown.child_token()).await.expect("start a coordinator");
        coordinator.app.node.read_barrier().await.expect("a cluster of one leads at once");
        Single { _dir: dir, router: coordinator::router(coordinator.app), shutdown }
    }

    /// Send one request; return its status and body.
    async fn send(&self, request: Request<Body>) -> (StatusCode, String) {
        let response = self.router.clone().oneshot(request).await.expect("the router always answers");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("a body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

impl Drop for Single {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn request(method: Method, uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder().method(method).uri(uri).body(body.into()).expect("a valid request")
}

/// `request` with the cluster secret, as a worker sends it.
fn with_secret(mut request: Request<Body>) -> Request<Body> {
    request.headers_mut().insert(wire::SECRET_HEADER, SECRET.parse().expect("a valid header value"));
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let single = Single::start(&["--max-iterations", "1000", "--max-body-bytes", "1024"]).await;
    let x20 = || "x".repeat(20);
    let keyed = Request::builder()
        .method(Method::PUT)
        .uri("/enqueue?iterations=1")
        .header("Idempotency-Key", "k".repeat(300))
        .body(Body::from("x"))
        .expect("a valid request");
    let multipart = Request::builder()
        .method(Method::PUT)
        .uri("/enqueue?iterations=1")
        .header("content-type", "multipart/form-data; boundary=zz")
        .body(Body::from("garbage"))
        .expect("a valid request");
    let form = |parts: &[&str]| {
        let mut body = String::new();
        for (i, content) in parts.iter().enumerate() {
            body.push_str(&format!(
                "--zz\r\nContent-Disposition: form-data; name=\"f{i}\"; filename=\"f{i}\"\r\n\r\n{content}\r\n"
            ));
        }
        body.push_str("--zz--\r\n");
        Request::builder()
            .method(Method::PUT)
            .uri("/enqueue?iterations=1")
            .header("content-type", "multipart/form-data; boundary=zz")
            .body(Body::from(body))
            .expect("a valid request")
    };
    let register = |name: String, cores: u32, instance_id: Option<String>, launch_token: Option<String>| {
        let message = wire::worker::RegisterRequest { name, cores, instance_id, witness: false, launch_token };
        with_secret(request(Method::POST, "/worker/register", rmp_serde::to_vec_named(&message).expect("encode")))
    };
    let heartbeat = wire::worker::HeartbeatRequest { worker: 4242, progress: vec![], hashes_per_s: 0 };
    let heartbeat = rmp_serde::to_vec_named(&heartbeat).expect("encode");
    let cases: Vec<(Request<Body>, u16, &str)> = vec![
        (form(&[]), 400, "no part"),
        (form(&["first part", "second part"]), 400, "exactly one part"),
        (request(Method::GET, "/jobs/99999999999999999999999", Body::empty()), 400, "positive integer"),
        (register("w".into(), 0, None, None), 400, ""),
        (register("w".into(), 1_000_000, None, None), 400, ""),
        (register("w".repeat(300), 1, None, None), 400, ""),
        (register("w".into(), 1, Some("i".repeat(10_000)), None), 400, ""),
        (register("w".into(), 1, None, Some("t".repeat(10_000))), 400, ""),
        (with_secret(request(Method::POST, "/worker/heartbeat", heartbeat)), 410, ""),
        (request(Method::PUT, "/enqueue", x20()), 400, "iterations is required"),
        (request(Method::PUT, "/enqueue?iterations=abc", x20()), 400, "non-negative integer"),
        (request(Method::PUT, "/enqueue?iterations=-1", x20()), 400, "non-negative integer"),
        (request(Method::PUT, "/enqueue?iterations=0", x20()), 400, "at least 1"),
        (request(Method::PUT, "/enqueue?iterations=1001", x20()), 400, "at most 1000"),
        (request(Method::PUT, "/enqueue?iterations=99999999999999999999999", "x"), 400, "integer"),
        (request(Method::PUT, "/enqueue?iterations=1", Body::empty()), 400, "body is empty"),
        (request(Method::PUT, "/enqueue?iterations=1&reuse=maybe", x20()), 400, "reuse must be true or false"),
        (request(Method::PUT, "/enqueue?iterations=1", vec![7u8; 1025]), 413, "larger than the limit"),
        (keyed, 400, "Idempotency-Key"),
        (request(Method::POST, "/pullCompleted?top=0", Body::empty()), 400, "top must be between"),
        (request(Method::POST, "/pullCompleted?top=10001", Body::empty()), 400, "top must be between"),
        (request(Method::POST, "/pullCompleted?top=x", Body::empty()), 400, "non-negative integer"),
        (request(Method::POST, "/pullCompleted?after=-3", Body::empty()), 400, "non-negative integer"),
        (request(Method::POST, "/pullCompleted?after=1", Body::empty()), 400, "past the newest completion"),
        (request(Method::GET, "/jobs/abc", Body::empty()), 400, "positive integer"),
        (request(Method::GET, "/jobs/424242", Body::empty()), 404, "no job"),
        (request(Method::GET, "/nope", Body::empty()), 404, "no such route"),
        (request(Method::GET, "/enqueue?iterations=1", Body::empty()), 405, "method not allowed"),
        (multipart, 400, "multipart"),
        (with_secret(request(Method::POST, "/worker/lease", "not msgpack")), 400, ""),
        (request(Method::POST, "/admin/failover", Body::empty()), 401, "admin"),
        (request(Method::POST, "/admin/workers/1/drain", Body::empty()), 401, "admin"),
    ];
    for (request, want, needle) in cases {
        let what = format!("{} {}", request.method(), request.uri());
        let (status, text) = single.send(request).await;
        assert_eq!(status.as_u16(), want, "{what}: {text}");
        if needle.is_empty() {
            continue;
        }
        let body: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
        let error = body["error"].as_str().unwrap_or_else(|| panic!("{what}: no error field: {text}"));
        assert!(error.contains(needle), "{what}: {error:?} should mention {needle:?}");
    }
    // Nothing was enqueued by any of that, and the node still serves.
    let (status, text) = single.send(request(Method::POST, "/pullCompleted?top=10", Body::empty())).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let pulled: wire::api::PullResponse = serde_json::from_str(&text).expect("a page");
    assert_eq!(pulled.last_seq, 0);
    let (status, text) = single.send(request(Method::GET, "/cluster", Body::empty())).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let view: wire::api::ClusterView = serde_json::from_str(&text).expect("a cluster view");
    assert_eq!(view.queued, 0, "bad requests enqueued something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_check_the_token_before_anything_else() {
    let single = Single::start(&["--admin-token", "the-admin-token"]).await;
    let admin = |uri: &str, token: Option<&str>, body: &'static str| {
        let mut builder = Request::builder().method(Method::POST).uri(uri).header("content-type", "application/json");
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        builder.body(Body::from(body)).expect("a valid request")
    };
    let cases = [
        (admin("/admin/failover", None, ""), 401, "admin token"),
        (admin("/admin/failover", Some("the-admin-tokeN"), ""), 401, "admin token"),
        (admin("/admin/failover?to=x", Some("the-admin-token"), ""), 400, "to must be a node id"),
        (admin("/admin/failover", Some("the-admin-token"), ""), 409, "no eligible coordinator"),
        (admin("/admin/members/replace", Some("the-admin-token"), "{}"), 400, "expected a JSON body"),
        (
            admin(
                "/admin/members/replace",
                Some("the-admin-token"),
                r#"{"remove":2,"add":4,"role":"boss","addr":"a:1"}"#,
            ),
            400,
            "coordinator or witness",
        ),
        (
            admin(
                "/admin/members/replace",
                Some("the-admin-token"),
                r#"{"remove":2,"add":4,"role":"witness","addr":"a"}"#,
            ),
            400,
            "HOST:PORT",
        ),
        (admin("/admin/workers/x/drain", Some("the-admin-token"), ""), 400, "non-negative integer"),
        (admin("/admin/workers/7/drain", Some("the-admin-token"), ""), 404, "no worker 7"),
    ];
    for (request, want, needle) in cases {
        let what = format!("{} {}", request.method(), request.uri());
        let (status, text) = single.send(request).await;
        assert_eq!(status.as_u16(), want, "{what}: {text}");
        let body: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
        let error = body["error"].as_str().unwrap_or_else(|| panic!("{what}: no error field: {text}"));
        assert!(error.contains(needle), "{what}: {error:?} should mention {needle:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_of_a_256_core_worker_holding_256_jobs_per_core_is_accepted() {
    // What the body limits are sized for (wire::worker::MAX_BODY_BYTES): every job such a worker
    // may hold, each with a checkpoint, in one heartbeat (about 7 MiB).
    let single = Single::start(&[]).await;
    let cores = 256u32;
    // The worker routes answer MessagePack.
    let response = single
        .router
        .clone()
        .oneshot(with_secret(request(
            Method::POST,
            "/worker/register",
            rmp_serde::to_vec_named(&wire::worker::RegisterRequest {
                name: "big".into(),
                cores,
                instance_id: None,
                witness: false,
                launch_token: None,
            })
            .expect("encode"),
        )))
        .await
        .expect("an answer");
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("a body");
    let registered: wire::worker::RegisterResponse = rmp_serde::from_slice(&bytes).expect("a register answer");
    let held = (cores * wire::worker::MAX_JOBS_PER_CORE) as u64;
    let progress: Vec<wire::worker::Progress> = (1..=held)
        .map(|job| wire::worker::Progress { job, done: job * 1_000, digest: wire::Digest([0xab; 64]) })
        .collect();
    let heartbeat = wire::worker::HeartbeatRequest { worker: registered.worker, progress, hashes_per_s: 1 << 30 };
    let heartbeat = rmp_serde::to_vec_named(&heartbeat).expect("encode");
    assert!(
        heartbeat.len() > 4 << 20,
        "{} bytes: over the old 2 MiB limit and the old 4 MiB proposal",
        heartbeat.len()
    );
    let response = single
        .router
        .clone()
        .oneshot(with_secret(request(Method::POST, "/worker/heartbeat", heartbeat)))
        .await
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20).await.expect("a body");
    let answer: wire::worker::HeartbeatResponse = rmp_serde::from_slice(&bytes).expect("a heartbeat answer");
    // None of those jobs exists: each is reported lost, so the worker stops it.
    assert_eq!(answer.lost.len() as u64, held);
}
