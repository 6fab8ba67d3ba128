//! Starting Tandem clusters. Knows processes and addresses, nothing of Raft.
//!
//! - `aws` (feature `aws`): `deploy aws up | status | down`, a cluster's EC2 resources.
//! - [`iam`]: the AWS permissions of a cluster's machines, as policy documents.
//! - [`leaks`]: finding AWS credentials in text.
//! - [`local`]: the embedded default, every voter and worker a process on 127.0.0.1.
//! - [`provider`]: the machines the leader's autoscaler launches: local processes, or EC2 instances.
//! - [`ssh`]: a host reached with the operator's OpenSSH client.
//! - [`voters`]: what a voter's host runs, and the script that installs it there.

#[cfg(feature = "aws")]
pub mod aws;
pub mod iam;
pub mod leaks;
pub mod local;
pub mod provider;
pub mod ssh;
pub mod voters;
