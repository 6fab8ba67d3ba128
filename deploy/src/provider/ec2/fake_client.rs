//! An in-memory EC2 for the provider's unit tests: what moto cannot show. It honours
//! `ClientToken` as EC2 does, can lag `DescribeInstances` behind `RunInstances` (EC2 is eventually
//! consistent), answer `RunInstances` before a private IP is given, start nothing, fail with
//! chosen error codes, and paginate.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::client::{DescribeFilter, DescribePage, Ec2CallError, Ec2Client, InstanceDescription};
use super::launch::LaunchRequest;

/// One instance the fake holds.
#[derive(Clone, Debug)]
pub(super) struct FakeInstance {
    pub description: InstanceDescription,
    pub client_token: Option<String>,
    /// Whether `DescribeInstances` shows it yet.
    pub visible: bool,
}

/// Everything the fake holds and was asked.
#[derive(Debug, Default)]
pub(super) struct FakeState {
    pub instances: Vec<FakeInstance>,
    /// Errors the next `RunInstances` calls fail with, in order.
    pub run_errors: VecDeque<Ec2CallError>,
    /// `RunInstances` answers with no instance (and starts none).
    pub start_nothing: bool,
    /// Instances `RunInstances` starts are not yet shown by `DescribeInstances`.
    pub describe_lags: bool,
    /// `RunInstances` answers without the private IP; `DescribeInstances` shows it.
    pub run_answer_lacks_private_ip: bool,
    /// Instances `RunInstances` starts get no private IP at all.
    pub no_private_ip: bool,
    /// Instances on one `DescribeInstances` page (0: all).
    pub page_size: usize,
    /// Every `RunInstances` request.
    pub run_requests: Vec<LaunchRequest>,
    /// Every `DescribeInstances` call.
    pub describe_calls: usize,
    /// Every `TerminateInstances` call's ids.
    pub terminate_calls: Vec<Vec<String>>,
    next_id: u64,
}

/// The fake EC2.
#[derive(Debug, Default)]
pub(super) struct FakeEc2 {
    pub state: Mutex<FakeState>,
}

impl FakeEc2 {
    /// Run `f` on the state.
    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().expect("fake EC2 state poisoned"))
    }

    /// Add a running instance with `tags`, as another launcher would; its id.
    pub fn add_instance(&self, tags: &[(&str, &str)], launched_at_ms: u64) -> String {
        self.with(|state| {
            let instance_id = state.new_id();
            state.instances.push(FakeInstance {
                description: InstanceDescription {
                    instance_id: instance_id.clone(),
                    state: Some("running".into()),
                    tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    launched_at_ms: Some(launched_at_ms),
                    private_ip: Some(format!("10.1.0.{}", state.next_id)),
                    public_ip: None,
                },
                client_token: None,
                visible: true,
            });
            instance_id
        })
    }

    /// The state of `instance_id`.
    pub fn state_of(&self, instance_id: &str) -> Option<String> {
        self.with(|state| {
            state.instances.iter().find(|i| i.description.instance_id == instance_id)?.description.state.clone()
        })
    }

    /// Instances ever started by `RunInstances`.
    pub fn started(&self) -> usize {
        self.with(|state| state.instances.iter().filter(|i| i.client_token.is_some()).count())
    }
}

impl FakeState {
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("i-{:017x}", self.next_id)
    }
}

fn matches(instance: &InstanceDescription, filter: &DescribeFilter) -> bool {
    let value = match filter.name.as_str() {
        "instance-id" => Some(instance.instance_id.as_str()),
        "instance-state-name" => instance.state.as_deref(),
        name => match name.strip_prefix("tag:") {
            Some(key) => instance.tag(key),
            None => panic!("the fake knows no filter {name}"),
        },
    };
    value.is_some_and(|value| filter.values.iter().any(|v| v == value))
}

impl Ec2Client for FakeEc2 {
    async fn run_instances(&self, request: &LaunchRequest) -> Result<Vec<InstanceDescription>, Ec2CallError> {
        self.with(|state| {
            state.run_requests.push(request.clone());
            if let Some(error) = state.run_errors.pop_front() {
                return Err(error);
            }
            if let Some(seen) =
                state.instances.iter().find(|i| i.client_token.as_deref() == Some(request.client_token.as_str()))
            {
                let mut answer = seen.description.clone();
                if state.run_answer_lacks_private_ip {
                    answer.private_ip = None;
                }
                return Ok(vec![answer]);
            }
            if state.start_nothing {
                return Ok(Vec::new());
            }
            let instance_id = state.new_id();
            let description = InstanceDescription {
                instance_id,
                state: Some("pending".into()),
                tags: request.tags.clone(),
                launched_at_ms: Some(1_700_000_000_000 + state.next_id),
                private_ip: (!state.no_private_ip).then(|| format!("10.0.0.{}", state.next_id)),
                public_ip: None,
            };
            let visible = !state.describe_lags;
            state.instances.push(FakeInstance {
                description: description.clone(),
                client_token: Some(request.client_token.clone()),
                visible,
            });
            let mut answer = description;
            if state.run_answer_lacks_private_ip {
                answer.private_ip = None;
            }
            Ok(vec![answer])
        })
    }

    async fn describe_instances(
        &self,
        filters: &[DescribeFilter],
        next_token: Option<&str>,
    ) -> Result<DescribePage, Ec2CallError> {
        self.with(|state| {
            state.describe_calls += 1;
            let matching: Vec<InstanceDescription> = state
                .instances
                .iter()
                .filter(|i| i.visible && filters.iter().all(|f| matches(&i.description, f)))
                .map(|i| i.description.clone())
                .collect();
            let start: usize = next_token.map_or(0, |t| t.parse().expect("a token the fake gave"));
            let size = if state.page_size == 0 { matching.len() } else { state.page_size };
            let end = (start + size).min(matching.len());
            Ok(DescribePage {
                instances: matching[start..end].to_vec(),
                next_token: (end < matching.len()).then(|| end.to_string()),
            })
        })
    }

    async fn terminate_instances(&self, instance_ids: &[String]) -> Result<(), Ec2CallError> {
        self.with(|state| {
            state.terminate_calls.push(instance_ids.to_vec());
            for id in instance_ids {
                let Some(instance) = state.instances.iter_mut().find(|i| &i.description.instance_id == id) else {
                    return Err(Ec2CallError {
                        code: Some("InvalidInstanceID.NotFound".into()),
                        message: format!("The instance ID '{id}' does not exist"),
                    });
                };
                instance.description.state = Some("terminated".into());
            }
            Ok(())
        })
    }
}
