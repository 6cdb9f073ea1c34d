#![allow(missing_docs)] // criterion_group! generates undocumented items.
//! Hot paths of router-core: the whole pipeline (parse, validate, enrich, route, map and
//! encode the destination records) for one event and for a 100-event batch, and routing alone.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use router_core::map::{mixpanel_records, posthog_record};
use router_core::parse::{Ingest, Item, SequentialIds};
use router_core::{CoreConfig, Event, Pipeline, Timestamp};
use std::hint::black_box;

/// The binary's allocator, so the figures match what `events-router` does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A realistic ~300-byte own-schema event.
const EVENT: &str = r#"{"event":"Sign Up","userId":"user-48213","anonymousId":"3f9c2a1e-5b7d-4e0a-9c1f-2d8e7b6a5c4d","messageId":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","timestamp":"2025-01-28T12:00:00.123Z","properties":{"plan":"pro","seats":5,"trial":false,"utm_source":"google","utm_medium":"cpc"},"context":{"ip":"203.0.113.7","userAgent":"Mozilla/5.0"}}"#;

fn now() -> Timestamp {
    Timestamp::from_millis(1_738_065_600_000).unwrap()
}

/// Maps and encodes every accepted event for its destinations into `out`.
fn process(p: &Pipeline, body: &mut [u8], ids: &mut SequentialIds, out: &mut Vec<u8>) -> usize {
    let batch = p
        .parser()
        .parse_collect(
            body,
            &mut Ingest {
                received_at: now(),
                ids,
            },
        )
        .unwrap();
    let mut mp = Vec::new();
    let mut n = 0;
    for item in &batch.items {
        let Item::Accepted(e) = item else { continue };
        let route = p.router().route(e);
        for d in route.destinations.iter() {
            match p.router().destinations()[d].as_str() {
                "posthog" => posthog_record(e, p.posthog()).write_json(out),
                _ => {
                    mixpanel_records(e, p.mixpanel(), &mut mp);
                    for r in mp.drain(..) {
                        r.record.write_json(out);
                    }
                }
            }
        }
        n += 1;
    }
    n
}

fn benches(c: &mut Criterion) {
    let p = Pipeline::new(&CoreConfig::default()).unwrap();
    let mut ids = SequentialIds::new("b");
    let mut out = Vec::with_capacity(64 * 1024);
    assert!(
        (280..=340).contains(&EVENT.len()),
        "keep the event near 300 bytes"
    );

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));
    g.bench_function("single_event", |b| {
        b.iter_batched_ref(
            || EVENT.as_bytes().to_vec(),
            |body| {
                out.clear();
                black_box(process(&p, body, &mut ids, &mut out))
            },
            BatchSize::SmallInput,
        )
    });
    let batch = format!("[{}]", vec![EVENT; 100].join(","));
    g.throughput(Throughput::Elements(100));
    g.bench_function("batch_100", |b| {
        b.iter_batched_ref(
            || batch.as_bytes().to_vec(),
            |body| {
                out.clear();
                black_box(process(&p, body, &mut ids, &mut out))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // The stages on their own, to see where the pipeline's time goes.
    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse", |b| {
        b.iter_batched_ref(
            || EVENT.as_bytes().to_vec(),
            |body| {
                black_box(
                    p.parser()
                        .parse_collect(
                            body,
                            &mut Ingest {
                                received_at: now(),
                                ids: &mut ids,
                            },
                        )
                        .unwrap(),
                )
            },
            BatchSize::SmallInput,
        )
    });
    let mut body = EVENT.as_bytes().to_vec();
    let parsed = p
        .parser()
        .parse_collect(
            &mut body,
            &mut Ingest {
                received_at: now(),
                ids: &mut ids,
            },
        )
        .unwrap();
    let ev = parsed.accepted().next().unwrap().clone();
    g.bench_function("map_posthog", |b| {
        b.iter(|| {
            out.clear();
            posthog_record(black_box(&ev), p.posthog()).write_json(&mut out);
        })
    });
    let mut mp = Vec::new();
    g.bench_function("map_mixpanel", |b| {
        b.iter(|| {
            out.clear();
            mixpanel_records(black_box(&ev), p.mixpanel(), &mut mp);
            for r in mp.drain(..) {
                r.record.write_json(&mut out);
            }
        })
    });
    g.bench_function("stored_encode", |b| {
        b.iter(|| {
            black_box(router_core::stored::encode(
                black_box(&ev),
                &["mixpanel", "posthog"],
            ))
        })
    });
    g.finish();

    let mut body = EVENT.as_bytes().to_vec();
    let parsed = p
        .parser()
        .parse_collect(
            &mut body,
            &mut Ingest {
                received_at: now(),
                ids: &mut ids,
            },
        )
        .unwrap();
    let e: Event = parsed.accepted().next().unwrap().clone();
    let mut fallback = e.clone();
    fallback.name = "Button Clicked".into();
    fallback.properties.clear();
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    g.bench_function("union", |b| {
        b.iter(|| black_box(p.router().route(black_box(&e))))
    });
    g.bench_function("fallback", |b| {
        b.iter(|| black_box(p.router().route(black_box(&fallback))))
    });
    g.finish();
}

criterion_group!(core, benches);
criterion_main!(core);
