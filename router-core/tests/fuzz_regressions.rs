//! Regression cases for the invariants the fuzz targets check (`fuzz/`, see fuzz/README.md).
//!
//! The oracle: every accepted event must survive the buffer round trip (`stored::encode` ->
//! `stored::decode`), or it is acknowledged and then never delivered. These cases were found
//! while writing that oracle into the `parsers` target (by reading the conversions it
//! exercises) and confirmed with the target on the inputs below; 15 minutes of fuzzing from
//! the seeds had not reached them (they need ~130 nested brackets in a small body).

mod common;

use common::*;
use router_core::parse::{Batch, Ingest, Item, SegmentCall, SequentialIds};
use router_core::{Pipeline, RequestError, stored};

/// Every accepted event decodes from its buffer record.
fn assert_storable(p: &Pipeline, b: &Batch) {
    for e in b.accepted() {
        let names = p.router().destination_names(&p.router().route(e));
        let bytes = stored::encode(e, &names);
        let back = stored::decode(&bytes).unwrap_or_else(|err| {
            panic!("accepted event cannot be read back from the buffer: {err}")
        });
        assert_eq!(&back.event, e);
    }
}

fn ga4(p: &Pipeline, json: &str) -> Result<Batch, RequestError> {
    let mut body = json.as_bytes().to_vec();
    let mut ids = SequentialIds::new("gen-");
    p.parser().parse_ga4(
        &mut body,
        &mut Ingest {
            received_at: now(),
            ids: &mut ids,
        },
    )
}

fn posthog(p: &Pipeline, json: &str) -> Result<Batch, RequestError> {
    let mut body = json.as_bytes().to_vec();
    let mut ids = SequentialIds::new("gen-");
    p.parser().parse_posthog(
        &mut body,
        false,
        &mut Ingest {
            received_at: now(),
            ids: &mut ids,
        },
    )
}

