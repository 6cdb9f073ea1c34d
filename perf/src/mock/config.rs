//! Configuration of the mock destinations. Every field has a default that matches the
//! documented limits of the real services (API_SPECS.md §1.7, §2.2), so
//! `MockConfig::default()` is a strict PostHog plus a strict Mixpanel on loopback ports chosen
//! by the OS.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The PostHog project key the mock expects unless configured otherwise.
pub const DEFAULT_POSTHOG_API_KEY: &str = "phc_mock_project_key";
/// The Mixpanel project token the mock expects unless configured otherwise.
pub const DEFAULT_MIXPANEL_TOKEN: &str = "mock_mixpanel_token";
/// PostHog raw body limit on `/batch` (20 MiB).
pub const POSTHOG_BATCH_BODY_LIMIT: usize = 20 * 1024 * 1024;
/// PostHog raw body limit on `/e`, `/i/v0/e`, `/capture` (2 MiB).
pub const POSTHOG_EVENT_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// PostHog cap on the decompressed payload (5 × the batch limit = 100 MiB).
pub const POSTHOG_DECOMPRESSED_LIMIT: usize = 5 * POSTHOG_BATCH_BODY_LIMIT;
/// Largest single event either service takes (PostHog's Kafka message cap; Mixpanel's 1 MB).
pub const MAX_EVENT_BYTES: usize = 1_000_000;
/// Mixpanel's limit on items per `/import`, `/track`, `/engage` or `/groups` request.
pub const MIXPANEL_MAX_ITEMS: usize = 2000;
/// Mixpanel `/import` uncompressed byte cap used by default (the safe 2 MiB of API_SPECS §2.2).
pub const MIXPANEL_IMPORT_BYTES: usize = 2 * 1024 * 1024;
/// Mixpanel raw body limit on `/track`, `/engage` and `/groups`.
pub const MIXPANEL_BODY_LIMIT: usize = 10 * 1024 * 1024;

/// What the mocks keep of each request (memory versus inspectability).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retention {
    /// Keep every request with the accepted JSON values (the default; what tests want).
    #[default]
    Full,
    /// Keep every request with only the ids (`uuid` / `$insert_id`) of its accepted items.
    IdsOnly,
    /// Keep no per-request log at all: counters and duplicate detection only (load runs).
    CountsOnly,
}

/// Configuration of both mock servers.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Where the mock PostHog listens (default `127.0.0.1:0`, a free port).
    pub posthog_listen: SocketAddr,
    /// Where the mock Mixpanel listens (default `127.0.0.1:0`, a free port).
    pub mixpanel_listen: SocketAddr,
    /// Latency added to every (non-admin) request before it is answered; changeable at run time.
    pub latency: Duration,
    /// What is kept of each request.
    pub retention: Retention,
    /// PostHog settings.
    pub posthog: PosthogConfig,
    /// Mixpanel settings.
    pub mixpanel: MixpanelConfig,
}

impl Default for MockConfig {
    fn default() -> Self {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self {
            posthog_listen: loopback,
            mixpanel_listen: loopback,
            latency: Duration::ZERO,
            retention: Retention::Full,
            posthog: PosthogConfig::default(),
            mixpanel: MixpanelConfig::default(),
        }
    }
}

/// Settings of the mock PostHog capture service.
#[derive(Debug, Clone)]
pub struct PosthogConfig {
    /// The project API key (`phc_…`) events must carry.
    pub api_key: String,
    /// Answer 401 for a well-formed token that is not `api_key`. Real capture answers 200 and
    /// drops the events later; when off, the mock accepts them as if the token were `api_key`
    /// and counts them in `unknown_token_events`.
    pub require_known_token: bool,
    /// Reject (400) events without a `uuid` (real capture assigns one). Off by default.
    pub require_uuid: bool,
    /// Reject (400) `distinct_id`s PostHog treats as illegal placeholders
    /// (`anonymous`, `null`, `0`, …, API_SPECS §1.4). On by default.
    pub reject_placeholder_ids: bool,
    /// Raw body limit on `/batch` (413 above it).
    pub batch_body_limit: usize,
    /// Raw body limit on `/e`, `/i/v0/e` and `/capture` (413 above it).
    pub event_body_limit: usize,
    /// Cap on the decompressed payload (413 above it).
    pub decompressed_limit: usize,
    /// Largest serialized event (413 above it).
    pub max_event_bytes: usize,
}

impl Default for PosthogConfig {
    fn default() -> Self {
        Self {
            api_key: DEFAULT_POSTHOG_API_KEY.to_owned(),
            require_known_token: true,
            require_uuid: false,
            reject_placeholder_ids: true,
            batch_body_limit: POSTHOG_BATCH_BODY_LIMIT,
            event_body_limit: POSTHOG_EVENT_BODY_LIMIT,
            decompressed_limit: POSTHOG_DECOMPRESSED_LIMIT,
            max_event_bytes: MAX_EVENT_BYTES,
        }
    }
}

/// A Mixpanel service account allowed on `/import` (Basic `username:secret` plus
/// `?project_id=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// The service account user name.
    pub username: String,
    /// The service account secret.
    pub secret: String,
    /// The project id that must be given as `?project_id=`.
    pub project_id: String,
}

/// Settings of the mock Mixpanel ingestion API.
#[derive(Debug, Clone)]
pub struct MixpanelConfig {
    /// The project token: Basic user on `/import`, `$token` on `/engage` and `/groups`,
    /// `properties.token` on `/track` (and on `/import` when present).
    pub token: String,
    /// A service account also accepted on `/import`.
    pub service_account: Option<ServiceAccount>,
    /// A legacy project API secret, accepted as the Basic user on `/import`.
    pub api_secret: Option<String>,
    /// Answer 400 to `/import` without `strict=1` (the router always sends it). On by default;
    /// when off, non-strict imports silently drop invalid events and answer 200.
    pub require_strict: bool,
    /// Items per request on every endpoint (413 above it).
    pub max_items: usize,
    /// `/import` cap on the uncompressed body (413 above it).
    pub max_import_bytes: usize,
    /// Raw body limit on `/track`, `/engage` and `/groups` (413 above it).
    pub max_body_bytes: usize,
    /// Largest serialized event (a failed record above it).
    pub max_event_bytes: usize,
    /// Under Simplified ID Merge, reject an event whose `distinct_id` is set and differs from
    /// its `$user_id` (API_SPECS §2.6: "if you do set it, it must equal `$user_id`").
    pub check_simplified_id_merge: bool,
}

impl Default for MixpanelConfig {
    fn default() -> Self {
        Self {
            token: DEFAULT_MIXPANEL_TOKEN.to_owned(),
            service_account: None,
            api_secret: None,
            require_strict: true,
            max_items: MIXPANEL_MAX_ITEMS,
            max_import_bytes: MIXPANEL_IMPORT_BYTES,
            max_body_bytes: MIXPANEL_BODY_LIMIT,
            max_event_bytes: MAX_EVENT_BYTES,
            check_simplified_id_merge: true,
        }
    }
}
