//! The single writer thread: group commit.
//!
//! Producers push requests into an unbounded channel (its size is bounded by the byte
//! reservation against `max_total_bytes`). The thread takes the first request, drains every
//! other request queued at that moment (up to `MAX_GROUP_BYTES`), encodes all their records
//! into one buffer, writes it with one `write_all` and makes it durable with one
//! `File::sync_data`, then answers every waiting producer. A segment that would grow past
//! `segment_max_bytes` is written, synced and sealed first; the next one is created and the
//! directory synced before any record goes into it.
//!
//! Failure semantics: a failed `fdatasync` poisons the log (after fsyncgate we cannot know what
//! reached the disk, so only a restart and recovery are safe). A failed write is rolled back
//! by truncating to the last good length; if the disk is full (`ENOSPC`) the producers get
//! `Full` and the log keeps going, any other write error poisons it.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::RecordRange;
use super::config::SyncPolicy;
use super::error::{BufferError, IoContext};
use super::frame::{encode_frame, frame_len};
use super::log::Shared;
use super::segment::{INDEX_EVERY_BYTES, IndexEntry, SegmentMeta, segment_file_name, sync_dir};

/// Stop draining the queue into one group past this many bytes.
const MAX_GROUP_BYTES: u64 = 16 * 1024 * 1024;

/// A request to the writer thread.
#[derive(Debug)]
pub(crate) enum Request {
    /// Append records; `bytes` is what was reserved for them (their framed size).
    Append {
        records: Vec<Bytes>,
        bytes: u64,
        reply: oneshot::Sender<Result<RecordRange, BufferError>>,
    },
    /// Make everything written so far durable.
    Sync {
        reply: oneshot::Sender<Result<(), BufferError>>,
    },
    /// Sync, answer everything queued before, refuse everything after, and stop.
    Close {
        reply: oneshot::Sender<Result<(), BufferError>>,
    },
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// State at the moment the writer stopped (used by the crash simulation in tests).
#[cfg(test)]
#[derive(Debug, Clone)]
pub(crate) struct StopState {
    pub path: std::path::PathBuf,
    pub synced_len: u64,
    pub written_len: u64,
}

/// The writer thread's state.
pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub rx: Receiver<Request>,
    pub file: File,
    pub seg: Arc<SegmentMeta>,
    pub written_len: u64,
    pub synced_len: u64,
    pub next_seq: u64,
    /// Sequence number after the last record written to the file.
    pub written_next_seq: u64,
    pub buf: Vec<u8>,
    pub last_sync: Instant,
    /// Offset from which the next frame gets an index entry.
    pub next_index_at: u64,
}

/// An append of the current group, waiting for its answer.
struct Waiter {
    first: u64,
    records: Vec<Bytes>,
    bytes: u64,
    reply: oneshot::Sender<Result<RecordRange, BufferError>>,
}

enum Flow {
    Continue,
    Stop,
}

