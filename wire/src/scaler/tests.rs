//! Table tests of [`decide`].

use super::*;

const RATE: u64 = 1_000_000;
const NOW: u64 = 10_000_000;

fn config() -> PolicyConfig {
    PolicyConfig {
        min_workers: 0,
        max_workers: 8,
        cores_per_worker: 2,
        drain_target_ms: 60_000,
        idle_ms: 120_000,
        cooldown_ms: 120_000,
        boot_timeout_ms: 300_000,
        assumed_boot_ms: 45_000,
        assumed_core_rate: RATE,
        backoff_base_ms: 10_000,
        backoff_max_ms: 600_000,
    }
}

/// A managed, active, 2-core worker computing on both cores at `RATE` each.
fn busy(id: u64) -> WorkerObservation {
    WorkerObservation {
        id,
        cores: 2,
        leases: 2,
        hashes_per_s: 2 * RATE,
        standing: Standing::Active,
        witness: false,
        managed: true,
        idle_since_ms: None,
    }
}

/// A managed, active, 2-core worker idle for `idle_ms`.
fn idle(id: u64, idle_ms: u64) -> WorkerObservation {
    WorkerObservation { leases: 0, hashes_per_s: 0, idle_since_ms: Some(NOW - idle_ms), ..busy(id) }
}

fn witness(leases: u32) -> WorkerObservation {
    WorkerObservation {
        witness: true,
        managed: false,
        leases,
        hashes_per_s: u64::from(leases) * RATE,
        idle_since_ms: (leases == 0).then_some(0),
        ..busy(100)
    }
}

/// Waiting work: `jobs` jobs of `seconds_each` seconds of one core each.
fn queued(jobs: u64, seconds_each: u64) -> Observation {
    Observation {
        now_ms: NOW,
        queued_jobs: jobs,
        queued_iterations: jobs * seconds_each * RATE,
        ..Observation::default()
    }
}

fn in_flight(n: u64, ago_ms: u64) -> Vec<LaunchInFlight> {
    (0..n).map(|i| LaunchInFlight { token: format!("t{i}"), requested_at_ms: NOW - ago_ms }).collect()
}

fn actions(plan: &Plan) -> Vec<Action> {
    plan.decisions.iter().map(|d| d.action.clone()).collect()
}

#[test]
fn a_backlog_over_the_target_launches_the_cores_that_drain_it_in_time() {
    // 40 jobs of 12 s: 480 core-seconds; 60 s target: 8 cores, the witness's 2 busy: 3 workers.
    let obs = Observation { workers: vec![witness(2)], ..queued(40, 12) };
    let plan = decide(&config(), &obs);
    assert_eq!(actions(&plan), vec![Action::Launch { count: 3 }]);
    let Why::Backlog { cores_wanted, cores_counted, .. } = plan.decisions[0].why else { panic!("{plan:?}") };
    assert_eq!((cores_wanted, cores_counted), (8, 2));
    assert_eq!(plan.desired_workers, 3);
    // Within the target: nothing.
    let obs = Observation { workers: vec![witness(2)], ..queued(10, 12) };
    assert_eq!(actions(&decide(&config(), &obs)), vec![]);
}

#[test]
fn no_launch_while_launches_in_flight_cover_the_backlog() {
    let obs = Observation { workers: vec![witness(2)], launches_in_flight: in_flight(3, 10_000), ..queued(40, 12) };
    let plan = decide(&config(), &obs);
    assert_eq!(actions(&plan), vec![], "{plan:?}");
    assert_eq!(plan.desired_workers, 3);
    // One short: one more.
    let obs = Observation { launches_in_flight: in_flight(2, 10_000), ..obs };
    assert_eq!(actions(&decide(&config(), &obs)), vec![Action::Launch { count: 1 }]);
}

#[test]
fn one_long_job_launches_one_worker_at_most() {
    // One job of an hour: a job runs on one core, so more workers would not finish it sooner.
    let empty = Observation { ..queued(1, 3_600) };
    assert_eq!(actions(&decide(&config(), &empty)), vec![Action::Launch { count: 1 }]);
    let with_a_free_core = Observation { workers: vec![witness(0)], ..queued(1, 3_600) };
    assert_eq!(actions(&decide(&config(), &with_a_free_core)), vec![]);
    // Ten long jobs, two of them on the witness's cores: ten cores, four more workers.
    let ten = Observation {
        workers: vec![witness(2)],
        running_jobs: 2,
        running_iterations_left: 2 * 3_600 * RATE,
        ..queued(8, 3_600)
    };
    assert_eq!(actions(&decide(&config(), &ten)), vec![Action::Launch { count: 4 }]);
}

