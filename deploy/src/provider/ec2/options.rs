//! The EC2 provider's configuration, as flags and environment variables of whichever binary runs
//! it (the coordinator flattens [`Ec2Options`] into its own clap struct).

use super::super::{ProviderError, ProviderErrorKind};
use super::launch::{DEFAULT_WITNESS_PORT, DEFAULT_WORKER_BINARY, InstanceProfile, WorkerBinary, WorkerLaunch};

/// Where and how the EC2 provider launches workers. Credentials come only from the standard AWS
/// chain (environment, profile, the instance's role); none is a flag.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct Ec2Options {
    /// The cluster's name, tagged `tandem:cluster=<name>` on every instance it launches: the
    /// provider lists and terminates only instances carrying it.
    #[arg(long = "ec2-cluster-name", env = "TANDEM_EC2_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// The workers' AMI (it must have the worker binary, unless --ec2-worker-binary is a URL).
    #[arg(long = "ec2-ami", env = "TANDEM_EC2_AMI")]
    pub ami: Option<String>,
    /// The workers' instance type.
    #[arg(long = "ec2-instance-type", env = "TANDEM_EC2_INSTANCE_TYPE", default_value = "c7i.large")]
    pub instance_type: String,
    /// The workers' subnet (unset: the default VPC's).
    #[arg(long = "ec2-subnet", env = "TANDEM_EC2_SUBNET")]
    pub subnet: Option<String>,
    /// The workers' security groups, comma-separated or repeated (unset: the VPC's default).
    #[arg(long = "ec2-security-group", env = "TANDEM_EC2_SECURITY_GROUPS", value_delimiter = ',')]
    pub security_groups: Vec<String>,
    /// The workers' IAM instance profile, by name or ARN (unset: none; workers call no AWS API).
    #[arg(long = "ec2-instance-profile", env = "TANDEM_EC2_INSTANCE_PROFILE")]
    pub instance_profile: Option<String>,
    /// The region (unset: from the AWS chain, AWS_REGION or the profile).
    #[arg(long = "ec2-region", env = "TANDEM_EC2_REGION")]
    pub region: Option<String>,
    /// Another EC2 endpoint (moto's server in tests).
    #[arg(long = "ec2-endpoint-url", env = "TANDEM_EC2_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// The worker binary: a path on the AMI; `coordinators`, each instance downloading at boot
    /// the one the coordinators serve (`--worker-binary-file`); or an http(s) URL each instance
    /// downloads at boot (with --ec2-worker-binary-sha256). A download runs only if its SHA-256
    /// matches.
    #[arg(long = "ec2-worker-binary", env = "TANDEM_EC2_WORKER_BINARY", default_value = DEFAULT_WORKER_BINARY)]
    pub worker_binary: String,
    /// The SHA-256 (hex) of the binary at the --ec2-worker-binary URL.
    #[arg(long = "ec2-worker-binary-sha256", env = "TANDEM_EC2_WORKER_BINARY_SHA256")]
    pub worker_binary_sha256: Option<String>,
    /// The coordinators' base URLs as the workers reach them, comma-separated or repeated.
    #[arg(long = "ec2-coordinators", env = "TANDEM_EC2_COORDINATORS", value_delimiter = ',')]
    pub coordinators: Vec<String>,
    /// A worker that reaches no coordinator for this long exits and terminates its instance.
    #[arg(long = "ec2-worker-give-up-after-ms", env = "TANDEM_EC2_WORKER_GIVE_UP_AFTER_MS", default_value_t = 900_000)]
    pub worker_give_up_after_ms: u64,
    /// The port the Raft routes of a witness the leader launches (to replace a lost one) listen
    /// on; the coordinators reach it at the instance's private IPv4, so their security group
    /// must be let in on it.
    #[arg(long = "ec2-witness-port", env = "TANDEM_EC2_WITNESS_PORT", default_value_t = DEFAULT_WITNESS_PORT)]
    pub witness_port: u16,
}

