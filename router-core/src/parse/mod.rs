//! Parsers for every inbound format: bytes in, canonical events (or per-event errors) out.
//!
//! All parsers share one conversion of a Segment-style object into an [`Event`], so the
//! validation rules and the enrichment are the same whatever the endpoint. Parsing uses
//! simd-json's borrowed DOM, which is why the body is taken as `&mut [u8]`: simd-json
//! unescapes strings in place.

mod convert;
mod ga4;
mod posthog;
mod segment;

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use serde::Serialize;
use simd_json::BorrowedValue;

use crate::config::Limits;
use crate::error::{FieldError, RequestError};
use crate::event::{Event, Kind};
use crate::time::Timestamp;

pub use ga4::{Ga4Validation, ValidationMessage};
pub use segment::SegmentCall;

/// Where message ids come from when a client sends none (the core reads no clock and no RNG).
pub trait IdSource {
    /// A fresh, unique id (the server uses UUIDv7).
    fn next_id(&mut self) -> String;
}

/// Deterministic ids `<prefix><n>`, for tests and for the `route` command.
#[derive(Clone, Debug)]
pub struct SequentialIds {
    prefix: String,
    next: u64,
}

impl SequentialIds {
    /// Ids `prefix0`, `prefix1`, ...
    pub fn new(prefix: impl Into<String>) -> Self {
        SequentialIds {
            prefix: prefix.into(),
            next: 0,
        }
    }
}

impl IdSource for SequentialIds {
    fn next_id(&mut self) -> String {
        let id = format!("{}{}", self.prefix, self.next);
        self.next += 1;
        id
    }
}

/// Per-request facts supplied by the caller.
pub struct Ingest<'a> {
    /// When the request arrived (the server's clock).
    pub received_at: Timestamp,
    /// Source of ids for events without one.
    pub ids: &'a mut dyn IdSource,
}

/// One inbound item: an accepted event or the reason it was rejected.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// Valid and enriched.
    Accepted(Event),
    /// Invalid; `raw` is the item as received (compact JSON) for the `rejected` dead letters.
    Rejected {
        /// What is wrong.
        error: FieldError,
        /// The item's JSON.
        raw: String,
    },
}

/// The result of parsing one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// Items in request order.
    pub items: Vec<Item>,
    /// `writeKey` found in the body, if any (Segment beacons put it there).
    pub write_key: Option<String>,
}

impl Batch {
    /// Accepted events, in order.
    pub fn accepted(&self) -> impl Iterator<Item = &Event> {
        self.items.iter().filter_map(|i| match i {
            Item::Accepted(e) => Some(e),
            Item::Rejected { .. } => None,
        })
    }

    /// Rejected items with their index in the request.
    pub fn rejected(&self) -> impl Iterator<Item = (usize, &FieldError, &str)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, it)| match it {
                Item::Rejected { error, raw } => Some((i, error, raw.as_str())),
                Item::Accepted(_) => None,
            })
    }
}

/// A rejected item as reported to clients: `{"index":3,"field":"event","reason":"..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RejectedIndex<'a> {
    /// Position in the request.
    pub index: usize,
    /// Field at fault.
    pub field: &'a str,
    /// Why.
    pub reason: &'a str,
}

/// Parses every inbound format with one set of caps and aliases; build once, share freely.
#[derive(Clone, Debug)]
pub struct Parser {
    limits: Limits,
    aliases: FxHashMap<Box<str>, Box<str>>,
}

impl Parser {
    /// A parser with these caps and name aliases.
    pub fn new(limits: Limits, aliases: &BTreeMap<String, String>) -> Self {
        let aliases = aliases
            .iter()
            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
            .collect();
        Parser { limits, aliases }
    }

    /// The caps in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The canonical spelling of an inbound event name.
    pub fn canonical_name<'n>(&'n self, name: &'n str) -> &'n str {
        self.aliases.get(name).map_or(name, |s| s)
    }

    fn check_body(&self, body: &[u8]) -> Result<(), RequestError> {
        if body.len() > self.limits.max_batch_bytes {
            return Err(RequestError::TooLarge {
                size: body.len(),
                max: self.limits.max_batch_bytes,
            });
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(RequestError::field_error("$", "body is empty"));
        }
        // Envelope and batch add two levels above an event. Refusing absurd nesting before the
        // DOM is built keeps hostile bodies from exhausting the stack in recursive code. A body
        // under SCAN_FROM bytes cannot nest deep enough to matter (each level costs a byte), and
        // the per-event depth cap still applies to it, so small bodies skip the scan.
        let max = self.limits.max_depth + 2;
        if body.len() >= SCAN_FROM && nesting_depth(body) > max {
            return Err(RequestError::field_error(
                "$",
                format!("JSON is nested deeper than {max} levels"),
            ));
        }
        Ok(())
    }

    fn check_count(&self, count: usize) -> Result<(), RequestError> {
        if count > self.limits.max_batch_events {
            return Err(RequestError::TooManyEvents {
                count,
                max: self.limits.max_batch_events,
            });
        }
        if count == 0 {
            return Err(RequestError::field_error("batch", "contains no events"));
        }
        Ok(())
    }
}

/// Bodies from this size on are scanned for nesting depth before parsing.
const SCAN_FROM: usize = 512;

/// The deepest nesting of `[` and `{` outside strings (a byte scan, no parsing).
pub fn nesting_depth(body: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in body {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// `ExpectedObjectContent` -> `expected object content` (simd-json's error names read as words).
fn words(debug: &str) -> String {
    let name = debug.split(['(', ' ', '{']).next().unwrap_or(debug);
    let mut out = String::with_capacity(name.len() + 8);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    if out == "eof" || out == "e o f" {
        "unexpected end of input".into()
    } else {
        out
    }
}

/// Parses JSON with simd-json into a borrowed DOM, mapping errors to [`RequestError`].
fn parse_json(body: &mut [u8]) -> Result<BorrowedValue<'_>, RequestError> {
    simd_json::to_borrowed_value(body).map_err(|e| RequestError::InvalidJson {
        offset: e.index(),
        reason: words(&format!("{:?}", e.error())),
    })
}

impl Kind {
    /// Default kind for an own-schema event with no `type`: identify for `$identify`, else track.
    fn for_own_schema_name(name: Option<&str>) -> Kind {
        if name == Some("$identify") {
            Kind::Identify
        } else {
            Kind::Track
        }
    }
}
