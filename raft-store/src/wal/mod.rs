//! The write-ahead log's file format: a magic header, then batches of framed MessagePack records.
//!
//! ```text
//! file   := MAGIC batch*
//! batch  := len: u32 LE | crc32(records): u32 LE | crc32(len, crc): u32 LE | records: record+
//! record := len: u32 LE | crc32(payload): u32 LE | payload: rmp-serde (named) of Record
//! ```
//!
//! A batch is what the writer writes at once and then fsyncs, before it writes the next one: so
//! after a crash or a power loss only the last batch can be incomplete, and none of its records
//! was acknowledged. Its checksum makes it all or nothing. The writer keeps zeros ahead of the
//! last batch (it preallocates, so that an fsync does not also have to persist a new file size),
//! and zeros where a batch would start are the clean end of the log.
//!
//! What a crash can leave of the last batch is narrow, and [`scan`] accepts only that as a torn
//! tail (as etcd does for its torn entries): a disk persists whole sectors, in any order, so a
//! torn batch is one the file ends inside, or one with a sector that was never written (still
//! zeros), followed by nothing but zeros. Anything else is damage to data that was fsynced and
//! perhaps acknowledged, a vote among it, and [`scan`] refuses with the file and offset, so the
//! node stops instead of guessing: a batch whose checksum fails with more written after it, a
//! last batch whose checksum fails although every sector of it was written (bit rot), a batch
//! header whose own checksum fails while none of its bytes lies in a zeroed sector.
//!
//! The header's own checksum keeps the scan linear in the file's size whatever the file holds:
//! a damaged batch's length is never trusted, and the one search the scan may need (is there a
//! whole batch after a header that was never written?) checks each offset's 12 bytes before it
//! checks a payload, which only real batches pass.
//!
//! Files of the format before this one are read by [`legacy`] and rewritten by the log store.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::type_config::{Entry, LogId, Vote};

pub mod legacy;

/// The file's first bytes; a version bump of the format changes them.
pub const MAGIC: &[u8; 8] = b"TNDMWAL3";
/// Length and checksum before each record.
pub const RECORD_HEADER_LEN: usize = 8;
/// Length, checksum of the records, and checksum of those two, before each batch.
pub const BATCH_HEADER_LEN: usize = 12;
/// The unit a disk persists whole: a torn write leaves each sector old (zeros here) or new.
pub const SECTOR_LEN: usize = 512;
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
    /// Damage no crash explains: acknowledged entries, or the vote, may be lost.
    #[error(
        "{path} is corrupt at byte offset {offset} ({reason}); refusing to start: restore this \
         voter's data or replace it with a new node id"
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
    /// The file is in the previous format ([`legacy`]): rewrite it before writing to it.
    pub legacy: bool,
}

impl ScanSummary {
    /// The summary of a scan that read `records` records and found a torn tail at `pos`, where
    /// `buf` (the whole file) is cut.
    fn torn(records: u64, buf: &[u8], pos: usize, reason: String, legacy: bool) -> ScanSummary {
        let torn_tail = TornTail { offset: pos as u64, dropped_bytes: (buf.len() - pos) as u64, reason };
        ScanSummary { records, valid_len: pos as u64, torn_tail: Some(torn_tail), legacy }
    }
}

/// Hand each record of the whole batch whose records are `buf[start..end]` to `visit` with its
/// offset; how many there were. A batch whose checksum holds was written whole: a record in it
/// that does not read is not a crash's doing, and is corruption.
fn visit_batch(
    path: &Path,
    buf: &[u8],
    (start, end): (usize, usize),
    visit: &mut impl FnMut(u64, Record) -> Result<(), WalError>,
) -> Result<u64, WalError> {
    let (mut at, mut records) = (start, 0);
    while at < end {
        let corrupt = |reason: String| WalError::Corrupt { path: path.to_owned(), offset: at as u64, reason };
        let (record, next) = parse_record(&buf[..end], at).map_err(corrupt)?;
        visit(at as u64, record)?;
        records += 1;
        at = next;
    }
    Ok(records)
}

