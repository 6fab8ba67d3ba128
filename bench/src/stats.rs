//! Latency distributions.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies in microseconds.
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies { histogram: Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid") }
    }
}

/// A summary of a distribution, in milliseconds.
#[derive(Serialize, Clone, Copy, Debug, Default)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median (ms).
    pub p50_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// Maximum (ms).
    pub max_ms: f64,
}

impl Latencies {
    /// Add one sample.
    pub fn record(&mut self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, 600_000_000);
        self.histogram.record(micros).expect("clamped into bounds");
    }

    /// Merge another distribution into this one.
    pub fn merge(&mut self, other: &Latencies) {
        self.histogram.add(&other.histogram).expect("same bounds");
    }

    /// Median, p99, max.
    pub fn summary(&self) -> Summary {
        let ms = |micros: u64| micros as f64 / 1_000.0;
        Summary {
            count: self.histogram.len(),
            p50_ms: ms(self.histogram.value_at_quantile(0.5)),
            p99_ms: ms(self.histogram.value_at_quantile(0.99)),
            max_ms: ms(self.histogram.max()),
        }
    }
}
