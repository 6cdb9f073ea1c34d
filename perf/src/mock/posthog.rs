//! The strict PostHog capture handler (pure: a request view in, an [`Outcome`] out).
//!
//! Follows the Rust capture service (API_SPECS.md §1.2, §1.3, §1.6–1.8): payload shapes are
//! tried as array, batch (`{api_key, batch, historical_migration?, sent_at?}`), then single
//! event; the token comes from the batch's `api_key`/`token` or from each event's
//! `token`/`$token`/`api_key`/`properties.token`. One invalid event fails the whole request
//! with 400 (capture is all-or-nothing on v0). Error bodies use the newest capture format
//! `{"status":<u16>,"code":"<snake_code>","error":"<message>"}`, plus an `errors` array naming
//! each invalid event (a mock addition).
//!
//! Stricter than capture, on purpose (the router must send clean data): `timestamp` and
//! `sent_at` must be RFC 3339, placeholder `distinct_id`s are rejected (configurable), unknown
//! tokens get 401 (configurable), and the lz64 encoding is refused.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use super::config::PosthogConfig;
use super::decode::{
    DecodeError, decode_base64_lenient, form_field, gunzip, is_gzip, looks_like_base64, param,
    parse_query, starts_json,
};
use super::record::{Accepted, Outcome, RequestView};

/// The PostHog routes, without trailing slash.
const ROUTES: [&str; 4] = ["/batch", "/i/v0/e", "/e", "/capture"];

/// Events capture drops silently.
const FILTERED_EVENT: &str = "$performance_event";

/// Whether `path` is a capture route.
pub(crate) fn is_route(path: &str) -> bool {
    ROUTES.contains(&trim_slash(path))
}

/// The raw body limit of a capture route.
pub(crate) fn body_limit(cfg: &PosthogConfig, path: &str) -> usize {
    if trim_slash(path) == "/batch" {
        cfg.batch_body_limit
    } else {
        cfg.event_body_limit
    }
}

fn trim_slash(path: &str) -> &str {
    let t = path.trim_end_matches('/');
    if t.is_empty() { "/" } else { t }
}

/// A capture error answer.
pub(crate) fn error(status: u16, code: &str, message: impl Into<String>) -> Outcome {
    Outcome::json(
        status,
        &json!({"status": status, "code": code, "error": message.into()}),
    )
}

/// The usual PostHog body for an injected status.
pub(crate) fn fault_body(status: u16) -> String {
    if (200..300).contains(&status) {
        return json!({"status": 1}).to_string();
    }
    let code = match status {
        400 => "invalid_payload",
        401 => "ingest_key_unknown",
        403 => "forbidden",
        408 => "request_timeout",
        413 => "payload_too_large",
        429 => "rate_limited",
        500 => "internal_error",
        502 => "bad_gateway",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        _ => "injected_fault",
    };
    json!({"status": status, "code": code, "error": format!("injected fault: {code}")}).to_string()
}

/// Answer for a body over the raw limit.
pub(crate) fn too_large(limit: usize) -> Outcome {
    error(
        413,
        "payload_too_large",
        format!("request body exceeds {limit} bytes"),
    )
}

/// Distinct ids PostHog refuses to merge, compared case-insensitively (API_SPECS §1.4).
const ILLEGAL_IDS_CI: [&str; 10] = [
    "anonymous",
    "guest",
    "distinctid",
    "distinct_id",
    "id",
    "not_authenticated",
    "email",
    "undefined",
    "true",
    "false",
];
/// Distinct ids PostHog refuses to merge, compared exactly.
const ILLEGAL_IDS_CS: [&str; 7] = [
    "[object Object]",
    "NaN",
    "None",
    "none",
    "null",
    "0",
    "undefined",
];

/// Whether `id` is a placeholder PostHog treats as illegal.
pub(crate) fn is_placeholder_id(id: &str) -> bool {
    let trimmed = id.trim();
    trimmed.is_empty()
        || ILLEGAL_IDS_CI
            .iter()
            .any(|p| trimmed.eq_ignore_ascii_case(p))
        || ILLEGAL_IDS_CS.contains(&trimmed)
}

