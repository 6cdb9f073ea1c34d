//! Writes the seed inputs of every target into `corpus/<target>/seed-*`.
//!
//! ```sh
//! cd fuzz && cargo run --example make_seeds
//! ```
//!
//! Seeds are real inputs: the lines of `examples/events.jsonl`, Segment and GA4 bodies, those
//! bodies gzipped (and a gzip bomb), and a segment file written by the log itself.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use events_router_fuzz::log_input::{cursor_bytes, frame, op};
use router_core::parse::{Item, SegmentCall};
use router_core::{CoreConfig, Pipeline, stored};
use router_sinks::buffer::{Log, LogConfig};

const SEGMENT_TRACK: &str = r#"{"userId":"user123","event":"Sign Up","properties":{"plan":"pro"},"context":{"ip":"203.0.113.7","page":{"url":"https://example.com/?utm_source=news"}},"timestamp":"2025-01-28T12:00:00Z","sentAt":"2025-01-28T12:00:01Z","messageId":"m-1","writeKey":"wk"}"#;
const SEGMENT_IDENTIFY: &str = r#"{"userId":"user123","anonymousId":"anon-1","traits":{"email":"ada@example.com","firstName":"Ada","$set_once":{"first_seen":"2025"}}}"#;
const SEGMENT_PAGE: &str = r#"{"anonymousId":"anon-1","name":"Pricing","category":"Docs","properties":{"url":"https://example.com/pricing?utm_campaign=spring&utm_medium=cpc"}}"#;
const SEGMENT_GROUP: &str =
    r#"{"userId":"user123","groupId":"acme","traits":{"name":"Acme","plan":"enterprise"}}"#;
const SEGMENT_ALIAS: &str = r#"{"userId":"user123","previousId":"anon-1"}"#;
const SEGMENT_BATCH: &str = r#"{"batch":[{"type":"track","event":"Purchase","userId":"u1","properties":{"revenue":9.99,"utm_source":"google"},"timestamp":"2025-01-28T11:59:58Z"},{"type":"identify","userId":"u1","traits":{"email":"a@b.c"}},{"type":"page","anonymousId":"a1","properties":{"url":"https://x.io/?utm_source=tw"}},{"type":"screen","userId":"u2","name":"Home"},{"type":"group","userId":"u1","groupId":"g1"},{"type":"alias","userId":"u1","previousId":"a1"},{"type":"track","userId":"u3"}],"context":{"library":{"name":"analytics-node"},"groupId":"g1"},"integrations":{"All":true},"sentAt":"2025-01-28T12:00:00Z","writeKey":"wk"}"#;
const GA4: &str = r#"{"client_id":"123.456","user_id":"user123","timestamp_micros":"1738065600000000","user_properties":{"plan":{"value":"pro"},"_bad":{"value":1}},"events":[{"name":"page_view","params":{"page_location":"https://example.com/?utm_source=ga","page_title":"Home"}},{"name":"purchase","params":{"value":9.99,"currency":"EUR","items":[{"item_id":"sku"}]}},{"name":"sign_up","params":{"method":"email"}},{"name":"1bad"}],"ip_override":"198.51.100.1","device":{"category":"mobile"},"measurement_id":"G-XYZ"}"#;

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join(name), data).expect("write seed");
}

