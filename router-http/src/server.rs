//! The accept loop: connection cap, HTTP/1.1 connections with a header deadline, a spawned
//! (panic-isolated, run-to-completion) task per request, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinError, JoinSet};
use tracing::{debug, error, info, warn};

use crate::error::ServeError;
use crate::handler::{Route, internal_error};
use crate::state::AppState;

/// Serves HTTP/1.1 on `listener` until `shutdown` completes, then shuts down gracefully.
///
/// - At most `max_connections` connections are served at once; one over the cap waits up to
///   `connection_queue_timeout_ms` for a slot, then is closed unanswered (counted).
/// - A client must send its request head within `header_read_timeout_ms` (this also bounds
///   how long an idle kept-alive connection is kept) and its body within
///   `body_read_timeout_ms` (408).
/// - Each request runs in its own task: it finishes (and its events are appended) even if
///   the client disconnects, and a panic in it answers 500 and is counted
///   (`router_http_panics_total{scope="request"}`) instead of taking the connection down.
///
/// On shutdown: the listener is closed (new connections are refused), readiness and new
/// ingest requests answer 503, idle connections are closed, and requests in flight are
/// finished and answered, for at most `shutdown_grace_ms`; connections still open then are
/// cut and [`ServeError::GraceExpired`] is returned. The log is not closed here: call
/// `Log::close` after `serve` returns.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let cfg = state.config().clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let mut conns = JoinSet::new();
    let evictor = state.inner.limiters.any().then(|| {
        let state = state.clone();
        let period = Duration::from_secs(cfg.rate_limit.evict_interval_secs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                state.inner.limiters.evict_idle();
            }
        })
    });
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "Listening for events.");
    }
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(res) = conns.join_next(), if !conns.is_empty() => reap(&state, res),
            res = listener.accept() => match res {
                Ok((stream, peer)) => {
                    state.inner.metrics.connections_accepted.fetch_add(1, Ordering::Relaxed);
                    let permit = permits.clone().try_acquire_owned().ok();
                    conns.spawn(connection(
                        state.clone(),
                        stream,
                        peer,
                        permit,
                        permits.clone(),
                        stop_rx.clone(),
                    ));
                }
                Err(e) => {
                    // Usually transient (EMFILE, ECONNABORTED): back off a little.
                    warn!(error = %e, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    state.begin_shutdown();
    let _ = stop_tx.send(true);
    info!(
        connections = conns.len(),
        "Shutting down: no new connections; finishing requests in flight."
    );
    state.inner.tasks.close();
    let grace = Duration::from_millis(cfg.shutdown_grace_ms);
    let drained = tokio::time::timeout(grace, async {
        while let Some(res) = conns.join_next().await {
            reap(&state, res);
        }
        state.inner.tasks.wait().await;
    })
    .await;
    if let Some(e) = evictor {
        e.abort();
    }
    match drained {
        Ok(()) => {
            info!("HTTP server stopped.");
            Ok(())
        }
        Err(_) => {
            let err = ServeError::GraceExpired {
                grace_ms: cfg.shutdown_grace_ms,
                connections: conns.len(),
                requests: state.inner.tasks.len(),
            };
            conns.abort_all();
            warn!(error = %err, "HTTP server stopped before every request finished.");
            Err(err)
        }
    }
}

/// Counts connection tasks that panicked (the last-resort guard).
fn reap(state: &AppState, res: Result<(), JoinError>) {
    if let Err(e) = res {
        if e.is_panic() {
            state
                .inner
                .metrics
                .panics_connection
                .fetch_add(1, Ordering::Relaxed);
            error!(error = %e, "A connection task panicked.");
        }
    }
}

/// Decrements the open-connections gauge when dropped.
struct OpenGuard(AppState);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0
            .inner
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(
    state: AppState,
    stream: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let _permit = match permit {
        Some(p) => p,
        None => {
            let wait = Duration::from_millis(state.config().connection_queue_timeout_ms);
            let acquired = tokio::select! {
                p = tokio::time::timeout(wait, permits.acquire_owned()) => p.ok().and_then(Result::ok),
                () = stopped(&mut stop) => None,
            };
            match acquired {
                Some(p) => p,
                None => {
                    state
                        .inner
                        .metrics
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    debug!(%peer, "Connection refused: max_connections are open.");
                    return;
                }
            }
        }
    };
    state
        .inner
        .metrics
        .connections_open
        .fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(state.clone());
    let _ = stream.set_nodelay(true);
    let header_timeout = state.header_read_timeout();
    let svc = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(dispatch(state, req, peer).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    let mut conn = std::pin::pin!(conn);
    let res = tokio::select! {
        res = conn.as_mut() => res,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        debug!(%peer, error = %e, "Connection ended with an error.");
    }
}

/// Resolves once shutdown has started (or the server is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs the request in its own tracked task; a panic becomes a 500 and is counted.
async fn dispatch(
    state: AppState,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let route = Route::from_path(req.uri().path());
    let st = state.clone();
    let task = state
        .inner
        .tasks
        .spawn(async move { st.handle(req, peer).await });
    match task.await {
        Ok(resp) => resp,
        Err(e) => {
            if e.is_panic() {
                state
                    .inner
                    .metrics
                    .panics_request
                    .fetch_add(1, Ordering::Relaxed);
                error!(error = %e, "A request handler panicked; answered 500.");
            }
            state
                .inner
                .metrics
                .observe(route.endpoint(), 500, start.elapsed());
            internal_error()
        }
    }
}
