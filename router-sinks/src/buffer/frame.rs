//! Record framing and the forward scanner shared by recovery, readers and `inspect`.
//!
//! Frame layout (little endian), see the module documentation of [`crate::buffer`]:
//!
//! ```text
//! 0      4      8       9         10      18           26
//! | len  | crc  | magic | version | seq   | append_ms  | payload (len bytes) |
//! ```

use std::io::{self, Read};

/// Length of a frame header in bytes.
pub const FRAME_HEADER_LEN: usize = 26;
/// Magic byte at offset 8 of every frame, used to re-synchronise after corruption.
pub const FRAME_MAGIC: u8 = 0xEB;
/// Current record format version (offset 9 of every frame).
pub const FORMAT_VERSION: u8 = 1;
/// Largest payload a frame may carry (64 MiB); longer length fields are corrupt.
pub(crate) const MAX_PAYLOAD_LEN: u32 = 64 * 1024 * 1024;

/// Bytes a record with a payload of `payload_len` bytes takes on disk.
pub(crate) fn frame_len(payload_len: usize) -> u64 {
    (FRAME_HEADER_LEN + payload_len) as u64
}

/// CRC32 of a frame: the length field, then everything after the CRC field.
fn frame_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[0..4]);
    h.update(&header[8..FRAME_HEADER_LEN]);
    h.update(payload);
    h.finalize()
}

/// Appends one frame to `out`. The caller guarantees `payload.len() <= MAX_PAYLOAD_LEN`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, seq: u64, append_ms: u64, payload: &[u8]) {
    let start = out.len();
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.push(FRAME_MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&append_ms.to_le_bytes());
    out.extend_from_slice(payload);
    let (header, body) = out[start..].split_at(FRAME_HEADER_LEN);
    let crc = frame_crc(header, body);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A valid record found by the [`Scanner`]; its payload is `Scanner::payload(&record)` until
/// the next call to `Scanner::next_item`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScannedRecord {
    /// Sequence number.
    pub seq: u64,
    /// Wall-clock time of the append, ms since the Unix epoch.
    pub append_ms: u64,
    /// File offset of the frame.
    pub offset: u64,
    /// Length of the whole frame.
    pub frame_len: u64,
    payload_start: usize,
    payload_len: usize,
}

/// What the scanner found next.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ScanItem {
    /// A frame with a valid CRC and the expected sequence number.
    Record(ScannedRecord),
    /// Bytes that are not valid frames, followed by a valid frame (returned next).
    /// `records` is how many sequence numbers were skipped over.
    Corrupt {
        /// File offset where the bad bytes start.
        offset: u64,
        /// Number of bad bytes.
        bytes: u64,
        /// Sequence numbers lost in them.
        records: u64,
    },
    /// Bytes at the end that are not valid frames and are not followed by any (a torn tail,
    /// a zero-filled tail, or a corrupt last record).
    Tail {
        /// File offset where the bad bytes start.
        offset: u64,
        /// Number of bad bytes up to the end of the scanned range.
        bytes: u64,
    },
}

/// Reads frames forward from a byte source, skipping corrupt regions.
///
/// Re-synchronisation: after an invalid frame the scanner moves forward one byte at a time
/// (jumping to the next `magic, version` pair) and accepts a frame only if its magic and
/// version match, its length is plausible, its sequence number lies between the expected one
/// and the expected one plus the number of frames that could fit in the skipped bytes, and its
/// CRC matches. Within a segment sequence numbers are contiguous, so the gap between the
/// expected and the found sequence number is exactly the number of records lost.
/// The scanner never loops: every step consumes at least one byte or reads more input, and it
/// reads at most `limit` bytes.
#[derive(Debug)]
pub(crate) struct Scanner<R> {
    src: R,
    buf: Vec<u8>,
    lo: usize,
    hi: usize,
    base_off: u64,
    remaining: u64,
    src_done: bool,
    expected: u64,
    corrupt_start: Option<u64>,
    stash: Option<ScannedRecord>,
    chunk: usize,
}

