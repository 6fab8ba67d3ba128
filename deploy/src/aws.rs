//! `deploy aws up | status | down` (feature `aws`): a Tandem cluster's EC2 resources, found by
//! their tags and names so that every command converges from whatever is there.
//!
//! `up` makes sure of, in order: the local state (the cluster secret and admin token, generated
//! once, in a file of mode 0600 outside any git work tree), one security group (the client API
//! open to `--api-cidr`, SSH to `--ssh-cidr` if given, everything else only between members of
//! the group), one key pair (its private key beside the state, mode 0600), and the three voters'
//! instances (two coordinators, the witness's worker; [`wire::members::LAYOUT`]), each tagged
//! with the cluster, its role and its voter id, requiring IMDSv2. What exists is kept; what is
//! missing is created; a second `up` changes nothing. `down` terminates every instance tagged with
//! the cluster (autoscaled workers included), waits until they are gone, and deletes the group
//! and the key pair; a second `down` finds nothing to do.
//!
//! Credentials come only from the standard AWS chain of the operator's machine; nothing written
//! here (user-data, the state file, the output) holds an AWS key: user-data is checked with
//! [`refuse_aws_keys`] before any launch, and it holds no Tandem secret either.
//!
//! Then, over SSH with that key (open to `--ssh-cidr` for the upload, closed again after it unless
//! `--keep-ssh`), `up` installs each voter ([`crate::voters`]): the operator's release binaries
//! (`--binaries`), a root-only environment file with the secrets and the members' private
//! addresses, and a restart of its systemd unit when a binary or the environment changed, the
//! witness first and the leader last. Coordinator 1 forms the cluster on the first `up` only (the
//! state file remembers it). The coordinators serve the worker binary to the workers their
//! autoscaler launches (with `--instance-profile`; without one they launch nothing).
//!
//! Not yet: creating IAM roles (`--instance-profile` names an existing profile for the
//! coordinators).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_ec2::types::{
    Filter, HttpTokensState, IamInstanceProfileSpecification, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceType, IpPermission, IpRange, KeyType, ResourceType, Tag, TagSpecification,
    UserIdGroupPair,
};
use serde::{Deserialize, Serialize};
use wire::members::{LAYOUT, Members, Role};

use crate::local::random_token;
use crate::provider::ec2::client::{DescribeFilter, describe_all};
use crate::provider::ec2::launch::{
    CLUSTER_TAG, DEFAULT_WITNESS_PORT, FROM_COORDINATORS, ROLE_TAG, VOTER_ID_TAG, WORKER_ROLE, refuse_aws_keys,
};
use crate::provider::ec2::{Ec2Client, LIVE_STATES, SdkEc2Client, sdk_client};
use crate::ssh::Ssh;
use crate::voters::{ClusterSetup, InstallTarget, install, service_of, write_environment};

/// The client API's port on the coordinators.
pub const API_PORT: u16 = 8080;
/// The role tag of a coordinator's instance.
pub const COORDINATOR_ROLE: &str = "coordinator";
/// How long `up` waits for its instances to run, and `down` for them to be gone.
const WAIT: Duration = Duration::from_secs(600);

/// Which cluster, where. Credentials are not among them: the standard AWS chain gives them.
#[derive(clap::Args, Clone, Debug)]
pub struct AwsOptions {
    /// The cluster's name: tagged `tandem:cluster=<name>` on everything `up` creates, which is
    /// how `status` and `down` find it.
    #[arg(long, env = "TANDEM_CLUSTER_NAME", default_value = "tandem")]
    pub cluster_name: String,
    /// The region (unset: the AWS chain's, AWS_REGION or the profile's).
    #[arg(long, env = "TANDEM_AWS_REGION")]
    pub region: Option<String>,
    /// Another EC2 endpoint (moto's server in tests).
    #[arg(long, env = "TANDEM_AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Where the cluster's secrets and SSH key are kept for the operator, mode 0600 (default:
    /// $XDG_STATE_HOME/tandem/<cluster>, else ~/.local/state/tandem/<cluster>). Refused inside a
    /// git work tree.
    #[arg(long, env = "TANDEM_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// What `up` builds.
#[derive(clap::Args, Clone, Debug)]
pub struct UpOptions {
    #[command(flatten)]
    pub aws: AwsOptions,
    /// Who may reach the client API (port 8080), as a CIDR: your address (`203.0.113.7/32`) or
    /// your network. Required: there is no safe default.
    #[arg(long, env = "TANDEM_API_CIDR")]
    pub api_cidr: String,
    /// Who may reach SSH (port 22), as a CIDR: your address. Unset: SSH closed.
    #[arg(long, env = "TANDEM_SSH_CIDR")]
    pub ssh_cidr: Option<String>,
    /// The AMI (default: the newest Amazon Linux 2023 for x86_64, found with DescribeImages).
    #[arg(long, env = "TANDEM_AMI")]
    pub ami: Option<String>,
    /// The coordinators' instance type.
    #[arg(long, env = "TANDEM_COORDINATOR_TYPE", default_value = "c7i.large")]
    pub coordinator_type: String,
    /// The workers' instance type (the witness's worker and those the leader launches).
    #[arg(long, env = "TANDEM_WORKER_TYPE", default_value = "c7i.large")]
    pub worker_type: String,
    /// The subnet (default: the default VPC's subnet EC2 picks).
    #[arg(long, env = "TANDEM_SUBNET")]
    pub subnet: Option<String>,
    /// An existing IAM instance profile for the coordinators (the autoscaler's EC2 calls). Unset:
    /// none, and the coordinators cannot launch workers.
    #[arg(long, env = "TANDEM_INSTANCE_PROFILE")]
    pub instance_profile: Option<String>,
    /// Where the release binaries to upload are (`coordinator`, built with `--features ec2` for
    /// an autoscaling cluster, and `worker`). Default: beside this `deploy` binary.
    #[arg(long, env = "TANDEM_BINARIES")]
    pub binaries: Option<PathBuf>,
    /// The user `up` logs in as over SSH (the AMI's default user).
    #[arg(long, env = "TANDEM_SSH_USER", default_value = "ec2-user")]
    pub ssh_user: String,
    /// Converge the EC2 resources only: upload nothing, start nothing (SSH stays as --ssh-cidr
    /// says).
    #[arg(long)]
    pub no_upload: bool,
    /// Leave SSH open to --ssh-cidr after the upload (by default the rule is removed again).
    #[arg(long)]
    pub keep_ssh: bool,
    /// Fewest workers the autoscaler keeps, the witness's not counted.
    #[arg(long, env = "TANDEM_MIN_WORKERS", default_value_t = 0)]
    pub min_workers: u32,
    /// Most workers the autoscaler launches, the witness's not counted.
    #[arg(long, env = "TANDEM_MAX_WORKERS", default_value_t = 4)]
    pub max_workers: u32,
    /// Require a bearer token on the client API: generated once and kept in the state file
    /// (`client_token`), given to the coordinators in their environment.
    #[arg(long)]
    pub client_token: bool,
}

/// What the operator keeps: the cluster's secrets, generated once. Never holds an AWS key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// The cluster it belongs to.
    pub cluster: String,
    /// The secret the voters and workers present to each other.
    pub cluster_secret: String,
    /// The operators' bearer token (`/admin/*`).
    pub admin_token: String,
    /// The launch token (`ClientToken`) of each voter's instance, chosen before its launch: a
    /// rerun after a failure mid-launch gets the same instance back rather than a second one.
    #[serde(default)]
    pub launch_tokens: BTreeMap<u64, String>,
    /// The client API's bearer token, once `up --client-token` made one.
    #[serde(default)]
    pub client_token: Option<String>,
    /// Whether the cluster has formed: later `up`s never ask a coordinator to initialize it.
    #[serde(default)]
    pub initialized: bool,
    /// The instance each voter was installed on: a voter's instance that is not the one
    /// recorded has an empty disk, and is not started under the old voter id.
    #[serde(default)]
    pub installed: BTreeMap<u64, String>,
}

