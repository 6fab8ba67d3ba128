//! [`decide`]: see the module documentation of [`crate::scaler`] for the rule.

use serde::{Deserialize, Serialize};

/// The knobs of the policy. Durations in milliseconds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Fewest workers, not counting the witness's (it is always there).
    pub min_workers: u32,
    /// Most workers, not counting the witness's, launches in flight included.
    pub max_workers: u32,
    /// Cores of a worker the scaler launches.
    pub cores_per_worker: u32,
    /// The backlog should take no longer than this to drain.
    pub drain_target_ms: u64,
    /// A worker holding no lease this long may be scaled in.
    pub idle_ms: u64,
    /// No scale-in this long after a scale-out.
    pub cooldown_ms: u64,
    /// A launch not registered within this is given up (its instance terminated).
    pub boot_timeout_ms: u64,
    /// Launch to registration, until one has been observed.
    pub assumed_boot_ms: u64,
    /// Chain steps per second of one core, until a worker has measured it.
    pub assumed_core_rate: u64,
    /// Pause after the first failed launch; doubled after each further one.
    pub backoff_base_ms: u64,
    /// Longest pause after failed launches: capacity that comes back is tried within this.
    pub backoff_max_ms: u64,
}

impl Default for PolicyConfig {
    /// Values for EC2 instances booting in under a minute; `deploy local` shortens the times.
    fn default() -> Self {
        PolicyConfig {
            min_workers: 0,
            max_workers: 4,
            cores_per_worker: 2,
            drain_target_ms: 60_000,
            idle_ms: 120_000,
            cooldown_ms: 120_000,
            boot_timeout_ms: 300_000,
            assumed_boot_ms: 45_000,
            assumed_core_rate: 1_000_000,
            // 5, 10, 20, 20 ... s. A capacity error is cheap to retry (it starts and bills
            // nothing) and the backlog waits while launches are held: a longer cap mostly delays
            // the first launch after capacity returns (`bench autoscale`, launch-failures trace).
            backoff_base_ms: 5_000,
            backoff_max_ms: 20_000,
        }
    }
}

/// Whether a worker takes work, and who stopped it if it does not.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Takes leases.
    Active,
    /// An operator drained it: the scaler neither counts it as capacity nor touches it.
    DrainedByOperator,
    /// The scaler is scaling it in: draining, to be terminated once it holds nothing.
    ScalingIn,
}

/// One registered worker as the policy sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorkerObservation {
    /// Its registry id.
    pub id: u64,
    /// Cores it hashes on.
    pub cores: u32,
    /// Leases it holds.
    pub leases: u32,
    /// Its chain steps per second over its last heartbeat period, all cores together.
    pub hashes_per_s: u64,
    /// Whether it takes work.
    pub standing: Standing,
    /// The witness's worker: never scaled in.
    pub witness: bool,
    /// Launched by the scaler, so the scaler can terminate it. Others (started by hand or by
    /// `deploy`) count toward the minimum but are never scaled in.
    pub managed: bool,
    /// Since when it has held no lease; `None` while it holds one.
    pub idle_since_ms: Option<u64>,
}

/// A launch committed but not yet registered as a worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LaunchInFlight {
    /// Its idempotency token.
    pub token: String,
    /// When it was decided.
    pub requested_at_ms: u64,
}

/// Everything [`decide`] looks at.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// The time of the decision (the leader's clock).
    pub now_ms: u64,
    /// Jobs waiting for a worker.
    pub queued_jobs: u64,
    /// Iterations those jobs still need.
    pub queued_iterations: u64,
    /// Jobs leased to workers.
    pub running_jobs: u64,
    /// Iterations those jobs still need, from their last checkpoints.
    pub running_iterations_left: u64,
    /// Every registered worker.
    pub workers: Vec<WorkerObservation>,
    /// Launches decided and not yet registered.
    pub launches_in_flight: Vec<LaunchInFlight>,
    /// Launch to registration, as observed so far.
    pub boot_ms: Option<u64>,
    /// The last scale-out (a launch or a resume).
    pub last_scale_out_ms: Option<u64>,
    /// Launches that failed since the last one that registered.
    pub consecutive_failures: u32,
    /// When the last of those failed.
    pub last_failure_ms: Option<u64>,
}

