//! The `events-router` configuration file: TOML, every key defaulted, `${VAR}` expanded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use router_core::map::{MixpanelSettings, PosthogSettings};
use router_core::{CoreConfig, Limits, RoutingConfig};
use router_http::HttpConfig;
use router_sinks::buffer::{LogConfig, SyncPolicy};
use router_sinks::delivery::{DeliveryConfig, MixpanelDestination, PosthogDestination};
use serde::{Deserialize, Serialize};

/// A configuration problem, naming the key (or file) and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Not TOML.
    #[error("{path}: not valid TOML: {message}")]
    Syntax {
        /// File path.
        path: String,
        /// Parser message (with line and column).
        message: String,
    },
    /// A key with a bad value.
    #[error("{key}: {reason}")]
    Key {
        /// Dotted key path.
        key: String,
        /// Why.
        reason: String,
    },
}

/// PostHog destination: where and with which project key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PosthogConfig {
    /// Project API key (`phc_...`); without it events go to the outbox file.
    pub api_key: Option<String>,
    /// Ingestion host.
    pub host: String,
    /// How events become PostHog records.
    pub mapping: PosthogSettings,
}

impl Default for PosthogConfig {
    fn default() -> Self {
        PosthogConfig {
            api_key: None,
            host: "https://us.i.posthog.com".into(),
            mapping: PosthogSettings::default(),
        }
    }
}

/// Mixpanel destination: host and credentials (project token, or a service account).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MixpanelConfig {
    /// Project token (Basic auth user on `/import`, `$token` on `/engage`).
    pub token: Option<String>,
    /// Project id, for service-account auth.
    pub project_id: Option<String>,
    /// Service account user name.
    pub service_account: Option<String>,
    /// Service account secret (or legacy API secret).
    pub api_secret: Option<String>,
    /// API host (`https://api-eu.mixpanel.com` for EU residency).
    pub host: String,
    /// How events become Mixpanel records.
    pub mapping: MixpanelSettings,
}

impl Default for MixpanelConfig {
    fn default() -> Self {
        MixpanelConfig {
            token: None,
            project_id: None,
            service_account: None,
            api_secret: None,
            host: "https://api.mixpanel.com".into(),
            mapping: MixpanelSettings::default(),
        }
    }
}

/// The durable buffer (the log lives in `<data_dir>/buffer`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BufferSettings {
    /// Largest segment file.
    pub segment_max_bytes: u64,
    /// Cap on the whole log; at the cap ingestion answers 503 until delivery frees space.
    pub max_total_bytes: u64,
    /// `"always"` (group commit: every 2xx is fsynced, the default) or `{ interval_ms = N }`
    /// (weaker: a power loss can lose the last interval's accepted events).
    pub sync: SyncPolicy,
    /// How often acknowledged cursor positions are persisted.
    pub cursor_flush_interval_ms: u64,
}

impl Default for BufferSettings {
    fn default() -> Self {
        let d = LogConfig::default();
        BufferSettings {
            segment_max_bytes: d.segment_max_bytes,
            max_total_bytes: d.max_total_bytes,
            sync: d.sync,
            cursor_flush_interval_ms: d.cursor_flush_interval_ms,
        }
    }
}

/// The whole configuration. Every key has a default, so no file is needed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address.
    pub listen: String,
    /// Data directory (log, cursors, dead letters, outboxes).
    pub data_dir: PathBuf,
    /// HTTP server: body caps, timeouts, CORS, write keys, rate limits.
    pub server: HttpConfig,
    /// Durable buffer.
    pub buffer: BufferSettings,
    /// Delivery: batching, concurrency, timeouts, retries.
    pub delivery: DeliveryConfig,
    /// Caps on events and requests.
    pub limits: Limits,
    /// Inbound event-name aliases.
    pub aliases: BTreeMap<String, String>,
    /// Routing table.
    pub routing: RoutingConfig,
    /// PostHog destination.
    pub posthog: PosthogConfig,
    /// Mixpanel destination.
    pub mixpanel: MixpanelConfig,
}