/// One instance of the cluster, as `up` and `status` report it.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct InstanceView {
    /// Its id.
    pub instance_id: String,
    /// `coordinator` or `worker`.
    pub role: String,
    /// Its voter id, for the voters.
    pub voter_id: Option<u64>,
    /// `pending`, `running`, ...
    pub state: String,
    /// Its private IPv4 address.
    pub private_ip: Option<String>,
    /// Its public IPv4 address.
    pub public_ip: Option<String>,
}

/// The cluster as found.
#[derive(Serialize, Clone, Debug, Default)]
pub struct ClusterView {
    /// The cluster's name.
    pub cluster: String,
    /// Its region.
    pub region: String,
    /// Its security group, if there is one.
    pub security_group: Option<String>,
    /// Its key pair, if there is one.
    pub key_pair: Option<String>,
    /// Its instances, voters first.
    pub instances: Vec<InstanceView>,
    /// Where the operator's state is.
    pub state_file: PathBuf,
    /// What the first coordinator that answered says of the cluster (`GET /cluster`), or why
    /// none did; `None` when not asked.
    pub live: Option<Result<String, String>>,
}

impl ClusterView {
    /// What an operator reads after `up` or `status`.
    pub fn describe(&self) -> String {
        let mut out = format!("cluster {}\n", self.cluster);
        out += &format!("  security group: {}\n", self.security_group.as_deref().unwrap_or("-"));
        out += &format!("  key pair:       {}\n", self.key_pair.as_deref().unwrap_or("-"));
        out += &format!("  secrets:        {} (cluster secret, admin token; mode 0600)\n", self.state_file.display());
        out += "  instances:\n";
        for i in &self.instances {
            let voter = i.voter_id.map_or(String::new(), |id| format!(" voter {id}"));
            out += &format!(
                "    {:<20} {:<11}{:<9} {:<10} private {:<15} public {}\n",
                i.instance_id,
                i.role,
                voter,
                i.state,
                i.private_ip.as_deref().unwrap_or("-"),
                i.public_ip.as_deref().unwrap_or("-")
            );
        }
        let urls: Vec<String> = self
            .instances
            .iter()
            .filter(|i| i.role == COORDINATOR_ROLE)
            .filter_map(|i| i.public_ip.as_ref().map(|ip| format!("http://{ip}:{API_PORT}")))
            .collect();
        if let Some(first) = urls.first() {
            out += &format!("  coordinators:   {}\n", urls.join(" "));
            out += &format!("  status page:    {first}/\n");
            out += &format!(
                "  try:            curl -X PUT --data-binary @file '{first}/enqueue?iterations=1000' -H \"Authorization: Bearer $TOKEN\"\n"
            );
        }
        match &self.live {
            Some(Ok(summary)) => out += &format!("  cluster:        {summary}\n"),
            Some(Err(why)) => out += &format!("  cluster:        not reachable ({why})\n"),
            None => {}
        }
        out += &format!("  prometheus scrape configuration:\n{}", indent(&self.scrape_config(), 4));
        out
    }

    /// A Prometheus scrape job for this cluster's instances, found through EC2 service discovery
    /// by the cluster tag (the coordinators on the API port; workers serve their own metrics).
    pub fn scrape_config(&self) -> String {
        format!(
            "scrape_configs:\n  - job_name: tandem-{cluster}\n    ec2_sd_configs:\n      - region: {region}\n        port: {API_PORT}\n        filters:\n          - name: tag:{CLUSTER_TAG}\n            values: [{cluster}]\n          - name: tag:{ROLE_TAG}\n            values: [{COORDINATOR_ROLE}]\n    relabel_configs:\n      - source_labels: [__meta_ec2_private_ip]\n        target_label: __address__\n        replacement: \"${{1}}:{API_PORT}\"\n",
            cluster = self.cluster,
            region = self.region
        )
    }
}

fn indent(text: &str, by: usize) -> String {
    text.lines().map(|l| format!("{}{l}\n", " ".repeat(by))).collect()
}

/// Where an ingress rule lets traffic in from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Cidr(String),
    Group(String),
}

/// One ingress rule of the security group: a protocol and port range, from one source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rule {
    protocol: String,
    from_port: i32,
    to_port: i32,
    source: Source,
}

impl Rule {
    fn tcp(from_port: u16, to_port: u16, source: Source) -> Rule {
        Rule { protocol: "tcp".into(), from_port: i32::from(from_port), to_port: i32::from(to_port), source }
    }

