//! Workers as EC2 instances (feature `aws`).
//!
//! - [`launch`]: what a worker launch is (tags, user-data, metadata options), pure, shared with
//!   `deploy aws`.
//! - [`client`]: the few EC2 calls made, behind [`Ec2Client`], over the SDK or a test's fake.
//! - [`Ec2Options`]: the flags, validated into a [`WorkerLaunch`].
//! - [`Ec2Provider`]: the [`Provider`] over them.
//!
//! Every instance is tagged at launch with its cluster, its role and its launch token. The token
//! is also the `ClientToken`, so EC2 itself answers a retried launch with the first one's
//! instance; and a launch first looks for an instance tagged with its token, so a leader that
//! takes over a launch its predecessor made finds that instance even where `ClientToken` does not
//! reach (an emulator, an expired token). The provider lists and terminates only instances tagged
//! as this cluster's workers: a wrong instance id cannot end another cluster's machines, nor
//! this cluster's coordinators.
//!
//! A witness (a worker that also runs a Raft voter, launched by the leader to replace a lost
//! witness) is such a worker, tagged besides with its voter's id; its voter listens on
//! `--ec2-witness-port` of every address, and the coordinators reach it at the instance's private
//! IPv4, so their security group must be let in on that port.
//!
//! Credentials come only from the standard AWS chain; the region from `--ec2-region` or the
//! chain. Nothing the provider writes holds an AWS key: see [`launch::refuse_aws_keys`]; nor the
//! cluster secret: a worker's user-data holds its launch's one-time join secret instead.

pub mod client;
pub mod launch;
mod options;

#[cfg(test)]
mod fake_client;
#[cfg(test)]
mod tests;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::Region;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// The SDK the provider is built on, for tests that look at EC2 behind the provider's back
/// (`deploy/tests/common/moto.rs`).
pub use aws_sdk_ec2;
/// See [`aws_sdk_ec2`] (its base64, for user-data).
pub use aws_smithy_types;
pub use client::{Ec2CallError, Ec2Client, SdkEc2Client};
pub use launch::WorkerLaunch;
pub use options::Ec2Options;

use self::client::{DescribeFilter, InstanceDescription};
use self::launch::{CLUSTER_TAG, LAUNCH_TOKEN_TAG, LaunchRequest, ROLE_TAG, VOTER_ID_TAG, WORKER_ROLE};
use super::{Instance, Provider, ProviderError, ProviderErrorKind, WitnessInstance};

/// Instance states the provider (and `deploy aws`) lists: every one but `shutting-down` and
/// `terminated`.
pub const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];
/// One attempt of one call: EC2 answers in seconds, and a launch must not hang for half an hour.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// One call, with the SDK's retries.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// `DescribeInstances` calls a witness launch makes for a private IP its `RunInstances` answer
/// lacked (EC2 gives one at launch in a VPC; the describing is for an answer that came early).
const PRIVATE_IP_ATTEMPTS: u32 = 10;
/// The pause between those.
const PRIVATE_IP_RETRY: Duration = Duration::from_secs(1);

/// Launches, lists and terminates this cluster's workers as EC2 instances.
#[derive(Debug)]
pub struct Ec2Provider<C = SdkEc2Client> {
    launch: WorkerLaunch,
    client: C,
    /// [`PRIVATE_IP_RETRY`], but in tests.
    private_ip_retry: Duration,
}

impl Ec2Provider<SdkEc2Client> {
    /// The provider configured by `options`, with credentials from the standard AWS chain.
    /// `cluster_secret` never goes to a worker's instance: each gets its launch's one-time join
    /// secret instead, and exchanges it for the cluster secret at `/worker/join`; the provider
    /// knows the cluster secret only to refuse a script that would hold it.
    /// `served_sha256` is the SHA-256 of the worker binary the coordinator running the
    /// provider serves (`--worker-binary-file`), if it serves one.
    pub async fn new(
        options: &Ec2Options,
        cluster_secret: Option<String>,
        served_sha256: Option<&str>,
    ) -> Result<Self, ProviderError> {
        let aws_secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok().filter(|key| !key.is_empty());
        let launch = options.worker_launch(cluster_secret, aws_secret, served_sha256)?;
        let client = sdk_client(options.region.as_deref(), options.endpoint_url.as_deref()).await.map_err(|e| {
            ProviderError::new(ProviderErrorKind::Configuration, e.with_flag("--ec2-region (TANDEM_EC2_REGION)"))
        })?;
        Ok(Ec2Provider::with_client(launch, client))
    }
}

/// No region was configured anywhere.
#[derive(Debug)]
pub struct NoRegion;

impl NoRegion {
    /// The message, naming the flag that sets the region.
    pub fn with_flag(&self, flag: &str) -> String {
        format!("EC2 needs a region: {flag}, AWS_REGION or a profile's")
    }
}

