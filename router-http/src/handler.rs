//! Routing of paths and the endpoints: ingest (`/collect`, `/v1/*`, `/mp/collect`), GA4
//! validation, health, readiness and metrics.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Body;
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use router_core::parse::{Batch, Ga4Validation, Ingest, Item, SegmentCall, ValidationMessage};
use router_core::{RequestError, Timestamp, stored};
use router_sinks::buffer::BufferError;
use serde::Serialize;
use tracing::{debug, error, warn};

use crate::auth::{self, KeySet};
use crate::body;
use crate::cors::INGEST_METHODS;
use crate::dead_letter::{RejectedLine, raw_value};
use crate::error::{ApiError, json_response};
use crate::limit::retry_after_secs;
use crate::metrics::{Endpoint, LimitScope};
use crate::state::{AppState, UuidV7Ids};

/// Methods of the probe endpoints.
const PROBE_METHODS: &str = "GET, HEAD";

/// What a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Collect,
    Segment(SegmentCall),
    Ga4,
    Ga4Debug,
    Posthog,
    Health,
    Ready,
    Metrics,
    NotFound,
}

impl Route {
    /// Maps a path (one trailing `/` tolerated) to its route.
    pub(crate) fn from_path(path: &str) -> Route {
        let p = if path.len() > 1 {
            path.strip_suffix('/').unwrap_or(path)
        } else {
            path
        };
        match p {
            "/collect" => Route::Collect,
            "/mp/collect" => Route::Ga4,
            "/debug/mp/collect" => Route::Ga4Debug,
            "/capture" | "/batch" | "/e" | "/i/v0/e" => Route::Posthog,
            "/health" => Route::Health,
            "/ready" => Route::Ready,
            "/metrics" => Route::Metrics,
            _ => p
                .strip_prefix("/v1/")
                .and_then(SegmentCall::from_path)
                .map_or(Route::NotFound, Route::Segment),
        }
    }

    pub(crate) fn endpoint(self) -> Endpoint {
        match self {
            Route::Collect => Endpoint::Collect,
            Route::Segment(_) => Endpoint::Segment,
            Route::Ga4 => Endpoint::Ga4,
            Route::Ga4Debug => Endpoint::Ga4Debug,
            Route::Posthog => Endpoint::Posthog,
            Route::Health => Endpoint::Health,
            Route::Ready => Endpoint::Ready,
            Route::Metrics => Endpoint::Metrics,
            Route::NotFound => Endpoint::Unknown,
        }
    }

    /// The path as written in dead letters (canonical spelling, bounded set).
    fn name(self) -> &'static str {
        match self {
            Route::Collect => "/collect",
            Route::Segment(SegmentCall::Batch) => "/v1/batch",
            Route::Segment(SegmentCall::Single(k)) => match k {
                router_core::Kind::Track => "/v1/track",
                router_core::Kind::Identify => "/v1/identify",
                router_core::Kind::Page => "/v1/page",
                router_core::Kind::Screen => "/v1/screen",
                router_core::Kind::Group => "/v1/group",
                router_core::Kind::Alias => "/v1/alias",
            },
            Route::Ga4 => "/mp/collect",
            Route::Ga4Debug => "/debug/mp/collect",
            Route::Posthog => "/batch",
            Route::Health => "/health",
            Route::Ready => "/ready",
            Route::Metrics => "/metrics",
            Route::NotFound => "",
        }
    }
}

/// Answers one request and counts it.
pub(crate) async fn handle<B>(
    state: &AppState,
    req: Request<B>,
    peer: SocketAddr,
) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let start = Instant::now();
    let route = Route::from_path(req.uri().path());
    let resp = match route {
        Route::Health | Route::Ready | Route::Metrics => probe(state, route, req.method()),
        Route::NotFound => ApiError::NotFound.into_response(),
        _ => ingest(state, route, req, peer).await,
    };
    state
        .inner
        .metrics
        .observe(route.endpoint(), resp.status().as_u16(), start.elapsed());
    resp
}

/// The answer when a handler panicked (a bug; counted by the caller).
pub(crate) fn internal_error() -> Response<Full<Bytes>> {
    #[derive(Serialize)]
    struct B {
        status: &'static str,
        reason: &'static str,
    }
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &B {
            status: "error",
            reason: "internal error",
        },
    )
}

// === probes ===

