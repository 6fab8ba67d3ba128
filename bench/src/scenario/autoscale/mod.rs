//! `autoscale`: Tandem's scaling policy against two baselines on the same traces, in simulated
//! time. No cluster runs: a discrete-event model of the queue and the fleet ([`model`]) calls
//! each policy ([`policies`]) every tick with the observation the leader would build, and
//! carries out its plan. Every trace ([`traces`]) is run by every policy with the same random
//! draws (the n-th launch of each gets the same draws for its boot time, hardware and fate).
//!
//! Per trace and policy it reports completion latency, instance time billed, launches and
//! terminations, busy workers killed and jobs completed ([`summary`]); per trace, whether
//! Tandem's policy is no worse than each baseline on p95 latency and instance time and better on
//! one ([`verdict`]). A lost verdict is printed, and fails the run only with `--strict`: it is a
//! question of tuning, not of correctness. Incomplete jobs, a busy worker killed by Tandem's
//! policy, or any attempt to scale in the witness's worker are failures.

mod model;
mod policies;
mod summary;
#[cfg(test)]
mod tests;
mod traces;
mod verdict;

use std::time::Instant;

use rand::Rng;
use wire::scaler::PolicyConfig;

use crate::report::Report;
use model::{ModelConfig, Simulation, seeded};
use policies::{Peers, Policy, RayLike, Tandem};
use summary::RunSummary;
use verdict::Verdict;

/// Options of `autoscale`.
#[derive(clap::Args, Clone, Debug)]
pub struct AutoscaleArgs {
    /// Seed of every random draw: arrivals, job sizes, boot times, worker rates, launch fates,
    /// which idle worker takes a job.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Simulated seconds between two calls of a policy.
    #[arg(long, default_value_t = 5)]
    pub tick_s: u64,
    /// Mean simulated seconds from a launch to the worker's registration.
    #[arg(long, default_value_t = 45)]
    pub boot_s: u64,
    /// Boots take --boot-s plus or minus up to this many seconds, uniformly.
    #[arg(long, default_value_t = 15)]
    pub boot_jitter_s: u64,
    /// Mean chain steps per second of one core (each worker within ±10%).
    #[arg(long, default_value_t = 2_000_000)]
    pub core_rate: u64,
    /// Workers at most for Tandem's policy and the Ray-like baseline (the peers' rule keeps 3 per coordinator, 6 in all).
    #[arg(long, default_value_t = 8)]
    pub max_workers: u32,
    /// Tandem's policy: the backlog should drain within this many seconds (default: the
    /// policy's default).
    #[arg(long)]
    pub drain_target_s: Option<u64>,
    /// Tandem's policy: seconds a worker must hold no lease before it is scaled in.
    #[arg(long)]
    pub idle_s: Option<u64>,
    /// Tandem's policy: seconds after a scale-out during which nothing is scaled in.
    #[arg(long)]
    pub cooldown_s: Option<u64>,
    /// Also run seeds `seed + 1` to `seed + seeds - 1`, and judge each trace on the means over
    /// all of them (one seed's p95 moves by seconds with which worker's cores, each within
    /// ±10 % of the mean rate, happen to run the longest jobs).
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Fail the run when Tandem's policy loses a trace's verdict (on the means, with --seeds).
    #[arg(long)]
    pub strict: bool,
}

