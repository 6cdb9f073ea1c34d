//! `events-router serve` end to end: a real child process, real sockets on 127.0.0.1, the
//! strict mock PostHog and Mixpanel from `perf`.

mod common;

use std::time::{Duration, Instant};

use common::{Router, cli};
use perf::mock::{Destination, Fault, MockConfig, MockDestinations, MockHandle};
use serde_json::Value;

fn examples() -> Vec<String> {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/events.jsonl"
    ))
    .unwrap()
    .lines()
    .map(str::to_owned)
    .collect()
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> (u16, Value) {
    let r = client
        .post(format!("{url}/collect"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn insert_ids(mock: &MockHandle) -> Vec<String> {
    let mut ids: Vec<String> = mock
        .mixpanel_imports()
        .iter()
        .filter_map(|e| e["properties"]["$insert_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// What the default table sends where, for examples/events.jsonl (12 events, one invalid).
const POSTHOG_EVENTS: [&str; 5] = [
    "Purchase",
    "Newsletter Click",
    "Session Start",
    "$identify",
    "Sign Up",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_events_arrive_as_the_table_says_and_sigterm_drains() {
    let mock = MockDestinations::start(MockConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let router = Router::start(dir.path(), Some(&mock), &[]);
    let client = reqwest::Client::new();
    let mut accepted = 0;
    for line in examples() {
        let (status, body) = post(&client, &router.url, line).await;
        assert_eq!(status, 200, "{body}");
        accepted += body["accepted"].as_u64().unwrap();
    }
    assert_eq!(accepted, 11);
    let stats = mock
        .wait_until(
            |s| {
                s.posthog.events_accepted >= 5
                    && s.mixpanel.events_accepted >= 8
                    && s.mixpanel.profile_updates_accepted >= 1
            },
            Duration::from_secs(30),
        )
        .await
        .expect("events did not arrive");
    let mut names: Vec<String> = mock
        .posthog_events()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = POSTHOG_EVENTS.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(names, expected);
    let ids = insert_ids(&mock);
    let mut want: Vec<String> = [1, 2, 3, 5, 8, 9, 10, 11]
        .iter()
        .map(|i| format!("seed-{i}"))
        .collect();
    want.sort();
    assert_eq!(
        ids, want,
        "Mixpanel /import got exactly the mixpanel-routed events"
    );
    let profile = mock.mixpanel_engage();
    assert_eq!(profile.len(), 1);
    assert_eq!(profile[0]["$set"]["$email"], "ada@example.com");
    assert_eq!(stats.posthog.duplicates + stats.mixpanel.duplicates, 0);
    let (code, _) = router.terminate();
    assert_eq!(code, Some(0));
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_survives_a_restart_and_is_delivered() {
    let mock = MockDestinations::start(MockConfig::default())
        .await
        .unwrap();
    mock.inject(Destination::Mixpanel, Fault::status(503).until_cleared());
    mock.inject(Destination::Posthog, Fault::status(503).until_cleared());
    let dir = tempfile::tempdir().unwrap();
    let router = Router::start(dir.path(), Some(&mock), &[]);
    let client = reqwest::Client::new();
    for line in examples() {
        assert_eq!(post(&client, &router.url, line).await.0, 200);
    }
    let (code, _) = router.terminate();
    assert_eq!(code, Some(0));
    assert_eq!(mock.stats().mixpanel.events_accepted, 0);
    mock.clear_faults();
    let router = Router::start(dir.path(), Some(&mock), &[]);
    mock.wait_until(
        |s| s.posthog.events_accepted >= 5 && s.mixpanel.events_accepted >= 8,
        Duration::from_secs(30),
    )
    .await
    .expect("the backlog was not delivered after the restart");
    assert_eq!(insert_ids(&mock).len(), 8);
    let (code, _) = router.terminate();
    assert_eq!(code, Some(0));
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_events_go_to_outbox_files() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::start(dir.path(), None, &[]);
    for dest in ["posthog", "mixpanel"] {
        assert!(
            router
                .startup
                .iter()
                .any(|l| l.contains("No credentials") && l.contains(dest)),
            "the start-up log says {dest} writes to its outbox: {:?}",
            router.startup
        );
    }
    let client = reqwest::Client::new();
    let first = examples().into_iter().next().unwrap();
    let (status, body) = post(&client, &router.url, first).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(1)));
    let outbox = dir.path().join("outbox").join("mixpanel.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&outbox).unwrap_or_default();
        if !text.is_empty() || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rec: Value = serde_json::from_str(text.lines().next().expect("outbox is empty")).unwrap();
    let rec = if rec.get("record").is_some() {
        rec["record"].clone()
    } else {
        rec
    };
    assert_eq!(rec["event"], "Sign Up");
    assert_eq!(rec["properties"]["$insert_id"], "seed-1");
    let (code, lines) = router.terminate();
    assert_eq!(code, Some(0));
    assert!(
        lines.iter().any(|l| l.contains("SIGTERM received")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_events_are_dead_lettered_listed_and_replayed() {
    let mock = MockDestinations::start(MockConfig::default())
        .await
        .unwrap();
    // Mixpanel refuses the first record of the next /import request (partial 400).
    mock.inject(Destination::Mixpanel, Fault::partial([0]).times(1));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let router = Router::start(dir.path(), Some(&mock), &[]);
    let client = reqwest::Client::new();
    let body = r#"{"event":"Sign Up","userId":"u1","messageId":"dl-1"}"#.to_owned();
    assert_eq!(post(&client, &router.url, body).await.0, 200);
    let dlq_file = dir.path().join("dead-letters").join("mixpanel.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&dlq_file)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no dead letter was written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let letter: Value = serde_json::from_str(
        std::fs::read_to_string(&dlq_file)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(letter["destination"], "mixpanel");
    assert_eq!(letter["status"], 400);

    let (code, out, _) = cli(&["dlq", "list", "--data-dir", data]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("mixpanel: 1 dead letters (1 replayable)"),
        "{out}"
    );
    // Replay refuses while the router holds the buffer.
    let (code, _, err) = cli(&["dlq", "replay", "--data-dir", data]);
    assert_eq!(code, Some(2));
    assert!(err.contains("stop it, then replay"), "{err}");
    assert_eq!(router.terminate().0, Some(0));

    let (code, out, _) = cli(&["dlq", "replay", "--dry-run", "--data-dir", data]);
    assert_eq!(code, Some(0));
    assert!(out.contains("would replay 1 events"), "{out}");
    let (code, out, err) = cli(&["dlq", "replay", "--data-dir", data]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("replayed 1 events"), "{out}");

    let router = Router::start(dir.path(), Some(&mock), &[]);
    mock.wait_until(|s| s.mixpanel.events_accepted >= 1, Duration::from_secs(20))
        .await
        .expect("the replayed event was not delivered");
    assert_eq!(insert_ids(&mock), ["dl-1"]);
    assert_eq!(router.terminate().0, Some(0));
    mock.shutdown().await;
}