    /// Every rule of a group's permissions, one per source (IPv6 ranges and prefix lists
    /// included, so that they are revoked: `up` never makes them).
    fn all_of(permissions: &[IpPermission]) -> BTreeSet<Rule> {
        let mut rules = BTreeSet::new();
        for p in permissions {
            let rule = |source| Rule {
                protocol: p.ip_protocol().unwrap_or_default().to_owned(),
                from_port: p.from_port().unwrap_or(-1),
                to_port: p.to_port().unwrap_or(-1),
                source,
            };
            rules.extend(p.ip_ranges().iter().filter_map(|r| r.cidr_ip()).map(|c| rule(Source::Cidr(c.to_owned()))));
            rules
                .extend(p.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6()).map(|c| rule(Source::Cidr(c.to_owned()))));
            rules.extend(
                p.user_id_group_pairs().iter().filter_map(|g| g.group_id()).map(|g| rule(Source::Group(g.to_owned()))),
            );
        }
        rules
    }

    /// The rule as the API takes it.
    fn permission(&self) -> IpPermission {
        let permission =
            IpPermission::builder().ip_protocol(&self.protocol).from_port(self.from_port).to_port(self.to_port);
        match &self.source {
            Source::Cidr(cidr) if cidr.contains(':') => {
                permission.ipv6_ranges(aws_sdk_ec2::types::Ipv6Range::builder().cidr_ipv6(cidr).build())
            }
            Source::Cidr(cidr) => permission.ip_ranges(IpRange::builder().cidr_ip(cidr).build()),
            Source::Group(group) => permission.user_id_group_pairs(UserIdGroupPair::builder().group_id(group).build()),
        }
        .build()
    }
}

/// The EC2 side of a cluster.
struct Cloud {
    /// The provider's client, for the calls it makes (describe, terminate).
    client: SdkEc2Client,
    /// The SDK, for the calls only `deploy aws` makes.
    sdk: aws_sdk_ec2::Client,
    cluster: String,
    region: String,
}

impl AwsOptions {
    async fn cloud(&self) -> anyhow::Result<Cloud> {
        check_name(&self.cluster_name)?;
        let client = sdk_client(self.region.as_deref(), self.endpoint_url.as_deref())
            .await
            .map_err(|e| anyhow::anyhow!(e.with_flag("--region (TANDEM_AWS_REGION)")))?;
        let sdk = client.sdk().clone();
        let region = sdk.config().region().map(ToString::to_string).unwrap_or_default();
        Ok(Cloud { client, sdk, cluster: self.cluster_name.clone(), region })
    }

    /// The state directory, checked to be outside any git work tree.
    pub fn state_dir(&self) -> anyhow::Result<PathBuf> {
        let dir = match &self.state_dir {
            Some(dir) => dir.clone(),
            None => {
                let base =
                    std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()).map(PathBuf::from).or_else(|| {
                        std::env::var_os("HOME")
                            .filter(|v| !v.is_empty())
                            .map(|h| PathBuf::from(h).join(".local/state"))
                    });
                base.context("no state directory: set --state-dir, XDG_STATE_HOME or HOME")?
                    .join("tandem")
                    .join(&self.cluster_name)
            }
        };
        let absolute = std::path::absolute(&dir).with_context(|| format!("state directory {}", dir.display()))?;
        if let Some(repo) = absolute.ancestors().find(|a| a.join(".git").exists()) {
            bail!(
                "the state directory {} is inside the git work tree {}: its secrets must never be committed; \
                 choose another --state-dir",
                absolute.display(),
                repo.display()
            );
        }
        Ok(absolute)
    }
}

/// A cluster name fits tags, group and key names: 1 to 32 of `a-z 0-9 -`.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!("a cluster name is 1 to 32 characters of a-z, 0-9 and '-', not {name:?}");
    }
    Ok(())
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn key_file(dir: &Path) -> PathBuf {
    dir.join("ssh-key.pem")
}

