//! `deploy`: start a Tandem cluster (`deploy local` runs one on this machine) and operate it
//! (`deploy failover`, `deploy replace-voter`, `deploy drain`, `deploy resume`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use deploy::local::{LocalCluster, LocalOptions};

#[derive(Parser, Debug)]
#[command(version, about = "Start Tandem clusters")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Two coordinators, the witness worker and more workers as processes on 127.0.0.1, until
    /// Ctrl-C or SIGTERM. Refuses to start if one of its ports is taken; restarts a process that
    /// exits, and stops everything (non-zero status) if one keeps exiting. Restarting on the same
    /// data directory recovers jobs and results.
    Local(LocalArgs),
    /// A cluster on EC2 (built with `--features aws`): `up` creates or converges it, `status`
    /// shows it, `down` removes everything `up` made. Credentials come from the standard AWS
    /// chain (environment, profile, SSO), never from a flag.
    #[cfg(feature = "aws")]
    Aws {
        #[command(subcommand)]
        command: AwsCommand,
    },
    /// Move Raft leadership to the other coordinator (or to --to), as `POST /admin/failover`
    /// does; prints who leads now.
    Failover {
        #[command(flatten)]
        admin: AdminArgs,
        /// The node id to hand leadership to (default: the other coordinator).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Replace a voter lost with its disk by a new node under a new id, as
    /// `POST /admin/members/replace` does. Start the new node first (empty data directory, no
    /// --initialize); this waits until it holds the whole log, then makes it a voter in the old
    /// one's place. Prints the voters now.
    ReplaceVoter {
        #[command(flatten)]
        admin: AdminArgs,
        /// The voter to remove (its process must not come back).
        #[arg(long)]
        remove: u64,
        /// The new node's id: never used before, higher than every id in the membership.
        #[arg(long)]
        add: u64,
        /// `coordinator` or `witness`, as the removed voter was.
        #[arg(long)]
        role: String,
        /// The new node's HOST:PORT (its --listen, or a witness's --witness-listen).
        #[arg(long)]
        addr: String,
    },
    /// Drain a worker: it hands its jobs back and takes no new ones until resumed.
    Drain {
        #[command(flatten)]
        admin: AdminArgs,
        /// The worker's registry id (see `curl URL/cluster`).
        worker: u64,
    },
    /// Let a drained worker take work again.
    Resume {
        #[command(flatten)]
        admin: AdminArgs,
        /// The worker's registry id.
        worker: u64,
    },
}

/// `deploy aws ...`
#[cfg(feature = "aws")]
#[derive(Subcommand, Debug)]
enum AwsCommand {
    /// Create what is missing of the cluster (security group, key pair, the two coordinators and
    /// the witness's worker), keep what is there; upload the binaries and start the voters over
    /// SSH; prints the cluster. Run it again to converge (or to roll out new binaries).
    Up(Box<deploy::aws::UpOptions>),
    /// The cluster's security group, key pair and instances, and what a coordinator says of the
    /// cluster (GET /cluster on its public address) if one answers.
    Status {
        #[command(flatten)]
        aws: deploy::aws::AwsOptions,
        /// Do not ask the coordinators.
        #[arg(long)]
        no_probe: bool,
    },
    /// Terminate every instance of the cluster (autoscaled workers too), wait for them, delete
    /// the security group, the key pair and the local state. Harmless when nothing is left.
    Down(deploy::aws::AwsOptions),
}

#[cfg(feature = "aws")]
fn run_aws(command: AwsCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        match command {
            AwsCommand::Up(options) => print!("{}", deploy::aws::up(&options).await?.describe()),
            AwsCommand::Status { aws, no_probe } => {
                print!("{}", deploy::aws::status(&aws, !no_probe).await?.describe())
            }
            AwsCommand::Down(options) => {
                let done = deploy::aws::down(&options).await?;
                if done.is_empty() {
                    println!("nothing left of cluster {}", options.cluster_name);
                }
                for line in done {
                    println!("{line}");
                }
            }
        }
        Ok(())
    })
}

/// How to lay out the local cluster.
#[derive(clap::Args, Debug)]
struct LocalArgs {
    /// Workers started with the cluster besides the witness's own: the autoscaler never goes
    /// below them and never stops them.
    #[arg(long, visible_alias = "workers", env = "TANDEM_MIN_WORKERS", default_value_t = 1)]
    min_workers: usize,
    /// Most workers (the witness's not counted): the leader starts worker processes up to this
    /// many as the backlog needs, and stops them when idle. Equal to --min-workers: a fixed fleet.
    #[arg(long, env = "TANDEM_MAX_WORKERS", default_value_t = 4)]
    max_workers: usize,
    /// Cores each worker hashes on (default: all).
    #[arg(long, env = "TANDEM_WORKER_CORES")]
    worker_cores: Option<usize>,
    /// Runtime threads of each coordinator (default: half the cores, since both share this
    /// machine; 0: one per core).
    #[arg(long, env = "TANDEM_COORDINATOR_THREADS")]
    coordinator_threads: Option<usize>,
    /// Root of the processes' data directories (and their logs).
    #[arg(long, env = "TANDEM_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Coordinator 1's port.
    #[arg(long, default_value_t = 8080)]
    port_1: u16,
    /// Coordinator 2's port.
    #[arg(long, default_value_t = 8081)]
    port_2: u16,
    /// The witness's Raft port.
    #[arg(long, default_value_t = 8090)]
    witness_port: u16,
    /// Where the coordinator and worker binaries are (default: beside this one, built on
    /// demand when run through cargo).
    #[arg(long, env = "TANDEM_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// The coordinators' admin token for /admin routes (default: a random one, printed).
    #[arg(long, env = "TANDEM_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The cluster secret every process gets, required on the /raft and /worker routes (default:
    /// a random one, printed for workers you start yourself).
    #[arg(long, env = "TANDEM_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
}

