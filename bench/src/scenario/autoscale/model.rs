//! The simulated fleet: a discrete-event simulation in simulated milliseconds of a FIFO queue,
//! workers whose cores each run one job at a time, launches that boot (or fail), and a policy
//! called every tick. Deterministic for a seed.
//!
//! What it models, simply:
//!
//! - A job runs on one core from its start to its end at that worker's per-core rate.
//! - A free core takes the oldest queued job. A worker freeing a core takes the next job itself
//!   (it asks for work again at once); a job arriving while several workers have free cores
//!   goes to one of them at random (their long-polls race for it).
//! - Scaling in hands a worker's leases back: its running jobs return to the queue with the
//!   progress they made (a checkpoint at the moment of the hand-back). Policies should only
//!   ever drain idle workers; each worker drained or terminated while it held a lease is counted.
//! - The leader's view is exact: running jobs' iterations left are as of now, not as of their
//!   last checkpoint, a worker's hash rate is its cores' rate times the leases it holds, and
//!   the boot time is the mean of the boots observed.
//! - A launch boots after a delay, fails at once (no capacity; nothing billed), or starts an
//!   instance that never registers (billed until the policy gives it up), as the trace says.
//! - Billing: every instance but the witness's, from the launch request to its termination.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use wire::scaler::{Action, LaunchInFlight, Observation, Standing, WorkerObservation};

use super::policies::{Policy, View};
use super::traces::{LaunchFate, Trace};

/// The simulated world's constants.
#[derive(Clone, Debug, Serialize)]
pub struct ModelConfig {
    /// Cores of a launched worker.
    pub cores_per_worker: u32,
    /// Cores of the witness's worker (always there, never scaled in).
    pub witness_cores: u32,
    /// Mean chain steps per second of one core.
    pub mean_core_rate: u64,
    /// A worker's per-core rate is the mean times `1 ± x`, `x` uniform up to this.
    pub core_rate_spread: f64,
    /// Mean time from a launch to the worker's registration.
    pub boot_ms: u64,
    /// Boots take `boot_ms` plus or minus up to this, uniformly.
    pub boot_jitter_ms: u64,
    /// Time between two calls of the policy.
    pub tick_ms: u64,
    /// After the trace's end, how long the fleet may take to finish its jobs and scale in before
    /// the run is cut short.
    pub drain_allowance_ms: u64,
}

/// What one run of a policy on a trace came to.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Jobs in the trace.
    pub jobs: usize,
    /// Jobs completed by the end of the run.
    pub completed: usize,
    /// Enqueue to completion of every completed job, ascending.
    pub latencies_ms: Vec<u64>,
    /// What the run launched, billed and stopped.
    pub counts: Counts,
    /// (ms, instances) at each change of the billed fleet.
    pub fleet: Vec<(u64, u32)>,
    /// When the run stopped.
    pub ended_ms: u64,
}

/// What a run launched, billed and stopped: its counts, as the report shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Instance time billed (every instance but the witness's, launch request to termination).
    pub instance_ms: u64,
    /// Launches requested.
    pub launches: u32,
    /// Launches that failed at once.
    pub capacity_errors: u32,
    /// Launches given up after they never registered.
    pub given_up: u32,
    /// Workers terminated.
    pub terminations: u32,
    /// Workers drained or terminated while they held a lease.
    pub busy_workers_killed: u32,
    /// Times the policy tried to drain or terminate the witness's worker (ignored).
    pub witness_scale_ins: u32,
    /// Most instances (booting ones included) at once.
    pub peak_instances: u32,
}

impl Outcome {
    /// The `q` quantile (nearest rank) of the completion latencies.
    pub fn latency_quantile_ms(&self, q: f64) -> Option<u64> {
        let n = self.latencies_ms.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n.max(1));
        self.latencies_ms.get(rank - 1).copied()
    }
}

/// A stream of random numbers for one purpose of one run: the same seed and parts, the same
/// stream.
pub fn seeded(seed: u64, parts: &[u64]) -> StdRng {
    StdRng::seed_from_u64(parts.iter().fold(splitmix(seed), |x, part| splitmix(x ^ splitmix(*part))))
}

