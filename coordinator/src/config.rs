//! The coordinator's configuration: one clap struct, every flag also readable from the
//! environment, defaults that make a zero-flag run coordinator 1 of the local cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use raft_store::{NodeId, NodeInfo, Role};
pub use wire::process::LogFormat;
use wire::scaler::PolicyConfig;

pub use wire::members::Member;

/// A Tandem coordinator: serves the client API and the worker routes, and votes in Raft.
#[derive(Parser, Clone, Debug)]
#[command(version, about, args_override_self = true)]
pub struct Config {
    /// This coordinator's node id.
    #[arg(long, env = "TANDEM_ID", default_value_t = 1)]
    pub id: NodeId,
    /// Address to listen on for the API, worker and Raft routes.
    #[arg(long, env = "TANDEM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the Raft log and snapshots live (default: ./data/coordinator-ID).
    #[arg(long, env = "TANDEM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Every voter, `ID=ROLE@HOST:PORT`, comma-separated or repeated.
    #[arg(
        long = "member",
        env = "TANDEM_MEMBERS",
        value_delimiter = ',',
        default_value = "1=coordinator@127.0.0.1:8080,2=coordinator@127.0.0.1:8081,3=witness@127.0.0.1:8090"
    )]
    pub members: Vec<Member>,
    /// Form the cluster from `--member` if this node has never been part of one. Give it to one
    /// coordinator only, and never to one whose data directory was lost.
    #[arg(long, env = "TANDEM_INITIALIZE")]
    pub initialize: bool,
    /// Shared secret required on the internal /raft and /worker routes (header `x-tandem-secret`).
    /// Required: without it the coordinator refuses to start, unless
    /// `--insecure-no-cluster-secret` is given. Prefer the environment: a flag shows in `ps`.
    #[arg(long, env = "TANDEM_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Start without a cluster secret, serving the /raft and /worker routes to anyone who
    /// reaches the port (who could then record results and disrupt Raft). For tests on a
    /// private machine only.
    #[arg(long, env = "TANDEM_INSECURE_NO_CLUSTER_SECRET")]
    pub insecure_no_cluster_secret: bool,
    /// Token the /admin routes require (`Authorization: Bearer TOKEN`); unset disables them.
    #[arg(long, env = "TANDEM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Token the client API (`/enqueue`, `/pullCompleted`, `/jobs/ID`) requires
    /// (`Authorization: Bearer TOKEN`); unset leaves it open to whoever reaches the port.
    #[arg(long, env = "TANDEM_CLIENT_TOKEN", hide_env_values = true)]
    pub client_token: Option<String>,
    /// Largest `iterations` a job may ask for.
    #[arg(long, env = "TANDEM_MAX_ITERATIONS", default_value_t = 1_000_000_000)]
    pub max_iterations: u64,
    /// Largest body accepted by /enqueue, in bytes.
    #[arg(long, env = "TANDEM_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// How long a lease lives without a heartbeat.
    #[arg(long, env = "TANDEM_LEASE_MS", default_value_t = 3_000)]
    pub lease_ms: u64,
    /// Longest wait of a worker's lease long-poll.
    #[arg(long, env = "TANDEM_LONG_POLL_MAX_MS", default_value_t = 30_000)]
    pub long_poll_max_ms: u64,
    /// A worker silent this long is removed from the registry (its leases are requeued).
    #[arg(long, env = "TANDEM_WORKER_TIMEOUT_MS", default_value_t = 30_000)]
    pub worker_timeout_ms: u64,
    /// Completed results kept; the oldest is dropped first.
    #[arg(long, env = "TANDEM_COMPLETED_RETENTION", default_value_t = 1_000_000)]
    pub completed_retention: u64,
    /// Enqueues this coordinator reads, hashes and commits at once; one more is answered 503
    /// with `Retry-After` at once, before its body is read. Bounds what bodies in flight take:
    /// at most this × `--max-body-bytes`.
    #[arg(long, env = "TANDEM_MAX_CONCURRENT_ENQUEUES", default_value_t = 256)]
    pub max_concurrent_enqueues: usize,
    /// Jobs that may wait before enqueues get 503.
    #[arg(long, env = "TANDEM_MAX_QUEUED", default_value_t = 10_000_000)]
    pub max_queued: u64,
    /// Connections served at once, on the API, worker and Raft routes together; more wait to be
    /// accepted.
    #[arg(long, env = "TANDEM_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// A connection that takes longer than this to send a request's head, or sits idle between
    /// requests this long, is closed (slow-loris clients; idle keep-alive connections).
    #[arg(long, env = "TANDEM_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// The longest a client or admin request may take, its body's upload included: a slower
    /// one is answered 408. (Worker long-polls get `--long-poll-max-ms` more.)
    #[arg(long, env = "TANDEM_CLIENT_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub client_request_timeout_ms: u64,
    /// How long a write or a linearizable read may wait for the cluster before answering 503.
    #[arg(long, env = "TANDEM_REQUEST_TIMEOUT_MS", default_value_t = 3_000)]
    pub request_timeout_ms: u64,
    /// Raft heartbeat interval (also the AppendEntries deadline).
    #[arg(long, env = "TANDEM_HEARTBEAT_MS", default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// Raft election timeout, lower bound.
    #[arg(long, env = "TANDEM_ELECTION_MIN_MS", default_value_t = 200)]
    pub election_min_ms: u64,
    /// Raft election timeout, upper bound (also the leader lease).
    #[arg(long, env = "TANDEM_ELECTION_MAX_MS", default_value_t = 400)]
    pub election_max_ms: u64,
    /// The most AppendEntries this node, when it leads, keeps unanswered on one follower's
    /// append stream: 1 waits for each answer before the next request; 2 lets the next
    /// request (carrying what was proposed meanwhile) go while the first is being written.
    #[arg(long, env = "TANDEM_APPEND_PIPELINE", default_value_t = raft_store::network::APPEND_PIPELINE as u64,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub append_pipeline: u64,
    /// Threads of the async runtime that serves the API, Raft and the workers (default: one per
    /// core, or `TOKIO_WORKER_THREADS`). Give fewer when other busy processes share the
    /// machine: `deploy local` gives each of its two coordinators half the cores. Bodies over
    /// 64 KiB are hashed, and blocking work (snapshots, the log's fsyncs) done, on threads of
    /// their own either way.
    #[arg(long, env = "TANDEM_RUNTIME_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub runtime_threads: Option<u16>,
    /// Serve `POST /raft/faults`, letting a test harness cut this voter's links to chosen
    /// peers (the fault-injection suite). For tests only.
    #[arg(long, env = "TANDEM_FAULT_INJECTION")]
    pub fault_injection: bool,
    /// Log format.
    #[arg(long, env = "TANDEM_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Where the autoscaler gets workers: `off` (a fixed fleet), `local` (worker processes on
    /// this host, the embedded default `deploy local` sets) or `ec2`.
    #[arg(long, env = "TANDEM_SCALER", value_enum, default_value = "off")]
    pub scaler: ScalerKind,
    /// The autoscaling policy's knobs.
    #[command(flatten)]
    pub scaling: ScalingOptions,
    /// With a provider (`--scaler local|ec2`): a witness silent this long is replaced by a new
    /// one the leader launches (a new voter id, caught up, then swapped in).
    #[arg(long, env = "TANDEM_WITNESS_TIMEOUT_MS", default_value_t = 60_000)]
    pub witness_timeout_ms: u64,
    /// Where the local provider keeps its records and the workers' logs; both coordinators
    /// must share it (default: `launched-workers` beside this coordinator's data directory).
    #[arg(long, env = "TANDEM_SCALER_DIR")]
    pub scaler_dir: Option<PathBuf>,
    /// The worker binary the local provider starts (default: `worker` beside this binary).
    #[arg(long, env = "TANDEM_SCALER_WORKER_BINARY")]
    pub scaler_worker_binary: Option<PathBuf>,
    /// Serve this worker binary at `GET /worker/binary` to the instances the leader launches
    /// (with `--ec2-worker-binary coordinators`, each downloads it at boot and checks its
    /// SHA-256). Read once, at start.
    #[arg(long, env = "TANDEM_WORKER_BINARY_FILE")]
    pub worker_binary_file: Option<PathBuf>,
    /// The EC2 provider's settings (`--scaler ec2`).
    #[cfg(feature = "ec2")]
    #[command(flatten)]
    pub ec2: deploy::provider::ec2::Ec2Options,
}

