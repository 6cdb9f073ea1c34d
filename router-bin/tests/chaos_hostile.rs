//! Hostile inputs over HTTP against the real binary, alongside a well-behaved client: malformed
//! and truncated JSON, invalid UTF-8, deep nesting, huge strings and arrays, too many events
//! and properties, a gzip bomb and corrupt gzip, wrong content types, encodings and methods,
//! oversized and lying bodies, broken framing, huge headers and URLs, non-HTTP bytes,
//! slow-loris heads and bodies, and thousands of idle connections. Each hostile request gets
//! its 4xx (or is cut off) within a time bound; the server never answers 500 and never dies;
//! every event the well-behaved client posted meanwhile is answered 200 and arrives at the
//! mocks.
//!
//! `CHAOS_IDLE` (default 2000) sets the number of idle connections; the test raises its soft
//! `RLIMIT_NOFILE` (inherited by the router) to at least that plus 1000 when the hard limit
//! allows, and `server.max_connections` to the same (default 4096: past it new connections,
//! the good client's included, are closed unanswered until idle ones time out).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    FAST_DELIVERY, Ledger, Outcome, Router, assert_conserved, batch, http_client, metric,
    raise_nofile, wait_delivered, write_config,
};
use perf::mock::{MockConfig, MockDestinations};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The header deadline: long enough for every idle connection to be open at once.
const HEADER_TIMEOUT_MS: u64 = 3000;

/// What came back on a raw connection.
#[derive(Debug)]
struct Reply {
    /// Status of the first response, if one arrived.
    status: Option<u16>,
    /// The server closed the connection (EOF or reset) before the deadline.
    closed: bool,
    /// From the first byte sent to the answer (or the close).
    took: Duration,
}

/// Sends `req` (while reading, so an early answer is seen) and reads until the server closes
/// the connection or `deadline` passes.
async fn exchange(addr: SocketAddr, req: Vec<u8>, deadline: Duration) -> Reply {
    let started = Instant::now();
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&req).await;
        // Keep the write half open: a half-close may end the exchange early.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(wr);
    });
    let mut out = Vec::new();
    let mut status_at = None;
    let closed = tokio::time::timeout(deadline, async {
        let mut buf = [0u8; 8192];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if status_at.is_none() && out.len() >= 12 {
                        status_at = Some(started.elapsed());
                    }
                }
            }
        }
    })
    .await
    .is_ok();
    writer.abort();
    let status = std::str::from_utf8(out.get(9..12).unwrap_or(b""))
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|_| out.starts_with(b"HTTP/1."));
    Reply {
        status,
        closed,
        took: status_at.unwrap_or_else(|| started.elapsed()),
    }
}