/// Write `bytes` to `path` with mode 0600, atomically (a temporary file renamed over it).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The state in `dir`, or a new one (new secrets) written there.
fn load_or_create_state(dir: &Path, cluster: &str) -> anyhow::Result<State> {
    let path = state_file(dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let state: State = serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?;
            if state.cluster != cluster {
                bail!("{} belongs to cluster {:?}, not {cluster:?}", path.display(), state.cluster);
            }
            Ok(state)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            let state = State {
                cluster: cluster.to_owned(),
                cluster_secret: random_token()?,
                admin_token: random_token()?,
                launch_tokens: BTreeMap::new(),
                client_token: None,
                initialized: false,
                installed: BTreeMap::new(),
            };
            save_state(dir, &state)?;
            Ok(state)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_state(dir: &Path, state: &State) -> anyhow::Result<()> {
    write_private(&state_file(dir), &serde_json::to_vec_pretty(state)?)
}

fn filter(name: impl Into<String>, values: &[&str]) -> Filter {
    Filter::builder().name(name).set_values(Some(values.iter().map(|v| (*v).to_owned()).collect())).build()
}

fn tags(pairs: &[(&str, &str)]) -> Vec<Tag> {
    pairs.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build()).collect()
}

impl Cloud {
    fn group_name(&self) -> String {
        format!("tandem-{}", self.cluster)
    }

    fn key_name(&self) -> String {
        format!("tandem-{}", self.cluster)
    }

    fn cluster_tag(&self) -> Filter {
        filter(format!("tag:{CLUSTER_TAG}"), &[&self.cluster])
    }

    /// The VPC to build in: the subnet's, else the default VPC.
    async fn vpc(&self, subnet: Option<&str>) -> anyhow::Result<String> {
        if let Some(subnet) = subnet {
            let found = self.sdk.describe_subnets().subnet_ids(subnet).send().await.context("DescribeSubnets")?;
            return found
                .subnets()
                .first()
                .and_then(|s| s.vpc_id())
                .map(str::to_owned)
                .with_context(|| format!("no subnet {subnet}"));
        }
        let found =
            self.sdk.describe_vpcs().filters(filter("is-default", &["true"])).send().await.context("DescribeVpcs")?;
        found.vpcs().first().and_then(|v| v.vpc_id()).map(str::to_owned).context(
            "this region has no default VPC: give --subnet (a subnet with a route to the internet for the API)",
        )
    }

    /// The cluster's security group in `vpc`, if it exists.
    async fn find_group(&self) -> anyhow::Result<Option<aws_sdk_ec2::types::SecurityGroup>> {
        let found = self
            .sdk
            .describe_security_groups()
            .filters(filter("group-name", &[&self.group_name()]))
            .filters(self.cluster_tag())
            .send()
            .await
            .context("DescribeSecurityGroups")?;
        Ok(found.security_groups().first().cloned())
    }

    /// The security group, created if missing, with exactly the rules asked for added if missing.
    async fn ensure_group(&self, vpc: &str, api_cidr: &str, ssh_cidr: Option<&str>) -> anyhow::Result<String> {
        let group = match self.find_group().await? {
            Some(group) => group,
            None => {
                let name = self.group_name();
                self.sdk
                    .create_security_group()
                    .group_name(&name)
                    .description(format!("Tandem cluster {}", self.cluster))
                    .vpc_id(vpc)
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::SecurityGroup)
                            .set_tags(Some(tags(&[(CLUSTER_TAG, &self.cluster), ("Name", &name)])))
                            .build(),
                    )
                    .send()
                    .await
                    .context("CreateSecurityGroup")?;
                self.find_group().await?.context("the security group just created is not found")?
            }
        };
        let id = group.group_id().context("a security group without an id")?.to_owned();
        // Exactly these rules: the API to the configured CIDR, SSH to the operator if asked, and
        // every port between members of the group (Raft, worker and metrics traffic). What else
        // is there (an earlier --api-cidr, SSH no longer asked for) is revoked.
        let mut wanted = BTreeSet::from([
            Rule::tcp(API_PORT, API_PORT, Source::Cidr(api_cidr.to_owned())),
            Rule::tcp(0, u16::MAX, Source::Group(id.clone())),
        ]);
        if let Some(ssh) = ssh_cidr {
            wanted.insert(Rule::tcp(22, 22, Source::Cidr(ssh.to_owned())));
        }
        let present = Rule::all_of(group.ip_permissions());
        let stale: Vec<IpPermission> = present.difference(&wanted).map(Rule::permission).collect();
        let missing: Vec<IpPermission> = wanted.difference(&present).map(Rule::permission).collect();
        if !stale.is_empty() {
            self.sdk
                .revoke_security_group_ingress()
                .group_id(&id)
                .set_ip_permissions(Some(stale))
                .send()
                .await
                .context("RevokeSecurityGroupIngress")?;
        }
        if !missing.is_empty() {
            self.sdk
                .authorize_security_group_ingress()
                .group_id(&id)
                .set_ip_permissions(Some(missing))
                .send()
                .await
                .context("AuthorizeSecurityGroupIngress")?;
        }
        Ok(id)
    }

    async fn find_key_pair(&self) -> anyhow::Result<bool> {
        let found = self
            .sdk
            .describe_key_pairs()
            .filters(filter("key-name", &[&self.key_name()]))
            .send()
            .await
            .context("DescribeKeyPairs")?;
        Ok(!found.key_pairs().is_empty())
    }

    /// The key pair, created (its private key written to `key_file`, mode 0600) if missing.
    async fn ensure_key_pair(&self, key_file: &Path) -> anyhow::Result<String> {
        let name = self.key_name();
        if self.find_key_pair().await? {
            if !key_file.is_file() {
                bail!(
                    "the key pair {name} exists but its private key is not in {}: run `deploy aws down` for this \
                     cluster, or delete the key pair, and run up again",
                    key_file.display()
                );
            }
            return Ok(name);
        }
        let created = self
            .sdk
            .create_key_pair()
            .key_name(&name)
            .key_type(KeyType::Ed25519)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::KeyPair)
                    .set_tags(Some(tags(&[(CLUSTER_TAG, &self.cluster)])))
                    .build(),
            )
            .send()
            .await
            .context("CreateKeyPair")?;
        let material = created.key_material().context("CreateKeyPair returned no private key")?;
        write_private(key_file, material.as_bytes())?;
        Ok(name)
    }

    /// The newest Amazon Linux 2023 AMI for x86_64.
    async fn default_ami(&self) -> anyhow::Result<String> {
        let found = self
            .sdk
            .describe_images()
            .owners("amazon")
            .filters(filter("name", &["al2023-ami-2023.*-x86_64"]))
            .filters(filter("state", &["available"]))
            .send()
            .await
            .context("DescribeImages")?;
        let newest = found
            .images()
            .iter()
            .filter(|i| !i.name().unwrap_or_default().contains("minimal"))
            .max_by_key(|i| i.creation_date().unwrap_or_default().to_owned());
        newest.and_then(|i| i.image_id()).map(str::to_owned).context("no Amazon Linux 2023 AMI found: give --ami")
    }

    /// Every instance tagged with the cluster, in `states`.
    async fn instances(&self, states: &[&str]) -> anyhow::Result<Vec<InstanceView>> {
        let filters = [
            DescribeFilter::new(format!("tag:{CLUSTER_TAG}"), [self.cluster.as_str()]),
            DescribeFilter::new("instance-state-name", states.iter().copied()),
        ];
        let found = describe_all(&self.client, &filters).await.context("DescribeInstances")?;
        let mut views: Vec<InstanceView> = found
            .into_iter()
            .map(|instance| InstanceView {
                role: instance.tag(ROLE_TAG).unwrap_or("?").to_owned(),
                voter_id: instance.tag(VOTER_ID_TAG).and_then(|v| v.parse().ok()),
                state: instance.state.unwrap_or_default(),
                instance_id: instance.instance_id,
                private_ip: instance.private_ip,
                public_ip: instance.public_ip,
            })
            .collect();
        views.sort_by_key(|v| (v.voter_id.is_none(), v.voter_id, v.instance_id.clone()));
        Ok(views)
    }

    /// Launch voter `id`'s instance.
    async fn launch_voter(&self, id: u64, role: Role, token: &str, up: &UpLaunch<'_>) -> anyhow::Result<()> {
        let (role_tag, instance_type, profile) = match role {
            Role::Coordinator => (COORDINATOR_ROLE, up.coordinator_type, up.instance_profile),
            // The witness runs in the first worker; workers get no AWS permissions.
            Role::Witness => (WORKER_ROLE, up.worker_type, None),
        };
        let name = format!("tandem-{}-{role}-{id}", self.cluster);
        let id_text = id.to_string();
        let user_data = prepare_script(role);
        refuse_aws_keys(&user_data, up.aws_secret_access_key).map_err(|e| anyhow::anyhow!("{e}"))?;
        let encoded = aws_smithy_types::base64::encode(user_data.as_bytes());
        self.sdk
            .run_instances()
            .client_token(token)
            .image_id(up.ami)
            .instance_type(InstanceType::from(instance_type))
            .min_count(1)
            .max_count(1)
            .key_name(up.key_name)
            .security_group_ids(up.security_group)
            .set_subnet_id(up.subnet.map(str::to_owned))
            .set_iam_instance_profile(profile.map(|p| IamInstanceProfileSpecification::builder().name(p).build()))
            .user_data(encoded)
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tags(&[
                        (CLUSTER_TAG, &self.cluster),
                        (ROLE_TAG, role_tag),
                        (VOTER_ID_TAG, &id_text),
                        ("Name", &name),
                    ])))
                    .build(),
            )
            .send()
            .await
            .with_context(|| format!("RunInstances for voter {id} ({role})"))?;
        Ok(())
    }

    /// Wait until none of the cluster's instances is in `states`, or `WAIT` passes.
    async fn wait_until_none(&self, states: &[&str], what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = self.instances(states).await?;
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let ids: Vec<&str> = left.iter().map(|i| i.instance_id.as_str()).collect();
                bail!("{what}: still not done after {} s: {}", WAIT.as_secs(), ids.join(", "));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// What every voter's launch shares.
struct UpLaunch<'a> {
    ami: &'a str,
    coordinator_type: &'a str,
    worker_type: &'a str,
    key_name: &'a str,
    security_group: &'a str,
    subnet: Option<&'a str>,
    instance_profile: Option<&'a str>,
    aws_secret_access_key: Option<&'a str>,
}