/// Validates a token's shape (capture `token.rs`).
fn check_token_shape(token: &str) -> Result<(), &'static str> {
    let t = token.trim();
    if t.is_empty() {
        Err("token is empty")
    } else if t.len() > 64 {
        Err("token is longer than 64 bytes")
    } else if !t.is_ascii() {
        Err("token is not ASCII")
    } else if t.starts_with("phx_") {
        Err("token is a personal API key (phx_)")
    } else if t.contains('\0') {
        Err("token contains NUL")
    } else {
        Ok(())
    }
}

/// The token an array element or single event carries.
fn event_token(event: &Value) -> Result<Option<String>, String> {
    let Some(obj) = event.as_object() else {
        return Ok(None);
    };
    for key in ["token", "$token", "api_key"] {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => return Ok(Some(s.clone())),
            Some(other) => return Err(format!("{key} must be a string, got {other}")),
        }
    }
    match obj.get("properties").and_then(|p| p.get("token")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("properties.token must be a string, got {other}")),
    }
}

fn is_rfc3339(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// The effective distinct id of an event (top-level, alias, then `properties.distinct_id`).
fn distinct_id(obj: &Map<String, Value>) -> Option<String> {
    let pick = |v: Option<&Value>| match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    pick(obj.get("distinct_id"))
        .or_else(|| pick(obj.get("$distinct_id")))
        .or_else(|| pick(obj.get("properties").and_then(|p| p.get("distinct_id"))))
}

/// Checks one event; `Err((field, message))` names the first problem.
fn check_event(
    cfg: &PosthogConfig,
    event: &Value,
) -> Result<Option<String>, (&'static str, String)> {
    let Some(obj) = event.as_object() else {
        return Err(("event", "event must be a JSON object".to_owned()));
    };
    match obj.get("event") {
        Some(Value::String(s)) if !s.is_empty() => {}
        Some(Value::String(_)) => return Err(("event", "event name is empty".to_owned())),
        None | Some(Value::Null) => {
            return Err(("event", "event submitted without a name".to_owned()));
        }
        Some(other) => return Err(("event", format!("event name must be a string, got {other}"))),
    }
    let Some(id) = distinct_id(obj) else {
        return Err((
            "distinct_id",
            "event submitted without a distinct_id".to_owned(),
        ));
    };
    if cfg.reject_placeholder_ids && is_placeholder_id(&id) {
        return Err((
            "distinct_id",
            format!("distinct_id {id:?} is an illegal placeholder value"),
        ));
    }
    let uuid = match obj.get("uuid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => {
            if uuid::Uuid::parse_str(s).is_err() {
                return Err(("uuid", format!("uuid {s:?} is not a valid UUID")));
            }
            Some(s.clone())
        }
        Some(other) => return Err(("uuid", format!("uuid must be a string, got {other}"))),
    };
    if uuid.is_none() && cfg.require_uuid {
        return Err(("uuid", "event submitted without a uuid".to_owned()));
    }
    match obj.get("timestamp") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if is_rfc3339(s) => {}
        Some(other) => {
            return Err((
                "timestamp",
                format!("timestamp {other} is not an RFC 3339 date-time"),
            ));
        }
    }
    for key in ["properties", "$set", "$set_once"] {
        match obj.get(key) {
            None | Some(Value::Null | Value::Object(_)) => {}
            Some(other) => {
                return Err((
                    "properties",
                    format!("{key} must be an object, got {other}"),
                ));
            }
        }
    }
    match obj.get("offset") {
        None | Some(Value::Null) => {}
        Some(v) if v.is_i64() => {}
        Some(other) => return Err(("offset", format!("offset must be an integer, got {other}"))),
    }
    Ok(uuid)
}

