//! What crosses Tandem's process boundaries, shared by every crate that speaks it.
//!
//! - [`digest`]: the 64-byte SHA-512 value a job carries instead of its body.
//! - [`chain`]: the work function, the SHA-512 chain.
//! - [`api`]: the client API's JSON bodies (what curl users and the bench see).
//! - [`worker`]: the MessagePack messages between workers and coordinators.
//! - [`members`]: the one description of a cluster's voters (ids, roles, addresses).
//! - [`client`]: a typed client of the client API, for tests and the bench.
//! - [`worker_client`]: a typed client of the worker protocol, for the worker and the bench.
//! - [`scaler`]: the autoscaling policy, pure, shared by the leader and the bench's simulator.
//! - `process` (feature `process`): log set-up and signal handling, the same in every binary.
//!
//! Wire types are distinct from Raft commands on purpose: the coordinator converts between them,
//! so the replicated log can evolve without breaking clients, and clients of the API (the bench)
//! build without openraft.

pub mod api;
pub mod chain;
pub mod client;
pub mod digest;
pub mod members;
#[cfg(feature = "process")]
pub mod process;
pub mod scaler;
pub mod worker;
pub mod worker_client;

pub use digest::Digest;

/// How deeply MessagePack values may nest in anything Tandem decodes (worker and Raft
/// messages, WAL records, snapshots). Its own values nest about ten deep. rmp-serde's default,
/// 1024, lets a body of a kilobyte of nested one-element arrays, in a field nobody reads,
/// recurse deep enough to overflow a 2 MiB thread stack (a tokio worker's) in a debug build,
/// about 2.3 KiB a level: the process aborts instead of refusing the message.
pub const MAX_MSGPACK_DEPTH: usize = 64;

/// Decode MessagePack like `rmp_serde::from_slice`, with nesting limited to
/// [`MAX_MSGPACK_DEPTH`]: what every decoder of untrusted bytes in Tandem uses.
pub fn from_msgpack<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    deserializer.set_max_depth(MAX_MSGPACK_DEPTH);
    T::deserialize(&mut deserializer)
}

/// [`from_msgpack`] from a reader, for what is too large to hold in memory as bytes (a
/// snapshot's table). A length prefix does not allocate ahead of the bytes that follow it.
pub fn from_msgpack_read<T: serde::de::DeserializeOwned>(
    reader: impl std::io::Read,
) -> Result<T, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::new(reader);
    deserializer.set_max_depth(MAX_MSGPACK_DEPTH);
    T::deserialize(&mut deserializer)
}

/// Milliseconds since the Unix epoch on this machine's clock (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Header carrying the cluster secret, on the `/raft/` routes and the worker routes.
pub const SECRET_HEADER: &str = "x-tandem-secret";

/// Check a cluster secret or admin token (`what` names it in the error). It travels in an HTTP
/// header, which holds printable ASCII only and whose parsers drop surrounding spaces: a value
/// outside that would be refused on every request, so it is refused at startup instead. The
/// error never contains the value.
pub fn check_credential(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!("{what} must be printable ASCII: it is sent in an HTTP header"));
    }
    if value.trim() != value {
        return Err(format!("{what} must not begin or end with a space: HTTP drops them"));
    }
    Ok(())
}

/// The environment variable of the flag that lets a coordinator, worker or witness run without
/// a cluster secret (`--insecure-no-cluster-secret`).
pub const INSECURE_NO_CLUSTER_SECRET_ENV: &str = "TANDEM_INSECURE_NO_CLUSTER_SECRET";

/// Check the cluster secret a coordinator, worker or witness starts with: a valid credential
/// (see [`check_credential`]), or none and the operator's explicit `insecure` flag. Without
/// either it refuses: a process with no secret serves its /raft and /worker routes to anyone
/// who reaches its port, so the open mode must be asked for by name, never fallen into.
pub fn check_cluster_secret(secret: Option<&str>, insecure: bool) -> Result<(), String> {
    match secret {
        Some(secret) => check_credential("the cluster secret (TANDEM_CLUSTER_SECRET)", secret),
        None if insecure => Ok(()),
        None => Err(format!(
            "no cluster secret: set TANDEM_CLUSTER_SECRET (or --cluster-secret) to the same random value on \
             every coordinator, worker and witness (`deploy local` generates one). Without it anyone who \
             reaches this process's port could record made-up results for leased jobs and disrupt Raft \
             (drive terms up, send a crafted snapshot). To run without one anyway, for tests on a private \
             machine only, pass --insecure-no-cluster-secret ({INSECURE_NO_CLUSTER_SECRET_ENV}=true)"
        )),
    }
}

