//! The write-ahead log's file format: a magic header, then framed MessagePack records.
//!
//! ```text
//! file   := MAGIC record*
//! record := len: u32 LE | crc32(payload): u32 LE | payload: rmp-serde (named) of Record
//! ```
//!
//! The writer keeps zeros ahead of the last record (it preallocates, so that an fsync does not
//! also have to persist a new file size), and zeros where a record would start are the clean end
//! of the log. A crash can leave a torn record there instead: a short frame or a frame whose
//! checksum fails. Such a tail was never acknowledged (the writer acknowledges only after fsync),
//! so [`scan`] drops it and reports it. A damaged record *followed by a valid one* cannot be
//! explained by a crash: the log lost acknowledged data, and [`scan`] refuses with the file and
//! offset, so the node stops instead of guessing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::type_config::{Entry, LogId, Vote};

/// The file's first bytes; a version bump of the format changes them.
pub const MAGIC: &[u8; 8] = b"TNDMWAL1";
/// Length and checksum before each payload.
pub const FRAME_HEADER_LEN: usize = 8;
/// No record is larger; a length above it is damage, not a record.
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
    let payload_len = out.len() - FRAME_HEADER_LEN;
    if payload_len > MAX_RECORD_LEN {
        return Err(std::io::Error::other(format!("WAL record of {payload_len} bytes exceeds the limit")));
    }
    let crc = crc32fast::hash(&out[FRAME_HEADER_LEN..]);
    out[..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Try to read one record at `pos`: the record and the offset after it, or why not.
fn parse_frame(buf: &[u8], pos: usize) -> Result<(Record, usize), String> {
    let header = buf.get(pos..pos + FRAME_HEADER_LEN).ok_or("short frame header")?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(format!("implausible record length {len}"));
    }
    let end = pos + FRAME_HEADER_LEN + len;
    let payload = buf.get(pos + FRAME_HEADER_LEN..end).ok_or("record runs past the end of the file")?;
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    let record = rmp_serde::from_slice(payload).map_err(|e| format!("undecodable record: {e}"))?;
    Ok((record, end))
}

/// Whether any complete, valid record starts anywhere in `buf[from..]`.
fn valid_record_after(buf: &[u8], from: usize) -> bool {
    (from..buf.len().saturating_sub(FRAME_HEADER_LEN)).any(|pos| parse_frame(buf, pos).is_ok())
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
        match parse_frame(buf, pos) {
            Ok((record, next)) => {
                visit(pos as u64, record)?;
                records += 1;
                pos = next;
            }
            Err(_) if buf[pos..].iter().all(|&byte| byte == 0) => break,
            Err(reason) => {
                if valid_record_after(buf, pos + 1) {
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

    fn file_of(records: &[Record]) -> Vec<u8> {
        let mut buf = MAGIC.to_vec();
        for record in records {
            buf.extend(encode(record).expect("encode"));
        }
        buf
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
        let second = read(&whole).expect("scan").0[1] as usize;
        // The second record's first bytes reached the disk, the rest is still preallocation.
        let mut buf = whole[..second + FRAME_HEADER_LEN + 3].to_vec();
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
        let second = offsets[1] as usize;
        buf[second + FRAME_HEADER_LEN + 2] ^= 0x40;
        match read(&buf) {
            Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, second as u64),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn foreign_file_is_refused() {
        assert!(matches!(read(b"not a wal at all"), Err(WalError::BadMagic { .. })));
    }
}
