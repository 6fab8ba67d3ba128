//! The bounded-time fuzz harness shared by `fuzz_decoders.rs` (a copy lives in
//! `wire/tests/fuzz_messages.rs`; keep the two alike).
//!
//! - [`fuzz`] runs a property on deterministic `arbtest` seeds for a time budget.
//! - [`CountingAlloc`] (the test binary's global allocator) and [`measure`] record the largest
//!   single allocation request and the peak of live bytes on the current thread, so a decode can
//!   be held to a bound stated in terms of its input's length.
//! - [`Watchdog`] runs each case on a thread of its own and fails the test if it panics or
//!   takes longer than a limit (an infinite loop fails instead of hanging CI).
//! - [`mutate`] applies byte-level and MessagePack-aware mutations to a valid encoding.

// Each of the two test binaries uses part of it.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arbtest::arbitrary::{self, Unstructured};

/// The system allocator, counting what the current thread asks for while [`measure`] runs.
pub struct CountingAlloc;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn on_alloc(size: usize) {
    let _ = TRACKING.try_with(|tracking| {
        if tracking.get() {
            LARGEST.with(|largest| largest.set(largest.get().max(size)));
            let live = LIVE.with(|live| {
                live.set(live.get().saturating_add(size));
                live.get()
            });
            PEAK.with(|peak| peak.set(peak.get().max(live)));
        }
    });
}

