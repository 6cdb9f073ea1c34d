//! Black-box tests of the strict mock Mixpanel over HTTP.

mod common;

use common::*;
use perf::mock::{Endpoint, MixpanelConfig, MockConfig, MockHandle, ServiceAccount};
use serde_json::{Value, json};

fn token(mock: &MockHandle) -> String {
    mock.config().mixpanel.token.clone()
}

/// POSTs a JSON array to `/import?strict=1` with the project token as Basic user.
async fn import(mock: &MockHandle, events: &Value) -> (u16, Value) {
    let resp = client()
        .post(format!("{}/import?strict=1", mock.mixpanel_url()))
        .header("authorization", basic(&token(mock), ""))
        .header("content-type", "application/json")
        .body(events.to_string())
        .send()
        .await
        .unwrap();
    status_json(resp).await
}

fn p(e: &mut Value) -> &mut serde_json::Map<String, Value> {
    e["properties"].as_object_mut().unwrap()
}

async fn post_text(
    mock: &MockHandle,
    path: &str,
    content_type: &str,
    body: String,
) -> (u16, String) {
    let resp = client()
        .post(format!("{}{path}", mock.mixpanel_url()))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    status_text(resp).await
}

#[tokio::test]
async fn import_accepts_a_valid_array() {
    let mock = start().await;
    let (status, body) = import(&mock, &json!([mp_event(1), mp_event(2)])).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"code": 200, "num_records_imported": 2, "status": "OK"})
    );
    let got = mock.mixpanel_imports();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["properties"]["$insert_id"], json!("ins-00000001"));
    let req = &mock.requests_to(Endpoint::MixpanelImport)[0];
    assert_eq!(req.auth_user.as_deref(), Some(token(&mock).as_str()));
    assert_eq!(req.query.as_deref(), Some("strict=1"));
    assert_eq!(req.accepted_ids, vec!["ins-00000001", "ins-00000002"]);
    assert_eq!(mock.stats().mixpanel.events_accepted, 2);
}