/// Run `autoscale`.
pub fn run(args: &AutoscaleArgs, quick: bool) -> anyhow::Result<Report> {
    let started = Instant::now();
    let model = ModelConfig {
        cores_per_worker: 2,
        witness_cores: 2,
        mean_core_rate: args.core_rate.max(1),
        core_rate_spread: 0.10,
        boot_ms: args.boot_s * 1_000,
        boot_jitter_ms: args.boot_jitter_s.min(args.boot_s) * 1_000,
        tick_ms: args.tick_s.max(1) * 1_000,
        drain_allowance_ms: 2 * 3_600_000,
    };
    let tandem = Tandem { config: tandem_config(args, &model) };
    let peers = Peers {
        wait_ms: 15_000,
        max_workers_per_coordinator: 3,
        coordinators: 2,
        idle_ms: 600_000,
        boot_timeout_ms: tandem.config.boot_timeout_ms,
    };
    let ray_like = RayLike {
        max_workers: args.max_workers,
        cores_per_worker: model.cores_per_worker,
        idle_ms: 300_000,
        boot_timeout_ms: tandem.config.boot_timeout_ms,
    };
    let policies: [&dyn Policy; 3] = [&tandem, &peers, &ray_like];
    let traces = traces::all(quick, model.mean_core_rate, args.seed);
    let mut report = Report::new(
        "autoscale",
        serde_json::json!({
            "seed": args.seed,
            "quick": quick,
            "model": model,
            "tandem": tandem.config,
            "peers": peers,
            "ray_like": ray_like,
            "traces": traces.iter().map(|t| serde_json::json!({
                "name": t.name,
                "about": t.about,
                "jobs": t.arrivals.len(),
                "end_minutes": t.end_ms as f64 / 60e3,
                "launch_failures": t.launch_failures,
            })).collect::<Vec<_>>(),
        }),
    );
    report.checked = "every job of every trace completed; no busy worker killed by Tandem's policy; \
                      the witness's worker never scaled in"
        .into();

    let mut detail = Vec::new();
    let mut verdicts = Vec::new();
    let mut table = summary::table_header();
    let mut simulated_ms = 0;
    let mut tandem_busy_workers_killed = 0;
    let mut across = Across::default();
    for seed in args.seed..args.seed.saturating_add(args.seeds.max(1)) {
        // The first seed's runs are the ones shown: table, charts and detail.
        let shown = seed == args.seed;
        let drawn;
        let seed_traces = match shown {
            true => &traces,
            false => {
                drawn = traces::all(quick, model.mean_core_rate, seed);
                &drawn
            }
        };
        let of_seed = if shown { String::new() } else { format!(" with seed {seed}") };
        for (index, trace) in seed_traces.iter().enumerate() {
            let outcomes = run_trace(trace, index, seed, &model, &policies);
            let runs: Vec<RunSummary> = outcomes.iter().map(|(name, o)| RunSummary::new(name, o)).collect();
            for run in &runs {
                simulated_ms += (run.ended_minutes * 60e3) as u64;
                if shown {
                    table.push(summary::table_row(trace.name, run));
                }
                if run.jobs_completed < run.jobs {
                    report.failures.push(format!(
                        "{}{of_seed}: {} completed {} of {} jobs by the end of the drain allowance",
                        trace.name, run.policy, run.jobs_completed, run.jobs
                    ));
                }
                if run.counts.witness_scale_ins > 0 {
                    report.failures.push(format!(
                        "{}{of_seed}: {} tried to scale in the witness's worker {} times",
                        trace.name, run.policy, run.counts.witness_scale_ins
                    ));
                }
            }
            let (tandem_run, baselines) = runs.split_first().expect("Tandem's policy runs first");
            tandem_busy_workers_killed += tandem_run.counts.busy_workers_killed;
            if tandem_run.counts.busy_workers_killed > 0 {
                report.failures.push(format!(
                    "{}{of_seed}: Tandem's policy killed {} busy workers",
                    trace.name, tandem_run.counts.busy_workers_killed
                ));
            }
            let verdict = Verdict::new(trace.name, tandem_run, &baselines.iter().collect::<Vec<_>>());
            across.add(index, trace.name, &runs, verdict.passed);
            if !shown {
                continue;
            }
            let chart_runs: Vec<(&'static str, &model::Outcome)> = outcomes.iter().map(|(n, o)| (*n, o)).collect();
            report.charts.push(summary::fleet_chart(trace.name, &chart_runs));
            detail.push(serde_json::json!({
                "trace": trace.name,
                "about": trace.about,
                "policies": runs.iter().map(|r| (r.policy.to_owned(), serde_json::json!(r))).collect::<serde_json::Map<_, _>>(),
                "verdict": verdict,
            }));
            verdicts.push(verdict);
        }
    }
    if args.seeds > 1 {
        // Judged on the means from here on.
        verdicts = across.verdicts();
    }
    let passed = verdicts.iter().filter(|v| v.passed).count();
    report.figure("traces", traces.len());
    report.figure("verdicts_passed", passed);
    report.figure("tandem_busy_workers_killed", tandem_busy_workers_killed);
    report.figure("simulated_hours", simulated_ms as f64 / 3_600_000.0);
    report.figure("wall_s", started.elapsed().as_secs_f64());
    let c = &tandem.config;
    report.text = vec![
        format!(
            "tandem: wire::scaler::decide, PolicyConfig defaults but max_workers {}, cores_per_worker {}, \
             assumed_core_rate {} (drain target {} s, idle {} s, cooldown {} s, boot timeout {} s)",
            c.max_workers,
            c.cores_per_worker,
            c.assumed_core_rate,
            c.drain_target_ms / 1_000,
            c.idle_ms / 1_000,
            c.cooldown_ms / 1_000,
            c.boot_timeout_ms / 1_000
        ),
        format!(
            "peers: launch 1 when the oldest job has waited over {} s, one at a time, at most {} per coordinator \
             ({} coordinators: {}); remove after {} idle min",
            peers.wait_ms / 1_000,
            peers.max_workers_per_coordinator,
            peers.coordinators,
            peers.max_workers(),
            peers.idle_ms / 60_000
        ),
        format!(
            "ray-like: launch a core per queued job (launches in flight counted), at most {}; remove after {} idle min",
            ray_like.max_workers,
            ray_like.idle_ms / 60_000
        ),
        String::new(),
    ];
    report.text.extend(table);
    report.text.push(summary::table_legend());
    report.text.push(String::new());
    report.text.push(
        "verdicts: Tandem's policy no worse than each baseline on p95 latency and instance-minutes, \
         better on one"
            .into(),
    );
    if args.seeds > 1 {
        report.text.push(format!(
            "(the table is seed {}'s; the verdicts are on the means over seeds {} to {}, each trace's line ending \
             with the seeds whose own verdict held)",
            args.seed,
            args.seed,
            args.seed + args.seeds - 1
        ));
        report.text.extend(
            verdicts
                .iter()
                .zip(&across.traces)
                .map(|(v, t)| format!("{} [held in {} of {} seeds]", v.line(), t.seeds_passed, t.seeds)),
        );
        report.figure("seeds", args.seeds);
        report.figure("seeds_passed_per_trace", across.traces.iter().map(|t| t.seeds_passed).collect::<Vec<_>>());
    } else {
        report.text.extend(verdicts.iter().map(Verdict::line));
    }
    if args.strict {
        for verdict in verdicts.iter().filter(|v| !v.passed) {
            report.failures.push(format!("verdict lost: {}", verdict.line()));
        }
    } else if passed < verdicts.len() {
        report.text.push(format!(
            "{} of {} verdicts lost (a tuning question: fails the run only with --strict)",
            verdicts.len() - passed,
            verdicts.len()
        ));
    }
    report.detail = serde_json::json!({ "traces": detail });
    Ok(report)
}

/// Every policy's run of `trace` (the `index`-th of seed `seed`'s), Tandem's first, on the same
/// random draws.
fn run_trace(
    trace: &traces::Trace,
    index: usize,
    seed: u64,
    model: &ModelConfig,
    policies: &[&dyn Policy],
) -> Vec<(&'static str, model::Outcome)> {
    let seed = seeded(seed, &[0x72_756e, index as u64]).random::<u64>();
    policies.iter().map(|p| (p.name(), Simulation::new(trace, model, seed).run(*p))).collect()
}

/// Each trace's runs summed over seeds, for the verdict on the means.
#[derive(Default)]
struct Across {
    traces: Vec<TraceAcross>,
}

/// One trace over seeds: per policy (Tandem's first) the sums of p95 and instance time.
struct TraceAcross {
    name: &'static str,
    seeds: u64,
    seeds_passed: u64,
    sums: Vec<(&'static str, u64, u64)>,
}

impl Across {
    fn add(&mut self, index: usize, name: &'static str, runs: &[RunSummary], passed: bool) {
        if self.traces.len() <= index {
            let sums = runs.iter().map(|r| (r.policy, 0, 0)).collect();
            self.traces.push(TraceAcross { name, seeds: 0, seeds_passed: 0, sums });
        }
        let trace = &mut self.traces[index];
        trace.seeds += 1;
        trace.seeds_passed += u64::from(passed);
        for (sum, run) in trace.sums.iter_mut().zip(runs) {
            sum.1 += run.p95_ms.unwrap_or(u64::MAX / 1_000);
            sum.2 += run.counts.instance_ms;
        }
    }

    /// The verdict of each trace on the means.
    fn verdicts(&self) -> Vec<Verdict> {
        self.traces
            .iter()
            .map(|trace| {
                let mean = |(_, p95, instance): &(&'static str, u64, u64)| (p95 / trace.seeds, instance / trace.seeds);
                let (tandem, baselines) = trace.sums.split_first().expect("Tandem's policy runs first");
                Verdict::of_means(trace.name, mean(tandem), baselines.iter().map(|b| (b.0, mean(b))).collect())
            })
            .collect()
    }
}

/// Tandem's policy as the simulator runs it: the defaults, but for the fleet's size, the
/// model's cores and mean rate, and the times given.
fn tandem_config(args: &AutoscaleArgs, model: &ModelConfig) -> PolicyConfig {
    let defaults = PolicyConfig::default();
    let ms = |seconds: Option<u64>, default: u64| seconds.map_or(default, |s| s * 1_000);
    PolicyConfig {
        max_workers: args.max_workers,
        cores_per_worker: model.cores_per_worker,
        assumed_core_rate: model.mean_core_rate,
        drain_target_ms: ms(args.drain_target_s, defaults.drain_target_ms),
        idle_ms: ms(args.idle_s, defaults.idle_ms),
        cooldown_ms: ms(args.cooldown_s, defaults.cooldown_ms),
        ..defaults
    }
}
