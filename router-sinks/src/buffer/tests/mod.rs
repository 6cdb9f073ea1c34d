//! Unit tests of the buffer that need its internals (crash simulation).

mod model;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use super::*;

/// A temporary directory on tmpfs when there is one (fsync is free there, so the tests that
/// sync a lot stay fast), else in the default temp dir.
pub(crate) fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

pub(crate) fn small_config(dir: &Path) -> LogConfig {
    LogConfig {
        dir: dir.to_path_buf(),
        segment_max_bytes: 512,
        max_total_bytes: 64 * 1024,
        sync: SyncPolicy::Always,
        destinations: vec!["a".into(), "b".into()],
        cursor_flush_interval_ms: 3_600_000,
    }
}

fn recs(prefix: &str, n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{prefix}-{i}")))
        .collect()
}

fn payloads(batch: &[(u64, Bytes)]) -> Vec<String> {
    batch
        .iter()
        .map(|(_, b)| String::from_utf8(b.to_vec()).unwrap())
        .collect()
}

#[test]
fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync + Clone>() {}
    fn send<T: Send>() {}
    send_sync::<Log>();
    send::<Reader>();
    send::<BufferError>();
}

#[tokio::test]
async fn append_read_ack_reopen() {
    let dir = fast_tempdir();
    let (log, report) = Log::open(small_config(dir.path())).unwrap();
    assert!(report.is_clean());
    assert_eq!(report.next_seq, 0);
    let r = log.append(recs("x", 50)).await.unwrap();
    assert_eq!(
        r,
        RecordRange {
            first: 0,
            count: 50
        }
    );
    let r2 = log.append(recs("y", 3)).await.unwrap();
    assert_eq!(r2.first, 50);
    let m = log.metrics();
    assert!(m.segments > 1, "rolled over: {m:?}");
    assert_eq!(m.records_appended, 53);

    let mut a = log.reader("a").unwrap();
    let batch = a.try_read_batch(10, usize::MAX).unwrap();
    assert_eq!(batch.len(), 10);
    assert_eq!(batch[0].0, 0);
    assert_eq!(payloads(&batch)[9], "x-9");
    // Out of order acks: the prefix only moves once 0..3 are all in.
    a.ack([2, 1]);
    assert_eq!(log.metrics().destinations[0].acked_seq, 0);
    a.ack([0]);
    assert_eq!(log.metrics().destinations[0].acked_seq, 3);
    let rest = a.read_batch(1000, usize::MAX).await.unwrap();
    assert_eq!(rest.len(), 43);
    assert_eq!(payloads(&rest)[42], "y-2");
    log.ack_range("a", 3..40).unwrap();
    log.close().await.unwrap();
    assert!(matches!(
        log.append(recs("z", 1)).await,
        Err(BufferError::Closed)
    ));
    log.close().await.unwrap();
    assert!(matches!(
        log.flush_cursors().await,
        Err(BufferError::Closed)
    ));

    let (log, report) = Log::open(small_config(dir.path())).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.records, 53);
    assert_eq!(report.next_seq, 53);
    let mut a = log.reader("a").unwrap();
    assert_eq!(a.position(), 40);
    let batch = a.try_read_batch(1000, usize::MAX).unwrap();
    assert_eq!(batch.first().unwrap().0, 40);
    let mut b = log.reader("b").unwrap();
    assert_eq!(b.try_read_batch(1000, usize::MAX).unwrap().len(), 53);
    assert!(matches!(
        log.reader("nope"),
        Err(BufferError::UnknownDestination(_))
    ));
    log.close().await.unwrap();
}

#[tokio::test]
async fn max_bytes_limits_a_batch_but_returns_at_least_one() {
    let dir = fast_tempdir();
    let (log, _) = Log::open(small_config(dir.path())).unwrap();
    log.append(recs("abcdefgh", 20)).await.unwrap();
    let mut a = log.reader("a").unwrap();
    let b = a.try_read_batch(100, 1).unwrap();
    assert_eq!(b.len(), 1);
    let b = a.try_read_batch(100, 25).unwrap();
    assert_eq!(b.len(), 3);
    assert_eq!(b[0].0, 1);
    log.close().await.unwrap();
}

#[tokio::test]
async fn retention_deletes_segments_only_after_every_cursor_passed_and_synced() {
    let dir = fast_tempdir();
    let (log, _) = Log::open(small_config(dir.path())).unwrap();
    for i in 0..10 {
        log.append(recs(&format!("batch{i}"), 10)).await.unwrap();
    }
    let before = log.metrics();
    assert!(before.segments >= 5, "{before:?}");
    log.ack_range("a", 0..100).unwrap();
    log.flush_cursors().await.unwrap();
    assert_eq!(log.metrics().segments, before.segments, "b has not acked");
    log.ack_range("b", 0..60).unwrap();
    assert_eq!(log.metrics().segments, before.segments, "not flushed yet");
    log.flush_cursors().await.unwrap();
    let after = log.metrics();
    assert!(after.segments < before.segments);
    assert!(after.bytes_on_disk < before.bytes_on_disk);
    // Everything b has not acked is still readable.
    let mut b = log.reader("b").unwrap();
    let rest = b.try_read_batch(1000, usize::MAX).unwrap();
    assert_eq!(rest.first().unwrap().0, 60);
    assert_eq!(rest.len(), 40);
    log.close().await.unwrap();
}

