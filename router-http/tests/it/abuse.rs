//! Caps, bombs, rate limits, slow clients, connection limits, a full log, garbage.

use std::time::{Duration, Instant};

use router_http::{BodyLimits, HttpConfig, RateLimit, RateLimits};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{gzip, raw, read_to_close, start, start_with, test_config};

#[tokio::test]
async fn oversized_bodies_are_413() {
    let s = start(HttpConfig {
        max_body_bytes: BodyLimits {
            collect: 1000,
            segment: 2000,
            ga4: 500,
            posthog: 700,
        },
        ..test_config()
    })
    .await;
    let big = format!(
        r#"{{"event":"A","userId":"u","properties":{{"p":"{}"}}}}"#,
        "x".repeat(1500)
    );
    // Declared too large (Content-Length).
    let r = s.post("/collect", &big).await;
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "error");
    // The same body fits the Segment cap.
    assert_eq!(s.post("/v1/track", &big).await.status(), 200);
    assert_eq!(s.post("/mp/collect", &big).await.status(), 413);
    // Chunked, no length: refused while reading.
    let chunk = "y".repeat(600);
    let req = format!(
        "POST /collect HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
         {len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    let resp = raw(s.addr, req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert_eq!(s.records().len(), 1);
}

#[tokio::test]
async fn gzip_bomb_is_413_quickly() {
    let s = start(HttpConfig {
        max_decompressed_bytes: 256 * 1024,
        ..test_config()
    })
    .await;
    // 64 MiB of spaces compress to about 64 KiB.
    let bomb = gzip(&vec![b' '; 64 << 20]);
    assert!(bomb.len() < 200 * 1024, "{}", bomb.len());
    let started = Instant::now();
    let r = s
        .client
        .post(s.url("/collect"))
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(
        r.json::<Value>().await.unwrap()["reason"]
            .as_str()
            .unwrap()
            .contains("decompressed")
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn rate_limit_per_ip_answers_429_then_recovers() {
    let s = start(HttpConfig {
        rate_limit: RateLimits {
            per_ip: Some(RateLimit {
                per_second: 10.0,
                burst: 2,
            }),
            ..RateLimits::default()
        },
        ..test_config()
    })
    .await;
    let ev = r#"{"event":"A","userId":"u"}"#;
    assert_eq!(s.post("/collect", ev).await.status(), 200);
    assert_eq!(s.post("/collect", ev).await.status(), 200);
    let r = s.post("/collect", ev).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    // Probes are not limited.
    assert_eq!(s.get("/health").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(s.post("/collect", ev).await.status(), 200);
    assert!(
        s.metrics()
            .await
            .contains("router_http_rate_limited_total{scope=\"ip\"} 1")
    );
}

#[tokio::test]
async fn rate_limit_per_write_key() {
    let s = start(HttpConfig {
        rate_limit: RateLimits {
            per_write_key: Some(RateLimit {
                per_second: 5.0,
                burst: 1,
            }),
            ..RateLimits::default()
        },
        ..test_config()
    })
    .await;
    let ev = r#"{"event":"A","userId":"u"}"#;
    assert_eq!(s.post("/collect?writeKey=k1", ev).await.status(), 200);
    let r = s
        .post(
            "/collect",
            r#"{"writeKey":"k1","batch":[{"event":"A","userId":"u"}]}"#,
        )
        .await;
    assert_eq!(r.status(), 429, "key found in the body counts too");
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(s.post("/collect?writeKey=k2", ev).await.status(), 200);
    assert_eq!(s.records().len(), 2);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(s.post("/collect?writeKey=k1", ev).await.status(), 200);
}

#[tokio::test]
async fn full_log_answers_503_and_not_ready() {
    let s = start_with(test_config(), |c| {
        c.segment_max_bytes = 4096;
        c.max_total_bytes = 8192;
    })
    .await;
    let one = r#"{"event":"A","userId":"u"}"#;
    assert_eq!(s.post("/collect", one).await.status(), 200);
    let batch = format!("[{}]", vec![one; 40].join(","));
    let r = s.post("/collect", &batch).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let v: Value = r.json().await.unwrap();
    assert!(v["reason"].as_str().unwrap().contains("full"));
    let r = s.get("/ready").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    // Nothing of the refused request was kept; the earlier event is intact.
    assert_eq!(s.records().len(), 1);
    // A request that still fits is accepted, and readiness comes back.
    assert_eq!(s.post("/collect", one).await.status(), 200);
    assert_eq!(s.get("/ready").await.status(), 200);
    assert!(s.metrics().await.contains("router_http_log_full_total 1"));
}

#[tokio::test]
async fn slow_body_is_408() {
    let s = start(HttpConfig {
        body_read_timeout_ms: 200,
        ..test_config()
    })
    .await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"POST /collect HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"ev")
        .await
        .unwrap();
    let started = Instant::now();
    let resp = read_to_close(&mut c).await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn slow_headers_close_the_connection() {
    let s = start(HttpConfig {
        header_read_timeout_ms: 200,
        ..test_config()
    })
    .await;
    let started = Instant::now();
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"POST /collect HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let resp = read_to_close(&mut c).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(!resp.contains("200"), "{resp}");
}

#[tokio::test]
async fn connections_over_the_cap_are_closed() {
    let s = start(HttpConfig {
        max_connections: 1,
        connection_queue_timeout_ms: 50,
        ..test_config()
    })
    .await;
    let mut first = TcpStream::connect(s.addr).await.unwrap();
    // Make sure the first connection holds the slot.
    first
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::io::AsyncReadExt::read(&mut first, &mut buf)
        .await
        .unwrap();
    assert!(
        std::str::from_utf8(&buf[..n])
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    let resp = raw(s.addr, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(resp, "", "closed unanswered");
    drop(first);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let resp = raw(
        s.addr,
        b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        s.metrics()
            .await
            .contains("router_http_connections_refused_total 1")
    );
}

#[tokio::test]
async fn garbage_never_yields_500() {
    let s = start(test_config()).await;
    // A small deterministic generator (xorshift) of hostile bodies.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let pieces: [&str; 16] = [
        "{",
        "}",
        "[",
        "]",
        "\"",
        ",",
        ":",
        "null",
        "\"event\"",
        "\"userId\"",
        "\"batch\"",
        "1e999",
        "\\u0000",
        "\u{fffd}",
        "\"type\"",
        "-",
    ];
    let paths = [
        "/collect",
        "/v1/batch",
        "/v1/track",
        "/mp/collect",
        "/debug/mp/collect",
    ];
    for i in 0..150 {
        let len = (next() % 40) as usize;
        let mut body = String::new();
        for _ in 0..len {
            body.push_str(pieces[(next() % pieces.len() as u64) as usize]);
        }
        if i % 10 == 0 {
            body = "[".repeat(5000);
        }
        let path = paths[i % paths.len()];
        let r = s.post(path, &body).await;
        assert!(
            r.status().as_u16() < 500,
            "{path} {body:?} -> {}",
            r.status()
        );
    }
    let m = s.metrics().await;
    assert!(m.contains("router_http_panics_total{scope=\"request\"} 0"));
    assert!(!m.contains("status=\"500\""));
}

#[tokio::test]
async fn a_large_upload_over_the_cap_still_gets_its_413() {
    let s = start(test_config()).await;
    let big = vec![b'x'; 8 << 20];
    for _ in 0..3 {
        let r = s
            .client
            .post(s.url("/collect"))
            .body(big.clone())
            .send()
            .await
            .expect("the client reads the 413 rather than a reset");
        assert_eq!(r.status(), 413);
    }
}
