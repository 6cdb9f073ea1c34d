//! The delivery loop of one destination (one tokio task).
//!
//! State machine, driven by one `select!` over: a stop signal, request completions, the
//! buffer reader, and a timer.
//!
//! - **Read.** While fewer than `max_pending_events` buffer records are held, read a batch
//!   from the destination's [`Reader`]. Each record is decoded (`stored::decode`); one that
//!   cannot be decoded is dead-lettered raw; one not routed here is acknowledged at once;
//!   the others are mapped ([`Mapper`]) into one or more outbound records whose JSON is fixed
//!   from then on, so every attempt sends identical identity fields.
//! - **Batch.** Fresh records queue in `ready`; a batch leaves when it reaches
//!   `batch_max_events` / `batch_max_bytes`, or when its oldest record has waited
//!   `linger_ms`. Records to retry wait in `retry` batches, each with a due time; due retry
//!   batches go before fresh records.
//! - **Send.** Up to `concurrency` requests in flight, each a task running [`Sink::send`].
//! - **Settle.** Each outcome settles one outbound record: delivered, rejected (the buffer
//!   record gets a dead letter), or retry. A retry of an attempt counts towards the record's
//!   backoff (`Backoff`, full jitter, per batch) unless the destination asked for a delay
//!   (`Retry-After`), which also holds back every other send of the destination until then;
//!   a record whose retry window has passed since its first attempt expires to the
//!   dead-letter file instead. A buffer record is acknowledged when all its outbound
//!   records are settled, after its dead letter (if any) is durably written. Acks may come
//!   out of order; the buffer advances its cursor over the contiguous prefix.
//! - **Pause.** A 401/403 pauses the destination: one loud error, the `paused` gauge, no
//!   sends except a probe (the next batch) after `pause_probe_ms`, doubling up to
//!   `pause_probe_max_ms`. Records refused that way keep their attempts and window; a probe
//!   the destination processes resumes delivery and restarts the retry windows of the held
//!   records. Nothing is dead-lettered because of a pause; reading stops at
//!   `max_pending_events`, so the backlog stays on disk.
//! - **Stop.** On cancellation no new request starts; in-flight requests get
//!   `shutdown_grace_ms` to finish (their results are settled and acknowledged), then are
//!   aborted. Everything not acknowledged is delivered after the next start.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use router_core::stored;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::config::DeliveryConfig;
use super::metrics::DeliveryMetrics;
use super::retry::{Backoff, expired};
use super::sink::{AuthFailure, Mapper, OutboundRecord, Outcome, SendResult, Sink};
use crate::buffer::{BufferError, Reader};
use crate::dlq::{DeadLetter, DeadLetterKind, DeadLetterWriter};

/// Wait after a failed buffer read or dead-letter write before trying again.
const IO_RETRY: Duration = Duration::from_secs(1);

/// One outbound record and its retry state.
#[derive(Debug)]
struct Item {
    /// Buffer sequence number of the event it comes from.
    seq: u64,
    record: OutboundRecord,
    /// Attempts that failed transiently (pauses excluded).
    attempts: u32,
    /// When it was first sent (the start of its retry window).
    first_attempt: Option<Instant>,
    /// When it became ready (for the linger time).
    ready_at: Instant,
}

/// Why a buffer record is dead-lettered.
#[derive(Debug)]
struct Dead {
    kind: DeadLetterKind,
    reason: String,
    status: Option<u16>,
    body: Option<String>,
}

/// A buffer record with outbound records not yet settled.
#[derive(Debug)]
struct Pending {
    remaining: usize,
    payload: Bytes,
    dead: Option<Dead>,
}

/// A batch waiting to be retried.
#[derive(Debug)]
struct RetryBatch {
    due: Instant,
    items: Vec<Item>,
}

/// A request in flight.
#[derive(Debug)]
struct InFlight {
    items: Vec<Item>,
    probe: bool,
}

/// The destination's pause after 401/403.
#[derive(Debug)]
struct Pause {
    since: Instant,
    interval: Duration,
    next_probe: Instant,
    probe_in_flight: bool,
}

