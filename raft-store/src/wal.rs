//! The write-ahead log's file format: a magic header, then batches of framed MessagePack records.
//!
//! ```text
//! file   := MAGIC batch*
//! batch  := len: u32 LE | crc32(records): u32 LE | records: record+
//! record := len: u32 LE | crc32(payload): u32 LE | payload: rmp-serde (named) of Record
//! ```
//!
//! A batch is what the writer writes at once and then fsyncs, before it writes the next one: so
//! after a crash or a power loss only the last batch can be incomplete, in any way (a disk may
//! persist its pages in any order), and none of its records was acknowledged. Its checksum makes
//! it all or nothing.
//!
//! The writer keeps zeros ahead of the last batch (it preallocates, so that an fsync does not
//! also have to persist a new file size), and zeros where a batch would start are the clean end
//! of the log. A damaged batch there is a torn tail: [`scan`] drops it and reports it. A damaged
//! batch *followed by a valid one* cannot be explained by a crash: the log lost acknowledged
//! data, and [`scan`] refuses with the file and offset, so the node stops instead of guessing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::type_config::{Entry, LogId, Vote};

/// The file's first bytes; a version bump of the format changes them.
pub const MAGIC: &[u8; 8] = b"TNDMWAL2";
/// Length and checksum before each batch and each record.
pub const FRAME_HEADER_LEN: usize = 8;
/// No batch or record is larger; a length above it is damage.
pub const MAX_RECORD_LEN: usize = 256 << 20;

/// One durable change to the log's state, in the order it happened.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum Record {
    /// Entries appended after the current last entry.
    Entries(Vec<Entry>),
    /// The vote now in force.
    Vote(Vote),
    /// The committed log id (may lag; only an optimisation for restart).
    Committed(Option<LogId>),
    /// Every entry after this log id (all of them for `None`) is deleted.
    TruncateAfter(Option<LogId>),
    /// Every entry up to and including this log id is deleted.
    Purge(LogId),
}

/// Why a log file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the WAL magic: it is not a Tandem log, or its start is damaged.
    #[error("{path} is not a Tandem write-ahead log (bad header); refusing to start")]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// A record before the tail is damaged: acknowledged entries may be lost.
    #[error(
        "{path} is corrupt at byte offset {offset} ({reason}) and valid records follow it; \
         refusing to start: restore this voter's data or replace it with a new node id"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damaged record starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Records are individually valid but describe an impossible log (for example a gap).
    #[error("{path} is inconsistent at byte offset {offset}: {reason}; refusing to start")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// Where the offending record starts.
        offset: u64,
        /// What is impossible about it.
        reason: String,
    },
    /// Another process holds the data directory.
    #[error("{path} is locked by another process: two voters cannot share a data directory")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
}

/// A damaged tail that [`scan`] dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Where the first damaged byte range starts (the file is cut here).
    pub offset: u64,
    /// How many bytes were dropped.
    pub dropped_bytes: u64,
    /// What was wrong with the first dropped record.
    pub reason: String,
}

/// The outcome of a successful [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanSummary {
    /// Valid records read.
    pub records: u64,
    /// Length of the valid prefix: the next record goes here. After a torn tail the file must
    /// be cut to it; zeros after it are preallocated space.
    pub valid_len: u64,
    /// The dropped tail, if the file had one.
    pub torn_tail: Option<TornTail>,
}

/// Frame one record for the file.
pub fn encode(record: &Record) -> std::io::Result<Vec<u8>> {
    let mut out = vec![0u8; FRAME_HEADER_LEN];
    rmp_serde::encode::write_named(&mut out, record).map_err(std::io::Error::other)?;
    seal(&mut out, "record")?;
    Ok(out)
}

