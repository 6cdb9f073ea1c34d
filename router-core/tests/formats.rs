//! Each inbound format, validation errors naming the field, and enrichment.

mod common;
use common::*;

use router_core::parse::{Item, SegmentCall};
use router_core::{Kind, RequestError, Source};
use serde_json::json;

#[test]
fn own_schema_single_array_and_batch() {
    let p = pipeline();
    let single = collect(&p, r#"{"event":"Sign Up","userId":"user123"}"#).unwrap();
    assert_eq!(single.items.len(), 1);
    let arr = collect(
        &p,
        r#"[{"event":"A","userId":"u"},{"event":"B","anonymousId":"a"}]"#,
    )
    .unwrap();
    assert_eq!(
        arr.accepted().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["A", "B"]
    );
    let batch = collect(
        &p,
        r#"{"batch":[{"event":"A","userId":"u"}],"writeKey":"wk"}"#,
    )
    .unwrap();
    assert_eq!(batch.accepted().count(), 1);
    assert_eq!(batch.write_key.as_deref(), Some("wk"));
}

#[test]
fn seed_example_is_parsed_in_full() {
    let p = pipeline();
    let e = one(
        &p,
        r#"{"event": "Sign Up", "userId": "user123", "anonymousId": "anon-1", "messageId": "m-1",
            "timestamp": "2025-01-28T12:00:00Z", "properties": {"plan": "pro"},
            "traits": {"email": "a@b.c"}, "context": {"ip": "1.2.3.4"}}"#,
    );
    assert_eq!(e.message_id, "m-1");
    assert_eq!(e.kind, Kind::Track);
    assert_eq!(e.name, "Sign Up");
    assert_eq!(e.user_id.as_deref(), Some("user123"));
    assert_eq!(e.anonymous_id.as_deref(), Some("anon-1"));
    assert_eq!(e.timestamp.to_string(), "2025-01-28T12:00:00.000Z");
    assert_eq!(e.received_at, now());
    assert_eq!(e.properties["plan"], "pro");
    assert_eq!(e.traits["email"], "a@b.c");
    assert_eq!(e.context["ip"], "1.2.3.4");
    assert_eq!(e.source, Source::Collect);
}

