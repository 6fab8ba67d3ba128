//! What the report shows of each run: its figures, the printed table, the chart of the fleet.

use serde::Serialize;

use super::model::{Counts, Outcome};
use crate::report::Chart;

/// One policy's run on one trace, in the report's units.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// The policy's name.
    pub policy: &'static str,
    /// Median enqueue-to-completion latency (`None`: nothing completed).
    pub p50_ms: Option<u64>,
    /// 95th percentile enqueue-to-completion latency.
    pub p95_ms: Option<u64>,
    /// Instance time billed in minutes.
    pub instance_minutes: f64,
    /// Launches, failures, terminations, instance time, peak.
    #[serde(flatten)]
    pub counts: Counts,
    /// Jobs in the trace.
    pub jobs: usize,
    /// Jobs completed.
    pub jobs_completed: usize,
    /// When the run stopped (simulated minutes): every job done and every instance gone, or the
    /// drain allowance spent.
    pub ended_minutes: f64,
}

impl RunSummary {
    /// The summary of `outcome`, `policy`'s run.
    pub fn new(policy: &'static str, outcome: &Outcome) -> Self {
        RunSummary {
            policy,
            p50_ms: outcome.latency_quantile_ms(0.5),
            p95_ms: outcome.latency_quantile_ms(0.95),
            instance_minutes: outcome.counts.instance_ms as f64 / 60e3,
            counts: outcome.counts,
            jobs: outcome.jobs,
            jobs_completed: outcome.completed,
            ended_minutes: outcome.ended_ms as f64 / 60e3,
        }
    }
}

/// The printed table's header.
pub fn table_header() -> Vec<String> {
    vec![
        format!(
            "{:<16} {:<9} {:>7} {:>7} {:>8} {:>8} {:>9} {:>8} {:>6} {:>6} {:>11} {:>5}",
            "trace",
            "policy",
            "p50 s",
            "p95 s",
            "inst-min",
            "launches",
            "no-capac",
            "given-up",
            "terms",
            "busy-k",
            "jobs done",
            "peak"
        ),
        "-".repeat(107),
    ]
}

/// What the table's short column names mean.
pub fn table_legend() -> String {
    "inst-min: instance-minutes billed (launch request to termination, booting included, the witness's not \
     counted); no-capac: launches failed for lack of capacity; given-up: launches that never registered; \
     terms: terminations; busy-k: busy workers killed; peak: most instances at once"
        .to_owned()
}

/// The printed table's row for one run.
pub fn table_row(trace: &str, run: &RunSummary) -> String {
    let seconds = |ms: Option<u64>| ms.map_or("-".to_owned(), |ms| format!("{:.1}", ms as f64 / 1e3));
    format!(
        "{:<16} {:<9} {:>7} {:>7} {:>8.1} {:>8} {:>9} {:>8} {:>6} {:>6} {:>11} {:>5}",
        trace,
        run.policy,
        seconds(run.p50_ms),
        seconds(run.p95_ms),
        run.instance_minutes,
        run.counts.launches,
        run.counts.capacity_errors,
        run.counts.given_up,
        run.counts.terminations,
        run.counts.busy_workers_killed,
        format!("{}/{}", run.jobs_completed, run.jobs),
        run.counts.peak_instances,
    )
}

/// A chart of the billed fleet over time, one line per policy's run.
pub fn fleet_chart(trace: &str, runs: &[(&'static str, &Outcome)]) -> Chart {
    let lines = runs
        .iter()
        .map(|(policy, outcome)| {
            // A step line: each change is a vertical edge.
            let mut points = Vec::with_capacity(outcome.fleet.len() * 2 + 1);
            let mut last = 0.0;
            for &(ms, instances) in &outcome.fleet {
                let minutes = ms as f64 / 60e3;
                points.push((minutes, last));
                points.push((minutes, f64::from(instances)));
                last = f64::from(instances);
            }
            points.push((outcome.ended_ms as f64 / 60e3, last));
            (policy.to_string(), points)
        })
        .collect();
    Chart {
        title: format!("{trace}: instances billed over time"),
        x_desc: "simulated minutes".into(),
        y_desc: "instances (booting included)".into(),
        lines,
    }
}