/// The user-data of a voter's instance: directories and a systemd unit (restarted on failure
/// and after a reboot) that starts once `deploy aws` has uploaded the binary and its environment
/// file. Holds no secret: those arrive with the upload, in a root-only file.
pub fn prepare_script(role: Role) -> String {
    let (unit, binary) = match role {
        Role::Coordinator => ("tandem-coordinator", "coordinator"),
        Role::Witness => ("tandem-worker", "worker"),
    };
    format!(
        "#!/bin/bash\n\
         # Tandem {role}: prepared here, started once deploy aws has uploaded /opt/tandem/bin/{binary}\n\
         # and /etc/tandem/{binary}.env (root only: it holds the cluster secret).\n\
         set -euo pipefail\n\
         id -u tandem >/dev/null 2>&1 || useradd --system --home-dir /var/lib/tandem --shell /sbin/nologin tandem\n\
         install -d -m 0755 /opt/tandem/bin\n\
         install -d -m 0700 /etc/tandem\n\
         install -d -m 0700 -o tandem -g tandem /var/lib/tandem\n\
         cat > /etc/systemd/system/{unit}.service <<'UNIT'\n\
         [Unit]\n\
         Description=Tandem {role}\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         ConditionPathExists=/etc/tandem/{binary}.env\n\
         \n\
         [Service]\n\
         User=tandem\n\
         EnvironmentFile=/etc/tandem/{binary}.env\n\
         ExecStart=/opt/tandem/bin/{binary}\n\
         Restart=always\n\
         RestartSec=2\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n\
         UNIT\n\
         systemctl daemon-reload\n"
    )
}

/// `deploy aws up`: converge the cluster's resources; see the module documentation.
pub async fn up(options: &UpOptions) -> anyhow::Result<ClusterView> {
    let dir = options.aws.state_dir()?;
    if !options.no_upload {
        // Before anything is created or launched.
        if options.ssh_cidr.is_none() {
            bail!("the upload goes over SSH: give --ssh-cidr (your address, as a /32), or --no-upload");
        }
        check_binaries(options)?;
    }
    let cloud = options.aws.cloud().await?;
    let mut state = load_or_create_state(&dir, &cloud.cluster)?;
    let vpc = cloud.vpc(options.subnet.as_deref()).await?;
    let security_group = cloud.ensure_group(&vpc, &options.api_cidr, options.ssh_cidr.as_deref()).await?;
    let key_name = cloud.ensure_key_pair(&key_file(&dir)).await?;
    let ami = match &options.ami {
        Some(ami) => ami.clone(),
        None => cloud.default_ami().await?,
    };
    let aws_secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok().filter(|k| !k.is_empty());
    let launch = UpLaunch {
        ami: &ami,
        coordinator_type: &options.coordinator_type,
        worker_type: &options.worker_type,
        key_name: &key_name,
        security_group: &security_group,
        subnet: options.subnet.as_deref(),
        instance_profile: options.instance_profile.as_deref(),
        aws_secret_access_key: aws_secret.as_deref(),
    };
    let present = cloud.instances(&LIVE_STATES).await?;
    for (id, role) in LAYOUT {
        if present.iter().any(|i| i.voter_id == Some(id)) {
            continue;
        }
        if state.initialized && state.installed.contains_key(&id) {
            println!(
                "voter {id}: its instance {} is gone; not relaunched, since a voter must not come back under \
                 its id with an empty disk. Replace it under a new id (see FAILURES.md)",
                state.installed[&id]
            );
            continue;
        }
        // A token per launch, kept before the call: a rerun after a failure mid-launch sends the
        // same one, and EC2 answers with the instance the first call started.
        let token = match state.launch_tokens.get(&id) {
            Some(token) => token.clone(),
            None => {
                let token = format!("tandem-{}-{id}-{}", cloud.cluster, random_token()?);
                state.launch_tokens.insert(id, token.clone());
                save_state(&dir, &state)?;
                token
            }
        };
        cloud.launch_voter(id, role, &token, &launch).await?;
    }
    cloud.wait_until_none(&["pending"], "waiting for the instances to run").await?;
    if options.no_upload {
        return status_of(&cloud, &dir, false).await;
    }
    if options.client_token && state.client_token.is_none() {
        state.client_token = Some(random_token()?);
        save_state(&dir, &state)?;
    }
    let instances = cloud.instances(&["running"]).await?;
    let plan = Plan::new(options, &cloud, &state, &instances, &security_group, &ami)?;
    bootstrap(&plan, &dir, &mut state).await?;
    if !options.keep_ssh {
        // The upload is done: SSH closes again (the next `up` reopens it).
        cloud.ensure_group(&vpc, &options.api_cidr, None).await?;
    }
    status_of(&cloud, &dir, false).await
}

/// A voter's SSH target (its public address), its instance id and, for the witness, the
/// instance id and launch token its worker registers with.
type VoterHost = (Ssh, String, Option<(String, String)>);

