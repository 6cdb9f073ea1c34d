//! Shared oracles of the fuzz targets: the invariants every accepted event must satisfy, a
//! duplicate-key-aware JSON check, and the log target's input format.
//!
//! Everything here panics on a violated invariant: a panic is what libFuzzer reports.

use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;

use router_core::map::{self, IdMerge, MixpanelEndpoint, MixpanelSettings, PosthogSettings};
use router_core::parse::{Batch, Ingest, Item, SequentialIds};
use router_core::{CoreConfig, Event, Pipeline, Timestamp, stored};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

pub mod log_input;

/// The pipeline built from the embedded defaults (as the server runs without a config file).
pub fn pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| Pipeline::new(&CoreConfig::default()).expect("default config"))
}

/// The same pipeline in an `Arc`, as the HTTP server takes it.
pub fn pipeline_arc() -> std::sync::Arc<Pipeline> {
    static P: OnceLock<std::sync::Arc<Pipeline>> = OnceLock::new();
    P.get_or_init(|| std::sync::Arc::new(Pipeline::new(&CoreConfig::default()).expect("config")))
        .clone()
}

/// The receive time used by the targets (fixed, so runs are reproducible).
pub fn received_at() -> Timestamp {
    Timestamp::from_millis(1_738_065_600_000).expect("valid instant")
}

/// Runs `f` with a fresh ingest context (deterministic ids `fz0`, `fz1`, ...).
pub fn with_ingest<T>(f: impl FnOnce(&mut Ingest<'_>) -> T) -> T {
    let mut ids = SequentialIds::new("fz");
    let mut ctx = Ingest {
        received_at: received_at(),
        ids: &mut ids,
    };
    f(&mut ctx)
}

/// Parses `bytes` as JSON, refusing duplicate object keys at any depth (serde_json's `Value`
/// would silently keep the last one). Returns the reason on failure.
pub fn strict_json(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    NoDuplicates
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// A `DeserializeSeed` that walks any JSON value and fails on a repeated key.
#[derive(Clone, Copy)]
struct NoDuplicates;

impl<'de> DeserializeSeed<'de> for NoDuplicates {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NoDuplicates {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(NoDuplicates)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(k) = m.next_key::<String>()? {
            if !seen.insert(k.clone()) {
                return Err(de::Error::custom(format!("duplicate key {k:?}")));
            }
            m.next_value_seed(NoDuplicates)?;
        }
        Ok(())
    }
}

fn is_insert_id(s: &str) -> bool {
    (1..=36).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Serialises a record and checks that it is one JSON object without duplicate keys.
fn record_json(r: &map::Record<'_>, what: &str, e: &Event) -> serde_json::Value {
    let mut out = Vec::new();
    r.write_json(&mut out);
    let v = strict_json(&out).unwrap_or_else(|err| {
        panic!(
            "{what} record is not valid JSON ({err}): {}\nevent: {e:?}",
            String::from_utf8_lossy(&out)
        )
    });
    assert!(v.is_object(), "{what} record is not an object: {v}");
    v
}

/// Every invariant of one accepted event: routing, the buffer record round trip and the
/// destination records.
pub fn check_event(p: &Pipeline, e: &Event) {
    // Routing: never nowhere.
    let router = p.router();
    let route = router.route(e);
    assert!(!route.destinations.is_empty(), "no destination for {e:?}");
    let names = router.destination_names(&route);
    assert!(!names.is_empty(), "no destination name for {e:?}");

    // The buffer record decodes to the same event, and re-encodes byte for byte (a resend
    // must be identical).
    let bytes = stored::encode(e, &names);
    let back = stored::decode(&bytes).unwrap_or_else(|err| {
        panic!(
            "stored record does not decode ({err}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(&back.event, e, "stored round trip changed the event");
    assert_eq!(
        back.destinations, names,
        "stored round trip changed destinations"
    );
    assert_eq!(
        stored::encode(&back.event, &names),
        bytes,
        "re-encoding a decoded record is not byte-identical"
    );
    let back = Event::from_json(&e.to_json()).expect("Event::to_json round trip");
    assert_eq!(&back, e, "Event JSON round trip changed the event");

    // PostHog: valid JSON, a 36-character UUID, a usable distinct_id.
    let ph = record_json(&map::posthog_record(e, p.posthog()), "posthog", e);
    let uuid = ph["uuid"].as_str().expect("posthog uuid is a string");
    assert_eq!(uuid.len(), 36, "posthog uuid {uuid:?}");
    assert!(uuid::Uuid::try_parse(uuid).is_ok(), "posthog uuid {uuid:?}");
    let distinct = ph["distinct_id"].as_str().expect("posthog distinct_id");
    assert!(
        !distinct.trim().is_empty(),
        "posthog distinct_id is blank: {distinct:?} for {e:?}"
    );
    assert!(ph["event"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(ph["properties"].is_object());
    // Also with non-default settings.
    let alt = PosthogSettings {
        personless_anonymous: true,
        group_type: None,
        forward_ip: false,
        ..PosthogSettings::default()
    };
    record_json(&map::posthog_record(e, &alt), "posthog (alt settings)", e);

    // Mixpanel, under both ID-merge modes.
    for id_merge in [IdMerge::Simplified, IdMerge::Original] {
        let s = MixpanelSettings {
            id_merge,
            token: Some("tok".into()),
            ..p.mixpanel().clone()
        };
        check_mixpanel(e, &s);
    }
    check_mixpanel(e, p.mixpanel());
}

fn check_mixpanel(e: &Event, s: &MixpanelSettings) {
    let mut out = Vec::new();
    map::mixpanel_records(e, s, &mut out);
    assert!(!out.is_empty(), "no Mixpanel record for {e:?}");
    for r in &out {
        let v = record_json(&r.record, "mixpanel", e);
        match r.endpoint {
            MixpanelEndpoint::Import => {
                let props = &v["properties"];
                let id = props["$insert_id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no $insert_id in {v}"));
                assert!(is_insert_id(id), "bad $insert_id {id:?} in {v}");
                assert!(props["time"].is_i64(), "no integer time in {v}");
                let d = props["distinct_id"].as_str().expect("mixpanel distinct_id");
                assert!(!d.is_empty(), "empty Mixpanel distinct_id in {v}");
                assert!(v["event"].as_str().is_some_and(|n| !n.is_empty()));
            }
            MixpanelEndpoint::Engage => {
                assert!(v["$distinct_id"].as_str().is_some_and(|d| !d.is_empty()));
            }
            MixpanelEndpoint::Groups => {
                assert!(v["$group_id"].is_string());
            }
        }
    }
}

/// Invariants of a whole parse result: every accepted event passes [`check_event`], every
/// rejected item keeps valid JSON as its raw form (it goes to the dead letters) and a field.
pub fn check_batch(p: &Pipeline, b: &Batch) {
    assert!(
        !b.items.is_empty(),
        "a parse that succeeded must hold at least one item"
    );
    for item in &b.items {
        match item {
            Item::Accepted(e) => check_event(p, e),
            Item::Rejected { error, raw } => {
                // (The field may be empty: it names the client's key, and `""` is a key.)
                assert!(
                    !error.reason.is_empty(),
                    "rejection without a reason: {error:?}"
                );
                // Deeply nested items may exceed serde_json's recursion limit (the dead-letter
                // writer then keeps them as a string); anything else must be JSON.
                if let Err(err) = serde_json::from_str::<serde_json::Value>(raw) {
                    assert!(
                        err.to_string().contains("recursion limit"),
                        "rejected raw item is not JSON ({err}): {raw:?}"
                    );
                }
            }
        }
    }
}
