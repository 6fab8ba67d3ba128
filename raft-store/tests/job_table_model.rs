//! Randomized command sequences against the pure `JobTable`: invariants after every step, results
//! that never change once recorded, and replay determinism down to the snapshot bytes.

use std::collections::BTreeMap;

use raft_store::Digest;
use raft_store::job_table::{
    Checkpoint, Command, CommandResponse, CompleteOutcome, EnqueueOutcome, JobId, JobResult, JobStatus, JobTable,
    JoinTerms, LeaseBudget, Limits, NewJob, ScalerCommand, WorkerId, WorkerState,
};
use raft_store::state_machine::encode_table;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Generates plausible and implausible commands, tracking only what a client could know.
struct Generator {
    rng: StdRng,
    now_ms: u64,
    workers: Vec<WorkerId>,
    leased: Vec<(WorkerId, JobId, u64)>,
    keys: u32,
}

impl Generator {
    fn new(seed: u64) -> Self {
        Generator { rng: StdRng::seed_from_u64(seed), now_ms: 1_000, workers: vec![], leased: vec![], keys: 0 }
    }

    fn digest(&mut self) -> Digest {
        let mut bytes = [0u8; 64];
        self.rng.fill(&mut bytes[..]);
        Digest(bytes)
    }

    /// A body's first digest: often one of a few, as clients resubmitting the same data send.
    fn first_digest(&mut self) -> Digest {
        if self.rng.random_ratio(1, 2) { Digest([self.rng.random_range(1..5); 64]) } else { self.digest() }
    }

    fn some_worker(&mut self) -> WorkerId {
        if self.workers.is_empty() || self.rng.random_ratio(1, 20) {
            self.rng.random_range(1..50) // possibly unknown
        } else {
            self.workers[self.rng.random_range(0..self.workers.len())]
        }
    }

    fn some_job(&mut self) -> JobId {
        if !self.leased.is_empty() && self.rng.random_ratio(4, 5) {
            self.leased[self.rng.random_range(0..self.leased.len())].1
        } else {
            self.rng.random_range(0..400)
        }
    }

    fn next(&mut self) -> Command {
        self.now_ms += self.rng.random_range(0..50);
        let now_ms = self.now_ms;
        match self.rng.random_range(0..100) {
            // Reuse is enabled, early or late in a sequence (the same command again is harmless).
            0 if self.rng.random_ratio(1, 4) => Command::EnableReuse,
            0..=24 => {
                let n = self.rng.random_range(1..5);
                let jobs = (0..n)
                    .map(|_| {
                        let key = self.rng.random_ratio(1, 3).then(|| {
                            // Reuse keys sometimes, as a retrying client would.
                            if self.keys > 0 && self.rng.random_ratio(1, 2) {
                                format!("key-{}", self.rng.random_range(0..self.keys))
                            } else {
                                self.keys += 1;
                                format!("key-{}", self.keys - 1)
                            }
                        });
                        NewJob {
                            digest: self.first_digest(),
                            iterations: self.rng.random_range(0..20),
                            enqueued_at_ms: now_ms,
                            idempotency_key: key,
                            reuse: self.rng.random_ratio(4, 5),
                        }
                    })
                    .collect();
                if self.rng.random_ratio(3, 4) { Command::EnqueueReusing { jobs } } else { Command::Enqueue { jobs } }
            }
            25..=29 => Command::RegisterWorker {
                name: format!("w{}", self.rng.random_range(0..100)),
                cores: self.rng.random_range(1..8),
                instance_id: self.rng.random_ratio(1, 2).then(|| self.instance()),
                now_ms,
                witness: self.rng.random_ratio(1, 10),
                launch_token: self.rng.random_ratio(1, 2).then(|| self.token()),
            },
            30..=44 => Command::Lease {
                worker: self.some_worker(),
                max_jobs: self.rng.random_range(0..6),
                now_ms,
                deadline_ms: now_ms + self.rng.random_range(0..400),
                budget: self.rng.random_ratio(1, 2).then(|| LeaseBudget {
                    free_cores: self.rng.random_range(0..3),
                    iterations: self.rng.random_range(0..40),
                }),
            },
            45..=59 => {
                let worker = self.some_worker();
                let checkpoints = (0..self.rng.random_range(0..3))
                    .map(|_| Checkpoint {
                        job: self.some_job(),
                        done: self.rng.random_range(0..25),
                        digest: self.digest(),
                    })
                    .collect();
                Command::Heartbeat {
                    worker,
                    now_ms,
                    deadline_ms: now_ms + self.rng.random_range(0..400),
                    checkpoints,
                    hashes_per_s: self.rng.random_range(0..1_000),
                }
            }
            60..=79 => {
                let worker = self.some_worker();
                let results = (0..self.rng.random_range(1..4))
                    .map(|_| JobResult { job: self.some_job(), result: self.digest() })
                    .collect();
                Command::Complete { worker, now_ms, results }
            }
            80..=84 => {
                let worker = self.some_worker();
                let checkpoints = (0..self.rng.random_range(0..3))
                    .map(|_| Checkpoint {
                        job: self.some_job(),
                        done: self.rng.random_range(0..25),
                        digest: self.digest(),
                    })
                    .collect();
                Command::Release { worker, checkpoints }
            }
            85..=91 => Command::ExpireLeases { now_ms },
            92..=94 => Command::UpdateWorker {
                worker: self.some_worker(),
                state: if self.rng.random_ratio(1, 2) { WorkerState::Draining } else { WorkerState::Active },
                now_ms,
            },
            95..=96 => Command::RemoveWorker {
                worker: self.some_worker(),
                last_seen_ms: self.rng.random_bool(0.5).then_some(now_ms),
            },
            97 => Command::SetLimits(Limits {
                completed_retention: self.rng.random_range(0..200),
                max_queued: self.rng.random_range(0..300),
                max_lease_batch: self.rng.random_range(0..8),
            }),
            98 if self.rng.random_ratio(1, 3) => Command::UseJoin {
                launch_token: self.token(),
                secret_sha256: self.join_hash(),
                now_ms: now_ms + self.rng.random_range(0..2_000),
            },
            98 => Command::Scaler(self.scaler_decision(now_ms)),
            _ => Command::ExpireLeases { now_ms: now_ms.saturating_sub(self.rng.random_range(0..1_000)) },
        }
    }