#[test]
fn a_huge_backlog_is_bounded_by_the_maximum_and_says_so() {
    let obs = Observation { workers: vec![witness(2), busy(1)], ..queued(1_000_000, 10) };
    let plan = decide(&config(), &obs);
    assert_eq!(actions(&plan), vec![Action::Launch { count: 7 }]);
    assert_eq!(plan.held, vec![Why::AtMaximum { max: 8 }]);
    assert_eq!(plan.desired_workers, 8);
    let full = Observation { launches_in_flight: in_flight(7, 1_000), ..obs };
    let plan = decide(&config(), &full);
    assert_eq!(actions(&plan), vec![]);
    assert_eq!(plan.held, vec![Why::AtMaximum { max: 8 }]);
}

#[test]
fn running_work_counts_from_its_checkpoints_and_the_measured_rate_sizes_it() {
    // 8 running jobs with 200 s left each, on workers measured at half the assumed rate.
    let slow = |id| WorkerObservation { hashes_per_s: RATE, ..busy(id) };
    let obs = Observation {
        now_ms: NOW,
        running_jobs: 8,
        running_iterations_left: 8 * 200 * RATE,
        workers: vec![slow(1), slow(2), slow(3), slow(4)],
        ..Observation::default()
    };
    let plan = decide(&config(), &obs);
    assert_eq!(plan.core_rate, RATE / 2);
    // The 8 jobs are already on 8 cores: nothing more can run them sooner.
    assert_eq!(actions(&plan), vec![]);
    // With 32 queued behind them, more cores help: 1600 + 32 * 100 core-s at RATE/2...
    let obs = Observation { queued_jobs: 32, queued_iterations: 32 * 100 * RATE, ..obs };
    let plan = decide(&config(), &obs);
    // ... is 9,600 core-seconds at half rate: 160 cores for 60 s, capped at 40 jobs: 16 workers,
    // capped at 8.
    assert_eq!(actions(&plan), vec![Action::Launch { count: 4 }]);
    assert_eq!(plan.held, vec![Why::AtMaximum { max: 8 }]);
}

#[test]
fn nothing_launches_when_the_running_fleet_finishes_before_a_new_worker_boots() {
    // 4 jobs of 40 s on one 2-core worker: 80 s, over the 60 s target, but a new worker needs
    // 90 s to boot here.
    let obs = Observation { workers: vec![busy(1)], boot_ms: Some(90_000), ..queued(4, 40) };
    let plan = decide(&config(), &obs);
    assert_eq!(actions(&plan), vec![]);
    assert_eq!(plan.held, vec![Why::FinishesBeforeBoot { work_ms: 80_000, boot_ms: 90_000 }]);
    // With the assumed 45 s boot, a launch pays off.
    let obs = Observation { boot_ms: None, ..obs };
    assert_eq!(actions(&decide(&config(), &obs)), vec![Action::Launch { count: 1 }]);
}

#[test]
fn a_worker_being_scaled_in_is_resumed_before_anything_is_launched() {
    let leaving = WorkerObservation { standing: Standing::ScalingIn, ..idle(1, 200_000) };
    let obs = Observation { workers: vec![witness(2), leaving], ..queued(12, 30) };
    // 360 core-s: 6 cores; 2 counted; the resumed worker brings 2, one launch the last 2.
    let plan = decide(&config(), &obs);
    assert_eq!(actions(&plan), vec![Action::Resume { worker: 1 }, Action::Launch { count: 1 }]);
    assert_eq!(plan.desired_workers, 2);
}

#[test]
fn an_idle_worker_is_drained_after_the_idle_time_then_terminated_once_it_holds_nothing() {
    let obs = Observation { workers: vec![witness(0), idle(1, 120_000), idle(2, 119_999)], ..queued(0, 0) };
    let plan = decide(&config(), &obs);
    assert_eq!(actions(&plan), vec![Action::Drain { worker: 1 }]);
    assert_eq!(plan.decisions[0].why, Why::Idle { idle_ms: 120_000 });
    assert_eq!(plan.desired_workers, 1);
    let drained = WorkerObservation { standing: Standing::ScalingIn, ..idle(1, 130_000) };
    let obs = Observation { workers: vec![witness(0), drained.clone(), idle(2, 10)], ..queued(0, 0) };
    assert_eq!(actions(&decide(&config(), &obs)), vec![Action::Terminate { worker: 1 }]);
    // Still handing a lease back: not yet.
    let handing_back = WorkerObservation { leases: 1, ..drained };
    let obs = Observation { workers: vec![witness(0), handing_back, idle(2, 10)], ..queued(0, 0) };
    assert_eq!(actions(&decide(&config(), &obs)), vec![]);
}