/// What the leader should do.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Launch this many workers.
    Launch { count: u32 },
    /// Make a worker being scaled in take work again (cheaper than a launch).
    Resume { worker: u64 },
    /// Start scaling a worker in: it hands its leases back and takes no new ones.
    Drain { worker: u64 },
    /// Terminate a drained worker's instance.
    Terminate { worker: u64 },
    /// Give up a launch that never registered: terminate whatever it started.
    GiveUp { token: String },
}

/// Why an action was taken, or why the fleet was left as it is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// The work left takes `work_ms` at the capacity counted (`cores_counted`, launches in
    /// flight included), over the target; `cores_wanted` drain it within the target.
    Backlog { work_ms: u64, target_ms: u64, cores_wanted: u32, cores_counted: u32 },
    /// Fewer workers than the minimum.
    BelowMinimum { workers: u32, min: u32 },
    /// It has held no lease for `idle_ms`, and no job waits.
    Idle { idle_ms: u64 },
    /// It was being scaled in and now holds nothing.
    Drained,
    /// `queued_jobs` wait: a worker being scaled in takes them instead of being terminated.
    JobsWaiting { queued_jobs: u64 },
    /// It has not registered `waited_ms` after its launch.
    NeverRegistered { waited_ms: u64 },
    /// Held: launches failed `failures` times in a row; the next may start at `until_ms`.
    BackingOff { failures: u32, until_ms: u64 },
    /// Held: the fleet is at its maximum.
    AtMaximum { max: u32 },
    /// Held: the running fleet finishes the work (`work_ms`) before a new worker could boot.
    FinishesBeforeBoot { work_ms: u64, boot_ms: u64 },
    /// Held: idle workers stay until the cooldown after the last scale-out ends.
    Cooldown { until_ms: u64 },
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |ms: &u64| *ms as f64 / 1_000.0;
        match self {
            Why::Backlog { work_ms, target_ms, cores_wanted, cores_counted } => write!(
                f,
                "the work left takes {:.1} s on {cores_counted} cores, over the {:.0} s target; {cores_wanted} cores drain it in time",
                s(work_ms),
                s(target_ms)
            ),
            Why::BelowMinimum { workers, min } => write!(f, "{workers} workers, below the minimum of {min}"),
            Why::Idle { idle_ms } => write!(f, "idle for {:.0} s and no job waits", s(idle_ms)),
            Why::Drained => write!(f, "scaled in: drained, holds no lease"),
            Why::JobsWaiting { queued_jobs } => {
                write!(f, "{queued_jobs} jobs wait: a worker being scaled in takes them instead")
            }
            Why::NeverRegistered { waited_ms } => write!(f, "launched {:.0} s ago and never registered", s(waited_ms)),
            Why::BackingOff { failures, until_ms } => {
                write!(f, "launches held after {failures} failures in a row, until {until_ms}")
            }
            Why::AtMaximum { max } => write!(f, "more workers wanted, but the fleet is at its maximum of {max}"),
            Why::FinishesBeforeBoot { work_ms, boot_ms } => write!(
                f,
                "the running workers finish the work in {:.1} s, before a new one could boot ({:.0} s)",
                s(work_ms),
                s(boot_ms)
            ),
            Why::Cooldown { until_ms } => {
                write!(f, "idle workers kept until the scale-out cooldown ends at {until_ms}")
            }
        }
    }
}

/// One action and its reason.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// Why.
    pub why: Why,
}

/// What [`decide`] concluded.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// What to do, in order.
    pub decisions: Vec<Decision>,
    /// Why something the load asked for was not done.
    pub held: Vec<Why>,
    /// Workers (the witness's not counted) once the plan is carried out.
    pub desired_workers: u32,
    /// The fleet's hash rate per core the plan assumed.
    pub core_rate: u64,
}

