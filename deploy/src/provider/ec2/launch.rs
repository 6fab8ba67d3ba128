//! What a worker launch is: the tags, the user-data script and the instance options of one EC2
//! worker, written once for the leader's provider and for `deploy aws`.
//!
//! Pure: [`WorkerLaunch::request`] turns the cluster's settings and a launch token into a
//! [`LaunchRequest`], checked and rendered, that a client turns into `RunInstances`;
//! [`WorkerLaunch::request_witness`] does the same for a worker in the witness role, which also
//! runs a Raft voter (the leader launches one to replace a lost witness). Nothing here talks to
//! EC2, so all of it is unit-tested without a network.
//!
//! Every value that reaches the user-data script is checked against a character set that needs
//! no quoting in the shell or in a systemd environment file, and the rendered script is refused
//! if it holds anything that looks like an AWS access key: user-data is readable by anyone who
//! can call `DescribeInstanceAttribute`, and by every process on the instance through the
//! metadata service. For the same reason the cluster secret never travels in it: the script
//! holds the launch's one-time join secret (the leader committed only its SHA-256), which lands
//! in a root-only file on the instance and which the worker exchanges once, at start, for the
//! cluster secret (`/worker/join`). A rendered script that holds the cluster secret is refused.

use super::super::{ProviderError, ProviderErrorKind};

/// The tag naming the cluster an instance belongs to.
pub const CLUSTER_TAG: &str = "tandem:cluster";
/// The tag naming what an instance is in its cluster ([`WORKER_ROLE`] for the workers this
/// launches).
pub const ROLE_TAG: &str = "tandem:role";
/// The tag holding the autoscaler's launch token, by which a new leader finds a launch its
/// predecessor made.
pub const LAUNCH_TOKEN_TAG: &str = "tandem:launch-token";
/// The [`ROLE_TAG`] value of a worker.
pub const WORKER_ROLE: &str = "worker";
/// The tag holding the Raft node id of the voter a worker in the witness role runs. A witness
/// keeps [`ROLE_TAG`]` = `[`WORKER_ROLE`]: it is this cluster's worker, which the provider lists,
/// and terminates when its replacement of the old witness fails.
pub const VOTER_ID_TAG: &str = "tandem:voter-id";
/// The port a witness's Raft routes listen on, unless configured otherwise: the one the
/// coordinators' default `--member` gives the witness.
pub const DEFAULT_WITNESS_PORT: u16 = 8090;
/// Where the worker binary is on the AMI, unless configured otherwise.
pub const DEFAULT_WORKER_BINARY: &str = "/opt/tandem/bin/worker";
/// The longest launch token EC2 takes as a `ClientToken`.
pub const MAX_TOKEN_LEN: usize = 64;

/// Where the instance holds the worker's environment, the join secret among it: root only.
const ENV_FILE: &str = "/etc/tandem/worker.env";
/// The witness's data directory: under `/var/lib/tandem`, the unit's `StateDirectory`, the one
/// place the service's dynamic user may write.
const WITNESS_DATA_DIR: &str = "/var/lib/tandem/witness";
/// Where a downloaded worker binary is installed.
const DOWNLOADED_BINARY: &str = "/opt/tandem/bin/worker";
/// The variable of the worker's environment file holding its join secret (the worker's
/// `TANDEM_JOIN_TOKEN`).
pub const JOIN_TOKEN_ENV: &str = "TANDEM_JOIN_TOKEN";
/// The shortest join secret a launch takes: the leader's are 32 hex digits or more.
const MIN_JOIN_SECRET_LEN: usize = 16;
/// A configured secret access key shorter than this is a test dummy (real ones are 40
/// characters), and looking for it would refuse innocent scripts.
const MIN_SECRET_KEY_LEN: usize = 16;

/// Where the worker binary comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerBinary {
    /// An absolute path on the AMI.
    Path(String),
    /// Downloaded at boot from an `http://` or `https://` URL, and run only if its SHA-256 (lower-case
    /// hex) is `sha256`.
    Url { url: String, sha256: String },
    /// Downloaded at boot from the coordinators (`GET /worker/binary` of each in turn, with the
    /// launch's join secret), and run only if its SHA-256 is `sha256`: the binary each coordinator
    /// serves from its `--worker-binary-file`.
    Coordinators { sha256: String },
}

/// The `--ec2-worker-binary` value that means "from the coordinators".
pub const FROM_COORDINATORS: &str = "coordinators";

impl WorkerBinary {
    /// The binary `value` names: [`FROM_COORDINATORS`], an `http(s)://` URL, or a path on the AMI.
    /// A download needs its SHA-256: `sha256` for a URL, `served_sha256` (what this
    /// coordinator serves) from the coordinators.
    pub fn from_flags(
        value: &str,
        sha256: Option<&str>,
        served_sha256: Option<&str>,
    ) -> Result<WorkerBinary, ProviderError> {
        if value == FROM_COORDINATORS {
            let sha256 = served_sha256.ok_or_else(|| {
                configuration(
                    "--ec2-worker-binary coordinators needs the coordinator to serve one (--worker-binary-file)",
                )
            })?;
            return Ok(WorkerBinary::Coordinators { sha256: sha256.to_owned() });
        }
        if value.starts_with("http://") || value.starts_with("https://") {
            let sha256 = sha256.ok_or_else(|| {
                configuration(
                    "a worker binary downloaded from a URL needs its SHA-256 (--ec2-worker-binary-sha256): \
                     the instance runs nothing else",
                )
            })?;
            return Ok(WorkerBinary::Url { url: value.to_owned(), sha256: sha256.to_owned() });
        }
        Ok(WorkerBinary::Path(value.to_owned()))
    }
}

/// Where a rendered user-data script runs: an EC2 instance ([`BootTarget::instance`]), or, to
/// test the script for real, a directory of this machine standing for one
/// ([`BootTarget::local`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootTarget {
    /// Prefixed to every path the script writes (empty on an instance).
    pub root: String,
    /// The instance metadata service's base URL.
    pub metadata_url: String,
    /// Install the worker as a systemd service and start it (an instance), or run it in the
    /// foreground with its environment file's variables (a test).
    pub under_systemd: bool,
}

impl BootTarget {
    /// An EC2 instance.
    pub fn instance() -> BootTarget {
        BootTarget { root: String::new(), metadata_url: "http://169.254.169.254/latest".into(), under_systemd: true }
    }

    /// A directory of this machine standing for an instance: the script writes under `root`,
    /// asks `metadata_url` for the instance id, and at its end runs the worker in the foreground.
    pub fn local(root: &str, metadata_url: &str) -> BootTarget {
        BootTarget { root: root.to_owned(), metadata_url: metadata_url.to_owned(), under_systemd: false }
    }
}

