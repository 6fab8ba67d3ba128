//! Computing one job: the chain from a checkpoint to the end, in chunks, on a blocking thread.
//!
//! Between chunks the computation publishes its checkpoint (iterations done, digest) for the
//! heartbeat and checks whether it was cancelled (the lease was lost, or the worker is draining).
//! The chunk loop itself allocates nothing and takes no lock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use wire::Digest;
use wire::worker::{Assignment, Progress};

/// A job this worker computes.
#[derive(Debug)]
pub struct RunningJob {
    /// The job's id.
    pub job: u64,
    /// Total iterations.
    pub iterations: u64,
    checkpoint: Mutex<(u64, Digest)>,
    cancelled: AtomicBool,
    finished: AtomicBool,
}

impl RunningJob {
    /// A job starting from its assignment's checkpoint.
    pub fn new(assignment: &Assignment) -> Self {
        RunningJob {
            job: assignment.job,
            iterations: assignment.iterations,
            checkpoint: Mutex::new((assignment.done, assignment.digest)),
            cancelled: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        }
    }

    /// Stop at the next chunk boundary.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Whether its result was produced (and handed to the reporter).
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    /// Mark its result as produced.
    pub fn mark_finished(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }

    /// The latest checkpoint.
    pub fn progress(&self) -> Progress {
        let (done, digest) = *self.checkpoint.lock().unwrap_or_else(|p| p.into_inner());
        Progress { job: self.job, done, digest }
    }

    /// Compute to the end, `chunk` iterations at a time, adding each chunk's steps to `hashes`.
    /// `None` if cancelled first.
    pub fn compute(&self, chunk: u64, hashes: &AtomicU64) -> Option<Digest> {
        let (mut done, mut digest) = *self.checkpoint.lock().unwrap_or_else(|p| p.into_inner());
        let chunk = chunk.max(1);
        while done < self.iterations {
            if self.is_cancelled() {
                return None;
            }
            let steps = chunk.min(self.iterations - done);
            digest = wire::chain::continue_chain(digest, steps);
            done += steps;
            hashes.fetch_add(steps, Ordering::Relaxed);
            *self.checkpoint.lock().unwrap_or_else(|p| p.into_inner()) = (done, digest);
        }
        Some(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(body: &[u8], iterations: u64) -> Assignment {
        Assignment { job: 1, iterations, done: 1, digest: wire::chain::first_digest(body) }
    }

    #[test]
    fn chunked_computation_equals_the_whole_chain() {
        for (iterations, chunk) in [(1, 1), (2, 1), (10, 3), (1_000, 7), (1_000, 5_000), (12_345, 1_000)] {
            let job = RunningJob::new(&assignment(b"body", iterations));
            let hashes = AtomicU64::new(0);
            assert_eq!(
                job.compute(chunk, &hashes),
                Some(wire::chain::sha512_chain(b"body", iterations)),
                "{iterations}/{chunk}"
            );
            assert_eq!(job.progress().done, iterations);
            // The first step was done at ingest; the worker counts the rest.
            assert_eq!(hashes.load(Ordering::Relaxed), iterations - 1);
        }
    }

    #[test]
    fn resumes_from_a_checkpoint() {
        let checkpoint = wire::chain::sha512_chain(b"body", 400);
        let job = RunningJob::new(&Assignment { job: 1, iterations: 1_000, done: 400, digest: checkpoint });
        assert_eq!(job.compute(64, &AtomicU64::new(0)), Some(wire::chain::sha512_chain(b"body", 1_000)));
    }

    #[test]
    fn cancellation_stops_at_a_chunk_boundary_with_a_valid_checkpoint() {
        let job = std::sync::Arc::new(RunningJob::new(&assignment(b"body", u64::MAX)));
        let worker = {
            let job = job.clone();
            std::thread::spawn(move || job.compute(1_000, &AtomicU64::new(0)))
        };
        while job.progress().done < 5_000 {
            std::thread::yield_now();
        }
        job.cancel();
        assert_eq!(worker.join().expect("thread"), None);
        let progress = job.progress();
        assert_eq!(progress.digest, wire::chain::sha512_chain(b"body", progress.done));
    }
}
