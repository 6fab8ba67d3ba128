//! `deploy aws up`'s bootstrap of the three voters over SSH, for real: a real sshd on 127.0.0.1
//! (started by the test), the OpenSSH client, the workspace's binaries, three directories of this
//! machine standing for the three instances. The binaries are uploaded, the environment files
//! (the secrets among them) written with mode 0600 through standard input, the processes started;
//! they form one cluster, initialized once, whose witness's worker computes a correct result. A
//! second `up` changes nothing; a new binary is installed and restarted one voter at a time.
//!
//! Skipped where sshd is not installed, unless `CI` or `TANDEM_REQUIRE_SSHD` is set (`scripts/test`
//! installs Debian's openssh-server).

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::sshd::Sshd;
use common::{bin_dir, body, vectors, wait_for, wait_for_results};
use deploy::local::{free_port, random_token};
use deploy::voters::{ClusterSetup, InstallTarget, install, write_environment};
use tempfile::TempDir;
use wire::client::ApiClient;

/// The processes the install scripts started (detached, so not this test's children): killed by
/// their pid files on drop.
struct Started(Vec<PathBuf>);

impl Drop for Started {
    fn drop(&mut self) {
        for root in &self.0 {
            for name in ["coordinator", "worker"] {
                let pid = std::fs::read_to_string(root.join(format!("run/{name}.pid"))).unwrap_or_default();
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status();
                }
                if std::thread::panicking() {
                    let log = std::fs::read_to_string(root.join(format!("{name}.log"))).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    eprintln!(
                        "--- {}/{name}.log:\n{}",
                        root.display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
    }
}

/// The coordinator and worker binaries of `from`, copied to `to` and stripped of their debug
/// information (as a release build ships them: a quarter of the size of the dev build's, and
/// every `up` uploads and hashes them).
fn stripped_copies(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).expect("dir");
    for binary in ["coordinator", "worker"] {
        std::fs::copy(from.join(binary), to.join(binary)).expect("copy a binary");
        // Without binutils' strip, the copies are only bigger.
        let _ = std::process::Command::new("strip").arg(to.join(binary)).status();
    }
    to.to_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_installs_and_starts_the_voters_over_ssh() {
    let Some(sshd) = Sshd::start("up_installs_and_starts_the_voters_over_ssh") else { return };
    let started_at = std::time::Instant::now();
    let step = |what: &str| println!("{:>6.1} s  {what}", started_at.elapsed().as_secs_f64());
    let dir = TempDir::new().expect("temp dir");
    let bins = stripped_copies(&bin_dir(), &dir.path().join("bin"));
    let ssh = sshd.client(&dir.path().join("known_hosts"));
    let ports = [free_port().expect("port"), free_port().expect("port"), free_port().expect("port")];
    let roots: Vec<PathBuf> = (1..=3).map(|id| dir.path().join(format!("instance-{id}"))).collect();
    let started = Started(roots.clone());
    let base = ClusterSetup {
        members: format!(
            "1=coordinator@127.0.0.1:{},2=coordinator@127.0.0.1:{},3=witness@127.0.0.1:{}",
            ports[0], ports[1], ports[2]
        )
        .parse()
        .expect("members"),
        coordinator_urls: ports[..2].iter().map(|p| format!("http://127.0.0.1:{p}")).collect(),
        cluster_secret: random_token().expect("secret"),
        admin_token: random_token().expect("token"),
        client_token: None,
        data_root: String::new(),
        coordinator_extra: Vec::new(),
    };
    // Each "instance" keeps its data under its own root.
    let setup = |id: u64, initialize: bool| {
        let root = &roots[id as usize - 1];
        let cluster = ClusterSetup { data_root: format!("{}/var/lib/tandem", root.display()), ..base.clone() };
        cluster.voter(id, initialize, None).expect("a voter's setup")
    };
    let target = |id: u64| InstallTarget::local(&roots[id as usize - 1].display().to_string());
    let run = |ssh: deploy::ssh::Ssh, id: u64, initialize: bool, bins: PathBuf| {
        let (setup, target) = (setup(id, initialize), target(id));
        tokio::task::spawn_blocking(move || install(&ssh, &setup, &target, &bins))
    };

    step("1. the first up: every voter installed and started, coordinator 1 initializing");
    for id in [3, 2, 1] {
        let installed = run(ssh.clone(), id, id == 1, bins.clone()).await.expect("join").expect("install");
        assert!(installed, "voter {id} installed");
    }
    let client = ApiClient::new(base.coordinator_urls[0].clone());
    wait_for("a leader with the witness's worker registered", Duration::from_secs(60), || async {
        let view = client.cluster().await.ok()?;
        (view.leader.is_some() && view.workers.iter().any(|w| w.witness)).then_some(())
    })
    .await;
    // Once formed, coordinator 1's environment loses TANDEM_INITIALIZE (it stays running).
    let (settled, one) = (setup(1, false), target(1));
    let settle_ssh = ssh.clone();
    tokio::task::spawn_blocking(move || write_environment(&settle_ssh, &settled, &one))
        .await
        .expect("join")
        .expect("environment rewritten");

    step("2. what landed on the instances");
    for id in 1..=3u64 {
        let root = &roots[id as usize - 1];
        let (name, binaries): (&str, &[&str]) =
            if id == 3 { ("worker", &["worker"]) } else { ("coordinator", &["coordinator", "worker"]) };
        let env = root.join(format!("etc/tandem/{name}.env"));
        assert_eq!(mode(&env), 0o600, "{}", env.display());
        assert_eq!(mode(&root.join("etc/tandem")), 0o700);
        assert_eq!(std::fs::read_to_string(&env).expect("env"), setup(id, false).env_file());
        for binary in binaries {
            let installed = root.join(format!("opt/tandem/bin/{binary}"));
            assert_eq!(mode(&installed), 0o755);
            assert_eq!(std::fs::read(&installed).expect("installed"), std::fs::read(bins.join(binary)).expect("local"));
        }
    }
    let staged: Vec<_> = std::fs::read_dir("/tmp")
        .expect("/tmp")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("tandem-upload."))
        .filter(|e| std::fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_some()))
        .collect();
    assert!(staged.is_empty(), "uploads left behind: {staged:?}");
    assert!(!sshd.log().contains(&base.cluster_secret), "the cluster secret in sshd's log");

    step("3. the cluster computes: a reference vector through coordinator 2");
    let case = vectors().into_iter().find(|c| c.iterations >= 1_000).expect("a vector");
    let second = ApiClient::new(base.coordinator_urls[1].clone());
    let id = second.enqueue(body(&case), case.iterations, None).await.expect("enqueue");
    let results = wait_for_results(&second, &[id].into(), Duration::from_secs(60)).await;
    assert_eq!(results[&id], case.result_hex);

    step("4. up again: nothing changes, nothing restarts");
    let pids =
        |root: &Path, name: &str| std::fs::read_to_string(root.join(format!("run/{name}.pid"))).unwrap_or_default();
    let before: Vec<String> = (0..3).map(|i| pids(&roots[i], if i == 2 { "worker" } else { "coordinator" })).collect();
    for id in [3, 2, 1] {
        let installed = run(ssh.clone(), id, false, bins.clone()).await.expect("join").expect("install");
        assert!(!installed, "voter {id} reinstalled though nothing changed");
    }
    let after: Vec<String> = (0..3).map(|i| pids(&roots[i], if i == 2 { "worker" } else { "coordinator" })).collect();
    assert_eq!(before, after, "a voter restarted");

    step("5. a new worker binary: installed and restarted, voter by voter; the job survives");
    let newer = dir.path().join("newer-bin");
    std::fs::create_dir_all(&newer).expect("dir");
    for binary in ["coordinator", "worker"] {
        std::fs::copy(bins.join(binary), newer.join(binary)).expect("copy");
    }
    // The same program with one more byte at its end: a different SHA-256, still runnable.
    let mut worker = std::fs::read(newer.join("worker")).expect("read");
    worker.push(0);
    std::fs::write(newer.join("worker"), &worker).expect("write");
    let witness_worker = |view: &wire::api::ClusterView| view.workers.iter().find(|w| w.witness).map(|w| w.id);
    let old_witness = witness_worker(&client.cluster().await.expect("/cluster")).expect("the witness's worker");
    for id in [3, 2, 1] {
        let installed = run(ssh.clone(), id, false, newer.clone()).await.expect("join").expect("install");
        assert!(installed, "voter {id} not upgraded");
        if id == 3 {
            wait_for("the restarted witness's worker registered anew", Duration::from_secs(60), || async {
                let view = client.cluster().await.ok()?;
                view.workers.iter().any(|w| w.witness && w.id != old_witness).then_some(())
            })
            .await;
        }
    }
    wait_for("a leader again", Duration::from_secs(60), || async { client.cluster().await.ok()?.leader.map(|_| ()) })
        .await;
    assert_eq!(std::fs::read(roots[2].join("opt/tandem/bin/worker")).expect("installed"), worker);
    let job = client.job(id).await.expect("the job after the upgrade");
    assert_eq!(job.result.as_deref(), Some(case.result_hex.as_str()));
    drop(started);
}
