//! What only the leader does, with its own clock: expire leases, drop silent workers, write
//! this coordinator's configured limits once per configuration, and enable content-addressed
//! reuse once every member of the cluster runs a version that has it.
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
/// How often a leader asks the members whether they can all reuse, until they can.
const REUSE_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long each member has to answer that.
const REUSE_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// Run the leader's duties on `node` until `shutdown`.
pub async fn run(node: Node, config: DutyConfig, shutdown: CancellationToken) {
    if node.role() != Role::Coordinator {
        return;
    }
    let mut leadership = node.leadership();
    let mut leading_since: Option<(u64, u64)> = None;
    let mut reuse_checked: Option<std::time::Instant> = None;
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
        if !node.state_machine().read(|table| table.reuse_enabled())
            && reuse_checked.is_none_or(|at| at.elapsed() >= REUSE_CHECK_EVERY)
        {
            reuse_checked = Some(std::time::Instant::now());
            if let Err(e) = enable_reuse_when_every_member_can(&node, term).await {
                tracing::warn!(error = %e, "enabling reuse not committed; will retry");
            }
        }
    }
}

/// Commit [`Proposal::EnableReuse`] if every member (voters and learners) answers that it runs
/// a version with reuse. Until then, enqueues are stamped as the command every version knows:
/// a voter of an older version would stop replicating at the first one that needed reuse.
async fn enable_reuse_when_every_member_can(node: &Node, term: u64) -> Result<(), raft_store::ProposeError> {
    let members = node.view().members;
    let answers = members.iter().map(|member| node.voter_status(member.id, REUSE_CHECK_TIMEOUT));
    let statuses = futures::future::join_all(answers).await;
    let unable: Vec<u64> = members
        .iter()
        .zip(&statuses)
        .filter(|(_, status)| !status.as_ref().is_ok_and(|status| status.reuse))
        .map(|(member, _)| member.id)
        .collect();
    if !unable.is_empty() {
        tracing::info!(?unable, "reuse stays off until every member runs a version that has it");
        return Ok(());
    }
    node.propose_as_leader(term, Proposal::EnableReuse).await?;
    tracing::info!("every member can reuse: reuse enabled");
    Ok(())
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
