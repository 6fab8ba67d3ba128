//! The 64-byte SHA-512 digest that travels through the log instead of a job's body.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A SHA-512 digest: a job's current chain value or its final result.
///
/// Serialized as a MessagePack `bin` of exactly 64 bytes (serde has no impl for `[u8; 64]`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 64]);

impl Digest {
    /// The digest as 128 lowercase hex characters, the form clients see.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(128);
        for byte in self.0 {
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0x0f)] as char);
        }
        out
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight bytes identify a digest in logs without flooding them.
        let hex = self.to_hex();
        write!(f, "Digest({}..)", &hex[..16])
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DigestVisitor;

        impl<'de> Visitor<'de> for DigestVisitor {
            type Value = Digest;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 bytes")
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Digest, E> {
                let bytes: [u8; 64] = v.try_into().map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Digest(bytes))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Digest, A::Error> {
                let mut bytes = [0u8; 64];
                for (i, slot) in bytes.iter_mut().enumerate() {
                    *slot = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                if seq.next_element::<u8>()?.is_some() {
                    return Err(de::Error::invalid_length(65, &self));
                }
                Ok(Digest(bytes))
            }
        }

        deserializer.deserialize_bytes(DigestVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_messagepack_as_bin() {
        let digest = Digest([7u8; 64]);
        let bytes = rmp_serde::to_vec(&digest).expect("encode");
        // bin8 marker, length 64, then the raw bytes.
        assert_eq!(&bytes[..2], &[0xc4, 64]);
        assert_eq!(bytes.len(), 66);
        let back: Digest = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(back, digest);
    }

    #[test]
    fn rejects_wrong_length() {
        let bytes = rmp_serde::to_vec(&serde_bytes::Bytes::new(&[1u8; 63])).expect("encode");
        assert!(rmp_serde::from_slice::<Digest>(&bytes).is_err());
    }

    #[test]
    fn hex_is_lowercase_and_128_chars() {
        let mut raw = [0u8; 64];
        raw[0] = 0xAB;
        raw[63] = 0x01;
        let hex = Digest(raw).to_hex();
        assert_eq!(hex.len(), 128);
        assert!(hex.starts_with("ab00"));
        assert!(hex.ends_with("0001"));
    }
}
