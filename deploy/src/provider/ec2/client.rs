//! The EC2 calls the provider makes, as a seam: [`Ec2Client`] over plain types, implemented by
//! the SDK ([`SdkEc2Client`]) and, in unit tests, by a fake that shows what moto cannot
//! (`ClientToken` idempotency, partial fulfilment, capacity and quota errors).

use std::future::Future;

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::types::{
    Filter, HttpTokensState, IamInstanceProfileSpecification, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceType, ResourceType, ShutdownBehavior, Tag, TagSpecification,
};

use super::launch::{InstanceProfile, LaunchRequest};

/// An instance as `RunInstances` or `DescribeInstances` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceDescription {
    /// Its id (`i-0123...`).
    pub instance_id: String,
    /// Its state's name (`pending`, `running`, `shutting-down`, `terminated`, ...), if given.
    pub state: Option<String>,
    /// Its tags.
    pub tags: Vec<(String, String)>,
    /// When it was launched, in ms since the Unix epoch, if given.
    pub launched_at_ms: Option<u64>,
    /// Its primary private IPv4 address, once EC2 gives it one.
    pub private_ip: Option<String>,
    /// Its public IPv4 address, if it has one.
    pub public_ip: Option<String>,
}

impl InstanceDescription {
    /// The value of its tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Whether it is gone or going (`shutting-down`, `terminated`).
    pub fn is_ending(&self) -> bool {
        matches!(self.state.as_deref(), Some("shutting-down" | "terminated"))
    }
}

/// A `DescribeInstances` filter: `name` is one of `values`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribeFilter {
    /// The filter's name (`tag:tandem:cluster`, `instance-state-name`, `instance-id`).
    pub name: String,
    /// The values it accepts.
    pub values: Vec<String>,
}

impl DescribeFilter {
    /// `name` is one of `values`.
    pub fn new(name: impl Into<String>, values: impl IntoIterator<Item = impl Into<String>>) -> Self {
        DescribeFilter { name: name.into(), values: values.into_iter().map(Into::into).collect() }
    }
}

/// One page of `DescribeInstances`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DescribePage {
    /// The instances on it.
    pub instances: Vec<InstanceDescription>,
    /// The token of the next page, if there is one.
    pub next_token: Option<String>,
}

/// A failed EC2 call: the API's error code, if it answered with one, and everything said.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Ec2CallError {
    /// The error code (`InsufficientInstanceCapacity`), if the API answered with one; none for a
    /// network failure or a timeout.
    pub code: Option<String>,
    /// The whole error, with its sources.
    pub message: String,
}

/// The EC2 calls the provider makes.
pub trait Ec2Client: Send + Sync + 'static {
    /// `RunInstances` for one instance: the instances it started (or, for a `ClientToken` seen
    /// before, the ones the first request started).
    fn run_instances(
        &self,
        request: &LaunchRequest,
    ) -> impl Future<Output = Result<Vec<InstanceDescription>, Ec2CallError>> + Send;

    /// One page of `DescribeInstances` matching every filter.
    fn describe_instances(
        &self,
        filters: &[DescribeFilter],
        next_token: Option<&str>,
    ) -> impl Future<Output = Result<DescribePage, Ec2CallError>> + Send;

    /// `TerminateInstances`.
    fn terminate_instances(&self, instance_ids: &[String]) -> impl Future<Output = Result<(), Ec2CallError>> + Send;
}

/// One client shared by several providers (a test's old and new leader).
impl<C: Ec2Client> Ec2Client for std::sync::Arc<C> {
    fn run_instances(
        &self,
        request: &LaunchRequest,
    ) -> impl Future<Output = Result<Vec<InstanceDescription>, Ec2CallError>> + Send {
        C::run_instances(self, request)
    }

    fn describe_instances(
        &self,
        filters: &[DescribeFilter],
        next_token: Option<&str>,
    ) -> impl Future<Output = Result<DescribePage, Ec2CallError>> + Send {
        C::describe_instances(self, filters, next_token)
    }

    fn terminate_instances(&self, instance_ids: &[String]) -> impl Future<Output = Result<(), Ec2CallError>> + Send {
        C::terminate_instances(self, instance_ids)
    }
}

/// [`Ec2Client`] over the AWS SDK.
#[derive(Clone, Debug)]
pub struct SdkEc2Client {
    client: aws_sdk_ec2::Client,
}

impl SdkEc2Client {
    /// Calls through `client`.
    pub fn new(client: aws_sdk_ec2::Client) -> Self {
        SdkEc2Client { client }
    }

    /// The SDK client, for calls the provider does not make (`deploy aws`, tests).
    pub fn sdk(&self) -> &aws_sdk_ec2::Client {
        &self.client
    }
}

