//! The HTTP plumbing shared by the PostHog and Mixpanel sinks: one pooled reqwest client
//! (rustls), gzip, reading a bounded answer, and turning an answer into outcomes.

use std::time::{Duration, SystemTime};

use flate2::Compression;
use reqwest::header::RETRY_AFTER;

use super::config::DeliveryConfig;
use super::error::DeliveryError;
use super::retry::parse_retry_after;

/// Most bytes of an answer read (a Mixpanel partial 400 lists up to 2000 failed records).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// gzip level: fast, still about 10× on JSON.
const GZIP_LEVEL: u32 = 3;

/// The `User-Agent` of every request.
pub(crate) const USER_AGENT: &str = concat!("events-router/", env!("CARGO_PKG_VERSION"));

/// Builds the shared client: rustls, connection pooling, per-request and connect timeouts.
pub fn build_client(config: &DeliveryConfig) -> Result<reqwest::Client, DeliveryError> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(USER_AGENT)
        .timeout(config.request_timeout())
        .connect_timeout(config.connect_timeout())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(config.concurrency.max(1) * 2)
        .tcp_nodelay(true)
        .build()
        .map_err(DeliveryError::Client)
}

/// Checks that `host` is an absolute http(s) URL and returns it without a trailing slash.
pub(crate) fn base_url(destination: &str, host: &str) -> Result<String, DeliveryError> {
    let invalid = |reason: &str| DeliveryError::InvalidHost {
        destination: destination.to_owned(),
        host: host.to_owned(),
        reason: reason.to_owned(),
    };
    let url = reqwest::Url::parse(host.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host name"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("no query or fragment allowed"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// gzip of `data`, or `None` if compression failed (the caller sends it plain).
///
/// The deflate state (about 256 KiB that a new compressor allocates and zeroes) is kept per
/// thread and reset between bodies: creating one per batch showed up as 13% of the router's
/// CPU under load (page zeroing). The gzip header and trailer are written here (RFC 1952).
pub(crate) fn gzip(data: &[u8]) -> Option<Vec<u8>> {
    use flate2::{Compress, FlushCompress, Status};
    thread_local! {
        static DEFLATE: std::cell::RefCell<Compress> =
            std::cell::RefCell::new(Compress::new(Compression::new(GZIP_LEVEL), false));
    }
    // Header: magic, deflate, no flags, no mtime, no extra flags, OS unknown.
    let mut out = Vec::with_capacity(data.len() / 4 + 64);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    DEFLATE.with(|cell| {
        let mut z = cell.try_borrow_mut().ok()?;
        z.reset();
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(4096));
            }
            let consumed = usize::try_from(z.total_in()).ok()?;
            let status = z
                .compress_vec(&data[consumed..], &mut out, FlushCompress::Finish)
                .ok()?;
            if status == Status::StreamEnd {
                return Some(());
            }
        }
    })?;
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    // ISIZE is the length modulo 2^32 by definition.
    #[allow(clippy::cast_possible_truncation)]
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    Some(out)
}

/// A destination's answer.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// HTTP status.
    pub(crate) status: u16,
    /// `Retry-After`, parsed.
    pub(crate) retry_after: Option<Duration>,
    /// The body (at most [`MAX_ANSWER_BYTES`], lossy UTF-8).
    pub(crate) body: String,
}

/// Sends a request and reads its answer (bounded). Transport failures, timeouts included,
/// are the `Err` (all retryable).
pub(crate) async fn send(req: reqwest::RequestBuilder) -> Result<Answer, String> {
    let mut resp = req.send().await.map_err(describe)?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(describe)? {
        let room = MAX_ANSWER_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ANSWER_BYTES {
            break;
        }
    }
    Ok(Answer {
        status,
        retry_after,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A short description of a transport error (timeouts and connect errors named as such).
fn describe(e: reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "request timed out"
    } else if e.is_connect() {
        "connect error"
    } else if e.is_body() || e.is_decode() {
        "error reading the answer"
    } else {
        "request failed"
    };
    let mut msg = format!("{what}: {e}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn base_urls() {
        assert_eq!(
            base_url("p", "https://us.i.posthog.com/").unwrap(),
            "https://us.i.posthog.com"
        );
        assert_eq!(
            base_url("p", "http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            base_url("p", "https://example.com/prefix/").unwrap(),
            "https://example.com/prefix"
        );
        for bad in [
            "",
            "us.i.posthog.com",
            "ftp://x",
            "https://x/?a=1",
            "file:///tmp",
        ] {
            assert!(base_url("p", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gzip_round_trips() {
        let data = br#"[{"event":"a"}]"#.repeat(100);
        let z = gzip(&data).unwrap();
        assert!(z.len() < data.len() / 5);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn gzip_reuses_its_state_across_bodies_of_any_size() {
        // Pseudo-random bytes compress badly, so the output outgrows its first allocation.
        let mut x: u32 = 7;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (x >> 16) as u8
            })
            .collect();
        for data in [
            Vec::new(),
            b"x".to_vec(),
            noise,
            br#"{"a":1}"#.repeat(50_000),
        ] {
            for _ in 0..2 {
                let z = gzip(&data).unwrap();
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&z[..])
                    .read_to_end(&mut out)
                    .unwrap();
                assert_eq!(out, data);
            }
        }
    }
}
