//! Black-box tests of the strict mock PostHog over HTTP.

mod common;

use common::*;
use perf::mock::{Destination, Endpoint, MockConfig, MockHandle, PosthogConfig};
use serde_json::{Value, json};

async fn post_json(mock: &MockHandle, path: &str, body: &Value) -> (u16, Value) {
    let resp = client()
        .post(format!("{}{path}", mock.posthog_url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    status_json(resp).await
}

fn key(mock: &MockHandle) -> String {
    mock.config().posthog.api_key.clone()
}

#[tokio::test]
async fn batch_is_accepted_and_recorded_in_order() {
    let mock = start().await;
    let body = ph_batch(&key(&mock), [1, 2, 3]);
    let (status, resp) = post_json(&mock, "/batch/", &body).await;
    assert_eq!((status, resp), (200, json!({"status": 1})));

    let events = mock.posthog_events();
    assert_eq!(events, vec![ph_event(1), ph_event(2), ph_event(3)]);
    let reqs = mock.requests_to(Endpoint::PosthogCapture);
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].envelope,
        Some(json!({"api_key": key(&mock), "sent_at": "2024-05-01T12:00:05Z"}))
    );
    assert_eq!(reqs[0].accepted_ids, vec![uuid(1), uuid(2), uuid(3)]);
    let stats = mock.stats().posthog;
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.requests_by_status.get(&200), Some(&1));
    assert_eq!(stats.events_accepted, 3);
    assert_eq!(stats.unique_events, 3);
    assert_eq!(stats.duplicates, 0);
}