/// The IAM instance profile a worker runs with, by name or by ARN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceProfile {
    /// The profile's name.
    Name(String),
    /// The profile's ARN.
    Arn(String),
}

impl InstanceProfile {
    /// An ARN if `value` starts with `arn:`, else a name.
    pub fn parse(value: &str) -> Self {
        if value.starts_with("arn:") {
            InstanceProfile::Arn(value.to_owned())
        } else {
            InstanceProfile::Name(value.to_owned())
        }
    }
}

/// The instance metadata service settings of a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetadataOptions {
    /// IMDSv2 only (`HttpTokens=required`): a request forwarded by a confused process cannot
    /// read the metadata without a session token.
    pub tokens_required: bool,
    /// The service answers at all (`HttpEndpoint=enabled`): the user-data script reads the
    /// instance id from it.
    pub endpoint_enabled: bool,
}

/// Every worker's metadata options.
pub const WORKER_METADATA: MetadataOptions = MetadataOptions { tokens_required: true, endpoint_enabled: true };

/// The cluster's settings for its workers: everything a launch needs but the token.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkerLaunch {
    /// The cluster's name, in every instance's [`CLUSTER_TAG`].
    pub cluster_name: String,
    /// The AMI.
    pub image_id: String,
    /// The instance type (`c7i.large`).
    pub instance_type: String,
    /// The subnet (unset: the default VPC's default subnet in some zone).
    pub subnet_id: Option<String>,
    /// Security groups (empty: the VPC's default group).
    pub security_group_ids: Vec<String>,
    /// The instance profile (unset: none; the worker itself calls no AWS API).
    pub instance_profile: Option<InstanceProfile>,
    /// The coordinators' base URLs, as the workers reach them.
    pub coordinators: Vec<String>,
    /// Where the worker binary comes from.
    pub worker_binary: WorkerBinary,
    /// A worker that reaches no coordinator for this long exits. An instance lives as long as its
    /// worker (it powers off when the worker exits, and so terminates): one orphaned with its
    /// cluster costs minutes, not days.
    pub give_up_after_ms: u64,
    /// The port a witness's Raft routes listen on (on every address of its instance); the
    /// coordinators reach it at the instance's private IPv4.
    pub witness_port: u16,
    /// The cluster secret, never rendered: a script that would hold it is refused. Whether
    /// there is one decides between a join secret and the insecure flag in the script.
    pub cluster_secret: Option<String>,
    /// The secret access key of the credentials this process runs with, if it knows it: a
    /// script holding it is refused.
    pub aws_secret_access_key: Option<String>,
}

impl std::fmt::Debug for WorkerLaunch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLaunch")
            .field("cluster_name", &self.cluster_name)
            .field("image_id", &self.image_id)
            .field("instance_type", &self.instance_type)
            .field("subnet_id", &self.subnet_id)
            .field("security_group_ids", &self.security_group_ids)
            .field("instance_profile", &self.instance_profile)
            .field("coordinators", &self.coordinators)
            .field("worker_binary", &self.worker_binary)
            .field("give_up_after_ms", &self.give_up_after_ms)
            .field("witness_port", &self.witness_port)
            .field("cluster_secret", &self.cluster_secret.as_ref().map(|_| "<redacted>"))
            .field("aws_secret_access_key", &self.aws_secret_access_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One worker launch, ready for `RunInstances`.
#[derive(Clone, PartialEq, Eq)]
pub struct LaunchRequest {
    /// The launch token, as `ClientToken`: EC2 answers a retried request with the instance the
    /// first one started.
    pub client_token: String,
    /// The AMI.
    pub image_id: String,
    /// The instance type.
    pub instance_type: String,
    /// The subnet, if configured.
    pub subnet_id: Option<String>,
    /// The security groups, if any.
    pub security_group_ids: Vec<String>,
    /// The instance profile, if any.
    pub instance_profile: Option<InstanceProfile>,
    /// The user-data script, in plain text ([`LaunchRequest::user_data_base64`] for the API).
    pub user_data: String,
    /// The instance's tags, set at launch (`TagSpecifications`), never after: a crash between a
    /// launch and a later tagging would leave an instance nobody finds.
    pub tags: Vec<(String, String)>,
    /// The metadata service settings.
    pub metadata: MetadataOptions,
    /// `InstanceInitiatedShutdownBehavior=terminate`: a worker that powers its instance off
    /// ends it.
    pub terminate_on_shutdown: bool,
}

impl std::fmt::Debug for LaunchRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchRequest")
            .field("client_token", &self.client_token)
            .field("image_id", &self.image_id)
            .field("instance_type", &self.instance_type)
            .field("subnet_id", &self.subnet_id)
            .field("security_group_ids", &self.security_group_ids)
            .field("instance_profile", &self.instance_profile)
            .field("user_data", &format_args!("<{} bytes>", self.user_data.len()))
            .field("tags", &self.tags)
            .field("metadata", &self.metadata)
            .field("terminate_on_shutdown", &self.terminate_on_shutdown)
            .finish()
    }
}

impl LaunchRequest {
    /// The user-data, base64-encoded as `RunInstances` takes it.
    pub fn user_data_base64(&self) -> String {
        aws_smithy_types::base64::encode(self.user_data.as_bytes())
    }
}

impl WorkerLaunch {
    /// The launch of one worker under `token`, its worker given `join_secret`: checked, tagged
    /// and rendered. Fails with [`ProviderErrorKind::Configuration`] if a setting, the token or
    /// the join secret cannot be used, or if the script would hold an AWS key or the cluster
    /// secret.
    pub fn request(&self, token: &str, join_secret: &str) -> Result<LaunchRequest, ProviderError> {
        self.build_request(token, None, join_secret)
    }

    /// The launch of one worker in the witness role under `token`: the worker's launch, whose
    /// worker also runs the Raft voter `node_id` on [`WorkerLaunch::witness_port`] of every
    /// address, with an empty data directory, and whose instance is tagged with
    /// [`VOTER_ID_TAG`]. Refused as [`WorkerLaunch::request`] is.
    pub fn request_witness(
        &self,
        token: &str,
        node_id: u64,
        join_secret: &str,
    ) -> Result<LaunchRequest, ProviderError> {
        self.build_request(token, Some(node_id), join_secret)
    }