/// Whether `given` is `expected`, compared in time that does not depend on where they differ
/// (so a caller cannot find a secret or token byte by byte by timing refusals). Only its length
/// can leak.
pub fn secret_matches(given: Option<&str>, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.is_some_and(|given| bool::from(given.as_bytes().ct_eq(expected.as_bytes())))
}

/// The SHA-256 of a one-time join secret, in lower-case hex: what the replicated table holds
/// instead of the secret (a reader of the log or of a snapshot learns nothing it can join with).
pub fn join_secret_sha256(join_secret: &str) -> String {
    sha256_hex(join_secret.as_bytes())
}

/// The SHA-256 of `bytes`, lower-case hex (as `sha256sum` prints it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::{
        MAX_MSGPACK_DEPTH, check_cluster_secret, check_credential, from_msgpack, join_secret_sha256, secret_matches,
    };
    use crate::worker::RegisterRequest;

    /// A worker message with an unknown field holding `depth` nested one-element arrays.
    fn nested_register(depth: usize) -> Vec<u8> {
        let mut bytes = rmp_serde::to_vec_named(&RegisterRequest {
            name: "w".into(),
            cores: 1,
            instance_id: None,
            witness: false,
            launch_token: None,
        })
        .expect("encode");
        bytes[0] += 1; // one more pair in the fixmap
        bytes.extend([0xa1, b'x']);
        bytes.extend(std::iter::repeat_n(0x91, depth));
        bytes.push(0xc0);
        bytes
    }

    /// Found by `wire/tests/fuzz_messages.rs`: 1000 bytes of `0x91` (nested one-element arrays)
    /// in a field of a worker message overflowed the decoding thread's stack under rmp-serde's
    /// default depth limit (1024), aborting the process. Decoded here on a 256 KiB stack.
    #[test]
    fn deep_nesting_is_refused_without_exhausting_the_stack() {
        let decoded = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| {
                let shallow = from_msgpack::<RegisterRequest>(&nested_register(MAX_MSGPACK_DEPTH - 2)).is_ok();
                let deep = from_msgpack::<RegisterRequest>(&nested_register(100_000)).map_err(|e| e.to_string());
                (shallow, deep)
            })
            .expect("spawn")
            .join()
            .expect("no panic");
        assert!(decoded.0, "nesting within the limit decodes");
        assert_eq!(decoded.1, Err("depth limit exceeded".to_string()));
    }

    #[test]
    fn only_the_exact_secret_matches() {
        assert!(secret_matches(Some("s3cret-token"), "s3cret-token"));
        assert!(!secret_matches(Some("s3cret-tokeN"), "s3cret-token"), "same length, last byte differs");
        assert!(!secret_matches(Some("s3cret"), "s3cret-token"), "a prefix");
        assert!(!secret_matches(Some("s3cret-token-and-more"), "s3cret-token"), "a longer string");
        assert!(!secret_matches(Some(""), "s3cret-token"));
        assert!(!secret_matches(None, "s3cret-token"));
    }

    #[test]
    fn a_credential_must_survive_an_http_header_unchanged() {
        assert_eq!(check_credential("the secret", "s3cret-Token_1"), Ok(()));
        assert_eq!(check_credential("the secret", "with inner space"), Ok(()));
        for bad in ["", " leading", "trailing ", "tab\tinside", "caf\u{e9}", "new\nline\r"] {
            let error = check_credential("the secret", bad).expect_err(bad);
            assert!(error.starts_with("the secret must"), "{error}");
            assert!(bad.trim().is_empty() || !error.contains(bad.trim()), "the error shows the value: {error}");
        }
    }

    #[test]
    fn no_cluster_secret_is_refused_unless_the_insecure_flag_says_so() {
        let error = check_cluster_secret(None, false).expect_err("no secret, no flag");
        assert!(error.contains("TANDEM_CLUSTER_SECRET"), "{error}");
        assert!(error.contains("--insecure-no-cluster-secret"), "{error}");
        assert_eq!(check_cluster_secret(None, true), Ok(()));
        assert_eq!(check_cluster_secret(Some("s3cret"), false), Ok(()));
        assert!(check_cluster_secret(Some("s3cret "), true).is_err(), "the flag does not excuse a bad secret");
    }

    #[test]
    fn a_join_secret_is_kept_as_its_sha256_in_hex() {
        assert_eq!(join_secret_sha256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_ne!(join_secret_sha256("abd"), join_secret_sha256("abc"));
    }
}
