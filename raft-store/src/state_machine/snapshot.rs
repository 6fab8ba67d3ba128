//! Snapshot files, and the snapshot openraft moves: always a file, never a buffer.
//!
//! A snapshot is the MessagePack of the [`JobTable`]: hundreds of MiB to GiB at the defaults'
//! limits. It is written once, straight from the table by a build or straight from the network
//! by a receiving follower, into a pending file beside [`SNAPSHOT_FILE`]; keeping it renames that
//! file into place. openraft only passes a [`SnapshotData`] along: a leader streams the table's
//! bytes from the file, an install decodes them from it. No step holds the encoded table in
//! memory.
//!
//! The format (`TNDMSNP2`), integers little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `TNDMSNP2` |
//! | 8..12 | CRC-32 of bytes 12 to the end of the metadata |
//! | 12..16 | length `m` of the metadata |
//! | 16..24 | length `t` of the table |
//! | 24..28 | CRC-32 of the table |
//! | 28..28+m | the metadata's MessagePack |
//! | 28+m..28+m+t | the table's MessagePack; the file ends here |
//!
//! The head is checked when the file is opened, the table's checksum as the table is decoded (it
//! is read once, by the decode) and as it is received. A file in the first format (`TNDMSNP1`:
//! one checksum, then the MessagePack of the metadata and the table's bytes together) is read
//! once into memory and rewritten in this one when the store opens.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use axum::body::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tempfile::TempPath;

use crate::job_table::JobTable;
use crate::type_config::SnapshotMeta;

/// The current snapshot's file name inside a data directory.
pub const SNAPSHOT_FILE: &str = "snapshot.bin";
const MAGIC: &[u8; 8] = b"TNDMSNP2";
const LEGACY_MAGIC: &[u8; 8] = b"TNDMSNP1";
/// Bytes before the metadata.
const HEAD_LEN: u64 = 28;
/// The longest metadata accepted (it is a log id and the membership: a few hundred bytes).
const MAX_META_LEN: u32 = 1 << 20;
/// The buffer between the table and its file, both ways.
const IO_BUFFER: usize = 1 << 20;
/// Pending snapshot files are named `snapshot.bin.<random>.tmp`.
const PENDING_PREFIX: &str = "snapshot.bin.";
const PENDING_SUFFIX: &str = ".tmp";

fn invalid_data(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Encode a table as a snapshot's table bytes (the bytes [`SnapshotData`] holds in a file).
pub fn encode_table(table: &JobTable) -> io::Result<Vec<u8>> {
    rmp_serde::to_vec_named(table).map_err(io::Error::other)
}

/// Decode a snapshot's table bytes into a table.
pub fn decode_table(data: &[u8]) -> io::Result<JobTable> {
    wire::from_msgpack(data).map_err(invalid_data)
}

/// What a snapshot file's head says.
#[derive(Debug, Clone)]
struct Head {
    meta: SnapshotMeta,
    meta_len: u32,
    table_len: u64,
    table_crc: u32,
}

impl Head {
    fn table_offset(&self) -> u64 {
        HEAD_LEN + u64::from(self.meta_len)
    }

    fn file_len(&self) -> u64 {
        self.table_offset().saturating_add(self.table_len)
    }

    /// The head's bytes after the magic, given the metadata's encoding.
    fn encode(meta_bytes: &[u8], table_len: u64, table_crc: u32) -> Vec<u8> {
        let mut fields = Vec::with_capacity(HEAD_LEN as usize - 8 + meta_bytes.len());
        fields.extend((meta_bytes.len() as u32).to_le_bytes());
        fields.extend(table_len.to_le_bytes());
        fields.extend(table_crc.to_le_bytes());
        fields.extend(meta_bytes);
        let mut head = crc32fast::hash(&fields).to_le_bytes().to_vec();
        head.extend(fields);
        head
    }

    /// Read a head (after the magic) from `reader`, checking its checksum.
    fn read(reader: &mut impl Read) -> Result<Head, String> {
        let mut fixed = [0u8; HEAD_LEN as usize - 8];
        reader.read_exact(&mut fixed).map_err(|_| "the head is cut short".to_owned())?;
        let u32_at = |at: usize| u32::from_le_bytes(fixed[at..at + 4].try_into().expect("4 bytes"));
        let (crc, meta_len) = (u32_at(0), u32_at(4));
        let table_len = u64::from_le_bytes(fixed[8..16].try_into().expect("8 bytes"));
        let table_crc = u32_at(16);
        if meta_len > MAX_META_LEN {
            return Err(format!("the metadata claims {meta_len} bytes (at most {MAX_META_LEN})"));
        }
        let mut meta_bytes = vec![0; meta_len as usize];
        reader.read_exact(&mut meta_bytes).map_err(|_| "the metadata is cut short".to_owned())?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&fixed[4..]);
        hasher.update(&meta_bytes);
        if hasher.finalize() != crc {
            return Err("head checksum mismatch".into());
        }
        let meta = wire::from_msgpack(&meta_bytes).map_err(|e| format!("undecodable metadata: {e}"))?;
        Ok(Head { meta, meta_len, table_len, table_crc })
    }
}

