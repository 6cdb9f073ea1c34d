//! Every ingest endpoint: the answer, what ends up in the log, and the dead letters.

use serde_json::{Value, json};

use crate::support::{start, test_config};

#[tokio::test]
async fn collect_event_is_in_the_log_after_200() {
    let s = start(test_config()).await;
    let r = s
        .post("/collect", r#"{"event":"Sign Up","userId":"user123"}"#)
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"status":"ok","accepted":1}));
    let events = s.records();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.destinations, ["mixpanel"]);
    assert_eq!(e.event.name, "Sign Up");
    assert_eq!(e.event.user_id.as_deref(), Some("user123"));
    assert_eq!(e.event.context["ip"], "127.0.0.1");
    let id = uuid::Uuid::parse_str(&e.event.message_id).unwrap();
    assert_eq!(id.get_version_num(), 7, "ids are UUIDv7");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((now - e.event.received_at.millis()).abs() < 60_000);
}

#[tokio::test]
async fn collect_routes_each_event_and_keeps_the_client_ip_and_ids() {
    let s = start(test_config()).await;
    let body = json!({"batch": [
        {"event": "Purchase", "userId": "u1", "messageId": "m-1",
         "properties": {"utm_source": "news"}, "context": {"ip": "9.9.9.9"}},
        {"event": "Session Start", "anonymousId": "a1"},
        {"type": "identify", "userId": "u1", "traits": {"email": "a@b.c"}}
    ]});
    let r = s.post("/collect", &body.to_string()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["accepted"], 3);
    // The log is one stream; each record names its destinations.
    let ph = s.records();
    assert_eq!(ph.len(), 3);
    assert_eq!(ph[0].event.message_id, "m-1");
    assert_eq!(ph[0].destinations, ["posthog"]);
    assert_eq!(ph[0].event.context["ip"], "9.9.9.9", "client-set ip kept");
    assert_eq!(ph[1].destinations, ["posthog"]);
    assert_eq!(ph[2].destinations, ["mixpanel", "posthog"]);
}

#[tokio::test]
async fn batch_with_bad_items_accepts_the_good_ones_and_dead_letters_the_rest() {
    let s = start(test_config()).await;
    let body = r#"[{"event":"A","userId":"u"},{"event":"B"},{"userId":"u"},{"event":"C","anonymousId":"x"}]"#;
    let r = s.post("/collect", body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["accepted"], 2);
    let rejected = v["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["index"], 1);
    assert_eq!(rejected[1]["index"], 2);
    assert_eq!(rejected[1]["field"], "event");
    for r in rejected {
        assert!(r["field"].is_string() && r["reason"].is_string());
    }
    assert_eq!(s.records().len(), 2);
    let lines = s.rejected_lines();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["endpoint"], "/collect");
    assert_eq!(lines[0]["index"], 1);
    assert_eq!(lines[0]["raw"], json!({"event":"B"}));
    assert_eq!(lines[1]["raw"], json!({"userId":"u"}));
    assert_eq!(lines[1]["field"], rejected[1]["field"]);
    assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
    let m = s.metrics().await;
    assert!(m.contains("router_events_rejected_total{endpoint=\"collect\",field=\"event\"} 1"));
    assert!(m.contains("router_events_accepted_total{endpoint=\"collect\"} 2"));
    assert!(m.contains("router_events_received_total{endpoint=\"collect\"} 4"));
    assert!(m.contains("router_http_dead_letters_total 2"));
}

