//! The load the simulated fleet faces: when jobs arrive and how big they are, and which
//! launches fail. Job sizes are given in seconds of one core at the model's mean rate and
//! converted to iterations, as a client that knows its jobs would size them.

use rand::Rng;
use rand::rngs::StdRng;
use serde::Serialize;

use super::model::seeded;

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;

/// One job entering the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// When it is enqueued (simulated ms since the start).
    pub at_ms: u64,
    /// Chain steps it needs.
    pub iterations: u64,
}

/// What becomes of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaunchFate {
    /// The instance boots and registers as a worker.
    Boots,
    /// The launch call fails at once (no capacity): nothing runs, nothing is billed.
    CapacityError,
    /// An instance starts, and is billed, but never registers; only the policy's boot timeout
    /// notices it.
    NeverRegisters,
}

/// How launches fail in a trace.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LaunchFailures {
    /// Windows `[from_ms, to_ms)` during which every launch fails at once.
    pub capacity_errors_ms: Vec<(u64, u64)>,
    /// Chance that a launch outside those windows starts an instance that never registers.
    pub never_registers: f64,
}

impl LaunchFailures {
    /// The fate of a launch requested at `at_ms`, given a uniform draw in `[0, 1)`.
    pub fn fate(&self, at_ms: u64, draw: f64) -> LaunchFate {
        if self.capacity_errors_ms.iter().any(|(from, to)| (*from..*to).contains(&at_ms)) {
            LaunchFate::CapacityError
        } else if draw < self.never_registers {
            LaunchFate::NeverRegisters
        } else {
            LaunchFate::Boots
        }
    }
}

/// A load to run every policy against.
#[derive(Clone, Debug)]
pub struct Trace {
    /// Its name in the report.
    pub name: &'static str,
    /// What it is, in a few words.
    pub about: String,
    /// Jobs, in order of arrival.
    pub arrivals: Vec<Arrival>,
    /// When the trace ends: no job arrives after it; the fleet then has time to finish and
    /// scale in.
    pub end_ms: u64,
    /// Which launches fail.
    pub launch_failures: LaunchFailures,
}