/// A snapshot as openraft moves it: an open snapshot file (the path may have been replaced or
/// removed since; the open file stays readable).
#[derive(Debug)]
pub struct SnapshotData {
    file: File,
    head: Head,
    /// Set while the file is not `snapshot.bin`: it is removed when this is dropped, unless
    /// [`SnapshotData::persist`] put it in place.
    pending: Option<TempPath>,
    /// Where a file that is not pending was opened from.
    opened_at: Option<PathBuf>,
}

impl SnapshotData {
    /// The metadata the file was written with.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.head.meta
    }

    /// The length of the table's bytes.
    pub fn table_len(&self) -> u64 {
        self.head.table_len
    }

    /// The CRC-32 of the table's bytes.
    pub fn table_crc(&self) -> u32 {
        self.head.table_crc
    }

    /// Open the snapshot file at `path` (`None` if there is none), checking its head and its
    /// length but not yet its table (that is checked as it is decoded). Blocking.
    pub fn open(path: &Path) -> io::Result<Option<SnapshotData>> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let corrupt = |what: &str| invalid_data(format!("snapshot {} is corrupt: {what}", path.display()));
        let mut magic = [0u8; 8];
        file.read_exact(&mut magic).map_err(|_| corrupt("bad header"))?;
        if &magic != MAGIC {
            return Err(corrupt(if &magic == LEGACY_MAGIC { "in the first format" } else { "bad header" }));
        }
        let head = Head::read(&mut BufReader::new(&mut file)).map_err(|e| corrupt(&e))?;
        let len = file.metadata()?.len();
        if len != head.file_len() {
            return Err(corrupt(&format!("{len} bytes where its head describes {}", head.file_len())));
        }
        Ok(Some(SnapshotData { file, head, pending: None, opened_at: Some(path.to_owned()) }))
    }

    /// Decode the table, checking its checksum. Blocking: in proportion to the table.
    pub fn decode_table(&self) -> io::Result<JobTable> {
        let range = FileRange { file: &self.file, pos: self.head.table_offset(), end: self.head.file_len() };
        decode_checked(range, self.head.table_len, self.head.table_crc)
    }

    /// The table's bytes as a stream of chunks of up to `chunk` bytes, read from the file as
    /// the stream is polled.
    pub fn table_stream(&self, chunk: usize) -> io::Result<impl Stream<Item = io::Result<Bytes>> + Send + 'static> {
        // A clone shares the file's position: only this stream uses it (every other read of
        // the file is positional).
        let mut file = self.file.try_clone()?;
        file.seek(io::SeekFrom::Start(self.head.table_offset()))?;
        let table = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), self.head.table_len);
        Ok(tokio_util::io::ReaderStream::with_capacity(table, chunk))
    }

    /// Make this the snapshot at `path` (a pending file is renamed there; the file was fsynced
    /// when written) and fsync its directory. Blocking.
    pub fn persist(&mut self, path: &Path) -> io::Result<()> {
        if self.pending.is_none() && self.opened_at.as_deref() != Some(path) {
            // Another store's snapshot (openraft's storage suite installs one store's snapshot
            // into another): copied into a pending file beside `path` first.
            let mut writer = SnapshotWriter::create(path.parent().unwrap_or(Path::new(".")), self.meta())?;
            let table = FileRange { file: &self.file, pos: self.head.table_offset(), end: self.head.file_len() };
            io::copy(&mut BufReader::with_capacity(IO_BUFFER, table), &mut writer)?;
            *self = writer.finish()?;
        }
        if let Some(pending) = self.pending.take() {
            pending.persist(path).map_err(|e| e.error)?;
            self.opened_at = Some(path.to_owned());
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        Ok(())
    }

    /// Whether the file is still pending (not in place as a store's snapshot).
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }
}

