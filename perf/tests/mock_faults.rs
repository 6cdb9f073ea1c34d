//! Fault injection, latency, the admin endpoint, retention and waiting.

mod common;

use std::time::{Duration, Instant};

use common::*;
use perf::mock::{Destination, Endpoint, Fault, MockConfig, MockHandle, Retention};
use serde_json::{Value, json};

async fn send_batch(
    mock: &MockHandle,
    ids: std::ops::Range<u64>,
) -> reqwest::Result<reqwest::Response> {
    let body = ph_batch(&mock.config().posthog.api_key, ids);
    client()
        .post(format!("{}/batch/", mock.posthog_url()))
        .body(body.to_string())
        .send()
        .await
}

async fn send_import(mock: &MockHandle, events: &Value) -> reqwest::Result<reqwest::Response> {
    client()
        .post(format!("{}/import?strict=1", mock.mixpanel_url()))
        .header("authorization", basic(&mock.config().mixpanel.token, ""))
        .body(events.to_string())
        .send()
        .await
}

async fn status_of(resp: reqwest::Result<reqwest::Response>) -> u16 {
    resp.expect("an answer").status().as_u16()
}

#[tokio::test]
async fn status_sequence_then_recovery() {
    let mock = start().await;
    mock.inject(Destination::Posthog, Fault::status(503).times(2));
    mock.inject(Destination::Posthog, Fault::status(500).times(1));
    assert_eq!(mock.pending_faults().len(), 2);
    let mut seen = Vec::new();
    for i in 0..5 {
        seen.push(status_of(send_batch(&mock, i..i + 1).await).await);
    }
    assert_eq!(seen, vec![503, 503, 500, 200, 200]);
    assert!(mock.pending_faults().is_empty());
    let stats = mock.stats().posthog;
    assert_eq!(stats.requests, 5);
    assert_eq!(stats.requests_by_status.get(&503), Some(&2));
    assert_eq!(stats.requests_by_status.get(&500), Some(&1));
    assert_eq!(stats.faults_applied, 3);
    assert_eq!(stats.events_accepted, 2, "faulted requests accept nothing");
    let reqs = mock.requests();
    assert_eq!(reqs[0].fault.as_deref(), Some("status 503 ×2"));
    assert_eq!(reqs[0].status, 503);
    // The Mixpanel queue is separate.
    assert_eq!(
        status_of(send_import(&mock, &json!([mp_event(1)])).await).await,
        200
    );
}

#[tokio::test]
async fn retry_after_with_and_without() {
    let mock = start().await;
    mock.inject(
        Destination::Mixpanel,
        Fault::status(429).retry_after_secs(7).times(1),
    );
    mock.inject(Destination::Mixpanel, Fault::status(429).times(1));
    let first = send_import(&mock, &json!([mp_event(1)])).await.unwrap();
    assert_eq!(first.status().as_u16(), 429);
    assert_eq!(first.headers().get("retry-after").unwrap(), "7");
    let (_, body) = status_json(first).await;
    assert_eq!(body["code"], json!(429));
    assert_eq!(body["status"], json!("Too Many Requests"));
    let second = send_import(&mock, &json!([mp_event(1)])).await.unwrap();
    assert_eq!(second.status().as_u16(), 429);
    assert!(second.headers().get("retry-after").is_none());
    assert_eq!(
        status_of(send_import(&mock, &json!([mp_event(1)])).await).await,
        200
    );
}

