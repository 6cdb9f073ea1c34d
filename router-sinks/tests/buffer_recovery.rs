//! Known-corruption cases for the durable buffer: each builds a log with known records,
//! damages it on disk, and asserts what `Log::open` recovers (exact counts), that opening
//! finishes within a timeout, and what readers and `inspect` see afterwards.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use router_sinks::buffer::{FRAME_HEADER_LEN, Log, LogConfig, RecoveryReport, SyncPolicy, inspect};

/// Payload length of every test record; with the header a frame is 56 bytes.
const PAYLOAD: usize = 30;
const FRAME: u64 = (FRAME_HEADER_LEN + PAYLOAD) as u64;
/// Ten frames per segment.
const SEGMENT: u64 = 10 * FRAME;
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

fn config(dir: &Path) -> LogConfig {
    LogConfig {
        dir: dir.to_path_buf(),
        segment_max_bytes: SEGMENT,
        max_total_bytes: 1024 * 1024,
        sync: SyncPolicy::Always,
        destinations: vec!["a".into(), "b".into()],
        cursor_flush_interval_ms: 3_600_000,
    }
}

fn payload(i: u64) -> Bytes {
    let mut p = format!("rec-{i:06}").into_bytes();
    p.resize(PAYLOAD, b'.');
    Bytes::from(p)
}

fn seg_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

/// A log with `n` records, one append each (segments of ten: bases 0, 10, 20, ...).
async fn build(dir: &Path, n: u64) {
    let (log, _) = Log::open(config(dir)).unwrap();
    for i in 0..n {
        let r = log.append(vec![payload(i)]).await.unwrap();
        assert_eq!(r.first, i);
    }
    log.close().await.unwrap();
}

/// Opens on another thread and fails the test if that takes longer than `OPEN_TIMEOUT`.
fn open_within(dir: &Path) -> (Log, RecoveryReport) {
    let (tx, rx) = mpsc::channel();
    let c = config(dir);
    std::thread::spawn(move || {
        let _ = tx.send(Log::open(c));
    });
    rx.recv_timeout(OPEN_TIMEOUT)
        .expect("Log::open did not finish in time")
        .expect("Log::open failed")
}

/// Reads everything `dest` has, returning the sequence numbers (and checking payloads).
fn read_all(log: &Log, dest: &str) -> Vec<u64> {
    let mut r = log.reader(dest).unwrap();
    let mut seqs = Vec::new();
    loop {
        let batch = r.try_read_batch(7, usize::MAX).unwrap();
        if batch.is_empty() {
            break;
        }
        for (s, p) in batch {
            if s < 30 {
                assert_eq!(p, payload(s), "payload of {s}");
            }
            seqs.push(s);
        }
    }
    seqs
}

fn flip_bit(path: &Path, offset: u64, mask: u8) {
    let mut data = fs::read(path).unwrap();
    data[offset as usize] ^= mask;
    fs::write(path, data).unwrap();
}

fn without(range: std::ops::Range<u64>, skip: &[u64]) -> Vec<u64> {
    range.filter(|s| !skip.contains(s)).collect()
}

#[tokio::test]
async fn clean_log_reopens_clean() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 30).await;
    let (log, report) = open_within(dir.path());
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.records, 30);
    assert_eq!(read_all(&log, "a"), (0..30).collect::<Vec<_>>());
    log.close().await.unwrap();
}

#[tokio::test]
async fn flipped_payload_bit_skips_exactly_that_record() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 30).await;
    flip_bit(
        &seg_path(dir.path(), 0),
        5 * FRAME + FRAME_HEADER_LEN as u64 + 3,
        0x04,
    );
    let (log, report) = open_within(dir.path());
    assert_eq!(report.records, 29);
    assert_eq!(report.corrupt_records, 1);
    assert_eq!(report.corrupt_bytes, FRAME);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.next_seq, 30);
    assert_eq!(log.metrics().corrupt_records_skipped, 1);
    assert_eq!(read_all(&log, "a"), without(0..30, &[5]));
    // The skipped record does not block the cursor.
    log.ack_range("a", 0..30).unwrap();
    assert_eq!(log.metrics().destinations[0].acked_seq, 30);
    let ins = inspect(dir.path()).unwrap();
    assert_eq!(ins.corrupt_records, 1);
    assert_eq!(ins.total_records, 29);
    log.close().await.unwrap();
}