    fn token(&mut self) -> String {
        format!("t-{}", self.rng.random_range(0..8))
    }

    fn instance(&mut self) -> String {
        format!("i-{}", self.rng.random_range(0..8))
    }

    /// One of a few join secrets' hashes, so that some joins match their launch's.
    fn join_hash(&mut self) -> String {
        wire::join_secret_sha256(&format!("join-{}", self.rng.random_range(0..3)))
    }

    fn join_terms(&mut self) -> Option<JoinTerms> {
        self.rng
            .random_ratio(3, 4)
            .then(|| JoinTerms { secret_sha256: self.join_hash(), valid_ms: self.rng.random_range(0..1_500) })
    }

    fn scaler_decision(&mut self, at_ms: u64) -> ScalerCommand {
        let why = "test".to_owned();
        match self.rng.random_range(0..8) {
            0 => ScalerCommand::LaunchRequested { token: self.token(), at_ms, why, join: self.join_terms() },
            7 => match self.join_terms() {
                Some(join) => ScalerCommand::JoinRenewed { token: self.token(), join, at_ms },
                None => ScalerCommand::Held { at_ms, why },
            },
            1 => ScalerCommand::InstanceSeen { token: self.token(), instance_id: self.instance(), at_ms },
            2 => ScalerCommand::TerminationRequested { instance_id: self.instance(), at_ms },
            3 => ScalerCommand::LaunchFailed { token: self.token(), at_ms, why },
            4 => ScalerCommand::ScaleIn { worker: self.some_worker(), at_ms, why },
            5 => ScalerCommand::Resume { worker: self.some_worker(), at_ms, why },
            _ => ScalerCommand::Held { at_ms, why },
        }
    }

    fn observe(&mut self, command: &Command, response: &CommandResponse) {
        match (command, response) {
            (Command::RegisterWorker { .. }, CommandResponse::WorkerRegistered(id)) => self.workers.push(*id),
            (Command::Lease { worker, .. }, CommandResponse::Leased(jobs)) => {
                self.leased.extend(jobs.iter().map(|job| (*worker, job.job, job.iterations)));
            }
            _ => {}
        }
    }
}

