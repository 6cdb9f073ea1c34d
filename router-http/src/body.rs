//! Request bodies: accepted content types and encodings, reading with a size cap and a
//! deadline, and gzip decompression with a hard cap on the output.

use std::io::Read;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::HeaderMap;
use hyper::body::Body;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};

use crate::error::ApiError;

/// How the body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    Identity,
    Gzip,
}

/// Checks `Content-Type` (JSON, `text/plain` from `navigator.sendBeacon`, or none) and
/// `Content-Encoding` (`gzip`, `identity`, or none); 415 otherwise.
#[cfg(test)]
pub(crate) fn check_headers(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    check_headers_for(headers, false).map(|(e, _)| e)
}

/// [`check_headers`], also accepting `application/x-www-form-urlencoded` when `allow_form`
/// (PostHog's `data=` bodies); says whether the body is a form.
pub(crate) fn check_headers_for(
    headers: &HeaderMap,
    allow_form: bool,
) -> Result<(Encoding, bool), ApiError> {
    let mut form = false;
    if let Some(ct) = headers.get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        form = allow_form && essence.eq_ignore_ascii_case("application/x-www-form-urlencoded");
        let ok = essence.is_empty()
            || form
            || essence.eq_ignore_ascii_case("application/json")
            || essence.eq_ignore_ascii_case("text/plain");
        if !ok {
            return Err(ApiError::Unsupported(format!(
                "content type {:?} is not accepted; send application/json or text/plain",
                truncate(ct, 100)
            )));
        }
    }
    let mut encoding = Encoding::Identity;
    for v in headers.get_all(CONTENT_ENCODING) {
        for token in v.to_str().unwrap_or("\u{0}").split(',') {
            let token = token.trim();
            if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
                if encoding == Encoding::Gzip {
                    return Err(unsupported_encoding("gzip applied twice"));
                }
                encoding = Encoding::Gzip;
            } else if !(token.is_empty() || token.eq_ignore_ascii_case("identity")) {
                return Err(unsupported_encoding(token));
            }
        }
    }
    Ok((encoding, form))
}

fn unsupported_encoding(what: &str) -> ApiError {
    ApiError::Unsupported(format!(
        "content encoding {:?} is not accepted; send gzip or identity",
        truncate(what, 100)
    ))
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Reads the whole body: 413 as soon as it is known to exceed `cap` (from `Content-Length`, or
/// while reading), 408 when it is not complete within `deadline`.
pub(crate) async fn read<B>(
    body: B,
    headers: &HeaderMap,
    cap: usize,
    deadline: Duration,
) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let too_large = || ApiError::TooLarge(format!("body is larger than the cap of {cap} bytes"));
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    let read_all = async {
        let mut body = std::pin::pin!(body);
        // Grow with what actually arrives: a declared length alone reserves at most 64 KiB.
        let initial = declared.map_or(8 * 1024, |n| n.min(64 * 1024) as usize);
        let mut buf = BytesMut::with_capacity(initial);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::bad_request("$", format!("the body could not be read: {e}"))
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > cap {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(deadline, read_all)
        .await
        .map_err(|_| ApiError::BodyTimeout)?
}

/// Decodes the body into a mutable buffer (the parser unescapes strings in place): gzip is
/// inflated with a hard cap on the output, checked while inflating, so a small body that
/// inflates to gigabytes costs at most `cap` bytes and the time to produce them.
pub(crate) fn decode(raw: Bytes, encoding: Encoding, cap: usize) -> Result<Vec<u8>, ApiError> {
    match encoding {
        Encoding::Identity => Ok(raw.into()),
        Encoding::Gzip => {
            let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(cap));
            let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
            flate2::read::MultiGzDecoder::new(&raw[..])
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| {
                    ApiError::bad_request("$", format!("the gzip body is corrupt: {e}"))
                })?;
            if out.len() > cap {
                return Err(ApiError::TooLarge(format!(
                    "body is larger than the cap of {cap} bytes once decompressed"
                )));
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use hyper::header::HeaderValue;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap().into()
    }

    #[test]
    fn content_types_and_encodings() {
        let mut h = HeaderMap::new();
        assert_eq!(check_headers(&h).unwrap(), Encoding::Identity);
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain;charset=UTF-8"),
        );
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("GZIP"));
        assert_eq!(check_headers(&h).unwrap(), Encoding::Gzip);
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert!(matches!(check_headers(&h), Err(ApiError::Unsupported(_))));
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip, gzip"));
        assert!(matches!(check_headers(&h), Err(ApiError::Unsupported(_))));
        h.remove(CONTENT_ENCODING);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        assert!(matches!(check_headers(&h), Err(ApiError::Unsupported(_))));
    }

    #[test]
    fn gzip_is_capped() {
        let data = vec![b'a'; 10_000];
        assert_eq!(decode(gzip(&data), Encoding::Gzip, 10_000).unwrap(), data);
        assert!(matches!(
            decode(gzip(&data), Encoding::Gzip, 9_999),
            Err(ApiError::TooLarge(_))
        ));
        assert!(matches!(
            decode(Bytes::from_static(b"not gzip"), Encoding::Gzip, 100),
            Err(ApiError::BadRequest { .. })
        ));
    }
}