impl Ec2Options {
    /// The settings of this cluster's worker launches, checked. `aws_secret_access_key` is the
    /// secret key this process's credentials use, if it knows it: a launch whose user-data holds
    /// it is refused. `served_sha256` is the SHA-256 of the worker binary this coordinator
    /// serves, if it serves one.
    pub fn worker_launch(
        &self,
        cluster_secret: Option<String>,
        aws_secret_access_key: Option<String>,
        served_sha256: Option<&str>,
    ) -> Result<WorkerLaunch, ProviderError> {
        let required = |value: &Option<String>, flag: &str| {
            value.clone().ok_or_else(|| {
                ProviderError::new(ProviderErrorKind::Configuration, format!("the EC2 provider needs {flag}"))
            })
        };
        let launch = WorkerLaunch {
            cluster_name: required(&self.cluster_name, "--ec2-cluster-name (TANDEM_EC2_CLUSTER_NAME)")?,
            image_id: required(&self.ami, "--ec2-ami (TANDEM_EC2_AMI)")?,
            instance_type: self.instance_type.clone(),
            subnet_id: self.subnet.clone(),
            security_group_ids: self.security_groups.clone(),
            instance_profile: self.instance_profile.as_deref().map(InstanceProfile::parse),
            coordinators: self.coordinators.clone(),
            worker_binary: WorkerBinary::from_flags(
                &self.worker_binary,
                self.worker_binary_sha256.as_deref(),
                served_sha256,
            )?,
            give_up_after_ms: self.worker_give_up_after_ms,
            witness_port: self.witness_port,
            cluster_secret,
            aws_secret_access_key,
        };
        launch.validate()?;
        Ok(launch)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        ec2: Ec2Options,
    }

    #[test]
    fn flags_become_a_checked_worker_launch() {
        let cli = Cli::try_parse_from([
            "coordinator",
            "--ec2-cluster-name=blue",
            "--ec2-ami=ami-1",
            "--ec2-subnet=subnet-1",
            "--ec2-security-group=sg-1,sg-2",
            "--ec2-instance-profile=tandem-worker",
            "--ec2-coordinators=http://10.0.0.1:8080,http://10.0.0.2:8080",
        ])
        .expect("valid flags");
        assert_eq!(cli.ec2.instance_type, "c7i.large");
        assert_eq!(cli.ec2.worker_binary, DEFAULT_WORKER_BINARY);
        assert_eq!(cli.ec2.witness_port, 8090, "the witness's port in the default --member");
        let launch = cli.ec2.worker_launch(Some("secret".into()), None, None).expect("valid settings");
        assert_eq!(launch.security_group_ids, vec!["sg-1".to_owned(), "sg-2".to_owned()]);
        assert_eq!(launch.instance_profile, Some(InstanceProfile::Name("tandem-worker".into())));
        assert_eq!(launch.worker_binary, WorkerBinary::Path(DEFAULT_WORKER_BINARY.into()));
        assert_eq!(launch.coordinators.len(), 2);
    }

    #[test]
    fn missing_settings_are_named() {
        let cli = Cli::try_parse_from(["coordinator"]).expect("every EC2 flag is optional to clap");
        let error = cli.ec2.worker_launch(None, None, None).expect_err("no cluster name");
        assert_eq!(error.kind, ProviderErrorKind::Configuration);
        assert!(error.message.contains("--ec2-cluster-name"), "{error}");
        let cli = Cli::try_parse_from(["coordinator", "--ec2-cluster-name=blue", "--ec2-ami=ami-1"]).expect("flags");
        let error = cli.ec2.worker_launch(None, None, None).expect_err("no coordinators");
        assert!(error.message.contains("--ec2-coordinators"), "{error}");
        let cli = Cli::try_parse_from([
            "coordinator",
            "--ec2-cluster-name=blue",
            "--ec2-ami=ami-1",
            "--ec2-coordinators=http://10.0.0.1:8080",
            "--ec2-witness-port=0",
        ])
        .expect("flags");
        let error = cli.ec2.worker_launch(None, None, None).expect_err("witness port 0");
        assert_eq!(error.kind, ProviderErrorKind::Configuration);
        assert!(error.message.contains("--ec2-witness-port"), "{error}");
    }
}
