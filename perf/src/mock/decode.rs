//! Pure byte-level helpers shared by both mocks: query and form parsing, capped gzip
//! decompression, lenient base64, Basic auth, and 128-bit keys for duplicate detection.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Read;

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The decoded body is larger than the cap (bytes).
    TooLarge(usize),
    /// The body is not what it claims to be (broken gzip, bad base64, bad UTF-8...).
    Invalid(String),
}

/// The three magic bytes of a gzip member with the deflate method.
pub(crate) fn is_gzip(data: &[u8]) -> bool {
    data.len() >= 3 && data[0] == 0x1f && data[1] == 0x8b && data[2] == 0x08
}

/// Decompresses a gzip stream, refusing to produce more than `cap` bytes.
pub(crate) fn gunzip(data: &[u8], cap: usize) -> Result<Vec<u8>, DecodeError> {
    let decoder = flate2::read::MultiGzDecoder::new(data);
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(cap));
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    decoder
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Invalid(format!("invalid gzip stream: {e}")))?;
    if out.len() > cap {
        return Err(DecodeError::TooLarge(cap));
    }
    Ok(out)
}

/// Base64 engines that accept input with or without padding.
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes base64 the way ingestion services do: a space is a `+` that form decoding turned
/// into a space, line breaks are ignored, padding is optional, URL-safe alphabet accepted.
pub(crate) fn decode_base64_lenient(input: &str) -> Option<Vec<u8>> {
    let cleaned: String = input
        .chars()
        .filter(|c| !matches!(c, '\n' | '\r' | '\t'))
        .map(|c| if c == ' ' { '+' } else { c })
        .collect();
    if cleaned.is_empty() {
        return None;
    }
    STANDARD_LENIENT
        .decode(&cleaned)
        .or_else(|_| URL_SAFE_LENIENT.decode(&cleaned))
        .ok()
}

/// Whether a string could be base64 at all (cheap pre-check before an optimistic decode).
pub(crate) fn looks_like_base64(input: &[u8]) -> bool {
    let trimmed = input.trim_ascii();
    !trimmed.is_empty()
        && trimmed.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_' | b'\n' | b'\r')
        })
}

/// Percent-decodes one query or form component (`+` is a space, as in forms).
pub(crate) fn percent_decode(input: &str) -> Vec<u8> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses `a=1&b=x%20y` into decoded pairs (lossy UTF-8 for the values).
pub(crate) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            (
                String::from_utf8_lossy(&percent_decode(k)).into_owned(),
                String::from_utf8_lossy(&percent_decode(v)).into_owned(),
            )
        })
        .collect()
}

/// The first value of `name` in parsed pairs.
pub(crate) fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The percent-decoded bytes of one field of a form body (`a=1&data=...`).
pub(crate) fn form_field(body: &[u8], name: &str) -> Option<Vec<u8>> {
    body.split(|b| *b == b'&').find_map(|part| {
        let eq = part.iter().position(|b| *b == b'=');
        let (k, v) = match eq {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &b""[..]),
        };
        let key = percent_decode(&String::from_utf8_lossy(k));
        (key == name.as_bytes()).then(|| percent_decode(&String::from_utf8_lossy(v)))
    })
}

/// Whether the payload (after leading whitespace) starts like a JSON object or array.
pub(crate) fn starts_json(data: &[u8]) -> bool {
    matches!(data.trim_ascii_start().first(), Some(b'{' | b'['))
}

/// Splits a `Basic` authorization header into user and password.
pub(crate) fn basic_auth(header: &str) -> Option<(String, String)> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = general_purpose::STANDARD
        .decode(rest.trim())
        .or_else(|_| STANDARD_LENIENT.decode(rest.trim()))
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':').unwrap_or((text.as_str(), ""));
    Some((user.to_owned(), pass.to_owned()))
}

/// A 128-bit key for duplicate detection built from several strings (length-prefixed, so
/// `("ab","c")` and `("a","bc")` differ). Two SipHash passes with different salts.
pub(crate) fn key128(parts: &[&str]) -> u128 {
    let half = |salt: u64| {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        for p in parts {
            p.len().hash(&mut h);
            p.hash(&mut h);
        }
        h.finish()
    };
    (u128::from(half(0x5eed_0001)) << 64) | u128::from(half(0x5eed_0002))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gunzip_round_trip_and_cap() {
        let data = vec![b'a'; 10_000];
        let z = gz(&data);
        assert!(is_gzip(&z));
        assert_eq!(gunzip(&z, 10_000).unwrap(), data);
        assert_eq!(gunzip(&z, 9_999), Err(DecodeError::TooLarge(9_999)));
        assert!(matches!(
            gunzip(&[0x1f, 0x8b, 0x08, 0, 1, 2], 100),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn query_and_form_decoding() {
        let pairs = parse_query("data=a%2Bb+c&x=&strict=1&flag");
        assert_eq!(param(&pairs, "data"), Some("a+b c"));
        assert_eq!(param(&pairs, "x"), Some(""));
        assert_eq!(param(&pairs, "strict"), Some("1"));
        assert_eq!(param(&pairs, "flag"), Some(""));
        assert_eq!(param(&pairs, "nope"), None);
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
        assert_eq!(
            form_field(b"compression=b64&data=eyJ%2B", "data").unwrap(),
            b"eyJ+"
        );
        assert_eq!(
            form_field(b"compression=b64&data=eyJ%2B", "compression").unwrap(),
            b"b64"
        );
        assert!(form_field(b"x=1", "data").is_none());
        assert!(starts_json(b"  [1]") && starts_json(b"{}") && !starts_json(b"eyJ"));
    }

    #[test]
    fn base64_is_lenient() {
        assert_eq!(
            decode_base64_lenient("eyJhIjoxfQ==").unwrap(),
            br#"{"a":1}"#
        );
        assert_eq!(decode_base64_lenient("eyJhIjoxfQ").unwrap(), br#"{"a":1}"#);
        // '+' turned into ' ' by form decoding is restored.
        assert_eq!(
            decode_base64_lenient("+/8=").unwrap(),
            decode_base64_lenient(" /8=").unwrap()
        );
        assert!(decode_base64_lenient("").is_none());
        assert!(looks_like_base64(b"eyJhIjoxfQ=="));
        assert!(!looks_like_base64(b"{\"a\":1}"));
    }

    #[test]
    fn basic_auth_parsing() {
        // "tok:" and "user:secret"
        assert_eq!(
            basic_auth("Basic dG9rOg==").unwrap(),
            ("tok".into(), String::new())
        );
        assert_eq!(
            basic_auth("basic dXNlcjpzZWNyZXQ=").unwrap(),
            ("user".into(), "secret".into())
        );
        assert!(basic_auth("Bearer abc").is_none());
        assert!(basic_auth("Basic !!!").is_none());
    }

    #[test]
    fn key128_separates_parts() {
        assert_ne!(key128(&["ab", "c"]), key128(&["a", "bc"]));
        assert_eq!(key128(&["x", "y"]), key128(&["x", "y"]));
    }
}
