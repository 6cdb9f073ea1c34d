//! The strict Mixpanel handlers (pure: a request view in, an [`Outcome`] out).
//!
//! `/import` (API_SPECS.md §2.2–2.4): Basic auth (`token:`, a service account with
//! `?project_id=`, or the legacy API secret), `strict=1`, a JSON array or NDJSON, gzip by
//! `Content-Encoding`, at most `max_items` events and `max_import_bytes` uncompressed
//! (413 otherwise), per-event validation with the partial-success 400 listing
//! `failed_records` (the valid events are imported and counted).
//!
//! `/engage` and `/groups` (§2.5): a JSON array/object or form `data=` (JSON or base64), no
//! gzip (400), `$token` must be the project token, one operation per update; answer `1` when
//! at least one update was valid, `0` otherwise, or `{"status":1|0,"error":…}` with
//! `verbose=1`. `/track`: the same answers, `properties.token` required, gzip allowed.
//!
//! Stricter than Mixpanel on purpose: an empty `distinct_id` is rejected, and (configurable)
//! a `distinct_id` that differs from `$user_id` is rejected.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use super::config::MixpanelConfig;
use super::decode::{
    DecodeError, basic_auth, decode_base64_lenient, form_field, gunzip, is_gzip, key128, param,
    parse_query, starts_json,
};
use super::record::{Accepted, Endpoint, Outcome, RequestView};

/// 1971-01-01T00:00:00Z in milliseconds: the earliest `time` Mixpanel accepts.
const MIN_TIME_MS: i64 = 31_536_000_000;
/// A `time` at or above this is taken as milliseconds, below it as seconds.
const MS_THRESHOLD: i64 = 100_000_000_000;
/// How far in the future `time` may be.
const MAX_FUTURE_MS: i64 = 3_600_000;
/// How old a `/track` event may be (5 days).
const TRACK_MAX_AGE_MS: i64 = 5 * 24 * 3_600_000;
/// Slack on the raw `/import` body over the uncompressed cap (gzip can grow data slightly).
const IMPORT_RAW_SLACK: usize = 64 * 1024;

/// Values Mixpanel rejects as `distinct_id` or `$insert_id` (API_SPECS §2.3), any case.
const REJECTED_IDS: [&str; 17] = [
    "00000000-0000-0000-0000-000000000000",
    "anon",
    "anonymous",
    "nil",
    "none",
    "null",
    "n/a",
    "na",
    "undefined",
    "unknown",
    "<nil>",
    "0",
    "-1",
    "true",
    "false",
    "[]",
    "{}",
];

/// `/engage` operations.
const ENGAGE_OPS: [&str; 8] = [
    "$set",
    "$set_once",
    "$add",
    "$union",
    "$append",
    "$remove",
    "$unset",
    "$delete",
];
/// `/engage` keys that are not operations.
const ENGAGE_MODIFIERS: [&str; 8] = [
    "$token",
    "$distinct_id",
    "$ip",
    "$time",
    "$ignore_time",
    "$ignore_alias",
    "$latitude",
    "$longitude",
];
/// `/groups` operations.
const GROUP_OPS: [&str; 6] = [
    "$set",
    "$set_once",
    "$unset",
    "$remove",
    "$union",
    "$delete",
];
/// `/groups` keys that are not operations.
const GROUP_MODIFIERS: [&str; 4] = ["$token", "$group_key", "$group_id", "$time"];

/// Whether Mixpanel rejects `id` as an identifier.
pub(crate) fn is_rejected_id(id: &str) -> bool {
    let t = id.trim();
    REJECTED_IDS.iter().any(|r| t.eq_ignore_ascii_case(r))
}

/// Whether `id` is a valid `$insert_id`: 1–36 characters of `[A-Za-z0-9-]`, not rejected.
pub(crate) fn is_valid_insert_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 36
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !is_rejected_id(id)
}

/// The Mixpanel endpoint of `path`.
pub(crate) fn route(path: &str) -> Option<Endpoint> {
    match path.trim_end_matches('/') {
        "/import" => Some(Endpoint::MixpanelImport),
        "/track" => Some(Endpoint::MixpanelTrack),
        "/engage" => Some(Endpoint::MixpanelEngage),
        "/groups" => Some(Endpoint::MixpanelGroups),
        _ => None,
    }
}

