//! Graceful shutdown and panic isolation.

use std::sync::Arc;
use std::time::Duration;

use router_http::MetricsSource;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{read_to_close, start, test_config};

#[tokio::test]
async fn shutdown_finishes_an_in_flight_request() {
    let mut s = start(test_config()).await;
    let body = br#"{"event":"Sign Up","userId":"late"}"#;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /collect HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.trigger_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are refused once shutdown has started.
    assert!(TcpStream::connect(s.addr).await.is_err());
    assert!(s.state.is_shutting_down());
    c.write_all(&body[10..]).await.unwrap();
    let resp = read_to_close(&mut c).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#"{"status":"ok","accepted":1}"#), "{resp}");
    s.shutdown().await.unwrap();
    let events = s.records();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.user_id.as_deref(), Some("late"));
    s.log.close().await.unwrap();
}

#[tokio::test]
async fn shutdown_with_idle_connections_returns_promptly() {
    let mut s = start(test_config()).await;
    // A kept-alive idle connection.
    assert_eq!(s.get("/health").await.status(), 200);
    let started = std::time::Instant::now();
    s.shutdown().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn after_begin_shutdown_ingest_and_ready_answer_503() {
    let s = start(test_config()).await;
    s.state.begin_shutdown();
    let r = s.post("/collect", r#"{"event":"A","userId":"u"}"#).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let r = s.get("/ready").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["reason"], "shutting down");
    assert_eq!(s.get("/health").await.status(), 200);
    assert!(s.records().is_empty());
}

struct Lines;

impl MetricsSource for Lines {
    fn render_prometheus(&self, out: &mut String) {
        out.push_str("# TYPE router_sink_delivered_total counter\nrouter_sink_delivered_total{sink=\"posthog\"} 7\n");
    }
}

struct Panics;

impl MetricsSource for Panics {
    fn render_prometheus(&self, _out: &mut String) {
        panic!("a buggy metrics source");
    }
}

#[tokio::test]
async fn metrics_sources_are_rendered_and_a_panic_is_a_counted_500() {
    let s = start(test_config()).await;
    s.state.add_metrics_source(Arc::new(Lines));
    assert!(
        s.metrics()
            .await
            .contains("router_sink_delivered_total{sink=\"posthog\"} 7")
    );
    s.state.add_metrics_source(Arc::new(Panics));
    let r = s.get("/metrics").await;
    assert_eq!(r.status(), 500);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "error");
    // The server carries on, and so does the same client's connection pool.
    let r = s.post("/collect", r#"{"event":"A","userId":"u"}"#).await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.records().len(), 1);
}

#[tokio::test]
async fn a_stalled_request_is_cut_when_the_grace_period_ends() {
    let mut s = crate::support::start(router_http::HttpConfig {
        shutdown_grace_ms: 200,
        ..test_config()
    })
    .await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"POST /collect HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let err = s.shutdown().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    match err {
        router_http::ServeError::GraceExpired { connections, .. } => assert_eq!(connections, 1),
        other => panic!("{other}"),
    }
    // The client got no 2xx: its request was not accepted, and nothing was kept.
    let resp = read_to_close(&mut c).await;
    assert!(!resp.contains("200 OK"), "{resp}");
    assert!(s.records().is_empty());
}