impl Writer {
    /// Runs until the channel closes, a `Close` arrives, or (tests) a crash is simulated.
    pub(crate) fn run(mut self) {
        loop {
            let first = match self.wait_timeout() {
                None => match self.rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
                Some(t) => match self.rx.recv_timeout(t) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = self.sync() {
                            self.poison(&e);
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            let mut group = vec![first];
            let mut bytes = req_bytes(&group[0]);
            while bytes < MAX_GROUP_BYTES {
                match self.rx.try_recv() {
                    Ok(r) => {
                        bytes += req_bytes(&r);
                        group.push(r);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if let Flow::Stop = self.process(group) {
                self.finish(true);
                return;
            }
        }
        // All senders dropped: make what was written durable.
        let crashed = self.crashed();
        if !crashed {
            if let Err(e) = self.sync() {
                self.poison(&e);
            }
        }
        self.finish(!crashed);
    }

    fn crashed(&self) -> bool {
        #[cfg(test)]
        {
            self.shared.crashed.load(Ordering::Acquire)
        }
        #[cfg(not(test))]
        {
            false
        }
    }

    /// Marks the log closed for readers and records the stop state.
    fn finish(&mut self, _clean: bool) {
        #[cfg(test)]
        {
            let mut st = self
                .shared
                .stop_state
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *st = Some(StopState {
                path: self.seg.path.clone(),
                synced_len: self.synced_len,
                written_len: self.written_len,
            });
        }
        self.shared.writer_stopped.store(true, Ordering::Release);
        self.shared.notify.notify_waiters();
    }

    /// How long to wait for a request before an interval sync is due.
    fn wait_timeout(&self) -> Option<Duration> {
        match self.shared.config.sync {
            SyncPolicy::Always => None,
            SyncPolicy::Interval(d) => {
                if self.written_len == self.synced_len {
                    None
                } else {
                    Some(d.saturating_sub(self.last_sync.elapsed()))
                }
            }
        }
    }

    fn poison(&self, e: &BufferError) {
        let msg = e.to_string();
        tracing::error!(error = %msg, "Buffer writer failed; refusing further appends until restart.");
        let _ = self.shared.poisoned.set(msg);
    }

    fn poisoned_error(&self) -> Option<BufferError> {
        self.shared
            .poisoned
            .get()
            .map(|m| BufferError::Poisoned(m.clone()))
    }

    fn release(&self, bytes: u64) {
        self.shared
            .reserved_bytes
            .fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Handles one group of requests.
    fn process(&mut self, group: Vec<Request>) -> Flow {
        if self.crashed() {
            for r in group {
                self.refuse(r, || BufferError::Closed);
            }
            return Flow::Stop;
        }
        let mut waiters: Vec<Waiter> = Vec::new();
        let mut syncs = Vec::new();
        let mut close = None;
        let append_ms = now_ms();
        let mut failed: Option<Fail> = self.poisoned_error().map(Fail::Fatal);
        for req in group {
            if close.is_some() {
                self.refuse(req, || BufferError::Closed);
                continue;
            }
            match req {
                Request::Append {
                    records,
                    bytes,
                    reply,
                } => {
                    if let Some(f) = &failed {
                        self.release(bytes);
                        let _ = reply.send(Err(f.to_error(&self.shared)));
                        continue;
                    }
                    let first = self.next_seq;
                    for rec in &records {
                        if let Err(f) = self.maybe_roll(frame_len(rec.len())) {
                            failed = Some(f);
                            break;
                        }
                        let offset = self.written_len + self.buf.len() as u64;
                        if offset >= self.next_index_at {
                            self.seg.maybe_index(IndexEntry {
                                seq: self.next_seq,
                                offset,
                                append_ms,
                            });
                            self.next_index_at = offset + INDEX_EVERY_BYTES;
                        }
                        encode_frame(&mut self.buf, self.next_seq, append_ms, rec);
                        self.next_seq += 1;
                    }
                    waiters.push(Waiter {
                        first,
                        records,
                        bytes,
                        reply,
                    });
                }
                Request::Sync { reply } => syncs.push(reply),
                Request::Close { reply } => close = Some(reply),
            }
        }

        let result = match failed {
            Some(f) => Err(f),
            None => self.commit(!syncs.is_empty() || close.is_some()),
        };
        let result = match result {
            Ok(()) => {
                let n: u64 = waiters.iter().map(|w| w.records.len() as u64).sum();
                let s = &self.shared.stats;
                s.records_appended.fetch_add(n, Ordering::Relaxed);
                s.appends.fetch_add(waiters.len() as u64, Ordering::Relaxed);
                s.group_commits.fetch_add(1, Ordering::Relaxed);
                for w in waiters {
                    let _ = w.reply.send(Ok(RecordRange {
                        first: w.first,
                        count: w.records.len() as u64,
                    }));
                }
                Ok(())
            }
            Err(f) => Err(self.fail_group(f, waiters)),
        };
        for s in syncs {
            let _ = s.send(result.as_ref().map(|_| ()).map_err(clone_err));
        }
        if let Some(c) = close {
            let _ = c.send(result.as_ref().map(|_| ()).map_err(clone_err));
            // Refuse whatever is still queued, then stop.
            while let Ok(r) = self.rx.try_recv() {
                self.refuse(r, || BufferError::Closed);
            }
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// Answers the waiters of a group that failed.
    ///
    /// A full disk (`ENOSPC`/`EDQUOT` from a write or a segment creation) is not fatal: the
    /// unwritten part of the group is dropped (the file is cut back to its last complete frame
    /// and the sequence numbers are reused), appends whose records were all written (and
    /// synced, by the rollover that preceded the failure) succeed, the others get `Full`.
    /// Anything else, including a failed `fdatasync`, poisons the log.
    fn fail_group(&mut self, f: Fail, waiters: Vec<Waiter>) -> BufferError {
        self.buf.clear();
        let err = match f {
            Fail::DiskFull(e) => match self.file.set_len(self.written_len) {
                Ok(()) => {
                    self.next_seq = self.written_next_seq;
                    tracing::warn!(error = %e, "Buffer disk full; appends refused until space is freed.");
                    None
                }
                Err(e2) => Some(BufferError::io(
                    format!("rolling back a failed write to {}", self.seg.path.display()),
                    e2,
                )),
            },
            Fail::Fatal(e) => Some(e),
        };
        let err = match err {
            Some(e) => {
                self.poison(&e);
                e
            }
            None => BufferError::Full {
                used: self.shared.reserved_bytes.load(Ordering::Acquire),
                requested: 0,
                cap: self.shared.config.max_total_bytes,
                disk_full: true,
            },
        };
        let written = self.written_next_seq;
        for w in waiters {
            let end = w.first + w.records.len() as u64;
            let unwritten: u64 = w
                .records
                .iter()
                .zip(w.first..end)
                .filter(|(_, seq)| *seq >= written)
                .map(|(r, _)| frame_len(r.len()))
                .sum();
            self.release(unwritten.min(w.bytes));
            let answer = if end <= written && matches!(err, BufferError::Full { .. }) {
                Ok(RecordRange {
                    first: w.first,
                    count: w.records.len() as u64,
                })
            } else {
                Err(clone_err(&err))
            };
            let _ = w.reply.send(answer);
        }
        err
    }

    /// Answers a request with an error without doing it.
    fn refuse(&self, req: Request, e: impl Fn() -> BufferError) {
        match req {
            Request::Append { bytes, reply, .. } => {
                self.release(bytes);
                let _ = reply.send(Err(e()));
            }
            Request::Sync { reply } | Request::Close { reply } => {
                let _ = reply.send(Err(e()));
            }
        }
    }

    /// Writes the encoded group and syncs it (always, or when asked under `Interval`).
    fn commit(&mut self, force_sync: bool) -> Result<(), Fail> {
        self.write_buf()?;
        let sync_now = force_sync
            || match self.shared.config.sync {
                SyncPolicy::Always => true,
                SyncPolicy::Interval(d) => self.last_sync.elapsed() >= d,
            };
        if sync_now {
            self.sync().map_err(Fail::Fatal)?;
        }
        Ok(())
    }

    /// Writes the pending buffer at the end of the active segment.
    fn write_buf(&mut self) -> Result<(), Fail> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            return Err(Fail::from_io(
                e,
                format!("writing {}", self.seg.path.display()),
            ));
        }
        let n = self.buf.len() as u64;
        self.written_len += n;
        self.written_next_seq = self.next_seq;
        self.seg.file_len.store(self.written_len, Ordering::Release);
        self.shared.bytes_on_disk.fetch_add(n, Ordering::AcqRel);
        self.shared
            .stats
            .bytes_appended
            .fetch_add(n, Ordering::Relaxed);
        self.buf.clear();
        Ok(())
    }

    /// `fdatasync` of the active segment, then publishes the new durable end to readers.
    pub(crate) fn sync(&mut self) -> Result<(), BufferError> {
        if self.written_len != self.synced_len {
            let t = Instant::now();
            self.file
                .sync_data()
                .ctx(|| format!("fdatasync of {}", self.seg.path.display()))?;
            let took = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let s = &self.shared.stats;
            s.fsyncs.fetch_add(1, Ordering::Relaxed);
            s.fsync_nanos_total.fetch_add(took, Ordering::Relaxed);
            s.fsync_nanos_last.store(took, Ordering::Relaxed);
            self.synced_len = self.written_len;
        }
        self.last_sync = Instant::now();
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        self.seg
            .durable_len
            .store(self.synced_len, Ordering::Release);
        self.seg.end_seq.store(self.next_seq, Ordering::Release);
        self.shared
            .durable_next_seq
            .store(self.next_seq, Ordering::Release);
        self.shared.notify.notify_waiters();
    }

    /// Seals the active segment and starts a new one if a frame of `len` bytes does not fit.
    fn maybe_roll(&mut self, len: u64) -> Result<(), Fail> {
        let used = self.written_len + self.buf.len() as u64;
        if used == 0 || used + len <= self.shared.config.segment_max_bytes {
            return Ok(());
        }
        self.write_buf()?;
        self.sync().map_err(Fail::Fatal)?;
        let base = self.next_seq;
        let path = self.shared.dir.join(segment_file_name(base));
        let file = File::options()
            // O_APPEND: after a failed write is rolled back with `set_len`, the next write
            // still lands at the end of the file, not past a hole.
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Fail::from_io(e, format!("creating segment {}", path.display())))?;
        sync_dir(&self.shared.dir).map_err(Fail::Fatal)?;
        let seg = Arc::new(SegmentMeta::new(base, path));
        self.shared
            .segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(base, seg.clone());
        self.file = file;
        self.seg = seg;
        self.written_len = 0;
        self.synced_len = 0;
        self.next_index_at = 0;
        tracing::debug!(base, "Buffer segment created.");
        Ok(())
    }
}

/// Why a group failed.
#[derive(Debug)]
enum Fail {
    /// A write or a file creation found the disk full: recoverable.
    DiskFull(io::Error),
    /// Anything else: the log is poisoned.
    Fatal(BufferError),
}

impl Fail {
    fn from_io(e: io::Error, context: String) -> Self {
        if is_storage_full(&e) {
            Fail::DiskFull(e)
        } else {
            Fail::Fatal(BufferError::io(context, e))
        }
    }

    fn to_error(&self, shared: &Shared) -> BufferError {
        match self {
            Fail::DiskFull(_) => BufferError::Full {
                used: shared.reserved_bytes.load(Ordering::Acquire),
                requested: 0,
                cap: shared.config.max_total_bytes,
                disk_full: true,
            },
            Fail::Fatal(e) => clone_err(e),
        }
    }
}

fn req_bytes(r: &Request) -> u64 {
    match r {
        Request::Append { bytes, .. } => *bytes,
        _ => 0,
    }
}

fn is_storage_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded
}

/// Errors are not `Clone` (they may hold an `io::Error`); every waiter of a failed group gets
/// an equivalent copy.
pub(crate) fn clone_err(e: &BufferError) -> BufferError {
    match e {
        BufferError::Full {
            used,
            requested,
            cap,
            disk_full,
        } => BufferError::Full {
            used: *used,
            requested: *requested,
            cap: *cap,
            disk_full: *disk_full,
        },
        BufferError::Closed => BufferError::Closed,
        BufferError::Poisoned(m) => BufferError::Poisoned(m.clone()),
        other => BufferError::Poisoned(other.to_string()),
    }
}
