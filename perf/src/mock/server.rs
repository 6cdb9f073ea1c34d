//! The hyper servers, the admin endpoint and the public handle.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use super::config::MockConfig;
use super::decode::{basic_auth, param, parse_query};
use super::fault::{Destination, Fault, FaultAction, FaultInfo, FaultQueue, FaultSpec};
use super::record::{
    Endpoint, Outcome, ReceivedRequest, Recorder, RequestMeta, RequestView, Stats,
};
use super::{mixpanel, posthog};

/// Body limit of admin requests and of requests to unknown routes.
const SMALL_BODY_LIMIT: usize = 1024 * 1024;
/// How much of a body over its limit is read and discarded before answering 413, so the
/// client sees the 413 rather than a reset connection. Beyond it the connection is closed.
const DRAIN_CAP: usize = 64 * 1024 * 1024;

/// Starts the mock destinations.
#[derive(Debug, Clone, Copy, Default)]
pub struct MockDestinations;

impl MockDestinations {
    /// Binds both servers (PostHog and Mixpanel) and serves them on the current tokio
    /// runtime until the returned handle is shut down or dropped.
    pub async fn start(config: MockConfig) -> std::io::Result<MockHandle> {
        let posthog_listener = TcpListener::bind(config.posthog_listen).await?;
        let mixpanel_listener = TcpListener::bind(config.mixpanel_listen).await?;
        let posthog_addr = posthog_listener.local_addr()?;
        let mixpanel_addr = mixpanel_listener.local_addr()?;
        let latency = u64::try_from(config.latency.as_micros()).unwrap_or(u64::MAX);
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State::default()),
            latency_us: AtomicU64::new(latency),
            seq: AtomicU64::new(0),
            next_fault_id: AtomicU64::new(0),
            changed: watch::Sender::new(0),
            release: watch::Sender::new(0),
        });
        let tasks = vec![
            tokio::spawn(serve(
                posthog_listener,
                Destination::Posthog,
                shared.clone(),
            )),
            tokio::spawn(serve(
                mixpanel_listener,
                Destination::Mixpanel,
                shared.clone(),
            )),
        ];
        info!(posthog = %posthog_addr, mixpanel = %mixpanel_addr, "Mock destinations listening.");
        Ok(MockHandle {
            shared,
            posthog_addr,
            mixpanel_addr,
            tasks,
        })
    }
}

/// State shared by both servers and the handle.
#[derive(Debug)]
struct Shared {
    config: MockConfig,
    state: Mutex<State>,
    latency_us: AtomicU64,
    seq: AtomicU64,
    next_fault_id: AtomicU64,
    /// Bumped after every recorded request (wakes `wait_until`).
    changed: watch::Sender<u64>,
    /// Bumped when faults are cleared (releases hung requests).
    release: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    recorder: Recorder,
    faults: [FaultQueue; 2],
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::Relaxed))
    }

    fn set_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.store(us, Ordering::Relaxed);
    }

    fn inject(&self, destination: Destination, fault: Fault) -> u64 {
        let id = self.next_fault_id.fetch_add(1, Ordering::Relaxed) + 1;
        debug!(%destination, id, fault = %fault, "Fault injected.");
        self.lock().faults[destination.index()].push(id, fault, Instant::now());
        id
    }

    fn clear_faults(&self) -> usize {
        let cleared = {
            let mut state = self.lock();
            state.faults.iter_mut().map(FaultQueue::clear).sum()
        };
        self.release.send_modify(|n| *n += 1);
        cleared
    }

    fn pending_faults(&self) -> Vec<FaultInfo> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut out = state.faults[0].info(Destination::Posthog, now);
        out.extend(state.faults[1].info(Destination::Mixpanel, now));
        out
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// A running pair of mock destinations. Dropping it stops the servers (their ports close
/// once the runtime has run the aborted tasks); [`MockHandle::shutdown`] waits for that.
#[derive(Debug)]
pub struct MockHandle {
    shared: Arc<Shared>,
    posthog_addr: SocketAddr,
    mixpanel_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

/// Returned by the `wait_*` methods when the condition was not met in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "timed out after {waited:?} waiting for the mock destinations \
     (posthog: {} requests, {} events; mixpanel: {} requests, {} events)",
    stats.posthog.requests, stats.posthog.events_accepted,
    stats.mixpanel.requests, stats.mixpanel.events_accepted
)]
pub struct WaitTimeout {
    /// How long it waited.
    pub waited: Duration,
    /// The counters when it gave up.
    pub stats: Stats,
}