/// Frame one record for the file.
pub fn encode(record: &Record) -> std::io::Result<Vec<u8>> {
    let mut out = vec![0u8; RECORD_HEADER_LEN];
    rmp_serde::encode::write_named(&mut out, record).map_err(std::io::Error::other)?;
    let len = checked_len(out.len() - RECORD_HEADER_LEN, "record")?;
    let crc = crc32fast::hash(&out[RECORD_HEADER_LEN..]);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn checked_len(len: usize, what: &str) -> std::io::Result<u32> {
    if len > MAX_RECORD_LEN {
        return Err(std::io::Error::other(format!("WAL {what} of {len} bytes exceeds the limit")));
    }
    Ok(len as u32)
}

/// Seal a batch: `buf` is [`BATCH_HEADER_LEN`] bytes of room followed by record frames
/// ([`encode`]); fill in the batch's header.
pub fn seal_batch(buf: &mut [u8]) -> std::io::Result<()> {
    let len = checked_len(buf.len() - BATCH_HEADER_LEN, "batch")?;
    let crc = crc32fast::hash(&buf[BATCH_HEADER_LEN..]);
    buf[..4].copy_from_slice(&len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    let header_crc = crc32fast::hash(&buf[..8]);
    buf[8..12].copy_from_slice(&header_crc.to_le_bytes());
    Ok(())
}

/// One batch of the given record frames, sealed.
pub fn batch(records: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = vec![0u8; BATCH_HEADER_LEN];
    out.extend_from_slice(records);
    seal_batch(&mut out)?;
    Ok(out)
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"))
}

/// Check the record frame at `pos`: where its payload starts and ends. (The previous format's
/// batches are framed the same way.)
fn check_frame(buf: &[u8], pos: usize) -> Result<(usize, usize), String> {
    let header = buf.get(pos..pos + RECORD_HEADER_LEN).ok_or("short frame header")?;
    let (len, crc) = (le_u32(header) as usize, le_u32(&header[4..]));
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(format!("implausible length {len}"));
    }
    let (start, end) = (pos + RECORD_HEADER_LEN, pos + RECORD_HEADER_LEN + len);
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

/// What lies where a batch would start.
enum Batch {
    /// A whole batch: its records are `start..end`.
    Whole { start: usize, end: usize },
    /// Nothing but zeros from here: the clean end of the log.
    End,
    /// The last write, torn by a crash; why.
    Torn(String),
    /// Damage no crash explains; what.
    Corrupt(String),
}

fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&byte| byte != 0)
}

/// Where the first sector-aligned piece of `buf[from..to]` that is all zeros starts (a sector
/// of a write that never reached the disk), if one is.
fn unwritten_sector(buf: &[u8], from: usize, to: usize) -> Option<usize> {
    let mut sector = from - from % SECTOR_LEN;
    while sector < to {
        let piece = sector.max(from)..(sector + SECTOR_LEN).min(to);
        if first_nonzero(&buf[piece.clone()]).is_none() {
            return Some(piece.start);
        }
        sector += SECTOR_LEN;
    }
    None
}

/// The batch header at `pos` if its own checksum holds: the batch's length and checksum.
fn batch_header(buf: &[u8], pos: usize) -> Option<(usize, u32)> {
    let header = buf.get(pos..pos + BATCH_HEADER_LEN)?;
    (crc32fast::hash(&header[..8]) == le_u32(&header[8..])).then(|| (le_u32(header) as usize, le_u32(&header[4..])))
}

/// Where the first whole batch (header and records' checksums holding) at or after `from`
/// starts, if any. Linear: an offset's payload is summed only if its 12-byte header checks.
fn whole_batch_after(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len().saturating_sub(BATCH_HEADER_LEN)).find(|&at| {
        let plausible = |len: usize| len != 0 && len <= MAX_RECORD_LEN && at + BATCH_HEADER_LEN + len <= buf.len();
        let len = le_u32(&buf[at..]) as usize;
        plausible(len)
            && batch_header(buf, at).is_some_and(|(len, crc)| {
                crc32fast::hash(&buf[at + BATCH_HEADER_LEN..at + BATCH_HEADER_LEN + len]) == crc
            })
    })
}

/// Where each batch of a current-format file starts and ends (header included), from the first
/// up to the first that is not whole: for tools and tests that damage a log on purpose.
pub fn batch_spans(file: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut pos = MAGIC.len();
    while file.starts_with(MAGIC)
        && let Batch::Whole { end, .. } = read_batch(file, pos)
    {
        spans.push((pos, end));
        pos = end;
    }
    spans
}

