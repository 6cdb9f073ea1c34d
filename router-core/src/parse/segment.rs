//! The router's own schema (`/collect`) and the Segment HTTP API (`/v1/*`).

use simd_json::BorrowedValue;
use simd_json::prelude::*;

use crate::config::Limits;
use crate::error::RequestError;
use crate::event::{Kind, Source};
use crate::parse::convert::{Shared, TypeRule, capped_value_to_json, time_field};
use crate::parse::{Batch, Ingest, Parser, parse_json};

/// Which Segment endpoint a body was posted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentCall {
    /// `/v1/track`, `/v1/identify`, ...: one call of that type.
    Single(Kind),
    /// `/v1/batch`: `{"batch": [...], "context"?, "integrations"?, "sentAt"?, "writeKey"?}`.
    Batch,
}

impl SegmentCall {
    /// Maps the last path segment (`track`, `t`, `batch`, `import`, ...) to a call.
    pub fn from_path(segment: &str) -> Option<SegmentCall> {
        Some(match segment {
            "track" | "t" => SegmentCall::Single(Kind::Track),
            "identify" | "i" => SegmentCall::Single(Kind::Identify),
            "page" | "p" => SegmentCall::Single(Kind::Page),
            "screen" | "s" => SegmentCall::Single(Kind::Screen),
            "group" | "g" => SegmentCall::Single(Kind::Group),
            "alias" | "a" => SegmentCall::Single(Kind::Alias),
            "batch" | "b" | "import" => SegmentCall::Batch,
            _ => return None,
        })
    }
}

fn write_key(o: &simd_json::borrowed::Object<'_>) -> Option<String> {
    o.get("writeKey")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

/// Reads the request-level `context`, `integrations` and `sentAt` of a batch envelope. The
/// objects are merged into every item, so they are held to the caps of an item's own.
fn shared(o: &simd_json::borrowed::Object<'_>, limits: &Limits) -> Result<Shared, RequestError> {
    let mut bytes = 0;
    let mut obj = |key: &str| -> Result<_, RequestError> {
        match o.get(key) {
            None => Ok(None),
            Some(v) if v.is_null() => Ok(None),
            Some(v @ BorrowedValue::Object(_)) => {
                let (value, size) = capped_value_to_json(v, 1, limits, limits.max_event_bytes)
                    .map_err(|reason| RequestError::field_error(key, reason))?;
                bytes += size;
                Ok(value.as_object().cloned())
            }
            Some(_) => Err(RequestError::field_error(key, "must be a JSON object")),
        }
    };
    let context = obj("context")?;
    let integrations = obj("integrations")?;
    Ok(Shared {
        context,
        integrations,
        sent_at: time_field(o, "sentAt").map_err(RequestError::Field)?,
        bytes,
    })
}

impl Parser {
    /// Parses a `/collect` body: one event object, a JSON array of them, or `{"batch": [...]}`.
    /// `type` is optional (track by default).
    pub fn parse_collect(
        &self,
        body: &mut [u8],
        ctx: &mut Ingest<'_>,
    ) -> Result<Batch, RequestError> {
        self.parse_envelope(body, TypeRule::Optional, Source::Collect, ctx)
    }

    /// Parses a Segment HTTP API body for the given endpoint.
    pub fn parse_segment(
        &self,
        call: SegmentCall,
        body: &mut [u8],
        ctx: &mut Ingest<'_>,
    ) -> Result<Batch, RequestError> {
        match call {
            SegmentCall::Single(kind) => {
                self.check_body(body)?;
                let v = parse_json(body)?;
                let Some(o) = v.as_object() else {
                    return Err(RequestError::field_error("$", "body must be a JSON object"));
                };
                let item = self.convert_item(
                    &v,
                    TypeRule::Fixed(kind),
                    &Shared::default(),
                    Source::Segment,
                    ctx,
                );
                Ok(Batch {
                    items: vec![item],
                    write_key: write_key(o),
                })
            }
            SegmentCall::Batch => {
                self.parse_envelope(body, TypeRule::Required, Source::Segment, ctx)
            }
        }
    }

    fn parse_envelope(
        &self,
        body: &mut [u8],
        rule: TypeRule,
        source: Source,
        ctx: &mut Ingest<'_>,
    ) -> Result<Batch, RequestError> {
        self.check_body(body)?;
        let v = parse_json(body)?;
        let (items, shared, key) = match &v {
            BorrowedValue::Array(a) => (a.as_slice(), Shared::default(), None),
            BorrowedValue::Object(o) => match o.get("batch") {
                Some(BorrowedValue::Array(a)) => {
                    (a.as_slice(), shared(o, &self.limits)?, write_key(o))
                }
                Some(_) => {
                    return Err(RequestError::field_error(
                        "batch",
                        "must be an array of events",
                    ));
                }
                None if matches!(rule, TypeRule::Required) => {
                    return Err(RequestError::field_error("batch", "is required"));
                }
                None => (std::slice::from_ref(&v), Shared::default(), write_key(o)),
            },
            _ => {
                return Err(RequestError::field_error(
                    "$",
                    "body must be an event object, an array of events or {\"batch\": [...]}",
                ));
            }
        };
        self.check_count(items.len())?;
        let items = items
            .iter()
            .map(|it| self.convert_item(it, rule, &shared, source, ctx))
            .collect();
        Ok(Batch {
            items,
            write_key: key,
        })
    }
}