impl Default for Config {
    fn default() -> Self {
        let core = CoreConfig::default();
        Config {
            listen: "0.0.0.0:8080".into(),
            data_dir: PathBuf::from("./data"),
            server: HttpConfig::default(),
            buffer: BufferSettings::default(),
            delivery: DeliveryConfig::default(),
            limits: core.limits,
            aliases: core.aliases,
            routing: core.routing,
            posthog: PosthogConfig::default(),
            mixpanel: MixpanelConfig::default(),
        }
    }
}

/// Environment lookup, injectable for tests.
pub trait Env {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Config {
    /// Loads `path` (or the defaults when `None`), expands `${VAR}`, applies the environment
    /// overrides, and checks that the core can be built from it.
    pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut config = match path {
            None => Config::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                Config::from_toml(&text, &p.display().to_string(), env)?
            }
        };
        config.apply_env(env);
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text, expanding `${VAR}` / `${VAR:-default}` in every string value.
    pub fn from_toml(text: &str, origin: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: e.to_string().trim().to_owned(),
        })?;
        expand_value(&mut value, "", env)?;
        serde_path_to_error::deserialize(value).map_err(|e| ConfigError::Key {
            key: e.path().to_string(),
            reason: e
                .inner()
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
        })
    }

    /// The documented environment variables override the file.
    fn apply_env(&mut self, env: &dyn Env) {
        let set = |name: &str| env.var(name).filter(|v| !v.is_empty());
        if let Some(v) = set("ROUTER_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = set("ROUTER_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = set("POSTHOG_API_KEY") {
            self.posthog.api_key = Some(v);
        }
        if let Some(v) = set("POSTHOG_HOST") {
            self.posthog.host = v;
        }
        if let Some(v) = set("MIXPANEL_TOKEN") {
            self.mixpanel.token = Some(v);
        }
        if let Some(v) = set("MIXPANEL_PROJECT") {
            self.mixpanel.project_id = Some(v);
        }
        if let Some(v) = set("MIXPANEL_API_SECRET") {
            self.mixpanel.api_secret = Some(v);
        }
        if let Some(v) = set("MIXPANEL_API_HOST") {
            self.mixpanel.host = v;
        }
    }

    /// Checks every section, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.core()?;
        self.server.validate().map_err(|e| ConfigError::Key {
            key: format!("server.{}", e.key),
            reason: e.reason,
        })?;
        self.delivery.validate().map_err(|e| ConfigError::Key {
            key: "delivery".into(),
            reason: e.to_string(),
        })?;
        self.log_config(&[])
            .validate()
            .map_err(|e| ConfigError::Key {
                key: "buffer".into(),
                reason: e.to_string(),
            })?;
        if self.listen.parse::<std::net::SocketAddr>().is_err() && !self.listen.contains(':') {
            return Err(ConfigError::Key {
                key: "listen".into(),
                reason: format!("{:?} is not an address like 0.0.0.0:8080", self.listen),
            });
        }
        Ok(())
    }

    /// PostHog host and credentials for the sink.
    pub fn posthog_destination(&self) -> PosthogDestination {
        PosthogDestination {
            api_key: self.posthog.api_key.clone(),
            host: self.posthog.host.clone(),
        }
    }

    /// Mixpanel host and credentials for the sink.
    pub fn mixpanel_destination(&self) -> MixpanelDestination {
        MixpanelDestination {
            token: self.mixpanel.token.clone(),
            service_account: self.mixpanel.service_account.clone(),
            api_secret: self.mixpanel.api_secret.clone(),
            project_id: self.mixpanel.project_id.clone(),
            host: self.mixpanel.host.clone(),
        }
    }

    /// The log configuration: `<data_dir>/buffer`, one cursor per destination.
    pub fn log_config(&self, destinations: &[String]) -> LogConfig {
        LogConfig {
            dir: self.data_dir.join("buffer"),
            segment_max_bytes: self.buffer.segment_max_bytes,
            max_total_bytes: self.buffer.max_total_bytes,
            sync: self.buffer.sync,
            destinations: destinations.to_vec(),
            cursor_flush_interval_ms: self.buffer.cursor_flush_interval_ms,
        }
    }

    /// The core configuration (the Mixpanel token is copied into the mapping).
    pub fn core(&self) -> Result<CoreConfig, ConfigError> {
        let mut mixpanel = self.mixpanel.mapping.clone();
        if mixpanel.token.is_none() {
            mixpanel.token.clone_from(&self.mixpanel.token);
        }
        let core = CoreConfig {
            limits: self.limits.clone(),
            aliases: self.aliases.clone(),
            routing: self.routing.clone(),
            posthog: self.posthog.mapping.clone(),
            mixpanel,
        };
        router_core::Router::new(&core.routing).map_err(|e| ConfigError::Key {
            key: e.key,
            reason: e.reason,
        })?;
        let checks = [
            ("limits.max_event_bytes", core.limits.max_event_bytes),
            ("limits.max_depth", core.limits.max_depth),
            ("limits.max_batch_events", core.limits.max_batch_events),
            ("limits.max_batch_bytes", core.limits.max_batch_bytes),
            ("limits.max_name_chars", core.limits.max_name_chars),
            ("limits.max_id_chars", core.limits.max_id_chars),
        ];
        for (key, v) in checks {
            if v == 0 {
                return Err(ConfigError::Key {
                    key: key.into(),
                    reason: "must be at least 1".into(),
                });
            }
        }
        Ok(core)
    }
}

