//! Helpers shared by the mock-destination tests.
#![allow(dead_code)]

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use perf::mock::{MockConfig, MockDestinations, MockHandle};
use serde_json::{Value, json};

/// Starts the mocks with the default (strict) configuration.
pub async fn start() -> MockHandle {
    start_with(MockConfig::default()).await
}

/// Starts the mocks with `config`.
pub async fn start_with(config: MockConfig) -> MockHandle {
    MockDestinations::start(config)
        .await
        .expect("mock destinations start")
}

/// A client without connection reuse surprises: short timeout, no proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Gzip-compresses `data`.
pub fn gz(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

/// Now in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A deterministic UUID for event `i`.
pub fn uuid(i: u64) -> String {
    format!("018f0000-0000-7000-8000-{i:012x}")
}

/// A valid PostHog event.
pub fn ph_event(i: u64) -> Value {
    json!({
        "event": "Purchase",
        "distinct_id": format!("user-{i}"),
        "uuid": uuid(i),
        "timestamp": "2024-05-01T12:00:00.123Z",
        "properties": {"utm_source": "news", "$lib": "events-router"}
    })
}

/// A valid PostHog `/batch/` body with events `ids`.
pub fn ph_batch(key: &str, ids: impl IntoIterator<Item = u64>) -> Value {
    json!({
        "api_key": key,
        "batch": ids.into_iter().map(ph_event).collect::<Vec<_>>(),
        "sent_at": "2024-05-01T12:00:05Z"
    })
}

/// A valid Mixpanel `/import` event.
pub fn mp_event(i: u64) -> Value {
    json!({
        "event": "Sign Up",
        "properties": {
            "time": now_ms() - 60_000,
            "distinct_id": format!("user-{i}"),
            "$insert_id": format!("ins-{i:08}"),
            "plan": "pro"
        }
    })
}

/// Basic auth header value for `user:pass`.
pub fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// Base64 (standard, padded).
pub fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Percent-encodes a form value.
pub fn form_encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Status and body text of a response.
pub async fn status_text(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// Status and JSON body of a response.
pub async fn status_json(resp: reqwest::Response) -> (u16, Value) {
    let (status, text) = status_text(resp).await;
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, value)
}
