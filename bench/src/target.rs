//! What the bench drives: the URLs it was given, or a local cluster it starts itself. It sends
//! traffic only to those URLs.

use std::time::Duration;

use anyhow::Context;
use deploy::local::{LocalCluster, LocalOptions, given_or_random_token, locate_binaries};
use wire::client::ApiClient;

use crate::cpu::MeteredProcess;

/// How to reach the cluster under test.
#[derive(clap::Args, Clone, Debug)]
pub struct TargetArgs {
    /// Start a local cluster (in a temporary directory, on free ports) and drive it.
    #[arg(long, conflicts_with = "url")]
    pub local: bool,
    /// Coordinator URLs to drive (both coordinators of a running cluster).
    #[arg(long, value_delimiter = ',')]
    pub url: Vec<String>,
    /// With --local: workers besides the witness's.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// With --local: cores per worker (default: all).
    #[arg(long)]
    pub worker_cores: Option<usize>,
    /// With --local: runtime threads of each coordinator (default: half the cores, as
    /// `deploy local` gives them; 0: one per core, the coordinator's own default).
    #[arg(long)]
    pub coordinator_threads: Option<usize>,
    /// With --local: where the coordinator and worker binaries are (default: beside this one,
    /// built on demand when run through cargo).
    #[arg(long, env = "TANDEM_BIN_DIR")]
    pub bin_dir: Option<std::path::PathBuf>,
    /// The coordinators' admin token, for scenarios that hand leadership over or drain workers
    /// (a --local cluster gets a fresh one).
    #[arg(long, env = "TANDEM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The cluster secret, for `workers`, whose simulated workers use the worker routes (a
    /// --local cluster gets a fresh one).
    #[arg(long, env = "TANDEM_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
}

/// A cluster under test.
pub struct Target {
    /// One client per coordinator URL.
    pub clients: Vec<ApiClient>,
    /// The local cluster, when the bench started one.
    pub local: Option<LocalCluster>,
    /// The admin token, if known.
    pub admin_token: Option<String>,
    /// The cluster secret, if known.
    pub cluster_secret: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    /// Reach (or start) the cluster described by `args`; `coordinator_args` go to local coordinators.
    pub async fn open(args: &TargetArgs, coordinator_args: &[&str]) -> anyhow::Result<Target> {
        let http = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(256).build()?;
        if !args.local {
            anyhow::ensure!(!args.url.is_empty(), "give --local or --url");
            let clients = args.url.iter().map(|url| ApiClient::with_http(http.clone(), url.clone())).collect();
            return Ok(Target {
                clients,
                local: None,
                admin_token: args.admin_token.clone(),
                cluster_secret: args.cluster_secret.clone(),
                _dir: None,
            });
        }
        let admin_token = given_or_random_token(args.admin_token.clone())?;
        let cluster_secret = given_or_random_token(args.cluster_secret.clone())?;
        let dir = tempfile::Builder::new().prefix("tandem-bench").tempdir().context("temporary directory")?;
        let mut options = LocalOptions {
            workers: args.workers,
            worker_cores: args.worker_cores,
            coordinator_args: coordinator_args.iter().map(|s| s.to_string()).collect(),
            ..LocalOptions::on_loopback(
                locate_binaries(args.bin_dir.clone())?,
                dir.path().to_owned(),
                LocalOptions::free_ports()?,
                Some(admin_token.clone()),
                Some(cluster_secret.clone()),
            )
        };
        options.given_coordinator_threads(args.coordinator_threads);
        let mut cluster = LocalCluster::start(options)?;
        cluster.wait_ready(Duration::from_secs(60)).await?;
        cluster.wait_workers(Duration::from_secs(60)).await?;
        let clients = cluster.api_urls().iter().map(|url| ApiClient::with_http(http.clone(), url.clone())).collect();
        Ok(Target {
            clients,
            local: Some(cluster),
            admin_token: Some(admin_token),
            cluster_secret: Some(cluster_secret),
            _dir: Some(dir),
        })
    }

    /// Every process whose `/metrics` the bench may read: its name, URL and, for a process of a
    /// local cluster, its pid; or each given coordinator URL (the only hosts the bench talks to).
    pub fn metered_processes(&self) -> Vec<MeteredProcess> {
        match &self.local {
            Some(cluster) => cluster
                .processes
                .iter()
                .map(|p| MeteredProcess { name: p.name.clone(), metrics_url: p.metrics_url.clone(), pid: p.pid() })
                .collect(),
            None => self
                .clients
                .iter()
                .map(|c| MeteredProcess {
                    name: c.base().to_owned(),
                    metrics_url: format!("{}/metrics", c.base()),
                    pid: None,
                })
                .collect(),
        }
    }

    /// Cores the local cluster's workers can hash on at once (for the ideal time): their cores,
    /// but no more than this machine has, since every worker of a local cluster shares it.
    pub fn worker_cores(&self) -> Option<usize> {
        let cluster = self.local.as_ref()?;
        let machine = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_worker = cluster.options.worker_cores.unwrap_or(machine);
        Some((per_worker * (cluster.options.workers + 1)).min(machine))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(cluster) = &mut self.local {
            cluster.stop(Duration::from_secs(10));
        }
    }
}
