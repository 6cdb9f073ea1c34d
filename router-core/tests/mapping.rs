//! Exact PostHog and Mixpanel records for each kind of call.

mod common;
use common::*;

use router_core::map::PosthogSettings;
use router_core::map::{
    IdMerge, MixpanelEndpoint, MixpanelSettings, insert_id, mixpanel_records, posthog_record,
    posthog_uuid,
};
use serde_json::{Value, json};

fn ph(e: &router_core::Event) -> Value {
    posthog_record(e, &PosthogSettings::default()).to_value()
}

fn mp(e: &router_core::Event, s: &MixpanelSettings) -> Vec<(MixpanelEndpoint, Value)> {
    let mut out = Vec::new();
    mixpanel_records(e, s, &mut out);
    out.into_iter()
        .map(|r| (r.endpoint, r.record.to_value()))
        .collect()
}

fn settings(mode: IdMerge) -> MixpanelSettings {
    MixpanelSettings {
        token: Some("tok".into()),
        id_merge: mode,
        ..MixpanelSettings::default()
    }
}

const V: &str = env!("CARGO_PKG_VERSION");

#[test]
fn posthog_track() {
    let p = pipeline();
    let e = one(
        &p,
        r#"{"event":"Purchase","userId":"u1","anonymousId":"a1","messageId":"m-1",
            "timestamp":"2025-01-28T11:00:00Z","properties":{"utm_source":"g","revenue":9,"distinct_id":"evil"},
            "context":{"ip":"1.2.3.4","page":{"url":"https://a.io/x"},"groupId":"acme"}}"#,
    );
    assert_eq!(
        ph(&e),
        json!({
            "event": "Purchase",
            "distinct_id": "u1",
            "timestamp": "2025-01-28T11:00:00.000Z",
            "uuid": posthog_uuid("m-1").to_string(),
            "properties": {
                "utm_source": "g", "revenue": 9, "distinct_id": "evil",
                "$current_url": "https://a.io/x", "$ip": "1.2.3.4", "$groups": {"company": "acme"},
                "$lib": "events-router", "$lib_version": V
            }
        })
    );
}

#[test]
fn posthog_identify_page_screen_alias_group() {
    let p = pipeline();
    let id = one(
        &p,
        r#"{"type":"identify","userId":"u1","anonymousId":"a1","messageId":"m","traits":{"email":"e@x.io","$set_once":{"first":"2024"}}}"#,
    );
    let v = ph(&id);
    assert_eq!(v["event"], "$identify");
    assert_eq!(v["distinct_id"], "u1");
    assert_eq!(v["properties"]["$set"], json!({"email": "e@x.io"}));
    assert_eq!(v["properties"]["$set_once"], json!({"first": "2024"}));
    assert_eq!(v["properties"]["$anon_distinct_id"], "a1");
    let same = one(
        &p,
        r#"{"type":"identify","userId":"u1","anonymousId":"u1"}"#,
    );
    assert!(ph(&same)["properties"].get("$anon_distinct_id").is_none());

    let page = one(
        &p,
        r#"{"type":"page","userId":"u1","context":{"page":{"url":"https://a.io/p","path":"/p","referrer":"https://g.co","title":"P"}}}"#,
    );
    let v = ph(&page);
    assert_eq!(v["event"], "$pageview");
    assert_eq!(v["properties"]["$current_url"], "https://a.io/p");
    assert_eq!(v["properties"]["$pathname"], "/p");
    assert_eq!(v["properties"]["$referrer"], "https://g.co");
    assert_eq!(v["properties"]["title"], "P");

    let screen = one(
        &p,
        r#"{"type":"screen","userId":"u1","properties":{"name":"Home"}}"#,
    );
    assert_eq!(ph(&screen)["event"], "$screen");
    assert_eq!(ph(&screen)["properties"]["$screen_name"], "Home");

    let alias = one(&p, r#"{"type":"alias","userId":"u1","previousId":"a1"}"#);
    assert_eq!(ph(&alias)["event"], "$create_alias");
    assert_eq!(ph(&alias)["distinct_id"], "u1");
    assert_eq!(ph(&alias)["properties"]["alias"], "a1");

    let group = one(
        &p,
        r#"{"type":"group","userId":"u1","groupId":"acme","traits":{"plan":"pro"}}"#,
    );
    let v = ph(&group);
    assert_eq!(v["event"], "$groupidentify");
    assert_eq!(v["distinct_id"], "$company_acme");
    assert_eq!(v["properties"]["$group_type"], "company");
    assert_eq!(v["properties"]["$group_key"], "acme");
    assert_eq!(v["properties"]["$group_set"], json!({"plan": "pro"}));
}

#[test]
fn mixpanel_track_simplified_and_original() {
    let p = pipeline();
    let e = one(
        &p,
        r#"{"event":"Sign Up","userId":"u1","anonymousId":"a1","messageId":"node-next-1-0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "timestamp":1738065600123,"properties":{"plan":"pro","time":1},"context":{"ip":"1.2.3.4"}}"#,
    );
    let recs = mp(&e, &settings(IdMerge::Simplified));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].0, MixpanelEndpoint::Import);
    let iid = insert_id(&e.message_id);
    assert_eq!(iid.len(), 32);
    assert_eq!(
        recs[0].1,
        json!({"event": "Sign Up", "properties": {
            "time": 1_738_065_600_123_i64, "distinct_id": "u1", "$user_id": "u1", "$device_id": "a1",
            "$insert_id": iid, "token": "tok", "ip": "1.2.3.4", "mp_lib": "events-router",
            "$lib_version": V, "plan": "pro"
        }})
    );
    let recs = mp(&e, &settings(IdMerge::Original));
    assert_eq!(recs[0].1["properties"]["distinct_id"], "u1");
    assert!(recs[0].1["properties"].get("$device_id").is_none());

    let anon = one(&p, r#"{"event":"X","anonymousId":"a1","messageId":"m-2"}"#);
    let recs = mp(&anon, &settings(IdMerge::Simplified));
    assert_eq!(recs[0].1["properties"]["distinct_id"], "$device:a1");
    assert_eq!(recs[0].1["properties"]["$insert_id"], "m-2");
}

