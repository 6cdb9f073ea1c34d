//! Input format of the `log_recovery` target: a list of operations that build a log
//! directory (segment files, cursor files, stray files).
//!
//! ```text
//! input := op*
//! op    := tag:u8  len:u16le  data[len]      (data is cut short at the end of the input)
//! ```
//!
//! | tag % 8 | operation |
//! |---|---|
//! | 0 | start a segment; `data[0..8]` = base seq (u64 LE); no data = contiguous with the last |
//! | 1 | a well-formed frame: `data[0]` = seq delta (i8) from the expected seq, `data[1]` = flags, `data[2..]` = payload |
//! | 2 | raw bytes appended to the current segment |
//! | 3 | `u16 LE` zero bytes (at most 4096) appended to the current segment |
//! | 4 | a cursor file: `data[0]` = destination, `data[1]` = mode, `data[2..]` = seq or raw bytes |
//! | 5 | a stray file: `data[0]` = kind, `data[1..]` = contents |
//! | 6 | reader parameters: `data[0]` = max records, `data[1]` = max bytes (log2) |
//! | 7 | a frame with an absolute seq: `data[0..8]` = seq, `data[8]` = flags, `data[9..]` = payload |
//!
//! Frame flags: bit 0 corrupts the CRC, bit 1 tears the frame (only its first half is written),
//! bit 2 lies in the length field, bit 3 writes version 2, bit 4 corrupts the magic byte.
//!
//! The frames are encoded here from the documented format (router-sinks `buffer` module
//! docs), independently of the log's own encoder, so the target checks the reader against the
//! specification.

use std::collections::BTreeMap;

/// The destinations the log is opened with (`archive` cursors exist but are not configured).
pub const DESTINATIONS: [&str; 3] = ["posthog", "mixpanel", "archive"];

/// Header length of a frame.
pub const HEADER: usize = 26;

/// A cursor file to write.
#[derive(Debug, Clone)]
pub struct CursorSpec {
    /// Destination name (file `<name>.cursor`).
    pub dest: &'static str,
    /// File contents.
    pub bytes: Vec<u8>,
}

/// A log directory to build.
#[derive(Debug, Clone, Default)]
pub struct LogSpec {
    /// Segment files by base sequence number.
    pub segments: BTreeMap<u64, Vec<u8>>,
    /// Cursor files.
    pub cursors: Vec<CursorSpec>,
    /// Other files: (file name, contents, is a directory).
    pub strays: Vec<(String, Vec<u8>, bool)>,
    /// Reader batch size in records.
    pub max_records: usize,
    /// Reader batch size in bytes.
    pub max_bytes: usize,
}

/// The valid cursor file for `seq`: magic, seq (u64 LE), CRC32 of the first 16 bytes.
pub fn cursor_bytes(seq: u64) -> Vec<u8> {
    let mut d = b"EVRCUR01".to_vec();
    d.extend_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&d);
    d.extend_from_slice(&crc.to_le_bytes());
    d
}

/// Encodes one frame as the format documents it.
pub fn frame(seq: u64, append_ms: u64, payload: &[u8], flags: u8) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let len_field = if flags & 4 != 0 {
        len.wrapping_add(u32::from(flags >> 5) + 1)
    } else {
        len
    };
    let mut f = Vec::with_capacity(HEADER + payload.len());
    f.extend_from_slice(&len_field.to_le_bytes());
    f.extend_from_slice(&[0; 4]);
    f.push(if flags & 16 != 0 { 0xEA } else { 0xEB });
    f.push(if flags & 8 != 0 { 2 } else { 1 });
    f.extend_from_slice(&seq.to_le_bytes());
    f.extend_from_slice(&append_ms.to_le_bytes());
    f.extend_from_slice(payload);
    let mut h = crc32fast::Hasher::new();
    h.update(&f[0..4]);
    h.update(&f[8..]);
    let mut crc = h.finalize();
    if flags & 1 != 0 {
        crc ^= 0x0100_0001;
    }
    f[4..8].copy_from_slice(&crc.to_le_bytes());
    if flags & 2 != 0 {
        f.truncate(f.len() / 2);
    }
    f
}

/// Every frame with a valid CRC, magic and version in `bytes`, at any offset: the set of
/// `(seq, payload)` a reader may legitimately return from this file.
pub fn valid_frames(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + HEADER <= bytes.len() {
        let h = &bytes[i..i + HEADER];
        if h[8] == 0xEB && h[9] == 1 {
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
            if len <= bytes.len() - i - HEADER {
                let payload = &bytes[i + HEADER..i + HEADER + len];
                let mut c = crc32fast::Hasher::new();
                c.update(&h[0..4]);
                c.update(&h[8..]);
                c.update(payload);
                if c.finalize() == u32::from_le_bytes([h[4], h[5], h[6], h[7]]) {
                    let mut s = [0u8; 8];
                    s.copy_from_slice(&h[10..18]);
                    out.push((u64::from_le_bytes(s), payload.to_vec()));
                }
            }
        }
        i += 1;
    }
    out
}

