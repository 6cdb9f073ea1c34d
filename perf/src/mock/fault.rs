//! Fault injection: a FIFO queue of faults per destination.
//!
//! Each request to a destination (admin routes excepted) looks at the head of that
//! destination's queue. A head that has ended (its count used up, its time passed) is removed
//! and the next one becomes the head: the clock of a timed fault starts when it becomes the
//! head, so `[503 ×2, 429 for 5 s]` means "two 503s, then 429s for five seconds, then normal".
//! A request whose path does not match the head's route goes through untouched and does not
//! consume it. Faults that end by count end at the request that consumes the last one.
//!
//! Latency is not a queued fault: it is a setting applied to every request
//! ([`crate::mock::MockHandle::set_latency`]).

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

/// One of the two mocked services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Destination {
    /// The mock PostHog capture service.
    #[serde(alias = "PostHog")]
    Posthog,
    /// The mock Mixpanel ingestion API.
    #[serde(alias = "Mixpanel")]
    Mixpanel,
}

impl Destination {
    /// Lower-case name (`posthog`, `mixpanel`).
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Posthog => "posthog",
            Destination::Mixpanel => "mixpanel",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Destination::Posthog => 0,
            Destination::Mixpanel => 1,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a fault does to a request it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultAction {
    /// Answer this status without processing the request (nothing is recorded as accepted).
    /// The body defaults to what the service sends for that status.
    Status {
        /// HTTP status to answer.
        status: u16,
        /// `Retry-After` header value (seconds or an HTTP date), if any.
        retry_after: Option<String>,
        /// Response body; `None` uses the destination's usual body for the status.
        body: Option<String>,
    },
    /// Mixpanel `/import` only: process the request normally, but also fail the records at
    /// these 0-based indexes, answering the partial-success 400 with `failed_records`.
    /// The other valid records are imported. Indexes past the end are ignored.
    PartialReject {
        /// Indexes of the records to fail.
        indexes: Vec<usize>,
    },
    /// Read the request and never answer it while the fault lasts; when the fault is cleared
    /// or its time ends, the held connections are closed without a response.
    Hang,
    /// Read the request, then close the connection without a response (a network error).
    Disconnect,
    /// Process and answer the request as usual (2xx when valid) but record nothing, like
    /// PostHog's quota limiter that answers 200 and drops the events.
    QuotaDrop,
}

/// How long a fault lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultLimit {
    /// The next `n` matching requests.
    Times(u32),
    /// Every matching request during this long, counted from when the fault becomes the head
    /// of the queue.
    For(Duration),
    /// Until [`crate::mock::MockHandle::clear_faults`] (or `DELETE /__admin/faults`).
    UntilCleared,
}

/// A fault to inject; build it with the constructors and chain the modifiers:
/// `Fault::status(503).times(2)`, `Fault::status(429).retry_after_secs(3).times(1)`,
/// `Fault::hang().for_duration(Duration::from_secs(5))`, `Fault::partial([0, 2])`.
/// Without a limit modifier a fault lasts until cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What it does.
    pub action: FaultAction,
    /// How long it lasts.
    pub limit: FaultLimit,
    /// Only requests to this path (trailing slash ignored), or every request when `None`.
    pub route: Option<String>,
}

impl Fault {
    fn new(action: FaultAction) -> Self {
        Self {
            action,
            limit: FaultLimit::UntilCleared,
            route: None,
        }
    }

    /// Answer `status` with the service's usual body for it.
    pub fn status(status: u16) -> Self {
        Self::new(FaultAction::Status {
            status,
            retry_after: None,
            body: None,
        })
    }

    /// Mixpanel partial 400 failing the records at `indexes` (applies to `/import` only).
    pub fn partial(indexes: impl IntoIterator<Item = usize>) -> Self {
        let mut fault = Self::new(FaultAction::PartialReject {
            indexes: indexes.into_iter().collect(),
        });
        fault.route = Some("/import".to_owned());
        fault
    }