#[test]
fn mixpanel_identify_sends_event_and_profile() {
    let p = pipeline();
    let e = one(
        &p,
        r#"{"type":"identify","userId":"u1","anonymousId":"a1","messageId":"m-3","context":{"ip":"5.6.7.8"},
            "traits":{"email":"e@x.io","firstName":"Ann","plan":"pro","$email":"literal@x.io","$set_once":{"src":"ads"}}}"#,
    );
    let recs = mp(&e, &settings(IdMerge::Simplified));
    let ends: Vec<_> = recs.iter().map(|r| r.0).collect();
    assert_eq!(
        ends,
        [
            MixpanelEndpoint::Import,
            MixpanelEndpoint::Engage,
            MixpanelEndpoint::Engage
        ]
    );
    assert_eq!(recs[0].1["event"], "$identify");
    assert_eq!(recs[0].1["properties"]["$user_id"], "u1");
    assert_eq!(recs[0].1["properties"]["$device_id"], "a1");
    assert_eq!(
        recs[1].1,
        json!({"$token": "tok", "$distinct_id": "u1", "$ip": "5.6.7.8",
               "$set": {"$email": "literal@x.io", "$first_name": "Ann", "plan": "pro"}})
    );
    assert_eq!(recs[2].1["$set_once"], json!({"src": "ads"}));

    let recs = mp(&e, &settings(IdMerge::Original));
    assert_eq!(recs[1].1["event"], "$merge");
    assert_eq!(
        recs[1].1["properties"]["$distinct_ids"],
        json!(["u1", "a1"])
    );
    assert_ne!(
        recs[1].1["properties"]["$insert_id"],
        recs[0].1["properties"]["$insert_id"]
    );
}

#[test]
fn mixpanel_group_alias_page() {
    let p = pipeline();
    let g = one(
        &p,
        r#"{"type":"group","userId":"u1","groupId":"acme","traits":{"plan":"pro"}}"#,
    );
    let recs = mp(&g, &settings(IdMerge::Simplified));
    assert_eq!(
        recs[0],
        (
            MixpanelEndpoint::Groups,
            json!({"$token":"tok","$group_key":"company","$group_id":"acme","$set":{"plan":"pro"}})
        )
    );
    assert_eq!(recs[1].1["$union"], json!({"company": ["acme"]}));

    let a = one(
        &p,
        r#"{"type":"alias","userId":"u1","previousId":"a0","messageId":"m-9"}"#,
    );
    let recs = mp(&a, &settings(IdMerge::Original));
    assert_eq!(recs[0].1["event"], "$create_alias");
    assert_eq!(recs[0].1["properties"]["distinct_id"], "a0");
    assert_eq!(recs[0].1["properties"]["alias"], "u1");
    let recs = mp(&a, &settings(IdMerge::Simplified));
    assert_eq!(recs[0].1["event"], "$identify");
    assert_eq!(recs[0].1["properties"]["$device_id"], "a0");

    let page = one(&p, r#"{"type":"page","userId":"u1"}"#);
    assert_eq!(
        mp(&page, &settings(IdMerge::Simplified))[0].1["event"],
        "Page View"
    );
    let custom = MixpanelSettings {
        page_event: Some("$mp_web_page_view".into()),
        ..settings(IdMerge::Simplified)
    };
    assert_eq!(mp(&page, &custom)[0].1["event"], "$mp_web_page_view");
}

#[test]
fn identity_fields_are_identical_across_mappings() {
    let p = pipeline();
    let e = one(
        &p,
        r#"{"event":"A","userId":"u","messageId":"a b c","timestamp":"2025-01-01T00:00:00Z"}"#,
    );
    let stored = router_core::Event::from_json(&e.to_json()).unwrap();
    assert_eq!(ph(&e), ph(&stored));
    assert_eq!(
        mp(&e, &settings(IdMerge::Simplified)),
        mp(&stored, &settings(IdMerge::Simplified))
    );
}
