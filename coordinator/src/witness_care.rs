//! The witness re-created: when the witness voter has been silent for the witness timeout
//! (`--witness-timeout-ms`, default 60 s), the leader launches a worker in the witness role
//! through its provider and replaces the old voter by it through the voter-replacement path (a
//! new id, caught up, then swapped in one joint change), so that the cluster tolerates the loss
//! of one voter again without an operator.
//!
//! Each step is committed before its side effect, as the autoscaler's are, and only by the
//! leader in the term it decided in ([`Node::propose_as_leader`]):
//!
//! 1. `ReplaceWitness{token, replaces, node_id}`: the decision, with a voter id above every id
//!    handed out before. Apply refuses a second one while one is under way.
//! 2. The provider launches under `token` (idempotent), its worker given the one-time join
//!    secret whose SHA-256 step 1 committed (a new leader that never knew it commits another
//!    beside it), then `WitnessLaunched` records where the new voter listens.
//! 3. [`Node::replace_voter`] (safe to repeat), then `WitnessReplaced`.
//!
//! A new leader carries on from whatever was committed. A replacement that fails (the launch is
//! refused, the new witness never catches up, the membership changed meanwhile) is committed as
//! `WitnessFailed`, its machine terminated, and the next attempt waits out the timeout again.
//! Silence is measured by this leader: from the witness's last answer, or from when this node
//! began to lead if it has not heard from it since, so a new leader waits a whole timeout.

use std::time::Duration;

use deploy::provider::{Provider, WitnessInstance};
use raft_store::job_table::{CommandResponse, ScalerProposal, WitnessReplacement};
use raft_store::{MembershipError, Node, NodeInfo, NodeView, Role};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::scaler::{StepError, commit, new_join_secret, new_token, renew_join_secret};

/// How often the leader looks at the witness.
const TICK: Duration = Duration::from_secs(1);

/// When to replace the witness, and how long its replacement may take to catch up.
#[derive(Clone, Copy, Debug)]
pub struct WitnessCare {
    /// The witness silent this long is replaced.
    pub timeout: Duration,
    /// The new witness must hold the whole log within this of being asked to (boot included).
    pub catch_up: Duration,
}

/// Look after the witness every second while this node leads, until `shutdown`.
pub async fn run<P: Provider>(node: Node, provider: P, care: WitnessCare, shutdown: CancellationToken) {
    if node.role() != Role::Coordinator {
        return;
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = Watch::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let leading = *node.leadership().borrow();
        if !leading.is_self {
            watch = Watch::default();
            continue;
        }
        let view = node.view();
        if !view.is_leader() {
            continue;
        }
        if let Err(e) = step(&node, &provider, care, leading.term, &view, &mut watch).await {
            tracing::warn!(error = %e, "witness care: step not finished; will retry");
        }
    }
}

/// What this leader measured itself.
#[derive(Default)]
struct Watch {
    /// The term it leads in, and since when.
    term: Option<(u64, Instant)>,
    /// When its last replacement failed: the next waits a timeout.
    failed_at: Option<Instant>,
    /// The join secret this leader chose for a replacement, by its token.
    join_secret: Option<(String, String)>,
}

async fn step<P: Provider>(
    node: &Node,
    provider: &P,
    care: WitnessCare,
    term: u64,
    view: &NodeView,
    watch: &mut Watch,
) -> Result<(), StepError> {
    let now = Instant::now();
    let leading_since = match watch.term {
        Some((t, since)) if t == term => since,
        _ => {
            watch.term = Some((term, now));
            now
        }
    };
    let under_way = node.state_machine().read(|t| t.scaler().witness.clone().filter(WitnessReplacement::pending));
    if let Some(replacement) = under_way {
        let failed = carry_on(node, provider, care, term, view, replacement, watch).await?;
        if failed {
            watch.failed_at = Some(now);
        }
        return Ok(());
    }
    let Some(witness) = view.members.iter().find(|m| m.voter && m.info.role == Role::Witness) else {
        return Ok(());
    };
    let silent_for = match view.peers.get(&witness.id).and_then(|p| p.last_contact) {
        Some(age) => age,
        None => now - leading_since,
    };
    let backing_off = watch.failed_at.is_some_and(|at| now - at < care.timeout);
    if silent_for < care.timeout || backing_off {
        return Ok(());
    }
    let highest = node.state_machine().read(|t| t.scaler().highest_node_id);
    let node_id = view.members.iter().map(|m| m.id).max().unwrap_or(0).max(highest) + 1;
    let token = new_token("tandem-witness")?;
    let why = format!("witness node {} silent for {} s", witness.id, silent_for.as_secs());
    let (join_secret, join) = new_join_secret(care.catch_up.as_millis() as u64)?;
    let join = Some(join);
    let proposal = ScalerProposal::ReplaceWitness { token: token.clone(), replaces: witness.id, node_id, why, join };
    let answer = commit(node, term, proposal).await?;
    if answer == CommandResponse::Done {
        watch.join_secret = Some((token.clone(), join_secret));
    }
    tracing::warn!(replaces = witness.id, node_id, token, ?answer, "replacing the silent witness");
    Ok(())
}

