//! Every row of the default routing table, the union case and the fallback.

mod common;
use common::*;

fn case(json: &str) -> (Vec<String>, Vec<String>) {
    let p = pipeline();
    let e = one(&p, json);
    route(&p, &e)
}

fn v(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| (*x).to_owned()).collect()
}

#[test]
fn identify_goes_to_both() {
    assert_eq!(
        case(r#"{"type":"identify","userId":"u1","traits":{"email":"a@b.c"}}"#),
        (v(&["mixpanel", "posthog"]), v(&["identify"]))
    );
    // An own-schema event named $identify is an identify call too.
    assert_eq!(
        case(r#"{"event":"$identify","userId":"u1"}"#),
        (v(&["mixpanel", "posthog"]), v(&["identify"]))
    );
}

#[test]
fn product_events_go_to_mixpanel() {
    for name in ["Sign Up", "Page View", "Request Demo"] {
        let json = format!(r#"{{"event":"{name}","userId":"u1"}}"#);
        assert_eq!(case(&json), (v(&["mixpanel"]), v(&["product"])), "{name}");
    }
}

#[test]
fn purchase_with_utm_goes_to_posthog() {
    assert_eq!(
        case(
            r#"{"event":"Purchase","userId":"u1","properties":{"utm_source":"google","revenue":9}}"#
        ),
        (v(&["posthog"]), v(&["purchase-attributed", "campaign"]))
    );
}

#[test]
fn purchase_without_utm_goes_to_mixpanel() {
    assert_eq!(
        case(r#"{"event":"Purchase","userId":"u1","properties":{"revenue":9}}"#),
        (v(&["mixpanel"]), v(&["purchase-product"]))
    );
    // null counts as absent.
    assert_eq!(
        case(r#"{"event":"Purchase","userId":"u1","properties":{"utm_source":null}}"#),
        (v(&["mixpanel"]), v(&["purchase-product"]))
    );
}

#[test]
fn campaign_events_go_to_posthog() {
    assert_eq!(
        case(
            r#"{"event":"Newsletter Click","anonymousId":"a1","properties":{"utm_source":"mail"}}"#
        ),
        (v(&["posthog"]), v(&["campaign"]))
    );
}

#[test]
fn utm_found_in_context_campaign_or_page_url_routes_too() {
    assert_eq!(
        case(
            r#"{"event":"X","userId":"u","context":{"campaign":{"source":"fb","name":"spring"}}}"#
        ),
        (v(&["posthog"]), v(&["campaign"]))
    );
    assert_eq!(
        case(
            r#"{"event":"X","userId":"u","context":{"page":{"url":"https://a.io/?utm_source=tw&x=1"}}}"#
        ),
        (v(&["posthog"]), v(&["campaign"]))
    );
    assert_eq!(
        case(r#"{"event":"X","userId":"u","properties":{"url":"https://a.io/p?utm_source=li"}}"#),
        (v(&["posthog"]), v(&["campaign"]))
    );
}

#[test]
fn sessions_go_to_posthog() {
    for name in [
        "Session Start",
        "Session End",
        "session_start",
        "session_end",
    ] {
        let json = format!(r#"{{"event":"{name}","anonymousId":"a"}}"#);
        assert_eq!(case(&json), (v(&["posthog"]), v(&["sessions"])), "{name}");
    }
}

#[test]
fn union_of_matching_rules() {
    assert_eq!(
        case(r#"{"event":"Sign Up","userId":"u1","properties":{"utm_source":"google"}}"#),
        (v(&["mixpanel", "posthog"]), v(&["product", "campaign"]))
    );
}

#[test]
fn unmatched_events_fall_back_to_mixpanel() {
    assert_eq!(
        case(r#"{"event":"Button Clicked","userId":"u1"}"#),
        (v(&["mixpanel"]), v(&["fallback"]))
    );
}

#[test]
fn aliases_rename_before_routing() {
    assert_eq!(
        case(r#"{"event":"sign_up","userId":"u1"}"#),
        (v(&["mixpanel"]), v(&["product"]))
    );
    // Aliased session_start is "Session Start" and still a session.
    assert_eq!(
        case(r#"{"event":"session_start","userId":"u1"}"#),
        (v(&["posthog"]), v(&["sessions"]))
    );
}

#[test]
fn custom_rules_glob_regex_kind_and_equals() {
    let cfg: router_core::CoreConfig = toml_like(
        r#"{"routing":{"rules":[
            {"name":"checkout","when":{"event_glob":"Checkout *"},"to":["posthog"]},
            {"name":"errors","when":{"event_regex":"^(Error|Crash)"},"to":["archive"]},
            {"name":"pages","when":{"kind":"page"},"to":["mixpanel"]},
            {"name":"pro","when":{"equals":{"plan":"pro"}},"to":["posthog","archive"]}
        ],"fallback":["archive"]}}"#,
    );
    let p = router_core::Pipeline::new(&cfg).unwrap();
    let r = |json: &str| {
        let e = one(&p, json);
        route(&p, &e)
    };
    assert_eq!(
        r(r#"{"event":"Checkout Started","userId":"u"}"#),
        (v(&["posthog"]), v(&["checkout"]))
    );
    assert_eq!(
        r(r#"{"event":"Crash Report","userId":"u"}"#),
        (v(&["archive"]), v(&["errors"]))
    );
    assert_eq!(
        r(r#"{"type":"page","userId":"u"}"#),
        (v(&["mixpanel"]), v(&["pages"]))
    );
    assert_eq!(
        r(r#"{"event":"Checkout Done","userId":"u","properties":{"plan":"pro"}}"#),
        (v(&["archive", "posthog"]), v(&["checkout", "pro"]))
    );
    assert_eq!(
        r(r#"{"event":"Other","userId":"u","properties":{"plan":"free"}}"#),
        (v(&["archive"]), v(&["fallback"]))
    );
}

fn toml_like(json: &str) -> router_core::CoreConfig {
    serde_json::from_str(json).unwrap()
}
