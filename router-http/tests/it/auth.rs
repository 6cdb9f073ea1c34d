//! Write keys (Basic auth, body, query) and GA4 api secrets.

use base64::Engine as _;
use router_http::HttpConfig;
use serde_json::Value;

use crate::support::{start, test_config};

fn keyed() -> HttpConfig {
    HttpConfig {
        write_keys: vec!["wk_live_0123456789".into(), "wk_other".into()],
        ga4_api_secrets: vec!["sec_ret".into()],
        ..test_config()
    }
}

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

#[tokio::test]
async fn write_key_is_required_when_configured() {
    let s = start(keyed()).await;
    let ev = r#"{"event":"A","userId":"u"}"#;
    // Missing.
    let r = s.post("/v1/track", ev).await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "error");
    assert!(v["reason"].as_str().unwrap().contains("write key"));
    // Wrong, in Basic auth: refused before the body is read.
    let r = s
        .client
        .post(s.url("/v1/track"))
        .header("authorization", basic("wk_live_012345678"))
        .body(ev)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Right, in Basic auth.
    let r = s
        .client
        .post(s.url("/v1/track"))
        .header("authorization", basic("wk_live_0123456789"))
        .header("content-type", "application/json")
        .body(ev)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // In the body (Segment batch, and /collect).
    let r = s
        .post(
            "/v1/batch",
            r#"{"writeKey":"wk_other","batch":[{"type":"track","event":"A","userId":"u"}]}"#,
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = s
        .post(
            "/collect",
            r#"{"writeKey":"nope","batch":[{"event":"A","userId":"u"}]}"#,
        )
        .await;
    assert_eq!(r.status(), 401);
    // In the query.
    let r = s.post("/collect?writeKey=wk_other", ev).await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.records().len(), 3, "refused requests kept nothing");
    let m = s.metrics().await;
    assert!(m.contains("router_http_auth_failures_total 3"), "{m}");
    assert!(m.contains("router_http_requests_total{endpoint=\"segment\",status=\"401\"} 2"));
}

#[tokio::test]
async fn beacon_text_plain_with_query_write_key() {
    let s = start(keyed()).await;
    let r = s
        .client
        .post(s.url("/v1/t?writeKey=wk_live_0123456789"))
        .header("content-type", "text/plain;charset=UTF-8")
        .header("origin", "https://shop.example")
        .body(r#"{"event":"Page Left","anonymousId":"a1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert_eq!(s.records()[0].event.name, "Page Left");
}

#[tokio::test]
async fn ga4_api_secret_is_checked_when_configured() {
    let s = start(keyed()).await;
    let body = r#"{"client_id":"1.2","events":[{"name":"sign_up"}]}"#;
    assert_eq!(s.post("/mp/collect", body).await.status(), 401);
    assert_eq!(
        s.post("/mp/collect?api_secret=wrong", body).await.status(),
        401
    );
    assert_eq!(
        s.post("/mp/collect?measurement_id=G-1&api_secret=sec_ret", body)
            .await
            .status(),
        204
    );
    // Write keys do not apply to GA4, and the validation server checks no secret (as Google).
    assert_eq!(s.post("/debug/mp/collect", body).await.status(), 200);
    assert_eq!(s.records().len(), 1);
}

#[tokio::test]
async fn open_when_no_keys_are_configured() {
    let s = start(test_config()).await;
    let r = s
        .client
        .post(s.url("/v1/track"))
        .header("authorization", basic("anything"))
        .body(r#"{"event":"A","userId":"u"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
