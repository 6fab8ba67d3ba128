//! The log's one writer thread: it takes appends in order, writes each batch with one fsync
//! (group commit), keeps zeros preallocated ahead of the end, and swaps in a compacted image.

use super::*;

/// Who waits for a write, and how to tell them.
pub(super) enum Waiter {
    /// Nobody: the write becomes durable with the next fsync.
    Nobody,
    /// openraft's append callback.
    Flushed(IOFlushed<TypeConfig>),
    /// An async caller (`save_vote`, `truncate_after`).
    Notify(tokio::sync::oneshot::Sender<io::Result<()>>),
}

impl Waiter {
    pub(super) fn complete(self, result: Result<(), &str>) {
        let result = result.map_err(|message| io::Error::other(message.to_owned()));
        match self {
            Waiter::Nobody => {}
            Waiter::Flushed(callback) => callback.io_completed(result),
            Waiter::Notify(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// What the writer thread is asked to do.
pub(super) enum WriteOp {
    Append {
        frame: Vec<u8>,
        entries: u64,
        waiter: Waiter,
    },
    /// Replace the file with this image, encoded here.
    Compact {
        image: Image,
    },
}

/// The writer thread's state: the open file and where the valid records end.
pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Where the next record goes: the end of the valid records.
    pub(super) end: u64,
    /// The file's length; the bytes from `end` to here are zeros.
    pub(super) allocated: u64,
    /// How far ahead of `end` to keep zeros (0: none).
    pub(super) preallocate: u64,
    pub(super) stats: Arc<WalStats>,
    /// Set by the first I/O failure: every later write fails too, and openraft stops the node.
    pub(super) failed: Option<String>,
}

impl Writer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<WriteOp>) {
        // Room for the batch header, then record frames.
        let mut buf = vec![0u8; wal::BATCH_HEADER_LEN];
        let mut waiters = Vec::new();
        let mut entries = 0;
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(op) = next.take() {
                taken += 1;
                match op {
                    WriteOp::Append { frame, entries: n, waiter } => {
                        buf.extend_from_slice(&frame);
                        entries += n;
                        waiters.push(waiter);
                    }
                    WriteOp::Compact { image } => {
                        self.flush(&mut buf, &mut waiters, &mut entries, true);
                        self.compact(&image);
                    }
                }
                if taken < MAX_BATCH_OPS {
                    next = rx.try_recv().ok();
                }
            }
            self.flush(&mut buf, &mut waiters, &mut entries, false);
            // Here, not in `flush`: the flush before a compaction needs no space in a file
            // about to be replaced.
            self.preallocate_if_low();
        }
        self.flush(&mut buf, &mut waiters, &mut entries, true);
    }

    /// Write the batch and fsync it, then release the waiters. Records nobody waits for (the
    /// committed mark, purges) wait in `buf` for the next batch that somebody does, unless
    /// `force`: every batch written is fsynced before the next is written, so that after a
    /// crash only the last batch can be incomplete (see [`wal`]).
    fn flush(&mut self, buf: &mut Vec<u8>, waiters: &mut Vec<Waiter>, entries: &mut u64, force: bool) {
        if buf.len() <= wal::BATCH_HEADER_LEN {
            return;
        }
        let needs_sync = waiters.iter().any(|waiter| !matches!(waiter, Waiter::Nobody));
        if !needs_sync && !force && buf.len() < DEFERRED_BYTES {
            return;
        }
        if self.failed.is_none() && self.stats.fail_writes.load(Ordering::Relaxed) {
            tracing::error!(path = %self.path.display(), "WAL write failed (injected); this voter stops");
            self.failed = Some(format!("WAL write to {} failed: injected I/O error", self.path.display()));
        }
        if self.failed.is_none() {
            let result = wal::seal_batch(buf).and_then(|()| self.file.write_all_at(buf, self.end)).and_then(|()| {
                self.end += buf.len() as u64;
                self.allocated = self.allocated.max(self.end);
                self.stats.bytes_written.fetch_add(buf.len() as u64, Ordering::Relaxed);
                let started = Instant::now();
                self.file.sync_data()?;
                metrics::counter!("tandem_wal_fsyncs_total").increment(1);
                metrics::histogram!("tandem_wal_fsync_seconds").record(started.elapsed().as_secs_f64());
                metrics::histogram!("tandem_wal_batch_entries").record(*entries as f64);
                self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.stats.fsync_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                self.stats.synced_entries.fetch_add(*entries, Ordering::Relaxed);
                self.stats.synced_waiters.fetch_add(waiters.len() as u64, Ordering::Relaxed);
                Ok(())
            });
            if let Err(e) = result {
                tracing::error!(path = %self.path.display(), error = %e, "WAL write failed; this voter stops");
                self.failed = Some(format!("WAL write to {} failed: {e}", self.path.display()));
            }
        }
        let outcome = self.failed.as_deref().map_or(Ok(()), Err);
        for waiter in waiters.drain(..) {
            waiter.complete(outcome);
        }
        buf.truncate(wal::BATCH_HEADER_LEN);
        *entries = 0;
    }

    /// Extend the zeros ahead of `end` by a chunk once less than half a chunk is left, and make
    /// them durable, so that the fsyncs of the next records do not change the file's size.
    fn preallocate_if_low(&mut self) {
        if self.failed.is_some() || self.allocated - self.end >= self.preallocate / 2 {
            return;
        }
        let target = self.end + self.preallocate;
        let zeros = vec![0u8; (target - self.allocated) as usize];
        match self.file.write_all_at(&zeros, self.allocated).and_then(|()| self.file.sync_data()) {
            Ok(()) => self.allocated = target,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "WAL preallocation failed; this voter stops");
                self.failed = Some(format!("WAL preallocation in {} failed: {e}", self.path.display()));
            }
        }
    }

    fn compact(&mut self, image: &Image) {
        if self.failed.is_some() {
            return;
        }
        let result = image.encode().and_then(|image| {
            replace_file(&self.dir, &self.path, "compact", &image)?;
            Ok((OpenOptions::new().read(true).write(true).open(&self.path)?, image))
        });
        match result {
            Ok((file, image)) => {
                self.file = file;
                self.end = image.len() as u64;
                self.allocated = self.end;
                self.stats.last_image_bytes.store(self.end, Ordering::Relaxed);
                self.stats.compactions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(path = %self.path.display(), bytes = image.len(), "compacted the log");
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "WAL compaction failed; this voter stops");
                self.failed = Some(format!("WAL compaction of {} failed: {e}", self.path.display()));
            }
        }
    }
}