#[test]
fn while_jobs_wait_a_worker_being_scaled_in_is_resumed_rather_than_terminated() {
    // 3 jobs of 10 s on the witness's 2 busy cores: 30 s of work, within the target, so no
    // launch; but the drained worker is up and paid for: it takes them instead of going.
    let drained = |id| WorkerObservation { standing: Standing::ScalingIn, ..idle(id, 200_000) };
    let obs = Observation { workers: vec![witness(2), drained(1), drained(2), drained(3)], ..queued(3, 10) };
    let plan = decide(&config(), &obs);
    // Two workers' cores cover the 3 jobs; the third goes.
    assert_eq!(
        actions(&plan),
        vec![Action::Resume { worker: 1 }, Action::Resume { worker: 2 }, Action::Terminate { worker: 3 }]
    );
    assert_eq!(plan.decisions[0].why, Why::JobsWaiting { queued_jobs: 3 });
    assert_eq!(plan.desired_workers, 2);
    // No job waits: all three go.
    let obs = Observation { queued_jobs: 0, queued_iterations: 0, ..obs };
    assert_eq!(
        actions(&decide(&config(), &obs)),
        vec![Action::Terminate { worker: 1 }, Action::Terminate { worker: 2 }, Action::Terminate { worker: 3 }]
    );
}

#[test]
fn no_scale_in_within_the_cooldown_after_a_scale_out() {
    let obs = Observation { workers: vec![idle(1, 500_000)], last_scale_out_ms: Some(NOW - 119_999), ..queued(0, 0) };
    let plan = decide(&config(), &obs);
    assert_eq!(actions(&plan), vec![]);
    assert_eq!(plan.held, vec![Why::Cooldown { until_ms: NOW + 1 }]);
    let later = Observation { last_scale_out_ms: Some(NOW - 120_000), ..obs };
    assert_eq!(actions(&decide(&config(), &later)), vec![Action::Drain { worker: 1 }]);
}

#[test]
fn never_the_witness_never_a_busy_worker_never_one_the_scaler_did_not_launch() {
    let long_idle = idle(1, 900_000);
    assert_eq!(
        actions(&decide(&config(), &Observation { workers: vec![long_idle.clone()], ..queued(0, 0) })),
        vec![Action::Drain { worker: 1 }]
    );
    // Each of these differs from that worker in one way only, and none is touched.
    let cases = [
        ("the witness's worker", WorkerObservation { witness: true, ..long_idle.clone() }),
        ("a worker holding a lease", WorkerObservation { leases: 1, ..long_idle.clone() }),
        ("a worker not launched by the scaler", WorkerObservation { managed: false, ..long_idle.clone() }),
        (
            "a worker an operator drained",
            WorkerObservation { standing: Standing::DrainedByOperator, ..long_idle.clone() },
        ),
        (
            "an operator's worker once drained",
            WorkerObservation { managed: false, standing: Standing::ScalingIn, ..long_idle.clone() },
        ),
    ];
    for (what, worker) in cases {
        let plan = decide(&config(), &Observation { workers: vec![worker], ..queued(0, 0) });
        assert_eq!(actions(&plan), vec![], "{what}");
    }
}

#[test]
fn no_scale_in_while_jobs_wait_nor_below_the_minimum() {
    let workers = vec![idle(1, 900_000), idle(2, 800_000), idle(3, 700_000)];
    let waiting = Observation { workers: workers.clone(), ..queued(1, 1) };
    assert_eq!(actions(&decide(&config(), &waiting)), vec![]);
    let config = PolicyConfig { min_workers: 2, ..config() };
    let plan = decide(&config, &Observation { workers, ..queued(0, 0) });
    assert_eq!(actions(&plan), vec![Action::Drain { worker: 1 }], "the longest idle goes, two stay");
    assert_eq!(plan.desired_workers, 2);
}

#[test]
fn the_minimum_is_launched_whatever_the_load() {
    let config = PolicyConfig { min_workers: 2, ..config() };
    let plan = decide(&config, &Observation { workers: vec![witness(0)], ..queued(0, 0) });
    assert_eq!(actions(&plan), vec![Action::Launch { count: 2 }]);
    assert_eq!(plan.decisions[0].why, Why::BelowMinimum { workers: 0, min: 2 });
    let booting = Observation { workers: vec![witness(0)], launches_in_flight: in_flight(2, 1_000), ..queued(0, 0) };
    assert_eq!(actions(&decide(&config, &booting)), vec![]);
}

