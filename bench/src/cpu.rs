//! CPU time spent on a piece of work, by process: the bench's own (`getrusage`) and each cluster
//! process's (the `process_cpu_seconds_total` its `/metrics` reports). Dividing by the work done
//! in between says where a throughput figure's CPU went, which a ratio alone cannot.

use nix::sys::resource::{UsageWho, getrusage};

/// The processes whose CPU a meter reads: a name for the report and a `/metrics` URL each.
pub struct CpuMeter {
    http: reqwest::Client,
    processes: Vec<(String, String)>,
}

/// CPU seconds used so far: the bench's own, then each process's in the meter's order (`None`
/// where the scrape failed or lacked the counter).
#[derive(Clone, Debug)]
pub struct CpuSample {
    own: f64,
    processes: Vec<Option<f64>>,
}

impl CpuMeter {
    /// A meter over `processes` (name, `/metrics` URL).
    pub fn new(http: reqwest::Client, processes: Vec<(String, String)>) -> Self {
        CpuMeter { http, processes }
    }

    /// The processes' names, in sample order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.processes.iter().map(|(name, _)| name.as_str())
    }

    /// Read every counter now.
    pub async fn sample(&self) -> CpuSample {
        let mut processes = Vec::with_capacity(self.processes.len());
        for (_, url) in &self.processes {
            let text = match self.http.get(url).send().await {
                Ok(response) => response.text().await.ok(),
                Err(_) => None,
            };
            processes.push(text.as_deref().and_then(cpu_seconds_in));
        }
        CpuSample { own: own_cpu_seconds(), processes }
    }
}

impl CpuSample {
    /// CPU seconds the bench itself used since `earlier`.
    pub fn own_since(&self, earlier: &CpuSample) -> f64 {
        self.own - earlier.own
    }

    /// CPU seconds each process used since `earlier` (`None` where either sample lacks it).
    pub fn processes_since(&self, earlier: &CpuSample) -> Vec<Option<f64>> {
        self.processes.iter().zip(&earlier.processes).map(|(now, then)| Some((*now)? - (*then)?)).collect()
    }
}

/// User plus system CPU seconds of this process so far.
fn own_cpu_seconds() -> f64 {
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |usage| {
        let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        seconds(usage.user_time()) + seconds(usage.system_time())
    })
}

/// The value of the unlabelled `process_cpu_seconds_total` sample in a Prometheus exposition.
fn cpu_seconds_in(exposition: &str) -> Option<f64> {
    exposition.lines().find_map(|line| line.strip_prefix("process_cpu_seconds_total ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cpu_counter_is_found_among_other_samples() {
        let text = "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
                    # TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total_other 9\n\
                    process_cpu_seconds_total 12.34\n\
                    process_threads 7\n";
        assert_eq!(super::cpu_seconds_in(text), Some(12.34));
        assert_eq!(super::cpu_seconds_in("process_threads 7\n"), None);
    }

    #[test]
    fn the_bench_sees_its_own_cpu_time_grow() {
        let before = super::own_cpu_seconds();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        assert!(super::own_cpu_seconds() - before >= 0.05, "200 ms of spinning used no CPU time");
    }
}
