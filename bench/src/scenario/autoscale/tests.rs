//! The simulator's mechanics on small hand-built cases, and the baselines' rules. Expected
//! values are worked out by hand in the comments.

use wire::scaler::{Action, LaunchInFlight, Observation, PolicyConfig, Standing, WorkerObservation};

use super::model::{ModelConfig, Outcome, Simulation};
use super::policies::{Peers, Policy, RayLike, Tandem, View};
use super::traces::{self, Arrival, LaunchFailures, Trace};

const RATE: u64 = 2_000_000;

/// Exact numbers: every core at `RATE`, every boot 45 s, a tick every 5 s.
fn model(witness_cores: u32) -> ModelConfig {
    ModelConfig {
        cores_per_worker: 2,
        witness_cores,
        mean_core_rate: RATE,
        core_rate_spread: 0.0,
        boot_ms: 45_000,
        boot_jitter_ms: 0,
        tick_ms: 5_000,
        drain_allowance_ms: 3_600_000,
    }
}

fn trace(arrivals: Vec<Arrival>, launch_failures: LaunchFailures) -> Trace {
    Trace {
        name: "test",
        about: String::new(),
        end_ms: arrivals.iter().map(|a| a.at_ms).max().unwrap_or(0),
        arrivals,
        launch_failures,
    }
}

/// Does what it is told at the moment it is told, nothing else.
struct Script(Vec<(u64, Action)>);

impl Policy for Script {
    fn name(&self) -> &'static str {
        "script"
    }

    fn decide(&self, view: &View<'_>) -> Vec<Action> {
        self.0.iter().filter(|(at, _)| *at == view.observation.now_ms).map(|(_, a)| a.clone()).collect()
    }
}

fn tandem() -> Tandem {
    Tandem { config: PolicyConfig { max_workers: 8, assumed_core_rate: RATE, ..PolicyConfig::default() } }
}

#[test]
fn a_job_takes_its_iterations_over_its_core_rate() {
    // 90 M iterations at 2 M/s: 45 s. 30 M enqueued at 10 s on the witness's other core: 15 s.
    let trace = trace(
        vec![Arrival { at_ms: 0, iterations: 90_000_000 }, Arrival { at_ms: 10_000, iterations: 30_000_000 }],
        LaunchFailures::default(),
    );
    let nothing = Script(vec![]);
    let mut sim = Simulation::new(&trace, &model(2), 1);
    sim.run_until(&nothing, 20_000);
    // At 20 s: the first has 90 M - 20 s * 2 M/s = 50 M left, the second 30 M - 10 s * 2 M/s = 10 M.
    let obs = sim.observation();
    assert_eq!((obs.running_jobs, obs.running_iterations_left, obs.queued_jobs), (2, 60_000_000, 0));
    assert_eq!(
        (obs.workers[0].leases, obs.workers[0].hashes_per_s, obs.workers[0].idle_since_ms),
        (2, 4_000_000, None)
    );
    let outcome = sim.run(&nothing);
    assert_eq!(outcome.latencies_ms, vec![15_000, 45_000]);
    assert_eq!((outcome.counts.instance_ms, outcome.counts.launches), (0, 0), "the witness's worker is not billed");

    // A rate that does not divide: 7 M iterations at 3 M/s are 2,333.3 ms, done in the 2,334th.
    let odd = Trace { arrivals: vec![Arrival { at_ms: 0, iterations: 7_000_000 }], ..trace.clone() };
    let outcome = Simulation::new(&odd, &ModelConfig { mean_core_rate: 3_000_000, ..model(2) }, 1).run(&nothing);
    assert_eq!(outcome.latencies_ms, vec![2_334]);
}

#[test]
fn a_launched_worker_registers_after_the_boot_delay_and_takes_the_oldest_job() {
    // No witness cores: the 10 s job waits for the worker launched at 0, which registers at 45 s
    // and finishes it at 55 s; terminated at 60 s, it was billed 60 s.
    let trace = trace(vec![Arrival { at_ms: 0, iterations: 20_000_000 }], LaunchFailures::default());
    let script = Script(vec![(0, Action::Launch { count: 1 }), (60_000, Action::Terminate { worker: 1 })]);
    let mut sim = Simulation::new(&trace, &model(0), 1);
    sim.run_until(&script, 44_999);
    let obs = sim.observation();
    assert_eq!(obs.workers.len(), 1, "only the witness's: {obs:?}");
    assert_eq!(obs.launches_in_flight, vec![LaunchInFlight { token: "launch-0".into(), requested_at_ms: 0 }]);
    assert_eq!((obs.queued_jobs, obs.boot_ms, obs.last_scale_out_ms), (1, None, Some(0)));
    sim.run_until(&script, 45_000);
    let obs = sim.observation();
    assert_eq!(obs.workers.len(), 2);
    assert_eq!((obs.workers[1].id, obs.workers[1].leases, obs.workers[1].managed), (1, 1, true));
    assert_eq!((obs.launches_in_flight.len(), obs.boot_ms, obs.queued_jobs), (0, Some(45_000), 0));
    sim.run_until(&script, 55_000);
    assert_eq!(sim.observation().workers[1].idle_since_ms, Some(55_000));
    let outcome = sim.run(&script);
    assert_eq!(outcome.latencies_ms, vec![55_000]);
    assert_eq!(
        (outcome.counts.instance_ms, outcome.counts.terminations, outcome.counts.busy_workers_killed),
        (60_000, 1, 0)
    );
    assert_eq!(outcome.ended_ms, 65_000, "the first tick with every job done and no instance left");
}

