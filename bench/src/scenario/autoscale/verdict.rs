//! The headline check of a trace: Tandem's policy is no worse than each baseline on both p95
//! completion latency and instance time, and better on at least one of them.

use serde::Serialize;

use super::summary::RunSummary;

/// Tandem's policy against one baseline on one trace.
#[derive(Clone, Debug, Serialize)]
pub struct Against {
    /// The baseline's name.
    pub baseline: &'static str,
    /// p95 completion latency, Tandem's and the baseline's (`None`: nothing completed).
    pub p95_ms: (Option<u64>, Option<u64>),
    /// Instance time billed, Tandem's and the baseline's.
    pub instance_ms: (u64, u64),
}

impl Against {
    /// Tandem's run against `baseline`'s.
    pub fn new(tandem: &RunSummary, baseline: &RunSummary) -> Self {
        Against {
            baseline: baseline.policy,
            p95_ms: (tandem.p95_ms, baseline.p95_ms),
            instance_ms: (tandem.counts.instance_ms, baseline.counts.instance_ms),
        }
    }

    /// Whether Tandem's p95 is no worse, then better; a run that completed nothing is worst.
    fn latency(&self) -> (bool, bool) {
        let (tandem, baseline) = (self.p95_ms.0.unwrap_or(u64::MAX), self.p95_ms.1.unwrap_or(u64::MAX));
        (tandem <= baseline, tandem < baseline)
    }

    fn cost(&self) -> (bool, bool) {
        (self.instance_ms.0 <= self.instance_ms.1, self.instance_ms.0 < self.instance_ms.1)
    }

    /// No worse on both, better on one.
    pub fn passed(&self) -> bool {
        let ((latency_ok, latency_better), (cost_ok, cost_better)) = (self.latency(), self.cost());
        latency_ok && cost_ok && (latency_better || cost_better)
    }

    /// "vs peers: p95 190.2 s vs 240.0 s (better), 512.3 vs 480.1 instance-min (WORSE)".
    pub fn describe(&self) -> String {
        let mark = |(ok, better): (bool, bool)| match (ok, better) {
            (true, true) => "better",
            (true, false) => "same",
            _ => "WORSE",
        };
        let seconds = |ms: Option<u64>| ms.map_or("-".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1e3));
        let minutes = |ms: u64| format!("{:.1}", ms as f64 / 60e3);
        format!(
            "vs {}: p95 {} vs {} ({}), {} vs {} instance-min ({})",
            self.baseline,
            seconds(self.p95_ms.0),
            seconds(self.p95_ms.1),
            mark(self.latency()),
            minutes(self.instance_ms.0),
            minutes(self.instance_ms.1),
            mark(self.cost()),
        )
    }
}

/// The verdict on one trace.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// The trace's name.
    pub trace: &'static str,
    /// Passed against every baseline.
    pub passed: bool,
    /// Against each baseline.
    pub against: Vec<Against>,
}

impl Verdict {
    /// The verdict of `tandem`'s run against the `baselines`' runs on `trace`.
    pub fn new(trace: &'static str, tandem: &RunSummary, baselines: &[&RunSummary]) -> Self {
        let against: Vec<Against> = baselines.iter().map(|b| Against::new(tandem, b)).collect();
        Verdict { trace, passed: against.iter().all(Against::passed), against }
    }

    /// The verdict on means over seeds: Tandem's (p95 ms, instance ms) against each baseline's.
    pub fn of_means(trace: &'static str, tandem: (u64, u64), baselines: Vec<(&'static str, (u64, u64))>) -> Self {
        let against: Vec<Against> = baselines
            .into_iter()
            .map(|(baseline, (p95, instance))| Against {
                baseline,
                p95_ms: (Some(tandem.0), Some(p95)),
                instance_ms: (tandem.1, instance),
            })
            .collect();
        Verdict { trace, passed: against.iter().all(Against::passed), against }
    }

    /// One printed line.
    pub fn line(&self) -> String {
        let against: Vec<String> = self.against.iter().map(Against::describe).collect();
        format!("{:<16} {:<4}  {}", self.trace, if self.passed { "PASS" } else { "FAIL" }, against.join("; "))
    }
}
