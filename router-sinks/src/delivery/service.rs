//! Starting and stopping delivery for the configured destinations.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use router_core::map::{MixpanelSettings, PosthogSettings};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::{DeliveryConfig, MixpanelDestination, PosthogDestination};
use super::error::DeliveryError;
use super::file::FileSink;
use super::http::build_client;
use super::metrics::{DeliveryMetrics, render_prometheus};
use super::mixpanel::MixpanelSink;
use super::posthog::PosthogSink;
use super::sink::{Mapper, Sink};
use super::worker::Worker;
use crate::buffer::Log;
use crate::dlq::DeadLetterWriter;

/// Extra time [`Delivery::shutdown`] waits for the tasks beyond the grace period.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// What one destination is and where its records go.
#[derive(Debug, Clone)]
enum Target {
    Posthog(PosthogDestination, PosthogSettings),
    Mixpanel(MixpanelDestination, MixpanelSettings),
    Outbox(Mapper),
    Custom(Mapper, Arc<dyn Sink>),
}

/// One destination to deliver to: its name (as used by the routing table and the buffer's
/// cursors) and its kind. A PostHog or Mixpanel destination without credentials delivers to
/// its outbox file instead (and says so at start).
#[derive(Debug, Clone)]
pub struct DestinationSpec {
    name: String,
    target: Target,
}

impl DestinationSpec {
    /// A PostHog project; `settings` are the mapping settings (`CoreConfig::posthog`).
    pub fn posthog(
        name: impl Into<String>,
        dest: PosthogDestination,
        settings: PosthogSettings,
    ) -> Self {
        DestinationSpec {
            name: name.into(),
            target: Target::Posthog(dest, settings),
        }
    }

    /// A Mixpanel project; `settings` are the mapping settings (`CoreConfig::mixpanel`). When
    /// `settings.token` is unset, the destination's `token` is used for `properties.token` and
    /// `$token`.
    pub fn mixpanel(
        name: impl Into<String>,
        dest: MixpanelDestination,
        settings: MixpanelSettings,
    ) -> Self {
        DestinationSpec {
            name: name.into(),
            target: Target::Mixpanel(dest, settings),
        }
    }

    /// A destination that only writes its outbox file (an archive), mapped with `mapper`.
    pub fn outbox(name: impl Into<String>, mapper: Mapper) -> Self {
        DestinationSpec {
            name: name.into(),
            target: Target::Outbox(mapper),
        }
    }

    /// A destination with a sink of your own (embedding, tests).
    pub fn custom(name: impl Into<String>, mapper: Mapper, sink: Arc<dyn Sink>) -> Self {
        DestinationSpec {
            name: name.into(),
            target: Target::Custom(mapper, sink),
        }
    }

    /// The destination's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether records go to the outbox file (no credentials, or an archive).
    pub fn uses_outbox(&self) -> bool {
        match &self.target {
            Target::Posthog(d, _) => !d.has_credentials(),
            Target::Mixpanel(d, _) => !d.has_credentials(),
            Target::Outbox(_) => true,
            Target::Custom(..) => false,
        }
    }
}

/// Running delivery: one task per destination. Dropping it without
/// [`Delivery::shutdown`] signals the tasks to stop without waiting for them (nothing is
/// lost: unacknowledged events are delivered after the next start).
#[derive(Debug)]
pub struct Delivery {
    tasks: Vec<(String, JoinHandle<()>)>,
    metrics: Vec<Arc<DeliveryMetrics>>,
    cancel: CancellationToken,
    log: Log,
    grace: Duration,
}

