//! `events-router route`: shows where each event of a JSON Lines input would go.

use std::io::{BufRead, Write};

use router_core::map::{mixpanel_records, posthog_record};
use router_core::parse::{IdSource, Ingest, Item};
use router_core::{Event, Pipeline, RequestError, Timestamp};
use serde_json::{Map, Value, json};

/// UUIDv7 message ids for events that come without one.
pub struct UuidV7;

impl IdSource for UuidV7 {
    fn next_id(&mut self) -> String {
        uuid::Uuid::now_v7().to_string()
    }
}

/// Why `route` stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A line that is not JSON.
    #[error("line {line}: not JSON: {reason}")]
    NotJson {
        /// 1-based line number.
        line: usize,
        /// Parser message.
        reason: String,
    },
    /// Reading input or writing output failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What `route` adds to each line.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteOptions {
    /// Add the canonical event and every rule's verdict.
    pub explain: bool,
    /// Add the exact destination records.
    pub payloads: bool,
}

/// Routes each event of `input` (JSON Lines: an event object or an array per line) and writes
/// one JSON object per event to `out`, in input order.
pub fn run(
    pipeline: &Pipeline,
    input: impl BufRead,
    mut out: impl Write,
    opts: RouteOptions,
    now: Timestamp,
) -> Result<usize, RouteError> {
    let mut ids = UuidV7;
    let mut index = 0usize;
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let mut bytes = line.into_bytes();
        let mut ctx = Ingest {
            received_at: now,
            ids: &mut ids,
        };
        match pipeline.parser().parse_collect(&mut bytes, &mut ctx) {
            Ok(batch) => {
                for item in &batch.items {
                    let v = match item {
                        Item::Accepted(e) => describe(pipeline, index, e, opts),
                        Item::Rejected { error, .. } => {
                            error_line(index, &error.reason, &error.field)
                        }
                    };
                    writeln!(out, "{v}")?;
                    index += 1;
                }
            }
            Err(RequestError::InvalidJson { offset, reason }) => {
                out.flush()?;
                return Err(RouteError::NotJson {
                    line: n + 1,
                    reason: format!("{reason} at byte {offset}"),
                });
            }
            Err(e) => {
                writeln!(out, "{}", error_line(index, &e.reason(), e.field()))?;
                index += 1;
            }
        }
    }
    out.flush()?;
    Ok(index)
}

/// One output line, fields in the documented order.
#[derive(serde::Serialize)]
struct Line<'a> {
    index: usize,
    event: &'a str,
    destinations: Vec<&'a str>,
    rules: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verdicts: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    canonical: Option<&'a Event>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payloads: Option<Map<String, Value>>,
}

/// An invalid event's line.
#[derive(serde::Serialize)]
struct ErrorLine<'a> {
    index: usize,
    error: &'a str,
    field: &'a str,
}

fn describe(p: &Pipeline, index: usize, e: &Event, opts: RouteOptions) -> String {
    let router = p.router();
    let route = router.route(e);
    let destinations = router.destination_names(&route);
    let mut line = Line {
        index,
        event: &e.name,
        destinations: destinations.clone(),
        rules: router.rule_names(&route),
        fallback: None,
        verdicts: None,
        canonical: None,
        payloads: None,
    };
    if opts.explain {
        line.fallback = Some(route.fallback);
        line.verdicts = Some(
            router
                .explain(e)
                .into_iter()
                .map(|(n, m)| (n.to_owned(), json!(m)))
                .collect(),
        );
        line.canonical = Some(e);
    }
    if opts.payloads {
        let mut payloads = Map::new();
        for d in destinations {
            let records = match d {
                "posthog" => json!([posthog_record(e, p.posthog()).to_value()]),
                "mixpanel" => {
                    let mut recs = Vec::new();
                    mixpanel_records(e, p.mixpanel(), &mut recs);
                    Value::Array(
                        recs.iter()
                            .map(|r| json!({"endpoint": r.endpoint, "body": r.record.to_value()}))
                            .collect(),
                    )
                }
                _ => json!([e]),
            };
            payloads.insert(d.to_owned(), records);
        }
        line.payloads = Some(payloads);
    }
    serde_json::to_string(&line).unwrap_or_default()
}

fn error_line(index: usize, error: &str, field: &str) -> String {
    serde_json::to_string(&ErrorLine {
        index,
        error,
        field,
    })
    .unwrap_or_default()
}
