//! openraft's type configuration for Tandem, and the node information every voter carries.
//!
//! Everything that names an openraft type parameter lives here, so that a version bump of the
//! alpha-pinned dependency touches one module.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::job_table::{Command, CommandResponse};

/// A voter's id. Never reused with an empty disk: a replacement joins under a new id.
pub type NodeId = u64;

pub use wire::members::Role;

/// A voter as the membership records it: its role and where to reach it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Coordinator or witness.
    pub role: Role,
    /// `host:port` of the voter's Raft routes (`/raft/...`).
    pub raft_addr: String,
    /// `host:port` of the client API; empty for the witness.
    pub api_addr: String,
}

impl NodeInfo {
    /// A voter serving everything on `addr`: a coordinator's API and Raft routes share it; a
    /// witness has no API.
    pub fn at(role: Role, addr: impl Into<String>) -> NodeInfo {
        let raft_addr = addr.into();
        let api_addr = if role == Role::Coordinator { raft_addr.clone() } else { String::new() };
        NodeInfo { role, raft_addr, api_addr }
    }
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.role, self.raft_addr)
    }
}

openraft::declare_raft_types!(
    /// Tandem's openraft types: commands are [`Command`]s, responses [`CommandResponse`]s.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = NodeInfo,
);

/// The Raft handle type with Tandem's state machine.
pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachineStore>;
/// A log id in Tandem's configuration.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A log entry in Tandem's configuration.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A vote in Tandem's configuration.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// Snapshot metadata in Tandem's configuration.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// Stored membership in Tandem's configuration.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Raft metrics in Tandem's configuration.
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
/// The monotonic instant openraft's metrics are measured in.
pub type Instant = openraft::alias::InstantOf<TypeConfig>;