#[tokio::test]
async fn import_accepts_ndjson_and_gzip() {
    let mock = start().await;
    let c = client();
    let ndjson = format!("{}\n{}\n", mp_event(1), mp_event(2));
    let resp = c
        .post(format!("{}/import?strict=1", mock.mixpanel_url()))
        .header("authorization", basic(&token(&mock), ""))
        .header("content-type", "application/x-ndjson")
        .body(ndjson.clone())
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(resp).await;
    assert_eq!(
        (status, body["num_records_imported"].clone()),
        (200, json!(2))
    );

    let array = json!([mp_event(3), mp_event(4), mp_event(5)]).to_string();
    for (ct, payload) in [
        ("application/json", array),
        ("application/x-ndjson", ndjson),
    ] {
        let resp = c
            .post(format!("{}/import?strict=1", mock.mixpanel_url()))
            .header("authorization", basic(&token(&mock), ""))
            .header("content-type", ct)
            .header("content-encoding", "gzip")
            .body(gz(payload.as_bytes()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{ct}");
    }
    assert_eq!(mock.stats().mixpanel.events_accepted, 7);
    // Gzip without the header is not JSON: Mixpanel needs Content-Encoding.
    let resp = c
        .post(format!("{}/import?strict=1", mock.mixpanel_url()))
        .header("authorization", basic(&token(&mock), ""))
        .body(gz(json!([mp_event(9)]).to_string().as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}

#[tokio::test]
async fn import_auth_rules() {
    let config = MockConfig {
        mixpanel: MixpanelConfig {
            service_account: Some(ServiceAccount {
                username: "sa.user".into(),
                secret: "sa-secret".into(),
                project_id: "12345".into(),
            }),
            api_secret: Some("legacy-secret".into()),
            ..MixpanelConfig::default()
        },
        ..MockConfig::default()
    };
    let mock = start_with(config).await;
    let t = token(&mock);
    let c = client();
    let cases: Vec<(Option<String>, &str, u16)> = vec![
        (None, "strict=1", 401),
        (Some(basic("wrong-token", "")), "strict=1", 401),
        (Some(basic(&t, "not-empty")), "strict=1", 401),
        (Some(format!("Bearer {t}")), "strict=1", 401),
        (Some(basic(&t, "")), "strict=1", 200),
        (
            Some(basic("sa.user", "sa-secret")),
            "strict=1&project_id=12345",
            200,
        ),
        (Some(basic("sa.user", "sa-secret")), "strict=1", 401),
        (
            Some(basic("sa.user", "sa-secret")),
            "strict=1&project_id=999",
            401,
        ),
        (
            Some(basic("sa.user", "wrong")),
            "strict=1&project_id=12345",
            401,
        ),
        (Some(basic("legacy-secret", "")), "strict=1", 200),
    ];
    for (i, (auth, query, want)) in cases.into_iter().enumerate() {
        let mut req = c
            .post(format!("{}/import?{query}", mock.mixpanel_url()))
            .body(json!([mp_event(i as u64)]).to_string());
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let (status, body) = status_json(req.send().await.unwrap()).await;
        assert_eq!(status, want, "case {i} {auth:?} {query}: {body}");
        if want == 401 {
            assert_eq!(body["code"], json!(401));
            assert_eq!(body["status"], json!("Unauthorized"));
        }
    }
    assert_eq!(
        import(&mock, &json!([mp_event(50)])).await.1,
        json!({"code": 200, "num_records_imported": 1, "status": "OK"})
    );
}

#[tokio::test]
async fn import_requires_strict() {
    let mock = start().await;
    let resp = client()
        .post(format!("{}/import", mock.mixpanel_url()))
        .header("authorization", basic(&token(&mock), ""))
        .body(json!([mp_event(1)]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}

#[tokio::test]
async fn each_event_rule_gives_a_partial_400() {
    let mock = start().await;
    let now = now_ms();
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut ev = mp_event(100);
        f(&mut ev);
        ev
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "no event",
            edit(&|e| drop(e.as_object_mut().unwrap().remove("event"))),
            "event",
        ),
        ("empty event", edit(&|e| e["event"] = json!("")), "event"),
        (
            "no properties",
            edit(&|e| drop(e.as_object_mut().unwrap().remove("properties"))),
            "properties",
        ),
        (
            "no time",
            edit(&|e| drop(p(e).remove("time"))),
            "properties.time",
        ),
        (
            "float time",
            edit(&|e| e["properties"]["time"] = json!(1.7e9)),
            "properties.time",
        ),
        (
            "string time",
            edit(&|e| e["properties"]["time"] = json!("1700000000")),
            "properties.time",
        ),
        (
            "time before 1971",
            edit(&|e| e["properties"]["time"] = json!(31_535_999)),
            "properties.time",
        ),
        (
            "time 2h ahead",
            edit(&|e| e["properties"]["time"] = json!(now + 7_200_000)),
            "properties.time",
        ),
        (
            "no distinct_id",
            edit(&|e| drop(p(e).remove("distinct_id"))),
            "properties.distinct_id",
        ),
        (
            "empty distinct_id",
            edit(&|e| e["properties"]["distinct_id"] = json!("")),
            "properties.distinct_id",
        ),
        (
            "distinct_id undefined",
            edit(&|e| e["properties"]["distinct_id"] = json!("undefined")),
            "properties.distinct_id",
        ),
        (
            "distinct_id nil uuid",
            edit(&|e| {
                e["properties"]["distinct_id"] = json!("00000000-0000-0000-0000-000000000000")
            }),
            "properties.distinct_id",
        ),
        (
            "distinct_id -1",
            edit(&|e| e["properties"]["distinct_id"] = json!(-1)),
            "properties.distinct_id",
        ),
        (
            "distinct_id object",
            edit(&|e| e["properties"]["distinct_id"] = json!({})),
            "properties.distinct_id",
        ),
        (
            "no $insert_id",
            edit(&|e| drop(p(e).remove("$insert_id"))),
            "properties.$insert_id",
        ),
        (
            "$insert_id 37 chars",
            edit(&|e| e["properties"]["$insert_id"] = json!("a".repeat(37))),
            "properties.$insert_id",
        ),
        (
            "$insert_id underscore",
            edit(&|e| e["properties"]["$insert_id"] = json!("a_b")),
            "properties.$insert_id",
        ),
        (
            "$insert_id blacklisted",
            edit(&|e| e["properties"]["$insert_id"] = json!("null")),
            "properties.$insert_id",
        ),
        (
            "$insert_id number",
            edit(&|e| e["properties"]["$insert_id"] = json!(12)),
            "properties.$insert_id",
        ),
        (
            "wrong token",
            edit(&|e| e["properties"]["token"] = json!("other")),
            "properties.token",
        ),
        (
            "distinct_id differs from $user_id",
            edit(&|e| e["properties"]["$user_id"] = json!("someone-else")),
            "properties.distinct_id",
        ),
        (
            "$device_id placeholder",
            edit(&|e| e["properties"]["$device_id"] = json!("unknown")),
            "properties.$device_id",
        ),
    ];
    for (name, bad, field) in cases {
        let bad_insert_id = bad["properties"]
            .get("$insert_id")
            .cloned()
            .unwrap_or(Value::Null);
        let (status, body) = import(&mock, &json!([mp_event(1), bad, mp_event(2)])).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["code"], json!(400), "{name}");
        assert_eq!(body["status"], json!("Bad Request"), "{name}");
        assert_eq!(
            body["error"],
            json!("some data points in the request failed validation")
        );
        assert_eq!(
            body["num_records_imported"],
            json!(2),
            "{name}: valid ones imported"
        );
        let failed = body["failed_records"].as_array().unwrap();
        assert_eq!(failed.len(), 1, "{name}: {body}");
        assert_eq!(failed[0]["index"], json!(1), "{name}");
        assert_eq!(failed[0]["field"], json!(field), "{name}: {body}");
        assert_eq!(failed[0]["insert_id"], bad_insert_id, "{name}");
        assert_eq!(failed[0]["$insert_id"], bad_insert_id, "{name}");
        assert!(failed[0]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let stats = mock.stats().mixpanel;
    assert_eq!(stats.events_rejected, 22);
    assert_eq!(stats.events_accepted, 44);
}

#[tokio::test]
async fn accepted_variants() {
    let mock = start().await;
    let now = now_ms();
    let mut secs = mp_event(1);
    secs["properties"]["time"] = json!(now / 1000);
    let mut old = mp_event(2);
    old["properties"]["time"] = json!(31_536_000);
    let mut simplified = mp_event(3);
    let props = simplified["properties"].as_object_mut().unwrap();
    props.remove("distinct_id");
    props.insert("$device_id".into(), json!("dev-3"));
    let mut identified = mp_event(4);
    identified["properties"]["$user_id"] = json!("user-4");
    identified["properties"]["$device_id"] = json!("dev-4");
    let mut user_only = mp_event(5);
    user_only["properties"]
        .as_object_mut()
        .unwrap()
        .remove("distinct_id");
    user_only["properties"]["$user_id"] = json!("u-5");
    let mut with_token = mp_event(6);
    with_token["properties"]["token"] = json!(token(&mock));
    let mut uuid_insert = mp_event(7);
    uuid_insert["properties"]["$insert_id"] = json!("0190ABCD-0000-7000-8000-000000000001");
    let mut numeric_id = mp_event(8);
    numeric_id["properties"]["distinct_id"] = json!(12345);
    let mut future = mp_event(9);
    future["properties"]["time"] = json!(now + 3_000_000);
    let all = json!([
        secs,
        old,
        simplified,
        identified,
        user_only,
        with_token,
        uuid_insert,
        numeric_id,
        future
    ]);
    let (status, body) = import(&mock, &all).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["num_records_imported"], json!(9));
}

#[tokio::test]
async fn import_limits() {
    let config = MockConfig {
        mixpanel: MixpanelConfig {
            max_import_bytes: 20_000,
            ..MixpanelConfig::default()
        },
        ..MockConfig::default()
    };
    let mock = start_with(config).await;
    // Item count.
    let many: Vec<Value> = (0..2001).map(mp_event).collect();
    let small = start().await;
    let (status, body) = import(&small, &Value::Array(many.clone())).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], json!(413));
    assert_eq!(body["status"], json!("Request Entity Too Large"));
    let (status, body) = import(&small, &Value::Array(many[..2000].to_vec())).await;
    assert_eq!(
        (status, body["num_records_imported"].clone()),
        (200, json!(2000))
    );

    // Bytes (uncompressed), plain and gzip.
    let big: Vec<Value> = (0..200).map(mp_event).collect();
    let text = Value::Array(big).to_string();
    assert!(text.len() > 20_000);
    let (status, body) = import(&mock, &serde_json::from_str(&text).unwrap()).await;
    assert_eq!(status, 413);
    assert_eq!(
        body,
        json!({"code": 413, "error": "request exceeds max limit of 20000 bytes",
               "status": "Request Entity Too Large"})
    );
    let resp = client()
        .post(format!("{}/import?strict=1", mock.mixpanel_url()))
        .header("authorization", basic(&token(&mock), ""))
        .header("content-encoding", "gzip")
        .body(gz(text.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        413,
        "the cap is on the uncompressed size"
    );
    let (status, _) = import(&mock, &json!([])).await;
    assert_eq!(status, 400, "empty import");
}

#[tokio::test]
async fn import_duplicates_by_tuple_and_by_insert_id() {
    let mock = start().await;
    let evs = json!([mp_event(1), mp_event(2)]);
    assert_eq!(import(&mock, &evs).await.0, 200);
    assert_eq!(import(&mock, &evs).await.0, 200);
    // Same $insert_id, different time: not a tuple duplicate, but an $insert_id duplicate.
    let mut moved = mp_event(1);
    moved["properties"]["time"] = json!(now_ms() - 1);
    assert_eq!(import(&mock, &json!([moved])).await.0, 200);
    let stats = mock.stats().mixpanel;
    assert_eq!(stats.events_accepted, 5);
    assert_eq!(stats.duplicates, 2);
    assert_eq!(stats.unique_events, 3);
    assert_eq!(stats.duplicate_insert_ids, 3);
}

#[tokio::test]
async fn engage_updates() {
    let mock = start().await;
    let t = token(&mock);
    let set = json!({"$token": t, "$distinct_id": "user-1", "$set": {"$email": "a@b.c"}});
    let set_once = json!({"$token": t, "$distinct_id": "user-1", "$set_once": {"first": 1}});
    let (status, body) = post_text(
        &mock,
        "/engage?ip=0",
        "application/json",
        json!([set, set_once]).to_string(),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "1"));

    let (status, body) = post_text(
        &mock,
        "/engage?verbose=1",
        "application/json",
        json!([set]).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": 1, "error": null})
    );

    // Form data=, raw JSON and base64.
    let form = format!("data={}", form_encode(&json!([set]).to_string()));
    let (status, body) =
        post_text(&mock, "/engage", "application/x-www-form-urlencoded", form).await;
    assert_eq!((status, body.as_str()), (200, "1"));
    let form = format!(
        "data={}",
        form_encode(&b64(json!(set).to_string().as_bytes()))
    );
    let (status, body) =
        post_text(&mock, "/engage", "application/x-www-form-urlencoded", form).await;
    assert_eq!((status, body.as_str()), (200, "1"));
    assert_eq!(mock.mixpanel_engage().len(), 5);

    // Nothing valid: 0.
    let bad_token = json!({"$token": "nope", "$distinct_id": "user-1", "$set": {"a": 1}});
    let two_ops = json!({"$token": t, "$distinct_id": "user-1", "$set": {"a": 1}, "$unset": ["b"]});
    let no_op = json!({"$token": t, "$distinct_id": "user-1"});
    let no_id = json!({"$token": t, "$set": {"a": 1}});
    for bad in [&bad_token, &two_ops, &no_op, &no_id] {
        let (status, body) = post_text(
            &mock,
            "/engage",
            "application/json",
            json!([bad]).to_string(),
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "0"), "{bad}");
    }
    let (status, body) = post_text(
        &mock,
        "/engage?verbose=1",
        "application/json",
        json!([bad_token]).to_string(),
    )
    .await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["status"], json!(0));
    assert!(body["error"].is_string());

    // Mixed: 1, the valid one kept.
    let (status, body) = post_text(
        &mock,
        "/engage",
        "application/json",
        json!([two_ops, set]).to_string(),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "1"));
    let stats = mock.stats().mixpanel;
    assert_eq!(stats.profile_updates_accepted, 6);
    assert_eq!(stats.profile_updates_rejected, 6);

    // No gzip on /engage.
    let resp = client()
        .post(format!("{}/engage", mock.mixpanel_url()))
        .header("content-encoding", "gzip")
        .body(gz(json!([set]).to_string().as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let resp = client()
        .post(format!("{}/engage", mock.mixpanel_url()))
        .body(gz(json!([set]).to_string().as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        400,
        "gzip detected by magic bytes too"
    );
    assert_eq!(mock.mixpanel_engage().len(), 6);
}

#[tokio::test]
async fn groups_updates() {
    let mock = start().await;
    let t = token(&mock);
    let ok =
        json!({"$token": t, "$group_key": "company", "$group_id": "acme", "$set": {"plan": "pro"}});
    let (status, body) = post_text(
        &mock,
        "/groups",
        "application/json",
        json!([ok]).to_string(),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "1"));
    let bad = json!({"$token": t, "$group_key": "company", "$set": {"plan": "pro"}});
    let (status, body) = post_text(
        &mock,
        "/groups",
        "application/json",
        json!([bad]).to_string(),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "0"));
    let add = json!({"$token": t, "$group_key": "company", "$group_id": "acme", "$add": {"n": 1}});
    let (status, body) = post_text(
        &mock,
        "/groups",
        "application/json",
        json!([add]).to_string(),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, "0"),
        "$add is not a group operation"
    );
    assert_eq!(mock.mixpanel_groups(), vec![ok]);
    assert_eq!(mock.stats().mixpanel.group_updates_accepted, 1);
}

