//! The load: W workers, each with one keep-alive connection, sending single events or
//! batches, closed-loop (each worker sends its next request when the last one is answered) or
//! open-loop at a fixed offered rate (a pacer thread releases request slots on schedule and
//! latency is measured from each slot's intended send time, so a slow answer cannot hide the
//! requests it delayed: no coordinated omission).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::client::Connection;
use super::events::{Dests, Generator, MIXPANEL, POSTHOG};

/// Live counters, read by the sampler while the load runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Events sent so far.
    pub sent: AtomicU64,
    /// Events the router confirmed so far.
    pub accepted: AtomicU64,
    /// Confirmed events routed to PostHog.
    pub accepted_posthog: AtomicU64,
    /// Confirmed events routed to Mixpanel.
    pub accepted_mixpanel: AtomicU64,
}

/// What to drive.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The router's address.
    pub addr: SocketAddr,
    /// The request path (`/collect`).
    pub path: String,
    /// Connections (one worker each).
    pub workers: usize,
    /// Events per request.
    pub batch: usize,
    /// Stop after this many events (`None`: only the duration bounds the run).
    pub events: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Offered rate in events/s (open loop); `None`: closed loop.
    pub rate: Option<f64>,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// What the load did.
#[derive(Debug)]
pub struct Outcome {
    /// When the first request was due.
    pub started: Instant,
    /// When the last answer arrived.
    pub finished: Instant,
    /// Requests sent.
    pub requests: u64,
    /// Requests answered 200.
    pub requests_ok: u64,
    /// Events sent.
    pub events_sent: u64,
    /// Events the router confirmed (`accepted` of 200 answers).
    pub events_accepted: u64,
    /// Failed requests by HTTP status or error kind (`connect`, `io`, `timeout`,
    /// `partial` for a 200 that accepted fewer events than sent).
    pub errors: BTreeMap<String, u64>,
    /// Accept latency of the 200 answers, in microseconds.
    pub latency: Histogram<u64>,
    /// Confirmed ids by destination (`[posthog, mixpanel]`).
    pub accepted: [Vec<u128>; 2],
    /// Ids sent without a confirmation (an error, or a partial 200): they may or may not
    /// arrive.
    pub unconfirmed: HashSet<u128>,
    /// Open loop: the most a request was sent after its intended time.
    pub max_schedule_lag: Duration,
}

struct Shared {
    plan: Plan,
    generator: Generator,
    progress: Arc<Progress>,
    next_event: AtomicU64,
    next_slot: AtomicU64,
    total_slots: u64,
    interval: Duration,
    start: Instant,
    deadline: Option<Instant>,
    pacer: Option<Arc<Semaphore>>,
}

struct WorkerOutcome {
    requests: u64,
    requests_ok: u64,
    events_sent: u64,
    events_accepted: u64,
    errors: BTreeMap<String, u64>,
    latency: Histogram<u64>,
    accepted: [Vec<u128>; 2],
    unconfirmed: Vec<u128>,
    last_answer: Instant,
    max_lag: Duration,
}