/// An EC2 client with credentials from the standard AWS chain (never from a flag), the region
/// given or the chain's, `endpoint_url` if given (moto's server in tests), rustls over ring and
/// bounded calls.
pub async fn sdk_client(region: Option<&str>, endpoint_url: Option<&str>) -> Result<SdkEc2Client, NoRegion> {
    let https =
        aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https();
    let timeouts =
        TimeoutConfig::builder().operation_attempt_timeout(ATTEMPT_TIMEOUT).operation_timeout(CALL_TIMEOUT).build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(https).timeout_config(timeouts);
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_owned()));
    }
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(NoRegion);
    }
    Ok(SdkEc2Client::new(aws_sdk_ec2::Client::new(&config)))
}

impl<C: Ec2Client> Ec2Provider<C> {
    /// Launches `launch` through `client`.
    pub fn with_client(launch: WorkerLaunch, client: C) -> Self {
        Ec2Provider { launch, client, private_ip_retry: PRIVATE_IP_RETRY }
    }

    /// What a launch is, for this provider.
    pub fn worker_launch(&self) -> &WorkerLaunch {
        &self.launch
    }

    /// The client it calls.
    pub fn client(&self) -> &C {
        &self.client
    }

    /// Filters matching this cluster's live workers.
    fn cluster_filters(&self) -> Vec<DescribeFilter> {
        vec![
            DescribeFilter::new(format!("tag:{CLUSTER_TAG}"), [self.launch.cluster_name.as_str()]),
            DescribeFilter::new(format!("tag:{ROLE_TAG}"), [WORKER_ROLE]),
            DescribeFilter::new("instance-state-name", LIVE_STATES),
        ]
    }

    /// Filters matching this cluster's live worker launched under `token`.
    fn token_filters(&self, token: &str) -> Vec<DescribeFilter> {
        let mut filters = self.cluster_filters();
        filters.push(DescribeFilter::new(format!("tag:{LAUNCH_TOKEN_TAG}"), [token]));
        filters
    }

    /// Every instance matching `filters`, over all pages.
    async fn describe_all(&self, filters: &[DescribeFilter]) -> Result<Vec<InstanceDescription>, ProviderError> {
        client::describe_all(&self.client, filters).await.map_err(provider_error)
    }

    /// This cluster's live workers, as EC2 describes them.
    async fn live_workers(&self) -> Result<Vec<InstanceDescription>, ProviderError> {
        let mut found = self.describe_all(&self.cluster_filters()).await?;
        // The filters say so already; an emulator may not honour them all.
        found.retain(|instance| !instance.is_ending() && self.launch.is_own_worker(&instance.tags));
        Ok(found)
    }

    /// This cluster's live worker launched under `token`, if there is one: a launch its
    /// predecessor (or an earlier call) made.
    async fn launched_under(&self, token: &str) -> Result<Option<InstanceDescription>, ProviderError> {
        let mut by_token = self.describe_all(&self.token_filters(token)).await?;
        by_token.retain(|instance| !instance.is_ending() && self.launch.is_own_worker(&instance.tags));
        Ok(by_token.into_iter().next())
    }

    /// `RunInstances` for `request`: the instance it started (or, for a `ClientToken` EC2 saw
    /// before, the first request's).
    async fn run(&self, request: &LaunchRequest) -> Result<InstanceDescription, ProviderError> {
        let started = self.client.run_instances(request).await.map_err(provider_error)?;
        started.into_iter().next().ok_or_else(|| {
            // With MinCount=1 EC2 says why it cannot start one; an answer with none is a shortfall
            // it did not explain, and the autoscaler backs off as for one it did.
            ProviderError::new(
                ProviderErrorKind::Capacity,
                format!("RunInstances started no instance for launch {} (partial fulfilment)", request.client_token),
            )
        })
    }

    /// The private IPv4 of `instance`: as described, or else as `DescribeInstances` shows it
    /// within [`PRIVATE_IP_ATTEMPTS`] calls.
    async fn private_ip(&self, instance: &InstanceDescription) -> Result<String, ProviderError> {
        if let Some(ip) = &instance.private_ip {
            return Ok(ip.clone());
        }
        let filters = [DescribeFilter::new("instance-id", [instance.instance_id.as_str()])];
        for attempt in 0..PRIVATE_IP_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(self.private_ip_retry).await;
            }
            let found = self.describe_all(&filters).await?;
            if let Some(ip) =
                found.into_iter().find(|i| i.instance_id == instance.instance_id).and_then(|i| i.private_ip)
            {
                return Ok(ip);
            }
        }
        Err(ProviderError::new(
            ProviderErrorKind::Other,
            format!(
                "{} has no private IPv4 address after {PRIVATE_IP_ATTEMPTS} DescribeInstances calls: the coordinators \
                 could not reach its witness",
                instance.instance_id
            ),
        ))
    }

    fn instance(&self, description: InstanceDescription, token: Option<&str>) -> Instance {
        Instance {
            token: description.tag(LAUNCH_TOKEN_TAG).or(token).map(str::to_owned),
            launched_at_ms: description.launched_at_ms,
            voter_id: description.tag(VOTER_ID_TAG).and_then(|id| id.parse().ok()),
            instance_id: description.instance_id,
        }
    }
}

