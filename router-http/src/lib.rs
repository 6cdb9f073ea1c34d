//! HTTP ingestion server of the events router (hyper 1.x, tokio, HTTP/1.1).
//!
//! Web, app and server clients post events; this crate reads and checks the request, parses
//! it with router-core, routes every accepted event, appends them to the durable log in one
//! append, and answers only once the log has synced them.
//!
//! ```no_run
//! # async fn run(pipeline: std::sync::Arc<router_core::Pipeline>, log: router_sinks::buffer::Log) {
//! use router_http::{AppState, HttpConfig, serve};
//! let state = AppState::new(pipeline, log.clone(), "./data", HttpConfig::default()).unwrap();
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await.unwrap();
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! if let Err(e) = serve(listener, state, shutdown).await {
//!     eprintln!("{e}");
//! }
//! log.close().await.unwrap();
//! # }
//! ```
//!
//! # Endpoints
//!
//! | method and path | body | success |
//! |---|---|---|
//! | `POST /collect` | own schema: an event, an array, or `{"batch":[...]}` | `200 {"status":"ok","accepted":N}` |
//! | `POST /v1/{track,identify,page,screen,group,alias,batch}` (also `/v1/t`, `/v1/i`, `/v1/p`, `/v1/s`, `/v1/g`, `/v1/a`, `/v1/b`, `/v1/import`) | Segment spec | `200 {"status":"ok","accepted":N}` |
//! | `POST /mp/collect` | GA4 Measurement Protocol | `204` (no body), as Google |
//! | `POST /debug/mp/collect` | GA4 Measurement Protocol | `200 {"validationMessages":[...]}`; nothing kept |
//! | `GET /health` | | `200 {"status":"ok"}` (alive) |
//! | `GET /ready` | | `200 {"status":"ready"}`; 503 when the log is full, failed or closed, or shutting down |
//! | `GET /metrics` | | Prometheus text |
//!
//! `OPTIONS` on every ingest path answers CORS preflights. One trailing `/` is tolerated.
//!
//! # Answers
//!
//! - **200** only after every accepted event is durable. When some items are invalid the
//!   others are accepted and the answer adds `"rejected":[{"index","field","reason"}]`; the
//!   invalid items are appended to `<data_dir>/dead-letters/rejected.jsonl`
//!   (`{time, endpoint, index, field, reason, raw}` per line).
//! - **400** `{"status":"error","field":..,"reason":..}`: the request cannot be read (not
//!   JSON, wrong shape, too many events, corrupt gzip), or every item in it was invalid (then
//!   with `accepted: 0` and the `rejected` list, and the items are dead-lettered). GA4
//!   `/mp/collect` answers 400 only for a body it cannot read at all; invalid GA4 events are
//!   dead-lettered and the answer is still 204, as Google's.
//! - **401** missing or unknown write key (only when `write_keys` are configured; Basic auth
//!   user, `writeKey` in the body, or `?writeKey=`), or GA4 `api_secret` (only when
//!   `ga4_api_secrets` are configured; Google would answer 2xx and drop, we say so instead).
//! - **403** CORS preflight from an origin not on the allow-list.
//! - **404** unknown path; **405** wrong method (with `Allow`).
//! - **408** body not received within `body_read_timeout_ms`.
//! - **413** body over its route's cap (checked against `Content-Length` and while reading),
//!   over `max_decompressed_bytes` once gunzipped (checked while inflating), or over
//!   router-core's batch byte cap.
//! - **415** content type other than JSON, `text/plain` (sendBeacon) or none; content encoding
//!   other than `gzip`/`identity`.
//! - **429** over a rate limit (per client IP, per write key), with `Retry-After`.
//! - **503** log full, failed or closed, or shutting down, with `Retry-After`.
//! - **500** only if a handler panics (a bug): the panic is caught and counted.
//!
//! Bad input never yields 500, never panics, and never costs other requests their data.

#![forbid(unsafe_code)]

mod auth;
mod body;
mod config;
mod cors;
mod dead_letter;
mod error;
mod handler;
mod limit;
mod metrics;
mod server;
mod state;

pub use config::{
    BodyLimits, DEFAULT_BODY_READ_TIMEOUT_MS, DEFAULT_CONNECTION_QUEUE_TIMEOUT_MS,
    DEFAULT_CORS_MAX_AGE_SECS, DEFAULT_HEADER_READ_TIMEOUT_MS, DEFAULT_MAX_COLLECT_BYTES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_DECOMPRESSED_BYTES, DEFAULT_MAX_GA4_BYTES,
    DEFAULT_MAX_SEGMENT_BYTES, DEFAULT_RATE_LIMIT_EVICT_INTERVAL_SECS, DEFAULT_RETRY_AFTER_SECS,
    DEFAULT_SHUTDOWN_GRACE_MS, HttpConfig, RateLimit, RateLimits,
};
pub use dead_letter::{DEAD_LETTER_DIR, REJECTED_FILE};
pub use error::{ConfigError, ServeError};
pub use metrics::{MAX_FIELD_LABELS, MetricsSource};
pub use server::serve;
pub use state::{AppState, UuidV7Ids};
