//! `bench`: drives Tandem's client API (both coordinators), checks every result against its own
//! SHA-512 chain, and measures against the limits. `bench --help` lists the scenarios.

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
    /// Write an SVG of latency over time here.
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
    /// Many simulated workers long-polling one cluster: connected workers, leases/s, latency.
    Workers(scenario::workers::WorkersArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let cli = Cli::parse();
    reference::validate()?;
    // The bench spawns the local cluster from this (main) thread: its processes die with it.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        match &cli.scenario {
            Scenario::Ingest(args) => scenario::ingest::run(args, cli.quick).await,
            Scenario::Flow(args) => scenario::flow::run(args, cli.quick).await,
            Scenario::Compute(args) => scenario::compute::run(args, cli.quick).await,
            Scenario::Failover(args) => scenario::failover::run(args, cli.quick).await,
            Scenario::Workers(args) => scenario::workers::run(args, cli.quick).await,
        }
    })?;
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
