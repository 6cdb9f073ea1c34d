//! Errors: configuration problems, the end of [`serve`](crate::serve), and the one mapping of
//! a refused request to its HTTP answer.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

/// A configuration value that cannot be used, naming the key (relative to the `[http]` table).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// Dotted key path, e.g. `rate_limit.per_ip`.
    pub key: String,
    /// Why.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// How [`serve`](crate::serve) ended other than cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The shutdown grace period ran out; the connections still open were cut. Requests that
    /// were cut never got a 2xx, so clients will retry them; nothing answered 2xx is lost.
    #[error(
        "shutdown grace period of {grace_ms} ms ran out with {connections} connections and {requests} requests unfinished"
    )]
    GraceExpired {
        /// The configured grace period.
        grace_ms: u64,
        /// Connections still open when it ran out.
        connections: usize,
        /// Requests still being handled when it ran out.
        requests: usize,
    },
}

/// Why a request is refused; converted to its answer in exactly one place
/// ([`ApiError::into_response`]).
#[derive(Debug, Clone)]
pub(crate) enum ApiError {
    /// 400: the request cannot be read (bad JSON, bad shape, unreadable body).
    BadRequest { field: String, reason: String },
    /// 401: missing or unknown write key / api secret.
    Unauthorized(&'static str),
    /// 403: a CORS preflight from an origin not on the allow-list.
    OriginNotAllowed,
    /// 404.
    NotFound,
    /// 405, with the methods the path accepts.
    MethodNotAllowed(&'static str),
    /// 408: the body did not arrive in time.
    BodyTimeout,
    /// 413: body (as received or decompressed) or a record over a cap.
    TooLarge(String),
    /// 415: content type or encoding not accepted.
    Unsupported(String),
    /// 429: over a rate limit.
    RateLimited { retry_after_secs: u64 },
    /// 503: the log is full or unwritable, or the server is shutting down.
    Unavailable {
        retry_after_secs: u64,
        reason: &'static str,
    },
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    reason: &'a str,
}

impl ApiError {
    pub(crate) fn bad_request(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The status code of the answer.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::OriginNotAllowed => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The answer: `{"status":"error","field"?,"reason"}` plus `Allow` / `Retry-After`.
    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let (field, reason): (Option<&str>, String) = match &self {
            ApiError::BadRequest { field, reason } => (Some(field), reason.clone()),
            ApiError::Unauthorized(r) => (None, (*r).to_owned()),
            ApiError::OriginNotAllowed => (None, "origin is not allowed".to_owned()),
            ApiError::NotFound => (None, "no such endpoint".to_owned()),
            ApiError::MethodNotAllowed(allow) => (None, format!("method not allowed; use {allow}")),
            ApiError::BodyTimeout => (None, "the body did not arrive in time".to_owned()),
            ApiError::TooLarge(r) | ApiError::Unsupported(r) => (None, r.clone()),
            ApiError::RateLimited { .. } => (None, "rate limited; retry later".to_owned()),
            ApiError::Unavailable { reason, .. } => (None, (*reason).to_owned()),
        };
        let mut resp = json_response(
            status,
            &ErrorBody {
                status: "error",
                field,
                reason: &reason,
            },
        );
        let h = resp.headers_mut();
        match self {
            ApiError::MethodNotAllowed(allow) => {
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::RateLimited { retry_after_secs }
            | ApiError::Unavailable {
                retry_after_secs, ..
            } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            // The client may still be sending a body we will not read: do not reuse the
            // connection.
            ApiError::TooLarge(_) | ApiError::BodyTimeout => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

/// A JSON answer with `Content-Type: application/json`.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
