//! CPU time spent on a piece of work, by process: the bench's own (`getrusage`), each process of
//! a local cluster's (`/proc/<pid>/stat`, in clock ticks), and each voter's WAL fsyncs
//! (`tandem_wal_fsyncs_total` on its `/metrics`) and the AppendEntries it received
//! (`tandem_raft_appends_received_total`: replication rounds, heartbeats included). Dividing by
//! the work done in between says where a throughput figure's CPU went and how well it was
//! batched, which a ratio alone cannot.
//!
//! The `process_cpu_seconds_total` every process serves counts whole seconds (metrics counters
//! are integers): right for Prometheus's long windows, too coarse for a 4 s round. So the CPU of
//! a process the bench did not start (`--url`) is not reported.
//!
//! A local process's resident memory is read from `/proc/<pid>/statm` too (for `soak`).

use nix::sys::resource::{UsageWho, getrusage};

/// One process a meter reads.
pub struct MeteredProcess {
    /// Its name in the report.
    pub name: String,
    /// Its `/metrics` URL (for the fsync counter).
    pub metrics_url: String,
    /// Its pid, when it runs on this machine (for its CPU time).
    pub pid: Option<u32>,
}

/// The processes whose counters a meter reads.
pub struct CpuMeter {
    http: reqwest::Client,
    processes: Vec<MeteredProcess>,
}

/// Counters so far: the bench's own CPU seconds, then each process's CPU seconds and fsyncs in
/// the meter's order (`None` where the scrape failed or lacked the counter).
#[derive(Clone, Debug)]
pub struct CpuSample {
    own: f64,
    processes: Vec<Option<f64>>,
    fsyncs: Vec<Option<f64>>,
    appends: Vec<Option<f64>>,
}

impl CpuMeter {
    /// A meter over `processes`.
    pub fn new(http: reqwest::Client, processes: Vec<MeteredProcess>) -> Self {
        CpuMeter { http, processes }
    }

    /// The processes' names, in sample order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.processes.iter().map(|process| process.name.as_str())
    }

    /// Read every counter now.
    pub async fn sample(&self) -> CpuSample {
        let mut processes = Vec::with_capacity(self.processes.len());
        let mut fsyncs = Vec::with_capacity(self.processes.len());
        let mut appends = Vec::with_capacity(self.processes.len());
        for process in &self.processes {
            let text = match self.http.get(&process.metrics_url).send().await {
                Ok(response) => response.text().await.ok(),
                Err(_) => None,
            };
            processes.push(process.pid.and_then(cpu_seconds_of));
            fsyncs.push(text.as_deref().and_then(|text| counter_in(text, "tandem_wal_fsyncs_total")));
            appends.push(text.as_deref().map(|text| labelled_sum(text, "tandem_raft_appends_received_total", &[])));
        }
        CpuSample { own: own_cpu_seconds(), processes, fsyncs, appends }
    }
}

impl CpuSample {
    /// CPU seconds the bench itself used since `earlier`.
    pub fn own_since(&self, earlier: &CpuSample) -> f64 {
        self.own - earlier.own
    }

    /// CPU seconds each process used since `earlier` (`None` where either sample lacks it).
    pub fn processes_since(&self, earlier: &CpuSample) -> Vec<Option<f64>> {
        deltas(&self.processes, &earlier.processes)
    }

    /// WAL fsyncs of each process since `earlier` (`None` for a process that is no voter).
    pub fn fsyncs_since(&self, earlier: &CpuSample) -> Vec<Option<f64>> {
        deltas(&self.fsyncs, &earlier.fsyncs)
    }

    /// AppendEntries each process received since `earlier` (0 for one that received none).
    pub fn appends_since(&self, earlier: &CpuSample) -> Vec<Option<f64>> {
        deltas(&self.appends, &earlier.appends)
    }
}

fn deltas(now: &[Option<f64>], then: &[Option<f64>]) -> Vec<Option<f64>> {
    now.iter().zip(then).map(|(now, then)| Some((*now)? - (*then)?)).collect()
}

/// User plus system CPU seconds of this process so far.
fn own_cpu_seconds() -> f64 {
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |usage| {
        let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        seconds(usage.user_time()) + seconds(usage.system_time())
    })
}

/// User plus system CPU seconds of process `pid` so far, to the clock tick.
fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// Resident memory of process `pid` now, in bytes (`/proc/<pid>/statm`).
pub fn rss_bytes_of(pid: u32) -> Option<u64> {
    let statm = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?.statm().ok()?;
    Some(statm.resident * procfs::page_size())
}

/// The value of the unlabelled sample `name` in a Prometheus exposition.
fn counter_in(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The sum of the samples of `name` in a Prometheus exposition whose labels include every one of
/// `labels` (each `(key, value)`); 0 when there are none.
pub fn labelled_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter_map(|line| {
            let (set, value) = line.strip_prefix(name)?.strip_prefix('{')?.split_once("} ")?;
            let has = |&(key, wanted): &(&str, &str)| {
                set.split(',').any(|pair| {
                    pair.split_once('=').and_then(|(k, v)| Some((k, v.strip_prefix('"')?.strip_suffix('"')?)))
                        == Some((key, wanted))
                })
            };
            labels.iter().all(has).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
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
        assert_eq!(super::counter_in(text, "process_cpu_seconds_total"), Some(12.34));
        assert_eq!(super::counter_in(text, "process_threads"), Some(7.0));
        assert_eq!(super::counter_in("process_threads 7\n", "process_cpu_seconds_total"), None);
    }

    #[test]
    fn labelled_samples_are_summed_by_their_labels() {
        let text = "tandem_raft_rpc_timeouts_total{kind=\"append\",peer=\"2\"} 3\n\
                    tandem_raft_rpc_timeouts_total{kind=\"heartbeat\",peer=\"2\"} 5\n\
                    tandem_raft_rpc_timeouts_total{kind=\"append\",peer=\"3\"} 7\n\
                    tandem_raft_rpc_timeouts_total_other{kind=\"append\",peer=\"2\"} 100\n\
                    tandem_raft_snapshots_sent_total{peer=\"22\"} 9\n";
        let sum = super::labelled_sum;
        assert_eq!(sum(text, "tandem_raft_rpc_timeouts_total", &[("peer", "2"), ("kind", "append")]), 3.0);
        assert_eq!(sum(text, "tandem_raft_rpc_timeouts_total", &[("peer", "2")]), 8.0);
        assert_eq!(sum(text, "tandem_raft_rpc_timeouts_total", &[]), 15.0);
        assert_eq!(sum(text, "tandem_raft_snapshots_sent_total", &[("peer", "2")]), 0.0, "peer 22 is not peer 2");
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

    #[test]
    fn a_process_resident_memory_is_read() {
        let rss = super::rss_bytes_of(std::process::id()).expect("own statm");
        assert!((1 << 20..1 << 40).contains(&rss), "resident memory read as {rss} bytes");
    }

    #[test]
    fn a_process_cpu_time_is_read_to_the_tick() {
        let pid = std::process::id();
        let before = super::cpu_seconds_of(pid).expect("own stat");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let used = super::cpu_seconds_of(pid).expect("own stat") - before;
        assert!((0.05..1.0).contains(&used), "200 ms of spinning read as {used} s");
    }
}
