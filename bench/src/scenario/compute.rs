//! `compute`: a worker's hash rate on one core against a plain single-threaded `sha2` loop,
//! measured in the same run. The worker's rate comes from one long job on a cluster whose only
//! worker has one core: iterations over the time from acknowledgement to visible result.

use std::time::{Duration, Instant};

use crate::reference::{chain, hex, plain_loop_rate_median};
use crate::report::Report;
use crate::target::{Target, TargetArgs};

/// Options of `compute`.
#[derive(clap::Args, Clone, Debug)]
pub struct ComputeArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Iterations of the measured job.
    #[arg(long, default_value_t = 30_000_000)]
    pub iterations: u64,
}

/// Run `compute`.
pub async fn run(args: &ComputeArgs, quick: bool) -> anyhow::Result<Report> {
    let iterations = if quick { args.iterations.min(3_000_000) } else { args.iterations };
    let mut report = Report::new("compute", serde_json::json!({ "iterations": iterations }));
    let plain_before = plain_loop_rate_median(if quick { 1.0 } else { 3.0 }, 5);
    let mut target_args = args.target.clone();
    if target_args.local {
        // One worker (the witness's) with one core: its rate is the per-core rate.
        target_args.workers = 0;
        target_args.worker_cores = Some(1);
    }
    let target = Target::open(&target_args, &[]).await?;
    let client = &target.clients[0];
    let body = b"tandem compute benchmark".to_vec();
    let id = client.enqueue(body.clone(), iterations, None).await?;
    let started = Instant::now();
    let result = loop {
        let view = client.job(id).await?;
        if let Some(result) = view.result {
            break result;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let plain_after = plain_loop_rate_median(if quick { 1.0 } else { 3.0 }, 5);
    if result != hex(&chain(&body, iterations)) {
        report.failures.push(format!("job {id} has a wrong result"));
    }
    let plain = (plain_before + plain_after) / 2.0;
    let worker = (iterations - 1) as f64 / seconds;
    report.figure("plain_loop_hashes_per_s", plain);
    report.figure("worker_hashes_per_s_per_core", worker);
    report.figure("ratio_worker_to_plain", worker / plain);
    report.figure("job_seconds", seconds);
    Ok(report)
}