impl<C: Ec2Client> Provider for Ec2Provider<C> {
    async fn launch(&self, token: &str, join_secret: &str) -> Result<Instance, ProviderError> {
        let request = self.launch.request(token, join_secret)?;
        if let Some(found) = self.launched_under(token).await? {
            tracing::info!(token, instance_id = %found.instance_id, "launch already made: adopting its instance");
            return Ok(self.instance(found, Some(token)));
        }
        let first = self.run(&request).await?;
        tracing::info!(token, instance_id = %first.instance_id, "launched a worker instance");
        Ok(self.instance(first, Some(token)))
    }

    async fn launch_witness(
        &self,
        token: &str,
        node_id: u64,
        join_secret: &str,
    ) -> Result<WitnessInstance, ProviderError> {
        let request = self.launch.request_witness(token, node_id, join_secret)?;
        let instance = match self.launched_under(token).await? {
            Some(found) => {
                let voter = node_id.to_string();
                if found.tag(VOTER_ID_TAG) != Some(voter.as_str()) {
                    return Err(ProviderError::new(
                        ProviderErrorKind::Other,
                        format!(
                            "{} was launched under {token} but not as the witness of voter {node_id} ({VOTER_ID_TAG}: \
                             {:?})",
                            found.instance_id,
                            found.tag(VOTER_ID_TAG)
                        ),
                    ));
                }
                tracing::info!(token, instance_id = %found.instance_id, "witness launch already made: adopting its instance");
                found
            }
            None => {
                let first = self.run(&request).await?;
                tracing::info!(token, node_id, instance_id = %first.instance_id, "launched a witness instance");
                first
            }
        };
        let raft_addr = format!("{}:{}", self.private_ip(&instance).await?, self.launch.witness_port);
        Ok(WitnessInstance { instance: self.instance(instance, Some(token)), raft_addr })
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), ProviderError> {
        let found = self.describe_all(&[DescribeFilter::new("instance-id", [instance_id])]).await?;
        let Some(instance) = found.into_iter().find(|instance| instance.instance_id == instance_id) else {
            return Ok(()); // unknown: gone long ago
        };
        if instance.state.as_deref() == Some("terminated") {
            return Ok(());
        }
        if !self.launch.is_own_worker(&instance.tags) {
            return Err(ProviderError::new(
                ProviderErrorKind::Configuration,
                format!(
                    "refusing to terminate {instance_id}: it is not tagged {CLUSTER_TAG}={} and {ROLE_TAG}={WORKER_ROLE}",
                    self.launch.cluster_name
                ),
            ));
        }
        match self.client.terminate_instances(&[instance_id.to_owned()]).await {
            Ok(()) => Ok(()),
            Err(error) if error.code.as_deref() == Some("InvalidInstanceID.NotFound") => Ok(()),
            Err(error) => Err(provider_error(error)),
        }
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        let mut instances: Vec<Instance> =
            self.live_workers().await?.into_iter().map(|instance| self.instance(instance, None)).collect();
        instances.sort_by(|a, b| (a.launched_at_ms, &a.instance_id).cmp(&(b.launched_at_ms, &b.instance_id)));
        Ok(instances)
    }
}

/// What kind of failure an EC2 error code is.
pub fn classify(code: Option<&str>) -> ProviderErrorKind {
    let Some(code) = code else {
        return ProviderErrorKind::Other;
    };
    match code {
        "VcpuLimitExceeded" | "InstanceLimitExceeded" | "MaxSpotInstanceCountExceeded" => ProviderErrorKind::Quota,
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => ProviderErrorKind::Throttled,
        "InvalidParameterValue"
        | "InvalidParameterCombination"
        | "UnauthorizedOperation"
        | "AuthFailure"
        | "OptInRequired" => ProviderErrorKind::Configuration,
        _ if code.starts_with("Insufficient") && code.ends_with("Capacity") => ProviderErrorKind::Capacity,
        _ if ["InvalidAMIID.", "InvalidSubnetID.", "InvalidGroup."].iter().any(|prefix| code.starts_with(prefix)) => {
            ProviderErrorKind::Configuration
        }
        _ => ProviderErrorKind::Other,
    }
}

fn provider_error(error: Ec2CallError) -> ProviderError {
    ProviderError::new(classify(error.code.as_deref()), error.message)
}