/// SplitMix64's finaliser: nearby inputs, unrelated outputs.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Something that happens at a moment. At the same moment, in this order: the tick last, so
/// that the policy sees everything that happened up to and including its moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A run of a job on a worker ends (stale if the job was handed back since).
    Complete { worker: u64, run: u64 },
    /// A launched instance registers as a worker.
    Register { launch: usize },
    /// A job is enqueued.
    Arrive { job: usize },
    /// The policy is called.
    Tick,
}

struct Job {
    iterations: u64,
    enqueued_ms: u64,
    /// Iterations done when it was last handed back.
    done: u64,
    completed_ms: Option<u64>,
}

/// A job on a core.
struct Running {
    job: usize,
    run: u64,
    started_ms: u64,
    /// Iterations it needed when it started here.
    left: u64,
}

struct Worker {
    id: u64,
    cores: u32,
    core_rate: u64,
    standing: Standing,
    witness: bool,
    idle_since_ms: Option<u64>,
    running: Vec<Running>,
    /// When its launch was requested (billing starts there); `None` for the witness's.
    launched_ms: Option<u64>,
}

impl Worker {
    /// Iterations `running` has done since it started here, by `now_ms`. Kept below what it
    /// needs: a run that reaches it completes instead.
    fn progress(&self, running: &Running, now_ms: u64) -> u64 {
        let done = u128::from(now_ms - running.started_ms) * u128::from(self.core_rate) / 1_000;
        done.min(u128::from(running.left.saturating_sub(1))) as u64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LaunchState {
    InFlight,
    Registered,
    Failed,
    GivenUp,
}

struct Launch {
    token: String,
    requested_ms: u64,
    state: LaunchState,
    /// The per-core rate of the worker it becomes.
    core_rate: u64,
}

/// One policy running one trace.
pub struct Simulation<'t> {
    trace: &'t Trace,
    model: ModelConfig,
    now_ms: u64,
    events: BinaryHeap<Reverse<(u64, Event)>>,
    jobs: Vec<Job>,
    /// Queued jobs by index, which is their order of arrival.
    queue: BTreeSet<usize>,
    /// The witness's first, then in order of registration.
    workers: Vec<Worker>,
    launches: Vec<Launch>,
    next_worker_id: u64,
    next_run: u64,
    boots_observed_ms: Vec<u64>,
    last_scale_out_ms: Option<u64>,
    consecutive_failures: u32,
    last_failure_ms: Option<u64>,
    /// Boot time, core rate and fate of each launch, drawn in order of launch: the n-th launch
    /// of every policy gets the same draws.
    launch_rng: StdRng,
    dispatch_rng: StdRng,
    outcome: Outcome,
    finished: bool,
}

impl<'t> Simulation<'t> {
    /// The start of `trace` on `model`, its random streams drawn from `seed`: only the witness's
    /// worker, no job yet, the first tick at 0.
    pub fn new(trace: &'t Trace, model: &ModelConfig, seed: u64) -> Self {
        let mut launch_rng = seeded(seed, &[1]);
        let witness_rate = core_rate(model, launch_rng.random());
        let mut sim = Simulation {
            trace,
            model: model.clone(),
            now_ms: 0,
            events: BinaryHeap::new(),
            jobs: trace
                .arrivals
                .iter()
                .map(|a| Job { iterations: a.iterations.max(1), enqueued_ms: a.at_ms, done: 0, completed_ms: None })
                .collect(),
            queue: BTreeSet::new(),
            workers: vec![Worker {
                id: 0,
                cores: model.witness_cores,
                core_rate: witness_rate,
                standing: Standing::Active,
                witness: true,
                idle_since_ms: Some(0),
                running: Vec::new(),
                launched_ms: None,
            }],
            launches: Vec::new(),
            next_worker_id: 1,
            next_run: 0,
            boots_observed_ms: Vec::new(),
            last_scale_out_ms: None,
            consecutive_failures: 0,
            last_failure_ms: None,
            launch_rng,
            dispatch_rng: seeded(seed, &[2]),
            outcome: Outcome { jobs: trace.arrivals.len(), fleet: vec![(0, 0)], ..Outcome::default() },
            finished: false,
        };
        for (job, arrival) in trace.arrivals.iter().enumerate() {
            sim.events.push(Reverse((arrival.at_ms, Event::Arrive { job })));
        }
        sim.events.push(Reverse((0, Event::Tick)));
        sim
    }

