//! The `rejected` dead-letter file: events refused by validation, kept as received.
//!
//! `<data_dir>/dead-letters/rejected.jsonl`, one JSON object per line:
//! `{"time":"2025-01-28T12:00:00.000Z","endpoint":"/v1/batch","index":3,"field":"event",
//! "reason":"is required for track","raw":{...the item as received...}}`. `raw` is the item's
//! JSON (a string when it could not be re-read as JSON). Lines of one request are written with
//! one `write_all` under a lock and synced before the request is answered.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use router_core::Timestamp;
use serde::Serialize;

/// Directory under the data directory.
pub const DEAD_LETTER_DIR: &str = "dead-letters";
/// File name of the rejected events.
pub const REJECTED_FILE: &str = "rejected.jsonl";

/// One line of the file.
#[derive(Serialize)]
pub(crate) struct RejectedLine<'a> {
    pub time: Timestamp,
    pub endpoint: &'a str,
    pub index: usize,
    pub field: &'a str,
    pub reason: &'a str,
    pub raw: serde_json::Value,
}

/// Appends lines to the rejected file (opened on first use).
#[derive(Debug)]
pub(crate) struct DeadLetters {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl DeadLetters {
    pub(crate) fn new(data_dir: &Path) -> Self {
        DeadLetters {
            path: data_dir.join(DEAD_LETTER_DIR).join(REJECTED_FILE),
            file: Mutex::new(None),
        }
    }

    /// Appends `bytes` (whole lines) and syncs, on the blocking pool.
    pub(crate) async fn append(self: &Arc<Self>, bytes: Vec<u8>) -> std::io::Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.append_blocking(&bytes))
            .await
            .map_err(std::io::Error::other)?
    }

    fn append_blocking(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            *guard = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let Some(f) = guard.as_mut() else {
            return Err(std::io::Error::other("dead-letter file not open"));
        };
        let res = f.write_all(bytes).and_then(|()| f.sync_data());
        if res.is_err() {
            // Reopen next time (the file may have been removed or the disk replaced).
            *guard = None;
        }
        res
    }
}

/// The JSON of a raw item: parsed back when possible, else the text as a string.
pub(crate) fn raw_value(raw: &str) -> serde_json::Value {
    serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.to_owned()))
}
