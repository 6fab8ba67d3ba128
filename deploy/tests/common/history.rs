//! A Jepsen-style workload and checker for the fault-injection suite.
//!
//! Writers enqueue self-describing jobs (the body names the job; its expected result is computed
//! here by an independent chain) on both coordinators, retrying with the same Idempotency-Key
//! and switching coordinators on failure; every acknowledgement and every unresolved attempt is
//! recorded. Readers walk `pullCompleted` cursors and re-read already-seen jobs with
//! `GET /jobs/{id}` on both nodes, recording every observation. After the faults are healed and
//! the queue drained, [`History::check`] checks the whole history:
//!
//! 1. every acknowledged job has a completed result (nothing lost);
//! 2. no result belongs to a job that was never enqueued (no phantom);
//! 3. every result equals the independent chain;
//! 4. one result per job id, never changing, one job per completion sequence number;
//! 5. a result seen by any client is in every read that started later, on either node;
//! 6. an enqueue retried or left unresolved by a timeout created at most one job;
//! 8. executions per job are reported (re-execution is allowed, a second result is not).
//!
//! (7, availability with one voter down and none with two down, is checked by the scenarios.)

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wire::api::JobState;
use wire::client::ApiClient;

use super::reference_chain;

/// Bytes of each job's body (its key, padded).
const BODY_BYTES: usize = 2_048;
/// Attempts per enqueue before it is left unresolved.
const MAX_ATTEMPTS: usize = 6;

/// One enqueue as the client saw it.
#[derive(Clone, Debug)]
pub struct Op {
    /// Its Idempotency-Key, also the start of its body.
    pub key: String,
    /// The expected result, from the test's own chain.
    pub expected: String,
    /// When it was first sent.
    pub sent: Instant,
    /// The id and the time of the acknowledgement, if it was acknowledged.
    pub acked: Option<(u64, Instant)>,
    /// Requests made (retries included).
    pub attempts: usize,
}

/// One read that returned a completed result.
#[derive(Clone, Debug)]
struct Observation {
    id: u64,
    result: String,
}

#[derive(Default)]
struct Log {
    ops: Vec<Op>,
    /// id -> (result, seq if known, when it was first seen)
    seen: HashMap<u64, (String, Option<u64>, Instant)>,
    /// seq -> id
    seqs: BTreeMap<u64, u64>,
    observations: Vec<Observation>,
    violations: Vec<String>,
    reads: u64,
}

/// The running workload: writers and readers against both coordinators.
pub struct Workload {
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    clients: Vec<ApiClient>,
    started: Instant,
}

/// The body of the job with `key`.
pub fn body_of(key: &str) -> Vec<u8> {
    let mut body = key.as_bytes().to_vec();
    body.resize(BODY_BYTES, b'.');
    body
}

/// Iterations for the job with `key`: a few thousand at most, varied.
fn iterations_of(key: &str) -> u64 {
    1 + key.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))) % 3_000
}

fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

