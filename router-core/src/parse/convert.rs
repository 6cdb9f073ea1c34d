//! Conversion of one Segment-style JSON object into a canonical [`Event`], with validation.

use simd_json::prelude::*;
use simd_json::{BorrowedValue, StaticNode};

use serde_json::{Map, Number, Value};

use crate::enrich;
use crate::error::FieldError;
use crate::event::{Event, Kind, Object, Source, is_placeholder_id};
use crate::parse::{Ingest, Item, Parser};
use crate::time::Timestamp;

type BObject<'v> = simd_json::borrowed::Object<'v>;

/// How an item's `type` is decided.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TypeRule {
    /// `type` must be present (Segment batch items).
    Required,
    /// Fixed by the endpoint (Segment single calls); a `type` in the body is ignored.
    Fixed(Kind),
    /// Optional; defaults to track (or identify for `$identify`): the router's own schema.
    Optional,
}

/// Values given once per request and merged into each item.
#[derive(Default)]
pub(crate) struct Shared {
    pub context: Option<Object>,
    pub integrations: Option<Object>,
    pub sent_at: Option<Timestamp>,
    /// Size of `context` and `integrations` (compact JSON, approximately); counts towards
    /// each item's size cap, since each item carries a copy.
    pub bytes: usize,
}

/// What conversion to `serde_json::Value` may run into.
enum Overflow {
    Depth,
    Size,
}

/// Tracks nesting depth and approximate compact-JSON size while converting.
struct Budget {
    used: usize,
    max_bytes: usize,
    max_depth: usize,
}

impl Budget {
    fn spend(&mut self, n: usize) -> Result<(), Overflow> {
        self.used += n;
        if self.used > self.max_bytes {
            Err(Overflow::Size)
        } else {
            Ok(())
        }
    }
}

fn to_json(v: &BorrowedValue<'_>, depth: usize, b: &mut Budget) -> Result<Value, Overflow> {
    Ok(match v {
        BorrowedValue::Static(s) => {
            b.spend(6)?;
            static_to_json(*s)
        }
        BorrowedValue::String(s) => {
            b.spend(s.len() + 2)?;
            Value::String(s.to_string())
        }
        BorrowedValue::Array(a) => {
            if depth + 1 > b.max_depth {
                return Err(Overflow::Depth);
            }
            b.spend(2 + a.len())?;
            let mut out = Vec::with_capacity(a.len());
            for x in a.iter() {
                out.push(to_json(x, depth + 1, b)?);
            }
            Value::Array(out)
        }
        BorrowedValue::Object(o) => Value::Object(obj_to_json(o, depth + 1, b)?),
    })
}

/// Charges a value to the budget without building anything.
fn measure(v: &BorrowedValue<'_>, depth: usize, b: &mut Budget) -> Result<(), Overflow> {
    match v {
        BorrowedValue::Static(_) => b.spend(6),
        BorrowedValue::String(s) => b.spend(s.len() + 2),
        BorrowedValue::Array(a) => {
            if depth + 1 > b.max_depth {
                return Err(Overflow::Depth);
            }
            b.spend(2 + a.len())?;
            a.iter().try_for_each(|x| measure(x, depth + 1, b))
        }
        BorrowedValue::Object(o) => {
            if depth + 1 > b.max_depth {
                return Err(Overflow::Depth);
            }
            b.spend(2)?;
            o.iter().try_for_each(|(k, x)| {
                b.spend(k.len() + 4)?;
                measure(x, depth + 1, b)
            })
        }
    }
}

fn obj_to_json(o: &BObject<'_>, depth: usize, b: &mut Budget) -> Result<Object, Overflow> {
    if depth > b.max_depth {
        return Err(Overflow::Depth);
    }
    b.spend(2)?;
    let mut out = Map::new();
    for (k, x) in o.iter() {
        b.spend(k.len() + 4)?;
        out.insert(k.to_string(), to_json(x, depth, b)?);
    }
    Ok(out)
}

