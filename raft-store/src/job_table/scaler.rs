//! The autoscaler's part of the table: applying its decisions, linking a registering worker to
//! the launch that started it, and the [`Observation`] the policy decides from.
//!
//! Each decision was made by the leader from its view at some moment; apply re-checks what the
//! decision assumed against the committed state, and a decision whose premise no longer holds
//! is refused ([`Rejection::StaleDecision`], [`Rejection::WorkerBusy`]) and changes nothing:
//! a launch given up after it registered after all, a scale-in of a worker that has taken a
//! lease since, a termination of a busy worker's instance.

use wire::scaler::{LaunchInFlight, Observation, Standing, WorkerObservation};

use super::*;

/// Weight of the newest boot time in the moving average (1/4).
const BOOT_AVERAGE_SHIFT: u32 = 2;

impl JobTable {
    pub(super) fn apply_scaler(&mut self, decision: &ScalerCommand) -> CommandResponse {
        let scaler = &mut self.scaler;
        match decision {
            ScalerCommand::LaunchRequested { token, at_ms, why, join } => {
                if scaler.launches.contains_key(token) {
                    return CommandResponse::Done;
                }
                let join = join.as_ref().map(|terms| JoinGrant::new(terms, *at_ms));
                scaler.launches.insert(token.clone(), Launch { requested_at_ms: *at_ms, instance_id: None, join });
                scaler.totals.launches += 1;
                scaler.last_scale_out_ms = Some(*at_ms);
                self.record(*at_ms, "launch", Some(token.clone()), why.clone());
            }
            ScalerCommand::InstanceSeen { token, instance_id, at_ms } => {
                if let Some(launch) = scaler.launches.get_mut(token) {
                    launch.instance_id = Some(instance_id.clone());
                }
                // Whether its worker registered already or is still booting, the instance is
                // the scaler's to scale in.
                if !scaler.terminations.contains_key(instance_id) {
                    scaler.managed_instances.insert(instance_id.clone());
                }
                let registered = self.workers.values().any(|w| w.instance_id.as_ref() == Some(instance_id));
                if registered {
                    self.launch_registered(token, *at_ms);
                }
            }
            ScalerCommand::TerminationRequested { instance_id, at_ms } => {
                let busy = self
                    .workers
                    .values()
                    .any(|w| w.instance_id.as_deref() == Some(instance_id.as_str()) && w.leases > 0);
                if busy {
                    return CommandResponse::Rejected(Rejection::WorkerBusy);
                }
                if self.scaler.terminations.insert(instance_id.clone(), *at_ms).is_none() {
                    self.scaler.totals.terminations += 1;
                }
                self.scaler.managed_instances.remove(instance_id);
                self.record(
                    *at_ms,
                    "terminate",
                    Some(instance_id.clone()),
                    "scaled in: drained, holds no lease".into(),
                );
            }
            ScalerCommand::LaunchFailed { token, at_ms, why } => {
                // Given up because it had not registered: if it has since, it did not fail.
                if scaler.launches.remove(token).is_none() {
                    return CommandResponse::Rejected(Rejection::StaleDecision);
                }
                scaler.consecutive_failures = scaler.consecutive_failures.saturating_add(1);
                scaler.last_failure_ms = Some(*at_ms);
                scaler.totals.launch_failures += 1;
                self.record(*at_ms, "launch failed", Some(token.clone()), why.clone());
            }
            ScalerCommand::ScaleIn { worker, at_ms, why } => {
                match self.workers.get_mut(worker) {
                    // Decided because it was idle: not if it has taken work since.
                    Some(w) if w.state == WorkerState::Active && w.leases == 0 && !w.witness => {
                        w.state = WorkerState::Draining;
                    }
                    _ => return CommandResponse::Rejected(Rejection::StaleDecision),
                }
                self.scaler.scaling_in.insert(*worker);
                self.record(*at_ms, "scale in", Some(format!("worker {worker}")), why.clone());
            }
            ScalerCommand::Resume { worker, at_ms, why } => {
                let Some(w) = self.workers.get_mut(worker).filter(|_| scaler.scaling_in.contains(worker)) else {
                    return CommandResponse::Rejected(Rejection::StaleDecision);
                };
                w.state = WorkerState::Active;
                scaler.scaling_in.remove(worker);
                scaler.last_scale_out_ms = Some(*at_ms);
                self.record(*at_ms, "resume", Some(format!("worker {worker}")), why.clone());
            }
            ScalerCommand::ReplaceWitness { token, replaces, node_id, at_ms, why, join } => {
                if let Some(under_way) = scaler.witness.as_ref().filter(|w| w.pending()) {
                    // The same decision committed twice is one decision; another one is stale.
                    return match under_way.token == *token {
                        true => CommandResponse::Done,
                        false => CommandResponse::Rejected(Rejection::StaleDecision),
                    };
                }
                if *node_id <= scaler.highest_node_id {
                    return CommandResponse::Rejected(Rejection::StaleDecision);
                }
                scaler.highest_node_id = *node_id;
                scaler.witness = Some(WitnessReplacement {
                    token: token.clone(),
                    replaces: *replaces,
                    node_id: *node_id,
                    requested_at_ms: *at_ms,
                    instance_id: None,
                    raft_addr: None,
                    done_at_ms: None,
                    join: join.as_ref().map(|terms| JoinGrant::new(terms, *at_ms)),
                });
                self.record(*at_ms, "replace witness", Some(format!("node {replaces} by node {node_id}")), why.clone());
            }
            ScalerCommand::WitnessLaunched { token, instance_id, raft_addr, .. } => {
                let Some(replacement) = scaler.witness.as_mut().filter(|w| w.pending() && w.token == *token) else {
                    return CommandResponse::Rejected(Rejection::StaleDecision);
                };
                replacement.instance_id = Some(instance_id.clone());
                replacement.raft_addr = Some(raft_addr.clone());
            }
            ScalerCommand::WitnessReplaced { token, at_ms } => {
                let Some(replacement) = scaler.witness.as_mut().filter(|w| w.pending() && w.token == *token) else {
                    return CommandResponse::Rejected(Rejection::StaleDecision);
                };
                replacement.done_at_ms = Some(*at_ms);
                let subject = format!("node {} by node {}", replacement.replaces, replacement.node_id);
                self.record(*at_ms, "witness replaced", Some(subject), "the new witness votes".into());
            }
            ScalerCommand::WitnessFailed { token, at_ms, why } => {
                if !scaler.witness.as_ref().is_some_and(|w| w.pending() && w.token == *token) {
                    return CommandResponse::Rejected(Rejection::StaleDecision);
                }
                let replacement = scaler.witness.take().expect("checked above");
                let subject = format!("node {} by node {}", replacement.replaces, replacement.node_id);
                self.record(*at_ms, "witness replacement failed", Some(subject), why.clone());
            }
            ScalerCommand::JoinRenewed { token, join, at_ms } => match self.join_slot_mut(token) {
                Some(Some(grant)) if grant.used_at_ms.is_none() => grant.renew(join, *at_ms),
                // A launch committed before join secrets had none: it gets one too.
                Some(slot @ None) => *slot = Some(JoinGrant::new(join, *at_ms)),
                // Not in flight, or its worker joined already (and a launch again starts nothing).
                _ => return CommandResponse::Rejected(Rejection::StaleDecision),
            },
            ScalerCommand::Held { at_ms, why } => {
                let repeated = self.scaler.records.back().is_some_and(|last| last.action == "held" && last.why == *why);
                if !repeated {
                    self.record(*at_ms, "held", None, why.clone());
                }
            }
        }
        CommandResponse::Done
    }

