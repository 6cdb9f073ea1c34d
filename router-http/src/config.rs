//! Configuration of the HTTP server (embedded in the router's TOML config, e.g. as `[http]`).
//!
//! Every key has a default, so an empty table is a valid configuration: no write keys (open
//! ingestion), no rate limits, CORS mirroring any `Origin`, the client IP forwarded into
//! `context.ip`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Default wire-size cap of a `/collect` body: 1 MiB.
pub const DEFAULT_MAX_COLLECT_BYTES: usize = 1024 * 1024;
/// Default wire-size cap of a Segment `/v1/*` body: 512 KiB (Segment's own cap is 500 KB).
pub const DEFAULT_MAX_SEGMENT_BYTES: usize = 512 * 1024;
/// Default wire-size cap of a GA4 `/mp/collect` body: 130 KiB (Google's cap).
pub const DEFAULT_MAX_GA4_BYTES: usize = 130 * 1024;
/// Default cap on a body after gzip decompression: 1 MiB (router-core's default batch cap).
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 1024 * 1024;
/// Default time a client has to send its request line and headers: 10 s.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default time a client has to send its whole body: 30 s.
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// Default cap on concurrently open connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default time a connection over the cap waits for a free slot before it is closed: 100 ms.
pub const DEFAULT_CONNECTION_QUEUE_TIMEOUT_MS: u64 = 100;
/// Default time in-flight requests get to finish after shutdown starts: 10 s.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 10_000;
/// Default `Access-Control-Max-Age` of preflight answers: 1 day.
pub const DEFAULT_CORS_MAX_AGE_SECS: u64 = 86_400;
/// Default `Retry-After` of 503 answers (log full, shutting down).
pub const DEFAULT_RETRY_AFTER_SECS: u64 = 5;
/// Default period of the eviction of idle rate-limiter keys: 60 s.
pub const DEFAULT_RATE_LIMIT_EVICT_INTERVAL_SECS: u64 = 60;

/// Settings of the HTTP server. Every field has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Per-route caps on the body as received (compressed or not), enforced while reading.
    pub max_body_bytes: BodyLimits,
    /// Cap on a body after gzip decompression, enforced while decompressing (413 beyond).
    pub max_decompressed_bytes: usize,
    /// Time a client has to send the request line and headers (also the idle time allowed
    /// between requests on a kept-alive connection); the connection is closed after it.
    pub header_read_timeout_ms: u64,
    /// Time a client has to send the whole body once the headers are in (408 beyond).
    pub body_read_timeout_ms: u64,
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long a connection beyond `max_connections` waits for a free slot before it is
    /// closed without an answer.
    pub connection_queue_timeout_ms: u64,
    /// On shutdown, how long in-flight requests get to finish before connections are cut.
    pub shutdown_grace_ms: u64,
    /// Origins allowed to post from browsers (`https://shop.example`, `https://*.example.com`,
    /// or `*`). Empty: any `Origin` is mirrored.
    pub cors_allowed_origins: Vec<String>,
    /// `Access-Control-Max-Age` of preflight answers, in seconds.
    pub cors_max_age_secs: u64,
    /// Accepted write keys. Empty: no key is required on `/collect` and `/v1/*`; otherwise
    /// every request there must carry one of them (Basic auth user, `writeKey` in the body or
    /// `?writeKey=`).
    pub write_keys: Vec<String>,
    /// Accepted GA4 `api_secret` values for `/mp/collect`. Empty: not checked.
    pub ga4_api_secrets: Vec<String>,
    /// Rate limits per write key and per client IP (none by default).
    pub rate_limit: RateLimits,
    /// Peers whose `X-Forwarded-For` is trusted (load balancers, reverse proxies): IP
    /// addresses or CIDR blocks (`10.0.0.0/8`, `::1`). The client IP is then the right-most
    /// address of the header that is not itself a trusted proxy.
    pub trusted_proxies: Vec<String>,
    /// Put the client IP into `context.ip` of events that carry none (PostHog and Mixpanel
    /// geolocate it; their mapping settings decide whether it is sent).
    pub forward_client_ip: bool,
    /// `Retry-After` of 503 answers, in seconds.
    pub retry_after_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: BodyLimits::default(),
            max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            body_read_timeout_ms: DEFAULT_BODY_READ_TIMEOUT_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connection_queue_timeout_ms: DEFAULT_CONNECTION_QUEUE_TIMEOUT_MS,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
            cors_allowed_origins: Vec::new(),
            cors_max_age_secs: DEFAULT_CORS_MAX_AGE_SECS,
            write_keys: Vec::new(),
            ga4_api_secrets: Vec::new(),
            rate_limit: RateLimits::default(),
            trusted_proxies: Vec::new(),
            forward_client_ip: true,
            retry_after_secs: DEFAULT_RETRY_AFTER_SECS,
        }
    }
}

/// Per-route caps on the body as received, in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BodyLimits {
    /// `POST /collect`.
    pub collect: usize,
    /// `POST /v1/*` (Segment).
    pub segment: usize,
    /// `POST /mp/collect` and `/debug/mp/collect` (GA4).
    pub ga4: usize,
    /// `POST /capture/`, `/batch/`, `/e/`, `/i/v0/e/` (PostHog SDKs).
    pub posthog: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            collect: DEFAULT_MAX_COLLECT_BYTES,
            segment: DEFAULT_MAX_SEGMENT_BYTES,
            ga4: DEFAULT_MAX_GA4_BYTES,
            posthog: DEFAULT_MAX_COLLECT_BYTES,
        }
    }
}

