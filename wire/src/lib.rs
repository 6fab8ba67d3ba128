//! What crosses Tandem's process boundaries, shared by every crate that speaks it.
//!
//! - [`digest`]: the 64-byte SHA-512 value a job carries instead of its body.
//! - [`chain`]: the work function, the SHA-512 chain.
//! - [`api`]: the client API's JSON bodies (what curl users and the bench see).
//! - [`worker`]: the MessagePack messages between workers and coordinators.
//! - [`client`]: a typed client of the client API, for tests and the bench.
//!
//! Wire types are distinct from Raft commands on purpose: the coordinator converts between them,
//! so the replicated log can evolve without breaking clients, and clients of the API (the bench)
//! build without openraft.

pub mod api;
pub mod chain;
pub mod client;
pub mod digest;
pub mod worker;

pub use digest::Digest;

/// Header carrying the cluster secret, on the `/raft/` routes and the worker routes.
pub const SECRET_HEADER: &str = "x-tandem-secret";