/// `[[[...]]]` nested `n` deep: one byte per level, so 200 levels fit in a body under the
/// 512 bytes from which bodies are scanned for depth.
fn chain(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

/// A batch `context` is merged into every item but was converted without
/// the depth cap. In a body under 512 bytes (not scanned for depth) it could nest 200 levels;
/// the events were accepted (200 OK) and their buffer records could not be decoded
/// (serde_json stops at 128 levels), so they were never delivered. Now the request is
/// refused, naming `context`.
#[test]
fn deep_batch_context_is_refused_not_accepted_unreadable() {
    let p = pipeline();
    let body = format!(
        r#"{{"batch":[{{"type":"track","event":"a","userId":"u"}}],"context":{{"x":{}}}}}"#,
        chain(200)
    );
    assert!(body.len() < 512);
    for r in [collect(&p, &body), segment(&p, SegmentCall::Batch, &body)] {
        match r {
            Ok(b) => {
                assert_storable(&p, &b);
                panic!("a context nested 200 deep was accepted");
            }
            Err(e) => {
                assert_eq!(e.field(), "context", "{e}");
                assert!(e.reason().contains("nested deeper"), "{e}");
            }
        }
    }
    let body = format!(
        r#"{{"batch":[{{"event":"a","userId":"u"}}],"integrations":{{"x":{}}}}}"#,
        chain(200)
    );
    assert_eq!(collect(&p, &body).unwrap_err().field(), "integrations");
    // Within the cap, a shared context is still merged as before.
    let ok = collect(
        &p,
        r#"{"batch":[{"event":"a","userId":"u"}],"context":{"x":[[1]]}}"#,
    )
    .unwrap();
    assert_storable(&p, &ok);
    assert_eq!(
        ok.accepted().next().unwrap().context["x"],
        serde_json::json!([[1]])
    );
}

/// The same through GA4's request-level fields (`device`,
/// `user_location`, `consent`, `user_agent`, user property values) and `params`, none of
/// which had the depth cap.
#[test]
fn deep_ga4_fields_are_refused_not_accepted_unreadable() {
    let p = pipeline();
    for (field, body) in [
        (
            "device",
            format!(
                r#"{{"client_id":"c","events":[{{"name":"a"}}],"device":{}}}"#,
                chain(200)
            ),
        ),
        (
            "user_properties",
            format!(
                r#"{{"client_id":"c","events":[{{"name":"a"}}],"user_properties":{{"p":{{"value":{}}}}}}}"#,
                chain(200)
            ),
        ),
    ] {
        match ga4(&p, &body) {
            Ok(b) => {
                assert_storable(&p, &b);
                panic!("{field} nested 200 deep was accepted");
            }
            Err(e) => assert_eq!(e.field(), field, "{e}"),
        }
    }
    let body = format!(
        r#"{{"client_id":"c","events":[{{"name":"a","params":{{"x":{}}}}},{{"name":"b"}}]}}"#,
        chain(200)
    );
    let b = ga4(&p, &body).unwrap();
    assert_storable(&p, &b);
    match &b.items[0] {
        Item::Rejected { error, .. } => assert_eq!(error.field, "params"),
        Item::Accepted(_) => panic!("params nested 200 deep were accepted"),
    }
    assert!(matches!(b.items[1], Item::Accepted(_)));
}

/// PostHog `properties`, `$set` and `$set_once` had no depth cap either.
#[test]
fn deep_posthog_properties_are_refused_not_accepted_unreadable() {
    let p = pipeline();
    for field in ["properties", "$set", "$set_once"] {
        let body = format!(
            r#"[{{"event":"a","distinct_id":"u","{field}":{{"x":{}}}}},{{"event":"b","distinct_id":"u"}}]"#,
            chain(200)
        );
        let b = posthog(&p, &body).unwrap();
        assert_storable(&p, &b);
        match &b.items[0] {
            Item::Rejected { error, .. } => assert_eq!(error.field, field),
            Item::Accepted(_) => panic!("{field} nested 200 deep was accepted"),
        }
        assert!(matches!(b.items[1], Item::Accepted(_)));
    }
}

/// Request-level values are copied into every
/// event, but their size did not count towards the event size cap, so a 1 MiB batch with a
/// 500 KiB `context` and 2000 tiny items made 2000 events of 500 KiB each (1 GB in memory and
/// in the buffer). They now count: a shared context over the cap refuses the request, and
/// one under it counts towards each item.
#[test]
fn shared_values_count_towards_each_event_cap() {
    let p = pipeline();
    let cap = router_core::Limits::default().max_event_bytes;
    let big = "x".repeat(cap + 1);
    let body = format!(
        r#"{{"batch":[{{"event":"a","userId":"u"}},{{"event":"b","userId":"u"}}],"context":{{"blob":"{big}"}}}}"#
    );
    let e = collect(&p, &body).unwrap_err();
    assert_eq!(e.field(), "context", "{e}");

    let half = "x".repeat(cap / 2);
    let body = format!(
        r#"{{"batch":[{{"event":"a","userId":"u","properties":{{"p":"{half}"}}}},{{"event":"b","userId":"u"}}],"context":{{"blob":"{half}"}}}}"#
    );
    let b = collect(&p, &body).unwrap();
    match &b.items[0] {
        Item::Rejected { error, .. } => assert_eq!(error.field, "$"),
        Item::Accepted(_) => panic!("an event over the cap with its shared context"),
    }
    assert!(matches!(b.items[1], Item::Accepted(_)));

    // GA4: user properties are copied into every event too.
    let props: Vec<String> = (0..25)
        .map(|i| format!(r#""p{i}":{{"value":"{}"}}"#, "y".repeat(cap / 20)))
        .collect();
    let body = format!(
        r#"{{"client_id":"c","events":[{{"name":"a"}}],"user_properties":{{{}}}}}"#,
        props.join(",")
    );
    let b = ga4(&p, &body).unwrap();
    match &b.items[0] {
        Item::Rejected { error, .. } => assert_eq!(error.field, "$"),
        Item::Accepted(_) => panic!("a GA4 event over the cap with its user properties"),
    }
}

/// Found by `json_events` (duplicate-key check on every destination record): traits with
/// both `firstName` and `first_name` (or `lastName`/`last_name`, `createdAt`/`created_at`)
/// gave the Mixpanel `/engage` `$set` the key `$first_name` twice, leaving the value to
/// whichever one Mixpanel's parser keeps. The first spelling in the table wins now, and a
/// literal `$first_name` wins over both.
#[test]
fn mixpanel_profile_keys_are_not_duplicated() {
    use router_core::map::{MixpanelEndpoint, mixpanel_records};
    let p = pipeline();
    let check = |traits: &str, want: serde_json::Value| {
        let e = one(
            &p,
            &format!(r#"{{"type":"identify","userId":"u","traits":{traits}}}"#),
        );
        let mut out = Vec::new();
        mixpanel_records(&e, p.mixpanel(), &mut out);
        let engage = out
            .iter()
            .find(|r| r.endpoint == MixpanelEndpoint::Engage)
            .expect("an /engage record");
        let mut json = Vec::new();
        engage.record.write_json(&mut json);
        let text = String::from_utf8(json).unwrap();
        for key in ["$first_name", "$last_name", "$created"] {
            assert!(
                text.matches(&format!("\"{key}\"")).count() <= 1,
                "{key} twice in {text}"
            );
        }
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["$set"], want, "{text}");
    };
    check(
        r#"{"firstName":"Ada","first_name":"Augusta","lastName":"L","last_name":"K","createdAt":1,"created_at":2}"#,
        serde_json::json!({"$first_name":"Ada","$last_name":"L","$created":1}),
    );
    check(
        r#"{"first_name":"Augusta","$first_name":"Literal"}"#,
        serde_json::json!({"$first_name":"Literal"}),
    );
    check(
        r#"{"first_name":"Augusta","email":"a@b.c"}"#,
        serde_json::json!({"$first_name":"Augusta","$email":"a@b.c"}),
    );
}
