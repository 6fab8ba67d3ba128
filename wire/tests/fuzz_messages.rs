//! Bounded-time fuzzing of the worker messages' decoding: what a coordinator decodes from a
//! worker (`coordinator/src/worker_routes.rs`) and what a worker decodes from a coordinator
//! (`worker_client.rs`), both with `wire::from_msgpack`, for any bytes: an error or a value, never a
//! panic, a hang, or an allocation sized by a length field rather than by the input.
//!
//! Inputs are real encodings of every message, mutated (bit flips, truncation, splices, length
//! fields and MessagePack length headers rewritten to huge values, deep nesting), and a few
//! plain random byte strings. The harness is raft-store's (`raft-store/tests/fuzz_support`,
//! which says why `arbtest`): a fixed sequence of seeds, so every run tries the same cases.
//!
//! Running: about 2.5 s by default; `FUZZ_BUDGET_MS=60000` for a minute, `FUZZ_SEED=<n>` for
//! other cases; a failure prints `arbtest failed! Seed: 0x...` and the input in hex, and
//! `ARBTEST_SEED=0x... cargo test -p wire --test fuzz_messages` runs that case alone.

#[path = "../../raft-store/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use std::sync::Arc;
use std::time::Duration;

use fuzz_support::{Watchdog, assert_bounded, fuzz, measure, mutate};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wire::Digest;
use wire::worker::{
    Assignment, CompleteRequest, CompleteResponse, Finished, HeartbeatRequest, HeartbeatResponse, LeaseRequest,
    LeaseResponse, Progress, RegisterRequest, RegisterResponse, ReleaseRequest, ReleaseResponse, WorkerErrorBody,
};

#[global_allocator]
static ALLOC: fuzz_support::CountingAlloc = fuzz_support::CountingAlloc;

/// Decode `bytes` as `T` the way both ends do; what decodes must round-trip.
fn check<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    let name = std::any::type_name::<T>();
    let (decoded, usage) = measure(|| wire::from_msgpack::<T>(bytes));
    assert_bounded(name, bytes.len(), usage);
    if let Ok(value) = decoded {
        let encoded = rmp_serde::to_vec_named(&value).expect("a decoded message encodes");
        let again: T = wire::from_msgpack(&encoded).unwrap_or_else(|e| panic!("{name}: re-encoding fails: {e}"));
        assert_eq!(again, value, "{name}: round trip");
    }
}

type Checker = fn(&[u8]);

fn encode<T: Serialize>(values: &[T]) -> Vec<Vec<u8>> {
    values.iter().map(|value| rmp_serde::to_vec_named(value).expect("encode")).collect()
}

fn digest(seed: u8) -> Digest {
    Digest(std::array::from_fn(|i| seed.wrapping_mul(i as u8)))
}

fn targets() -> Vec<(Checker, Vec<Vec<u8>>)> {
    let progress =
        vec![Progress { job: 1, done: 10, digest: digest(1) }, Progress { job: u64::MAX, done: 0, digest: digest(2) }];
    vec![
        (
            check::<RegisterRequest> as Checker,
            encode(&[
                RegisterRequest {
                    name: "host/1".into(),
                    cores: 8,
                    instance_id: Some("i-0123".into()),
                    witness: true,
                    launch_token: Some("t".into()),
                },
                RegisterRequest {
                    name: String::new(),
                    cores: 0,
                    instance_id: None,
                    witness: false,
                    launch_token: None,
                },
            ]),
        ),
        (
            check::<LeaseRequest>,
            encode(&[
                LeaseRequest { worker: 3, max_jobs: 4, wait_ms: 1000, free_cores: Some(2), budget_iterations: Some(9) },
                LeaseRequest { worker: 3, max_jobs: 4, wait_ms: 0, free_cores: None, budget_iterations: None },
            ]),
        ),
        (
            check::<HeartbeatRequest>,
            encode(&[HeartbeatRequest { worker: 3, progress: progress.clone(), hashes_per_s: 1 << 20 }]),
        ),
        (
            check::<CompleteRequest>,
            encode(&[CompleteRequest {
                worker: 3,
                results: vec![Finished { job: 1, result: digest(3) }, Finished { job: 2, result: digest(4) }],
            }]),
        ),
        (check::<ReleaseRequest>, encode(&[ReleaseRequest { worker: 3, progress }])),
        (check::<RegisterResponse>, encode(&[RegisterResponse { worker: 3, lease_ms: 3000, heartbeat_ms: 1000 }])),
        (
            check::<LeaseResponse>,
            encode(&[LeaseResponse {
                jobs: vec![
                    Assignment { job: 1, iterations: 100, done: 0, digest: digest(5) },
                    Assignment { job: 2, iterations: 7, done: 3, digest: digest(6) },
                ],
            }]),
        ),
        (check::<HeartbeatResponse>, encode(&[HeartbeatResponse { lost: vec![1, 2, 3], draining: true }])),
        (check::<CompleteResponse>, encode(&[CompleteResponse { recorded: 1, duplicate: 2, unknown: 3 }])),
        (check::<ReleaseResponse>, encode(&[ReleaseResponse { requeued: 2 }])),
        (check::<WorkerErrorBody>, encode(&[WorkerErrorBody { error: "unknown worker".into() }])),
        (check::<Digest>, encode(&[digest(7)])),
    ]
}

#[test]
fn fuzz_worker_messages() {
    let targets = targets();
    let all: Arc<Vec<Vec<u8>>> = Arc::new(targets.iter().flat_map(|(_, corpus)| corpus.clone()).collect());
    let watchdog = Watchdog::new(Duration::from_secs(10));
    fuzz("worker messages", 2500, |u| {
        let (check, corpus) = u.choose(&targets)?;
        let bytes = if u.ratio(1, 32)? {
            u.bytes(u.len().min(256))?.to_vec()
        } else {
            let mut bytes = u.choose(corpus)?.clone();
            mutate(u, &mut bytes, &all)?;
            bytes
        };
        let (check, input) = (*check, bytes.clone());
        watchdog.run(&input, move || check(&bytes));
        Ok(())
    });
}
