//! Regression cases found by the `log_recovery` fuzz target (`fuzz/`, see fuzz/README.md).
//!
//! Each test rebuilds the minimised directory the fuzzer found, opens the log on it and checks
//! what the target checks: recovery succeeds, readers get only genuine records, and a record
//! appended after recovery is numbered `next_seq` and read by every destination.

use bytes::Bytes;
use router_sinks::buffer::{FORMAT_VERSION, FRAME_HEADER_LEN, FRAME_MAGIC, Log, LogConfig};

/// One frame as the format documents it (router-sinks `buffer` module docs).
fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&[0; 4]);
    f.push(FRAME_MAGIC);
    f.push(FORMAT_VERSION);
    f.extend_from_slice(&seq.to_le_bytes());
    f.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
    f.extend_from_slice(payload);
    let mut h = crc32fast::Hasher::new();
    h.update(&f[0..4]);
    h.update(&f[8..]);
    let crc = h.finalize();
    f[4..8].copy_from_slice(&crc.to_le_bytes());
    f
}

fn cursor(seq: u64) -> Vec<u8> {
    let mut d = b"EVRCUR01".to_vec();
    d.extend_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&d);
    d.extend_from_slice(&crc.to_le_bytes());
    d
}

/// Opens the log, appends one record and checks both destinations read it.
fn open_append_read(dir: &std::path::Path) -> (u64, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (log, report) = Log::open(LogConfig::new(dir, &["posthog", "mixpanel"])).unwrap();
    let fresh = Bytes::from_static(b"fresh");
    let range = rt.block_on(log.append(vec![fresh.clone()])).unwrap();
    assert_eq!(range.first, report.next_seq);
    for dest in ["posthog", "mixpanel"] {
        let mut r = log.reader(dest).unwrap();
        let mut all = Vec::new();
        loop {
            let b = r.try_read_batch(100, 1 << 20).unwrap();
            if b.is_empty() {
                break;
            }
            all.extend(b);
        }
        assert_eq!(all.last(), Some(&(range.first, fresh.clone())), "{dest}");
    }
    rt.block_on(log.close()).unwrap();
    (report.next_seq, range.first)
}

/// Found by fuzzing: a file named like the segment of sequence number u64::MAX made the log
/// number the next record u64::MAX, and the writer thread panicked on `next_seq + 1`
/// (overflow; a release build would have wrapped to 0 and written sequence numbers
/// backwards). Such a name is now an unknown file.
#[test]
fn segment_named_u64_max_is_not_a_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("buffer");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join(format!("{:020}.seg", 0)), frame(0, b"zero")).unwrap();
    std::fs::write(
        dir.join(format!("{:020}.seg", u64::MAX)),
        frame(u64::MAX, b"max"),
    )
    .unwrap();
    let (next, first) = open_append_read(&dir);
    assert_eq!((next, first), (1, 1));
    let report = router_sinks::buffer::inspect(&dir).unwrap();
    assert!(
        report
            .garbage_files
            .iter()
            .any(|g| g == &format!("{:020}.seg", u64::MAX)),
        "{:?}",
        report.garbage_files
    );
}

/// Found by fuzzing: a cursor at u64::MAX (valid CRC) became `next_seq`, with the same
/// overflow. Such a cursor is now corrupt: the destination restarts from the oldest record
/// (at-least-once), and numbering continues after the data.
#[test]
fn cursor_at_u64_max_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("buffer");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{:020}.seg", 0)),
        [frame(0, b"a"), frame(1, b"b")].concat(),
    )
    .unwrap();
    std::fs::write(dir.join("posthog.cursor"), cursor(u64::MAX)).unwrap();
    let (next, first) = open_append_read(&dir);
    assert_eq!((next, first), (2, 2));
}

/// Found by fuzzing: when an earlier segment held higher sequence numbers than the last
/// segment's end (here segment 0 holds a record 8 after a corrupt region, segment 7 ends at
/// 8), the log numbered new records from the last segment's end and gave a fresh record the
/// number 8 a second time; readers, already past 8, never returned it. Numbering now
/// continues after the highest record of any segment.
#[test]
fn new_records_are_numbered_past_every_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("buffer");
    std::fs::create_dir(&dir).unwrap();
    // A frame numbered 8 at the start of segment 0 is not where 0 is expected (corrupt);
    // after its 226 bytes, 8 more records could have been lost, so the next frame 8 is
    // accepted.
    let seg0 = [frame(8, &[b'x'; 200]), frame(8, b"eight")].concat();
    std::fs::write(dir.join(format!("{:020}.seg", 0)), seg0).unwrap();
    std::fs::write(dir.join(format!("{:020}.seg", 7)), frame(7, b"seven")).unwrap();
    let (next, first) = open_append_read(&dir);
    assert_eq!((next, first), (9, 9));
}
