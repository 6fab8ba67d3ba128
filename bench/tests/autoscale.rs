//! `bench autoscale --quick`: simulated time, no cluster, so no binaries to build and no
//! `--local`. Every trace is run by every policy, every job completes, and Tandem's policy never
//! kills a busy worker, and the peers' rule keeps to its cap. Whether Tandem's policy wins its
//! verdicts is a tuning question this test leaves alone: it does not win them all (see README).

use std::process::Command;

const TRACES: [&str; 6] = ["steady", "burst", "ramp", "spike-then-idle", "diurnal", "launch-failures"];
const POLICIES: [&str; 3] = ["tandem", "peers", "ray-like"];

#[test]
fn autoscale_quick_runs_every_trace_and_policy_to_completion() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let json = dir.path().join("report.json");
    let plot = dir.path().join("fleet.svg");
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["autoscale", "--quick", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "bench autoscale failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.contains("<svg"));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    assert_eq!(report["failures"], serde_json::json!([]), "{stdout}");

    let traces = report["detail"]["traces"].as_array().expect("traces");
    let names: Vec<&str> = traces.iter().map(|t| t["trace"].as_str().expect("name")).collect();
    assert_eq!(names, TRACES);
    for trace in traces {
        let name = &trace["trace"];
        for policy in POLICIES {
            let run = &trace["policies"][policy];
            let jobs = run["jobs"].as_u64().expect("jobs");
            assert!(jobs > 0, "{name} has no job");
            assert_eq!(run["jobs_completed"].as_u64(), Some(jobs), "{name}, {policy}: {run}");
            assert!(run["p95_ms"].as_u64().is_some(), "{name}, {policy}: {run}");
            assert!(stdout.contains(&format!("{:<16} {policy:<9}", name.as_str().expect("name"))), "{stdout}");
        }
        assert_eq!(trace["policies"]["tandem"]["busy_workers_killed"], 0, "{name}");
        assert!(trace["verdict"]["passed"].is_boolean(), "{name}");
        assert!(svg.contains(name.as_str().expect("name")), "{name} has no chart");
    }
    // The peers' cap is 3 workers per coordinator, and Tandem has two: 6 at most, and the burst
    // (a long queue at once) reaches it.
    let peers = &report["config"]["peers"];
    assert_eq!(
        (&peers["max_workers_per_coordinator"], &peers["coordinators"]),
        (&serde_json::json!(3), &serde_json::json!(2))
    );
    for trace in traces {
        let peak = trace["policies"]["peers"]["peak_instances"].as_u64().expect("peak");
        assert!(peak <= 6, "{}: the peers ran {peak} instances at once", trace["trace"]);
    }
    assert_eq!(traces[1]["policies"]["peers"]["peak_instances"], 6, "{}", traces[1]["policies"]["peers"]);
    // The launch-failures trace did make launches fail: Tandem's at once, and of both kinds
    // over the three policies (which ones never register depends on how many each launches).
    let failing = &traces[5]["policies"];
    assert!(failing["tandem"]["capacity_errors"].as_u64() > Some(0), "{failing}");
    let given_up: u64 = ["tandem", "peers", "ray-like"].iter().filter_map(|p| failing[p]["given_up"].as_u64()).sum();
    assert!(given_up > 0, "{failing}");
}

/// `--seeds N` judges each trace on the means over N seeds and says in how many of them the
/// trace's own verdict held; seed 1's table is the same as without it.
#[test]
fn autoscale_over_several_seeds_judges_the_means() {
    let run = |extra: &[&str]| -> (serde_json::Value, String) {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let json = dir.path().join("report.json");
        let output = Command::new(env!("CARGO_BIN_EXE_bench"))
            .args(["autoscale", "--quick", "--json"])
            .arg(&json)
            .args(extra)
            .output()
            .expect("run bench");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "bench autoscale {extra:?} failed:\n{stdout}");
        (serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("json"), stdout)
    };
    let (one, _) = run(&[]);
    let (three, stdout) = run(&["--seeds", "3"]);
    assert_eq!(three["failures"], serde_json::json!([]), "{stdout}");
    assert_eq!(three["figures"]["seeds"], 3);
    let held = three["figures"]["seeds_passed_per_trace"].as_array().expect("per trace");
    assert_eq!(held.len(), TRACES.len());
    assert!(held.iter().all(|n| n.as_u64().is_some_and(|n| n <= 3)), "{held:?}");
    for trace in TRACES {
        assert!(stdout.lines().any(|l| l.contains(trace) && l.contains("of 3 seeds")), "{trace}: {stdout}");
    }
    // The first seed's runs are the ones reported in detail, unchanged.
    assert_eq!(one["detail"]["traces"][0]["policies"], three["detail"]["traces"][0]["policies"]);
}