/// A POST with `connection: close`, a content length, and extra header lines.
fn post(path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

const JSON: &str = "content-type: application/json\r\n";

fn gzip_of_zeros(bytes: usize) -> Vec<u8> {
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("head -c {bytes} /dev/zero | tr '\\0' ' ' | gzip -9"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

/// One hostile request: a name, the bytes, the statuses that are right for it (empty: it
/// must be cut off without an answer, or answered 4xx), and the time bound.
struct Case {
    name: &'static str,
    req: Vec<u8>,
    want: &'static [u16],
    bound: Duration,
}

fn case(name: &'static str, req: Vec<u8>, want: &'static [u16]) -> Case {
    Case {
        name,
        req,
        want,
        bound: Duration::from_secs(5),
    }
}

fn cases() -> Vec<Case> {
    let ev = |props: &str| format!(r#"{{"event":"Hostile","userId":"h1","properties":{props}}}"#);
    let deep_props = format!("{}1{}", r#"{"a":"#.repeat(100), "}".repeat(100));
    let many_keys = format!(
        "{{{}}}",
        (0..5000)
            .map(|i| format!(r#""k{i}":{i}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let huge_array = format!("{{\"list\":[{}0]}}", "0,".repeat(200_000));
    let too_many_events = format!(
        "[{}]",
        vec![r#"{"event":"A","userId":"u"}"#; 5000].join(",")
    );
    let bomb = gzip_of_zeros(64 << 20);
    assert!(bomb.len() < 200 * 1024, "gzip bomb of {} bytes", bomb.len());
    let mut v = vec![
        case("malformed JSON", post("/collect", JSON, br#"{"event": "A", "userId": "#), &[400]),
        case("truncated JSON", post("/collect", JSON, br#"[{"event":"A","userId":"u"},{"event":"B","us"#), &[400]),
        case("not JSON", post("/collect", JSON, b"hello world"), &[400]),
        case("empty body", post("/collect", JSON, b""), &[400]),
        case("invalid UTF-8", post("/collect", JSON, b"{\"event\":\"\xff\xfe\xfd\",\"userId\":\"u\"}"), &[400]),
        case("invalid UTF-8 in a key", post("/v1/track", JSON, b"{\"event\":\"A\",\"userId\":\"u\",\"properties\":{\"\xc3\x28\":1}}"), &[400]),
        // JSON.stringify emits lone surrogates as escapes; replacing them is as right as refusing.
        case("lone surrogate escape", post("/collect", JSON, br#"{"event":"\ud800","userId":"u"}"#), &[200, 400]),
        case("NUL bytes", post("/collect", JSON, b"{\"event\":\"A\0\",\0\"userId\":\"u\"}"), &[400]),
        case("number out of range", post("/collect", JSON, ev(r#"{"n":1e999}"#).as_bytes()), &[400]),
        case("deep nesting: 1,000,000 [", post("/collect", JSON, "[".repeat(1_000_000).as_bytes()), &[400]),
        case("deep nesting: 300,000 {\"a\":", post("/collect", JSON, r#"{"a":"#.repeat(200_000).as_bytes()), &[400]),
        case("deep nesting: GA4", post("/mp/collect", JSON, "[".repeat(130_000).as_bytes()), &[400]),
        case("deep nesting: segment batch", post("/v1/batch", JSON, format!(r#"{{"batch":{}"#, "[".repeat(500_000)).as_bytes()), &[400]),
        case("properties nested 100 deep", post("/collect", JSON, ev(&deep_props).as_bytes()), &[400]),
        case("huge string (900 KB)", post("/collect", JSON, ev(&format!(r#"{{"s":"{}"}}"#, "x".repeat(900_000))).as_bytes()), &[400, 413]),
        case("huge event name", post("/collect", JSON, format!(r#"{{"event":"{}","userId":"u"}}"#, "e".repeat(100_000)).as_bytes()), &[400, 413]),
        case("huge array (200,000 items)", post("/collect", JSON, ev(&huge_array).as_bytes()), &[400, 413]),
        case("5,000 properties", post("/collect", JSON, ev(&many_keys).as_bytes()), &[400, 413]),
        case("5,000 events in one request", post("/collect", JSON, too_many_events.as_bytes()), &[400, 413]),
        case("gzip bomb (64 MiB of spaces)", post("/collect", &format!("{JSON}content-encoding: gzip\r\n"), &bomb), &[413]),
        case("corrupt gzip", post("/collect", &format!("{JSON}content-encoding: gzip\r\n"), b"\x1f\x8b\x08\x00garbage-garbage"), &[400]),
        case("gzip twice", post("/collect", &format!("{JSON}content-encoding: gzip, gzip\r\n"), b"{}"), &[415]),
        case("brotli", post("/collect", &format!("{JSON}content-encoding: br\r\n"), b"{}"), &[415]),
        case("content type XML", post("/collect", "content-type: application/xml\r\n", b"<event/>"), &[415]),
        case("content type form", post("/v1/track", "content-type: application/x-www-form-urlencoded\r\n", b"event=A&userId=u"), &[415]),
        case("content type multipart", post("/collect", "content-type: multipart/form-data; boundary=x\r\n", b"--x--"), &[415]),
        case("GET /collect", b"GET /collect HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(), &[405]),
        case("PUT /collect", post("/collect", JSON, b"{}").iter().skip(4).fold(b"PUT".to_vec(), |mut v, b| { v.push(*b); v }), &[405]),
        case("DELETE /v1/batch", b"DELETE /v1/batch HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(), &[405]),
        case("POST /health", post("/health", JSON, b"{}"), &[405]),
        case("unknown path", post("/collect/../../etc/passwd", JSON, b"{}"), &[404]),
        case("unknown method", b"BREW /collect HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(), &[400, 405]),
        case("oversized body (2 MiB declared and sent)", post("/collect", JSON, &vec![b' '; 2 << 20]), &[413]),
        case("10 GB declared, 10 bytes sent", format!("POST /collect HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{JSON}content-length: 10000000000\r\n\r\n0123456789").into_bytes(), &[413]),
        case("oversized chunked body", {
            let chunk = "z".repeat(64 * 1024);
            let mut r = format!("POST /collect HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{JSON}transfer-encoding: chunked\r\n\r\n").into_bytes();
            for _ in 0..40 {
                r.extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        }, &[413]),
        case("oversized segment body", post("/v1/track", JSON, &vec![b' '; 600 * 1024]), &[413]),
        case("bad content-length", b"POST /collect HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n{}".to_vec(), &[]),
        case("two content-lengths", b"POST /collect HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ncontent-length: 5\r\n\r\n{}".to_vec(), &[]),
        case("chunked and content-length", b"POST /collect HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n".to_vec(), &[]),
        case("bad chunk size", b"POST /collect HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec(), &[]),
        case("1 MiB header", format!("GET /health HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "h".repeat(1 << 20)).into_bytes(), &[]),
        case("10,000 headers", {
            let mut r = b"GET /health HTTP/1.1\r\nhost: x\r\n".to_vec();
            for i in 0..10_000 {
                r.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
            }
            r.extend_from_slice(b"\r\n");
            r
        }, &[]),
        case("64 KiB URL", format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "u".repeat(64 * 1024)).into_bytes(), &[]),
        case("TLS client hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbagegarbagegarbage".to_vec(), &[]),
        case("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), &[]),
        case("random bytes", (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect(), &[]),
        case("HTTP/0.9", b"GET /health\r\n".to_vec(), &[]),
        case("wrong write key shape", post("/collect?writeKey=%ff%fe", JSON, br#"{"event":"A","userId":"u","writeKey":{"no":1}}"#), &[400, 200]),
        // Google takes 25 events per request; the router takes up to `limits.max_batch_events`.
        case("GA4 with 3,000 events", post("/mp/collect", JSON, format!(r#"{{"client_id":"c","events":[{}]}}"#, vec![r#"{"name":"e"}"#; 3000].join(",")).as_bytes()), &[400, 413]),
        case("segment batch not an array", post("/v1/batch", JSON, br#"{"batch":{"a":1}}"#), &[400]),
        case("placeholder ids only", post("/collect", JSON, br#"[{"event":"A","userId":"null"},{"event":"A","anonymousId":"undefined"}]"#), &[400]),
    ];
    for c in &mut v {
        if c.name.starts_with("gzip bomb") {
            c.bound = Duration::from_secs(3);
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_4xx_or_are_cut_off_while_a_good_client_is_served() {
    let idle: usize = std::env::var("CHAOS_IDLE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let (soft, hard) = raise_nofile(idle as u64 + 1000);
    println!("chaos_hostile: RLIMIT_NOFILE soft {soft} hard {hard}; {idle} idle connections");
    assert!(
        soft >= idle as u64 + 200,
        "cannot open {idle} connections with RLIMIT_NOFILE {soft}/{hard}"
    );
    let mock = MockDestinations::start(MockConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        &format!(
            "{FAST_DELIVERY}\n[server]\nheader_read_timeout_ms = {HEADER_TIMEOUT_MS}\nbody_read_timeout_ms = 1000\nmax_connections = {}\n",
            (idle + 1000).max(4096)
        ),
    );
    let mut router = Router::builder(&data).mock(&mock).config(&config).start();
    let addr = router.addr;

    // The well-behaved client: one small request every 20 ms for the whole test.
    let ledger = Arc::new(Ledger::new());
    let stop = Arc::new(AtomicBool::new(false));
    let good = {
        let (ledger, stop, url) = (ledger.clone(), stop.clone(), router.url.clone());
        tokio::spawn(async move {
            let client = http_client();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let events = batch(n, 1 + (n % 3) as usize, 50);
                n += events.len() as u64;
                ledger.post(&client, &url, &events, n % 2 == 0).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // 1. The battery, eight at a time.
    let started = Instant::now();
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut slowest = (Duration::ZERO, "");
    let mut failures = Vec::new();
    let all = cases();
    let n_cases = all.len();
    for chunk in all.chunks(8) {
        let replies = futures_join(
            chunk
                .iter()
                .map(|c| exchange(addr, c.req.clone(), Duration::from_secs(10))),
        )
        .await;
        for (c, r) in chunk.iter().zip(replies) {
            let key = r.status.map_or("cut off".to_owned(), |s| s.to_string());
            *by_status.entry(key).or_default() += 1;
            if r.took > slowest.0 {
                slowest = (r.took, c.name);
            }
            let ok_status = match r.status {
                Some(s) if c.want.is_empty() => (400..500).contains(&s),
                Some(s) => c.want.contains(&s),
                None => c.want.is_empty() && r.closed,
            };
            if !ok_status || r.took > c.bound {
                failures.push(format!(
                    "{}: {r:?}, want {:?} within {:?}",
                    c.name, c.want, c.bound
                ));
            }
        }
    }
    let battery = started.elapsed();
    assert!(router.is_running(), "the router died during the battery");

    // 2. Slow clients: heads trickled a byte at a time, bodies that stall, and idle
    //    connections, all at once.
    let slow_started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(tokio::spawn(async move {
            let t = Instant::now();
            let mut s = TcpStream::connect(addr).await.unwrap();
            for b in
                b"POST /collect HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n".iter()
            {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (t.elapsed(), "slow head")
        }));
    }
    for _ in 0..20 {
        slow.push(tokio::spawn(async move {
            let t = Instant::now();
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s
                .write_all(
                    b"POST /collect HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"event\":",
                )
                .await;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
            assert!(
                buf.starts_with(b"HTTP/1.1 408"),
                "a stalled body gets 408: {:?}",
                String::from_utf8_lossy(&buf)
            );
            (t.elapsed(), "stalled body")
        }));
    }
    // Opened 100 at a time. A connect that takes a second or more had its SYN dropped by a
    // full accept queue (the router listened with a backlog of 128 before).
    let mut conns = Vec::with_capacity(idle);
    let mut slowest_connect = Duration::ZERO;
    for _ in 0..idle.div_ceil(100) {
        let n = 100.min(idle - conns.len());
        conns.extend(
            futures_join((0..n).map(|_| async move {
                let t = Instant::now();
                let c = TcpStream::connect(addr).await.unwrap();
                (c, t.elapsed())
            }))
            .await
            .into_iter()
            .map(|(c, t)| {
                slowest_connect = slowest_connect.max(t);
                c
            }),
        );
    }
    let opened = slow_started.elapsed();
    // While they are all open the good client is served and /health answers.
    let client = http_client();
    let h = Instant::now();
    let health = client
        .get(format!("{}/health", router.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let health_took = h.elapsed();
    // The gauge catches up with the accept loop (the first idle ones close after 3 s).
    let mut open_peak = 0.0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while open_peak < idle as f64 && Instant::now() < deadline {
        let m = router.metrics(&client).await;
        open_peak = metric(&m, "router_http_connections_open").unwrap_or(0.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every idle connection is closed by the header deadline.
    let idle_started = Instant::now();
    let closing = conns.into_iter().map(|mut c| async move {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    });
    let closed = futures_join(closing).await;
    let idle_closed_in = idle_started.elapsed();
    let not_closed = closed.iter().filter(|c| !**c).count();
    let mut slow_worst = Duration::ZERO;
    for t in slow {
        let (took, what) = t.await.unwrap();
        assert!(took < Duration::from_secs(10), "{what} took {took:?}");
        slow_worst = slow_worst.max(took);
    }
    let rss = router.rss_kib().unwrap_or(0);

    // 3. The good client's events all arrived; nothing was a 500; the router lives.
    stop.store(true, Ordering::Relaxed);
    good.await.unwrap();
    let d = wait_delivered(&mock, &ledger, Duration::from_secs(30)).await;
    let m = router.metrics(&client).await;
    println!(
        "chaos_hostile: {n_cases} hostile requests in {} ms: {by_status:?}; slowest answer {} ms ({})",
        battery.as_millis(),
        slowest.0.as_millis(),
        slowest.1
    );
    println!(
        "chaos_hostile: {idle} idle + 40 slow connections opened in {} ms (slowest connect {} ms; open connections {open_peak}); /health in {} ms meanwhile; idle closed {} ms after (not closed: {not_closed}); slowest slow client cut after {} ms; RSS {rss} KiB",
        opened.as_millis(),
        slowest_connect.as_millis(),
        health_took.as_millis(),
        idle_closed_in.as_millis(),
        slow_worst.as_millis()
    );
    println!(
        "chaos_hostile: good client {:?}, slowest {} ms; {}",
        ledger.outcomes(),
        ledger.max_latency_ms(),
        d.figures()
    );
    assert!(
        failures.is_empty(),
        "hostile requests answered wrongly:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        not_closed, 0,
        "idle connections left open past the header deadline"
    );
    assert!(
        slowest_connect < Duration::from_millis(900),
        "a connect took {slowest_connect:?}: the accept queue overflowed and a SYN was dropped"
    );
    assert!(
        open_peak >= idle as f64,
        "the {idle} idle connections were not all open at once: {open_peak}"
    );
    assert!(router.is_running(), "the router died");
    assert_eq!(
        metric(&m, "router_http_panics_total{scope=\"request\"}"),
        Some(0.0)
    );
    assert!(!m.contains("status=\"500\""), "a 500 was answered:\n{m}");
    let outcomes = ledger.outcomes();
    assert_eq!(
        outcomes.keys().collect::<Vec<_>>(),
        vec![&Outcome::Status(200)],
        "the well-behaved client got only 200s: {outcomes:?}"
    );
    assert!(ledger.acked_count() > 50, "the good client ran throughout");
    assert_conserved(&d);
    assert_eq!(router.terminate().0, Some(0));
    mock.shutdown().await;
}

/// Awaits every future (concurrently) and returns their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