/// Take a committed replacement one step further; whether it failed.
async fn carry_on<P: Provider>(
    node: &Node,
    provider: &P,
    care: WitnessCare,
    term: u64,
    view: &NodeView,
    replacement: WitnessReplacement,
    watch: &mut Watch,
) -> Result<bool, StepError> {
    let WitnessReplacement { token, replaces, node_id, .. } = replacement.clone();
    let swapped = view.member(node_id).is_some_and(|m| m.voter) && view.member(replaces).is_none_or(|m| !m.voter);
    if swapped {
        // A previous leader swapped the voters and did not live to record it.
        commit(node, term, ScalerProposal::WitnessReplaced { token }).await?;
        return Ok(false);
    }
    let Some(raft_addr) = replacement.raft_addr.clone() else {
        let Some(join_secret) = witness_join_secret(node, care, term, &token, watch).await? else {
            return Ok(false);
        };
        return match provider.launch_witness(&token, node_id, &join_secret).await {
            Ok(WitnessInstance { instance, raft_addr }) => {
                tracing::info!(node_id, instance_id = instance.instance_id, raft_addr, "launched a new witness");
                let launched = ScalerProposal::WitnessLaunched { token, instance_id: instance.instance_id, raft_addr };
                commit(node, term, launched).await?;
                Ok(false)
            }
            Err(e) => {
                tracing::warn!(node_id, error = %e, "the new witness could not be launched");
                fail(node, provider, term, &replacement, e.to_string()).await?;
                Ok(true)
            }
        };
    };
    match node.replace_voter(replaces, node_id, NodeInfo::at(Role::Witness, raft_addr), care.catch_up).await {
        Ok(replaced) => {
            tracing::warn!(replaces, node_id, voters = ?replaced.voters, "the new witness votes in place of the old");
            commit(node, term, ScalerProposal::WitnessReplaced { token }).await?;
            Ok(false)
        }
        // It never caught up, or the membership changed under it: this attempt is over.
        Err(e @ (MembershipError::CatchUpTimedOut { .. } | MembershipError::Refused(_))) => {
            tracing::warn!(replaces, node_id, error = %e, "the witness replacement failed");
            fail(node, provider, term, &replacement, e.to_string()).await?;
            Ok(true)
        }
        // Leadership moved, or openraft is busy: the next tick (or leader) repeats it.
        Err(e) => {
            tracing::info!(replaces, node_id, error = %e, "the witness replacement will be repeated");
            Ok(false)
        }
    }
}

/// The join secret to launch the replacement under `token` with: the one this leader chose, or
/// else a new one, committed beside the one this leader never knew (a machine its predecessor
/// launched keeps joining with that one). `None` if the table refused it (the replacement is
/// over, or its worker joined already).
async fn witness_join_secret(
    node: &Node,
    care: WitnessCare,
    term: u64,
    token: &str,
    watch: &mut Watch,
) -> Result<Option<String>, StepError> {
    if let Some((chosen_for, secret)) = &watch.join_secret
        && chosen_for == token
    {
        return Ok(Some(secret.clone()));
    }
    let renewed = renew_join_secret(node, term, token, care.catch_up.as_millis() as u64).await?;
    if let Some(secret) = &renewed {
        watch.join_secret = Some((token.to_owned(), secret.clone()));
    }
    Ok(renewed)
}

/// Record the failure, then terminate the machine it launched, if any.
async fn fail<P: Provider>(
    node: &Node,
    provider: &P,
    term: u64,
    replacement: &WitnessReplacement,
    why: String,
) -> Result<(), StepError> {
    let answer = commit(node, term, ScalerProposal::WitnessFailed { token: replacement.token.clone(), why }).await?;
    if answer == CommandResponse::Done
        && let Some(instance_id) = &replacement.instance_id
    {
        provider.terminate(instance_id).await?;
    }
    Ok(())
}
