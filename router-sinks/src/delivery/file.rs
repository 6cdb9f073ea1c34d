//! The outbox: a sink that appends what it would send to a JSON-lines file.
//!
//! Used for a destination without credentials (so the router works out of the box and shows
//! exactly what it would deliver) and for archive destinations. Each line is one record
//! exactly as the HTTP sink of that destination puts it in a request: a PostHog line is an
//! item of `/batch/`'s `batch` array; a Mixpanel line is an item of the `/import`
//! (`event` + `properties`), `/engage` (`$distinct_id`) or `/groups` (`$group_key`) array.
//! The file is `<data_dir>/outbox/<destination>.jsonl`; a batch is written with one
//! `write_all` and `fdatasync`ed before it counts as delivered (so before the buffer is
//! acknowledged). After a crash a batch may appear twice (at-least-once).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::error::DeliveryError;
use super::metrics::{DeliveryMetrics, RequestOutcome};
use super::sink::{OutboundRecord, Outcome, SendFuture, SendResult, Sink};
use crate::dlq::{ensure_dir, sync_dir};

/// Directory of the outbox files under the data directory.
pub const OUTBOX_DIR: &str = "outbox";

/// Appends records to `<data_dir>/outbox/<destination>.jsonl`.
#[derive(Debug, Clone)]
pub struct FileSink {
    path: PathBuf,
    file: Arc<Mutex<Option<File>>>,
    metrics: Arc<DeliveryMetrics>,
}

impl FileSink {
    /// A sink writing `destination`'s outbox under `data_dir` (the directory is created).
    pub fn new(
        data_dir: &Path,
        destination: &str,
        metrics: Arc<DeliveryMetrics>,
    ) -> Result<Self, DeliveryError> {
        let dir = data_dir.join(OUTBOX_DIR);
        ensure_dir(&dir).map_err(|source| DeliveryError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        Ok(FileSink {
            path: outbox_path(data_dir, destination),
            file: Arc::new(Mutex::new(None)),
            metrics,
        })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The outbox file of `destination` under `data_dir`.
pub fn outbox_path(data_dir: &Path, destination: &str) -> PathBuf {
    data_dir
        .join(OUTBOX_DIR)
        .join(format!("{destination}.jsonl"))
}

/// Appends `buf` to the (lazily opened) outbox file and syncs it.
fn write(path: &Path, slot: &Mutex<Option<File>>, buf: &[u8]) -> std::io::Result<()> {
    let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        let created = !path.exists();
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        if created {
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
        }
        *guard = Some(f);
    }
    let result = match guard.as_mut() {
        Some(f) => f.write_all(buf).and_then(|()| f.sync_data()),
        None => Ok(()),
    };
    if result.is_err() {
        // Reopen next time: the handle may be in a bad state.
        *guard = None;
    }
    result
}

impl Sink for FileSink {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn send<'a>(&'a self, batch: &'a [OutboundRecord]) -> SendFuture<'a> {
        Box::pin(async move {
            if batch.is_empty() {
                return SendResult::all(0, Outcome::Delivered);
            }
            let mut buf = Vec::with_capacity(batch.iter().map(|r| r.json.len() + 1).sum());
            for r in batch {
                buf.extend_from_slice(&r.json);
                buf.push(b'\n');
            }
            let path = self.path.clone();
            let slot = self.file.clone();
            let started = Instant::now();
            let result = tokio::task::spawn_blocking(move || write(&path, &slot, &buf)).await;
            let took = started.elapsed();
            match result {
                Ok(Ok(())) => {
                    self.metrics.record_request(RequestOutcome::Ok, took);
                    SendResult::all(batch.len(), Outcome::Delivered)
                }
                Ok(Err(e)) => {
                    self.metrics.record_request(RequestOutcome::Error, took);
                    SendResult::all(
                        batch.len(),
                        Outcome::retry(format!("writing {}: {e}", self.path.display())),
                    )
                }
                Err(e) => {
                    self.metrics.record_request(RequestOutcome::Error, took);
                    SendResult::all(
                        batch.len(),
                        Outcome::retry(format!("outbox write task failed: {e}")),
                    )
                }
            }
        })
    }
}
