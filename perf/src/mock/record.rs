//! What the mocks remember: counters, the request log, and the duplicate-detection sets.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use super::config::Retention;
use super::fault::Destination;

/// The endpoint a request was routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// PostHog `/batch`, `/e`, `/i/v0/e` or `/capture`.
    PosthogCapture,
    /// Mixpanel `/import`.
    MixpanelImport,
    /// Mixpanel `/track`.
    MixpanelTrack,
    /// Mixpanel `/engage`.
    MixpanelEngage,
    /// Mixpanel `/groups`.
    MixpanelGroups,
    /// Anything else (answered 404 or 405).
    Other,
}

impl Endpoint {
    /// The kind of item this endpoint takes.
    pub(crate) fn item_kind(self) -> ItemKind {
        match self {
            Endpoint::PosthogCapture | Endpoint::MixpanelImport | Endpoint::MixpanelTrack => {
                ItemKind::Event
            }
            Endpoint::MixpanelEngage => ItemKind::ProfileUpdate,
            Endpoint::MixpanelGroups => ItemKind::GroupUpdate,
            Endpoint::Other => ItemKind::None,
        }
    }
}

/// What the items of a request are, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ItemKind {
    Event,
    ProfileUpdate,
    GroupUpdate,
    None,
}

/// One request as the mock saw and answered it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReceivedRequest {
    /// Arrival sequence number (shared by both servers, starting at 1).
    pub seq: u64,
    /// Which server received it.
    pub destination: Destination,
    /// Which endpoint handled it.
    pub endpoint: Endpoint,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// `Content-Encoding` header, if any.
    pub content_encoding: Option<String>,
    /// The basic-auth user, if any (Mixpanel).
    pub auth_user: Option<String>,
    /// Whether the body was gzip (by header or magic bytes).
    pub gzipped: bool,
    /// Raw body length in bytes.
    pub body_bytes: usize,
    /// Decoded (decompressed) payload length in bytes.
    pub decoded_bytes: usize,
    /// Items in the request (events or updates), when it could be parsed.
    pub items: usize,
    /// Status answered.
    pub status: u16,
    /// Body answered.
    pub response_body: String,
    /// The injected fault that shaped the answer, if any.
    pub fault: Option<String>,
    /// PostHog batch envelope: the top-level fields other than `batch` (`api_key`,
    /// `sent_at`, `historical_migration`).
    pub envelope: Option<Value>,
    /// The accepted items in request order (empty unless retention is `Full`).
    pub accepted: Vec<Value>,
    /// The ids (`uuid` / `$insert_id`, `""` when absent) of the accepted items, in order
    /// (empty when retention is `CountsOnly`).
    pub accepted_ids: Vec<String>,
    /// Indexes of the rejected items.
    pub rejected: Vec<usize>,
}

/// Counters of one mock destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DestinationStats {
    /// Requests answered (or hung, or disconnected), admin requests excluded.
    pub requests: u64,
    /// Answered requests by HTTP status.
    pub requests_by_status: BTreeMap<u16, u64>,
    /// Raw request body bytes received.
    pub bytes_received: u64,
    /// Events accepted (PostHog events; Mixpanel `/import` and `/track` events).
    pub events_accepted: u64,
    /// Events rejected by validation (or by a partial fault).
    pub events_rejected: u64,
    /// Distinct accepted events: by `uuid` for PostHog (events without one are not counted);
    /// by `(event, time, distinct_id, $insert_id)` for Mixpanel.
    pub unique_events: u64,
    /// Accepted events whose key had been accepted before (same keys as `unique_events`).
    pub duplicates: u64,
    /// Mixpanel: accepted events whose `$insert_id` alone had been accepted before.
    pub duplicate_insert_ids: u64,
    /// Mixpanel `/engage` updates accepted.
    pub profile_updates_accepted: u64,
    /// Mixpanel `/engage` updates rejected.
    pub profile_updates_rejected: u64,
    /// Mixpanel `/groups` updates accepted.
    pub group_updates_accepted: u64,
    /// Mixpanel `/groups` updates rejected.
    pub group_updates_rejected: u64,
    /// PostHog events accepted under a token other than the configured key
    /// (only when `require_known_token` is off).
    pub unknown_token_events: u64,
    /// Requests shaped by an injected fault.
    pub faults_applied: u64,
    /// Requests held by a hang fault.
    pub hung_requests: u64,
    /// Requests whose connection was closed without an answer (disconnect fault, released hang).
    pub dropped_connections: u64,
    /// Valid items answered as success but not recorded (quota-drop fault).
    pub items_dropped_by_fault: u64,
}

