//! The local cluster: two coordinators, the witness worker and more workers, each a real process
//! with its own data directory on 127.0.0.1.
//!
//! [`LocalCluster`] owns its children: dropping it kills them (SIGKILL), and each child is also
//! set to receive SIGKILL if this process dies first, so no process outlives its cluster.
//!
//! Before it starts anything, [`LocalCluster::start`] tries every port the voters will listen on
//! and refuses, naming the port and whose it is, when one is taken: a second cluster on the same
//! ports would otherwise see its own voters exit while the first cluster answered for them.
//! Once the cluster is up, [`LocalCluster::supervise`] (called every half second by
//! `deploy local`) restarts a child that exited, and gives up on one that keeps exiting.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use wire::members::Members;

/// The node id of coordinator 1, 2 and the witness.
pub const IDS: [u64; 3] = [1, 2, 3];

/// The environment variable the coordinators and workers read the cluster secret from.
pub const SECRET_ENV: &str = "TANDEM_CLUSTER_SECRET";

/// The environment variable the coordinators read the admin token from.
pub const ADMIN_TOKEN_ENV: &str = "TANDEM_ADMIN_TOKEN";

/// A child that exits more than this many times within [`CRASH_LOOP_WINDOW`] is in a crash loop:
/// [`LocalCluster::supervise`] stops restarting it.
pub const CRASH_LOOP_EXITS: usize = 3;

/// See [`CRASH_LOOP_EXITS`].
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(60);

/// How many lines of an exited child's log are shown.
const LOG_TAIL_LINES: usize = 10;

/// How to lay out a local cluster.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// Where the `coordinator` and `worker` binaries are.
    pub bin_dir: PathBuf,
    /// Root of every process's data directory.
    pub data_dir: PathBuf,
    /// Coordinator 1's port.
    pub port_1: u16,
    /// Coordinator 2's port.
    pub port_2: u16,
    /// The witness's Raft port.
    pub witness_port: u16,
    /// Workers besides the witness's.
    pub workers: usize,
    /// Cores each worker hashes on (`None`: all of them).
    pub worker_cores: Option<usize>,
    /// Runtime threads of each coordinator (`--runtime-threads`; `None`: one per core). Both
    /// coordinators, the witness and the bench or clients share this machine's cores: by
    /// default each coordinator gets half of them ([`LocalOptions::shared_runtime_threads`]).
    pub coordinator_threads: Option<usize>,
    /// Extra flags for both coordinators.
    pub coordinator_args: Vec<String>,
    /// Extra flags for every worker.
    pub worker_args: Vec<String>,
    /// Where children's output goes: inherit (a human watches) or a log file per process.
    pub log_to_files: bool,
    /// The coordinators' admin token, given to them in `TANDEM_ADMIN_TOKEN` (not on their
    /// command line); `None` leaves the admin routes off.
    pub admin_token: Option<String>,
    /// The cluster secret, given to every process in `TANDEM_CLUSTER_SECRET` (not on its
    /// command line, where `ps` shows it). `None`: [`LocalCluster::start`] generates a random
    /// one (see [`LocalCluster::options`]), so that a local cluster is never open to anyone
    /// who reaches its ports.
    pub cluster_secret: Option<String>,
    /// The address each voter listens on (coordinator 1, coordinator 2, the witness):
    /// 127.0.0.1, unless the voters run in network namespaces of their own.
    pub voter_hosts: [String; 3],
    /// The network namespace each voter runs in (`ip netns exec NAME`), if any.
    pub voter_netns: [Option<String>; 3],
    /// The network namespace and address the workers besides the witness's run in, if any.
    pub worker_netns: Option<(String, String)>,
    /// Let the leader launch and stop worker processes itself, between these bounds (the
    /// `workers` started here count toward the minimum and are never scaled in); `None`: a
    /// fixed fleet.
    pub autoscale: Option<Autoscale>,
}

/// The local autoscaler's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Autoscale {
    /// Fewest workers, the witness's not counted.
    pub min_workers: u32,
    /// Most workers, the witness's not counted.
    pub max_workers: u32,
}