fn probe(state: &AppState, route: Route, method: &Method) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return ApiError::MethodNotAllowed(PROBE_METHODS).into_response();
    }
    #[derive(Serialize)]
    struct Status<'a> {
        status: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    }
    match route {
        Route::Ready => match readiness(state) {
            Ok(()) => json_response(
                StatusCode::OK,
                &Status {
                    status: "ready",
                    reason: None,
                },
            ),
            Err(reason) => {
                let mut r = json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &Status {
                        status: "not ready",
                        reason: Some(reason),
                    },
                );
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(state.inner.config.retry_after_secs),
                );
                r
            }
        },
        Route::Metrics => {
            let mut r = Response::new(Full::new(Bytes::from(state.render_metrics())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        _ => json_response(
            StatusCode::OK,
            &Status {
                status: "ok",
                reason: None,
            },
        ),
    }
}

/// Ready: not shutting down, the log writable and not full.
fn readiness(state: &AppState) -> Result<(), &'static str> {
    let inner = &state.inner;
    if state.is_shutting_down() {
        return Err("shutting down");
    }
    if inner.log_closed.load(Ordering::Acquire) {
        return Err("the event buffer is closed");
    }
    let m = inner.log.metrics();
    if m.poisoned {
        return Err("the event buffer failed to write; a restart is needed");
    }
    if m.bytes_on_disk >= m.max_total_bytes
        || m.bytes_on_disk >= inner.full_at.load(Ordering::Acquire)
    {
        return Err("the event buffer is full");
    }
    Ok(())
}

// === ingest ===

async fn ingest<B>(
    state: &AppState,
    route: Route,
    req: Request<B>,
    peer: SocketAddr,
) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let (parts, body) = req.into_parts();
    let cors = &state.inner.cors;
    let mut resp = match parts.method {
        Method::OPTIONS => return cors.preflight(&parts.headers),
        Method::POST => ingest_post(state, route, &parts, body, peer)
            .await
            .unwrap_or_else(ApiError::into_response),
        _ => ApiError::MethodNotAllowed(INGEST_METHODS).into_response(),
    };
    cors.decorate(cors.allowed_origin(&parts.headers), &mut resp);
    if state.is_shutting_down() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Which secret a route checks, and the one the request presents outside its body.
fn credentials<'s>(
    state: &'s AppState,
    route: Route,
    parts: &Parts,
) -> (&'s KeySet, Option<String>) {
    let query = parts.uri.query();
    match route {
        Route::Ga4 => (
            &state.inner.ga4_secrets,
            auth::query_param(query, "api_secret"),
        ),
        _ => (
            &state.inner.write_keys,
            auth::basic_auth_user(&parts.headers).or_else(|| auth::query_param(query, "writeKey")),
        ),
    }
}

/// 401 unless `key` is accepted, then the per-key rate limit.
fn admit_key(state: &AppState, keys: &KeySet, key: &str) -> Result<(), ApiError> {
    if keys.is_required() && !keys.contains(key) {
        state
            .inner
            .metrics
            .auth_failures
            .fetch_add(1, Ordering::Relaxed);
        debug!(key = %auth::redact(key), "Unknown write key refused.");
        return Err(ApiError::Unauthorized("unknown write key"));
    }
    state.inner.limiters.check_key(key).map_err(|wait| {
        state.inner.metrics.rate_limited(LimitScope::WriteKey);
        ApiError::RateLimited {
            retry_after_secs: retry_after_secs(wait),
        }
    })
}

fn unavailable(state: &AppState, reason: &'static str) -> ApiError {
    ApiError::Unavailable {
        retry_after_secs: state.inner.config.retry_after_secs,
        reason,
    }
}

fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp::from_millis(ms)
        .or_else(|| Timestamp::from_millis(0))
        .expect("the epoch is a valid timestamp")
}

fn request_error(e: &RequestError) -> ApiError {
    match e {
        RequestError::TooLarge { .. } => ApiError::TooLarge(e.reason()),
        _ => ApiError::bad_request(e.field(), e.reason()),
    }
}

