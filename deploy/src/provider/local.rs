//! Worker processes on this host: the embedded default's "machines".
//!
//! Each launch is a `worker` process with a record in a directory both coordinators share
//! (`<dir>/<token>.json`, written before the process answers): the record makes a launch
//! idempotent per token, and lets a coordinator that becomes leader find, adopt or stop the
//! workers its predecessor started. A record whose process is gone is dropped when listed. The
//! pid in a record is trusted only while that process's command line names the record's
//! instance id, so a reused pid is never signalled.
//!
//! Workers outlive the coordinator that started them (a new leader adopts them, as it would
//! EC2 instances), and are started with `--give-up-after-ms`: a worker that can reach no
//! coordinator for that long exits, so none runs on forever once its cluster is gone.
//! [`LocalProcesses::stop_all`] stops every recorded worker (for `deploy local` on exit).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::{Instance, Provider, ProviderError, ProviderErrorKind, WitnessInstance};

/// How long a worker may take to hand its jobs back and exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A worker the provider started, as recorded on disk.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Record {
    token: String,
    instance_id: String,
    pid: u32,
    launched_at_ms: u64,
    /// For a worker in the witness role: where its voter listens.
    #[serde(default)]
    witness_raft_addr: Option<String>,
    /// For a worker in the witness role: its voter's node id.
    #[serde(default)]
    voter_id: Option<u64>,
}

/// Starts worker processes on this host.
#[derive(Debug)]
pub struct LocalProcesses {
    worker_binary: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    cluster_secret: Option<String>,
    give_up_after: Duration,
    /// Children this process started, to reap them.
    children: Mutex<HashMap<String, Child>>,
}

impl LocalProcesses {
    /// Start `worker_binary` with `args` (its coordinators, cores, ...) for each launch, keeping
    /// records and logs in `dir`, giving each worker `cluster_secret` in its environment (with
    /// none, the insecure flag that lets the worker start without it).
    pub fn new(
        worker_binary: PathBuf,
        args: Vec<String>,
        dir: PathBuf,
        cluster_secret: Option<String>,
        give_up_after: Duration,
    ) -> Result<Self, ProviderError> {
        if !worker_binary.is_file() {
            return Err(ProviderError::new(
                ProviderErrorKind::Configuration,
                format!("no worker binary at {}", worker_binary.display()),
            ));
        }
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        Ok(LocalProcesses { worker_binary, args, dir, cluster_secret, give_up_after, children: Mutex::default() })
    }

    /// The instance id of the worker launched under `token`.
    pub fn instance_id(token: &str) -> String {
        format!("local-{token}")
    }

    /// Stop every worker recorded in `dir` (SIGTERM, then SIGKILL after a grace period), and
    /// drop the records. For `deploy local` when it stops the cluster.
    pub fn stop_all(dir: &Path, grace: Duration) {
        let records = read_records(dir);
        for record in &records {
            if is_running(record) {
                let _ = kill(Pid::from_raw(record.pid as i32), Signal::SIGTERM);
            }
        }
        let deadline = std::time::Instant::now() + grace;
        for record in &records {
            while is_running(record) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if is_running(record) {
                let _ = kill(Pid::from_raw(record.pid as i32), Signal::SIGKILL);
            }
            let _ = std::fs::remove_file(record_path(dir, &record.token));
        }
    }

