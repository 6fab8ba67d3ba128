//! The autoscaler's loop: every coordinator runs the policy on its own copy of the table (so
//! `/cluster` and `/metrics` show what it would want on either node), and the leader, only the
//! leader, carries the plan out through its [`Provider`].
//!
//! The leader acts only in the term it reconciled in, and every decision is committed before
//! its side effect (fenced, [`Node::propose_as_leader`]):
//!
//! - **Launch**: choose a one-time join secret, commit `LaunchRequested{token}` with its SHA-256
//!   (never the secret), then call the provider with the token as its idempotency key and the
//!   join secret for the worker, then commit what it answered (`InstanceSeen` or `LaunchFailed`).
//!   The worker exchanges the join secret once, at `/worker/join`, for the cluster secret, which
//!   so never travels in its launch data. A leader that dies between the two leaves a committed
//!   token; its successor, which never knew the join secret, commits another beside it
//!   (`JoinRenewed`) and relaunches with the same token, which starts nothing new if the first
//!   call got through (and that machine's worker joins with the first secret).
//! - **Scale-in**: commit `ScaleIn` (the worker drains: it hands its leases back with their
//!   checkpoints), wait until it holds nothing, commit `TerminationRequested` (refused while it
//!   holds a lease), terminate, then remove it from the registry.
//! - **Reconcile**, once per term before anything else: list the provider's machines, adopt the
//!   ones launched under committed tokens, relaunch committed tokens with no machine, and
//!   terminate machines launched under tokens the table does not know (a launch that was given
//!   up but came up after all), but never one that runs a member voter (the witness's).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy::provider::{Instance, Provider};
use raft_store::job_table::{CommandResponse, JoinTerms, Proposal, ScalerProposal};
use raft_store::{Node, ProposeError, Role};
use tokio_util::sync::CancellationToken;
use wire::scaler::{Action, Plan, PolicyConfig, Why, decide};

/// How often the policy runs.
const TICK: Duration = Duration::from_secs(1);

/// What this node's policy concluded last, for `/cluster` and `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct ScalerStatus {
    /// "off", "local" or "ec2".
    pub provider: &'static str,
    /// The last plan, if the policy has run.
    pub plan: Option<Plan>,
}

/// Shared between the loop and the routes that show it.
pub type SharedStatus = Arc<Mutex<ScalerStatus>>;

/// Run the policy on `node` every second until `shutdown`; carry the plans out through
/// `provider` while this node leads (never, when there is none).
pub async fn run<P: Provider>(
    node: Node,
    provider: Option<P>,
    policy: PolicyConfig,
    status: SharedStatus,
    shutdown: CancellationToken,
) {
    if node.role() != Role::Coordinator {
        return;
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconciled_term = None;
    let mut last_held: Vec<std::mem::Discriminant<Why>> = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let leading = *node.leadership().borrow();
        let plan = node.state_machine().read(|table| decide(&policy, &table.scaler_observation(wire::now_ms())));
        status.lock().unwrap_or_else(|p| p.into_inner()).plan = Some(plan.clone());
        let Some(provider) = provider.as_ref().filter(|_| leading.is_self) else {
            reconciled_term = None;
            continue;
        };
        let term = leading.term;
        if reconciled_term != Some(term) {
            match reconcile(&node, provider, term, policy.boot_timeout_ms).await {
                Ok(()) => reconciled_term = Some(term),
                Err(e) => {
                    tracing::warn!(error = %e, "autoscaler reconciliation not finished; will retry");
                    continue;
                }
            }
            // Decide again from the reconciled table.
            continue;
        }
        if let Err(e) = carry_out(&node, provider, term, &plan, policy.boot_timeout_ms, &mut last_held).await {
            tracing::warn!(error = %e, "autoscaler decision not committed; will retry");
        }
    }
}

