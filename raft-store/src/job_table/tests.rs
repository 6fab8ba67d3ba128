//! Table tests of [`JobTable::apply`] and its reads.

use wire::Digest;

use super::*;

fn job(iterations: u64, at: u64, key: Option<&str>) -> NewJob {
    NewJob {
        digest: Digest([at as u8; 64]),
        iterations,
        enqueued_at_ms: at,
        idempotency_key: key.map(str::to_owned),
        reuse: false,
    }
}

fn register(table: &mut JobTable, name: &str) -> WorkerId {
    let register = Command::RegisterWorker {
        name: name.into(),
        cores: 2,
        instance_id: None,
        now_ms: 0,
        witness: false,
        launch_token: None,
    };
    match table.apply(&register) {
        CommandResponse::WorkerRegistered(id) => id,
        other => panic!("unexpected {other:?}"),
    }
}

fn leased_ids(response: CommandResponse) -> Vec<JobId> {
    match response {
        CommandResponse::Leased(jobs) => jobs.iter().map(|j| j.job).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

/// A table with completions 1..=5 of which retention keeps the newest 3 (seq 3, 4, 5).
fn table_with_five_completions_three_kept() -> JobTable {
    let mut table = JobTable::new(Limits { completed_retention: 3, ..Limits::default() });
    let worker = register(&mut table, "w");
    table.apply(&Command::Enqueue { jobs: (1..=5).map(|at| job(1, at, None)).collect() });
    for id in
        leased_ids(table.apply(&Command::Lease { worker, max_jobs: 5, now_ms: 10, deadline_ms: 99, budget: None }))
    {
        let results = vec![JobResult { job: id, result: Digest([7; 64]) }];
        table.apply(&Command::Complete { worker, now_ms: 11, results });
    }
    table
}

#[test]
fn a_page_of_completions_counts_what_retention_dropped_before_it() {
    let table = table_with_five_completions_three_kept();
    let seqs = |page: &CompletedPage| page.jobs.iter().map(|job| job.seq).collect::<Vec<_>>();
    // (after, top, seqs on the page, cursor, skipped)
    let cases = [
        (None, 2, vec![5, 4], 5, 0),
        (None, 10, vec![5, 4, 3], 5, 0),
        (Some(0), 10, vec![3, 4, 5], 5, 2),
        (Some(1), 1, vec![3], 3, 1),
        (Some(2), 10, vec![3, 4, 5], 5, 0),
        (Some(3), 1, vec![4], 4, 0),
        (Some(5), 10, vec![], 5, 0),
    ];
    for (after, top, expected, cursor, skipped) in cases {
        let page = table.completed_page(after, top).expect("a cursor this table handed out");
        assert_eq!(seqs(&page), expected, "after {after:?} top {top}");
        assert_eq!((page.cursor, page.last_seq, page.skipped), (cursor, 5, skipped), "after {after:?} top {top}");
    }
    assert_eq!(table.completed_page(Some(6), 10), Err(CursorAhead { after: 6, last_seq: 5 }));
    let empty = JobTable::default();
    let page = empty.completed_page(Some(0), 10).expect("cursor 0 before any completion");
    assert_eq!((page.jobs.len(), page.cursor, page.last_seq, page.skipped), (0, 0, 0, 0));
}

#[test]
fn a_worker_is_silent_once_the_timeout_has_passed_since_it_was_last_seen() {
    let mut table = JobTable::default();
    let quiet = register(&mut table, "quiet");
    let chatty = register(&mut table, "chatty");
    let heartbeat =
        Command::Heartbeat { worker: chatty, now_ms: 500, deadline_ms: 600, checkpoints: vec![], hashes_per_s: 0 };
    table.apply(&heartbeat);
    assert_eq!(table.silent_workers(999, 1_000), vec![]);
    assert_eq!(table.silent_workers(1_000, 1_000), vec![(quiet, 0)]);
    assert_eq!(table.silent_workers(1_500, 1_000), vec![(quiet, 0), (chatty, 500)]);
    assert_eq!(table.silent_workers(1_500, u64::MAX), vec![], "the timeout saturates, never wraps");
}

#[test]
fn a_lease_expires_at_its_deadline() {
    let mut table = JobTable::default();
    let worker = register(&mut table, "w");
    table.apply(&Command::Enqueue { jobs: vec![job(1, 1, None)] });
    table.apply(&Command::Lease { worker, max_jobs: 1, now_ms: 10, deadline_ms: 20, budget: None });
    assert!(!table.any_lease_expired(19));
    assert!(table.any_lease_expired(20));
}

#[test]
fn ids_are_assigned_in_order_and_idempotency_keys_dedupe() {
    let mut table = JobTable::default();
    let response = table.apply(&Command::Enqueue {
        jobs: vec![
            job(3, 1, Some("a")),
            job(1, 2, None),
            job(3, 1, Some("a")),
            job(0, 4, None),
            // The same key for another request (other iterations, another body): refused.
            job(5, 1, Some("a")),
            job(3, 9, Some("a")),
        ],
    });
    assert_eq!(
        response,
        CommandResponse::Enqueued(vec![
            EnqueueOutcome::Created(1),
            EnqueueOutcome::Created(2),
            EnqueueOutcome::Duplicate(1),
            EnqueueOutcome::Invalid,
            EnqueueOutcome::KeyReused(1),
            EnqueueOutcome::KeyReused(1),
        ])
    );
    assert_eq!(table.queued_len(), 2);
    assert_eq!(table.queued_iterations(), 2);
    table.check_invariants().expect("invariants");
}

#[test]
fn queue_full_refuses_and_counts() {
    let mut table = JobTable::new(Limits { max_queued: 1, ..Limits::default() });
    let response = table.apply(&Command::Enqueue { jobs: vec![job(1, 1, None), job(1, 2, None)] });
    assert_eq!(response, CommandResponse::Enqueued(vec![EnqueueOutcome::Created(1), EnqueueOutcome::QueueFull]));
    assert_eq!(table.totals().rejected_queue_full, 1);
}

#[test]
fn lease_expire_and_resume_from_checkpoint() {
    let mut table = JobTable::default();
    table.apply(&Command::Enqueue { jobs: vec![job(100, 1, None), job(100, 2, None)] });
    let w = register(&mut table, "w1");
    assert_eq!(
        leased_ids(table.apply(&Command::Lease { worker: w, max_jobs: 1, now_ms: 10, deadline_ms: 20, budget: None })),
        vec![1]
    );
    let checkpoint = Checkpoint { job: 1, done: 40, digest: Digest([9; 64]) };
    let ack = table.apply(&Command::Heartbeat {
        worker: w,
        now_ms: 15,
        deadline_ms: 25,
        checkpoints: vec![checkpoint, Checkpoint { job: 2, done: 5, digest: Digest([1; 64]) }],
        hashes_per_s: 0,
    });
    assert_eq!(ack, CommandResponse::HeartbeatAck { lost: vec![2], state: WorkerState::Active });
    assert_eq!(table.apply(&Command::ExpireLeases { now_ms: 24 }), CommandResponse::Requeued(vec![]));
    assert_eq!(table.apply(&Command::ExpireLeases { now_ms: 25 }), CommandResponse::Requeued(vec![1]));
    table.check_invariants().expect("invariants");
    // The requeued job (older) comes before job 2, and resumes from the checkpoint.
    let w2 = register(&mut table, "w2");
    match table.apply(&Command::Lease { worker: w2, max_jobs: 4, now_ms: 30, deadline_ms: 40, budget: None }) {
        CommandResponse::Leased(jobs) => {
            assert_eq!(jobs.len(), 2);
            assert_eq!(jobs[0], LeasedJob { job: 1, iterations: 100, done: 40, digest: Digest([9; 64]) });
            assert_eq!(jobs[1].job, 2);
            assert_eq!(jobs[1].done, 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    table.check_invariants().expect("invariants");
}

#[test]
fn heartbeats_extend_only_the_leases_the_worker_reports() {
    let mut table = JobTable::default();
    table.apply(&Command::Enqueue { jobs: vec![job(10, 1, None), job(10, 2, None)] });
    let w = register(&mut table, "w");
    leased_ids(table.apply(&Command::Lease { worker: w, max_jobs: 2, now_ms: 0, deadline_ms: 10, budget: None }));
    // The worker only learned of job 1 (the answer for job 2 was lost, say).
    table.apply(&Command::Heartbeat {
        worker: w,
        now_ms: 5,
        deadline_ms: 100,
        checkpoints: vec![Checkpoint { job: 1, done: 2, digest: Digest([2; 64]) }],
        hashes_per_s: 0,
    });
    assert_eq!(table.apply(&Command::ExpireLeases { now_ms: 10 }), CommandResponse::Requeued(vec![2]));
    assert!(matches!(table.job_status(1), Some(JobStatus::Running(_))));
    table.check_invariants().expect("invariants");
}

#[test]
fn completion_is_idempotent_and_late_results_are_harmless() {
    let mut table = JobTable::default();
    table.apply(&Command::Enqueue { jobs: vec![job(1, 1, None)] });
    let w1 = register(&mut table, "w1");
    let w2 = register(&mut table, "w2");
    leased_ids(table.apply(&Command::Lease { worker: w1, max_jobs: 1, now_ms: 0, deadline_ms: 5, budget: None }));
    table.apply(&Command::ExpireLeases { now_ms: 5 });
    leased_ids(table.apply(&Command::Lease { worker: w2, max_jobs: 1, now_ms: 6, deadline_ms: 50, budget: None }));
    let result = JobResult { job: 1, result: Digest([4; 64]) };
    // The expired holder's late result is recorded; the current holder's is a no-op.
    let first = table.apply(&Command::Complete { worker: w1, now_ms: 7, results: vec![result] });
    assert_eq!(first, CommandResponse::Completed(vec![CompleteOutcome::Recorded(1)]));
    let second = table.apply(&Command::Complete {
        worker: w2,
        now_ms: 8,
        results: vec![JobResult { job: 1, result: Digest([5; 64]) }],
    });
    assert_eq!(second, CommandResponse::Completed(vec![CompleteOutcome::AlreadyCompleted(1)]));
    match table.job_status(1) {
        Some(JobStatus::Completed(done)) => assert_eq!(done.result, Digest([4; 64])),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(table.workers()[&w2].leases, 0);
    table.check_invariants().expect("invariants");
}

#[test]
fn never_leased_jobs_cannot_complete() {
    let mut table = JobTable::default();
    table.apply(&Command::Enqueue { jobs: vec![job(1, 1, None)] });
    let response = table.apply(&Command::Complete {
        worker: 1,
        now_ms: 0,
        results: vec![JobResult { job: 1, result: Digest([0; 64]) }],
    });
    assert_eq!(response, CommandResponse::Completed(vec![CompleteOutcome::Unknown]));
    assert!(matches!(table.job_status(1), Some(JobStatus::Queued(_))));
}

#[test]
fn retention_drops_oldest_results_and_their_keys() {
    let mut table = JobTable::new(Limits { completed_retention: 2, ..Limits::default() });
    table.apply(&Command::Enqueue { jobs: vec![job(1, 1, Some("k1")), job(1, 2, Some("k2")), job(1, 3, Some("k3"))] });
    let w = register(&mut table, "w");
    leased_ids(table.apply(&Command::Lease { worker: w, max_jobs: 3, now_ms: 0, deadline_ms: 9, budget: None }));
    let results = (1..=3).map(|job| JobResult { job, result: Digest([job as u8; 64]) }).collect();
    table.apply(&Command::Complete { worker: w, now_ms: 1, results });
    assert_eq!(table.latest_completed(10).map(|j| j.id).collect::<Vec<_>>(), vec![3, 2]);
    assert_eq!(table.completed_after(0, 10).map(|j| j.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(table.job_status(1), Some(JobStatus::Forgotten));
    assert_eq!(table.job_status(4), None);
    // k1 left with its result (any request may take it now); a retry of k2 still deduplicates.
    let again = table.apply(&Command::Enqueue { jobs: vec![job(1, 4, Some("k1")), job(1, 2, Some("k2"))] });
    assert_eq!(again, CommandResponse::Enqueued(vec![EnqueueOutcome::Created(4), EnqueueOutcome::Duplicate(2)]));
    table.check_invariants().expect("invariants");
}

#[test]
fn draining_worker_gets_no_leases_and_release_requeues_checkpoints() {
    let mut table = JobTable::default();
    table.apply(&Command::Enqueue { jobs: vec![job(10, 1, None), job(10, 2, None)] });
    let w = register(&mut table, "w");
    leased_ids(table.apply(&Command::Lease { worker: w, max_jobs: 2, now_ms: 0, deadline_ms: 9, budget: None }));
    table.apply(&Command::UpdateWorker { worker: w, state: WorkerState::Draining, now_ms: 1 });
    assert_eq!(
        table.apply(&Command::Lease { worker: w, max_jobs: 1, now_ms: 2, deadline_ms: 9, budget: None }),
        CommandResponse::Rejected(Rejection::WorkerDraining)
    );
    let released = table.apply(&Command::Release {
        worker: w,
        checkpoints: vec![Checkpoint { job: 2, done: 7, digest: Digest([7; 64]) }],
    });
    assert_eq!(released, CommandResponse::Requeued(vec![2]));
    match table.job_status(2) {
        Some(JobStatus::Queued(job)) => assert_eq!((job.done, job.attempts), (7, 1)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        table.apply(&Command::RemoveWorker { worker: w, last_seen_ms: None }),
        CommandResponse::Requeued(vec![1])
    );
    assert_eq!(table.queued_iterations(), 9 + 3);
    table.check_invariants().expect("invariants");
}

#[test]
fn unknown_worker_is_rejected_without_change() {
    let mut table = JobTable::default();
    table.apply(&Command::Enqueue { jobs: vec![job(1, 1, None)] });
    let before = table.clone();
    for command in [
        Command::Lease { worker: 9, max_jobs: 1, now_ms: 0, deadline_ms: 1, budget: None },
        Command::Heartbeat { worker: 9, now_ms: 0, deadline_ms: 1, checkpoints: vec![], hashes_per_s: 0 },
        Command::UpdateWorker { worker: 9, state: WorkerState::Draining, now_ms: 0 },
        Command::RemoveWorker { worker: 9, last_seen_ms: None },
    ] {
        assert_eq!(table.apply(&command), CommandResponse::Rejected(Rejection::UnknownWorker));
    }
    assert_eq!(table, before);
}

/// A removal decided from silence is re-checked against the committed state: a leader whose view
/// was stale (paused past the worker timeout) must not remove a worker that others heard from.
#[test]
fn a_removal_for_silence_is_a_no_op_once_the_worker_was_heard_from_since() {
    let mut table = JobTable::default();
    table.apply(&Command::Enqueue { jobs: vec![job(1, 5, None)] });
    let w = register(&mut table, "w");
    leased_ids(table.apply(&Command::Lease { worker: w, max_jobs: 1, now_ms: 100, deadline_ms: 200, budget: None }));
    // The stale leader last saw it at 100; the new leader applied a heartbeat at 150.
    table.apply(&Command::Heartbeat { worker: w, now_ms: 150, deadline_ms: 300, checkpoints: vec![], hashes_per_s: 1 });
    let before = table.clone();
    assert_eq!(
        table.apply(&Command::RemoveWorker { worker: w, last_seen_ms: Some(100) }),
        CommandResponse::Rejected(Rejection::HeardFromSince)
    );
    assert_eq!(table, before, "a refused removal changes nothing");
    // Decided from the latest view, it removes the worker and requeues what it held.
    assert_eq!(
        table.apply(&Command::RemoveWorker { worker: w, last_seen_ms: Some(150) }),
        CommandResponse::Requeued(vec![1])
    );
    assert!(table.workers().is_empty());
    table.check_invariants().expect("invariants");
}

/// Scale-in drains first: a termination of an instance whose worker holds a lease is refused.
#[test]
fn a_termination_of_a_busy_worker_s_instance_is_refused() {
    let mut table = JobTable::default();
    table.apply(&Command::Enqueue { jobs: vec![job(1, 5, None)] });
    let registered = table.apply(&Command::RegisterWorker {
        name: "w".into(),
        cores: 1,
        instance_id: Some("i-1".into()),
        now_ms: 0,
        witness: false,
        launch_token: None,
    });
    let CommandResponse::WorkerRegistered(w) = registered else { panic!("{registered:?}") };
    leased_ids(table.apply(&Command::Lease { worker: w, max_jobs: 1, now_ms: 0, deadline_ms: 9, budget: None }));
    let terminate = Command::Scaler(ScalerCommand::TerminationRequested { instance_id: "i-1".into(), at_ms: 5 });
    let before = table.clone();
    assert_eq!(table.apply(&terminate), CommandResponse::Rejected(Rejection::WorkerBusy));
    assert_eq!(table, before);
    // Drained (its job handed back), the same decision commits.
    table.apply(&Command::Release {
        worker: w,
        checkpoints: vec![Checkpoint { job: 1, done: 2, digest: Digest([2; 64]) }],
    });
    assert_eq!(table.apply(&terminate), CommandResponse::Done);
    assert_eq!(table.scaler().terminations.get("i-1"), Some(&5));
}

fn scaler(table: &mut JobTable, decision: ScalerCommand) -> CommandResponse {
    table.apply(&Command::Scaler(decision))
}

/// A launch from decision to registration to scale-in and termination, as the observation the
/// policy decides from shows it at each step.
#[test]
fn a_launch_is_in_flight_until_its_worker_registers_and_only_then_can_be_scaled_in() {
    use wire::scaler::Standing;
    let mut table = JobTable::default();
    let why = || "test".to_owned();
    assert_eq!(
        scaler(&mut table, ScalerCommand::LaunchRequested { token: "t1".into(), at_ms: 1_000, why: why(), join: None }),
        CommandResponse::Done
    );
    let seen = table.scaler_observation(2_000);
    assert_eq!(seen.launches_in_flight.len(), 1);
    assert_eq!(seen.last_scale_out_ms, Some(1_000));
    scaler(&mut table, ScalerCommand::InstanceSeen { token: "t1".into(), instance_id: "i-1".into(), at_ms: 1_500 });
    let registered = table.apply(&Command::RegisterWorker {
        name: "w".into(),
        cores: 2,
        instance_id: Some("i-1".into()),
        now_ms: 41_000,
        witness: false,
        launch_token: Some("t1".into()),
    });
    let CommandResponse::WorkerRegistered(w) = registered else { panic!("{registered:?}") };
    let seen = table.scaler_observation(50_000);
    assert!(seen.launches_in_flight.is_empty());
    assert_eq!(seen.boot_ms, Some(40_000), "launch to registration");
    let worker = &seen.workers[0];
    assert!(worker.managed && !worker.witness);
    assert_eq!((worker.standing, worker.idle_since_ms), (Standing::Active, Some(41_000)));
    // A give-up decided before it registered is stale now.
    let before = table.clone();
    assert_eq!(
        scaler(&mut table, ScalerCommand::LaunchFailed { token: "t1".into(), at_ms: 60_000, why: why() }),
        CommandResponse::Rejected(Rejection::StaleDecision)
    );
    assert_eq!(table, before);

    // Busy, it cannot be scaled in; once idle again it can, and it drains.
    table.apply(&Command::Enqueue { jobs: vec![job(5, 1, None)] });
    leased_ids(table.apply(&Command::Lease {
        worker: w,
        max_jobs: 1,
        now_ms: 60_000,
        deadline_ms: 90_000,
        budget: None,
    }));
    assert_eq!(table.scaler_observation(60_000).workers[0].idle_since_ms, None);
    assert_eq!(
        scaler(&mut table, ScalerCommand::ScaleIn { worker: w, at_ms: 61_000, why: why() }),
        CommandResponse::Rejected(Rejection::StaleDecision)
    );
    table.apply(&Command::Complete {
        worker: w,
        now_ms: 62_000,
        results: vec![JobResult { job: 1, result: Digest([9; 64]) }],
    });
    assert_eq!(table.scaler_observation(70_000).workers[0].idle_since_ms, Some(62_000));
    assert_eq!(
        scaler(&mut table, ScalerCommand::ScaleIn { worker: w, at_ms: 200_000, why: why() }),
        CommandResponse::Done
    );
    assert_eq!(table.workers()[&w].state, WorkerState::Draining);
    assert_eq!(table.scaler_observation(200_000).workers[0].standing, Standing::ScalingIn);
    assert_eq!(
        scaler(&mut table, ScalerCommand::TerminationRequested { instance_id: "i-1".into(), at_ms: 201_000 }),
        CommandResponse::Done
    );
    assert!(!table.scaler().managed_instances.contains("i-1"));
    table.apply(&Command::RemoveWorker { worker: w, last_seen_ms: None });
    let state = table.scaler();
    assert!(state.scaling_in.is_empty() && state.terminations.is_empty());
    assert_eq!((state.totals.launches, state.totals.terminations, state.totals.launch_failures), (1, 1, 0));
    let actions: Vec<&str> = state.records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["launch", "scale in", "terminate"]);
    table.check_invariants().expect("invariants");
}

#[test]
fn failures_count_until_a_launch_registers_and_records_are_bounded_and_not_repeated() {
    let mut table = JobTable::default();
    for (i, at) in [(1, 10), (2, 20)] {
        let token = format!("t{i}");
        scaler(
            &mut table,
            ScalerCommand::LaunchRequested { token: token.clone(), at_ms: at, why: "w".into(), join: None },
        );
        scaler(&mut table, ScalerCommand::LaunchFailed { token, at_ms: at + 5, why: "no capacity".into() });
    }
    let seen = table.scaler_observation(100);
    assert_eq!((seen.consecutive_failures, seen.last_failure_ms), (2, Some(25)));
    scaler(&mut table, ScalerCommand::LaunchRequested { token: "t3".into(), at_ms: 30, why: "w".into(), join: None });
    table.apply(&Command::RegisterWorker {
        name: "w".into(),
        cores: 2,
        instance_id: None,
        now_ms: 40,
        witness: false,
        launch_token: Some("t3".into()),
    });
    assert_eq!(table.scaler_observation(100).consecutive_failures, 0);
    for _ in 0..3 {
        scaler(&mut table, ScalerCommand::Held { at_ms: 50, why: "at the maximum".into() });
    }
    assert_eq!(
        table.scaler().records.iter().filter(|r| r.action == "held").count(),
        1,
        "a repeated hold is one record"
    );
    for i in 0..100 {
        scaler(&mut table, ScalerCommand::Held { at_ms: 60 + i, why: format!("reason {}", i % 2) });
    }
    assert_eq!(table.scaler().records.len(), SCALER_RECORDS_KEPT);
    assert_eq!(table.scaler().records.back().map(|r| r.why.as_str()), Some("reason 1"));
    table.check_invariants().expect("invariants");
}

/// A lease by work: one job per free core whatever its size, then waiting jobs only while they
/// fit in the worker's budget. The long job behind stays queued for a core elsewhere.
#[test]
fn a_lease_by_work_takes_one_job_per_free_core_then_only_what_fits_the_budget() {
    let mut table = JobTable::default();
    // Jobs 1-2 long (1,000 iterations), 3-5 short (10), 6 long again.
    let sizes = [1_000, 1_000, 10, 10, 10, 1_000];
    table.apply(&Command::Enqueue { jobs: sizes.iter().map(|n| job(*n, 1, None)).collect() });
    let w = register(&mut table, "w");
    let lease = |table: &mut JobTable, free_cores, iterations| {
        let budget = Some(LeaseBudget { free_cores, iterations });
        leased_ids(table.apply(&Command::Lease { worker: w, max_jobs: 64, now_ms: 0, deadline_ms: 9, budget }))
    };
    assert!(table.lease_would_grant(Some(LeaseBudget { free_cores: 1, iterations: 0 })));
    assert!(!table.lease_would_grant(Some(LeaseBudget { free_cores: 0, iterations: 998 })));
    assert_eq!(lease(&mut table, 0, 998), Vec::<JobId>::new(), "no free core, and job 1 needs 999 more");
    assert_eq!(lease(&mut table, 1, 0), vec![1], "one free core: one job, however long");
    assert_eq!(lease(&mut table, 1, 1_000), vec![2], "the budget is spent on the long job's core");
    assert_eq!(lease(&mut table, 0, 20), vec![3, 4], "short jobs while they fit (9 iterations each)");
    assert_eq!(lease(&mut table, 0, 100), vec![5], "never the long job 6 behind them");
    assert_eq!(table.queued_len(), 1);
    assert_eq!(table.queued_iterations(), 999);
    table.check_invariants().expect("invariants");
}

#[test]
fn a_witness_replacement_runs_one_at_a_time_under_ids_never_handed_out_twice() {
    let mut table = JobTable::new(Limits::default());
    let replace = |token: &str, node_id| ScalerCommand::ReplaceWitness {
        token: token.into(),
        replaces: 3,
        node_id,
        at_ms: 1_000,
        why: "witness silent".into(),
        join: None,
    };
    assert_eq!(scaler(&mut table, replace("w1", 4)), CommandResponse::Done);
    // The same decision again (a retried proposal) is the same replacement; another is stale.
    assert_eq!(scaler(&mut table, replace("w1", 4)), CommandResponse::Done);
    assert_eq!(scaler(&mut table, replace("w2", 5)), CommandResponse::Rejected(Rejection::StaleDecision));
    let launched = |token: &str| ScalerCommand::WitnessLaunched {
        token: token.into(),
        instance_id: format!("local-{token}"),
        raft_addr: "127.0.0.1:9".into(),
        at_ms: 1_500,
    };
    assert_eq!(scaler(&mut table, launched("w2")), CommandResponse::Rejected(Rejection::StaleDecision));
    assert_eq!(scaler(&mut table, launched("w1")), CommandResponse::Done);
    let under_way = table.scaler().witness.clone().expect("under way");
    assert_eq!((under_way.raft_addr.as_deref(), under_way.pending()), (Some("127.0.0.1:9"), true));
    // It fails: dropped, and the id it had is never handed out again.
    let failed = ScalerCommand::WitnessFailed { token: "w1".into(), at_ms: 2_000, why: "never caught up".into() };
    assert_eq!(scaler(&mut table, failed.clone()), CommandResponse::Done);
    assert_eq!(scaler(&mut table, failed), CommandResponse::Rejected(Rejection::StaleDecision));
    assert!(table.scaler().witness.is_none());
    assert_eq!(scaler(&mut table, replace("w3", 4)), CommandResponse::Rejected(Rejection::StaleDecision));
    assert_eq!(scaler(&mut table, replace("w3", 5)), CommandResponse::Done);
    let done = ScalerCommand::WitnessReplaced { token: "w3".into(), at_ms: 3_000 };
    assert_eq!(scaler(&mut table, done.clone()), CommandResponse::Done);
    assert_eq!(scaler(&mut table, done), CommandResponse::Rejected(Rejection::StaleDecision));
    assert_eq!(table.scaler().witness.as_ref().and_then(|w| w.done_at_ms), Some(3_000));
    // Once done, a later replacement (of the new witness) may be decided.
    assert_eq!(scaler(&mut table, replace("w4", 6)), CommandResponse::Done);
    let actions: Vec<&str> = table.scaler().records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        ["replace witness", "witness replacement failed", "replace witness", "witness replaced", "replace witness"]
    );
}

#[test]
fn configured_limits_become_the_tables_and_are_recorded_per_coordinator() {
    let mut table = JobTable::default();
    let of = |max_queued| Limits { max_queued, ..Limits::default() };
    assert_eq!(table.limits_configured_by(1), None);
    let configure = |node, limits| Command::ConfigureLimits { node, limits };
    assert_eq!(table.apply(&configure(1, of(10))), CommandResponse::Done);
    assert_eq!(table.apply(&configure(2, of(20))), CommandResponse::Done);
    assert_eq!(table.limits(), of(20), "the newest configuration holds");
    assert_eq!((table.limits_configured_by(1), table.limits_configured_by(2)), (Some(of(10)), Some(of(20))));
    // Invalid limits change nothing, not even the record.
    assert_eq!(table.apply(&configure(1, of(0))), CommandResponse::Rejected(Rejection::InvalidLimits));
    assert_eq!((table.limits(), table.limits_configured_by(1)), (of(20), Some(of(10))));
}

/// A launch with a join secret `secret` good for 1 s, committed at 1 000.
fn launch_with_join(table: &mut JobTable, token: &str, secret: &str) {
    let join = Some(JoinTerms { secret_sha256: wire::join_secret_sha256(secret), valid_ms: 1_000 });
    let launch = ScalerCommand::LaunchRequested { token: token.into(), at_ms: 1_000, why: "w".into(), join };
    assert_eq!(scaler(table, launch), CommandResponse::Done);
}

fn use_join(token: &str, secret: &str, now_ms: u64) -> Command {
    Command::UseJoin { launch_token: token.into(), secret_sha256: wire::join_secret_sha256(secret), now_ms }
}

#[test]
fn a_join_secret_is_exchanged_once_for_its_own_launch_before_it_expires() {
    let mut table = JobTable::default();
    launch_with_join(&mut table, "t1", "s1");
    launch_with_join(&mut table, "t2", "s2");
    let committed = format!("{:?}", table.scaler());
    assert!(!committed.contains("\"s1\""), "only the hash is committed: {committed}");
    // Each refusal changes nothing (the randomized model checks the same for every command).
    let refusals = [
        (use_join("t1", "s2", 1_100), Rejection::JoinRefused, "another launch's secret"),
        (use_join("t1", "wrong", 1_100), Rejection::JoinRefused, "a wrong secret"),
        (use_join("t9", "s1", 1_100), Rejection::JoinRefused, "an unknown launch token"),
        (use_join("t2", "s2", 2_000), Rejection::JoinExpired, "at its expiry"),
        (use_join("t2", "s2", 9_000), Rejection::JoinExpired, "after its expiry"),
    ];
    for (command, rejection, what) in &refusals {
        let before = table.clone();
        assert_eq!(table.apply(command), CommandResponse::Rejected(*rejection), "{what}");
        assert_eq!(table, before, "{what} changed the table");
    }
    assert_eq!(table.apply(&use_join("t1", "s1", 1_999)), CommandResponse::Done, "the right one, in time");
    assert_eq!(table.scaler().launches["t1"].join.as_ref().and_then(|j| j.used_at_ms), Some(1_999));
    let before = table.clone();
    assert_eq!(table.apply(&use_join("t1", "s1", 1_999)), CommandResponse::Rejected(Rejection::JoinUsed));
    assert_eq!(table, before, "a second use changes nothing");
    // A used join secret is not renewed; an unused one is, and either then joins, once.
    let renew = |token: &str, secret: &str, at_ms| ScalerCommand::JoinRenewed {
        token: token.into(),
        join: JoinTerms { secret_sha256: wire::join_secret_sha256(secret), valid_ms: 1_000 },
        at_ms,
    };
    assert_eq!(scaler(&mut table, renew("t1", "again", 1_500)), CommandResponse::Rejected(Rejection::StaleDecision));
    assert_eq!(scaler(&mut table, renew("t2", "s2b", 1_500)), CommandResponse::Done);
    assert_eq!(table.apply(&use_join("t2", "bad", 1_600)), CommandResponse::Rejected(Rejection::JoinRefused));
    let mut first = table.clone();
    assert_eq!(first.apply(&use_join("t2", "s2", 2_400)), CommandResponse::Done, "the first machine's secret");
    assert_eq!(first.apply(&use_join("t2", "s2b", 2_401)), CommandResponse::Rejected(Rejection::JoinUsed));
    assert_eq!(table.apply(&use_join("t2", "s2b", 2_400)), CommandResponse::Done, "good for 1 s from its renewal");
    assert_eq!(table.apply(&use_join("t2", "s2", 2_401)), CommandResponse::Rejected(Rejection::JoinUsed));
    // Registration ends the launch: its token joins nothing any more.
    table.apply(&Command::RegisterWorker {
        name: "w".into(),
        cores: 2,
        instance_id: None,
        now_ms: 2_500,
        witness: false,
        launch_token: Some("t1".into()),
    });
    assert_eq!(table.apply(&use_join("t1", "s1", 2_500)), CommandResponse::Rejected(Rejection::JoinRefused));
    // A launch without a join secret (an older log, a local provider) takes none.
    scaler(
        &mut table,
        ScalerCommand::LaunchRequested { token: "t3".into(), at_ms: 3_000, why: "w".into(), join: None },
    );
    assert_eq!(table.apply(&use_join("t3", "", 3_001)), CommandResponse::Rejected(Rejection::JoinRefused));
    table.check_invariants().expect("invariants");
}

#[test]
fn a_new_witness_joins_once_while_its_replacement_is_under_way() {
    let mut table = JobTable::default();
    let join = Some(JoinTerms { secret_sha256: wire::join_secret_sha256("ws"), valid_ms: 1_000 });
    let replace = ScalerCommand::ReplaceWitness {
        token: "w1".into(),
        replaces: 3,
        node_id: 4,
        at_ms: 1_000,
        why: "s".into(),
        join,
    };
    assert_eq!(scaler(&mut table, replace), CommandResponse::Done);
    assert_eq!(table.apply(&use_join("w1", "nope", 1_100)), CommandResponse::Rejected(Rejection::JoinRefused));
    assert_eq!(table.apply(&use_join("w1", "ws", 1_100)), CommandResponse::Done);
    assert_eq!(table.apply(&use_join("w1", "ws", 1_200)), CommandResponse::Rejected(Rejection::JoinUsed));
}

#[test]
fn replaying_the_joins_gives_the_same_table() {
    let mut commands = vec![Command::Scaler(ScalerCommand::LaunchRequested {
        token: "t1".into(),
        at_ms: 1_000,
        why: "w".into(),
        join: Some(JoinTerms { secret_sha256: wire::join_secret_sha256("s1"), valid_ms: 1_000 }),
    })];
    commands.extend([use_join("t1", "bad", 1_100), use_join("t1", "s1", 1_200), use_join("t1", "s1", 1_300)]);
    let run = || {
        let mut table = JobTable::default();
        let answers: Vec<_> = commands.iter().map(|c| table.apply(c)).collect();
        (table, answers)
    };
    let (first, answers) = run();
    assert_eq!(run(), (first.clone(), answers.clone()));
    assert_eq!(
        answers[1..],
        [
            CommandResponse::Rejected(Rejection::JoinRefused),
            CommandResponse::Done,
            CommandResponse::Rejected(Rejection::JoinUsed)
        ]
    );
    // And through a snapshot's encoding and back.
    let bytes = crate::state_machine::encode_table(&first).expect("encodes");
    assert_eq!(crate::state_machine::decode_table(&bytes).expect("decodes"), first);
}

#[test]
fn a_launch_committed_before_join_secrets_still_loads() {
    // A launch and a witness replacement as an older coordinator wrote them: no `join` field.
    #[derive(serde::Serialize)]
    struct OldLaunch {
        requested_at_ms: u64,
        instance_id: Option<String>,
    }
    let bytes = rmp_serde::to_vec_named(&OldLaunch { requested_at_ms: 5, instance_id: None }).expect("encodes");
    let launch: Launch = wire::from_msgpack(&bytes).expect("an older launch loads");
    assert_eq!(launch, Launch { requested_at_ms: 5, instance_id: None, join: None });
}

// ---------------------------------------------------------------------------------------------
// Reuse.

/// `table` once every voter can reuse.
fn enabled(mut table: JobTable) -> JobTable {
    assert_eq!(table.apply(&Command::EnableReuse), CommandResponse::Done);
    table
}

/// The first digest of the body every reuse test sends.
const BODY: Digest = Digest([42; 64]);

fn reusing(table: &mut JobTable, iterations: u64, at: u64) -> JobId {
    let job = NewJob { digest: BODY, iterations, enqueued_at_ms: at, idempotency_key: None, reuse: true };
    match table.apply(&Command::EnqueueReusing { jobs: vec![job] }) {
        CommandResponse::Enqueued(outcomes) => match outcomes.as_slice() {
            [EnqueueOutcome::Created(id)] => *id,
            other => panic!("unexpected {other:?}"),
        },
        other => panic!("unexpected {other:?}"),
    }
}

fn lease_all(table: &mut JobTable, worker: WorkerId, now_ms: u64) -> Vec<LeasedJob> {
    match table.apply(&Command::Lease { worker, max_jobs: 100, now_ms, deadline_ms: now_ms + 1_000, budget: None }) {
        CommandResponse::Leased(jobs) => jobs,
        other => panic!("unexpected {other:?}"),
    }
}

fn complete(table: &mut JobTable, worker: WorkerId, job: JobId, result: Digest, now_ms: u64) {
    let answer = table.apply(&Command::Complete { worker, now_ms, results: vec![JobResult { job, result }] });
    assert!(matches!(answer, CommandResponse::Completed(ref o) if matches!(o[..], [CompleteOutcome::Recorded(_)])));
    table.check_invariants().expect("invariants");
}

fn completed(table: &JobTable, id: JobId) -> CompletedRecord {
    match table.job_status(id) {
        Some(JobStatus::Completed(record)) => *record,
        other => panic!("job {id} is {other:?}"),
    }
}

#[test]
fn the_same_chain_completed_serves_a_new_job_at_once_under_its_own_sequence_number() {
    let mut table = enabled(JobTable::default());
    let worker = register(&mut table, "w");
    let first = reusing(&mut table, 5, 10);
    lease_all(&mut table, worker, 11);
    complete(&mut table, worker, first, Digest([5; 64]), 12);

    let again = reusing(&mut table, 5, 20);
    table.check_invariants().expect("invariants");
    let record = completed(&table, again);
    assert_eq!(record.result, Digest([5; 64]));
    assert_eq!(record.seq, completed(&table, first).seq + 1);
    assert_eq!((record.enqueued_at_ms, record.completed_at_ms, record.resumed_from), (20, 20, 5));
    assert_eq!(record.reused, Some(Reuse { job: first, from: 5 }));
    assert_eq!(table.latest_completed(1).next().map(|r| r.id), Some(again), "visible to pullCompleted");
    assert_eq!((table.totals().reused, table.totals().iterations_saved), (1, 4));
    assert_eq!(table.queued_len(), 0, "nothing to compute");
}

#[test]
fn a_longer_chain_starts_where_a_completed_shorter_one_ended() {
    let mut table = enabled(JobTable::default());
    let worker = register(&mut table, "w");
    let short = reusing(&mut table, 3, 10);
    lease_all(&mut table, worker, 11);
    complete(&mut table, worker, short, Digest([3; 64]), 12);

    let long = reusing(&mut table, 7, 20);
    assert!(matches!(table.job_status(long), Some(JobStatus::Queued(job)) if job.done == 3));
    assert_eq!(table.queued_iterations(), 4);
    assert_eq!(table.reuse_start(long), Some(Reuse { job: short, from: 3 }));
    let leased = lease_all(&mut table, worker, 21);
    assert_eq!((leased[0].done, leased[0].digest), (3, Digest([3; 64])), "the worker continues the chain at 3");
    complete(&mut table, worker, long, Digest([7; 64]), 22);
    let record = completed(&table, long);
    assert_eq!((record.resumed_from, record.reused), (3, Some(Reuse { job: short, from: 3 })));
    assert_eq!((table.totals().reused, table.totals().iterations_saved), (1, 2));
    assert_eq!(table.reuse_start(long), None);
}

#[test]
fn a_running_job_s_checkpoint_is_a_starting_point_and_one_at_the_very_iterations_a_result() {
    let mut table = enabled(JobTable::default());
    let worker = register(&mut table, "w");
    let long = reusing(&mut table, 10, 10);
    lease_all(&mut table, worker, 11);
    let checkpoints = vec![Checkpoint { job: long, done: 4, digest: Digest([4; 64]) }];
    table.apply(&Command::Heartbeat { worker, now_ms: 12, deadline_ms: 2_000, checkpoints, hashes_per_s: 1 });

    let six = reusing(&mut table, 6, 13);
    assert!(
        matches!(table.job_status(six), Some(JobStatus::Queued(job)) if (job.done, job.digest) == (4, Digest([4; 64])))
    );
    let four = reusing(&mut table, 4, 14);
    assert_eq!(completed(&table, four).result, Digest([4; 64]));
    // From the checkpoint at 4: `long`'s, or `six`'s, which started from it.
    let reused = completed(&table, four).reused.expect("reused");
    assert!(reused.from == 4 && [long, six].contains(&reused.job), "{reused:?}");
    table.check_invariants().expect("invariants");

    // The checkpointed job completes later under its own first digest: it indexes (BODY, 10).
    complete(&mut table, worker, long, Digest([10; 64]), 15);
    let ten = reusing(&mut table, 10, 16);
    assert_eq!(completed(&table, ten).result, Digest([10; 64]));
}

#[test]
fn the_same_chain_queued_or_running_is_followed_and_completes_with_it_even_after_a_lost_lease() {
    let mut table = enabled(JobTable::default());
    let worker = register(&mut table, "w");
    let leader = reusing(&mut table, 5, 10);
    let follower = reusing(&mut table, 5, 11);
    assert!(matches!(table.job_status(follower), Some(JobStatus::Following(f)) if f.leader == leader));
    assert_eq!((table.queued_len(), table.following_len()), (1, 1));
    assert_eq!(table.queued_iterations(), 4, "the follower adds no work");
    table.check_invariants().expect("invariants");

    // The leader's worker is lost: the leader is requeued, the follower keeps waiting on it.
    lease_all(&mut table, worker, 12);
    let late = reusing(&mut table, 5, 13);
    table.apply(&Command::RemoveWorker { worker, last_seen_ms: None });
    assert!(matches!(table.job_status(leader), Some(JobStatus::Queued(_))));
    assert!(matches!(table.job_status(late), Some(JobStatus::Following(f)) if f.leader == leader));
    table.check_invariants().expect("invariants");

    let other = register(&mut table, "v");
    assert_eq!(lease_all(&mut table, other, 14).len(), 1, "only the leader is computed");
    complete(&mut table, other, leader, Digest([5; 64]), 15);
    for id in [follower, late] {
        let record = completed(&table, id);
        assert_eq!((record.result, record.reused), (Digest([5; 64]), Some(Reuse { job: leader, from: 5 })));
        assert_eq!(record.completed_at_ms, 15);
    }
    let seqs: Vec<_> = [leader, follower, late].iter().map(|id| completed(&table, *id).seq).collect();
    assert!(seqs[0] < seqs[1] && seqs[1] < seqs[2], "each its own completion: {seqs:?}");
    assert_eq!(table.following_len(), 0);
    assert_eq!((table.totals().reused, table.totals().iterations_saved), (2, 8));
}

#[test]
fn a_job_that_opts_out_or_comes_from_an_old_log_is_computed_from_its_start() {
    let mut table = enabled(JobTable::default());
    let worker = register(&mut table, "w");
    let first = reusing(&mut table, 5, 10);
    lease_all(&mut table, worker, 11);
    complete(&mut table, worker, first, Digest([5; 64]), 12);

    let opted_out = NewJob { digest: BODY, iterations: 5, enqueued_at_ms: 13, idempotency_key: None, reuse: false };
    // `Enqueue` is how logs from before reuse add jobs: no reuse whatever the job says.
    let old_log = NewJob { reuse: true, ..opted_out.clone() };
    table.apply(&Command::EnqueueReusing { jobs: vec![opted_out] });
    table.apply(&Command::Enqueue { jobs: vec![old_log] });
    for id in [first + 1, first + 2] {
        assert!(matches!(table.job_status(id), Some(JobStatus::Queued(job)) if job.done == 1), "job {id}");
    }
    assert_eq!(table.totals().reused, 0);
    table.check_invariants().expect("invariants");
    // The one that opted out is indexed when it completes; the one from the old log is not.
    for (id, result) in lease_all(&mut table, worker, 14).iter().map(|job| (job.job, Digest([6; 64]))) {
        complete(&mut table, worker, id, result, 15);
    }
    assert_eq!(completed(&table, first + 1).origin, Some(BODY));
    assert_eq!(completed(&table, first + 2).origin, None);
    let newest = reusing(&mut table, 5, 16);
    assert_eq!(completed(&table, newest).reused, Some(Reuse { job: first + 1, from: 5 }));
}

#[test]
fn retention_forgets_a_chain_with_its_last_result() {
    let mut table = enabled(JobTable::new(Limits { completed_retention: 1, ..Limits::default() }));
    let worker = register(&mut table, "w");
    let first = reusing(&mut table, 5, 10);
    lease_all(&mut table, worker, 11);
    complete(&mut table, worker, first, Digest([5; 64]), 12);
    // Another completion pushes the first out of retention.
    table.apply(&Command::Enqueue { jobs: vec![job(1, 13, None)] });
    let other = lease_all(&mut table, worker, 14)[0].job;
    complete(&mut table, worker, other, Digest([1; 64]), 15);
    assert_eq!(table.job_status(first), Some(JobStatus::Forgotten));

    let again = reusing(&mut table, 5, 16);
    assert!(matches!(table.job_status(again), Some(JobStatus::Queued(job)) if job.done == 1));
    table.check_invariants().expect("invariants");
}

#[test]
fn a_job_served_at_once_needs_no_room_in_a_full_queue_but_a_follower_does() {
    let mut table = enabled(JobTable::new(Limits { max_queued: 1, ..Limits::default() }));
    let worker = register(&mut table, "w");
    let first = reusing(&mut table, 5, 10);
    lease_all(&mut table, worker, 11);
    complete(&mut table, worker, first, Digest([5; 64]), 12);
    let waiting = reusing(&mut table, 9, 13);
    // The queue is full (one job waits): the same chain as `first` is still served ...
    let served = reusing(&mut table, 5, 14);
    assert_eq!(completed(&table, served).result, Digest([5; 64]));
    // ... and one that would follow `waiting` is refused like any other.
    let job = NewJob { digest: BODY, iterations: 9, enqueued_at_ms: 15, idempotency_key: None, reuse: true };
    let answer = table.apply(&Command::EnqueueReusing { jobs: vec![job] });
    assert_eq!(answer, CommandResponse::Enqueued(vec![EnqueueOutcome::QueueFull]));
    assert!(matches!(table.job_status(waiting), Some(JobStatus::Queued(_))));
}

/// A table written before reuse (no reuse fields) loads, and its jobs complete as before.
#[test]
fn a_table_from_before_reuse_loads_and_its_jobs_complete() {
    let mut table = JobTable::default();
    let worker = register(&mut table, "w");
    table.apply(&Command::Enqueue { jobs: vec![job(5, 10, None), job(5, 10, None)] });
    let leased = lease_all(&mut table, worker, 11);
    let checkpoints = vec![Checkpoint { job: leased[0].job, done: 3, digest: Digest([3; 64]) }];
    table.apply(&Command::Heartbeat { worker, now_ms: 12, deadline_ms: 2_000, checkpoints, hashes_per_s: 1 });
    // The encoding an older version wrote: the same table without the fields reuse added
    // (JSON here, for its editable maps; the fields are the same in MessagePack).
    let mut value: serde_json::Value = serde_json::to_value(&table).expect("to json");
    let fields = value.as_object_mut().expect("a map");
    for field in ["chain_results", "chain_live", "origins", "reuse_starts", "following", "followers"] {
        assert!(fields.remove(field).is_some(), "{field}");
    }
    let mut old: JobTable = serde_json::from_value(value).expect("an older table loads");
    old.check_invariants().expect("invariants");
    // Jobs of `Enqueue` take no part in reuse: they complete, unindexed, checkpointed or not.
    complete(&mut old, worker, leased[0].job, Digest([5; 64]), 13);
    complete(&mut old, worker, leased[1].job, Digest([5; 64]), 14);
    assert_eq!([leased[0].job, leased[1].job].map(|id| completed(&old, id).origin), [None, None]);
    // ... so a table that replayed them indexes what one restored from the old encoding does.
    table.apply(&Command::Complete {
        worker,
        now_ms: 13,
        results: vec![JobResult { job: leased[0].job, result: Digest([5; 64]) }],
    });
    table.apply(&Command::Complete {
        worker,
        now_ms: 14,
        results: vec![JobResult { job: leased[1].job, result: Digest([5; 64]) }],
    });
    assert_eq!(old, table);
}

#[test]
fn reuse_is_off_until_every_voter_can_and_then_on() {
    let mut table = JobTable::default();
    let worker = register(&mut table, "w");
    // Before `EnableReuse`, an `EnqueueReusing` is an `Enqueue`: nothing served, nothing indexed.
    let first = reusing(&mut table, 5, 10);
    lease_all(&mut table, worker, 11);
    complete(&mut table, worker, first, Digest([5; 64]), 12);
    let second = reusing(&mut table, 5, 13);
    assert!(matches!(table.job_status(second), Some(JobStatus::Queued(job)) if job.done == 1));
    assert_eq!(completed(&table, first).origin, None);
    table.check_invariants().expect("invariants");

    // After it, jobs from before it still take no part (a voter that installed a snapshot
    // from before it holds no index of them either); new ones do.
    let mut table = enabled(table);
    lease_all(&mut table, worker, 14);
    complete(&mut table, worker, second, Digest([5; 64]), 15);
    let third = reusing(&mut table, 5, 16);
    assert!(matches!(table.job_status(third), Some(JobStatus::Queued(job)) if job.done == 1));
    lease_all(&mut table, worker, 17);
    complete(&mut table, worker, third, Digest([5; 64]), 18);
    let fourth = reusing(&mut table, 5, 19);
    assert_eq!(completed(&table, fourth).reused, Some(Reuse { job: third, from: 5 }));
}

#[test]
fn a_job_followed_by_the_most_followers_a_job_may_have_leaves_the_next_copy_to_compute_on_its_own() {
    let mut table = enabled(JobTable::new(Limits { max_queued: u64::MAX, ..Limits::default() }));
    let worker = register(&mut table, "w");
    let leader = reusing(&mut table, 5, 10);
    for at in 0..MAX_FOLLOWERS as u64 {
        reusing(&mut table, 5, 11 + at);
    }
    assert_eq!(table.following_len(), MAX_FOLLOWERS as u64);
    let own = reusing(&mut table, 5, 5_000);
    assert!(matches!(table.job_status(own), Some(JobStatus::Queued(job)) if job.done == 1));
    table.check_invariants().expect("invariants");
    // Completing the leader completes its followers in one apply; the copy on its own is
    // indexed when it completes.
    let leased = lease_all(&mut table, worker, 5_001);
    assert_eq!(leased.iter().map(|job| job.job).collect::<Vec<_>>(), vec![leader, own]);
    complete(&mut table, worker, leader, Digest([5; 64]), 5_002);
    assert_eq!(table.following_len(), 0);
    complete(&mut table, worker, own, Digest([5; 64]), 5_003);
    assert_eq!(completed(&table, own).origin, Some(BODY));
}
