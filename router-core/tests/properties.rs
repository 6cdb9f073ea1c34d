//! Property tests of the core's invariants.

mod common;
use common::*;

use proptest::prelude::*;
use router_core::map::{
    IdMerge, MixpanelSettings, PosthogSettings, insert_id, mixpanel_records, posthog_record,
    posthog_uuid,
};
use router_core::parse::{Ingest, Item, SegmentCall, SequentialIds};
use router_core::{Event, Kind, Source, Timestamp};
use serde_json::{Map, Value, json};

const NAMES: &[&str] = &[
    "Sign Up",
    "Page View",
    "Request Demo",
    "Purchase",
    "Session Start",
    "Session End",
    "session_start",
    "session_end",
    "$identify",
    "sign_up",
    "page_view",
    "Other",
    "Clicked",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        "[a-zA-Z0-9 _\\-\\.é\"\\\\]{0,12}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_$]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn props() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop::collection::btree_map("[a-z_]{1,10}", json_value(), 0..6),
        prop::option::of(prop_oneof![
            Just(Value::Null),
            "[a-z]{0,6}".prop_map(Value::String)
        ]),
    )
        .prop_map(|(m, utm)| {
            let mut m: Map<String, Value> = m.into_iter().collect();
            if let Some(u) = utm {
                m.insert("utm_source".into(), u);
            }
            m
        })
}

/// A valid own-schema event as a JSON object.
fn valid_event() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop::sample::select(NAMES),
        prop::option::of(prop::sample::select(
            &["track", "identify", "page", "screen"][..],
        )),
        prop_oneof![
            "[a-zA-Z0-9]{1,20}".prop_map(|u| (Some(u), None)),
            "[a-zA-Z0-9\\-]{1,20}".prop_map(|a| (None, Some(a))),
            ("[a-z]{1,8}", "[a-z]{1,8}").prop_map(|(u, a)| (Some(u), Some(a))),
        ],
        prop::option::of("[a-zA-Z0-9:_\\- ]{1,60}"),
        prop::option::of(0i64..4_000_000_000_000),
        props(),
        props(),
    )
        .prop_filter_map("placeholder ids", |(name, ty, (u, a), mid, ts, p, t)| {
            let ok = |s: &Option<String>| {
                s.as_deref()
                    .is_none_or(|s| !router_core::event::is_placeholder_id(s))
            };
            if !ok(&u) || !ok(&a) || (u.is_none() && a.is_none()) {
                return None;
            }
            let mut m = Map::new();
            m.insert("event".into(), json!(name));
            if let Some(ty) = ty {
                m.insert("type".into(), json!(ty));
            }
            if let Some(u) = u {
                m.insert("userId".into(), json!(u));
            }
            if let Some(a) = a {
                m.insert("anonymousId".into(), json!(a));
            }
            if let Some(mid) = mid.filter(|m| !router_core::event::is_placeholder_id(m)) {
                m.insert("messageId".into(), json!(mid));
            }
            if let Some(ts) = ts {
                m.insert("timestamp".into(), json!(ts));
            }
            m.insert("properties".into(), Value::Object(p));
            m.insert("traits".into(), Value::Object(t));
            Some(m)
        })
}

fn parse_obj(p: &router_core::Pipeline, body: &str) -> Event {
    let b = collect(p, body).unwrap();
    match b.items.into_iter().next().unwrap() {
        Item::Accepted(e) => e,
        Item::Rejected { error, raw } => panic!("{error} for {raw}"),
    }
}