    /// Run `policy` to the end: every job done and every instance gone after the trace's end,
    /// or the drain allowance spent.
    pub fn run(mut self, policy: &dyn Policy) -> Outcome {
        self.run_until(policy, u64::MAX);
        self.outcome()
    }

    /// Run `policy` through every event up to and including `until_ms`.
    pub fn run_until(&mut self, policy: &dyn Policy, until_ms: u64) {
        while !self.finished {
            let Some(Reverse((at_ms, event))) = self.events.peek().copied() else { break };
            if at_ms > until_ms {
                break;
            }
            self.events.pop();
            self.now_ms = at_ms;
            match event {
                Event::Complete { worker, run } => self.complete(worker, run),
                Event::Register { launch } => self.register(launch),
                Event::Arrive { job } => {
                    self.queue.insert(job);
                    self.dispatch();
                }
                Event::Tick => self.tick(policy),
            }
        }
        if !self.finished && until_ms != u64::MAX {
            // Nothing else happens before `until_ms`: the observation may be read there.
            self.now_ms = self.now_ms.max(until_ms);
        }
    }

    /// What the leader would observe now.
    pub fn observation(&self) -> Observation {
        let now = self.now_ms;
        let running = self.workers.iter().flat_map(|w| w.running.iter().map(move |r| r.left - w.progress(r, now)));
        Observation {
            now_ms: now,
            queued_jobs: self.queue.len() as u64,
            queued_iterations: self.queue.iter().map(|j| self.jobs[*j].iterations - self.jobs[*j].done).sum(),
            running_jobs: self.workers.iter().map(|w| w.running.len() as u64).sum(),
            running_iterations_left: running.sum(),
            workers: self
                .workers
                .iter()
                .map(|w| {
                    let leases = w.running.len() as u32;
                    WorkerObservation {
                        id: w.id,
                        cores: w.cores,
                        leases,
                        hashes_per_s: w.core_rate * u64::from(leases.min(w.cores)),
                        standing: w.standing,
                        witness: w.witness,
                        managed: !w.witness,
                        idle_since_ms: w.idle_since_ms,
                    }
                })
                .collect(),
            launches_in_flight: self
                .launches
                .iter()
                .filter(|l| l.state == LaunchState::InFlight)
                .map(|l| LaunchInFlight { token: l.token.clone(), requested_at_ms: l.requested_ms })
                .collect(),
            boot_ms: (!self.boots_observed_ms.is_empty())
                .then(|| self.boots_observed_ms.iter().sum::<u64>() / self.boots_observed_ms.len() as u64),
            last_scale_out_ms: self.last_scale_out_ms,
            consecutive_failures: self.consecutive_failures,
            last_failure_ms: self.last_failure_ms,
        }
    }

    /// What the run came to so far; instances still up are billed until now.
    pub fn outcome(mut self) -> Outcome {
        let now = self.now_ms;
        for worker in &self.workers {
            if let Some(launched) = worker.launched_ms {
                self.outcome.counts.instance_ms += now - launched;
            }
        }
        for launch in self.launches.iter().filter(|l| l.state == LaunchState::InFlight) {
            self.outcome.counts.instance_ms += now - launch.requested_ms;
        }
        let mut latencies: Vec<u64> =
            self.jobs.iter().filter_map(|j| j.completed_ms.map(|done| done - j.enqueued_ms)).collect();
        latencies.sort_unstable();
        self.outcome.completed = latencies.len();
        self.outcome.latencies_ms = latencies;
        self.outcome.ended_ms = now;
        self.outcome
    }