/// Read what lies at `pos`, where a batch would start. Linear in what it reads.
fn read_batch(buf: &[u8], pos: usize) -> Batch {
    let rest = &buf[pos..];
    if rest.len() < BATCH_HEADER_LEN {
        return match first_nonzero(rest) {
            None => Batch::End,
            Some(_) => Batch::Torn("the file ends inside a batch header".into()),
        };
    }
    if let Some((len, crc)) = batch_header(buf, pos) {
        if len == 0 || len > MAX_RECORD_LEN {
            return Batch::Corrupt(format!("a batch header with a valid checksum claims {len} bytes"));
        }
        let (start, end) = (pos + BATCH_HEADER_LEN, pos + BATCH_HEADER_LEN + len);
        if end > buf.len() {
            return Batch::Torn(format!("the file ends inside a batch of {len} bytes"));
        }
        if crc32fast::hash(&buf[start..end]) == crc {
            return Batch::Whole { start, end };
        }
        if let Some(at) = first_nonzero(&buf[end..]) {
            return Batch::Corrupt(format!(
                "batch checksum mismatch, and more was written after the batch (at byte offset {})",
                end + at
            ));
        }
        return match unwritten_sector(buf, pos, end) {
            Some(at) => {
                Batch::Torn(format!("batch checksum mismatch; the sector at byte offset {at} was never written"))
            }
            None => Batch::Corrupt(
                "checksum mismatch in the last batch although every sector of it was written: it was \
                 damaged after it was written (a vote or acknowledged entries may be in it), not torn by a crash"
                    .into(),
            ),
        };
    }
    if first_nonzero(rest).is_none() {
        return Batch::End;
    }
    let Some(sector) = unwritten_sector(buf, pos, pos + BATCH_HEADER_LEN) else {
        return Batch::Corrupt("batch header checksum mismatch".into());
    };
    match whole_batch_after(buf, pos + 1) {
        Some(at) => Batch::Corrupt(format!(
            "batch header checksum mismatch (the sector at byte offset {sector} is zeros), and a whole batch \
             follows at byte offset {at}"
        )),
        None => {
            Batch::Torn(format!("a batch header that was never written (the sector at byte offset {sector} is zeros)"))
        }
    }
}