fn u64_le(d: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = d.len().min(8);
    b[..n].copy_from_slice(&d[..n]);
    u64::from_le_bytes(b)
}

/// Decodes the operations of a fuzz input into a directory to build.
pub fn parse(data: &[u8]) -> LogSpec {
    let mut spec = LogSpec {
        max_records: 7,
        max_bytes: 4096,
        ..LogSpec::default()
    };
    let mut current: Option<u64> = None;
    // Sequence number the next well-formed frame continues from.
    let mut expected: u64 = 0;
    let mut i = 0;
    let mut n_frames = 0u64;
    while i < data.len() {
        let tag = data[i];
        let len = match (data.get(i + 1), data.get(i + 2)) {
            (Some(&a), Some(&b)) => usize::from(u16::from_le_bytes([a, b])),
            _ => data.len(),
        };
        let start = (i + 3).min(data.len());
        let end = start.saturating_add(len).min(data.len());
        let d = &data[start..end];
        i = end.max(i + 1);
        let seg = |spec: &mut LogSpec, current: &mut Option<u64>| -> u64 {
            let base = current.unwrap_or(0);
            spec.segments.entry(base).or_default();
            *current = Some(base);
            base
        };
        match tag % 8 {
            0 => {
                let base = if d.is_empty() { expected } else { u64_le(d) };
                spec.segments.insert(base, Vec::new());
                current = Some(base);
                expected = base;
            }
            1 | 7 => {
                let base = seg(&mut spec, &mut current);
                let (seq, flags, payload) = if tag % 8 == 1 {
                    let delta = d.first().map_or(0, |&b| i64::from(b as i8));
                    let flags = d.get(1).copied().unwrap_or(0);
                    (
                        expected.wrapping_add_signed(delta),
                        flags,
                        d.get(2..).unwrap_or(&[]),
                    )
                } else {
                    (
                        u64_le(d),
                        d.get(8).copied().unwrap_or(0),
                        d.get(9..).unwrap_or(&[]),
                    )
                };
                n_frames += 1;
                let f = frame(seq, 1_700_000_000_000 + n_frames, payload, flags);
                spec.segments.entry(base).or_default().extend_from_slice(&f);
                expected = seq.wrapping_add(1);
            }
            2 => {
                let base = seg(&mut spec, &mut current);
                spec.segments.entry(base).or_default().extend_from_slice(d);
            }
            3 => {
                let base = seg(&mut spec, &mut current);
                let n = usize::from(u16::from_le_bytes([
                    d.first().copied().unwrap_or(0),
                    d.get(1).copied().unwrap_or(0),
                ]))
                .min(4096);
                let total: usize = spec.segments.values().map(Vec::len).sum();
                let n = n.min((256 * 1024usize).saturating_sub(total));
                spec.segments
                    .entry(base)
                    .or_default()
                    .extend(std::iter::repeat_n(0u8, n));
            }
            4 => {
                let dest = DESTINATIONS[usize::from(d.first().copied().unwrap_or(0)) % 3];
                let mode = d.get(1).copied().unwrap_or(0) % 4;
                let rest = d.get(2..).unwrap_or(&[]);
                let bytes = match mode {
                    0 => cursor_bytes(u64_le(rest)),
                    1 => rest.to_vec(),
                    2 => {
                        let delta = rest.first().map_or(0, |&b| i64::from(b as i8));
                        cursor_bytes(expected.wrapping_add_signed(delta))
                    }
                    _ => {
                        let mut b = cursor_bytes(u64_le(rest));
                        let at = usize::from(rest.get(8).copied().unwrap_or(0)) % b.len();
                        b[at] ^= rest.get(9).copied().unwrap_or(1).max(1);
                        b
                    }
                };
                spec.cursors.push(CursorSpec { dest, bytes });
            }
            5 => {
                let kind = d.first().copied().unwrap_or(0) % 6;
                let body = d.get(1..).unwrap_or(&[]).to_vec();
                let (name, dir) = match kind {
                    0 => ("posthog.cursor.tmp".to_owned(), false),
                    1 => ("notes.txt".to_owned(), false),
                    2 => (format!("{:020}.seg", expected), true),
                    3 => ("0000000000000000000x.seg".to_owned(), false),
                    4 => ("bad name!.cursor".to_owned(), false),
                    _ => ("subdir".to_owned(), true),
                };
                spec.strays.push((name, body, dir));
            }
            _ => {
                spec.max_records = usize::from(d.first().copied().unwrap_or(7) % 64) + 1;
                spec.max_bytes = 1usize << (d.get(1).copied().unwrap_or(12) % 21);
            }
        }
    }
    spec
}

/// Encodes one operation (for writing seed inputs).
pub fn op(tag: u8, data: &[u8]) -> Vec<u8> {
    let len = u16::try_from(data.len()).expect("an op holds at most 64 KiB");
    let mut v = vec![tag];
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(data);
    v
}
