//! The log handle: opening and recovery, appends, acknowledgements, cursor flushes,
//! retention, metrics and shutdown.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{Notify, oneshot};

use super::RecordRange;
use super::config::LogConfig;
use super::cursor::{AckTracker, CursorFile, read_cursor, write_cursor};
use super::error::{BufferError, IoContext};
use super::frame::{ScanItem, Scanner, frame_len};
use super::metrics::{DestinationMetrics, LogMetrics};
use super::reader::Reader;
use super::segment::{IndexEntry, LOCK_FILE, SegmentMeta, list_dir, segment_file_name, sync_dir};
use super::writer::{Request, Writer, now_ms};

/// Read size used when scanning segments at open.
const RECOVERY_CHUNK: usize = 1024 * 1024;

/// Counters updated with relaxed atomics on the hot path.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub records_appended: AtomicU64,
    pub bytes_appended: AtomicU64,
    pub appends: AtomicU64,
    pub group_commits: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_nanos_total: AtomicU64,
    pub fsync_nanos_last: AtomicU64,
    pub corrupt_records_recovered: AtomicU64,
    pub corrupt_records_read: AtomicU64,
    pub segments_deleted: AtomicU64,
}

/// One destination's cursor state.
#[derive(Debug)]
pub(crate) struct Destination {
    pub name: String,
    pub tracker: Mutex<AckTracker>,
    /// Mirror of `tracker.next()` for lock-free metrics.
    pub acked: AtomicU64,
    /// Value of the cursor file.
    pub durable: AtomicU64,
}

impl Destination {
    /// Records an acknowledged range and updates the mirror.
    pub(crate) fn ack_range(&self, r: Range<u64>) {
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        let next = t.ack_range(r);
        self.acked.store(next, Ordering::Release);
    }
}

/// State shared by the handle, the writer thread, the maintenance thread and readers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: LogConfig,
    pub dir: PathBuf,
    pub max_record: usize,
    pub segments: RwLock<BTreeMap<u64, Arc<SegmentMeta>>>,
    /// Every record below this sequence number is durable and visible to readers.
    pub durable_next_seq: AtomicU64,
    /// Bytes on disk plus bytes reserved by appends still queued.
    pub reserved_bytes: AtomicU64,
    pub bytes_on_disk: AtomicU64,
    /// No more appends are accepted.
    pub closing: AtomicBool,
    /// The writer thread has stopped.
    pub writer_stopped: AtomicBool,
    /// `close` finished and released the directory lock: nothing may write to it any more
    /// (another `Log` may own it now).
    pub released: AtomicBool,
    pub poisoned: OnceLock<String>,
    pub notify: Notify,
    pub dests: Vec<Destination>,
    pub stats: Stats,
    pub flush_lock: Mutex<()>,
    #[cfg(test)]
    pub crashed: AtomicBool,
    #[cfg(test)]
    pub stop_state: Mutex<Option<super::writer::StopState>>,
}

impl Shared {
    pub(crate) fn dest(&self, name: &str) -> Result<usize, BufferError> {
        self.dests
            .iter()
            .position(|d| d.name == name)
            .ok_or_else(|| BufferError::UnknownDestination(name.to_owned()))
    }

    /// The writer stopped and no more data will appear.
    pub(crate) fn is_finished(&self) -> bool {
        self.writer_stopped.load(Ordering::Acquire)
    }
}

/// What `Log::open` found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryReport {
    /// Segments kept after recovery (including a newly created active one).
    pub segments: usize,
    /// Valid records found.
    pub records: u64,
    /// Records lost to corruption (CRC mismatch, bad header) and skipped.
    pub corrupt_records: u64,
    /// Bytes of the corrupt regions that were skipped (left in place).
    pub corrupt_bytes: u64,
    /// Bytes cut from the end of the last segment (a torn or zero-filled tail; a corrupt last
    /// record cannot be told apart from a torn write and is cut too).
    pub truncated_bytes: u64,
    /// Sequence numbers missing between segments without a corrupt region to explain them
    /// (a missing segment file).
    pub missing_records: u64,
    /// Segments deleted at open because every destination had already acknowledged them.
    pub deleted_segments: usize,
    /// Files in the directory that are neither segments nor cursors (ignored).
    pub garbage_files: Vec<String>,
    /// Temporary files of interrupted cursor writes (removed).
    pub removed_temp_files: usize,
    /// Cursor files that failed their checks (the destination restarts from the oldest record).
    pub corrupt_cursors: Vec<String>,
    /// Destinations whose cursor pointed past the end of the data, with that cursor; new
    /// records are numbered from the highest such cursor so no destination skips them.
    pub cursors_ahead: Vec<(String, u64)>,
    /// Sequence number the next appended record will get.
    pub next_seq: u64,
    /// Time the recovery took.
    pub duration: Duration,
}

