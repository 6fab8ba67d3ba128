//! What only the leader does, with its own clock: expire leases, drop silent workers, and write
//! this coordinator's configured limits once per configuration.
//!
//! A new leader first waits one lease period before expiring anything: leases granted (or
//! extended) by its predecessor were stamped with the predecessor's clock, and a heartbeat may
//! have been in flight during the election.
//!
//! Every duty is fenced: it decides from this node's table in a term it leads, and commits only
//! here, only in that term ([`Node::propose_as_leader`]), never through another leader. A
//! removal carries when the worker was last heard from, and apply refuses it if the worker was
//! heard from since, so a leader that was paused past the worker timeout and wakes believing
//! it still leads cannot remove the workers its successor has been hearing from.

use std::time::Duration;

use raft_store::job_table::{CommandResponse, Limits, Proposal};
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
    let mut leading_since: Option<(u64, u64)> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            changed = leadership.changed() => if changed.is_err() { return },
        }
        let now_leading = *leadership.borrow_and_update();
        if !now_leading.is_self {
            leading_since = None;
            continue;
        }
        let now = now_ms();
        // A reign is one term: leading again after losing it starts a new grace period.
        let (term, since) = *leading_since.get_or_insert_with(|| {
            let (limits, mine) =
                node.state_machine().read(|table| (table.limits(), table.limits_configured_by(node.id())));
            if mine == Some(config.limits) && limits != config.limits {
                tracing::warn!(
                    node = node.id(),
                    replicated = ?limits,
                    configured = ?config.limits,
                    "the cluster runs with limits another coordinator configured since this one did; \
                     restart the coordinators with the same limits"
                );
            }
            tracing::info!(
                node = node.id(),
                term = now_leading.term,
                "leading: lease expiry starts after a grace period"
            );
            (now_leading.term, now)
        });
        if term != now_leading.term {
            leading_since = None;
            continue;
        }
        if let Err(e) = act(&node, &config, term, now, now >= since.saturating_add(config.lease_ms)).await {
            tracing::warn!(error = %e, "leader duty not committed; will retry");
        }
    }
}

async fn act(
    node: &Node,
    config: &DutyConfig,
    term: u64,
    now: u64,
    past_grace: bool,
) -> Result<(), raft_store::ProposeError> {
    let (configured, expired, silent) = node.state_machine().read(|table| {
        let configured = table.limits_configured_by(node.id());
        (configured, table.any_lease_expired(now), table.silent_workers(now, config.worker_timeout_ms))
    });
    // This coordinator's limits, written once per configuration: not again at each of its
    // terms when the other coordinator, configured otherwise, wrote its own since.
    if configured != Some(config.limits) {
        let limits = Proposal::ConfigureLimits { node: node.id(), limits: config.limits };
        node.propose_as_leader(term, limits).await?;
    }
    if !past_grace {
        return Ok(());
    }
    if expired {
        node.propose_as_leader(term, Proposal::ExpireLeases).await?;
    }
    for (worker, last_seen_ms) in silent {
        let removal = Proposal::RemoveWorker { worker, last_seen_ms: Some(last_seen_ms) };
        match node.propose_as_leader(term, removal).await? {
            CommandResponse::Requeued(jobs) => {
                tracing::info!(worker, requeued = jobs.len(), "removed a worker that stopped heartbeating");
            }
            refused => tracing::info!(worker, ?refused, "a silent worker was not removed"),
        }
    }
    Ok(())
}