#[test]
fn a_launch_that_never_registers_is_given_up_and_launches_back_off_exponentially() {
    let obs = Observation { workers: vec![witness(2)], launches_in_flight: in_flight(1, 300_000), ..queued(40, 12) };
    let plan = decide(&config(), &obs);
    assert_eq!(actions(&plan), vec![Action::GiveUp { token: "t0".into() }], "no launch in the same breath");
    assert_eq!(plan.decisions[0].why, Why::NeverRegistered { waited_ms: 300_000 });
    assert_eq!(plan.held, vec![Why::BackingOff { failures: 1, until_ms: NOW + 10_000 }]);

    // After n failures in a row the pause is 10 s * 2^(n-1), at most 10 minutes.
    for (failures, pause) in [(1, 10_000), (2, 20_000), (3, 40_000), (7, 600_000), (40, 600_000)] {
        let failed = |ago: u64| Observation {
            workers: vec![witness(2)],
            consecutive_failures: failures,
            last_failure_ms: Some(NOW - ago),
            ..queued(40, 12)
        };
        let plan = decide(&config(), &failed(pause - 1));
        assert_eq!(actions(&plan), vec![], "{failures} failures, {pause} ms pause");
        assert_eq!(plan.held, vec![Why::BackingOff { failures, until_ms: NOW + 1 }]);
        assert_eq!(actions(&decide(&config(), &failed(pause))), vec![Action::Launch { count: 3 }]);
    }
}

#[test]
fn by_default_launches_back_off_from_5_s_to_at_most_20_s() {
    // A capacity error costs nothing to retry, while the backlog waits for every second of the
    // pause: capacity that comes back is tried within 20 s, however long it was gone.
    let config = PolicyConfig::default();
    for (failures, pause) in [(1, 5_000), (2, 10_000), (3, 20_000), (4, 20_000), (60, 20_000)] {
        let failed = |ago: u64| Observation {
            workers: vec![witness(2)],
            consecutive_failures: failures,
            last_failure_ms: Some(NOW - ago),
            ..queued(40, 12)
        };
        let plan = decide(&config, &failed(pause - 1));
        assert_eq!(actions(&plan), vec![], "{failures} failures, {pause} ms pause");
        assert_eq!(plan.held, vec![Why::BackingOff { failures, until_ms: NOW + 1 }], "{failures} failures");
        assert_eq!(actions(&decide(&config, &failed(pause))), vec![Action::Launch { count: 3 }], "{failures} failures");
    }
}

#[test]
fn once_boots_have_been_observed_a_launch_three_boots_overdue_is_given_up_before_the_timeout() {
    // Boots observed at 45 s: a launch not registered after 135 s has hung; it is given up then
    // (its instance no longer billed, no longer counted as capacity), not at the 300 s timeout.
    let obs = |ago_ms| Observation {
        workers: vec![witness(2)],
        launches_in_flight: in_flight(1, ago_ms),
        boot_ms: Some(45_000),
        ..queued(40, 12)
    };
    let plan = decide(&config(), &obs(135_000));
    assert_eq!(actions(&plan), vec![Action::GiveUp { token: "t0".into() }]);
    assert_eq!(plan.decisions[0].why, Why::NeverRegistered { waited_ms: 135_000 });
    assert_eq!(actions(&decide(&config(), &obs(134_999))), vec![Action::Launch { count: 2 }], "still counted");
    // Slow boots: never later than the timeout.
    let slow = Observation { boot_ms: Some(200_000), ..obs(300_000) };
    assert_eq!(actions(&decide(&config(), &slow)), vec![Action::GiveUp { token: "t0".into() }]);
    // Quick boots (local processes): a few seconds late is a busy host, not a hung launch.
    let quick = |ago_ms| Observation { boot_ms: Some(1_000), ..obs(ago_ms) };
    assert_eq!(actions(&decide(&config(), &quick(59_999))), vec![Action::Launch { count: 2 }]);
    assert_eq!(actions(&decide(&config(), &quick(60_000))), vec![Action::GiveUp { token: "t0".into() }]);
    // No boot observed yet: no evidence that it hung before the timeout.
    let unknown = Observation { boot_ms: None, ..obs(299_999) };
    assert_eq!(actions(&decide(&config(), &unknown)), vec![Action::Launch { count: 2 }]);
}

#[test]
fn every_reason_reads_as_a_sentence() {
    let why = Why::Backlog { work_ms: 240_000, target_ms: 60_000, cores_wanted: 8, cores_counted: 2 };
    assert_eq!(
        why.to_string(),
        "the work left takes 240.0 s on 2 cores, over the 60 s target; 8 cores drain it in time"
    );
    assert_eq!(Why::Idle { idle_ms: 120_000 }.to_string(), "idle for 120 s and no job waits");
}
