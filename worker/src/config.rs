//! The worker's configuration: one clap struct, every flag also from the environment, defaults
//! that join the local cluster.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::witness::WitnessConfig;

/// How logs are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

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
    /// How long one lease request may wait for jobs.
    #[arg(long, env = "TANDEM_LONG_POLL_MS", default_value_t = 1_000)]
    pub long_poll_ms: u64,
    /// Iterations hashed between cancellation checks and checkpoints.
    #[arg(long, env = "TANDEM_CHUNK_ITERATIONS", default_value_t = 20_000)]
    pub chunk_iterations: u64,
    /// How long a stopping worker tries to hand its jobs back and flush its results before it
    /// exits anyway (the leases then expire and the jobs resume from their last heartbeat).
    #[arg(long, env = "TANDEM_DRAIN_TIMEOUT_MS", default_value_t = 5_000)]
    pub drain_timeout_ms: u64,
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
    /// Shared secret of the internal /raft routes (as the coordinators have it).
    #[arg(long, env = "TANDEM_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Log format.
    #[arg(long, env = "TANDEM_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// Cores to use.
    pub fn cores(&self) -> usize {
        self.cores.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
    }

    /// The witness voter's part of the configuration.
    pub fn witness_config(&self) -> WitnessConfig {
        WitnessConfig {
            id: self.witness_id,
            listen: self.witness_listen,
            data_dir: self.witness_data_dir.clone(),
            secret: self.cluster_secret.clone(),
        }
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
    use super::*;

    #[test]
    fn zero_flags_join_the_local_cluster() {
        let config = Config::try_parse_from(["worker"]).expect("no flag is required");
        assert_eq!(config.coordinators, ["http://127.0.0.1:8080", "http://127.0.0.1:8081"]);
        assert!(config.cores() >= 1);
        assert_eq!(config.long_poll_ms, 1_000);
        assert_eq!(config.chunk_iterations, 20_000);
        assert!(!config.witness);
        assert_eq!(config.witness_id, 3);
        assert_eq!(config.witness_listen, "127.0.0.1:8090".parse().expect("an address"));
        assert!(config.name().ends_with(&format!("-{}", std::process::id())));
    }

    #[test]
    fn coordinators_are_repeated_or_comma_separated() {
        let config =
            Config::try_parse_from(["worker", "--coordinator", "http://a,http://b", "--coordinator", "http://c"])
                .expect("valid flags");
        assert_eq!(config.coordinators, ["http://a", "http://b", "http://c"]);
    }

    #[test]
    fn explicit_values_win() {
        let config =
            Config::try_parse_from(["worker", "--cores", "3", "--name", "w", "--log-format", "json"]).expect("valid");
        assert_eq!(config.cores(), 3);
        assert_eq!(config.name(), "w");
        assert_eq!(config.log_format, LogFormat::Json);
        let zero = Config::try_parse_from(["worker", "--cores", "0"]).expect("valid");
        assert_eq!(zero.cores(), 1);
    }
}