#[tokio::test]
async fn wholly_bad_requests_get_400_naming_the_field() {
    let s = start(test_config()).await;
    for (body, field) in [
        ("{not json", "$"),
        ("", "$"),
        ("42", "$"),
        (r#"{"batch": 3}"#, "batch"),
        (r#"{"batch": []}"#, "batch"),
    ] {
        let r = s.post("/collect", body).await;
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "error", "{body}");
        assert_eq!(v["field"], field, "{body}");
        assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
    // Every item invalid: 400 naming the first, the list, and the dead letters.
    let r = s.post("/v1/track", r#"{"userId":"u"}"#).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["field"], "event");
    assert_eq!(v["accepted"], 0);
    assert_eq!(v["rejected"][0]["index"], 0);
    assert_eq!(s.rejected_lines().len(), 1);
    assert_eq!(s.rejected_lines()[0]["endpoint"], "/v1/track");
    assert!(s.records().is_empty());
}

#[tokio::test]
async fn every_segment_endpoint_and_short_alias() {
    let s = start(test_config()).await;
    let cases = [
        ("/v1/track", r#"{"event":"Sign Up","userId":"u"}"#, "track"),
        ("/v1/t", r#"{"event":"Sign Up","userId":"u"}"#, "track"),
        (
            "/v1/identify",
            r#"{"userId":"u","traits":{"name":"N"}}"#,
            "identify",
        ),
        ("/v1/page", r#"{"anonymousId":"a","name":"Home"}"#, "page"),
        (
            "/v1/screen",
            r#"{"anonymousId":"a","name":"Main"}"#,
            "screen",
        ),
        ("/v1/group", r#"{"userId":"u","groupId":"g"}"#, "group"),
        ("/v1/alias", r#"{"userId":"u","previousId":"p"}"#, "alias"),
        (
            "/v1/batch",
            r#"{"batch":[{"type":"track","event":"X","userId":"u"}],"sentAt":"2025-01-28T12:00:00Z"}"#,
            "track",
        ),
    ];
    for (path, body, kind) in cases {
        let r = s.post(path, body).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"status":"ok","accepted":1}),
            "{path}"
        );
        let all = s.records();
        assert_eq!(all.last().unwrap().event.kind.as_str(), kind, "{path}");
    }
    let appended = s.log.metrics().appends;
    assert_eq!(appended, cases.len() as u64, "one append per request");
}

#[tokio::test]
async fn ga4_collect_answers_204_and_keeps_events() {
    let s = start(test_config()).await;
    let body = json!({"client_id": "123.456", "events": [
        {"name": "page_view", "params": {"page_location": "https://x.test/?utm_source=ads"}},
        {"name": "sign_up"},
        {"params": {}}
    ]});
    let r = s
        .post("/mp/collect?measurement_id=G-1", &body.to_string())
        .await;
    assert_eq!(r.status(), 204);
    assert!(r.bytes().await.unwrap().is_empty());
    let all: Vec<_> = s.records().into_iter().map(|e| e.event.name).collect();
    assert!(all.contains(&"Page View".to_owned()), "{all:?}");
    assert!(all.contains(&"Sign Up".to_owned()), "{all:?}");
    let lines = s.rejected_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["endpoint"], "/mp/collect");
    assert_eq!(lines[0]["index"], 2);
    // Unreadable: 400 (Google would answer 2xx; we say what is wrong).
    let r = s.post("/mp/collect", "nope").await;
    assert_eq!(r.status(), 400);
    let r = s.post("/mp/collect", r#"{"events":[]}"#).await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn ga4_debug_validates_and_keeps_nothing() {
    let s = start(test_config()).await;
    let r = s
        .post(
            "/debug/mp/collect",
            r#"{"client_id":"1.2","events":[{"name":"_bad"}]}"#,
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let msgs = v["validationMessages"].as_array().unwrap();
    assert!(!msgs.is_empty());
    assert_eq!(msgs[0]["validationCode"], "NAME_INVALID");
    let r = s
        .post(
            "/debug/mp/collect",
            r#"{"client_id":"1.2","events":[{"name":"ok_event"}]}"#,
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"validationMessages": []})
    );
    let r = s.post("/debug/mp/collect", "{oops").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["validationMessages"][0]["validationCode"],
        "VALUE_INVALID"
    );
    assert_eq!(s.log.metrics().records_appended, 0);
    assert!(s.rejected_lines().is_empty());
}

#[tokio::test]
async fn probes_and_metrics() {
    let s = start(test_config()).await;
    let r = s.get("/health").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");
    let r = s.get("/ready").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ready");
    let r = s.client.head(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.post("/collect", r#"{"event":"A","userId":"u"}"#).await;
    let r = s.get("/metrics").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let m = r.text().await.unwrap();
    for name in [
        "router_http_requests_total{endpoint=\"collect\",status=\"200\"} 1",
        "router_http_requests_total{endpoint=\"health\",status=\"200\"} 2",
        "router_http_request_duration_seconds_count{endpoint=\"collect\"} 1",
        "router_events_received_total{endpoint=\"collect\"} 1",
        "router_http_accepted_bytes_total{endpoint=\"collect\"} 26",
        "router_buffer_fsync_duration_seconds_count",
        "router_buffer_bytes ",
        "router_buffer_backlog_records{destination=\"mixpanel\"} 1",
        "router_http_connections_open 1",
    ] {
        assert!(m.contains(name), "missing {name} in\n{m}");
    }
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods() {
    let s = start(test_config()).await;
    let r = s.post("/nope", "{}").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "error");
    assert_eq!(s.post("/v1/unknown", "{}").await.status(), 404);
    let r = s.get("/collect").await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST, OPTIONS");
    let r = s.client.put(s.url("/v1/batch")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = s.post("/health", "").await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    let m = s.metrics().await;
    assert!(m.contains("router_http_requests_total{endpoint=\"unknown\",status=\"404\"} 2"));
}

#[tokio::test]
async fn client_ip_from_trusted_proxies_only() {
    let s = start(router_http::HttpConfig {
        trusted_proxies: vec!["127.0.0.0/8".into()],
        ..test_config()
    })
    .await;
    let post = |xff: &'static str| {
        s.client
            .post(s.url("/collect"))
            .header("x-forwarded-for", xff)
            .body(r#"{"event":"A","userId":"u"}"#)
            .send()
    };
    assert_eq!(
        post("198.51.100.7, 203.0.113.9").await.unwrap().status(),
        200
    );
    assert_eq!(post("203.0.113.10, 127.0.0.5").await.unwrap().status(), 200);
    let ips: Vec<_> = s
        .records()
        .iter()
        .map(|e| e.event.context["ip"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ips, ["203.0.113.9", "203.0.113.10"]);

    let untrusted = start(test_config()).await;
    let r = untrusted
        .client
        .post(untrusted.url("/collect"))
        .header("x-forwarded-for", "203.0.113.9")
        .body(r#"{"event":"A","userId":"u"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(untrusted.records()[0].event.context["ip"], "127.0.0.1");
}

#[tokio::test]
async fn client_ip_is_not_forwarded_when_disabled_nor_for_ga4() {
    let s = start(router_http::HttpConfig {
        forward_client_ip: false,
        ..test_config()
    })
    .await;
    s.post("/collect", r#"{"event":"A","userId":"u"}"#).await;
    assert!(s.records()[0].event.context.get("ip").is_none());
    let s = start(test_config()).await;
    let r = s
        .post(
            "/mp/collect",
            r#"{"client_id":"1.2","events":[{"name":"sign_up"}]}"#,
        )
        .await;
    assert_eq!(r.status(), 204);
    assert!(s.records()[0].event.context.get("ip").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_all_land_once() {
    let s = std::sync::Arc::new(start(test_config()).await);
    let mut tasks = Vec::new();
    for c in 0..40 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let batch: Vec<_> = (0..10)
                .map(|i| json!({"event": "Sign Up", "userId": format!("u{c}"), "messageId": format!("m-{c}-{i}")}))
                .collect();
            let r = s.post("/collect", &Value::from(batch).to_string()).await;
            assert_eq!(r.status(), 200);
            assert_eq!(r.json::<Value>().await.unwrap()["accepted"], 10);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut ids: Vec<_> = s
        .records()
        .into_iter()
        .map(|e| e.event.message_id)
        .collect();
    assert_eq!(ids.len(), 400);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 400);
    let m = s.log.metrics();
    assert_eq!(m.appends, 40, "one append per request");
    assert!(m.group_commits <= 40);
}

#[tokio::test]
async fn handle_works_without_a_socket() {
    let s = start(test_config()).await;
    let req = hyper::Request::post("/v1/track")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"event":"Sign Up","userId":"u"}"#,
        )))
        .unwrap();
    let peer = "192.0.2.1:5555".parse().unwrap();
    let resp = s.state.handle(req, peer).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(s.records()[0].event.context["ip"], "192.0.2.1");
}
