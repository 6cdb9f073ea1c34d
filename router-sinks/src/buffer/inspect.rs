//! Read-only inspection of a log directory (`events-router buffer inspect`).
//!
//! Never writes, never truncates and never takes the writer lock, so it is safe while the
//! router runs: a segment that disappears meanwhile (retention) is reported as gone, and bytes
//! after the last valid frame of the last segment are reported as `tail_bytes` (a write in
//! flight, or a torn tail the next open will cut).

use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cursor::{CursorFile, read_cursor};
use super::error::{BufferError, IoContext};
use super::frame::{ScanItem, Scanner};
use super::segment::list_dir;
use super::writer::now_ms;

/// One segment file.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentInfo {
    /// File name.
    pub file: String,
    /// First sequence number (from the name).
    pub base_seq: u64,
    /// File size in bytes.
    pub size_bytes: u64,
    /// Valid records.
    pub records: u64,
    /// First and last sequence numbers of the valid records.
    pub seq_range: Option<(u64, u64)>,
    /// Records lost to corruption inside the segment.
    pub corrupt_records: u64,
    /// Bytes after the last valid frame.
    pub tail_bytes: u64,
    /// Append time of the first and last valid records (ms since the epoch).
    pub append_ms_range: Option<(u64, u64)>,
    /// The file vanished while being inspected (deleted by retention).
    pub vanished: bool,
}

/// One destination's cursor.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationInfo {
    /// Destination name (from the cursor file name).
    pub name: String,
    /// Next unacknowledged sequence number, or `None` if the cursor file is corrupt.
    pub cursor: Option<u64>,
    /// Valid records at or after the cursor.
    pub backlog_records: u64,
    /// Framed bytes of those records.
    pub backlog_bytes: u64,
    /// Age in milliseconds of the oldest record at or after the cursor.
    pub oldest_unacked_age_ms: Option<u64>,
}

/// What [`inspect`] found.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// The directory.
    pub dir: PathBuf,
    /// Segments in sequence order.
    pub segments: Vec<SegmentInfo>,
    /// Destinations that have a cursor file.
    pub destinations: Vec<DestinationInfo>,
    /// Bytes of all segments.
    pub total_bytes: u64,
    /// Valid records in all segments.
    pub total_records: u64,
    /// Records lost to corruption (inside segments, plus gaps between segments when the
    /// earlier one ends in bad bytes).
    pub corrupt_records: u64,
    /// Sequence numbers missing between segments with no bad bytes to explain them.
    pub missing_records: u64,
    /// Files that are neither segments nor cursors.
    pub garbage_files: Vec<String>,
    /// Sequence number after the last valid record.
    pub next_seq: u64,
    /// When the inspection ran (ms since the epoch).
    pub inspected_at_ms: u64,
}

