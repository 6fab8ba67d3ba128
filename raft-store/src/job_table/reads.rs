//! The table's reads: where a job is, pages of completions, the queue, the registry, and the
//! invariants the tests check after every step.

use super::*;

impl JobTable {
    /// Where job `id` is, or `None` if no such job was ever created.
    pub fn job_status(&self, id: JobId) -> Option<JobStatus<'_>> {
        if id == 0 || id >= self.next_job_id {
            return None;
        }
        if let Some(seq) = self.completed_by_job.get(&id) {
            return self.completed.get(seq).map(JobStatus::Completed);
        }
        if let Some(lease) = self.leases.get(&id) {
            return Some(JobStatus::Running(lease));
        }
        if let Some(job) = self.requeued.get(&id) {
            return Some(JobStatus::Queued(job));
        }
        if let Ok(at) = self.queue.binary_search_by_key(&id, |job| job.id) {
            return Some(JobStatus::Queued(&self.queue[at]));
        }
        if let Some(following) = self.following.get(&id) {
            return Some(JobStatus::Following(following));
        }
        Some(JobStatus::Forgotten)
    }

    /// Up to `top` most recent completions, newest first.
    pub fn latest_completed(&self, top: usize) -> impl Iterator<Item = &CompletedRecord> {
        self.completed.values().rev().take(top)
    }

    /// Up to `limit` completions with a sequence number above `after`, oldest first.
    pub fn completed_after(&self, after: CompletionSeq, limit: usize) -> impl Iterator<Item = &CompletedRecord> {
        self.completed.range(after.saturating_add(1)..).map(|(_, job)| job).take(limit)
    }

    /// The oldest completion still retained (`None` when none is).
    pub fn oldest_retained_completion_seq(&self) -> Option<CompletionSeq> {
        self.completed.keys().next().copied()
    }

    /// A page of completions for a reader: the `top` newest when `after` is `None`, newest
    /// first; else up to `top` after the cursor `after`, oldest first, with the number of
    /// completions retention dropped between the cursor and the first one kept. A cursor past
    /// the newest completion was never handed out by this table.
    pub fn completed_page(&self, after: Option<CompletionSeq>, top: usize) -> Result<CompletedPage<'_>, CursorAhead> {
        let last_seq = self.last_completion_seq();
        let Some(after) = after else {
            let jobs = self.latest_completed(top).collect();
            return Ok(CompletedPage { jobs, cursor: last_seq, last_seq, skipped: 0 });
        };
        if after > last_seq {
            return Err(CursorAhead { after, last_seq });
        }
        let jobs: Vec<&CompletedRecord> = self.completed_after(after, top).collect();
        let cursor = jobs.last().map_or(after, |job| job.seq);
        // Completion numbers have no holes, so what retention dropped is the distance from the
        // cursor to the oldest one kept.
        let first_kept = self.oldest_retained_completion_seq().unwrap_or(last_seq + 1);
        let skipped = first_kept.saturating_sub(after + 1);
        Ok(CompletedPage { jobs, cursor, last_seq, skipped })
    }

    /// Workers not heard from for `timeout_ms` or longer at `now_ms`, each with when it was last
    /// heard from (what a removal for silence carries, see [`super::Command::RemoveWorker`]).
    pub fn silent_workers(&self, now_ms: u64, timeout_ms: u64) -> Vec<(WorkerId, u64)> {
        self.workers
            .iter()
            .filter(|(_, worker)| worker.last_seen_ms.saturating_add(timeout_ms) <= now_ms)
            .map(|(id, worker)| (*id, worker.last_seen_ms))
            .collect()
    }

    /// Whether a lease within `budget` would hand out at least one job now.
    pub fn lease_would_grant(&self, budget: Option<LeaseBudget>) -> bool {
        match (self.next_waiting(), budget) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(job), Some(budget)) => budget.admits(job.iterations - job.done),
        }
    }

    /// The job the next lease hands out: the oldest requeued one, else the oldest never leased.
    pub(super) fn next_waiting(&self) -> Option<&QueuedJob> {
        self.requeued.first_key_value().map(|(_, job)| job).or(self.queue.front())
    }

    /// Whether any lease has reached its deadline at `now_ms`.
    pub fn any_lease_expired(&self, now_ms: u64) -> bool {
        self.leases.values().any(|lease| lease.deadline_ms <= now_ms)
    }

    /// The newest completion sequence number recorded, 0 before the first.
    pub fn last_completion_seq(&self) -> CompletionSeq {
        self.next_completion_seq - 1
    }

    /// Jobs waiting for a worker (never leased plus requeued).
    pub fn queued_len(&self) -> u64 {
        (self.queue.len() + self.requeued.len()) as u64
    }

    /// Jobs waiting on another job computing the same chain (they need no worker).
    pub fn following_len(&self) -> u64 {
        self.following.len() as u64
    }

    /// Where job `id` started, if it is not completed yet and started from another job's chain.
    pub fn reuse_start(&self, id: JobId) -> Option<Reuse> {
        self.reuse_starts.get(&id).copied()
    }

    /// Iterations still to compute over all waiting jobs.
    pub fn queued_iterations(&self) -> u64 {
        self.queued_iterations
    }

    /// When the oldest waiting job was enqueued (ms), if any waits.
    pub fn oldest_queued_at_ms(&self) -> Option<u64> {
        let requeued = self.requeued.values().map(|job| job.enqueued_at_ms).min();
        let queued = self.queue.front().map(|job| job.enqueued_at_ms);
        requeued.into_iter().chain(queued).min()
    }

    /// Every outstanding lease, by job id.
    pub fn leases(&self) -> &BTreeMap<JobId, Lease> {
        &self.leases
    }

    /// The worker registry.
    pub fn workers(&self) -> &BTreeMap<WorkerId, Worker> {
        &self.workers
    }

    /// Registered workers but the witness's: the fleet the autoscaler sizes.
    pub fn workers_besides_the_witness(&self) -> usize {
        self.workers.values().filter(|w| !w.witness).count()
    }

    /// The autoscaler's committed decisions.
    pub fn scaler(&self) -> &ScalerState {
        &self.scaler
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The limits coordinator `node` last configured, if it ever did.
    pub fn limits_configured_by(&self, node: u64) -> Option<Limits> {
        self.limits_configured.get(&node).copied()
    }

    /// Running totals.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// How many completed results are retained.
    pub fn completed_len(&self) -> usize {
        self.completed.len()
    }

    /// Check every structural invariant; `Err` names the first one broken. Used by tests after
    /// every step, and cheap enough for debug assertions on small tables.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        let mut place = |id: JobId, where_: &str| -> Result<(), String> {
            if id == 0 || id >= self.next_job_id {
                return Err(format!("job {id} in {where_} was never assigned"));
            }
            if !seen.insert(id) {
                return Err(format!("job {id} is in {where_} and somewhere else too"));
            }
            Ok(())
        };
        for job in &self.queue {
            place(job.id, "queue")?;
        }
        for (id, job) in &self.requeued {
            if *id != job.id {
                return Err(format!("requeued key {id} holds job {}", job.id));
            }
            place(*id, "requeued")?;
        }
        for (id, lease) in &self.leases {
            if *id != lease.job.id {
                return Err(format!("lease key {id} holds job {}", lease.job.id));
            }
            place(*id, "leases")?;
        }
        for (id, seq) in &self.completed_by_job {
            match self.completed.get(seq) {
                Some(job) if job.id == *id && job.seq == *seq => {}
                _ => {
                    return Err(format!("completed_by_job {id} -> {seq} does not match completed"));
                }
            }
            place(*id, "completed")?;
        }
        if self.completed.len() != self.completed_by_job.len() {
            return Err("completed and completed_by_job differ in size".into());
        }
        if self.completed.len() as u64 > self.limits.completed_retention {
            return Err("more completions retained than the limit".into());
        }
        if !self.queue.iter().zip(self.queue.iter().skip(1)).all(|(a, b)| a.id < b.id) {
            return Err("queue is not in id order".into());
        }
        if let (Some((last_requeued, _)), Some(front)) = (self.requeued.last_key_value(), self.queue.front())
            && *last_requeued >= front.id
        {
            return Err("a requeued job is newer than a never-leased one".into());
        }
        let waiting = self.queue.iter().chain(self.requeued.values());
        let mut iterations = 0u64;
        for job in waiting.chain(self.leases.values().map(|lease| &lease.job)) {
            if job.done == 0 || job.done > job.iterations {
                return Err(format!("job {} has done {} of {}", job.id, job.done, job.iterations));
            }
        }
        for job in self.queue.iter().chain(self.requeued.values()) {
            iterations = iterations.saturating_add(job.iterations - job.done);
        }
        if iterations != self.queued_iterations {
            return Err(format!("queued_iterations {} but jobs sum to {iterations}", self.queued_iterations));
        }
        for (worker_id, worker) in &self.workers {
            let held = self.leases.values().filter(|lease| lease.worker == *worker_id).count() as u32;
            if held != worker.leases {
                return Err(format!("worker {worker_id} counts {} leases but holds {held}", worker.leases));
            }
        }
        for (key, id) in &self.idempotency {
            if self.idempotency_by_job.get(id) != Some(key) {
                return Err(format!("idempotency key {key:?} -> {id} has no reverse entry"));
            }
        }
        if self.idempotency.len() != self.idempotency_by_job.len() {
            return Err("idempotency maps differ in size".into());
        }
        if let Some(id) = self.idempotency_requests.keys().find(|id| !self.idempotency_by_job.contains_key(id)) {
            return Err(format!("job {id} has a request fingerprint but no idempotency key"));
        }
        for id in &self.scaler.scaling_in {
            match self.workers.get(id) {
                Some(worker) if worker.state == WorkerState::Draining => {}
                _ => return Err(format!("worker {id} is being scaled in but is not a draining worker")),
            }
        }
        if self.scaler.records.len() > SCALER_RECORDS_KEPT {
            return Err("more scaler records kept than the limit".into());
        }
        self.check_reuse_invariants(seen)
    }

    /// The reuse indexes agree with the jobs (see the module documentation); `placed` holds
    /// every job queued, running or completed.
    fn check_reuse_invariants(&self, mut placed: std::collections::BTreeSet<JobId>) -> Result<(), String> {
        let untouched = self.chain_results.is_empty()
            && self.chain_live.is_empty()
            && self.origins.is_empty()
            && self.reuse_starts.is_empty()
            && self.following.is_empty()
            && self.totals.reused == 0
            && self.completed.values().all(|record| record.origin.is_none() && record.reused.is_none());
        if !self.reuse_enabled && !untouched {
            return Err("reuse is not enabled, but its indexes or records are not empty".into());
        }
        for (&(digest, iterations), seq) in &self.chain_results {
            match self.completed.get(seq) {
                Some(record) if record.origin == Some(digest) && record.iterations == iterations => {}
                _ => return Err(format!("chain result ({iterations} iterations) -> {seq} does not match its record")),
            }
        }
        for record in self.completed.values() {
            if let Some(digest) = record.origin {
                match self.chain_results.get(&(digest, record.iterations)) {
                    Some(seq) if *seq >= record.seq => {}
                    _ => {
                        return Err(format!(
                            "completed job {} is not indexed by a newer or equal completion",
                            record.id
                        ));
                    }
                }
            }
        }
        for (&(digest, iterations), id) in &self.chain_live {
            let Some(job) = self.waiting_or_running(*id) else {
                return Err(format!("chain live job {id} is not queued or running"));
            };
            let origin = self.origins.get(id).copied().or((job.done == 1).then_some(job.digest));
            if self.following.contains_key(id) {
                return Err(format!("chain live job {id} follows another"));
            }
            if job.iterations != iterations || origin != Some(digest) {
                return Err(format!("chain live job {id} is not of its chain"));
            }
        }
        for id in self.origins.keys().chain(self.reuse_starts.keys()) {
            if self.waiting_or_running(*id).is_none() {
                return Err(format!("job {id} has an origin or a reuse start but is not queued or running"));
            }
        }
        if let Some(id) = self.reuse_starts.keys().find(|id| !self.origins.contains_key(id)) {
            return Err(format!("job {id} started from another chain but keeps no origin"));
        }
        if let Some(record) = self.completed.values().find(|record| record.reused.is_some() && record.origin.is_none())
        {
            return Err(format!("completed job {} was reused but has no origin", record.id));
        }
        for (id, following) in &self.following {
            if *id != following.id || id == &0 || *id >= self.next_job_id {
                return Err(format!("following key {id} holds job {}", following.id));
            }
            if !placed.insert(*id) {
                return Err(format!("job {id} follows and is somewhere else too"));
            }
            let Some(leader) = self.waiting_or_running(following.leader) else {
                return Err(format!("job {id} follows {}, which is not queued or running", following.leader));
            };
            if leader.iterations != following.iterations || !self.followers.contains(&(following.leader, *id)) {
                return Err(format!("job {id} follows {} but does not match it", following.leader));
            }
            // The job followed computes the chain for others: it completes them.
            let origin = self.origins.get(&leader.id).copied().unwrap_or(leader.digest);
            if self.chain_live.get(&(origin, leader.iterations)) != Some(&leader.id) {
                return Err(format!("job {id} follows {}, which does not compute its chain for others", leader.id));
            }
        }
        if self.followers.len() != self.following.len() {
            return Err("followers and following differ in size".into());
        }
        Ok(())
    }
}
