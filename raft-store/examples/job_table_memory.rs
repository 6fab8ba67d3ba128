//! Bytes of heap per queued job in `JobTable`, measured with a counting allocator: jobs added
//! without reuse, and with it (each then also indexed by its chain for later jobs).
//!
//! `cargo run --release -p raft-store --example job_table_memory [-- JOBS]` (default 1,000,000).

#![allow(unsafe_code)] // a counting global allocator is the measurement itself

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use raft_store::Digest;
use raft_store::job_table::{Command, JobTable, Limits, NewJob};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The heap a table holding `jobs` queued jobs uses, each job added as `reuse` says: with reuse,
/// each has a distinct body (so none follows another) and is indexed for the jobs after it.
fn bytes_per_queued_job(jobs: u64, reuse: bool) -> f64 {
    let before = LIVE.load(Ordering::Relaxed);
    let mut table = JobTable::new(Limits { max_queued: u64::MAX, ..Limits::default() });
    // Enqueue in batches of 64, as a busy coordinator's proposer would.
    let mut next = 0u64;
    while next < jobs {
        let batch = (next..(next + 64).min(jobs))
            .map(|i| {
                let mut digest = [(i % 251) as u8; 64];
                if reuse {
                    digest[..8].copy_from_slice(&i.to_le_bytes());
                }
                NewJob {
                    digest: Digest(digest),
                    iterations: 1 + i % 1000,
                    enqueued_at_ms: 1_700_000_000_000 + i,
                    idempotency_key: None,
                    reuse,
                }
            })
            .collect();
        table.apply(&if reuse { Command::EnqueueReusing { jobs: batch } } else { Command::Enqueue { jobs: batch } });
        next += 64;
    }
    let used = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(table.queued_len(), jobs);
    drop(table);
    used as f64 / jobs as f64
}

fn main() {
    let jobs: u64 = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    println!("queued jobs: {jobs}");
    println!("bytes per queued job: {:.1} (target < 256)", bytes_per_queued_job(jobs, false));
    println!("bytes per queued job with reuse indexes: {:.1} (target < 256)", bytes_per_queued_job(jobs, true));
}