impl Workload {
    /// Start `writers` writers and `readers` readers against `urls` (both coordinators).
    pub fn start(name: &str, urls: &[String], writers: usize, readers: usize) -> Workload {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(16)
            .build()
            .expect("client");
        let clients: Vec<ApiClient> = urls.iter().map(|u| ApiClient::with_http(http.clone(), u.clone())).collect();
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (clients, log, stop, name) = (clients.clone(), log.clone(), stop.clone(), name.to_owned());
            tasks.push(tokio::spawn(async move { writer(name, w, clients, log, stop).await }));
        }
        for r in 0..readers {
            let (clients, log, stop) = (clients.clone(), log.clone(), stop.clone());
            tasks.push(tokio::spawn(async move { reader(r, clients, log, stop).await }));
        }
        Workload { log, stop, tasks, clients, started: Instant::now() }
    }

    /// Acknowledgements so far.
    pub fn acked(&self) -> usize {
        lock(&self.log).ops.iter().filter(|op| op.acked.is_some()).count()
    }

    /// Ops first sent in `[from, to)` that were acknowledged before `until`.
    pub fn acked_between(&self, from: Instant, to: Instant, until: Instant) -> usize {
        lock(&self.log)
            .ops
            .iter()
            .filter(|op| op.sent >= from && op.sent < to && op.acked.is_some_and(|(_, at)| at < until))
            .count()
    }

    /// Enqueues acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        lock(&self.log).ops.iter().filter(|op| op.acked.is_some()).count()
    }

    /// Acknowledgements received in `[from, to)`.
    pub fn acks_received_between(&self, from: Instant, to: Instant) -> usize {
        lock(&self.log).ops.iter().filter(|op| op.acked.is_some_and(|(_, at)| at >= from && at < to)).count()
    }

    /// Stop the writers and readers, wait until every acknowledged job's result is visible on
    /// every node in `live` (or `drain` passes), then check the whole history.
    pub async fn finish(mut self, scenario: &str, drain: Duration, live: &[usize]) -> Summary {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        let fault_phase = self.started.elapsed();
        let acked: BTreeMap<u64, String> =
            lock(&self.log).ops.iter().filter_map(|op| op.acked.map(|(id, _)| (id, op.expected.clone()))).collect();
        // Drain: walk the completions on each node until every acknowledged job is there.
        let deadline = Instant::now() + drain;
        let clients: Vec<&ApiClient> = live.iter().map(|node| &self.clients[*node]).collect();
        let mut walks: Vec<BTreeMap<u64, (u64, String)>> = vec![BTreeMap::new(); clients.len()];
        let mut cursors = vec![0u64; clients.len()];
        loop {
            for (i, client) in clients.iter().enumerate() {
                while let Ok(page) = client.pull_after(cursors[i], 10_000).await {
                    if page.jobs.is_empty() {
                        break;
                    }
                    for job in page.jobs {
                        walks[i].insert(job.seq, (job.id, job.result));
                    }
                    cursors[i] = page.cursor;
                }
            }
            let complete = walks.iter().all(|walk| {
                let ids: std::collections::HashSet<u64> = walk.values().map(|(id, _)| *id).collect();
                acked.keys().all(|id| ids.contains(id))
            });
            if complete || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Executions: attempts recorded on each acknowledged job.
        let mut executions = BTreeMap::<u32, usize>::new();
        for id in acked.keys() {
            if let Ok(view) = clients[0].job(*id).await
                && view.state == JobState::Completed
            {
                *executions.entry(view.attempts + 1).or_default() += 1;
            }
        }
        let log = lock(&self.log);
        check(scenario, &log, &walks, executions, fault_phase)
    }
}

