//! `compute`: a worker's hash rate on one core against a plain single-threaded `sha2` loop,
//! measured in the same run.
//!
//! The cluster's only worker has one core. Each round times the plain loop, then one long job,
//! then the plain loop again, and compares the job's rate with the mean of the two loops beside
//! it: pairing each job with the loops measured just before and after it keeps a shared VM's
//! drift out of the ratio. The job's time is the coordinator's own: from the enqueue's stamp
//! to the completion's, so the bench can poll gently without adding its polling to the figure.

use std::time::Duration;

use crate::reference::{chain, hex, median, plain_loop_rate_median};
use crate::report::Report;
use crate::target::{Target, TargetArgs};

/// Options of `compute`.
#[derive(clap::Args, Clone, Debug)]
pub struct ComputeArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Iterations of each measured job.
    #[arg(long, default_value_t = 10_000_000)]
    pub iterations: u64,
    /// Rounds (plain loop, job, plain loop); the headline is the median round's ratio.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

/// Run `compute`.
pub async fn run(args: &ComputeArgs, quick: bool) -> anyhow::Result<Report> {
    let iterations = if quick { args.iterations.min(3_000_000) } else { args.iterations };
    let rounds = if quick { 1 } else { args.rounds.max(1) };
    let mut report = Report::new("compute", serde_json::json!({ "iterations": iterations, "rounds": rounds }));
    let mut target_args = args.target.clone();
    if target_args.local {
        // One worker (the witness's) with one core: its rate is the per-core rate.
        target_args.workers = 0;
        target_args.worker_cores = Some(1);
    }
    let target = Target::open(&target_args, &[]).await?;
    let client = &target.clients[0];
    // Roughly as long as a job, in five runs whose median is taken.
    let loop_seconds = if quick { 1.0 } else { (iterations as f64 / 3.5e6).clamp(1.0, 5.0) };
    let mut plain = plain_loop_rate_median(loop_seconds, 5);
    let (mut plain_rates, mut worker_rates, mut ratios) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        let body = format!("tandem compute benchmark, round {round}").into_bytes();
        let id = client.enqueue(body.clone(), iterations, None).await?;
        let polling_since = std::time::Instant::now();
        let view = loop {
            match client.job(id).await {
                Ok(view) if view.result.is_some() => break view,
                Ok(_) => {}
                // A voter starved of CPU for a moment (an election, a read no leader could
                // confirm) answers 503: ask again, as any client would, for a while.
                Err(e) if e.is_transient() && polling_since.elapsed() < Duration::from_secs(60) => {}
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if view.result.as_deref() != Some(hex(&chain(&body, iterations)).as_str()) {
            report.failures.push(format!("job {id} has a wrong result"));
        }
        let millis = view.completed_at_ms.unwrap_or_default().saturating_sub(view.enqueued_at_ms).max(1);
        let worker = (iterations - 1) as f64 / (millis as f64 / 1e3);
        let plain_after = plain_loop_rate_median(loop_seconds, 5);
        let beside = (plain + plain_after) / 2.0;
        plain_rates.push(beside);
        worker_rates.push(worker);
        ratios.push(worker / beside);
        plain = plain_after;
    }
    report.figure("plain_loop_hashes_per_s", median(&plain_rates));
    report.figure("worker_hashes_per_s_per_core", median(&worker_rates));
    report.figure("ratio_worker_to_plain", median(&ratios));
    report.figure("ratio_each_round", &ratios);
    Ok(report)
}
