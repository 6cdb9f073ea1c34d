//! CORS for browser clients: preflight answers and the headers of actual answers.
//!
//! An allowed `Origin` is mirrored (never `*`, which browsers refuse with credentials), with
//! `Access-Control-Allow-Credentials: true` and `Vary: Origin`; preflights mirror the requested
//! headers (old SDKs and proxies send unusual ones). A preflight from an origin not on the
//! allow-list gets 403; actual requests from such an origin are still handled (beacons are
//! sent without CORS) but carry no CORS headers, so a page cannot read the answer.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use crate::error::ApiError;

/// The methods ingest paths accept.
pub(crate) const INGEST_METHODS: &str = "POST, OPTIONS";

/// The allow-list.
#[derive(Clone, Debug)]
pub(crate) struct Cors {
    /// Empty: any origin.
    allowed: Vec<OriginPattern>,
    max_age: HeaderValue,
}

#[derive(Clone, Debug)]
enum OriginPattern {
    Any,
    Exact(String),
    /// `https://*.example.com`: scheme prefix and domain suffix (`.example.com`).
    Subdomains {
        scheme: String,
        suffix: String,
    },
}

impl OriginPattern {
    fn parse(s: &str) -> Self {
        let s = s.trim().trim_end_matches('/').to_ascii_lowercase();
        if s == "*" {
            return OriginPattern::Any;
        }
        if let Some((scheme, rest)) = s.split_once("://*.") {
            return OriginPattern::Subdomains {
                scheme: format!("{scheme}://"),
                suffix: format!(".{rest}"),
            };
        }
        OriginPattern::Exact(s)
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Any => true,
            OriginPattern::Exact(o) => o.eq_ignore_ascii_case(origin),
            OriginPattern::Subdomains { scheme, suffix } => {
                let o = origin.to_ascii_lowercase();
                o.strip_prefix(scheme.as_str()).is_some_and(|host| {
                    host.len() > suffix.len() && host.ends_with(suffix.as_str())
                })
            }
        }
    }
}

impl Cors {
    pub(crate) fn new(allowed: &[String], max_age_secs: u64) -> Self {
        Cors {
            allowed: allowed.iter().map(|s| OriginPattern::parse(s)).collect(),
            max_age: HeaderValue::from(max_age_secs),
        }
    }

    /// The request's `Origin` when it is allowed.
    pub(crate) fn allowed_origin<'h>(&self, headers: &'h HeaderMap) -> Option<&'h HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let s = origin.to_str().ok()?;
        (self.allowed.is_empty() || self.allowed.iter().any(|p| p.matches(s))).then_some(origin)
    }

    /// Adds the CORS headers of an actual answer when the origin is allowed.
    pub(crate) fn decorate(&self, origin: Option<&HeaderValue>, resp: &mut Response<Full<Bytes>>) {
        let Some(origin) = origin else { return };
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Retry-After"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }

    /// The answer to `OPTIONS` on an ingest path.
    pub(crate) fn preflight(&self, headers: &HeaderMap) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(INGEST_METHODS));
        if headers.get(header::ORIGIN).is_none() {
            // A plain OPTIONS, not a CORS preflight.
            return resp;
        }
        let Some(origin) = self.allowed_origin(headers) else {
            let mut resp = ApiError::OriginNotAllowed.into_response();
            resp.headers_mut()
                .append(header::VARY, HeaderValue::from_static("Origin"));
            return resp;
        };
        self.decorate(Some(origin), &mut resp);
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(INGEST_METHODS),
        );
        let allow_headers = headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("Content-Type, Authorization"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        h.append(
            header::VARY,
            HeaderValue::from_static("Access-Control-Request-Headers"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origin(o: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static(o));
        h
    }

    #[test]
    fn allow_list_patterns() {
        let c = Cors::new(
            &[
                "https://shop.example".into(),
                "https://*.example.com/".into(),
            ],
            60,
        );
        assert!(
            c.allowed_origin(&with_origin("https://shop.example"))
                .is_some()
        );
        assert!(
            c.allowed_origin(&with_origin("https://a.b.example.com"))
                .is_some()
        );
        assert!(
            c.allowed_origin(&with_origin("https://example.com"))
                .is_none()
        );
        assert!(
            c.allowed_origin(&with_origin("http://a.example.com"))
                .is_none()
        );
        assert!(
            c.allowed_origin(&with_origin("https://evil.test"))
                .is_none()
        );
        assert!(c.allowed_origin(&HeaderMap::new()).is_none());
        let any = Cors::new(&[], 60);
        assert!(
            any.allowed_origin(&with_origin("https://evil.test"))
                .is_some()
        );
    }

    #[test]
    fn preflight_mirrors() {
        let c = Cors::new(&["https://shop.example".into()], 600);
        let mut h = with_origin("https://shop.example");
        h.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("content-type,x-funky"),
        );
        let r = c.preflight(&h);
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let g = |n| r.headers().get(n).unwrap().to_str().unwrap();
        assert_eq!(
            g(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            "https://shop.example"
        );
        assert_eq!(
            g(header::ACCESS_CONTROL_ALLOW_HEADERS),
            "content-type,x-funky"
        );
        assert_eq!(g(header::ACCESS_CONTROL_MAX_AGE), "600");
        assert_eq!(
            c.preflight(&with_origin("https://evil.test")).status(),
            StatusCode::FORBIDDEN
        );
    }
}