    /// A worker's launch; with `witness`, in the witness role as voter `witness`.
    fn build_request(
        &self,
        token: &str,
        witness: Option<u64>,
        join_secret: &str,
    ) -> Result<LaunchRequest, ProviderError> {
        let user_data = self.render(&BootTarget::instance(), token, witness, join_secret)?;
        let tags = match witness {
            None => self.tags(token),
            Some(node_id) => self.witness_tags(token, node_id),
        };
        Ok(LaunchRequest {
            client_token: token.to_owned(),
            image_id: self.image_id.clone(),
            instance_type: self.instance_type.clone(),
            subnet_id: self.subnet_id.clone(),
            security_group_ids: self.security_group_ids.clone(),
            instance_profile: self.instance_profile.clone(),
            user_data,
            tags,
            metadata: WORKER_METADATA,
            terminate_on_shutdown: true,
        })
    }

    /// The tags of the worker launched under `token`.
    pub fn tags(&self, token: &str) -> Vec<(String, String)> {
        vec![
            ("Name".to_owned(), format!("tandem-{}-worker", self.cluster_name)),
            (CLUSTER_TAG.to_owned(), self.cluster_name.clone()),
            (ROLE_TAG.to_owned(), WORKER_ROLE.to_owned()),
            (LAUNCH_TOKEN_TAG.to_owned(), token.to_owned()),
        ]
    }

    /// The tags of the worker launched under `token` in the witness role as voter `node_id`: a
    /// worker's, named for a witness, and [`VOTER_ID_TAG`].
    pub fn witness_tags(&self, token: &str, node_id: u64) -> Vec<(String, String)> {
        let mut tags = self.tags(token);
        for (key, value) in &mut tags {
            if key == "Name" {
                *value = format!("tandem-{}-witness", self.cluster_name);
            }
        }
        tags.push((VOTER_ID_TAG.to_owned(), node_id.to_string()));
        tags
    }

    /// Whether `tags` mark an instance as one of this cluster's workers: the only instances
    /// the provider lists or terminates.
    pub fn is_own_worker(&self, tags: &[(String, String)]) -> bool {
        let has = |key: &str, value: &str| tags.iter().any(|(k, v)| k == key && v == value);
        has(CLUSTER_TAG, &self.cluster_name) && has(ROLE_TAG, WORKER_ROLE)
    }