    /// Start a worker for `token`; with `witness`, in the witness role as voter `node_id` on a
    /// free port of 127.0.0.1, with its data beside the records.
    fn spawn(&self, token: &str, witness: Option<u64>) -> Result<Record, ProviderError> {
        let instance_id = LocalProcesses::instance_id(token);
        let mut witness_args = Vec::new();
        let mut witness_raft_addr = None;
        if let Some(node_id) = witness {
            let port =
                crate::local::free_port().map_err(|e| ProviderError::new(ProviderErrorKind::Other, e.to_string()))?;
            let addr = format!("127.0.0.1:{port}");
            let data_dir = self.dir.join(format!("{token}-witness"));
            witness_args = vec![
                "--witness".to_owned(),
                "--witness-id".into(),
                node_id.to_string(),
                "--witness-listen".into(),
                addr.clone(),
                "--witness-data-dir".into(),
                data_dir.display().to_string(),
            ];
            witness_raft_addr = Some(addr);
        }
        let log_path = self.dir.join(format!("{token}.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| io_error(&log_path, e))?;
        let stderr = log.try_clone().map_err(|e| io_error(&log_path, e))?;
        let mut command = Command::new(&self.worker_binary);
        command
            .args(&self.args)
            .args(["--launch-token", token, "--instance-id", &instance_id, "--name", &instance_id])
            .args(["--give-up-after-ms", &self.give_up_after.as_millis().to_string()])
            .args(&witness_args)
            // Only what a worker needs: the coordinator's admin token must not reach it.
            .env_clear()
            .envs(std::env::vars().filter(|(name, _)| name == "PATH" || name == "RUST_LOG"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        match &self.cluster_secret {
            Some(secret) => command.env(crate::local::SECRET_ENV, secret),
            // A coordinator runs without a secret only when its operator said so
            // (`--insecure-no-cluster-secret`): its workers need the same word to start.
            None => command.env(wire::INSECURE_NO_CLUSTER_SECRET_ENV, "true"),
        };
        let child = command.spawn().map_err(|e| {
            ProviderError::new(
                ProviderErrorKind::Configuration,
                format!("starting {}: {e}", self.worker_binary.display()),
            )
        })?;
        let record = Record {
            token: token.to_owned(),
            instance_id,
            pid: child.id(),
            launched_at_ms: wire::now_ms(),
            witness_raft_addr,
            voter_id: witness,
        };
        self.children.lock().expect("children lock").insert(token.to_owned(), child);
        write_record(&self.dir, &record)?;
        Ok(record)
    }

    /// The running worker launched under `token`, or a new one (see [`LocalProcesses::spawn`]).
    fn running_or_spawn(&self, token: &str, witness: Option<u64>) -> Result<Record, ProviderError> {
        self.reap();
        match read_record(&self.dir, token) {
            Some(record) if is_running(&record) => Ok(record),
            _ => self.spawn(token, witness),
        }
    }

    /// Reap children that have exited, so that none stays a zombie.
    fn reap(&self) {
        self.children.lock().expect("children lock").retain(|_, child| matches!(child.try_wait(), Ok(None)));
    }
}

/// A local worker is a child of this coordinator and inherits what its environment gives it, the
/// cluster secret among it (as `deploy local`'s workers do): nobody but this host's owner reads
/// how it was started, so the join secret is not needed.
impl Provider for LocalProcesses {
    async fn launch(&self, token: &str, _join_secret: &str) -> Result<Instance, ProviderError> {
        Ok(self.running_or_spawn(token, None)?.into())
    }

    async fn launch_witness(
        &self,
        token: &str,
        node_id: u64,
        _join_secret: &str,
    ) -> Result<WitnessInstance, ProviderError> {
        let record = self.running_or_spawn(token, Some(node_id))?;
        let Some(raft_addr) = record.witness_raft_addr.clone() else {
            return Err(ProviderError::new(
                ProviderErrorKind::Other,
                format!("{} was launched as a plain worker, not a witness", record.instance_id),
            ));
        };
        Ok(WitnessInstance { instance: record.into(), raft_addr })
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), ProviderError> {
        let Some(record) = read_records(&self.dir).into_iter().find(|r| r.instance_id == instance_id) else {
            return Ok(());
        };
        if is_running(&record) {
            let _ = kill(Pid::from_raw(record.pid as i32), Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            while is_running(&record) && tokio::time::Instant::now() < deadline {
                self.reap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if is_running(&record) {
                let _ = kill(Pid::from_raw(record.pid as i32), Signal::SIGKILL);
            }
        }
        self.reap();
        let path = record_path(&self.dir, &record.token);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&path, e)),
        }
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        self.reap();
        let mut live = Vec::new();
        for record in read_records(&self.dir) {
            if is_running(&record) {
                live.push(record.into());
            } else {
                let _ = std::fs::remove_file(record_path(&self.dir, &record.token));
            }
        }
        Ok(live)
    }
}

impl From<Record> for Instance {
    fn from(record: Record) -> Self {
        Instance {
            instance_id: record.instance_id,
            token: Some(record.token),
            launched_at_ms: Some(record.launched_at_ms),
            voter_id: record.voter_id,
        }
    }
}

/// Whether the record's process runs: its pid is alive, not a zombie, and its command line
/// names the record's instance id (a reused pid does not).
fn is_running(record: &Record) -> bool {
    // A process in the middle of its exec (just spawned) shows an empty command line for a
    // moment, as a zombie does: look again, unless it is a zombie.
    for _ in 0..50 {
        let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", record.pid)) else {
            return false;
        };
        if !cmdline.is_empty() {
            return cmdline.split(|b| *b == 0).any(|arg| arg == record.instance_id.as_bytes());
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", record.pid)).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
        if matches!(state, None | Some('Z') | Some('X')) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn record_path(dir: &Path, token: &str) -> PathBuf {
    dir.join(format!("{token}.json"))
}

fn read_record(dir: &Path, token: &str) -> Option<Record> {
    let bytes = std::fs::read(record_path(dir, token)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn read_records(dir: &Path) -> Vec<Record> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut records: Vec<Record> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "json"))
        .filter_map(|entry| serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok())
        .collect();
    records.sort_by(|a, b| a.token.cmp(&b.token));
    records
}

/// Write a record whole or not at all (a reader never sees half of one).
fn write_record(dir: &Path, record: &Record) -> Result<(), ProviderError> {
    let path = record_path(dir, &record.token);
    let partial = dir.join(format!(".{}.json.partial", record.token));
    let bytes = serde_json::to_vec(record).map_err(|e| ProviderError::new(ProviderErrorKind::Other, e.to_string()))?;
    std::fs::write(&partial, bytes).map_err(|e| io_error(&partial, e))?;
    std::fs::rename(&partial, &path).map_err(|e| io_error(&path, e))
}

fn io_error(path: &Path, e: std::io::Error) -> ProviderError {
    ProviderError::new(ProviderErrorKind::Other, format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in worker: a shell that idles until SIGTERM, with the arguments a worker would
    /// get (its command line then names the instance id, as a real worker's does).
    fn provider(dir: &Path) -> LocalProcesses {
        LocalProcesses::new(
            PathBuf::from("/bin/sh"),
            vec!["-c".into(), "trap 'exit 0' TERM; while :; do sleep 0.1; done".into()],
            dir.join("launched"),
            Some("s3cret".into()),
            Duration::from_secs(60),
        )
        .expect("provider")
    }

    #[tokio::test]
    async fn a_token_launches_once_and_a_new_provider_on_the_same_directory_adopts_it() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let first = provider(dir.path());
        let launched = first.launch("t1", "join").await.expect("launch");
        assert_eq!(launched.instance_id, "local-t1");
        assert_eq!(first.launch("t1", "join").await.expect("again"), launched, "one token, one worker");
        // The next leader's provider lists it, and launching the token again returns it.
        let next = provider(dir.path());
        assert_eq!(next.list().await.expect("list"), vec![launched.clone()]);
        assert_eq!(next.launch("t1", "join").await.expect("adopt"), launched);
        next.terminate("local-t1").await.expect("terminate");
        assert_eq!(next.list().await.expect("list"), vec![]);
        next.terminate("local-t1").await.expect("terminating twice succeeds");
        first.reap();
    }

    #[tokio::test]
    async fn a_witness_launches_once_per_token_as_the_voter_it_was_asked_for() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let provider = provider(dir.path());
        let launched = provider.launch_witness("w1", 7, "join").await.expect("launch");
        assert_eq!(launched.instance.instance_id, "local-w1");
        assert!(launched.raft_addr.starts_with("127.0.0.1:"), "{launched:?}");
        assert_eq!(provider.launch_witness("w1", 7, "join").await.expect("again"), launched, "one token, one witness");
        let record = read_record(&provider.dir, "w1").expect("record");
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", record.pid)).expect("cmdline");
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        for (flag, value) in [("--witness-id", "7"), ("--witness-listen", launched.raft_addr.as_str())] {
            let at = args.iter().position(|a| *a == flag.as_bytes()).unwrap_or_else(|| panic!("no {flag}"));
            assert_eq!(args[at + 1], value.as_bytes(), "{flag}");
        }
        // A token that launched a plain worker does not pass for a witness.
        provider.launch("plain", "join").await.expect("launch");
        assert!(provider.launch_witness("plain", 8, "join").await.is_err());
        LocalProcesses::stop_all(&provider.dir, Duration::from_secs(5));
        provider.reap();
    }

    #[tokio::test]
    async fn a_record_whose_process_died_or_whose_pid_was_reused_is_not_listed() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let provider = provider(dir.path());
        let launched = provider.launch("t2", "join").await.expect("launch");
        let record = read_record(&provider.dir, "t2").expect("record");
        kill(Pid::from_raw(record.pid as i32), Signal::SIGKILL).expect("kill");
        provider.children.lock().expect("lock").get_mut("t2").expect("child").wait().expect("wait");
        assert_eq!(provider.list().await.expect("list"), vec![], "{launched:?} died");
        // This test's own pid runs, but its command line does not name the instance.
        let impostor = Record {
            token: "t3".into(),
            instance_id: "local-t3".into(),
            pid: std::process::id(),
            launched_at_ms: 0,
            witness_raft_addr: None,
            voter_id: None,
        };
        write_record(&provider.dir, &impostor).expect("write");
        assert_eq!(provider.list().await.expect("list"), vec![]);
        assert!(read_record(&provider.dir, "t3").is_none(), "the stale record is dropped");
    }

    #[tokio::test]
    async fn stop_all_stops_every_recorded_worker() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let provider = provider(dir.path());
        provider.launch("a", "join").await.expect("launch");
        provider.launch("b", "join").await.expect("launch");
        let records = read_records(&provider.dir);
        assert_eq!(records.len(), 2);
        LocalProcesses::stop_all(&provider.dir, Duration::from_secs(5));
        provider.reap();
        assert!(records.iter().all(|r| !is_running(r)));
        assert!(read_records(&provider.dir).is_empty());
    }

    #[tokio::test]
    async fn a_worker_gets_the_secret_or_else_the_insecure_flag_its_coordinator_runs_with() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        // Read once the child has exec'd the stand-in (its command line names the instance):
        // before, /proc shows the forked copy of this process, or nothing.
        let environ = |provider: &LocalProcesses, token: &str| {
            let record = read_record(&provider.dir, token).expect("record");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !is_running(&record) {
                assert!(std::time::Instant::now() < deadline, "the stand-in never started");
                std::thread::sleep(Duration::from_millis(10));
            }
            let environ = std::fs::read(format!("/proc/{}/environ", record.pid)).expect("environ");
            String::from_utf8_lossy(&environ).split('\0').map(str::to_owned).collect::<Vec<_>>()
        };
        let secured = provider(dir.path());
        secured.launch("s", "join").await.expect("launch");
        let env = environ(&secured, "s");
        assert!(env.contains(&"TANDEM_CLUSTER_SECRET=s3cret".to_owned()), "{env:?}");
        assert!(!env.iter().any(|v| v.starts_with("TANDEM_INSECURE_NO_CLUSTER_SECRET")), "{env:?}");
        let mut insecure = provider(dir.path());
        insecure.cluster_secret = None;
        insecure.launch("i", "join").await.expect("launch");
        let env = environ(&insecure, "i");
        assert!(env.contains(&"TANDEM_INSECURE_NO_CLUSTER_SECRET=true".to_owned()), "{env:?}");
        assert!(!env.iter().any(|v| v.starts_with("TANDEM_CLUSTER_SECRET")), "{env:?}");
        LocalProcesses::stop_all(&secured.dir, Duration::from_secs(5));
        secured.reap();
        insecure.reap();
    }

    #[test]
    fn a_missing_worker_binary_is_a_configuration_error() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let error = LocalProcesses::new(dir.path().join("nope"), vec![], dir.path().into(), None, Duration::ZERO)
            .expect_err("no binary");
        assert_eq!(error.kind, ProviderErrorKind::Configuration);
    }
}