    /// Hold requests without an answer.
    pub fn hang() -> Self {
        Self::new(FaultAction::Hang)
    }

    /// Close the connection without an answer.
    pub fn disconnect() -> Self {
        Self::new(FaultAction::Disconnect)
    }

    /// Answer success but record nothing.
    pub fn quota_drop() -> Self {
        Self::new(FaultAction::QuotaDrop)
    }

    /// Applies to the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Self {
        self.limit = FaultLimit::Times(n);
        self
    }

    /// Applies for `duration` from when it becomes the head of the queue.
    pub fn for_duration(mut self, duration: Duration) -> Self {
        self.limit = FaultLimit::For(duration);
        self
    }

    /// Applies until cleared (the default).
    pub fn until_cleared(mut self) -> Self {
        self.limit = FaultLimit::UntilCleared;
        self
    }

    /// Restricts the fault to one path, e.g. `/import` or `/engage` (trailing slash ignored).
    pub fn on_route(mut self, route: impl Into<String>) -> Self {
        self.route = Some(route.into());
        self
    }

    /// Adds `Retry-After: <secs>` to a status fault (no effect on other actions).
    pub fn retry_after_secs(self, secs: u64) -> Self {
        self.retry_after(secs.to_string())
    }

    /// Adds a raw `Retry-After` value (seconds or an HTTP date) to a status fault.
    pub fn retry_after(mut self, value: impl Into<String>) -> Self {
        if let FaultAction::Status { retry_after, .. } = &mut self.action {
            *retry_after = Some(value.into());
        }
        self
    }

    /// Replaces the body of a status fault.
    pub fn with_body(mut self, value: impl Into<String>) -> Self {
        if let FaultAction::Status { body, .. } = &mut self.action {
            *body = Some(value.into());
        }
        self
    }

    /// Whether this fault applies to a request for `path`.
    pub(crate) fn matches(&self, path: &str) -> bool {
        match &self.route {
            None => true,
            Some(route) => trim_slash(route) == trim_slash(path),
        }
    }
}

fn trim_slash(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.action {
            FaultAction::Status {
                status,
                retry_after,
                ..
            } => {
                write!(f, "status {status}")?;
                if let Some(ra) = retry_after {
                    write!(f, " (Retry-After: {ra})")?;
                }
            }
            FaultAction::PartialReject { indexes } => write!(f, "partial 400 at {indexes:?}")?,
            FaultAction::Hang => f.write_str("hang")?,
            FaultAction::Disconnect => f.write_str("disconnect")?,
            FaultAction::QuotaDrop => f.write_str("quota drop")?,
        }
        match self.limit {
            FaultLimit::Times(n) => write!(f, " ×{n}")?,
            FaultLimit::For(d) => write!(f, " for {} ms", d.as_millis())?,
            FaultLimit::UntilCleared => f.write_str(" until cleared")?,
        }
        if let Some(route) = &self.route {
            write!(f, " on {route}")?;
        }
        Ok(())
    }
}

/// A queued fault as reported by [`crate::mock::MockHandle::pending_faults`] and
/// `GET /__admin/faults`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultInfo {
    /// Id returned when it was injected.
    pub id: u64,
    /// Destination whose queue holds it.
    pub destination: Destination,
    /// Human-readable description, e.g. `status 503 ×2 on /import`.
    pub description: String,
    /// Requests it has answered so far.
    pub applied: u64,
    /// Requests it will still answer (count-limited faults).
    pub remaining: Option<u32>,
    /// Milliseconds left (timed faults that have started).
    pub remaining_ms: Option<u64>,
    /// Whether it is the head of its queue (the one requests see now).
    pub active: bool,
}

/// One fault in a queue, with its progress.
#[derive(Debug)]
struct Queued {
    id: u64,
    fault: Fault,
    applied: u64,
    remaining: Option<u32>,
    deadline: Option<Instant>,
}