/// Serialises an object with its keys in reverse order (serde_json sorts them otherwise).
fn reversed(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let parts: Vec<String> = m
                .iter()
                .rev()
                .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), reversed(v)))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(reversed).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_valid_event_is_routed_somewhere_deterministically(m in valid_event()) {
        let p = pipeline();
        let body = Value::Object(m).to_string();
        let e = parse_obj(&p, &body);
        let r1 = p.router().route(&e);
        prop_assert!(!r1.destinations.is_empty());
        prop_assert_eq!(r1, p.router().route(&e));
        prop_assert_eq!(r1, p.router().route(&parse_obj(&p, &body)));
    }

    #[test]
    fn routing_is_independent_of_key_order(m in valid_event()) {
        let p = pipeline();
        let v = Value::Object(m);
        let a = parse_obj(&p, &v.to_string());
        let b = parse_obj(&p, &reversed(&v));
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(p.router().route(&a), p.router().route(&b));
    }

    #[test]
    fn parse_encode_parse_round_trips(m in valid_event()) {
        let p = pipeline();
        let e1 = parse_obj(&p, &Value::Object(m).to_string());
        let stored = e1.to_json();
        prop_assert_eq!(&Event::from_json(&stored).unwrap(), &e1);
        // The stored form is itself valid own-schema input that parses to the same event.
        let e2 = parse_obj(&p, std::str::from_utf8(&stored).unwrap());
        prop_assert_eq!(e2, e1);
    }

    #[test]
    fn destination_ids_are_stable_and_valid(id in "\\PC{1,80}") {
        let u = posthog_uuid(&id);
        prop_assert_eq!(u, posthog_uuid(&id));
        prop_assert!(!u.is_nil());
        prop_assert_eq!(u.to_string().len(), 36);
        let i = insert_id(&id);
        prop_assert_eq!(&i, &insert_id(&id));
        prop_assert!((1..=36).contains(&i.len()));
        prop_assert!(i.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        prop_assert!(!router_core::event::is_placeholder_id(&i));
    }

    #[test]
    fn mapped_records_carry_the_stored_identity(m in valid_event()) {
        let p = pipeline();
        let e = parse_obj(&p, &Value::Object(m).to_string());
        let ph = posthog_record(&e, &PosthogSettings::default()).to_value();
        prop_assert_eq!(ph["uuid"].as_str().unwrap(), posthog_uuid(&e.message_id).to_string());
        prop_assert_eq!(ph["timestamp"].as_str().unwrap(), e.timestamp.to_string());
        let s = MixpanelSettings { id_merge: IdMerge::Simplified, ..MixpanelSettings::default() };
        let mut out = Vec::new();
        mixpanel_records(&e, &s, &mut out);
        prop_assert!(!out.is_empty());
        let first = out[0].record.to_value();
        prop_assert_eq!(first["properties"]["time"].as_i64().unwrap(), e.timestamp.millis());
        prop_assert_eq!(first["properties"]["$insert_id"].as_str().unwrap(), insert_id(&e.message_id));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let p = pipeline();
        let mut ids = SequentialIds::new("x");
        let now = Timestamp::from_millis(NOW_MS).unwrap();
        let _ = p.parser().parse_collect(&mut bytes.clone(), &mut Ingest { received_at: now, ids: &mut ids });
        for call in ["track", "identify", "page", "screen", "group", "alias", "batch"] {
            let call = SegmentCall::from_path(call).unwrap();
            let _ = p.parser().parse_segment(call, &mut bytes.clone(), &mut Ingest { received_at: now, ids: &mut ids });
        }
        let _ = p.parser().parse_ga4(&mut bytes.clone(), &mut Ingest { received_at: now, ids: &mut ids });
        let _ = p.parser().validate_ga4(&mut bytes.clone());
        for form in [false, true] {
            let _ = p.parser().parse_posthog(&mut bytes.clone(), form, &mut Ingest { received_at: now, ids: &mut ids });
        }
    }

    #[test]
    fn json_shaped_garbage_never_panics(v in json_value(), wrap in 0..4u8) {
        let p = pipeline();
        let body = match wrap {
            0 => v.to_string(),
            1 => json!([v]).to_string(),
            2 => json!({"batch": [v], "context": v}).to_string(),
            _ => json!({"client_id": v, "events": [{"name": v, "params": v}], "user_properties": v}).to_string(),
        };
        let _ = collect(&p, &body);
        let _ = segment(&p, SegmentCall::Batch, &body);
        let _ = ga4(&p, &body);
        let mut b = body.clone().into_bytes();
        let _ = p.parser().validate_ga4(&mut b);
    }
}

#[test]
fn kinds_and_sources_serialise_as_documented() {
    assert_eq!(serde_json::to_value(Kind::Identify).unwrap(), "identify");
    assert_eq!(serde_json::to_value(Source::Ga4).unwrap(), "ga4");
}
