//! Conservation oracle under `kill -9` (RELIABILITY.md §E1): concurrent clients post single
//! events and small batches with unique UUIDv7 message ids to `events-router serve`; every id
//! answered 2xx becomes an obligation. The router is SIGKILLed at random moments and restarted
//! on the same data directory, some cycles with both mock destinations answering 503 so that a
//! backlog exists at the kill, some with slow destinations so that deliveries are in flight. Then the faults are cleared, the router drains, and every
//! obligation must have reached every destination its routing names (duplicates allowed,
//! counted, and identical in their identity fields); a fresh event after the last restart must
//! arrive too.
//!
//! `CHAOS_CYCLES` (default 12) and `CHAOS_SEED` reproduce or lengthen a run.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    FAST_DELIVERY, Ledger, Outcome, Rng, Router, assert_conserved, batch, check_event_routing,
    http_client, wait_delivered, write_config,
};
use perf::mock::{Destination, Fault, MockConfig, MockDestinations};

/// Clients posting at once.
const CLIENTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_repeated_sigkill() {
    check_event_routing();
    let cycles: usize = std::env::var("CHAOS_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let mut rng = Rng::from_env("chaos_kill");
    let mock = MockDestinations::start(MockConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Small segments and frequent cursor flushes: rotation, retention and cursor writes all
    // race with the kills; a kill between two cursor flushes replays what was delivered since.
    let config = write_config(
        dir.path(),
        &format!(
            "{FAST_DELIVERY}\n[buffer]\nsegment_max_bytes = 65536\ncursor_flush_interval_ms = 250\n"
        ),
    );
    let ledger = Arc::new(Ledger::new());
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut faulty_cycles = 0;
    let mut startup_max = Duration::ZERO;
    let mut early_kills = 0;
    let mut slow_cycles = 0;
    for cycle in 0..cycles {
        // Every third cycle the destinations are down: the kill hits a backlog.
        let faulty = cycle % 3 == 1;
        // Every third cycle the destinations are slow: deliveries are in flight at the kill.
        let slow = cycle % 3 == 0;
        slow_cycles += usize::from(slow);
        mock.set_latency(Duration::from_millis(if slow { 150 } else { 0 }));
        mock.clear_faults();
        if faulty {
            faulty_cycles += 1;
            mock.inject(Destination::Posthog, Fault::status(503).until_cleared());
            mock.inject(Destination::Mixpanel, Fault::status(503).until_cleared());
        }
        let router = Router::builder(&data).mock(&mock).config(&config).start();
        startup_max = startup_max.max(router.startup_time);
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let (ledger, counter, stop) = (ledger.clone(), counter.clone(), stop.clone());
            let url = router.url.clone();
            let mut rng = Rng::new(rng.next_u64() ^ c as u64);
            clients.push(tokio::spawn(async move {
                let client = http_client();
                while !stop.load(Ordering::Relaxed) {
                    // Half single events, half batches of 2..=20; some in a {"batch": ...}.
                    let n = if rng.range(0, 1) == 0 {
                        1
                    } else {
                        rng.range(2, 20) as usize
                    };
                    let first = counter.fetch_add(n as u64, Ordering::Relaxed);
                    let events = batch(first, n, rng.range(0, 200) as usize);
                    let envelope = n > 1 && rng.range(0, 3) == 0;
                    if ledger.post(&client, &url, &events, envelope).await == Outcome::NoAnswer {
                        // The router is gone: this cycle is over for this client.
                        return;
                    }
                }
            }));
        }
        let alive_ms = rng.range(100, 600);
        tokio::time::sleep(Duration::from_millis(alive_ms)).await;
        router.kill();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            tokio::time::timeout(Duration::from_secs(20), c)
                .await
                .expect("a client did not stop after the kill")
                .unwrap();
        }
        // After every third cycle, a kill during start-up (recovery, segment creation, cursor
        // writes), before the router listens.
        if cycle % 3 == 2 {
            let after = Duration::from_millis(rng.range(5, 60));
            match Router::builder(&data)
                .mock(&mock)
                .config(&config)
                .timeout(after)
                .try_start()
            {
                Ok(r) => r.kill(),
                Err(_) => early_kills += 1,
            }
        }
        println!(
            "cycle {cycle:>2}: {} for {alive_ms} ms, acked so far {}",
            if faulty {
                "destinations down"
            } else if slow {
                "destinations slow"
            } else {
                "destinations up  "
            },
            ledger.acked_count()
        );
    }

    // The eventually phase: no faults, one more start, a fresh event, everything drains.
    mock.clear_faults();
    mock.set_latency(Duration::ZERO);
    let router = Router::builder(&data).mock(&mock).config(&config).start();
    let client = http_client();
    let fresh = batch(counter.fetch_add(4, Ordering::Relaxed), 4, 0);
    assert_eq!(
        ledger.post(&client, &router.url, &fresh, false).await,
        Outcome::Status(200),
        "a fresh request after the last restart is accepted"
    );
    let drain_started = Instant::now();
    let d = wait_delivered(&mock, &ledger, Duration::from_secs(60)).await;
    let drain = drain_started.elapsed();
    let outcomes = ledger.outcomes();
    println!(
        "chaos_kill: {cycles} kill cycles ({faulty_cycles} with destinations down, {slow_cycles} slow) and {early_kills} kills during start-up, {} requests {outcomes:?}, slowest start {} ms, drain {} ms, total {} ms",
        outcomes.values().sum::<u64>(),
        startup_max.as_millis(),
        drain.as_millis(),
        started.elapsed().as_millis()
    );
    println!("chaos_kill: {}", d.figures());
    assert_conserved(&d);
    assert_eq!(d.foreign, 0, "delivered ids that were never posted");
    assert!(
        d.posthog_duplicates + d.mixpanel_duplicates > 0,
        "no duplicate was delivered: the kills never hit between a delivery and its cursor flush, so replay was not exercised"
    );
    let acked = ledger.acked_count();
    assert!(
        acked >= 100,
        "too little load to mean anything: {acked} acked"
    );
    for (id, _, _) in &fresh {
        assert!(
            !d.missing.iter().any(|(m, _)| m == id),
            "fresh event {id} delivered"
        );
    }
    // Every answer was a 200 or none at all (a kill); never a 5xx from a live router.
    for o in outcomes.keys() {
        assert!(
            matches!(o, Outcome::Status(200) | Outcome::NoAnswer),
            "unexpected outcome {o:?}: {outcomes:?}"
        );
    }
    let (code, _) = router.terminate();
    assert_eq!(code, Some(0));
    mock.shutdown().await;
}
