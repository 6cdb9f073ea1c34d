//! The harness against a stand-in router written here (no router binary needed): it checks
//! the harness itself — the load, the id matching, the loss and duplicate accounting and the
//! report — including that a router which drops or repeats events is caught.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use perf::load::{Mix, Options, Report, run};
use perf::mock::config::{DEFAULT_MIXPANEL_TOKEN, DEFAULT_POSTHOG_API_KEY};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What the stand-in does wrong on purpose.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    /// Never deliver every n-th Mixpanel-bound event (0: none).
    drop_mixpanel_every: u64,
    /// Deliver every n-th PostHog-bound event twice (0: none).
    repeat_posthog_every: u64,
}

fn free_addr() -> SocketAddr {
    let l = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    l.local_addr().expect("addr")
}

fn has_utm(e: &Value) -> bool {
    e.pointer("/properties/utm_source").is_some()
        || e.pointer("/context/page/url")
            .and_then(Value::as_str)
            .is_some_and(|u| u.contains("utm_source="))
}

/// The default routing table, written again independently of `perf::load::events`.
fn route(e: &Value) -> (bool, bool) {
    if e["type"] == "identify" {
        return (true, true);
    }
    let name = e["event"].as_str().unwrap_or_default();
    let utm = has_utm(e);
    let mut ph = utm || matches!(name, "Session Start" | "Session End");
    let mut mp =
        matches!(name, "Sign Up" | "Page View" | "Request Demo") || (name == "Purchase" && !utm);
    if !ph && !mp {
        mp = true;
    }
    if name == "Purchase" && utm {
        ph = true;
    }
    (ph, mp)
}

struct Fake {
    tx_ph: mpsc::UnboundedSender<Value>,
    tx_mp: mpsc::UnboundedSender<Value>,
    seen_ph: AtomicU64,
    seen_mp: AtomicU64,
    faults: Faults,
}

async fn collect(
    fake: Arc<Fake>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.uri().path() == "/ready" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok"))));
    }
    let body = req.into_body().collect().await?.to_bytes();
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let events = match value {
        Value::Array(a) => a,
        Value::Object(_) => vec![value],
        _ => Vec::new(),
    };
    for e in &events {
        let id = e["messageId"].as_str().unwrap_or_default().to_owned();
        let user = e["userId"]
            .as_str()
            .or_else(|| e["anonymousId"].as_str())
            .unwrap_or("someone")
            .to_owned();
        let (ph, mp) = route(e);
        if ph {
            let n = fake.seen_ph.fetch_add(1, Ordering::Relaxed) + 1;
            let record =
                json!({"event": "perf", "distinct_id": user, "uuid": id, "properties": {}});
            let _ = fake.tx_ph.send(record.clone());
            if fake.faults.repeat_posthog_every > 0 && n % fake.faults.repeat_posthog_every == 0 {
                let _ = fake.tx_ph.send(record);
            }
        }
        if mp {
            let n = fake.seen_mp.fetch_add(1, Ordering::Relaxed) + 1;
            if fake.faults.drop_mixpanel_every > 0 && n % fake.faults.drop_mixpanel_every == 0 {
                continue;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let _ = fake.tx_mp.send(json!({"event": "perf", "properties": {
                "time": now, "distinct_id": user, "$insert_id": id}}));
        }
    }
    let answer = json!({"status": "ok", "accepted": events.len()}).to_string();
    Ok(Response::new(Full::new(Bytes::from(answer))))
}