impl Queued {
    fn start(&mut self, at: Instant) {
        if let FaultLimit::For(d) = self.fault.limit {
            if self.deadline.is_none() {
                self.deadline = Some(at + d);
            }
        }
    }
}

/// A fault chosen for one request.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub(crate) action: FaultAction,
    pub(crate) description: String,
    /// When a timed fault ends (hung requests are released then).
    pub(crate) deadline: Option<Instant>,
}

/// The FIFO of faults of one destination. Pure apart from the `now` it is given.
#[derive(Debug, Default)]
pub(crate) struct FaultQueue {
    items: VecDeque<Queued>,
}

impl FaultQueue {
    /// Adds a fault at the back. A fault that becomes the head now starts now.
    pub(crate) fn push(&mut self, id: u64, fault: Fault, now: Instant) {
        let remaining = match fault.limit {
            FaultLimit::Times(n) => Some(n),
            _ => None,
        };
        let mut queued = Queued {
            id,
            fault,
            applied: 0,
            remaining,
            deadline: None,
        };
        if self.items.is_empty() {
            queued.start(now);
        }
        self.items.push_back(queued);
        // A zero-count fault ends at once.
        self.expire(now);
    }

    /// Removes the ended faults at the head and starts the next one.
    fn expire(&mut self, now: Instant) {
        while let Some(head) = self.items.front_mut() {
            let ended_at = match (head.remaining, head.deadline) {
                (Some(0), _) => Some(now),
                (_, Some(deadline)) if now >= deadline => Some(deadline),
                _ => None,
            };
            match ended_at {
                Some(at) => {
                    self.items.pop_front();
                    if let Some(next) = self.items.front_mut() {
                        next.start(at);
                    }
                }
                None => {
                    head.start(now);
                    return;
                }
            }
        }
    }

    /// The fault that applies to a request for `path` arriving at `now`, consuming one use.
    pub(crate) fn next_for(&mut self, path: &str, now: Instant) -> Option<Applied> {
        self.expire(now);
        let head = self.items.front_mut()?;
        if !head.fault.matches(path) {
            return None;
        }
        head.applied += 1;
        if let Some(n) = head.remaining.as_mut() {
            *n = n.saturating_sub(1);
        }
        let applied = Applied {
            action: head.fault.action.clone(),
            description: head.fault.to_string(),
            deadline: head.deadline,
        };
        self.expire(now);
        Some(applied)
    }

    /// Removes every fault; returns how many there were.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.items.len();
        self.items.clear();
        n
    }

    /// The faults still queued.
    pub(crate) fn info(&mut self, destination: Destination, now: Instant) -> Vec<FaultInfo> {
        self.expire(now);
        self.items
            .iter()
            .enumerate()
            .map(|(i, q)| FaultInfo {
                id: q.id,
                destination,
                description: q.fault.to_string(),
                applied: q.applied,
                remaining: q.remaining,
                remaining_ms: q.deadline.map(|d| {
                    u64::try_from(d.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
                }),
                active: i == 0,
            })
            .collect()
    }
}