/// Read every valid record of `buf` (a whole WAL file) in order, handing each to `visit` with its
/// offset. A torn tail is reported in the summary; damage before the tail, or a last batch that
/// a crash cannot explain, is an error. Linear in the file's size (in the current format).
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
                legacy: false,
            });
        }
        return Err(WalError::BadMagic { path: path.to_owned() });
    }
    if buf.starts_with(legacy::LEGACY_MAGIC) {
        return legacy::scan(path, buf, visit);
    }
    if &buf[..MAGIC.len()] != MAGIC {
        return Err(WalError::BadMagic { path: path.to_owned() });
    }
    let mut pos = MAGIC.len();
    let mut records = 0;
    while pos < buf.len() {
        match read_batch(buf, pos) {
            Batch::Whole { start, end } => {
                records += visit_batch(path, buf, (start, end), &mut visit)?;
                pos = end;
            }
            Batch::End => break,
            Batch::Torn(reason) => return Ok(ScanSummary::torn(records, buf, pos, reason, false)),
            Batch::Corrupt(reason) => {
                return Err(WalError::Corrupt { path: path.to_owned(), offset: pos as u64, reason });
            }
        }
    }
    Ok(ScanSummary { records, valid_len: pos as u64, torn_tail: None, legacy: false })
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
        record_offset as usize - BATCH_HEADER_LEN
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

    /// `buf` ending with a batch of many records that spans several sectors; where it starts.
    fn with_long_last_batch(mut buf: Vec<u8>) -> (Vec<u8>, usize) {
        let at = buf.len();
        let records: Vec<u8> = (2..200).flat_map(|i| encode(&committed(i)).expect("encode")).collect();
        buf.extend(batch(&records).expect("batch"));
        (buf, at)
    }

    fn expect_corrupt_at(buf: &[u8], offset: usize) -> String {
        match read(buf) {
            Err(WalError::Corrupt { offset: at, reason, .. }) if at == offset as u64 => reason,
            other => panic!("expected corruption at {offset}, got {other:?}"),
        }
    }

    #[test]
    fn clean_file_reads_every_record() {
        let buf = file_of(&[committed(1), committed(2), committed(3)]);
        let (offsets, summary) = read(&buf).expect("scan");
        assert_eq!(offsets.len(), 3);
        assert_eq!(summary.valid_len, buf.len() as u64);
        assert_eq!(summary.torn_tail, None);
        assert!(!summary.legacy);
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
    fn a_batch_whose_sectors_past_the_first_never_reached_the_disk_is_dropped() {
        // The batch's first sector reached the disk; the rest is still preallocated zeros.
        let (whole, second) = with_long_last_batch(file_of(&[committed(1)]));
        let written = second - second % SECTOR_LEN + SECTOR_LEN;
        let mut buf = whole[..written].to_vec();
        buf.resize(whole.len() + 4096, 0);
        let (offsets, summary) = read(&buf).expect("scan");
        assert_eq!(offsets.len(), 1);
        assert_eq!(summary.valid_len, second as u64);
        let torn = summary.torn_tail.expect("torn");
        assert_eq!((torn.offset, torn.dropped_bytes), (second as u64, (buf.len() - second) as u64));
    }

    #[test]
    fn a_batch_header_in_a_sector_that_never_reached_the_disk_is_dropped() {
        // Its later sectors did: the header alone does not say how long the batch is.
        let (mut buf, second) = with_long_last_batch(file_of(&[committed(1)]));
        let header_sector = second - second % SECTOR_LEN;
        buf[second..header_sector + SECTOR_LEN].fill(0);
        buf.extend([0u8; 4096]);
        let (offsets, summary) = read(&buf).expect("scan");
        assert_eq!(offsets.len(), 1);
        assert_eq!(summary.torn_tail.expect("torn").offset, second as u64);
    }

    #[test]
    fn damage_before_a_valid_record_is_refused_with_its_offset() {
        let mut buf = file_of(&[committed(1), committed(2), committed(3)]);
        let (offsets, _) = read(&buf).expect("scan");
        let second = batch_of(offsets[1]);
        buf[second + BATCH_HEADER_LEN + RECORD_HEADER_LEN + 2] ^= 0x40;
        let reason = expect_corrupt_at(&buf, second);
        assert!(reason.contains("more was written after"), "{reason}");
    }

    #[test]
    fn a_flipped_byte_in_a_batch_header_is_refused_at_once() {
        for byte in 0..BATCH_HEADER_LEN {
            let mut buf = file_of(&[committed(1), committed(2), committed(3)]);
            let first = MAGIC.len();
            buf[first + byte] ^= 0x01;
            // Also as the last batch: a flipped header byte is never a torn write.
            let reason = expect_corrupt_at(&buf, first);
            assert_eq!(reason, "batch header checksum mismatch", "byte {byte}");
            let mut last = file_of(&[committed(1)]);
            last[first + byte] ^= 0x80;
            last.extend([0u8; 4096]);
            expect_corrupt_at(&last, first);
        }
    }

    #[test]
    fn a_zeroed_header_sector_before_a_valid_batch_is_refused() {
        let (mut buf, second) = with_long_last_batch(file_of(&[committed(1)]));
        buf.extend(batch(&encode(&committed(300)).expect("encode")).expect("batch"));
        let header_sector = second - second % SECTOR_LEN;
        buf[second..header_sector + SECTOR_LEN].fill(0);
        let reason = expect_corrupt_at(&buf, second);
        assert!(reason.contains("a whole batch follows"), "{reason}");
    }

    #[test]
    fn the_last_batch_with_a_sector_missing_in_its_middle_is_a_torn_tail() {
        // A power loss before the fsync: the disk kept the batch's last sectors but not an
        // earlier one. Its records were never acknowledged, whichever of them survived whole.
        let (mut buf, valid) = with_long_last_batch(file_of(&[committed(1)]));
        let hole = (valid + buf.len()) / 2;
        let hole = hole - hole % SECTOR_LEN;
        buf[hole..hole + SECTOR_LEN].fill(0);
        buf.extend([0u8; 4096]);
        let (offsets, summary) = read(&buf).expect("not corruption");
        assert_eq!(offsets.len(), 1);
        assert_eq!(summary.valid_len, valid as u64);
        assert_eq!(summary.torn_tail.expect("torn").offset, valid as u64);
    }

    #[test]
    fn a_flipped_byte_in_a_last_batch_written_whole_is_refused() {
        // Every sector of it holds data, and only zeros follow: it was fsynced (perhaps a vote,
        // perhaps acknowledged entries) and then damaged; dropping it would forget them.
        let (mut buf, last) = with_long_last_batch(file_of(&[committed(1)]));
        assert_eq!(unwritten_sector(&buf, last, buf.len()), None, "the batch has data in every sector");
        let middle = (last + buf.len()) / 2;
        buf[middle] ^= 0x10;
        buf.extend([0u8; 4096]);
        let reason = expect_corrupt_at(&buf, last);
        assert!(reason.contains("every sector of it was written"), "{reason}");
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
