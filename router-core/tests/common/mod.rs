//! Helpers shared by the router-core integration tests.
#![allow(dead_code)]

use router_core::parse::{Batch, Ingest, Item, SegmentCall, SequentialIds};
use router_core::{CoreConfig, Event, Pipeline, RequestError, Timestamp};

/// 2025-01-28T12:00:00Z, the receive time of every test request.
pub const NOW_MS: i64 = 1_738_065_600_000;

pub fn now() -> Timestamp {
    Timestamp::from_millis(NOW_MS).unwrap()
}

pub fn pipeline() -> Pipeline {
    Pipeline::new(&CoreConfig::default()).unwrap()
}

pub fn collect(p: &Pipeline, json: &str) -> Result<Batch, RequestError> {
    let mut body = json.as_bytes().to_vec();
    let mut ids = SequentialIds::new("gen-");
    p.parser().parse_collect(
        &mut body,
        &mut Ingest {
            received_at: now(),
            ids: &mut ids,
        },
    )
}

pub fn segment(p: &Pipeline, call: SegmentCall, json: &str) -> Result<Batch, RequestError> {
    let mut body = json.as_bytes().to_vec();
    let mut ids = SequentialIds::new("gen-");
    p.parser().parse_segment(
        call,
        &mut body,
        &mut Ingest {
            received_at: now(),
            ids: &mut ids,
        },
    )
}

pub fn ga4(p: &Pipeline, json: &str) -> Result<Batch, RequestError> {
    let mut body = json.as_bytes().to_vec();
    let mut ids = SequentialIds::new("gen-");
    p.parser().parse_ga4(
        &mut body,
        &mut Ingest {
            received_at: now(),
            ids: &mut ids,
        },
    )
}

/// The single accepted event of a one-event body (panics with the error otherwise).
pub fn one(p: &Pipeline, json: &str) -> Event {
    let batch = collect(p, json).unwrap();
    assert_eq!(batch.items.len(), 1);
    match batch.items.into_iter().next().unwrap() {
        Item::Accepted(e) => e,
        Item::Rejected { error, .. } => panic!("rejected: {error}"),
    }
}

/// (destinations, rules) of an event under the default table.
pub fn route(p: &Pipeline, e: &Event) -> (Vec<String>, Vec<String>) {
    let r = p.router().route(e);
    (
        p.router()
            .destination_names(&r)
            .into_iter()
            .map(String::from)
            .collect(),
        p.router()
            .rule_names(&r)
            .into_iter()
            .map(String::from)
            .collect(),
    )
}

/// The error of a one-event body that must be rejected: (field, reason).
pub fn rejected(p: &Pipeline, json: &str) -> (String, String) {
    let batch = collect(p, json).unwrap();
    match batch.items.into_iter().next().unwrap() {
        Item::Rejected { error, .. } => (error.field, error.reason),
        Item::Accepted(e) => panic!("accepted: {e:?}"),
    }
}