fn expand_value(v: &mut toml::Value, key: &str, env: &dyn Env) -> Result<(), ConfigError> {
    match v {
        toml::Value::String(s) => *s = expand(s, key, env)?,
        toml::Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                expand_value(x, &format!("{key}[{i}]"), env)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, x) in t.iter_mut() {
                let key = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                expand_value(x, &key, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expands `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`.
pub fn expand(s: &str, key: &str, env: &dyn Env) -> Result<String, ConfigError> {
    let err = |reason: String| ConfigError::Key {
        key: key.to_owned(),
        reason,
    };
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| err(format!("unclosed ${{ in {s:?}")))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(err(format!("bad variable name {name:?} in {s:?}")));
            }
            match (
                env.var(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(err(format!(
                        "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
                    )));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(Vec<(&'static str, &'static str)>);
    impl Env for Fake {
        fn var(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn expands_variables() {
        let env = Fake(vec![("A", "x"), ("EMPTY", "")]);
        assert_eq!(
            expand("${A}-${B:-dflt}-$$-$5", "k", &env).unwrap(),
            "x-dflt-$-$5"
        );
        assert_eq!(expand("${EMPTY:-d}", "k", &env).unwrap(), "d");
        assert_eq!(expand("${EMPTY}", "k", &env).unwrap(), "");
        let e = expand("${NOPE}", "posthog.api_key", &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("posthog.api_key: environment variable NOPE is not set"),
            "{e}"
        );
        assert!(expand("${A", "k", &env).is_err());
    }

    #[test]
    fn empty_file_is_the_default_and_env_overrides() {
        let env = Fake(vec![
            ("POSTHOG_API_KEY", "phc_1"),
            ("ROUTER_LISTEN", "127.0.0.1:9"),
        ]);
        let mut c = Config::from_toml("", "t", &env).unwrap();
        assert_eq!(c, Config::default());
        c.apply_env(&env);
        assert_eq!(c.posthog.api_key.as_deref(), Some("phc_1"));
        assert_eq!(c.listen, "127.0.0.1:9");
    }

    #[test]
    fn errors_name_the_key() {
        let env = Fake(vec![]);
        let e = Config::from_toml("[limits]\nmax_depth = \"deep\"", "t", &env).unwrap_err();
        assert!(e.to_string().starts_with("limits.max_depth: "), "{e}");
        let e = Config::from_toml("[posthog]\nbogus = 1", "t", &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "posthog.bogus: unknown field `bogus`, expected one of `api_key`, `host`, `mapping`"
        );
        let e = Config::from_toml("listen = [", "t", &env).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }));
        let c = Config::from_toml(
            "[[routing.rules]]\nname='x'\nto=['a']\n[routing.rules.when]\nevent_regex='('\n",
            "t",
            &env,
        )
        .unwrap();
        let e = c.core().unwrap_err().to_string();
        assert!(
            e.starts_with("routing.rules[0].when.event_regex: invalid regex"),
            "{e}"
        );
    }
}
