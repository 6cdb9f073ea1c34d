//! Delivery settings and destination credentials. Every field has a default, so an empty
//! table is a valid configuration; units are in the field names.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::DeliveryError;
use super::retry::Backoff;

/// Default PostHog ingestion host (US cloud).
pub const DEFAULT_POSTHOG_HOST: &str = "https://us.i.posthog.com";
/// Default Mixpanel ingestion host (US residency).
pub const DEFAULT_MIXPANEL_HOST: &str = "https://api.mixpanel.com";

/// How delivery batches, sends, retries and stops. Shared by every destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Most records in one batch handed to a sink (a sink splits further to respect the
    /// destination's limits: Mixpanel 2000 records / 2 MB per request).
    pub batch_max_events: usize,
    /// Most bytes of record JSON in one batch.
    pub batch_max_bytes: usize,
    /// How long a record may wait for its batch to fill before the batch is sent anyway.
    pub linger_ms: u64,
    /// Requests in flight per destination.
    pub concurrency: usize,
    /// Timeout of one HTTP request, connect to last byte of the answer.
    pub request_timeout_ms: u64,
    /// Timeout of the TCP/TLS connect.
    pub connect_timeout_ms: u64,
    /// Ceiling of the first retry delay (exponential with full jitter from here).
    pub backoff_base_ms: u64,
    /// Largest retry delay ceiling.
    pub backoff_cap_ms: u64,
    /// How long a record is retried, from its first attempt, before it expires to the
    /// dead-letter file. Time spent paused (401/403) does not count.
    pub retry_window_secs: u64,
    /// First wait before probing a paused destination again (doubles up to
    /// `pause_probe_max_ms`).
    pub pause_probe_ms: u64,
    /// Longest wait between probes of a paused destination.
    pub pause_probe_max_ms: u64,
    /// Most buffer records held in memory per destination (read, not yet acknowledged): the
    /// rest of a backlog stays on disk.
    pub max_pending_events: usize,
    /// On stop, how long in-flight requests may take to finish; what is not acknowledged by
    /// then is delivered after the next start.
    pub shutdown_grace_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            batch_max_events: 1000,
            batch_max_bytes: 1_000_000,
            linger_ms: 200,
            concurrency: 16,
            request_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            backoff_base_ms: 1000,
            backoff_cap_ms: 60_000,
            retry_window_secs: 24 * 3600,
            pause_probe_ms: 30_000,
            pause_probe_max_ms: 600_000,
            max_pending_events: 20_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl DeliveryConfig {
    /// Checks the values (positive sizes and timeouts, ordered bounds).
    pub fn validate(&self) -> Result<(), DeliveryError> {
        let positive = [
            ("batch_max_events", self.batch_max_events as u64),
            ("batch_max_bytes", self.batch_max_bytes as u64),
            ("concurrency", self.concurrency as u64),
            ("request_timeout_ms", self.request_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("retry_window_secs", self.retry_window_secs),
            ("pause_probe_ms", self.pause_probe_ms),
            ("max_pending_events", self.max_pending_events as u64),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(DeliveryError::Config(format!("{key} must be at least 1")));
            }
        }
        if self.backoff_cap_ms < self.backoff_base_ms {
            return Err(DeliveryError::Config(format!(
                "backoff_cap_ms ({}) must be at least backoff_base_ms ({})",
                self.backoff_cap_ms, self.backoff_base_ms
            )));
        }
        if self.pause_probe_max_ms < self.pause_probe_ms {
            return Err(DeliveryError::Config(format!(
                "pause_probe_max_ms ({}) must be at least pause_probe_ms ({})",
                self.pause_probe_max_ms, self.pause_probe_ms
            )));
        }
        Ok(())
    }

    /// The retry backoff.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.backoff_base_ms),
            Duration::from_millis(self.backoff_cap_ms),
        )
    }

    /// The per-request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The linger time.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }

    /// The retry window.
    pub fn retry_window(&self) -> Duration {
        Duration::from_secs(self.retry_window_secs)
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// A PostHog project to deliver to.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PosthogDestination {
    /// Project API key (`phc_…`). Without it, records go to the outbox file instead.
    pub api_key: Option<String>,
    /// Ingestion host, e.g. `https://eu.i.posthog.com` (no trailing path).
    pub host: String,
}

impl Default for PosthogDestination {
    fn default() -> Self {
        PosthogDestination {
            api_key: None,
            host: DEFAULT_POSTHOG_HOST.to_owned(),
        }
    }
}

