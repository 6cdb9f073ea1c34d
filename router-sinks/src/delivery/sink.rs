//! The [`Sink`] trait and what flows through it: [`OutboundRecord`]s in, one [`Outcome`] per
//! record out.
//!
//! A sink is the client of one destination. It gets a batch of records that are already
//! mapped and encoded (their JSON bytes are fixed when the stored event is read, so every
//! attempt sends identical identity fields), splits it as the destination's limits require,
//! sends it, and classifies each record's fate. It never retries or sleeps itself: waiting is
//! the delivery loop's job, so the loop can honour `Retry-After` across requests, pause the
//! destination, expire records, and stop promptly.
//!
//! The trait is object-safe (the send future is boxed) so the delivery loop holds an
//! `Arc<dyn Sink>`, and tests can plug in scripted sinks.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use router_core::Event;
use router_core::map::{
    Field, MixpanelEndpoint, MixpanelSettings, PosthogSettings, Record, mixpanel_records,
    posthog_record, posthog_uuid,
};

/// Largest response body kept in an outcome or a dead letter, in bytes.
pub const MAX_BODY_EXCERPT: usize = 1024;

/// The request a record belongs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// PostHog `POST /batch/` (an item of `batch`).
    PosthogBatch,
    /// Mixpanel `POST /import?strict=1` (an event).
    MixpanelImport,
    /// Mixpanel `POST /engage` (a user profile update).
    MixpanelEngage,
    /// Mixpanel `POST /groups` (a group profile update).
    MixpanelGroups,
}

impl Endpoint {
    /// Short label (`batch`, `import`, `engage`, `groups`).
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::PosthogBatch => "batch",
            Endpoint::MixpanelImport => "import",
            Endpoint::MixpanelEngage => "engage",
            Endpoint::MixpanelGroups => "groups",
        }
    }
}

impl From<MixpanelEndpoint> for Endpoint {
    fn from(e: MixpanelEndpoint) -> Self {
        match e {
            MixpanelEndpoint::Import => Endpoint::MixpanelImport,
            MixpanelEndpoint::Engage => Endpoint::MixpanelEngage,
            MixpanelEndpoint::Groups => Endpoint::MixpanelGroups,
        }
    }
}

/// One destination record, encoded once and resent byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRecord {
    /// Which request it goes in.
    pub endpoint: Endpoint,
    /// The record's compact JSON, exactly as it appears in the request.
    pub json: Bytes,
    /// Its identity for logs and for matching per-record answers: PostHog `uuid`, Mixpanel
    /// `$insert_id` (events), `$distinct_id` (profiles) or `$group_id` (groups).
    pub id: String,
    /// Event time in epoch milliseconds (for PostHog's `historical_migration`).
    pub timestamp_ms: i64,
}

/// What happened to one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The destination accepted it.
    Delivered,
    /// Not delivered this time; send it again later.
    Retry {
        /// How long the destination asked to wait (`Retry-After`), if it said.
        after: Option<Duration>,
        /// Why (status or transport error), for logs and the expiry dead letter.
        reason: String,
    },
    /// The destination refused it for good: it goes to the dead-letter file.
    Rejected {
        /// Why, in words.
        reason: String,
        /// The destination's HTTP status, if there was an answer.
        status: Option<u16>,
        /// The destination's answer (or the failed record's entry), at most
        /// [`MAX_BODY_EXCERPT`] bytes.
        body: String,
    },
}

impl Outcome {
    /// A retry without a requested delay.
    pub fn retry(reason: impl Into<String>) -> Self {
        Outcome::Retry {
            after: None,
            reason: reason.into(),
        }
    }

    /// A rejection; `body` is cut to [`MAX_BODY_EXCERPT`] bytes.
    pub fn rejected(reason: impl Into<String>, status: Option<u16>, body: &str) -> Self {
        Outcome::Rejected {
            reason: reason.into(),
            status,
            body: excerpt(body),
        }
    }
}

/// The destination refused the credentials (401/403): the loop pauses the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// 401 or 403.
    pub status: u16,
    /// The answer, at most [`MAX_BODY_EXCERPT`] bytes.
    pub body: String,
}