#[tokio::test]
async fn flipped_length_bit_resyncs_on_the_next_frame() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 30).await;
    // Length field of record 12 (third frame of the second segment).
    flip_bit(&seg_path(dir.path(), 10), 2 * FRAME + 1, 0x40);
    let (log, report) = open_within(dir.path());
    assert_eq!(report.records, 29);
    assert_eq!(report.corrupt_records, 1);
    assert_eq!(read_all(&log, "b"), without(0..30, &[12]));
    log.close().await.unwrap();
}

#[tokio::test]
async fn corrupt_last_record_of_a_sealed_segment_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 30).await;
    // Record 9 ends segment 0: no valid frame follows in that file, the next segment's
    // name says how many records are gone.
    flip_bit(&seg_path(dir.path(), 0), 9 * FRAME + 20, 0x01);
    let (log, report) = open_within(dir.path());
    assert_eq!(report.records, 29);
    assert_eq!(report.corrupt_records, 1);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(read_all(&log, "a"), without(0..30, &[9]));
    log.close().await.unwrap();
}

#[tokio::test]
async fn truncated_tail_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 30).await;
    let last = seg_path(dir.path(), 20);
    let f = fs::OpenOptions::new().write(true).open(&last).unwrap();
    f.set_len(SEGMENT - 20).unwrap();
    drop(f);
    let (log, report) = open_within(dir.path());
    assert_eq!(report.records, 29);
    assert_eq!(report.corrupt_records, 0);
    assert_eq!(report.truncated_bytes, FRAME - 20);
    assert_eq!(report.next_seq, 29);
    assert_eq!(fs::metadata(&last).unwrap().len(), 9 * FRAME);
    let r = log.append(vec![payload(29)]).await.unwrap();
    assert_eq!(r.first, 29);
    assert_eq!(read_all(&log, "a"), (0..30).collect::<Vec<_>>());
    log.close().await.unwrap();
}

#[tokio::test]
async fn zero_filled_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 25).await;
    let last = seg_path(dir.path(), 20);
    let mut data = fs::read(&last).unwrap();
    data.extend_from_slice(&[0u8; 4096]);
    fs::write(&last, data).unwrap();
    let (log, report) = open_within(dir.path());
    assert_eq!(report.records, 25);
    assert_eq!(report.corrupt_records, 0);
    assert_eq!(report.truncated_bytes, 4096);
    assert_eq!(report.next_seq, 25);
    assert_eq!(read_all(&log, "a"), (0..25).collect::<Vec<_>>());
    log.close().await.unwrap();
}

#[tokio::test]
async fn torn_frame_in_the_middle_of_a_sealed_segment() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 30).await;
    // Segment 0 cut in the middle of record 5: records 5..10 are gone.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(seg_path(dir.path(), 0))
        .unwrap();
    f.set_len(5 * FRAME + 30).unwrap();
    drop(f);
    let (log, report) = open_within(dir.path());
    assert_eq!(report.records, 25);
    assert_eq!(report.corrupt_records, 5);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(read_all(&log, "a"), without(0..30, &[5, 6, 7, 8, 9]));
    log.close().await.unwrap();
}

