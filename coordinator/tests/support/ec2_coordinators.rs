//! Two real coordinator processes of the `ec2` build against moto, for the EC2 tests of this
//! package (included by `#[path]`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use wire::client::ApiClient;

use super::moto::{INSTANCE_PROFILE, REGION, World};

/// The cluster secret the coordinators run with.
pub const SECRET: &str = "ec2-test-cluster-secret-of-the-coordinators";

/// The two coordinators, real processes of the `ec2` build, killed on drop.
pub struct Coordinators {
    processes: Vec<Option<Child>>,
    /// Their client API URLs.
    pub urls: Vec<String>,
    dir: PathBuf,
}

impl Coordinators {
    /// Coordinators 1 and 2 of `cluster` on `addrs[0..2]` (the witness's Raft address is
    /// `addrs[2]`), with the cluster secret [`SECRET`], `--scaler ec2` against `world`, and
    /// `extra` flags; coordinator 1 initializes the cluster.
    pub fn start(dir: &Path, world: &World, addrs: &[String; 3], cluster: &str, extra: &[&str]) -> Coordinators {
        // The binary cargo built for this test, with this test's features: copied, so that a
        // build of the default features that replaces target/debug/coordinator meanwhile does
        // not change what runs.
        let binary = dir.join("coordinator");
        std::fs::copy(env!("CARGO_BIN_EXE_coordinator"), &binary).expect("copy the coordinator binary");
        let help = Command::new(&binary).arg("--help").output().expect("coordinator --help");
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--ec2-ami"),
            "{} is not built with the ec2 feature",
            env!("CARGO_BIN_EXE_coordinator")
        );
        let members = format!("1=coordinator@{},2=coordinator@{},3=witness@{}", addrs[0], addrs[1], addrs[2]);
        let urls: Vec<String> = addrs[..2].iter().map(|a| format!("http://{a}")).collect();
        let mut processes = Vec::new();
        for id in 1..=2 {
            let mut args: Vec<String> = vec![
                "--id".into(),
                id.to_string(),
                "--listen".into(),
                addrs[id - 1].clone(),
                "--member".into(),
                members.clone(),
                "--data-dir".into(),
                dir.join(format!("coordinator-{id}")).display().to_string(),
                "--lease-ms".into(),
                "1500".into(),
                "--worker-timeout-ms".into(),
                "5000".into(),
            ];
            if id == 1 {
                args.push("--initialize".into());
            }
            args.extend(
                [
                    "--scaler",
                    "ec2",
                    "--ec2-cluster-name",
                    cluster,
                    "--ec2-ami",
                    &world.ami,
                    "--ec2-subnet",
                    &world.subnet,
                    "--ec2-security-group",
                    &world.security_group,
                    "--ec2-instance-profile",
                    INSTANCE_PROFILE,
                    "--ec2-region",
                    REGION,
                    "--ec2-endpoint-url",
                    &world.moto.url,
                    "--ec2-coordinators",
                    &urls.join(","),
                ]
                .map(String::from),
            );
            args.extend(extra.iter().map(|a| a.to_string()));
            let log = std::fs::File::create(dir.join(format!("coordinator-{id}.log"))).expect("log");
            let child = Command::new(&binary)
                .args(&args)
                .env("TANDEM_CLUSTER_SECRET", SECRET)
                .env("RUST_LOG", "info,openraft=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start a coordinator");
            processes.push(Some(child));
        }
        Coordinators { processes, urls, dir: dir.to_owned() }
    }

    /// Wait until both answer `/readyz` (a minute at most).
    pub async fn wait_ready(&self) {
        for i in 0..2 {
            let client = self.client(i);
            super::common::wait_for("both coordinators ready", std::time::Duration::from_secs(60), || {
                let client = client.clone();
                async move { client.ready().await.unwrap_or(false).then_some(()) }
            })
            .await;
        }
    }

    /// A client of coordinator `i` (0 or 1).
    pub fn client(&self, i: usize) -> ApiClient {
        ApiClient::new(self.urls[i].clone())
    }

    /// SIGKILL coordinator `i` (0 or 1).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.processes[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The end of each coordinator's log.
    pub fn logs(&self) -> String {
        (1..=2)
            .map(|id| {
                let path = self.dir.join(format!("coordinator-{id}.log"));
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                format!("--- coordinator-{id}, last lines:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Coordinators {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for i in 0..self.processes.len() {
            self.kill(i);
        }
    }
}
