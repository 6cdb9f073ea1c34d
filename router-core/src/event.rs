//! The canonical event: what every inbound format becomes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::time::Timestamp;

/// A JSON object, as used for properties, traits and context.
pub type Object = Map<String, Value>;

/// The Segment-style call type of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A named action (`event` is required).
    Track,
    /// Who the user is; `traits` describe them. Canonical name `$identify`.
    Identify,
    /// A web page view. Canonical name `Page View`.
    Page,
    /// A mobile screen view. Canonical name `Screen View`.
    Screen,
    /// Associates the user with a group (`groupId`). Canonical name `$groupidentify`.
    Group,
    /// Merges `previousId` into `userId`. Canonical name `$create_alias`.
    Alias,
}

impl Kind {
    /// All kinds, in declaration order.
    pub const ALL: [Kind; 6] = [
        Kind::Track,
        Kind::Identify,
        Kind::Page,
        Kind::Screen,
        Kind::Group,
        Kind::Alias,
    ];

    /// The lower-case name used in Segment's `type` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Track => "track",
            Kind::Identify => "identify",
            Kind::Page => "page",
            Kind::Screen => "screen",
            Kind::Group => "group",
            Kind::Alias => "alias",
        }
    }

    /// Parses a Segment `type` value (case-sensitive, as Segment is).
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The canonical event name for kinds whose name is fixed; `None` for track.
    pub fn canonical_name(self) -> Option<&'static str> {
        match self {
            Kind::Track => None,
            Kind::Identify => Some("$identify"),
            Kind::Page => Some("Page View"),
            Kind::Screen => Some("Screen View"),
            Kind::Group => Some("$groupidentify"),
            Kind::Alias => Some("$create_alias"),
        }
    }

    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Which endpoint and format an event came in through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The router's own schema (`POST /collect`).
    Collect,
    /// Segment HTTP tracking API (`/v1/*`).
    Segment,
    /// GA4 Measurement Protocol (`/mp/collect`).
    Ga4,
    /// PostHog SDK payloads (`/capture/`, `/batch/`, `/e/`).
    Posthog,
    /// A dead-letter replay.
    Replay,
}

/// One canonical event, validated and enriched, ready to route and store.
///
/// `timestamp` is fixed at ingestion (clock-skew corrected) and `message_id` is always present,
/// so every resend of the event carries identical identity fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Client `messageId` (or `uuid`, `$insert_id`), else an id assigned at ingestion.
    pub message_id: String,
    /// Call type.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Event name after aliasing; fixed names for non-track kinds (see [`Kind::canonical_name`]).
    #[serde(rename = "event")]
    pub name: String,
    /// Known user id, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Anonymous (device) id, if any. At least one of the two ids is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    /// Group id (group calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Previous id (alias calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_id: Option<String>,
    /// When the event happened, corrected for client clock skew.
    pub timestamp: Timestamp,
    /// When the router received it.
    pub received_at: Timestamp,
    /// Event properties; UTM parameters are normalised into `utm_*` keys here.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub properties: Object,
    /// User (or group) traits.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub traits: Object,
    /// Context: ip, userAgent, library, page, campaign, ...
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub context: Object,
    /// Segment `integrations` switches, kept for destinations that honour them.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub integrations: Object,
    /// Inbound endpoint.
    pub source: Source,
}

impl Event {
    /// `userId` if present, else `anonymousId`: the id most destinations call `distinct_id`.
    pub fn distinct_id(&self) -> &str {
        self.user_id
            .as_deref()
            .or(self.anonymous_id.as_deref())
            .unwrap_or_default()
    }

    /// A property value, treating JSON `null` as absent.
    pub fn property(&self, key: &str) -> Option<&Value> {
        self.properties.get(key).filter(|v| !v.is_null())
    }

    /// A string at `context.<a>.<b>`, if present.
    pub fn context_str(&self, a: &str, b: &str) -> Option<&str> {
        self.context.get(a)?.get(b)?.as_str()
    }

    /// Serialises to compact JSON (the form kept in the buffer and shown by the CLI).
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses the form written by [`Event::to_json`].
    pub fn from_json(bytes: &[u8]) -> Result<Event, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Placeholder ids that PostHog or Mixpanel refuse; treated as missing.
const PLACEHOLDER_IDS_CI: &[&str] = &[
    "anonymous",
    "anon",
    "guest",
    "distinctid",
    "distinct_id",
    "id",
    "not_authenticated",
    "email",
    "undefined",
    "true",
    "false",
    "nil",
    "none",
    "null",
    "n/a",
    "na",
    "unknown",
    "<nil>",
    "nan",
    "[object object]",
    "0",
    "-1",
    "[]",
    "{}",
    "00000000-0000-0000-0000-000000000000",
];

/// Whether `id` is blank or a placeholder that the destinations refuse as an identity.
pub fn is_placeholder_id(id: &str) -> bool {
    let t = id.trim();
    t.is_empty() || PLACEHOLDER_IDS_CI.iter().any(|p| p.eq_ignore_ascii_case(t))
}
