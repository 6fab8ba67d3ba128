//! Computing one job: the chain from a checkpoint to the end, in chunks, on a blocking thread.
//!
//! Between chunks the computation publishes its checkpoint (iterations done, digest) for the
//! heartbeat and checks whether it should stop (the worker is draining, or the lease was lost).
//! Inside a chunk it is a plain `sha2` loop: no allocation, no lock, no atomic. At the default
//! chunk of 20,000 iterations, the one uncontended lock per chunk is about a millionth of the
//! chunk's time.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use wire::Digest;
use wire::worker::{Assignment, Progress};

/// A job this worker holds: waiting for a core, computing, or just finished.
#[derive(Debug)]
pub struct RunningJob {
    /// The job's id.
    pub job: u64,
    /// Total iterations.
    pub iterations: u64,
    checkpoint: Mutex<(u64, Digest)>,
    stopped: AtomicBool,
    lost: AtomicBool,
    finished: AtomicBool,
}

impl RunningJob {
    /// A job starting from its assignment's checkpoint.
    pub fn new(assignment: &Assignment) -> Self {
        RunningJob {
            job: assignment.job,
            iterations: assignment.iterations,
            checkpoint: Mutex::new((assignment.done, assignment.digest)),
            stopped: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        }
    }

    /// Stop at the next chunk boundary; a result already computed is still worth reporting.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// The worker no longer holds the lease: stop, and drop the result if there is one.
    pub fn mark_lost(&self) {
        self.lost.store(true, Ordering::Relaxed);
        self.stop();
    }

    /// Whether it was told to stop (lost, or the worker is draining).
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Whether the lease was lost (its result must not be reported, nor its checkpoint released).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Whether its result was produced and handed to the reporter.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    /// Mark its result as handed to the reporter.
    pub fn mark_finished(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }

    /// The latest checkpoint.
    pub fn progress(&self) -> Progress {
        let (done, digest) = *self.checkpoint.lock().unwrap_or_else(|p| p.into_inner());
        Progress { job: self.job, done, digest }
    }

    /// Compute to the end, `chunk` iterations at a time, from the latest checkpoint. `None` if
    /// stopped first. Blocks: call it on a blocking thread.
    pub fn compute(&self, chunk: u64) -> Option<Digest> {
        let (mut done, mut digest) = *self.checkpoint.lock().unwrap_or_else(|p| p.into_inner());
        let chunk = chunk.max(1);
        while done < self.iterations {
            if self.is_stopped() {
                return None;
            }
            let steps = chunk.min(self.iterations - done);
            digest = wire::chain::continue_chain(digest, steps);
            done += steps;
            *self.checkpoint.lock().unwrap_or_else(|p| p.into_inner()) = (done, digest);
        }
        Some(digest)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn assignment(body: &[u8], iterations: u64) -> Assignment {
        Assignment { job: 1, iterations, done: 1, digest: wire::chain::first_digest(body) }
    }

    #[test]
    fn chunked_computation_equals_the_whole_chain() {
        for (iterations, chunk) in
            [(1, 1), (2, 1), (10, 3), (64, 64), (65, 64), (1_000, 7), (1_000, 5_000), (12_345, 1_000)]
        {
            let job = RunningJob::new(&assignment(b"body", iterations));
            assert_eq!(
                job.compute(chunk),
                Some(wire::chain::sha512_chain(b"body", iterations)),
                "{iterations}/{chunk}"
            );
            assert_eq!(job.progress().done, iterations);
            assert_eq!(job.progress().digest, wire::chain::sha512_chain(b"body", iterations));
        }
    }

    #[test]
    fn a_chunk_of_zero_is_taken_as_one() {
        let job = RunningJob::new(&assignment(b"body", 5));
        assert_eq!(job.compute(0), Some(wire::chain::sha512_chain(b"body", 5)));
    }

    #[test]
    fn resumes_from_a_checkpoint() {
        for (done, iterations, chunk) in [(400, 1_000, 64), (999, 1_000, 7), (1_000, 1_000, 10), (2, 3, 100)] {
            let checkpoint = wire::chain::sha512_chain(b"body", done);
            let job = RunningJob::new(&Assignment { job: 1, iterations, done, digest: checkpoint });
            assert_eq!(job.compute(chunk), Some(wire::chain::sha512_chain(b"body", iterations)), "{done}/{iterations}");
        }
    }

    #[test]
    fn a_stopped_job_does_not_start() {
        let job = RunningJob::new(&assignment(b"body", 10));
        job.stop();
        assert_eq!(job.compute(1), None);
        assert_eq!(job.progress().done, 1);
        assert!(!job.is_lost());
    }

    #[test]
    fn a_lost_job_is_stopped_too() {
        let job = RunningJob::new(&assignment(b"body", 10));
        job.mark_lost();
        assert!(job.is_stopped() && job.is_lost());
        assert_eq!(job.compute(1), None);
    }

    #[test]
    fn stopping_ends_a_long_job_early_with_a_valid_checkpoint() {
        let job = Arc::new(RunningJob::new(&assignment(b"body", u64::MAX)));
        let worker = {
            let job = job.clone();
            std::thread::spawn(move || job.compute(1_000))
        };
        while job.progress().done < 5_000 {
            std::thread::yield_now();
        }
        job.stop();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !worker.is_finished() {
            assert!(std::time::Instant::now() < deadline, "the computation did not stop");
            std::thread::yield_now();
        }
        assert_eq!(worker.join().expect("the computing thread panicked"), None);
        let progress = job.progress();
        assert!(progress.done >= 5_000);
        assert_eq!(progress.digest, wire::chain::sha512_chain(b"body", progress.done));
    }
}
