//! Every router-core parser on arbitrary bytes.
//!
//! Input: the first byte picks the parser, the rest is the request body.
//!
//! | byte % 10 | parser |
//! |---|---|
//! | 0 | `parse_collect` (`/collect`) |
//! | 1..=6 | `parse_segment(Single(kind))` (`/v1/track`, identify, page, screen, group, alias) |
//! | 7 | `parse_segment(Batch)` (`/v1/batch`) |
//! | 8 | `parse_ga4` (`/mp/collect`) |
//! | 9 | `validate_ga4` (`/debug/mp/collect`) |
//! | 10, 11 | `parse_posthog` (`/capture/`, `/batch/`, ...), JSON or base64 body / form body |
//!
//! Invariants: no panic; every accepted event routes somewhere, round-trips through the buffer
//! record, and maps to valid PostHog and Mixpanel records (see `check_event`).
#![no_main]

use events_router_fuzz::{check_batch, pipeline, with_ingest};
use libfuzzer_sys::fuzz_target;
use router_core::Kind;
use router_core::parse::SegmentCall;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let p = pipeline();
    let parser = p.parser();
    let mut body = body.to_vec();
    let result = match sel % 12 {
        0 => with_ingest(|ctx| parser.parse_collect(&mut body, ctx)),
        k @ 1..=6 => {
            let kind = Kind::ALL[usize::from(k - 1)];
            with_ingest(|ctx| parser.parse_segment(SegmentCall::Single(kind), &mut body, ctx))
        }
        7 => with_ingest(|ctx| parser.parse_segment(SegmentCall::Batch, &mut body, ctx)),
        8 => with_ingest(|ctx| parser.parse_ga4(&mut body, ctx)),
        10 | 11 => with_ingest(|ctx| parser.parse_posthog(&mut body, sel % 12 == 11, ctx)),
        _ => {
            if let Ok(v) = parser.validate_ga4(&mut body) {
                for m in &v.validation_messages {
                    assert!(!m.validation_code.is_empty());
                    assert!(!m.description.is_empty());
                }
                // The answer body must serialise.
                serde_json::to_vec(&v).expect("validation answer serialises");
            }
            return;
        }
    };
    match result {
        Ok(batch) => check_batch(p, &batch),
        Err(e) => {
            assert!(
                !e.reason().is_empty(),
                "request error without a reason: {e:?}"
            );
        }
    }
});