impl std::fmt::Debug for PosthogDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PosthogDestination")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("host", &self.host)
            .finish()
    }
}

impl PosthogDestination {
    /// Whether there are credentials to deliver over HTTP (else the outbox file is used).
    pub fn has_credentials(&self) -> bool {
        self.api_key
            .as_deref()
            .is_some_and(|k| !k.trim().is_empty())
    }
}

/// A Mixpanel project to deliver to.
///
/// `/import` authenticates with, in order of preference: a service account
/// (`service_account` + `api_secret` as its secret, with `project_id`), the project token
/// (Basic `token:`), or a legacy project API secret (`api_secret` alone, Basic `secret:`).
/// `/engage` and `/groups` carry the project token as `$token` in each update, so profile
/// updates need `token` (or the mapping settings' token) whatever `/import` uses.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MixpanelDestination {
    /// Project token.
    pub token: Option<String>,
    /// Service account user name.
    pub service_account: Option<String>,
    /// Service account secret (with `service_account`), else a legacy project API secret.
    pub api_secret: Option<String>,
    /// Project id (required with a service account).
    pub project_id: Option<String>,
    /// API host, e.g. `https://api-eu.mixpanel.com` for EU residency.
    pub host: String,
}

impl Default for MixpanelDestination {
    fn default() -> Self {
        MixpanelDestination {
            token: None,
            service_account: None,
            api_secret: None,
            project_id: None,
            host: DEFAULT_MIXPANEL_HOST.to_owned(),
        }
    }
}

impl std::fmt::Debug for MixpanelDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("MixpanelDestination")
            .field("token", &redact(&self.token))
            .field("service_account", &self.service_account)
            .field("api_secret", &redact(&self.api_secret))
            .field("project_id", &self.project_id)
            .field("host", &self.host)
            .finish()
    }
}

/// How `/import` requests authenticate.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum MixpanelAuth {
    /// Basic `user:secret` plus `?project_id=`.
    ServiceAccount {
        user: String,
        secret: String,
        project_id: String,
    },
    /// Basic `token:` (empty password); also a legacy API secret as the user.
    User(String),
}

impl MixpanelDestination {
    /// Whether there are credentials to deliver over HTTP (else the outbox file is used).
    pub fn has_credentials(&self) -> bool {
        self.auth().is_some()
    }

    pub(crate) fn auth(&self) -> Option<MixpanelAuth> {
        fn set(o: &Option<String>) -> Option<&str> {
            o.as_deref().map(str::trim).filter(|s| !s.is_empty())
        }
        if let (Some(user), Some(secret), Some(project)) = (
            set(&self.service_account),
            set(&self.api_secret),
            set(&self.project_id),
        ) {
            return Some(MixpanelAuth::ServiceAccount {
                user: user.to_owned(),
                secret: secret.to_owned(),
                project_id: project.to_owned(),
            });
        }
        if let Some(t) = set(&self.token) {
            return Some(MixpanelAuth::User(t.to_owned()));
        }
        if set(&self.service_account).is_none() {
            if let Some(s) = set(&self.api_secret) {
                return Some(MixpanelAuth::User(s.to_owned()));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_empty_table_parses() {
        DeliveryConfig::default().validate().unwrap();
        let c: DeliveryConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, DeliveryConfig::default());
        assert!(serde_json::from_str::<DeliveryConfig>(r#"{"batch_size":1}"#).is_err());
        let bad = DeliveryConfig {
            concurrency: 0,
            ..DeliveryConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = DeliveryConfig {
            backoff_base_ms: 10,
            backoff_cap_ms: 5,
            ..DeliveryConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn mixpanel_auth_preference() {
        let mut d = MixpanelDestination::default();
        assert!(!d.has_credentials());
        d.api_secret = Some("legacy".into());
        assert!(d.auth() == Some(MixpanelAuth::User("legacy".into())));
        d.token = Some("tok".into());
        assert!(d.auth() == Some(MixpanelAuth::User("tok".into())));
        d.service_account = Some("sa".into());
        // A service account without a project id falls back to the token.
        assert!(d.auth() == Some(MixpanelAuth::User("tok".into())));
        d.project_id = Some("42".into());
        assert!(matches!(
            d.auth(),
            Some(MixpanelAuth::ServiceAccount { .. })
        ));
        assert!(!format!("{d:?}").contains("legacy"));
        let p = PosthogDestination {
            api_key: Some("  ".into()),
            ..PosthogDestination::default()
        };
        assert!(!p.has_credentials());
    }
}