/// Everything the bootstrap of the voters needs, from the instances `up` found.
#[derive(Clone)]
struct Plan {
    /// The cluster's setup on the instances' private addresses.
    cluster: ClusterSetup,
    /// Each voter's host, by voter id.
    hosts: BTreeMap<u64, VoterHost>,
    /// Where the binaries are.
    binaries: PathBuf,
}

impl Plan {
    fn new(
        options: &UpOptions,
        cloud: &Cloud,
        state: &State,
        instances: &[InstanceView],
        security_group: &str,
        ami: &str,
    ) -> anyhow::Result<Plan> {
        let dir = options.aws.state_dir()?;
        let voter = |id: u64| {
            instances
                .iter()
                .find(|i| i.voter_id == Some(id))
                .with_context(|| format!("voter {id}'s instance is not running"))
        };
        let private = |id: u64| -> anyhow::Result<String> {
            voter(id)?.private_ip.clone().with_context(|| format!("voter {id}'s instance has no private address"))
        };
        let private_ips: BTreeMap<u64, String> =
            LAYOUT.iter().map(|&(id, _)| Ok((id, private(id)?))).collect::<anyhow::Result<_>>()?;
        let members = Members::layout(|id, role| {
            let port = match role {
                Role::Coordinator => API_PORT,
                Role::Witness => DEFAULT_WITNESS_PORT,
            };
            format!("{}:{port}", private_ips[&id])
        });
        let coordinator_urls: Vec<String> = LAYOUT
            .iter()
            .filter(|(_, role)| *role == Role::Coordinator)
            .map(|&(id, _)| format!("http://{}:{API_PORT}", private_ips[&id]))
            .collect();
        let coordinator_extra = scaler_environment(options, cloud, security_group, ami, &coordinator_urls);
        let cluster = ClusterSetup {
            members,
            coordinator_urls,
            cluster_secret: state.cluster_secret.clone(),
            admin_token: state.admin_token.clone(),
            client_token: state.client_token.clone(),
            data_root: "/var/lib/tandem".into(),
            coordinator_extra,
        };
        let mut hosts = BTreeMap::new();
        for &(id, role) in &LAYOUT {
            let instance = voter(id)?;
            let host = instance.public_ip.clone().with_context(|| {
                format!("voter {id}'s instance {} has no public address to upload to", instance.instance_id)
            })?;
            let ssh = Ssh {
                host,
                port: 22,
                user: options.ssh_user.clone(),
                key: key_file(&dir),
                known_hosts: dir.join("known_hosts"),
            };
            let identity = match role {
                Role::Witness => {
                    state.launch_tokens.get(&id).map(|token| (instance.instance_id.clone(), token.clone()))
                }
                Role::Coordinator => None,
            };
            hosts.insert(id, (ssh, instance.instance_id.clone(), identity));
        }
        let binaries = match &options.binaries {
            Some(dir) => dir.clone(),
            None => {
                std::env::current_exe().context("locating this binary")?.parent().context("its directory")?.to_owned()
            }
        };
        Ok(Plan { cluster, hosts, binaries })
    }

    fn ssh(&self, id: u64) -> &Ssh {
        &self.hosts[&id].0
    }
}

/// Where the binaries to upload are: `--binaries`, or beside this `deploy`.
fn binaries_dir(options: &UpOptions) -> anyhow::Result<PathBuf> {
    match &options.binaries {
        Some(dir) => Ok(dir.clone()),
        None => {
            Ok(std::env::current_exe().context("locating this binary")?.parent().context("its directory")?.to_owned())
        }
    }
}

/// The C library of the default AMI (Amazon Linux 2023).
const DEFAULT_AMI_GLIBC: (u32, u32) = (2, 34);

/// The newest glibc symbol version `binary` needs (`GLIBC_2.34`): the largest version named in
/// its bytes, where the dynamic section's version requirements are.
pub fn required_glibc(binary: &[u8]) -> Option<(u32, u32)> {
    const PREFIX: &[u8] = b"GLIBC_2.";
    let mut newest = None;
    let mut at = 0;
    while let Some(found) = binary[at..].windows(PREFIX.len()).position(|w| w == PREFIX) {
        let start = at + found + PREFIX.len();
        let digits: Vec<u8> = binary[start..].iter().take_while(|b| b.is_ascii_digit()).copied().collect();
        if let Ok(minor) = std::str::from_utf8(&digits).unwrap_or_default().parse::<u32>() {
            newest = newest.max(Some((2, minor)));
        }
        at = start;
    }
    newest
}

/// Before anything is launched: the binaries to upload exist; with an autoscaler, the
/// coordinator has the EC2 provider; on the default AMI, they need no newer glibc than its own.
fn check_binaries(options: &UpOptions) -> anyhow::Result<()> {
    let dir = binaries_dir(options)?;
    for name in ["coordinator", "worker"] {
        let path = dir.join(name);
        if !path.is_file() {
            bail!(
                "no {} to upload: build it (cargo build --release -p coordinator --features ec2 -p worker) or give --binaries",
                path.display()
            );
        }
        if options.ami.is_none() {
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            if let Some((major, minor)) = required_glibc(&bytes).filter(|needed| *needed > DEFAULT_AMI_GLIBC) {
                let (have_major, have_minor) = DEFAULT_AMI_GLIBC;
                bail!(
                    "{} needs GLIBC_{major}.{minor}, newer than the default AMI's (Amazon Linux 2023, glibc \
                     {have_major}.{have_minor}): build it where glibc is {have_major}.{have_minor} or older, or give --ami \
                     of a distribution with glibc {major}.{minor} or newer",
                    path.display()
                );
            }
        }
    }
    if options.instance_profile.is_some() {
        let help = std::process::Command::new(dir.join("coordinator"))
            .arg("--help")
            .output()
            .context("running the coordinator binary to upload")?;
        if !String::from_utf8_lossy(&help.stdout).contains("--ec2-ami") {
            bail!(
                "{} has no EC2 provider, so it cannot launch workers: cargo build --release -p coordinator --features ec2",
                dir.join("coordinator").display()
            );
        }
    }
    Ok(())
}

