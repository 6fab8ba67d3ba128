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
    /// A one-time join secret to exchange, at start, for the cluster secret (`POST /worker/join`,
    /// with `--launch-token`): how a worker the leader launched on EC2 gets it without its
    /// launch data holding it. Set by the launch's root-only environment file; never a flag on a
    /// command line (it would show in `ps`).
    #[arg(long, env = "TANDEM_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Read the join secret (see `--join-token`) from this file instead.
    #[arg(long, env = "TANDEM_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
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
    /// Check what clap cannot: a cluster secret, a join secret to get it with, or the explicit
    /// insecure flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.joins() {
            if self.cluster_secret.is_some() || self.insecure_no_cluster_secret {
                return Err("a join secret (TANDEM_JOIN_TOKEN or --join-token-file) is exchanged for the cluster \
                            secret: give one or the other, not both"
                    .into());
            }
            if self.join_token.is_some() && self.join_token_file.is_some() {
                return Err("give the join secret once: TANDEM_JOIN_TOKEN or --join-token-file".into());
            }
            if self.launch_token.is_none() {
                return Err("a join secret needs the launch it was made for (TANDEM_LAUNCH_TOKEN)".into());
            }
            return Ok(());
        }
        wire::check_cluster_secret(self.cluster_secret.as_deref(), self.insecure_no_cluster_secret)
    }

    /// Whether this worker gets the cluster secret by exchanging a join secret.
    pub fn joins(&self) -> bool {
        self.join_token.is_some() || self.join_token_file.is_some()
    }

    /// The join secret, from the environment or its file (trimmed of a final newline).
    pub fn join_secret(&self) -> Result<Option<String>, String> {
        if let Some(secret) = &self.join_token {
            return Ok(Some(secret.clone()));
        }
        let Some(path) = &self.join_token_file else { return Ok(None) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the join secret from {}: {e}", path.display()))?;
        Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
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

    #[test]
    fn a_join_secret_replaces_the_cluster_secret_and_needs_its_launch_token() {
        let joining = ["worker", "--join-token", "j0in", "--launch-token", "t-1"];
        Config::parse_from(joining).validate().expect("a join secret and its launch");
        Config::parse_from(["worker", "--join-token", "j0in"]).validate().expect_err("no launch token");
        let both = [&joining[..], &["--cluster-secret", "s3cret"]].concat();
        Config::parse_from(both).validate().expect_err("both secrets");
        let insecure = [&joining[..], &["--insecure-no-cluster-secret"]].concat();
        Config::parse_from(insecure).validate().expect_err("a join secret and the insecure flag");

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("join");
        std::fs::write(&path, "j0in-from-a-file\n").expect("write");
        let from_file =
            Config::parse_from(["worker", "--join-token-file", path.to_str().expect("utf-8"), "--launch-token", "t-1"]);
        from_file.validate().expect("a join secret in a file");
        assert_eq!(from_file.join_secret(), Ok(Some("j0in-from-a-file".into())));
        let missing = Config::parse_from(["worker", "--join-token-file", "/nonexistent/join", "--launch-token", "t"]);
        assert!(missing.join_secret().is_err());
    }
}