#[tokio::test]
async fn every_route_with_and_without_trailing_slash() {
    let mock = start().await;
    let mut n = 0;
    for path in [
        "/batch",
        "/batch/",
        "/i/v0/e",
        "/i/v0/e/",
        "/e",
        "/e/",
        "/capture",
        "/capture/",
    ] {
        n += 1;
        let mut ev = ph_event(n);
        ev["api_key"] = json!(key(&mock));
        let (status, body) = post_json(&mock, path, &ev).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    assert_eq!(mock.stats().posthog.events_accepted, n);
    let (status, _) = post_json(&mock, "/nope", &json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = post_json(&mock, "/import", &json!({})).await;
    assert_eq!(status, 404, "Mixpanel routes are not PostHog routes");
}

#[tokio::test]
async fn array_and_single_shapes_take_per_event_tokens() {
    let mock = start().await;
    let k = key(&mock);
    let mut a = ph_event(1);
    a["token"] = json!(k);
    let mut b = ph_event(2);
    b["properties"]["token"] = json!(k);
    let (status, body) = post_json(&mock, "/e/", &json!([a, b])).await;
    assert_eq!(status, 200, "{body}");
    let mut c = ph_event(3);
    c["$token"] = json!(k);
    let (status, body) = post_json(&mock, "/i/v0/e/", &c).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.stats().posthog.events_accepted, 3);
}

#[tokio::test]
async fn token_rules() {
    let mock = start().await;
    let k = key(&mock);
    let mut other = ph_event(2);
    other["token"] = json!("phc_other_project");
    let mut mine = ph_event(1);
    mine["token"] = json!(k);
    let cases = [
        ("no token", json!([ph_event(1)]), 401),
        ("personal key", ph_batch("phx_personal", [1]), 401),
        ("unknown key", ph_batch("phc_someone_else", [1]), 401),
        ("empty key", ph_batch("  ", [1]), 401),
        ("too long", ph_batch(&"k".repeat(65), [1]), 401),
        ("non-ASCII", ph_batch("phc_clé", [1]), 401),
        ("multiple tokens", json!([mine, other]), 401),
        (
            "batch without api_key",
            json!({"batch": [ph_event(1)]}),
            400,
        ),
        (
            "token alias on batch",
            json!({"token": k, "batch": [ph_event(1)]}),
            200,
        ),
    ];
    for (name, body, want) in cases {
        let (status, resp) = post_json(&mock, "/batch/", &body).await;
        assert_eq!(status, want, "{name}: {resp}");
        if want != 200 {
            assert_eq!(
                resp["status"],
                json!(want),
                "{name}: error body has the status"
            );
            assert!(resp["error"].is_string(), "{name}: {resp}");
        }
    }
    assert_eq!(mock.stats().posthog.events_accepted, 1);
}

#[tokio::test]
async fn unknown_token_accepted_when_not_required() {
    let config = MockConfig {
        posthog: PosthogConfig {
            require_known_token: false,
            ..PosthogConfig::default()
        },
        ..MockConfig::default()
    };
    let mock = start_with(config).await;
    let (status, _) = post_json(&mock, "/batch/", &ph_batch("phc_someone_else", [1, 2])).await;
    assert_eq!(status, 200);
    let stats = mock.stats().posthog;
    assert_eq!(stats.events_accepted, 2);
    assert_eq!(stats.unknown_token_events, 2);
    // Bad shapes are still refused.
    let (status, _) = post_json(&mock, "/batch/", &ph_batch("phx_personal", [3])).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn each_event_rule_rejects_the_whole_request() {
    let mock = start().await;
    let k = key(&mock);
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut ev = ph_event(7);
        f(&mut ev);
        ev
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "missing event",
            edit(&|e| drop(e.as_object_mut().unwrap().remove("event"))),
            "event",
        ),
        ("empty event", edit(&|e| e["event"] = json!("")), "event"),
        ("numeric event", edit(&|e| e["event"] = json!(5)), "event"),
        (
            "no distinct_id",
            edit(&|e| drop(e.as_object_mut().unwrap().remove("distinct_id"))),
            "distinct_id",
        ),
        (
            "null distinct_id",
            edit(&|e| e["distinct_id"] = Value::Null),
            "distinct_id",
        ),
        (
            "empty distinct_id",
            edit(&|e| e["distinct_id"] = json!("")),
            "distinct_id",
        ),
        (
            "placeholder anonymous",
            edit(&|e| e["distinct_id"] = json!("Anonymous")),
            "distinct_id",
        ),
        (
            "placeholder null",
            edit(&|e| e["distinct_id"] = json!("null")),
            "distinct_id",
        ),
        (
            "placeholder 0",
            edit(&|e| e["distinct_id"] = json!(0)),
            "distinct_id",
        ),
        (
            "bad uuid",
            edit(&|e| e["uuid"] = json!("not-a-uuid")),
            "uuid",
        ),
        ("numeric uuid", edit(&|e| e["uuid"] = json!(12)), "uuid"),
        (
            "bad timestamp",
            edit(&|e| e["timestamp"] = json!("yesterday")),
            "timestamp",
        ),
        (
            "naive timestamp",
            edit(&|e| e["timestamp"] = json!("2024-05-01T12:00:00")),
            "timestamp",
        ),
        (
            "numeric timestamp",
            edit(&|e| e["timestamp"] = json!(1714564800)),
            "timestamp",
        ),
        (
            "properties not object",
            edit(&|e| e["properties"] = json!([1])),
            "properties",
        ),
    ];
    for (name, bad, field) in cases {
        let body = json!({"api_key": k, "batch": [ph_event(1), bad]});
        let (status, resp) = post_json(&mock, "/batch/", &body).await;
        assert_eq!(status, 400, "{name}: {resp}");
        let msg = resp["error"].as_str().unwrap();
        assert!(msg.contains("index 1"), "{name}: {resp}");
        if let Some(errors) = resp.get("errors") {
            assert_eq!(errors[0]["index"], json!(1), "{name}: {resp}");
            assert_eq!(errors[0]["field"], json!(field), "{name}: {resp}");
        }
    }
    let stats = mock.stats().posthog;
    assert_eq!(
        stats.events_accepted, 0,
        "nothing from a rejected request is kept"
    );
    assert!(mock.posthog_events().is_empty());

    // The good variants: distinct_id in properties, $distinct_id alias, empty uuid, no timestamp.
    let mut a = ph_event(1);
    let obj = a.as_object_mut().unwrap();
    obj.remove("distinct_id");
    a["properties"]["distinct_id"] = json!("u-1");
    let mut b = ph_event(2);
    b.as_object_mut().unwrap().remove("distinct_id");
    b["$distinct_id"] = json!("u-2");
    let mut c = ph_event(3);
    c["uuid"] = json!("");
    c.as_object_mut().unwrap().remove("timestamp");
    let mut d = ph_event(4);
    d["timestamp"] = json!("2024-05-01T14:00:00+02:00");
    let (status, resp) = post_json(
        &mock,
        "/batch/",
        &json!({"api_key": k, "batch": [a, b, c, d]}),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(mock.stats().posthog.events_accepted, 4);
}

#[tokio::test]
async fn empty_batch_and_bad_json_are_400() {
    let mock = start().await;
    let (status, resp) = post_json(
        &mock,
        "/batch/",
        &json!({"api_key": key(&mock), "batch": []}),
    )
    .await;
    assert_eq!(status, 400, "{resp}");
    assert_eq!(resp["code"], json!("empty_batch"));
    let resp = client()
        .post(format!("{}/batch/", mock.posthog_url()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let (status, _) = post_json(
        &mock,
        "/batch/",
        &json!({"api_key": key(&mock), "batch": [ph_event(1)], "sent_at": "now"}),
    )
    .await;
    assert_eq!(status, 400, "sent_at must be RFC 3339");
}

#[tokio::test]
async fn performance_events_are_filtered() {
    let mock = start().await;
    let perf_ev = json!({"event": "$performance_event", "distinct_id": "u", "properties": {}});
    let body = json!({"api_key": key(&mock), "batch": [perf_ev]});
    let (status, resp) = post_json(&mock, "/batch/", &body).await;
    assert_eq!((status, resp), (200, json!({"status": 1})));
    assert_eq!(mock.stats().posthog.events_accepted, 0);
}

#[tokio::test]
async fn gzip_by_header_by_magic_and_by_query() {
    let mock = start().await;
    let c = client();
    let url = format!("{}/batch/", mock.posthog_url());
    let body = ph_batch(&key(&mock), [1]).to_string();
    let resp = c
        .post(&url)
        .header("content-encoding", "gzip")
        .body(gz(body.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Magic bytes only, no header.
    let body2 = ph_batch(&key(&mock), [2]).to_string();
    let resp = c
        .post(&url)
        .body(gz(body2.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // posthog-js style ?compression=gzip-js.
    let body3 = ph_batch(&key(&mock), [3]).to_string();
    let resp = c
        .post(format!("{url}?compression=gzip-js"))
        .body(gz(body3.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Broken gzip.
    let resp = c
        .post(&url)
        .header("content-encoding", "gzip")
        .body(vec![0x1f, 0x8b, 0x08, 0, 0, 0, 1, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(mock.stats().posthog.events_accepted, 3);
    let reqs = mock.requests_to(Endpoint::PosthogCapture);
    assert!(
        reqs[..3]
            .iter()
            .all(|r| r.gzipped && r.decoded_bytes > r.body_bytes / 2)
    );
}

#[tokio::test]
async fn decompression_cap_gives_413() {
    let config = MockConfig {
        posthog: PosthogConfig {
            decompressed_limit: 10_000,
            ..PosthogConfig::default()
        },
        ..MockConfig::default()
    };
    let mock = start_with(config).await;
    let mut ev = ph_event(1);
    ev["properties"]["pad"] = json!("x".repeat(20_000));
    let body = json!({"api_key": key(&mock), "batch": [ev]}).to_string();
    let resp = client()
        .post(format!("{}/batch/", mock.posthog_url()))
        .header("content-encoding", "gzip")
        .body(gz(body.as_bytes()))
        .send()
        .await
        .unwrap();
    let (status, resp) = status_json(resp).await;
    assert_eq!(status, 413, "{resp}");
    assert_eq!(resp["code"], json!("payload_too_large"));
}

#[tokio::test]
async fn body_limits_per_route() {
    let mock = start().await;
    let k = key(&mock);
    // 2.5 MiB: over the 2 MiB of /e, under the 20 MiB of /batch.
    let mut ev = ph_event(1);
    ev["properties"]["pad"] = json!("x".repeat(900_000));
    let mut evs = Vec::new();
    for i in 0..3 {
        let mut e = ev.clone();
        e["uuid"] = json!(uuid(i));
        evs.push(e);
    }
    let body = json!({"api_key": k, "batch": evs});
    assert!(body.to_string().len() > 2 * 1024 * 1024);
    let (status, resp) = post_json(&mock, "/e/", &body).await;
    assert_eq!(status, 413, "{resp}");
    let (status, resp) = post_json(&mock, "/batch/", &body).await;
    assert_eq!(status, 200, "{resp}");

    // One event over 1 MB is too big even inside a small-enough batch.
    let mut big = ph_event(9);
    big["properties"]["pad"] = json!("y".repeat(1_000_001));
    let (status, resp) = post_json(&mock, "/batch/", &json!({"api_key": k, "batch": [big]})).await;
    assert_eq!(status, 413, "{resp}");
}

#[tokio::test]
async fn batch_limit_is_configurable_and_enforced() {
    let config = MockConfig {
        posthog: PosthogConfig {
            batch_body_limit: 50_000,
            ..PosthogConfig::default()
        },
        ..MockConfig::default()
    };
    let mock = start_with(config).await;
    let body = ph_batch(&key(&mock), 0..500);
    assert!(body.to_string().len() > 50_000);
    let (status, _) = post_json(&mock, "/batch/", &body).await;
    assert_eq!(status, 413);
    let (status, _) = post_json(&mock, "/batch/", &ph_batch(&key(&mock), 0..10)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn form_data_base64_and_beacon() {
    let mock = start().await;
    let c = client();
    let mut ev = ph_event(1);
    ev["api_key"] = json!(key(&mock));
    let form = format!(
        "data={}&compression=base64",
        form_encode(&b64(ev.to_string().as_bytes()))
    );
    let resp = c
        .post(format!("{}/e/", mock.posthog_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Base64 without hint and with '+' turned into spaces (unencoded form value).
    let mut ev2 = ph_event(2);
    ev2["api_key"] = json!(key(&mock));
    ev2["properties"]["bits"] = json!("\u{fbff}>>>???");
    let raw = b64(ev2.to_string().as_bytes());
    assert!(raw.contains('+') || raw.contains('/'));
    let resp = c
        .post(format!("{}/e/?beacon=1", mock.posthog_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("data={}", raw.replace('+', " ")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(mock.posthog_events(), vec![ev, ev2]);
}

#[tokio::test]
async fn duplicates_are_counted_by_uuid() {
    let mock = start().await;
    let body = ph_batch(&key(&mock), [1, 2, 3]);
    for _ in 0..2 {
        let (status, _) = post_json(&mock, "/batch/", &body).await;
        assert_eq!(status, 200);
    }
    // Same uuid in another case is the same UUID.
    let mut ev = ph_event(1);
    ev["uuid"] = json!(uuid(1).to_uppercase());
    let (status, _) = post_json(
        &mock,
        "/batch/",
        &json!({"api_key": key(&mock), "batch": [ev]}),
    )
    .await;
    assert_eq!(status, 200);
    let stats = mock.stats().posthog;
    assert_eq!(stats.events_accepted, 7);
    assert_eq!(stats.unique_events, 3);
    assert_eq!(stats.duplicates, 4);
    assert_eq!(
        mock.posthog_events().len(),
        7,
        "duplicates are still recorded"
    );
    mock.reset();
    assert_eq!(mock.stats(), Default::default());
    let (status, _) = post_json(&mock, "/batch/", &body).await;
    assert_eq!(status, 200);
    assert_eq!(
        mock.stats().posthog.duplicates,
        0,
        "reset forgets seen uuids"
    );
    mock.wait_for_events(Destination::Posthog, 3, std::time::Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test]
async fn options_and_methods() {
    let mock = start().await;
    let c = client();
    let resp = c
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/batch/", mock.posthog_url()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = c
        .put(format!("{}/batch/", mock.posthog_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let mut ev = ph_event(1);
    ev["api_key"] = json!(key(&mock));
    let resp = c
        .get(format!(
            "{}/e/?data={}",
            mock.posthog_url(),
            form_encode(&b64(ev.to_string().as_bytes()))
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "legacy GET ?data=");
}