/// Reads `pos..end` of a file with positional reads.
struct FileRange<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(self.end.saturating_sub(self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let read = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += read as u64;
        Ok(read)
    }
}

/// A reader that passes bytes on and keeps their CRC-32 and count.
struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
    read: u64,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.crc.update(&buf[..read]);
        self.read += read as u64;
        Ok(read)
    }
}

/// Decode a table of `len` bytes from `reader`, whose CRC-32 must be `crc`. A checksum mismatch
/// is reported as such even where it made the table undecodable.
fn decode_checked(reader: impl Read, len: u64, crc: u32) -> io::Result<JobTable> {
    // The decoder reads a few bytes at a time: the buffer goes in front of the checksum.
    let checked = CrcReader { inner: reader.take(len), crc: crc32fast::Hasher::new(), read: 0 };
    let mut buffered = BufReader::with_capacity(IO_BUFFER, checked);
    let decoded: Result<JobTable, _> = wire::from_msgpack_read(&mut buffered);
    let trailing = io::copy(&mut buffered, &mut io::sink())?;
    let reader = buffered.into_inner();
    if reader.read != len {
        return Err(invalid_data(format!("the table is cut short: {} of {len} bytes", reader.read)));
    }
    if reader.crc.finalize() != crc {
        return Err(invalid_data("table checksum mismatch"));
    }
    let table = decoded.map_err(|e| invalid_data(format!("undecodable table: {e}")))?;
    if trailing > 0 {
        return Err(invalid_data(format!("{trailing} bytes after the table")));
    }
    Ok(table)
}

/// Writes a snapshot file: the table's bytes go through [`Write`] (unbuffered: put a buffer in
/// front of small writes), then [`SnapshotWriter::finish`] writes the head over the
/// placeholder it started with and fsyncs the file.
pub struct SnapshotWriter {
    out: File,
    path: TempPath,
    meta: SnapshotMeta,
    meta_bytes: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
}

impl SnapshotWriter {
    /// Start a pending snapshot file of `meta` in `dir`. Blocking.
    pub fn create(dir: &Path, meta: &SnapshotMeta) -> io::Result<SnapshotWriter> {
        let (file, path) =
            tempfile::Builder::new().prefix(PENDING_PREFIX).suffix(PENDING_SUFFIX).tempfile_in(dir)?.into_parts();
        let meta_bytes = rmp_serde::to_vec_named(meta).map_err(io::Error::other)?;
        let mut out = file;
        out.write_all(&[MAGIC.as_slice(), &Head::encode(&meta_bytes, 0, 0)].concat())?;
        Ok(SnapshotWriter { out, path, meta: meta.clone(), meta_bytes, crc: crc32fast::Hasher::new(), len: 0 })
    }

