//! Per-destination delivery counters (atomics) and their Prometheus text form.
//!
//! Counters are updated per request and per batch, never per event on a hot path of their
//! own. Names follow `router_delivery_<name>_<unit>[_total]` with a bounded `destination`
//! label (a configured destination name) and a bounded `outcome` label:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `router_delivery_requests_total` | counter | `outcome` = `ok`, `retry`, `rejected`, `error` |
//! | `router_delivery_events_total` | counter | `outcome` = `delivered`, `retried`, `dead_lettered` |
//! | `router_delivery_expired_total` | counter | records dead-lettered because their retry window ended (also in `dead_lettered`) |
//! | `router_delivery_corrupt_total` | counter | buffer records that could not be decoded (dead-lettered raw) |
//! | `router_delivery_request_duration_seconds` | summary (`_sum`, `_count`) | |
//! | `router_delivery_in_flight_requests` | gauge | |
//! | `router_delivery_pending_events` | gauge | buffer records read and not yet acknowledged |
//! | `router_delivery_paused` | gauge | 1 while the destination refuses the credentials |
//!
//! `requests_total{outcome="error"}` counts requests that got no HTTP answer (connect error,
//! timeout, closed connection); `retry` those answered 408/429/5xx (or 401/403: the records
//! are kept); `rejected` those answered with a refusal (including partial refusals).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How a request ended, for [`DeliveryMetrics::record_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestOutcome {
    /// Answered 2xx with every record accepted.
    Ok,
    /// Answered with a status that keeps the records for later (408, 429, 5xx, 401, 403).
    Retry,
    /// Answered with a refusal of some or all records (400, 413 on one record, `0` bodies).
    Rejected,
    /// No answer: connect error, timeout, connection closed, I/O error of the file sink.
    Error,
}

/// Counters of one destination's delivery. Shared (`Arc`) between the delivery loop, its
/// sink and whoever renders `/metrics`.
#[derive(Debug)]
pub struct DeliveryMetrics {
    destination: String,
    requests_ok: AtomicU64,
    requests_retry: AtomicU64,
    requests_rejected: AtomicU64,
    requests_error: AtomicU64,
    events_delivered: AtomicU64,
    events_retried: AtomicU64,
    events_dead_lettered: AtomicU64,
    events_expired: AtomicU64,
    corrupt_records: AtomicU64,
    request_duration_micros: AtomicU64,
    request_count: AtomicU64,
    in_flight: AtomicU64,
    pending: AtomicU64,
    paused: AtomicU64,
}

/// A plain copy of the counters of one destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliverySnapshot {
    /// Destination name.
    pub destination: String,
    /// Requests answered 2xx with everything accepted.
    pub requests_ok: u64,
    /// Requests answered with a retryable status (or 401/403).
    pub requests_retry: u64,
    /// Requests answered with a refusal.
    pub requests_rejected: u64,
    /// Requests without an answer.
    pub requests_error: u64,
    /// Records delivered.
    pub events_delivered: u64,
    /// Record attempts that will be retried.
    pub events_retried: u64,
    /// Buffer records written to the dead-letter file.
    pub events_dead_lettered: u64,
    /// Of those, expired by the retry window.
    pub events_expired: u64,
    /// Buffer records that could not be decoded.
    pub corrupt_records: u64,
    /// Sum of request durations.
    pub request_duration: Duration,
    /// Number of timed requests.
    pub request_count: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Buffer records read and not yet acknowledged.
    pub pending: u64,
    /// Whether the destination is paused (credentials refused).
    pub paused: bool,
}

impl DeliveryMetrics {
    /// Zeroed counters for `destination`.
    pub fn new(destination: impl Into<String>) -> Arc<Self> {
        Arc::new(DeliveryMetrics {
            destination: destination.into(),
            requests_ok: AtomicU64::new(0),
            requests_retry: AtomicU64::new(0),
            requests_rejected: AtomicU64::new(0),
            requests_error: AtomicU64::new(0),
            events_delivered: AtomicU64::new(0),
            events_retried: AtomicU64::new(0),
            events_dead_lettered: AtomicU64::new(0),
            events_expired: AtomicU64::new(0),
            corrupt_records: AtomicU64::new(0),
            request_duration_micros: AtomicU64::new(0),
            request_count: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            paused: AtomicU64::new(0),
        })
    }

