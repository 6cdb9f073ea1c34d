//! Destination cursors: the acknowledgement tracker and the durable cursor files.
//!
//! A cursor file `<destination>.cursor` holds 20 bytes: the magic `EVRCUR01`, the next
//! unacknowledged sequence number (u64 LE) and a CRC32 of the first 16 bytes. It is replaced
//! atomically: write `<destination>.cursor.tmp`, fsync it, rename over the old file, fsync the
//! directory.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::error::{BufferError, IoContext};
use super::segment::{CURSOR_SUFFIX, MAX_SEQ, TMP_SUFFIX, sync_dir};

const CURSOR_MAGIC: &[u8; 8] = b"EVRCUR01";
const CURSOR_LEN: usize = 20;

/// Path of the cursor file of `dest` in `dir`.
pub(crate) fn cursor_path(dir: &Path, dest: &str) -> PathBuf {
    dir.join(format!("{dest}{CURSOR_SUFFIX}"))
}

/// Outcome of reading a cursor file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CursorFile {
    /// No file.
    Missing,
    /// A file that fails its checks.
    Corrupt,
    /// The next unacknowledged sequence number.
    At(u64),
}

/// Reads a cursor file (never fails on bad content, only on I/O errors other than NotFound).
pub(crate) fn read_cursor(path: &Path) -> Result<CursorFile, BufferError> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CursorFile::Missing),
        Err(e) => return Err(BufferError::io(format!("reading {}", path.display()), e)),
    };
    if data.len() != CURSOR_LEN || &data[..8] != CURSOR_MAGIC {
        return Ok(CursorFile::Corrupt);
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&data[16..20]);
    if crc32fast::hash(&data[..16]) != u32::from_le_bytes(crc) {
        return Ok(CursorFile::Corrupt);
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&data[8..16]);
    match u64::from_le_bytes(seq) {
        // Beyond any sequence number the log can reach: damage, not a position.
        seq if seq > MAX_SEQ => Ok(CursorFile::Corrupt),
        seq => Ok(CursorFile::At(seq)),
    }
}

/// Writes a cursor file atomically and durably.
pub(crate) fn write_cursor(dir: &Path, dest: &str, next_seq: u64) -> Result<(), BufferError> {
    let path = cursor_path(dir, dest);
    let tmp = dir.join(format!("{dest}{CURSOR_SUFFIX}{TMP_SUFFIX}"));
    let mut data = Vec::with_capacity(CURSOR_LEN);
    data.extend_from_slice(CURSOR_MAGIC);
    data.extend_from_slice(&next_seq.to_le_bytes());
    let crc = crc32fast::hash(&data);
    data.extend_from_slice(&crc.to_le_bytes());
    let mut f = File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    f.write_all(&data)
        .and_then(|()| f.sync_all())
        .ctx(|| format!("writing {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, &path).ctx(|| format!("renaming {} into place", tmp.display()))?;
    sync_dir(dir)
}

/// Tracks acknowledgements of one destination, which may arrive out of order, and the
/// contiguous acknowledged prefix.
#[derive(Debug)]
pub(crate) struct AckTracker {
    /// Every sequence number below this one is acknowledged (or does not exist).
    next: u64,
    /// Acknowledged ranges above `next` (start -> end, exclusive), possibly overlapping.
    pending: BTreeMap<u64, u64>,
}

impl AckTracker {
    /// A tracker whose prefix ends at `next`.
    pub(crate) fn new(next: u64) -> Self {
        AckTracker {
            next,
            pending: BTreeMap::new(),
        }
    }

    /// The next unacknowledged sequence number.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// Ranges acknowledged out of order, still waiting for a gap to be filled.
    #[cfg(test)]
    pub(crate) fn pending_ranges(&self) -> usize {
        self.pending.len()
    }

    /// Marks `r` acknowledged and advances the prefix; returns the new prefix end.
    pub(crate) fn ack_range(&mut self, r: Range<u64>) -> u64 {
        if r.end > self.next && r.start < r.end {
            let start = r.start.max(self.next);
            let e = self.pending.entry(start).or_insert(r.end);
            *e = (*e).max(r.end);
            while let Some((&s, &e)) = self.pending.first_key_value() {
                if s > self.next {
                    break;
                }
                self.next = self.next.max(e);
                self.pending.pop_first();
            }
        }
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_acks_advance_the_contiguous_prefix() {
        let mut t = AckTracker::new(10);
        assert_eq!(t.ack_range(12..13), 10);
        assert_eq!(t.ack_range(11..12), 10);
        assert_eq!(t.ack_range(5..9), 10);
        assert_eq!(t.ack_range(10..11), 13);
        assert_eq!(t.ack_range(20..30), 13);
        assert_eq!(t.ack_range(14..25), 13);
        assert_eq!(t.ack_range(13..14), 30);
        assert_eq!(t.pending_ranges(), 0);
    }

    #[test]
    fn cursor_file_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let p = cursor_path(dir.path(), "posthog");
        assert_eq!(read_cursor(&p).unwrap(), CursorFile::Missing);
        write_cursor(dir.path(), "posthog", 1234).unwrap();
        assert_eq!(read_cursor(&p).unwrap(), CursorFile::At(1234));
        write_cursor(dir.path(), "posthog", 99).unwrap();
        assert_eq!(read_cursor(&p).unwrap(), CursorFile::At(99));
        let mut d = fs::read(&p).unwrap();
        d[9] ^= 1;
        fs::write(&p, d).unwrap();
        assert_eq!(read_cursor(&p).unwrap(), CursorFile::Corrupt);
        // Found by fuzzing: a cursor with no room after it (next_seq would overflow).
        write_cursor(dir.path(), "posthog", u64::MAX).unwrap();
        assert_eq!(read_cursor(&p).unwrap(), CursorFile::Corrupt);
    }
}
