//! The durable buffer: a crash-safe, segmented, append-only log with group commit, one
//! cursor per destination and a size cap.
//!
//! Payloads are opaque bytes: the caller encodes the event (message id, timestamp fixed at
//! ingestion, routing decision, canonical event) so every resend is byte-identical.
//!
//! # Guarantees
//!
//! - **Accepted means durable.** [`Log::append`] resolves only after its records are written
//!   and `fdatasync`ed ([`SyncPolicy::Always`], the default). A single writer thread does group
//!   commit: it drains every request queued at that moment, writes them with one `write_all`
//!   and syncs them with one `File::sync_data`, then answers every waiting producer. The
//!   weaker [`SyncPolicy::Interval`] answers after the write and syncs periodically.
//! - **Bounded.** Appends that would take the log past `max_total_bytes` fail at once with
//!   [`BufferError::Full`] (the server answers 503); nothing accepted is ever dropped to make
//!   room. The backlog lives on disk; readers hold at most one batch in memory.
//! - **Per-destination cursors.** Each destination has a cursor: the sequence number of its
//!   first unacknowledged record. Acknowledgements may arrive out of order; the cursor advances
//!   over the contiguous acknowledged prefix, and is persisted by [`Log::flush_cursors`], by a
//!   background thread every `cursor_flush_interval_ms`, and by [`Log::close`]. After a crash a
//!   destination resumes from its last persisted cursor (at-least-once: records acknowledged
//!   after the last flush are delivered again).
//! - **Retention.** A segment is deleted only when it is sealed and every destination's
//!   *persisted* cursor is past its last record (the cursor files are fsynced before the
//!   unlink).
//! - **Readers see only durable records**, in append order.
//! - **Recovery** ([`Log::open`]) scans every segment, cuts a torn tail off the last one,
//!   skips and counts corrupt records, copes with missing segments, unknown files and cursors
//!   past the data, never hangs and never panics; see [`RecoveryReport`].
//!
//! Not covered: media failure, disks that lie about `fsync`, and (under `Interval`) the
//! records answered within the last interval before a power loss.
//!
//! # On-disk format (version 1)
//!
//! A directory holds:
//!
//! - `LOCK`: locked (`flock`) by the process that writes the log.
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: segments, named by the sequence number of their first
//!   record (20 digits). Records never span segments. A new segment is started when the next
//!   record would make the current one exceed `segment_max_bytes`; the previous one is synced
//!   first and the directory is synced after the new file is created.
//! - `<destination>.cursor`: 20 bytes, `b"EVRCUR01"`, the next unacknowledged sequence number
//!   (u64 LE), CRC32 of the first 16 bytes. Replaced atomically (write `.tmp`, fsync, rename,
//!   fsync the directory).
//!
//! A segment is a sequence of frames; integers are little endian:
//!
//! ```text
//! offset  size  field
//!      0     4  len        payload length in bytes (at most 64 MiB)
//!      4     4  crc32      CRC32 (IEEE, crc32fast) of bytes 0..4, then bytes 8..26+len
//!      8     1  magic      0xEB
//!      9     1  version    1
//!     10     8  seq        sequence number of the record
//!     18     8  append_ms  wall-clock time of the append, ms since the Unix epoch
//!     26   len  payload
//! ```
//!
//! Sequence numbers are contiguous within a segment and increase across segments (a gap
//! appears only when recovery renumbers past a cursor that was ahead of the data).
//!
//! **Re-synchronisation after corruption.** When a frame fails its checks, the scanner moves
//! forward byte by byte (jumping between occurrences of the `magic, version` pair) and accepts
//! the next frame whose magic and version match, whose length is plausible, whose sequence
//! number lies between the expected one and the expected one plus the number of headers that
//! fit in the skipped bytes, and whose CRC matches. Because the sequence number is in the
//! frame, the number of records lost is exact: the difference between the found and the
//! expected sequence numbers. Bad bytes at the end of the last segment (a torn write, a
//! zero-filled tail, or a corrupt last record, which cannot be told apart) are cut off.
//!
//! A future format bumps `version`; readers keep accepting the versions they know.

mod config;
mod cursor;
mod error;
mod frame;
mod inspect;
mod log;
mod metrics;
mod reader;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

pub use config::{
    DEFAULT_CURSOR_FLUSH_INTERVAL_MS, DEFAULT_DIR, DEFAULT_MAX_TOTAL_BYTES,
    DEFAULT_SEGMENT_MAX_BYTES, LogConfig, SyncPolicy,
};
pub use error::BufferError;
pub use frame::{FORMAT_VERSION, FRAME_HEADER_LEN, FRAME_MAGIC};
pub use inspect::{DestinationInfo, InspectReport, SegmentInfo, inspect};
pub use log::{Log, RecoveryReport};
pub use metrics::{DestinationMetrics, LogMetrics};
pub use reader::Reader;

/// Sequence numbers given to the records of one append: `first..first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct RecordRange {
    /// Sequence number of the first record.
    pub first: u64,
    /// Number of records.
    pub count: u64,
}

impl RecordRange {
    /// Sequence number after the last record.
    pub fn end(&self) -> u64 {
        self.first + self.count
    }

    /// The sequence numbers as a range.
    pub fn seqs(&self) -> std::ops::Range<u64> {
        self.first..self.end()
    }
}
