//! PostHog capture client: `POST {host}/batch/` (API_SPECS.md §1.3, §1.8, §5.2).
//!
//! Body: `{"api_key": "...", "historical_migration": true, "batch": [...]}`, gzipped with
//! `Content-Encoding: gzip`. `historical_migration` is present (true) only when the oldest
//! event of the request is more than 48 hours old. There is no `sent_at`: capture would
//! otherwise shift every timestamp by `now - sent_at`, and a resend must not carry a stale
//! one; without it capture keeps each event's own `timestamp`.
//!
//! Answers: 2xx delivers the request (capture gives no per-event result on `/batch/`);
//! 408/429/5xx and transport errors retry; 401/403 pause; 413 splits the request in halves
//! until a lone record still gets 413 (rejected). Capture refuses a whole request for one
//! invalid event (400), so a 400 on several records is also bisected, to isolate the bad
//! ones, with at most [`MAX_BISECT_REQUESTS`] extra requests per batch; what is left when
//! that budget is spent is rejected as a whole.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use tokio::time::Instant;

use super::config::PosthogDestination;
use super::error::DeliveryError;
use super::http::{self, Answer};
use super::metrics::{DeliveryMetrics, RequestOutcome};
use super::retry::{StatusClass, classify_status};
use super::sink::{AuthFailure, OutboundRecord, Outcome, SendFuture, SendResult, Sink, excerpt};

/// Events older than this go in a request marked `historical_migration`.
pub const HISTORICAL_AGE: Duration = Duration::from_secs(48 * 3600);
/// Largest uncompressed request body before splitting (capture takes 20 MiB; §5.2 ~5 MB).
pub const MAX_REQUEST_BYTES: usize = 5 * 1024 * 1024;
/// Most extra requests spent bisecting 400 answers within one batch.
pub const MAX_BISECT_REQUESTS: usize = 32;

/// Sends batches to PostHog's `/batch/` endpoint.
#[derive(Clone)]
pub struct PosthogSink {
    client: reqwest::Client,
    url: String,
    api_key: String,
    metrics: Arc<DeliveryMetrics>,
}

impl std::fmt::Debug for PosthogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PosthogSink")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl PosthogSink {
    /// A sink for `dest` (which must have an API key), sharing `client`, counting requests in
    /// `metrics`.
    pub fn new(
        name: &str,
        dest: &PosthogDestination,
        client: reqwest::Client,
        metrics: Arc<DeliveryMetrics>,
    ) -> Result<Self, DeliveryError> {
        let api_key = dest
            .api_key
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| DeliveryError::Config(format!("destination {name:?} has no api_key")))?
            .to_owned();
        Ok(PosthogSink {
            url: format!("{}/batch/", http::base_url(name, &dest.host)?),
            client,
            api_key,
            metrics,
        })
    }

    /// Sends one request of `records`.
    async fn post(&self, records: &[OutboundRecord]) -> (Result<Answer, String>, Duration) {
        let body = batch_body(&self.api_key, records, now_ms());
        let mut req = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json");
        req = match http::gzip(&body) {
            Some(z) => req.header(CONTENT_ENCODING, "gzip").body(z),
            None => req.body(body),
        };
        let started = Instant::now();
        let answer = http::send(req).await;
        (answer, started.elapsed())
    }

    async fn send_batch(&self, batch: &[OutboundRecord]) -> SendResult {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut auth_failure = None;
        // Ranges still to send, last = next.
        let mut stack: Vec<Range<usize>> = chunks_by_bytes(batch, MAX_REQUEST_BYTES);
        stack.reverse();
        let mut bisects = 0usize;
        // Once the destination fails transiently, the rest of the batch waits with it.
        let mut stop: Option<Outcome> = None;
        while let Some(r) = stack.pop() {
            if let Some(o) = &stop {
                fill(&mut outcomes, r, o);
                continue;
            }
            let (answer, took) = self.post(&batch[r.clone()]).await;
            let a = match answer {
                Err(e) => {
                    self.metrics.record_request(RequestOutcome::Error, took);
                    let o = Outcome::retry(e);
                    fill(&mut outcomes, r, &o);
                    stop = Some(o);
                    continue;
                }
                Ok(a) => a,
            };
            match classify_status(a.status) {
                StatusClass::Success => {
                    self.metrics.record_request(RequestOutcome::Ok, took);
                    fill(&mut outcomes, r, &Outcome::Delivered);
                }
                StatusClass::Retry => {
                    self.metrics.record_request(RequestOutcome::Retry, took);
                    let o = Outcome::Retry {
                        after: a.retry_after,
                        reason: format!("HTTP {}: {}", a.status, excerpt(&a.body)),
                    };
                    fill(&mut outcomes, r, &o);
                    stop = Some(o);
                }
                StatusClass::Pause => {
                    self.metrics.record_request(RequestOutcome::Retry, took);
                    let o = Outcome::retry(format!("credentials refused (HTTP {})", a.status));
                    fill(&mut outcomes, r, &o);
                    auth_failure = Some(AuthFailure {
                        status: a.status,
                        body: excerpt(&a.body),
                    });
                    stop = Some(o);
                }
                StatusClass::Split if r.len() > 1 => {
                    self.metrics.record_request(RequestOutcome::Rejected, took);
                    push_halves(&mut stack, r);
                }
                StatusClass::Reject if a.status == 400 && r.len() > 1 => {
                    self.metrics.record_request(RequestOutcome::Rejected, took);
                    if bisects < MAX_BISECT_REQUESTS {
                        bisects += 2;
                        push_halves(&mut stack, r);
                    } else {
                        let o = Outcome::rejected(
                            format!("HTTP 400 for a request of {} events", r.len()),
                            Some(400),
                            &a.body,
                        );
                        fill(&mut outcomes, r, &o);
                    }
                }
                StatusClass::Split | StatusClass::Reject => {
                    self.metrics.record_request(RequestOutcome::Rejected, took);
                    let reason = if a.status == 413 {
                        "event too large (HTTP 413 on a single event)".to_owned()
                    } else {
                        format!("HTTP {}", a.status)
                    };
                    fill(
                        &mut outcomes,
                        r,
                        &Outcome::rejected(reason, Some(a.status), &a.body),
                    );
                }
            }
        }
        SendResult {
            outcomes: outcomes
                .into_iter()
                .map(|o| o.unwrap_or_else(|| Outcome::retry("not sent")))
                .collect(),
            auth_failure,
        }
    }
}