impl LocalOptions {
    /// A cluster of the binaries in `bin_dir`, with its data under `data_dir`, its voters on
    /// 127.0.0.1 at `ports` (coordinator 1, coordinator 2, the witness), no workers but the
    /// witness's, logs in files, and the given credentials. Change any field after.
    pub fn on_loopback(
        bin_dir: PathBuf,
        data_dir: PathBuf,
        [port_1, port_2, witness_port]: [u16; 3],
        admin_token: Option<String>,
        cluster_secret: Option<String>,
    ) -> LocalOptions {
        LocalOptions {
            bin_dir,
            data_dir,
            port_1,
            port_2,
            witness_port,
            workers: 0,
            worker_cores: None,
            coordinator_threads: Some(LocalOptions::shared_runtime_threads()),
            coordinator_args: vec![],
            worker_args: vec![],
            log_to_files: true,
            admin_token,
            cluster_secret,
            voter_hosts: LocalOptions::loopback_hosts(),
            voter_netns: Default::default(),
            worker_netns: None,
            autoscale: None,
        }
    }

    /// Runtime threads for each of two coordinators on one machine: half its cores, at least
    /// one. With one per core each, the two runtimes (and the witness's) park and wake more
    /// threads than there are cores, and every hand-off between tasks can cost a context
    /// switch: on 2 cores, `bench ingest` measured 13 to 16 µs less CPU per enqueue with one
    /// thread each (README, "Performance").
    pub fn shared_runtime_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1))
    }

    /// Set [`LocalOptions::coordinator_threads`] as a flag gives it: `Some(0)` is one per core
    /// (the coordinator's own default), `None` keeps the shared default.
    pub fn given_coordinator_threads(&mut self, given: Option<usize>) {
        if let Some(threads) = given {
            self.coordinator_threads = (threads > 0).then_some(threads);
        }
    }

    /// Where the leader's local provider keeps its records of the workers it started.
    pub fn launched_workers_dir(&self) -> PathBuf {
        self.data_dir.join("launched-workers")
    }

    /// Three free ports for [`LocalOptions::on_loopback`].
    pub fn free_ports() -> anyhow::Result<[u16; 3]> {
        Ok([free_port()?, free_port()?, free_port()?])
    }

    /// Every voter on 127.0.0.1, in this process's network namespace.
    pub fn loopback_hosts() -> [String; 3] {
        ["127.0.0.1".into(), "127.0.0.1".into(), "127.0.0.1".into()]
    }
}

/// One process of the cluster.
#[derive(Debug)]
pub struct Process {
    /// A name for humans and logs: `coordinator-1`, `witness`, `worker-2`.
    pub name: String,
    /// The arguments it was started with (to restart it the same way).
    pub args: Vec<String>,
    /// Where its Prometheus metrics are served.
    pub metrics_url: String,
    binary: PathBuf,
    netns: Option<String>,
    child: Option<Child>,
    /// When it exited on its own lately (within [`CRASH_LOOP_WINDOW`]), oldest first.
    exits: VecDeque<Instant>,
}

impl Process {
    /// Its pid while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Send `signal`; `false` if it is not running.
    pub fn signal(&self, signal: Signal) -> bool {
        match &self.child {
            Some(child) => kill(Pid::from_raw(child.id() as i32), signal).is_ok(),
            None => false,
        }
    }

    /// SIGKILL it and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it has exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        match &mut self.child {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// How it exited, once it has (`None` while it runs, or once it was killed and reaped).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|child| child.try_wait().ok().flatten())
    }

    /// Wait for it to exit, up to `timeout`; `true` if it did.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.has_exited() {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// A running local cluster.
#[derive(Debug)]
pub struct LocalCluster {
    /// The options it was started with.
    pub options: LocalOptions,
    /// Coordinators, the witness, then workers.
    pub processes: Vec<Process>,
    /// Whether the workers the leader started have been stopped since the last (re)start.
    launched_stopped: bool,
}

impl LocalCluster {
    /// The client API URLs of coordinator 1 and 2.
    pub fn api_urls(&self) -> [String; 2] {
        let hosts = &self.options.voter_hosts;
        [format!("http://{}:{}", hosts[0], self.options.port_1), format!("http://{}:{}", hosts[1], self.options.port_2)]
    }

