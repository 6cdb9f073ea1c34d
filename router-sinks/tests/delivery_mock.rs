//! Delivery end to end: a real buffer log in a temporary directory, the delivery loops, and
//! the strict mock PostHog and Mixpanel servers (`perf::mock`) on 127.0.0.1 with injected
//! faults. Backoffs are milliseconds (config), so no test sleeps for long.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use perf::mock::config::{DEFAULT_MIXPANEL_TOKEN, DEFAULT_POSTHOG_API_KEY};
use perf::mock::{Destination, Endpoint, Fault, MockConfig, MockDestinations, MockHandle};
use router_core::map::{MixpanelSettings, PosthogSettings};
use router_core::{Event, Kind, Source, Timestamp};
use router_sinks::buffer::{Log, LogConfig};
use router_sinks::delivery::{
    Delivery, DeliveryConfig, DestinationSpec, Mapper, MixpanelDestination, OutboundRecord,
    Outcome, PosthogDestination, SendFuture, SendResult, Sink, outbox_path,
};
use router_sinks::dlq::{self, DeadLetter, DeadLetterKind};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

// === helpers ===

fn config() -> DeliveryConfig {
    DeliveryConfig {
        batch_max_events: 50,
        batch_max_bytes: 1_000_000,
        linger_ms: 5,
        concurrency: 2,
        request_timeout_ms: 2_000,
        connect_timeout_ms: 1_000,
        backoff_base_ms: 10,
        backoff_cap_ms: 50,
        retry_window_secs: 3600,
        pause_probe_ms: 50,
        pause_probe_max_ms: 200,
        max_pending_events: 1000,
        shutdown_grace_ms: 2_000,
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A message id that is a UUID, so it is also the PostHog `uuid` and the `$insert_id`.
fn msg_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn obj(v: Value) -> router_core::Object {
    v.as_object().cloned().unwrap_or_default()
}

/// Event `i`: a track by default; every 7th an identify, every 11th a group, every 13th a page.
fn event(i: usize) -> Event {
    let t = Timestamp::from_millis(now_ms() - 60_000 - i as i64).unwrap();
    let mut e = Event {
        message_id: msg_id(i),
        kind: Kind::Track,
        name: "Sign Up".into(),
        user_id: Some(format!("user-{i}")),
        anonymous_id: Some(format!("anon-{i}")),
        group_id: None,
        previous_id: None,
        timestamp: t,
        received_at: t,
        properties: obj(json!({"n": i, "plan": "pro", "price": 9.99})),
        traits: Default::default(),
        context: obj(json!({"ip": "203.0.113.7"})),
        integrations: Default::default(),
        source: Source::Collect,
    };
    if i % 7 == 3 {
        e.kind = Kind::Identify;
        e.name = "$identify".into();
        e.traits = obj(json!({"email": format!("u{i}@example.com"), "name": "Ann"}));
    } else if i % 11 == 5 {
        e.kind = Kind::Group;
        e.name = "$groupidentify".into();
        e.group_id = Some(format!("org-{i}"));
        e.traits = obj(json!({"name": "Acme", "employees": 12}));
    } else if i % 13 == 4 {
        e.kind = Kind::Page;
        e.name = "Page View".into();
        e.context = obj(json!({"page": {"url": "https://example.com/a?x=1", "path": "/a"}}));
    }
    e
}

/// Track events only (one `/import` record, one PostHog event each).
fn track(i: usize) -> Event {
    let mut e = event(0);
    e.message_id = msg_id(i);
    e.user_id = Some(format!("user-{i}"));
    e.properties = obj(json!({"n": i}));
    e
}

async fn append(log: &Log, events: &[Event], dests: &[&str]) {
    let recs: Vec<Bytes> = events
        .iter()
        .map(|e| Bytes::from(router_core::stored::encode(e, dests)))
        .collect();
    log.append(recs).await.unwrap();
}

struct Harness {
    tmp: tempfile::TempDir,
    log: Log,
    mock: MockHandle,
}

impl Harness {
    async fn new(dests: &[&str]) -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let mut lc = LogConfig::new(tmp.path().join("buffer"), dests);
        lc.cursor_flush_interval_ms = 100;
        let (log, _) = Log::open(lc).unwrap();
        let mock = MockDestinations::start(MockConfig::default())
            .await
            .unwrap();
        Harness { tmp, log, mock }
    }

    fn data(&self) -> &Path {
        self.tmp.path()
    }

    fn posthog(&self) -> DestinationSpec {
        DestinationSpec::posthog(
            "posthog",
            PosthogDestination {
                api_key: Some(DEFAULT_POSTHOG_API_KEY.into()),
                host: self.mock.posthog_url(),
            },
            PosthogSettings::default(),
        )
    }

    fn mixpanel(&self) -> DestinationSpec {
        DestinationSpec::mixpanel(
            "mixpanel",
            MixpanelDestination {
                token: Some(DEFAULT_MIXPANEL_TOKEN.into()),
                host: self.mock.mixpanel_url(),
                ..MixpanelDestination::default()
            },
            MixpanelSettings::default(),
        )
    }

    fn start(&self, config: &DeliveryConfig, specs: Vec<DestinationSpec>) -> Delivery {
        Delivery::start(&self.log, self.data(), config, specs).unwrap()
    }

    /// Backlog of a destination in the buffer (records read and not acknowledged count).
    fn backlog(&self, dest: &str) -> u64 {
        self.log
            .metrics()
            .destinations
            .iter()
            .find(|d| d.name == dest)
            .map_or(u64::MAX, |d| d.backlog_records)
    }

    async fn wait_acked(&self, dest: &str) {
        wait(|| self.backlog(dest) == 0, "everything acknowledged").await;
    }

    fn dead_letters(&self, dest: &str) -> Vec<DeadLetter> {
        read_jsonl(&dlq::dead_letter_path(self.data(), dest))
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect()
    }
}

async fn wait(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn uuids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["uuid"].as_str().unwrap().to_owned())
        .collect()
}

