//! What a voter's host runs, and the script that installs it there: the binaries uploaded
//! beside it, a root-only environment file (the secrets among it) and the start of its service.
//!
//! `deploy aws up` renders one [`VoterSetup`] per voter from the instances' private addresses
//! and pipes [`VoterSetup::install_script`] into `sudo bash -s` over SSH ([`crate::ssh`]): the
//! secrets travel on the SSH connection's standard input, never in user-data or on a command line.
//! The script is rendered for an [`InstallTarget`]: an instance (systemd, the paths of the
//! instance's prepare script), or, in tests, a directory of this machine reached through a real
//! sshd on 127.0.0.1, where the process starts detached instead of under systemd.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use wire::members::{Members, Role};

/// Where the install script runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallTarget {
    /// Prefixed to every path the script writes (empty on an instance).
    pub root: String,
    /// Start the service with systemd (an instance), or as a detached process whose id is kept in
    /// `<root>/run/<binary>.pid` (a test).
    pub under_systemd: bool,
    /// Run the install as root through `sudo -n` (an instance, where the SSH user is not root).
    pub sudo: bool,
}

impl InstallTarget {
    /// An EC2 instance prepared by `deploy aws`'s user-data.
    pub fn instance() -> InstallTarget {
        InstallTarget { root: String::new(), under_systemd: true, sudo: true }
    }

    /// A directory of this machine standing for an instance.
    pub fn local(root: &str) -> InstallTarget {
        InstallTarget { root: root.to_owned(), under_systemd: false, sudo: false }
    }
}

/// One voter's process and its environment.
#[derive(Clone, PartialEq, Eq)]
pub struct VoterSetup {
    /// Its voter id.
    pub id: u64,
    /// A coordinator, or the witness's worker.
    pub role: Role,
    /// `TANDEM_*` variables, in order.
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for VoterSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("VoterSetup").field("id", &self.id).field("role", &self.role).field("env", &names).finish()
    }
}

/// What every voter of a cluster shares.
#[derive(Clone)]
pub struct ClusterSetup {
    /// The voters at their private addresses (`ID=ROLE@HOST:PORT`).
    pub members: Members,
    /// The coordinators' client API URLs on the private network.
    pub coordinator_urls: Vec<String>,
    /// The cluster secret.
    pub cluster_secret: String,
    /// The operators' admin token.
    pub admin_token: String,
    /// The client API's bearer token, if the API requires one.
    pub client_token: Option<String>,
    /// Where the data directories go (`/var/lib/tandem` on an instance).
    pub data_root: String,
    /// More variables for the coordinators (the autoscaler's provider settings).
    pub coordinator_extra: Vec<(String, String)>,
}

/// The name of the binary, the systemd unit and the environment file of a voter of `role`.
pub fn service_of(role: Role) -> (&'static str, &'static str) {
    match role {
        Role::Coordinator => ("coordinator", "tandem-coordinator"),
        Role::Witness => ("worker", "tandem-worker"),
    }
}

impl ClusterSetup {
    /// Voter `id`'s setup: listening on every address at the port its member entry names;
    /// `initialize` for the one coordinator that forms the cluster, on the first `up` only;
    /// `instance` is the instance id and launch token a witness's worker registers with.
    pub fn voter(&self, id: u64, initialize: bool, instance: Option<(&str, &str)>) -> anyhow::Result<VoterSetup> {
        let member = self.members.get(id).ok_or_else(|| anyhow::anyhow!("voter {id} is not a member"))?;
        let port = member
            .addr
            .rsplit_once(':')
            .map(|(_, port)| port.to_owned())
            .ok_or_else(|| anyhow::anyhow!("voter {id}'s address {} has no port", member.addr))?;
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |name: &str, value: &str| env.push((name.to_owned(), value.to_owned()));
        set("TANDEM_LOG_FORMAT", "json");
        set("TANDEM_CLUSTER_SECRET", &self.cluster_secret);
        match member.role {
            Role::Coordinator => {
                set("TANDEM_ID", &id.to_string());
                set("TANDEM_LISTEN", &format!("0.0.0.0:{port}"));
                set("TANDEM_MEMBERS", &self.members.to_string());
                set("TANDEM_DATA_DIR", &format!("{}/coordinator", self.data_root));
                set("TANDEM_ADMIN_TOKEN", &self.admin_token);
                if let Some(token) = &self.client_token {
                    set("TANDEM_CLIENT_TOKEN", token);
                }
                if initialize {
                    set("TANDEM_INITIALIZE", "true");
                }
                for (name, value) in &self.coordinator_extra {
                    set(name, value);
                }
            }
            Role::Witness => {
                set("TANDEM_COORDINATORS", &self.coordinator_urls.join(","));
                set("TANDEM_WITNESS", "true");
                set("TANDEM_WITNESS_ID", &id.to_string());
                set("TANDEM_WITNESS_LISTEN", &format!("0.0.0.0:{port}"));
                set("TANDEM_WITNESS_DATA_DIR", &format!("{}/witness", self.data_root));
                if let Some((instance_id, launch_token)) = instance {
                    set("TANDEM_INSTANCE_ID", instance_id);
                    set("TANDEM_LAUNCH_TOKEN", launch_token);
                }
            }
        }
        for (name, value) in &env {
            check_value(name, value)?;
        }
        Ok(VoterSetup { id, role: member.role, env })
    }
}