impl Sink for PosthogSink {
    fn kind(&self) -> &'static str {
        "posthog"
    }

    fn send<'a>(&'a self, batch: &'a [OutboundRecord]) -> SendFuture<'a> {
        Box::pin(self.send_batch(batch))
    }
}

/// Sets the outcome of every record in `r`.
pub(crate) fn fill(outcomes: &mut [Option<Outcome>], r: Range<usize>, o: &Outcome) {
    for slot in &mut outcomes[r] {
        *slot = Some(o.clone());
    }
}

/// Pushes the two halves of `r` so that the first half is sent first.
pub(crate) fn push_halves(stack: &mut Vec<Range<usize>>, r: Range<usize>) {
    let mid = r.start + r.len() / 2;
    stack.push(mid..r.end);
    stack.push(r.start..mid);
}

/// Consecutive ranges of `batch` whose JSON (plus separators) stays within `max_bytes`
/// (a single larger record gets a range of its own).
fn chunks_by_bytes(batch: &[OutboundRecord], max_bytes: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, r) in batch.iter().enumerate() {
        let len = r.json.len() + 1;
        if i > start && bytes + len > max_bytes {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += len;
    }
    if start < batch.len() {
        out.push(start..batch.len());
    }
    out
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The `/batch/` body for `records` at `now_ms`.
pub fn batch_body(api_key: &str, records: &[OutboundRecord], now_ms: i64) -> Vec<u8> {
    let size: usize = records.iter().map(|r| r.json.len() + 1).sum();
    let mut body = Vec::with_capacity(size + api_key.len() + 64);
    body.extend_from_slice(b"{\"api_key\":");
    // A string always serialises.
    let _ = serde_json::to_writer(&mut body, api_key);
    let oldest = records.iter().map(|r| r.timestamp_ms).min();
    let limit = i64::try_from(HISTORICAL_AGE.as_millis()).unwrap_or(i64::MAX);
    if oldest.is_some_and(|t| now_ms.saturating_sub(t) > limit) {
        body.extend_from_slice(b",\"historical_migration\":true");
    }
    body.extend_from_slice(b",\"batch\":[");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&r.json);
    }
    body.extend_from_slice(b"]}");
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::sink::Endpoint;
    use bytes::Bytes;

    fn rec(json: &str, ts: i64) -> OutboundRecord {
        OutboundRecord {
            endpoint: Endpoint::PosthogBatch,
            json: Bytes::from(json.to_owned()),
            id: "u".into(),
            timestamp_ms: ts,
        }
    }

    #[test]
    fn body_has_no_sent_at_and_flags_old_batches() {
        let now = 1_800_000_000_000;
        let fresh = batch_body("phc_k", &[rec("{\"a\":1}", now - 1000)], now);
        let v: serde_json::Value = serde_json::from_slice(&fresh).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"api_key": "phc_k", "batch": [{"a": 1}]})
        );
        let old = now - 49 * 3600 * 1000;
        let body = batch_body(
            "phc_\"k",
            &[rec("{\"a\":1}", now), rec("{\"b\":2}", old)],
            now,
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["historical_migration"], true);
        assert_eq!(v["api_key"], "phc_\"k");
        assert_eq!(v["batch"].as_array().unwrap().len(), 2);
        assert!(v.get("sent_at").is_none());
    }

    #[test]
    fn chunking_by_bytes() {
        let b: Vec<_> = (0..5).map(|_| rec("0123456789", 0)).collect(); // 11 bytes each
        assert_eq!(chunks_by_bytes(&b, 1000), vec![0..5]);
        assert_eq!(chunks_by_bytes(&b, 22), vec![0..2, 2..4, 4..5]);
        assert_eq!(chunks_by_bytes(&b, 5), vec![0..1, 1..2, 2..3, 3..4, 4..5]);
        assert!(chunks_by_bytes(&[], 5).is_empty());
        let mut s = Vec::new();
        push_halves(&mut s, 0..8);
        assert_eq!(s.pop(), Some(0..4));
        assert_eq!(s.pop(), Some(4..8));
    }
}
