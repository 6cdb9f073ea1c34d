//! Concurrency stress: many producers, two consumers acknowledging out of order, frequent
//! cursor flushes with retention and a cap small enough to answer `Full` now and then. Every
//! destination must read every accepted record exactly once, in sequence order, with its
//! bytes, and the log must shrink back once everything is acknowledged.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use router_sinks::buffer::{BufferError, Log, LogConfig, SyncPolicy};

const PRODUCERS: usize = 32;
const APPENDS_PER_PRODUCER: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_and_out_of_order_consumers_with_retention_and_backpressure() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        dir: dir.path().to_path_buf(),
        segment_max_bytes: 4096,
        max_total_bytes: 12 * 1024,
        sync: SyncPolicy::Always,
        destinations: vec!["posthog".into(), "mixpanel".into()],
        cursor_flush_interval_ms: 20,
    };
    let (log, _) = Log::open(config).unwrap();

    let mut consumers = Vec::new();
    for (i, dest) in ["posthog", "mixpanel"].into_iter().enumerate() {
        let mut reader = log.reader(dest).unwrap();
        consumers.push(tokio::spawn(async move {
            let mut seen: Vec<(u64, Bytes)> = Vec::new();
            let mut x = 0x9e37_79b9u64 + i as u64;
            loop {
                let batch = match reader.read_batch(64, 16 * 1024).await {
                    Ok(b) => b,
                    Err(BufferError::Closed) => break,
                    Err(e) => panic!("{e}"),
                };
                // Acknowledge in a scrambled order, in two halves.
                let mut seqs: Vec<u64> = batch.iter().map(|(s, _)| *s).collect();
                for j in (1..seqs.len()).rev() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    seqs.swap(j, (x % (j as u64 + 1)) as usize);
                }
                let half = seqs.len() / 2;
                reader.ack(seqs[half..].iter().copied());
                tokio::task::yield_now().await;
                reader.ack(seqs[..half].iter().copied());
                seen.extend(batch);
            }
            seen
        }));
    }

    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let log = log.clone();
        producers.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut full = 0u64;
            for k in 0..APPENDS_PER_PRODUCER {
                let payload = Bytes::from(format!("p{p}-{k}-{}", "x".repeat(k % 200)));
                loop {
                    match log.append(vec![payload.clone()]).await {
                        Ok(r) => {
                            accepted.push((r.first, payload));
                            break;
                        }
                        Err(BufferError::Full { .. }) => {
                            full += 1;
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            (accepted, full)
        }));
    }
    let mut accepted: HashMap<u64, Bytes> = HashMap::new();
    let mut full = 0;
    for p in producers {
        let (a, f) = p.await.unwrap();
        full += f;
        for (s, b) in a {
            assert!(
                accepted.insert(s, b).is_none(),
                "sequence number given twice"
            );
        }
    }
    // Let the consumers catch up, then close (they end with `Closed`).
    let total = (PRODUCERS * APPENDS_PER_PRODUCER) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while log
        .metrics()
        .destinations
        .iter()
        .any(|d| d.acked_seq < total)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            log.metrics()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    log.flush_cursors().await.unwrap();
    let m = log.metrics();
    assert!(m.segments <= 2, "retention left {} segments", m.segments);
    assert!(m.segments_deleted > 0);
    log.close().await.unwrap();

    for c in consumers {
        let seen = c.await.unwrap();
        assert_eq!(seen.len(), accepted.len());
        for w in seen.windows(2) {
            assert!(w[0].0 < w[1].0, "order");
        }
        for (s, b) in &seen {
            assert_eq!(accepted.get(s), Some(b), "payload of {s}");
        }
    }
    println!(
        "{} records, {} Full answers, {} segments deleted",
        accepted.len(),
        full,
        m.segments_deleted
    );
    assert!(
        full > 0,
        "the cap was never reached: backpressure not exercised"
    );
}
