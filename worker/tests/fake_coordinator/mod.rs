//! An in-process fake of the coordinators' worker routes: one in-memory job table served on one
//! or more listeners on 127.0.0.1:0 (two listeners play two coordinators of one cluster). It
//! records every message it receives, so that tests can check what the worker said, and it can
//! be told to forget workers (410), to answer 503, to report leases lost, or to ask for a drain.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use wire::Digest;
use wire::worker::{
    Assignment, CompleteRequest, CompleteResponse, HeartbeatRequest, HeartbeatResponse, LeaseRequest, LeaseResponse,
    RegisterRequest, RegisterResponse, ReleaseRequest, ReleaseResponse, WorkerErrorBody,
};

/// How often the fake asks workers to heartbeat.
pub const HEARTBEAT_MS: u64 = 50;
/// How long the fake says a lease lives (it never expires leases itself).
pub const LEASE_MS: u64 = 3_000;

/// The fake's job table and its record of what workers said.
#[derive(Default)]
pub struct Table {
    next_worker: u64,
    next_job: u64,
    /// Registered workers.
    pub workers: BTreeSet<u64>,
    /// Every registration, with the id it got.
    pub registrations: Vec<(u64, RegisterRequest)>,
    /// Jobs waiting for a worker.
    pub queue: VecDeque<Assignment>,
    /// Leased jobs: job id to (worker, assignment as last checkpointed).
    pub leases: HashMap<u64, (u64, Assignment)>,
    /// Every lease granted: (worker, assignment).
    pub granted: Vec<(u64, Assignment)>,
    /// Recorded results.
    pub completed: HashMap<u64, Digest>,
    /// Every accepted `complete` call.
    pub completions: Vec<CompleteRequest>,
    /// `complete` calls refused with 503 while `refuse_completions` was set.
    pub refused_completions: usize,
    /// Every heartbeat.
    pub heartbeats: Vec<HeartbeatRequest>,
    /// Every release.
    pub releases: Vec<ReleaseRequest>,
    /// Reported as lost in the next heartbeat answer.
    pub lose: Vec<u64>,
    /// Answer heartbeats with `draining: true`.
    pub draining: bool,
    /// Answer `complete` with 503.
    pub refuse_completions: bool,
}

impl Table {
    /// The checkpoints the worker sent for `job`, in order.
    pub fn checkpoints(&self, job: u64) -> Vec<(u64, Digest)> {
        self.heartbeats
            .iter()
            .flat_map(|h| h.progress.iter())
            .filter(|p| p.job == job)
            .map(|p| (p.done, p.digest))
            .collect()
    }
}

struct Shared {
    table: Mutex<Table>,
    changed: Notify,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One endpoint's view: the shared table and whether this endpoint answers 503 to everything.
#[derive(Clone)]
struct Endpoint {
    shared: Arc<Shared>,
    unavailable: Arc<AtomicBool>,
}

/// The fake cluster: a table and its endpoints.
pub struct FakeCoordinator {
    shared: Arc<Shared>,
    urls: Vec<String>,
    unavailable: Vec<Arc<AtomicBool>>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl FakeCoordinator {
    /// One table served on `endpoints` listeners.
    pub async fn start(endpoints: usize) -> FakeCoordinator {
        let shared = Arc::new(Shared { table: Mutex::new(Table::default()), changed: Notify::new() });
        let mut fake = FakeCoordinator { shared: shared.clone(), urls: vec![], unavailable: vec![], servers: vec![] };
        for _ in 0..endpoints {
            let unavailable = Arc::new(AtomicBool::new(false));
            let endpoint = Endpoint { shared: shared.clone(), unavailable: unavailable.clone() };
            let router = Router::new()
                .route(wire::worker::REGISTER, post(register))
                .route(wire::worker::LEASE, post(lease))
                .route(wire::worker::HEARTBEAT, post(heartbeat))
                .route(wire::worker::COMPLETE, post(complete))
                .route(wire::worker::RELEASE, post(release))
                .with_state(endpoint);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
            let addr = listener.local_addr().expect("a local address");
            fake.urls.push(format!("http://{addr}"));
            fake.unavailable.push(unavailable);
            fake.servers.push(tokio::spawn(async move {
                axum::serve(listener, router).await.expect("the fake coordinator serves");
            }));
        }
        fake
    }

    /// The endpoints' base URLs.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Make endpoint `index` answer 503 to everything (or stop doing so).
    pub fn set_unavailable(&self, index: usize, unavailable: bool) {
        self.unavailable[index].store(unavailable, Ordering::Relaxed);
    }

    /// Inspect or change the table.
    pub fn with<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        let result = f(&mut self.shared.table());
        self.shared.changed.notify_waiters();
        result
    }

    /// Queue a job over `body`, as a coordinator's ingest does: first digest, one iteration done.
    pub fn enqueue(&self, body: &[u8], iterations: u64) -> u64 {
        self.enqueue_from(1, wire::chain::first_digest(body), iterations)
    }

    /// Queue a job that resumes from a checkpoint.
    pub fn enqueue_from(&self, done: u64, digest: Digest, iterations: u64) -> u64 {
        self.with(|table| {
            table.next_job += 1;
            let job = table.next_job;
            table.queue.push_back(Assignment { job, iterations, done, digest });
            job
        })
    }

    /// Forget every worker (they get 410 from now on) and requeue their leases from their last
    /// checkpoints, as the real coordinators do with a worker that was silent too long.
    pub fn forget_workers(&self) {
        self.with(|table| {
            table.workers.clear();
            let leases: Vec<Assignment> = table.leases.drain().map(|(_, (_, assignment))| assignment).collect();
            table.queue.extend(leases);
        });
    }