#[tokio::test(start_paused = true)]
async fn timed_fault_ends_by_itself() {
    let mock = start().await;
    // No client timeout: with a paused clock, tokio may jump to a client timer while the
    // runtime waits on the socket.
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/batch/", mock.posthog_url());
    let body = ph_batch(&mock.config().posthog.api_key, [1]).to_string();
    let send = || async {
        c.post(&url)
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    mock.inject(
        Destination::Posthog,
        Fault::status(503).for_duration(Duration::from_secs(10)),
    );
    assert_eq!(send().await, 503);
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(send().await, 503);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(send().await, 200);
    assert!(mock.pending_faults().is_empty());
}

#[tokio::test]
async fn unauthorized_until_cleared() {
    let mock = start().await;
    mock.inject(Destination::Mixpanel, Fault::status(401));
    for _ in 0..3 {
        let resp = send_import(&mock, &json!([mp_event(1)])).await.unwrap();
        let (status, body) = status_json(resp).await;
        assert_eq!(status, 401);
        assert_eq!(
            body,
            json!({"code": 401, "error": "Invalid credentials", "status": "Unauthorized"})
        );
    }
    assert_eq!(mock.clear_faults(), 1);
    assert_eq!(
        status_of(send_import(&mock, &json!([mp_event(1)])).await).await,
        200
    );
}

#[tokio::test]
async fn injected_413_and_custom_body() {
    let mock = start().await;
    mock.inject(Destination::Mixpanel, Fault::status(413).times(1));
    mock.inject(
        Destination::Posthog,
        Fault::status(400).with_body("bad things").times(1),
    );
    let (status, body) =
        status_json(send_import(&mock, &json!([mp_event(1)])).await.unwrap()).await;
    assert_eq!(status, 413);
    assert_eq!(body["status"], json!("Request Entity Too Large"));
    let (status, body) = status_text(send_batch(&mock, 0..1).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (400, "bad things"));
}

#[tokio::test]
async fn partial_reject_fails_only_the_given_indexes() {
    let mock = start().await;
    mock.inject(Destination::Mixpanel, Fault::partial([0, 2, 99]).times(1));
    // /engage does not consume a partial fault (it targets /import).
    let engage =
        json!([{"$token": mock.config().mixpanel.token, "$distinct_id": "u", "$set": {"a": 1}}]);
    let resp = client()
        .post(format!("{}/engage", mock.mixpanel_url()))
        .body(engage.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(status_text(resp).await, (200, "1".to_owned()));

    let mut bad = mp_event(4);
    bad["properties"]["time"] = json!(5);
    let events = json!([mp_event(1), mp_event(2), mp_event(3), bad]);
    let (status, body) = status_json(send_import(&mock, &events).await.unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(body["num_records_imported"], json!(1));
    let failed: Vec<(u64, String)> = body["failed_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["index"].as_u64().unwrap(),
                f["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        failed,
        vec![
            (0, "fault".into()),
            (2, "fault".into()),
            (3, "properties.time".into())
        ]
    );
    assert_eq!(
        body["failed_records"][0]["insert_id"],
        json!("ins-00000001")
    );
    assert_eq!(
        mock.accepted_ids(Endpoint::MixpanelImport),
        vec!["ins-00000002"]
    );
    // Used up: the next identical request is fully imported.
    let events = json!([mp_event(5), mp_event(6), mp_event(7)]);
    assert_eq!(status_of(send_import(&mock, &events).await).await, 200);
}

#[tokio::test]
async fn hang_until_cleared_then_connection_closed() {
    let mock = start().await;
    mock.inject(Destination::Posthog, Fault::hang());
    let url = format!("{}/batch/", mock.posthog_url());
    let body = ph_batch(&mock.config().posthog.api_key, [1]).to_string();
    let quick = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = quick
        .post(&url)
        .body(body.clone())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(mock.stats().posthog.hung_requests, 1);

    // A request hung without client timeout ends with a closed connection when cleared.
    let pending = tokio::spawn({
        let url = url.clone();
        let body = body.clone();
        async move { client().post(&url).body(body).send().await }
    });
    mock.wait_until(|s| s.posthog.hung_requests == 2, Duration::from_secs(5))
        .await
        .unwrap();
    mock.clear_faults();
    let result = pending.await.unwrap();
    assert!(
        result.is_err(),
        "released hung request gets no answer: {result:?}"
    );
    // (The first one's client gave up already; the mock counts the connections it closed.)
    mock.wait_until(
        |s| s.posthog.dropped_connections >= 1,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(
        status_of(client().post(&url).body(body).send().await).await,
        200
    );
    assert_eq!(mock.stats().posthog.events_accepted, 1);
}

#[tokio::test]
async fn timed_hang_releases_by_itself() {
    let mock = start().await;
    mock.inject(
        Destination::Mixpanel,
        Fault::hang().for_duration(Duration::from_millis(400)),
    );
    let started = Instant::now();
    let result = send_import(&mock, &json!([mp_event(1)])).await;
    assert!(result.is_err(), "{result:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(
        status_of(send_import(&mock, &json!([mp_event(1)])).await).await,
        200
    );
}

#[tokio::test]
async fn disconnect_gives_a_network_error_once() {
    let mock = start().await;
    mock.inject(Destination::Mixpanel, Fault::disconnect().times(1));
    let result = send_import(&mock, &json!([mp_event(1)])).await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(
        status_of(send_import(&mock, &json!([mp_event(1)])).await).await,
        200
    );
    let stats = mock.stats().mixpanel;
    assert_eq!(stats.dropped_connections, 1);
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.events_accepted, 1);
}

#[tokio::test]
async fn quota_drop_answers_200_and_keeps_nothing() {
    let mock = start().await;
    mock.inject(Destination::Posthog, Fault::quota_drop().times(1));
    let (status, body) = status_json(send_batch(&mock, 0..3).await.unwrap()).await;
    assert_eq!((status, body), (200, json!({"status": 1})));
    let stats = mock.stats().posthog;
    assert_eq!(stats.events_accepted, 0);
    assert_eq!(stats.items_dropped_by_fault, 3);
    assert!(mock.posthog_events().is_empty());
}

#[tokio::test]
async fn route_filter() {
    let mock = start().await;
    mock.inject(
        Destination::Mixpanel,
        Fault::status(503).times(1).on_route("/engage/"),
    );
    assert_eq!(
        status_of(send_import(&mock, &json!([mp_event(1)])).await).await,
        200
    );
    let resp = client()
        .post(format!("{}/engage", mock.mixpanel_url()))
        .body("[]")
        .send()
        .await;
    assert_eq!(status_of(resp).await, 503);
}

#[tokio::test]
async fn latency_applies_to_every_request() {
    let mock = start().await;
    mock.set_latency(Duration::from_millis(500));
    assert_eq!(mock.latency(), Duration::from_millis(500));
    let started = Instant::now();
    assert_eq!(status_of(send_batch(&mock, 0..1).await).await, 200);
    assert_eq!(
        status_of(send_import(&mock, &json!([mp_event(1)])).await).await,
        200
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    mock.set_latency(Duration::ZERO);
    let started = Instant::now();
    assert_eq!(status_of(send_batch(&mock, 1..2).await).await, 200);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn admin_endpoint_drives_faults_latency_stats_and_requests() {
    let mock = start().await;
    let c = client();
    let admin = |path: &str| format!("{}/__admin/{path}", mock.mixpanel_url());

    // One spec, destination from the port; an array with an explicit destination.
    let resp = c
        .post(admin("faults"))
        .body(r#"{"status": 503, "retry_after": 2, "times": 1, "route": "/import"}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(resp).await;
    assert_eq!(
        (status, body["queued"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    let resp = c
        .post(admin("faults"))
        .body(
            r#"[{"destination": "posthog", "status": 429, "times": 1},
                  {"destination": "posthog", "action": "disconnect", "times": 1}]"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (_, faults) = status_json(c.get(admin("faults")).send().await.unwrap()).await;
    assert_eq!(faults.as_array().unwrap().len(), 3);
    assert_eq!(faults[0]["destination"], json!("posthog"));
    assert_eq!(faults[0]["active"], json!(true));
    assert_eq!(faults[1]["active"], json!(false));

    let resp = send_import(&mock, &json!([mp_event(1)])).await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers().get("retry-after").unwrap(), "2");
    assert_eq!(status_of(send_batch(&mock, 0..1).await).await, 429);
    assert!(send_batch(&mock, 0..1).await.is_err());
    assert_eq!(status_of(send_batch(&mock, 0..1).await).await, 200);

    // Bad specs are refused whole.
    for bad in [
        r#"{"status": 503, "times": 1, "for_ms": 5}"#,
        r#"{"action": "boom"}"#,
        "{",
        r#"{"statu": 1}"#,
    ] {
        let resp = c.post(admin("faults")).body(bad).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{bad}");
    }

    // Until-cleared fault, cleared with DELETE.
    c.post(admin("faults"))
        .body(r#"{"status": 401}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        status_of(send_import(&mock, &json!([mp_event(2)])).await).await,
        401
    );
    let (_, cleared) = status_json(c.delete(admin("faults")).send().await.unwrap()).await;
    assert_eq!(cleared, json!({"cleared": 1}));
    assert_eq!(
        status_of(send_import(&mock, &json!([mp_event(2)])).await).await,
        200
    );

    // Latency.
    let (_, lat) = status_json(
        c.post(admin("latency"))
            .body(r#"{"ms": 25}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(lat, json!({"latency_ms": 25}));
    assert_eq!(mock.latency(), Duration::from_millis(25));
    let (_, lat) = status_json(c.get(admin("latency")).send().await.unwrap()).await;
    assert_eq!(lat, json!({"latency_ms": 25}));

    // Stats and requests as JSON.
    let (_, stats) = status_json(c.get(admin("stats")).send().await.unwrap()).await;
    assert_eq!(stats["mixpanel"]["events_accepted"], json!(1));
    assert_eq!(stats["mixpanel"]["requests_by_status"]["503"], json!(1));
    assert_eq!(stats["posthog"]["dropped_connections"], json!(1));
    let (_, reqs) = status_json(c.get(admin("requests")).send().await.unwrap()).await;
    assert!(
        reqs.as_array()
            .unwrap()
            .iter()
            .all(|r| r["destination"] == json!("mixpanel"))
    );
    assert_eq!(reqs.as_array().unwrap().len(), 3);
    let (_, all) = status_json(
        c.get(admin("requests?destination=all"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(all.as_array().unwrap().len(), 5, "{all}");

    // Reset forgets requests and counters; admin calls are never counted.
    let (status, _) = status_json(c.post(admin("reset")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(mock.stats(), Default::default());
    assert!(mock.requests().is_empty());
    let resp = c.get(admin("nothing")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

#[tokio::test]
async fn retention_ids_only_and_counts_only() {
    let mock = start_with(MockConfig {
        retention: Retention::IdsOnly,
        ..MockConfig::default()
    })
    .await;
    assert_eq!(status_of(send_batch(&mock, 0..3).await).await, 200);
    assert!(mock.posthog_events().is_empty());
    assert_eq!(
        mock.accepted_ids(Endpoint::PosthogCapture),
        vec![uuid(0), uuid(1), uuid(2)]
    );

    let mock = start_with(MockConfig {
        retention: Retention::CountsOnly,
        ..MockConfig::default()
    })
    .await;
    assert_eq!(status_of(send_batch(&mock, 0..3).await).await, 200);
    assert_eq!(status_of(send_batch(&mock, 0..3).await).await, 200);
    assert!(mock.requests().is_empty());
    let stats = mock.stats().posthog;
    assert_eq!(
        (stats.events_accepted, stats.unique_events, stats.duplicates),
        (6, 3, 3)
    );
}

#[tokio::test]
async fn wait_for_events_times_out_with_the_counts() {
    let mock = start().await;
    let err = mock
        .wait_for_events(Destination::Mixpanel, 1, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err.stats.mixpanel.events_accepted, 0);
    assert!(err.to_string().contains("timed out"));
    let waiter = mock.wait_for_events(Destination::Mixpanel, 2, Duration::from_secs(5));
    let sender = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        send_import(&mock, &json!([mp_event(1), mp_event(2)]))
            .await
            .unwrap();
    };
    let (stats, ()) = tokio::join!(waiter, sender);
    assert_eq!(stats.unwrap().mixpanel.events_accepted, 2);
}

#[tokio::test]
async fn shutdown_closes_the_ports() {
    let mock = start().await;
    let addr = mock.posthog_addr();
    assert_eq!(status_of(send_batch(&mock, 0..1).await).await, 200);
    mock.shutdown().await;
    let result = client()
        .post(format!("http://{addr}/batch/"))
        .body("{}")
        .send()
        .await;
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn timed_faults_and_latency_follow_paused_tokio_time() {
    let mock = start().await;
    // No client timeout: with a paused clock a client timer could fire while the runtime
    // waits on the socket.
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/batch/", mock.posthog_url());
    let body = ph_batch(&mock.config().posthog.api_key, [1]).to_string();
    mock.inject(
        Destination::Posthog,
        Fault::status(503).for_duration(Duration::from_secs(60)),
    );
    let resp = c.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    tokio::time::advance(Duration::from_secs(61)).await;
    mock.set_latency(Duration::from_secs(30));
    let started = tokio::time::Instant::now();
    let resp = c.post(&url).body(body).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        started.elapsed() >= Duration::from_secs(30),
        "latency sleeps on tokio time"
    );
}
