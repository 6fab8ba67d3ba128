//! Tandem's Raft: everything the two coordinators and the witness agree on.
//!
//! - [`type_config`]: openraft's type configuration and the voters' [`NodeInfo`]; the only
//!   module that spells openraft's generic parameters.
//! - [`job_table`]: the pure, deterministic job state machine ([`JobTable::apply`]).
//! - [`wal`] and [`log_store`]: the durable Raft log, a checksummed write-ahead log with group
//!   commit, crash recovery and compaction.
//! - [`state_machine`]: openraft's state machine over the job table, with snapshots on disk.
//! - [`network`]: the voters' HTTP transport (axum routes and a shared reqwest client).
//! - [`node`]: the API the coordinator and the witness use: start, initialize, propose, read
//!   barrier, leadership, membership, and views of the voter's state in Tandem's types
//!   ([`node::NodeView`], [`node::VoterStatus`]).
//! - [`raft_metrics`]: the `tandem_raft_*` Prometheus gauges, for coordinators and the witness.
//! - `test_cluster` (feature `test-util`): three voters in one process, for tests and
//!   measurements; it does not ship in the coordinator or the worker.
//!
//! This crate knows nothing of the client API, EC2 or scaling policy.

pub mod job_table;
pub mod log_store;
pub mod network;
pub mod node;
pub mod raft_metrics;
pub mod server;
pub mod state_machine;
#[cfg(any(test, feature = "test-util"))]
pub mod test_cluster;
pub mod type_config;
pub mod wal;

pub use job_table::{Command, CommandResponse, JobTable, Proposal};
pub use node::{
    Failover, Leadership, Member, MembershipError, Node, NodeConfig, NodeView, PeerReplication, ProposeError,
    ReadError, Replaced, StartError, Timing, TransferError, VoterState, VoterStatus,
};
pub use type_config::{NodeId, NodeInfo, Role, TypeConfig};
pub use wire::Digest;