impl RecoveryReport {
    /// Whether anything abnormal was found.
    pub fn is_clean(&self) -> bool {
        self.corrupt_records == 0
            && self.corrupt_bytes == 0
            && self.truncated_bytes == 0
            && self.missing_records == 0
            && self.garbage_files.is_empty()
            && self.corrupt_cursors.is_empty()
            && self.cursors_ahead.is_empty()
    }
}

/// Owner of the threads and of the writer's channel; dropped with the last `Log` clone.
#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    tx: Sender<Request>,
    writer: Mutex<Option<JoinHandle<()>>>,
    maintenance: Mutex<Option<JoinHandle<()>>>,
    maintenance_stop: Mutex<Option<Sender<()>>>,
    lock_file: Mutex<Option<File>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        #[cfg(test)]
        if self.shared.crashed.load(Ordering::Acquire) {
            return;
        }
        if self.shared.released.load(Ordering::Acquire) {
            return;
        }
        // Best-effort clean shutdown when `close` was not called.
        let (reply, _rx) = oneshot::channel();
        let _ = self.tx.send(Request::Close { reply });
        if let Some(h) = lock(&self.writer).take() {
            let _ = h.join();
        }
        lock(&self.maintenance_stop).take();
        if let Some(h) = lock(&self.maintenance).take() {
            let _ = h.join();
        }
        if let Err(e) = flush_cursors(&self.shared) {
            tracing::warn!(error = %e, "Buffer cursor flush at drop failed.");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The durable, segmented, append-only log. Cheap to clone; `Send + Sync`.
///
/// See the [module documentation](crate::buffer) for the on-disk format and guarantees.
#[derive(Debug, Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

// === impl Log ===

impl Log {
    /// Opens (or creates) the log in `config.dir`, recovers it and starts the writer.
    ///
    /// Blocking: recovery reads every segment once (about a second per GiB on a fast disk).
    /// Never hangs and never panics on bad files: a torn tail is cut, corrupt records are
    /// skipped and counted, unknown files are ignored; see [`RecoveryReport`].
    pub fn open(config: LogConfig) -> Result<(Log, RecoveryReport), BufferError> {
        config.validate()?;
        let started = Instant::now();
        let dir = config.dir.clone();
        if !dir.exists() {
            fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .ctx(|| format!("opening {}", lock_path.display()))?;
        match fs4::FileExt::try_lock(&lock_file) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => return Err(BufferError::Locked(dir)),
            Err(fs4::TryLockError::Error(e)) => {
                return Err(BufferError::io(
                    format!("locking {}", lock_path.display()),
                    e,
                ));
            }
        }

        let mut report = RecoveryReport::default();
        let listing = list_dir(&dir)?;
        for t in &listing.temps {
            fs::remove_file(t).ctx(|| format!("removing {}", t.display()))?;
            report.removed_temp_files += 1;
        }
        report.garbage_files = listing.garbage.clone();
        for (name, _) in &listing.cursors {
            if !config.destinations.contains(name) {
                tracing::warn!(destination = %name, "Buffer cursor of an unconfigured destination ignored.");
            }
        }

        // Durable cursors of the configured destinations.
        let mut cursors: Vec<Option<u64>> = Vec::with_capacity(config.destinations.len());
        for d in &config.destinations {
            match read_cursor(&super::cursor::cursor_path(&dir, d))? {
                CursorFile::At(c) => cursors.push(Some(c)),
                CursorFile::Missing => cursors.push(None),
                CursorFile::Corrupt => {
                    report.corrupt_cursors.push(d.clone());
                    cursors.push(None);
                }
            }
        }

        // Segments every destination has passed are deleted without scanning.
        let mut seg_list = listing.segments;
        let min_cursor = if cursors.is_empty() {
            None
        } else {
            cursors
                .iter()
                .copied()
                .collect::<Option<Vec<u64>>>()
                .map(|v| v.into_iter().min().unwrap_or(0))
        };
        if let Some(min) = min_cursor {
            // A segment ends where the next one begins only if that next one is a real
            // segment: a stray file named like one (inside this segment's range) proves
            // nothing, and this segment would be deleted with records no one has.
            let mut keep_from = 0;
            while keep_from + 1 < seg_list.len()
                && seg_list[keep_from + 1].0 <= min
                && starts_at_its_base(&seg_list[keep_from + 1].1, seg_list[keep_from + 1].0)?
            {
                keep_from += 1;
            }
            for (_, path) in seg_list.drain(..keep_from) {
                fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
                report.deleted_segments += 1;
            }
            if report.deleted_segments > 0 {
                sync_dir(&dir)?;
            }
        }

        // Scan every remaining segment.
        let mut segments: BTreeMap<u64, Arc<SegmentMeta>> = BTreeMap::new();
        // (highest end seq so far, whether the segment that ends there has a corrupt tail): a
        // segment whose range lies inside an earlier one (a stray file named like a segment)
        // neither moves the end back nor makes the records after it look lost.
        let mut prev_end: Option<(u64, bool)> = None;
        let n_segs = seg_list.len();
        let mut bytes_on_disk = 0u64;
        for (i, (base, path)) in seg_list.into_iter().enumerate() {
            // Segments are created at the next sequence number, past every record: a file
            // named inside the range already seen is not one of ours unless it holds records.
            // It is never cut, never appended to, and left alone (reported as garbage).
            let stray = prev_end.is_some_and(|(end, _)| base < end);
            let is_last = i + 1 == n_segs && !stray;
            let scan = scan_segment(&path, base, is_last)?;
            if stray && scan.records == 0 {
                tracing::warn!(segment = %path.display(), "Buffer file named like a segment inside the range of an earlier one, without records: ignored.");
                report.garbage_files.push(
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
                continue;
            }
            if let Some((end, tail)) = prev_end {
                if base > end {
                    if tail {
                        report.corrupt_records += base - end;
                    } else {
                        report.missing_records += base - end;
                    }
                }
            }
            report.records += scan.records;
            report.corrupt_records += scan.corrupt_records;
            report.corrupt_bytes += scan.corrupt_bytes;
            if is_last {
                report.truncated_bytes += scan.tail_bytes;
            } else {
                report.corrupt_bytes += scan.tail_bytes;
            }
            if !is_last && scan.file_len == 0 {
                fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
                prev_end = Some(match prev_end {
                    Some(p) if p.0 > base => p,
                    _ => (base, false),
                });
                continue;
            }
            prev_end = Some(match prev_end {
                Some(p) if p.0 > scan.end_seq => p,
                _ => (scan.end_seq, scan.tail_bytes > 0 && !is_last),
            });
            bytes_on_disk += scan.file_len;
            let meta = SegmentMeta::new(base, path);
            meta.durable_len.store(scan.valid_len, Ordering::Relaxed);
            meta.end_seq.store(scan.end_seq, Ordering::Relaxed);
            meta.file_len.store(scan.file_len, Ordering::Relaxed);
            *lock(&meta.index) = scan.index;
            segments.insert(base, Arc::new(meta));
        }

        // Past every record found, not only the last segment's: an earlier segment may hold
        // higher sequence numbers (files copied or renamed by hand), and numbering new records
        // below them would give two records one number (found by fuzzing: the reader then
        // skipped the new one).
        let data_end = segments
            .values()
            .map(|s| s.end_seq.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        let max_cursor = cursors.iter().flatten().copied().max().unwrap_or(0);
        for (d, c) in config.destinations.iter().zip(&cursors) {
            if let Some(c) = *c {
                if c > data_end {
                    report.cursors_ahead.push((d.clone(), c));
                }
            }
        }
        let next_seq = data_end.max(max_cursor);

        // The active segment: the last one if appending to it is seamless, else a new one.
        // (A last segment that still ends in bad bytes, because a stray file sorted after it
        // when it was scanned, is not appended to.)
        let reuse = segments.values().next_back().filter(|s| {
            s.end_seq.load(Ordering::Relaxed) == next_seq
                && s.file_len.load(Ordering::Relaxed) < config.segment_max_bytes
                && s.file_len.load(Ordering::Relaxed) == s.durable_len.load(Ordering::Relaxed)
        });
        let (active, file) = match reuse {
            Some(s) => {
                let f = File::options()
                    .append(true)
                    .open(&s.path)
                    .ctx(|| format!("opening {}", s.path.display()))?;
                (s.clone(), f)
            }
            None => {
                let path = dir.join(segment_file_name(next_seq));
                let f = File::options()
                    // O_APPEND: after a failed write is rolled back with `set_len`, the next
                    // write still lands at the end of the file, not past a hole.
                    .append(true)
                    .create_new(true)
                    .open(&path)
                    .ctx(|| format!("creating segment {}", path.display()))?;
                sync_dir(&dir)?;
                let meta = Arc::new(SegmentMeta::new(next_seq, path));
                segments.insert(next_seq, meta.clone());
                (meta, f)
            }
        };
        let written_len = active.file_len.load(Ordering::Relaxed);
        report.segments = segments.len();
        report.next_seq = next_seq;

        // Refuse a cap far beyond the free space.
        let available =
            fs4::available_space(&dir).ctx(|| format!("statvfs of {}", dir.display()))?;
        let cap = config.max_total_bytes;
        let room = available.saturating_add(bytes_on_disk);
        if cap > room.saturating_mul(2) {
            return Err(BufferError::InsufficientDisk {
                dir,
                cap,
                available,
                used: bytes_on_disk,
            });
        } else if cap > room {
            tracing::warn!(
                cap,
                available,
                used = bytes_on_disk,
                "Buffer cap exceeds the free disk space; appends may fail with a full disk before the cap."
            );
        }

        // Destinations without a cursor start at the oldest record kept.
        let first_seq = segments.keys().next().copied().unwrap_or(next_seq);
        let mut dests = Vec::with_capacity(config.destinations.len());
        for (name, c) in config.destinations.iter().zip(&cursors) {
            let start = match c {
                Some(c) => *c,
                None => {
                    write_cursor(&dir, name, first_seq)?;
                    first_seq
                }
            };
            dests.push(Destination {
                name: name.clone(),
                tracker: Mutex::new(AckTracker::new(start)),
                acked: AtomicU64::new(start),
                durable: AtomicU64::new(start),
            });
        }

        let max_record = config.max_record_bytes();
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            max_record,
            segments: RwLock::new(segments),
            durable_next_seq: AtomicU64::new(next_seq),
            reserved_bytes: AtomicU64::new(bytes_on_disk),
            bytes_on_disk: AtomicU64::new(bytes_on_disk),
            closing: AtomicBool::new(false),
            writer_stopped: AtomicBool::new(false),
            released: AtomicBool::new(false),
            poisoned: OnceLock::new(),
            notify: Notify::new(),
            dests,
            stats: Stats::default(),
            flush_lock: Mutex::new(()),
            #[cfg(test)]
            crashed: AtomicBool::new(false),
            #[cfg(test)]
            stop_state: Mutex::new(None),
            config,
        });
        shared
            .stats
            .corrupt_records_recovered
            .store(report.corrupt_records, Ordering::Relaxed);

        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            shared: shared.clone(),
            rx,
            file,
            seg: active,
            written_len,
            synced_len: written_len,
            next_seq,
            written_next_seq: next_seq,
            buf: Vec::with_capacity(256 * 1024),
            last_sync: Instant::now(),
            // The first frame appended after open gets an entry (the scan indexed the rest).
            next_index_at: written_len,
        };
        let writer = std::thread::Builder::new()
            .name("buffer-writer".into())
            .spawn(move || writer.run())
            .ctx(|| "spawning the buffer writer thread".to_owned())?;
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let m_shared = shared.clone();
        let interval = Duration::from_millis(m_shared.config.cursor_flush_interval_ms);
        let maintenance = std::thread::Builder::new()
            .name("buffer-cursors".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(interval) {
                    if let Err(e) = flush_cursors(&m_shared) {
                        tracing::warn!(error = %e, "Buffer cursor flush failed.");
                    }
                }
            })
            .ctx(|| "spawning the buffer cursor thread".to_owned())?;

        report.duration = started.elapsed();
        log_report(&shared.dir, &report);
        let log = Log {
            inner: Arc::new(Inner {
                shared,
                tx,
                writer: Mutex::new(Some(writer)),
                maintenance: Mutex::new(Some(maintenance)),
                maintenance_stop: Mutex::new(Some(stop_tx)),
                lock_file: Mutex::new(Some(lock_file)),
            }),
        };
        Ok((log, report))
    }

    /// Appends `records` and resolves once they are durable (under [`SyncPolicy::Always`];
    /// once written under `Interval`). Returns their sequence numbers.
    ///
    /// Fails fast with [`BufferError::Full`] when the records would take the log past
    /// `max_total_bytes`; nothing is appended then. Dropping the future does not cancel the
    /// append.
    ///
    /// [`SyncPolicy::Always`]: super::SyncPolicy::Always
    pub async fn append(&self, records: Vec<Bytes>) -> Result<RecordRange, BufferError> {
        let sh = &self.inner.shared;
        if records.is_empty() {
            return Ok(RecordRange {
                first: sh.durable_next_seq.load(Ordering::Acquire),
                count: 0,
            });
        }
        if sh.closing.load(Ordering::Acquire) {
            return Err(BufferError::Closed);
        }
        if let Some(m) = sh.poisoned.get() {
            return Err(BufferError::Poisoned(m.clone()));
        }
        let mut bytes = 0u64;
        for r in &records {
            if r.len() > sh.max_record {
                return Err(BufferError::RecordTooLarge {
                    len: r.len(),
                    limit: sh.max_record,
                });
            }
            bytes += frame_len(r.len());
        }
        let cap = sh.config.max_total_bytes;
        let used = sh.reserved_bytes.fetch_add(bytes, Ordering::AcqRel);
        if used + bytes > cap {
            sh.reserved_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(BufferError::Full {
                used,
                requested: bytes,
                cap,
                disk_full: false,
            });
        }
        let (reply, rx) = oneshot::channel();
        if self
            .inner
            .tx
            .send(Request::Append {
                records,
                bytes,
                reply,
            })
            .is_err()
        {
            sh.reserved_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(BufferError::Closed);
        }
        rx.await.unwrap_or(Err(BufferError::Closed))
    }

    /// Makes everything appended so far durable (useful under `SyncPolicy::Interval`).
    pub async fn sync(&self) -> Result<(), BufferError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Request::Sync { reply })
            .map_err(|_| BufferError::Closed)?;
        rx.await.unwrap_or(Err(BufferError::Closed))
    }

    /// A reader for `dest`, positioned at its acknowledged prefix (in memory, which is at or
    /// past the durable cursor). Use one reader per destination at a time.
    pub fn reader(&self, dest: &str) -> Result<Reader, BufferError> {
        let shared = self.inner.shared.clone();
        let idx = shared.dest(dest)?;
        Ok(Reader::new(shared, idx))
    }

    /// Acknowledges records of `dest` (any order). The cursor advances over the contiguous
    /// acknowledged prefix; it is persisted by the next cursor flush.
    pub fn ack(&self, dest: &str, seqs: impl IntoIterator<Item = u64>) -> Result<(), BufferError> {
        let sh = &self.inner.shared;
        let d = &sh.dests[sh.dest(dest)?];
        let limit = sh.durable_next_seq.load(Ordering::Acquire);
        let mut t = lock(&d.tracker);
        for s in seqs {
            if s < limit {
                t.ack_range(s..s + 1);
            }
        }
        d.acked.store(t.next(), Ordering::Release);
        Ok(())
    }

    /// Acknowledges the records of `dest` in `range`.
    pub fn ack_range(&self, dest: &str, range: Range<u64>) -> Result<(), BufferError> {
        let sh = &self.inner.shared;
        let d = &sh.dests[sh.dest(dest)?];
        let limit = sh.durable_next_seq.load(Ordering::Acquire);
        d.ack_range(range.start..range.end.min(limit));
        Ok(())
    }

    /// Persists every cursor that moved (atomic file replace, fsync, directory fsync), then
    /// deletes the segments that every destination has passed.
    pub async fn flush_cursors(&self) -> Result<(), BufferError> {
        let sh = self.inner.shared.clone();
        tokio::task::spawn_blocking(move || flush_cursors(&sh))
            .await
            .map_err(|e| BufferError::Poisoned(format!("cursor flush task failed: {e}")))?
    }

    /// Blocking variant of [`Log::flush_cursors`] for non-async callers.
    pub fn flush_cursors_blocking(&self) -> Result<(), BufferError> {
        flush_cursors(&self.inner.shared)
    }

    /// A snapshot of the counters. Cheap: atomics plus a short read lock on the segment map.
    pub fn metrics(&self) -> LogMetrics {
        let sh = &self.inner.shared;
        let st = &sh.stats;
        let durable = sh.durable_next_seq.load(Ordering::Acquire);
        let now = now_ms();
        let segs = sh.segments.read().unwrap_or_else(|p| p.into_inner());
        let destinations = sh
            .dests
            .iter()
            .map(|d| {
                let acked = d.acked.load(Ordering::Acquire);
                let oldest = (acked < durable)
                    .then(|| oldest_append_ms(&segs, acked))
                    .flatten()
                    .map(|ms| Duration::from_millis(now.saturating_sub(ms)));
                DestinationMetrics {
                    name: d.name.clone(),
                    acked_seq: acked,
                    durable_cursor: d.durable.load(Ordering::Acquire),
                    backlog_records: durable.saturating_sub(acked),
                    oldest_unacked_age: oldest,
                }
            })
            .collect();
        LogMetrics {
            bytes_on_disk: sh.bytes_on_disk.load(Ordering::Acquire),
            max_total_bytes: sh.config.max_total_bytes,
            segments: segs.len(),
            next_seq: durable,
            records_appended: st.records_appended.load(Ordering::Relaxed),
            bytes_appended: st.bytes_appended.load(Ordering::Relaxed),
            appends: st.appends.load(Ordering::Relaxed),
            group_commits: st.group_commits.load(Ordering::Relaxed),
            fsyncs: st.fsyncs.load(Ordering::Relaxed),
            fsync_duration_total: Duration::from_nanos(
                st.fsync_nanos_total.load(Ordering::Relaxed),
            ),
            fsync_duration_last: Duration::from_nanos(st.fsync_nanos_last.load(Ordering::Relaxed)),
            corrupt_records_skipped: st.corrupt_records_recovered.load(Ordering::Relaxed),
            corrupt_records_read: st.corrupt_records_read.load(Ordering::Relaxed),
            segments_deleted: st.segments_deleted.load(Ordering::Relaxed),
            poisoned: sh.poisoned.get().is_some(),
            destinations,
        }
    }

    /// The configuration the log runs with.
    pub fn config(&self) -> &LogConfig {
        &self.inner.shared.config
    }

    /// Stops accepting appends, makes everything written durable, persists the cursors,
    /// stops the threads and releases the directory lock. Readers see `Closed` once they have
    /// read everything. Other clones of this handle get `Closed` from now on.
    pub async fn close(&self) -> Result<(), BufferError> {
        let sh = self.inner.shared.clone();
        if sh.released.load(Ordering::Acquire) {
            return Ok(());
        }
        sh.closing.store(true, Ordering::Release);
        let (reply, rx) = oneshot::channel();
        let synced = match self.inner.tx.send(Request::Close { reply }) {
            Ok(()) => rx.await.unwrap_or(Ok(())),
            Err(_) => Ok(()),
        };
        let writer = lock(&self.inner.writer).take();
        lock(&self.inner.maintenance_stop).take();
        let maintenance = lock(&self.inner.maintenance).take();
        let flushed = tokio::task::spawn_blocking(move || {
            if let Some(h) = writer {
                let _ = h.join();
            }
            if let Some(h) = maintenance {
                let _ = h.join();
            }
            flush_cursors(&sh)
        })
        .await
        .map_err(|e| BufferError::Poisoned(format!("close task failed: {e}")))?;
        {
            // No cursor flush may run once the lock is released.
            let _g = lock(&self.inner.shared.flush_lock);
            self.inner.shared.released.store(true, Ordering::Release);
        }
        lock(&self.inner.lock_file).take();
        self.inner.shared.notify.notify_waiters();
        synced?;
        flushed
    }
}