/// The raw body limit of an endpoint.
pub(crate) fn body_limit(cfg: &MixpanelConfig, endpoint: Endpoint) -> usize {
    match endpoint {
        Endpoint::MixpanelImport => cfg.max_import_bytes + IMPORT_RAW_SLACK,
        _ => cfg.max_body_bytes,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// An `/import` error answer in the §2.4 shape.
fn import_error(status: u16, message: impl Into<String>) -> Outcome {
    Outcome::json(
        status,
        &json!({"code": status, "error": message.into(), "status": reason(status)}),
    )
}

/// The `/import` 401 answer.
fn unauthorized() -> Outcome {
    import_error(401, "Invalid credentials")
}

/// Answer for a body over the raw limit.
pub(crate) fn too_large(cfg: &MixpanelConfig, endpoint: Endpoint) -> Outcome {
    match endpoint {
        Endpoint::MixpanelImport => import_error(
            413,
            format!(
                "request exceeds max limit of {} bytes",
                cfg.max_import_bytes
            ),
        ),
        _ => Outcome::json(
            413,
            &json!({"error": format!("request exceeds max limit of {} bytes", cfg.max_body_bytes), "status": 0}),
        ),
    }
}

/// The usual Mixpanel body for an injected status.
pub(crate) fn fault_body(
    cfg: &MixpanelConfig,
    endpoint: Endpoint,
    status: u16,
) -> (&'static str, String) {
    let json = |v: Value| ("application/json", v.to_string());
    match (endpoint, status) {
        (Endpoint::MixpanelImport, 200..=299) => {
            json(json!({"code": 200, "num_records_imported": 0, "status": "OK"}))
        }
        (_, 200..=299) => ("text/plain", "1".to_owned()),
        (Endpoint::MixpanelImport, 401) => {
            json(json!({"code": 401, "error": "Invalid credentials", "status": "Unauthorized"}))
        }
        (_, 401 | 403) => json(json!({"error": "Invalid credentials", "status": "error"})),
        (_, 413) => {
            let limit = match endpoint {
                Endpoint::MixpanelImport => cfg.max_import_bytes,
                _ => cfg.max_body_bytes,
            };
            json(
                json!({"code": 413, "error": format!("request exceeds max limit of {limit} bytes"),
                        "status": reason(413)}),
            )
        }
        (_, 429) => json(json!({"code": 429,
            "error": "Project exceeded rate limits. Please retry the request with exponential backoff.",
            "status": reason(429)})),
        (_, s) => json(
            json!({"code": s, "error": format!("injected fault: {}", reason(s)), "status": reason(s)}),
        ),
    }
}

/// Current wall-clock time in ms since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A `(field, message)` validation failure.
type Failure = (&'static str, String);

/// Reads an identifier that may be a string or an integer.
fn id_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Checks `time` (seconds or ms) against `[min_ms, max_ms]`; returns it in ms.
fn check_time(v: &Value, min_ms: i64, max_ms: i64, field: &'static str) -> Result<i64, Failure> {
    let Some(t) = v.as_i64() else {
        return Err((
            field,
            format!(
                "'{field}' is invalid: must be specified as seconds or milliseconds since epoch (an integer), got {v}"
            ),
        ));
    };
    let ms = if t >= MS_THRESHOLD {
        t
    } else {
        t.saturating_mul(1000)
    };
    if ms < min_ms {
        return Err((
            field,
            format!("'{field}' is invalid: {t} is too far in the past"),
        ));
    }
    if ms > max_ms {
        return Err((
            field,
            format!("'{field}' is invalid: {t} is more than 1 hour in the future"),
        ));
    }
    Ok(ms)
}

/// An optional identity property (`$device_id`, `$user_id`): a non-rejected id when present.
fn optional_id(
    props: &Map<String, Value>,
    key: &'static str,
    field: &'static str,
) -> Result<Option<String>, Failure> {
    match props.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match id_value(v) {
            Some(id) if !id.trim().is_empty() && !is_rejected_id(&id) => Ok(Some(id)),
            _ => Err((
                field,
                format!("'{field}' is invalid: {v} is not an accepted identifier"),
            )),
        },
    }
}

/// Validates one `/import` event; returns the accepted item (with its dedup keys).
fn check_import_event(cfg: &MixpanelConfig, item: &Value, now: i64) -> Result<Accepted, Failure> {
    let Some(obj) = item.as_object() else {
        return Err(("event", "record must be a JSON object".to_owned()));
    };
    let event = match obj.get("event") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.as_str(),
        _ => return Err(("event", "'event' must be a non-empty string".to_owned())),
    };
    let Some(props) = obj.get("properties").and_then(Value::as_object) else {
        return Err(("properties", "'properties' must be an object".to_owned()));
    };
    let time = match props.get("time") {
        None | Some(Value::Null) => {
            return Err((
                "properties.time",
                "'properties.time' is required".to_owned(),
            ));
        }
        Some(v) => {
            check_time(v, MIN_TIME_MS, now + MAX_FUTURE_MS, "properties.time")?;
            v.to_string()
        }
    };
    let device = optional_id(props, "$device_id", "properties.$device_id")?;
    let user = optional_id(props, "$user_id", "properties.$user_id")?;
    let distinct = match props.get("distinct_id") {
        None | Some(Value::Null) => match (&user, &device) {
            (Some(u), _) => u.clone(),
            (None, Some(d)) => format!("$device:{d}"),
            (None, None) => {
                return Err((
                    "properties.distinct_id",
                    "'properties.distinct_id' is required (or $device_id / $user_id)".to_owned(),
                ));
            }
        },
        Some(v) => match id_value(v) {
            Some(id) if id.trim().is_empty() => {
                return Err((
                    "properties.distinct_id",
                    "'properties.distinct_id' is empty".to_owned(),
                ));
            }
            Some(id) if is_rejected_id(&id) => {
                return Err((
                    "properties.distinct_id",
                    format!("'properties.distinct_id' is invalid: {id:?} is a rejected value"),
                ));
            }
            Some(id) => id,
            None => {
                return Err((
                    "properties.distinct_id",
                    format!("'properties.distinct_id' must be a string, got {v}"),
                ));
            }
        },
    };
    if cfg.check_simplified_id_merge {
        if let Some(u) = &user {
            if props.get("distinct_id").is_some_and(|v| !v.is_null()) && distinct != *u {
                return Err((
                    "properties.distinct_id",
                    format!("'properties.distinct_id' {distinct:?} differs from $user_id {u:?}"),
                ));
            }
        }
    }
    let insert_id = match props.get("$insert_id") {
        Some(Value::String(s)) if is_valid_insert_id(s) => s.clone(),
        Some(Value::String(s)) => {
            return Err((
                "properties.$insert_id",
                format!(
                    "'properties.$insert_id' {s:?} is invalid: at most 36 characters of [A-Za-z0-9-], not a rejected value"
                ),
            ));
        }
        None | Some(Value::Null) => {
            return Err((
                "properties.$insert_id",
                "'properties.$insert_id' is required".to_owned(),
            ));
        }
        Some(other) => {
            return Err((
                "properties.$insert_id",
                format!("'properties.$insert_id' must be a string, got {other}"),
            ));
        }
    };
    match props.get("token") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if *t == cfg.token => {}
        Some(other) => {
            return Err((
                "properties.token",
                format!("'properties.token' {other} does not match the project"),
            ));
        }
    }
    Ok(Accepted {
        value: item.clone(),
        key: Some(key128(&[event, &time, &distinct, &insert_id])),
        alt_key: Some(key128(&[&insert_id])),
        id: Some(insert_id),
    })
}