#[tokio::test]
async fn garbage_files_are_ignored_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 30).await;
    fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    fs::write(dir.path().join("00000000000000000010.seg.bak"), b"old").unwrap();
    fs::write(dir.path().join("bad name!.cursor"), b"x").unwrap();
    fs::create_dir(dir.path().join("subdir")).unwrap();
    fs::write(dir.path().join("a.cursor.tmp"), b"half").unwrap();
    let (log, report) = open_within(dir.path());
    assert_eq!(report.records, 30);
    assert_eq!(
        report.garbage_files,
        vec![
            "00000000000000000010.seg.bak",
            "bad name!.cursor",
            "notes.txt",
            "subdir"
        ]
    );
    assert_eq!(report.removed_temp_files, 1);
    assert_eq!(report.corrupt_records + report.truncated_bytes, 0);
    assert_eq!(read_all(&log, "a"), (0..30).collect::<Vec<_>>());
    log.close().await.unwrap();
    assert!(
        dir.path().join("notes.txt").exists(),
        "never deletes what it does not own"
    );
}

#[tokio::test]
async fn garbage_file_named_like_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 30).await;
    let junk: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(seg_path(dir.path(), 100), &junk).unwrap();
    let (log, report) = open_within(dir.path());
    assert_eq!(report.records, 30);
    assert_eq!(report.truncated_bytes, 5000);
    assert_eq!(report.missing_records, 70);
    assert_eq!(report.next_seq, 100);
    let r = log.append(vec![Bytes::from_static(b"new")]).await.unwrap();
    assert_eq!(r.first, 100);
    let seqs = read_all(&log, "a");
    assert_eq!(seqs.len(), 31);
    assert_eq!(seqs[30], 100);
    log.close().await.unwrap();
}

#[tokio::test]
async fn missing_segment_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 30).await;
    fs::remove_file(seg_path(dir.path(), 10)).unwrap();
    let (log, report) = open_within(dir.path());
    assert_eq!(report.records, 20);
    assert_eq!(report.missing_records, 10);
    assert_eq!(report.next_seq, 30);
    let expect: Vec<u64> = (0..10).chain(20..30).collect();
    assert_eq!(read_all(&log, "a"), expect);
    log.ack_range("a", 0..10).unwrap();
    log.ack_range("a", 20..30).unwrap();
    assert_eq!(log.metrics().destinations[0].acked_seq, 30);
    let ins = inspect(dir.path()).unwrap();
    assert_eq!(ins.missing_records, 10);
    log.close().await.unwrap();
}

fn write_cursor_file(dir: &Path, dest: &str, next: u64) {
    let mut data = b"EVRCUR01".to_vec();
    data.extend_from_slice(&next.to_le_bytes());
    let crc = crc32fast::hash(&data);
    data.extend_from_slice(&crc.to_le_bytes());
    fs::write(dir.join(format!("{dest}.cursor")), data).unwrap();
}

#[tokio::test]
async fn cursor_ahead_of_the_data_renumbers_new_records_past_it() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 30).await;
    write_cursor_file(dir.path(), "a", 1000);
    let (log, report) = open_within(dir.path());
    assert_eq!(report.records, 30);
    assert_eq!(report.cursors_ahead, vec![("a".to_owned(), 1000)]);
    assert_eq!(report.next_seq, 1000);
    let r = log
        .append(vec![Bytes::from_static(b"after")])
        .await
        .unwrap();
    assert_eq!(
        r.first, 1000,
        "a new record must not hide behind a's cursor"
    );
    let mut a = log.reader("a").unwrap();
    let got = a.try_read_batch(10, usize::MAX).unwrap();
    assert_eq!(got, vec![(1000, Bytes::from_static(b"after"))]);
    let b = read_all(&log, "b");
    assert_eq!(b.len(), 31);
    assert_eq!(*b.last().unwrap(), 1000);
    log.close().await.unwrap();
}

#[tokio::test]
async fn corrupt_cursor_restarts_the_destination_from_the_oldest_record() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 30).await;
    fs::write(dir.path().join("a.cursor"), b"garbage garbage garbage").unwrap();
    let (log, report) = open_within(dir.path());
    assert_eq!(report.corrupt_cursors, vec!["a".to_owned()]);
    assert_eq!(read_all(&log, "a"), (0..30).collect::<Vec<_>>());
    log.close().await.unwrap();
}

