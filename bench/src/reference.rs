//! The bench's own SHA-512 chain, independent of the code under test, checked against the
//! reference vectors (computed by Python's hashlib) before any result is trusted.

use sha2::{Digest as _, Sha256, Sha512};

/// The reference cases, embedded so the bench runs from any directory.
const VECTORS: &str = include_str!("../../testdata/sha512_chain.json");

#[derive(serde::Deserialize)]
struct Vectors {
    cases: Vec<Case>,
}

/// One reference case.
#[derive(serde::Deserialize, Clone, Debug)]
pub struct Case {
    /// Body length.
    pub length: usize,
    /// Body generator seed.
    pub seed: u64,
    /// Iterations.
    pub iterations: u64,
    /// SHA-256 of the body, to check the generator.
    pub body_sha256: String,
    /// The expected result.
    pub result_hex: String,
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The chain: SHA-512 of the body, then `iterations - 1` more over the 64-byte digest.
pub fn chain(body: &[u8], iterations: u64) -> [u8; 64] {
    let mut out: [u8; 64] = Sha512::digest(body).into();
    for _ in 1..iterations {
        out = Sha512::digest(out).into();
    }
    out
}

/// The vectors' body generator: byte i = (i * 31 + seed * 7 + (i >> 8)) mod 251.
pub fn vector_body(length: usize, seed: u64) -> Vec<u8> {
    (0..length as u64).map(|i| ((i * 31 + seed * 7 + (i >> 8)) % 251) as u8).collect()
}

/// The reference cases.
pub fn cases() -> Vec<Case> {
    serde_json::from_str::<Vectors>(VECTORS).expect("embedded vectors parse").cases
}

/// Check this module against every reference case; an error names the first disagreement.
pub fn validate() -> anyhow::Result<()> {
    for case in cases() {
        let body = vector_body(case.length, case.seed);
        anyhow::ensure!(hex(&Sha256::digest(&body)) == case.body_sha256, "body generator disagrees for {case:?}");
        anyhow::ensure!(hex(&chain(&body, case.iterations)) == case.result_hex, "chain disagrees for {case:?}");
    }
    Ok(())
}

/// Hashes per second of a plain single-threaded loop over 64-byte digests, for about `seconds`.
pub fn plain_loop_rate(seconds: f64) -> f64 {
    let started = std::time::Instant::now();
    let mut out = [7u8; 64];
    let mut hashes = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        for _ in 0..10_000 {
            out = Sha512::digest(out).into();
        }
        hashes += 10_000;
    }
    std::hint::black_box(out);
    hashes as f64 / started.elapsed().as_secs_f64()
}

/// The plain loop's rate as the median of `runs` short runs spread over about `seconds`: on a
/// shared VM a single run swings with its neighbours, the median of several does much less.
pub fn plain_loop_rate_median(seconds: f64, runs: usize) -> f64 {
    median(&plain_loop_rates_parallel(seconds, 1, runs))
}

/// The combined rate of `threads` plain loops running at once, for about `seconds`: what the
/// machine's cores hash together when all are busy (on a VM whose vCPUs share physical cores,
/// well below `threads` times the rate of one loop alone).
pub fn plain_loop_rate_parallel(seconds: f64, threads: usize) -> f64 {
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..threads.max(1)).map(|_| scope.spawn(|| plain_loop_rate(seconds))).collect();
        runs.into_iter().map(|run| run.join().unwrap_or(0.0)).sum()
    })
}

/// `runs` measurements of [`plain_loop_rate_parallel`] spread over about `seconds`.
pub fn plain_loop_rates_parallel(seconds: f64, threads: usize, runs: usize) -> Vec<f64> {
    let runs = runs.max(1);
    (0..runs).map(|_| plain_loop_rate_parallel(seconds / runs as f64, threads)).collect()
}

/// The median of `rates` (0 if empty).
pub fn median(rates: &[f64]) -> f64 {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reference_agrees_with_the_vectors() {
        super::validate().expect("vectors");
    }
}
