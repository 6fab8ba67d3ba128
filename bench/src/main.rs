//! `bench`: drives Tandem's client API (both coordinators), checks every result against its own
//! SHA-512 chain, and measures against the limits; `autoscale` instead simulates the autoscaling
//! policy against baselines, with no cluster. `bench --help` lists the scenarios.

mod cpu;
mod null_ingest;
mod reference;
mod report;
mod scenario;
mod stats;
mod target;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Tandem's load generator: every result checked, every figure against a baseline from the same run"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Short runs (each under a minute) for tests.
    #[arg(long, global = true)]
    quick: bool,
    /// Write the report as JSON here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Write an SVG here: latency over time (for `autoscale`, the fleet over time; for `soak`,
    /// memory, latency and throughput over time).
    #[arg(long, global = true)]
    plot: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Enqueue throughput and latency, against a null-ingest baseline (axum, no Raft) measured in
    /// the same run; the headline is the ratio.
    Ingest(scenario::ingest::IngestArgs),
    /// Jobs from enqueue to visible result: jobs/s, latency, and elapsed time against the ideal.
    Flow(scenario::flow::FlowArgs),
    /// A worker's per-core hash rate against a plain sha2 loop in the same run.
    Compute(scenario::compute::ComputeArgs),
    /// Kill the leader under a steady enqueue stream, K times: gaps, lost and wrong jobs.
    Failover(scenario::failover::FailoverArgs),
    /// A follower coordinator down for a while under enqueue load, then restarted: time until its
    /// log is level with the leader's, payload timeouts, split appends, snapshot sends.
    Catchup(scenario::catchup::CatchupArgs),
    /// Many simulated workers long-polling one cluster: connected workers, leases/s, latency.
    Workers(scenario::workers::WorkersArgs),
    /// A steady open-loop load at a share of the sustainable rate for M minutes: resident memory
    /// and latency over time, and whether memory levels off.
    Soak(scenario::soak::SoakArgs),
    /// Tandem's autoscaling policy against two baselines on load traces, in simulated time (no
    /// cluster): latency, instance-minutes, launches, busy workers killed.
    Autoscale(scenario::autoscale::AutoscaleArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let cli = Cli::parse();
    let report = match &cli.scenario {
        // Simulated time: no cluster, no runtime.
        Scenario::Autoscale(args) => scenario::autoscale::run(args, cli.quick)?,
        cluster => {
            reference::validate()?;
            // The bench spawns the local cluster from this (main) thread: its processes die with it.
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(run_against_cluster(cluster, cli.quick))?
        }
    };
    report.print();
    if let Some(path) = &cli.json {
        report.write_json(path)?;
    }
    if let Some(path) = &cli.plot {
        report.write_plot(path)?;
    }
    if !report.failures.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// Run a scenario that drives a cluster.
async fn run_against_cluster(which: &Scenario, quick: bool) -> anyhow::Result<report::Report> {
    match which {
        Scenario::Ingest(args) => scenario::ingest::run(args, quick).await,
        Scenario::Flow(args) => scenario::flow::run(args, quick).await,
        Scenario::Compute(args) => scenario::compute::run(args, quick).await,
        Scenario::Failover(args) => scenario::failover::run(args, quick).await,
        Scenario::Catchup(args) => scenario::catchup::run(args, quick).await,
        Scenario::Workers(args) => scenario::workers::run(args, quick).await,
        Scenario::Soak(args) => scenario::soak::run(args, quick).await,
        Scenario::Autoscale(_) => anyhow::bail!("autoscale runs in simulated time, against no cluster"),
    }
}