/// Checks `/import` credentials; `Some(answer)` when they are refused.
fn check_import_auth(
    cfg: &MixpanelConfig,
    req: &RequestView<'_>,
    query: &[(String, String)],
) -> Option<Outcome> {
    let Some((user, pass)) = req.authorization.and_then(basic_auth) else {
        return Some(unauthorized());
    };
    if user == cfg.token && pass.is_empty() {
        return None;
    }
    if cfg.api_secret.as_deref().is_some_and(|s| s == user) {
        return None;
    }
    if let Some(sa) = &cfg.service_account {
        if sa.username == user && sa.secret == pass {
            return match param(query, "project_id") {
                Some(id) if id == sa.project_id => None,
                Some(_) => Some(import_error(
                    401,
                    "service account has no access to this project_id",
                )),
                None => Some(import_error(
                    401,
                    "project_id query parameter is required with service account credentials",
                )),
            };
        }
    }
    Some(unauthorized())
}

/// Handles `/import`. `partial` lists indexes a fault fails on top of validation.
pub(crate) fn import(
    cfg: &MixpanelConfig,
    req: &RequestView<'_>,
    partial: &[usize],
    now: i64,
) -> Outcome {
    if req.method != "POST" {
        return import_error(405, "method not allowed");
    }
    let query = parse_query(req.query);
    if let Some(outcome) = check_import_auth(cfg, req, &query) {
        return outcome;
    }
    let strict = param(&query, "strict") == Some("1");
    if !strict && cfg.require_strict {
        return import_error(400, "the mock requires strict=1 on /import");
    }

    let encoding = req.content_encoding.map(str::to_ascii_lowercase);
    let gzipped = match encoding.as_deref() {
        None | Some("" | "identity") => false,
        Some("gzip") => true,
        Some(other) => return import_error(415, format!("unsupported Content-Encoding {other:?}")),
    };
    let payload: Cow<'_, [u8]> = if gzipped {
        match gunzip(req.body, cfg.max_import_bytes) {
            Ok(p) => Cow::Owned(p),
            Err(DecodeError::TooLarge(_)) => return too_large(cfg, Endpoint::MixpanelImport),
            Err(DecodeError::Invalid(m)) => return import_error(400, m),
        }
    } else {
        Cow::Borrowed(req.body)
    };
    if payload.len() > cfg.max_import_bytes {
        return too_large(cfg, Endpoint::MixpanelImport);
    }
    let decoded_bytes = payload.len();
    let mut outcome = import_payload(cfg, req, &payload, strict, partial, now);
    outcome.decoded_bytes = decoded_bytes;
    outcome.gzipped = gzipped;
    outcome
}