/// Decide what to do about the fleet. Pure: see the module documentation.
pub fn decide(config: &PolicyConfig, obs: &Observation) -> Plan {
    let now = obs.now_ms;
    let mut plan = Plan { core_rate: core_rate(config, &obs.workers), ..Plan::default() };
    let rate = plan.core_rate.max(1);

    // Launches that never registered are given up, and count as failures for the backoff.
    let mut failures = obs.consecutive_failures;
    let mut last_failure = obs.last_failure_ms;
    let mut launches_live = 0u32;
    let give_up_after_ms = give_up_after_ms(config, obs.boot_ms);
    for launch in &obs.launches_in_flight {
        let waited_ms = now.saturating_sub(launch.requested_at_ms);
        if waited_ms >= give_up_after_ms {
            plan.decisions.push(Decision {
                action: Action::GiveUp { token: launch.token.clone() },
                why: Why::NeverRegistered { waited_ms },
            });
            failures = failures.saturating_add(1);
            last_failure = Some(now);
        } else {
            launches_live += 1;
        }
    }

    let pool: Vec<&WorkerObservation> = obs.workers.iter().filter(|w| !w.witness).collect();
    // Machines, booting or registered, the witness's not counted.
    let mut fleet = pool.len() as u32 + launches_live;
    let active_cores: u32 = obs.workers.iter().filter(|w| w.standing == Standing::Active).map(|w| w.cores).sum();
    let cores_counted = active_cores + launches_live * config.cores_per_worker;
    let work = obs.queued_iterations.saturating_add(obs.running_iterations_left);
    let jobs = obs.queued_jobs.saturating_add(obs.running_jobs);
    let backoff_until = backoff_until(config, failures, last_failure);
    let backing_off = backoff_until.is_some_and(|until| now < until);

    // Out: the cores that drain the work within the target, never more than there are jobs.
    let work_ms_at = |cores: u32| drain_ms(work, cores.min(jobs.min(u32::MAX as u64) as u32), rate);
    let work_ms = work_ms_at(cores_counted);
    let cores_wanted = ((work as u128 * 1_000).div_ceil(rate as u128 * config.drain_target_ms.max(1) as u128))
        .min(jobs as u128)
        .min(u32::MAX as u128) as u32;
    let mut scaled_out = false;
    if work_ms > config.drain_target_ms && cores_wanted > cores_counted {
        let backlog = Why::Backlog { work_ms, target_ms: config.drain_target_ms, cores_wanted, cores_counted };
        let boot_ms = obs.boot_ms.unwrap_or(config.assumed_boot_ms);
        let running_ms = work_ms_at(active_cores);
        if active_cores > 0 && running_ms <= boot_ms {
            plan.held.push(Why::FinishesBeforeBoot { work_ms: running_ms, boot_ms });
        } else {
            let mut short = cores_wanted - cores_counted;
            for worker in pool.iter().filter(|w| w.standing == Standing::ScalingIn) {
                if short == 0 {
                    break;
                }
                plan.decisions.push(Decision { action: Action::Resume { worker: worker.id }, why: backlog.clone() });
                short = short.saturating_sub(worker.cores);
                scaled_out = true;
            }
            let wanted = short.div_ceil(config.cores_per_worker.max(1));
            let room = config.max_workers.saturating_sub(fleet);
            let count = wanted.min(room);
            if wanted > room {
                plan.held.push(Why::AtMaximum { max: config.max_workers });
            }
            if count > 0 {
                if backing_off {
                    plan.held.push(Why::BackingOff { failures, until_ms: backoff_until.unwrap_or(now) });
                } else {
                    plan.decisions.push(Decision { action: Action::Launch { count }, why: backlog });
                    fleet += count;
                    scaled_out = true;
                }
            }
        }
    }
    // The minimum, whatever the load.
    if fleet < config.min_workers {
        let count = config.min_workers - fleet;
        if backing_off {
            plan.held.push(Why::BackingOff { failures, until_ms: backoff_until.unwrap_or(now) });
        } else {
            plan.decisions.push(Decision {
                action: Action::Launch { count },
                why: Why::BelowMinimum { workers: fleet, min: config.min_workers },
            });
            fleet += count;
            scaled_out = true;
        }
    }

    // Jobs wait, the backlog within the target: a worker on its way out takes them rather than
    // being terminated. It is up and paid for; terminating it now and launching later would pay
    // a boot again, and the jobs would wait meanwhile.
    if !scaled_out && obs.queued_jobs > 0 {
        let mut waiting = obs.queued_jobs;
        for worker in pool.iter().filter(|w| w.standing == Standing::ScalingIn && w.managed) {
            if waiting == 0 {
                break;
            }
            plan.decisions.push(Decision {
                action: Action::Resume { worker: worker.id },
                why: Why::JobsWaiting { queued_jobs: obs.queued_jobs },
            });
            waiting = waiting.saturating_sub(u64::from(worker.cores));
        }
    }

    // In: terminate what finished draining; drain what has been idle long enough.
    let scaling_in = pool.iter().filter(|w| w.standing == Standing::ScalingIn).count() as u32;
    let resumed: Vec<u64> = plan
        .decisions
        .iter()
        .filter_map(|d| match d.action {
            Action::Resume { worker } => Some(worker),
            _ => None,
        })
        .collect();
    // Workers that stay (or boot): the fleet less those on their way out.
    let mut staying = fleet - (scaling_in - resumed.len() as u32);
    if !scaled_out {
        for worker in pool
            .iter()
            .filter(|w| w.standing == Standing::ScalingIn && w.managed && w.leases == 0)
            .filter(|w| !resumed.contains(&w.id))
        {
            plan.decisions.push(Decision { action: Action::Terminate { worker: worker.id }, why: Why::Drained });
        }
        let mut idle: Vec<(&WorkerObservation, u64)> = pool
            .iter()
            .filter(|w| w.standing == Standing::Active && w.managed && w.leases == 0)
            .filter_map(|w| w.idle_since_ms.map(|since| (*w, now.saturating_sub(since))))
            .filter(|(_, idle_ms)| *idle_ms >= config.idle_ms)
            .collect();
        // Longest idle first: those are the ones the minimum does not keep.
        idle.sort_by_key(|(w, idle_ms)| (std::cmp::Reverse(*idle_ms), w.id));
        let cooldown_until = obs.last_scale_out_ms.map(|at| at.saturating_add(config.cooldown_ms));
        if obs.queued_jobs > 0 || idle.is_empty() {
            // Nothing to scale in: a waiting job goes to an idle worker at its next lease.
        } else if let Some(until_ms) = cooldown_until.filter(|until| now < *until) {
            plan.held.push(Why::Cooldown { until_ms });
        } else {
            for (worker, idle_ms) in idle {
                if staying <= config.min_workers {
                    break;
                }
                plan.decisions
                    .push(Decision { action: Action::Drain { worker: worker.id }, why: Why::Idle { idle_ms } });
                staying -= 1;
            }
        }
    }
    plan.desired_workers = staying;
    plan
}