/// Refuse a value a systemd environment file or the script's here-document could not hold as it
/// is.
fn check_value(name: &str, value: &str) -> anyhow::Result<()> {
    let allowed = |c: char| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\' | '$' | '`');
    if value.is_empty() || !value.chars().all(allowed) {
        anyhow::bail!("{name} must be printable ASCII without quotes, backslashes, dollars or backquotes");
    }
    Ok(())
}

impl VoterSetup {
    /// The binaries its host needs: a coordinator serves the worker binary to the instances it
    /// launches.
    pub fn binaries(&self) -> &'static [&'static str] {
        match self.role {
            Role::Coordinator => &["coordinator", "worker"],
            Role::Witness => &["worker"],
        }
    }

    /// The environment file's text.
    pub fn env_file(&self) -> String {
        self.env.iter().fold(String::new(), |mut out, (name, value)| {
            let _ = writeln!(out, "{name}={value}");
            out
        })
    }

    /// The script that installs the binaries uploaded to `staging` (`coordinator` and `worker`
    /// for a coordinator, which serves the worker binary to the instances it launches; `worker`
    /// for the witness), writes the environment file (mode 0600) and (re)starts the service.
    /// Run as root; holds the secrets, so it travels on standard input only. Without `restart`
    /// the running service keeps going and picks the new files up at its next start.
    pub fn install_script(&self, target: &InstallTarget, staging: &str, restart: bool) -> String {
        let root = &target.root;
        let (binary, unit) = service_of(self.role);
        let mut install = String::new();
        for name in self.binaries() {
            let _ = writeln!(
                install,
                "if [ -f {staging}/{name} ]; then\n  install -m 0755 {staging}/{name} {root}/opt/tandem/bin/{name}.new\n  mv {root}/opt/tandem/bin/{name}.new {root}/opt/tandem/bin/{name}\nfi"
            );
        }
        let env_file = format!("{root}/etc/tandem/{binary}.env");
        let start = if !restart {
            String::new()
        } else if target.under_systemd {
            format!("systemctl daemon-reload\nsystemctl enable {unit}.service\nsystemctl restart {unit}.service\n")
        } else {
            format!(
                "# Not an instance: the process runs detached, its id kept for the next start.\n\
                 install -d -m 0755 {root}/run\n\
                 if [ -f {root}/run/{binary}.pid ]; then\n  \
                 kill \"$(cat {root}/run/{binary}.pid)\" 2>/dev/null || true\n  \
                 for i in $(seq 1 100); do kill -0 \"$(cat {root}/run/{binary}.pid)\" 2>/dev/null || break; sleep 0.1; done\n\
                 fi\n\
                 (set -a; . {env_file}; set +a; exec setsid {root}/opt/tandem/bin/{binary} >>{root}/{binary}.log 2>&1 </dev/null) &\n\
                 echo $! > {root}/run/{binary}.pid\n"
            )
        };
        let env = self.env_file();
        format!(
            r#"#!/bin/bash
# Install Tandem's voter {id} ({binary}): binaries, environment, service. Holds the cluster's
# secrets: it arrives on standard input and is never written to disk but for the 0600 file.
set -euo pipefail
umask 077
install -d -m 0755 {root}/opt/tandem/bin
{install}rm -rf {staging}
install -d -m 0700 {root}/etc/tandem
cat > {env_file}.new <<'TANDEM_ENV'
{env}TANDEM_ENV
chmod 0600 {env_file}.new
mv {env_file}.new {env_file}
{start}"#,
            id = self.id,
        )
    }

    /// A script printing the SHA-256 of what is installed (binaries and environment file), one
    /// `sha256sum` line each, for `up` to tell what changed; missing files print nothing.
    pub fn installed_script(&self, target: &InstallTarget) -> String {
        let root = &target.root;
        let (binary, _) = service_of(self.role);
        format!(
            "cd {root}/ 2>/dev/null && sha256sum opt/tandem/bin/coordinator opt/tandem/bin/worker etc/tandem/{binary}.env 2>/dev/null || true\n"
        )
    }
}

/// Install `setup` on the host `ssh` reaches, from the binaries in `bin_dir`, unless what is
/// installed there is already exactly that (same binaries, same environment): whether anything
/// was installed (and the service restarted).
pub fn install(
    ssh: &crate::ssh::Ssh,
    setup: &VoterSetup,
    target: &InstallTarget,
    bin_dir: &Path,
) -> anyhow::Result<bool> {
    let shell = if target.sudo { "sudo -n bash -s" } else { "bash -s" };
    let installed = ssh.run(shell, setup.installed_script(target).as_bytes())?;
    let installed: BTreeMap<&str, &str> =
        installed.lines().filter_map(|line| line.split_once("  ")).map(|(sha, path)| (path, sha)).collect();
    let (binary, _) = service_of(setup.role);
    let mut changed = Vec::new();
    for name in setup.binaries() {
        let local = bin_dir.join(name);
        let bytes = std::fs::read(&local).with_context(|| format!("reading {}", local.display()))?;
        if installed.get(format!("opt/tandem/bin/{name}").as_str()) != Some(&wire::sha256_hex(&bytes).as_str()) {
            changed.push(local);
        }
    }
    let env_path = format!("etc/tandem/{binary}.env");
    let env_same = installed.get(env_path.as_str()) == Some(&wire::sha256_hex(setup.env_file().as_bytes()).as_str());
    if changed.is_empty() && env_same {
        return Ok(false);
    }
    let staging = ssh.run("mktemp -d /tmp/tandem-upload.XXXXXXXX", b"")?.trim().to_owned();
    if !staging.starts_with("/tmp/tandem-upload.") || staging.contains(char::is_whitespace) {
        anyhow::bail!("unexpected staging directory {staging:?} on {}", ssh.host);
    }
    for local in &changed {
        let name = local.file_name().and_then(|n| n.to_str()).expect("a binary's name");
        let remote = format!("{staging}/{name}");
        ssh.upload(local, &remote)?;
        // Before anything is installed: the binary runs there (a build against a newer C
        // library than the AMI's fails here, naming the missing symbol version).
        ssh.run(&format!("chmod 0755 {remote} && {remote} --version"), b"").with_context(|| {
            format!(
                "{name} does not run on {} (built against a newer glibc than the AMI's?); nothing installed",
                ssh.host
            )
        })?;
    }
    ssh.run(shell, setup.install_script(target, &staging, true).as_bytes())?;
    Ok(true)
}

/// Write `setup`'s environment file on the host `ssh` reaches without restarting its service: the
/// service reads it at its next start (`up` drops `TANDEM_INITIALIZE` this way once the cluster
/// has formed, so that a coordinator that lost its disk never forms a second one).
pub fn write_environment(ssh: &crate::ssh::Ssh, setup: &VoterSetup, target: &InstallTarget) -> anyhow::Result<()> {
    let shell = if target.sudo { "sudo -n bash -s" } else { "bash -s" };
    ssh.run(shell, setup.install_script(target, "/tmp/tandem-upload.none", false).as_bytes()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterSetup {
        ClusterSetup {
            members: "1=coordinator@10.0.0.1:8080,2=coordinator@10.0.0.2:8080,3=witness@10.0.0.3:8090"
                .parse()
                .expect("members"),
            coordinator_urls: vec!["http://10.0.0.1:8080".into(), "http://10.0.0.2:8080".into()],
            cluster_secret: "c0ffee-cluster-secret".into(),
            admin_token: "admin-token-0123".into(),
            client_token: None,
            data_root: "/var/lib/tandem".into(),
            coordinator_extra: vec![("TANDEM_SCALER".into(), "ec2".into())],
        }
    }

    #[test]
    fn a_coordinators_environment_names_every_member_and_initializes_only_when_told() {
        let first = cluster().voter(1, true, None).expect("voter 1");
        let env = first.env_file();
        for line in [
            "TANDEM_ID=1\n",
            "TANDEM_LISTEN=0.0.0.0:8080\n",
            "TANDEM_MEMBERS=1=coordinator@10.0.0.1:8080,2=coordinator@10.0.0.2:8080,3=witness@10.0.0.3:8090\n",
            "TANDEM_DATA_DIR=/var/lib/tandem/coordinator\n",
            "TANDEM_CLUSTER_SECRET=c0ffee-cluster-secret\n",
            "TANDEM_ADMIN_TOKEN=admin-token-0123\n",
            "TANDEM_INITIALIZE=true\n",
            "TANDEM_SCALER=ec2\n",
        ] {
            assert!(env.contains(line), "{line:?} in\n{env}");
        }
        let again = cluster().voter(1, false, None).expect("voter 1").env_file();
        assert!(!again.contains("TANDEM_INITIALIZE") && !again.contains("TANDEM_CLIENT_TOKEN"));
        let guarded = ClusterSetup { client_token: Some("client-token-42".into()), ..cluster() };
        assert!(
            guarded
                .voter(2, false, None)
                .expect("voter 2")
                .env_file()
                .contains("\nTANDEM_CLIENT_TOKEN=client-token-42\n")
        );
        assert!(
            !guarded.voter(3, false, None).expect("voter 3").env_file().contains("CLIENT_TOKEN"),
            "the witness serves no client API"
        );
        let second = cluster().voter(2, false, None).expect("voter 2").env_file();
        assert!(second.contains("TANDEM_ID=2\n") && !second.contains("TANDEM_INITIALIZE"));
    }

    #[test]
    fn the_witness_environment_runs_the_voter_and_names_its_instance() {
        let witness = cluster().voter(3, false, Some(("i-0abc", "tandem-w-3"))).expect("voter 3");
        assert_eq!(witness.role, Role::Witness);
        assert_eq!(
            witness.env_file(),
            "TANDEM_LOG_FORMAT=json\nTANDEM_CLUSTER_SECRET=c0ffee-cluster-secret\n\
             TANDEM_COORDINATORS=http://10.0.0.1:8080,http://10.0.0.2:8080\nTANDEM_WITNESS=true\n\
             TANDEM_WITNESS_ID=3\nTANDEM_WITNESS_LISTEN=0.0.0.0:8090\nTANDEM_WITNESS_DATA_DIR=/var/lib/tandem/witness\n\
             TANDEM_INSTANCE_ID=i-0abc\nTANDEM_LAUNCH_TOKEN=tandem-w-3\n"
        );
    }

    #[test]
    fn a_value_the_file_cannot_hold_is_refused() {
        let mut setup = cluster();
        setup.admin_token = "has space".into();
        assert!(setup.voter(1, false, None).is_err());
        setup.admin_token = "has$dollar".into();
        assert!(setup.voter(1, false, None).is_err());
        assert!(cluster().voter(9, false, None).is_err(), "not a member");
    }

    #[test]
    fn the_install_script_writes_a_private_environment_and_restarts_the_unit() {
        let setup = cluster().voter(1, false, None).expect("voter 1");
        let script = setup.install_script(&InstallTarget::instance(), "/tmp/tandem-upload.x", true);
        assert!(script.contains("install -m 0755 /tmp/tandem-upload.x/coordinator /opt/tandem/bin/coordinator.new"));
        assert!(script.contains("install -m 0755 /tmp/tandem-upload.x/worker /opt/tandem/bin/worker.new"));
        assert!(script.contains("cat > /etc/tandem/coordinator.env.new <<'TANDEM_ENV'\n"));
        assert!(script.contains("chmod 0600 /etc/tandem/coordinator.env.new\n"));
        assert!(script.ends_with("systemctl restart tandem-coordinator.service\n"));
        assert_eq!(script.matches("c0ffee-cluster-secret").count(), 1, "the secret once, in the file's body");
        let witness = cluster().voter(3, false, None).expect("voter 3");
        let script = witness.install_script(&InstallTarget::instance(), "/tmp/u", true);
        assert!(!script.contains("/tmp/u/coordinator"));
        assert!(script.ends_with("systemctl restart tandem-worker.service\n"));
        let quiet = witness.install_script(&InstallTarget::instance(), "/tmp/u", false);
        assert!(
            !quiet.contains("systemctl") && quiet.ends_with("mv /etc/tandem/worker.env.new /etc/tandem/worker.env\n")
        );
    }
}