    /// Check every setting that reaches EC2 or the script.
    pub fn validate(&self) -> Result<(), ProviderError> {
        check_chars("the cluster name (--ec2-cluster-name)", &self.cluster_name, 64, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
        })?;
        for (what, value) in
            [("the AMI (--ec2-ami)", &self.image_id), ("the instance type (--ec2-instance-type)", &self.instance_type)]
        {
            check_chars(what, value, 255, is_id_char)?;
        }
        if let Some(subnet) = &self.subnet_id {
            check_chars("the subnet (--ec2-subnet)", subnet, 255, is_id_char)?;
        }
        for group in &self.security_group_ids {
            check_chars("a security group (--ec2-security-group)", group, 255, is_id_char)?;
        }
        if self.coordinators.is_empty() {
            return Err(configuration("the workers need the coordinators' URLs (--ec2-coordinators)"));
        }
        for url in &self.coordinators {
            check_url("a coordinator URL (--ec2-coordinators)", url)?;
        }
        match &self.worker_binary {
            WorkerBinary::Url { url, sha256 } => {
                check_url("the worker binary's URL (--ec2-worker-binary)", url)?;
                check_sha256(sha256)?;
            }
            WorkerBinary::Coordinators { sha256 } => check_sha256(sha256)?,
            WorkerBinary::Path(path) => {
                check_chars("the worker binary's path (--ec2-worker-binary)", path, 1024, is_path_char)?;
                if !path.starts_with('/') {
                    return Err(configuration(format!(
                        "the worker binary's path (--ec2-worker-binary) must be absolute, not {path:?}"
                    )));
                }
            }
        }
        if self.witness_port == 0 {
            return Err(configuration("the witness port (--ec2-witness-port) must not be 0"));
        }
        Ok(())
    }

    /// The user-data script of the worker launched under `token` (with `witness`, in the witness
    /// role as voter `witness`) for `target`: checked, and refused if it would hold an AWS key or
    /// the cluster secret. On an instance it is what [`WorkerLaunch::request`] sends; tests
    /// render it for a directory of this machine and run it.
    pub fn render(
        &self,
        target: &BootTarget,
        token: &str,
        witness: Option<u64>,
        join_secret: &str,
    ) -> Result<String, ProviderError> {
        self.validate()?;
        check_token(token)?;
        check_join_secret(join_secret)?;
        if !target.root.is_empty() {
            check_chars("the boot target's root", &target.root, 1024, is_path_char)?;
        }
        check_url("the metadata service's URL", &target.metadata_url)?;
        let user_data = self.render_user_data(target, token, witness, join_secret);
        refuse_aws_keys(&user_data, self.aws_secret_access_key.as_deref())?;
        refuse_cluster_secret(&user_data, self.cluster_secret.as_deref())?;
        Ok(user_data)
    }

    /// The script of [`WorkerLaunch::render`]. Values are checked before they get here.
    fn render_user_data(&self, target: &BootTarget, token: &str, witness: Option<u64>, join_secret: &str) -> String {
        let root = target.root.as_str();
        let env_file = format!("{root}{ENV_FILE}");
        let cluster = &self.cluster_name;
        let (what, witness_lines, state_directory) = match witness {
            None => ("A Tandem worker".to_owned(), String::new(), ""),
            Some(node_id) => (
                format!("A Tandem worker in the witness role (Raft voter {node_id})"),
                format!(
                    "TANDEM_WITNESS=true\n\
                     TANDEM_WITNESS_ID={node_id}\n\
                     TANDEM_WITNESS_LISTEN=0.0.0.0:{}\n\
                     TANDEM_WITNESS_DATA_DIR={root}{WITNESS_DATA_DIR}\n",
                    self.witness_port
                ),
                // The voter's log and snapshots: systemd creates /var/lib/tandem for the dynamic
                // user, who can write nowhere else.
                "StateDirectory=tandem\n",
            ),
        };
        let coordinators = self.coordinators.join(",");
        // The worker exchanges the join secret for the cluster secret when it starts. A
        // coordinator runs without a secret only when its operator said so
        // (`--insecure-no-cluster-secret`): its workers need the same word to start.
        let secret_line = match &self.cluster_secret {
            Some(_) => format!("{JOIN_TOKEN_ENV}={join_secret}\n"),
            None => format!("{}=true\n", wire::INSECURE_NO_CLUSTER_SECRET_ENV),
        };
        let binary = format!("{root}{DOWNLOADED_BINARY}");
        let (fetch_binary, exec_start) = match &self.worker_binary {
            WorkerBinary::Path(path) => (String::new(), path.clone()),
            WorkerBinary::Url { url, sha256 } => {
                (self.render_download(target, &binary, &format!("'{url}'"), sha256, false), binary.clone())
            }
            WorkerBinary::Coordinators { sha256 } => {
                let urls =
                    self.coordinators.iter().map(|c| format!("'{c}{}'", wire::worker::BINARY)).collect::<Vec<_>>();
                (self.render_download(target, &binary, &urls.join(" "), sha256, true), binary.clone())
            }
        };
        let start = if target.under_systemd {
            "systemctl daemon-reload\nsystemctl enable --now tandem-worker.service\n".to_owned()
        } else {
            format!(
                "# Not an instance: the worker runs here, in the foreground, with that environment.\n\
                 set -a\n. {env_file}\nset +a\nexec {exec_start}\n"
            )
        };
        let give_up_after_ms = self.give_up_after_ms;
        format!(
            r#"#!/bin/bash
# {what} of cluster {cluster}, launched under token {token}.
# Rendered by deploy's WorkerLaunch. Never `set -x`: the one-time join secret is below.
set -euo pipefail
umask 077

# The instance id, from the metadata service (IMDSv2: a session token first).
imds={metadata_url}
imds_token=$(curl -fsS --retry 10 --retry-connrefused -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$imds/api/token")
instance_id=$(curl -fsS --retry 10 --retry-connrefused -H "X-aws-ec2-metadata-token: $imds_token" "$imds/meta-data/instance-id")
case "$instance_id" in
  i-*) ;;
  *) echo "tandem: no instance id from the metadata service" >&2; exit 1 ;;
esac

# The worker's environment, the join secret among it: root only (umask 077, and 0600).
install -d -m 0700 {root}/etc/tandem
cat > {env_file} <<'TANDEM_ENV'
TANDEM_COORDINATORS={coordinators}
TANDEM_LAUNCH_TOKEN={token}
TANDEM_GIVE_UP_AFTER_MS={give_up_after_ms}
TANDEM_LOG_FORMAT=json
{witness_lines}{secret_line}TANDEM_ENV
echo "TANDEM_INSTANCE_ID=$instance_id" >> {env_file}
chmod 0600 {env_file}

{fetch_binary}# systemd reads the environment file as root, then runs the worker as an unprivileged user.
# The instance lives as long as its worker: when the worker exits (its cluster gone, a fault, a
# stop) the instance powers off, the launch's shutdown behaviour terminates it, and the
# autoscaler replaces it if the cluster still needs it.
install -d -m 0755 {root}/etc/systemd/system
cat > {root}/etc/systemd/system/tandem-worker.service <<'TANDEM_UNIT'
[Unit]
Description=Tandem worker ({cluster})
Wants=network-online.target
After=network-online.target
SuccessAction=poweroff
FailureAction=poweroff

[Service]
EnvironmentFile={env_file}
ExecStart={exec_start}
DynamicUser=yes
{state_directory}NoNewPrivileges=yes
Restart=no

[Install]
WantedBy=multi-user.target
TANDEM_UNIT
{start}"#,
            metadata_url = target.metadata_url,
        )
    }
    /// The lines that download the worker binary to `binary` from `urls` (shell words, each
    /// tried in turn, for up to ten minutes), check its SHA-256 and refuse to run anything
    /// else: on an instance, a refusal powers it off, which terminates it. From the
    /// coordinators, the request carries the launch token and the join secret, read from the
    /// environment file and handed to curl on its standard input, never on a command line.
    fn render_download(
        &self,
        target: &BootTarget,
        binary: &str,
        urls: &str,
        sha256: &str,
        from_coordinators: bool,
    ) -> String {
        let env_file = format!("{}{ENV_FILE}", target.root);
        let curl = if from_coordinators && self.cluster_secret.is_some() {
            format!(
                r#"join_secret=$(sed -n 's/^{JOIN_TOKEN_ENV}=//p' {env_file})
  printf 'header = "Authorization: Bearer %s"\n' "$join_secret" | curl --config - "#
            )
        } else {
            "curl ".to_owned()
        };
        let power_off = if target.under_systemd { "\n  systemctl poweroff" } else { "" };
        let sources = urls.replace('\'', "");
        format!(
            r#"# The worker binary: downloaded, and run only if its SHA-256 is {sha256}.
install -d -m 0755 {binary_dir}
launch_token=$(sed -n 's/^TANDEM_LAUNCH_TOKEN=//p' {env_file})
fetch() {{
  {curl}-fsS --connect-timeout 5 --max-time 600 -H "X-Tandem-Launch-Token: $launch_token" -o {binary}.download "$1"
}}
refuse() {{
  rm -f {binary}.download
  echo "tandem: $1: nothing runs" >&2{power_off}
  exit 1
}}
fetched=
for attempt in $(seq 1 120); do
  for url in {urls}; do
    if fetch "$url"; then fetched=$url; break 2; fi
  done
  sleep 5
done
[ -n "$fetched" ] || refuse "no worker binary from {sources}"
echo '{sha256}  {binary}.download' | sha256sum --check --status \
  || refuse "the worker binary from $fetched does not have SHA-256 {sha256}"
chmod 0755 {binary}.download
mv {binary}.download {binary}

"#,
            binary_dir = binary.rsplit_once('/').map_or("/", |(dir, _)| dir),
        )
    }
}

/// Refuse a SHA-256 that is not 64 lower-case hex digits.
fn check_sha256(sha256: &str) -> Result<(), ProviderError> {
    if sha256.len() != 64 || !sha256.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(configuration(format!(
            "the worker binary's SHA-256 (--ec2-worker-binary-sha256) must be 64 lower-case hex digits, not {sha256:?}"
        )));
    }
    Ok(())
}

/// Refuse a token EC2 cannot take as a `ClientToken` or the script cannot hold unquoted.
fn check_token(token: &str) -> Result<(), ProviderError> {
    check_chars("a launch token", token, MAX_TOKEN_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
    })
}

pub use crate::leaks::{find_access_key_id, find_secret_access_key};

/// Refuse a join secret the script cannot hold unquoted, or one too short to be a secret.
fn check_join_secret(join_secret: &str) -> Result<(), ProviderError> {
    if join_secret.len() < MIN_JOIN_SECRET_LEN {
        return Err(configuration(format!("a join secret must have at least {MIN_JOIN_SECRET_LEN} characters")));
    }
    check_chars("a join secret", join_secret, wire::worker::MAX_JOIN_SECRET_BYTES, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_')
    })
}