impl MockHandle {
    /// Address of the mock PostHog.
    pub fn posthog_addr(&self) -> SocketAddr {
        self.posthog_addr
    }

    /// Address of the mock Mixpanel.
    pub fn mixpanel_addr(&self) -> SocketAddr {
        self.mixpanel_addr
    }

    /// Base URL of the mock PostHog, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn posthog_url(&self) -> String {
        format!("http://{}", self.posthog_addr)
    }

    /// Base URL of the mock Mixpanel, e.g. `http://127.0.0.1:41235` (no trailing slash).
    pub fn mixpanel_url(&self) -> String {
        format!("http://{}", self.mixpanel_addr)
    }

    /// The configuration the mocks run with.
    pub fn config(&self) -> &MockConfig {
        &self.shared.config
    }

    /// Queues a fault for one destination; returns its id.
    pub fn inject(&self, destination: Destination, fault: Fault) -> u64 {
        self.shared.inject(destination, fault)
    }

    /// Removes every queued fault of both destinations and releases hung requests (their
    /// connections are closed without an answer). Returns how many faults were removed.
    pub fn clear_faults(&self) -> usize {
        self.shared.clear_faults()
    }

    /// The faults still queued, PostHog's first, each queue in order.
    pub fn pending_faults(&self) -> Vec<FaultInfo> {
        self.shared.pending_faults()
    }

    /// Sets the latency added to every request from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.set_latency(latency);
    }

    /// The latency added to every request.
    pub fn latency(&self) -> Duration {
        self.shared.latency()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.lock().recorder.stats.clone()
    }

    /// Forgets every recorded request, counter and seen id (faults and latency stay).
    pub fn reset(&self) {
        self.shared.lock().recorder.reset();
        self.shared.notify();
    }

    /// Every recorded request of both destinations, in the order they were answered.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.lock().recorder.requests.clone()
    }

    /// The recorded requests to one endpoint, in the order they were answered.
    pub fn requests_to(&self, endpoint: Endpoint) -> Vec<ReceivedRequest> {
        let state = self.shared.lock();
        state
            .recorder
            .requests
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .cloned()
            .collect()
    }

    /// The accepted items of one endpoint, in order (needs `Retention::Full`).
    pub fn accepted(&self, endpoint: Endpoint) -> Vec<Value> {
        let state = self.shared.lock();
        state
            .recorder
            .requests
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .flat_map(|r| r.accepted.iter().cloned())
            .collect()
    }

    /// The ids (`uuid` / `$insert_id` / distinct or group id) of the accepted items of one
    /// endpoint, in order (`""` for an item without one; needs retention other than
    /// `CountsOnly`).
    pub fn accepted_ids(&self, endpoint: Endpoint) -> Vec<String> {
        let state = self.shared.lock();
        state
            .recorder
            .requests
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .flat_map(|r| r.accepted_ids.iter().cloned())
            .collect()
    }

    /// The events PostHog accepted, in order, as sent (without the batch envelope).
    pub fn posthog_events(&self) -> Vec<Value> {
        self.accepted(Endpoint::PosthogCapture)
    }

    /// The events Mixpanel `/import` accepted, in order.
    pub fn mixpanel_imports(&self) -> Vec<Value> {
        self.accepted(Endpoint::MixpanelImport)
    }

    /// The events Mixpanel `/track` accepted, in order.
    pub fn mixpanel_track(&self) -> Vec<Value> {
        self.accepted(Endpoint::MixpanelTrack)
    }

    /// The profile updates Mixpanel `/engage` accepted, in order.
    pub fn mixpanel_engage(&self) -> Vec<Value> {
        self.accepted(Endpoint::MixpanelEngage)
    }

    /// The group updates Mixpanel `/groups` accepted, in order.
    pub fn mixpanel_groups(&self) -> Vec<Value> {
        self.accepted(Endpoint::MixpanelGroups)
    }

    /// Waits until `condition` holds for the counters, or `timeout` passes (tokio time: with
    /// a paused clock the timeout may elapse while the runtime waits on sockets).
    pub async fn wait_until(
        &self,
        mut condition: impl FnMut(&Stats) -> bool,
        timeout: Duration,
    ) -> Result<Stats, WaitTimeout> {
        let mut changed = self.shared.changed.subscribe();
        let wait = async {
            loop {
                let stats = self.stats();
                if condition(&stats) {
                    return stats;
                }
                if changed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| WaitTimeout {
                waited: timeout,
                stats: self.stats(),
            })
    }

    /// Waits until `destination` has accepted at least `n` events in total.
    pub async fn wait_for_events(
        &self,
        destination: Destination,
        n: u64,
        timeout: Duration,
    ) -> Result<Stats, WaitTimeout> {
        self.wait_until(|s| s.of(destination).events_accepted >= n, timeout)
            .await
    }

    /// Waits until `destination` has received at least `n` requests in total.
    pub async fn wait_for_requests(
        &self,
        destination: Destination,
        n: u64,
        timeout: Duration,
    ) -> Result<Stats, WaitTimeout> {
        self.wait_until(|s| s.of(destination).requests >= n, timeout)
            .await
    }

    /// Stops both servers, closes their connections and waits until the ports are closed.
    pub async fn shutdown(mut self) {
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The accept loop of one server. Aborting it drops the `JoinSet`, which aborts every
/// connection (hung requests included).
async fn serve(listener: TcpListener, destination: Destination, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| handle(shared.clone(), destination, req));
                        let mut builder = http1::Builder::new();
                        builder.timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true);
                        if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                            trace!(%destination, %peer, %error, "Connection ended.");
                        }
                    });
                }
                Err(error) => {
                    warn!(%destination, %error, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Returned by the service to make hyper close the connection without an answer.
#[derive(Debug, thiserror::Error)]
#[error("connection closed by the mock without an answer")]
struct Closed;

/// A request body read up to a limit.
struct BodyRead {
    bytes: Bytes,
    total: usize,
    over_limit: bool,
    /// The body was too large even to drain; the connection must close.
    abandoned: bool,
}

async fn read_body(
    mut body: Incoming,
    limit: usize,
    content_length: Option<usize>,
) -> Result<BodyRead, hyper::Error> {
    if content_length.is_some_and(|len| len > limit.saturating_add(DRAIN_CAP)) {
        return Ok(BodyRead {
            bytes: Bytes::new(),
            total: content_length.unwrap_or(0),
            over_limit: true,
            abandoned: true,
        });
    }
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > limit {
            buf = BytesMut::new();
            if total > limit.saturating_add(DRAIN_CAP) {
                return Ok(BodyRead {
                    bytes: Bytes::new(),
                    total,
                    over_limit: true,
                    abandoned: true,
                });
            }
        } else {
            buf.extend_from_slice(&data);
        }
    }
    Ok(BodyRead {
        bytes: buf.freeze(),
        total,
        over_limit: total > limit,
        abandoned: false,
    })
}

fn to_response(outcome: &Outcome, close: bool) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(outcome.body.clone())));
    *response.status_mut() =
        StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(outcome.content_type),
    );
    if let Some(value) = outcome
        .retry_after
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert(header::RETRY_AFTER, value);
    }
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn header_string(req: &Request<Incoming>, name: header::HeaderName) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// One request to either server.
async fn handle(
    shared: Arc<Shared>,
    destination: Destination,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Closed> {
    let path = req.uri().path().to_owned();
    if path == "/__admin" || path.starts_with("/__admin/") {
        return Ok(admin(&shared, destination, req).await);
    }
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let method = req.method().clone();
    let query = req.uri().query().map(str::to_owned);
    let content_type = header_string(&req, header::CONTENT_TYPE);
    let content_encoding = header_string(&req, header::CONTENT_ENCODING);
    let authorization = header_string(&req, header::AUTHORIZATION);
    let content_length = header_string(&req, header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
    let cfg = &shared.config;
    let endpoint = match destination {
        Destination::Posthog if posthog::is_route(&path) => Endpoint::PosthogCapture,
        Destination::Mixpanel => mixpanel::route(&path).unwrap_or(Endpoint::Other),
        Destination::Posthog => Endpoint::Other,
    };
    let limit = match endpoint {
        Endpoint::PosthogCapture => posthog::body_limit(&cfg.posthog, &path),
        Endpoint::Other => SMALL_BODY_LIMIT,
        mp => mixpanel::body_limit(&cfg.mixpanel, mp),
    };
    let body = read_body(req.into_body(), limit, content_length)
        .await
        .map_err(|_| Closed)?;
    let meta = RequestMeta {
        seq,
        destination,
        endpoint,
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        content_encoding: content_encoding.clone(),
        auth_user: authorization
            .as_deref()
            .and_then(basic_auth)
            .map(|(user, _)| user),
        body_bytes: body.total,
    };

    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let finish = |mut outcome: Outcome, fault: Option<String>, quota_drop: bool| {
        let response = to_response(&outcome, body.abandoned);
        trace!(%destination, seq, path = %meta.path, status = outcome.status, "Request answered.");
        shared
            .lock()
            .recorder
            .record(meta.clone(), &mut outcome, fault, quota_drop, cfg.retention);
        shared.notify();
        Ok(response)
    };

    // Requests that no fault touches.
    if endpoint == Endpoint::Other {
        return finish(
            Outcome::json(
                404,
                &json!({"status": 404, "error": format!("no route {path}")}),
            ),
            None,
            false,
        );
    }
    if endpoint == Endpoint::PosthogCapture && method == Method::OPTIONS {
        return finish(Outcome::json(200, &json!({"status": 1})), None, false);
    }
    if endpoint == Endpoint::PosthogCapture && method != Method::POST && method != Method::GET {
        return finish(
            posthog::error(405, "method_not_allowed", "method not allowed"),
            None,
            false,
        );
    }

    // Faults.
    let applied = shared.lock().faults[destination.index()].next_for(&path, Instant::now());
    let mut partial: Vec<usize> = Vec::new();
    let mut quota_drop = false;
    let fault = applied.as_ref().map(|a| a.description.clone());
    if let Some(applied) = applied {
        debug!(%destination, seq, %path, fault = %applied.description, "Fault applied.");
        match applied.action {
            FaultAction::Status {
                status,
                retry_after,
                body: custom,
            } => {
                let (content_type, default_body) = match destination {
                    Destination::Posthog => ("application/json", posthog::fault_body(status)),
                    Destination::Mixpanel => mixpanel::fault_body(&cfg.mixpanel, endpoint, status),
                };
                let (content_type, text) = match custom {
                    Some(text)
                        if text.trim_start().starts_with(['{', '['])
                            && serde_json::from_str::<Value>(&text).is_ok() =>
                    {
                        ("application/json", text)
                    }
                    Some(text) => ("text/plain", text),
                    None => (content_type, default_body),
                };
                let mut outcome = Outcome::reply(status, content_type, text);
                outcome.retry_after = retry_after;
                return finish(outcome, fault, false);
            }
            FaultAction::Hang => {
                shared
                    .lock()
                    .recorder
                    .record_unanswered(destination, body.total, true);
                shared.notify();
                let mut release = shared.release.subscribe();
                let released = async {
                    if release.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                match applied.deadline {
                    Some(deadline) => {
                        tokio::select! {
                            () = released => {}
                            () = tokio::time::sleep_until(deadline) => {}
                        }
                    }
                    None => released.await,
                }
                shared
                    .lock()
                    .recorder
                    .record_dropped_connection(destination);
                shared.notify();
                return Err(Closed);
            }
            FaultAction::Disconnect => {
                let mut state = shared.lock();
                state
                    .recorder
                    .record_unanswered(destination, body.total, false);
                state.recorder.record_dropped_connection(destination);
                drop(state);
                shared.notify();
                return Err(Closed);
            }
            FaultAction::PartialReject { indexes } => partial = indexes,
            FaultAction::QuotaDrop => quota_drop = true,
        }
    }

    if body.over_limit {
        let outcome = match destination {
            Destination::Posthog => posthog::too_large(limit),
            Destination::Mixpanel => mixpanel::too_large(&cfg.mixpanel, endpoint),
        };
        return finish(outcome, fault, false);
    }

    let view = RequestView {
        method: method.as_str(),
        query: query.as_deref().unwrap_or(""),
        content_type: content_type.as_deref(),
        content_encoding: content_encoding.as_deref(),
        authorization: authorization.as_deref(),
        body: &body.bytes,
    };
    let outcome = match endpoint {
        Endpoint::PosthogCapture => posthog::capture(&cfg.posthog, &view),
        Endpoint::MixpanelImport => {
            mixpanel::import(&cfg.mixpanel, &view, &partial, mixpanel::now_ms())
        }
        Endpoint::MixpanelTrack => mixpanel::track(&cfg.mixpanel, &view, mixpanel::now_ms()),
        Endpoint::MixpanelEngage | Endpoint::MixpanelGroups => {
            mixpanel::updates(&cfg.mixpanel, &view, endpoint)
        }
        Endpoint::Other => Outcome::json(404, &json!({"status": 404})),
    };
    finish(outcome, fault, quota_drop)
}

fn admin_json(status: u16, value: &Value) -> Response<Full<Bytes>> {
    to_response(&Outcome::json(status, value), false)
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|e| json!({"error": e.to_string()}))
}

/// The admin endpoint (same on both servers; faults default to the receiving server).
async fn admin(
    shared: &Shared,
    destination: Destination,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let body = match read_body(req.into_body(), SMALL_BODY_LIMIT, None).await {
        Ok(b) if !b.over_limit => b.bytes,
        Ok(_) => return admin_json(413, &json!({"error": "admin body too large"})),
        Err(e) => return admin_json(400, &json!({"error": e.to_string()})),
    };
    let parse_body = || -> Result<Value, String> {
        serde_json::from_slice(&body).map_err(|e| format!("invalid JSON: {e}"))
    };
    match (method, path.as_str()) {
        (Method::GET, "/__admin/stats") => {
            admin_json(200, &to_value(&shared.lock().recorder.stats))
        }
        (Method::GET, "/__admin/faults") => admin_json(200, &to_value(&shared.pending_faults())),
        (Method::POST, "/__admin/faults") => {
            let value = match parse_body() {
                Ok(v) => v,
                Err(e) => return admin_json(400, &json!({"error": e})),
            };
            let specs = match value {
                Value::Array(items) => items,
                other => vec![other],
            };
            let mut faults = Vec::with_capacity(specs.len());
            for spec in specs {
                let parsed = serde_json::from_value::<FaultSpec>(spec)
                    .map_err(|e| e.to_string())
                    .and_then(|s| s.into_fault(destination));
                match parsed {
                    Ok(f) => faults.push(f),
                    Err(e) => return admin_json(400, &json!({"error": e})),
                }
            }
            let ids: Vec<u64> = faults
                .into_iter()
                .map(|(d, f)| shared.inject(d, f))
                .collect();
            admin_json(200, &json!({"queued": ids}))
        }
        (Method::DELETE, "/__admin/faults") => {
            admin_json(200, &json!({"cleared": shared.clear_faults()}))
        }
        (Method::GET, "/__admin/latency") => {
            admin_json(200, &json!({"latency_ms": shared.latency().as_millis()}))
        }
        (Method::POST, "/__admin/latency") => {
            let value = match parse_body() {
                Ok(v) => v,
                Err(e) => return admin_json(400, &json!({"error": e})),
            };
            match value.get("ms").and_then(Value::as_u64) {
                Some(ms) => {
                    shared.set_latency(Duration::from_millis(ms));
                    admin_json(200, &json!({"latency_ms": ms}))
                }
                None => admin_json(400, &json!({"error": "expected {\"ms\": <integer>}"})),
            }
        }
        (Method::POST, "/__admin/reset") => {
            shared.lock().recorder.reset();
            shared.notify();
            admin_json(200, &json!({"reset": true}))
        }
        (Method::GET, "/__admin/requests") => {
            let which = param(&query, "destination").unwrap_or(destination.as_str());
            let state = shared.lock();
            let requests: Vec<&ReceivedRequest> = state
                .recorder
                .requests
                .iter()
                .filter(|r| which == "all" || r.destination.as_str() == which)
                .collect();
            admin_json(200, &to_value(&requests))
        }
        (_, p) => admin_json(404, &json!({"error": format!("no admin route {p}")})),
    }
}