fn prefixed(sel: u8, body: &str) -> Vec<u8> {
    let mut v = vec![sel];
    v.extend_from_slice(body.as_bytes());
    v
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let events = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/events.jsonl"),
    )
    .expect("examples/events.jsonl");

    // parsers: selector byte + body.
    let dir = root.join("parsers");
    for (i, line) in events.lines().enumerate() {
        write(&dir, &format!("seed-collect-{i:02}"), &prefixed(0, line));
    }
    for (sel, name, body) in [
        (1, "track", SEGMENT_TRACK),
        (2, "identify", SEGMENT_IDENTIFY),
        (3, "page", SEGMENT_PAGE),
        (4, "screen", SEGMENT_PAGE),
        (5, "group", SEGMENT_GROUP),
        (6, "alias", SEGMENT_ALIAS),
        (7, "batch", SEGMENT_BATCH),
        (8, "ga4", GA4),
        (9, "ga4-debug", GA4),
    ] {
        write(&dir, &format!("seed-segment-{name}"), &prefixed(sel, body));
    }
    write(
        &dir,
        "seed-collect-batch",
        &prefixed(
            0,
            &format!(
                "{{\"batch\":[{}]}}",
                events.lines().take(3).collect::<Vec<_>>().join(",")
            ),
        ),
    );

    // json_events: the generator reads any bytes; a few fixed blobs of different sizes.
    let dir = root.join("json_events");
    let mut x: u64 = 0x243f_6a88_85a3_08d3;
    for (i, n) in [16usize, 64, 256, 1024, 4096].into_iter().enumerate() {
        let blob: Vec<u8> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        write(&dir, &format!("seed-blob-{i}"), &blob);
    }

    // http_gzip: endpoint byte, header flags, body.
    let dir = root.join("http_gzip");
    let http = |sel: u8, flags: u8, body: &[u8]| {
        let mut v = vec![sel, flags];
        v.extend_from_slice(body);
        v
    };
    write(
        &dir,
        "seed-collect-gzip",
        &http(
            0,
            0,
            &gzip(events.lines().next().unwrap_or("{}").as_bytes()),
        ),
    );
    write(
        &dir,
        "seed-batch-gzip",
        &http(3, 0, &gzip(SEGMENT_BATCH.as_bytes())),
    );
    write(&dir, "seed-ga4-gzip", &http(5, 2, &gzip(GA4.as_bytes())));
    write(
        &dir,
        "seed-ga4-debug-gzip",
        &http(6, 4, &gzip(GA4.as_bytes())),
    );
    write(
        &dir,
        "seed-track-self-gzip",
        &http(1, 8, SEGMENT_TRACK.as_bytes()),
    );
    write(
        &dir,
        "seed-track-self-gzip-cut",
        &http(0x51, 8 | 16, SEGMENT_TRACK.as_bytes()),
    );
    write(
        &dir,
        "seed-identity",
        &http(2, 3, SEGMENT_IDENTIFY.as_bytes()),
    );
    let mut two = gzip(b"[{\"event\":\"A\",\"userId\":\"u\"}");
    two.extend_from_slice(&gzip(b",{\"event\":\"B\",\"userId\":\"u\"}]"));
    write(&dir, "seed-multi-member", &http(0, 0, &two));
    // A bomb: 60 MB of zeros in ~60 KB.
    write(
        &dir,
        "seed-bomb",
        &http(0, 0, &gzip(&vec![0u8; 60 * 1024 * 1024])),
    );
    write(
        &dir,
        "seed-corrupt",
        &http(0, 0, b"\x1f\x8b\x08\x00garbage"),
    );

    // log_recovery: a real log directory, then hand-made corruption.
    let dir = root.join("log_recovery");
    let tmp = tempfile::tempdir().expect("tmp");
    let buf = tmp.path().join("buffer");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let pipeline = Pipeline::new(&CoreConfig::default()).expect("pipeline");
    let mut records = Vec::new();
    for line in events.lines() {
        let mut body = line.as_bytes().to_vec();
        let batch =
            events_router_fuzz::with_ingest(|ctx| pipeline.parser().parse_collect(&mut body, ctx));
        for item in batch.map(|b| b.items).unwrap_or_default() {
            if let Item::Accepted(e) = item {
                let r = pipeline.router().route(&e);
                records.push(Bytes::from(stored::encode(
                    &e,
                    &pipeline.router().destination_names(&r),
                )));
            }
        }
    }
    let _ = SegmentCall::Batch;
    {
        let cfg = LogConfig {
            segment_max_bytes: 2048,
            max_total_bytes: 1 << 20,
            ..LogConfig::new(&buf, &["posthog", "mixpanel"])
        };
        let (log, _) = Log::open(cfg).expect("open");
        rt.block_on(async {
            for r in records.chunks(3) {
                log.append(r.to_vec()).await.expect("append");
            }
            log.ack_range("posthog", 0..4).expect("ack");
            log.flush_cursors().await.expect("flush");
            log.close().await.expect("close");
        });
    }
    let mut real = Vec::new();
    let mut segs: Vec<_> = std::fs::read_dir(&buf)
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    segs.sort();
    for p in &segs {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let data = std::fs::read(p).expect("read");
        if let Some(base) = name
            .strip_suffix(".seg")
            .and_then(|d| d.parse::<u64>().ok())
        {
            real.extend(op(0, &base.to_le_bytes()));
            for chunk in data.chunks(60_000) {
                real.extend(op(2, chunk));
            }
        } else if let Some(dest) = name.strip_suffix(".cursor") {
            let idx = ["posthog", "mixpanel", "archive"]
                .iter()
                .position(|d| *d == dest)
                .unwrap_or(2) as u8;
            let mut d = vec![idx, 1];
            d.extend_from_slice(&data);
            real.extend(op(4, &d));
        }
    }
    write(&dir, "seed-real-log", &real);
    // The same log with its last segment torn in the middle of a frame.
    let mut torn = real.clone();
    torn.truncate(torn.len().saturating_sub(40));
    write(&dir, "seed-real-log-torn", &torn);

    // Structured: frames, a flipped CRC, a torn frame, zeros, a second segment, cursors.
    let mut s = Vec::new();
    s.extend(op(0, &0u64.to_le_bytes()));
    for (i, payload) in [&b"one"[..], b"two", b"three", b"four"].iter().enumerate() {
        let flags = if i == 1 { 1 } else { 0 };
        let mut d = vec![0u8, flags];
        d.extend_from_slice(payload);
        s.extend(op(1, &d));
    }
    s.extend(op(3, &100u16.to_le_bytes()));
    s.extend(op(0, &[]));
    s.extend(op(1, &[0, 0, b'x']));
    s.extend(op(1, &[3, 0, b'y']));
    s.extend(op(1, &[0, 2, b'z', b'z', b'z', b'z']));
    let mut c = vec![0u8, 2, 0];
    c.extend_from_slice(&[]);
    s.extend(op(4, &c));
    let mut c = vec![1u8, 0];
    c.extend_from_slice(&2u64.to_le_bytes());
    s.extend(op(4, &c));
    s.extend(op(5, &[0, b'x']));
    s.extend(op(5, &[1, b'y']));
    s.extend(op(6, &[2, 5]));
    write(&dir, "seed-structured", &s);
    // A cursor past the data and a segment far ahead (renumbering, missing records).
    let mut s = Vec::new();
    s.extend(op(1, &[0, 0, b'a']));
    s.extend(op(0, &1000u64.to_le_bytes()));
    s.extend(op(1, &[0, 0, b'b']));
    let mut d = vec![0u8, 1];
    d.extend_from_slice(&cursor_bytes(5000));
    s.extend(op(4, &d));
    s.extend(op(2, &frame(1001, 1, b"raw-frame", 0)));
    write(&dir, "seed-ahead", &s);
    println!("seeds written under {}", root.display());
}