/// Handles a request to a capture route.
pub(crate) fn capture(cfg: &PosthogConfig, req: &RequestView<'_>) -> Outcome {
    let query = parse_query(req.query);
    let beacon = param(&query, "beacon") == Some("1");
    let mut hint = param(&query, "compression").map(str::to_ascii_lowercase);

    // The payload: `?data=` on GET, the form's `data` field, or the whole body.
    let (payload, from_form): (Cow<'_, [u8]>, bool) = if req.method == "GET" {
        match param(&query, "data") {
            Some(d) => (Cow::Owned(d.as_bytes().to_vec()), true),
            None => {
                return error(
                    400,
                    "invalid_payload",
                    "GET request without a data parameter",
                );
            }
        }
    } else if req.is_form() {
        if hint.is_none() {
            hint = form_field(req.body, "compression")
                .map(|v| String::from_utf8_lossy(&v).to_ascii_lowercase());
        }
        match form_field(req.body, "data") {
            Some(d) => (Cow::Owned(d), true),
            None => return error(400, "invalid_payload", "form body without a data field"),
        }
    } else {
        (Cow::Borrowed(req.body), false)
    };
    if hint.is_none() {
        hint = req.content_encoding.map(str::to_ascii_lowercase);
    }
    let hint = hint.unwrap_or_default();
    let gzip_hint = matches!(hint.as_str(), "gzip" | "gzip-js");
    let base64_hint = matches!(hint.as_str(), "base64" | "b64");
    if matches!(hint.as_str(), "lz64" | "lz-string") {
        return error(
            400,
            "invalid_payload",
            "lz64 compression is not supported by the mock",
        );
    }

    // Base64 layer: explicit hint, form data that is not JSON, or an optimistic decode of a
    // body that is wholly base64.
    let mut payload = payload;
    if base64_hint || (from_form && !starts_json(&payload) && !is_gzip(&payload)) {
        match decode_base64_lenient(&String::from_utf8_lossy(&payload)) {
            Some(decoded) => payload = Cow::Owned(decoded),
            None => return error(400, "invalid_payload", "data is not valid base64"),
        }
    } else if !gzip_hint
        && !is_gzip(&payload)
        && !starts_json(&payload)
        && looks_like_base64(&payload)
    {
        if let Some(decoded) = decode_base64_lenient(&String::from_utf8_lossy(&payload)) {
            if starts_json(&decoded) || is_gzip(&decoded) {
                payload = Cow::Owned(decoded);
            }
        }
    }

    // Gzip layer: hint or magic bytes, with the decompression cap.
    let gzipped = gzip_hint || is_gzip(&payload);
    if gzipped {
        match gunzip(&payload, cfg.decompressed_limit) {
            Ok(plain) => payload = Cow::Owned(plain),
            Err(DecodeError::TooLarge(cap)) => {
                return error(
                    413,
                    "payload_too_large",
                    format!("decompressed payload exceeds {cap} bytes"),
                );
            }
            Err(DecodeError::Invalid(msg)) => return error(400, "invalid_payload", msg),
        }
    } else if payload.len() > cfg.decompressed_limit {
        return error(
            413,
            "payload_too_large",
            format!("payload exceeds {} bytes", cfg.decompressed_limit),
        );
    }
    let decoded_bytes = payload.len();
    let mut outcome = parse_and_validate(cfg, &payload, beacon);
    outcome.decoded_bytes = decoded_bytes;
    outcome.gzipped = gzipped;
    outcome
}