/// Rate limits; each is off unless set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Requests per write key (or GA4 `api_secret`).
    pub per_write_key: Option<RateLimit>,
    /// Requests per client IP (IPv6 clients are counted per /64).
    pub per_ip: Option<RateLimit>,
    /// How often keys that have been idle long enough to be full again are forgotten.
    pub evict_interval_secs: u64,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            per_write_key: None,
            per_ip: None,
            evict_interval_secs: DEFAULT_RATE_LIMIT_EVICT_INTERVAL_SECS,
        }
    }
}

/// A token bucket (GCRA): `per_second` requests on average, bursts of up to `burst`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate, in requests per second (fractions allowed, e.g. 0.5).
    pub per_second: f64,
    /// Requests allowed at once after an idle period (at least 1).
    pub burst: u32,
}

impl HttpConfig {
    /// Checks every value; the error names the key at fault (relative to this table).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key: &str, v: u64| {
            if v == 0 {
                Err(ConfigError::new(key, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive("max_body_bytes.collect", self.max_body_bytes.collect as u64)?;
        positive("max_body_bytes.segment", self.max_body_bytes.segment as u64)?;
        positive("max_body_bytes.ga4", self.max_body_bytes.ga4 as u64)?;
        positive("max_decompressed_bytes", self.max_decompressed_bytes as u64)?;
        positive("header_read_timeout_ms", self.header_read_timeout_ms)?;
        positive("body_read_timeout_ms", self.body_read_timeout_ms)?;
        positive("max_connections", self.max_connections as u64)?;
        positive("shutdown_grace_ms", self.shutdown_grace_ms)?;
        positive(
            "rate_limit.evict_interval_secs",
            self.rate_limit.evict_interval_secs,
        )?;
        if self.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ConfigError::new("max_connections", "is too large"));
        }
        for (key, rl) in [
            ("rate_limit.per_write_key", &self.rate_limit.per_write_key),
            ("rate_limit.per_ip", &self.rate_limit.per_ip),
        ] {
            if let Some(rl) = rl {
                rl.quota().map_err(|reason| ConfigError::new(key, reason))?;
            }
        }
        for (i, o) in self.cors_allowed_origins.iter().enumerate() {
            if o.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("cors_allowed_origins[{i}]"),
                    "must not be empty",
                ));
            }
        }
        for (key, list) in [
            ("write_keys", &self.write_keys),
            ("ga4_api_secrets", &self.ga4_api_secrets),
        ] {
            for (i, k) in list.iter().enumerate() {
                if k.is_empty() {
                    return Err(ConfigError::new(format!("{key}[{i}]"), "must not be empty"));
                }
            }
        }
        for (i, p) in self.trusted_proxies.iter().enumerate() {
            IpNet::parse(p)
                .map_err(|reason| ConfigError::new(format!("trusted_proxies[{i}]"), reason))?;
        }
        Ok(())
    }
}

impl RateLimit {
    /// The governor quota, or why the values are unusable.
    pub(crate) fn quota(&self) -> Result<governor::Quota, String> {
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return Err(format!(
                "per_second must be a positive number, got {}",
                self.per_second
            ));
        }
        let burst = std::num::NonZeroU32::new(self.burst)
            .ok_or_else(|| "burst must be at least 1".to_owned())?;
        let period = std::time::Duration::try_from_secs_f64(1.0 / self.per_second)
            .map_err(|e| format!("per_second {} is out of range: {e}", self.per_second))?;
        governor::Quota::with_period(period)
            .map(|q| q.allow_burst(burst))
            .ok_or_else(|| format!("per_second {} is too large", self.per_second))
    }
}

/// An IP network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `1.2.3.4`, `10.0.0.0/8`, `::1`, `fd00::/8`.
    pub(crate) fn parse(s: &str) -> Result<IpNet, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{s:?} has a prefix length outside 0..={max}")),
            },
        };
        Ok(IpNet { addr, prefix })
    }

    /// Whether `ip` lies in the network (IPv4-mapped IPv6 addresses count as IPv4).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical_ip(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `::ffff:1.2.3.4` -> `1.2.3.4`; other addresses unchanged.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_to_an_empty_table() {
        let c: HttpConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, HttpConfig::default());
        c.validate().unwrap();
        assert!(c.forward_client_ip);
        assert!(serde_json::from_str::<HttpConfig>("{\"bogus\":1}").is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let c = HttpConfig {
            trusted_proxies: vec!["10.0.0.0/33".into()],
            ..HttpConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "trusted_proxies[0]");
        let mut c = HttpConfig::default();
        c.rate_limit.per_ip = Some(RateLimit {
            per_second: 0.0,
            burst: 1,
        });
        assert_eq!(c.validate().unwrap_err().key, "rate_limit.per_ip");
        let c = HttpConfig {
            max_connections: 0,
            ..HttpConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "max_connections");
    }

    #[test]
    fn networks_match() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        let all = IpNet::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let one = IpNet::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        assert!(
            IpNet::parse("fd00::/8")
                .unwrap()
                .contains("fd12::1".parse().unwrap())
        );
        assert!(IpNet::parse("nope").is_err());
    }
}