/// Where the autoscaler gets workers.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalerKind {
    /// No autoscaling: the fleet is what was started.
    Off,
    /// Worker processes on this host.
    Local,
    /// EC2 instances (needs a build with the `ec2` feature).
    Ec2,
}

impl ScalerKind {
    /// Its name in `/cluster`.
    pub fn name(self) -> &'static str {
        match self {
            ScalerKind::Off => "off",
            ScalerKind::Local => "local",
            ScalerKind::Ec2 => "ec2",
        }
    }
}

/// The autoscaling policy's knobs (see `wire::scaler`); defaults from `PolicyConfig::default()`.
/// Times in milliseconds.
#[derive(clap::Args, Clone, Debug)]
pub struct ScalingOptions {
    /// Fewest workers the autoscaler keeps, the witness's not counted.
    #[arg(long, env = "TANDEM_MIN_WORKERS", default_value_t = PolicyConfig::default().min_workers)]
    pub min_workers: u32,
    /// Most workers the autoscaler runs, the witness's not counted.
    #[arg(long, env = "TANDEM_MAX_WORKERS", default_value_t = PolicyConfig::default().max_workers)]
    pub max_workers: u32,
    /// Cores of each worker it launches.
    #[arg(long, env = "TANDEM_SCALER_WORKER_CORES", default_value_t = PolicyConfig::default().cores_per_worker)]
    pub scaler_worker_cores: u32,
    /// The backlog should drain within this.
    #[arg(long, env = "TANDEM_DRAIN_TARGET_MS", default_value_t = PolicyConfig::default().drain_target_ms)]
    pub drain_target_ms: u64,
    /// A worker idle this long may be scaled in.
    #[arg(long, env = "TANDEM_SCALE_IN_IDLE_MS", default_value_t = PolicyConfig::default().idle_ms)]
    pub scale_in_idle_ms: u64,
    /// No scale-in this long after a scale-out.
    #[arg(long, env = "TANDEM_SCALE_OUT_COOLDOWN_MS", default_value_t = PolicyConfig::default().cooldown_ms)]
    pub scale_out_cooldown_ms: u64,
    /// A launch not registered within this is given up and its machine terminated.
    #[arg(long, env = "TANDEM_BOOT_TIMEOUT_MS", default_value_t = PolicyConfig::default().boot_timeout_ms)]
    pub boot_timeout_ms: u64,
    /// Launch to registration, until one has been observed.
    #[arg(long, env = "TANDEM_ASSUMED_BOOT_MS", default_value_t = PolicyConfig::default().assumed_boot_ms)]
    pub assumed_boot_ms: u64,
    /// Chain steps per second of one core, until a worker has measured it.
    #[arg(long, env = "TANDEM_ASSUMED_CORE_RATE", default_value_t = PolicyConfig::default().assumed_core_rate)]
    pub assumed_core_rate: u64,
}

