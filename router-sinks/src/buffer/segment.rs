//! Segment files: naming, directory listing, in-memory metadata and directory fsync.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{BufferError, IoContext};

/// Suffix of segment files.
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";
/// Suffix of cursor files.
pub(crate) const CURSOR_SUFFIX: &str = ".cursor";
/// Suffix of temporary files (cursor writes in progress).
pub(crate) const TMP_SUFFIX: &str = ".tmp";
/// Name of the lock file held by the writer.
pub(crate) const LOCK_FILE: &str = "LOCK";
/// An index entry is added at most every this many bytes of a segment.
pub(crate) const INDEX_EVERY_BYTES: u64 = 64 * 1024;

/// Highest plausible sequence number (2^62: 146 years at a billion records a second). A
/// segment name or a cursor beyond it can only come from damage or a stray file, and taking
/// it at face value would leave no room to number records after it (the writer's `seq + 1`
/// overflowed); such names are treated as unknown files and such cursors as corrupt.
pub(crate) const MAX_SEQ: u64 = 1 << 62;

/// File name of the segment whose first sequence number is `base`.
pub(crate) fn segment_file_name(base: u64) -> String {
    format!("{base:020}{SEGMENT_SUFFIX}")
}

/// Parses a segment file name back into its base sequence number (at most [`MAX_SEQ`]).
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|base| *base <= MAX_SEQ)
}

/// What a directory holds, by kind.
#[derive(Debug, Default)]
pub(crate) struct DirListing {
    /// Segment files by base sequence number, sorted.
    pub segments: Vec<(u64, PathBuf)>,
    /// Cursor files: destination name and path.
    pub cursors: Vec<(String, PathBuf)>,
    /// Temporary files left by an interrupted cursor write.
    pub temps: Vec<PathBuf>,
    /// Anything else (ignored, reported).
    pub garbage: Vec<String>,
}

/// Lists `dir`, classifying every entry.
pub(crate) fn list_dir(dir: &Path) -> Result<DirListing, BufferError> {
    let mut out = DirListing::default();
    let entries = std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            out.garbage
                .push(entry.file_name().to_string_lossy().into_owned());
            continue;
        };
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if name == LOCK_FILE {
            continue;
        }
        if !is_file {
            out.garbage.push(name);
        } else if let Some(base) = parse_segment_name(&name) {
            out.segments.push((base, path));
        } else if name.ends_with(TMP_SUFFIX) {
            out.temps.push(path);
        } else if let Some(dest) = name.strip_suffix(CURSOR_SUFFIX) {
            if super::config::valid_destination_name(dest) {
                out.cursors.push((dest.to_owned(), path));
            } else {
                out.garbage.push(name);
            }
        } else {
            out.garbage.push(name);
        }
    }
    out.segments.sort_by_key(|s| s.0);
    out.cursors.sort();
    out.garbage.sort();
    Ok(out)
}

/// `fsync` of a directory, so that creations, renames and unlinks in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), BufferError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing directory {}", dir.display()))
}

/// One entry of the sparse per-segment index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexEntry {
    /// Sequence number of the frame.
    pub seq: u64,
    /// File offset of the frame.
    pub offset: u64,
    /// Append wall-clock time of the frame, ms since the epoch.
    pub append_ms: u64,
}

/// In-memory state of one segment, shared by the writer, readers and metrics.
#[derive(Debug)]
pub(crate) struct SegmentMeta {
    /// First sequence number (from the file name).
    pub base: u64,
    /// Path of the file.
    pub path: PathBuf,
    /// Bytes of the file that are durable and valid (readers stop there).
    pub durable_len: AtomicU64,
    /// Sequence number after the last durable record of this segment.
    pub end_seq: AtomicU64,
    /// Size of the file in bytes (written, durable or not, including any corrupt bytes).
    pub file_len: AtomicU64,
    /// Sparse index (first frame, then at most one entry per `INDEX_EVERY_BYTES`).
    pub index: Mutex<Vec<IndexEntry>>,
}

impl SegmentMeta {
    /// Metadata of a segment with nothing durable yet.
    pub(crate) fn new(base: u64, path: PathBuf) -> Self {
        SegmentMeta {
            base,
            path,
            durable_len: AtomicU64::new(0),
            end_seq: AtomicU64::new(base),
            file_len: AtomicU64::new(0),
            index: Mutex::new(Vec::new()),
        }
    }

    /// Adds an index entry if the last one is far enough behind.
    pub(crate) fn maybe_index(&self, e: IndexEntry) {
        let mut idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let due = idx
            .last()
            .is_none_or(|l| e.offset >= l.offset + INDEX_EVERY_BYTES);
        if due {
            idx.push(e);
        }
    }

    /// The last index entry at or before `seq`.
    pub(crate) fn index_floor(&self, seq: u64) -> Option<IndexEntry> {
        let idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let i = idx.partition_point(|e| e.seq <= seq);
        i.checked_sub(1).map(|i| idx[i])
    }

    /// Durable length (Acquire).
    pub(crate) fn durable_len(&self) -> u64 {
        self.durable_len.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(
            parse_segment_name(&segment_file_name(MAX_SEQ)),
            Some(MAX_SEQ)
        );
        // Found by fuzzing: a base with no room after it is not one of ours.
        assert_eq!(parse_segment_name(&segment_file_name(u64::MAX)), None);
        assert_eq!(parse_segment_name(&segment_file_name(MAX_SEQ + 1)), None);
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
    }
}
