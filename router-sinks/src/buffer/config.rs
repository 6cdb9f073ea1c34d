//! Configuration of the durable buffer (embedded in the router's TOML config as `[buffer]`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::BufferError;
use super::frame::{FRAME_HEADER_LEN, MAX_PAYLOAD_LEN};

/// Default maximum size of one segment file: 64 MiB.
pub const DEFAULT_SEGMENT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default cap on the whole log: 10 GiB.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 10 * 1024 * 1024 * 1024;
/// Default period of the background cursor flush (and segment retention): 1 s.
pub const DEFAULT_CURSOR_FLUSH_INTERVAL_MS: u64 = 1000;
/// Default directory of the log when none is configured.
pub const DEFAULT_DIR: &str = "data/buffer";
/// Smallest accepted segment size.
pub const MIN_SEGMENT_MAX_BYTES: u64 = 256;
/// Largest accepted segment size (1 GiB).
pub const MAX_SEGMENT_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// When the writer calls `fdatasync`.
///
/// In TOML: `sync = "always"` or `sync = { interval_ms = 100 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "SyncPolicyRepr", into = "SyncPolicyRepr")]
pub enum SyncPolicy {
    /// Group commit (the default): an append resolves only after its records are written
    /// and `fdatasync`ed, one write and one sync for everything queued at that moment.
    #[default]
    Always,
    /// Weaker: an append resolves once its records are written to the page cache and the
    /// file is synced every interval, so a power loss (not a process crash) can lose up to an
    /// interval of acknowledged records. Readers still only see synced records.
    Interval(Duration),
}

/// Serde representation of [`SyncPolicy`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum SyncPolicyRepr {
    /// `"always"`.
    Name(String),
    /// `{ interval_ms = N }`.
    Interval {
        /// Sync period in milliseconds.
        interval_ms: u64,
    },
}

impl TryFrom<SyncPolicyRepr> for SyncPolicy {
    type Error = String;

    fn try_from(r: SyncPolicyRepr) -> Result<Self, Self::Error> {
        match r {
            SyncPolicyRepr::Name(n) if n.eq_ignore_ascii_case("always") => Ok(SyncPolicy::Always),
            SyncPolicyRepr::Name(n) => Err(format!(
                "unknown sync policy {n:?}: expected \"always\" or {{ interval_ms = N }}"
            )),
            SyncPolicyRepr::Interval { interval_ms: 0 } => {
                Err("sync interval_ms must be at least 1".to_owned())
            }
            SyncPolicyRepr::Interval { interval_ms } => {
                Ok(SyncPolicy::Interval(Duration::from_millis(interval_ms)))
            }
        }
    }
}

impl From<SyncPolicy> for SyncPolicyRepr {
    fn from(p: SyncPolicy) -> Self {
        match p {
            SyncPolicy::Always => SyncPolicyRepr::Name("always".to_owned()),
            SyncPolicy::Interval(d) => SyncPolicyRepr::Interval {
                interval_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            },
        }
    }
}

/// Configuration of the durable log. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Directory holding the segments, the cursors and the lock file.
    pub dir: PathBuf,
    /// A new segment is started when the next group would make the current one larger than
    /// this (a single record larger than a segment is refused).
    pub segment_max_bytes: u64,
    /// Cap on the bytes of all segments; appends beyond it fail with `BufferError::Full`.
    /// Must be at least twice `segment_max_bytes`. `Log::open` refuses a cap larger than twice
    /// the free disk space plus what the log already uses, and warns when it is merely larger.
    pub max_total_bytes: u64,
    /// When to `fdatasync` (default: `always`, group commit).
    pub sync: SyncPolicy,
    /// Names of the destinations; each gets a cursor. Names are 1 to 64 characters of
    /// `[A-Za-z0-9_-]`. A segment is deleted once every destination has passed it; with no
    /// destination nothing is ever deleted. A destination added later starts at the oldest
    /// record still kept; the cursor file of a destination removed from this list is ignored
    /// (it no longer holds segments back).
    pub destinations: Vec<String>,
    /// Period of the background cursor flush and retention pass, in milliseconds.
    pub cursor_flush_interval_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            dir: PathBuf::from(DEFAULT_DIR),
            segment_max_bytes: DEFAULT_SEGMENT_MAX_BYTES,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            sync: SyncPolicy::Always,
            destinations: Vec::new(),
            cursor_flush_interval_ms: DEFAULT_CURSOR_FLUSH_INTERVAL_MS,
        }
    }
}