async fn ingest_post<B>(
    state: &AppState,
    route: Route,
    parts: &Parts,
    body: B,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let inner = &state.inner;
    let cfg = &inner.config;
    // The receive time is when the request head arrived, not when a slow body finished.
    let received_at = now();
    if state.is_shutting_down() {
        return Err(unavailable(state, "shutting down; retry later"));
    }
    let ip = inner.client_ip.resolve(peer, &parts.headers);
    inner.limiters.check_ip(ip).map_err(|wait| {
        inner.metrics.rate_limited(LimitScope::Ip);
        ApiError::RateLimited {
            retry_after_secs: retry_after_secs(wait),
        }
    })?;
    let (encoding, form) = body::check_headers_for(&parts.headers, route == Route::Posthog)?;
    if route == Route::Posthog {
        let compression = auth::query_param(parts.uri.query(), "compression").unwrap_or_default();
        if compression.eq_ignore_ascii_case("lz64") || compression.eq_ignore_ascii_case("lz-string")
        {
            return Err(ApiError::Unsupported(
                "lz64 compression is not supported; send gzip-js or plain JSON".into(),
            ));
        }
    }
    let (keys, presented) = credentials(state, route, parts);
    match (&presented, route) {
        (_, Route::Ga4Debug) => {}
        (Some(k), _) => admit_key(state, keys, k)?,
        // GA4 bodies carry no secret: refuse before reading.
        (None, Route::Ga4) if keys.is_required() => {
            inner.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::Unauthorized("api_secret is required"));
        }
        (None, _) => {}
    }
    let cap = match route {
        Route::Collect => cfg.max_body_bytes.collect,
        Route::Segment(_) => cfg.max_body_bytes.segment,
        Route::Posthog => cfg.max_body_bytes.posthog,
        _ => cfg.max_body_bytes.ga4,
    };
    let deadline = std::time::Duration::from_millis(cfg.body_read_timeout_ms);
    let raw = body::read(body, &parts.headers, cap, deadline).await?;
    let mut buf = body::decode(raw, encoding, cfg.max_decompressed_bytes)?;
    // posthog-js sends gzip with `?compression=gzip-js` and no Content-Encoding: PostHog
    // detects it by its magic bytes, and so do we (with the same cap).
    if route == Route::Posthog && buf.starts_with(&[0x1f, 0x8b]) && encoding != body::Encoding::Gzip
    {
        buf = body::decode(
            Bytes::from(buf),
            body::Encoding::Gzip,
            cfg.max_decompressed_bytes,
        )?;
    }
    let parser = inner.pipeline.parser();
    if route == Route::Ga4Debug {
        return Ok(ga4_debug(parser.validate_ga4(&mut buf)));
    }
    // Parsing is synchronous; the context (not `Send`) is dropped before the next await.
    let (parsed, body_len) = {
        let mut ids = UuidV7Ids;
        let mut ctx = Ingest {
            received_at,
            ids: &mut ids,
        };
        let parsed = match route {
            Route::Collect => parser.parse_collect(&mut buf, &mut ctx),
            Route::Segment(call) => parser.parse_segment(call, &mut buf, &mut ctx),
            Route::Posthog => parser.parse_posthog(&mut buf, form, &mut ctx),
            _ => parser.parse_ga4(&mut buf, &mut ctx),
        };
        (parsed, buf.len())
    };
    drop(buf);
    let batch = parsed.map_err(|e| request_error(&e))?;
    if presented.is_none() {
        match (&batch.write_key, route) {
            (Some(k), Route::Collect | Route::Segment(_) | Route::Posthog) => {
                admit_key(state, keys, k)?
            }
            _ if keys.is_required() => {
                inner.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::Unauthorized(
                    "a write key is required (Basic auth user, writeKey in the body, or ?writeKey=)",
                ));
            }
            _ => {}
        }
    }
    store(state, route, batch, ip, body_len).await
}

/// Routes and appends the accepted events (one append), keeps the rejected ones, answers.
async fn store(
    state: &AppState,
    route: Route,
    batch: Batch,
    ip: IpAddr,
    body_len: usize,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let inner = &state.inner;
    let ep = route.endpoint();
    let router = inner.pipeline.router();
    // GA4 Measurement Protocol is sent server to server: the peer is the sender's backend, not
    // the user (GA4 clients pass the user's address as `ip_override`, kept in `context.ip`).
    let ip_value = (inner.config.forward_client_ip && route != Route::Ga4)
        .then(|| serde_json::Value::String(ip.to_string()));
    let mut items = batch.items;
    let mut records = Vec::with_capacity(items.len());
    for item in &mut items {
        if let Item::Accepted(ev) = item {
            if let Some(ip) = &ip_value {
                ev.context.entry("ip").or_insert_with(|| ip.clone());
            }
            let r = router.route(ev);
            records.push(Bytes::from(stored::encode(
                ev,
                &router.destination_names(&r),
            )));
        }
    }
    let accepted = records.len();
    inner.metrics.events(ep, items.len(), 0, 0);
    if accepted > 0 {
        append(state, records).await?;
        inner.metrics.events(ep, 0, accepted, body_len);
    }
    let rejected: Vec<Rejected<'_>> = items
        .iter()
        .enumerate()
        .filter_map(|(index, it)| match it {
            Item::Rejected { error, raw } => Some(Rejected {
                index,
                field: &error.field,
                reason: &error.reason,
                raw,
            }),
            Item::Accepted(_) => None,
        })
        .collect();
    if !rejected.is_empty() {
        inner.metrics.rejected(ep, rejected.iter().map(|r| r.field));
        keep_rejected(state, route, &rejected).await;
    }
    if route == Route::Ga4 {
        // Google answers 2xx to anything it could read; invalid events are in the rejected
        // dead-letter file (validate with /debug/mp/collect).
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        return Ok(r);
    }
    #[derive(Serialize)]
    struct Answer<'a> {
        status: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        field: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
        accepted: usize,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        rejected: &'a [Rejected<'a>],
    }
    if accepted == 0 {
        if let Some(first) = rejected.first() {
            // Nothing usable: a wholly bad request, naming the first problem.
            return Ok(json_response(
                StatusCode::BAD_REQUEST,
                &Answer {
                    status: "error",
                    field: Some(first.field),
                    reason: Some(first.reason),
                    accepted: 0,
                    rejected: &rejected,
                },
            ));
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &Answer {
            status: "ok",
            field: None,
            reason: None,
            accepted,
            rejected: &rejected,
        },
    ))
}

