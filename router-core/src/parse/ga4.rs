//! GA4 Measurement Protocol bodies (`/mp/collect`) and the validation of `/debug/mp/collect`.

use serde::Serialize;
use serde_json::{Map, Value};
use simd_json::BorrowedValue;
use simd_json::prelude::*;

use crate::enrich;
use crate::error::{FieldError, RequestError};
use crate::event::{Event, Kind, Source, is_placeholder_id};
use crate::parse::convert::capped_value_to_json;
use crate::parse::{Batch, Ingest, Item, Parser, parse_json};
use crate::time::Timestamp;

/// Google's per-request and per-name limits (GA4 MP "Limitations").
const MAX_EVENTS: usize = 25;
const MAX_PARAMS: usize = 25;
const MAX_USER_PROPS: usize = 25;
const MAX_EVENT_NAME: usize = 40;
const MAX_PARAM_NAME: usize = 40;
const MAX_PARAM_VALUE: usize = 100;
/// Page parameters may be longer; Google's exact figure is not published, so be generous.
const MAX_PAGE_PARAM_VALUE: usize = 1000;
const MAX_USER_PROP_NAME: usize = 24;
const MAX_USER_PROP_VALUE: usize = 36;
const MAX_USER_ID: usize = 256;
const MAX_BODY: usize = 130 * 1024;

const RESERVED_EVENTS: &[&str] = &[
    "app_remove",
    "app_store_refund",
    "app_store_subscription_cancel",
    "app_store_subscription_renew",
    "click",
    "error",
    "file_download",
    "first_open",
    "first_visit",
    "form_start",
    "form_submit",
    "in_app_purchase",
    "page_view",
    "scroll",
    "session_start",
    "user_engagement",
    "view_complete",
    "video_progress",
    "video_start",
    "view_search_results",
];
const RESERVED_PARAM_PREFIXES: &[&str] = &["_", "firebase_", "ga_", "google_", "gtag."];
const RESERVED_USER_PROPS: &[&str] = &[
    "first_open_time",
    "first_visit_time",
    "last_deep_link_referrer",
    "user_id",
    "first_open_after_install",
];
const RESERVED_USER_PROP_PREFIXES: &[&str] = &["_", "firebase_", "ga_", "google_"];

/// One message of the `/debug/mp/collect` answer, as Google words it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationMessage {
    /// Path of the field at fault (`events`, `events[0].name`, `user_properties`, ...).
    pub field_path: String,
    /// Human description.
    pub description: String,
    /// `VALUE_INVALID`, `VALUE_REQUIRED`, `NAME_INVALID`, `NAME_RESERVED`, `VALUE_OUT_OF_BOUNDS`,
    /// `EXCEEDED_MAX_ENTITIES` or `NAME_DUPLICATED`.
    pub validation_code: &'static str,
}

/// The `/debug/mp/collect` answer body: `{"validationMessages": [...]}`; empty means valid.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ga4Validation {
    /// Every problem found.
    pub validation_messages: Vec<ValidationMessage>,
}

impl Ga4Validation {
    fn push(&mut self, path: impl Into<String>, code: &'static str, description: String) {
        self.validation_messages.push(ValidationMessage {
            field_path: path.into(),
            description,
            validation_code: code,
        });
    }
}

/// `[A-Za-z][A-Za-z0-9_]*`.
fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn micros_field(
    o: &simd_json::borrowed::Object<'_>,
    key: &str,
) -> Result<Option<Timestamp>, FieldError> {
    let us = match o.get(key) {
        None => return Ok(None),
        Some(v) if v.is_null() => return Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| FieldError::new(key, "must be an integer number of microseconds"))?,
    };
    Timestamp::from_millis(us.div_euclid(1000))
        .map(Some)
        .ok_or_else(|| FieldError::new(key, "is outside the years 1 to 9999"))
}

fn str_field(
    o: &simd_json::borrowed::Object<'_>,
    key: &str,
) -> Result<Option<String>, RequestError> {
    match o.get(key) {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(BorrowedValue::String(s)) => Ok(Some(s.to_string())),
        Some(v) => match v.as_i64() {
            Some(i) => Ok(Some(i.to_string())),
            None => Err(RequestError::field_error(key, "must be a string")),
        },
    }
}