// === test hooks ===

#[cfg(test)]
impl Log {
    /// Simulates a power loss: the writer stops without syncing, cursors are not flushed, and
    /// of the bytes written but not synced only the first `keep_unsynced` survive (zero-filled
    /// if `zero_fill`, as some file systems leave them).
    pub(crate) fn crash(self, keep_unsynced: u64, zero_fill: bool) {
        use std::io::{Seek, SeekFrom, Write};
        let sh = self.inner.shared.clone();
        sh.crashed.store(true, Ordering::Release);
        let (reply, _rx) = oneshot::channel();
        let _ = self.inner.tx.send(Request::Sync { reply });
        if let Some(h) = lock(&self.inner.writer).take() {
            let _ = h.join();
        }
        lock(&self.inner.maintenance_stop).take();
        if let Some(h) = lock(&self.inner.maintenance).take() {
            let _ = h.join();
        }
        let st = lock(&sh.stop_state).clone();
        if let Some(st) = st {
            let keep = keep_unsynced.min(st.written_len - st.synced_len);
            let new_len = st.synced_len + keep;
            let f = File::options()
                .write(true)
                .open(&st.path)
                .expect("open segment");
            f.set_len(new_len).expect("truncate");
            if zero_fill && keep > 0 {
                let mut f = f;
                f.seek(SeekFrom::Start(st.synced_len)).expect("seek");
                f.write_all(&vec![0u8; keep as usize]).expect("zero fill");
            }
        }
        lock(&self.inner.lock_file).take();
        sh.writer_stopped.store(true, Ordering::Release);
        sh.notify.notify_waiters();
    }
}