fn import_payload(
    cfg: &MixpanelConfig,
    req: &RequestView<'_>,
    payload: &[u8],
    strict: bool,
    partial: &[usize],
    now: i64,
) -> Outcome {
    let Ok(text) = std::str::from_utf8(payload) else {
        return import_error(400, "request body is not valid UTF-8");
    };
    let ndjson = req
        .content_type
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("ndjson"))
        || text.trim_start().starts_with('{');
    let items: Vec<Value> = if ndjson {
        let mut items = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(line) {
                Ok(v) => items.push(v),
                Err(e) => {
                    return import_error(
                        400,
                        format!("unable to parse NDJSON line {}: {e}", n + 1),
                    );
                }
            }
        }
        items
    } else {
        match serde_json::from_str(text) {
            Ok(Value::Array(items)) => items,
            Ok(_) => return import_error(400, "request body must be a JSON array of events"),
            Err(e) => return import_error(400, format!("unable to parse JSON: {e}")),
        }
    };
    if items.is_empty() {
        return import_error(400, "request contains no events");
    }
    if items.len() > cfg.max_items {
        return import_error(
            413,
            format!("request exceeds max limit of {} events", cfg.max_items),
        );
    }
    let count = items.len();
    let mut accepted = Vec::with_capacity(count);
    let mut failed = Vec::new();
    let mut rejected = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let size_fail = (payload.len() > cfg.max_event_bytes)
            .then(|| {
                serde_json::to_vec(item)
                    .map(|v| v.len())
                    .unwrap_or(usize::MAX)
            })
            .filter(|len| *len > cfg.max_event_bytes)
            .map(|len| {
                (
                    "event",
                    format!(
                        "event is {len} bytes, over the {} byte limit",
                        cfg.max_event_bytes
                    ),
                )
            });
        let result = match size_fail {
            Some(f) => Err(f),
            None if partial.contains(&index) => Err(("fault", "injected failure".to_owned())),
            None => check_import_event(cfg, item, now),
        };
        match result {
            Ok(a) => accepted.push(a),
            Err((field, message)) => {
                let insert_id = item
                    .get("properties")
                    .and_then(|p| p.get("$insert_id"))
                    .cloned()
                    .unwrap_or(Value::Null);
                failed.push(
                    json!({"index": index, "insert_id": insert_id, "$insert_id": insert_id,
                                   "field": field, "message": message}),
                );
                rejected.push(index);
            }
        }
    }
    let imported = accepted.len();
    let mut outcome = if failed.is_empty() || !strict {
        Outcome::json(
            200,
            &json!({"code": 200, "num_records_imported": imported, "status": "OK"}),
        )
    } else {
        Outcome::json(
            400,
            &json!({"code": 400, "error": "some data points in the request failed validation",
                    "status": "Bad Request", "num_records_imported": imported, "failed_records": failed}),
        )
    };
    outcome.accepted = accepted;
    outcome.rejected = rejected;
    outcome.items = count;
    outcome
}