#[test]
fn a_launch_that_never_registers_is_given_up_at_the_boot_timeout_and_billed_until_then() {
    // Tandem launches one worker at 0 for the job no core can take; its instance never
    // registers. At 300 s (the default boot timeout) it is given up: one failure, 300 s billed,
    // and launches back off for 5 s: the next one goes at 305 s.
    let trace = trace(
        vec![Arrival { at_ms: 0, iterations: 20_000_000 }],
        LaunchFailures { capacity_errors_ms: vec![], never_registers: 1.0 },
    );
    let tandem = tandem();
    assert_eq!((tandem.config.boot_timeout_ms, tandem.config.backoff_base_ms), (300_000, 5_000));
    let mut sim = Simulation::new(&trace, &model(0), 1);
    sim.run_until(&tandem, 295_000);
    let obs = sim.observation();
    assert_eq!(obs.launches_in_flight, vec![LaunchInFlight { token: "launch-0".into(), requested_at_ms: 0 }]);
    assert_eq!(obs.consecutive_failures, 0);
    sim.run_until(&tandem, 300_000);
    let obs = sim.observation();
    assert_eq!(obs.launches_in_flight, vec![], "given up, and no new launch within the backoff");
    assert_eq!((obs.consecutive_failures, obs.last_failure_ms), (1, Some(300_000)));
    sim.run_until(&tandem, 305_000);
    let obs = sim.observation();
    let relaunch = LaunchInFlight { token: "launch-1".into(), requested_at_ms: 305_000 };
    assert_eq!(obs.launches_in_flight, vec![relaunch], "launched again once the backoff is over");
    let outcome = sim.outcome();
    assert_eq!((outcome.counts.launches, outcome.counts.given_up, outcome.counts.instance_ms), (2, 1, 300_000));
}

#[test]
fn a_launch_in_a_capacity_error_window_fails_at_once_and_costs_nothing() {
    let trace = trace(
        vec![Arrival { at_ms: 0, iterations: 20_000_000 }],
        LaunchFailures { capacity_errors_ms: vec![(0, 10_000)], never_registers: 0.0 },
    );
    // Launches at 0 (in the window) and 10 s (after it): the second registers at 55 s and runs
    // the job to 65 s.
    let script = Script(vec![
        (0, Action::Launch { count: 1 }),
        (10_000, Action::Launch { count: 1 }),
        (70_000, Action::Terminate { worker: 1 }),
    ]);
    let mut sim = Simulation::new(&trace, &model(0), 1);
    sim.run_until(&script, 0);
    let obs = sim.observation();
    assert_eq!((obs.launches_in_flight.len(), obs.consecutive_failures, obs.last_failure_ms), (0, 1, Some(0)));
    sim.run_until(&script, 55_000);
    assert_eq!(sim.observation().consecutive_failures, 0, "a registration ends the run of failures");
    let outcome = sim.run(&script);
    assert_eq!((outcome.counts.launches, outcome.counts.capacity_errors), (2, 1));
    assert_eq!(outcome.latencies_ms, vec![65_000]);
    assert_eq!(outcome.counts.instance_ms, 60_000, "10 s to 70 s; the failed launch costs nothing");
}

#[test]
fn draining_a_busy_worker_hands_its_jobs_back_with_their_progress_and_is_counted() {
    // The 60 s job starts at 45 s on worker 1; drained at 75 s it has done 30 s (60 M) and goes
    // back to the queue with 60 M left; resumed at 80 s, the worker finishes it at 110 s.
    let trace = trace(vec![Arrival { at_ms: 0, iterations: 120_000_000 }], LaunchFailures::default());
    let script = Script(vec![
        (0, Action::Launch { count: 1 }),
        (75_000, Action::Drain { worker: 1 }),
        (80_000, Action::Resume { worker: 1 }),
        (115_000, Action::Drain { worker: 1 }),
        (120_000, Action::Terminate { worker: 1 }),
    ]);
    let mut sim = Simulation::new(&trace, &model(0), 1);
    sim.run_until(&script, 75_000);
    let obs = sim.observation();
    assert_eq!((obs.queued_jobs, obs.queued_iterations, obs.running_jobs), (1, 60_000_000, 0));
    assert_eq!(obs.workers[1].standing, Standing::ScalingIn);
    let outcome = sim.run(&script);
    assert_eq!(outcome.latencies_ms, vec![110_000]);
    assert_eq!(outcome.counts.busy_workers_killed, 1, "the drain at 75 s; the one at 115 s found it idle");
    assert_eq!(outcome.counts.instance_ms, 120_000);
}