    fn tick(&mut self, policy: &dyn Policy) {
        let all_done = self.jobs.iter().all(|j| j.completed_ms.is_some());
        let fleet_gone = self.instances() == 0;
        let end = self.trace.end_ms;
        if (self.now_ms >= end && all_done && fleet_gone) || self.now_ms >= end + self.model.drain_allowance_ms {
            self.finished = true;
            return;
        }
        let observation = self.observation();
        let oldest_queued_since_ms = self.queue.first().map(|j| self.jobs[*j].enqueued_ms);
        for action in policy.decide(&View { observation: &observation, oldest_queued_since_ms }) {
            self.apply(action);
        }
        // Leases handed back go to whoever has a free core.
        self.dispatch();
        let instances = self.instances();
        if self.outcome.fleet.last().is_none_or(|(_, n)| *n != instances) {
            self.outcome.fleet.push((self.now_ms, instances));
        }
        self.outcome.counts.peak_instances = self.outcome.counts.peak_instances.max(instances);
        self.events.push(Reverse((self.now_ms + self.model.tick_ms.max(1), Event::Tick)));
    }

    /// Billed instances: workers but the witness's, and launches in flight.
    fn instances(&self) -> u32 {
        let workers = self.workers.iter().filter(|w| !w.witness).count();
        let booting = self.launches.iter().filter(|l| l.state == LaunchState::InFlight).count();
        (workers + booting) as u32
    }

    fn apply(&mut self, action: Action) {
        let now = self.now_ms;
        match action {
            Action::Launch { count } => {
                // As the leader does: the rest of a batch is not attempted after a failure.
                for _ in 0..count {
                    if !self.launch() {
                        break;
                    }
                }
                if count > 0 {
                    self.last_scale_out_ms = Some(now);
                }
            }
            Action::Resume { worker } => {
                if let Some(w) = self.worker_index(worker)
                    && self.workers[w].standing == Standing::ScalingIn
                {
                    self.workers[w].standing = Standing::Active;
                    self.last_scale_out_ms = Some(now);
                    self.fill(w);
                }
            }
            Action::Drain { worker } => {
                if let Some(w) = self.scalable_index(worker)
                    && self.workers[w].standing == Standing::Active
                {
                    if self.hand_back(w) {
                        self.outcome.counts.busy_workers_killed += 1;
                    }
                    self.workers[w].standing = Standing::ScalingIn;
                }
            }
            Action::Terminate { worker } => {
                if let Some(w) = self.scalable_index(worker) {
                    if self.hand_back(w) {
                        self.outcome.counts.busy_workers_killed += 1;
                    }
                    let gone = self.workers.remove(w);
                    self.outcome.counts.instance_ms += now - gone.launched_ms.unwrap_or(now);
                    self.outcome.counts.terminations += 1;
                }
            }
            Action::GiveUp { token } => {
                if let Some(launch) =
                    self.launches.iter_mut().find(|l| l.token == token && l.state == LaunchState::InFlight)
                {
                    launch.state = LaunchState::GivenUp;
                    self.outcome.counts.instance_ms += now - launch.requested_ms;
                    self.outcome.counts.given_up += 1;
                    self.consecutive_failures += 1;
                    self.last_failure_ms = Some(now);
                }
            }
        }
    }

    /// Launch one worker; `false` when the provider refused it at once.
    fn launch(&mut self) -> bool {
        let now = self.now_ms;
        let index = self.launches.len();
        // Three draws for every launch, whatever its fate, so that the streams stay aligned.
        let (boot_draw, rate_draw, fate_draw): (f64, f64, f64) =
            (self.launch_rng.random(), self.launch_rng.random(), self.launch_rng.random());
        let jitter = (2.0 * boot_draw - 1.0) * self.model.boot_jitter_ms as f64;
        let boot_ms = (self.model.boot_ms as f64 + jitter).round().max(0.0) as u64;
        let state = match self.trace.launch_failures.fate(now, fate_draw) {
            LaunchFate::Boots => {
                self.events.push(Reverse((now + boot_ms, Event::Register { launch: index })));
                LaunchState::InFlight
            }
            LaunchFate::NeverRegisters => LaunchState::InFlight,
            LaunchFate::CapacityError => {
                self.outcome.counts.capacity_errors += 1;
                self.consecutive_failures += 1;
                self.last_failure_ms = Some(now);
                LaunchState::Failed
            }
        };
        let core_rate = core_rate(&self.model, rate_draw);
        let launched = state != LaunchState::Failed;
        self.launches.push(Launch { token: format!("launch-{index}"), requested_ms: now, state, core_rate });
        self.outcome.counts.launches += 1;
        launched
    }