/// Why an autoscaler (or witness care) step stopped; the next tick tries again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error(transparent)]
    Propose(#[from] ProposeError),
    #[error("reading the committed state: {0}")]
    Read(String),
    #[error("the provider: {0}")]
    Provider(#[from] deploy::provider::ProviderError),
}

/// Commit `proposal` as this term's leader; a refusal is an answer, not an error.
pub(crate) async fn commit(node: &Node, term: u64, proposal: ScalerProposal) -> Result<CommandResponse, StepError> {
    Ok(node.propose_as_leader(term, Proposal::Scaler(proposal)).await?)
}

async fn carry_out<P: Provider>(
    node: &Node,
    provider: &P,
    term: u64,
    plan: &Plan,
    join_valid_ms: u64,
    last_held: &mut Vec<std::mem::Discriminant<Why>>,
) -> Result<(), StepError> {
    for decision in &plan.decisions {
        let why = decision.why.to_string();
        match &decision.action {
            Action::Launch { count } => {
                for _ in 0..*count {
                    let token = new_token("tandem")?;
                    let (join_secret, join) = new_join_secret(join_valid_ms)?;
                    let join = Some(join);
                    let proposal = ScalerProposal::LaunchRequested { token: token.clone(), why: why.clone(), join };
                    let answer = commit(node, term, proposal).await?;
                    if answer == CommandResponse::Done {
                        tracing::info!(token, why, "launching a worker");
                        // One refusal ends the batch: a capacity error counts once toward the
                        // backoff, not once per instance asked for.
                        if !launch(node, provider, term, &token, &join_secret).await? {
                            break;
                        }
                    }
                }
            }
            Action::Resume { worker } => {
                let answer = commit(node, term, ScalerProposal::Resume { worker: *worker, why }).await?;
                tracing::info!(worker, ?answer, "resuming a worker being scaled in");
            }
            Action::Drain { worker } => {
                let answer = commit(node, term, ScalerProposal::ScaleIn { worker: *worker, why }).await?;
                tracing::info!(worker, ?answer, "scaling a worker in: draining it");
            }
            Action::Terminate { worker } => {
                let instance =
                    node.state_machine().read(|t| t.workers().get(worker).and_then(|w| w.instance_id.clone()));
                let Some(instance_id) = instance else { continue };
                let answer =
                    commit(node, term, ScalerProposal::TerminationRequested { instance_id: instance_id.clone() })
                        .await?;
                if answer != CommandResponse::Done {
                    tracing::info!(worker, instance_id, ?answer, "termination refused");
                    continue;
                }
                provider.terminate(&instance_id).await?;
                tracing::info!(worker, instance_id, "terminated a drained worker");
                node.propose_as_leader(term, Proposal::RemoveWorker { worker: *worker, last_seen_ms: None }).await?;
            }
            Action::GiveUp { token } => {
                let answer = commit(node, term, ScalerProposal::LaunchFailed { token: token.clone(), why }).await?;
                if answer == CommandResponse::Done {
                    tracing::warn!(token, "a launch never registered: giving it up");
                    for instance in provider.list().await? {
                        if instance.token.as_deref() == Some(token.as_str()) {
                            provider.terminate(&instance.instance_id).await?;
                        }
                    }
                }
            }
        }
    }
    // A hold is recorded when the kinds of hold change, not every second.
    let held: Vec<_> = plan.held.iter().map(std::mem::discriminant).collect();
    if held != *last_held {
        if !plan.held.is_empty() {
            let why = plan.held.iter().map(Why::to_string).collect::<Vec<_>>().join("; ");
            commit(node, term, ScalerProposal::Held { why }).await?;
        }
        *last_held = held;
    }
    Ok(())
}

/// Call the provider for a committed launch, its worker given `join_secret`, and commit what it
/// answered; whether it launched.
async fn launch<P: Provider>(
    node: &Node,
    provider: &P,
    term: u64,
    token: &str,
    join_secret: &str,
) -> Result<bool, StepError> {
    match provider.launch(token, join_secret).await {
        Ok(Instance { instance_id, .. }) => {
            commit(node, term, ScalerProposal::InstanceSeen { token: token.into(), instance_id }).await?;
            Ok(true)
        }
        Err(e) => {
            tracing::warn!(token, error = %e, "launch failed");
            commit(node, term, ScalerProposal::LaunchFailed { token: token.into(), why: e.to_string() }).await?;
            Ok(false)
        }
    }
}

/// Bring the table and the provider's machines into agreement before this term's first
/// decision (see the module documentation).
async fn reconcile<P: Provider>(node: &Node, provider: &P, term: u64, join_valid_ms: u64) -> Result<(), StepError> {
    // Everything committed before this term is in the table.
    node.read_barrier().await.map_err(|e| StepError::Read(e.to_string()))?;
    let machines = provider.list().await?;
    let (in_flight, known, witness_token) = node.state_machine().read(|table| {
        let scaler = table.scaler();
        let in_flight: Vec<(String, Option<String>)> =
            scaler.launches.iter().map(|(t, l)| (t.clone(), l.instance_id.clone())).collect();
        let mut known: BTreeSet<String> = scaler.managed_instances.iter().cloned().collect();
        known.extend(table.workers().values().filter_map(|w| w.instance_id.clone()));
        // The witness's replacement is `witness_care`'s, registered or not.
        (in_flight, known, scaler.witness.as_ref().map(|w| w.token.clone()))
    });
    // A machine running a voter of the cluster is never a stray, registered or not: the
    // witness's worker may not have registered yet (it boots alongside the coordinators), or
    // may be out of the registry for a while, and ending its machine would end a voter.
    let members: BTreeSet<u64> = node.view().member_ids().into_iter().collect();
    let listed_tokens: BTreeSet<&str> = machines.iter().filter_map(|m| m.token.as_deref()).collect();
    for machine in &machines {
        let runs_a_voter = machine.voter_id.is_some_and(|id| members.contains(&id));
        let token = machine.token.as_deref();
        if let Some((token, seen)) = in_flight.iter().find(|(t, _)| Some(t.as_str()) == token) {
            if seen.is_none() {
                tracing::info!(token, instance_id = machine.instance_id, "adopting a launch of the previous leader");
                commit(
                    node,
                    term,
                    ScalerProposal::InstanceSeen { token: token.clone(), instance_id: machine.instance_id.clone() },
                )
                .await?;
            }
        } else if token.is_some()
            && token != witness_token.as_deref()
            && !known.contains(&machine.instance_id)
            && !runs_a_voter
        {
            tracing::warn!(
                instance_id = machine.instance_id,
                token,
                "terminating a machine no committed launch accounts for"
            );
            commit(node, term, ScalerProposal::TerminationRequested { instance_id: machine.instance_id.clone() })
                .await?;
            provider.terminate(&machine.instance_id).await?;
        }
    }
    // Committed launches with no machine: the previous leader may have died before calling
    // the provider. The same token launches at most once. Only the join secret's hash was
    // committed, so the relaunch gets another, committed first.
    for (token, _) in in_flight.iter().filter(|(t, _)| !listed_tokens.contains(t.as_str())) {
        let Some(join_secret) = renew_join_secret(node, term, token, join_valid_ms).await? else {
            continue;
        };
        tracing::info!(token, "relaunching a committed launch that has no machine");
        launch(node, provider, term, token, &join_secret).await?;
    }
    Ok(())
}

/// A fresh one-time join secret (128 random bits), and the terms to commit for it: its SHA-256,
/// good for `valid_ms` from the launch. The secret itself goes only to the provider.
pub(crate) fn new_join_secret(valid_ms: u64) -> Result<(String, JoinTerms), StepError> {
    let secret = new_token("tandem-join")?;
    let terms = JoinTerms { secret_sha256: wire::join_secret_sha256(&secret), valid_ms };
    Ok((secret, terms))
}

/// A new join secret for the launch in flight under `token`, committed beside the one a previous
/// leader chose (this leader never knew it); `None` if the table refused it (the launch
/// is over, or its worker joined already): then there is nothing to relaunch.
pub(crate) async fn renew_join_secret(
    node: &Node,
    term: u64,
    token: &str,
    valid_ms: u64,
) -> Result<Option<String>, StepError> {
    let (join_secret, join) = new_join_secret(valid_ms)?;
    let answer = commit(node, term, ScalerProposal::JoinRenewed { token: token.into(), join }).await?;
    if answer != CommandResponse::Done {
        tracing::info!(token, ?answer, "not relaunching: the launch is over or its worker joined");
        return Ok(None);
    }
    Ok(Some(join_secret))
}

/// A fresh idempotency token, `{prefix}-` and 32 hex digits (EC2 allows up to 64 ASCII
/// characters).
pub(crate) fn new_token(prefix: &str) -> Result<String, StepError> {
    deploy::local::random_token().map(|t| format!("{prefix}-{t}")).map_err(|e| StepError::Read(e.to_string()))
}
