//! `deploy local` as a supervisor: the real `deploy` binary (and the library it runs) refuses
//! ports a running cluster holds before starting anything, restarts a child that exits, and stops
//! everything with a non-zero status when one keeps exiting. Processes on 127.0.0.1, free ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use deploy::local::{LocalCluster, LocalOptions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use wire::client::ApiClient;

mod common;

use common::*;

/// A `deploy local` process with no workers but the witness's, its output in files, stopped on
/// drop (SIGTERM, then SIGKILL).
struct DeployLocal {
    child: Child,
    data_dir: PathBuf,
    output: PathBuf,
    ports: [u16; 3],
}

impl DeployLocal {
    /// Start it on `ports`, with its data under `dir/data` and its output in `dir/deploy.out`.
    fn start(dir: &TempDir, ports: [u16; 3]) -> DeployLocal {
        let data_dir = dir.path().join("data");
        let output = dir.path().join("deploy.out");
        let file = std::fs::File::create(&output).expect("output file");
        let [port_1, port_2, witness_port] = ports.map(|port| port.to_string());
        let child = Command::new(env!("CARGO_BIN_EXE_deploy"))
            .arg("local")
            .arg("--bin-dir")
            .arg(bin_dir())
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--port-1", &port_1, "--port-2", &port_2, "--witness-port", &witness_port])
            .args(["--min-workers", "0", "--max-workers", "0", "--worker-cores", "1"])
            // Children's errors end their logs, not a backtrace.
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("output file"))
            .stderr(file)
            .spawn()
            .expect("starting deploy local");
        DeployLocal { child, data_dir, output, ports }
    }

    /// What it printed so far (stdout and stderr).
    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Its exit status, waiting up to `timeout`.
    async fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "deploy local still runs after {timeout:?}:\n{}", self.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until both coordinators answer `/readyz`.
    async fn wait_ready(&self, timeout: Duration) {
        let clients = [self.ports[0], self.ports[1]].map(|port| ApiClient::new(format!("http://127.0.0.1:{port}")));
        wait_for("both coordinators to be ready", timeout, || async {
            for client in &clients {
                if !client.ready().await.unwrap_or(false) {
                    return None;
                }
            }
            Some(())
        })
        .await;
        // And deploy local has finished its own start-up and supervises: a child that exits
        // before then is reported as a failed start-up, not restarted.
        wait_for("deploy local to say the cluster is up", timeout, || async {
            self.output().contains("Tandem is up").then_some(())
        })
        .await;
    }

    /// Its children's pids, each with its command line.
    fn children(&self) -> Vec<(u32, String)> {
        children_of(self.child.id())
    }

    /// The pid of its child whose command line names `data_subdir` of its data directory
    /// (`coordinator-1`, `witness`).
    fn child_pid(&self, data_subdir: &str) -> Option<u32> {
        let needle = self.data_dir.join(data_subdir).display().to_string();
        self.children().into_iter().find(|(_, cmdline)| cmdline.split(' ').any(|arg| arg == needle)).map(|(pid, _)| pid)
    }
}

impl Drop for DeployLocal {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The children of process `pid` (of every thread of it), each with its command line.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return vec![] };
    let mut children = Vec::new();
    for task in tasks.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in list.split_whitespace().filter_map(|pid| pid.parse::<u32>().ok()) {
            children.push((child, cmdline(child)));
        }
    }
    children
}

/// Process `pid`'s command line, arguments joined by spaces; empty once it is gone (or a zombie).
fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0).filter(|arg| !arg.is_empty()).map(String::from_utf8_lossy).collect::<Vec<_>>().join(" ")
}