/// The coordinators' autoscaler settings: the EC2 provider launching workers like the witness's
/// (the same AMI, type, subnet and group), which download the worker binary from the
/// coordinators; without an instance profile the coordinators cannot call EC2, and scale nothing.
fn scaler_environment(
    options: &UpOptions,
    cloud: &Cloud,
    security_group: &str,
    ami: &str,
    coordinator_urls: &[String],
) -> Vec<(String, String)> {
    let mut env = vec![("TANDEM_WORKER_BINARY_FILE".to_owned(), "/opt/tandem/bin/worker".to_owned())];
    if options.instance_profile.is_none() {
        env.push(("TANDEM_SCALER".into(), "off".into()));
        return env;
    }
    let mut set = |name: &str, value: &str| env.push((name.to_owned(), value.to_owned()));
    set("TANDEM_SCALER", "ec2");
    set("TANDEM_MIN_WORKERS", &options.min_workers.to_string());
    set("TANDEM_MAX_WORKERS", &options.max_workers.to_string());
    set("TANDEM_EC2_CLUSTER_NAME", &cloud.cluster);
    set("TANDEM_EC2_REGION", &cloud.region);
    set("TANDEM_EC2_AMI", ami);
    set("TANDEM_EC2_INSTANCE_TYPE", &options.worker_type);
    set("TANDEM_EC2_SECURITY_GROUPS", security_group);
    if let Some(subnet) = &options.subnet {
        set("TANDEM_EC2_SUBNET", subnet);
    }
    set("TANDEM_EC2_WORKER_BINARY", FROM_COORDINATORS);
    set("TANDEM_EC2_COORDINATORS", &coordinator_urls.join(","));
    env
}

/// How long an instance may take to answer over SSH and finish its prepare script.
const SSH_WAIT: Duration = Duration::from_secs(300);

/// Install the three voters over SSH, the witness first and the leader last (on the first `up`:
/// coordinator 1 last, forming the cluster), each coordinator back and ready before the next;
/// then, on the first `up`, drop `TANDEM_INITIALIZE` from coordinator 1's environment.
async fn bootstrap(plan: &Plan, dir: &Path, state: &mut State) -> anyhow::Result<()> {
    let initializing = !state.initialized;
    let asked = plan.clone();
    let leader = if initializing { None } else { blocking(move || leader_of(&asked)).await.ok() };
    // The coordinator that leads goes last (coordinator 1 when none does, or on the first up).
    let last = leader.filter(|id| matches!(id, 1 | 2)).unwrap_or(1);
    for id in [3, 3 - last, last] {
        let (ssh, instance_id, identity) = &plan.hosts[&id];
        if !initializing && state.installed.get(&id).is_some_and(|was| was != instance_id) {
            // A voter must never come back under its id with an empty disk: it could vote twice
            // in one term. The witness is replaced by the leader (a new id); a coordinator by
            // the operator.
            println!(
                "voter {id}: its instance {instance_id} is new (the voter ran on {}), its disk empty: NOT started \
                 under voter id {id}. Replace the voter under a new id (deploy replace-voter; see FAILURES.md)",
                state.installed[&id]
            );
            continue;
        }
        let identity = identity.as_ref().map(|(i, t)| (i.as_str(), t.as_str()));
        let setup = plan.cluster.voter(id, initializing && id == 1, identity)?;
        let role = setup.role;
        let (_, unit) = service_of(role);
        println!("voter {id}: installing over SSH on {}", ssh.host);
        let (ssh2, binaries) = (ssh.clone(), plan.binaries.clone());
        let installed = blocking(move || {
            ssh2.wait_reachable(SSH_WAIT)?;
            // The prepare script (user-data) installs the unit; wait for it.
            let prepared = format!(
                "for i in $(seq 1 150); do [ -f /etc/systemd/system/{unit}.service ] && exit 0; sleep 2; done; \
                 echo 'the instance never finished its prepare script' >&2; exit 1"
            );
            ssh2.run(&prepared, b"")?;
            install(&ssh2, &setup, &InstallTarget::instance(), &binaries)
        })
        .await?;
        println!("voter {id}: {}", if installed { "installed, restarted" } else { "unchanged" });
        state.installed.insert(id, instance_id.clone());
        save_state(dir, state)?;
        if installed && role == Role::Coordinator && !(initializing && id == 2) {
            let ssh2 = ssh.clone();
            blocking(move || wait_ready(&ssh2)).await?;
        }
    }
    if initializing {
        let settled = plan.cluster.voter(1, false, None)?;
        let ssh = plan.ssh(1).clone();
        blocking(move || write_environment(&ssh, &settled, &InstallTarget::instance())).await?;
        state.initialized = true;
        save_state(dir, state)?;
    }
    Ok(())
}

/// Run `f` on tokio's blocking pool (the SSH client is a process this thread waits for).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.context("a blocking task failed")?
}

/// Wait until the coordinator on `ssh`'s host answers `/readyz` (asked on the host itself: the
/// operator may not be let in on the API port).
fn wait_ready(ssh: &Ssh) -> anyhow::Result<()> {
    ssh.run(
        &format!(
            "for i in $(seq 1 90); do curl -fsS -o /dev/null http://127.0.0.1:{API_PORT}/readyz && exit 0; sleep 2; done; \
             echo 'the coordinator is not ready after 3 minutes' >&2; exit 1"
        ),
        b"",
    )
    .map(drop)
}

/// The voter that leads, as coordinator 1 or 2 sees it.
fn leader_of(plan: &Plan) -> anyhow::Result<u64> {
    for id in [1, 2] {
        let Ok(text) = plan.ssh(id).run(&format!("curl -fsS http://127.0.0.1:{API_PORT}/cluster"), b"") else {
            continue;
        };
        if let Ok(view) = serde_json::from_str::<wire::api::ClusterView>(&text)
            && let Some(leader) = view.leader
        {
            return Ok(leader);
        }
    }
    bail!("no coordinator knows a leader")
}

/// `deploy aws status`: what the cluster has now, and with `probe` what its coordinators say
/// (`GET /cluster` on their public addresses).
pub async fn status(options: &AwsOptions, probe: bool) -> anyhow::Result<ClusterView> {
    let dir = options.state_dir()?;
    let cloud = options.cloud().await?;
    status_of(&cloud, &dir, probe).await
}

async fn status_of(cloud: &Cloud, dir: &Path, probe: bool) -> anyhow::Result<ClusterView> {
    let instances = cloud.instances(&LIVE_STATES).await?;
    let live = if probe { Some(ask_cluster(&instances).await) } else { None };
    Ok(ClusterView {
        cluster: cloud.cluster.clone(),
        region: cloud.region.clone(),
        security_group: cloud.find_group().await?.and_then(|g| g.group_id().map(str::to_owned)),
        key_pair: cloud.find_key_pair().await?.then(|| cloud.key_name()),
        instances,
        state_file: state_file(dir),
        live,
    })
}