impl Ec2Client for SdkEc2Client {
    async fn run_instances(&self, request: &LaunchRequest) -> Result<Vec<InstanceDescription>, Ec2CallError> {
        let tags = request.tags.iter().map(|(key, value)| Tag::builder().key(key).value(value).build()).collect();
        let metadata = InstanceMetadataOptionsRequest::builder()
            .http_tokens(if request.metadata.tokens_required {
                HttpTokensState::Required
            } else {
                HttpTokensState::Optional
            })
            .http_endpoint(if request.metadata.endpoint_enabled {
                InstanceMetadataEndpointState::Enabled
            } else {
                InstanceMetadataEndpointState::Disabled
            })
            .build();
        let profile = request.instance_profile.as_ref().map(|profile| match profile {
            InstanceProfile::Name(name) => IamInstanceProfileSpecification::builder().name(name).build(),
            InstanceProfile::Arn(arn) => IamInstanceProfileSpecification::builder().arn(arn).build(),
        });
        let groups = (!request.security_group_ids.is_empty()).then(|| request.security_group_ids.clone());
        let shutdown = if request.terminate_on_shutdown { ShutdownBehavior::Terminate } else { ShutdownBehavior::Stop };
        let output = self
            .client
            .run_instances()
            .client_token(&request.client_token)
            .image_id(&request.image_id)
            .instance_type(InstanceType::from(request.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .set_subnet_id(request.subnet_id.clone())
            .set_security_group_ids(groups)
            .set_iam_instance_profile(profile)
            .user_data(request.user_data_base64())
            .tag_specifications(
                TagSpecification::builder().resource_type(ResourceType::Instance).set_tags(Some(tags)).build(),
            )
            .metadata_options(metadata)
            .instance_initiated_shutdown_behavior(shutdown)
            .send()
            .await
            .map_err(call_error)?;
        Ok(output.instances().iter().map(describe).collect())
    }

    async fn describe_instances(
        &self,
        filters: &[DescribeFilter],
        next_token: Option<&str>,
    ) -> Result<DescribePage, Ec2CallError> {
        let filters = filters
            .iter()
            .map(|filter| Filter::builder().name(&filter.name).set_values(Some(filter.values.clone())).build())
            .collect();
        let output = self
            .client
            .describe_instances()
            .set_filters(Some(filters))
            .set_next_token(next_token.map(str::to_owned))
            .send()
            .await
            .map_err(call_error)?;
        Ok(DescribePage {
            instances: output.reservations().iter().flat_map(|r| r.instances()).map(describe).collect(),
            next_token: output.next_token().filter(|token| !token.is_empty()).map(str::to_owned),
        })
    }

    async fn terminate_instances(&self, instance_ids: &[String]) -> Result<(), Ec2CallError> {
        self.client
            .terminate_instances()
            .set_instance_ids(Some(instance_ids.to_vec()))
            .send()
            .await
            .map_err(call_error)?;
        Ok(())
    }
}

/// `DescribeInstances` pages read before giving up on a listing (at EC2's default of 1000
/// instances a page, far past any cluster).
const MAX_PAGES: usize = 100;

/// Every instance matching `filters`, over all pages (at most [`MAX_PAGES`]).
pub async fn describe_all<C: Ec2Client>(
    client: &C,
    filters: &[DescribeFilter],
) -> Result<Vec<InstanceDescription>, Ec2CallError> {
    let mut instances = Vec::new();
    let mut next_token: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let page = client.describe_instances(filters, next_token.as_deref()).await?;
        instances.extend(page.instances);
        match page.next_token {
            Some(token) => next_token = Some(token),
            None => return Ok(instances),
        }
    }
    Err(Ec2CallError { code: None, message: format!("DescribeInstances gave more than {MAX_PAGES} pages") })
}

fn describe(instance: &aws_sdk_ec2::types::Instance) -> InstanceDescription {
    InstanceDescription {
        instance_id: instance.instance_id().unwrap_or_default().to_owned(),
        state: instance.state().and_then(|s| s.name()).map(|name| name.as_str().to_owned()),
        tags: instance
            .tags()
            .iter()
            .map(|tag| (tag.key().unwrap_or_default().to_owned(), tag.value().unwrap_or_default().to_owned()))
            .collect(),
        launched_at_ms: instance.launch_time().and_then(|t| t.to_millis().ok()).and_then(|ms| u64::try_from(ms).ok()),
        private_ip: instance.private_ip_address().filter(|ip| !ip.is_empty()).map(str::to_owned),
        public_ip: instance.public_ip_address().filter(|ip| !ip.is_empty()).map(str::to_owned),
    }
}

fn call_error<E>(error: E) -> Ec2CallError
where
    E: ProvideErrorMetadata + std::error::Error,
{
    Ec2CallError { code: error.code().map(str::to_owned), message: DisplayErrorContext(&error).to_string() }
}
