//! A real crash test: a child process (this test binary re-executed with an environment
//! variable that turns `crash_child` into the child) appends with many concurrent producers
//! and prints each record id once its append resolved; the parent SIGKILLs it at a random
//! moment, reopens the log and asserts that every printed id is there, intact and in order of
//! its producer. Several rounds on the same directory, so recovery after a kill is itself
//! followed by more appends and another kill. A consumer in the child reads and acknowledges
//! all records, lagging behind, so cursor flushes and
//! segment deletions also race with the kill; the parent checks every acknowledged append at
//! or past the persisted cursor.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use router_sinks::buffer::{Log, LogConfig, SyncPolicy};

const CHILD_DIR_ENV: &str = "ROUTER_BUFFER_CRASH_CHILD_DIR";
const CHILD_ROUND_ENV: &str = "ROUTER_BUFFER_CRASH_CHILD_ROUND";
const PRODUCERS: usize = 64;
const ROUNDS: u64 = 6;

fn config(dir: &Path) -> LogConfig {
    LogConfig {
        dir: dir.to_path_buf(),
        // Small segments so kills also land around rollovers.
        segment_max_bytes: 64 * 1024,
        max_total_bytes: 512 * 1024 * 1024,
        sync: SyncPolicy::Always,
        destinations: vec!["a".into()],
        cursor_flush_interval_ms: 50,
    }
}

/// The child: does nothing unless started by the parent test.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let round: u64 = std::env::var(CHILD_ROUND_ENV).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (log, _) = Log::open(config(Path::new(&dir))).unwrap();
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "READY").unwrap();
        }
        let mut tasks = Vec::new();
        // A slow consumer: reads, waits, acknowledges (cursor flushes every 50 ms delete
        // the segments it passed).
        let mut reader = log.reader("a").unwrap();
        tasks.push(tokio::spawn(async move {
            while let Ok(batch) = reader.read_batch(500, 1 << 20).await {
                tokio::time::sleep(Duration::from_millis(2)).await;
                reader.ack(batch.iter().map(|(s, _)| *s));
            }
        }));
        for p in 0..PRODUCERS {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut k = 0u64;
                while Instant::now() < deadline {
                    let n = 1 + (k % 3);
                    let ids: Vec<String> =
                        (0..n).map(|j| format!("r{round}-p{p}-{}", k + j)).collect();
                    k += n;
                    let recs: Vec<Bytes> = ids
                        .iter()
                        .map(|i| Bytes::from(i.clone().into_bytes()))
                        .collect();
                    let range = log.append(recs).await.unwrap();
                    let mut out = std::io::stdout().lock();
                    for (id, seq) in ids.iter().zip(range.seqs()) {
                        writeln!(out, "ACK {id} {seq}").unwrap();
                    }
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn parse_ack(line: &str) -> Option<(String, u64)> {
    let rest = line.strip_prefix("ACK ")?;
    let (id, seq) = rest.split_once(' ')?;
    Some((id.to_owned(), seq.parse().ok()?))
}

fn seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(42)
        | 1
}

#[test]
fn sigkill_never_loses_an_acknowledged_append() {
    if std::env::var(CHILD_DIR_ENV).is_ok() {
        return;
    }
    let started = Instant::now();
    // On the real disk (not tmpfs): this is about fsync.
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut x = seed();
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut truncated_rounds = 0;
    let mut max_cursor = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let lines = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    // A line cut by the kill has no newline: it was not fully printed.
                    Ok(_) if buf.last() == Some(&b'\n') => {
                        let _ =
                            tx.send(String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned());
                    }
                    Ok(_) => break,
                }
            }
        });
        let mut round_acks = Vec::new();
        // Wait for the child to be up and to have acknowledged something.
        let wait_until = Instant::now() + Duration::from_secs(20);
        while round_acks.len() < 50 && Instant::now() < wait_until {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                if let Some(a) = parse_ack(&l) {
                    round_acks.push(a);
                }
            }
        }
        assert!(
            !round_acks.is_empty(),
            "child made no progress in round {round}"
        );
        std::thread::sleep(Duration::from_millis(100 + rnd(400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        lines.join().unwrap();
        round_acks.extend(rx.try_iter().filter_map(|l| parse_ack(&l)));
        acked.extend(round_acks.iter().cloned());

        let (log, report) = Log::open(config(dir.path())).unwrap();
        assert_eq!(report.corrupt_records, 0, "{report:?}");
        if report.truncated_bytes > 0 {
            truncated_rounds += 1;
        }
        let mut reader = log.reader("a").unwrap();
        let cursor = reader.position();
        let mut on_disk: HashMap<String, u64> = HashMap::new();
        let mut last_per_producer: HashMap<String, u64> = HashMap::new();
        let mut last_seq = None;
        loop {
            let batch = reader.try_read_batch(4096, 8 << 20).unwrap();
            if batch.is_empty() {
                break;
            }
            for (seq, p) in batch {
                assert!(last_seq < Some(seq), "sequence numbers increase");
                last_seq = Some(seq);
                let id = String::from_utf8(p.to_vec()).unwrap();
                // Per producer, ids appear in the order they were appended.
                let (prod, k) = id.rsplit_once('-').unwrap();
                let k: u64 = k.parse().unwrap();
                if let Some(prev) = last_per_producer.insert(prod.to_owned(), k) {
                    assert!(prev < k, "{id} after {prod}-{prev}");
                }
                assert!(on_disk.insert(id, seq).is_none(), "duplicate record");
            }
        }
        // Every acknowledged append the consumer had not durably passed is there, with the
        // sequence number its append returned.
        let mut checked = 0;
        let missing: Vec<&(String, u64)> = acked
            .iter()
            .filter(|(_, seq)| *seq >= cursor)
            .inspect(|_| checked += 1)
            .filter(|(id, seq)| on_disk.get(id) != Some(seq))
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged ids lost, e.g. {:?}; recovery {report:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        println!(
            "round {round}: {} appends acknowledged this round, {} in total, {checked} past the cursor {cursor} checked, {} records on disk, {} segments, truncated {} bytes",
            round_acks.len(),
            acked.len(),
            on_disk.len(),
            report.segments,
            report.truncated_bytes
        );
        max_cursor = max_cursor.max(cursor);
        drop(reader);
        drop(log);
    }
    println!(
        "{ROUNDS} rounds, {} acknowledged ids all present, {truncated_rounds} rounds cut a torn tail, {:?}",
        acked.len(),
        started.elapsed()
    );
    assert!(
        max_cursor > 0,
        "the consumer's acknowledgements never became durable"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}