/// How to reach a coordinator's admin routes.
#[derive(clap::Args, Debug)]
struct AdminArgs {
    /// Either coordinator's base URL.
    #[arg(long, env = "TANDEM_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin token the coordinators were started with.
    #[arg(long, env = "TANDEM_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
}

/// Run one admin call and print its answer as JSON.
fn admin_call<T: serde::Serialize>(
    call: impl std::future::Future<Output = Result<T, wire::client::ClientError>>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let answer = runtime.block_on(call)?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match Cli::parse().command {
        Commands::Local(args) => run_local(args),
        #[cfg(feature = "aws")]
        Commands::Aws { command } => run_aws(command),
        Commands::Failover { admin, to } => {
            let client = wire::client::ApiClient::new(admin.url);
            admin_call(async { client.failover(&admin.admin_token, to).await })
        }
        Commands::ReplaceVoter { admin, remove, add, role, addr } => {
            let client = wire::client::ApiClient::new(admin.url);
            let request = wire::api::ReplaceMemberRequest { remove, add, role, addr };
            admin_call(async { client.replace_member(&admin.admin_token, &request).await })
        }
        Commands::Drain { admin, worker } => {
            let client = wire::client::ApiClient::new(admin.url);
            admin_call(async { client.set_worker_draining(&admin.admin_token, worker, true).await })
        }
        Commands::Resume { admin, worker } => {
            let client = wire::client::ApiClient::new(admin.url);
            admin_call(async { client.set_worker_draining(&admin.admin_token, worker, false).await })
        }
    }
}

/// `deploy local`: start the cluster, print how to use it, restart a child that exits, stop it on
/// Ctrl-C or SIGTERM (status 0) or when a child keeps exiting (an error naming it).
fn run_local(args: LocalArgs) -> anyhow::Result<()> {
    let LocalArgs {
        min_workers,
        max_workers,
        worker_cores,
        coordinator_threads,
        data_dir,
        port_1,
        port_2,
        witness_port,
        bin_dir,
        admin_token,
        cluster_secret,
    } = args;
    let admin_token = deploy::local::given_or_random_token(admin_token)?;
    let cluster_secret = deploy::local::given_or_random_token(cluster_secret)?;
    anyhow::ensure!(max_workers >= min_workers, "--max-workers ({max_workers}) is below --min-workers ({min_workers})");
    let autoscale = (max_workers > min_workers)
        .then_some(deploy::local::Autoscale { min_workers: min_workers as u32, max_workers: max_workers as u32 });
    let mut options = LocalOptions {
        workers: min_workers,
        worker_cores,
        autoscale,
        ..LocalOptions::on_loopback(
            deploy::local::locate_binaries(bin_dir)?,
            data_dir,
            [port_1, port_2, witness_port],
            Some(admin_token.clone()),
            Some(cluster_secret.clone()),
        )
    };
    options.given_coordinator_threads(coordinator_threads);
    // Children are spawned from this (main) thread: they are tied to its life.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut cluster = LocalCluster::start(options.clone())?;
    println!("Tandem local cluster starting; logs in {}/*.log", options.data_dir.display());
    runtime.block_on(cluster.wait_ready(Duration::from_secs(60)))?;
    let [url_1, url_2] = cluster.api_urls();
    println!();
    println!("Tandem is up: coordinator 1 at {url_1}, coordinator 2 at {url_2}");
    match autoscale {
        Some(_) => println!(
            "Workers: the witness's and {min_workers} more; the leader starts up to {} more as the backlog needs (logs in {})",
            max_workers - min_workers,
            options.launched_workers_dir().display()
        ),
        None => println!("Workers: the witness's and {min_workers} more (a fixed fleet)"),
    }
    println!();
    println!("  head -c 16384 /dev/urandom > job.bin");
    println!("  curl -X PUT --data-binary @job.bin '{url_1}/enqueue?iterations=1000'");
    println!("  curl -X POST '{url_2}/pullCompleted?top=10'");
    println!("  curl {url_2}/jobs/1");
    println!("  curl {url_1}/cluster");
    println!("  curl -X POST -H 'Authorization: Bearer {admin_token}' {url_2}/admin/failover");
    println!();
    println!("Status page: {url_1}/  (admin token: {admin_token})");
    for process in &cluster.processes {
        println!("  metrics of {:<14} {}", process.name, process.metrics_url);
    }
    println!();
    println!("One more worker (the cluster secret is required on the worker routes):");
    let worker = options.bin_dir.join("worker");
    println!("  TANDEM_CLUSTER_SECRET={cluster_secret} {} --coordinator {url_1},{url_2}", worker.display());
    println!();
    println!("Ctrl-C stops every process. A process that exits is restarted; one that keeps exiting stops them all.");
    // Supervise until Ctrl-C or SIGTERM; restarts are spawned on this thread, as the start was.
    let supervised = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interrupt.recv() => return anyhow::Ok(()),
                _ = term.recv() => return anyhow::Ok(()),
                _ = tick.tick() => {
                    for exit in cluster.supervise()? {
                        eprintln!("\n{exit}\n");
                    }
                }
            }
        }
    });
    println!("stopping...");
    cluster.stop(Duration::from_secs(10));
    supervised
}
