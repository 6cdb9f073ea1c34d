//! Gzip decoding with its cap, as the HTTP server does it: socketless requests through
//! `AppState::handle` (the decoder in router-http's `body.rs` is private).
//!
//! Input: `data[0]` picks the endpoint, `data[1]` the headers, the rest is the body.
//!
//! - `data[1] & 3`: 0 or 1 `Content-Encoding: gzip`, 2 `x-gzip, identity`, 3 none (identity).
//! - `data[1] & 4`: `Content-Type: text/plain` (sendBeacon) instead of `application/json`.
//! - `data[1] & 32`: `Content-Type: application/x-www-form-urlencoded` on the PostHog paths.
//! - `data[1] & 8`: the target gzips the body itself first (so valid JSON reaches the parsers
//!   through the decoder); `data[1] & 16` then cuts the last bytes of that stream.
//!
//! Invariants: never a 500 (handle does not catch panics here: a panic is a crash); with gzip,
//! the answer is 413 exactly when the body inflates past `max_decompressed_bytes`, 400 when it
//! is corrupt within the cap, and never 413 otherwise; the memory one request allocates stays
//! bounded whatever the body inflates to (a gzip bomb costs at most the cap).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use events_router_fuzz::pipeline_arc;
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use router_http::{AppState, HttpConfig};
use router_sinks::buffer::{Log, LogConfig};

/// Counts live heap bytes and their peak, to check that a bomb cannot allocate past the cap.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + (new - l.size());
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Decompressed-size cap of the fuzzed server (small, so bombs are cheap to find).
const CAP: usize = 16 * 1024;
/// Most bytes one request may allocate at its peak (parsing a CAP-sized body into events
/// costs a multiple of it; an uncapped bomb of a 64 KiB input would cost ~64 MiB).
const PEAK_LIMIT: usize = 8 * 1024 * 1024;
/// Requests between two fresh states (keeps the log and dead letters small).
const RECYCLE_EVERY: u64 = 20_000;

const PATHS: [&str; 11] = [
    "/collect",
    "/v1/track",
    "/v1/identify",
    "/v1/batch",
    "/v1/page",
    "/mp/collect",
    "/debug/mp/collect",
    "/collect/",
    "/capture/",
    "/batch/",
    "/e/",
];

struct Server {
    rt: tokio::runtime::Runtime,
    state: Mutex<Option<(AppState, Log, tempfile::TempDir, u64)>>,
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| Server {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
        state: Mutex::new(None),
    })
}

fn fresh_state(rt: &tokio::runtime::Runtime) -> (AppState, Log, tempfile::TempDir, u64) {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new().prefix("fuzz-http").tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("temp dir");
    let (log, _) = Log::open(LogConfig::new(
        dir.path().join("buffer"),
        &["posthog", "mixpanel"],
    ))
    .expect("open log");
    let cfg = HttpConfig {
        max_decompressed_bytes: CAP,
        ..HttpConfig::default()
    };
    let _guard = rt.enter();
    let state = AppState::new(pipeline_arc(), log.clone(), dir.path(), cfg).expect("state");
    (state, log, dir, 0)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// What the decoder should conclude: `Ok(true)` over the cap, `Ok(false)` within, `Err` corrupt.
fn reference(body: &[u8]) -> Result<bool, ()> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(body)
        .take(CAP as u64 + 1)
        .read_to_end(&mut out)
        .map(|_| out.len() > CAP)
        .map_err(|_| ())
}

fuzz_target!(|data: &[u8]| {
    let (Some(&sel), Some(&flags)) = (data.first(), data.get(1)) else {
        return;
    };
    let mut body = data[2..].to_vec();
    if flags & 8 != 0 {
        body = gzip(&body);
        if flags & 16 != 0 {
            let cut = usize::from(sel >> 3).min(body.len());
            body.truncate(body.len() - cut);
        }
    }
    let encoding = match flags & 3 {
        0 | 1 => Some("gzip"),
        2 => Some("x-gzip, identity"),
        _ => None,
    };
    let path = PATHS[usize::from(sel) % PATHS.len()];
    let posthog = matches!(path, "/capture/" | "/batch/" | "/e/");
    let mut req = hyper::Request::post(path).header(
        "content-type",
        if posthog && flags & 32 != 0 {
            "application/x-www-form-urlencoded"
        } else if flags & 4 != 0 {
            "text/plain;charset=UTF-8"
        } else {
            "application/json"
        },
    );
    if let Some(enc) = encoding {
        req = req.header("content-encoding", enc);
    }
    // PostHog bodies are also gunzipped, with the same cap, when they start with the gzip
    // magic and came without Content-Encoding (posthog-js `compression=gzip-js`).
    let sniffed = posthog && encoding.is_none() && body.starts_with(&[0x1f, 0x8b]);
    let expected = (encoding.is_some() || sniffed).then(|| reference(&body));
    let req = req.body(Full::new(Bytes::from(body))).expect("request");

    let srv = server();
    let mut guard = srv.state.lock().unwrap_or_else(|p| p.into_inner());
    if guard.as_ref().is_none_or(|s| s.3 >= RECYCLE_EVERY) {
        if let Some((state, log, dir, _)) = guard.take() {
            drop(state);
            srv.rt.block_on(log.close()).expect("close log");
            drop(dir);
        }
        *guard = Some(fresh_state(&srv.rt));
    }
    let st = guard.as_mut().expect("state");
    st.3 += 1;
    let state = st.0.clone();
    let peer = "192.0.2.7:5555".parse().expect("addr");

    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let resp = srv.rt.block_on(state.handle(req, peer));
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let status = resp.status().as_u16();

    assert_ne!(status, 500, "500 for {path}");
    assert!(
        peak <= PEAK_LIMIT,
        "one request allocated {peak} bytes at its peak ({path}, {status})"
    );
    match expected {
        Some(Err(())) => assert_eq!(status, 400, "corrupt gzip must be 400 ({path})"),
        Some(Ok(true)) => assert_eq!(status, 413, "over the cap must be 413 ({path})"),
        _ => assert_ne!(status, 413, "a body within every cap got 413 ({path})"),
    }
    assert!(
        matches!(status, 200 | 204 | 400 | 413 | 503),
        "unexpected status {status} for {path}"
    );
    if path == "/debug/mp/collect" && matches!(expected, None | Some(Ok(false))) {
        assert_eq!(status, 200, "GA4 validation answers 200");
    }
});
