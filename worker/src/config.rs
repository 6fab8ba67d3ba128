//! The worker's configuration: one clap struct, every flag also from the environment, defaults
//! that join the local cluster.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
pub use wire::process::LogFormat;

/// A Tandem worker: leases jobs from the coordinators, computes them on every core, reports
/// results. With --witness it also runs the cluster's third Raft voter.
#[derive(Parser, Clone, Debug)]
#[command(version, about)]
pub struct Config {
    /// Coordinator base URLs, comma-separated or repeated; the worker fails over between them.
    #[arg(
        long = "coordinator",
        env = "TANDEM_COORDINATORS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080,http://127.0.0.1:8081"
    )]
    pub coordinators: Vec<String>,
    /// Jobs computed at once (default: every core).
    #[arg(long, env = "TANDEM_CORES")]
    pub cores: Option<usize>,
    /// A name for the registry (default: host-pid).
    #[arg(long, env = "TANDEM_WORKER_NAME")]
    pub name: Option<String>,
    /// The EC2 instance this worker runs on.
    #[arg(long, env = "TANDEM_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// The autoscaler's launch that started this worker (set by the launching provider).
    #[arg(long, env = "TANDEM_LAUNCH_TOKEN")]
    pub launch_token: Option<String>,
    /// Exit after failing to reach any coordinator for this long (unset: retry forever). The
    /// autoscaler's local provider sets it, so that a worker whose whole cluster is gone does
    /// not run on forever.
    #[arg(long, env = "TANDEM_GIVE_UP_AFTER_MS")]
    pub give_up_after_ms: Option<u64>,
    /// How long one lease request may wait for jobs.
    #[arg(long, env = "TANDEM_LONG_POLL_MS", default_value_t = 1_000)]
    pub long_poll_ms: u64,
    /// Iterations hashed between cancellation checks and checkpoints.
    #[arg(long, env = "TANDEM_CHUNK_ITERATIONS", default_value_t = 20_000)]
    pub chunk_iterations: u64,
    /// Also run the witness voter, on its own runtime.
    #[arg(long, env = "TANDEM_WITNESS")]
    pub witness: bool,
    /// The witness's node id.
    #[arg(long, env = "TANDEM_WITNESS_ID", default_value_t = 3)]
    pub witness_id: u64,
    /// Address the witness's Raft routes listen on.
    #[arg(long, env = "TANDEM_WITNESS_LISTEN", default_value = "127.0.0.1:8090")]
    pub witness_listen: SocketAddr,
    /// The witness's data directory.
    #[arg(long, env = "TANDEM_WITNESS_DATA_DIR", default_value = "data/witness")]
    pub witness_data_dir: PathBuf,
    /// The cluster secret, as the coordinators have it: sent on every /worker request, and
    /// required by the witness's /raft routes. Required: without it the worker refuses to
    /// start, unless `--insecure-no-cluster-secret` is given. Prefer the environment: a flag
    /// shows in `ps`.
    #[arg(long, env = "TANDEM_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Start without a cluster secret: the witness serves its /raft routes to anyone who
    /// reaches its port, and only coordinators without a secret accept this worker. For tests
    /// on a private machine only.
    #[arg(long, env = "TANDEM_INSECURE_NO_CLUSTER_SECRET")]
    pub insecure_no_cluster_secret: bool,
    /// Let a test harness cut the witness's links to chosen peers (`POST /raft/faults`). For
    /// the fault-injection suite only.
    #[arg(long, env = "TANDEM_FAULT_INJECTION")]
    pub fault_injection: bool,
    /// Serve Prometheus metrics (`GET /metrics`) on this address (unset: no metrics server).
    #[arg(long, env = "TANDEM_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, env = "TANDEM_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// Check what clap cannot: a cluster secret, or the explicit insecure flag.
    pub fn validate(&self) -> Result<(), String> {
        wire::check_cluster_secret(self.cluster_secret.as_deref(), self.insecure_no_cluster_secret)
    }

    /// Cores to use.
    pub fn cores(&self) -> usize {
        self.cores.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
    }

    /// The registry name.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
            format!("{}-{}", if host.is_empty() { "worker" } else { &host }, std::process::id())
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Config;

    #[test]
    fn no_cluster_secret_is_refused_at_startup_unless_the_insecure_flag_is_given() {
        let error = Config::parse_from(["worker"]).validate().expect_err("no secret is refused");
        assert!(error.contains("TANDEM_CLUSTER_SECRET"), "{error}");
        assert!(error.contains("--insecure-no-cluster-secret"), "{error}");
        let witness = Config::parse_from(["worker", "--witness"]).validate().expect_err("nor for a witness");
        assert_eq!(witness, error);
        Config::parse_from(["worker", "--insecure-no-cluster-secret"]).validate().expect("the flag allows it");
        Config::parse_from(["worker", "--cluster-secret", "s3cret"]).validate().expect("a secret is fine");
        let bad = Config::parse_from(["worker", "--cluster-secret", "s3cret "]).validate().expect_err("bad secret");
        assert!(!bad.contains("s3cret"), "the error shows the value: {bad}");
    }
}