/// Counters of both mocks, as returned by [`crate::mock::MockHandle::stats`] and
/// `GET /__admin/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// The mock PostHog.
    pub posthog: DestinationStats,
    /// The mock Mixpanel.
    pub mixpanel: DestinationStats,
}

impl Stats {
    /// The counters of one destination.
    pub fn of(&self, destination: Destination) -> &DestinationStats {
        match destination {
            Destination::Posthog => &self.posthog,
            Destination::Mixpanel => &self.mixpanel,
        }
    }

    fn of_mut(&mut self, destination: Destination) -> &mut DestinationStats {
        match destination {
            Destination::Posthog => &mut self.posthog,
            Destination::Mixpanel => &mut self.mixpanel,
        }
    }
}

/// One accepted item with its identity.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub(crate) value: Value,
    /// `uuid` (PostHog) or `$insert_id` (Mixpanel), when present.
    pub(crate) id: Option<String>,
    /// Primary duplicate key.
    pub(crate) key: Option<u128>,
    /// Secondary duplicate key (Mixpanel `$insert_id` alone).
    pub(crate) alt_key: Option<u128>,
}

/// The verdict of a pure endpoint handler on one request.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: String,
    pub(crate) retry_after: Option<String>,
    pub(crate) accepted: Vec<Accepted>,
    pub(crate) rejected: Vec<usize>,
    pub(crate) items: usize,
    pub(crate) envelope: Option<Value>,
    pub(crate) decoded_bytes: usize,
    pub(crate) gzipped: bool,
    pub(crate) unknown_token: bool,
}

impl Outcome {
    /// An answer without items (errors, faults).
    pub(crate) fn reply(status: u16, content_type: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
            retry_after: None,
            accepted: Vec::new(),
            rejected: Vec::new(),
            items: 0,
            envelope: None,
            decoded_bytes: 0,
            gzipped: false,
            unknown_token: false,
        }
    }

    /// A JSON answer without items.
    pub(crate) fn json(status: u16, body: &Value) -> Self {
        Self::reply(status, "application/json", body.to_string())
    }
}

/// Request facts the recorder keeps next to the outcome.
#[derive(Debug, Clone)]
pub(crate) struct RequestMeta {
    pub(crate) seq: u64,
    pub(crate) destination: Destination,
    pub(crate) endpoint: Endpoint,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) content_encoding: Option<String>,
    pub(crate) auth_user: Option<String>,
    pub(crate) body_bytes: usize,
}

/// Everything recorded, behind the server's mutex.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub(crate) stats: Stats,
    pub(crate) requests: Vec<ReceivedRequest>,
    posthog_keys: HashSet<u128>,
    mixpanel_keys: HashSet<u128>,
    mixpanel_insert_ids: HashSet<u128>,
}