fn insert_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["properties"]["$insert_id"].as_str().unwrap().to_owned())
        .collect()
}

fn statuses(mock: &MockHandle, endpoint: Endpoint) -> Vec<u16> {
    mock.requests_to(endpoint)
        .iter()
        .map(|r| r.status)
        .collect()
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_503_then_succeeds() {
    let h = Harness::new(&["posthog"]).await;
    h.mock
        .inject(Destination::Posthog, Fault::status(503).times(2));
    let events: Vec<Event> = (0..20).map(track).collect();
    append(&h.log, &events, &["posthog"]).await;
    let d = h.start(&config(), vec![h.posthog()]);
    h.mock
        .wait_for_events(Destination::Posthog, 20, WAIT)
        .await
        .unwrap();
    h.wait_acked("posthog").await;
    let stats = h.mock.stats().posthog;
    assert_eq!(stats.requests_by_status.get(&503), Some(&2));
    assert_eq!((stats.unique_events, stats.duplicates), (20, 0));
    let m = d.metrics()[0].snapshot();
    assert_eq!(m.events_delivered, 20);
    assert!(m.events_retried >= 20, "{m:?}");
    assert_eq!(m.requests_retry, 2);
    assert_eq!(m.events_dead_lettered, 0);
    // The batch carries the project key, no sent_at and (recent events) no historical flag.
    let req = h.mock.requests_to(Endpoint::PosthogCapture).pop().unwrap();
    assert_eq!(
        req.envelope,
        Some(json!({"api_key": DEFAULT_POSTHOG_API_KEY}))
    );
    assert!(req.gzipped);
    d.shutdown().await.unwrap();
    assert!(h.dead_letters("posthog").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respects_retry_after() {
    let h = Harness::new(&["mixpanel"]).await;
    h.mock.inject(
        Destination::Mixpanel,
        Fault::status(429).retry_after_secs(1).times(1),
    );
    append(
        &h.log,
        &(0..5).map(track).collect::<Vec<_>>(),
        &["mixpanel"],
    )
    .await;
    let started = tokio::time::Instant::now();
    let d = h.start(&config(), vec![h.mixpanel()]);
    h.mock
        .wait_for_events(Destination::Mixpanel, 5, WAIT)
        .await
        .unwrap();
    let took = started.elapsed();
    // Backoff alone would retry within 50 ms; the destination asked for a second.
    assert!(took >= Duration::from_millis(950), "retried after {took:?}");
    assert_eq!(statuses(&h.mock, Endpoint::MixpanelImport), [429, 200]);
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_on_413_and_dead_letters_a_lone_oversize_record() {
    let h = Harness::new(&["posthog"]).await;
    h.mock
        .inject(Destination::Posthog, Fault::status(413).times(1));
    let events: Vec<Event> = (0..8).map(track).collect();
    append(&h.log, &events, &["posthog"]).await;
    let d = h.start(&config(), vec![h.posthog()]);
    h.mock
        .wait_for_events(Destination::Posthog, 8, WAIT)
        .await
        .unwrap();
    h.wait_acked("posthog").await;
    let reqs = h.mock.requests_to(Endpoint::PosthogCapture);
    let shape: Vec<(u16, usize)> = reqs.iter().map(|r| (r.status, r.accepted.len())).collect();
    assert_eq!(shape, [(413, 0), (200, 4), (200, 4)]);
    assert_eq!(
        uuids(&h.mock.posthog_events()),
        events
            .iter()
            .map(|e| e.message_id.clone())
            .collect::<Vec<_>>()
    );

    // A single event that still gets 413 is dead-lettered, not retried.
    h.mock
        .inject(Destination::Posthog, Fault::status(413).times(1));
    let big = track(100);
    append(&h.log, std::slice::from_ref(&big), &["posthog"]).await;
    wait(
        || d.metrics()[0].snapshot().events_dead_lettered == 1,
        "the dead letter",
    )
    .await;
    h.wait_acked("posthog").await;
    let dead = h.dead_letters("posthog");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].status, Some(413));
    assert_eq!(dead[0].kind, DeadLetterKind::Rejected);
    assert_eq!(dead[0].event.as_ref().unwrap(), &big);
    assert_eq!(h.mock.posthog_events().len(), 8);
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixpanel_partial_400_dead_letters_only_the_failed_records() {
    let h = Harness::new(&["mixpanel"]).await;
    h.mock
        .inject(Destination::Mixpanel, Fault::partial([1, 3]).times(1));
    let events: Vec<Event> = (0..6).map(track).collect();
    append(&h.log, &events, &["mixpanel"]).await;
    let d = h.start(&config(), vec![h.mixpanel()]);
    h.wait_acked("mixpanel").await;
    wait(
        || d.metrics()[0].snapshot().events_dead_lettered == 2,
        "two dead letters",
    )
    .await;
    let imported: BTreeSet<String> = insert_ids(&h.mock.mixpanel_imports()).into_iter().collect();
    let expected: BTreeSet<String> = [0, 2, 4, 5].iter().map(|&i| msg_id(i)).collect();
    assert_eq!(imported, expected);
    let dead = h.dead_letters("mixpanel");
    let dead_ids: BTreeSet<String> = dead
        .iter()
        .map(|l| l.event.as_ref().unwrap().message_id.clone())
        .collect();
    assert_eq!(dead_ids, [msg_id(1), msg_id(3)].into_iter().collect());
    for l in &dead {
        assert_eq!((l.kind, l.status), (DeadLetterKind::Rejected, Some(400)));
        assert!(l.reason.starts_with("failed record"), "{}", l.reason);
        assert!(l.body.as_deref().unwrap_or("").contains("insert_id"));
    }
    // Only one request: the partial answer is not resent.
    assert_eq!(statuses(&h.mock, Endpoint::MixpanelImport), [400]);
    let summary = dlq::list(h.data()).unwrap();
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0].reasons.get("rejected (HTTP 400)"), Some(&2));
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_on_401_keeps_everything_and_resumes() {
    let h = Harness::new(&["posthog"]).await;
    h.mock.inject(Destination::Posthog, Fault::status(401));
    let events: Vec<Event> = (0..10).map(track).collect();
    append(&h.log, &events, &["posthog"]).await;
    let d = h.start(&config(), vec![h.posthog()]);
    wait(|| d.metrics()[0].is_paused(), "the pause").await;
    // Probes back off (50 ms doubling to 200 ms): a handful of requests, not a storm.
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let probes = h.mock.stats().posthog.requests;
    let most = 4 + t0.elapsed().as_millis() as u64 / 200;
    assert!(
        (2..=most).contains(&probes),
        "{probes} requests while paused"
    );
    assert_eq!(h.backlog("posthog"), 10);
    assert!(h.dead_letters("posthog").is_empty());
    let mut text = String::new();
    d.render_prometheus(&mut text);
    assert!(text.contains("router_delivery_paused{destination=\"posthog\"} 1"));

    h.mock.clear_faults();
    h.mock
        .wait_for_events(Destination::Posthog, 10, WAIT)
        .await
        .unwrap();
    h.wait_acked("posthog").await;
    wait(|| !d.metrics()[0].is_paused(), "the resume").await;
    let m = d.metrics()[0].snapshot();
    assert_eq!((m.events_delivered, m.events_dead_lettered), (10, 0));
    assert_eq!(h.mock.stats().posthog.duplicates, 0);
    assert!(h.dead_letters("posthog").is_empty());
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_error_and_hung_request_are_retried_with_identical_ids() {
    let h = Harness::new(&["mixpanel", "posthog"]).await;
    h.mock
        .inject(Destination::Mixpanel, Fault::disconnect().times(1));
    h.mock.inject(Destination::Mixpanel, Fault::hang().times(1));
    h.mock.inject(Destination::Posthog, Fault::hang().times(1));
    let events: Vec<Event> = (0..30).map(track).collect();
    append(&h.log, &events, &["mixpanel", "posthog"]).await;
    let cfg = DeliveryConfig {
        request_timeout_ms: 1_000,
        ..config()
    };
    let d = h.start(&cfg, vec![h.mixpanel(), h.posthog()]);
    h.wait_acked("mixpanel").await;
    h.wait_acked("posthog").await;
    let stats = h.mock.stats();
    assert_eq!(stats.mixpanel.dropped_connections, 1);
    assert_eq!(stats.mixpanel.hung_requests, 1);
    assert_eq!(stats.posthog.hung_requests, 1);
    // Exactly what the mapping of the stored events gives: same uuid, $insert_id, time.
    let mut expect_mp = Vec::new();
    let mut expect_ph = Vec::new();
    let mp = Mapper::Mixpanel(MixpanelSettings {
        token: Some(DEFAULT_MIXPANEL_TOKEN.into()),
        ..MixpanelSettings::default()
    });
    let ph = Mapper::Posthog(PosthogSettings::default());
    for e in &events {
        let mut out = Vec::new();
        mp.map(e, &mut out);
        ph.map(e, &mut out);
        for r in out {
            let v: Value = serde_json::from_slice(&r.json).unwrap();
            match r.endpoint {
                router_sinks::delivery::Endpoint::PosthogBatch => expect_ph.push(v),
                _ => expect_mp.push(v),
            }
        }
    }
    assert_eq!(h.mock.mixpanel_imports(), expect_mp);
    assert_eq!(h.mock.posthog_events(), expect_ph);
    assert_eq!(
        (stats.mixpanel.unique_events, stats.mixpanel.duplicates),
        (30, 0)
    );
    let m = d.metrics()[0].snapshot();
    assert_eq!(m.requests_error, 2, "{m:?}");
    d.shutdown().await.unwrap();
}

/// A sink that refuses the first attempt and records what every attempt carried.
#[derive(Debug, Default)]
struct FlakySink {
    attempts: Mutex<Vec<Vec<OutboundRecord>>>,
}

impl Sink for FlakySink {
    fn kind(&self) -> &'static str {
        "flaky"
    }

    fn send<'a>(&'a self, batch: &'a [OutboundRecord]) -> SendFuture<'a> {
        Box::pin(async move {
            let mut a = self.attempts.lock().unwrap();
            a.push(batch.to_vec());
            if a.len() == 1 {
                SendResult::all(batch.len(), Outcome::retry("first attempt fails"))
            } else {
                SendResult::all(batch.len(), Outcome::Delivered)
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_sends_byte_identical_records() {
    let h = Harness::new(&["mixpanel"]).await;
    let events: Vec<Event> = (0..12).map(event).collect();
    append(&h.log, &events, &["mixpanel"]).await;
    let sink = Arc::new(FlakySink::default());
    let spec = DestinationSpec::custom(
        "mixpanel",
        Mapper::Mixpanel(MixpanelSettings::default()),
        sink.clone(),
    );
    let d = h.start(&config(), vec![spec]);
    h.wait_acked("mixpanel").await;
    d.shutdown().await.unwrap();
    let attempts = sink.attempts.lock().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0], attempts[1]);
    assert!(attempts[0].len() > 12, "identify and group fan out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_expire_after_the_retry_window() {
    let h = Harness::new(&["posthog"]).await;
    h.mock.inject(Destination::Posthog, Fault::status(503));
    append(&h.log, &[track(1), track(2)], &["posthog"]).await;
    let cfg = DeliveryConfig {
        retry_window_secs: 1,
        ..config()
    };
    let d = h.start(&cfg, vec![h.posthog()]);
    h.wait_acked("posthog").await;
    let dead = h.dead_letters("posthog");
    assert_eq!(dead.len(), 2);
    for l in &dead {
        assert_eq!(l.kind, DeadLetterKind::Expired);
        assert!(l.reason.contains("HTTP 503"), "{}", l.reason);
    }
    let m = d.metrics()[0].snapshot();
    assert_eq!((m.events_dead_lettered, m.events_expired), (2, 2));
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_holds_exactly_what_the_http_sinks_send() {
    let dests = ["posthog", "mixpanel", "posthog_file", "mixpanel_file"];
    let h = Harness::new(&dests).await;
    let events: Vec<Event> = (0..40).map(event).collect();
    append(&h.log, &events, &dests).await;
    let mp_settings = MixpanelSettings {
        token: Some(DEFAULT_MIXPANEL_TOKEN.into()),
        ..MixpanelSettings::default()
    };
    let specs = vec![
        h.posthog(),
        h.mixpanel(),
        // No credentials: the outbox file.
        DestinationSpec::posthog(
            "posthog_file",
            PosthogDestination::default(),
            PosthogSettings::default(),
        ),
        DestinationSpec::mixpanel("mixpanel_file", MixpanelDestination::default(), mp_settings),
    ];
    assert!(specs[2].uses_outbox() && specs[3].uses_outbox() && !specs[0].uses_outbox());
    let d = h.start(&config(), specs);
    for dest in dests {
        h.wait_acked(dest).await;
    }
    d.shutdown().await.unwrap();
    let sorted = |mut v: Vec<Value>| {
        v.sort_by_key(|x| x.to_string());
        v
    };
    let ph_file = read_jsonl(&outbox_path(h.data(), "posthog_file"));
    assert_eq!(ph_file.len(), 40);
    assert_eq!(sorted(ph_file), sorted(h.mock.posthog_events()));
    let mp_file = read_jsonl(&outbox_path(h.data(), "mixpanel_file"));
    let mut sent = h.mock.mixpanel_imports();
    sent.extend(h.mock.mixpanel_engage());
    sent.extend(h.mock.mixpanel_groups());
    assert!(
        sent.len() > 40,
        "identify and group fan out to /engage and /groups"
    );
    assert_eq!(sorted(mp_file), sorted(sent));
    assert!(!h.mock.mixpanel_engage().is_empty() && !h.mock.mixpanel_groups().is_empty());
    // /engage without gzip and with ip=0; /import gzipped.
    for r in h.mock.requests_to(Endpoint::MixpanelEngage) {
        assert!(!r.gzipped);
        assert!(r.query.unwrap_or_default().contains("ip=0"));
    }
    assert!(
        h.mock
            .requests_to(Endpoint::MixpanelImport)
            .iter()
            .all(|r| r.gzipped)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replay_into_the_buffer_and_get_delivered() {
    let h = Harness::new(&["mixpanel"]).await;
    h.mock
        .inject(Destination::Mixpanel, Fault::status(400).times(1));
    let events: Vec<Event> = (0..5).map(track).collect();
    append(&h.log, &events, &["mixpanel"]).await;
    let d = h.start(&config(), vec![h.mixpanel()]);
    wait(
        || d.metrics()[0].snapshot().events_dead_lettered == 5,
        "five dead letters",
    )
    .await;
    h.wait_acked("mixpanel").await;
    assert_eq!(h.mock.mixpanel_imports().len(), 0);
    let summary = dlq::list(h.data()).unwrap();
    assert_eq!((summary[0].count, summary[0].replayable), (5, 5));

    // Replay while delivery runs.
    let dry = dlq::replay(h.data(), &h.log, Some("mixpanel"), true)
        .await
        .unwrap();
    assert_eq!(dry.replayed, 5);
    assert_eq!(h.dead_letters("mixpanel").len(), 5);
    let done = dlq::replay(h.data(), &h.log, None, false).await.unwrap();
    assert_eq!((done.replayed, done.kept), (5, 0));
    h.mock
        .wait_for_events(Destination::Mixpanel, 5, WAIT)
        .await
        .unwrap();
    h.wait_acked("mixpanel").await;
    assert_eq!(
        insert_ids(&h.mock.mixpanel_imports()),
        events
            .iter()
            .map(|e| e.message_id.clone())
            .collect::<Vec<_>>()
    );
    assert!(dlq::list(h.data()).unwrap().iter().all(|s| s.count == 0));
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_only_where_they_are_routed() {
    let h = Harness::new(&["posthog", "mixpanel", "archive"]).await;
    let mut to_ph = Vec::new();
    let mut to_mp = Vec::new();
    for i in 0..30 {
        let e = track(i);
        let dests: &[&str] = match i % 4 {
            0 => &["posthog"],
            1 => &["mixpanel"],
            2 => &["mixpanel", "posthog"],
            _ => &["archive"],
        };
        if dests.contains(&"posthog") {
            to_ph.push(e.message_id.clone());
        }
        if dests.contains(&"mixpanel") {
            to_mp.push(e.message_id.clone());
        }
        append(&h.log, &[e], dests).await;
    }
    // A record that is not a stored event at all.
    h.log
        .append(vec![Bytes::from_static(b"\x01not a stored event")])
        .await
        .unwrap();
    let d = h.start(&config(), vec![h.posthog(), h.mixpanel()]);
    h.wait_acked("posthog").await;
    h.wait_acked("mixpanel").await;
    d.shutdown().await.unwrap();
    let got_ph: BTreeSet<String> = uuids(&h.mock.posthog_events()).into_iter().collect();
    let got_mp: BTreeSet<String> = insert_ids(&h.mock.mixpanel_imports()).into_iter().collect();
    assert_eq!(got_ph, to_ph.into_iter().collect());
    assert_eq!(got_mp, to_mp.into_iter().collect());
    // The corrupt record is dead-lettered (raw) for each destination, never dropped.
    for dest in ["posthog", "mixpanel"] {
        let dead = h.dead_letters(dest);
        assert_eq!(dead.len(), 1, "{dest}");
        assert_eq!(dead[0].kind, DeadLetterKind::Corrupt);
        assert!(dead[0].event.is_none() && dead[0].raw.is_some());
    }
    // No delivery task reads "archive": its cursor has not moved.
    assert_eq!(h.backlog("archive"), h.log.metrics().next_seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_through_faults_and_a_restart() {
    let dests = ["posthog", "mixpanel"];
    let h = Harness::new(&dests).await;
    for f in [
        Fault::status(503).times(2),
        Fault::disconnect().times(1),
        Fault::status(429).retry_after_secs(0).times(1),
        Fault::status(413).times(1),
        Fault::status(502).times(1),
    ] {
        h.mock.inject(Destination::Posthog, f.clone());
        h.mock.inject(Destination::Mixpanel, f);
    }
    h.mock.set_latency(Duration::from_millis(5));
    let cfg = DeliveryConfig {
        batch_max_events: 40,
        request_timeout_ms: 1_000,
        shutdown_grace_ms: 100,
        ..config()
    };
    let n = 400;
    let events: Vec<Event> = (0..n).map(event).collect();
    let mut d = h.start(&cfg, vec![h.posthog(), h.mixpanel()]);
    for (k, chunk) in events.chunks(25).enumerate() {
        append(&h.log, chunk, &dests).await;
        if k == 8 {
            // Stop in the middle (grace 100 ms) and start again on the same buffer.
            d.shutdown().await.unwrap();
            d = h.start(&cfg, vec![h.posthog(), h.mixpanel()]);
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    h.wait_acked("posthog").await;
    h.wait_acked("mixpanel").await;
    d.shutdown().await.unwrap();
    assert!(h.dead_letters("posthog").is_empty());
    assert!(h.dead_letters("mixpanel").is_empty());

    // PostHog: every event, any duplicate is an identical copy (same uuid, same content).
    let mut by_uuid: HashMap<String, Value> = HashMap::new();
    for e in h.mock.posthog_events() {
        let id = e["uuid"].as_str().unwrap().to_owned();
        if let Some(prev) = by_uuid.insert(id, e.clone()) {
            assert_eq!(prev, e, "a duplicate that would not collapse");
        }
    }
    let want: BTreeSet<String> = events.iter().map(|e| e.message_id.clone()).collect();
    assert_eq!(by_uuid.keys().cloned().collect::<BTreeSet<_>>(), want);
    // Mixpanel: one unique (event, time, distinct_id, $insert_id) per import record.
    let mp = Mapper::Mixpanel(MixpanelSettings::default());
    let mut imports = 0u64;
    let mut updates: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &events {
        let mut out = Vec::new();
        mp.map(e, &mut out);
        for r in out {
            match r.endpoint {
                router_sinks::delivery::Endpoint::MixpanelImport => imports += 1,
                other => *updates.entry(other.as_str()).or_default() += 1,
            }
        }
    }
    let stats = h.mock.stats().mixpanel;
    assert_eq!(stats.unique_events, imports);
    assert_eq!(stats.duplicates, stats.duplicate_insert_ids);
    assert!(stats.profile_updates_accepted as usize >= updates["engage"]);
    assert!(stats.group_updates_accepted as usize >= updates["groups"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixpanel_service_account_and_old_posthog_events() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(LogConfig::new(
        tmp.path().join("b"),
        &["mixpanel", "posthog"],
    ))
    .unwrap();
    let mut mc = MockConfig::default();
    mc.mixpanel.service_account = Some(perf::mock::ServiceAccount {
        username: "sa.router".into(),
        secret: "s3cret".into(),
        project_id: "4242".into(),
    });
    let mock = MockDestinations::start(mc).await.unwrap();
    // Three days old: PostHog wants historical_migration; Mixpanel /import takes any age.
    let mut old = track(1);
    old.timestamp = Timestamp::from_millis(now_ms() - 72 * 3600 * 1000).unwrap();
    let events = vec![old, track(2), event(3)];
    append(&log, &events, &["mixpanel", "posthog"]).await;
    let specs = vec![
        DestinationSpec::mixpanel(
            "mixpanel",
            MixpanelDestination {
                token: Some(DEFAULT_MIXPANEL_TOKEN.into()),
                service_account: Some("sa.router".into()),
                api_secret: Some("s3cret".into()),
                project_id: Some("4242".into()),
                host: mock.mixpanel_url(),
            },
            MixpanelSettings::default(),
        ),
        DestinationSpec::posthog(
            "posthog",
            PosthogDestination {
                api_key: Some(DEFAULT_POSTHOG_API_KEY.into()),
                host: format!("{}/", mock.posthog_url()),
            },
            PosthogSettings::default(),
        ),
    ];
    let d = Delivery::start(&log, tmp.path(), &config(), specs).unwrap();
    mock.wait_for_events(Destination::Mixpanel, 3, WAIT)
        .await
        .unwrap();
    mock.wait_for_events(Destination::Posthog, 3, WAIT)
        .await
        .unwrap();
    d.shutdown().await.unwrap();
    let imp = mock.requests_to(Endpoint::MixpanelImport);
    assert_eq!(imp.len(), 1);
    assert_eq!(imp[0].auth_user.as_deref(), Some("sa.router"));
    assert_eq!(imp[0].query.as_deref(), Some("strict=1&project_id=4242"));
    assert_eq!(
        mock.mixpanel_engage().len(),
        1,
        "the identify's profile update"
    );
    let ph = mock.requests_to(Endpoint::PosthogCapture);
    assert_eq!(ph.len(), 1);
    assert_eq!(
        ph[0].envelope,
        Some(json!({"api_key": DEFAULT_POSTHOG_API_KEY, "historical_migration": true}))
    );
    // Timestamps are sent as stored: the old one stays old.
    assert_eq!(
        mock.posthog_events()[0]["timestamp"],
        json!(events[0].timestamp.to_string())
    );
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_gives_up_on_a_hung_request_after_the_grace_and_keeps_its_events() {
    let h = Harness::new(&["posthog"]).await;
    h.mock.inject(Destination::Posthog, Fault::hang());
    let events: Vec<Event> = (0..5).map(track).collect();
    append(&h.log, &events, &["posthog"]).await;
    let cfg = DeliveryConfig {
        request_timeout_ms: 30_000,
        shutdown_grace_ms: 200,
        ..config()
    };
    let d = h.start(&cfg, vec![h.posthog()]);
    h.mock
        .wait_until(|s| s.posthog.hung_requests >= 1, WAIT)
        .await
        .unwrap();
    let t0 = tokio::time::Instant::now();
    d.shutdown().await.unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(h.backlog("posthog"), 5, "nothing acknowledged");
    assert!(h.dead_letters("posthog").is_empty());

    // The next start delivers them.
    h.mock.clear_faults();
    let d = h.start(&cfg, vec![h.posthog()]);
    h.mock
        .wait_for_events(Destination::Posthog, 5, WAIT)
        .await
        .unwrap();
    h.wait_acked("posthog").await;
    d.shutdown().await.unwrap();
}