/// Reads the JSON of `/track`, `/engage`, `/groups`: form `data=` (JSON or base64), or the
/// body itself. Returns the items and whether the body was gzip.
fn read_items(
    req: &RequestView<'_>,
    allow_gzip: bool,
    gzip_cap: usize,
) -> Result<(Vec<Value>, bool, usize), String> {
    let gzip_header = req
        .content_encoding
        .is_some_and(|ce| ce.eq_ignore_ascii_case("gzip"));
    let gzipped = gzip_header || is_gzip(req.body);
    if gzipped && !allow_gzip {
        return Err("gzip request bodies are not supported on this endpoint".to_owned());
    }
    let body: Cow<'_, [u8]> = if gzipped {
        Cow::Owned(gunzip(req.body, gzip_cap).map_err(|e| match e {
            DecodeError::TooLarge(cap) => format!("decompressed body exceeds {cap} bytes"),
            DecodeError::Invalid(m) => m,
        })?)
    } else {
        Cow::Borrowed(req.body)
    };
    let data: Cow<'_, [u8]> = if req.is_form() {
        match form_field(&body, "data") {
            Some(d) => Cow::Owned(d),
            None => return Err("form body without a data field".to_owned()),
        }
    } else {
        body
    };
    let json: Cow<'_, [u8]> = if starts_json(&data) {
        data
    } else {
        match decode_base64_lenient(&String::from_utf8_lossy(&data)) {
            Some(d) => Cow::Owned(d),
            None => return Err("data is neither JSON nor base64".to_owned()),
        }
    };
    let decoded = json.len();
    match serde_json::from_slice(&json) {
        Ok(Value::Array(items)) => Ok((items, gzipped, decoded)),
        Ok(obj @ Value::Object(_)) => Ok((vec![obj], gzipped, decoded)),
        Ok(_) => Err("data must be a JSON object or array".to_owned()),
        Err(e) => Err(format!("unable to parse JSON: {e}")),
    }
}

/// The `1`/`0` (or verbose JSON) answer of `/track`, `/engage`, `/groups`.
fn received(
    status: u16,
    verbose: bool,
    ok: bool,
    error: Option<String>,
    failed: Vec<Value>,
) -> Outcome {
    if verbose {
        let mut body = json!({"status": u8::from(ok), "error": error});
        if !failed.is_empty() {
            body["failed_records"] = Value::Array(failed);
        }
        Outcome::json(status, &body)
    } else {
        Outcome::reply(status, "text/plain", if ok { "1" } else { "0" })
    }
}