impl LogConfig {
    /// A default configuration for `dir` and `destinations`.
    pub fn new(dir: impl Into<PathBuf>, destinations: &[&str]) -> Self {
        LogConfig {
            dir: dir.into(),
            destinations: destinations.iter().map(|d| (*d).to_owned()).collect(),
            ..LogConfig::default()
        }
    }

    /// Largest payload a single record may have with this configuration.
    pub fn max_record_bytes(&self) -> usize {
        let by_segment = self
            .segment_max_bytes
            .saturating_sub(FRAME_HEADER_LEN as u64);
        usize::try_from(by_segment.min(u64::from(MAX_PAYLOAD_LEN))).unwrap_or(usize::MAX)
    }

    /// Checks the invariants the log relies on.
    pub fn validate(&self) -> Result<(), BufferError> {
        if !(MIN_SEGMENT_MAX_BYTES..=MAX_SEGMENT_MAX_BYTES).contains(&self.segment_max_bytes) {
            return Err(BufferError::Config(format!(
                "segment_max_bytes must be within {MIN_SEGMENT_MAX_BYTES}..={MAX_SEGMENT_MAX_BYTES}, got {}",
                self.segment_max_bytes
            )));
        }
        if self.max_total_bytes < 2 * self.segment_max_bytes {
            return Err(BufferError::Config(format!(
                "max_total_bytes ({}) must be at least twice segment_max_bytes ({})",
                self.max_total_bytes, self.segment_max_bytes
            )));
        }
        if self.cursor_flush_interval_ms == 0 {
            return Err(BufferError::Config(
                "cursor_flush_interval_ms must be at least 1".to_owned(),
            ));
        }
        if let SyncPolicy::Interval(d) = self.sync {
            if d.is_zero() {
                return Err(BufferError::Config("sync interval must be > 0".to_owned()));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.destinations {
            if !valid_destination_name(d) {
                return Err(BufferError::Config(format!(
                    "destination name {d:?} must be 1 to 64 characters of [A-Za-z0-9_-]"
                )));
            }
            if !seen.insert(d.as_str()) {
                return Err(BufferError::Config(format!(
                    "destination {d:?} listed twice"
                )));
            }
        }
        Ok(())
    }
}

/// Whether `name` can be used as a destination (it becomes a file name).
pub(crate) fn valid_destination_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrapper {
        buffer: LogConfig,
    }

    #[test]
    fn defaults_apply_to_an_empty_table() {
        let w: Wrapper = toml_like("{\"buffer\":{}}");
        assert_eq!(w.buffer, LogConfig::default());
        assert_eq!(w.buffer.sync, SyncPolicy::Always);
    }

    #[test]
    fn sync_policy_parses_both_forms() {
        let w: Wrapper = toml_like(
            "{\"buffer\":{\"sync\":{\"interval_ms\":250},\"destinations\":[\"posthog\"]}}",
        );
        assert_eq!(
            w.buffer.sync,
            SyncPolicy::Interval(Duration::from_millis(250))
        );
        let w: Wrapper = toml_like("{\"buffer\":{\"sync\":\"always\"}}");
        assert_eq!(w.buffer.sync, SyncPolicy::Always);
        assert!(serde_json::from_str::<Wrapper>("{\"buffer\":{\"sync\":\"never\"}}").is_err());
        assert!(serde_json::from_str::<Wrapper>("{\"buffer\":{\"bogus\":1}}").is_err());
    }

    #[test]
    fn validation_rejects_bad_values() {
        let mut c = LogConfig::new("/tmp/x", &["posthog", "mixpanel"]);
        c.validate().unwrap();
        c.destinations.push("../etc".into());
        assert!(c.validate().is_err());
        let mut c = LogConfig::new("/tmp/x", &["a", "a"]);
        assert!(c.validate().is_err());
        c.destinations.pop();
        c.max_total_bytes = c.segment_max_bytes;
        assert!(c.validate().is_err());
    }

    fn toml_like(s: &str) -> Wrapper {
        serde_json::from_str(s).unwrap()
    }
}