    /// Wait until `condition` holds on the table, or panic after `within`.
    pub async fn wait_for(&self, what: &str, within: Duration, mut condition: impl FnMut(&Table) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.shared.changed.notified();
            if condition(&self.shared.table()) {
                return;
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => panic!("timed out waiting for {what}"),
            }
        }
    }
}

impl Drop for FakeCoordinator {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    rmp_serde::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, &format!("undecodable: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Response {
    let body = rmp_serde::to_vec_named(value).expect("encodable answer");
    ([("content-type", "application/msgpack")], body).into_response()
}

fn error(status: StatusCode, error: &str) -> Response {
    let body = rmp_serde::to_vec_named(&WorkerErrorBody { error: error.to_owned() }).expect("encodable error");
    (status, [("content-type", "application/msgpack")], body).into_response()
}

fn check(endpoint: &Endpoint) -> Result<(), Response> {
    if endpoint.unavailable.load(Ordering::Relaxed) {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "no quorum (fake)"));
    }
    Ok(())
}

fn gone() -> Response {
    error(StatusCode::GONE, "unknown worker: register again")
}

async fn register(State(endpoint): State<Endpoint>, body: Bytes) -> Response {
    if let Err(e) = check(&endpoint) {
        return e;
    }
    let request: RegisterRequest = match decode(&body) {
        Ok(request) => request,
        Err(e) => return e,
    };
    let worker = {
        let mut table = endpoint.shared.table();
        table.next_worker += 1;
        let worker = table.next_worker;
        table.workers.insert(worker);
        table.registrations.push((worker, request));
        worker
    };
    endpoint.shared.changed.notify_waiters();
    reply(&RegisterResponse { worker, lease_ms: LEASE_MS, heartbeat_ms: HEARTBEAT_MS })
}

async fn lease(State(endpoint): State<Endpoint>, body: Bytes) -> Response {
    if let Err(e) = check(&endpoint) {
        return e;
    }
    let request: LeaseRequest = match decode(&body) {
        Ok(request) => request,
        Err(e) => return e,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(request.wait_ms);
    loop {
        let changed = endpoint.shared.changed.notified();
        let jobs = {
            let mut table = endpoint.shared.table();
            if !table.workers.contains(&request.worker) {
                return gone();
            }
            let take = table.queue.len().min(request.max_jobs as usize);
            let jobs: Vec<Assignment> = table.queue.drain(..take).collect();
            for job in &jobs {
                table.leases.insert(job.job, (request.worker, *job));
                table.granted.push((request.worker, *job));
            }
            jobs
        };
        if !jobs.is_empty() {
            endpoint.shared.changed.notify_waiters();
            return reply(&LeaseResponse { jobs });
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => return reply(&LeaseResponse { jobs: vec![] }),
        }
    }
}

async fn heartbeat(State(endpoint): State<Endpoint>, body: Bytes) -> Response {
    if let Err(e) = check(&endpoint) {
        return e;
    }
    let request: HeartbeatRequest = match decode(&body) {
        Ok(request) => request,
        Err(e) => return e,
    };
    let answer = {
        let mut table = endpoint.shared.table();
        if !table.workers.contains(&request.worker) {
            return gone();
        }
        for progress in &request.progress {
            if let Some((holder, assignment)) = table.leases.get_mut(&progress.job)
                && *holder == request.worker
                && progress.done > assignment.done
            {
                assignment.done = progress.done;
                assignment.digest = progress.digest;
            }
        }
        let lost = std::mem::take(&mut table.lose);
        for job in &lost {
            table.leases.remove(job);
        }
        table.heartbeats.push(request);
        HeartbeatResponse { lost, draining: table.draining }
    };
    endpoint.shared.changed.notify_waiters();
    reply(&answer)
}

async fn complete(State(endpoint): State<Endpoint>, body: Bytes) -> Response {
    if let Err(e) = check(&endpoint) {
        return e;
    }
    let request: CompleteRequest = match decode(&body) {
        Ok(request) => request,
        Err(e) => return e,
    };
    let answer = {
        let mut table = endpoint.shared.table();
        if table.refuse_completions {
            table.refused_completions += 1;
            drop(table);
            endpoint.shared.changed.notify_waiters();
            return error(StatusCode::SERVICE_UNAVAILABLE, "refusing completions (fake)");
        }
        let mut answer = CompleteResponse { recorded: 0, duplicate: 0, unknown: 0 };
        for finished in &request.results {
            if table.completed.contains_key(&finished.job) {
                answer.duplicate += 1;
            } else {
                table.leases.remove(&finished.job);
                table.completed.insert(finished.job, finished.result);
                answer.recorded += 1;
            }
        }
        table.completions.push(request);
        answer
    };
    endpoint.shared.changed.notify_waiters();
    reply(&answer)
}

async fn release(State(endpoint): State<Endpoint>, body: Bytes) -> Response {
    if let Err(e) = check(&endpoint) {
        return e;
    }
    let request: ReleaseRequest = match decode(&body) {
        Ok(request) => request,
        Err(e) => return e,
    };
    let requeued = {
        let mut table = endpoint.shared.table();
        let mut requeued = 0;
        for progress in &request.progress {
            if table.leases.get(&progress.job).is_some_and(|(holder, _)| *holder == request.worker)
                && let Some((_, mut assignment)) = table.leases.remove(&progress.job)
            {
                assignment.done = progress.done;
                assignment.digest = progress.digest;
                table.queue.push_back(assignment);
                requeued += 1;
            }
        }
        table.releases.push(request);
        requeued
    };
    endpoint.shared.changed.notify_waiters();
    reply(&ReleaseResponse { requeued })
}