async fn writer(name: String, w: usize, clients: Vec<ApiClient>, log: Arc<Mutex<Log>>, stop: Arc<AtomicBool>) {
    let mut current = w % clients.len();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{name}/w{w}/{n}");
        n += 1;
        let body = body_of(&key);
        let iterations = iterations_of(&key);
        let index = {
            let mut log = lock(&log);
            log.ops.push(Op {
                key: key.clone(),
                expected: reference_chain(&body, iterations),
                sent: Instant::now(),
                acked: None,
                attempts: 0,
            });
            log.ops.len() - 1
        };
        for attempt in 1..=MAX_ATTEMPTS {
            let answer = clients[current].enqueue(body.clone(), iterations, Some(&key)).await;
            let acked = answer.as_ref().ok().map(|id| (*id, Instant::now()));
            {
                let mut log = lock(&log);
                log.ops[index].attempts = attempt;
                log.ops[index].acked = acked;
            }
            if acked.is_some() {
                break;
            }
            current = (current + 1) % clients.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn reader(r: usize, clients: Vec<ApiClient>, log: Arc<Mutex<Log>>, stop: Arc<AtomicBool>) {
    let mut cursor = 0u64;
    let mut turn = r;
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        let node = turn % clients.len();
        let client = &clients[node];
        // A cursor walk: the next page must continue exactly where the last one ended.
        if let Ok(page) = client.pull_after(cursor, 500).await {
            let received = Instant::now();
            let mut log = lock(&log);
            log.reads += 1;
            let mut expected_seq = cursor + 1;
            for job in page.jobs {
                if job.seq != expected_seq {
                    log.violations.push(format!(
                        "node {node}: cursor walk after {cursor} jumped to seq {} (expected {expected_seq})",
                        job.seq
                    ));
                }
                expected_seq = job.seq + 1;
                observe(&mut log, node, job.id, &job.result, Some(job.seq), received);
                cursor = job.seq;
            }
        }
        // Re-read up to three jobs already seen by anyone: every read that starts after a
        // result was seen must show it.
        let picks: Vec<(u64, String, Instant)> = {
            let log = lock(&log);
            let len = log.observations.len();
            (0..3.min(len))
                .map(|k| {
                    let o = &log.observations[(turn * 7919 + k * 104_729) % len];
                    (o.id, o.result.clone(), log.seen[&o.id].2)
                })
                .collect()
        };
        for (id, result, first_seen) in picks {
            let sent = Instant::now();
            match client.job(id).await {
                Ok(view) => {
                    let mut log = lock(&log);
                    log.reads += 1;
                    match &view.result {
                        Some(got) => observe(&mut log, node, id, got, None, Instant::now()),
                        None if sent > first_seen => log.violations.push(format!(
                            "node {node}: job {id} was seen completed, a later read says {:?}",
                            view.state
                        )),
                        None => {}
                    }
                    if view.result.as_ref().is_some_and(|got| *got != result) {
                        log.violations.push(format!("node {node}: job {id}'s result changed"));
                    }
                }
                Err(e) if e.status() == Some(404) && sent > first_seen => {
                    lock(&log).violations.push(format!("node {node}: job {id} was seen completed, now 404"));
                }
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn observe(log: &mut Log, node: usize, id: u64, result: &str, seq: Option<u64>, at: Instant) {
    log.observations.push(Observation { id, result: result.to_owned() });
    match log.seen.get_mut(&id) {
        Some((first, first_seq, _)) => {
            if first != result {
                log.violations.push(format!("node {node}: job {id} has two results"));
            }
            if let (Some(a), Some(b)) = (*first_seq, seq)
                && a != b
            {
                log.violations.push(format!("node {node}: job {id} at seq {b}, earlier at seq {a}"));
            }
            if first_seq.is_none() {
                *first_seq = seq;
            }
        }
        None => {
            log.seen.insert(id, (result.to_owned(), seq, at));
        }
    }
    if let Some(seq) = seq {
        match log.seqs.get(&seq) {
            Some(other) if *other != id => {
                log.violations.push(format!("node {node}: seq {seq} is job {id}, earlier job {other}"));
            }
            Some(_) => {}
            None => {
                log.seqs.insert(seq, id);
            }
        }
    }
}

/// One scenario's figures.
#[derive(Debug)]
pub struct Summary {
    /// The scenario's name.
    pub scenario: String,
    /// Enqueues acknowledged.
    pub acknowledged: usize,
    /// Enqueues left unresolved (never acknowledged after every retry).
    pub unresolved: usize,
    /// Distinct jobs completed (both nodes agree on every one).
    pub completed: usize,
    /// Acknowledged jobs without a result.
    pub lost: usize,
    /// Results of jobs never enqueued.
    pub phantom: usize,
    /// Results that differ from the independent chain.
    pub wrong: usize,
    /// Jobs (or keys) with more than one visible result.
    pub duplicate_visible: usize,
    /// Read anomalies (a seen result missing from a later read, a changed result, a gap).
    pub read_violations: Vec<String>,
    /// Longest time without an acknowledgement while the workload ran.
    pub max_unavailability: Duration,
    /// Executions per acknowledged job (attempts + 1) -> jobs.
    pub executions: BTreeMap<u32, usize>,
    /// Reads performed.
    pub reads: u64,
}

impl Summary {
    /// Print it and fail the test on any violation.
    pub fn assert_clean(&self, min_acknowledged: usize) {
        println!(
            "[{}] acknowledged {} unresolved {} completed {} lost {} phantom {} wrong {} duplicate-visible {} \
             read-violations {} max-unavailability {:.2}s executions {:?} reads {}",
            self.scenario,
            self.acknowledged,
            self.unresolved,
            self.completed,
            self.lost,
            self.phantom,
            self.wrong,
            self.duplicate_visible,
            self.read_violations.len(),
            self.max_unavailability.as_secs_f64(),
            self.executions,
            self.reads,
        );
        assert_eq!(self.lost, 0, "[{}] acknowledged jobs lost", self.scenario);
        assert_eq!(self.phantom, 0, "[{}] phantom results", self.scenario);
        assert_eq!(self.wrong, 0, "[{}] wrong results", self.scenario);
        assert_eq!(self.duplicate_visible, 0, "[{}] duplicate results", self.scenario);
        assert!(self.read_violations.is_empty(), "[{}] read violations: {:?}", self.scenario, self.read_violations);
        assert!(
            self.acknowledged >= min_acknowledged,
            "[{}] only {} acknowledged (want {min_acknowledged})",
            self.scenario,
            self.acknowledged
        );
    }
}

fn check(
    scenario: &str,
    log: &Log,
    walks: &[BTreeMap<u64, (u64, String)>],
    executions: BTreeMap<u32, usize>,
    fault_phase: Duration,
) -> Summary {
    let mut violations = log.violations.clone();
    // Both nodes' final walks agree, seq for seq.
    for (i, walk) in walks.iter().enumerate().skip(1) {
        if walk != &walks[0] {
            let differing = walk.iter().filter(|(seq, v)| walks[0].get(seq) != Some(v)).count();
            violations.push(format!("node {i}'s completions differ from node 0's ({differing} entries)"));
        }
    }
    let finals = &walks[0];
    // id -> results in the final walk (several would be a duplicate).
    let mut by_id: HashMap<u64, Vec<&String>> = HashMap::new();
    for (id, result) in finals.values() {
        by_id.entry(*id).or_default().push(result);
    }
    // Everything seen during the run is still there at the end.
    for (id, (result, _, _)) in &log.seen {
        if by_id.get(id).is_none_or(|results| !results.contains(&result)) {
            violations.push(format!("job {id} was seen during the run but is missing at the end"));
        }
    }
    let expected_by_result: HashMap<&str, &Op> = log.ops.iter().map(|op| (op.expected.as_str(), op)).collect();
    let mut lost = 0;
    let mut wrong = 0;
    for op in &log.ops {
        let Some((id, _)) = op.acked else { continue };
        match by_id.get(&id) {
            None => lost += 1,
            Some(results) if results.iter().any(|r| **r != op.expected) => wrong += 1,
            Some(_) => {}
        }
    }
    let phantom = finals.values().filter(|(_, result)| !expected_by_result.contains_key(result.as_str())).count();
    // One job per key: a retried or unresolved enqueue must not have created two jobs.
    let mut jobs_per_key: HashMap<&str, Vec<u64>> = HashMap::new();
    for (id, result) in finals.values() {
        if let Some(op) = expected_by_result.get(result.as_str()) {
            jobs_per_key.entry(op.key.as_str()).or_default().push(*id);
        }
    }
    let duplicate_visible = by_id.values().filter(|results| results.len() > 1).count()
        + jobs_per_key.values().filter(|ids| ids.len() > 1).count();
    let mut ack_times: Vec<Instant> = log.ops.iter().filter_map(|op| op.acked.map(|(_, at)| at)).collect();
    ack_times.sort();
    let max_unavailability = ack_times.windows(2).map(|w| w[1].duration_since(w[0])).max().unwrap_or(fault_phase);
    Summary {
        scenario: scenario.to_owned(),
        acknowledged: ack_times.len(),
        unresolved: log.ops.iter().filter(|op| op.acked.is_none()).count(),
        completed: by_id.len(),
        lost,
        phantom,
        wrong,
        duplicate_visible,
        read_violations: violations,
        max_unavailability,
        executions,
        reads: log.reads,
    }
}