#[test]
fn missing_message_id_is_assigned_and_numbers_become_strings() {
    let p = pipeline();
    let e = one(&p, r#"{"event":"A","userId":42}"#);
    assert_eq!(e.user_id.as_deref(), Some("42"));
    assert_eq!(e.message_id, "gen-0");
    // uuid is accepted as the message id (PostHog-style clients).
    let e = one(
        &p,
        r#"{"event":"A","userId":"u","uuid":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"}"#,
    );
    assert_eq!(e.message_id, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
}

#[test]
fn validation_names_the_field() {
    let p = pipeline();
    let f = |json: &str| rejected(&p, json).0;
    assert_eq!(f(r#"{"userId":"u"}"#), "event");
    assert_eq!(f(r#"{"event":"","userId":"u"}"#), "event");
    assert_eq!(f(r#"{"event":"   ","userId":"u"}"#), "event");
    assert_eq!(
        f(&format!(
            r#"{{"event":"{}","userId":"u"}}"#,
            "x".repeat(256)
        )),
        "event"
    );
    assert_eq!(f(r#"{"event":7,"userId":"u"}"#), "event");
    assert_eq!(f(r#"{"event":"A"}"#), "userId");
    assert_eq!(f(r#"{"event":"A","userId":"","anonymousId":""}"#), "userId");
    assert_eq!(f(r#"{"event":"A","userId":"null"}"#), "userId");
    assert_eq!(f(r#"{"event":"A","userId":{"x":1}}"#), "userId");
    assert_eq!(
        f(r#"{"event":"A","userId":"u","anonymousId":[1]}"#),
        "anonymousId"
    );
    assert_eq!(
        f(r#"{"event":"A","userId":"u","timestamp":"yesterday"}"#),
        "timestamp"
    );
    assert_eq!(
        f(r#"{"event":"A","userId":"u","timestamp":true}"#),
        "timestamp"
    );
    assert_eq!(
        f(r#"{"event":"A","userId":"u","properties":[1]}"#),
        "properties"
    );
    assert_eq!(f(r#"{"event":"A","userId":"u","traits":"x"}"#), "traits");
    assert_eq!(f(r#"{"event":"A","userId":"u","context":5}"#), "context");
    assert_eq!(f(r#"{"event":"A","userId":"u","type":"bogus"}"#), "type");
    assert_eq!(f(r#"{"type":"group","userId":"u"}"#), "groupId");
    assert_eq!(f(r#"{"type":"alias","userId":"u"}"#), "previousId");
    assert_eq!(f(r#"["not an object"]"#), "$");
    let (field, reason) = rejected(&p, r#"{"event":"A"}"#);
    assert_eq!(field, "userId");
    assert!(
        reason.contains("userId or anonymousId is required"),
        "{reason}"
    );
}

#[test]
fn epoch_millis_timestamps_are_accepted() {
    let p = pipeline();
    let e = one(
        &p,
        r#"{"event":"A","userId":"u","timestamp":1738065600000}"#,
    );
    assert_eq!(e.timestamp.to_string(), "2025-01-28T12:00:00.000Z");
}

#[test]
fn clock_skew_is_corrected_with_sent_at() {
    let p = pipeline();
    // The client clock runs 1 h ahead: it stamped the event 5 s before sending.
    let e = one(
        &p,
        r#"{"event":"A","userId":"u","timestamp":"2025-01-28T12:59:55Z","sentAt":"2025-01-28T13:00:00Z"}"#,
    );
    assert_eq!(e.timestamp.to_string(), "2025-01-28T11:59:55.000Z");
    // Batch-level sentAt applies to each item.
    let b = collect(
        &p,
        r#"{"sentAt":"2025-01-28T13:00:00Z","batch":[{"event":"A","userId":"u","timestamp":"2025-01-28T12:59:58Z"}]}"#,
    )
    .unwrap();
    assert_eq!(
        b.accepted().next().unwrap().timestamp.to_string(),
        "2025-01-28T11:59:58.000Z"
    );
    // No timestamp: receive time.
    assert_eq!(one(&p, r#"{"event":"A","userId":"u"}"#).timestamp, now());
}

#[test]
fn batch_keeps_good_events_and_reports_bad_indexes() {
    let p = pipeline();
    let b = collect(
        &p,
        r#"[{"event":"A","userId":"u"},{"event":"B"},{"event":"C","userId":"u","timestamp":"x"},{"event":"D","anonymousId":"a"}]"#,
    )
    .unwrap();
    assert_eq!(
        b.accepted().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["A", "D"]
    );
    let rej: Vec<_> = b
        .rejected()
        .map(|(i, e, raw)| (i, e.field.clone(), raw.to_owned()))
        .collect();
    assert_eq!(rej.len(), 2);
    assert_eq!((rej[0].0, rej[0].1.as_str()), (1, "userId"));
    assert_eq!((rej[1].0, rej[1].1.as_str()), (2, "timestamp"));
    let raw: serde_json::Value = serde_json::from_str(&rej[0].2).unwrap();
    assert_eq!(raw, json!({"event":"B"}));
}

#[test]
fn wholly_bad_requests() {
    let p = pipeline();
    assert!(matches!(
        collect(&p, "{not json"),
        Err(RequestError::InvalidJson { .. })
    ));
    assert!(matches!(
        collect(&p, "[1, 2"),
        Err(RequestError::InvalidJson { .. })
    ));
    assert_eq!(collect(&p, "").unwrap_err().field(), "$");
    assert_eq!(collect(&p, "42").unwrap_err().field(), "$");
    assert_eq!(collect(&p, r#"{"batch":5}"#).unwrap_err().field(), "batch");
    assert_eq!(collect(&p, "[]").unwrap_err().field(), "batch");
    let mut body = b"{\"event\":\"A\",\"userId\":\"\xff\xfe\"}".to_vec();
    let mut ids = router_core::parse::SequentialIds::new("x");
    let r = p.parser().parse_collect(
        &mut body,
        &mut router_core::parse::Ingest {
            received_at: now(),
            ids: &mut ids,
        },
    );
    assert!(
        matches!(r, Err(RequestError::InvalidJson { .. })),
        "invalid UTF-8: {r:?}"
    );
}

#[test]
fn caps_on_size_depth_properties_and_batch() {
    let mut cfg = router_core::CoreConfig::default();
    cfg.limits.max_batch_events = 3;
    cfg.limits.max_properties = 2;
    cfg.limits.max_depth = 4;
    cfg.limits.max_event_bytes = 200;
    let p = router_core::Pipeline::new(&cfg).unwrap();
    let big = format!(
        r#"{{"event":"A","userId":"u","properties":{{"s":"{}"}}}}"#,
        "x".repeat(300)
    );
    assert_eq!(rejected(&p, &big).0, "$");
    let big_unknown = format!(
        r#"{{"event":"A","userId":"u","junk":"{}"}}"#,
        "x".repeat(300)
    );
    assert_eq!(rejected(&p, &big_unknown).0, "$");
    assert_eq!(
        rejected(
            &p,
            r#"{"event":"A","userId":"u","properties":{"a":1,"b":2,"c":3}}"#
        )
        .0,
        "properties"
    );
    assert_eq!(
        rejected(
            &p,
            r#"{"event":"A","userId":"u","properties":{"a":{"b":{"c":{"d":1}}}}}"#
        )
        .0,
        "properties"
    );
    one(
        &p,
        r#"{"event":"A","userId":"u","properties":{"a":{"b":1}}}"#,
    );
    let four = r#"[{"event":"A","userId":"u"},{"event":"A","userId":"u"},{"event":"A","userId":"u"},{"event":"A","userId":"u"}]"#;
    assert!(matches!(
        collect(&p, four),
        Err(RequestError::TooManyEvents { count: 4, max: 3 })
    ));
    cfg.limits.max_batch_bytes = 10;
    let p = router_core::Pipeline::new(&cfg).unwrap();
    assert!(matches!(
        collect(&p, r#"{"event":"A","userId":"u"}"#),
        Err(RequestError::TooLarge { .. })
    ));
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let p = pipeline();
    let deep = format!(
        r#"{{"event":"A","userId":"u","properties":{{"x":{}1{}}}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let err = collect(&p, &deep).unwrap_err();
    assert_eq!(err.field(), "$");
    assert!(err.reason().contains("nested deeper"), "{err}");
    // Brackets inside strings do not count.
    let e = one(
        &p,
        &format!(r#"{{"event":"{}","userId":"u"}}"#, "[".repeat(200)),
    );
    assert!(e.name.starts_with("[["));
    // Depth just under the cap is an event-level error naming the field.
    let nested = format!(
        r#"{{"event":"A","userId":"u","properties":{{"x":{}1{}}}}}"#,
        "[".repeat(15),
        "]".repeat(15)
    );
    let b = collect(&p, &nested).unwrap();
    assert!(matches!(&b.items[0], Item::Rejected { error, .. } if error.field == "properties"));
}

#[test]
fn segment_single_calls_take_their_type_from_the_path() {
    let p = pipeline();
    let cases = [
        (
            "track",
            r#"{"event":"Clicked","userId":"u"}"#,
            Kind::Track,
            "Clicked",
        ),
        (
            "identify",
            r#"{"userId":"u","traits":{"name":"Ann"}}"#,
            Kind::Identify,
            "$identify",
        ),
        (
            "page",
            r#"{"userId":"u","name":"Home"}"#,
            Kind::Page,
            "Page View",
        ),
        (
            "screen",
            r#"{"userId":"u","name":"Settings"}"#,
            Kind::Screen,
            "Screen View",
        ),
        (
            "group",
            r#"{"userId":"u","groupId":"acme","traits":{"plan":"pro"}}"#,
            Kind::Group,
            "$groupidentify",
        ),
        (
            "alias",
            r#"{"userId":"u","previousId":"anon-1"}"#,
            Kind::Alias,
            "$create_alias",
        ),
    ];
    for (path, body, kind, name) in cases {
        let b = segment(&p, SegmentCall::from_path(path).unwrap(), body).unwrap();
        let e = b
            .accepted()
            .next()
            .unwrap_or_else(|| panic!("{path}: {:?}", b.items));
        assert_eq!(
            (e.kind, e.name.as_str(), e.source),
            (kind, name, Source::Segment),
            "{path}"
        );
    }
    let b = segment(
        &p,
        SegmentCall::from_path("page").unwrap(),
        r#"{"userId":"u","name":"Home"}"#,
    )
    .unwrap();
    assert_eq!(b.accepted().next().unwrap().properties["name"], "Home");
    // A track call still needs its event name.
    let b = segment(
        &p,
        SegmentCall::from_path("track").unwrap(),
        r#"{"userId":"u"}"#,
    )
    .unwrap();
    assert_eq!(b.rejected().next().unwrap().1.field, "event");
}

#[test]
fn segment_batch_merges_context_and_integrations_and_requires_type() {
    let p = pipeline();
    let b = segment(
        &p,
        SegmentCall::Batch,
        r#"{"writeKey":"wk","sentAt":"2025-01-28T12:00:00Z",
            "context":{"library":{"name":"analytics-node"},"ip":"9.9.9.9"},
            "integrations":{"All":true},
            "batch":[
              {"type":"track","event":"A","userId":"u","context":{"ip":"1.1.1.1"}},
              {"type":"identify","userId":"u","traits":{"email":"x@y.z"}},
              {"event":"NoType","userId":"u"}
            ]}"#,
    )
    .unwrap();
    assert_eq!(b.write_key.as_deref(), Some("wk"));
    let acc: Vec<_> = b.accepted().collect();
    assert_eq!(acc.len(), 2);
    assert_eq!(
        acc[0].context["ip"], "1.1.1.1",
        "the item's own context wins"
    );
    assert_eq!(acc[0].context["library"]["name"], "analytics-node");
    assert_eq!(acc[1].context["ip"], "9.9.9.9");
    assert_eq!(acc[1].integrations["All"], true);
    assert_eq!(b.rejected().next().unwrap().1.field, "type");
    assert_eq!(
        segment(&p, SegmentCall::Batch, r#"{"event":"A"}"#)
            .unwrap_err()
            .field(),
        "batch"
    );
}

#[test]
fn ga4_measurement_protocol() {
    let p = pipeline();
    let b = ga4(
        &p,
        r#"{"client_id":"123.456","user_id":"u-9","timestamp_micros":1738065590000000,
            "user_properties":{"tier":{"value":"gold"}},
            "events":[
              {"name":"page_view","params":{"page_location":"https://a.io/?utm_source=ads","session_id":"1"}},
              {"name":"sign_up","params":{"method":"google"},"timestamp_micros":1738065595000000},
              {"name":"","params":{}}
            ]}"#,
    )
    .unwrap();
    let acc: Vec<_> = b.accepted().collect();
    assert_eq!(acc.len(), 2);
    assert_eq!(
        (acc[0].kind, acc[0].name.as_str()),
        (Kind::Page, "Page View")
    );
    assert_eq!(acc[0].anonymous_id.as_deref(), Some("123.456"));
    assert_eq!(acc[0].user_id.as_deref(), Some("u-9"));
    assert_eq!(acc[0].traits["tier"], "gold");
    assert_eq!(acc[0].properties["utm_source"], "ads");
    assert_eq!(
        acc[0].context["page"]["url"],
        "https://a.io/?utm_source=ads"
    );
    assert_eq!(acc[0].timestamp.millis(), 1_738_065_590_000);
    assert_eq!(
        (acc[1].kind, acc[1].name.as_str()),
        (Kind::Track, "Sign Up")
    );
    assert_eq!(acc[1].timestamp.millis(), 1_738_065_595_000);
    assert_ne!(acc[0].message_id, acc[1].message_id);
    assert_eq!(b.rejected().next().unwrap().0, 2);
    assert_eq!(
        ga4(&p, r#"{"events":[{"name":"a"}]}"#).unwrap_err().field(),
        "client_id"
    );
    assert_eq!(
        ga4(&p, r#"{"client_id":"1"}"#).unwrap_err().field(),
        "events"
    );
    // Routed like any other event: GA4 sign_up reaches the product rule.
    assert_eq!(route(&p, acc[1]).0, ["mixpanel"]);
}

#[test]
fn ga4_debug_validation_messages() {
    let p = pipeline();
    let check = |json: &str| {
        let mut body = json.as_bytes().to_vec();
        p.parser()
            .validate_ga4(&mut body)
            .unwrap()
            .validation_messages
    };
    assert!(
        check(r#"{"client_id":"1.2","events":[{"name":"purchase","params":{"value":3}}]}"#)
            .is_empty()
    );
    let m = check(r#"{"client_id":"1.2","events":[{"name":"_bad"}]}"#);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].validation_code, "NAME_INVALID");
    assert_eq!(m[0].field_path, "events[0].name");
    assert!(
        m[0].description
            .contains("Event at index: [0] has invalid name [_bad]")
    );
    assert_eq!(
        check(r#"{"client_id":"1","events":[{"name":"page_view"}]}"#)[0].validation_code,
        "NAME_RESERVED"
    );
    assert_eq!(
        check(r#"{"events":[{"name":"a"}]}"#)[0].validation_code,
        "VALUE_REQUIRED"
    );
    let many = format!(
        r#"{{"client_id":"1","events":[{}]}}"#,
        vec![r#"{"name":"a"}"#; 26].join(",")
    );
    assert_eq!(check(&many)[0].validation_code, "EXCEEDED_MAX_ENTITIES");
    let long = format!(
        r#"{{"client_id":"1","events":[{{"name":"a","params":{{"p":"{}"}}}}]}}"#,
        "x".repeat(101)
    );
    assert_eq!(check(&long)[0].validation_code, "VALUE_OUT_OF_BOUNDS");
    let m = check(
        r#"{"client_id":"1","events":[{"name":"a","params":{"firebase_x":1}}],"user_properties":{"ga_x":{"value":1}}}"#,
    );
    assert_eq!(
        m.iter()
            .filter(|m| m.validation_code == "NAME_RESERVED")
            .count(),
        2
    );
}

fn posthog(
    p: &router_core::Pipeline,
    body: &[u8],
    form: bool,
) -> Result<router_core::parse::Batch, RequestError> {
    let mut body = body.to_vec();
    let mut ids = router_core::parse::SequentialIds::new("gen-");
    p.parser().parse_posthog(
        &mut body,
        form,
        &mut router_core::parse::Ingest {
            received_at: now(),
            ids: &mut ids,
        },
    )
}

#[test]
fn posthog_sdk_payloads() {
    let p = pipeline();
    // posthog-node: batch envelope with api_key and sent_at.
    let b = posthog(
        &p,
        br#"{"api_key":"phc_x","sent_at":"2025-01-28T12:00:05Z","batch":[
            {"event":"Sign Up","distinct_id":"u1","uuid":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","timestamp":"2025-01-28T12:00:00Z","properties":{"plan":"pro","$lib":"posthog-node"}},
            {"event":"$identify","distinct_id":"u1","properties":{"$anon_distinct_id":"anon-1","$set":{"email":"a@b.c"},"$set_once":{"src":"ads"}}},
            {"event":"x"}
        ]}"#,
        false,
    )
    .unwrap();
    assert_eq!(b.write_key.as_deref(), Some("phc_x"));
    let acc: Vec<_> = b.accepted().collect();
    assert_eq!(acc.len(), 2);
    assert_eq!(acc[0].message_id, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
    assert_eq!(acc[0].user_id.as_deref(), Some("u1"));
    assert_eq!(
        acc[0].timestamp.to_string(),
        "2025-01-28T11:59:55.000Z",
        "skew corrected with sent_at"
    );
    assert_eq!(acc[0].context["library"]["name"], "posthog-node");
    assert_eq!(acc[0].source, Source::Posthog);
    assert_eq!(
        (acc[1].kind, acc[1].name.as_str()),
        (Kind::Identify, "$identify")
    );
    assert_eq!(acc[1].anonymous_id.as_deref(), Some("anon-1"));
    assert_eq!(acc[1].traits["email"], "a@b.c");
    assert_eq!(acc[1].traits["$set_once"]["src"], "ads");
    assert_eq!(b.rejected().next().unwrap().1.field, "distinct_id");
    assert_eq!(route(&p, acc[1]).0, ["mixpanel", "posthog"]);
}

#[test]
fn posthog_js_forms_base64_and_special_events() {
    use base64::Engine;
    let p = pipeline();
    let json = r#"[{"event":"$pageview","properties":{"distinct_id":"dev-1","$device_id":"dev-1","$current_url":"https://a.io/?utm_source=x","token":"phc_y"}},
                   {"event":"$create_alias","properties":{"distinct_id":"u2","alias":"dev-1"}},
                   {"event":"$groupidentify","distinct_id":"u2","properties":{"$group_type":"company","$group_key":"acme","$group_set":{"plan":"pro"}}},
                   {"event":"Clicked","distinct_id":"dev-9","properties":{"$is_identified":false}}]"#;
    let b64 = base64::engine::general_purpose::STANDARD.encode(json);
    let form = format!("data={}&compression=base64", b64.replace('+', "%2B"));
    for (body, is_form) in [
        (json.as_bytes().to_vec(), false),
        (form.into_bytes(), true),
        (b64.into_bytes(), false),
    ] {
        let b = posthog(&p, &body, is_form).unwrap();
        let acc: Vec<_> = b.accepted().collect();
        assert_eq!(acc.len(), 4, "{:?}", b.items);
        assert_eq!(
            (acc[0].kind, acc[0].name.as_str()),
            (Kind::Page, "Page View")
        );
        assert_eq!(
            acc[0].anonymous_id.as_deref(),
            Some("dev-1"),
            "the device id is anonymous"
        );
        assert_eq!(acc[0].user_id, None);
        assert_eq!(acc[0].context["page"]["url"], "https://a.io/?utm_source=x");
        assert_eq!(acc[0].properties["utm_source"], "x");
        assert_eq!(
            (acc[1].kind, acc[1].previous_id.as_deref()),
            (Kind::Alias, Some("dev-1"))
        );
        assert_eq!(
            (acc[2].kind, acc[2].group_id.as_deref()),
            (Kind::Group, Some("acme"))
        );
        assert_eq!(acc[2].traits["plan"], "pro");
        assert_eq!(acc[3].anonymous_id.as_deref(), Some("dev-9"));
        assert_eq!(
            b.write_key.as_deref(),
            None,
            "tokens inside properties are not envelope keys"
        );
    }
    assert_eq!(posthog(&p, b"data=%%%", true).unwrap_err().field(), "data");
    assert_eq!(posthog(&p, b"plain=1", true).unwrap_err().field(), "data");
}
