//! Reading the format before this one (`TNDMWAL2`), whose batch header had no checksum of its
//! own: a log written by an older Tandem is read with this once and rewritten in the current
//! format (see [`crate::log_store::LogStore::open`]).
//!
//! ```text
//! file  := LEGACY_MAGIC batch*
//! batch := len: u32 LE | crc32(records): u32 LE | records: record+   (records as today)
//! ```
//!
//! Without a checksum on the header, telling a torn last batch from damage before valid batches
//! meant trying every later byte offset as a batch start, with a checksum over whatever length
//! each candidate claimed: quadratic at worst. It stays that way here, for one read per old log;
//! the current format decides in linear time.

use std::path::Path;

use super::{RECORD_HEADER_LEN, Record, ScanSummary, WalError, check_frame, parse_record, visit_batch};

/// The magic of the previous format.
pub const LEGACY_MAGIC: &[u8; 8] = b"TNDMWAL2";
/// Length and checksum before each batch of the previous format.
const BATCH_HEADER_LEN: usize = RECORD_HEADER_LEN;

/// Whether a whole batch starts at `pos`: its checksum holds and its payload is records. (A
/// record inside a batch is a valid frame too, but its payload is not records.)
fn is_batch(buf: &[u8], pos: usize) -> bool {
    let Ok((mut at, end)) = check_frame(buf, pos) else { return false };
    while at < end {
        match parse_record(&buf[..end], at) {
            Ok((_, next)) => at = next,
            Err(_) => return false,
        }
    }
    true
}

/// Whether any whole batch starts anywhere in `buf[from..]`.
fn valid_batch_after(buf: &[u8], from: usize) -> bool {
    (from..buf.len().saturating_sub(BATCH_HEADER_LEN)).any(|pos| is_batch(buf, pos))
}

/// [`super::scan`] for a file that starts with [`LEGACY_MAGIC`].
pub(super) fn scan(
    path: &Path,
    buf: &[u8],
    mut visit: impl FnMut(u64, Record) -> Result<(), WalError>,
) -> Result<ScanSummary, WalError> {
    debug_assert!(buf.starts_with(LEGACY_MAGIC));
    let mut pos = LEGACY_MAGIC.len();
    let mut records = 0;
    while pos < buf.len() {
        match check_frame(buf, pos) {
            Ok(batch) => {
                records += visit_batch(path, buf, batch, &mut visit)?;
                pos = batch.1;
            }
            Err(_) if buf[pos..].iter().all(|&byte| byte == 0) => break,
            Err(reason) => {
                if valid_batch_after(buf, pos + 1) {
                    return Err(WalError::Corrupt { path: path.to_owned(), offset: pos as u64, reason });
                }
                return Ok(ScanSummary::torn(records, buf, pos, reason, true));
            }
        }
    }
    Ok(ScanSummary { records, valid_len: pos as u64, torn_tail: None, legacy: true })
}

/// A file in the previous format with one batch per group of record frames ([`super::encode`]).
#[cfg(any(test, feature = "test-util"))]
pub fn legacy_file(batches: &[Vec<u8>]) -> Vec<u8> {
    let mut out = LEGACY_MAGIC.to_vec();
    for records in batches {
        out.extend((records.len() as u32).to_le_bytes());
        out.extend(crc32fast::hash(records).to_le_bytes());
        out.extend_from_slice(records);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::type_config::LogId;

    fn committed(index: u64) -> Vec<u8> {
        let id = LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 0 }, index);
        super::super::encode(&Record::Committed(Some(id))).expect("encode")
    }

    fn read(buf: &[u8]) -> Result<ScanSummary, WalError> {
        scan(Path::new("old.wal"), buf, |_, _| Ok(()))
    }

    #[test]
    fn an_old_file_reads_and_says_it_is_old() {
        let mut buf = legacy_file(&[committed(1), [committed(2), committed(3)].concat()]);
        let valid = buf.len();
        buf.extend([0u8; 1024]);
        let summary = read(&buf).expect("scan");
        assert_eq!(
            (summary.records, summary.valid_len, summary.torn_tail, summary.legacy),
            (3, valid as u64, None, true)
        );
    }

    #[test]
    fn an_old_file_keeps_its_torn_tail_and_corruption_rules() {
        let whole = legacy_file(&[committed(1), committed(2), committed(3)]);
        let second = LEGACY_MAGIC.len() + BATCH_HEADER_LEN + committed(1).len();
        let torn = read(&whole[..whole.len() - 3]).expect("a cut last batch is torn");
        assert_eq!(torn.records, 2);
        let mut damaged = whole.clone();
        damaged[second + 2 * RECORD_HEADER_LEN + 2] ^= 0x40;
        assert!(matches!(read(&damaged), Err(WalError::Corrupt { offset, .. }) if offset == second as u64));
    }
}
