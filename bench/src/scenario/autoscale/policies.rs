//! The policies compared: Tandem's ([`wire::scaler::decide`], the very code the leader runs)
//! and two baselines written here, each producing the same actions from the same observation.
//!
//! The baselines are the rules the anchors use (see `autoscaling-anchors.md`): the peers'
//! "launch one when a job has waited too long" and Ray's "launch for the queued demand". Both
//! give up a launch that has not registered within Tandem's boot timeout (without it they would
//! wait for it forever) but neither backs off after failures, and both scale in through the same
//! drain-then-terminate handshake as Tandem, so that what differs is only the rule.

use serde::Serialize;
use wire::scaler::{Action, Observation, PolicyConfig, Standing, WorkerObservation, decide};

/// What a policy sees at a tick.
pub struct View<'a> {
    /// What the leader builds from the replicated table.
    pub observation: &'a Observation,
    /// When the oldest waiting job was enqueued (the table knows it; only the peers' rule
    /// looks at it).
    pub oldest_queued_since_ms: Option<u64>,
}

/// A scaling rule.
pub trait Policy {
    /// Its name in the report.
    fn name(&self) -> &'static str;
    /// What to do now, in order.
    fn decide(&self, view: &View<'_>) -> Vec<Action>;
}

/// Tandem's policy.
pub struct Tandem {
    /// Its knobs.
    pub config: PolicyConfig,
}

impl Policy for Tandem {
    fn name(&self) -> &'static str {
        "tandem"
    }

    fn decide(&self, view: &View<'_>) -> Vec<Action> {
        decide(&self.config, view.observation).decisions.into_iter().map(|d| d.action).collect()
    }
}

/// The peers' rule: when the oldest queued job has waited longer than `wait_ms`, launch one
/// worker, one at a time, at most `max_workers_per_coordinator` per coordinator; remove a worker
/// idle for `idle_ms`.
///
/// Every coordinator of the seeds ran the rule with its own cap, so the fleet's cap is the
/// per-coordinator cap times the coordinators (Tandem always has two). Here the leader runs it
/// for the fleet, one launch at a time, as Tandem's leader runs its own policy.
#[derive(Clone, Debug, Serialize)]
pub struct Peers {
    /// How long the oldest job may wait before a launch.
    pub wait_ms: u64,
    /// Most workers per coordinator, the witness's not counted, the launch in flight included.
    pub max_workers_per_coordinator: u32,
    /// Coordinators, each allowed `max_workers_per_coordinator`.
    pub coordinators: u32,
    /// A worker idle this long is removed.
    pub idle_ms: u64,
    /// A launch not registered within this is given up.
    pub boot_timeout_ms: u64,
}

impl Peers {
    /// The fleet's cap: every coordinator's, together.
    pub fn max_workers(&self) -> u32 {
        self.max_workers_per_coordinator.saturating_mul(self.coordinators)
    }
}

impl Policy for Peers {
    fn name(&self) -> &'static str {
        "peers"
    }

    fn decide(&self, view: &View<'_>) -> Vec<Action> {
        let obs = view.observation;
        let (mut actions, live) = give_up_stale_launches(obs, self.boot_timeout_ms);
        let fleet = pool(obs).count() as u32 + live;
        let waited_ms = view.oldest_queued_since_ms.map(|since| obs.now_ms.saturating_sub(since));
        if waited_ms.is_some_and(|waited| waited > self.wait_ms) && live == 0 && fleet < self.max_workers() {
            actions.push(Action::Launch { count: 1 });
        }
        actions.extend(scale_in(obs, self.idle_ms));
        actions
    }
}

/// Ray's rule, on Tandem's units: launch the workers that give every queued job a core,
/// counting launches in flight, at most `max_workers`; remove a worker idle for `idle_ms`.
#[derive(Clone, Debug, Serialize)]
pub struct RayLike {
    /// Most workers, the witness's not counted, launches in flight included.
    pub max_workers: u32,
    /// Cores of a launched worker.
    pub cores_per_worker: u32,
    /// A worker idle this long is removed.
    pub idle_ms: u64,
    /// A launch not registered within this is given up.
    pub boot_timeout_ms: u64,
}

impl Policy for RayLike {
    fn name(&self) -> &'static str {
        "ray-like"
    }

    fn decide(&self, view: &View<'_>) -> Vec<Action> {
        let obs = view.observation;
        let (mut actions, live) = give_up_stale_launches(obs, self.boot_timeout_ms);
        let fleet = pool(obs).count() as u32 + live;
        let cores_per_worker = u64::from(self.cores_per_worker.max(1));
        let wanted = obs.queued_jobs.div_ceil(cores_per_worker).saturating_sub(u64::from(live));
        let count = wanted.min(u64::from(self.max_workers.saturating_sub(fleet))) as u32;
        if count > 0 {
            actions.push(Action::Launch { count });
        }
        actions.extend(scale_in(obs, self.idle_ms));
        actions
    }
}

/// Workers the baselines may count and remove: all but the witness's.
fn pool(obs: &Observation) -> impl Iterator<Item = &WorkerObservation> {
    obs.workers.iter().filter(|w| !w.witness)
}

/// Give up the launches in flight for `boot_timeout_ms`; the others are still live.
fn give_up_stale_launches(obs: &Observation, boot_timeout_ms: u64) -> (Vec<Action>, u32) {
    let mut actions = Vec::new();
    let mut live = 0;
    for launch in &obs.launches_in_flight {
        if obs.now_ms.saturating_sub(launch.requested_at_ms) >= boot_timeout_ms {
            actions.push(Action::GiveUp { token: launch.token.clone() });
        } else {
            live += 1;
        }
    }
    (actions, live)
}

/// Terminate the drained workers that hold nothing; drain the managed ones idle for `idle_ms`.
fn scale_in(obs: &Observation, idle_ms: u64) -> Vec<Action> {
    let mut actions = Vec::new();
    for worker in pool(obs).filter(|w| w.managed && w.leases == 0) {
        match (worker.standing, worker.idle_since_ms) {
            (Standing::ScalingIn, _) => actions.push(Action::Terminate { worker: worker.id }),
            (Standing::Active, Some(since)) if obs.now_ms.saturating_sub(since) >= idle_ms => {
                actions.push(Action::Drain { worker: worker.id })
            }
            _ => {}
        }
    }
    actions
}