impl<R: Read> Scanner<R> {
    /// A scanner over `src`, whose first byte is at file offset `start_offset`, reading at
    /// most `limit` bytes, expecting sequence number `expected_seq` first.
    pub(crate) fn new(
        src: R,
        start_offset: u64,
        limit: u64,
        expected_seq: u64,
        chunk: usize,
    ) -> Self {
        Scanner {
            src,
            buf: Vec::new(),
            lo: 0,
            hi: 0,
            base_off: start_offset,
            remaining: limit,
            src_done: limit == 0,
            expected: expected_seq,
            corrupt_start: None,
            stash: None,
            chunk: chunk.max(FRAME_HEADER_LEN * 4),
        }
    }

    /// File offset of the first byte not yet consumed.
    pub(crate) fn position(&self) -> u64 {
        self.base_off + self.lo as u64
    }

    /// Sequence number the next valid record should carry.
    pub(crate) fn expected_seq(&self) -> u64 {
        self.expected
    }

    /// Payload of a record returned by the last call to `next_item`.
    pub(crate) fn payload(&self, r: &ScannedRecord) -> &[u8] {
        &self.buf[r.payload_start..r.payload_start + r.payload_len]
    }

    /// Makes `n` bytes available at `lo` if the source has them; false at the end.
    fn ensure(&mut self, n: usize) -> io::Result<bool> {
        while self.hi - self.lo < n && !self.src_done {
            if self.buf.len() - self.lo < n.max(self.chunk) {
                // Compact, then grow.
                self.buf.copy_within(self.lo..self.hi, 0);
                self.base_off += self.lo as u64;
                self.hi -= self.lo;
                self.lo = 0;
                let want = n.max(self.chunk) + self.hi;
                if self.buf.len() < want {
                    self.buf.resize(want, 0);
                }
            }
            let room = (self.buf.len() - self.hi) as u64;
            let take = usize::try_from(room.min(self.remaining)).unwrap_or(usize::MAX);
            let got = match self.src.read(&mut self.buf[self.hi..self.hi + take]) {
                Ok(g) => g,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.hi += got;
            self.remaining -= got as u64;
            if got == 0 || self.remaining == 0 {
                self.src_done = true;
            }
        }
        Ok(self.hi - self.lo >= n)
    }

    /// Checks magic, version, length and sequence plausibility of the header at `lo`;
    /// returns the payload length when plausible.
    fn plausible_header(&self) -> Option<(usize, u64)> {
        let h = &self.buf[self.lo..self.lo + FRAME_HEADER_LEN];
        if h[8] != FRAME_MAGIC || h[9] != FORMAT_VERSION {
            return None;
        }
        let len = u32_at(h, 0);
        if len > MAX_PAYLOAD_LEN {
            return None;
        }
        let seq = u64_at(h, 10);
        let ok = match self.corrupt_start {
            None => seq == self.expected,
            Some(cs) => {
                let skipped = self.position().saturating_sub(cs);
                let max_lost = skipped / FRAME_HEADER_LEN as u64 + 1;
                seq >= self.expected && seq - self.expected <= max_lost
            }
        };
        ok.then_some((len as usize, seq))
    }

    /// The next item, or `None` at the end of the range.
    pub(crate) fn next_item(&mut self) -> io::Result<Option<ScanItem>> {
        if let Some(r) = self.stash.take() {
            return Ok(Some(ScanItem::Record(r)));
        }
        loop {
            if !self.ensure(FRAME_HEADER_LEN)? {
                let off = self.position();
                if self.hi == self.lo {
                    return Ok(self.corrupt_start.take().map(|cs| ScanItem::Tail {
                        offset: cs,
                        bytes: off - cs,
                    }));
                }
                // A partial header at the very end.
                self.corrupt_start.get_or_insert(off);
                self.lo = self.hi;
                continue;
            }
            if let Some((len, seq)) = self.plausible_header() {
                if self.ensure(FRAME_HEADER_LEN + len)? {
                    let frame = &self.buf[self.lo..self.lo + FRAME_HEADER_LEN + len];
                    let (header, payload) = frame.split_at(FRAME_HEADER_LEN);
                    if frame_crc(header, payload) == u32_at(header, 4) {
                        let rec = ScannedRecord {
                            seq,
                            append_ms: u64_at(header, 18),
                            offset: self.position(),
                            frame_len: (FRAME_HEADER_LEN + len) as u64,
                            payload_start: self.lo + FRAME_HEADER_LEN,
                            payload_len: len,
                        };
                        let lost = seq - self.expected;
                        self.lo += FRAME_HEADER_LEN + len;
                        self.expected = seq + 1;
                        if let Some(cs) = self.corrupt_start.take() {
                            self.stash = Some(rec);
                            return Ok(Some(ScanItem::Corrupt {
                                offset: cs,
                                bytes: rec.offset - cs,
                                records: lost,
                            }));
                        }
                        return Ok(Some(ScanItem::Record(rec)));
                    }
                }
            }
            // Not a valid frame at `lo`: skip to the next candidate.
            let here = self.position();
            self.corrupt_start.get_or_insert(here);
            self.lo += 1;
            let window = &self.buf[self.lo..self.hi];
            let found = window.get(8..).and_then(|w| {
                w.windows(2)
                    .position(|p| p == [FRAME_MAGIC, FORMAT_VERSION])
            });
            match found {
                Some(i) => self.lo += i,
                // Keep the last bytes: a frame starting there has its magic beyond `hi`.
                None => self.lo = self.lo.max(self.hi.saturating_sub(9)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(first_seq: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            encode_frame(
                &mut out,
                first_seq + i as u64,
                1_700_000_000_000 + i as u64,
                p,
            );
        }
        out
    }

    fn scan(data: &[u8], expected: u64) -> (Vec<(u64, Vec<u8>)>, Vec<ScanItem>) {
        let mut s = Scanner::new(data, 0, data.len() as u64, expected, 64);
        let mut recs = Vec::new();
        let mut other = Vec::new();
        while let Some(item) = s.next_item().unwrap() {
            match item {
                ScanItem::Record(r) => recs.push((r.seq, s.payload(&r).to_vec())),
                x => other.push(x),
            }
        }
        (recs, other)
    }

    #[test]
    fn round_trip() {
        let data = frames(7, &[b"a", b"", &[9u8; 1000], b"xyz"]);
        let (recs, other) = scan(&data, 7);
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[2], (9, vec![9u8; 1000]));
        assert!(other.is_empty());
    }

    #[test]
    fn flipped_bit_skips_exactly_one_record() {
        let mut data = frames(0, &[b"one", b"two", b"three", b"four"]);
        let second = frame_len(3) as usize;
        data[second + FRAME_HEADER_LEN + 1] ^= 0x10;
        let (recs, other) = scan(&data, 0);
        assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 2, 3]);
        assert!(matches!(other[..], [ScanItem::Corrupt { records: 1, .. }]));
    }

    #[test]
    fn corrupt_length_field_resyncs() {
        let mut data = frames(0, &[b"one", b"two", b"three", b"four"]);
        data[0] = 0xff;
        data[1] = 0xff;
        let (recs, other) = scan(&data, 0);
        assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(matches!(other[..], [ScanItem::Corrupt { records: 1, .. }]));
    }

    #[test]
    fn torn_and_zero_tails() {
        let data = frames(0, &[b"one", b"two"]);
        let mut torn = data.clone();
        torn.extend_from_slice(&frames(2, &[b"three"])[..10]);
        let (recs, other) = scan(&torn, 0);
        assert_eq!(recs.len(), 2);
        assert!(matches!(other[..], [ScanItem::Tail { bytes: 10, .. }]));
        let mut zeros = data.clone();
        zeros.extend_from_slice(&[0u8; 4096]);
        let (recs, other) = scan(&zeros, 0);
        assert_eq!(recs.len(), 2);
        assert!(matches!(other[..], [ScanItem::Tail { bytes: 4096, .. }]));
    }

    #[test]
    fn garbage_never_hangs_or_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut data = Vec::new();
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push((x & 0xff) as u8);
        }
        // Sprinkle magic/version pairs.
        for i in (0..data.len() - 2).step_by(97) {
            data[i] = FRAME_MAGIC;
            data[i + 1] = FORMAT_VERSION;
        }
        let (recs, _) = scan(&data, 0);
        assert!(recs.is_empty());
    }
}
