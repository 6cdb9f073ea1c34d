//! Who the client is (peer address, or `X-Forwarded-For` from a trusted proxy) and the keyed
//! rate limiters (governor GCRA) per client IP and per write key.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use governor::DefaultKeyedRateLimiter;
use governor::clock::{Clock, DefaultClock};
use hyper::HeaderMap;

use crate::config::{IpNet, RateLimits, canonical_ip};

/// Longest write key used as a limiter key as is; longer ones are cut (they are refused by
/// auth anyway when keys are configured).
const MAX_KEY_LEN: usize = 256;

/// Resolves the client address of a request.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClientIp {
    trusted: Vec<IpNet>,
}

impl ClientIp {
    pub(crate) fn new(trusted: &[String]) -> Result<Self, String> {
        Ok(ClientIp {
            trusted: trusted
                .iter()
                .map(|s| IpNet::parse(s))
                .collect::<Result<_, _>>()?,
        })
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
    }

    /// The peer's address; when the peer is a trusted proxy, the right-most address of
    /// `X-Forwarded-For` that is not itself a trusted proxy (or the left-most one when all are).
    pub(crate) fn resolve(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let mut ip = canonical_ip(peer.ip());
        if !self.is_trusted(ip) {
            return ip;
        }
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            let Some(hop_ip) = parse_hop(hop.trim()) else {
                // Garbage: do not look further left than the last hop we could read.
                break;
            };
            ip = hop_ip;
            if !self.is_trusted(hop_ip) {
                break;
            }
        }
        ip
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .or_else(|_| s.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(canonical_ip)
}

/// Keyed limiters; each may be off.
#[derive(Debug, Default)]
pub(crate) struct Limiters {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_key: Option<DefaultKeyedRateLimiter<Box<str>>>,
    clock: DefaultClock,
}

impl Limiters {
    pub(crate) fn new(cfg: &RateLimits) -> Result<Self, String> {
        Ok(Limiters {
            per_ip: cfg
                .per_ip
                .as_ref()
                .map(|r| r.quota().map(DefaultKeyedRateLimiter::keyed))
                .transpose()?,
            per_key: cfg
                .per_write_key
                .as_ref()
                .map(|r| r.quota().map(DefaultKeyedRateLimiter::keyed))
                .transpose()?,
            clock: DefaultClock::default(),
        })
    }

    /// `Err(wait)` when the client IP is over its limit (IPv6 counted per /64).
    pub(crate) fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some(l) = &self.per_ip else { return Ok(()) };
        let key = match ip {
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
            v4 => v4,
        };
        l.check_key(&key)
            .map_err(|nu| nu.wait_time_from(self.clock.now()))
    }

    /// `Err(wait)` when the write key is over its limit.
    pub(crate) fn check_key(&self, key: &str) -> Result<(), Duration> {
        let Some(l) = &self.per_key else {
            return Ok(());
        };
        let mut end = key.len().min(MAX_KEY_LEN);
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        l.check_key(&Box::from(&key[..end]))
            .map_err(|nu| nu.wait_time_from(self.clock.now()))
    }

    /// Whether any limiter is on (the eviction task runs only then).
    pub(crate) fn any(&self) -> bool {
        self.per_ip.is_some() || self.per_key.is_some()
    }

    /// Forgets keys whose bucket is full again (they behave exactly as unseen keys).
    pub(crate) fn evict_idle(&self) {
        if let Some(l) = &self.per_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_key {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys currently tracked (ip, write key).
    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize) {
        (
            self.per_ip.as_ref().map_or(0, |l| l.len()),
            self.per_key.as_ref().map_or(0, |l| l.len()),
        )
    }
}

/// `Retry-After` in whole seconds for a wait (at least 1).
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimit;
    use hyper::header::HeaderValue;

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 1234)
    }

    #[test]
    fn forwarded_for_only_from_trusted_peers() {
        let c = ClientIp::new(&["10.0.0.0/8".into()]).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4, 10.0.0.2"),
        );
        assert_eq!(
            c.resolve(peer("10.0.0.1"), &h),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            c.resolve(peer("8.8.8.8"), &h),
            "8.8.8.8".parse::<IpAddr>().unwrap()
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.3"));
        assert_eq!(
            c.resolve(peer("10.0.0.1"), &h),
            "10.0.0.3".parse::<IpAddr>().unwrap()
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1, junk"));
        assert_eq!(
            c.resolve(peer("10.0.0.1"), &h),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("[2001:db8::1]:443"),
        );
        assert_eq!(
            c.resolve(peer("10.0.0.1"), &h),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            ClientIp::default().resolve(peer("::ffff:1.2.3.4"), &h),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn limits_per_key_and_evicts() {
        let l = Limiters::new(&RateLimits {
            per_write_key: Some(RateLimit {
                per_second: 1000.0,
                burst: 2,
            }),
            per_ip: Some(RateLimit {
                per_second: 0.5,
                burst: 1,
            }),
            evict_interval_secs: 1,
        })
        .unwrap();
        assert!(l.check_key("a").is_ok() && l.check_key("a").is_ok());
        assert!(l.check_key("a").is_err());
        assert!(l.check_key("b").is_ok());
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(l.check_ip(ip).is_ok());
        let wait = l.check_ip("2001:db8::2".parse().unwrap()).unwrap_err();
        assert!(wait > Duration::from_secs(1), "same /64: {wait:?}");
        assert_eq!(retry_after_secs(wait), 2);
        std::thread::sleep(Duration::from_millis(5));
        l.evict_idle();
        assert_eq!(l.len(), (1, 0));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2100)), 3);
    }
}
