//! Every scenario's quick run against a local cluster: it must finish, check every result and
//! report no wrong or lost job. Figures are not judged here (that is what the bench is for).

use std::process::Command;

/// Where the binaries are; the coordinator and worker are built once here, since `cargo test -p
/// bench` alone builds only the bench.
fn bin_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_BIN_EXE_bench")).parent().expect("target dir").to_owned();
        deploy::local::build_binaries(&dir).expect("building the coordinator and worker");
        dir
    })
    .clone()
}

fn bench(args: &[&str]) -> serde_json::Value {
    let bin_dir = bin_dir();
    let dir = tempfile::TempDir::new().expect("temp dir");
    let json = dir.path().join("report.json");
    let plot = dir.path().join("plot.svg");
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .args(["--local", "--quick", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .env("TANDEM_BIN_DIR", &bin_dir)
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "bench {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(std::fs::read_to_string(&plot).expect("plot written").contains("<svg"));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    assert_eq!(report["failures"], serde_json::json!([]), "{stdout}");
    report
}

#[test]
fn ingest_quick_reports_a_ratio_against_the_baseline() {
    let report = bench(&["ingest", "--clients", "8"]);
    let ratio = report["figures"]["ratio_cluster_to_baseline"].as_f64().expect("ratio");
    assert!(ratio > 0.0);
    assert!(report["figures"]["baseline_enqueues_per_s"].as_f64().expect("baseline") > 0.0);
    assert_eq!(report["figures"]["ratio_each_round"].as_array().expect("rounds").len(), 1);
    // Both workers (the witness's and one more) were drained, none left hashing during the load.
    assert_eq!(report["figures"]["workers_drained"], 2);
    // Every process's CPU is read from /proc; the coordinators did the enqueues.
    let cpu = &report["figures"]["cpu_us_per_cluster_enqueue"];
    for name in ["coordinator-1", "coordinator-2", "witness", "bench clients"] {
        assert!(cpu[name].as_f64().is_some_and(|us| us > 0.0), "no CPU for {name}: {cpu}");
    }
    let total = report["figures"]["cpu_us_per_cluster_enqueue_total"].as_f64().expect("total");
    assert!(total > cpu["coordinator-1"].as_f64().expect("coordinator-1"), "total {total} is not a sum: {cpu}");
    assert!(report["figures"]["cpu_us_per_baseline_request"].as_f64().expect("baseline CPU") > 0.0);
    // Every voter fsyncs its log; an enqueue is durable on a majority, so at least two did.
    let batching = report["figures"]["cluster_enqueues_per_fsync"].as_object().expect("batching");
    assert!(batching.len() >= 2, "fsyncs seen on fewer than two voters: {batching:?}");
}

#[test]
fn flow_quick_checks_every_result() {
    let report = bench(&["flow", "--clients", "8"]);
    assert!(report["figures"]["jobs_per_s"].as_f64().expect("rate") > 0.0);
    assert!(report["figures"]["ratio_elapsed_to_ideal"].as_f64().is_some());
}

#[test]
fn flow_quick_with_repeated_bodies_reports_reuse_off_and_on() {
    let report = bench(&["flow", "--clients", "8", "--jobs", "400", "--repeated-percent", "50"]);
    let figures = &report["figures"];
    for name in ["reuse_off_jobs_per_s", "reuse_on_jobs_per_s", "ratio_reuse_on_to_off_jobs_per_s"] {
        assert!(figures[name].as_f64().is_some_and(|v| v > 0.0), "{name}: {figures}");
    }
    // Half of every 100 repeat the body of the block's last job: 4 blocks, 50 each.
    assert_eq!(figures["jobs_reused"], 200, "{figures}");
}

#[test]
fn compute_quick_compares_with_the_plain_loop() {
    let report = bench(&["compute"]);
    assert!(report["figures"]["ratio_worker_to_plain"].as_f64().expect("ratio") > 0.0);
}

#[test]
fn failover_quick_loses_nothing() {
    let report = bench(&["failover", "--clients", "2"]);
    assert_eq!(report["figures"]["lost"], 0);
    assert_eq!(report["figures"]["wrong"], 0);
    assert!(report["figures"]["acknowledged"].as_u64().expect("acked") > 0);
}

#[test]
fn workers_quick_serves_simulated_workers() {
    let report = bench(&["workers", "--jobs-per-s", "100"]);
    assert_eq!(report["figures"]["connected_workers"], 100);
    assert!(report["figures"]["leases_per_s"].as_f64().expect("rate") > 0.0);
}

#[test]
fn failover_by_hand_over_quick_loses_nothing() {
    let report = bench(&["failover", "--clients", "2", "--mode", "handover"]);
    assert_eq!(report["figures"]["lost"], 0);
    assert_eq!(report["figures"]["wrong"], 0);
    // Leadership moved to the other coordinator in every trial, and the gap is reported.
    for pair in report["figures"]["leader_before_after_per_trial"].as_array().expect("leaders") {
        let (before, after) = (pair[0].as_u64().expect("before"), pair[1].as_u64().expect("after"));
        assert!(before != after && [1, 2].contains(&after), "{pair}");
    }
    assert!(report["figures"]["max_gap_s"].as_f64().expect("gap") > 0.0);
}

#[test]
fn soak_quick_samples_memory_and_latency_and_checks_every_result() {
    let report = bench(&["soak", "--completed-retention", "100000"]);
    let figures = &report["figures"];
    assert!(figures["sustainable_jobs_per_s"].as_f64().expect("rate") > 0.0);
    let acknowledged = figures["acknowledged"].as_u64().expect("acknowledged");
    assert!(acknowledged > 0);
    assert_eq!(figures["checked"], acknowledged);
    assert_eq!(figures["wrong"], 0);
    assert_eq!(figures["lost"], 0);
    // A sample a second: every voter's memory and the bench's, latency, the queue.
    let samples = report["detail"]["samples"].as_array().expect("samples");
    assert!(samples.len() >= 3, "{} samples", samples.len());
    for sample in samples {
        for name in ["coordinator-1", "coordinator-2", "witness", "bench"] {
            assert!(sample["rss_mib"][name].as_f64().is_some_and(|mib| mib > 1.0), "no RSS for {name}: {sample}");
        }
        assert!(sample["queued"].as_u64().is_some(), "{sample}");
    }
    assert!(samples.iter().any(|s| s["enqueue"]["count"].as_u64() > Some(0)));
    assert!(samples.iter().any(|s| s["completion"]["count"].as_u64() > Some(0)));
    for voter in ["coordinator-1", "coordinator-2", "witness"] {
        assert!(figures["rss_mib_by_third"][voter]["growth_mib_per_10min"].as_f64().is_some(), "{figures}");
    }
    assert!(figures["memory_levels_off"].is_boolean());
}

#[test]
fn catchup_quick_sees_the_restarted_follower_level_with_the_leader() {
    let report = bench(&["catchup", "--clients", "8", "--down-s", "4", "--settle-s", "2"]);
    let figures = &report["figures"];
    assert!(figures["caught_up_after_restart_s"].as_f64().is_some(), "{figures}");
    assert!(figures["entries_behind_at_restart"].as_u64().expect("behind") > 0, "no load while it was down");
    assert!(figures["enqueues_acked"].as_u64().expect("acked") > 0);
    for counter in ["append_timeouts", "catch_up_appends_split", "snapshots_sent"] {
        assert!(figures[counter].as_f64().is_some_and(|n| n >= 0.0), "{counter}: {figures}");
    }
}