fn run_sequence(seed: u64, steps: usize) -> (Vec<Command>, JobTable) {
    let mut generator = Generator::new(seed);
    let mut table = JobTable::new(Limits { completed_retention: 150, max_queued: 200, max_lease_batch: 4 });
    let mut commands = Vec::with_capacity(steps);
    // Every result ever recorded, by job id: it must never change while visible.
    let mut recorded: BTreeMap<JobId, Digest> = BTreeMap::new();
    let mut ids_seen: BTreeMap<JobId, u64> = BTreeMap::new();

    for step in 0..steps {
        let command = generator.next();
        let before = table.clone();
        let response = table.apply(&command);
        if let Err(broken) = table.check_invariants() {
            panic!("seed {seed} step {step}: {broken}\ncommand: {command:?}\nresponse: {response:?}");
        }
        match (&command, &response) {
            (Command::Enqueue { jobs } | Command::EnqueueReusing { jobs }, CommandResponse::Enqueued(outcomes)) => {
                assert_eq!(jobs.len(), outcomes.len());
                for outcome in outcomes {
                    if let EnqueueOutcome::Created(id) = outcome {
                        assert!(ids_seen.insert(*id, step as u64).is_none(), "seed {seed}: id {id} assigned twice");
                    }
                }
            }
            (Command::Complete { results, .. }, CommandResponse::Completed(outcomes)) => {
                for (result, outcome) in results.iter().zip(outcomes) {
                    if let CompleteOutcome::Recorded(_) = outcome {
                        assert!(
                            recorded.insert(result.job, result.result).is_none(),
                            "seed {seed} step {step}: job {} recorded twice",
                            result.job
                        );
                    }
                }
            }
            (_, CommandResponse::Rejected(_)) => {
                assert!(table == before, "seed {seed} step {step}: rejected {command:?} changed the table");
            }
            _ => {}
        }
        // Results still retained are exactly the ones first recorded; a job served whole from
        // another has that job's result.
        let mut records: Vec<_> = table.latest_completed(usize::MAX).collect();
        records.reverse();
        for job in records {
            let first = match recorded.get(&job.id) {
                Some(first) => *first,
                None => {
                    let reuse = job.reused.expect("a result not recorded by a Complete was served from another job");
                    if reuse.from == job.iterations
                        && let Some(source) = recorded.get(&reuse.job)
                    {
                        assert_eq!(
                            *source, job.result,
                            "seed {seed} step {step}: job {} differs from {}",
                            job.id, reuse.job
                        );
                    }
                    recorded.insert(job.id, job.result);
                    job.result
                }
            };
            assert_eq!(first, job.result, "seed {seed} step {step}: result of {} changed", job.id);
            assert!(matches!(table.job_status(job.id), Some(JobStatus::Completed(_))));
        }
        generator.observe(&command, &response);
        commands.push(command);
    }
    (commands, table)
}

#[test]
fn random_sequences_keep_every_invariant() {
    for seed in 0..20 {
        let (_, table) = run_sequence(seed, 2_500);
        let totals = table.totals();
        assert!(totals.enqueued > 0 && totals.completed > 0, "seed {seed} exercised too little: {totals:?}");
        assert!(totals.reused > 0, "seed {seed} reused nothing: {totals:?}");
    }
}

#[test]
fn replaying_a_log_gives_byte_identical_snapshots() {
    for seed in [1, 7, 42] {
        let (commands, table) = run_sequence(seed, 3_000);
        let mut replica = JobTable::new(Limits { completed_retention: 150, max_queued: 200, max_lease_batch: 4 });
        let mut halfway = None;
        for (i, command) in commands.iter().enumerate() {
            replica.apply(command);
            if i == commands.len() / 2 {
                halfway = Some(encode_table(&replica).expect("encode"));
            }
        }
        assert_eq!(encode_table(&replica).expect("encode"), encode_table(&table).expect("encode"), "seed {seed}");
        // A replica restored from a mid-way snapshot and fed the rest reaches the same bytes.
        let mut restored = raft_store::state_machine::decode_table(&halfway.expect("taken")).expect("decode");
        for command in &commands[commands.len() / 2 + 1..] {
            restored.apply(command);
        }
        assert_eq!(encode_table(&restored).expect("encode"), encode_table(&table).expect("encode"), "seed {seed}");
    }
}
