//! Delivery: from the durable buffer to PostHog, Mixpanel or an outbox file, in batches,
//! through outages, without losing an accepted event.
//!
//! # Pieces
//!
//! - [`Delivery::start`] starts one task per destination ([`DestinationSpec`]) and
//!   [`Delivery::shutdown`] stops them; [`Delivery::render_prometheus`] gives the metrics.
//! - A task (the delivery loop, see `worker.rs` for the state machine) reads its
//!   destination's [`Reader`](crate::buffer::Reader), maps each stored event with
//!   [`Mapper`] (router-core's `posthog_record` / `mixpanel_records`), batches, sends through
//!   a [`Sink`] with `concurrency` requests in flight, and acknowledges what is settled.
//! - Sinks: [`PosthogSink`] (`/batch/`), [`MixpanelSink`] (`/import`, `/engage`, `/groups`),
//!   [`FileSink`] (the outbox). Retry classification is pure ([`retry`]).
//! - Dead letters go to [`crate::dlq`].
//!
//! # Guarantees
//!
//! Every event of the buffer routed to a destination ends, for that destination, in exactly
//! one accounted state: **delivered** (the destination answered 2xx for it), **rejected**
//! (dead-letter file, with the reason and the destination's answer) or **expired**
//! (dead-letter file, retry window exceeded). A buffer record is acknowledged only once every
//! record mapped from it is delivered or durably dead-lettered, so a crash at any point
//! leaves it in the buffer and it is delivered again after restart (at-least-once).
//! Duplicates collapse at the destination because identity fields never change: records are
//! mapped from the stored event (message id and timestamp fixed at ingestion) and their JSON
//! bytes are kept across attempts; a restart maps the same stored event to the same bytes.
//!
//! # Faults
//!
//! | what happens | what delivery does |
//! |---|---|
//! | connect error, timeout, hung request, closed connection | retry the batch with exponential backoff and full jitter (`backoff_base_ms` → `backoff_cap_ms`) |
//! | 408, 429, 5xx | the same; a `Retry-After` (seconds or HTTP date, ≤ 1 h) is honoured and holds back every send of the destination until then |
//! | still failing after `retry_window_secs` (24 h) from the first attempt | the event expires to the dead-letter file |
//! | 413 | split the request in halves, recursively; a lone record that still gets 413 is dead-lettered |
//! | Mixpanel 400 with `failed_records` | only the listed records are dead-lettered; the rest count as delivered |
//! | `/engage`/`/groups` 200 with `0` / `{"status":0}` | the updates are dead-lettered (verbose `failed_records`: only those) |
//! | other 400 (and 404, other 4xx) | the request's records are dead-lettered; a PostHog 400 on several events is bisected first (capture refuses a whole request for one bad event) |
//! | 401, 403 | the destination pauses: one `error!` log, `router_delivery_paused` = 1, nothing dead-lettered, reading stops at `max_pending_events` (the backlog stays on disk), a probe every `pause_probe_ms` doubling to `pause_probe_max_ms`; the first request the destination processes again resumes delivery |
//! | undecodable buffer record | dead-lettered with its raw bytes (base64) |
//! | dead-letter or outbox write fails | the events stay unacknowledged; the write is retried every second |
//! | stop (SIGTERM) | no new requests; in-flight ones get `shutdown_grace_ms`; the rest stays in the buffer |

mod config;
mod error;
mod file;
mod http;
mod metrics;
mod mixpanel;
mod posthog;
pub mod retry;
mod service;
mod sink;
mod worker;

pub use config::{
    DEFAULT_MIXPANEL_HOST, DEFAULT_POSTHOG_HOST, DeliveryConfig, MixpanelDestination,
    PosthogDestination,
};
pub use error::DeliveryError;
pub use file::{FileSink, OUTBOX_DIR, outbox_path};
pub use http::build_client;
pub use metrics::{DeliveryMetrics, DeliverySnapshot, RequestOutcome, render_prometheus};
pub use mixpanel::MixpanelSink;
pub use posthog::{HISTORICAL_AGE, PosthogSink, batch_body};
pub use service::{Delivery, DestinationSpec};
pub use sink::{
    AuthFailure, Endpoint, MAX_BODY_EXCERPT, Mapper, OutboundRecord, Outcome, SendFuture,
    SendResult, Sink, excerpt,
};