/// Refuse `user_data` if it holds the cluster secret: the worker gets it from the coordinators
/// in exchange for its join secret, never from its launch data.
pub fn refuse_cluster_secret(user_data: &str, cluster_secret: Option<&str>) -> Result<(), ProviderError> {
    match cluster_secret {
        Some(secret) if !secret.is_empty() && user_data.contains(secret) => {
            Err(configuration("refusing to launch: the user-data holds the cluster secret"))
        }
        _ => Ok(()),
    }
}

/// Refuse `user_data` if it holds an AWS access key id (`AKIA` or `ASIA` and 16 more upper-case
/// letters or digits), what looks like a secret access key ([`find_secret_access_key`]), or
/// `secret_access_key`.
pub fn refuse_aws_keys(user_data: &str, secret_access_key: Option<&str>) -> Result<(), ProviderError> {
    if let Some(at) = find_access_key_id(user_data) {
        let line = user_data[..at].matches('\n').count() + 1;
        return Err(configuration(format!(
            "refusing to launch: the user-data holds what looks like an AWS access key id (line {line})"
        )));
    }
    if let Some(at) = find_secret_access_key(user_data) {
        let line = user_data[..at].matches('\n').count() + 1;
        return Err(configuration(format!(
            "refusing to launch: the user-data holds what looks like an AWS secret access key (line {line})"
        )));
    }
    if let Some(secret) = secret_access_key
        && secret.len() >= MIN_SECRET_KEY_LEN
        && user_data.contains(secret)
    {
        return Err(configuration("refusing to launch: the user-data holds this process's AWS secret access key"));
    }
    Ok(())
}

/// Characters of EC2 resource ids and instance types (`ami-0abc`, `c7i.large`).
fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Characters of a path the script may hold unquoted.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '+')
}

/// Refuse `value` unless it is 1 to `max_len` characters, each `allowed`.
fn check_chars(what: &str, value: &str, max_len: usize, allowed: impl Fn(char) -> bool) -> Result<(), ProviderError> {
    if value.is_empty() {
        return Err(configuration(format!("{what} must not be empty")));
    }
    if value.len() > max_len {
        return Err(configuration(format!("{what} must be at most {max_len} characters")));
    }
    if let Some(bad) = value.chars().find(|&c| !allowed(c)) {
        return Err(configuration(format!("{what} must not hold {bad:?}")));
    }
    Ok(())
}

/// Refuse a URL that is not `http(s)://` or that the script could not hold unquoted.
fn check_url(what: &str, url: &str) -> Result<(), ProviderError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(configuration(format!("{what} must start with http:// or https://, not {url:?}")));
    }
    check_chars(what, url, 2048, |c| {
        c.is_ascii_alphanumeric()
            || matches!(c, ':' | '/' | '.' | '-' | '_' | '~' | '%' | '[' | ']' | '@' | '?' | '=' | '&' | '+')
    })
}