/// Fill in the frame header at the start of `frame` (a record or a batch) for what follows it.
fn seal(frame: &mut [u8], what: &str) -> std::io::Result<()> {
    let len = frame.len() - FRAME_HEADER_LEN;
    if len > MAX_RECORD_LEN {
        return Err(std::io::Error::other(format!("WAL {what} of {len} bytes exceeds the limit")));
    }
    let crc = crc32fast::hash(&frame[FRAME_HEADER_LEN..]);
    frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Seal a batch: `buf` is [`FRAME_HEADER_LEN`] bytes of room followed by record frames
/// ([`encode`]); fill in the batch's length and checksum.
pub fn seal_batch(buf: &mut [u8]) -> std::io::Result<()> {
    seal(buf, "batch")
}

/// One batch of the given record frames, sealed.
pub fn batch(records: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = vec![0u8; FRAME_HEADER_LEN];
    out.extend_from_slice(records);
    seal_batch(&mut out)?;
    Ok(out)
}

/// Check the frame at `pos` (a batch's or a record's): where its payload starts and ends.
fn check_frame(buf: &[u8], pos: usize) -> Result<(usize, usize), String> {
    let header = buf.get(pos..pos + FRAME_HEADER_LEN).ok_or("short frame header")?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(format!("implausible length {len}"));
    }
    let (start, end) = (pos + FRAME_HEADER_LEN, pos + FRAME_HEADER_LEN + len);
    let payload = buf.get(start..end).ok_or("frame runs past the end of the file")?;
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    Ok((start, end))
}

/// Try to read one record at `pos` of `buf`: the record and the offset after it, or why not.
fn parse_record(buf: &[u8], pos: usize) -> Result<(Record, usize), String> {
    let (start, end) = check_frame(buf, pos)?;
    let record = wire::from_msgpack(&buf[start..end]).map_err(|e| format!("undecodable record: {e}"))?;
    Ok((record, end))
}

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
    (from..buf.len().saturating_sub(FRAME_HEADER_LEN)).any(|pos| is_batch(buf, pos))
}

