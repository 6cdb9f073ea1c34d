//! CI smoke of the load harness against the real router (the debug build at
//! `<workspace>/target/debug/events-router`, built here when missing): a few thousand events,
//! single and in batches of 50, with and without downstream latency; every accepted event must
//! reach every destination the routing table names, and the router must exit 0 on SIGTERM;
//! and a small backlog (destinations answering 503 during the load) must drain.
//! It checks the harness and the delivery guarantee, not the speed.

use perf::load::router::ensure_binary;
use perf::load::{Options, Report, run};

async fn smoke(events: u64, batch: usize, latency_ms: Option<u64>) -> Report {
    smoke_with(events, batch, latency_ms, false).await
}

async fn smoke_with(events: u64, batch: usize, latency_ms: Option<u64>, backlog: bool) -> Report {
    let binary = ensure_binary("debug").unwrap_or_else(|e| panic!("{e}"));
    let options = Options {
        router: Some(binary),
        events: Some(events),
        batch,
        workers: 16,
        no_latency: latency_ms.is_none(),
        latency_ms: latency_ms.unwrap_or(0),
        verify_timeout: 40.0,
        backlog,
        backlog_hold: 0.5,
        request_timeout: 20.0,
        quiet: true,
        ..Options::default()
    };
    let report = run(options)
        .await
        .unwrap_or_else(|e| panic!("harness: {e}"));
    println!("{}", report.table());
    assert!(report.verified);
    assert_eq!(report.lost, 0, "{}", report.table());
    assert!(report.passed(), "{}", report.table());
    assert_eq!(report.load.events_accepted, events, "{}", report.table());
    assert!(report.errors.is_empty(), "{}", report.table());
    for (name, d) in &report.delivery {
        assert!(d.ids.expected > 0, "{name}");
        assert_eq!(d.ids.unexpected, 0, "{name}: {}", report.table());
    }
    let router = report.router.as_ref().expect("router figures");
    assert!(router.peak_rss_mib > 0.0);
    assert!(router.data_bytes_load_end > 0);
    let exit = router.exit.as_ref().expect("exit");
    assert!(exit.clean, "router did not exit 0 on SIGTERM: {exit:?}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_events_without_latency() {
    smoke(3000, 1, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_50_without_latency() {
    smoke(5000, 50, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_events_with_latency() {
    smoke(2000, 1, Some(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_50_with_latency() {
    smoke(4000, 50, Some(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_with_destinations_down_drains() {
    let report = smoke_with(2000, 50, None, true).await;
    let b = report.backlog.as_ref().expect("backlog figures");
    assert_eq!(b.events, 2000);
    assert!(b.data_bytes_held > 0 && b.rss_held_mib.is_some(), "{b:?}");
    assert!(b.drain_seconds.is_some(), "{}", report.table());
}