/// Persists moved cursors, then applies retention. Serialised by `flush_lock`.
pub(crate) fn flush_cursors(sh: &Shared) -> Result<(), BufferError> {
    #[cfg(test)]
    if sh.crashed.load(Ordering::Acquire) {
        return Ok(());
    }
    let _g = lock(&sh.flush_lock);
    if sh.released.load(Ordering::Acquire) {
        return Err(BufferError::Closed);
    }
    let durable_next = sh.durable_next_seq.load(Ordering::Acquire);
    for d in &sh.dests {
        let v = d.acked.load(Ordering::Acquire).min(durable_next);
        if v > d.durable.load(Ordering::Acquire) {
            write_cursor(&sh.dir, &d.name, v)?;
            d.durable.store(v, Ordering::Release);
        }
    }
    apply_retention(sh)
}

/// Deletes the sealed segments whose records every destination's durable cursor has passed.
fn apply_retention(sh: &Shared) -> Result<(), BufferError> {
    let Some(min) = sh
        .dests
        .iter()
        .map(|d| d.durable.load(Ordering::Acquire))
        .min()
    else {
        return Ok(());
    };
    let victims: Vec<Arc<SegmentMeta>> = {
        let segs = sh.segments.read().unwrap_or_else(|p| p.into_inner());
        let bases: Vec<u64> = segs.keys().copied().collect();
        bases
            .windows(2)
            .take_while(|w| w[1] <= min)
            .filter_map(|w| segs.get(&w[0]).cloned())
            .collect()
    };
    if victims.is_empty() {
        return Ok(());
    }
    for v in &victims {
        sh.segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&v.base);
        match fs::remove_file(&v.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BufferError::io(format!("removing {}", v.path.display()), e)),
        }
        let len = v.file_len.load(Ordering::Acquire);
        sh.bytes_on_disk.fetch_sub(len, Ordering::AcqRel);
        sh.reserved_bytes.fetch_sub(len, Ordering::AcqRel);
        sh.stats.segments_deleted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(base = v.base, bytes = len, "Buffer segment deleted.");
    }
    sync_dir(&sh.dir)
}