#[tokio::test]
async fn full_fails_fast_and_recovers_after_acks() {
    let dir = fast_tempdir();
    let mut c = small_config(dir.path());
    c.max_total_bytes = 2048;
    let (log, _) = Log::open(c).unwrap();
    let mut appended = 0u64;
    let err = loop {
        match log.append(recs("0123456789", 4)).await {
            Ok(r) => appended += r.count,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, BufferError::Full { .. }), "{err}");
    assert!(err.is_retriable());
    let m = log.metrics();
    assert!(m.bytes_on_disk <= 2048);
    assert_eq!(m.records_appended, appended);
    log.ack_range("a", 0..appended).unwrap();
    log.ack_range("b", 0..appended).unwrap();
    log.flush_cursors().await.unwrap();
    log.append(recs("after", 4)).await.unwrap();
    log.close().await.unwrap();
}

#[tokio::test]
async fn read_batch_waits_for_new_records_and_ends_on_close() {
    let dir = fast_tempdir();
    let (log, _) = Log::open(small_config(dir.path())).unwrap();
    let mut a = log.reader("a").unwrap();
    let waiter = tokio::spawn(async move {
        let first = a.read_batch(10, usize::MAX).await.unwrap();
        let second = a.read_batch(10, usize::MAX).await;
        (first, second)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.append(recs("late", 2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.close().await.unwrap();
    let (first, second) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(payloads(&first), vec!["late-0", "late-1"]);
    assert!(matches!(second, Err(BufferError::Closed)));
}

#[tokio::test]
async fn second_writer_is_refused() {
    let dir = fast_tempdir();
    let (log, _) = Log::open(small_config(dir.path())).unwrap();
    assert!(matches!(
        Log::open(small_config(dir.path())),
        Err(BufferError::Locked(_))
    ));
    log.close().await.unwrap();
    let (log, _) = Log::open(small_config(dir.path())).unwrap();
    drop(log);
    // Dropping the last handle also releases the lock and flushes.
    let (_log, _) = Log::open(small_config(dir.path())).unwrap();
}

#[tokio::test]
async fn interval_policy_only_shows_synced_records_and_crash_loses_only_unsynced() {
    let dir = fast_tempdir();
    let mut c = small_config(dir.path());
    c.sync = SyncPolicy::Interval(Duration::from_secs(3600));
    c.segment_max_bytes = 16 * 1024;
    let (log, _) = Log::open(c.clone()).unwrap();
    log.append(recs("synced", 5)).await.unwrap();
    log.sync().await.unwrap();
    log.append(recs("unsynced", 5)).await.unwrap();
    let mut a = log.reader("a").unwrap();
    assert_eq!(a.try_read_batch(100, usize::MAX).unwrap().len(), 5);
    // Keep 40 bytes of the unsynced write: one whole frame ("unsynced-0" is 26 + 10 bytes)
    // and 4 bytes of the next one, a torn frame that open cuts.
    log.crash(40, false);
    let (log, report) = Log::open(c).unwrap();
    assert_eq!(report.records, 6);
    assert_eq!(report.truncated_bytes, 4);
    assert_eq!(report.next_seq, 6);
    let mut a = log.reader("a").unwrap();
    assert_eq!(a.try_read_batch(100, usize::MAX).unwrap().len(), 6);
    log.close().await.unwrap();
}

#[tokio::test]
async fn metrics_report_backlog_age_and_fsyncs() {
    let dir = fast_tempdir();
    let (log, _) = Log::open(small_config(dir.path())).unwrap();
    assert!(log.metrics().destinations[0].oldest_unacked_age.is_none());
    log.append(recs("m", 3)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let m = log.metrics();
    assert!(m.fsyncs >= 1);
    assert!(m.fsync_duration_total >= m.fsync_duration_last);
    assert_eq!(m.destinations[0].backlog_records, 3);
    assert!(m.destinations[0].oldest_unacked_age.unwrap() >= Duration::from_millis(20));
    log.ack_range("a", 0..3).unwrap();
    let m = log.metrics();
    assert_eq!(m.destinations[0].backlog_records, 0);
    assert!(m.destinations[0].oldest_unacked_age.is_none());
    log.close().await.unwrap();
}

#[test]
fn record_too_large_is_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = fast_tempdir();
    let (log, _) = Log::open(small_config(dir.path())).unwrap();
    let big = Bytes::from(vec![0u8; 600]);
    let err = rt.block_on(log.append(vec![big])).unwrap_err();
    assert!(
        matches!(err, BufferError::RecordTooLarge { limit: 486, .. }),
        "{err}"
    );
}