/// The JSON form of a fault taken by `POST /__admin/faults` (one object or an array):
///
/// ```json
/// {"destination": "mixpanel", "action": "status", "status": 429, "retry_after": 2,
///  "route": "/import", "times": 3}
/// ```
///
/// `action` is one of `status` (the default when `status` is given), `partial`, `hang`,
/// `disconnect`, `quota_drop`. Limits: `times` (count), `for_ms` or `for_secs` (duration), or
/// neither (until cleared). `destination` defaults to the server that received the request.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// `posthog` or `mixpanel`; defaults to the server the admin request went to.
    #[serde(default)]
    pub destination: Option<Destination>,
    /// `status`, `partial`, `hang`, `disconnect` or `quota_drop`.
    #[serde(default)]
    pub action: Option<String>,
    /// Status to answer (`status` action).
    #[serde(default)]
    pub status: Option<u16>,
    /// `Retry-After` value: a number of seconds or a string.
    #[serde(default)]
    pub retry_after: Option<Value>,
    /// Body to answer instead of the usual one (`status` action).
    #[serde(default)]
    pub body: Option<String>,
    /// Record indexes to fail (`partial` action).
    #[serde(default)]
    pub indexes: Option<Vec<usize>>,
    /// Restrict to one path.
    #[serde(default)]
    pub route: Option<String>,
    /// Count limit.
    #[serde(default)]
    pub times: Option<u32>,
    /// Duration limit in milliseconds.
    #[serde(default)]
    pub for_ms: Option<u64>,
    /// Duration limit in seconds.
    #[serde(default)]
    pub for_secs: Option<f64>,
}

