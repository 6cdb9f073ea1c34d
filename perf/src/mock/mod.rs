//! Strict mock PostHog and Mixpanel servers for tests and load runs.
//!
//! [`MockDestinations::start`] binds two hyper servers on loopback (by default on ports the
//! OS picks): one speaks PostHog capture (`/batch`, `/i/v0/e`, `/e`, `/capture`, each with or
//! without a trailing slash), the other Mixpanel ingestion (`/import`, `/track`, `/engage`,
//! `/groups`). They enforce the documented API (`API_SPECS.md` §1 and §2): routes, auth,
//! payload shapes, field rules, limits and encodings, and answer with the services' bodies.
//! They are deliberately a little stricter than the real services where a lax answer would
//! hide a router bug (each handler module says where).
//!
//! Everything accepted is recorded ([`MockHandle::posthog_events`],
//! [`MockHandle::mixpanel_imports`], [`MockHandle::requests`], …) and counted
//! ([`MockHandle::stats`]), with duplicates detected by PostHog `uuid` and by Mixpanel
//! `(event, time, distinct_id, $insert_id)` and `$insert_id` alone. [`Retention`] trades
//! inspectability for memory in load runs.
//!
//! Faults are injected with [`MockHandle::inject`] or over HTTP; see [`fault`] for the queue
//! semantics. Both servers also serve an admin API (the same on both ports; a fault posted
//! without `destination` goes to the server that received it):
//!
//! | request | effect |
//! |---|---|
//! | `POST /__admin/faults` with a [`FaultSpec`] object or an array of them | queue faults; answers `{"queued":[ids]}` |
//! | `GET /__admin/faults` | the queued faults ([`FaultInfo`]) |
//! | `DELETE /__admin/faults` | clear every fault, release hung requests; `{"cleared":n}` |
//! | `POST /__admin/latency` with `{"ms":N}` / `GET /__admin/latency` | set / read the added latency |
//! | `GET /__admin/stats` | [`Stats`] as JSON |
//! | `GET /__admin/requests[?destination=posthog\|mixpanel\|all]` | the recorded requests |
//! | `POST /__admin/reset` | forget requests, counters and seen ids |
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use perf::mock::{Destination, Fault, MockConfig, MockDestinations};
//!
//! let mock = MockDestinations::start(MockConfig::default()).await?;
//! mock.inject(Destination::Mixpanel, Fault::status(503).times(2));
//! // ... point the client at mock.mixpanel_url() and send ...
//! let stats = mock.wait_for_events(Destination::Mixpanel, 10, Duration::from_secs(5)).await;
//! # let _ = stats;
//! mock.shutdown().await;
//! # Ok(()) }
//! ```

pub mod config;
mod decode;
pub mod fault;
mod mixpanel;
mod posthog;
mod record;
mod server;

pub use config::{MixpanelConfig, MockConfig, PosthogConfig, Retention, ServiceAccount};
pub use fault::{Destination, Fault, FaultAction, FaultInfo, FaultLimit, FaultSpec};
pub use record::{DestinationStats, Endpoint, ReceivedRequest, Stats};
pub use server::{MockDestinations, MockHandle, WaitTimeout};