/// What woke the loop.
enum Wake {
    Stop,
    Done(Result<(tokio::task::Id, SendResult), tokio::task::JoinError>),
    Read(Result<Vec<(u64, Bytes)>, BufferError>),
    Timer,
    GraceOver,
}

/// Everything one destination's delivery needs.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) name: String,
    pub(crate) reader: Reader,
    pub(crate) mapper: Mapper,
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) dlq: DeadLetterWriter,
    pub(crate) config: DeliveryConfig,
    pub(crate) metrics: Arc<DeliveryMetrics>,
    pub(crate) cancel: CancellationToken,
}

/// The loop's mutable state.
struct State {
    w: Worker,
    backoff: Backoff,
    pending: HashMap<u64, Pending>,
    ready: VecDeque<Item>,
    ready_bytes: usize,
    retry: Vec<RetryBatch>,
    tasks: JoinSet<SendResult>,
    in_flight: HashMap<tokio::task::Id, InFlight>,
    throttle_until: Option<Instant>,
    pause: Option<Pause>,
    /// Dead letters to write, with the sequence numbers to acknowledge after.
    dead_queue: Vec<(u64, DeadLetter)>,
    dead_retry_at: Option<Instant>,
    to_ack: Vec<u64>,
    reader_closed: bool,
    read_retry_at: Option<Instant>,
    stopping: Option<Instant>,
}

impl Worker {
    /// Runs until stopped (or until the log is closed and everything read is settled).
    pub(crate) async fn run(self) {
        let backoff = self.config.backoff();
        let mut s = State {
            w: self,
            backoff,
            pending: HashMap::new(),
            ready: VecDeque::new(),
            ready_bytes: 0,
            retry: Vec::new(),
            tasks: JoinSet::new(),
            in_flight: HashMap::new(),
            throttle_until: None,
            pause: None,
            dead_queue: Vec::new(),
            dead_retry_at: None,
            to_ack: Vec::new(),
            reader_closed: false,
            read_retry_at: None,
            stopping: None,
        };
        tracing::info!(destination = %s.w.name, sink = s.w.sink.kind(), "Delivery started.");
        s.run().await;
        tracing::info!(destination = %s.w.name, "Delivery stopped.");
    }
}

impl State {
    async fn run(&mut self) {
        loop {
            self.flush().await;
            let now = Instant::now();
            self.dispatch(now);
            self.w.metrics.set_in_flight(self.tasks.len());
            self.w
                .metrics
                .set_pending(self.pending.len() + self.dead_queue.len());
            if self.stopping.is_some() && self.tasks.is_empty() {
                break;
            }
            if self.reader_closed && self.is_idle() {
                break;
            }
            let can_read = self.stopping.is_none()
                && !self.reader_closed
                && self.pending.len() + self.dead_queue.len() < self.w.config.max_pending_events
                && self.read_retry_at.is_none_or(|t| now >= t);
            let room = self
                .w
                .config
                .max_pending_events
                .saturating_sub(self.pending.len() + self.dead_queue.len())
                .clamp(1, self.w.config.batch_max_events);
            let wake_at = self.next_wake(now);
            let grace_end = self.stopping;
            let wake = tokio::select! {
                biased;
                () = self.w.cancel.cancelled(), if self.stopping.is_none() => Wake::Stop,
                r = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => match r {
                    Some(r) => Wake::Done(r),
                    None => Wake::Timer,
                },
                () = sleep_until(grace_end.unwrap_or(now)), if grace_end.is_some() => Wake::GraceOver,
                r = self.w.reader.read_batch(room, self.w.config.batch_max_bytes), if can_read => Wake::Read(r),
                () = sleep_until(wake_at.unwrap_or(now)), if wake_at.is_some() => Wake::Timer,
            };
            match wake {
                Wake::Stop => {
                    let grace = self.w.config.shutdown_grace();
                    tracing::info!(
                        destination = %self.w.name,
                        in_flight = self.tasks.len(),
                        grace_ms = grace.as_millis() as u64,
                        "Delivery stopping; waiting for in-flight requests."
                    );
                    self.stopping = Some(Instant::now() + grace);
                }
                Wake::GraceOver => {
                    tracing::warn!(
                        destination = %self.w.name,
                        in_flight = self.tasks.len(),
                        "Grace period over; in-flight requests aborted (their events stay in the buffer)."
                    );
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    self.in_flight.clear();
                    break;
                }
                Wake::Done(r) => self.completed(r),
                Wake::Read(Ok(records)) => self.ingest(records),
                Wake::Read(Err(BufferError::Closed)) => {
                    tracing::debug!(destination = %self.w.name, "Buffer closed; draining.");
                    self.reader_closed = true;
                }
                Wake::Read(Err(e)) => {
                    tracing::error!(destination = %self.w.name, error = %e, "Reading the buffer failed; retrying.");
                    self.read_retry_at = Some(Instant::now() + IO_RETRY);
                }
                Wake::Timer => {}
            }
            if self.read_retry_at.is_some_and(|t| Instant::now() >= t) {
                self.read_retry_at = None;
            }
        }
        self.flush().await;
        self.w.metrics.set_in_flight(0);
        self.w
            .metrics
            .set_pending(self.pending.len() + self.dead_queue.len());
    }

    fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && self.dead_queue.is_empty()
            && self.tasks.is_empty()
            && self.ready.is_empty()
            && self.retry.is_empty()
    }

    // === read ===

    fn ingest(&mut self, records: Vec<(u64, Bytes)>) {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut corrupt = 0u64;
        for (seq, payload) in records {
            let stored = match stored::decode(&payload) {
                Ok(s) => s,
                Err(e) => {
                    corrupt += 1;
                    tracing::error!(destination = %self.w.name, seq, error = %e, "Undecodable buffer record dead-lettered.");
                    self.dead_queue.push((
                        seq,
                        DeadLetter::corrupt(&self.w.name, e.to_string(), &payload),
                    ));
                    continue;
                }
            };
            if !stored.is_for(&self.w.name) {
                self.to_ack.push(seq);
                continue;
            }
            out.clear();
            self.w.mapper.map(&stored.event, &mut out);
            if out.is_empty() {
                self.to_ack.push(seq);
                continue;
            }
            self.pending.insert(
                seq,
                Pending {
                    remaining: out.len(),
                    payload,
                    dead: None,
                },
            );
            for record in out.drain(..) {
                self.ready_bytes += record.json.len();
                self.ready.push_back(Item {
                    seq,
                    record,
                    attempts: 0,
                    first_attempt: None,
                    ready_at: now,
                });
            }
        }
        if corrupt > 0 {
            self.w.metrics.add_corrupt(corrupt);
        }
    }

    // === send ===

    /// How many requests may be in flight now.
    fn capacity(&self, now: Instant) -> usize {
        if self.stopping.is_some() || self.throttle_until.is_some_and(|t| now < t) {
            return 0;
        }
        match &self.pause {
            Some(p) if p.probe_in_flight || now < p.next_probe => 0,
            Some(_) => 1,
            None => self.w.config.concurrency,
        }
    }

    fn dispatch(&mut self, now: Instant) {
        let cap = self.capacity(now);
        let probing = self.pause.is_some();
        while self.tasks.len() < cap {
            let batch = match self.take_due_retries(now) {
                Some(b) => b,
                None => match self.take_ready(now, probing) {
                    Some(b) => b,
                    None => break,
                },
            };
            self.spawn(batch, probing, now);
            if probing {
                break;
            }
        }
    }

    /// Due retry batches, earliest first, merged up to the batch limits.
    fn take_due_retries(&mut self, now: Instant) -> Option<Vec<Item>> {
        let mut due: Vec<usize> = (0..self.retry.len())
            .filter(|&i| self.retry[i].due <= now)
            .collect();
        if due.is_empty() {
            return None;
        }
        due.sort_by_key(|&i| self.retry[i].due);
        let mut take = Vec::new();
        let (mut n, mut bytes) = (0usize, 0usize);
        for i in due {
            let b = &self.retry[i];
            let b_bytes: usize = b.items.iter().map(|it| it.record.json.len()).sum();
            if !take.is_empty()
                && (n + b.items.len() > self.w.config.batch_max_events
                    || bytes + b_bytes > self.w.config.batch_max_bytes)
            {
                break;
            }
            n += b.items.len();
            bytes += b_bytes;
            take.push(i);
        }
        take.sort_unstable_by(|a, b| b.cmp(a));
        let mut items = Vec::with_capacity(n);
        for i in take {
            items.extend(self.retry.swap_remove(i).items);
        }
        Some(items)
    }

    /// A batch of fresh records when one is full, has lingered, or must go now.
    fn take_ready(&mut self, now: Instant, force: bool) -> Option<Vec<Item>> {
        let front = self.ready.front()?;
        let cfg = &self.w.config;
        let full =
            self.ready.len() >= cfg.batch_max_events || self.ready_bytes >= cfg.batch_max_bytes;
        let lingered = front.ready_at + cfg.linger() <= now;
        if !(full || lingered || force || self.reader_closed) {
            return None;
        }
        let mut items = Vec::new();
        let mut bytes = 0usize;
        while let Some(it) = self.ready.front() {
            let len = it.record.json.len();
            if !items.is_empty()
                && (items.len() >= cfg.batch_max_events || bytes + len > cfg.batch_max_bytes)
            {
                break;
            }
            bytes += len;
            if let Some(it) = self.ready.pop_front() {
                items.push(it);
            }
        }
        self.ready_bytes = self.ready_bytes.saturating_sub(bytes);
        Some(items)
    }

    fn spawn(&mut self, mut items: Vec<Item>, probe: bool, now: Instant) {
        for it in &mut items {
            it.first_attempt.get_or_insert(now);
        }
        let records: Vec<OutboundRecord> = items.iter().map(|it| it.record.clone()).collect();
        let sink = self.w.sink.clone();
        let handle = self.tasks.spawn(async move { sink.send(&records).await });
        if let Some(p) = self.pause.as_mut().filter(|_| probe) {
            p.probe_in_flight = true;
            tracing::info!(destination = %self.w.name, events = items.len(), "Probing the paused destination.");
        }
        self.in_flight
            .insert(handle.id(), InFlight { items, probe });
    }

    /// When the loop must wake without another event: a batch lingered enough, a retry is
    /// due, a throttle or pause ends, or a failed write or read is to be tried again.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if let Some(g) = self.stopping {
            at(g);
            return wake;
        }
        if !self.dead_queue.is_empty() {
            if let Some(t) = self.dead_retry_at {
                at(t);
            }
        }
        if let Some(t) = self.read_retry_at {
            at(t);
        }
        let has_work = !self.ready.is_empty() || !self.retry.is_empty();
        if let Some(t) = self.throttle_until.filter(|t| *t > now) {
            if has_work {
                at(t);
            }
            return wake;
        }
        if let Some(p) = &self.pause {
            // A probe that is due but not sent waits for an in-flight request to end.
            if has_work && !p.probe_in_flight && p.next_probe > now {
                at(p.next_probe);
            }
            return wake;
        }
        if self.tasks.len() < self.w.config.concurrency {
            if let Some(f) = self.ready.front() {
                at(f.ready_at + self.w.config.linger());
            }
            if let Some(d) = self.retry.iter().map(|b| b.due).min() {
                at(d);
            }
        }
        wake
    }

    // === settle ===

    fn completed(&mut self, r: Result<(tokio::task::Id, SendResult), tokio::task::JoinError>) {
        let (id, result) = match r {
            Ok((id, result)) => (id, result),
            Err(e) => {
                let id = e.id();
                let reason = if e.is_panic() {
                    "the sink panicked"
                } else {
                    "the request was cancelled"
                };
                tracing::error!(destination = %self.w.name, "Delivery request failed: {reason}.");
                let n = self.in_flight.get(&id).map_or(0, |f| f.items.len());
                (id, SendResult::all(n, Outcome::retry(reason)))
            }
        };
        let Some(InFlight { items, probe }) = self.in_flight.remove(&id) else {
            return;
        };
        let now = Instant::now();
        let mut outcomes = result.outcomes;
        if outcomes.len() != items.len() {
            tracing::error!(
                destination = %self.w.name,
                expected = items.len(),
                got = outcomes.len(),
                "Sink returned a wrong number of outcomes; the missing ones are retried."
            );
            outcomes.resize(items.len(), Outcome::retry("sink returned no outcome"));
        }
        let paused_now = result.auth_failure.is_some();
        let processed = outcomes.iter().any(|o| !matches!(o, Outcome::Retry { .. }));
        if let Some(auth) = &result.auth_failure {
            self.enter_pause(auth, probe, now);
        } else if self.pause.is_some() {
            if let Some(p) = self.pause.as_mut().filter(|_| probe) {
                p.probe_in_flight = false;
            }
            if processed {
                self.resume(now);
            } else if probe {
                self.probe_failed(now);
            }
        }

        let mut delivered = 0u64;
        let mut again: Vec<Item> = Vec::new();
        let mut after: Option<Duration> = None;
        let mut last_reason = String::new();
        for (mut item, outcome) in items.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Delivered => {
                    delivered += 1;
                    self.settle(item.seq, None);
                }
                Outcome::Rejected {
                    reason,
                    status,
                    body,
                } => {
                    tracing::error!(
                        destination = %self.w.name,
                        id = %item.record.id,
                        status,
                        reason = %reason,
                        "Destination rejected a record; event dead-lettered."
                    );
                    self.settle(
                        item.seq,
                        Some(Dead {
                            kind: DeadLetterKind::Rejected,
                            reason,
                            status,
                            body: Some(body),
                        }),
                    );
                }
                Outcome::Retry { after: a, reason } => {
                    if paused_now {
                        again.push(item);
                        continue;
                    }
                    item.attempts += 1;
                    let first = item.first_attempt.unwrap_or(now);
                    if expired(first, now, self.w.config.retry_window()) {
                        tracing::error!(
                            destination = %self.w.name,
                            id = %item.record.id,
                            attempts = item.attempts,
                            reason = %reason,
                            "Retry window exceeded; event dead-lettered."
                        );
                        self.settle(
                            item.seq,
                            Some(Dead {
                                kind: DeadLetterKind::Expired,
                                reason: format!(
                                    "retry window of {} s exceeded after {} attempts; last error: {reason}",
                                    self.w.config.retry_window_secs, item.attempts
                                ),
                                status: None,
                                body: None,
                            }),
                        );
                    } else {
                        after = after.max(a);
                        last_reason = reason;
                        again.push(item);
                    }
                }
            }
        }
        self.w.metrics.add_delivered(delivered);
        if again.is_empty() {
            return;
        }
        if paused_now {
            // Held for the next probe; not an attempt.
            self.retry.push(RetryBatch {
                due: now,
                items: again,
            });
            return;
        }
        self.w.metrics.add_retried(again.len() as u64);
        let attempts = again.iter().map(|i| i.attempts).max().unwrap_or(1);
        let delay = match after {
            Some(a) => {
                // Nothing goes to the destination before its Retry-After; this batch also
                // gets a first-attempt jitter so `Retry-After: 0` cannot make a hot loop.
                let until = now + a;
                self.throttle_until = Some(self.throttle_until.map_or(until, |t| t.max(until)));
                a.max(self.backoff.delay(1, &mut rand::rng()))
            }
            None => self.backoff.delay(attempts, &mut rand::rng()),
        };
        tracing::warn!(
            destination = %self.w.name,
            events = again.len(),
            attempt = attempts,
            delay_ms = delay.as_millis() as u64,
            reason = %last_reason,
            "Delivery failed; retrying later."
        );
        self.retry.push(RetryBatch {
            due: now + delay,
            items: again,
        });
    }

    /// Settles one outbound record of buffer record `seq`.
    fn settle(&mut self, seq: u64, dead: Option<Dead>) {
        let Some(p) = self.pending.get_mut(&seq) else {
            return;
        };
        if p.dead.is_none() {
            p.dead = dead;
        }
        p.remaining = p.remaining.saturating_sub(1);
        if p.remaining > 0 {
            return;
        }
        let Some(p) = self.pending.remove(&seq) else {
            return;
        };
        match p.dead {
            None => self.to_ack.push(seq),
            Some(d) => {
                let letter = match stored::decode(&p.payload) {
                    Ok(s) => {
                        DeadLetter::new(&self.w.name, d.kind, d.reason, d.status, d.body, s.event)
                    }
                    // Decoded once already; cannot fail, but never lose the bytes.
                    Err(e) => DeadLetter::corrupt(&self.w.name, e.to_string(), &p.payload),
                };
                self.dead_queue.push((seq, letter));
            }
        }
    }

    // === pause ===

    fn enter_pause(&mut self, auth: &AuthFailure, probe: bool, now: Instant) {
        match self.pause.as_mut() {
            None => {
                tracing::error!(
                    destination = %self.w.name,
                    status = auth.status,
                    body = %auth.body,
                    "Destination refused the credentials; delivery paused, events stay in the buffer. Fix the credentials; delivery resumes by itself."
                );
                self.w.metrics.set_paused(true);
                let interval = Duration::from_millis(self.w.config.pause_probe_ms);
                self.pause = Some(Pause {
                    since: now,
                    interval,
                    next_probe: now + interval,
                    probe_in_flight: false,
                });
            }
            Some(_) if probe => self.probe_failed(now),
            Some(_) => {}
        }
    }

    fn probe_failed(&mut self, now: Instant) {
        let max = Duration::from_millis(self.w.config.pause_probe_max_ms);
        if let Some(p) = self.pause.as_mut() {
            p.probe_in_flight = false;
            p.interval = (p.interval * 2).min(max);
            p.next_probe = now + p.interval;
            tracing::warn!(
                destination = %self.w.name,
                next_probe_ms = p.interval.as_millis() as u64,
                "Paused destination still refuses; probing again later."
            );
        }
    }

    fn resume(&mut self, now: Instant) {
        let Some(p) = self.pause.take() else { return };
        tracing::info!(
            destination = %self.w.name,
            paused_ms = now.saturating_duration_since(p.since).as_millis() as u64,
            "Destination accepts the credentials again; delivery resumed."
        );
        self.w.metrics.set_paused(false);
        // Time spent paused does not count against the retry window.
        for b in &mut self.retry {
            for it in &mut b.items {
                it.first_attempt = None;
            }
        }
        for f in self.in_flight.values_mut() {
            for it in &mut f.items {
                it.first_attempt = Some(now);
            }
        }
    }

    // === acknowledge ===

    /// Writes queued dead letters (then acknowledges their records) and acknowledges the
    /// settled records.
    async fn flush(&mut self) {
        if !self.dead_queue.is_empty() && self.dead_retry_at.is_none_or(|t| Instant::now() >= t) {
            let letters: Vec<DeadLetter> = self.dead_queue.iter().map(|(_, l)| l.clone()).collect();
            let dlq = self.w.dlq.clone();
            let written = tokio::task::spawn_blocking(move || dlq.append(&letters)).await;
            match written {
                Ok(Ok(())) => {
                    let expired = self
                        .dead_queue
                        .iter()
                        .filter(|(_, l)| l.kind == DeadLetterKind::Expired)
                        .count() as u64;
                    self.w
                        .metrics
                        .add_dead_lettered(self.dead_queue.len() as u64, expired);
                    self.to_ack
                        .extend(self.dead_queue.drain(..).map(|(seq, _)| seq));
                    self.dead_retry_at = None;
                }
                Ok(Err(e)) => {
                    tracing::error!(destination = %self.w.name, error = %e, pending = self.dead_queue.len(), "Writing dead letters failed; their events stay in the buffer and the write is retried.");
                    self.dead_retry_at = Some(Instant::now() + IO_RETRY);
                }
                Err(e) => {
                    tracing::error!(destination = %self.w.name, error = %e, "Dead-letter write task failed; retrying.");
                    self.dead_retry_at = Some(Instant::now() + IO_RETRY);
                }
            }
        }
        if !self.to_ack.is_empty() {
            self.w.reader.ack(self.to_ack.drain(..));
        }
    }
}
