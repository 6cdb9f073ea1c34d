//! The durable log's recovery, readers and `inspect` on arbitrary directory contents.
//!
//! The input builds a log directory (segment files of well-formed, corrupt, torn and raw
//! frames, cursor files, stray files; see `events_router_fuzz::log_input`). Then:
//!
//! 1. `inspect` (read-only) succeeds and its counts are plausible;
//! 2. `Log::open` succeeds (recovery copes with anything);
//! 3. every configured destination reads everything to the end: sequence numbers strictly
//!    increase, start at the destination's cursor, and every record returned is a frame with
//!    a valid CRC that was really in the files (checked against an independent decoder);
//! 4. a record appended after recovery gets `report.next_seq` and every destination reads it;
//! 5. after `close`, `inspect` and a second `Log::open` still succeed, and the second open
//!    finds nothing to cut.
//!
//! Hangs are caught by libFuzzer's `-timeout`.
#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use bytes::Bytes;
use events_router_fuzz::log_input::{self, DESTINATIONS};
use libfuzzer_sys::fuzz_target;
use router_sinks::buffer::{Log, LogConfig, SyncPolicy, inspect};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

fn scratch() -> tempfile::TempDir {
    // tmpfs when there is one: fsync is free there and the target runs much faster.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new().prefix("fuzz-log").tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().expect("temp dir")
}

fn config(dir: &std::path::Path) -> LogConfig {
    LogConfig {
        segment_max_bytes: 64 * 1024,
        max_total_bytes: 64 * 1024 * 1024,
        sync: SyncPolicy::Always,
        cursor_flush_interval_ms: 3_600_000,
        ..LogConfig::new(dir, &DESTINATIONS[..2])
    }
}

/// Reads everything `dest` has, in bounded batches.
fn drain(log: &Log, dest: &str, max_records: usize, max_bytes: usize) -> Vec<(u64, Bytes)> {
    let mut r = log
        .reader(dest)
        .expect("reader of a configured destination");
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        let batch = r
            .try_read_batch(max_records, max_bytes)
            .expect("reading a recovered log");
        if batch.is_empty() {
            return out;
        }
        assert!(batch.len() <= max_records.max(1), "batch over max_records");
        out.extend(batch);
    }
    panic!("reader of {dest} never reached the end");
}

fuzz_target!(|data: &[u8]| {
    let spec = log_input::parse(data);
    let tmp = scratch();
    let dir = tmp.path().join("buffer");
    std::fs::create_dir(&dir).expect("mkdir");
    let mut genuine: HashSet<(u64, Vec<u8>)> = HashSet::new();
    for (base, bytes) in &spec.segments {
        std::fs::write(dir.join(format!("{base:020}.seg")), bytes).expect("write segment");
        genuine.extend(log_input::valid_frames(bytes));
    }
    for c in &spec.cursors {
        std::fs::write(dir.join(format!("{}.cursor", c.dest)), &c.bytes).expect("write cursor");
    }
    for (name, body, is_dir) in &spec.strays {
        let p = dir.join(name);
        if p.exists() {
            continue;
        }
        if *is_dir {
            std::fs::create_dir(&p).expect("mkdir stray");
        } else {
            std::fs::write(&p, body).expect("write stray");
        }
    }
    // The cursors the log will start from (last write of each file wins).
    let mut start = [None::<u64>; 2];
    for c in &spec.cursors {
        if let Some(i) = DESTINATIONS[..2].iter().position(|d| *d == c.dest) {
            start[i] = read_cursor(&c.bytes);
        }
    }

    // 1. Read-only inspection.
    let before = inspect(&dir).expect("inspect of a readable directory");
    for s in &before.segments {
        assert!(
            s.records * 26 <= s.size_bytes,
            "more records than fit: {s:?}"
        );
    }
    assert_eq!(
        before.total_records,
        before.segments.iter().map(|s| s.records).sum::<u64>()
    );
    let _ = before.to_string();

    // 2. Recovery. The one refusal allowed: a directory squatting on the name of the segment
    // the log must create (an operator's doing; the error names the path).
    let squatted = spec
        .strays
        .iter()
        .any(|(name, _, is_dir)| *is_dir && name.ends_with(".seg"));
    let (log, report) = match Log::open(config(&dir)) {
        Ok(x) => x,
        Err(e) if squatted && e.to_string().contains("creating segment") => return,
        Err(e) => panic!("Log::open failed to recover the directory: {e:?}"),
    };

    // 3. Every destination reads to the end; everything it reads is genuine.
    for (i, dest) in DESTINATIONS[..2].iter().enumerate() {
        let got = drain(&log, dest, spec.max_records, spec.max_bytes);
        let mut prev: Option<u64> = None;
        for (seq, payload) in &got {
            assert!(
                prev.is_none_or(|p| *seq > p),
                "{dest}: seq {seq} after {prev:?}"
            );
            prev = Some(*seq);
            if let Some(c) = start[i] {
                assert!(*seq >= c, "{dest}: seq {seq} before its cursor {c}");
            }
            assert!(
                *seq < report.next_seq,
                "{dest}: seq {seq} at or past next_seq {}",
                report.next_seq
            );
            assert!(
                genuine.contains(&(*seq, payload.to_vec())),
                "{dest}: record {seq} ({} bytes) is not a valid frame of the input",
                payload.len()
            );
        }
    }

    // 4. Normal service after recovery: a new record gets next_seq and everyone reads it.
    let rt = runtime();
    let fresh = Bytes::from_static(b"{\"after\":\"recovery\"}");
    let range = rt
        .block_on(log.append(vec![fresh.clone()]))
        .expect("append after recovery");
    assert_eq!(range.first, report.next_seq, "first seq after recovery");
    for dest in &DESTINATIONS[..2] {
        let mut r = log.reader(dest).expect("reader");
        let mut found = false;
        for _ in 0..1_000_000 {
            let batch = r.try_read_batch(64, 1 << 20).expect("read after append");
            if batch.is_empty() {
                break;
            }
            if batch.iter().any(|(s, p)| *s == range.first && *p == fresh) {
                found = true;
                break;
            }
        }
        assert!(
            found,
            "{dest} never read the record appended after recovery"
        );
    }
    rt.block_on(log.close()).expect("close");
    drop(log);

    // 5. The repaired directory is stable.
    let after = inspect(&dir).expect("inspect after close");
    let _ = after.to_string();
    let (log2, report2) = Log::open(config(&dir)).expect("second open");
    assert_eq!(
        report2.truncated_bytes, 0,
        "second open cut bytes: {report2:?}"
    );
    assert!(
        report2.next_seq >= range.end(),
        "second open lost the fresh record"
    );
    rt.block_on(log2.close()).expect("close 2");
});

fn read_cursor(b: &[u8]) -> Option<u64> {
    if b.len() != 20 || &b[..8] != b"EVRCUR01" {
        return None;
    }
    let crc = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
    if crc32fast::hash(&b[..16]) != crc {
        return None;
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&b[8..16]);
    // Cursors past 2^62 are treated as corrupt (router-sinks `MAX_SEQ`).
    Some(u64::from_le_bytes(s)).filter(|c| *c <= 1 << 62)
}
