//! SIGTERM during load (RELIABILITY.md §E10): clients keep posting while the router is told to
//! stop, and a few requests are caught half-sent (head and part of the body in, the rest after
//! the signal). Every request answered 2xx must be delivered (during the drain or after the
//! next start); requests in flight finish (200) or are refused with 503; nothing else is
//! answered; the router exits 0 within its grace budget.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    Dests, FAST_DELIVERY, Ledger, Outcome, Rng, Router, assert_conserved, batch, check_delivery,
    delivered_ids, event, http_client, new_id, wait_delivered, write_config,
};
use perf::mock::{MockConfig, MockDestinations};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 4;
const SLOW: usize = 3;

/// Reads until the server closes the connection (or 15 s).
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_loses_no_acknowledged_event() {
    let mut rng = Rng::from_env("chaos_sigterm");
    let mock = MockDestinations::start(MockConfig::default())
        .await
        .unwrap();
    // Slow destinations: delivery requests are in flight when the signal arrives.
    mock.set_latency(Duration::from_millis(100));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        &format!("{FAST_DELIVERY}\n[server]\nshutdown_grace_ms = 5000\n"),
    );
    let router = Router::builder(&data).mock(&mock).config(&config).start();
    let ledger = Arc::new(Ledger::new());
    let counter = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (ledger, counter, stop) = (ledger.clone(), counter.clone(), stop.clone());
        let url = router.url.clone();
        let mut rng = Rng::new(rng.next_u64() ^ c as u64);
        clients.push(tokio::spawn(async move {
            let client = http_client();
            // After the signal a kept-alive connection gets 503 with `connection: close`,
            // and the next connection is refused: the client stops at the first no-answer.
            while !stop.load(Ordering::Relaxed) {
                let n = rng.range(1, 10) as usize;
                let first = counter.fetch_add(n as u64, Ordering::Relaxed);
                let events = batch(first, n, 100);
                if ledger.post(&client, &url, &events, false).await == Outcome::NoAnswer {
                    return;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;

    // Requests caught half-sent by the signal.
    let mut slow = Vec::new();
    for i in 0..SLOW {
        let id = new_id();
        let (v, d) = event(&id, 1000 + i as u64, 0);
        let body = v.to_string();
        let (head, tail) = body.split_at(body.len() / 2);
        let mut s = TcpStream::connect(router.addr).await.unwrap();
        s.write_all(
            format!(
                "POST /collect HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{head}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        ledger.sent(&id, d);
        slow.push((s, id, d, tail.to_owned()));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let acked_before = ledger.acked_count();
    let signalled = Instant::now();
    router.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut slow_outcomes = Vec::new();
    for (mut s, id, d, tail) in slow {
        let _ = s.write_all(tail.as_bytes()).await;
        let resp = read_to_close(&mut s).await;
        let status = resp.get(9..12).unwrap_or("").to_owned();
        assert!(
            status == "200" || status == "503",
            "a request in flight at SIGTERM finishes or gets 503, never a cut: {resp:?}"
        );
        if status == "200" {
            ledger.ack(&id, d);
        }
        slow_outcomes.push(status);
    }
    let (code, lines) = router.wait_exit(Duration::from_secs(20));
    let exit_took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(20), c)
            .await
            .expect("a client did not stop")
            .unwrap();
    }
    assert_eq!(code, Some(0), "exit code after SIGTERM: {lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("SIGTERM received")),
        "{lines:?}"
    );
    let outcomes = ledger.outcomes();
    for o in outcomes.keys() {
        assert!(
            matches!(
                o,
                Outcome::Status(200) | Outcome::Status(503) | Outcome::NoAnswer
            ),
            "only 200, 503 or a refused connection: {outcomes:?}"
        );
    }
    let before_restart = check_delivery(&mock, &ledger);

    // Whatever was not delivered during the drain is delivered after the next start.
    mock.set_latency(Duration::ZERO);
    let router = Router::builder(&data).mock(&mock).config(&config).start();
    let d = wait_delivered(&mock, &ledger, Duration::from_secs(30)).await;
    let delivered = delivered_ids(&mock);
    let unanswered = ledger.unanswered();
    let unanswered_delivered = unanswered
        .iter()
        .filter(|id| delivered.contains(*id))
        .count();
    println!(
        "chaos_sigterm: {} requests {outcomes:?}; half-sent requests {slow_outcomes:?}; acked {} ({} before the signal); exit after {} ms; undelivered at exit {} (delivered after restart); ids of unanswered requests {} ({unanswered_delivered} of them delivered anyway)",
        outcomes.values().sum::<u64>(),
        ledger.acked_count(),
        acked_before,
        exit_took.as_millis(),
        before_restart.missing.len(),
        unanswered.len()
    );
    println!("chaos_sigterm: {}", d.figures());
    assert_conserved(&d);
    assert_eq!(d.foreign, 0, "delivered ids that were never posted");
    assert!(ledger.acked_count() > 50, "too little load");
    // A fresh event after the restart.
    let fresh = vec![{
        let id = new_id();
        let (v, _) = event(&id, 2, 0);
        (id, v, Dests::Both)
    }];
    assert_eq!(
        ledger
            .post(&http_client(), &router.url, &fresh, false)
            .await,
        Outcome::Status(200)
    );
    assert_conserved(&wait_delivered(&mock, &ledger, Duration::from_secs(20)).await);
    let (code, _) = router.terminate();
    assert_eq!(code, Some(0));
    mock.shutdown().await;
}
