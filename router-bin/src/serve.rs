//! `events-router serve`: the ingestion server, the durable log and delivery, wired together.

use std::sync::Arc;

use router_core::Pipeline;
use router_http::{AppState, MetricsSource};
use router_sinks::buffer::Log;
use router_sinks::delivery::{Delivery, DestinationSpec};
use tokio::net::{TcpListener, TcpSocket};

use crate::config::Config;

/// Runs the router until SIGTERM/SIGINT, then drains and returns.
pub async fn run(config: Config, pipeline: Pipeline) -> Result<(), String> {
    let pipeline = Arc::new(pipeline);
    let destinations: Vec<String> = pipeline.router().destinations().to_vec();
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", config.data_dir.display()))?;
    // The buffer logs what recovery found (segments, records, corrupt, truncated).
    let (log, _report) = Log::open(config.log_config(&destinations))
        .map_err(|e| format!("cannot open the buffer: {e}"))?;
    let specs = destination_specs(&config, &pipeline)?;
    // Bind before delivery starts: a taken port fails fast, before anything is sent.
    let listener = bind(&config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    // Delivery says at start, per destination, whether it sends or writes an outbox file.
    let delivery = Delivery::start(&log, &config.data_dir, &config.delivery, specs)
        .map_err(|e| format!("cannot start delivery: {e}"))?;
    let state = AppState::new(
        pipeline.clone(),
        log.clone(),
        &config.data_dir,
        config.server.clone(),
    )
    .map_err(|e| format!("server.{e}"))?;
    state.add_metrics_source(Arc::new(DeliveryMetricsSource(delivery.metrics().to_vec())));

    let served = router_http::serve(listener, state, shutdown_signal()).await;
    if let Err(e) = &served {
        tracing::warn!(error = %e, "Server stopped with in-flight requests cut.");
    }
    // Requests are answered; sync the log, give delivery its grace period; whatever is left
    // stays in the buffer and is delivered after the next start.
    log.sync()
        .await
        .map_err(|e| format!("syncing the buffer: {e}"))?;
    if let Err(e) = delivery.shutdown().await {
        tracing::warn!(error = %e, "Delivery stopped with requests cut; they are redelivered after the next start.");
    }
    log.close()
        .await
        .map_err(|e| format!("closing the buffer: {e}"))?;
    tracing::info!("Stopped.");
    Ok(())
}

/// Accept queue of the listening socket (the kernel caps it at `net.core.somaxconn`).
/// `TcpListener::bind` (mio, like std) asks for 128: a burst of new connections while the
/// accept loop is busy overflows that, the kernel drops the SYNs, and each client waits a
/// second (then 3, then 7) for its retransmission.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `listen` (an address or `host:port`) with [`LISTEN_BACKLOG`].
async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(listen).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As TcpListener::bind: rebind at once after a restart.
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// The sink of each destination the routing table names.
fn destination_specs(config: &Config, pipeline: &Pipeline) -> Result<Vec<DestinationSpec>, String> {
    pipeline
        .router()
        .destinations()
        .iter()
        .map(|name| match name.as_str() {
            "posthog" => Ok(DestinationSpec::posthog(
                name.as_str(),
                config.posthog_destination(),
                pipeline.posthog().clone(),
            )),
            "mixpanel" => Ok(DestinationSpec::mixpanel(
                name.as_str(),
                config.mixpanel_destination(),
                pipeline.mixpanel().clone(),
            )),
            other => Err(format!(
                "routing: destination {other:?} is not one this router can deliver to (posthog, mixpanel)"
            )),
        })
        .collect()
}

/// Delivery counters on `/metrics`.
struct DeliveryMetricsSource(Vec<Arc<router_sinks::delivery::DeliveryMetrics>>);

impl MetricsSource for DeliveryMetricsSource {
    fn render_prometheus(&self, out: &mut String) {
        let snapshots: Vec<_> = self.0.iter().map(|m| m.snapshot()).collect();
        router_sinks::delivery::render_prometheus(&snapshots, out);
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("Cannot install signal handlers; stop with SIGKILL.");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; draining."),
        _ = int.recv() => tracing::info!("SIGINT received; draining."),
    }
}