impl Recorder {
    /// Clears everything.
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }

    /// Counts a request that got no answer (hang or disconnect).
    pub(crate) fn record_unanswered(
        &mut self,
        destination: Destination,
        body_bytes: usize,
        hung: bool,
    ) {
        let stats = self.stats.of_mut(destination);
        stats.requests += 1;
        stats.bytes_received += body_bytes as u64;
        stats.faults_applied += 1;
        if hung {
            stats.hung_requests += 1;
        }
    }

    /// Counts a connection closed without an answer.
    pub(crate) fn record_dropped_connection(&mut self, destination: Destination) {
        self.stats.of_mut(destination).dropped_connections += 1;
    }

    /// Records one answered request.
    pub(crate) fn record(
        &mut self,
        meta: RequestMeta,
        outcome: &mut Outcome,
        fault: Option<String>,
        quota_drop: bool,
        retention: Retention,
    ) {
        let destination = meta.destination;
        let kind = meta.endpoint.item_kind();
        let stats = self.stats.of_mut(destination);
        stats.requests += 1;
        *stats.requests_by_status.entry(outcome.status).or_insert(0) += 1;
        stats.bytes_received += meta.body_bytes as u64;
        if fault.is_some() {
            stats.faults_applied += 1;
        }
        let rejected = outcome.rejected.len() as u64;
        let accepted = std::mem::take(&mut outcome.accepted);
        if quota_drop {
            stats.items_dropped_by_fault += accepted.len() as u64;
        }
        let accepted = if quota_drop { Vec::new() } else { accepted };
        let n = accepted.len() as u64;
        match kind {
            ItemKind::Event => {
                stats.events_accepted += n;
                stats.events_rejected += rejected;
                if outcome.unknown_token {
                    stats.unknown_token_events += n;
                }
            }
            ItemKind::ProfileUpdate => {
                stats.profile_updates_accepted += n;
                stats.profile_updates_rejected += rejected;
            }
            ItemKind::GroupUpdate => {
                stats.group_updates_accepted += n;
                stats.group_updates_rejected += rejected;
            }
            ItemKind::None => {}
        }
        if kind == ItemKind::Event {
            for item in &accepted {
                let (keys, alt) = match destination {
                    Destination::Posthog => (&mut self.posthog_keys, None),
                    Destination::Mixpanel => {
                        (&mut self.mixpanel_keys, Some(&mut self.mixpanel_insert_ids))
                    }
                };
                if let Some(key) = item.key {
                    if !keys.insert(key) {
                        stats.duplicates += 1;
                    }
                }
                if let (Some(alt), Some(key)) = (alt, item.alt_key) {
                    if !alt.insert(key) {
                        stats.duplicate_insert_ids += 1;
                    }
                }
            }
            stats.unique_events = match destination {
                Destination::Posthog => self.posthog_keys.len(),
                Destination::Mixpanel => self.mixpanel_keys.len(),
            } as u64;
        }
        if retention == Retention::CountsOnly {
            return;
        }
        let accepted_ids = accepted
            .iter()
            .map(|a| a.id.clone().unwrap_or_default())
            .collect();
        let values = match retention {
            Retention::Full => accepted.into_iter().map(|a| a.value).collect(),
            _ => Vec::new(),
        };
        self.requests.push(ReceivedRequest {
            seq: meta.seq,
            destination,
            endpoint: meta.endpoint,
            method: meta.method,
            path: meta.path,
            query: meta.query,
            content_type: meta.content_type,
            content_encoding: meta.content_encoding,
            auth_user: meta.auth_user,
            gzipped: outcome.gzipped,
            body_bytes: meta.body_bytes,
            decoded_bytes: outcome.decoded_bytes,
            items: outcome.items,
            status: outcome.status,
            response_body: outcome.body.clone(),
            fault,
            envelope: outcome.envelope.take(),
            accepted: values,
            accepted_ids,
            rejected: std::mem::take(&mut outcome.rejected),
        });
    }
}

/// A borrowed view of one request, handed to the pure endpoint handlers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestView<'a> {
    pub(crate) method: &'a str,
    pub(crate) query: &'a str,
    pub(crate) content_type: Option<&'a str>,
    pub(crate) content_encoding: Option<&'a str>,
    pub(crate) authorization: Option<&'a str>,
    pub(crate) body: &'a [u8],
}

impl RequestView<'_> {
    /// Whether the content type is form-encoded.
    pub(crate) fn is_form(&self) -> bool {
        self.content_type.is_some_and(|ct| {
            ct.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
    }
}
