//! Counters of the HTTP layer and the Prometheus text rendering of `/metrics`.
//!
//! Every label takes values from a fixed set: endpoint (`collect`, `segment`, `ga4`,
//! `ga4_debug`, `health`, `ready`, `metrics`, `unknown`), status (the codes this server answers,
//! else `other`), the rejected field (names chosen by router-core; at most
//! [`MAX_FIELD_LABELS`] distinct, then `other`), and the log's configured destinations.
//! Counters are relaxed atomics updated once per request, never per event.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use router_sinks::buffer::LogMetrics;

/// Adds lines to `/metrics`: the delivery side registers one with
/// [`AppState::add_metrics_source`](crate::AppState::add_metrics_source).
///
/// `render_prometheus` appends complete Prometheus text-format lines (with their `# HELP` and
/// `# TYPE` lines, each ending in `\n`) to `out`. It is called on every scrape, so it must be
/// cheap and must not block.
pub trait MetricsSource: Send + Sync {
    /// Appends this source's metrics.
    fn render_prometheus(&self, out: &mut String);
}

/// Most distinct `field` label values of `router_events_rejected_total` per endpoint.
pub const MAX_FIELD_LABELS: usize = 64;

/// What a request was addressed to: the `endpoint` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Endpoint {
    Collect,
    Segment,
    Ga4,
    Ga4Debug,
    Posthog,
    Health,
    Ready,
    Metrics,
    Unknown,
}

impl Endpoint {
    const ALL: [Endpoint; 9] = [
        Endpoint::Collect,
        Endpoint::Segment,
        Endpoint::Ga4,
        Endpoint::Ga4Debug,
        Endpoint::Posthog,
        Endpoint::Health,
        Endpoint::Ready,
        Endpoint::Metrics,
        Endpoint::Unknown,
    ];
    const INGEST: [Endpoint; 5] = [
        Endpoint::Collect,
        Endpoint::Segment,
        Endpoint::Ga4,
        Endpoint::Ga4Debug,
        Endpoint::Posthog,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Endpoint::Collect => "collect",
            Endpoint::Segment => "segment",
            Endpoint::Ga4 => "ga4",
            Endpoint::Ga4Debug => "ga4_debug",
            Endpoint::Posthog => "posthog",
            Endpoint::Health => "health",
            Endpoint::Ready => "ready",
            Endpoint::Metrics => "metrics",
            Endpoint::Unknown => "unknown",
        }
    }

    fn idx(self) -> usize {
        self as usize
    }
}

const NE: usize = Endpoint::ALL.len();
/// Status codes with their own label value; anything else is `other`.
const STATUSES: [u16; 13] = [
    200, 204, 400, 401, 403, 404, 405, 408, 413, 415, 429, 500, 503,
];
const NS: usize = STATUSES.len() + 1;
/// Upper bounds of the request duration histogram, in seconds.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const NB: usize = BUCKETS.len();

fn zeros<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// Which limit refused a request: the `scope` label.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LimitScope {
    Ip,
    WriteKey,
}

/// The HTTP layer's counters.
#[derive(Debug)]
pub(crate) struct HttpMetrics {
    requests: [[AtomicU64; NS]; NE],
    duration_buckets: [[AtomicU64; NB]; NE],
    duration_nanos: [AtomicU64; NE],
    duration_count: [AtomicU64; NE],
    events_received: [AtomicU64; NE],
    events_accepted: [AtomicU64; NE],
    accepted_bytes: [AtomicU64; NE],
    rejected: Mutex<BTreeMap<(Endpoint, String), u64>>,
    pub(crate) connections_open: AtomicI64,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) panics_request: AtomicU64,
    pub(crate) panics_connection: AtomicU64,
    rate_limited_ip: AtomicU64,
    rate_limited_key: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) dead_letters_written: AtomicU64,
    pub(crate) dead_letter_errors: AtomicU64,
    pub(crate) log_full: AtomicU64,
    pub(crate) log_errors: AtomicU64,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: std::array::from_fn(|_| zeros()),
            duration_buckets: std::array::from_fn(|_| zeros()),
            duration_nanos: zeros(),
            duration_count: zeros(),
            events_received: zeros(),
            events_accepted: zeros(),
            accepted_bytes: zeros(),
            rejected: Mutex::new(BTreeMap::new()),
            connections_open: AtomicI64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            panics_request: AtomicU64::new(0),
            panics_connection: AtomicU64::new(0),
            rate_limited_ip: AtomicU64::new(0),
            rate_limited_key: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            dead_letters_written: AtomicU64::new(0),
            dead_letter_errors: AtomicU64::new(0),
            log_full: AtomicU64::new(0),
            log_errors: AtomicU64::new(0),
        }
    }
}

fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl HttpMetrics {
    /// One finished request.
    pub(crate) fn observe(&self, ep: Endpoint, status: u16, elapsed: Duration) {
        let si = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        let e = ep.idx();
        inc(&self.requests[e][si], 1);
        let secs = elapsed.as_secs_f64();
        if let Some(b) = BUCKETS.iter().position(|b| secs <= *b) {
            inc(&self.duration_buckets[e][b], 1);
        }
        inc(
            &self.duration_nanos[e],
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        );
        inc(&self.duration_count[e], 1);
    }

    /// Items of one request: parsed (accepted or not) and accepted, and the body size.
    pub(crate) fn events(&self, ep: Endpoint, received: usize, accepted: usize, bytes: usize) {
        let e = ep.idx();
        inc(&self.events_received[e], received as u64);
        inc(&self.events_accepted[e], accepted as u64);
        if accepted > 0 {
            inc(&self.accepted_bytes[e], bytes as u64);
        }
    }

    /// Rejected items of one request, by field.
    pub(crate) fn rejected<'a>(&self, ep: Endpoint, fields: impl Iterator<Item = &'a str>) {
        let mut m = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        for f in fields {
            let known = m.contains_key(&(ep, f.to_owned()));
            let distinct = m
                .range((ep, String::new())..)
                .take_while(|((e, _), _)| *e == ep);
            let label = if known || distinct.count() < MAX_FIELD_LABELS - 1 {
                f
            } else {
                "other"
            };
            *m.entry((ep, label.to_owned())).or_insert(0) += 1;
        }
    }

    pub(crate) fn rate_limited(&self, scope: LimitScope) {
        match scope {
            LimitScope::Ip => inc(&self.rate_limited_ip, 1),
            LimitScope::WriteKey => inc(&self.rate_limited_key, 1),
        }
    }

    /// Appends the HTTP layer's metrics and the log's.
    pub(crate) fn render(&self, log: &LogMetrics, out: &mut String) {
        header(
            out,
            "router_http_requests_total",
            "counter",
            "HTTP requests answered, by endpoint and status code.",
        );
        for ep in Endpoint::ALL {
            for (si, c) in self.requests[ep.idx()].iter().enumerate() {
                let n = get(c);
                if n == 0 {
                    continue;
                }
                let status = STATUSES.get(si).map_or("other".to_owned(), u16::to_string);
                let _ = writeln!(
                    out,
                    "router_http_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {n}",
                    ep.label()
                );
            }
        }
        header(
            out,
            "router_http_request_duration_seconds",
            "histogram",
            "Time from request headers to the answer, by endpoint.",
        );
        for ep in Endpoint::ALL {
            let e = ep.idx();
            let count = get(&self.duration_count[e]);
            if count == 0 {
                continue;
            }
            let mut cum = 0;
            for (b, c) in BUCKETS.iter().zip(&self.duration_buckets[e]) {
                cum += get(c);
                let _ = writeln!(
                    out,
                    "router_http_request_duration_seconds_bucket{{endpoint=\"{}\",le=\"{b}\"}} {cum}",
                    ep.label()
                );
            }
            let _ = writeln!(
                out,
                "router_http_request_duration_seconds_bucket{{endpoint=\"{0}\",le=\"+Inf\"}} {count}\n\
                 router_http_request_duration_seconds_sum{{endpoint=\"{0}\"}} {1}\n\
                 router_http_request_duration_seconds_count{{endpoint=\"{0}\"}} {count}",
                ep.label(),
                get(&self.duration_nanos[e]) as f64 / 1e9
            );
        }
        for (name, help, arr) in [
            (
                "router_events_received_total",
                "Events (batch items) parsed from requests, accepted or rejected, by endpoint.",
                &self.events_received,
            ),
            (
                "router_events_accepted_total",
                "Events accepted and durably stored in the log, by endpoint.",
                &self.events_accepted,
            ),
            (
                "router_http_accepted_bytes_total",
                "Body bytes (decompressed) of requests with accepted events, by endpoint.",
                &self.accepted_bytes,
            ),
        ] {
            header(out, name, "counter", help);
            for ep in Endpoint::INGEST {
                let _ = writeln!(
                    out,
                    "{name}{{endpoint=\"{}\"}} {}",
                    ep.label(),
                    get(&arr[ep.idx()])
                );
            }
        }
        header(
            out,
            "router_events_rejected_total",
            "counter",
            "Events rejected by validation (kept in the rejected dead-letter file), by endpoint and field.",
        );
        {
            let m = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
            for ((ep, field), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "router_events_rejected_total{{endpoint=\"{}\",field=\"{}\"}} {n}",
                    ep.label(),
                    escape_label(field)
                );
            }
        }
        header(
            out,
            "router_http_rate_limited_total",
            "counter",
            "Requests refused with 429, by the limit that refused them.",
        );
        let _ = writeln!(
            out,
            "router_http_rate_limited_total{{scope=\"ip\"}} {}\nrouter_http_rate_limited_total{{scope=\"write_key\"}} {}",
            get(&self.rate_limited_ip),
            get(&self.rate_limited_key)
        );
        header(
            out,
            "router_http_panics_total",
            "counter",
            "Panics caught (each is a bug), by where they were caught.",
        );
        let _ = writeln!(
            out,
            "router_http_panics_total{{scope=\"request\"}} {}\nrouter_http_panics_total{{scope=\"connection\"}} {}",
            get(&self.panics_request),
            get(&self.panics_connection)
        );
        let _ = writeln!(
            out,
            "# HELP router_http_connections_open Connections open now.\n\
             # TYPE router_http_connections_open gauge\n\
             router_http_connections_open {}",
            self.connections_open.load(Ordering::Relaxed).max(0)
        );
        for (name, help, v) in [
            (
                "router_http_connections_accepted_total",
                "Connections accepted.",
                &self.connections_accepted,
            ),
            (
                "router_http_connections_refused_total",
                "Connections closed unanswered because max_connections were open.",
                &self.connections_refused,
            ),
            (
                "router_http_auth_failures_total",
                "Requests refused with 401 (missing or unknown write key or api secret).",
                &self.auth_failures,
            ),
            (
                "router_http_dead_letters_total",
                "Rejected events written to the rejected dead-letter file.",
                &self.dead_letters_written,
            ),
            (
                "router_http_dead_letter_errors_total",
                "Failed writes of the rejected dead-letter file.",
                &self.dead_letter_errors,
            ),
            (
                "router_http_log_full_total",
                "Requests refused with 503 because the log was full.",
                &self.log_full,
            ),
            (
                "router_http_log_errors_total",
                "Requests refused with 503 because the log was closed or failed.",
                &self.log_errors,
            ),
        ] {
            header(out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", get(v));
        }
        render_log(log, out);
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The durable log's metrics (`Log::metrics()`).
fn render_log(m: &LogMetrics, out: &mut String) {
    for (name, kind, help, v) in [
        (
            "router_buffer_bytes",
            "gauge",
            "Bytes of all log segment files.",
            m.bytes_on_disk as f64,
        ),
        (
            "router_buffer_max_bytes",
            "gauge",
            "Configured cap on the log (max_total_bytes).",
            m.max_total_bytes as f64,
        ),
        (
            "router_buffer_segments",
            "gauge",
            "Log segment files.",
            m.segments as f64,
        ),
        (
            "router_buffer_records_appended_total",
            "counter",
            "Records appended to the log since start.",
            m.records_appended as f64,
        ),
        (
            "router_buffer_appended_bytes_total",
            "counter",
            "Framed bytes appended to the log since start.",
            m.bytes_appended as f64,
        ),
        (
            "router_buffer_appends_total",
            "counter",
            "Successful append calls since start (one per request).",
            m.appends as f64,
        ),
        (
            "router_buffer_group_commits_total",
            "counter",
            "Group commits (one write and sync for all waiting appends) since start.",
            m.group_commits as f64,
        ),
        (
            "router_buffer_fsync_last_duration_seconds",
            "gauge",
            "Duration of the last fdatasync.",
            m.fsync_duration_last.as_secs_f64(),
        ),
        (
            "router_buffer_corrupt_records_skipped_total",
            "counter",
            "Corrupt records skipped when the log was opened.",
            m.corrupt_records_skipped as f64,
        ),
        (
            "router_buffer_corrupt_records_read_total",
            "counter",
            "Corrupt records met by readers since start.",
            m.corrupt_records_read as f64,
        ),
        (
            "router_buffer_segments_deleted_total",
            "counter",
            "Segments deleted by retention since start.",
            m.segments_deleted as f64,
        ),
        (
            "router_buffer_poisoned",
            "gauge",
            "1 when the log refuses writes after an I/O failure (restart needed).",
            f64::from(u8::from(m.poisoned)),
        ),
    ] {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP router_buffer_fsync_duration_seconds Time spent in fdatasync of the log.\n\
         # TYPE router_buffer_fsync_duration_seconds summary\n\
         router_buffer_fsync_duration_seconds_sum {}\n\
         router_buffer_fsync_duration_seconds_count {}",
        m.fsync_duration_total.as_secs_f64(),
        m.fsyncs
    );
    header(
        out,
        "router_buffer_backlog_records",
        "gauge",
        "Records at or after the destination's cursor (the shared log: records routed elsewhere count until the cursor passes them).",
    );
    for d in &m.destinations {
        let _ = writeln!(
            out,
            "router_buffer_backlog_records{{destination=\"{}\"}} {}",
            escape_label(&d.name),
            d.backlog_records
        );
    }
    header(
        out,
        "router_buffer_oldest_unacked_age_seconds",
        "gauge",
        "Age of the destination's oldest unacknowledged record (0 without backlog).",
    );
    for d in &m.destinations {
        let _ = writeln!(
            out,
            "router_buffer_oldest_unacked_age_seconds{{destination=\"{}\"}} {}",
            escape_label(&d.name),
            d.oldest_unacked_age.map_or(0.0, |a| a.as_secs_f64())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bounded_labels() {
        let m = HttpMetrics::default();
        m.observe(Endpoint::Collect, 200, Duration::from_millis(3));
        m.observe(Endpoint::Collect, 299, Duration::from_secs(60));
        m.events(Endpoint::Collect, 3, 2, 100);
        for i in 0..(MAX_FIELD_LABELS + 10) {
            let f = format!("f{i}");
            m.rejected(Endpoint::Segment, std::iter::once(f.as_str()));
        }
        m.rejected(Endpoint::Segment, ["f0", "f0"].into_iter());
        let mut out = String::new();
        m.render(&LogMetrics::default(), &mut out);
        assert!(out.contains("router_http_requests_total{endpoint=\"collect\",status=\"200\"} 1"));
        assert!(
            out.contains("router_http_requests_total{endpoint=\"collect\",status=\"other\"} 1")
        );
        assert!(out.contains(
            "router_http_request_duration_seconds_bucket{endpoint=\"collect\",le=\"0.005\"} 1"
        ));
        assert!(out.contains(
            "router_http_request_duration_seconds_bucket{endpoint=\"collect\",le=\"+Inf\"} 2"
        ));
        assert!(out.contains("router_events_accepted_total{endpoint=\"collect\"} 2"));
        assert!(out.contains("router_events_rejected_total{endpoint=\"segment\",field=\"f0\"} 3"));
        let fields = out
            .lines()
            .filter(|l| l.starts_with("router_events_rejected_total{"))
            .count();
        assert_eq!(fields, MAX_FIELD_LABELS);
        assert!(out.contains("field=\"other\"} 11"));
    }
}