/// Sends what arrives on `rx` in batches of up to 500 to `url` until the channel closes.
async fn deliver(mut rx: mpsc::UnboundedReceiver<Value>, posthog: bool, base: String) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let mut buf = Vec::new();
    while rx.recv_many(&mut buf, 500).await > 0 {
        let batch = std::mem::take(&mut buf);
        loop {
            let request = if posthog {
                client
                    .post(format!("{base}/batch/"))
                    .json(&json!({"api_key": DEFAULT_POSTHOG_API_KEY, "batch": batch}))
            } else {
                client
                    .post(format!("{base}/import?strict=1"))
                    .basic_auth(DEFAULT_MIXPANEL_TOKEN, Some(""))
                    .json(&batch)
            };
            match request.send().await {
                Ok(r) if r.status().is_success() => break,
                // Destinations down (backlog mode): try again, as the router would.
                Ok(r) if r.status().is_server_error() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(r) => panic!(
                    "mock refused the stand-in's batch: {} {:?}",
                    r.status(),
                    r.text().await
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// Starts the stand-in router; returns its base URL and the mock addresses it delivers to.
async fn start_fake(faults: Faults) -> (String, SocketAddr, SocketAddr) {
    let (ph_addr, mp_addr) = (free_addr(), free_addr());
    let (tx_ph, rx_ph) = mpsc::unbounded_channel();
    let (tx_mp, rx_mp) = mpsc::unbounded_channel();
    tokio::spawn(deliver(rx_ph, true, format!("http://{ph_addr}")));
    tokio::spawn(deliver(rx_mp, false, format!("http://{mp_addr}")));
    let fake = Arc::new(Fake {
        tx_ph,
        tx_mp,
        seen_ph: AtomicU64::new(0),
        seen_mp: AtomicU64::new(0),
        faults,
    });
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let fake = fake.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| collect(fake.clone(), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), ph_addr, mp_addr)
}

/// Runs the harness against a fresh stand-in; `customize` adjusts the options. A mock port
/// picked ahead (bound, then released) can be taken in between by another socket of a test
/// running in parallel: then it tries again with new ports.
async fn run_fake(faults: Faults, customize: impl Fn(Options) -> Options) -> Report {
    for attempt in 0.. {
        let (url, ph, mp) = start_fake(faults).await;
        match run(customize(options(url, ph, mp))).await {
            Ok(report) => return report,
            Err(perf::load::Error::Io(e))
                if e.kind() == std::io::ErrorKind::AddrInUse && attempt < 4 => {}
            Err(e) => panic!("run: {e}"),
        }
    }
    unreachable!()
}

fn options(target: String, ph: SocketAddr, mp: SocketAddr) -> Options {
    Options {
        target: Some(target),
        mock_posthog_listen: ph,
        mock_mixpanel_listen: mp,
        no_latency: true,
        workers: 8,
        verify_timeout: 20.0,
        quiet: true,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_stand_in_passes_in_both_modes() {
    for batch in [1, 50] {
        let report = run_fake(Faults::default(), |o| Options {
            events: Some(2000),
            batch,
            ..o
        })
        .await;
        println!("{}", report.table());
        assert!(report.passed(), "{}", report.table());
        assert_eq!(report.load.events_accepted, 2000);
        assert_eq!(report.load.requests, 2000u64.div_ceil(batch as u64));
        assert!(report.errors.is_empty());
        let ph = &report.delivery["posthog"];
        let mp = &report.delivery["mixpanel"];
        // 46% of the default mix goes to PostHog, 64% to Mixpanel (10% to both).
        assert!(
            (600..1000).contains(&ph.ids.expected),
            "{}",
            ph.ids.expected
        );
        assert!(
            (1200..1600).contains(&mp.ids.expected),
            "{}",
            mp.ids.expected
        );
        assert!(ph.ids.expected + mp.ids.expected > 2000);
        assert_eq!((ph.ids.unexpected, mp.ids.unexpected), (0, 0));
        assert!(ph.delivered_per_sec.is_some() && mp.complete_after_seconds.is_some());
        assert_eq!(report.latency_ms.count, report.load.requests_ok);
        assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.max >= report.latency_ms.p99);
        assert!(report.router.is_none());
        let json: Value = serde_json::to_value(&report).expect("json");
        assert_eq!(json["delivery"]["posthog"]["missing"], 0);
        assert_eq!(json["lost"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_and_repeated_events_are_caught() {
    let faults = Faults {
        drop_mixpanel_every: 100,
        repeat_posthog_every: 50,
    };
    let report = run_fake(faults, |o| Options {
        events: Some(3000),
        batch: 10,
        verify_timeout: 3.0,
        ..o
    })
    .await;
    assert!(!report.passed());
    let mp = &report.delivery["mixpanel"];
    let ph = &report.delivery["posthog"];
    assert_eq!(mp.ids.missing, mp.ids.expected / 100, "{}", report.table());
    assert_eq!(report.lost, mp.ids.missing);
    assert_eq!(mp.ids.missing_sample.len(), 10);
    assert_eq!(ph.ids.missing, 0);
    assert_eq!(ph.ids.duplicates, ph.ids.expected / 50);
    assert!(report.table().contains("FAIL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_at_a_fixed_rate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json_path = dir.path().join("report.json");
    let report = run_fake(Faults::default(), |o| Options {
        events: Some(1500),
        rate: Some(3000.0),
        mix: Mix::SingleDestination,
        json: Some(json_path.clone()),
        ..o
    })
    .await;
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("--json file"))
            .expect("JSON report");
    assert_eq!(written["mode"], "open-loop");
    assert_eq!(written["load"]["events_accepted"], 1500);
    assert!(written["latency_ms"]["p99"].as_f64().is_some());
    assert!(written["machine"]["cpus"].as_u64().is_some_and(|n| n > 0));
    assert!(report.passed(), "{}", report.table());
    assert_eq!(report.mode, "open-loop");
    // 1500 events at 3000/s: about half a second, not much less.
    assert!(report.load.seconds >= 0.45, "{}", report.table());
    assert!(report.load.seconds < 5.0, "{}", report.table());
    assert_eq!(report.delivery["posthog"].ids.expected, 0);
    assert_eq!(report.delivery["mixpanel"].ids.expected, 1500);
}

#[tokio::test]
async fn missing_router_binary_is_a_clear_error() {
    let error = run(Options {
        router: Some("/nonexistent/events-router".into()),
        quiet: true,
        ..Options::default()
    })
    .await
    .expect_err("no binary");
    let message = error.to_string();
    assert!(
        message.contains("cargo build --release -p router-bin"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_run_reports_sustained_delivery() {
    let report = run_fake(Faults::default(), |o| Options {
        duration: Some(4.2),
        rate: Some(2000.0),
        ..o
    })
    .await;
    assert!(report.passed(), "{}", report.table());
    let sent = report.load.events_sent;
    assert!((8000..=8600).contains(&sent), "{}", report.table());
    let s = report.sustained.as_ref().expect("sustained figures");
    assert!(s.window_seconds >= 1.5, "{s:?}");
    // 2000 events/s at 1.1 destinations each: about 2200 pairs/s accepted and delivered.
    assert!(
        (1500.0..3000.0).contains(&s.accepted_pairs_per_sec),
        "{s:?}"
    );
    assert!(
        (1500.0..3000.0).contains(&s.delivered_pairs_per_sec),
        "{s:?}"
    );
    assert!(s.backlog_max < 2000, "{s:?}");
    assert!(report.timeline.len() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_mode_holds_then_drains() {
    let report = run_fake(Faults::default(), |o| Options {
        events: Some(1000),
        batch: 50,
        backlog: true,
        backlog_hold: 0.3,
        ..o
    })
    .await;
    assert!(report.passed(), "{}", report.table());
    for d in report.delivery.values() {
        // Nothing could be delivered while the destinations answered 503.
        assert_eq!(d.backlog_at_load_end, d.ids.expected, "{}", report.table());
        assert!(d.requests_by_status.get(&503).is_some_and(|n| *n > 0));
    }
    let b = report.backlog.as_ref().expect("backlog figures");
    assert_eq!(b.events, 1000);
    let drain = b.drain_seconds.expect("drained");
    let first = b.first_delivery_after_seconds.expect("first delivery");
    assert!(first <= drain && drain < 10.0, "{b:?}");
    assert!(b.drain_per_sec.is_some() && b.drain_per_sec_after_first.is_some());
    assert!(report.table().contains("events held"));
}