fn static_to_json(s: StaticNode) -> Value {
    match s {
        StaticNode::I64(i) => Value::Number(i.into()),
        StaticNode::U64(u) => Value::Number(u.into()),
        StaticNode::F64(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        StaticNode::Bool(x) => Value::Bool(x),
        StaticNode::Null => Value::Null,
    }
}

/// Converts a request-level value that is copied into every event (a batch's `context` and
/// `integrations`, GA4's user property values and context fields) under the per-event caps:
/// `depth` is the depth its parent has inside an event (1 for a value that becomes the
/// event's `context`, 2 for one put inside it). Returns the value and its size, which counts
/// towards each event's size cap; or the reason it is refused.
///
/// Without the depth cap (found while writing the fuzz targets' buffer round-trip check), a
/// small body (under the size from which bodies are scanned for depth) could nest a batch
/// `context` 200 levels deep; the events were accepted, and their buffer records could not be
/// decoded (serde_json stops at 128 levels), so they could never be delivered.
///
/// `max_bytes` is the size cap applied (`usize::MAX` where the caller measures the exact size
/// itself).
pub(crate) fn capped_value_to_json(
    v: &BorrowedValue<'_>,
    depth: usize,
    limits: &crate::config::Limits,
    max_bytes: usize,
) -> Result<(Value, usize), String> {
    let mut b = Budget {
        used: 0,
        max_bytes,
        max_depth: limits.max_depth,
    };
    match to_json(v, depth, &mut b) {
        Ok(value) => Ok((value, b.used)),
        Err(Overflow::Depth) => Err(format!("is nested deeper than {} levels", limits.max_depth)),
        Err(Overflow::Size) => Err(format!("is larger than the event cap of {max_bytes} bytes")),
    }
}

/// Converts a borrowed JSON value to `serde_json`, without caps (for values that are not
/// kept in events).
pub(crate) fn value_to_json(v: &BorrowedValue<'_>) -> Value {
    let mut b = Budget {
        used: 0,
        max_bytes: usize::MAX,
        max_depth: usize::MAX,
    };
    to_json(v, 0, &mut b).unwrap_or(Value::Null)
}

fn is_null(v: &BorrowedValue<'_>) -> bool {
    matches!(v, BorrowedValue::Static(StaticNode::Null))
}

/// A field that is absent or `null` is "not given".
fn get<'a, 'v>(o: &'a BObject<'v>, key: &str) -> Option<&'a BorrowedValue<'v>> {
    o.get(key).filter(|v| !is_null(v))
}

/// Reads an identity field: a string or a number (stringified); placeholders count as absent.
fn id_field(o: &BObject<'_>, key: &str, max_chars: usize) -> Result<Option<String>, FieldError> {
    let s = match get(o, key) {
        None => return Ok(None),
        Some(BorrowedValue::String(s)) => s.to_string(),
        Some(BorrowedValue::Static(StaticNode::I64(i))) => i.to_string(),
        Some(BorrowedValue::Static(StaticNode::U64(u))) => u.to_string(),
        Some(BorrowedValue::Static(StaticNode::F64(f))) if f.is_finite() && f.fract() == 0.0 => {
            format!("{f:.0}")
        }
        Some(_) => return Err(FieldError::new(key, "must be a string or an integer")),
    };
    if is_placeholder_id(&s) {
        return Ok(None);
    }
    if s.chars().count() > max_chars {
        return Err(FieldError::new(
            key,
            format!("is longer than {max_chars} characters"),
        ));
    }
    Ok(Some(s))
}

/// Reads a time field: RFC 3339 text or epoch milliseconds.
pub(crate) fn time_field(o: &BObject<'_>, key: &str) -> Result<Option<Timestamp>, FieldError> {
    let bad = || {
        FieldError::new(
            key,
            "must be an RFC 3339 date-time (e.g. 2025-01-28T12:00:00Z) or epoch milliseconds",
        )
    };
    let out_of_range = || FieldError::new(key, "is outside the years 1 to 9999");
    match get(o, key) {
        None => Ok(None),
        Some(BorrowedValue::String(s)) => Timestamp::parse_rfc3339(s).map(Some).ok_or_else(bad),
        Some(BorrowedValue::Static(StaticNode::I64(ms))) => Timestamp::from_millis(*ms)
            .map(Some)
            .ok_or_else(out_of_range),
        Some(BorrowedValue::Static(StaticNode::U64(ms))) => i64::try_from(*ms)
            .ok()
            .and_then(Timestamp::from_millis)
            .map(Some)
            .ok_or_else(out_of_range),
        Some(BorrowedValue::Static(StaticNode::F64(ms))) if ms.is_finite() => {
            #[allow(clippy::cast_possible_truncation)]
            let ms = *ms as i64;
            Timestamp::from_millis(ms)
                .map(Some)
                .ok_or_else(out_of_range)
        }
        Some(_) => Err(bad()),
    }
}

impl Parser {
    /// Converts one item, turning any error into [`Item::Rejected`] with the raw JSON.
    pub(crate) fn convert_item(
        &self,
        v: &BorrowedValue<'_>,
        rule: TypeRule,
        shared: &Shared,
        source: Source,
        ctx: &mut Ingest<'_>,
    ) -> Item {
        match self.convert(v, rule, shared, source, ctx) {
            Ok(e) => Item::Accepted(e),
            Err(error) => Item::Rejected {
                error,
                raw: v.encode(),
            },
        }
    }

    fn convert(
        &self,
        v: &BorrowedValue<'_>,
        rule: TypeRule,
        shared: &Shared,
        source: Source,
        ctx: &mut Ingest<'_>,
    ) -> Result<Event, FieldError> {
        let Some(o) = v.as_object() else {
            return Err(FieldError::new("$", "each event must be a JSON object"));
        };
        let lim = &self.limits;
        let mut budget = Budget {
            used: shared.bytes,
            max_bytes: lim.max_event_bytes,
            max_depth: lim.max_depth,
        };
        let too_big = || {
            FieldError::new(
                "$",
                format!(
                    "event is larger than the cap of {} bytes",
                    lim.max_event_bytes
                ),
            )
        };
        let raw_name = match get(o, "event") {
            None => None,
            Some(BorrowedValue::String(s)) => Some(s.as_ref()),
            Some(_) => return Err(FieldError::new("event", "must be a string")),
        };
        let kind = match rule {
            TypeRule::Fixed(k) => k,
            TypeRule::Required | TypeRule::Optional => match get(o, "type") {
                Some(BorrowedValue::String(t)) => Kind::parse(t).ok_or_else(|| {
                    FieldError::new(
                        "type",
                        format!(
                            "unknown type {t:?}; expected track, identify, page, screen, group or alias"
                        ),
                    )
                })?,
                Some(_) => return Err(FieldError::new("type", "must be a string")),
                None if matches!(rule, TypeRule::Required) => {
                    return Err(FieldError::new("type", "is required in a batch item"));
                }
                None => Kind::for_own_schema_name(raw_name),
            },
        };
        let name = match kind.canonical_name() {
            Some(fixed) => fixed.to_owned(),
            None => {
                let n =
                    raw_name.ok_or_else(|| FieldError::new("event", "is required for track"))?;
                if n.trim().is_empty() {
                    return Err(FieldError::new("event", "must not be empty"));
                }
                if n.chars().count() > lim.max_name_chars {
                    return Err(FieldError::new(
                        "event",
                        format!("is longer than {} characters", lim.max_name_chars),
                    ));
                }
                self.canonical_name(n).to_owned()
            }
        };
        let user_id = id_field(o, "userId", lim.max_id_chars)?;
        let anonymous_id = id_field(o, "anonymousId", lim.max_id_chars)?;
        if user_id.is_none() && anonymous_id.is_none() {
            return Err(FieldError::new(
                "userId",
                "userId or anonymousId is required (non-empty, not a placeholder such as \"null\")",
            ));
        }
        let group_id = id_field(o, "groupId", lim.max_id_chars)?;
        if kind == Kind::Group && group_id.is_none() {
            return Err(FieldError::new("groupId", "is required for group"));
        }
        let previous_id = id_field(o, "previousId", lim.max_id_chars)?;
        if kind == Kind::Alias {
            if previous_id.is_none() {
                return Err(FieldError::new("previousId", "is required for alias"));
            }
            if user_id.is_none() {
                return Err(FieldError::new("userId", "is required for alias"));
            }
        }
        let message_id = match id_field(o, "messageId", lim.max_id_chars)? {
            Some(id) => id,
            None => match id_field(o, "uuid", lim.max_id_chars)? {
                Some(id) => id,
                None => ctx.ids.next_id(),
            },
        };
        let client_ts = match time_field(o, "timestamp")? {
            Some(t) => Some(t),
            None => time_field(o, "originalTimestamp")?,
        };
        let sent_at = time_field(o, "sentAt")?.or(shared.sent_at);
        let timestamp = enrich::correct_skew(client_ts, sent_at, ctx.received_at);

        let mut objects: [(&str, Object); 4] = [
            ("properties", Map::new()),
            ("traits", Map::new()),
            ("context", Map::new()),
            ("integrations", Map::new()),
        ];
        for (field, out) in objects.iter_mut() {
            match get(o, field) {
                None => {}
                Some(BorrowedValue::Object(src)) => {
                    if matches!(*field, "properties" | "traits") && src.len() > lim.max_properties {
                        return Err(FieldError::new(
                            *field,
                            format!("has more than {} keys", lim.max_properties),
                        ));
                    }
                    *out = obj_to_json(src, 2, &mut budget).map_err(|e| match e {
                        Overflow::Depth => FieldError::new(
                            *field,
                            format!("is nested deeper than {} levels", lim.max_depth),
                        ),
                        Overflow::Size => too_big(),
                    })?;
                }
                Some(_) => return Err(FieldError::new(*field, "must be a JSON object")),
            }
        }
        // Strings and unknown fields count towards the size too.
        for (k, x) in o.iter() {
            if matches!(
                k.as_ref(),
                "properties" | "traits" | "context" | "integrations"
            ) {
                continue;
            }
            budget.spend(k.len() + 4).map_err(|_| too_big())?;
            measure(x, 2, &mut budget).map_err(|e| match e {
                Overflow::Depth => FieldError::new(
                    k.as_ref(),
                    format!("is nested deeper than {} levels", lim.max_depth),
                ),
                Overflow::Size => too_big(),
            })?;
        }
        let [
            (_, mut properties),
            (_, traits),
            (_, mut context),
            (_, mut integrations),
        ] = objects;
        merge_missing(&mut context, shared.context.as_ref());
        merge_missing(&mut integrations, shared.integrations.as_ref());
        if matches!(kind, Kind::Page | Kind::Screen) {
            for key in ["name", "category"] {
                if let Some(v) = get(o, key) {
                    if !properties.contains_key(key) {
                        properties.insert(key.to_owned(), value_to_json(v));
                    }
                }
            }
        }
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
            properties,
            traits,
            context,
            integrations,
            source,
        };
        enrich::normalise_utm(&mut event);
        Ok(event)
    }
}

/// Adds the keys of `shared` that `own` lacks (the item's own values win).
fn merge_missing(own: &mut Object, shared: Option<&Object>) {
    if let Some(shared) = shared {
        for (k, v) in shared {
            if !own.contains_key(k) {
                own.insert(k.clone(), v.clone());
            }
        }
    }
}