/// Validates one `/engage` or `/groups` update.
fn check_update(cfg: &MixpanelConfig, endpoint: Endpoint, item: &Value) -> Result<(), Failure> {
    let Some(obj) = item.as_object() else {
        return Err(("update", "update must be a JSON object".to_owned()));
    };
    match obj.get("$token") {
        Some(Value::String(t)) if *t == cfg.token => {}
        None | Some(Value::Null) => return Err(("$token", "missing $token".to_owned())),
        Some(other) => {
            return Err((
                "$token",
                format!("$token {other} does not match the project"),
            ));
        }
    }
    let (ops, modifiers): (&[&str], &[&str]) = if endpoint == Endpoint::MixpanelGroups {
        match obj.get("$group_key") {
            Some(Value::String(k)) if !k.trim().is_empty() => {}
            _ => {
                return Err((
                    "$group_key",
                    "$group_key must be a non-empty string".to_owned(),
                ));
            }
        }
        match obj.get("$group_id").and_then(id_value) {
            Some(id) if !id.trim().is_empty() => {}
            _ => {
                return Err((
                    "$group_id",
                    "$group_id must be a non-empty string or integer".to_owned(),
                ));
            }
        }
        (&GROUP_OPS, &GROUP_MODIFIERS)
    } else {
        match obj.get("$distinct_id").and_then(id_value) {
            Some(id) if id.trim().is_empty() => {
                return Err(("$distinct_id", "$distinct_id is empty".to_owned()));
            }
            Some(id) if is_rejected_id(&id) => {
                return Err((
                    "$distinct_id",
                    format!("$distinct_id {id:?} is a rejected value"),
                ));
            }
            Some(_) => {}
            None => {
                return Err((
                    "$distinct_id",
                    "$distinct_id must be a string or integer".to_owned(),
                ));
            }
        }
        (&ENGAGE_OPS, &ENGAGE_MODIFIERS)
    };
    let mut op = None;
    for (key, value) in obj {
        if modifiers.contains(&key.as_str()) {
            continue;
        }
        if !ops.contains(&key.as_str()) {
            return Err(("operation", format!("unknown key {key:?}")));
        }
        if let Some(first) = op.replace(key.as_str()) {
            return Err((
                "operation",
                format!("more than one operation ({first}, {key}); send one per update"),
            ));
        }
        check_operation(key, value)?;
    }
    if op.is_none() {
        return Err((
            "operation",
            format!("no operation (one of {})", ops.join(", ")),
        ));
    }
    Ok(())
}

/// Checks the value of one update operation.
fn check_operation(op: &str, value: &Value) -> Result<(), Failure> {
    let fail = |what: &str| Err(("operation", format!("{op} {what}, got {value}")));
    match op {
        "$delete" => Ok(()),
        "$unset" => match value {
            Value::Array(keys) if keys.iter().all(Value::is_string) => Ok(()),
            _ => fail("must be an array of property names"),
        },
        _ => {
            let Some(map) = value.as_object() else {
                return fail("must be an object");
            };
            match op {
                "$add" if !map.values().all(Value::is_number) => fail("values must be numbers"),
                "$union" if !map.values().all(Value::is_array) => fail("values must be arrays"),
                _ => Ok(()),
            }
        }
    }
}

/// Handles `/engage` and `/groups`.
pub(crate) fn updates(cfg: &MixpanelConfig, req: &RequestView<'_>, endpoint: Endpoint) -> Outcome {
    let verbose = param(&parse_query(req.query), "verbose") == Some("1");
    if req.method != "POST" {
        return received(
            405,
            verbose,
            false,
            Some("method not allowed".to_owned()),
            Vec::new(),
        );
    }
    let (items, _, decoded) = match read_items(req, false, cfg.max_body_bytes) {
        Ok(r) => r,
        Err(message) => return received(400, verbose, false, Some(message), Vec::new()),
    };
    if items.len() > cfg.max_items {
        let message = format!("request exceeds max limit of {} updates", cfg.max_items);
        return received(413, verbose, false, Some(message), Vec::new());
    }
    let count = items.len();
    let mut accepted = Vec::new();
    let mut failed = Vec::new();
    let mut rejected = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match check_update(cfg, endpoint, &item) {
            Ok(()) => {
                let id = match endpoint {
                    Endpoint::MixpanelGroups => item.get("$group_id").and_then(id_value),
                    _ => item.get("$distinct_id").and_then(id_value),
                };
                accepted.push(Accepted {
                    value: item,
                    id,
                    key: None,
                    alt_key: None,
                });
            }
            Err((field, message)) => {
                failed.push(json!({"index": index, "field": field, "message": message}));
                rejected.push(index);
            }
        }
    }
    let ok = !accepted.is_empty();
    let error = match (failed.first(), count) {
        (_, 0) => Some("no updates in the request".to_owned()),
        (Some(f), _) => f.get("message").and_then(Value::as_str).map(str::to_owned),
        (None, _) => None,
    };
    let mut outcome = received(200, verbose, ok, error, failed);
    outcome.accepted = accepted;
    outcome.rejected = rejected;
    outcome.items = count;
    outcome.decoded_bytes = decoded;
    outcome
}

