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

use fuzz_support::{Checker, assert_bounded, encode_all, fuzz_messages, measure};
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

fn digest(seed: u8) -> Digest {
    Digest(std::array::from_fn(|i| seed.wrapping_mul(i as u8)))
}

fn targets() -> Vec<(Checker, Vec<Vec<u8>>)> {
    let progress =
        vec![Progress { job: 1, done: 10, digest: digest(1) }, Progress { job: u64::MAX, done: 0, digest: digest(2) }];
    vec![
        (
            check::<RegisterRequest> as Checker,
            encode_all(&[
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
            encode_all(&[
                LeaseRequest { worker: 3, max_jobs: 4, wait_ms: 1000, free_cores: Some(2), budget_iterations: Some(9) },
                LeaseRequest { worker: 3, max_jobs: 4, wait_ms: 0, free_cores: None, budget_iterations: None },
            ]),
        ),
        (
            check::<HeartbeatRequest>,
            encode_all(&[HeartbeatRequest { worker: 3, progress: progress.clone(), hashes_per_s: 1 << 20 }]),
        ),
        (
            check::<CompleteRequest>,
            encode_all(&[CompleteRequest {
                worker: 3,
                results: vec![Finished { job: 1, result: digest(3) }, Finished { job: 2, result: digest(4) }],
            }]),
        ),
        (check::<ReleaseRequest>, encode_all(&[ReleaseRequest { worker: 3, progress }])),
        (check::<RegisterResponse>, encode_all(&[RegisterResponse { worker: 3, lease_ms: 3000, heartbeat_ms: 1000 }])),
        (
            check::<LeaseResponse>,
            encode_all(&[LeaseResponse {
                jobs: vec![
                    Assignment { job: 1, iterations: 100, done: 0, digest: digest(5) },
                    Assignment { job: 2, iterations: 7, done: 3, digest: digest(6) },
                ],
            }]),
        ),
        (check::<HeartbeatResponse>, encode_all(&[HeartbeatResponse { lost: vec![1, 2, 3], draining: true }])),
        (check::<CompleteResponse>, encode_all(&[CompleteResponse { recorded: 1, duplicate: 2, unknown: 3 }])),
        (check::<ReleaseResponse>, encode_all(&[ReleaseResponse { requeued: 2 }])),
        (check::<WorkerErrorBody>, encode_all(&[WorkerErrorBody { error: "unknown worker".into() }])),
        (check::<Digest>, encode_all(&[digest(7)])),
    ]
}

#[test]
fn fuzz_worker_messages() {
    fuzz_messages("worker messages", &targets());
}