/// Whether a process whose command line names `data_dir` still runs as `pid`.
fn still_runs(pid: u32, data_dir: &Path) -> bool {
    cmdline(pid).contains(&data_dir.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_cluster_on_the_ports_of_a_running_one_is_refused_before_it_starts_anything() {
    let dir = TempDir::new().expect("temp dir");
    let first = start(&dir, 0).await;
    let ports = [first.options.port_1, first.options.port_2, first.options.witness_port];

    // The library refuses, naming the port and whose it is, even when only one is taken.
    let other = TempDir::new().expect("temp dir");
    let [free_1, free_2, _] = LocalOptions::free_ports().expect("ports");
    let mut layout = options(&other, 0);
    (layout.port_1, layout.port_2, layout.witness_port) = (free_1, free_2, ports[2]);
    let error = LocalCluster::start(layout.clone()).expect_err("the witness's port is taken").to_string();
    assert!(error.contains(&format!("port {}", ports[2])) && error.contains("the witness's"), "{error}");
    assert!(!layout.data_dir.join("coordinator-1.log").exists(), "a process was started: {error}");

    // So does `deploy local`, at once, and the first cluster carries on.
    let second_dir = TempDir::new().expect("temp dir");
    let started = Instant::now();
    let mut second = DeployLocal::start(&second_dir, ports);
    let status = second.wait_for_exit(Duration::from_secs(30)).await;
    let output = second.output();
    assert!(!status.success(), "deploy local on taken ports exited with {status}:\n{output}");
    assert!(started.elapsed() < Duration::from_secs(10), "refused only after {:?}:\n{output}", started.elapsed());
    assert!(output.contains(&format!("port {} ", ports[0])) && output.contains("coordinator-1's API"), "{output}");
    assert!(output.contains("--port-1"), "the refusal says how to choose other ports:\n{output}");
    assert!(!output.contains("Tandem is up"), "{output}");
    assert!(!second.data_dir.exists(), "the refused cluster created its data directory:\n{output}");
    for url in first.api_urls() {
        assert!(ApiClient::new(url.clone()).ready().await.unwrap_or(false), "{url} is no longer ready");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_is_reported_with_its_log_and_restarted_on_its_data() {
    let dir = TempDir::new().expect("temp dir");
    let deploy = DeployLocal::start(&dir, LocalOptions::free_ports().expect("ports"));
    deploy.wait_ready(Duration::from_secs(60)).await;
    let before = deploy.child_pid("coordinator-1").expect("coordinator-1 is a child of deploy local");
    kill(Pid::from_raw(before as i32), Signal::SIGKILL).expect("SIGKILL coordinator-1");

    let output = wait_for("deploy local to report coordinator-1's exit", Duration::from_secs(30), || async {
        let output = deploy.output();
        output.contains("coordinator-1 exited (signal: 9 (SIGKILL))").then_some(output)
    })
    .await;
    // The report ends with the last lines of its log before the restart, then a blank line.
    let report = &output[output.find("coordinator-1 exited").expect("found above")..];
    let (_, tail) = report.split_once("coordinator-1.log) ends:\n").unwrap_or_else(|| panic!("{report}"));
    let tail = tail.split("\n\n").next().expect("split yields one part at least");
    let log = std::fs::read_to_string(deploy.data_dir.join("coordinator-1.log")).expect("coordinator-1's log");
    assert!(!tail.trim().is_empty() && log.contains(tail), "the report shows the end of its log:\n{report}");
    assert!(tail.lines().count() <= 10, "{report}");
    let after = wait_for("coordinator-1 to run again", Duration::from_secs(30), || async {
        deploy.child_pid("coordinator-1").filter(|pid| *pid != before)
    })
    .await;
    deploy.wait_ready(Duration::from_secs(60)).await;
    assert!(still_runs(after, &deploy.data_dir), "the restarted coordinator-1 exited:\n{}", deploy.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_keeps_exiting_stops_the_whole_cluster_with_a_non_zero_status() {
    let dir = TempDir::new().expect("temp dir");
    let mut deploy = DeployLocal::start(&dir, LocalOptions::free_ports().expect("ports"));
    deploy.wait_ready(Duration::from_secs(60)).await;
    let children = deploy.children();
    assert_eq!(children.len(), 3, "two coordinators and the witness: {children:?}");
    let victim = deploy.child_pid("coordinator-2").expect("coordinator-2 is a child of deploy local");

    // Its data directory becomes a file: every restart exits at once.
    let data = deploy.data_dir.join("coordinator-2");
    std::fs::remove_dir_all(&data).expect("removing coordinator-2's data");
    std::fs::write(&data, b"not a directory").expect("a file in its place");
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).expect("SIGKILL coordinator-2");

    let status = deploy.wait_for_exit(Duration::from_secs(60)).await;
    let output = deploy.output();
    assert!(!status.success(), "deploy local exited with {status}:\n{output}");
    assert!(output.contains("coordinator-2 exited 4 times within 60s"), "{output}");
    assert!(output.contains("crash loop"), "{output}");
    assert!(output.contains("starting voter 2"), "the error shows why it exits (its log's end):\n{output}");
    wait_for("every process of the cluster to be gone", Duration::from_secs(10), || async {
        children.iter().all(|(pid, _)| !still_runs(*pid, &deploy.data_dir)).then_some(())
    })
    .await;
    assert!(children_of(deploy.child.id()).is_empty());
}