impl FaultSpec {
    /// Converts to a [`Fault`] for `default_destination` unless the spec names one.
    pub fn into_fault(
        self,
        default_destination: Destination,
    ) -> Result<(Destination, Fault), String> {
        let destination = self.destination.unwrap_or(default_destination);
        let action = match (self.action.as_deref(), self.status) {
            (None | Some("status"), Some(status)) => {
                if !(100..=999).contains(&status) {
                    return Err(format!("invalid status {status}"));
                }
                let mut fault = Fault::status(status);
                if let Some(ra) = self.retry_after {
                    fault = match ra {
                        Value::Number(n) => fault.retry_after(n.to_string()),
                        Value::String(s) => fault.retry_after(s),
                        other => {
                            return Err(format!(
                                "retry_after must be a number or a string, got {other}"
                            ));
                        }
                    };
                }
                if let Some(body) = self.body {
                    fault = fault.with_body(body);
                }
                fault
            }
            (None | Some("status"), None) => {
                return Err("a status fault needs \"status\"".to_owned());
            }
            (Some("partial"), _) => Fault::partial(self.indexes.unwrap_or_default()),
            (Some("hang"), _) => Fault::hang(),
            (Some("disconnect"), _) => Fault::disconnect(),
            (Some("quota_drop"), _) => Fault::quota_drop(),
            (Some(other), _) => return Err(format!("unknown action {other:?}")),
        };
        let fault = match (self.times, self.for_ms, self.for_secs) {
            (Some(n), None, None) => action.times(n),
            (None, Some(ms), None) => action.for_duration(Duration::from_millis(ms)),
            (None, None, Some(secs)) if secs.is_finite() && secs >= 0.0 => {
                action.for_duration(Duration::from_secs_f64(secs))
            }
            (None, None, Some(secs)) => return Err(format!("invalid for_secs {secs}")),
            (None, None, None) => action,
            _ => return Err("give at most one of times, for_ms, for_secs".to_owned()),
        };
        Ok((
            destination,
            match self.route {
                Some(route) => fault.on_route(route),
                None => fault,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(applied: Option<Applied>) -> Option<u16> {
        match applied?.action {
            FaultAction::Status { status, .. } => Some(status),
            _ => None,
        }
    }

    #[test]
    fn count_faults_run_in_order() {
        let t0 = Instant::now();
        let mut q = FaultQueue::default();
        q.push(1, Fault::status(503).times(2), t0);
        q.push(2, Fault::status(429).times(1), t0);
        assert_eq!(status_of(q.next_for("/batch/", t0)), Some(503));
        assert_eq!(status_of(q.next_for("/batch/", t0)), Some(503));
        assert_eq!(status_of(q.next_for("/batch/", t0)), Some(429));
        assert!(q.next_for("/batch/", t0).is_none());
        assert!(q.info(Destination::Posthog, t0).is_empty());
    }

    #[test]
    fn timed_fault_starts_when_it_becomes_head() {
        let t0 = Instant::now();
        let mut q = FaultQueue::default();
        q.push(1, Fault::status(500).times(1), t0);
        q.push(
            2,
            Fault::status(503).for_duration(Duration::from_secs(10)),
            t0,
        );
        let t1 = t0 + Duration::from_secs(100);
        assert_eq!(status_of(q.next_for("/x", t1)), Some(500));
        // The 503 window starts at t1, not at t0.
        assert_eq!(
            status_of(q.next_for("/x", t1 + Duration::from_secs(9))),
            Some(503)
        );
        assert!(q.next_for("/x", t1 + Duration::from_secs(10)).is_none());
    }

    #[test]
    fn chained_timed_faults_start_at_previous_deadline() {
        let t0 = Instant::now();
        let mut q = FaultQueue::default();
        q.push(
            1,
            Fault::status(503).for_duration(Duration::from_secs(5)),
            t0,
        );
        q.push(
            2,
            Fault::status(502).for_duration(Duration::from_secs(5)),
            t0,
        );
        assert_eq!(
            status_of(q.next_for("/x", t0 + Duration::from_secs(7))),
            Some(502)
        );
        assert!(q.next_for("/x", t0 + Duration::from_secs(10)).is_none());
    }

    #[test]
    fn route_filter_does_not_consume() {
        let t0 = Instant::now();
        let mut q = FaultQueue::default();
        q.push(1, Fault::status(503).times(1).on_route("/engage"), t0);
        assert!(q.next_for("/import", t0).is_none());
        assert_eq!(status_of(q.next_for("/engage/", t0)), Some(503));
        assert!(q.next_for("/engage", t0).is_none());
    }

    #[test]
    fn until_cleared_stays() {
        let t0 = Instant::now();
        let mut q = FaultQueue::default();
        q.push(1, Fault::status(401), t0);
        for _ in 0..10 {
            assert_eq!(status_of(q.next_for("/import", t0)), Some(401));
        }
        assert_eq!(q.clear(), 1);
        assert!(q.next_for("/import", t0).is_none());
    }

    #[test]
    fn zero_times_is_a_no_op() {
        let t0 = Instant::now();
        let mut q = FaultQueue::default();
        q.push(1, Fault::status(503).times(0), t0);
        assert!(q.next_for("/x", t0).is_none());
    }

    #[test]
    fn spec_conversion() {
        let spec: FaultSpec =
            serde_json::from_str(r#"{"status":429,"retry_after":3,"times":2,"route":"/import"}"#)
                .unwrap();
        let (dest, fault) = spec.into_fault(Destination::Mixpanel).unwrap();
        assert_eq!(dest, Destination::Mixpanel);
        assert_eq!(
            fault,
            Fault::status(429)
                .retry_after_secs(3)
                .times(2)
                .on_route("/import")
        );

        let spec: FaultSpec =
            serde_json::from_str(r#"{"destination":"posthog","action":"hang","for_ms":1500}"#)
                .unwrap();
        let (dest, fault) = spec.into_fault(Destination::Mixpanel).unwrap();
        assert_eq!(dest, Destination::Posthog);
        assert_eq!(
            fault,
            Fault::hang().for_duration(Duration::from_millis(1500))
        );

        let spec: FaultSpec =
            serde_json::from_str(r#"{"action":"partial","indexes":[1,3]}"#).unwrap();
        assert_eq!(
            spec.into_fault(Destination::Mixpanel).unwrap().1,
            Fault::partial([1, 3])
        );

        for bad in [
            r#"{"action":"status"}"#,
            r#"{"status":503,"times":1,"for_ms":2}"#,
            r#"{"action":"explode"}"#,
            r#"{"status":42}"#,
        ] {
            let spec: FaultSpec = serde_json::from_str(bad).unwrap();
            assert!(spec.into_fault(Destination::Posthog).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<FaultSpec>(r#"{"stauts":503}"#).is_err());
    }
}
