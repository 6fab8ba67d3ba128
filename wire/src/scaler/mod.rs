//! The autoscaling policy: a pure function from what the leader observes, and the time, to what
//! it should do about the worker fleet ([`decide`]).
//!
//! It lives here, beside the wire types and away from openraft and the EC2 SDK, so that the
//! leader's scaler and the simulator in `bench` run the very same code, and the simulator builds
//! in seconds. It reads no clock, keeps no state between calls and performs no I/O: whatever it
//! must remember (launches in flight, failures, when a worker went idle) is in the
//! [`Observation`], which the leader builds from the replicated table. Every action carries its
//! reason ([`Why`]), so an operator can see why the fleet has the size it has.
//!
//! The rule, in short:
//!
//! - **Out**: the work left (queued iterations plus what running jobs still have to do, from
//!   their checkpoints) divided by the fleet's measured hash rate is the time to drain it. When
//!   that exceeds the target, launch the cores that would drain it within the target, counting
//!   launches in flight as capacity, never more cores than there are jobs (a job runs on one
//!   core), never past the maximum. Draining workers are resumed before anything is launched.
//!   Nothing is launched while the running fleet alone finishes the work before a new worker
//!   could boot, nor while launches are backing off after failures.
//! - **In**: only a worker idle (holding no lease) for the idle time, never within the cooldown
//!   after a scale-out, never while jobs wait, never the witness's worker, never below the
//!   minimum. It is drained first, and terminated only once it holds nothing; if jobs wait
//!   meanwhile, it is resumed to take them instead.
//! - **Failures**: a launch that has not registered within the boot timeout, or within three
//!   observed boot times once boots have been observed, is given up (its instance terminated)
//!   and counts as a failure; consecutive failures back off exponentially.

mod policy;
#[cfg(test)]
mod tests;

pub use policy::*;