/// Validates one `/track` event.
fn check_track_event(cfg: &MixpanelConfig, item: &Value, now: i64) -> Result<Accepted, Failure> {
    let Some(obj) = item.as_object() else {
        return Err(("event", "event must be a JSON object".to_owned()));
    };
    let event = match obj.get("event") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.as_str(),
        _ => return Err(("event", "'event' must be a non-empty string".to_owned())),
    };
    let Some(props) = obj.get("properties").and_then(Value::as_object) else {
        return Err(("properties", "'properties' must be an object".to_owned()));
    };
    match props.get("token") {
        Some(Value::String(t)) if *t == cfg.token => {}
        None | Some(Value::Null) => {
            return Err(("properties.token", "missing properties.token".to_owned()));
        }
        Some(other) => {
            return Err((
                "properties.token",
                format!("'properties.token' {other} does not match the project"),
            ));
        }
    }
    let time = match props.get("time") {
        None | Some(Value::Null) => None,
        Some(v) => {
            check_time(
                v,
                now - TRACK_MAX_AGE_MS,
                now + MAX_FUTURE_MS,
                "properties.time",
            )?;
            Some(v.to_string())
        }
    };
    let distinct = match props.get("distinct_id") {
        None | Some(Value::Null) => None,
        Some(v) => match id_value(v) {
            Some(id) if !id.trim().is_empty() && !is_rejected_id(&id) => Some(id),
            _ => {
                return Err((
                    "properties.distinct_id",
                    format!("'properties.distinct_id' {v} is not accepted"),
                ));
            }
        },
    };
    let insert_id = match props.get("$insert_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_valid_insert_id(s) => Some(s.clone()),
        Some(other) => {
            return Err((
                "properties.$insert_id",
                format!("'properties.$insert_id' {other} is invalid"),
            ));
        }
    };
    let (key, alt_key) = match (&insert_id, &time) {
        (Some(id), Some(t)) => (
            Some(key128(&[event, t, distinct.as_deref().unwrap_or(""), id])),
            Some(key128(&[id])),
        ),
        (Some(id), None) => (None, Some(key128(&[id]))),
        _ => (None, None),
    };
    Ok(Accepted {
        value: item.clone(),
        id: insert_id,
        key,
        alt_key,
    })
}