/// Parses the decoded payload and validates token and events.
fn parse_and_validate(cfg: &PosthogConfig, payload: &[u8], beacon: bool) -> Outcome {
    let text = match std::str::from_utf8(payload) {
        Ok(t) => t,
        Err(e) => return error(400, "invalid_payload", format!("payload is not UTF-8: {e}")),
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return error(400, "invalid_payload", format!("invalid JSON: {e}")),
    };

    // Shapes, in capture's order: array, batch, single event.
    let (events, envelope, batch_token) = match value {
        Value::Array(items) => (items, None, None),
        Value::Object(mut map)
            if map.contains_key("batch")
                && (map.get("api_key").is_some_and(Value::is_string)
                    || map.get("token").is_some_and(Value::is_string)) =>
        {
            let events = match map.remove("batch") {
                Some(Value::Array(items)) => items,
                _ => return error(400, "invalid_payload", "batch must be an array"),
            };
            match map.get("historical_migration") {
                None | Some(Value::Null | Value::Bool(_)) => {}
                Some(other) => {
                    return error(
                        400,
                        "invalid_payload",
                        format!("historical_migration must be a boolean, got {other}"),
                    );
                }
            }
            match map.get("sent_at") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if is_rfc3339(s) => {}
                Some(other) => {
                    return error(
                        400,
                        "invalid_payload",
                        format!("sent_at {other} is not an RFC 3339 date-time"),
                    );
                }
            }
            let token = map
                .get("api_key")
                .and_then(Value::as_str)
                .or_else(|| map.get("token").and_then(Value::as_str))
                .map(str::to_owned);
            (events, Some(Value::Object(map)), token)
        }
        obj @ Value::Object(_) => (vec![obj], None, None),
        _ => {
            return error(
                400,
                "invalid_payload",
                "payload must be a JSON object or array",
            );
        }
    };

    // Every element must deserialize as capture's `RawEvent`: an object whose `event` is a
    // string (possibly empty). Otherwise it is a parse error (400) before the token check.
    for (index, event) in events.iter().enumerate() {
        match event.get("event") {
            Some(Value::String(_)) => {}
            _ => {
                let mut outcome = error(
                    400,
                    "invalid_payload",
                    format!("event at index {index}: not an event object with a string event name"),
                );
                outcome.rejected = vec![index];
                outcome.items = events.len();
                return outcome;
            }
        }
    }

    // Token.
    let token = match batch_token {
        Some(t) => t,
        None => {
            let mut found: Option<String> = None;
            for event in &events {
                match event_token(event) {
                    Ok(Some(t)) => match &found {
                        Some(f) if *f != t => {
                            return error(401, "multiple_tokens", "events carry different tokens");
                        }
                        Some(_) => {}
                        None => found = Some(t),
                    },
                    Ok(None) => {}
                    Err(msg) => return error(400, "invalid_payload", msg),
                }
            }
            match found {
                Some(t) => t,
                None => return error(401, "ingest_key_required", "API key is required"),
            }
        }
    };
    if let Err(msg) = check_token_shape(&token) {
        return error(401, "ingest_key_invalid", msg);
    }
    let unknown_token = token.trim() != cfg.api_key;
    if unknown_token && cfg.require_known_token {
        return error(
            401,
            "ingest_key_unknown",
            "API key is not a known project key",
        );
    }

    if events.is_empty() {
        return error(400, "empty_batch", "batch is empty");
    }
    let items = events.len();

    // Validate every event (the filtered ones included: capture parses them all).
    let mut errors = Vec::new();
    let mut uuids = Vec::with_capacity(items);
    for (index, event) in events.iter().enumerate() {
        match check_event(cfg, event) {
            Ok(uuid) => uuids.push(uuid),
            Err((field, message)) => {
                uuids.push(None);
                errors.push((index, field, message));
            }
        }
    }
    if let Some((index, _, first)) = errors.first() {
        let body = json!({
            "status": 400,
            "code": "invalid_event",
            "error": format!("event at index {index}: {first}"),
            "errors": errors
                .iter()
                .map(|(index, field, message)| json!({"index": index, "field": field, "message": message}))
                .collect::<Vec<_>>(),
        });
        let mut outcome = Outcome::json(400, &body);
        outcome.rejected = errors.iter().map(|(i, _, _)| *i).collect();
        outcome.items = items;
        return outcome;
    }

    // Oversized single events (only possible when the payload itself is that big).
    if payload.len() > cfg.max_event_bytes {
        for (index, event) in events.iter().enumerate() {
            let len = serde_json::to_vec(event)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if len > cfg.max_event_bytes {
                let mut outcome = error(
                    413,
                    "payload_too_large",
                    format!(
                        "event at index {index} is {len} bytes, over {}",
                        cfg.max_event_bytes
                    ),
                );
                outcome.items = items;
                return outcome;
            }
        }
    }

    let accepted = events
        .into_iter()
        .zip(uuids)
        .filter(|(event, _)| event.get("event").and_then(Value::as_str) != Some(FILTERED_EVENT))
        .map(|(value, uuid)| {
            let key = uuid
                .as_deref()
                .and_then(|u| uuid::Uuid::parse_str(u).ok())
                .map(|u| u.as_u128());
            Accepted {
                value,
                id: uuid,
                key,
                alt_key: None,
            }
        })
        .collect();

    let mut outcome = if beacon {
        Outcome::reply(204, "text/plain", "")
    } else {
        Outcome::json(200, &json!({"status": 1}))
    };
    outcome.accepted = accepted;
    outcome.items = items;
    outcome.envelope = envelope;
    outcome.unknown_token = unknown_token;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(body: &'a [u8], query: &'a str) -> RequestView<'a> {
        RequestView {
            method: "POST",
            query,
            content_type: Some("application/json"),
            content_encoding: None,
            authorization: None,
            body,
        }
    }

    fn ok_event(i: u32) -> Value {
        json!({"event": "e", "distinct_id": format!("u{i}"),
               "uuid": format!("00000000-0000-4000-8000-{i:012}"),
               "timestamp": "2024-05-01T12:00:00Z", "properties": {}})
    }

    #[test]
    fn routes_and_limits() {
        let cfg = PosthogConfig::default();
        for r in ["/batch", "/batch/", "/i/v0/e/", "/e", "/capture/"] {
            assert!(is_route(r), "{r}");
        }
        assert!(!is_route("/track") && !is_route("/") && !is_route("/engage"));
        assert_eq!(body_limit(&cfg, "/batch/"), cfg.batch_body_limit);
        assert_eq!(body_limit(&cfg, "/e/"), cfg.event_body_limit);
    }

    #[test]
    fn placeholders() {
        for id in [
            "anonymous",
            "GUEST",
            "null",
            "0",
            " ",
            "",
            "[object Object]",
            "Undefined",
        ] {
            assert!(is_placeholder_id(id), "{id}");
        }
        for id in ["NULL", "user-1", "00"] {
            assert!(!is_placeholder_id(id), "{id}");
        }
    }

    #[test]
    fn batch_ok_and_performance_events_filtered() {
        let cfg = PosthogConfig::default();
        let body = json!({"api_key": cfg.api_key, "batch": [ok_event(1),
            {"event": "$performance_event", "distinct_id": "u", "properties": {}}]})
        .to_string();
        let out = capture(&cfg, &view(body.as_bytes(), ""));
        assert_eq!(out.status, 200, "{}", out.body);
        assert_eq!(out.accepted.len(), 1);
        assert_eq!(out.items, 2);
        assert!(out.envelope.unwrap().get("batch").is_none());
    }

    #[test]
    fn beacon_gives_204() {
        let cfg = PosthogConfig::default();
        let mut ev = ok_event(1);
        ev["api_key"] = json!(cfg.api_key);
        let body = ev.to_string();
        let out = capture(&cfg, &view(body.as_bytes(), "beacon=1"));
        assert_eq!(out.status, 204);
    }

    #[test]
    fn token_rules() {
        let cfg = PosthogConfig::default();
        let cases = [
            (json!([ok_event(1)]), 401),
            (
                json!({"api_key": "phx_personal", "batch": [ok_event(1)]}),
                401,
            ),
            (json!({"api_key": "phc_other", "batch": [ok_event(1)]}), 401),
            (json!({"api_key": "", "batch": [ok_event(1)]}), 401),
            (
                json!({"api_key": "x".repeat(65), "batch": [ok_event(1)]}),
                401,
            ),
            // batch without api_key falls through to the single-event shape: 400
            (json!({"batch": [ok_event(1)]}), 400),
            (
                json!([{"token": cfg.api_key, "event": "a", "distinct_id": "u"},
                    {"token": "phc_b", "event": "a", "distinct_id": "u"}]),
                401,
            ),
            (
                json!([{"$token": cfg.api_key, "event": "a", "distinct_id": "u"},
                    {"event": "a", "distinct_id": "u", "properties": {"token": cfg.api_key}}]),
                200,
            ),
        ];
        for (body, status) in cases {
            let b = body.to_string();
            let out = capture(&cfg, &view(b.as_bytes(), ""));
            assert_eq!(out.status, status, "{body} -> {}", out.body);
        }
        let lax = PosthogConfig {
            require_known_token: false,
            ..PosthogConfig::default()
        };
        let b = json!({"api_key": "phc_other", "batch": [ok_event(1)]}).to_string();
        let out = capture(&lax, &view(b.as_bytes(), ""));
        assert_eq!(out.status, 200);
        assert!(out.unknown_token);
    }
}