fn configuration(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::Configuration, message)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A string shaped like an AWS access key id, put together at run time so that the source
    /// holds nothing a secret scanner (or a reader) would take for a key.
    pub(crate) fn key_shaped(prefix: &str, body: &str) -> String {
        format!("{prefix}{body}")
    }

    /// A made-up secret access key (40 characters, the real ones' length), built at run time.
    fn secret_shaped() -> String {
        ["not", "a", "real", "secret", "access", "key", "for", "tests"].join("/") + "00000"
    }

    fn launch() -> WorkerLaunch {
        WorkerLaunch {
            cluster_name: "blue".into(),
            image_id: "ami-0123456789abcdef0".into(),
            instance_type: "c7i.large".into(),
            subnet_id: Some("subnet-0abc".into()),
            security_group_ids: vec!["sg-0abc".into()],
            instance_profile: Some(InstanceProfile::Name("tandem-worker".into())),
            coordinators: vec!["http://10.0.0.1:8080".into(), "http://10.0.0.2:8080".into()],
            worker_binary: WorkerBinary::Path(DEFAULT_WORKER_BINARY.into()),
            give_up_after_ms: 900_000,
            witness_port: DEFAULT_WITNESS_PORT,
            cluster_secret: Some("s3cret-of-the-cluster".into()),
            aws_secret_access_key: None,
        }
    }

    /// A join secret as the leader makes them.
    pub(crate) const JOIN: &str = "tandem-join-0123456789abcdef0123456789abcdef";

    fn kind(result: Result<LaunchRequest, ProviderError>) -> Option<ProviderErrorKind> {
        result.err().map(|e| e.kind)
    }

    #[test]
    fn request_carries_the_settings_the_token_and_the_worker_options() {
        let request = launch().request("t-42", JOIN).expect("valid launch");
        assert_eq!(request.client_token, "t-42");
        assert_eq!(request.image_id, "ami-0123456789abcdef0");
        assert_eq!(request.instance_type, "c7i.large");
        assert_eq!(request.subnet_id.as_deref(), Some("subnet-0abc"));
        assert_eq!(request.security_group_ids, vec!["sg-0abc".to_owned()]);
        assert_eq!(request.instance_profile, Some(InstanceProfile::Name("tandem-worker".into())));
        assert_eq!(request.metadata, MetadataOptions { tokens_required: true, endpoint_enabled: true });
        assert!(request.terminate_on_shutdown);
        let tag = |key: &str| request.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(tag(CLUSTER_TAG), Some("blue"));
        assert_eq!(tag(ROLE_TAG), Some("worker"));
        assert_eq!(tag(LAUNCH_TOKEN_TAG), Some("t-42"));
        assert_eq!(tag("Name"), Some("tandem-blue-worker"));
    }

    #[test]
    fn user_data_starts_the_worker_with_its_environment_in_a_root_only_file() {
        let script = launch().request("t-42", JOIN).expect("valid launch").user_data;
        assert!(script.starts_with("#!/bin/bash\n"), "{script}");
        let env_file_body = script.split("<<'TANDEM_ENV'\n").nth(1).and_then(|rest| rest.split("TANDEM_ENV\n").next());
        assert_eq!(
            env_file_body,
            Some(
                "TANDEM_COORDINATORS=http://10.0.0.1:8080,http://10.0.0.2:8080\nTANDEM_LAUNCH_TOKEN=t-42\n\
                 TANDEM_GIVE_UP_AFTER_MS=900000\nTANDEM_LOG_FORMAT=json\n\
                 TANDEM_JOIN_TOKEN=tandem-join-0123456789abcdef0123456789abcdef\n"
            )
        );
        // The join secret appears only in that file's body, written with umask 077 and then
        // 0600; the cluster secret nowhere.
        assert_eq!(script.matches(JOIN).count(), 1);
        assert!(!script.contains("s3cret-of-the-cluster") && !script.contains("TANDEM_CLUSTER_SECRET"));
        assert!(script.find("umask 077") < script.find("cat > /etc/tandem/worker.env"));
        assert!(script.contains("chmod 0600 /etc/tandem/worker.env"));
        // IMDSv2: a token PUT, then the instance id with it.
        assert!(script.contains("-X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' \"$imds/api/token\""));
        assert!(script.contains("-H \"X-aws-ec2-metadata-token: $imds_token\" \"$imds/meta-data/instance-id\""));
        assert!(script.contains("echo \"TANDEM_INSTANCE_ID=$instance_id\" >> /etc/tandem/worker.env"));
        assert!(script.contains("ExecStart=/opt/tandem/bin/worker\n"));
        assert!(script.contains("EnvironmentFile=/etc/tandem/worker.env\n"));
        assert!(script.contains("systemctl enable --now tandem-worker.service"));
        // Whichever way the worker exits, the instance powers off, and so terminates.
        assert!(script.contains("SuccessAction=poweroff\nFailureAction=poweroff\n"));
        assert!(script.contains("Restart=no\n"));
        assert!(
            !script.contains("curl -fsS --retry 10 --retry-connrefused --retry-delay 3 -o"),
            "no download for a path"
        );
    }

    #[test]
    fn a_witness_request_is_a_workers_that_also_runs_the_voter() {
        let mut settings = launch();
        settings.witness_port = 8095;
        let worker = settings.request("t-42", JOIN).expect("valid launch");
        let witness = settings.request_witness("t-42", 7, JOIN).expect("valid witness launch");
        let env_file_body =
            witness.user_data.split("<<'TANDEM_ENV'\n").nth(1).and_then(|rest| rest.split("TANDEM_ENV\n").next());
        assert_eq!(
            env_file_body,
            Some(
                "TANDEM_COORDINATORS=http://10.0.0.1:8080,http://10.0.0.2:8080\nTANDEM_LAUNCH_TOKEN=t-42\n\
                 TANDEM_GIVE_UP_AFTER_MS=900000\nTANDEM_LOG_FORMAT=json\n\
                 TANDEM_WITNESS=true\nTANDEM_WITNESS_ID=7\nTANDEM_WITNESS_LISTEN=0.0.0.0:8095\n\
                 TANDEM_WITNESS_DATA_DIR=/var/lib/tandem/witness\n\
                 TANDEM_JOIN_TOKEN=tandem-join-0123456789abcdef0123456789abcdef\n"
            )
        );
        // The dynamic user may write the data directory, and only a witness gets one.
        assert!(witness.user_data.contains("DynamicUser=yes\nStateDirectory=tandem\nNoNewPrivileges=yes\n"));
        assert!(!worker.user_data.contains("StateDirectory") && !worker.user_data.contains("TANDEM_WITNESS"));
        // Everything else is the worker's: the script but for those lines, the instance, the token.
        let unwitnessed = witness
            .user_data
            .lines()
            .filter(|line| !line.starts_with("TANDEM_WITNESS") && *line != "StateDirectory=tandem")
            .map(|line| line.replace("A Tandem worker in the witness role (Raft voter 7)", "A Tandem worker"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(unwitnessed + "\n", worker.user_data);
        assert_eq!(
            LaunchRequest { user_data: worker.user_data.clone(), tags: worker.tags.clone(), ..witness.clone() },
            worker
        );
        // Tagged as this cluster's worker, with its voter's id.
        let tag = |key: &str| witness.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(tag(ROLE_TAG), Some(WORKER_ROLE));
        assert_eq!(tag(VOTER_ID_TAG), Some("7"));
        assert_eq!(tag(LAUNCH_TOKEN_TAG), Some("t-42"));
        assert_eq!(tag("Name"), Some("tandem-blue-witness"));
        assert_eq!(witness.tags, settings.witness_tags("t-42", 7));
        assert!(settings.is_own_worker(&witness.tags));
        assert!(!worker.tags.iter().any(|(k, _)| k == VOTER_ID_TAG));
    }

    const SHA: &str = "5a6f2c0c4b7e3f1d9e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e";

    #[test]
    fn a_worker_binary_url_is_downloaded_at_boot_and_run_only_with_its_sha256() {
        let mut settings = launch();
        settings.worker_binary = WorkerBinary::from_flags("http://10.0.0.1:8080/bin/worker", Some(SHA), None)
            .expect("a URL with its SHA-256");
        let script = settings.request("t", JOIN).expect("valid launch").user_data;
        assert!(script.contains("for url in 'http://10.0.0.1:8080/bin/worker'; do"), "{script}");
        assert!(script.contains(&format!(
            "echo '{SHA}  /opt/tandem/bin/worker.download' | sha256sum --check --status \\\n  || refuse"
        )));
        // The check comes before the binary is moved into place, which comes before the unit.
        let at = |needle: &str| script.find(needle).unwrap_or_else(|| panic!("{needle:?} in\n{script}"));
        assert!(at("sha256sum --check") < at("mv /opt/tandem/bin/worker.download /opt/tandem/bin/worker"));
        assert!(at("mv /opt/tandem/bin/worker.download") < at("systemctl enable"));
        // A refusal powers the instance off (which terminates it); nothing is installed.
        assert!(script.contains("  rm -f /opt/tandem/bin/worker.download\n"));
        assert!(script.contains("  systemctl poweroff\n  exit 1\n"));
        assert!(script.contains("ExecStart=/opt/tandem/bin/worker\n"));
        // Only the coordinators get the join secret.
        assert!(!script.contains("Authorization"));
    }

    #[test]
    fn a_download_needs_a_sha256() {
        let error = WorkerBinary::from_flags("https://example.com/worker", None, None).expect_err("no SHA-256");
        assert!(error.message.contains("--ec2-worker-binary-sha256"), "{error}");
        let error = WorkerBinary::from_flags(FROM_COORDINATORS, Some(SHA), None).expect_err("nothing served");
        assert!(error.message.contains("--worker-binary-file"), "{error}");
        let mut settings = launch();
        settings.worker_binary = WorkerBinary::Url { url: "http://10.0.0.1/w".into(), sha256: "ABC".into() };
        assert_eq!(kind(settings.request("t", JOIN)), Some(ProviderErrorKind::Configuration));
        settings.worker_binary = WorkerBinary::Coordinators { sha256: SHA.to_uppercase() };
        assert_eq!(kind(settings.request("t", JOIN)), Some(ProviderErrorKind::Configuration));
        assert_eq!(WorkerBinary::from_flags("/usr/bin/w", None, None), Ok(WorkerBinary::Path("/usr/bin/w".into())));
    }

    #[test]
    fn from_the_coordinators_the_download_carries_the_join_secret_off_the_command_line() {
        let mut settings = launch();
        settings.worker_binary = WorkerBinary::from_flags(FROM_COORDINATORS, None, Some(SHA)).expect("served");
        let script = settings.request("t-9", JOIN).expect("valid launch").user_data;
        assert!(
            script.contains("for url in 'http://10.0.0.1:8080/worker/binary' 'http://10.0.0.2:8080/worker/binary'; do"),
            "{script}"
        );
        // The join secret is read from the root-only file and given to curl on its standard
        // input: the script holds it once (in that file's body), no command line ever.
        assert_eq!(script.matches(JOIN).count(), 1);
        assert!(script.contains("join_secret=$(sed -n 's/^TANDEM_JOIN_TOKEN=//p' /etc/tandem/worker.env)"));
        assert!(
            script.contains("printf 'header = \"Authorization: Bearer %s\"\\n' \"$join_secret\" | curl --config - ")
        );
        assert!(script.contains("-H \"X-Tandem-Launch-Token: $launch_token\""));
        // The environment file is written before the download reads it.
        let at = |needle: &str| script.find(needle).unwrap_or_else(|| panic!("{needle:?} in\n{script}"));
        assert!(at("chmod 0600 /etc/tandem/worker.env") < at("fetch() {"));
    }

    #[test]
    fn a_local_boot_target_writes_under_its_root_and_runs_the_worker_in_the_foreground() {
        let mut settings = launch();
        settings.worker_binary = WorkerBinary::from_flags(FROM_COORDINATORS, None, Some(SHA)).expect("served");
        let target = BootTarget::local("/tmp/instance-1", "http://127.0.0.1:9/latest");
        let script = settings.render(&target, "t-9", None, JOIN).expect("rendered");
        assert!(script.contains("imds=http://127.0.0.1:9/latest\n"));
        assert!(script.contains("cat > /tmp/instance-1/etc/tandem/worker.env <<'TANDEM_ENV'"));
        assert!(
            script.contains("mv /tmp/instance-1/opt/tandem/bin/worker.download /tmp/instance-1/opt/tandem/bin/worker")
        );
        assert!(script.ends_with(
            "set -a\n. /tmp/instance-1/etc/tandem/worker.env\nset +a\nexec /tmp/instance-1/opt/tandem/bin/worker\n"
        ));
        assert!(!script.contains("systemctl"), "{script}");
        // The instance's rendering is the request's.
        let instance = settings.render(&BootTarget::instance(), "t-9", None, JOIN).expect("rendered");
        assert_eq!(instance, settings.request("t-9", JOIN).expect("valid launch").user_data);
        let refused = settings.render(&BootTarget::local("/tmp/a b", "http://127.0.0.1:9/latest"), "t", None, JOIN);
        assert_eq!(refused.err().map(|e| e.kind), Some(ProviderErrorKind::Configuration));
    }

    #[test]
    fn no_cluster_secret_means_no_secret_line_and_the_insecure_flag() {
        let mut settings = launch();
        settings.cluster_secret = None;
        let script = settings.request("t", JOIN).expect("valid launch").user_data;
        assert!(!script.contains("TANDEM_CLUSTER_SECRET=") && !script.contains(JOIN), "{script}");
        assert!(script.contains("\nTANDEM_INSECURE_NO_CLUSTER_SECRET=true\n"), "{script}");
        let with_secret = launch().request("t", JOIN).expect("valid launch").user_data;
        assert!(!with_secret.contains("TANDEM_INSECURE_NO_CLUSTER_SECRET"));
    }

    #[test]
    fn the_rendered_script_is_valid_bash() {
        let Ok(bash) = which_bash() else { return };
        let worker = launch().request("t-1", JOIN).expect("valid launch").user_data;
        let witness = launch().request_witness("t-2", 4, JOIN).expect("valid witness launch").user_data;
        let mut settings = launch();
        settings.worker_binary = WorkerBinary::from_flags(FROM_COORDINATORS, None, Some(SHA)).expect("served");
        let downloading = settings.request("t-3", JOIN).expect("valid launch").user_data;
        settings.worker_binary = WorkerBinary::from_flags("http://10.0.0.9/w", Some(SHA), None).expect("a URL");
        settings.cluster_secret = None;
        let insecure = settings.request("t-4", JOIN).expect("valid launch").user_data;
        let dir = tempfile::tempdir().expect("tempdir");
        for script in [worker, witness, downloading, insecure] {
            let path = dir.path().join("user-data.sh");
            std::fs::write(&path, &script).expect("write script");
            let status = std::process::Command::new(bash).arg("-n").arg(&path).status().expect("run bash -n");
            assert!(status.success(), "bash -n rejects the script:\n{script}");
        }
    }

    fn which_bash() -> Result<&'static str, ()> {
        ["/bin/bash", "/usr/bin/bash"].into_iter().find(|p| std::path::Path::new(p).exists()).ok_or(())
    }

    #[test]
    fn user_data_base64_decodes_to_the_script() {
        let request = launch().request("t", JOIN).expect("valid launch");
        let decoded = aws_smithy_types::base64::decode(request.user_data_base64()).expect("base64");
        assert_eq!(String::from_utf8(decoded).expect("utf-8"), request.user_data);
    }

    #[test]
    fn access_key_ids_are_found_and_lookalikes_are_not() {
        let cases: &[(String, Option<usize>)] = &[
            (key_shaped("AKIA", "TESTONLY0000000A"), Some(0)),
            (format!("key={}\n", key_shaped("ASIA", "TESTONLY0000000B")), Some(4)),
            (format!("x {} y", key_shaped("AKIA", "1234567890ABCDEF")), Some(2)),
            (key_shaped("AKIA", "TESTONLY0000000"), None), // 15 after the prefix
            (key_shaped("AKIA", "TESTONLY0000000AX"), None), // a longer run: not a key id
            (key_shaped("XAKIA", "TESTONLY0000000A"), None), // inside a longer run
            (key_shaped("AKIA", "testonly0000000a"), None), // lower case
            (key_shaped("ABIA", "TESTONLY0000000A"), None), // another prefix
            (String::new(), None),
        ];
        for (text, expected) in cases {
            assert_eq!(find_access_key_id(text), *expected, "{text:?}");
        }
    }

    #[test]
    fn a_script_holding_an_aws_key_is_refused() {
        // Through the join secret, the one value in the script nobody configured.
        let settings = launch();
        let key_id = key_shaped("AKIA", "TESTONLY0000000A");
        let error = settings.request("t", &key_id).expect_err("an access key id in user-data");
        assert_eq!(error.kind, ProviderErrorKind::Configuration);
        assert!(error.message.contains("access key id"), "{error}");
        assert!(!error.message.contains(&key_id), "the error must not repeat the key: {error}");
        let error = settings.request_witness("t", 4, &key_id).expect_err("an access key id in a witness's user-data");
        assert!(error.message.contains("access key id"), "{error}");

        // The secret access key this process runs with.
        let secret_key = secret_shaped().replace('/', "-");
        let mut settings = launch();
        settings.aws_secret_access_key = Some(secret_key.clone());
        assert!(settings.request("t", JOIN).is_ok(), "a different secret is fine");
        let error = settings.request_witness("t", 4, &secret_key).expect_err("the secret key in a witness's user-data");
        assert!(error.message.contains("secret access key"), "{error}");
        let secret_key = &secret_shaped();
        assert!(refuse_aws_keys(&format!("x={secret_key}"), Some(secret_key)).is_err());
        // A short dummy key (moto's "testing") is not looked for: it would match innocent text.
        assert!(refuse_aws_keys("# testing", Some("testing")).is_ok());
    }

    #[test]
    fn the_cluster_secret_is_never_in_a_script() {
        let mut settings = launch();
        for request in [settings.request("t", JOIN), settings.request_witness("t", 4, JOIN)] {
            let script = request.expect("valid launch").user_data;
            assert!(!script.contains("s3cret-of-the-cluster"), "{script}");
        }
        // A join secret that is the cluster secret (or holds it) is refused, whatever the route.
        settings.cluster_secret = Some(JOIN.into());
        let error = settings.request("t", JOIN).expect_err("the cluster secret in user-data");
        assert_eq!(error.kind, ProviderErrorKind::Configuration);
        assert!(error.message.contains("cluster secret") && !error.message.contains(JOIN), "{error}");
        assert!(settings.request_witness("t", 4, JOIN).is_err());
        assert!(refuse_cluster_secret("TANDEM_X=abc\n", Some("abc")).is_err());
        assert!(refuse_cluster_secret("TANDEM_X=abc\n", Some("xyz")).is_ok());
        assert!(refuse_cluster_secret("TANDEM_X=abc\n", None).is_ok());
    }

    #[test]
    fn settings_and_tokens_the_script_cannot_hold_are_refused() {
        type Mutation = fn(&mut WorkerLaunch);
        let mutations: [(&str, Mutation); 12] = [
            ("empty cluster name", |l| l.cluster_name.clear()),
            ("cluster name with a space", |l| l.cluster_name = "a b".into()),
            ("cluster name too long", |l| l.cluster_name = "a".repeat(65)),
            ("ami with a quote", |l| l.image_id = "ami-'x".into()),
            ("no coordinators", |l| l.coordinators.clear()),
            ("coordinator not a URL", |l| l.coordinators = vec!["10.0.0.1:8080".into()]),
            ("coordinator with a newline", |l| l.coordinators = vec!["http://a\nb".into()]),
            ("relative worker path", |l| l.worker_binary = WorkerBinary::Path("bin/worker".into())),
            ("worker path with $", |l| l.worker_binary = WorkerBinary::Path("/opt/$HOME/worker".into())),
            ("worker URL with a quote", |l| {
                l.worker_binary = WorkerBinary::Url { url: "http://a/'b".into(), sha256: SHA.into() }
            }),
            ("subnet with a semicolon", |l| l.subnet_id = Some("subnet-1;rm".into())),
            ("witness port 0", |l| l.witness_port = 0),
        ];
        for (name, mutate) in mutations {
            let mut settings = launch();
            mutate(&mut settings);
            assert_eq!(kind(settings.request("t", JOIN)), Some(ProviderErrorKind::Configuration), "{name}");
            assert_eq!(kind(settings.request_witness("t", 4, JOIN)), Some(ProviderErrorKind::Configuration), "{name}");
        }
        for token in ["", "a b", "t'1", "t\n", &"t".repeat(MAX_TOKEN_LEN + 1)] {
            assert_eq!(kind(launch().request(token, JOIN)), Some(ProviderErrorKind::Configuration), "token {token:?}");
        }
        assert!(launch().request(&"t".repeat(MAX_TOKEN_LEN), JOIN).is_ok());
        assert!(launch().request("launch-7:abc_1.2", JOIN).is_ok());
        let too_long = "j".repeat(wire::worker::MAX_JOIN_SECRET_BYTES + 1);
        for join in
            ["", "short", "join-secret with-a-space", "join-secret'quote0", "join-secret\nTANDEM_X=1", &too_long]
        {
            assert_eq!(kind(launch().request("t", join)), Some(ProviderErrorKind::Configuration), "join {join:?}");
            assert_eq!(kind(launch().request_witness("t", 4, join)), Some(ProviderErrorKind::Configuration));
        }
    }

    #[test]
    fn own_workers_carry_the_cluster_and_the_worker_role() {
        let settings = launch();
        let tags =
            |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        assert!(settings.is_own_worker(&settings.tags("t")));
        assert!(!settings.is_own_worker(&tags(&[(CLUSTER_TAG, "green"), (ROLE_TAG, WORKER_ROLE)])));
        assert!(!settings.is_own_worker(&tags(&[(CLUSTER_TAG, "blue"), (ROLE_TAG, "coordinator")])));
        assert!(!settings.is_own_worker(&tags(&[(CLUSTER_TAG, "blue")])));
        assert!(!settings.is_own_worker(&[]));
    }

    #[test]
    fn debug_output_redacts_the_secrets() {
        let mut settings = launch();
        let secret_key = secret_shaped();
        settings.aws_secret_access_key = Some(secret_key.clone());
        let shown = format!("{settings:?} {:?}", settings.request("t", JOIN).expect("valid launch"));
        assert!(!shown.contains("s3cret-of-the-cluster") && !shown.contains(&secret_key), "{shown}");
    }

    #[test]
    fn parsing_the_binary_and_the_profile() {
        assert_eq!(WorkerBinary::from_flags("/opt/w", None, None), Ok(WorkerBinary::Path("/opt/w".into())));
        assert_eq!(
            WorkerBinary::from_flags("https://x/w", Some(SHA), None),
            Ok(WorkerBinary::Url { url: "https://x/w".into(), sha256: SHA.into() })
        );
        assert_eq!(InstanceProfile::parse("p"), InstanceProfile::Name("p".into()));
        assert_eq!(
            InstanceProfile::parse("arn:aws:iam::123456789012:instance-profile/p"),
            InstanceProfile::Arn("arn:aws:iam::123456789012:instance-profile/p".into())
        );
    }
}
