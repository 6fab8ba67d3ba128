//! A host reached with the operator's OpenSSH client (`ssh`), with the key pair and the
//! known-hosts file `deploy aws` keeps in its state directory: run a command with bytes on its
//! standard input, upload a file by streaming it into one. Secrets only ever travel on standard
//! input: nothing secret is on `ssh`'s command line or the remote one.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// One host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ssh {
    /// Its address.
    pub host: String,
    /// Its SSH port.
    pub port: u16,
    /// The user to log in as (`ec2-user` on Amazon Linux).
    pub user: String,
    /// The private key (mode 0600).
    pub key: PathBuf,
    /// The known-hosts file: a host's key is accepted the first time and must match after.
    pub known_hosts: PathBuf,
}

/// How long one connection attempt may take.
const CONNECT_TIMEOUT_S: u32 = 10;

impl Ssh {
    fn command(&self, remote: &str) -> Command {
        let mut ssh = Command::new("ssh");
        ssh.arg("-i")
            .arg(&self.key)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", &format!("ConnectTimeout={CONNECT_TIMEOUT_S}"), "-o", "LogLevel=ERROR"])
            .arg(format!("{}@{}", self.user, self.host))
            .arg("--")
            .arg(remote);
        ssh
    }

    /// Run `remote` (a shell command line, holding nothing secret) with `stdin` on its standard
    /// input; its standard output, or an error with the end of its standard error.
    pub fn run(&self, remote: &str, stdin: &[u8]) -> anyhow::Result<String> {
        let mut child = self
            .command(remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ssh (is OpenSSH's client installed?)")?;
        let mut input = child.stdin.take().expect("piped");
        let bytes = stdin.to_vec();
        let writer = std::thread::spawn(move || input.write_all(&bytes));
        let output = child.wait_with_output().context("waiting for ssh")?;
        // A command that exits without reading all of its input breaks the pipe: its status says
        // what happened.
        let _ = writer.join();
        self.outcome(remote, output)
    }

    /// Stream the local file `local` into `remote_path` on the host (written to a `.part` file,
    /// then renamed).
    pub fn upload(&self, local: &Path, remote_path: &str) -> anyhow::Result<()> {
        let file = std::fs::File::open(local).with_context(|| format!("opening {}", local.display()))?;
        let remote = format!("cat > {remote_path}.part && mv {remote_path}.part {remote_path}");
        let output = self
            .command(&remote)
            .stdin(Stdio::from(file))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .context("running ssh")?;
        self.outcome(&remote, output).map(drop).with_context(|| format!("uploading {}", local.display()))
    }

    /// Wait until the host answers over SSH (an instance's sshd starts a while after it runs).
    pub fn wait_reachable(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.run("true", b"") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("{} not reachable over SSH within {timeout:?}", self.host)));
                }
                Err(_) => std::thread::sleep(Duration::from_secs(2)),
            }
        }
    }

    fn outcome(&self, remote: &str, output: std::process::Output) -> anyhow::Result<String> {
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("`{remote}` on {}@{} failed ({}): {}", self.user, self.host, output.status, tail.join("\n"))
    }
}