/// The result of sending one batch: one outcome per record, in order, and whether the
/// destination refused the credentials (the records it did not take are then
/// [`Outcome::Retry`] and do not count as attempts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// One outcome per record of the batch, in the batch's order.
    pub outcomes: Vec<Outcome>,
    /// Set when a request of this batch got 401/403.
    pub auth_failure: Option<AuthFailure>,
}

impl SendResult {
    /// Every record with the same outcome.
    pub fn all(n: usize, outcome: Outcome) -> Self {
        SendResult {
            outcomes: vec![outcome; n],
            auth_failure: None,
        }
    }
}

/// The future returned by [`Sink::send`].
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = SendResult> + Send + 'a>>;

/// A destination client. Implementations: [`PosthogSink`](super::PosthogSink),
/// [`MixpanelSink`](super::MixpanelSink), [`FileSink`](super::FileSink).
///
/// Contract:
/// - [`Sink::send`] returns exactly one [`Outcome`] per record, in order, also for an empty
///   batch (no outcomes) and whatever happens on the wire; it never panics on bad answers.
/// - It respects the destination's per-request limits by splitting the batch itself.
/// - It neither sleeps nor retries: [`Outcome::Retry`] hands the record back to the caller.
/// - The request timeout is the sink's (a hung request becomes a `Retry`).
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// What kind of sink this is (`posthog`, `mixpanel`, `file`), for logs.
    fn kind(&self) -> &'static str;

    /// Sends `batch`; resolves to one outcome per record.
    fn send<'a>(&'a self, batch: &'a [OutboundRecord]) -> SendFuture<'a>;
}

/// Cuts `body` to at most [`MAX_BODY_EXCERPT`] bytes on a character boundary.
pub fn excerpt(body: &str) -> String {
    if body.len() <= MAX_BODY_EXCERPT {
        return body.to_owned();
    }
    let mut end = MAX_BODY_EXCERPT;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    body[..end].to_owned()
}

/// How stored events become a destination's records.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Mapper {
    /// One PostHog event per canonical event ([`posthog_record`]).
    Posthog(PosthogSettings),
    /// Mixpanel `/import` events and `/engage`/`/groups` updates ([`mixpanel_records`]).
    Mixpanel(MixpanelSettings),
}

impl Mapper {
    /// Appends the records of `event` to `out` (none when the mapping produces none).
    pub fn map(&self, event: &Event, out: &mut Vec<OutboundRecord>) {
        match self {
            Mapper::Posthog(s) => {
                let r = posthog_record(event, s);
                out.push(OutboundRecord {
                    endpoint: Endpoint::PosthogBatch,
                    json: encode(&r),
                    id: posthog_uuid(&event.message_id).to_string(),
                    timestamp_ms: event.timestamp.millis(),
                });
            }
            Mapper::Mixpanel(s) => {
                let mut recs = Vec::with_capacity(2);
                mixpanel_records(event, s, &mut recs);
                for r in recs {
                    let id = match r.endpoint {
                        MixpanelEndpoint::Import => match r.record.get("properties") {
                            Some(Field::Record(p)) => p.get("$insert_id").and_then(field_text),
                            _ => None,
                        },
                        MixpanelEndpoint::Engage => {
                            r.record.get("$distinct_id").and_then(field_text)
                        }
                        MixpanelEndpoint::Groups => r.record.get("$group_id").and_then(field_text),
                    };
                    out.push(OutboundRecord {
                        endpoint: r.endpoint.into(),
                        json: encode(&r.record),
                        id: id.unwrap_or_default(),
                        timestamp_ms: event.timestamp.millis(),
                    });
                }
            }
        }
    }
}

fn encode(r: &Record<'_>) -> Bytes {
    let mut buf = Vec::with_capacity(512);
    r.write_json(&mut buf);
    Bytes::from(buf)
}

fn field_text(f: &Field<'_>) -> Option<String> {
    match f {
        Field::Str(s) => Some((*s).to_owned()),
        Field::String(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_cuts_on_a_char_boundary() {
        assert_eq!(excerpt("short"), "short");
        let long = "é".repeat(1000); // 2000 bytes
        let cut = excerpt(&long);
        assert!(cut.len() <= MAX_BODY_EXCERPT && cut.len() >= MAX_BODY_EXCERPT - 1);
        assert!(long.starts_with(&cut));
    }
}