    /// The Raft address (`host:port`) of voter `id` (1, 2 or 3).
    pub fn raft_addr(&self, id: u64) -> String {
        let o = &self.options;
        match id {
            1 => format!("{}:{}", o.voter_hosts[0], o.port_1),
            2 => format!("{}:{}", o.voter_hosts[1], o.port_2),
            _ => format!("{}:{}", o.voter_hosts[2], o.witness_port),
        }
    }

    /// The voters, as every coordinator is told them (`--member`).
    fn members(&self) -> Members {
        Members::layout(|id, _| self.raft_addr(id))
    }

    /// Start every process. Returns once they are spawned; see [`LocalCluster::wait_ready`].
    /// Starts nothing, and says which port and whose, if a port a voter is to listen on is taken
    /// (see [`check_ports`]).
    pub fn start(mut options: LocalOptions) -> anyhow::Result<LocalCluster> {
        if options.cluster_secret.is_none() {
            options.cluster_secret = Some(random_token()?);
        }
        for (what, value) in
            [("the cluster secret", &options.cluster_secret), ("the admin token", &options.admin_token)]
        {
            if let Some(value) = value {
                wire::check_credential(what, value).map_err(anyhow::Error::msg)?;
            }
        }
        for binary in ["coordinator", "worker"] {
            let path = options.bin_dir.join(binary);
            if !path.is_file() {
                bail!("{} not found: build it first (cargo build --workspace --bins)", path.display());
            }
        }
        check_ports(&options)?;
        std::fs::create_dir_all(&options.data_dir)
            .with_context(|| format!("creating {}", options.data_dir.display()))?;
        let mut cluster = LocalCluster { options: options.clone(), processes: Vec::new(), launched_stopped: false };
        let members = cluster.members().to_string();
        let coordinator_urls = cluster.api_urls().join(",");
        for id in [1, 2] {
            let listen = cluster.raft_addr(id);
            let mut args = vec![
                "--id".to_owned(),
                id.to_string(),
                "--listen".into(),
                listen.clone(),
                "--member".into(),
                members.clone(),
                "--data-dir".into(),
                options.data_dir.join(format!("coordinator-{id}")).display().to_string(),
            ];
            if id == 1 {
                args.push("--initialize".into());
            }
            if let Some(autoscale) = options.autoscale {
                let cores = options
                    .worker_cores
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get));
                args.extend([
                    "--scaler".to_owned(),
                    "local".into(),
                    "--scaler-dir".into(),
                    options.launched_workers_dir().display().to_string(),
                    "--scaler-worker-binary".into(),
                    options.bin_dir.join("worker").display().to_string(),
                    "--scaler-worker-cores".into(),
                    cores.to_string(),
                    "--min-workers".into(),
                    autoscale.min_workers.to_string(),
                    "--max-workers".into(),
                    autoscale.max_workers.to_string(),
                    // Local workers start in about a second.
                    "--assumed-boot-ms".into(),
                    "2000".into(),
                    "--boot-timeout-ms".into(),
                    "30000".into(),
                ]);
            }
            if let Some(threads) = options.coordinator_threads {
                args.extend(["--runtime-threads".to_owned(), threads.to_string()]);
            }
            args.extend(options.coordinator_args.iter().cloned());
            let netns = options.voter_netns[id as usize - 1].clone();
            cluster.spawn(
                format!("coordinator-{id}"),
                "coordinator",
                args,
                format!("http://{listen}/metrics"),
                netns,
            )?;
        }
        let worker_args = |extra: &[String]| {
            let mut args = vec!["--coordinator".to_owned(), coordinator_urls.clone()];
            if let Some(cores) = options.worker_cores {
                args.extend(["--cores".into(), cores.to_string()]);
            }
            args.extend(extra.iter().cloned());
            args.extend(options.worker_args.iter().cloned());
            args
        };
        let witness_extra = [
            "--witness".to_owned(),
            "--witness-id".into(),
            "3".into(),
            "--witness-listen".into(),
            cluster.raft_addr(3),
            "--witness-data-dir".into(),
            options.data_dir.join("witness").display().to_string(),
            "--name".into(),
            "witness-worker".into(),
        ];
        let witness_host = options.voter_hosts[2].clone();
        cluster.spawn_worker(
            "witness".into(),
            worker_args(&witness_extra),
            &witness_host,
            options.voter_netns[2].clone(),
        )?;
        let (worker_netns, worker_host) = match &options.worker_netns {
            Some((netns, host)) => (Some(netns.clone()), host.clone()),
            None => (None, "127.0.0.1".to_owned()),
        };
        for i in 1..=options.workers {
            let args = worker_args(&["--name".into(), format!("worker-{i}")]);
            cluster.spawn_worker(format!("worker-{i}"), args, &worker_host, worker_netns.clone())?;
        }
        Ok(cluster)
    }

    /// Start one more worker; returns its index in [`LocalCluster::processes`].
    pub fn add_worker(&mut self, name: &str, extra: &[String]) -> anyhow::Result<usize> {
        let mut args = vec!["--coordinator".to_owned(), self.api_urls().join(",")];
        args.extend(extra.iter().cloned());
        args.extend(self.options.worker_args.iter().cloned());
        self.spawn_worker(name.to_owned(), args, "127.0.0.1", None)?;
        Ok(self.processes.len() - 1)
    }

    /// Start a worker serving its metrics on a free port of `host`.
    fn spawn_worker(
        &mut self,
        name: String,
        mut args: Vec<String>,
        host: &str,
        netns: Option<String>,
    ) -> anyhow::Result<()> {
        let port = free_port()?;
        args.extend(["--metrics-listen".into(), format!("{host}:{port}")]);
        self.spawn(name, "worker", args, format!("http://{host}:{port}/metrics"), netns)
    }

    fn spawn(
        &mut self,
        name: String,
        binary: &str,
        args: Vec<String>,
        metrics_url: String,
        netns: Option<String>,
    ) -> anyhow::Result<()> {
        let binary = self.options.bin_dir.join(binary);
        let child = spawn_child(&binary, &args, &name, &self.options, netns.as_deref())?;
        self.processes.push(Process {
            name,
            args,
            metrics_url,
            binary,
            netns,
            child: Some(child),
            exits: VecDeque::new(),
        });
        Ok(())
    }

    /// Start a coordinator that is to replace coordinator process `old_name` (already killed,
    /// its disk lost) under the new node id `new_id`: the same address and flags, an empty data
    /// directory `coordinator-NEW_ID`, and no `--initialize`. It joins the cluster once the
    /// leader is asked to replace the old id (`POST /admin/members/replace`). Its process is
    /// called `coordinator-NEW_ID`.
    pub fn start_replacement_coordinator(&mut self, old_name: &str, new_id: u64) -> anyhow::Result<()> {
        let old = self.process(old_name);
        let (mut args, metrics_url, netns) = (old.args.clone(), old.metrics_url.clone(), old.netns.clone());
        let flag = |args: &[String], name: &str| args.iter().position(|a| a == name).map(|i| i + 1);
        let (Some(id_at), Some(member_at), Some(dir_at)) =
            (flag(&args, "--id"), flag(&args, "--member"), flag(&args, "--data-dir"))
        else {
            bail!("{old_name} was not started with --id, --member and --data-dir");
        };
        let old_id: u64 = args[id_at].parse().with_context(|| format!("{old_name}'s --id"))?;
        let members: Members = args[member_at].parse().map_err(anyhow::Error::msg)?;
        args[id_at] = new_id.to_string();
        args[member_at] = members.renumbered(old_id, new_id).to_string();
        let dir = self.options.data_dir.join(format!("coordinator-{new_id}"));
        args[dir_at] = dir.display().to_string();
        args.retain(|a| a != "--initialize");
        self.spawn(format!("coordinator-{new_id}"), "coordinator", args, metrics_url, netns)
    }

    /// The process called `name`.
    pub fn process(&mut self, name: &str) -> &mut Process {
        self.processes.iter_mut().find(|p| p.name == name).unwrap_or_else(|| panic!("no process {name}"))
    }

    /// Start the process called `name` again with the same arguments (after it was killed).
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let options = self.options.clone();
        let process = self.process(name);
        process.kill();
        process.child =
            Some(spawn_child(&process.binary, &process.args, &process.name, &options, process.netns.as_deref())?);
        // A restarted coordinator may start workers again.
        self.launched_stopped = false;
        Ok(())
    }

    /// Wait until both coordinators answer `/readyz` (a leader exists and reads work).
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let clients: Vec<wire::client::ApiClient> =
            self.api_urls().iter().map(|url| wire::client::ApiClient::new(url.clone())).collect();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut ready = true;
            for client in &clients {
                ready &= client.ready().await.unwrap_or(false);
            }
            if ready {
                return Ok(());
            }
            self.ensure_running()?;
            if tokio::time::Instant::now() >= deadline {
                bail!("the cluster was not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until every worker this cluster started (the witness's too) has registered, so that
    /// whoever drives it sees all of them in `/cluster` (to drain them, or to count their cores).
    pub async fn wait_workers(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let expected = self.options.workers + 1;
        let client = wire::client::ApiClient::new(self.api_urls()[0].clone());
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let registered = client.cluster().await.map_or(0, |view| view.workers.len());
            if registered >= expected {
                return Ok(());
            }
            self.ensure_running()?;
            if tokio::time::Instant::now() >= deadline {
                bail!("{registered} of {expected} workers had registered after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fail, naming it, if a process this cluster started has exited.
    fn ensure_running(&mut self) -> anyhow::Result<()> {
        let exited = (self.processes.iter_mut().filter(|p| p.child.is_some()))
            .find_map(|p| p.has_exited().then(|| p.name.clone()));
        if let Some(name) = exited {
            bail!("{name} exited during start-up; {}", self.log_tail(&name, LOG_TAIL_LINES));
        }
        Ok(())
    }

    /// The last `lines` lines of process `name`'s log, introduced ("its log ends:"), or where to
    /// look when its output is not in a file. The log says why it exited (a port taken, a bad
    /// flag), and the data directory, log included, may be gone by the time someone reads it.
    fn log_tail(&self, name: &str, lines: usize) -> String {
        if !self.options.log_to_files {
            return "see its output above".to_owned();
        }
        let path = self.log_path(name);
        match std::fs::read_to_string(&path) {
            Ok(log) => {
                let all: Vec<&str> = log.lines().collect();
                let tail = &all[all.len().saturating_sub(lines)..];
                format!("its log ({}) ends:\n{}", path.display(), tail.join("\n"))
            }
            Err(error) => format!("its log {} could not be read: {error}", path.display()),
        }
    }

    /// Where process `name` logs when [`LocalOptions::log_to_files`] is set.
    pub fn log_path(&self, name: &str) -> PathBuf {
        log_path(&self.options, name)
    }

    /// Restart every child that exited on its own since the last call, on its data directory
    /// and with its arguments, and say which: for each, its exit status and the end of its log.
    /// A child killed through [`Process::kill`] (a test taking it down on purpose) is left down.
    ///
    /// Fails, restarting nothing more, once a child has exited more than [`CRASH_LOOP_EXITS`]
    /// times within [`CRASH_LOOP_WINDOW`] (a crash loop: a port taken by another program, a
    /// broken data directory), or if a restart cannot be spawned. The error names the child and
    /// shows its log; the caller is expected to [`LocalCluster::stop`] the cluster then.
    ///
    /// Workers the leader's autoscaler launched are not this cluster's children and are not
    /// watched here: the leader replaces them itself. Call it from the thread that started the
    /// cluster: a child dies with the thread that spawned it.
    pub fn supervise(&mut self) -> anyhow::Result<Vec<ChildExit>> {
        let now = Instant::now();
        let mut restarted = Vec::new();
        for i in 0..self.processes.len() {
            let process = &mut self.processes[i];
            if process.child.is_none() {
                continue;
            }
            let Some(status) = process.exit_status() else { continue };
            while process.exits.front().is_some_and(|at| now.duration_since(*at) > CRASH_LOOP_WINDOW) {
                process.exits.pop_front();
            }
            process.exits.push_back(now);
            let exits = process.exits.len();
            let name = process.name.clone();
            let exit = ChildExit { name: name.clone(), status, log_tail: self.log_tail(&name, LOG_TAIL_LINES) };
            if exits > CRASH_LOOP_EXITS {
                // Left down, and not counted again by a later call.
                self.processes[i].child = None;
                bail!(
                    "{name} exited {exits} times within {}s, the last time with {status}: giving up on it \
                     (a crash loop) and stopping the cluster; {}",
                    CRASH_LOOP_WINDOW.as_secs(),
                    exit.log_tail
                );
            }
            self.restart(&name).with_context(|| format!("restarting {name} after it exited with {status}"))?;
            restarted.push(exit);
        }
        Ok(restarted)
    }

    /// SIGTERM every process, wait up to `grace` for them to exit, SIGKILL the rest; then the
    /// workers the leader started.
    pub fn stop(&mut self, grace: Duration) {
        // Workers first, so they can hand their jobs back while the coordinators still run.
        for process in self.processes.iter().rev() {
            process.signal(Signal::SIGTERM);
        }
        for process in self.processes.iter_mut().rev() {
            if !process.wait_for_exit(grace) {
                tracing::warn!(process = %process.name, "did not stop within the grace period; killing it");
                process.kill();
            }
        }
        // With the coordinators gone nobody starts more.
        self.stop_launched_workers(grace);
    }

    /// Stop the workers the leader started, once: only an autoscaled cluster has any (its
    /// coordinators run a provider, for the autoscaler and the witness's care).
    fn stop_launched_workers(&mut self, grace: Duration) {
        if self.options.autoscale.is_some() && !self.launched_stopped {
            crate::provider::local::LocalProcesses::stop_all(&self.options.launched_workers_dir(), grace);
            self.launched_stopped = true;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for process in &mut self.processes {
            process.kill();
        }
        self.stop_launched_workers(Duration::ZERO);
    }
}

/// A child of a [`LocalCluster`] that exited on its own and was restarted
/// ([`LocalCluster::supervise`]).
#[derive(Debug, Clone)]
pub struct ChildExit {
    /// The process's name (`coordinator-1`, `witness`, `worker-2`).
    pub name: String,
    /// How it exited.
    pub status: ExitStatus,
    /// The end of its log, introduced ("its log (PATH) ends:"), or where to look for it.
    pub log_tail: String,
}

impl std::fmt::Display for ChildExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exited ({}); restarted it with the same arguments and data directory; {}",
            self.name, self.status, self.log_tail
        )
    }
}

/// Where process `name` of a cluster laid out by `options` logs.
fn log_path(options: &LocalOptions, name: &str) -> PathBuf {
    options.data_dir.join(format!("{name}.log"))
}

/// Refuse, naming the port and whose it is, if a port a voter of `options` is to listen on
/// (each coordinator's API and Raft address, the witness's Raft address) is taken or given
/// twice. Each is tried with a bind on its host; a voter in a network namespace of its own is
/// not checked (its address is not this namespace's). The workers' metrics ports are chosen
/// free when they start. A port taken between this check and the child's bind shows up as the
/// child exiting, which [`LocalCluster::wait_ready`] and [`LocalCluster::supervise`] report.
pub fn check_ports(options: &LocalOptions) -> anyhow::Result<()> {
    let planned = [
        ("coordinator-1's API and Raft address", options.port_1),
        ("coordinator-2's API and Raft address", options.port_2),
        ("the witness's Raft address", options.witness_port),
    ];
    for (i, (owner, port)) in planned.iter().enumerate() {
        let host = &options.voter_hosts[i];
        let mut earlier = planned[..i].iter().zip(&options.voter_hosts);
        if let Some(((other, _), _)) = earlier.find(|((_, p), h)| p == port && *h == host) {
            bail!("port {port} is given twice, as {other} and as {owner}: choose another port for one of them");
        }
        if options.voter_netns[i].is_some() {
            continue;
        }
        match std::net::TcpListener::bind((host.as_str(), *port)) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => bail!(
                "port {port} on {host}, for {owner}, is already taken, so nothing was started: is another \
                 `deploy local` (or another program) listening there? Stop it, or choose other ports \
                 (`deploy local --port-1/--port-2/--witness-port`)"
            ),
            Err(error) => bail!("cannot listen on {host}:{port}, for {owner}, so nothing was started: {error}"),
        }
    }
    Ok(())
}

fn spawn_child(
    binary: &Path,
    args: &[String],
    name: &str,
    options: &LocalOptions,
    netns: Option<&str>,
) -> anyhow::Result<Child> {
    // `ip netns exec` execs the binary in place: the child's pid is the binary's.
    let mut command = match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns]).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    command.args(args).stdin(Stdio::null());
    // Secrets go in the environment, which only the process's owner can read, not on the
    // command line, which `ps` shows everyone. Only coordinators get the admin token.
    let secrets = [
        (SECRET_ENV, options.cluster_secret.as_ref()),
        (ADMIN_TOKEN_ENV, options.admin_token.as_ref().filter(|_| binary.ends_with("coordinator"))),
    ];
    for (name, value) in secrets {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    if options.log_to_files {
        let log = log_path(options, name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        command.stdout(file.try_clone()?).stderr(file);
    }
    die_with_parent(&mut command);
    command.spawn().with_context(|| format!("starting {name} ({})", binary.display()))
}

/// Ask the kernel to SIGKILL the child when this process dies, however it dies.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

/// A random token of 32 hex characters (from the kernel's random source), for admin tokens and
/// cluster secrets that nobody chose.
pub fn random_token() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `given`, or else a new random token (a cluster secret or admin token nobody chose).
pub fn given_or_random_token(given: Option<String>) -> anyhow::Result<String> {
    given.map_or_else(random_token, Ok)
}

/// A port for a process this program starts to listen on: free when chosen, never handed out
/// twice by this program, and below the kernel's ephemeral range. Port 0's answer came from that
/// range, which is also where every outgoing connection takes its local port, so a test's own
/// HTTP clients could hold it by the time the child bound it.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    // Where this process starts looking: spread by process id, so that two programs choosing
    // at once (two test binaries, a bench beside a test) are unlikely to try the same ports.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let below = ephemeral_range_start().unwrap_or(32_768).max(LOWEST + 1_000);
    let span = below - LOWEST;
    let start = (u64::from(std::process::id()) * 7_919 % u64::from(span)) as u32;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let port = (LOWEST + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port between {LOWEST} and {below}")
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_range_start() -> Option<u32> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// Where the `coordinator` and `worker` binaries are: `bin_dir` if given, else beside this
/// executable. When this program was started by cargo (`cargo run`), they are built there first
/// (in the same profile), so one command starts a cluster on a fresh clone.
pub fn locate_binaries(bin_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = bin_dir {
        return Ok(dir);
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().context("this executable has no directory")?.to_owned();
    build_binaries(&dir)?;
    Ok(dir)
}

/// When running under cargo (`cargo run`, `cargo test`), build the workspace's binaries into
/// `dir` (`target/debug` or `target/release`, whose name picks the profile), so that they are
/// never older than the sources. Outside cargo, do nothing. The whole workspace, as
/// `cargo build --workspace --bins` and README build it: building only `coordinator` and
/// `worker` unifies dependency features differently, and would rebuild reqwest, openraft and
/// everything above them after a workspace build, and the other way round.
pub fn build_binaries(dir: &Path) -> anyhow::Result<()> {
    let Ok(cargo) = std::env::var("CARGO") else { return Ok(()) };
    let mut build = Command::new(cargo);
    build.args(["build", "--workspace", "--bins"]);
    if dir.file_name().is_some_and(|name| name == "release") {
        build.arg("--release");
    }
    let status = build.status().context("running cargo build")?;
    if !status.success() {
        bail!("building the coordinator and worker failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(ports: [u16; 3]) -> LocalOptions {
        LocalOptions::on_loopback(PathBuf::from("/nonexistent"), PathBuf::from("/nonexistent"), ports, None, None)
    }

    #[test]
    fn a_taken_port_is_named_with_whose_it_is() {
        let ports = LocalOptions::free_ports().expect("ports");
        assert!(check_ports(&layout(ports)).is_ok());
        let _held = std::net::TcpListener::bind(("127.0.0.1", ports[1])).expect("bind");
        let error = check_ports(&layout(ports)).expect_err("port 2 is taken").to_string();
        assert!(error.contains(&format!("port {} on 127.0.0.1, for coordinator-2's API", ports[1])), "{error}");
        assert!(error.contains("--port-1/--port-2/--witness-port"), "{error}");
    }

    #[test]
    fn one_port_given_to_two_voters_is_refused() {
        let [port, other, _] = LocalOptions::free_ports().expect("ports");
        let error = check_ports(&layout([port, other, port])).expect_err("given twice").to_string();
        assert!(error.contains(&format!("port {port} is given twice")) && error.contains("the witness's"), "{error}");
    }
}
