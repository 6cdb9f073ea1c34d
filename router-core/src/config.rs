//! Configuration of the core: input caps, name aliases, routing and mapping settings.
//!
//! Every field has a default, so an empty TOML table (or none at all) is a valid configuration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::map::{MixpanelSettings, PosthogSettings};
use crate::routing::RoutingConfig;

/// Caps on what one event and one request may hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest event, in bytes of compact JSON (Segment's cap is 32 KiB).
    pub max_event_bytes: usize,
    /// Deepest nesting of objects and arrays inside an event (the event itself is depth 1).
    pub max_depth: usize,
    /// Most top-level keys in `properties` (and in `traits`).
    pub max_properties: usize,
    /// Most events in one request.
    pub max_batch_events: usize,
    /// Largest request body, in bytes (after decompression).
    pub max_batch_bytes: usize,
    /// Longest event name, in characters.
    pub max_name_chars: usize,
    /// Longest `userId`, `anonymousId`, `messageId`, in characters.
    pub max_id_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 32 * 1024,
            max_depth: 16,
            max_properties: 1000,
            max_batch_events: 2000,
            max_batch_bytes: 1024 * 1024,
            max_name_chars: 255,
            max_id_chars: 255,
        }
    }
}

/// Everything the core needs: parsing, routing and mapping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoreConfig {
    /// Caps on events and requests.
    pub limits: Limits,
    /// Inbound name -> canonical name (e.g. GA4 `page_view` -> `Page View`).
    pub aliases: BTreeMap<String, String>,
    /// Routing rules and fallback.
    pub routing: RoutingConfig,
    /// How events become PostHog records.
    pub posthog: PosthogSettings,
    /// How events become Mixpanel records.
    pub mixpanel: MixpanelSettings,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            limits: Limits::default(),
            aliases: default_aliases(),
            routing: RoutingConfig::default(),
            posthog: PosthogSettings::default(),
            mixpanel: MixpanelSettings::default(),
        }
    }
}

/// The embedded aliases: GA4 recommended event names to the canonical ones.
pub fn default_aliases() -> BTreeMap<String, String> {
    [
        ("page_view", "Page View"),
        ("sign_up", "Sign Up"),
        ("purchase", "Purchase"),
        ("session_start", "Session Start"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect()
}
