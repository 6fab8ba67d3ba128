//! Where workers come from: the machines the leader's autoscaler launches and terminates.
//!
//! One trait, [`Provider`], over two kinds of machine: worker processes on this host
//! ([`local::LocalProcesses`], the embedded default) and EC2 instances (`ec2`, feature `aws`).
//! The autoscaler commits each launch with an idempotency token before it calls
//! [`Provider::launch`], and a provider must honour the token: launching twice with one token
//! starts one machine. [`Provider::list`] shows every machine of this cluster, whoever
//! launched it, so that a new leader can adopt what its predecessor started and terminate
//! what nobody committed.
//!
//! Each launch also carries the worker's one-time join secret: the leader committed only its
//! SHA-256, and the worker exchanges it once at `/worker/join` for the cluster secret. A provider
//! whose launch data others can read (EC2's user-data) hands the worker that join secret and
//! never the cluster secret; one that starts processes on this host may give them the cluster
//! secret in their environment instead, as `deploy local` does.

use std::future::Future;

#[cfg(feature = "aws")]
pub mod ec2;
pub mod local;

/// One machine a provider launched for this cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The provider's id for it (an EC2 instance id; `local-<token>` for a local process).
    pub instance_id: String,
    /// The idempotency token it was launched with.
    pub token: Option<String>,
    /// When it was launched (ms since the Unix epoch), if the provider knows.
    pub launched_at_ms: Option<u64>,
    /// For a worker launched in the witness role: the node id of the voter it runs. While that
    /// id is a member, the machine is the cluster's voter, whoever launched it, and only the
    /// voter-replacement path may end it.
    pub voter_id: Option<u64>,
}

/// A worker launched in the witness role: it also runs the cluster's third voter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessInstance {
    /// The machine.
    pub instance: Instance,
    /// Where its voter's Raft routes listen, as the coordinators reach them (`host:port`).
    pub raft_addr: String,
}

/// What kind of failure a provider reports: the autoscaler backs off on each, and an operator
/// needs to tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderErrorKind {
    /// No capacity for this instance type or zone right now (`InsufficientInstanceCapacity`).
    Capacity,
    /// An account limit (`VcpuLimitExceeded`, `InstanceLimitExceeded`): needs an operator.
    Quota,
    /// The API asked to slow down (`RequestLimitExceeded`).
    Throttled,
    /// The provider's configuration is wrong (an unknown AMI, a missing binary): needs an
    /// operator.
    Configuration,
    /// Anything else (a network error, an unexpected answer).
    Other,
}

/// Why a provider call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ProviderError {
    /// What kind of failure.
    pub kind: ProviderErrorKind,
    /// What the provider said.
    pub message: String,
}

impl ProviderError {
    /// A failure of `kind` saying `message`.
    pub fn new(kind: ProviderErrorKind, message: impl Into<String>) -> Self {
        ProviderError { kind, message: message.into() }
    }
}

/// Launches, lists and terminates this cluster's worker machines.
pub trait Provider: Send + Sync + 'static {
    /// Launch one worker machine under `token`, its worker given `join_secret` to exchange for
    /// the cluster secret, or return the one already launched under `token` (whose worker has
    /// the join secret it was launched with).
    fn launch(&self, token: &str, join_secret: &str) -> impl Future<Output = Result<Instance, ProviderError>> + Send;

    /// Terminate `instance_id`; terminating one already gone succeeds.
    fn terminate(&self, instance_id: &str) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Every live machine of this cluster, whoever launched it.
    fn list(&self) -> impl Future<Output = Result<Vec<Instance>, ProviderError>> + Send;

    /// Launch one worker in the witness role under `token`, its voter under the new node id
    /// `node_id` with an empty data directory, or return the one already launched under
    /// `token`; `join_secret` as for [`Provider::launch`]. A provider that cannot says so with
    /// a configuration error.
    fn launch_witness(
        &self,
        token: &str,
        node_id: u64,
        join_secret: &str,
    ) -> impl Future<Output = Result<WitnessInstance, ProviderError>> + Send {
        let _ = (token, node_id, join_secret);
        std::future::ready(Err(ProviderError::new(
            ProviderErrorKind::Configuration,
            "this provider does not launch witnesses: replace the witness by hand (README, replacing a voter)",
        )))
    }
}

/// A shared provider (the autoscaler and the witness's care use one).
impl<P: Provider> Provider for std::sync::Arc<P> {
    fn launch(&self, token: &str, join_secret: &str) -> impl Future<Output = Result<Instance, ProviderError>> + Send {
        (**self).launch(token, join_secret)
    }

    fn terminate(&self, instance_id: &str) -> impl Future<Output = Result<(), ProviderError>> + Send {
        (**self).terminate(instance_id)
    }

    fn list(&self) -> impl Future<Output = Result<Vec<Instance>, ProviderError>> + Send {
        (**self).list()
    }

    fn launch_witness(
        &self,
        token: &str,
        node_id: u64,
        join_secret: &str,
    ) -> impl Future<Output = Result<WitnessInstance, ProviderError>> + Send {
        (**self).launch_witness(token, node_id, join_secret)
    }
}
