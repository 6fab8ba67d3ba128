//! A real OpenSSH server on a free port of 127.0.0.1, for this machine's own user, accepting one
//! key the harness generates; killed on drop. `scripts/test` installs Debian's openssh-server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// sshd, running.
pub struct Sshd {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The user it lets in (this process's).
    pub user: String,
    /// The private key it accepts.
    pub key: PathBuf,
    /// Where the harness keeps its files (host key, configuration, log).
    pub dir: TempDir,
}

/// `TANDEM_SSHD`, or Debian's `/usr/sbin/sshd`.
fn find_sshd() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TANDEM_SSHD").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let debian = PathBuf::from("/usr/sbin/sshd");
    debian.is_file().then_some(debian)
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "tandem-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(status.success(), "ssh-keygen failed");
}

impl Sshd {
    /// Start sshd, or `None` where it is not installed and not required (`CI` or
    /// `TANDEM_REQUIRE_SSHD` make that a failure).
    pub fn start(test_name: &str) -> Option<Sshd> {
        let Some(sshd) = find_sshd() else {
            let required =
                ["CI", "TANDEM_REQUIRE_SSHD"].iter().any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
            assert!(!required, "sshd not found: install openssh-server (scripts/test does) or set TANDEM_SSHD");
            eprintln!("{test_name}: SKIPPED, no sshd (install openssh-server or set TANDEM_SSHD)");
            return None;
        };
        let dir = TempDir::new().expect("temp dir");
        let host_key = dir.path().join("host_key");
        let key = dir.path().join("client_key");
        keygen(&host_key);
        keygen(&key);
        std::fs::copy(key.with_extension("pub"), dir.path().join("authorized_keys")).expect("authorized_keys");
        let user = String::from_utf8(Command::new("id").arg("-un").output().expect("id -un").stdout)
            .expect("a user name")
            .trim()
            .to_owned();
        // As root, sshd wants its privilege separation directory.
        if Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n")) {
            std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        }
        let port = deploy::local::free_port().expect("a free port");
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {dir}/sshd.pid\n\
                 AuthorizedKeysFile {dir}/authorized_keys\nAllowUsers {user}\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 PermitRootLogin prohibit-password\n",
                host_key = host_key.display(),
                dir = dir.path().display(),
            ),
        )
        .expect("sshd_config");
        let log = std::fs::File::create(dir.path().join("sshd.log")).expect("log");
        let child = Command::new(&sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", sshd.display()));
        let mut sshd = Sshd { child, port, user, key, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sshd.child.try_wait() {
                panic!("sshd exited ({status}):\n{}", sshd.log());
            }
            assert!(Instant::now() < deadline, "sshd not listening within 10 s:\n{}", sshd.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(sshd)
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// A client of it, keeping known hosts in `known_hosts`.
    pub fn client(&self, known_hosts: &Path) -> deploy::ssh::Ssh {
        deploy::ssh::Ssh {
            host: "127.0.0.1".into(),
            port: self.port,
            user: self.user.clone(),
            key: self.key.clone(),
            known_hosts: known_hosts.to_owned(),
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- sshd log:\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
