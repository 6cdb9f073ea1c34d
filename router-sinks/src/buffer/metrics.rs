//! Plain snapshot structs returned by [`Log::metrics`](super::Log::metrics).

use std::time::Duration;

use serde::Serialize;

/// Counters and gauges of the log at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogMetrics {
    /// Bytes of all segment files (`router_buffer_bytes`).
    pub bytes_on_disk: u64,
    /// The configured cap.
    pub max_total_bytes: u64,
    /// Number of segment files.
    pub segments: usize,
    /// Sequence number after the last durable record.
    pub next_seq: u64,
    /// Records appended since open.
    pub records_appended: u64,
    /// Framed bytes written since open.
    pub bytes_appended: u64,
    /// Append calls that succeeded since open.
    pub appends: u64,
    /// Group commits (one write, usually one fsync) since open; `records_appended /
    /// group_commits` is the mean group size.
    pub group_commits: u64,
    /// `fdatasync` calls since open.
    pub fsyncs: u64,
    /// Total time spent in `fdatasync`.
    pub fsync_duration_total: Duration,
    /// Duration of the last `fdatasync`.
    pub fsync_duration_last: Duration,
    /// Records found corrupt and skipped when the log was opened.
    pub corrupt_records_skipped: u64,
    /// Corrupt records met by readers after open (each reader counts what it skips).
    pub corrupt_records_read: u64,
    /// Segments deleted by retention since open.
    pub segments_deleted: u64,
    /// The writer stopped after an I/O failure.
    pub poisoned: bool,
    /// One entry per configured destination.
    pub destinations: Vec<DestinationMetrics>,
}

/// Cursor state of one destination.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DestinationMetrics {
    /// Destination name.
    pub name: String,
    /// Next unacknowledged sequence number (in memory).
    pub acked_seq: u64,
    /// Next unacknowledged sequence number as persisted in the cursor file.
    pub durable_cursor: u64,
    /// Records not yet acknowledged (distance in sequence numbers, so records lost to
    /// corruption are counted until a reader passes them).
    pub backlog_records: u64,
    /// Age of the oldest unacknowledged record (an upper bound: taken from the sparse index
    /// entry at or before the cursor, at most 64 KiB of log earlier). `None` without backlog.
    pub oldest_unacked_age: Option<Duration>,
}
