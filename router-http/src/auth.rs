//! Write keys: where a request carries one, constant-time checks against the configured set,
//! and redaction for logs.

use base64::Engine as _;
use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use router_core::enrich::percent_decode;

/// A set of secrets (write keys or GA4 api secrets). Empty means "not required".
#[derive(Clone, Default)]
pub(crate) struct KeySet {
    keys: Vec<Box<[u8]>>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySet({} keys)", self.keys.len())
    }
}

impl KeySet {
    pub(crate) fn new(keys: &[String]) -> Self {
        KeySet {
            keys: keys.iter().map(|k| k.as_bytes().into()).collect(),
        }
    }

    /// Whether keys are required at all.
    pub(crate) fn is_required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether `key` is one of the set. Compares against every key without stopping early,
    /// each comparison in time independent of where the bytes differ.
    pub(crate) fn contains(&self, key: &str) -> bool {
        let mut found = 0u8;
        for k in &self.keys {
            found |= u8::from(ct_eq(k, key.as_bytes()));
        }
        found == 1
    }
}

/// Constant-time equality (in the longer length; lengths themselves are not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(x ^ y);
    }
    diff == 0
}

/// The user name of a `Basic` `Authorization` header (Segment: the write key, empty
/// password).
pub(crate) fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let user = s.split_once(':').map_or(s.as_str(), |(u, _)| u);
    (!user.is_empty()).then(|| user.to_owned())
}

/// The first value of `name` in a query string, percent-decoded.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// A key as it may appear in logs: its first four characters at most, then `…`.
pub(crate) fn redact(key: &str) -> String {
    let shown: String = if key.chars().count() >= 12 {
        key.chars().take(4).collect()
    } else {
        String::new()
    };
    format!("{shown}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn key_sets_compare_exactly() {
        let s = KeySet::new(&["alpha".into(), "beta-key".into()]);
        assert!(s.is_required());
        assert!(s.contains("alpha") && s.contains("beta-key"));
        assert!(!s.contains("alph") && !s.contains("alphaa") && !s.contains(""));
        assert!(!KeySet::default().is_required());
        assert!(!KeySet::default().contains("x"));
    }

    #[test]
    fn basic_auth_takes_the_user() {
        let mut h = HeaderMap::new();
        // base64("wk_123:")
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic d2tfMTIzOg=="),
        );
        assert_eq!(basic_auth_user(&h).as_deref(), Some("wk_123"));
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer d2tfMTIzOg=="),
        );
        assert_eq!(basic_auth_user(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(basic_auth_user(&h), None);
    }

    #[test]
    fn query_params_are_decoded() {
        let q = Some("a=1&writeKey=k%2By+z&x");
        assert_eq!(query_param(q, "writeKey").as_deref(), Some("k+y z"));
        assert_eq!(query_param(q, "x").as_deref(), Some(""));
        assert_eq!(query_param(q, "b"), None);
        assert_eq!(query_param(Some("k=%zz%4"), "k").as_deref(), Some("%zz%4"));
        assert_eq!(query_param(None, "k"), None);
    }

    #[test]
    fn redaction_hides_short_keys() {
        assert_eq!(redact("abc"), "…");
        assert_eq!(redact("abcdefghijklmnop"), "abcd…");
    }
}