    /// The destination these counters belong to.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// Counts one request (HTTP or file write) and its duration.
    pub fn record_request(&self, outcome: RequestOutcome, duration: Duration) {
        let c = match outcome {
            RequestOutcome::Ok => &self.requests_ok,
            RequestOutcome::Retry => &self.requests_retry,
            RequestOutcome::Rejected => &self.requests_rejected,
            RequestOutcome::Error => &self.requests_error,
        };
        c.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.request_duration_micros
            .fetch_add(micros, Ordering::Relaxed);
        self.request_count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_delivered(&self, n: u64) {
        self.events_delivered.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_retried(&self, n: u64) {
        self.events_retried.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_dead_lettered(&self, n: u64, expired: u64) {
        self.events_dead_lettered.fetch_add(n, Ordering::Relaxed);
        self.events_expired.fetch_add(expired, Ordering::Relaxed);
    }

    pub(crate) fn add_corrupt(&self, n: u64) {
        self.corrupt_records.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_pending(&self, n: usize) {
        self.pending.store(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(u64::from(paused), Ordering::Relaxed);
    }

    /// Whether the destination is paused now.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed) != 0
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> DeliverySnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DeliverySnapshot {
            destination: self.destination.clone(),
            requests_ok: l(&self.requests_ok),
            requests_retry: l(&self.requests_retry),
            requests_rejected: l(&self.requests_rejected),
            requests_error: l(&self.requests_error),
            events_delivered: l(&self.events_delivered),
            events_retried: l(&self.events_retried),
            events_dead_lettered: l(&self.events_dead_lettered),
            events_expired: l(&self.events_expired),
            corrupt_records: l(&self.corrupt_records),
            request_duration: Duration::from_micros(l(&self.request_duration_micros)),
            request_count: l(&self.request_count),
            in_flight: l(&self.in_flight),
            pending: l(&self.pending),
            paused: l(&self.paused) != 0,
        }
    }

    /// Appends this destination's metrics in the Prometheus text format (with `# HELP` and
    /// `# TYPE` lines). For several destinations use [`render_prometheus`], which writes each
    /// family's header once.
    pub fn render_prometheus(&self, out: &mut String) {
        render_prometheus(std::slice::from_ref(&self.snapshot()), out);
    }
}

/// Appends the metrics of every destination in `snapshots` in the Prometheus text format,
/// one header per metric family.
pub fn render_prometheus(snapshots: &[DeliverySnapshot], out: &mut String) {
    type Get = fn(&DeliverySnapshot) -> u64;
    /// Name, type, help, and (outcome label, value) series.
    type Family<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, Get)]);
    let families: [Family<'_>; 4] = [
        (
            "router_delivery_requests_total",
            "counter",
            "Delivery requests by outcome (ok, retry, rejected, error = no answer).",
            &[
                ("ok", |s| s.requests_ok),
                ("retry", |s| s.requests_retry),
                ("rejected", |s| s.requests_rejected),
                ("error", |s| s.requests_error),
            ],
        ),
        (
            "router_delivery_events_total",
            "counter",
            "Destination records delivered, retried (per attempt) and buffer records dead-lettered.",
            &[
                ("delivered", |s| s.events_delivered),
                ("retried", |s| s.events_retried),
                ("dead_lettered", |s| s.events_dead_lettered),
            ],
        ),
        (
            "router_delivery_expired_total",
            "counter",
            "Buffer records dead-lettered because their retry window ended.",
            &[("", |s| s.events_expired)],
        ),
        (
            "router_delivery_corrupt_total",
            "counter",
            "Buffer records that could not be decoded (dead-lettered raw).",
            &[("", |s| s.corrupt_records)],
        ),
    ];
    for (name, ty, help, series) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}");
        for s in snapshots {
            let dest = escape_label(&s.destination);
            for (outcome, get) in series {
                if outcome.is_empty() {
                    let _ = writeln!(out, "{name}{{destination=\"{dest}\"}} {}", get(s));
                } else {
                    let _ = writeln!(
                        out,
                        "{name}{{destination=\"{dest}\",outcome=\"{outcome}\"}} {}",
                        get(s)
                    );
                }
            }
        }
    }
    let name = "router_delivery_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Duration of delivery requests.\n# TYPE {name} summary"
    );
    for s in snapshots {
        let dest = escape_label(&s.destination);
        let _ = writeln!(
            out,
            "{name}_sum{{destination=\"{dest}\"}} {}\n{name}_count{{destination=\"{dest}\"}} {}",
            s.request_duration.as_secs_f64(),
            s.request_count
        );
    }
    type Gauge = fn(&DeliverySnapshot) -> u64;
    let gauges: [(&str, &str, Gauge); 3] = [
        (
            "router_delivery_in_flight_requests",
            "Delivery requests in flight.",
            |s| s.in_flight,
        ),
        (
            "router_delivery_pending_events",
            "Buffer records read by delivery and not yet acknowledged.",
            |s| s.pending,
        ),
        (
            "router_delivery_paused",
            "1 while the destination refuses the credentials (401/403) and delivery is paused.",
            |s| u64::from(s.paused),
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in snapshots {
            let _ = writeln!(
                out,
                "{name}{{destination=\"{}\"}} {}",
                escape_label(&s.destination),
                get(s)
            );
        }
    }
}

/// Escapes a label value (`\`, `"`, newline).
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_once_per_destination() {
        let a = DeliveryMetrics::new("mixpanel");
        let b = DeliveryMetrics::new("post\"hog");
        a.record_request(RequestOutcome::Ok, Duration::from_millis(250));
        a.record_request(RequestOutcome::Retry, Duration::from_millis(750));
        a.add_delivered(10);
        a.add_dead_lettered(2, 1);
        b.set_paused(true);
        let mut out = String::new();
        render_prometheus(&[a.snapshot(), b.snapshot()], &mut out);
        for line in [
            "router_delivery_requests_total{destination=\"mixpanel\",outcome=\"ok\"} 1",
            "router_delivery_requests_total{destination=\"mixpanel\",outcome=\"retry\"} 1",
            "router_delivery_events_total{destination=\"mixpanel\",outcome=\"delivered\"} 10",
            "router_delivery_events_total{destination=\"mixpanel\",outcome=\"dead_lettered\"} 2",
            "router_delivery_expired_total{destination=\"mixpanel\"} 1",
            "router_delivery_request_duration_seconds_sum{destination=\"mixpanel\"} 1",
            "router_delivery_request_duration_seconds_count{destination=\"mixpanel\"} 2",
            "router_delivery_paused{destination=\"post\\\"hog\"} 1",
            "router_delivery_paused{destination=\"mixpanel\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line}\n{out}");
        }
        assert_eq!(
            out.matches("# TYPE router_delivery_events_total").count(),
            1
        );
        // Every sample line is `name{labels} value`.
        for l in out.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
        let mut single = String::new();
        a.render_prometheus(&mut single);
        assert!(single.contains("# TYPE router_delivery_paused gauge"));
    }
}
