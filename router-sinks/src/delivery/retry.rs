//! Retry classification and backoff: pure functions, no I/O, no clock reads.
//!
//! [`classify_status`] decides what an HTTP status means for the records of a request;
//! transport failures (connect errors, timeouts, a connection closed without an answer) are
//! always [`StatusClass::Retry`]. [`Backoff`] computes exponential delays with full jitter
//! (`uniform(0, min(cap, base × 2^(attempt-1)))`, the AWS "full jitter" scheme), with the
//! random source passed in so tests are deterministic. [`parse_retry_after`] reads a
//! `Retry-After` header (delay-seconds or an HTTP date, RFC 9110 §10.2.3) relative to a `now`
//! the caller supplies. [`expired`] is the retry-window test.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// Longest `Retry-After` honoured; a larger value is cut to this (the record can still
/// expire earlier by its retry window).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What an HTTP status means for the records of the request that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusClass {
    /// 2xx: accepted (the sink may still find per-record failures in the body).
    Success,
    /// 408, 429, 5xx: try again later with backoff, honouring `Retry-After`.
    Retry,
    /// 413: the request is too large; split it in halves (a lone record is rejected).
    Split,
    /// 401, 403: the credentials are refused; pause the destination, keep the records.
    Pause,
    /// Any other status (400, 404, 3xx, …): the destination refuses these records for good.
    Reject,
}

/// Classifies an HTTP status (see [`StatusClass`] for the table).
pub fn classify_status(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Success,
        408 | 429 | 500..=599 => StatusClass::Retry,
        413 => StatusClass::Split,
        401 | 403 => StatusClass::Pause,
        _ => StatusClass::Reject,
    }
}

/// Parses a `Retry-After` value: a non-negative integer number of seconds, or an HTTP date
/// (IMF-fixdate, RFC 850 or asctime form), relative to `now`. A date in the past means
/// "now" (zero). Unparseable values give `None`. The result is capped at
/// [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    let delay = if v.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings saturate instead of failing.
        Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry's delay.
    pub base: Duration,
    /// Largest ceiling.
    pub cap: Duration,
}

impl Backoff {
    /// A backoff from `base` (first ceiling) up to `cap`; `cap` is raised to `base` if lower.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
        }
    }

    /// The ceiling for retry number `attempt` (1 = first retry): `min(cap, base × 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(30);
        self.base
            .checked_mul(1u32 << shift)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// A delay drawn uniformly from `0..=ceiling(attempt)` (full jitter).
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rng.random_range(0..=ceiling))
    }
}

/// Whether a record first attempted at `first_attempt` has outlived its retry window at `now`
/// (both from the same monotonic clock).
pub fn expired(
    first_attempt: tokio::time::Instant,
    now: tokio::time::Instant,
    window: Duration,
) -> bool {
    now.saturating_duration_since(first_attempt) >= window
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn status_table() {
        use StatusClass::*;
        let table: &[(u16, StatusClass)] = &[
            (200, Success),
            (204, Success),
            (408, Retry),
            (429, Retry),
            (500, Retry),
            (502, Retry),
            (503, Retry),
            (504, Retry),
            (599, Retry),
            (413, Split),
            (401, Pause),
            (403, Pause),
            (400, Reject),
            (404, Reject),
            (405, Reject),
            (409, Reject),
            (415, Reject),
            (422, Reject),
            (301, Reject),
            (100, Reject),
        ];
        for &(status, class) in table {
            assert_eq!(classify_status(status), class, "status {status}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 1994-11-06T08:49:37Z
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("999999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:57 1994", now),
            Some(Duration::from_secs(20))
        );
        // A date in the past: retry now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["", "soon", "-1", "1.5", "Sun, 06 Nov 1994"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn backoff_ceilings_double_up_to_the_cap() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let ceilings: Vec<u64> = (1..=9).map(|a| b.ceiling(a).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.ceiling(0), Duration::from_secs(1));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(60));
        // A cap below the base is raised to it.
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(3), Duration::from_secs(5));
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_spreads() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..20 {
            let ceiling = b.ceiling(attempt);
            let mut lo = ceiling;
            let mut hi = Duration::ZERO;
            for _ in 0..200 {
                let d = b.delay(attempt, &mut rng);
                assert!(d <= ceiling);
                lo = lo.min(d);
                hi = hi.max(d);
            }
            // Full jitter covers most of the range.
            assert!(
                lo < ceiling / 4 && hi > ceiling * 3 / 4,
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn retry_window() {
        let t0 = tokio::time::Instant::now();
        let w = Duration::from_secs(10);
        assert!(!expired(t0, t0, w));
        assert!(!expired(t0, t0 + Duration::from_secs(9), w));
        assert!(expired(t0, t0 + Duration::from_secs(10), w));
        // A clock that went "backwards" (first attempt after now) never expires.
        assert!(!expired(t0 + Duration::from_secs(5), t0, w));
    }
}