/// `GET /cluster` of the first coordinator that answers within a few seconds, summed up.
async fn ask_cluster(instances: &[InstanceView]) -> Result<String, String> {
    let urls: Vec<String> = instances
        .iter()
        .filter(|i| i.role == COORDINATOR_ROLE && i.state == "running")
        .filter_map(|i| i.public_ip.as_ref().map(|ip| format!("http://{ip}:{API_PORT}")))
        .collect();
    let mut why = String::from("no running coordinator with a public address");
    for url in urls {
        let client = wire::client::ApiClient::new(url.clone());
        match tokio::time::timeout(Duration::from_secs(3), client.cluster()).await {
            Ok(Ok(view)) => {
                let voters: Vec<String> = view.voters.iter().map(|v| v.id.to_string()).collect();
                return Ok(format!(
                    "leader {}, term {}, voters {}, {} queued, {} running, {} workers (from {url})",
                    view.leader.map_or("none".to_owned(), |l| l.to_string()),
                    view.term,
                    voters.join(" "),
                    view.queue.queued,
                    view.queue.running,
                    view.workers.len()
                ));
            }
            Ok(Err(e)) => why = format!("{url}: {e}"),
            Err(_) => why = format!("{url}: no answer within 3 s"),
        }
    }
    Err(why)
}

/// `deploy aws down`: terminate every instance of the cluster and wait for them, then delete the
/// security group, the key pair and the operator's state. Harmless when nothing is left.
pub async fn down(options: &AwsOptions) -> anyhow::Result<Vec<String>> {
    let dir = options.state_dir()?;
    let cloud = options.cloud().await?;
    let mut done = Vec::new();
    let live = cloud.instances(&LIVE_STATES).await?;
    if !live.is_empty() {
        let ids: Vec<String> = live.iter().map(|i| i.instance_id.clone()).collect();
        cloud.client.terminate_instances(&ids).await.context("TerminateInstances")?;
        done.push(format!("terminated {}", ids.join(", ")));
    }
    cloud.wait_until_none(&["pending", "running", "stopping", "stopped", "shutting-down"], "terminating").await?;
    if let Some(group) = cloud.find_group().await?.and_then(|g| g.group_id().map(str::to_owned)) {
        delete_group(&cloud, &group).await?;
        done.push(format!("deleted security group {group}"));
    }
    if cloud.find_key_pair().await? {
        cloud.sdk.delete_key_pair().key_name(cloud.key_name()).send().await.context("DeleteKeyPair")?;
        done.push(format!("deleted key pair {}", cloud.key_name()));
    }
    for path in [key_file(&dir), state_file(&dir)] {
        match std::fs::remove_file(&path) {
            Ok(()) => done.push(format!("removed {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(done)
}

/// Delete the group, retrying while EC2 still counts a terminated instance's interface in it.
async fn delete_group(cloud: &Cloud, group: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        match cloud.sdk.delete_security_group().group_id(group).send().await {
            Ok(_) => return Ok(()),
            Err(e) => {
                let dependency = e.as_service_error().and_then(|s| s.meta().code()) == Some("DependencyViolation");
                if !dependency || Instant::now() >= deadline {
                    return Err(anyhow::Error::new(e).context(format!("DeleteSecurityGroup {group}")));
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_fit_tags_and_names() {
        for good in ["tandem", "blue-2", "a"] {
            check_name(good).expect(good);
        }
        for bad in ["", "Blue", "a b", "x/y", &"a".repeat(33)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_state_directory_inside_a_git_work_tree_is_refused() {
        let root = tempfile::TempDir::new().expect("temp dir");
        std::fs::create_dir(root.path().join(".git")).expect(".git");
        let options = AwsOptions {
            cluster_name: "t".into(),
            region: None,
            endpoint_url: None,
            state_dir: Some(root.path().join("state")),
        };
        let error = options.state_dir().expect_err("inside a work tree");
        assert!(error.to_string().contains("git work tree"), "{error}");
    }

    #[test]
    fn the_state_is_private_and_keeps_its_secrets_across_runs() {
        let root = tempfile::TempDir::new().expect("temp dir");
        let dir = root.path().join("state");
        let first = load_or_create_state(&dir, "t").expect("created");
        let mode = std::fs::metadata(state_file(&dir)).expect("state file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777, 0o700);
        assert_ne!(first.cluster_secret, first.admin_token);
        assert_eq!(load_or_create_state(&dir, "t").expect("read"), first);
        let error = load_or_create_state(&dir, "other").expect_err("another cluster's state");
        assert!(error.to_string().contains("belongs to cluster"), "{error}");
    }

    #[test]
    fn the_printed_scrape_configuration_is_one_prometheus_accepts() {
        let view = ClusterView { cluster: "blue".into(), region: "eu-west-1".into(), ..ClusterView::default() };
        let dir = tempfile::TempDir::new().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, view.scrape_config()).expect("write");
        let output = std::process::Command::new("promtool")
            .args(["check", "config", "--syntax-only"])
            .arg(&config)
            .output()
            .expect("promtool is installed by ./scripts/test (Debian package prometheus)");
        let said = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "promtool: {said}\n{}", view.scrape_config());
        assert!(view.describe().contains("job_name: tandem-blue"));
    }

    #[test]
    fn the_glibc_a_binary_needs_is_the_newest_version_it_names() {
        let binary = b"\x7fELF...GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.17\0GLIBC_PRIVATE\0GLIBC_2.";
        assert_eq!(required_glibc(binary), Some((2, 34)));
        assert_eq!(required_glibc(b"static, no glibc"), None);
        // This workspace's own build, as the tests run it, is what up would check.
        let own = std::fs::read(std::env::current_exe().expect("this test binary")).expect("read it");
        assert!(required_glibc(&own).is_some_and(|(major, minor)| major == 2 && minor >= 2));
    }

    #[test]
    fn the_prepare_script_holds_no_secret_and_restarts_the_process() {
        for role in [Role::Coordinator, Role::Witness] {
            let script = prepare_script(role);
            assert!(script.contains("Restart=always") && script.contains("WantedBy=multi-user.target"), "{script}");
            assert!(!script.to_ascii_lowercase().contains("secret="), "{script}");
            refuse_aws_keys(&script, None).expect("no AWS key");
        }
    }
}