#[tokio::test]
async fn acked_segments_are_deleted_at_open_and_cursors_survive() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 30).await;
    write_cursor_file(dir.path(), "a", 25);
    write_cursor_file(dir.path(), "b", 21);
    let (log, report) = open_within(dir.path());
    assert_eq!(report.deleted_segments, 2);
    assert_eq!(read_all(&log, "a"), (25..30).collect::<Vec<_>>());
    assert_eq!(read_all(&log, "b"), (21..30).collect::<Vec<_>>());
    log.close().await.unwrap();
}

/// Random damage (bit flips, cut files, garbage runs) never makes open hang, panic or
/// invent records.
#[tokio::test]
async fn random_damage_never_hangs_or_invents_records() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    for round in 0..25 {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), 30).await;
        for _ in 0..1 + rnd(4) {
            let seg = seg_path(dir.path(), 10 * rnd(3));
            let Ok(mut data) = fs::read(&seg) else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            match rnd(4) {
                0 => {
                    let i = rnd(data.len() as u64) as usize;
                    data[i] ^= 1 << rnd(8);
                }
                1 => data.truncate(rnd(data.len() as u64) as usize),
                2 => {
                    let i = rnd(data.len() as u64) as usize;
                    let n = (rnd(200) as usize).min(data.len() - i);
                    for b in &mut data[i..i + n] {
                        *b = rnd(256) as u8;
                    }
                }
                _ => {
                    let i = rnd(data.len() as u64) as usize;
                    data.splice(i..i, std::iter::repeat_n(0xEB, rnd(100) as usize));
                }
            }
            fs::write(&seg, data).unwrap();
        }
        let (log, report) = open_within(dir.path());
        let seqs = read_all(&log, "a");
        assert_eq!(
            seqs.len() as u64,
            report.records,
            "round {round}: {report:?}"
        );
        assert!(report.records <= 30);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        let ins = inspect(dir.path()).unwrap();
        assert_eq!(ins.total_records, report.records, "round {round}");
        log.close().await.unwrap();
    }
}

#[tokio::test]
async fn inspect_is_read_only_and_reports_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(config(dir.path())).unwrap();
    for i in 0..30 {
        log.append(vec![payload(i)]).await.unwrap();
    }
    log.ack_range("a", 0..12).unwrap();
    log.flush_cursors().await.unwrap();
    // While the log is open (no lock taken, nothing changed).
    let before: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), e.metadata().unwrap().len())
        })
        .collect();
    let ins = inspect(dir.path()).unwrap();
    assert_eq!(ins.total_records, 30);
    assert_eq!(ins.segments.len(), 3);
    let a = ins.destinations.iter().find(|d| d.name == "a").unwrap();
    assert_eq!(a.cursor, Some(12));
    assert_eq!(a.backlog_records, 18);
    assert_eq!(a.backlog_bytes, 18 * FRAME);
    assert!(a.oldest_unacked_age_ms.is_some());
    let b = ins.destinations.iter().find(|d| d.name == "b").unwrap();
    assert_eq!(b.backlog_records, 30);
    let table = ins.to_string();
    assert!(table.contains("DESTINATION"), "{table}");
    assert!(table.contains("00000000000000000010.seg"), "{table}");
    let json = serde_json::to_value(&ins).unwrap();
    assert_eq!(json["total_records"], 30);
    let after: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), e.metadata().unwrap().len())
        })
        .collect();
    assert_eq!(before.len(), after.len());
    log.close().await.unwrap();
}

#[test]
fn refuses_a_cap_far_beyond_the_free_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_total_bytes = u64::MAX / 2;
    let err = Log::open(c).unwrap_err();
    assert!(
        matches!(
            err,
            router_sinks::buffer::BufferError::InsufficientDisk { .. }
        ),
        "{err}"
    );
}
