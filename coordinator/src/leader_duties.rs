//! What only the leader does, with its own clock: expire leases, drop silent workers, and keep
//! the replicated limits equal to this coordinator's configuration.
//!
//! A new leader first waits one lease period before expiring anything: leases granted (or
//! extended) by its predecessor were stamped with the predecessor's clock, and a heartbeat may
//! have been in flight during the election.

use std::time::Duration;

use raft_store::job_table::{Limits, Proposal};
use raft_store::{Node, Role};
use tokio_util::sync::CancellationToken;

use wire::now_ms;

/// What the duties need to know.
#[derive(Clone, Copy, Debug)]
pub struct DutyConfig {
    /// Lease length; also the grace period of a new leader.
    pub lease_ms: u64,
    /// Workers silent this long are removed.
    pub worker_timeout_ms: u64,
    /// The limits the table should have.
    pub limits: Limits,
}

const TICK: Duration = Duration::from_millis(200);

/// Run the leader's duties on `node` until `shutdown`.
pub async fn run(node: Node, config: DutyConfig, shutdown: CancellationToken) {
    if node.role() != Role::Coordinator {
        return;
    }
    let mut leadership = node.leadership();
    let mut leading_since: Option<u64> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            changed = leadership.changed() => if changed.is_err() { return },
        }
        let is_leader = leadership.borrow_and_update().is_self;
        if !is_leader {
            leading_since = None;
            continue;
        }
        let now = now_ms();
        let since = *leading_since.get_or_insert_with(|| {
            tracing::info!(node = node.id(), "leading: lease expiry starts after a grace period");
            now
        });
        if let Err(e) = act(&node, &config, now, now >= since.saturating_add(config.lease_ms)).await {
            tracing::warn!(error = %e, "leader duty not committed; will retry");
        }
    }
}

async fn act(node: &Node, config: &DutyConfig, now: u64, past_grace: bool) -> Result<(), raft_store::ProposeError> {
    let (limits, expired, silent) = node.state_machine().read(|table| {
        (table.limits(), table.any_lease_expired(now), table.silent_workers(now, config.worker_timeout_ms))
    });
    if limits != config.limits {
        node.propose(Proposal::SetLimits(config.limits)).await?;
    }
    if !past_grace {
        return Ok(());
    }
    if expired {
        node.propose(Proposal::ExpireLeases).await?;
    }
    for worker in silent {
        tracing::info!(worker, "removing a worker that stopped heartbeating");
        node.propose(Proposal::RemoveWorker { worker }).await?;
    }
    Ok(())
}
