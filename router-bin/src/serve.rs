//! `events-router serve`: the ingestion server, the durable log and delivery, wired together.

use std::sync::Arc;

use router_core::Pipeline;
use router_http::AppState;
use router_sinks::buffer::Log;
use tokio::net::TcpListener;

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
    let state = AppState::new(
        pipeline.clone(),
        log.clone(),
        &config.data_dir,
        config.server.clone(),
    )
    .map_err(|e| format!("server.{e}"))?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;

    let served = router_http::serve(listener, state, shutdown_signal()).await;
    if let Err(e) = &served {
        tracing::warn!(error = %e, "Server stopped with in-flight requests cut.");
    }
    log.close()
        .await
        .map_err(|e| format!("closing the buffer: {e}"))?;
    tracing::info!("Stopped.");
    Ok(())
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
