//! Delivery check: every confirmed event must reach each destination the routing table names,
//! matched by id (PostHog `uuid`, Mixpanel `$insert_id`, both the messageId).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;
use uuid::Uuid;

use crate::mock::{Endpoint, MockHandle, Stats};

/// The two destinations, in the order used by the arrays here.
pub const DESTINATIONS: [&str; 2] = ["posthog", "mixpanel"];
const ENDPOINTS: [Endpoint; 2] = [Endpoint::PosthogCapture, Endpoint::MixpanelImport];

/// How a destination fared, by id.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct IdCheck {
    /// Confirmed events routed here.
    pub expected: u64,
    /// Distinct expected ids that arrived.
    pub delivered: u64,
    /// Expected ids that never arrived (lost, unless the wait timed out early).
    pub missing: u64,
    /// Extra copies of ids that arrived more than once.
    pub duplicates: u64,
    /// Ids that arrived but were not confirmed to this destination: misrouted events, or ids
    /// that are not the messageId.
    pub unexpected: u64,
    /// Ids that arrived whose request got no confirmation (an error or timeout after the
    /// router had kept them): not a fault.
    pub unconfirmed_delivered: u64,
    /// Up to 10 missing ids, for a look in the router's log.
    pub missing_sample: Vec<String>,
}

/// Compares what a destination received with what it should have.
pub fn check(expected: &[u128], delivered: &[String], unconfirmed: &HashSet<u128>) -> IdCheck {
    let mut counts: HashMap<u128, u32> = HashMap::with_capacity(delivered.len());
    let mut unparsable = 0;
    for id in delivered {
        match Uuid::try_parse(id) {
            Ok(u) => *counts.entry(u.as_u128()).or_insert(0) += 1,
            Err(_) => unparsable += 1,
        }
    }
    let expected_set: HashSet<u128> = expected.iter().copied().collect();
    let mut out = IdCheck {
        expected: expected_set.len() as u64,
        unexpected: unparsable,
        ..IdCheck::default()
    };
    for id in &expected_set {
        if counts.contains_key(id) {
            out.delivered += 1;
        } else {
            out.missing += 1;
            if out.missing_sample.len() < 10 {
                out.missing_sample.push(Uuid::from_u128(*id).to_string());
            }
        }
    }
    for (id, n) in &counts {
        out.duplicates += u64::from(n - 1);
        if !expected_set.contains(id) {
            if unconfirmed.contains(id) {
                out.unconfirmed_delivered += 1;
            } else {
                out.unexpected += 1;
            }
        }
    }
    out
}

/// The result of waiting for delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Per destination (`[posthog, mixpanel]`).
    pub checks: [IdCheck; 2],
    /// When each destination had received every expected id.
    pub complete_at: [Option<Instant>; 2],
    /// Whether everything expected arrived before the deadline.
    pub complete: bool,
    /// The first poll that saw more events delivered than when the wait began (within 5 ms).
    pub first_progress: Option<Instant>,
    /// The mocks' counters at the end.
    pub stats: Stats,
}

fn unique(stats: &Stats, i: usize) -> u64 {
    if i == 0 {
        stats.posthog.unique_events
    } else {
        stats.mixpanel.unique_events
    }
}

/// Waits (until `timeout`) for every expected id to arrive, then checks ids exactly. Counts
/// are polled every 5 ms (cheap); the exact id comparison runs once the counts are reached
/// (and every second after, should it find gaps the counts hid).
pub async fn wait(
    mock: &MockHandle,
    expected: &[Vec<u128>; 2],
    unconfirmed: &HashSet<u128>,
    timeout: Duration,
) -> Delivery {
    let deadline = Instant::now() + timeout;
    let wanted = [
        expected[0].iter().collect::<HashSet<_>>().len() as u64,
        expected[1].iter().collect::<HashSet<_>>().len() as u64,
    ];
    let mut complete_at = [None, None];
    let mut exact_done = [false, false];
    let mut checks: [IdCheck; 2] = Default::default();
    let mut last_exact: Option<Instant> = None;
    let initial = {
        let stats = mock.stats();
        unique(&stats, 0) + unique(&stats, 1)
    };
    let mut first_progress = None;
    loop {
        let stats = mock.stats();
        let now = Instant::now();
        if first_progress.is_none() && unique(&stats, 0) + unique(&stats, 1) > initial {
            first_progress = Some(now);
        }
        for i in 0..2 {
            if complete_at[i].is_none() && unique(&stats, i) >= wanted[i] {
                complete_at[i] = Some(now);
            }
        }
        let counts_reached = complete_at.iter().all(Option::is_some);
        let exact_due = last_exact.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if (counts_reached && exact_due) || now >= deadline {
            last_exact = Some(now);
            for i in 0..2 {
                if exact_done[i] {
                    continue;
                }
                checks[i] = check(&expected[i], &mock.accepted_ids(ENDPOINTS[i]), unconfirmed);
                if checks[i].missing == 0 {
                    exact_done[i] = true;
                } else {
                    // The count was reached by other ids: not complete yet.
                    complete_at[i] = None;
                }
            }
            if exact_done.iter().all(|d| *d) || now >= deadline {
                // Final pass for duplicates that arrived after completion.
                for i in 0..2 {
                    checks[i] = check(&expected[i], &mock.accepted_ids(ENDPOINTS[i]), unconfirmed);
                }
                let complete = checks.iter().all(|c| c.missing == 0);
                return Delivery {
                    checks,
                    complete_at,
                    complete,
                    first_progress,
                    stats: mock.stats(),
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_ids() {
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        let expected: Vec<u128> = ids[..3].iter().map(|u| u.as_u128()).collect();
        let unconfirmed: HashSet<u128> = [ids[3].as_u128()].into_iter().collect();
        let delivered = vec![
            ids[0].to_string(),
            ids[0].to_string(),
            ids[1].to_string().to_uppercase(),
            ids[3].to_string(),
            ids[4].to_string(),
            "not-a-uuid".to_owned(),
        ];
        let c = check(&expected, &delivered, &unconfirmed);
        assert_eq!(c.expected, 3);
        assert_eq!(c.delivered, 2);
        assert_eq!(c.missing, 1);
        assert_eq!(c.missing_sample, vec![ids[2].to_string()]);
        assert_eq!(c.duplicates, 1);
        assert_eq!(c.unexpected, 2);
        assert_eq!(c.unconfirmed_delivered, 1);
    }
}