/// Append time of the record at `seq` or just before it, from the sparse index (an upper
/// bound on the record's age).
pub(crate) fn oldest_append_ms(segs: &BTreeMap<u64, Arc<SegmentMeta>>, seq: u64) -> Option<u64> {
    let seg = segs
        .range(..=seq)
        .next_back()
        .or_else(|| segs.iter().next())
        .map(|(_, s)| s)?;
    seg.index_floor(seq)
        .or_else(|| lock(&seg.index).first().copied())
        .map(|e| e.append_ms)
}

/// Result of scanning one segment at open.
struct SegmentScan {
    records: u64,
    corrupt_records: u64,
    corrupt_bytes: u64,
    tail_bytes: u64,
    valid_len: u64,
    end_seq: u64,
    file_len: u64,
    index: Vec<IndexEntry>,
}

/// Scans a segment; cuts a bad tail off the last segment (and syncs it).
/// Whether the segment file begins with a valid record numbered `base` (what every segment
/// the writer made begins with, unless that record was damaged since).
fn starts_at_its_base(path: &Path, base: u64) -> Result<bool, BufferError> {
    let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let len = file
        .metadata()
        .ctx(|| format!("stat of {}", path.display()))?
        .len();
    let mut scanner = Scanner::new(std::io::BufReader::new(file), 0, len, base, RECOVERY_CHUNK);
    let first = scanner
        .next_item()
        .ctx(|| format!("reading {}", path.display()))?;
    Ok(matches!(first, Some(ScanItem::Record(r)) if r.seq == base && r.offset == 0))
}

