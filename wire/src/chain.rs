//! The work function: `out = SHA-512(body)`, then `iterations - 1` more times `out = SHA-512(out)`
//! over the raw 64-byte digest.
//!
//! The coordinator computes the first step at ingest ([`first_digest`]); workers continue from any
//! checkpoint ([`continue_chain`]), in chunks so that they can check for cancellation and report
//! progress between them.

use sha2::{Digest as _, Sha512};

use crate::digest::Digest;

/// Iteration 1: SHA-512 of the body.
pub fn first_digest(body: &[u8]) -> Digest {
    Digest(Sha512::digest(body).into())
}

/// Hash `digest` `steps` more times.
pub fn continue_chain(digest: Digest, steps: u64) -> Digest {
    let mut out: [u8; 64] = digest.0;
    for _ in 0..steps {
        out = Sha512::digest(out).into();
    }
    Digest(out)
}

/// The whole chain of `iterations` (at least 1) over `body`.
pub fn sha512_chain(body: &[u8], iterations: u64) -> Digest {
    continue_chain(first_digest(body), iterations.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python: hashlib.sha512(b"abc").hexdigest() (FIPS 180-2 test vector).
    const ABC: &str = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                       2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";

    #[test]
    fn one_iteration_is_plain_sha512() {
        assert_eq!(sha512_chain(b"abc", 1).to_hex(), ABC);
    }

    #[test]
    fn chunks_compose() {
        let whole = sha512_chain(b"abc", 10);
        let first = continue_chain(first_digest(b"abc"), 4);
        assert_eq!(continue_chain(first, 5), whole);
    }
}
