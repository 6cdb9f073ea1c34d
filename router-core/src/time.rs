//! Timestamps as UTC epoch milliseconds, with RFC 3339 parsing and formatting.
//!
//! The core never reads a clock: every "now" is passed in by the caller.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Earliest accepted instant: 0001-01-01T00:00:00Z.
const MIN_MS: i64 = -62_135_596_800_000;
/// Latest accepted instant: 9999-12-31T23:59:59.999Z.
const MAX_MS: i64 = 253_402_300_799_999;

/// A UTC instant with millisecond precision (milliseconds since the Unix epoch).
///
/// Serialises as an RFC 3339 string with milliseconds and `Z`, e.g. `2025-01-28T12:00:00.000Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Builds a timestamp from epoch milliseconds; `None` outside years 1..=9999.
    pub fn from_millis(ms: i64) -> Option<Self> {
        (MIN_MS..=MAX_MS).contains(&ms).then_some(Self(ms))
    }

    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// Parses RFC 3339 (`2025-01-28T12:00:00Z`, `...12:00:00.123+02:00`); lower-case `t`/`z` and
    /// a space separator are tolerated. Sub-millisecond digits are truncated.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let dt = chrono::DateTime::parse_from_rfc3339(s).ok()?;
        Self::from_millis(dt.timestamp_millis())
    }

    /// Adds a signed number of milliseconds, saturating at the accepted range.
    pub fn offset(self, delta_ms: i64) -> Self {
        Self(self.0.saturating_add(delta_ms).clamp(MIN_MS, MAX_MS))
    }

    /// Writes the RFC 3339 form (`YYYY-MM-DDTHH:MM:SS.mmmZ`, 24 bytes) without allocating.
    pub fn format(self) -> Rfc3339 {
        let ms = self.0;
        let days = ms.div_euclid(86_400_000);
        let rem = ms.rem_euclid(86_400_000);
        let (y, m, d) = civil_from_days(days);
        let (hh, mm, ss, milli) = (
            rem / 3_600_000,
            rem / 60_000 % 60,
            rem / 1000 % 60,
            rem % 1000,
        );
        let mut b = *b"0000-00-00T00:00:00.000Z";
        let put = |b: &mut [u8; 24], at: usize, v: i64, width: usize| {
            let mut v = v;
            for i in (0..width).rev() {
                b[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(&mut b, 0, y, 4);
        put(&mut b, 5, m, 2);
        put(&mut b, 8, d, 2);
        put(&mut b, 11, hh, 2);
        put(&mut b, 14, mm, 2);
        put(&mut b, 17, ss, 2);
        put(&mut b, 20, milli, 3);
        Rfc3339(b)
    }
}

/// The RFC 3339 text of a [`Timestamp`], held on the stack.
#[derive(Clone, Copy)]
pub struct Rfc3339([u8; 24]);

impl Rfc3339 {
    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("1970-01-01T00:00:00.000Z")
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.format().as_str())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.format().as_str())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse_rfc3339(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 timestamp: {s:?}")))
    }
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
        let t = Timestamp::parse_rfc3339("2025-01-28T12:00:00Z").unwrap();
        assert_eq!(t.millis(), 1_738_065_600_000);
        assert_eq!(t.to_string(), "2025-01-28T12:00:00.000Z");
        let t = Timestamp::parse_rfc3339("2024-02-29T23:59:59.999+01:00").unwrap();
        assert_eq!(t.to_string(), "2024-02-29T22:59:59.999Z");
        assert_eq!(Timestamp(-1).to_string(), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn rejects_garbage_and_out_of_range() {
        assert!(Timestamp::parse_rfc3339("yesterday").is_none());
        assert!(Timestamp::parse_rfc3339("2025-13-01T00:00:00Z").is_none());
        assert!(Timestamp::from_millis(MAX_MS + 1).is_none());
        assert!(Timestamp::from_millis(MIN_MS - 1).is_none());
    }

    proptest! {
        #[test]
        fn format_parse_round_trips(ms in MIN_MS..=MAX_MS) {
            let t = Timestamp(ms);
            prop_assert_eq!(Timestamp::parse_rfc3339(t.format().as_str()), Some(t));
        }
    }
}