/// Read every valid record of `buf` (a whole WAL file) in order, handing each to `visit` with its
/// offset. A torn tail is reported in the summary; damage before the tail is an error.
pub fn scan(
    path: &Path,
    buf: &[u8],
    mut visit: impl FnMut(u64, Record) -> Result<(), WalError>,
) -> Result<ScanSummary, WalError> {
    if buf.len() < MAGIC.len() {
        // A crash while creating the file leaves a prefix of the header: an empty log.
        if MAGIC.starts_with(buf) {
            return Ok(ScanSummary {
                records: 0,
                valid_len: 0,
                torn_tail: (!buf.is_empty()).then(|| TornTail {
                    offset: 0,
                    dropped_bytes: buf.len() as u64,
                    reason: "partial header".into(),
                }),
            });
        }
        return Err(WalError::BadMagic { path: path.to_owned() });
    }
    if &buf[..MAGIC.len()] != MAGIC {
        return Err(WalError::BadMagic { path: path.to_owned() });
    }
    let mut pos = MAGIC.len();
    let mut records = 0;
    while pos < buf.len() {
        match check_frame(buf, pos) {
            Ok((start, end)) => {
                // A batch whose checksum holds was written whole: a record in it that does not
                // read is not a crash's doing.
                let mut at = start;
                while at < end {
                    let corrupt =
                        |reason: String| WalError::Corrupt { path: path.to_owned(), offset: at as u64, reason };
                    let (record, next) = parse_record(&buf[..end], at).map_err(corrupt)?;
                    visit(at as u64, record)?;
                    records += 1;
                    at = next;
                }
                pos = end;
            }
            Err(_) if buf[pos..].iter().all(|&byte| byte == 0) => break,
            Err(reason) => {
                if valid_batch_after(buf, pos + 1) {
                    return Err(WalError::Corrupt { path: path.to_owned(), offset: pos as u64, reason });
                }
                return Ok(ScanSummary {
                    records,
                    valid_len: pos as u64,
                    torn_tail: Some(TornTail { offset: pos as u64, dropped_bytes: (buf.len() - pos) as u64, reason }),
                });
            }
        }
    }
    Ok(ScanSummary { records, valid_len: pos as u64, torn_tail: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with one batch per record.
    fn file_of(records: &[Record]) -> Vec<u8> {
        let mut buf = MAGIC.to_vec();
        for record in records {
            buf.extend(batch(&encode(record).expect("encode")).expect("batch"));
        }
        buf
    }

    /// Where the batch holding the record at `record_offset` starts (one record per batch).
    fn batch_of(record_offset: u64) -> usize {
        record_offset as usize - FRAME_HEADER_LEN
    }

    fn committed(index: u64) -> Record {
        Record::Committed(Some(LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 0 }, index)))
    }

    fn read(buf: &[u8]) -> Result<(Vec<u64>, ScanSummary), WalError> {
        let mut offsets = Vec::new();
        let summary = scan(Path::new("test.wal"), buf, |offset, _| {
            offsets.push(offset);
            Ok(())
        })?;
        Ok((offsets, summary))
    }

    #[test]
    fn clean_file_reads_every_record() {
        let buf = file_of(&[committed(1), committed(2), committed(3)]);
        let (offsets, summary) = read(&buf).expect("scan");
        assert_eq!(offsets.len(), 3);
        assert_eq!(summary.valid_len, buf.len() as u64);
        assert_eq!(summary.torn_tail, None);
    }

    #[test]
    fn every_truncation_recovers_a_prefix() {
        let buf = file_of(&[committed(1), committed(2), committed(3)]);
        let (full, _) = read(&buf).expect("scan");
        for cut in 0..buf.len() {
            let (offsets, summary) = read(&buf[..cut]).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_eq!(offsets, full[..offsets.len()].to_vec(), "cut at {cut}");
            assert!(summary.valid_len <= cut as u64);
        }
    }

    #[test]
    fn zeros_after_the_last_record_are_its_clean_end() {
        let mut buf = file_of(&[committed(1)]);
        let valid = buf.len();
        buf.extend([0u8; 4096]);
        let (offsets, summary) = read(&buf).expect("scan");
        assert_eq!(offsets.len(), 1);
        assert_eq!(summary.valid_len, valid as u64);
        assert_eq!(summary.torn_tail, None);
    }

    #[test]
    fn a_record_torn_over_preallocated_zeros_is_dropped() {
        let whole = file_of(&[committed(1), committed(2)]);
        let second = batch_of(read(&whole).expect("scan").0[1]);
        // The second batch's first bytes reached the disk, the rest is still preallocation.
        let mut buf = whole[..second + 2 * FRAME_HEADER_LEN + 3].to_vec();
        buf.extend([0u8; 4096]);
        let (offsets, summary) = read(&buf).expect("scan");
        assert_eq!(offsets.len(), 1);
        assert_eq!(summary.valid_len, second as u64);
        let torn = summary.torn_tail.expect("torn");
        assert_eq!((torn.offset, torn.dropped_bytes), (second as u64, (buf.len() - second) as u64));
    }

    #[test]
    fn damage_before_a_valid_record_is_refused_with_its_offset() {
        let mut buf = file_of(&[committed(1), committed(2), committed(3)]);
        let (offsets, _) = read(&buf).expect("scan");
        let second = batch_of(offsets[1]);
        buf[second + 2 * FRAME_HEADER_LEN + 2] ^= 0x40;
        match read(&buf) {
            Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, second as u64),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn the_last_batch_with_pages_missing_in_its_middle_is_a_torn_tail() {
        // A power loss before the fsync: the disk kept the batch's last page but not an earlier
        // one. Its records were never acknowledged, whichever of them survived whole.
        let mut buf = file_of(&[committed(1)]);
        let valid = buf.len();
        let records: Vec<u8> = (2..200).flat_map(|i| encode(&committed(i)).expect("encode")).collect();
        buf.extend(batch(&records).expect("batch"));
        let hole = valid + FRAME_HEADER_LEN + records.len() / 3;
        buf[hole..hole + 512].fill(0);
        buf.extend([0u8; 4096]);
        let (offsets, summary) = read(&buf).expect("not corruption");
        assert_eq!(offsets.len(), 1);
        assert_eq!(summary.valid_len, valid as u64);
        assert_eq!(summary.torn_tail.expect("torn").offset, valid as u64);
    }

    #[test]
    fn a_whole_batch_with_an_unreadable_record_is_refused() {
        // Its checksum holds, so it was written as it is: not a crash's doing.
        let mut records = encode(&committed(1)).expect("encode");
        records.extend(b"\x05\0\0\0garbage");
        let mut buf = MAGIC.to_vec();
        buf.extend(batch(&records).expect("batch"));
        assert!(matches!(read(&buf), Err(WalError::Corrupt { .. })));
    }

    #[test]
    fn foreign_file_is_refused() {
        assert!(matches!(read(b"not a wal at all"), Err(WalError::BadMagic { .. })));
    }
}