    fn register(&mut self, launch: usize) {
        let now = self.now_ms;
        if self.launches[launch].state != LaunchState::InFlight {
            return;
        }
        self.launches[launch].state = LaunchState::Registered;
        let requested_ms = self.launches[launch].requested_ms;
        self.boots_observed_ms.push(now - requested_ms);
        self.consecutive_failures = 0;
        let id = self.next_worker_id;
        self.next_worker_id += 1;
        self.workers.push(Worker {
            id,
            cores: self.model.cores_per_worker,
            core_rate: self.launches[launch].core_rate,
            standing: Standing::Active,
            witness: false,
            idle_since_ms: Some(now),
            running: Vec::new(),
            launched_ms: Some(requested_ms),
        });
        self.fill(self.workers.len() - 1);
    }

    fn complete(&mut self, worker: u64, run: u64) {
        let Some(w) = self.worker_index(worker) else { return };
        let Some(slot) = self.workers[w].running.iter().position(|r| r.run == run) else { return };
        let done = self.workers[w].running.swap_remove(slot);
        self.jobs[done.job].completed_ms = Some(self.now_ms);
        self.fill(w);
    }

    /// Worker `w` takes the oldest queued jobs onto its free cores.
    fn fill(&mut self, w: usize) {
        while self.workers[w].standing == Standing::Active
            && self.workers[w].running.len() < self.workers[w].cores as usize
            && let Some(job) = self.queue.pop_first()
        {
            self.start(w, job);
        }
        if self.workers[w].running.is_empty() && self.workers[w].idle_since_ms.is_none() {
            self.workers[w].idle_since_ms = Some(self.now_ms);
        }
    }

    /// Queued jobs go, oldest first, each to a worker with a free core picked at random.
    fn dispatch(&mut self) {
        while !self.queue.is_empty() {
            let free: Vec<usize> = (0..self.workers.len())
                .filter(|w| {
                    let worker = &self.workers[*w];
                    worker.standing == Standing::Active && worker.running.len() < worker.cores as usize
                })
                .collect();
            if free.is_empty() {
                return;
            }
            let w = free[self.dispatch_rng.random_range(0..free.len())];
            let job = self.queue.pop_first().expect("the queue is not empty");
            self.start(w, job);
        }
    }

    fn start(&mut self, w: usize, job: usize) {
        let now = self.now_ms;
        let left = self.jobs[job].iterations - self.jobs[job].done;
        let run = self.next_run;
        self.next_run += 1;
        let worker = &mut self.workers[w];
        worker.running.push(Running { job, run, started_ms: now, left });
        worker.idle_since_ms = None;
        let ms = (u128::from(left) * 1_000).div_ceil(u128::from(worker.core_rate.max(1))) as u64;
        self.events.push(Reverse((now + ms, Event::Complete { worker: worker.id, run })));
    }

    /// Worker `w`'s running jobs go back to the queue with their progress; whether it held any.
    fn hand_back(&mut self, w: usize) -> bool {
        let now = self.now_ms;
        let running = std::mem::take(&mut self.workers[w].running);
        let held = !running.is_empty();
        for r in running {
            self.jobs[r.job].done += self.workers[w].progress(&r, now);
            self.queue.insert(r.job);
        }
        if held {
            self.workers[w].idle_since_ms = Some(now);
        }
        held
    }

    fn worker_index(&self, id: u64) -> Option<usize> {
        self.workers.iter().position(|w| w.id == id)
    }

    /// The worker's index, unless it is the witness's (counted and refused) or unknown.
    fn scalable_index(&mut self, id: u64) -> Option<usize> {
        let w = self.worker_index(id)?;
        if self.workers[w].witness {
            self.outcome.counts.witness_scale_ins += 1;
            return None;
        }
        Some(w)
    }
}

/// A worker's per-core rate from a uniform draw in `[0, 1)`.
fn core_rate(model: &ModelConfig, draw: f64) -> u64 {
    let factor = 1.0 + model.core_rate_spread * (2.0 * draw - 1.0);
    ((model.mean_core_rate as f64 * factor).round() as u64).max(1)
}