    /// Write the head and fsync the file: it is then whole on disk, pending until persisted.
    pub fn finish(self) -> io::Result<SnapshotData> {
        let SnapshotWriter { out: file, path, meta, meta_bytes, crc, len } = self;
        let table_crc = crc.finalize();
        file.write_all_at(&Head::encode(&meta_bytes, len, table_crc), MAGIC.len() as u64)?;
        file.sync_all()?;
        let head = Head { meta, meta_len: meta_bytes.len() as u32, table_len: len, table_crc };
        Ok(SnapshotData { file, head, pending: Some(path), opened_at: None })
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.out.write(buf)?;
        self.crc.update(&buf[..written]);
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Write a pending snapshot file of `meta` holding `table`, encoded straight into the file.
/// Blocking: in proportion to the table.
pub fn write_table(dir: &Path, meta: &SnapshotMeta, table: &JobTable) -> io::Result<SnapshotData> {
    // The encoder writes a few bytes at a time: the buffer goes in front of the checksum.
    let mut buffered = BufWriter::with_capacity(IO_BUFFER, SnapshotWriter::create(dir, meta)?);
    rmp_serde::encode::write_named(&mut buffered, table).map_err(io::Error::other)?;
    buffered.into_inner().map_err(io::IntoInnerError::into_error)?.finish()
}

/// Write a pending snapshot file of `meta` holding the table bytes `data`. Blocking.
pub fn write_bytes(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> io::Result<SnapshotData> {
    let mut writer = SnapshotWriter::create(dir, meta)?;
    writer.write_all(data)?;
    writer.finish()
}

/// Why a snapshot could not be received.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The sender's body broke off, or did not match what the sender said it holds.
    #[error("{0}")]
    Body(String),
    /// The file could not be written.
    #[error("writing the snapshot failed: {0}")]
    Io(#[from] io::Error),
}

/// Receive a snapshot of `meta` whose table's bytes arrive as `chunks`, into a pending file in
/// `dir`, written on a blocking thread as the chunks come (a few are buffered between). If
/// `expected_crc` is given, the bytes must have that CRC-32.
pub async fn receive<E: std::fmt::Display>(
    dir: &Path,
    meta: &SnapshotMeta,
    mut chunks: impl Stream<Item = Result<Bytes, E>> + Unpin,
    expected_crc: Option<u32>,
) -> Result<SnapshotData, ReceiveError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let (dir, meta) = (dir.to_owned(), meta.clone());
    let writer = tokio::task::spawn_blocking(move || -> io::Result<SnapshotData> {
        let mut writer = SnapshotWriter::create(&dir, &meta)?;
        while let Some(chunk) = rx.blocking_recv() {
            writer.write_all(&chunk)?;
        }
        writer.finish()
    });
    let mut broke = None;
    while let Some(chunk) = chunks.next().await {
        match chunk {
            // The writer stopped: its error is reported below.
            Ok(chunk) => {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                broke = Some(format!("the snapshot's body broke off: {e}"));
                break;
            }
        }
    }
    drop(tx);
    // A snapshot whose body broke off is dropped once written: its pending file is removed.
    let data = writer.await.map_err(io::Error::other)??;
    if let Some(broke) = broke {
        return Err(ReceiveError::Body(broke));
    }
    if let Some(expected) = expected_crc.filter(|&crc| crc != data.table_crc()) {
        return Err(ReceiveError::Body(format!(
            "the snapshot's table has CRC-32 {:08x}, not the {expected:08x} its sender announced",
            data.table_crc()
        )));
    }
    Ok(data)
}

/// Remove pending snapshot files a crash left in `dir`.
pub fn remove_pending(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // `snapshot.bin.tmp` is where the first format's writer put its unfinished file.
        let pending = name.starts_with(PENDING_PREFIX) && name.ends_with(PENDING_SUFFIX);
        if pending && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The first format's file: one checksum over the MessagePack of this.
#[derive(Serialize, Deserialize)]
struct LegacyFile {
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// Decode a file in the first format: its metadata and table bytes.
fn decode_legacy(bytes: &[u8]) -> Result<LegacyFile, String> {
    if bytes.len() < 12 || &bytes[..8] != LEGACY_MAGIC {
        return Err("bad header".into());
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[12..]) != crc {
        return Err("checksum mismatch".into());
    }
    wire::from_msgpack(&bytes[12..]).map_err(|e| e.to_string())
}

/// If `dir`'s snapshot is in the first format, rewrite it in this one (read once, in memory, as
/// the first format always was). Blocking.
pub fn upgrade_legacy(dir: &Path) -> io::Result<()> {
    let path = dir.join(SNAPSHOT_FILE);
    let mut magic = [0u8; 8];
    match File::open(&path) {
        Ok(file) if (&file).read_exact(&mut magic).is_ok() && &magic == LEGACY_MAGIC => {}
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let bytes = std::fs::read(&path)?;
    let legacy =
        decode_legacy(&bytes).map_err(|e| invalid_data(format!("snapshot {} is corrupt: {e}", path.display())))?;
    drop(bytes);
    let mut data = write_bytes(dir, &legacy.meta, &legacy.data)?;
    data.persist(&path)?;
    tracing::info!(path = %path.display(), "rewrote a snapshot of the first format in the current one");
    Ok(())
}

/// Decode the bytes of a snapshot file, in either format, as a restart reads `snapshot.bin`:
/// its metadata and table. For the decoders' fuzz tests.
#[cfg(any(test, feature = "test-util"))]
pub fn decode_file_bytes(bytes: &[u8]) -> io::Result<(SnapshotMeta, JobTable)> {
    let corrupt = |what: &str| invalid_data(format!("snapshot is corrupt: {what}"));
    if bytes.starts_with(LEGACY_MAGIC) {
        let legacy = decode_legacy(bytes).map_err(|e| corrupt(&e))?;
        return Ok((legacy.meta, decode_table(&legacy.data)?));
    }
    if !bytes.starts_with(MAGIC) {
        return Err(corrupt("bad header"));
    }
    let mut rest = &bytes[MAGIC.len()..];
    let head = Head::read(&mut rest).map_err(|e| corrupt(&e))?;
    if bytes.len() as u64 != head.file_len() {
        return Err(corrupt("the length differs from the head's"));
    }
    let table = decode_checked(rest, head.table_len, head.table_crc)?;
    Ok((head.meta, table))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::job_table::{Command, NewJob};
    use crate::type_config::{LogId, StoredMembership};
    use wire::Digest;

    /// Snapshot metadata at log index `index` (for this module's and the store's tests).
    pub(in crate::state_machine) fn meta_at(index: u64) -> SnapshotMeta {
        let leader = openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 };
        SnapshotMeta { last_log_id: Some(LogId::new(leader, index)), last_membership: StoredMembership::default() }
    }

    /// A table of `jobs` queued jobs (for this module's and the store's tests).
    pub(in crate::state_machine) fn table_with_jobs(jobs: u64) -> JobTable {
        let mut table = JobTable::default();
        for i in 0..jobs {
            let job = NewJob {
                digest: Digest([i as u8; 64]),
                iterations: 1,
                enqueued_at_ms: i,
                idempotency_key: None,
                reuse: false,
            };
            table.apply(&Command::Enqueue { jobs: vec![job] });
        }
        table
    }

    /// The file holds what the module's table says, byte for byte, and reads back.
    #[test]
    fn the_file_is_laid_out_as_documented() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let (meta, table) = (meta_at(7), table_with_jobs(3));
        let mut data = write_table(dir.path(), &meta, &table).expect("write");
        let path = dir.path().join(SNAPSHOT_FILE);
        data.persist(&path).expect("persist");

        let meta_bytes = rmp_serde::to_vec_named(&meta).expect("encode");
        let table_bytes = encode_table(&table).expect("encode");
        let mut fields = (meta_bytes.len() as u32).to_le_bytes().to_vec();
        fields.extend((table_bytes.len() as u64).to_le_bytes());
        fields.extend(crc32fast::hash(&table_bytes).to_le_bytes());
        fields.extend(&meta_bytes);
        let mut expected = b"TNDMSNP2".to_vec();
        expected.extend(crc32fast::hash(&fields).to_le_bytes());
        expected.extend(fields);
        expected.extend(&table_bytes);
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes, expected);
        assert_eq!(decode_file_bytes(&bytes).expect("decode"), (meta.clone(), table.clone()));

        let opened = SnapshotData::open(&path).expect("open").expect("a snapshot");
        assert_eq!((opened.meta(), opened.table_len()), (&meta, table_bytes.len() as u64));
        assert!(!opened.is_pending());
        assert_eq!(opened.decode_table().expect("decode"), table);
    }

    /// Damage anywhere in the file is refused: in the head when it is opened, in the table
    /// when it is decoded (as a checksum mismatch, whatever the decoder made of it).
    #[test]
    fn a_flipped_byte_anywhere_is_refused() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let mut data = write_table(dir.path(), &meta_at(7), &table_with_jobs(5)).expect("write");
        let path = dir.path().join(SNAPSHOT_FILE);
        data.persist(&path).expect("persist");
        let good = std::fs::read(&path).expect("read");
        let table_at = good.len() - data.table_len() as usize;
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).expect("write");
            let error = match SnapshotData::open(&path) {
                Err(e) => e,
                Ok(opened) => {
                    assert!(at >= table_at, "byte {at} in the head was not noticed on open");
                    opened.expect("a snapshot").decode_table().expect_err("the table decodes")
                }
            };
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "byte {at}");
            let message = error.to_string();
            let expected = if at < table_at { "is corrupt" } else { "table checksum mismatch" };
            assert!(message.contains(expected), "byte {at}: {message}");
        }
    }

    /// A file cut short, or with bytes after its table, is refused when opened.
    #[test]
    fn a_file_of_the_wrong_length_is_refused() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let mut data = write_table(dir.path(), &meta_at(7), &table_with_jobs(5)).expect("write");
        let path = dir.path().join(SNAPSHOT_FILE);
        data.persist(&path).expect("persist");
        let good = std::fs::read(&path).expect("read");
        for bad in [good[..good.len() - 1].to_vec(), [good.as_slice(), &[0]].concat(), good[..20].to_vec()] {
            std::fs::write(&path, &bad).expect("write");
            let error = SnapshotData::open(&path).expect_err("opens");
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{} bytes", bad.len());
        }
    }

    /// The stream a leader sends is the table's bytes, in chunks of the size asked for.
    #[tokio::test]
    async fn the_stream_is_the_tables_bytes() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let table = table_with_jobs(40);
        let data = write_table(dir.path(), &meta_at(7), &table).expect("write");
        let chunks: Vec<Bytes> = data.table_stream(100).expect("stream").map(|c| c.expect("chunk")).collect().await;
        assert!(chunks.iter().all(|chunk| chunk.len() <= 100) && chunks.len() > 10, "{} chunks", chunks.len());
        assert_eq!(chunks.concat(), encode_table(&table).expect("encode"));
    }

    /// A received snapshot is the bytes received; a body that breaks off or does not have the
    /// announced checksum is refused and leaves no file behind.
    #[tokio::test]
    async fn a_received_snapshot_is_checked_and_a_broken_one_leaves_nothing() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let table = table_with_jobs(40);
        let bytes = Bytes::from(encode_table(&table).expect("encode"));
        let crc = crc32fast::hash(&bytes);
        let chunks = |broken: bool| {
            let mut chunks: Vec<Result<Bytes, String>> =
                bytes.chunks(64).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            if broken {
                chunks.insert(3, Err("connection reset".into()));
            }
            futures::stream::iter(chunks)
        };
        let received = receive(dir.path(), &meta_at(9), chunks(false), Some(crc)).await.expect("received");
        assert!(received.is_pending());
        assert_eq!((received.meta(), received.decode_table().expect("decode")), (&meta_at(9), table));
        drop(received);

        let broken = receive(dir.path(), &meta_at(9), chunks(true), Some(crc)).await.expect_err("received");
        assert!(matches!(&broken, ReceiveError::Body(e) if e.contains("broke off")), "{broken}");
        let mismatched = receive(dir.path(), &meta_at(9), chunks(false), Some(crc ^ 1)).await.expect_err("received");
        assert!(matches!(&mismatched, ReceiveError::Body(e) if e.contains("CRC-32")), "{mismatched}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
        assert!(left.is_empty(), "files left behind: {left:?}");
    }

    /// A snapshot in the first format is rewritten in this one, with the same metadata and table.
    #[test]
    fn a_snapshot_in_the_first_format_is_rewritten() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let (meta, table) = (meta_at(12), table_with_jobs(6));
        let payload =
            rmp_serde::to_vec_named(&LegacyFile { meta: meta.clone(), data: encode_table(&table).expect("encode") })
                .expect("encode");
        let mut legacy = LEGACY_MAGIC.to_vec();
        legacy.extend(crc32fast::hash(&payload).to_le_bytes());
        legacy.extend(&payload);
        let path = dir.path().join(SNAPSHOT_FILE);
        std::fs::write(&path, &legacy).expect("write");
        assert_eq!(decode_file_bytes(&legacy).expect("decode"), (meta.clone(), table.clone()));
        assert!(SnapshotData::open(&path).expect_err("opens").to_string().contains("first format"));

        upgrade_legacy(dir.path()).expect("upgrade");
        let opened = SnapshotData::open(&path).expect("open").expect("a snapshot");
        assert_eq!((opened.meta(), opened.decode_table().expect("decode")), (&meta, table));
        upgrade_legacy(dir.path()).expect("a second upgrade does nothing");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1, "only snapshot.bin");
    }
}