fn histogram() -> Histogram<u64> {
    // 1 us .. 1 h at 3 significant digits; the bounds are valid, so this cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// The `accepted` count of a `{"status":"ok","accepted":N}` answer (a byte scan for the
/// usual compact form, a JSON parse otherwise).
pub fn parse_accepted(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"accepted\":";
    if let Some(at) = body.windows(KEY.len()).position(|w| w == KEY) {
        let digits: Vec<u8> = body[at + KEY.len()..]
            .iter()
            .copied()
            .skip_while(|b| *b == b' ')
            .take_while(u8::is_ascii_digit)
            .collect();
        if let Some(n) = std::str::from_utf8(&digits)
            .ok()
            .and_then(|d| d.parse().ok())
        {
            return Some(n);
        }
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("accepted")?.as_u64()
}

/// Runs the plan; `generator` renders the events.
pub async fn drive(plan: Plan, generator: Generator, progress: Arc<Progress>) -> Outcome {
    let batch = plan.batch.max(1) as u64;
    let workers = plan.workers.max(1);
    let start = Instant::now();
    let deadline = plan.duration.map(|d| start + d);
    let (total_slots, interval) = match plan.rate {
        Some(rate) => {
            let interval = Duration::from_secs_f64(batch as f64 / rate.max(1e-9));
            let by_events = plan.events.map(|n| n.div_ceil(batch));
            let by_time = plan
                .duration
                .map(|d| (d.as_secs_f64() * rate / batch as f64).ceil() as u64);
            let slots = match (by_events, by_time) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => 0,
            };
            (slots, interval)
        }
        None => (u64::MAX, Duration::ZERO),
    };
    let pacer = plan.rate.map(|_| Arc::new(Semaphore::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let pacer_thread = pacer.clone().map(|semaphore| {
        let stop = stop.clone();
        std::thread::spawn(move || pace(&semaphore, start, interval, total_slots, workers, &stop))
    });
    let shared = Arc::new(Shared {
        plan,
        generator,
        progress,
        next_event: AtomicU64::new(0),
        next_slot: AtomicU64::new(0),
        total_slots,
        interval,
        start,
        deadline,
        pacer,
    });
    let handles: Vec<_> = (0..workers)
        .map(|_| tokio::spawn(worker(shared.clone())))
        .collect();
    let mut out = Outcome {
        started: start,
        finished: start,
        requests: 0,
        requests_ok: 0,
        events_sent: 0,
        events_accepted: 0,
        errors: BTreeMap::new(),
        latency: histogram(),
        accepted: [Vec::new(), Vec::new()],
        unconfirmed: HashSet::new(),
        max_schedule_lag: Duration::ZERO,
    };
    for handle in handles {
        let Ok(w) = handle.await else {
            *out.errors.entry("worker-panic".to_owned()).or_insert(0) += 1;
            continue;
        };
        out.requests += w.requests;
        out.requests_ok += w.requests_ok;
        out.events_sent += w.events_sent;
        out.events_accepted += w.events_accepted;
        for (k, v) in w.errors {
            *out.errors.entry(k).or_insert(0) += v;
        }
        let _ = out.latency.add(&w.latency);
        let [ph, mp] = w.accepted;
        out.accepted[0].extend(ph);
        out.accepted[1].extend(mp);
        out.unconfirmed.extend(w.unconfirmed);
        out.finished = out.finished.max(w.last_answer);
        out.max_schedule_lag = out.max_schedule_lag.max(w.max_lag);
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(thread) = pacer_thread {
        let _ = thread.join();
    }
    out
}

/// The pacer's shortest sleep: at high rates it wakes at most 10,000 times a second and
/// releases every slot that has come due (each wake-up is a context switch on a machine the
/// router shares). A slot released up to this late is measured from its intended time, so
/// the delay counts against the router's latency, never for it.
const PACER_MIN_SLEEP: Duration = Duration::from_micros(100);

/// The pacer: releases one permit per request slot at `start + k * interval`, then one stop
/// permit per worker. Runs on its own thread with `std::thread::sleep`, whose resolution is
/// tens of microseconds (tokio's timer has a 1 ms resolution).
fn pace(
    semaphore: &Semaphore,
    start: Instant,
    interval: Duration,
    total: u64,
    workers: usize,
    stop: &AtomicBool,
) {
    let mut released = 0u64;
    let step = interval.as_secs_f64();
    while released < total && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(start).as_secs_f64();
        let due = if step > 0.0 {
            ((elapsed / step).floor() as u64 + 1).min(total)
        } else {
            total
        };
        if due > released {
            let n = usize::try_from(due - released).unwrap_or(usize::MAX);
            semaphore.add_permits(n.min(Semaphore::MAX_PERMITS / 2));
            released = due;
        } else {
            let next = start + interval.mul_f64(released as f64);
            std::thread::sleep(next.saturating_duration_since(now).max(PACER_MIN_SLEEP));
        }
    }
    semaphore.add_permits(workers);
}

async fn worker(shared: Arc<Shared>) -> WorkerOutcome {
    let plan = &shared.plan;
    let batch = plan.batch.max(1) as u64;
    let mut conn = Connection::new(plan.addr);
    let mut w = WorkerOutcome {
        requests: 0,
        requests_ok: 0,
        events_sent: 0,
        events_accepted: 0,
        errors: BTreeMap::new(),
        latency: histogram(),
        accepted: [Vec::new(), Vec::new()],
        unconfirmed: Vec::new(),
        last_answer: shared.start,
        max_lag: Duration::ZERO,
    };
    let mut ids: Vec<Uuid> = Vec::with_capacity(batch as usize);
    let mut dests: Vec<Dests> = Vec::with_capacity(batch as usize);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let (first, n, intended) = if let Some(pacer) = &shared.pacer {
            match pacer.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            }
            let slot = shared.next_slot.fetch_add(1, Ordering::Relaxed);
            if slot >= shared.total_slots {
                break;
            }
            let first = slot * batch;
            let n = match plan.events {
                Some(total) => batch.min(total.saturating_sub(first)),
                None => batch,
            };
            let intended = shared.start + shared.interval.mul_f64(slot as f64);
            (first, n, Some(intended))
        } else {
            if shared.deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let first = shared.next_event.fetch_add(batch, Ordering::Relaxed);
            let n = match plan.events {
                Some(total) => batch.min(total.saturating_sub(first)),
                None => batch,
            };
            (first, n, None)
        };
        if n == 0 {
            break;
        }
        ids.clear();
        ids.extend((0..n).map(|_| Uuid::now_v7()));
        buf = Vec::with_capacity(buf.capacity().max(256 * n as usize));
        shared.generator.body(first, &ids, &mut buf, &mut dests);
        let body = Bytes::from(std::mem::take(&mut buf));
        let sent_at = Instant::now();
        let t0 = intended.unwrap_or(sent_at);
        if let Some(intended) = intended {
            w.max_lag = w.max_lag.max(sent_at.saturating_duration_since(intended));
        }
        w.requests += 1;
        w.events_sent += n;
        shared.progress.sent.fetch_add(n, Ordering::Relaxed);
        let result = conn
            .request(
                Method::POST,
                &plan.path,
                Some("application/json"),
                body,
                plan.timeout,
            )
            .await;
        let done = Instant::now();
        w.last_answer = done;
        let label = match result {
            Ok((200, body)) => match parse_accepted(&body) {
                Some(accepted) if accepted == n => {
                    w.requests_ok += 1;
                    w.events_accepted += n;
                    let micros = done.saturating_duration_since(t0).as_micros();
                    let _ = w
                        .latency
                        .record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
                    let (mut ph, mut mp) = (0, 0);
                    for (id, d) in ids.iter().zip(&dests) {
                        if d & POSTHOG != 0 {
                            w.accepted[0].push(id.as_u128());
                            ph += 1;
                        }
                        if d & MIXPANEL != 0 {
                            w.accepted[1].push(id.as_u128());
                            mp += 1;
                        }
                    }
                    let p = &shared.progress;
                    p.accepted.fetch_add(n, Ordering::Relaxed);
                    p.accepted_posthog.fetch_add(ph, Ordering::Relaxed);
                    p.accepted_mixpanel.fetch_add(mp, Ordering::Relaxed);
                    continue;
                }
                _ => "partial".to_owned(),
            },
            Ok((status, _)) => status.to_string(),
            Err(error) => error.label().to_owned(),
        };
        *w.errors.entry(label).or_insert(0) += 1;
        w.unconfirmed.extend(ids.iter().map(|id| id.as_u128()));
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_count() {
        assert_eq!(parse_accepted(br#"{"status":"ok","accepted":7}"#), Some(7));
        assert_eq!(
            parse_accepted(br#"{"accepted":120,"status":"ok"}"#),
            Some(120)
        );
        assert_eq!(
            parse_accepted(br#"{"status": "ok", "accepted": 3 }"#),
            Some(3)
        );
        assert_eq!(parse_accepted(br#"{"accepted":"x"}"#), None);
        assert_eq!(parse_accepted(br#"{"status":"ok"}"#), None);
        assert_eq!(parse_accepted(b"nope"), None);
    }

    #[test]
    fn pacer_releases_on_schedule() {
        let semaphore = Semaphore::new(0);
        let start = Instant::now();
        let stop = AtomicBool::new(false);
        pace(&semaphore, start, Duration::from_millis(2), 50, 3, &stop);
        let took = start.elapsed();
        assert_eq!(semaphore.available_permits(), 53);
        // 50 slots, the last due at 98 ms.
        assert!(took >= Duration::from_millis(98), "{took:?}");
        assert!(took < Duration::from_millis(400), "{took:?}");
    }
}