#[test]
fn the_witness_worker_is_never_scaled_in() {
    // A job at 10 s keeps the run going past the script.
    let trace = trace(vec![Arrival { at_ms: 10_000, iterations: 1 }], LaunchFailures::default());
    let script = Script(vec![(0, Action::Drain { worker: 0 }), (5_000, Action::Terminate { worker: 0 })]);
    let outcome = Simulation::new(&trace, &model(2), 1).run(&script);
    assert_eq!(outcome.counts.witness_scale_ins, 2);
    assert_eq!((outcome.counts.terminations, outcome.completed), (0, 1));
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let traces = traces::all(true, RATE, 7);
    let burst = traces.iter().find(|t| t.name == "launch-failures").expect("the trace exists");
    let run = |seed| Simulation::new(burst, &ModelConfig { core_rate_spread: 0.1, ..model(2) }, seed).run(&tandem());
    let key = |o: &Outcome| (o.latencies_ms.clone(), o.counts.instance_ms, o.counts.launches, o.fleet.clone());
    assert_eq!(key(&run(3)), key(&run(3)));
    assert_ne!(key(&run(3)), key(&run(4)));
    assert_eq!(traces::all(true, RATE, 7)[0].arrivals, traces[0].arrivals);
}

fn idle_worker(id: u64, since_ms: u64) -> WorkerObservation {
    WorkerObservation {
        id,
        cores: 2,
        leases: 0,
        hashes_per_s: 0,
        standing: Standing::Active,
        witness: false,
        managed: true,
        idle_since_ms: Some(since_ms),
    }
}

fn busy_worker(id: u64) -> WorkerObservation {
    WorkerObservation { leases: 2, hashes_per_s: 2 * RATE, idle_since_ms: None, ..idle_worker(id, 0) }
}

fn in_flight(requested_at_ms: u64) -> LaunchInFlight {
    LaunchInFlight { token: format!("t{requested_at_ms}"), requested_at_ms }
}

#[test]
fn the_peers_launch_one_at_a_time_for_a_job_waiting_over_15_s_and_keep_3_per_coordinator_at_most() {
    let peers = Peers {
        wait_ms: 15_000,
        max_workers_per_coordinator: 3,
        coordinators: 2,
        idle_ms: 600_000,
        boot_timeout_ms: 300_000,
    };
    let obs = Observation { now_ms: 100_000, queued_jobs: 50, workers: vec![busy_worker(1)], ..Observation::default() };
    let decide =
        |obs: &Observation, since: Option<u64>| peers.decide(&View { observation: obs, oldest_queued_since_ms: since });
    assert_eq!(decide(&obs, Some(85_000)), vec![], "waited exactly 15 s");
    assert_eq!(decide(&obs, Some(84_999)), vec![Action::Launch { count: 1 }]);
    let booting = Observation { launches_in_flight: vec![in_flight(90_000)], ..obs.clone() };
    assert_eq!(decide(&booting, Some(0)), vec![]);
    // 3 per coordinator, 2 coordinators: the sixth is the last.
    let five = Observation { workers: (1..=5).map(busy_worker).collect(), ..obs.clone() };
    assert_eq!(decide(&five, Some(0)), vec![Action::Launch { count: 1 }]);
    let six = Observation { workers: (1..=6).map(busy_worker).collect(), ..obs.clone() };
    assert_eq!(decide(&six, Some(0)), vec![]);
    // Idle 10 minutes: drained; then, holding nothing, terminated.
    let idle = Observation { now_ms: 700_000, workers: vec![idle_worker(1, 100_000)], ..Observation::default() };
    assert_eq!(decide(&idle, None), vec![Action::Drain { worker: 1 }]);
    let draining = WorkerObservation { standing: Standing::ScalingIn, ..idle_worker(1, 100_000) };
    let idle = Observation { workers: vec![draining], ..idle };
    assert_eq!(decide(&idle, None), vec![Action::Terminate { worker: 1 }]);
}

#[test]
fn the_ray_like_rule_launches_a_core_per_queued_job_counting_launches_in_flight() {
    let ray = RayLike { max_workers: 8, cores_per_worker: 2, idle_ms: 300_000, boot_timeout_ms: 300_000 };
    let decide = |obs: &Observation| ray.decide(&View { observation: obs, oldest_queued_since_ms: Some(0) });
    // 7 queued jobs: 4 workers; 1 already booting: 3 more.
    let obs = Observation {
        now_ms: 100_000,
        queued_jobs: 7,
        workers: vec![busy_worker(1)],
        launches_in_flight: vec![in_flight(90_000)],
        ..Observation::default()
    };
    assert_eq!(decide(&obs), vec![Action::Launch { count: 3 }]);
    // 100 queued: bounded by the maximum of 8, of which 2 exist.
    let many = Observation { queued_jobs: 100, ..obs.clone() };
    assert_eq!(decide(&many), vec![Action::Launch { count: 6 }]);
    // A launch in flight for the boot timeout is given up and no longer counted.
    let stale = Observation { launches_in_flight: vec![in_flight(0)], now_ms: 300_000, ..obs };
    assert_eq!(decide(&stale), vec![Action::GiveUp { token: "t0".into() }, Action::Launch { count: 4 }]);
}