fn on_free(size: usize) {
    let _ = TRACKING.try_with(|tracking| {
        if tracking.get() {
            // Memory allocated before the measurement began may be freed during it.
            LIVE.with(|live| live.set(live.get().saturating_sub(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the counters are thread-local `Cell`s
// with const initializers, which neither allocate nor re-enter the allocator.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        on_alloc(layout.size());
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        on_alloc(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        on_free(layout.size());
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        on_free(layout.size());
        on_alloc(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What one [`measure`]d call asked of the allocator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// The largest single request, in bytes.
    pub largest: usize,
    /// The most bytes live at once that were allocated during the call.
    pub peak: usize,
}

/// Run `f` on this thread and report its allocations (the test binary must install
/// [`CountingAlloc`] as its `#[global_allocator]`).
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Usage) {
    LARGEST.with(|c| c.set(0));
    LIVE.with(|c| c.set(0));
    PEAK.with(|c| c.set(0));
    TRACKING.with(|c| c.set(true));
    let result = f();
    TRACKING.with(|c| c.set(false));
    (result, Usage { largest: LARGEST.with(Cell::get), peak: PEAK.with(Cell::get) })
}

/// serde's `size_hint::cautious` lets a decoder preallocate up to 1 MiB for a sequence whatever
/// length its header claims; everything else a decoder allocates should be in proportion to its
/// input. The bounds below leave room for a few such preallocations (nested containers) and a
/// copy or two of the input, and none for a length field taken at its word.
pub const PREALLOC: usize = 1 << 20;

/// Fail unless `usage` for decoding `input_len` bytes stays within the stated bounds: the largest
/// single request at most `8 × input + 1 MiB + 64 KiB`, the live peak at most
/// `64 × input + 8 MiB`.
pub fn assert_bounded(what: &str, input_len: usize, usage: Usage) {
    let largest_bound = 8 * input_len + PREALLOC + (64 << 10);
    let peak_bound = 64 * input_len + 8 * PREALLOC;
    assert!(
        usage.largest <= largest_bound,
        "{what}: decoding {input_len} bytes asked for one allocation of {} bytes (bound {largest_bound})",
        usage.largest
    );
    assert!(
        usage.peak <= peak_bound,
        "{what}: decoding {input_len} bytes held {} bytes at once (bound {peak_bound})",
        usage.peak
    );
}

type Job = Box<dyn FnOnce() + Send>;

/// One thread that runs cases one at a time, so that the test thread can stop waiting for one.
pub struct Watchdog {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<Result<(), String>>,
    limit: Duration,
}

impl Watchdog {
    /// A watchdog that allows each case `limit`.
    pub fn new(limit: Duration) -> Watchdog {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("fuzz-case".into())
            .spawn(move || {
                for job in job_rx {
                    let outcome = std::panic::catch_unwind(AssertUnwindSafe(job)).map_err(|panic| {
                        panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "a panic without a message".into())
                    });
                    if done_tx.send(outcome).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn the fuzz case thread");
        Watchdog { jobs, done, limit }
    }

    /// Run `case` on the watchdog's thread; panic (naming `input`) if it panics or outlives
    /// the limit.
    pub fn run(&self, input: &[u8], case: impl FnOnce() + Send + 'static) {
        let started = Instant::now();
        self.jobs.send(Box::new(case)).expect("the case thread is alive");
        match self.done.recv_timeout(self.limit) {
            Ok(Ok(())) => {}
            Ok(Err(panic)) => panic!("the case panicked: {panic}\ninput ({} bytes): {}", input.len(), hex(input)),
            Err(_) => panic!(
                "the case ran for over {:?} (started {:?} ago): a hang\ninput ({} bytes): {}",
                self.limit,
                started.elapsed(),
                input.len(),
                hex(input)
            ),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const SHOWN: usize = 1024;
    let mut out: String = bytes.iter().take(SHOWN).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > SHOWN {
        out.push_str("...");
    }
    out
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Each fuzz target's default time budget.
pub const BUDGET_MS: u64 = 2500;
/// Longer than any one case should take, even on a loaded CI machine: past it, a hang.
pub const CASE_LIMIT: Duration = Duration::from_secs(10);

/// A check of one message type's decoding, given any bytes.
pub type Checker = fn(&[u8]);

/// Each value's MessagePack encoding (named fields, as Tandem encodes).
pub fn encode_all<T: serde::Serialize>(values: &[T]) -> Vec<Vec<u8>> {
    values.iter().map(|value| rmp_serde::to_vec_named(value).expect("encode")).collect()
}

/// Fuzz message decoding: each case picks a target, then either plain random bytes (1 in 32)
/// or one of the target's real encodings mutated (with any target's encodings to splice from),
/// and runs the target's check on it under the watchdog.
pub fn fuzz_messages(name: &str, targets: &[(Checker, Vec<Vec<u8>>)]) {
    let all: std::sync::Arc<Vec<Vec<u8>>> =
        std::sync::Arc::new(targets.iter().flat_map(|(_, corpus)| corpus.clone()).collect());
    let watchdog = Watchdog::new(CASE_LIMIT);
    fuzz(name, BUDGET_MS, |u| {
        let (check, corpus) = u.choose(targets)?;
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

/// The default base seed: the same cases on every run unless `FUZZ_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x7a4d_e2c0_11f5_9b3d;

/// Run `property` on a deterministic sequence of `arbtest` seeds (entropy of 64 B to 4 KiB)
/// for `default_budget_ms` (or `FUZZ_BUDGET_MS`), from the base seed `FUZZ_SEED` if set. With
/// `ARBTEST_SEED` set, run the one case that seed names (arbtest prints it when a case fails).
/// Returns the number of cases run.
pub fn fuzz(
    name: &str,
    default_budget_ms: u64,
    mut property: impl FnMut(&mut Unstructured<'_>) -> arbitrary::Result<()>,
) -> u64 {
    if std::env::var_os("ARBTEST_SEED").is_some() {
        arbtest::arbtest(&mut property).run();
        return 1;
    }
    let budget = Duration::from_millis(env_u64("FUZZ_BUDGET_MS").unwrap_or(default_budget_ms));
    let base = env_u64("FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let started = Instant::now();
    let mut cases = 0u64;
    while started.elapsed() < budget {
        let size = 64u64 << (cases % 7);
        let random = splitmix64(base ^ cases) & 0xffff_ffff_0000_0000;
        arbtest::arbtest(&mut property).seed(random | size).run();
        cases += 1;
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{name}: {cases} cases in {elapsed:.2?} ({:.0}/s), base seed {base:#x}",
        cases as f64 / elapsed.as_secs_f64()
    );
    cases
}

/// Bytes worth writing over others: MessagePack markers (nil, bool, the wide integers, the
/// container, bin and str headers of every width) and the edges of a byte.
const INTERESTING_BYTES: &[u8] = &[
    0x00, 0x01, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xcc, 0xcd, 0xce,
    0xcf, 0xd3, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff,
];

/// A length worth writing into a length field.
fn interesting_u32(u: &mut Unstructured<'_>, data_len: usize) -> arbitrary::Result<u32> {
    Ok(match u.int_in_range(0..=9)? {
        0 => 0,
        1 => 1,
        2 => u32::MAX,
        3 => i32::MAX as u32,
        4 => 256 << 20,
        5 => (256 << 20) + 1,
        6 => data_len as u32,
        7 => (data_len as u32).wrapping_add(1),
        8 => (data_len as u32).wrapping_sub(1),
        _ => u.arbitrary()?,
    })
}

/// If a MessagePack length header starts at `pos`, the header's replacement with a huge length
/// and how many bytes it replaces.
fn huge_header(marker: u8, huge: u32) -> Option<(Vec<u8>, usize)> {
    let be = huge.to_be_bytes();
    let wide = |code: u8, replaced: usize| {
        let mut header = vec![code];
        header.extend_from_slice(&be);
        Some((header, replaced))
    };
    match marker {
        0x90..=0x9f => wide(0xdd, 1),                 // fixarray -> array32
        0x80..=0x8f => wide(0xdf, 1),                 // fixmap -> map32
        0xa0..=0xbf => wide(0xdb, 1),                 // fixstr -> str32
        0xdc => wide(0xdd, 3),                        // array16 -> array32
        0xde => wide(0xdf, 3),                        // map16 -> map32
        0xdd | 0xdf | 0xdb | 0xc6 => wide(marker, 5), // 32-bit lengths
        0xd9 => wide(0xdb, 2),                        // str8 -> str32
        0xda => wide(0xdb, 3),                        // str16 -> str32
        0xc4 => wide(0xc6, 2),                        // bin8 -> bin32
        0xc5 => wide(0xc6, 3),                        // bin16 -> bin32
        _ => None,
    }
}

/// Mutate `data` in place: 1 to 8 of bit flips, interesting bytes, 32-bit length fields
/// rewritten (either byte order), truncation, deletion, duplication, splices from `others`,
/// random insertions, MessagePack length headers rewritten to huge values, and deep nesting.
pub fn mutate(u: &mut Unstructured<'_>, data: &mut Vec<u8>, others: &[Vec<u8>]) -> arbitrary::Result<()> {
    let rounds = u.int_in_range(1..=8)?;
    for _ in 0..rounds {
        let len = data.len();
        let pos = if len == 0 { 0 } else { u.int_in_range(0..=len - 1)? };
        match u.int_in_range(0..=10)? {
            0 if len > 0 => data[pos] ^= 1 << u.int_in_range(0..=7)?,
            1 if len > 0 => data[pos] = *u.choose(INTERESTING_BYTES)?,
            2 if len >= 4 => {
                let at = u.int_in_range(0..=len - 4)?;
                let value = interesting_u32(u, len)?;
                let bytes = if u.arbitrary()? { value.to_le_bytes() } else { value.to_be_bytes() };
                data[at..at + 4].copy_from_slice(&bytes);
            }
            3 => data.truncate(pos),
            4 if len > 0 => {
                let end = u.int_in_range(pos..=len.min(pos + 64))?;
                data.drain(pos..end);
            }
            5 if len > 0 => {
                let end = u.int_in_range(pos..=len.min(pos + 256))?;
                let chunk = data[pos..end].to_vec();
                let at = u.int_in_range(0..=len)?;
                data.splice(at..at, chunk);
            }
            6 if !others.is_empty() => {
                let other = u.choose(others)?;
                if !other.is_empty() {
                    let from = u.int_in_range(0..=other.len() - 1)?;
                    let end = u.int_in_range(from..=other.len())?;
                    if u.arbitrary()? {
                        data.truncate(pos);
                        data.extend_from_slice(&other[from..]);
                    } else {
                        data.splice(pos..pos, other[from..end].iter().copied());
                    }
                }
            }
            7 => {
                let count = u.int_in_range(1..=16)?;
                let bytes: Vec<u8> = (0..count).map(|_| u.arbitrary()).collect::<arbitrary::Result<_>>()?;
                data.splice(pos..pos, bytes);
            }
            8 if len > 0 => {
                // The next length header at or after `pos`, rewritten to a huge length.
                let huge = if u.arbitrary()? { u32::MAX } else { u.int_in_range(1 << 16..=u32::MAX)? };
                if let Some(at) = (pos..len).chain(0..pos).find(|&i| huge_header(data[i], huge).is_some())
                    && let Some((header, replaced)) = huge_header(data[at], huge)
                {
                    let end = (at + replaced).min(len);
                    data.splice(at..end, header);
                }
            }
            9 => {
                // Deep nesting: arrays of one element (fixarray 1) or maps of one pair.
                let depth = u.int_in_range(1..=4096)?;
                let marker = if u.arbitrary()? { 0x91 } else { 0x81 };
                data.splice(pos..pos, std::iter::repeat_n(marker, depth));
            }
            _ => {
                // Overwrite with a run of one interesting byte.
                let count = u.int_in_range(1..=32)?.min(len.saturating_sub(pos));
                let byte = *u.choose(INTERESTING_BYTES)?;
                data[pos..pos + count].fill(byte);
            }
        }
    }
    Ok(())
}

/// A u64 biased to the values that break arithmetic.
pub fn edgy_u64(u: &mut Unstructured<'_>) -> arbitrary::Result<u64> {
    Ok(match u.int_in_range(0..=7)? {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => u64::MAX - 1,
        4 => i64::MAX as u64,
        5 => u32::MAX as u64,
        6 => u.int_in_range(0..=64)?,
        _ => u.arbitrary()?,
    })
}
