//! Enrichment: clock-skew correction and UTM normalisation.

use serde_json::Value;

use crate::event::{Event, Object};
use crate::time::Timestamp;

/// The five UTM parameters, with the `context.campaign` key each comes from in Segment.
pub const UTM_KEYS: [(&str, &str); 5] = [
    ("utm_source", "source"),
    ("utm_medium", "medium"),
    ("utm_campaign", "name"),
    ("utm_term", "term"),
    ("utm_content", "content"),
];

/// Fixes the event time once, at ingestion.
///
/// With both a client timestamp and `sentAt`, the client clock's error cancels out:
/// `timestamp = receivedAt - (sentAt - timestamp)` (Segment's rule). With only a timestamp it is
/// kept; with none the receive time is used.
pub fn correct_skew(
    timestamp: Option<Timestamp>,
    sent_at: Option<Timestamp>,
    received_at: Timestamp,
) -> Timestamp {
    match (timestamp, sent_at) {
        (Some(ts), Some(sent)) => received_at.offset(ts.millis().saturating_sub(sent.millis())),
        (Some(ts), None) => ts,
        (None, _) => received_at,
    }
}

/// A usable UTM value: a non-empty string, or a number as text. `null` and `""` are absent.
fn utm_value(v: Option<&Value>) -> Option<Value> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(Value::String(s.clone())),
        Value::Number(n) => Some(Value::String(n.to_string())),
        _ => None,
    }
}

/// Puts UTM parameters into `properties.utm_*`, so routing rules test one place.
///
/// Precedence: an existing `properties.utm_*`, then `context.campaign.*`, then the query string
/// of `context.page.url`, then of `properties.url`.
pub fn normalise_utm(event: &mut Event) {
    let missing = |p: &Object| UTM_KEYS.iter().any(|(k, _)| utm_value(p.get(*k)).is_none());
    if !missing(&event.properties) {
        return;
    }
    if let Some(Value::Object(campaign)) = event.context.get("campaign") {
        for (utm, key) in UTM_KEYS {
            if utm_value(event.properties.get(utm)).is_none() {
                if let Some(v) = utm_value(campaign.get(key)) {
                    event.properties.insert(utm.to_owned(), v);
                }
            }
        }
    }
    for url in [
        event
            .context
            .get("page")
            .and_then(|p| p.get("url"))
            .and_then(Value::as_str),
        event.properties.get("url").and_then(Value::as_str),
    ]
    .into_iter()
    .flatten()
    .map(str::to_owned)
    .collect::<Vec<_>>()
    {
        if !missing(&event.properties) {
            break;
        }
        for (k, v) in query_pairs(&url) {
            if let Some((utm, _)) = UTM_KEYS.iter().find(|(u, _)| *u == k) {
                if utm_value(event.properties.get(*utm)).is_none() && !v.trim().is_empty() {
                    event.properties.insert((*utm).to_owned(), Value::String(v));
                }
            }
        }
    }
}

/// The decoded `key=value` pairs of a URL's query string (fragment excluded).
pub fn query_pairs(url: &str) -> impl Iterator<Item = (String, String)> + '_ {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+` (as a space); invalid escapes are kept literally.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_correction_uses_receive_time() {
        let t = |ms| Timestamp::from_millis(ms).unwrap();
        // Client clock is 10 s fast: sent 100_000, event 95_000, received (server) 90_000.
        assert_eq!(
            correct_skew(Some(t(95_000)), Some(t(100_000)), t(90_000)),
            t(85_000)
        );
        assert_eq!(correct_skew(Some(t(95_000)), None, t(90_000)), t(95_000));
        assert_eq!(correct_skew(None, Some(t(1)), t(90_000)), t(90_000));
    }

    #[test]
    fn decodes_queries() {
        let pairs: Vec<_> =
            query_pairs("https://x.io/p?utm_source=news%20letter&a=b+c&bad=%zz&e#frag").collect();
        assert_eq!(
            pairs,
            vec![
                ("utm_source".into(), "news letter".into()),
                ("a".into(), "b c".into()),
                ("bad".into(), "%zz".into()),
                ("e".into(), String::new()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