/// How long `work` iterations take on `cores` cores of `rate` steps per second, in ms
/// (`u64::MAX` when there is work and no core).
fn drain_ms(work: u64, cores: u32, rate: u64) -> u64 {
    if work == 0 {
        return 0;
    }
    if cores == 0 {
        return u64::MAX;
    }
    (work as u128 * 1_000).div_ceil(cores as u128 * rate as u128).min(u64::MAX as u128) as u64
}

/// The fleet's steps per second per core: the median over the workers that are computing
/// (each one's rate over the cores its leases keep busy), else the assumed rate.
fn core_rate(config: &PolicyConfig, workers: &[WorkerObservation]) -> u64 {
    let mut samples: Vec<u64> = workers
        .iter()
        .filter(|w| w.leases > 0 && w.hashes_per_s > 0 && w.cores > 0)
        .map(|w| w.hashes_per_s / u64::from(w.leases.min(w.cores)))
        .collect();
    if samples.is_empty() {
        return config.assumed_core_rate;
    }
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// How long a launch may take to register before it is given up: the boot timeout, or, once
/// boots have been observed, [`OVERDUE_BOOTS`] times the observed boot time (never under
/// [`MIN_GIVE_UP_MS`]: a local worker boots in a second, and one slowed by a busy host for a few
/// more has not hung) if that is shorter.
/// An instance that has not registered in three times the usual boot has almost surely hung
/// (ray#27521): waiting out the whole timeout bills it for nothing and keeps it counted as
/// capacity, so the backlog it was launched for waits too. No boot observed yet, no evidence:
/// the configured timeout.
fn give_up_after_ms(config: &PolicyConfig, boot_ms: Option<u64>) -> u64 {
    boot_ms.map_or(config.boot_timeout_ms, |boot| {
        boot.saturating_mul(OVERDUE_BOOTS).max(MIN_GIVE_UP_MS).min(config.boot_timeout_ms)
    })
}

/// The shortest wait before a launch is given up as overdue (see [`give_up_after_ms`]).
pub const MIN_GIVE_UP_MS: u64 = 60_000;

/// A launch not registered in this many observed boot times is given up (see [`give_up_after_ms`]).
pub const OVERDUE_BOOTS: u64 = 3;

/// When launches may start again after `failures` in a row, the last at `last_failure`.
fn backoff_until(config: &PolicyConfig, failures: u32, last_failure: Option<u64>) -> Option<u64> {
    let last = last_failure?;
    if failures == 0 {
        return None;
    }
    let doublings = (failures - 1).min(32);
    let pause = config.backoff_base_ms.saturating_mul(1u64 << doublings).min(config.backoff_max_ms);
    Some(last.saturating_add(pause))
}