    /// Where the join secret of the launch in flight under `token` is kept: an autoscaler's
    /// launch, or the witness replacement under way.
    fn join_slot_mut(&mut self, token: &str) -> Option<&mut Option<JoinGrant>> {
        let scaler = &mut self.scaler;
        match scaler.launches.get_mut(token) {
            Some(launch) => Some(&mut launch.join),
            None => Some(&mut scaler.witness.as_mut().filter(|w| w.pending() && w.token == token)?.join),
        }
    }

    /// Whether the join secret whose SHA-256 is `secret_sha256` may be exchanged now for the
    /// launch under `launch_token`: the check [`Command::UseJoin`] makes when applied, and that
    /// a coordinator makes on its own copy before proposing one. The hashes are compared in
    /// constant time; used and expired are told only to a caller holding the right secret.
    pub fn join_allowed(&self, launch_token: &str, secret_sha256: &str, now_ms: u64) -> Result<(), Rejection> {
        let scaler = &self.scaler;
        let grant = match scaler.launches.get(launch_token) {
            Some(launch) => launch.join.as_ref(),
            None => {
                scaler.witness.as_ref().filter(|w| w.pending() && w.token == launch_token).and_then(|w| w.join.as_ref())
            }
        };
        let Some(grant) = grant.filter(|g| g.holds(secret_sha256)) else {
            return Err(Rejection::JoinRefused);
        };
        if grant.used_at_ms.is_some() {
            return Err(Rejection::JoinUsed);
        }
        if now_ms >= grant.expires_at_ms {
            return Err(Rejection::JoinExpired);
        }
        Ok(())
    }

