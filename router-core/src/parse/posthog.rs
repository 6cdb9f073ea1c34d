//! PostHog SDK payloads (`/capture/`, `/batch/`, `/e/`, `/i/v0/e/`), as posthog-js and
//! posthog-node send them, so those SDKs can point at the router unchanged.
//!
//! Shapes (API_SPECS.md §1.3): an array of events, `{"api_key", "batch": [...], "sent_at"?}`,
//! or one event. The body may be a form (`data=<json or base64>`) or base64 as a whole; gzip
//! is undone by the HTTP layer before this parser runs. PostHog's special events become the
//! matching call types: `$identify` (traits from `$set`, the anonymous id from
//! `$anon_distinct_id`), `$pageview`, `$screen`, `$create_alias`, `$groupidentify`.

use base64::Engine;
use serde_json::{Map, Value};
use simd_json::BorrowedValue;
use simd_json::prelude::*;

use crate::enrich::{self, percent_decode};
use crate::error::{FieldError, RequestError};
use crate::event::{Event, Kind, Object, Source, is_placeholder_id};
use crate::parse::convert::{capped_value_to_json, time_field};
use crate::parse::{Batch, Ingest, Item, Parser, parse_json};
use crate::time::Timestamp;

/// Undoes the form and base64 wrappings PostHog clients use; JSON passes through.
fn unwrap_body(body: &mut Vec<u8>, form: bool) -> Result<(), RequestError> {
    let bad_b64 = || RequestError::field_error("data", "is neither JSON nor valid base64");
    if form || body.starts_with(b"data=") {
        let text = String::from_utf8_lossy(body).into_owned();
        let data = text
            .split('&')
            .find_map(|p| p.strip_prefix("data="))
            .ok_or_else(|| RequestError::field_error("data", "a form body needs a data= field"))?;
        *body = percent_decode(data).into_bytes();
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if !matches!(first, Some(b'{' | b'[') | None) {
        // A `+` decoded as a space by the form decoding is restored first (as capture does).
        let cleaned: Vec<u8> = body
            .iter()
            .filter(|b| !b.is_ascii_whitespace() || **b == b' ')
            .map(|&b| if b == b' ' { b'+' } else { b })
            .collect();
        let engine = base64::engine::general_purpose::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        *body = engine.decode(&cleaned).map_err(|_| bad_b64())?;
    }
    Ok(())
}

fn str_of(v: Option<&BorrowedValue<'_>>) -> Option<String> {
    match v? {
        BorrowedValue::String(s) => Some(s.to_string()),
        BorrowedValue::Static(simd_json::StaticNode::I64(i)) => Some(i.to_string()),
        BorrowedValue::Static(simd_json::StaticNode::U64(u)) => Some(u.to_string()),
        _ => None,
    }
    .filter(|s| !is_placeholder_id(s))
}

fn take_str(m: &mut Object, key: &str) -> Option<String> {
    match m.remove(key)? {
        Value::String(s) if !is_placeholder_id(&s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn take_obj(m: &mut Object, key: &str) -> Object {
    match m.remove(key) {
        Some(Value::Object(o)) => o,
        _ => Map::new(),
    }
}

impl Parser {
    /// Parses a PostHog capture body. `form` is true for `application/x-www-form-urlencoded`.
    /// The project key found in the body (`api_key` / `token`) is returned as the write key.
    pub fn parse_posthog(
        &self,
        body: &mut Vec<u8>,
        form: bool,
        ctx: &mut Ingest<'_>,
    ) -> Result<Batch, RequestError> {
        self.check_body(body)?;
        unwrap_body(body, form)?;
        self.check_body(body)?;
        let v = parse_json(body)?;
        let token = |o: &simd_json::borrowed::Object<'_>| {
            ["api_key", "token", "$token"]
                .iter()
                .find_map(|k| str_of(o.get(*k)))
        };
        let (items, key, sent_at): (&[BorrowedValue<'_>], _, _) = match &v {
            BorrowedValue::Array(a) => {
                let key = a.iter().find_map(|e| e.as_object().and_then(token));
                (a.as_slice(), key, None)
            }
            BorrowedValue::Object(o) => match o.get("batch") {
                Some(BorrowedValue::Array(a)) => {
                    let sent = time_field(o, "sent_at").map_err(RequestError::Field)?;
                    (a.as_slice(), token(o), sent)
                }
                Some(_) => {
                    return Err(RequestError::field_error(
                        "batch",
                        "must be an array of events",
                    ));
                }
                None => (std::slice::from_ref(&v), token(o), None),
            },
            _ => {
                return Err(RequestError::field_error(
                    "$",
                    "body must be an event, an array of events or {\"batch\": [...]}",
                ));
            }
        };
        self.check_count(items.len())?;
        let items = items
            .iter()
            .map(|it| match self.posthog_event(it, sent_at, ctx) {
                Ok(e) => Item::Accepted(e),
                Err(error) => Item::Rejected {
                    error,
                    raw: it.encode(),
                },
            })
            .collect();
        Ok(Batch {
            items,
            write_key: key,
        })
    }

    fn posthog_event(
        &self,
        v: &BorrowedValue<'_>,
        batch_sent_at: Option<Timestamp>,
        ctx: &mut Ingest<'_>,
    ) -> Result<Event, FieldError> {
        let o = v
            .as_object()
            .ok_or_else(|| FieldError::new("$", "each event must be a JSON object"))?;
        let lim = &self.limits;
        let size = v.encode().len();
        if size > lim.max_event_bytes {
            return Err(FieldError::new(
                "$",
                format!(
                    "event is larger than the cap of {} bytes",
                    lim.max_event_bytes
                ),
            ));
        }
        let name = match o.get("event") {
            Some(BorrowedValue::String(n)) if !n.trim().is_empty() => n.to_string(),
            Some(BorrowedValue::String(_)) | None => {
                return Err(FieldError::new(
                    "event",
                    "is required and must not be empty",
                ));
            }
            Some(_) => return Err(FieldError::new("event", "must be a string")),
        };
        if name.chars().count() > lim.max_name_chars {
            return Err(FieldError::new(
                "event",
                format!("is longer than {} characters", lim.max_name_chars),
            ));
        }
        // Held to the depth cap: the buffer must be able to decode what it keeps (200 levels
        // in a small body were accepted and could not be read back).
        let capped = |key: &str, v: &BorrowedValue<'_>, depth: usize| {
            capped_value_to_json(v, depth, lim, usize::MAX)
                .map_err(|reason| FieldError::new(key, reason))
        };
        let mut props = match o.get("properties") {
            None => Map::new(),
            Some(p @ BorrowedValue::Object(_)) => match capped("properties", p, 1)?.0 {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            Some(p) if p.is_null() => Map::new(),
            Some(_) => return Err(FieldError::new("properties", "must be a JSON object")),
        };
        if props.len() > lim.max_properties {
            return Err(FieldError::new(
                "properties",
                format!("has more than {} keys", lim.max_properties),
            ));
        }
        for key in ["$set", "$set_once"] {
            if let Some(v @ BorrowedValue::Object(_)) = o.get(key) {
                if !props.contains_key(key) {
                    props.insert(key.to_owned(), capped(key, v, 2)?.0);
                }
            }
        }
        let distinct = str_of(o.get("distinct_id"))
            .or_else(|| str_of(o.get("$distinct_id")))
            .or_else(|| take_str(&mut props, "distinct_id"));
        let Some(distinct) = distinct else {
            return Err(FieldError::new(
                "distinct_id",
                "is required (non-empty, not a placeholder such as \"null\")",
            ));
        };
        if distinct.chars().count() > lim.max_id_chars {
            return Err(FieldError::new(
                "distinct_id",
                format!("is longer than {} characters", lim.max_id_chars),
            ));
        }
        let message_id = str_of(o.get("uuid")).unwrap_or_else(|| ctx.ids.next_id());
        let client_ts =
            time_field(o, "timestamp").map_err(|e| FieldError::new("timestamp", e.reason))?;
        let timestamp = match o.get("offset").and_then(|x| x.as_i64()) {
            Some(offset) => ctx.received_at.offset(-offset),
            None => enrich::correct_skew(client_ts, batch_sent_at, ctx.received_at),
        };
        let mut context = Map::new();
        let mut page = Map::new();
        for (from, to) in [
            ("$current_url", "url"),
            ("$pathname", "path"),
            ("$referrer", "referrer"),
            ("title", "title"),
        ] {
            if let Some(Value::String(s)) = props.get(from) {
                page.insert(to.to_owned(), Value::String(s.clone()));
            }
        }
        if !page.is_empty() {
            context.insert("page".into(), Value::Object(page));
        }
        if let Some(Value::String(ip)) = props.get("$ip") {
            context.insert("ip".into(), Value::String(ip.clone()));
        }
        if let Some(Value::String(lib)) = props.get("$lib") {
            let mut l = Map::new();
            l.insert("name".into(), Value::String(lib.clone()));
            if let Some(ver) = props.get("$lib_version") {
                l.insert("version".into(), ver.clone());
            }
            context.insert("library".into(), Value::Object(l));
        }
        // posthog-js marks anonymous users: `$is_identified: false`, or the device id as the
        // distinct id. Otherwise the distinct id is a known user.
        let anonymous = props.get("$is_identified") == Some(&Value::Bool(false))
            || props.get("$device_id").and_then(Value::as_str) == Some(distinct.as_str());
        let (mut user_id, mut anonymous_id) = if anonymous {
            (None, Some(distinct.clone()))
        } else {
            (Some(distinct.clone()), None)
        };
        let mut traits = Map::new();
        let (mut group_id, mut previous_id) = (None, None);
        let kind = match name.as_str() {
            "$identify" => {
                user_id = Some(distinct.clone());
                anonymous_id = take_str(&mut props, "$anon_distinct_id")
                    .or(anonymous_id.filter(|a| *a != distinct));
                traits = take_obj(&mut props, "$set");
                let once = take_obj(&mut props, "$set_once");
                if !once.is_empty() {
                    traits.insert("$set_once".into(), Value::Object(once));
                }
                Kind::Identify
            }
            "$pageview" => Kind::Page,
            "$screen" => {
                if let Some(n) = props.get("$screen_name").cloned() {
                    props.entry("name").or_insert(n);
                }
                Kind::Screen
            }
            "$create_alias" => {
                user_id = Some(distinct.clone());
                anonymous_id = None;
                previous_id = take_str(&mut props, "alias");
                if previous_id.is_none() {
                    return Err(FieldError::new(
                        "properties",
                        "$create_alias needs properties.alias",
                    ));
                }
                Kind::Alias
            }
            "$groupidentify" => {
                group_id = take_str(&mut props, "$group_key");
                if group_id.is_none() {
                    return Err(FieldError::new(
                        "properties",
                        "$groupidentify needs properties.$group_key",
                    ));
                }
                traits = take_obj(&mut props, "$group_set");
                Kind::Group
            }
            _ => Kind::Track,
        };
        let name = match kind.canonical_name() {
            Some(fixed) => fixed.to_owned(),
            None => self.canonical_name(&name).to_owned(),
        };
        let mut event = Event {
            message_id,
            kind,
            name,
            user_id,
            anonymous_id,
            group_id,
            previous_id,
            timestamp,
            received_at: ctx.received_at,
            properties: props,
            traits,
            context,
            integrations: Map::new(),
            source: Source::Posthog,
        };
        enrich::normalise_utm(&mut event);
        Ok(event)
    }
}