fn scan_segment(path: &Path, base: u64, is_last: bool) -> Result<SegmentScan, BufferError> {
    let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let file_len = file
        .metadata()
        .ctx(|| format!("stat of {}", path.display()))?
        .len();
    let mut s = SegmentScan {
        records: 0,
        corrupt_records: 0,
        corrupt_bytes: 0,
        tail_bytes: 0,
        valid_len: 0,
        end_seq: base,
        file_len,
        index: Vec::new(),
    };
    let mut scanner = Scanner::new(
        std::io::BufReader::new(file),
        0,
        file_len,
        base,
        RECOVERY_CHUNK,
    );
    let mut last_indexed: Option<u64> = None;
    while let Some(item) = scanner
        .next_item()
        .ctx(|| format!("reading {}", path.display()))?
    {
        match item {
            ScanItem::Record(r) => {
                s.records += 1;
                s.valid_len = r.offset + r.frame_len;
                s.end_seq = r.seq + 1;
                if last_indexed.is_none_or(|o| r.offset >= o + super::segment::INDEX_EVERY_BYTES) {
                    s.index.push(IndexEntry {
                        seq: r.seq,
                        offset: r.offset,
                        append_ms: r.append_ms,
                    });
                    last_indexed = Some(r.offset);
                }
            }
            ScanItem::Corrupt {
                offset,
                bytes,
                records,
            } => {
                tracing::warn!(segment = %path.display(), offset, bytes, records, "Buffer corrupt records skipped.");
                s.corrupt_bytes += bytes;
                s.corrupt_records += records;
            }
            ScanItem::Tail { offset, bytes } => {
                tracing::warn!(segment = %path.display(), offset, bytes, last = is_last, "Buffer segment ends in bytes that are not valid records.");
                s.tail_bytes += bytes;
            }
        }
    }
    if is_last {
        // Cut the bad tail, and sync what is left: the previous process may have written
        // records it never synced, and readers must only see durable records.
        let f = File::options()
            .write(true)
            .open(path)
            .ctx(|| format!("opening {} to cut its tail", path.display()))?;
        if s.valid_len < file_len {
            f.set_len(s.valid_len)
                .ctx(|| format!("cutting the torn tail of {}", path.display()))?;
            s.file_len = s.valid_len;
        }
        f.sync_all().ctx(|| format!("syncing {}", path.display()))?;
    }
    Ok(s)
}

fn log_report(dir: &Path, r: &RecoveryReport) {
    let duration_ms = u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX);
    if r.is_clean() {
        tracing::info!(
            dir = %dir.display(),
            segments = r.segments,
            records = r.records,
            next_seq = r.next_seq,
            deleted_segments = r.deleted_segments,
            duration_ms,
            "Buffer opened."
        );
    } else {
        tracing::warn!(
            dir = %dir.display(),
            segments = r.segments,
            records = r.records,
            corrupt_records = r.corrupt_records,
            corrupt_bytes = r.corrupt_bytes,
            truncated_bytes = r.truncated_bytes,
            missing_records = r.missing_records,
            garbage_files = ?r.garbage_files,
            corrupt_cursors = ?r.corrupt_cursors,
            cursors_ahead = ?r.cursors_ahead,
            next_seq = r.next_seq,
            duration_ms,
            "Buffer opened after repairs."
        );
    }
}
