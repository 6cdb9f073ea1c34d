//! CORS preflight and headers, sendBeacon bodies, gzip.

use router_http::HttpConfig;
use serde_json::Value;

use crate::support::{gzip, start, test_config};

#[tokio::test]
async fn preflight_mirrors_an_allowed_origin_on_every_ingest_path() {
    let s = start(HttpConfig {
        cors_allowed_origins: vec![
            "https://shop.example".into(),
            "https://*.example.com".into(),
        ],
        cors_max_age_secs: 900,
        ..test_config()
    })
    .await;
    for path in [
        "/collect",
        "/v1/track",
        "/v1/batch",
        "/mp/collect",
        "/debug/mp/collect",
    ] {
        let r = s
            .client
            .request(reqwest::Method::OPTIONS, s.url(path))
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,x-sdk")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{path}");
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-methods"], "POST, OPTIONS");
        assert_eq!(h["access-control-allow-headers"], "content-type,x-sdk");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-max-age"], "900");
    }
    // Not on the list: 403, no CORS headers.
    let r = s
        .client
        .request(reqwest::Method::OPTIONS, s.url("/collect"))
        .header("origin", "https://evil.test")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // Actual requests: headers when allowed (also on errors), none otherwise.
    let r = s
        .client
        .post(s.url("/collect"))
        .header("origin", "https://shop.example")
        .body(r#"{"event":"A","userId":"u"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert_eq!(r.headers()["vary"], "Origin");
    let r = s
        .client
        .post(s.url("/collect"))
        .header("origin", "https://shop.example")
        .body("{bad")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let r = s
        .client
        .post(s.url("/collect"))
        .header("origin", "https://evil.test")
        .body(r#"{"event":"A","userId":"u"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn any_origin_is_mirrored_by_default() {
    let s = start(test_config()).await;
    let r = s
        .client
        .request(reqwest::Method::OPTIONS, s.url("/v1/page"))
        .header("origin", "https://anything.test")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://anything.test"
    );
    assert_eq!(
        r.headers()["access-control-allow-headers"],
        "Content-Type, Authorization"
    );
}

#[tokio::test]
async fn send_beacon_text_plain_and_no_content_type() {
    let s = start(test_config()).await;
    let r = s
        .client
        .post(s.url("/collect"))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(r#"{"event":"A","anonymousId":"a"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .client
        .post(s.url("/collect"))
        .body(r#"{"event":"B","anonymousId":"a"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.records().len(), 2);
}

#[tokio::test]
async fn unsupported_content_type_or_encoding_is_415() {
    let s = start(test_config()).await;
    let r = s
        .client
        .post(s.url("/collect"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert!(
        r.json::<Value>().await.unwrap()["reason"]
            .as_str()
            .unwrap()
            .contains("content type")
    );
    let r = s
        .client
        .post(s.url("/v1/batch"))
        .header("content-encoding", "br")
        .body("xx")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
}

#[tokio::test]
async fn gzip_bodies_are_accepted() {
    let s = start(test_config()).await;
    let body = gzip(br#"{"batch":[{"type":"track","event":"Sign Up","userId":"u"}]}"#);
    let r = s
        .client
        .post(s.url("/v1/batch"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.records()[0].event.name, "Sign Up");
    let r = s
        .client
        .post(s.url("/v1/batch"))
        .header("content-encoding", "gzip")
        .body("not gzip at all")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
