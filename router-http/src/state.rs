//! The shared state of the server: pipeline, log, settings, limiters, counters.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Body;
use hyper::{Request, Response};
use router_core::Pipeline;
use router_core::parse::IdSource;
use router_sinks::buffer::Log;
use tokio_util::task::TaskTracker;

use crate::auth::KeySet;
use crate::config::HttpConfig;
use crate::cors::Cors;
use crate::dead_letter::DeadLetters;
use crate::error::ConfigError;
use crate::limit::{ClientIp, Limiters};
use crate::metrics::{HttpMetrics, MetricsSource};

/// Everything a request needs; cheap to clone (one `Arc`).
///
/// Build it with [`AppState::new`], register extra metrics with
/// [`AppState::add_metrics_source`], and hand it to [`serve`](crate::serve). Tests and other
/// embedders can also call [`AppState::handle`] directly, without a socket.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("data_dir", &self.inner.data_dir)
            .field("shutting_down", &self.is_shutting_down())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) log: Log,
    pub(crate) data_dir: PathBuf,
    pub(crate) config: HttpConfig,
    pub(crate) write_keys: KeySet,
    pub(crate) ga4_secrets: KeySet,
    pub(crate) cors: Cors,
    pub(crate) client_ip: ClientIp,
    pub(crate) limiters: Limiters,
    pub(crate) dead_letters: Arc<DeadLetters>,
    pub(crate) metrics: HttpMetrics,
    pub(crate) sources: RwLock<Vec<Arc<dyn MetricsSource>>>,
    pub(crate) shutting_down: AtomicBool,
    /// `bytes_on_disk` when an append last failed with `Full` (`u64::MAX`: the last append
    /// succeeded); not ready while the log has not shrunk below it.
    pub(crate) full_at: AtomicU64,
    /// An append answered `Closed`: the log was closed under us.
    pub(crate) log_closed: AtomicBool,
    /// Request handlers (spawned so they run to completion even if the client goes away).
    pub(crate) tasks: TaskTracker,
}

// === impl AppState ===

impl AppState {
    /// Validates `config` and builds the state. `data_dir` holds the dead-letter files
    /// (`dead-letters/rejected.jsonl`); the log is the one the delivery side reads.
    ///
    /// Does not need a runtime; the limiter eviction runs inside [`serve`](crate::serve).
    pub fn new(
        pipeline: Arc<Pipeline>,
        log: Log,
        data_dir: impl AsRef<Path>,
        config: HttpConfig,
    ) -> Result<AppState, ConfigError> {
        config.validate()?;
        let client_ip = ClientIp::new(&config.trusted_proxies)
            .map_err(|r| ConfigError::new("trusted_proxies", r))?;
        let limiters =
            Limiters::new(&config.rate_limit).map_err(|r| ConfigError::new("rate_limit", r))?;
        let data_dir = data_dir.as_ref().to_path_buf();
        Ok(AppState {
            inner: Arc::new(Inner {
                pipeline,
                log,
                write_keys: KeySet::new(&config.write_keys),
                ga4_secrets: KeySet::new(&config.ga4_api_secrets),
                cors: Cors::new(&config.cors_allowed_origins, config.cors_max_age_secs),
                client_ip,
                limiters,
                dead_letters: Arc::new(DeadLetters::new(&data_dir)),
                data_dir,
                config,
                metrics: HttpMetrics::default(),
                sources: RwLock::new(Vec::new()),
                shutting_down: AtomicBool::new(false),
                full_at: AtomicU64::new(u64::MAX),
                log_closed: AtomicBool::new(false),
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// Adds lines to `/metrics` (e.g. per-destination delivery counters).
    pub fn add_metrics_source(&self, source: Arc<dyn MetricsSource>) {
        self.inner
            .sources
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(source);
    }

    /// Marks the server as shutting down: `/ready` answers 503 and new ingest requests get
    /// 503 with `Retry-After`. [`serve`](crate::serve) calls it when its shutdown future
    /// completes; call it earlier to fail readiness before stopping (load-balancer drain).
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
    }

    /// Whether [`AppState::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// The settings in force.
    pub fn config(&self) -> &HttpConfig {
        &self.inner.config
    }

    /// The `rejected` dead-letter file.
    pub fn rejected_file(&self) -> PathBuf {
        self.inner
            .data_dir
            .join(crate::dead_letter::DEAD_LETTER_DIR)
            .join(crate::dead_letter::REJECTED_FILE)
    }

    /// The `/metrics` text: the HTTP layer's and the log's metrics, then every source's.
    pub fn render_metrics(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.inner
            .metrics
            .render(&self.inner.log.metrics(), &mut out);
        let sources = self
            .inner
            .sources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for s in sources {
            s.render_prometheus(&mut out);
        }
        out
    }

    /// Answers one request as the server does (without the per-request panic guard and the
    /// connection limits of [`serve`](crate::serve)). `peer` is the TCP peer address.
    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        crate::handler::handle(self, req, peer).await
    }

    pub(crate) fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.header_read_timeout_ms)
    }
}

/// Message ids for events that carry none: UUIDv7 (time-ordered, unique per process).
#[derive(Clone, Copy, Debug, Default)]
pub struct UuidV7Ids;

impl IdSource for UuidV7Ids {
    fn next_id(&mut self) -> String {
        uuid::Uuid::now_v7().to_string()
    }
}