impl ScalingOptions {
    /// The policy's configuration.
    pub fn policy(&self) -> PolicyConfig {
        PolicyConfig {
            min_workers: self.min_workers,
            max_workers: self.max_workers,
            cores_per_worker: self.scaler_worker_cores,
            drain_target_ms: self.drain_target_ms,
            idle_ms: self.scale_in_idle_ms,
            cooldown_ms: self.scale_out_cooldown_ms,
            boot_timeout_ms: self.boot_timeout_ms,
            assumed_boot_ms: self.assumed_boot_ms,
            assumed_core_rate: self.assumed_core_rate,
            ..PolicyConfig::default()
        }
    }
}

impl Config {
    /// The data directory, defaulted from the id.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("data/coordinator-{}", self.id)))
    }

    /// The membership to initialize with.
    pub fn membership(&self) -> BTreeMap<NodeId, NodeInfo> {
        self.members.iter().map(|m| (m.id, NodeInfo::at(m.role, m.addr.clone()))).collect()
    }

    /// Check what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        wire::check_cluster_secret(self.cluster_secret.as_deref(), self.insecure_no_cluster_secret)?;
        if let Some(token) = &self.admin_token {
            wire::check_credential("the admin token (TANDEM_ADMIN_TOKEN)", token)?;
        }
        if let Some(token) = &self.client_token {
            wire::check_credential("the client token (TANDEM_CLIENT_TOKEN)", token)?;
        }
        let me = self.members.iter().find(|m| m.id == self.id);
        match me {
            None => return Err(format!("--id {} is not among --member", self.id)),
            Some(m) if m.role != Role::Coordinator => {
                return Err(format!("member {} is a witness: run it with `worker --witness`", self.id));
            }
            Some(_) => {}
        }
        let mut ids: Vec<NodeId> = self.members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.members.len() {
            return Err("--member lists an id twice".into());
        }
        if self.lease_ms < 300 {
            return Err("--lease-ms must be at least 300".into());
        }
        if self.max_iterations == 0 || self.max_body_bytes == 0 {
            return Err("--max-iterations and --max-body-bytes must be positive".into());
        }
        if self.max_concurrent_enqueues == 0 {
            return Err("--max-concurrent-enqueues must be positive".into());
        }
        if self.max_connections == 0 || self.header_timeout_ms == 0 || self.client_request_timeout_ms == 0 {
            return Err(
                "--max-connections, --header-timeout-ms and --client-request-timeout-ms must be positive".into()
            );
        }
        if self.completed_retention == 0 || self.max_queued == 0 {
            return Err("--completed-retention and --max-queued must be positive".into());
        }
        #[cfg(not(feature = "ec2"))]
        if self.scaler == ScalerKind::Ec2 {
            return Err("--scaler ec2 needs a coordinator built with the `ec2` feature (cargo build -p coordinator --features ec2)".into());
        }
        let scaling = &self.scaling;
        if scaling.min_workers > scaling.max_workers {
            return Err("--min-workers must not exceed --max-workers".into());
        }
        if scaling.scaler_worker_cores == 0 || scaling.drain_target_ms == 0 || scaling.assumed_core_rate == 0 {
            return Err("--scaler-worker-cores, --drain-target-ms and --assumed-core-rate must be positive".into());
        }
        Ok(())
    }

    /// The client API URLs of the coordinators, as a worker is given them.
    pub fn coordinator_urls(&self) -> Vec<String> {
        self.members.iter().filter(|m| m.role == Role::Coordinator).map(|m| format!("http://{}", m.addr)).collect()
    }

    /// The local provider's shared directory.
    pub fn scaler_dir(&self) -> PathBuf {
        self.scaler_dir.clone().unwrap_or_else(|| {
            let data = self.data_dir();
            data.parent().map_or_else(|| PathBuf::from("launched-workers"), |p| p.join("launched-workers"))
        })
    }

    /// The request timeout as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config parsed from `args` after the binary's name and a cluster secret.
    fn parse(args: &[&str]) -> Config {
        Config::parse_from(["coordinator", "--cluster-secret", "s3cret"].into_iter().chain(args.iter().copied()))
    }

    #[test]
    fn parses_members() {
        let config = Config::parse_from(["coordinator", "--member", "1=coordinator@a:1,3=witness@10.0.0.3:8090"]);
        assert_eq!(config.members[1], Member { id: 3, role: Role::Witness, addr: "10.0.0.3:8090".into() });
        assert!(Config::try_parse_from(["coordinator", "--member", "3=boss@x:1"]).is_err());
    }

    #[test]
    fn defaults_describe_the_local_cluster() {
        let config = parse(&[]);
        config.validate().expect("defaults and a secret are valid");
        let members = config.membership();
        assert_eq!(members.len(), 3);
        assert_eq!(members[&3].role, Role::Witness);
        assert_eq!(members[&2].api_addr, "127.0.0.1:8081");
    }

    #[test]
    fn scaling_bounds_and_a_provider_this_build_lacks_are_refused_at_startup() {
        let refused = |args: &[&str]| parse(args).validate().expect_err("refused");
        assert!(refused(&["--min-workers", "5", "--max-workers", "4"]).contains("--min-workers"));
        assert!(refused(&["--scaler-worker-cores", "0"]).contains("--scaler-worker-cores"));
        #[cfg(not(feature = "ec2"))]
        assert!(refused(&["--scaler", "ec2"]).contains("`ec2` feature"));
        parse(&["--scaler", "local", "--max-workers", "8"]).validate().expect("valid");
    }

    #[test]
    fn a_secret_or_token_that_http_would_alter_is_refused_at_startup_without_showing_it() {
        for flag in ["--cluster-secret", "--admin-token"] {
            let config = parse(&[flag, "hunter2 "]);
            let error = config.validate().expect_err("a trailing space is refused");
            assert!(error.contains("must not begin or end with a space"), "{error}");
            assert!(!error.contains("hunter2"), "the error shows the value: {error}");
            parse(&[flag, "hunter2"]).validate().expect("a plain value is fine");
        }
    }

    #[test]
    fn no_cluster_secret_is_refused_at_startup_unless_the_insecure_flag_is_given() {
        let error = Config::parse_from(["coordinator"]).validate().expect_err("no secret is refused");
        assert!(error.contains("TANDEM_CLUSTER_SECRET"), "{error}");
        assert!(error.contains("--insecure-no-cluster-secret"), "{error}");
        assert!(error.contains("record made-up results"), "the error says why: {error}");
        Config::parse_from(["coordinator", "--insecure-no-cluster-secret"]).validate().expect("the flag allows it");
    }
}