/// Every trace, shortened with `quick`, for workers whose cores hash `core_rate` steps per
/// second on average, drawn from `seed`.
pub fn all(quick: bool, core_rate: u64, seed: u64) -> Vec<Trace> {
    // Full traces last hours; quick ones a fraction, with the same shapes.
    let pick = |full: u64, short: u64| if quick { short } else { full };
    let rng = |stream: u64| seeded(seed, &[0x7472_6163_6500, stream]);
    let sizes = JobSizes { mean_s: 60.0, core_rate };

    let steady_end = pick(3 * HOUR, 45 * MINUTE);
    let steady = Trace {
        name: "steady",
        about: "Poisson arrivals, 60 s mean jobs, offered load 6 cores (3 workers)".into(),
        arrivals: poisson(&mut rng(1), 0, steady_end, |_| 6.0 / 60.0, 6.0 / 60.0, &sizes),
        end_ms: steady_end,
        launch_failures: LaunchFailures::default(),
    };

    let burst_at = pick(10 * MINUTE, 5 * MINUTE);
    let burst_jobs = pick(200, 100);
    let burst = Trace {
        name: "burst",
        about: format!("idle, then {burst_jobs} jobs of 30 s at once, then idle"),
        arrivals: all_at_once(burst_at, burst_jobs, 30 * core_rate),
        end_ms: pick(2 * HOUR, 30 * MINUTE),
        launch_failures: LaunchFailures::default(),
    };

    let ramp_end = pick(3 * HOUR, 45 * MINUTE);
    let ramp_peak = 14.0 / 60.0;
    let ramp = Trace {
        name: "ramp",
        about: "load rising linearly from 0 to 14 cores and back, 60 s mean jobs".into(),
        arrivals: poisson(
            &mut rng(2),
            0,
            ramp_end,
            |t| ramp_peak * (1.0 - (2.0 * t as f64 / ramp_end as f64 - 1.0).abs()),
            ramp_peak,
            &sizes,
        ),
        end_ms: ramp_end,
        launch_failures: LaunchFailures::default(),
    };

    let spike_from = 5 * MINUTE;
    let spike_to = spike_from + 5 * MINUTE;
    let spike = Trace {
        name: "spike-then-idle",
        about: "5 minutes at 12 cores of load, then idle".into(),
        arrivals: poisson(&mut rng(3), spike_from, spike_to, |_| 12.0 / 60.0, 12.0 / 60.0, &sizes),
        end_ms: pick(3 * HOUR, 40 * MINUTE),
        launch_failures: LaunchFailures::default(),
    };

    let day = pick(4 * HOUR, HOUR);
    let diurnal_peak = 14.0 / 60.0;
    let diurnal = Trace {
        name: "diurnal",
        about: format!("a day compressed into {} min: load from 1.4 cores at night to 14 at noon", day / MINUTE),
        arrivals: poisson(
            &mut rng(4),
            0,
            day,
            |t| {
                let phase = 2.0 * std::f64::consts::PI * t as f64 / day as f64;
                diurnal_peak * (0.1 + 0.9 * (1.0 - phase.cos()) / 2.0)
            },
            diurnal_peak,
            &sizes,
        ),
        end_ms: day,
        launch_failures: LaunchFailures::default(),
    };

    let failures_end = pick(2 * HOUR, 40 * MINUTE);
    let failures_burst_at = pick(10 * MINUTE, 5 * MINUTE);
    let failures_burst_jobs = pick(300, 150);
    let mut failing_arrivals = poisson(&mut rng(5), 0, failures_end, |_| 2.0 / 60.0, 2.0 / 60.0, &sizes);
    failing_arrivals.extend(all_at_once(failures_burst_at, failures_burst_jobs, 40 * core_rate));
    failing_arrivals.sort_by_key(|a| a.at_ms);
    let launch_failures = Trace {
        name: "launch-failures",
        about: format!(
            "2 cores of load, a burst of {failures_burst_jobs} jobs of 40 s; every launch fails for the \
             10 minutes after the burst, and a quarter of the instances never register"
        ),
        arrivals: failing_arrivals,
        end_ms: failures_end,
        launch_failures: LaunchFailures {
            capacity_errors_ms: vec![(failures_burst_at, failures_burst_at + 10 * MINUTE)],
            never_registers: 0.25,
        },
    };

    vec![steady, burst, ramp, spike, diurnal, launch_failures]
}

/// Job sizes: exponential with a mean of `mean_s` seconds of one core, within 1 s and 15 min.
struct JobSizes {
    mean_s: f64,
    core_rate: u64,
}

impl JobSizes {
    fn draw(&self, rng: &mut StdRng) -> u64 {
        let seconds = (-self.mean_s * (1.0 - rng.random::<f64>()).ln()).clamp(1.0, 900.0);
        ((seconds * self.core_rate as f64) as u64).max(1)
    }
}

/// `count` jobs of `iterations` each, enqueued at `at_ms`.
fn all_at_once(at_ms: u64, count: u64, iterations: u64) -> Vec<Arrival> {
    (0..count).map(|_| Arrival { at_ms, iterations }).collect()
}

/// Arrivals in `[from_ms, to_ms)` at `rate(t)` jobs per second (at most `max_rate`): a Poisson
/// process at the maximum rate, each arrival kept with probability `rate(t) / max_rate`.
fn poisson(
    rng: &mut StdRng,
    from_ms: u64,
    to_ms: u64,
    rate: impl Fn(u64) -> f64,
    max_rate: f64,
    sizes: &JobSizes,
) -> Vec<Arrival> {
    let mut arrivals = Vec::new();
    let mut t = from_ms as f64;
    loop {
        t += -(1.0 - rng.random::<f64>()).ln() / max_rate * 1_000.0;
        if t >= to_ms as f64 {
            return arrivals;
        }
        let at_ms = t as u64;
        let keep = rng.random::<f64>() < rate(at_ms) / max_rate;
        // Drawn either way, so that the sizes do not depend on the thinning.
        let iterations = sizes.draw(rng);
        if keep {
            arrivals.push(Arrival { at_ms, iterations });
        }
    }
}