/// Inspects the log in `dir` without modifying anything.
pub fn inspect(dir: impl AsRef<Path>) -> Result<InspectReport, BufferError> {
    let dir = dir.as_ref();
    let now = now_ms();
    let listing = list_dir(dir)?;
    let mut cursors = Vec::new();
    for (name, path) in &listing.cursors {
        let c = match read_cursor(path)? {
            CursorFile::At(c) => Some(c),
            CursorFile::Missing => continue,
            CursorFile::Corrupt => None,
        };
        cursors.push(DestinationInfo {
            name: name.clone(),
            cursor: c,
            backlog_records: 0,
            backlog_bytes: 0,
            oldest_unacked_age_ms: None,
        });
    }
    let mut report = InspectReport {
        dir: dir.to_path_buf(),
        segments: Vec::new(),
        destinations: Vec::new(),
        total_bytes: 0,
        total_records: 0,
        corrupt_records: 0,
        missing_records: 0,
        garbage_files: listing.garbage,
        next_seq: 0,
        inspected_at_ms: now,
    };
    // (highest end seq so far, whether the segment that ends there has a corrupt tail); see
    // `Log::open`.
    let mut prev_end: Option<(u64, bool)> = None;
    for (base, path) in &listing.segments {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut info = SegmentInfo {
            file: file_name,
            base_seq: *base,
            size_bytes: 0,
            records: 0,
            seq_range: None,
            corrupt_records: 0,
            tail_bytes: 0,
            append_ms_range: None,
            vanished: false,
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                info.vanished = true;
                report.segments.push(info);
                continue;
            }
            Err(e) => return Err(BufferError::io(format!("opening {}", path.display()), e)),
        };
        let len = file
            .metadata()
            .ctx(|| format!("stat of {}", path.display()))?
            .len();
        info.size_bytes = len;
        let mut end = *base;
        let mut scanner = Scanner::new(BufReader::new(file), 0, len, *base, 1024 * 1024);
        while let Some(item) = scanner
            .next_item()
            .ctx(|| format!("reading {}", path.display()))?
        {
            match item {
                ScanItem::Record(r) => {
                    info.records += 1;
                    info.seq_range = Some((info.seq_range.map_or(r.seq, |x| x.0), r.seq));
                    info.append_ms_range = Some((
                        info.append_ms_range.map_or(r.append_ms, |x| x.0),
                        r.append_ms,
                    ));
                    end = r.seq + 1;
                    for d in &mut cursors {
                        if d.cursor.is_none_or(|c| r.seq >= c) {
                            d.backlog_records += 1;
                            d.backlog_bytes += r.frame_len;
                            if d.oldest_unacked_age_ms.is_none() {
                                d.oldest_unacked_age_ms = Some(now.saturating_sub(r.append_ms));
                            }
                        }
                    }
                }
                ScanItem::Corrupt { records, .. } => info.corrupt_records += records,
                ScanItem::Tail { bytes, .. } => info.tail_bytes += bytes,
            }
        }
        if let Some((pe, bad_tail)) = prev_end {
            if *base > pe {
                if bad_tail {
                    report.corrupt_records += base - pe;
                } else {
                    report.missing_records += base - pe;
                }
            }
        }
        prev_end = Some(match prev_end {
            Some(p) if p.0 > end => p,
            _ => (end, info.tail_bytes > 0),
        });
        report.total_bytes += len;
        report.total_records += info.records;
        report.corrupt_records += info.corrupt_records;
        report.next_seq = report.next_seq.max(end);
        report.segments.push(info);
    }
    report.destinations = cursors;
    Ok(report)
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "buffer: {}", self.dir.display())?;
        writeln!(
            f,
            "{} segments, {} bytes, {} records, next seq {}, {} corrupt, {} missing",
            self.segments.len(),
            self.total_bytes,
            self.total_records,
            self.next_seq,
            self.corrupt_records,
            self.missing_records
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<28} {:>12} {:>10} {:>21} {:>21} {:>8} {:>10}",
            "SEGMENT", "BYTES", "RECORDS", "FIRST SEQ", "LAST SEQ", "CORRUPT", "TAIL BYTES"
        )?;
        for s in &self.segments {
            let (first, last) = match s.seq_range {
                Some((a, b)) => (a.to_string(), b.to_string()),
                None => ("-".to_owned(), "-".to_owned()),
            };
            let name = if s.vanished {
                format!("{} (gone)", s.file)
            } else {
                s.file.clone()
            };
            writeln!(
                f,
                "{:<28} {:>12} {:>10} {:>21} {:>21} {:>8} {:>10}",
                name, s.size_bytes, s.records, first, last, s.corrupt_records, s.tail_bytes
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<24} {:>21} {:>12} {:>14} {:>16}",
            "DESTINATION", "CURSOR", "BACKLOG", "BACKLOG BYTES", "OLDEST UNACKED"
        )?;
        for d in &self.destinations {
            let cursor = d
                .cursor
                .map_or_else(|| "corrupt".to_owned(), |c| c.to_string());
            let age = d.oldest_unacked_age_ms.map_or_else(
                || "-".to_owned(),
                |ms| format!("{:.1}s", ms as f64 / 1000.0),
            );
            writeln!(
                f,
                "{:<24} {:>21} {:>12} {:>14} {:>16}",
                d.name, cursor, d.backlog_records, d.backlog_bytes, age
            )?;
        }
        if !self.garbage_files.is_empty() {
            writeln!(f)?;
            writeln!(f, "ignored files: {}", self.garbage_files.join(", "))?;
        }
        Ok(())
    }
}