impl Delivery {
    /// Starts one delivery task per destination, reading `log` (each destination must be
    /// one of its destinations), writing outbox and dead-letter files under `data_dir`.
    /// Must be called from within a tokio runtime.
    pub fn start(
        log: &Log,
        data_dir: &Path,
        config: &DeliveryConfig,
        destinations: Vec<DestinationSpec>,
    ) -> Result<Delivery, DeliveryError> {
        config.validate()?;
        for (i, d) in destinations.iter().enumerate() {
            if destinations[..i].iter().any(|o| o.name == d.name) {
                return Err(DeliveryError::DuplicateDestination(d.name.clone()));
            }
        }
        let client = build_client(config)?;
        let cancel = CancellationToken::new();
        // Build everything before spawning anything, so an error leaves nothing running.
        let mut workers = Vec::with_capacity(destinations.len());
        for spec in destinations {
            let name = spec.name.clone();
            let metrics = DeliveryMetrics::new(&name);
            let (mapper, sink): (Mapper, Arc<dyn Sink>) = match spec.target {
                Target::Posthog(d, s) if d.has_credentials() => (
                    Mapper::Posthog(s),
                    Arc::new(PosthogSink::new(
                        &name,
                        &d,
                        client.clone(),
                        metrics.clone(),
                    )?),
                ),
                Target::Mixpanel(d, mut s) if d.has_credentials() => {
                    if s.token.is_none() {
                        s.token.clone_from(&d.token);
                    }
                    if s.token.is_none() {
                        tracing::warn!(destination = %name, "Mixpanel has no project token: /engage and /groups updates will be refused ($token).");
                    }
                    (
                        Mapper::Mixpanel(s),
                        Arc::new(MixpanelSink::new(
                            &name,
                            &d,
                            client.clone(),
                            metrics.clone(),
                        )?),
                    )
                }
                Target::Posthog(_, s) => {
                    outbox(&name, data_dir, Mapper::Posthog(s), &metrics, true)?
                }
                Target::Mixpanel(d, mut s) => {
                    if s.token.is_none() {
                        s.token.clone_from(&d.token);
                    }
                    outbox(&name, data_dir, Mapper::Mixpanel(s), &metrics, true)?
                }
                Target::Outbox(m) => outbox(&name, data_dir, m, &metrics, false)?,
                Target::Custom(m, sink) => (m, sink),
            };
            let reader = log.reader(&name)?;
            let dlq = DeadLetterWriter::new(data_dir, &name)?;
            workers.push(Worker {
                name,
                reader,
                mapper,
                sink,
                dlq,
                config: config.clone(),
                metrics,
                cancel: cancel.child_token(),
            });
        }
        let mut tasks = Vec::with_capacity(workers.len());
        let mut all_metrics = Vec::with_capacity(workers.len());
        for w in workers {
            all_metrics.push(w.metrics.clone());
            let name = w.name.clone();
            tasks.push((name, tokio::spawn(w.run())));
        }
        Ok(Delivery {
            tasks,
            metrics: all_metrics,
            cancel,
            log: log.clone(),
            grace: config.shutdown_grace(),
        })
    }

    /// The counters of every destination, in start order.
    pub fn metrics(&self) -> &[Arc<DeliveryMetrics>] {
        &self.metrics
    }

    /// Appends the delivery metrics of every destination in the Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        let snaps: Vec<_> = self.metrics.iter().map(|m| m.snapshot()).collect();
        render_prometheus(&snaps, out);
    }

    /// A token that stops delivery when cancelled (the same as [`Delivery::shutdown`] minus
    /// the waiting).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops every destination: no new requests, in-flight requests get the grace period,
    /// their results are acknowledged; then the buffer cursors are flushed. Returns once the
    /// tasks have ended (a task still running after the grace period plus a margin is
    /// aborted and reported).
    pub async fn shutdown(mut self) -> Result<(), DeliveryError> {
        self.cancel.cancel();
        let deadline = tokio::time::Instant::now() + self.grace + SHUTDOWN_MARGIN;
        let mut first_error = None;
        for (name, mut task) in std::mem::take(&mut self.tasks) {
            let res = match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => {
                    task.abort();
                    Err("did not stop within the grace period; aborted".to_owned())
                }
            };
            if let Err(reason) = res {
                tracing::error!(destination = %name, reason = %reason, "Delivery task failed.");
                first_error.get_or_insert(DeliveryError::Task {
                    destination: name,
                    reason,
                });
            }
        }
        if let Err(e) = self.log.flush_cursors().await {
            tracing::warn!(error = %e, "Flushing the buffer cursors after delivery stopped failed.");
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn outbox(
    name: &str,
    data_dir: &Path,
    mapper: Mapper,
    metrics: &Arc<DeliveryMetrics>,
    no_credentials: bool,
) -> Result<(Mapper, Arc<dyn Sink>), DeliveryError> {
    let sink = FileSink::new(data_dir, name, metrics.clone())?;
    if no_credentials {
        tracing::warn!(
            destination = %name,
            outbox = %sink.path().display(),
            "No credentials: records are written to the outbox file instead of being sent."
        );
    } else {
        tracing::info!(destination = %name, outbox = %sink.path().display(), "Archive destination writes its outbox file.");
    }
    Ok((mapper, Arc::new(sink)))
}
