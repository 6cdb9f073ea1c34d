//! PostHog SDK endpoints: `/capture/`, `/batch/`, `/e/`, `/i/v0/e/`.

use base64::Engine;

use crate::support::{gzip, start, test_config};

#[tokio::test]
async fn posthog_node_batch_and_js_array_land_in_the_log() {
    let s = start(test_config()).await;
    let r = s
        .post(
            "/batch/",
            r#"{"api_key":"phc_x","batch":[{"event":"Sign Up","distinct_id":"u1","properties":{"$lib":"posthog-node"}}]}"#,
        )
        .await;
    assert_eq!(r.status(), 200);
    for path in ["/e/", "/i/v0/e/", "/capture", "/e"] {
        let r = s
            .post(path, r#"[{"event":"$pageview","properties":{"distinct_id":"d1","token":"phc_x","$current_url":"https://a.io/"}}]"#)
            .await;
        assert_eq!(r.status(), 200, "{path}");
    }
    let recs = s.records();
    assert_eq!(recs.len(), 5);
    assert_eq!(recs[0].event.name, "Sign Up");
    assert_eq!(recs[0].destinations, ["mixpanel"]);
    assert_eq!(recs[1].event.name, "Page View");
    assert_eq!(recs[1].event.context["page"]["url"], "https://a.io/");
}

#[tokio::test]
async fn posthog_js_gzip_js_and_base64_forms() {
    let s = start(test_config()).await;
    let json = br#"[{"event":"Clicked","distinct_id":"u1"}]"#;
    // gzip-js: a gzip body flagged in the query, no Content-Encoding.
    let r = s
        .client
        .post(s.url("/e/?compression=gzip-js&ver=1.200.0"))
        .header("content-type", "text/plain")
        .body(gzip(json))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Form with base64 data.
    let b64 = base64::engine::general_purpose::STANDARD.encode(json);
    let r = s
        .client
        .post(s.url("/e/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "data={}",
            b64.replace('+', "%2B").replace('=', "%3D")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.records().len(), 2);
    // Forms are refused elsewhere, lz64 is refused here.
    let r = s
        .client
        .post(s.url("/collect"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("data=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = s
        .client
        .post(s.url("/e/?compression=lz64"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = s
        .post("/batch/", r#"{"api_key":"k","batch":[{"event":"x"}]}"#)
        .await;
    assert_eq!(r.status(), 400, "no distinct_id: every item invalid");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["field"], "distinct_id");
}

#[tokio::test]
async fn posthog_project_key_is_the_write_key() {
    let mut cfg = test_config();
    cfg.write_keys = vec!["phc_good".into()];
    let s = start(cfg).await;
    let ok = s
        .post(
            "/batch/",
            r#"{"api_key":"phc_good","batch":[{"event":"A","distinct_id":"u"}]}"#,
        )
        .await;
    assert_eq!(ok.status(), 200);
    let bad = s
        .post(
            "/batch/",
            r#"{"api_key":"phc_bad","batch":[{"event":"A","distinct_id":"u"}]}"#,
        )
        .await;
    assert_eq!(bad.status(), 401);
}