    /// Apply [`Command::UseJoin`].
    pub(super) fn use_join(&mut self, launch_token: &str, secret_sha256: &str, now_ms: u64) -> CommandResponse {
        if let Err(refused) = self.join_allowed(launch_token, secret_sha256, now_ms) {
            return CommandResponse::Rejected(refused);
        }
        if let Some(Some(grant)) = self.join_slot_mut(launch_token) {
            grant.used_at_ms = Some(now_ms);
        }
        self.record(now_ms, "join", Some(launch_token.to_owned()), "its worker exchanged its join secret".into());
        CommandResponse::Done
    }

    /// A worker that registers with a launch token (or on an instance a launch produced) ends
    /// that launch: the instance becomes the scaler's, the boot time is measured, and the run of
    /// failures is over.
    pub(super) fn link_registration(&mut self, launch_token: Option<&str>, instance_id: Option<&str>, now_ms: u64) {
        let token = launch_token.map(str::to_owned).or_else(|| {
            let instance_id = instance_id?;
            self.scaler
                .launches
                .iter()
                .find(|(_, launch)| launch.instance_id.as_deref() == Some(instance_id))
                .map(|(token, _)| token.clone())
        });
        if let Some(token) = token
            && self.scaler.launches.contains_key(&token)
        {
            if let Some(instance_id) = instance_id {
                self.scaler.managed_instances.insert(instance_id.to_owned());
            }
            self.launch_registered(&token, now_ms);
        }
    }

    fn launch_registered(&mut self, token: &str, now_ms: u64) {
        let Some(launch) = self.scaler.launches.remove(token) else {
            return;
        };
        let boot = now_ms.saturating_sub(launch.requested_at_ms);
        self.scaler.boot_ms = Some(match self.scaler.boot_ms {
            None => boot,
            Some(mean) => mean - (mean >> BOOT_AVERAGE_SHIFT) + (boot >> BOOT_AVERAGE_SHIFT),
        });
        self.scaler.consecutive_failures = 0;
    }

    /// A worker leaves the registry: it is no longer being scaled in, and its instance's
    /// termination is done.
    pub(super) fn forget_scaled_worker(&mut self, worker: WorkerId, instance_id: Option<&str>) {
        self.scaler.scaling_in.remove(&worker);
        if let Some(instance_id) = instance_id {
            self.scaler.terminations.remove(instance_id);
        }
    }

    fn record(&mut self, at_ms: u64, action: &str, subject: Option<String>, why: String) {
        let records = &mut self.scaler.records;
        if records.len() >= SCALER_RECORDS_KEPT {
            records.pop_front();
        }
        records.push_back(ScalerRecord { at_ms, action: action.into(), subject, why });
    }

    /// What the autoscaling policy decides from, at `now_ms`.
    pub fn scaler_observation(&self, now_ms: u64) -> Observation {
        let scaler = &self.scaler;
        let workers = self
            .workers
            .iter()
            .map(|(id, w)| WorkerObservation {
                id: *id,
                cores: w.cores,
                leases: w.leases,
                hashes_per_s: w.hashes_per_s,
                standing: match w.state {
                    WorkerState::Active => Standing::Active,
                    WorkerState::Draining if scaler.scaling_in.contains(id) => Standing::ScalingIn,
                    WorkerState::Draining => Standing::DrainedByOperator,
                },
                witness: w.witness,
                managed: w.instance_id.as_ref().is_some_and(|i| scaler.managed_instances.contains(i)),
                idle_since_ms: (w.leases == 0).then_some(w.last_busy_ms.max(w.registered_at_ms)),
            })
            .collect();
        let running_iterations_left =
            self.leases.values().fold(0u64, |sum, lease| sum.saturating_add(lease.job.iterations - lease.job.done));
        Observation {
            now_ms,
            queued_jobs: self.queued_len(),
            queued_iterations: self.queued_iterations,
            running_jobs: self.leases.len() as u64,
            running_iterations_left,
            workers,
            launches_in_flight: scaler
                .launches
                .iter()
                .map(|(token, launch)| LaunchInFlight { token: token.clone(), requested_at_ms: launch.requested_at_ms })
                .collect(),
            boot_ms: scaler.boot_ms,
            last_scale_out_ms: scaler.last_scale_out_ms,
            consecutive_failures: scaler.consecutive_failures,
            last_failure_ms: scaler.last_failure_ms,
        }
    }
}