#[tokio::test]
async fn track_events() {
    let mock = start().await;
    let t = token(&mock);
    let ev = json!({"event": "$identify", "properties": {"$identified_id": "u1", "$anon_id": "a1", "token": t}});
    let form = format!(
        "data={}",
        form_encode(&b64(json!([ev]).to_string().as_bytes()))
    );
    let (status, body) =
        post_text(&mock, "/track", "application/x-www-form-urlencoded", form).await;
    assert_eq!((status, body.as_str()), (200, "1"));
    let no_token = json!({"event": "x", "properties": {"distinct_id": "u1"}});
    let (status, body) = post_text(
        &mock,
        "/track?verbose=1",
        "application/json",
        json!([no_token]).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        json!(0)
    );
    let old = json!({"event": "x", "properties": {"token": t, "time": (now_ms() - 6 * 86_400_000) / 1000}});
    let (_, body) = post_text(
        &mock,
        "/track",
        "application/json",
        json!([old]).to_string(),
    )
    .await;
    assert_eq!(body, "0", "/track takes only the last 5 days");
    assert_eq!(mock.mixpanel_track(), vec![ev]);
}

#[tokio::test]
async fn update_item_limit_methods_and_unknown_routes() {
    let mock = start().await;
    let t = token(&mock);
    let many: Vec<Value> = (0..2001)
        .map(|i| json!({"$token": t, "$distinct_id": format!("u{i}"), "$set": {"n": i}}))
        .collect();
    let (status, _) = post_text(
        &mock,
        "/engage",
        "application/json",
        Value::Array(many).to_string(),
    )
    .await;
    assert_eq!(status, 413);
    let resp = client()
        .get(format!("{}/import", mock.mixpanel_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let (status, _) = post_text(&mock, "/batch/", "application/json", "[]".into()).await;
    assert_eq!(status, 404, "PostHog routes are not Mixpanel routes");
    // /track takes gzip.
    let ev =
        json!({"event": "x", "properties": {"token": t, "distinct_id": "u1", "$insert_id": "t-1"}});
    let resp = client()
        .post(format!("{}/track", mock.mixpanel_url()))
        .header("content-encoding", "gzip")
        .body(gz(json!([ev]).to_string().as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(status_text(resp).await, (200, "1".to_owned()));
    let stats = mock.stats().mixpanel;
    assert_eq!(stats.requests_by_status.get(&404), Some(&1));
    assert_eq!(stats.events_accepted, 1);
}
