//! The scenarios.

pub mod autoscale;
pub mod catchup;
pub mod compute;
pub mod failover;
pub mod flow;
pub mod ingest;
pub mod soak;
pub mod workers;