/// One rejected item as reported to the client.
#[derive(Serialize)]
struct Rejected<'a> {
    index: usize,
    field: &'a str,
    reason: &'a str,
    #[serde(skip)]
    raw: &'a str,
}

/// One append for the whole request; resolves once the records are durable.
async fn append(state: &AppState, records: Vec<Bytes>) -> Result<(), ApiError> {
    let inner = &state.inner;
    match inner.log.append(records).await {
        Ok(_) => {
            inner.full_at.store(u64::MAX, Ordering::Release);
            Ok(())
        }
        Err(BufferError::Full { .. }) => {
            inner.metrics.log_full.fetch_add(1, Ordering::Relaxed);
            let on_disk = inner.log.metrics().bytes_on_disk;
            inner.full_at.store(on_disk, Ordering::Release);
            Err(unavailable(state, "the event buffer is full; retry later"))
        }
        Err(BufferError::RecordTooLarge { len, limit }) => Err(ApiError::TooLarge(format!(
            "an event takes {len} bytes stored, over the buffer's record limit of {limit} bytes"
        ))),
        Err(BufferError::Closed) => {
            inner.metrics.log_errors.fetch_add(1, Ordering::Relaxed);
            inner.log_closed.store(true, Ordering::Release);
            Err(unavailable(state, "shutting down; retry later"))
        }
        Err(e) => {
            inner.metrics.log_errors.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "Append to the event buffer failed; answering 503.");
            Err(unavailable(
                state,
                "the event buffer cannot be written; retry later",
            ))
        }
    }
}

/// Appends the rejected items to the dead-letter file (errors are logged and counted: the
/// client already knows these items were refused).
async fn keep_rejected(state: &AppState, route: Route, rejected: &[Rejected<'_>]) {
    let inner = &state.inner;
    let time = now();
    let mut out = Vec::with_capacity(rejected.len() * 256);
    for r in rejected {
        let line = RejectedLine {
            time,
            endpoint: route.name(),
            index: r.index,
            field: r.field,
            reason: r.reason,
            raw: raw_value(r.raw),
        };
        if serde_json::to_writer(&mut out, &line).is_ok() {
            out.push(b'\n');
        }
    }
    match inner.dead_letters.append(out).await {
        Ok(()) => {
            inner
                .metrics
                .dead_letters_written
                .fetch_add(rejected.len() as u64, Ordering::Relaxed);
        }
        Err(e) => {
            inner
                .metrics
                .dead_letter_errors
                .fetch_add(1, Ordering::Relaxed);
            error!(
                error = %e,
                count = rejected.len(),
                file = %state.rejected_file().display(),
                "Rejected events could not be written to the dead-letter file."
            );
        }
    }
}

/// `/debug/mp/collect`: 200 with Google's `validationMessages` (a body that is not JSON is one
/// `VALUE_INVALID` message); nothing is kept.
fn ga4_debug(result: Result<Ga4Validation, RequestError>) -> Response<Full<Bytes>> {
    let v = result.unwrap_or_else(|e| Ga4Validation {
        validation_messages: vec![ValidationMessage {
            field_path: String::new(),
            description: e.to_string(),
            validation_code: "VALUE_INVALID",
        }],
    });
    json_response(StatusCode::OK, &v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use router_core::Kind;

    #[test]
    fn routes() {
        assert_eq!(Route::from_path("/collect"), Route::Collect);
        assert_eq!(Route::from_path("/collect/"), Route::Collect);
        assert_eq!(
            Route::from_path("/v1/t"),
            Route::Segment(SegmentCall::Single(Kind::Track))
        );
        assert_eq!(
            Route::from_path("/v1/batch"),
            Route::Segment(SegmentCall::Batch)
        );
        assert_eq!(Route::from_path("/v1/nope"), Route::NotFound);
        assert_eq!(Route::from_path("/mp/collect"), Route::Ga4);
        assert_eq!(Route::from_path("/debug/mp/collect"), Route::Ga4Debug);
        assert_eq!(Route::from_path("/"), Route::NotFound);
        assert_eq!(Route::from_path("//"), Route::NotFound);
        assert!(now().millis() > 1_700_000_000_000);
    }
}