impl Parser {
    /// Parses a GA4 Measurement Protocol body into one event per `events[]` entry.
    ///
    /// `client_id` (or `app_instance_id`) becomes `anonymousId`, `user_id` `userId`, `params`
    /// the properties, `user_properties.*.value` the traits; `page_view` becomes a page call.
    /// GA4 has no message id, so each event gets a fresh one from `ctx.ids`.
    pub fn parse_ga4(&self, body: &mut [u8], ctx: &mut Ingest<'_>) -> Result<Batch, RequestError> {
        self.check_body(body)?;
        let v = parse_json(body)?;
        let Some(o) = v.as_object() else {
            return Err(RequestError::field_error("$", "body must be a JSON object"));
        };
        let anonymous_id = match str_field(o, "client_id")? {
            Some(id) => Some(id),
            None => str_field(o, "app_instance_id")?,
        }
        .filter(|id| !is_placeholder_id(id));
        let user_id = str_field(o, "user_id")?.filter(|id| !is_placeholder_id(id));
        if anonymous_id.is_none() && user_id.is_none() {
            return Err(RequestError::field_error("client_id", "is required"));
        }
        let request_ts = micros_field(o, "timestamp_micros").map_err(RequestError::Field)?;
        let events = match o.get("events") {
            Some(BorrowedValue::Array(a)) => a.as_slice(),
            Some(_) => return Err(RequestError::field_error("events", "must be an array")),
            None => return Err(RequestError::field_error("events", "is required")),
        };
        self.check_count(events.len())?;
        // User properties and context fields are copied into every event: they are held to
        // the per-event depth cap, and their size counts towards each event's size cap.
        let capped = |key: &str, v: &BorrowedValue<'_>| {
            capped_value_to_json(v, 2, &self.limits, self.limits.max_event_bytes)
                .map_err(|reason| RequestError::field_error(key, reason))
        };
        let mut shared_bytes = 0;
        let mut traits = Map::new();
        match o.get("user_properties") {
            None => {}
            Some(BorrowedValue::Object(up)) => {
                for (k, p) in up.iter() {
                    if let Some(val) = p.get("value") {
                        let (val, size) = capped("user_properties", val)?;
                        shared_bytes += k.len() + 4 + size;
                        traits.insert(k.to_string(), val);
                    }
                }
            }
            Some(v) if v.is_null() => {}
            Some(_) => {
                return Err(RequestError::field_error(
                    "user_properties",
                    "must be a JSON object",
                ));
            }
        }
        let mut context = Map::new();
        if let Some(ip) = o.get("ip_override").and_then(|v| v.as_str()) {
            context.insert("ip".into(), Value::String(ip.to_owned()));
        }
        for key in ["user_location", "device", "consent", "user_agent"] {
            if let Some(v) = o.get(key).filter(|v| !v.is_null()) {
                let (v, size) = capped(key, v)?;
                shared_bytes += key.len() + 4 + size;
                context.insert(key.to_owned(), v);
            }
        }
        if let Some(mid) = o.get("measurement_id").and_then(|v| v.as_str()) {
            context.insert("measurement_id".into(), Value::String(mid.to_owned()));
        }
        let items = events
            .iter()
            .map(|ev| {
                let raw = || ev.encode();
                match self.ga4_event(
                    ev,
                    &anonymous_id,
                    &user_id,
                    request_ts,
                    (&traits, &context, shared_bytes),
                    ctx,
                ) {
                    Ok(e) => Item::Accepted(e),
                    Err(error) => Item::Rejected { error, raw: raw() },
                }
            })
            .collect();
        Ok(Batch {
            items,
            write_key: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn ga4_event(
        &self,
        ev: &BorrowedValue<'_>,
        anonymous_id: &Option<String>,
        user_id: &Option<String>,
        request_ts: Option<Timestamp>,
        (traits, context, shared_bytes): (&crate::event::Object, &crate::event::Object, usize),
        ctx: &mut Ingest<'_>,
    ) -> Result<Event, FieldError> {
        let o = ev
            .as_object()
            .ok_or_else(|| FieldError::new("$", "must be a JSON object"))?;
        let name = match o.get("name") {
            Some(BorrowedValue::String(n)) if !n.trim().is_empty() => n.as_ref(),
            Some(BorrowedValue::String(_)) => {
                return Err(FieldError::new("name", "must not be empty"));
            }
            None => return Err(FieldError::new("name", "is required")),
            Some(_) => return Err(FieldError::new("name", "must be a string")),
        };
        if name.chars().count() > self.limits.max_name_chars {
            return Err(FieldError::new(
                "name",
                format!("is longer than {} characters", self.limits.max_name_chars),
            ));
        }
        let too_big = || {
            FieldError::new(
                "$",
                format!(
                    "event is larger than the cap of {} bytes",
                    self.limits.max_event_bytes
                ),
            )
        };
        if shared_bytes > self.limits.max_event_bytes {
            return Err(too_big());
        }
        let properties = match o.get("params") {
            None => Map::new(),
            Some(v) if v.is_null() => Map::new(),
            Some(v @ BorrowedValue::Object(p)) => {
                if p.len() > self.limits.max_properties {
                    return Err(FieldError::new(
                        "params",
                        format!("has more than {} keys", self.limits.max_properties),
                    ));
                }
                let size = v.encode().len() + shared_bytes;
                if size > self.limits.max_event_bytes {
                    return Err(too_big());
                }
                match capped_value_to_json(v, 1, &self.limits, usize::MAX) {
                    Ok((Value::Object(m), _)) => m,
                    Ok(_) => Map::new(),
                    Err(reason) => return Err(FieldError::new("params", reason)),
                }
            }
            Some(_) => return Err(FieldError::new("params", "must be a JSON object")),
        };
        let ts = micros_field(o, "timestamp_micros")?.or(request_ts);
        let kind = if name == "page_view" {
            Kind::Page
        } else {
            Kind::Track
        };
        let mut context = context.clone();
        let mut page = Map::new();
        for (param, key) in [
            ("page_location", "url"),
            ("page_referrer", "referrer"),
            ("page_title", "title"),
        ] {
            if let Some(Value::String(s)) = properties.get(param) {
                page.insert(key.to_owned(), Value::String(s.clone()));
            }
        }
        if !page.is_empty() {
            context.insert("page".into(), Value::Object(page));
        }
        let mut event = Event {
            message_id: ctx.ids.next_id(),
            kind,
            name: self.canonical_name(name).to_owned(),
            user_id: user_id.clone(),
            anonymous_id: anonymous_id.clone(),
            group_id: None,
            previous_id: None,
            timestamp: enrich::correct_skew(ts, None, ctx.received_at),
            received_at: ctx.received_at,
            properties,
            traits: traits.clone(),
            context,
            integrations: Map::new(),
            source: Source::Ga4,
        };
        enrich::normalise_utm(&mut event);
        Ok(event)
    }

    /// Validates a GA4 body as `/debug/mp/collect` does, without keeping anything.
    ///
    /// Returns a request error only when the body is not JSON at all; everything else is
    /// reported as validation messages, as Google does.
    pub fn validate_ga4(&self, body: &mut [u8]) -> Result<Ga4Validation, RequestError> {
        let mut out = Ga4Validation::default();
        if body.len() > MAX_BODY {
            out.push(
                "",
                "VALUE_OUT_OF_BOUNDS",
                format!(
                    "Post body is {} bytes, over the limit of {MAX_BODY} bytes.",
                    body.len()
                ),
            );
        }
        let v = parse_json(body)?;
        let Some(o) = v.as_object() else {
            out.push("", "VALUE_INVALID", "Body must be a JSON object.".into());
            return Ok(out);
        };
        let has_id = ["client_id", "app_instance_id"].iter().any(|k| {
            o.get(*k)
                .and_then(|v| v.as_str())
                .is_some_and(|s| !s.is_empty())
        });
        if !has_id {
            out.push(
                "client_id",
                "VALUE_REQUIRED",
                "Field client_id is required.".into(),
            );
        }
        if let Some(uid) = o.get("user_id").and_then(|v| v.as_str()) {
            if uid.chars().count() > MAX_USER_ID {
                out.push(
                    "user_id",
                    "VALUE_OUT_OF_BOUNDS",
                    format!("user_id is longer than {MAX_USER_ID} characters."),
                );
            }
        }
        match o.get("events") {
            Some(BorrowedValue::Array(events)) => {
                if events.is_empty() {
                    out.push(
                        "events",
                        "VALUE_REQUIRED",
                        "At least one event is required.".into(),
                    );
                }
                if events.len() > MAX_EVENTS {
                    out.push(
                        "events",
                        "EXCEEDED_MAX_ENTITIES",
                        format!(
                            "A request may have at most {MAX_EVENTS} events; it has {}.",
                            events.len()
                        ),
                    );
                }
                for (i, ev) in events.iter().enumerate() {
                    validate_event(i, ev, &mut out);
                }
            }
            Some(_) => out.push("events", "VALUE_INVALID", "events must be an array.".into()),
            None => out.push(
                "events",
                "VALUE_REQUIRED",
                "Field events is required.".into(),
            ),
        }
        if let Some(BorrowedValue::Object(up)) = o.get("user_properties") {
            if up.len() > MAX_USER_PROPS {
                out.push(
                    "user_properties",
                    "EXCEEDED_MAX_ENTITIES",
                    format!(
                        "At most {MAX_USER_PROPS} user properties are allowed; found {}.",
                        up.len()
                    ),
                );
            }
            for (k, p) in up.iter() {
                let path = format!("user_properties.{k}");
                if !valid_name(k) {
                    out.push(&*path, "NAME_INVALID", format!("User property name [{k}] is invalid. Names must start with an alphabetic character and contain only alphanumerics and underscores."));
                } else if k.chars().count() > MAX_USER_PROP_NAME {
                    out.push(&*path, "VALUE_OUT_OF_BOUNDS", format!("User property name [{k}] is longer than {MAX_USER_PROP_NAME} characters."));
                }
                if RESERVED_USER_PROPS.contains(&k.as_ref())
                    || RESERVED_USER_PROP_PREFIXES.iter().any(|p| k.starts_with(p))
                {
                    out.push(
                        &*path,
                        "NAME_RESERVED",
                        format!("User property name [{k}] is reserved."),
                    );
                }
                match p.get("value").and_then(|v| v.as_str()) {
                    Some(s) if s.chars().count() > MAX_USER_PROP_VALUE => out.push(
                        &*path,
                        "VALUE_OUT_OF_BOUNDS",
                        format!("User property [{k}] value is longer than {MAX_USER_PROP_VALUE} characters."),
                    ),
                    _ => {}
                }
                if p.get("value").is_none() {
                    out.push(
                        &*path,
                        "VALUE_REQUIRED",
                        format!("User property [{k}] needs a value."),
                    );
                }
            }
        }
        Ok(out)
    }
}

fn validate_event(i: usize, ev: &BorrowedValue<'_>, out: &mut Ga4Validation) {
    let path = |f: &str| format!("events[{i}]{f}");
    let Some(o) = ev.as_object() else {
        out.push(
            path(""),
            "VALUE_INVALID",
            format!("Event at index: [{i}] must be an object."),
        );
        return;
    };
    match o.get("name").and_then(|v| v.as_str()) {
        None => out.push(path(".name"), "VALUE_REQUIRED", format!("Event at index: [{i}] has no name.")),
        Some(n) if !valid_name(n) => out.push(
            path(".name"),
            "NAME_INVALID",
            format!("Event at index: [{i}] has invalid name [{n}]. Names must start with an alphabetic character."),
        ),
        Some(n) if n.chars().count() > MAX_EVENT_NAME => out.push(
            path(".name"),
            "VALUE_OUT_OF_BOUNDS",
            format!("Event at index: [{i}] has name [{n}] longer than {MAX_EVENT_NAME} characters."),
        ),
        Some(n) if RESERVED_EVENTS.contains(&n) => out.push(
            path(".name"),
            "NAME_RESERVED",
            format!("Event at index: [{i}] has name [{n}] which is reserved."),
        ),
        Some(_) => {}
    }
    let Some(params) = o.get("params").and_then(|p| p.as_object()) else {
        return;
    };
    if params.len() > MAX_PARAMS {
        out.push(
            path(".params"),
            "EXCEEDED_MAX_ENTITIES",
            format!(
                "Event at index: [{i}] has {} params; at most {MAX_PARAMS} are allowed.",
                params.len()
            ),
        );
    }
    for (k, v) in params.iter() {
        let p = path(&format!(".params.{k}"));
        if RESERVED_PARAM_PREFIXES.iter().any(|pre| k.starts_with(pre)) {
            out.push(
                &*p,
                "NAME_RESERVED",
                format!("Event at index: [{i}] has parameter [{k}] with a reserved prefix."),
            );
        } else if !valid_name(k) {
            out.push(
                &*p,
                "NAME_INVALID",
                format!("Event at index: [{i}] has invalid parameter name [{k}]."),
            );
        } else if k.chars().count() > MAX_PARAM_NAME {
            out.push(&*p, "VALUE_OUT_OF_BOUNDS", format!("Event at index: [{i}] has parameter name [{k}] longer than {MAX_PARAM_NAME} characters."));
        }
        let max = if matches!(k.as_ref(), "page_location" | "page_referrer" | "page_title") {
            MAX_PAGE_PARAM_VALUE
        } else {
            MAX_PARAM_VALUE
        };
        if let Some(s) = v.as_str() {
            if s.chars().count() > max {
                out.push(&*p, "VALUE_OUT_OF_BOUNDS", format!("Event at index: [{i}] has parameter [{k}] value longer than {max} characters."));
            }
        }
    }
}