/// Handles `/track`.
pub(crate) fn track(cfg: &MixpanelConfig, req: &RequestView<'_>, now: i64) -> Outcome {
    let verbose = param(&parse_query(req.query), "verbose") == Some("1");
    if req.method != "POST" {
        return received(
            405,
            verbose,
            false,
            Some("method not allowed".to_owned()),
            Vec::new(),
        );
    }
    let (items, gzipped, decoded) = match read_items(req, true, cfg.max_body_bytes) {
        Ok(r) => r,
        Err(message) => return received(400, verbose, false, Some(message), Vec::new()),
    };
    if items.len() > cfg.max_items {
        let message = format!("request exceeds max limit of {} events", cfg.max_items);
        return received(413, verbose, false, Some(message), Vec::new());
    }
    let count = items.len();
    let mut accepted = Vec::new();
    let mut failed = Vec::new();
    let mut rejected = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match check_track_event(cfg, item, now) {
            Ok(a) => accepted.push(a),
            Err((field, message)) => {
                failed.push(json!({"index": index, "field": field, "message": message}));
                rejected.push(index);
            }
        }
    }
    let error = match (failed.first(), count) {
        (_, 0) => Some("no events in the request".to_owned()),
        (Some(f), _) => f.get("message").and_then(Value::as_str).map(str::to_owned),
        (None, _) => None,
    };
    let mut outcome = received(200, verbose, !accepted.is_empty(), error, failed);
    outcome.accepted = accepted;
    outcome.rejected = rejected;
    outcome.items = count;
    outcome.decoded_bytes = decoded;
    outcome.gzipped = gzipped;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_id_rules() {
        assert!(is_valid_insert_id("abc-123"));
        assert!(is_valid_insert_id(&"a".repeat(36)));
        assert!(!is_valid_insert_id(&"a".repeat(37)));
        assert!(!is_valid_insert_id("a_b"));
        assert!(!is_valid_insert_id(""));
        assert!(!is_valid_insert_id("undefined"));
        assert!(!is_valid_insert_id("00000000-0000-0000-0000-000000000000"));
    }

    #[test]
    fn time_in_seconds_or_ms() {
        let now = 1_700_000_000_000;
        let max = now + MAX_FUTURE_MS;
        assert_eq!(
            check_time(&json!(1_600_000_000), MIN_TIME_MS, max, "t").unwrap(),
            1_600_000_000_000
        );
        assert_eq!(
            check_time(&json!(1_600_000_000_123_i64), MIN_TIME_MS, max, "t").unwrap(),
            1_600_000_000_123
        );
        assert!(check_time(&json!(31_535_999), MIN_TIME_MS, max, "t").is_err());
        assert!(check_time(&json!(31_536_000), MIN_TIME_MS, max, "t").is_ok());
        assert!(check_time(&json!(now + MAX_FUTURE_MS + 1), MIN_TIME_MS, max, "t").is_err());
        assert!(check_time(&json!(now + MAX_FUTURE_MS), MIN_TIME_MS, max, "t").is_ok());
        assert!(check_time(&json!(1.5e9), MIN_TIME_MS, max, "t").is_err());
        assert!(check_time(&json!("1600000000"), MIN_TIME_MS, max, "t").is_err());
    }

    #[test]
    fn update_operations() {
        let cfg = MixpanelConfig::default();
        let t = cfg.token.clone();
        let ok = [
            json!({"$token": t, "$distinct_id": "u1", "$set": {"a": 1}}),
            json!({"$token": t, "$distinct_id": "u1", "$ip": "0", "$add": {"n": 2}}),
            json!({"$token": t, "$distinct_id": 42, "$unset": ["a"]}),
            json!({"$token": t, "$distinct_id": "u1", "$delete": ""}),
        ];
        for u in ok {
            assert!(
                check_update(&cfg, Endpoint::MixpanelEngage, &u).is_ok(),
                "{u}"
            );
        }
        let bad = [
            json!({"$distinct_id": "u1", "$set": {}}),
            json!({"$token": "x", "$distinct_id": "u1", "$set": {}}),
            json!({"$token": t, "$set": {}}),
            json!({"$token": t, "$distinct_id": "null", "$set": {}}),
            json!({"$token": t, "$distinct_id": "u1"}),
            json!({"$token": t, "$distinct_id": "u1", "$set": {}, "$set_once": {}}),
            json!({"$token": t, "$distinct_id": "u1", "$add": {"n": "2"}}),
            json!({"$token": t, "$distinct_id": "u1", "$union": {"n": 2}}),
            json!({"$token": t, "$distinct_id": "u1", "$unset": "a"}),
            json!({"$token": t, "$distinct_id": "u1", "$set": [1]}),
            json!({"$token": t, "$distinct_id": "u1", "name": "x"}),
            json!([1]),
        ];
        for u in bad {
            assert!(
                check_update(&cfg, Endpoint::MixpanelEngage, &u).is_err(),
                "{u}"
            );
        }
        let g =
            json!({"$token": t, "$group_key": "company", "$group_id": "acme", "$set": {"a": 1}});
        assert!(check_update(&cfg, Endpoint::MixpanelGroups, &g).is_ok());
        let g =
            json!({"$token": t, "$group_key": "company", "$group_id": "acme", "$add": {"a": 1}});
        assert!(check_update(&cfg, Endpoint::MixpanelGroups, &g).is_err());
        let g = json!({"$token": t, "$group_id": "acme", "$set": {"a": 1}});
        assert!(check_update(&cfg, Endpoint::MixpanelGroups, &g).is_err());
    }
}
