//! Per-destination readers: forward reads from the cursor in bounded batches.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::error::{BufferError, IoContext};
use super::frame::{ScanItem, Scanner};
use super::log::Shared;
use super::segment::SegmentMeta;

/// Read size of a reader; a batch reads at most about `max_bytes` plus this.
const READ_CHUNK: usize = 256 * 1024;

/// `Read` over a file with positioned reads (no shared seek offset).
struct PositionedRead<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for PositionedRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Where the reader is inside a segment.
#[derive(Debug)]
struct Position {
    seg: Arc<SegmentMeta>,
    file: File,
    /// Offset of the next frame to parse.
    offset: u64,
    /// Sequence number expected at `offset`.
    expected: u64,
}

/// Reads one destination's records forward from its cursor, in batches, without holding the
/// backlog in memory. Obtained from [`Log::reader`](super::Log::reader).
///
/// Reads are done inline (positioned reads of at most about `max_bytes`, usually served by the
/// page cache), so [`Reader::read_batch`] is cancel-safe: a batch is either returned whole or not
/// read at all.
#[derive(Debug)]
pub struct Reader {
    shared: Arc<Shared>,
    dest: usize,
    /// Next sequence number to deliver.
    next_seq: u64,
    pos: Option<Position>,
}

impl Reader {
    pub(crate) fn new(shared: Arc<Shared>, dest: usize) -> Self {
        let next_seq = shared.dests[dest].acked.load(Ordering::Acquire);
        Reader {
            shared,
            dest,
            next_seq,
            pos: None,
        }
    }

    /// Name of the destination.
    pub fn destination(&self) -> &str {
        &self.shared.dests[self.dest].name
    }

    /// Sequence number of the next record this reader will return (or a later one if that
    /// record does not exist).
    pub fn position(&self) -> u64 {
        self.next_seq
    }

    /// Acknowledges records of this reader's destination (any order).
    pub fn ack(&self, seqs: impl IntoIterator<Item = u64>) {
        let d = &self.shared.dests[self.dest];
        for s in seqs {
            if s < self.next_seq {
                d.ack_range(s..s + 1);
            }
        }
    }

    /// Waits until at least one durable record is available, then returns up to
    /// `max_records` records (at least one, and stopping once `max_bytes` of payload are
    /// reached) as `(sequence number, payload)` in append order.
    ///
    /// Returns `Err(Closed)` once the log is closed and everything durable has been read.
    pub async fn read_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Bytes)>, BufferError> {
        let shared = self.shared.clone();
        loop {
            let notified = shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let batch = self.try_read_batch(max_records, max_bytes)?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            if shared.is_finished() {
                return Err(BufferError::Closed);
            }
            notified.await;
        }
    }

    /// Like [`Reader::read_batch`] but returns at once, possibly with an empty batch.
    pub fn try_read_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Bytes)>, BufferError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let max_records = max_records.max(1);
        let limit_seq = self.shared.durable_next_seq.load(Ordering::Acquire);
        while out.len() < max_records && bytes < max_bytes.max(1) && self.next_seq < limit_seq {
            if self.pos.is_none() && !self.locate()? {
                break;
            }
            let Some(pos) = self.pos.as_mut() else { break };
            let durable_len = pos.seg.durable_len();
            if pos.offset >= durable_len {
                // End of this segment's durable data: move on if it is sealed.
                let next = {
                    let segs = self
                        .shared
                        .segments
                        .read()
                        .unwrap_or_else(|p| p.into_inner());
                    segs.range(pos.seg.base + 1..)
                        .next()
                        .map(|(_, s)| s.clone())
                };
                match next {
                    Some(n) if pos.seg.durable_len() == durable_len => {
                        if !self.open_at(n, None)? {
                            break;
                        }
                        continue;
                    }
                    Some(_) => continue,
                    None => break,
                }
            }
            let src = PositionedRead {
                file: &pos.file,
                pos: pos.offset,
            };
            let mut scanner = Scanner::new(
                src,
                pos.offset,
                durable_len - pos.offset,
                pos.expected,
                READ_CHUNK.min(max_bytes.saturating_add(64 * 1024)),
            );
            let d = &self.shared.dests[self.dest];
            loop {
                if out.len() >= max_records || bytes >= max_bytes.max(1) {
                    break;
                }
                let item = scanner
                    .next_item()
                    .ctx(|| format!("reading {}", pos.seg.path.display()))?;
                match item {
                    Some(ScanItem::Record(r)) => {
                        pos.offset = r.offset + r.frame_len;
                        pos.expected = r.seq + 1;
                        if r.seq < self.next_seq {
                            continue;
                        }
                        if r.seq > self.next_seq {
                            // Sequence numbers that do not exist (corruption, missing
                            // segment, renumbering): nothing to deliver, count them acked.
                            d.ack_range(self.next_seq..r.seq);
                        }
                        let payload = Bytes::copy_from_slice(scanner.payload(&r));
                        bytes += payload.len();
                        out.push((r.seq, payload));
                        self.next_seq = r.seq + 1;
                    }
                    Some(ScanItem::Corrupt { records, .. }) => {
                        self.shared
                            .stats
                            .corrupt_records_read
                            .fetch_add(records, Ordering::Relaxed);
                    }
                    Some(ScanItem::Tail { .. }) | None => {
                        pos.offset = durable_len;
                        pos.expected = scanner.expected_seq();
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Positions the reader at the segment holding `next_seq`; false if there is none.
    fn locate(&mut self) -> Result<bool, BufferError> {
        let seg = {
            let segs = self
                .shared
                .segments
                .read()
                .unwrap_or_else(|p| p.into_inner());
            segs.range(..=self.next_seq)
                .next_back()
                .or_else(|| segs.iter().next())
                .map(|(_, s)| s.clone())
        };
        match seg {
            Some(seg) => {
                let at = seg.index_floor(self.next_seq);
                self.open_at(seg, at.map(|e| (e.offset, e.seq)))
            }
            None => Ok(false),
        }
    }

    /// Opens `seg` at `(offset, seq)` (its start if `None`). A segment whose file vanished
    /// (deleted by retention) is skipped; false if there is nothing to read.
    fn open_at(
        &mut self,
        mut seg: Arc<SegmentMeta>,
        mut at: Option<(u64, u64)>,
    ) -> Result<bool, BufferError> {
        loop {
            match File::open(&seg.path) {
                Ok(file) => {
                    let (offset, expected) = at.unwrap_or((0, seg.base));
                    self.pos = Some(Position {
                        seg,
                        file,
                        offset,
                        expected,
                    });
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let next = {
                        let segs = self
                            .shared
                            .segments
                            .read()
                            .unwrap_or_else(|p| p.into_inner());
                        segs.range(seg.base + 1..).next().map(|(_, s)| s.clone())
                    };
                    self.pos = None;
                    match next {
                        Some(n) => {
                            seg = n;
                            at = None;
                        }
                        None => return Ok(false),
                    }
                }
                Err(e) => {
                    return Err(BufferError::io(
                        format!("opening {}", seg.path.display()),
                        e,
                    ));
                }
            }
        }
    }
}
