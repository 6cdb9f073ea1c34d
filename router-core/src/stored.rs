//! The record the durable buffer keeps for each accepted event.
//!
//! It holds everything a resend needs to be identical: the canonical event (with its message
//! id and the timestamp fixed at ingestion) and the routing decision, by destination *name* so
//! that a restart with a reordered table still delivers to the right places. JSON, with a
//! format number `v` so a later format can still read old records.

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// The payload format written by [`encode`].
pub const STORED_FORMAT: u8 = 1;

/// A decoded buffer record.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct StoredEvent {
    /// Format number (1).
    #[serde(rename = "v")]
    pub version: u8,
    /// Destinations the event was routed to at ingestion, sorted.
    #[serde(rename = "d")]
    pub destinations: Vec<String>,
    /// The canonical event.
    #[serde(rename = "e")]
    pub event: Event,
}

impl StoredEvent {
    /// Whether the event is routed to `destination`.
    pub fn is_for(&self, destination: &str) -> bool {
        self.destinations.iter().any(|d| d == destination)
    }
}

#[derive(Serialize)]
struct StoredRef<'a> {
    v: u8,
    d: &'a [&'a str],
    e: &'a Event,
}

/// Encodes an event and its destinations for the buffer.
pub fn encode(event: &Event, destinations: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    // Writing plain data into a Vec cannot fail.
    let _ = serde_json::to_writer(
        &mut out,
        &StoredRef {
            v: STORED_FORMAT,
            d: destinations,
            e: event,
        },
    );
    out
}

/// The reasons a buffer record cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a stored event.
    #[error("stored event is not valid: {0}")]
    Invalid(#[from] serde_json::Error),
    /// Written by a newer router.
    #[error("stored event has format {0}, newer than this router's {STORED_FORMAT}")]
    UnknownVersion(u8),
}

/// Decodes a buffer record written by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<StoredEvent, DecodeError> {
    let s: StoredEvent = serde_json::from_slice(bytes)?;
    if s.version > STORED_FORMAT {
        return Err(DecodeError::UnknownVersion(s.version));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Kind, Source, Timestamp};

    #[test]
    fn round_trips() {
        let t = Timestamp::from_millis(1_700_000_000_000).unwrap();
        let e = Event {
            message_id: "m".into(),
            kind: Kind::Track,
            name: "A".into(),
            user_id: Some("u".into()),
            anonymous_id: None,
            group_id: None,
            previous_id: None,
            timestamp: t,
            received_at: t,
            properties: serde_json::json!({"x": 1.5}).as_object().unwrap().clone(),
            traits: Default::default(),
            context: Default::default(),
            integrations: Default::default(),
            source: Source::Collect,
        };
        let bytes = encode(&e, &["mixpanel", "posthog"]);
        let s = decode(&bytes).unwrap();
        assert_eq!(s.event, e);
        assert!(s.is_for("posthog") && !s.is_for("archive"));
        assert!(matches!(
            decode(b"{\"v\":9,\"d\":[],\"e\":{}}"),
            Err(DecodeError::Invalid(_))
        ));
        let newer = String::from_utf8(bytes)
            .unwrap()
            .replacen("\"v\":1", "\"v\":2", 1);
        assert!(matches!(
            decode(newer.as_bytes()),
            Err(DecodeError::UnknownVersion(2))
        ));
    }
}
