//! Mixpanel ingestion client (API_SPECS.md §2.2–2.7, §5.3).
//!
//! A batch is split by endpoint, then into requests of at most [`MAX_ITEMS`] records and
//! [`MAX_REQUEST_BYTES`] of uncompressed JSON:
//!
//! - events: `POST {host}/import?strict=1[&project_id=…]`, a JSON array, gzipped, Basic
//!   auth (`token:`, a legacy `api_secret:`, or `service_account:secret` with `project_id`);
//! - user profile updates: `POST {host}/engage?ip=0&verbose=1`, a JSON array, not gzipped
//!   (`/engage` refuses gzip), the token is each update's `$token`;
//! - group profile updates: `POST {host}/groups?verbose=1`, the same way.
//!
//! Answers: `/import` 2xx delivers the request; a 400 with `failed_records` is a partial
//! success: the listed records (matched by `index`, checked against `insert_id` /
//! `$insert_id`) are rejected and the others delivered; a 400 without it rejects the request.
//! `/engage` and `/groups` answer 200 even when updates are invalid: `1` (or
//! `{"status":1}`) delivers, `0` (or `{"status":0}`) rejects, and a verbose answer's
//! `failed_records` rejects only those. Everywhere: 408/429/5xx and transport errors retry
//! (honouring `Retry-After`), 401/403 pause, 413 splits in halves until a lone record still
//! gets 413 (rejected). After a transient failure the rest of the batch is not sent: it
//! waits with the failed part.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use serde_json::Value;
use tokio::time::Instant;

use super::config::{MixpanelAuth, MixpanelDestination};
use super::error::DeliveryError;
use super::http::{self, Answer};
use super::metrics::{DeliveryMetrics, RequestOutcome};
use super::retry::{StatusClass, classify_status};
use super::sink::{
    AuthFailure, Endpoint, OutboundRecord, Outcome, SendFuture, SendResult, Sink, excerpt,
};

/// Most records per request (every endpoint).
pub const MAX_ITEMS: usize = 2000;
/// Most uncompressed bytes per request (the safe side of Mixpanel's 2 MB / 2 MiB / 10 MB).
pub const MAX_REQUEST_BYTES: usize = 2_000_000;

/// Sends batches to Mixpanel's `/import`, `/engage` and `/groups`.
#[derive(Clone)]
pub struct MixpanelSink {
    client: reqwest::Client,
    import_url: reqwest::Url,
    engage_url: reqwest::Url,
    groups_url: reqwest::Url,
    auth: MixpanelAuth,
    metrics: Arc<DeliveryMetrics>,
}

impl std::fmt::Debug for MixpanelSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MixpanelSink")
            .field("import_url", &self.import_url.as_str())
            .finish_non_exhaustive()
    }
}

impl MixpanelSink {
    /// A sink for `dest` (which must have credentials), sharing `client`, counting requests
    /// in `metrics`.
    pub fn new(
        name: &str,
        dest: &MixpanelDestination,
        client: reqwest::Client,
        metrics: Arc<DeliveryMetrics>,
    ) -> Result<Self, DeliveryError> {
        let auth = dest.auth().ok_or_else(|| {
            DeliveryError::Config(format!("destination {name:?} has no Mixpanel credentials"))
        })?;
        let base = http::base_url(name, &dest.host)?;
        let url = |path: &str, query: &[(&str, &str)]| {
            reqwest::Url::parse_with_params(&format!("{base}{path}"), query).map_err(|e| {
                DeliveryError::InvalidHost {
                    destination: name.to_owned(),
                    host: dest.host.clone(),
                    reason: e.to_string(),
                }
            })
        };
        let import_url = match &auth {
            MixpanelAuth::ServiceAccount { project_id, .. } => url(
                "/import",
                &[("strict", "1"), ("project_id", project_id.as_str())],
            )?,
            MixpanelAuth::User(_) => url("/import", &[("strict", "1")])?,
        };
        Ok(MixpanelSink {
            import_url,
            engage_url: url("/engage", &[("ip", "0"), ("verbose", "1")])?,
            groups_url: url("/groups", &[("verbose", "1")])?,
            client,
            auth,
            metrics,
        })
    }

    /// Sends one request of the records at `idx` (all of `endpoint`).
    async fn post(
        &self,
        endpoint: Endpoint,
        batch: &[OutboundRecord],
        idx: &[usize],
    ) -> (Result<Answer, String>, Duration) {
        let body = array_body(batch, idx);
        let req = match endpoint {
            Endpoint::MixpanelImport => {
                let req = self
                    .client
                    .post(self.import_url.clone())
                    .header(CONTENT_TYPE, "application/json");
                let req = match &self.auth {
                    MixpanelAuth::ServiceAccount { user, secret, .. } => {
                        req.basic_auth(user, Some(secret))
                    }
                    MixpanelAuth::User(u) => req.basic_auth(u, Some("")),
                };
                match http::gzip(&body) {
                    Some(z) => req.header(CONTENT_ENCODING, "gzip").body(z),
                    None => req.body(body),
                }
            }
            Endpoint::MixpanelGroups => self
                .client
                .post(self.groups_url.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(body),
            _ => self
                .client
                .post(self.engage_url.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(body),
        };
        let started = Instant::now();
        let answer = http::send(req).await;
        (answer, started.elapsed())
    }

    async fn send_batch(&self, batch: &[OutboundRecord]) -> SendResult {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut auth_failure = None;
        let mut stop: Option<Outcome> = None;
        for endpoint in [
            Endpoint::MixpanelImport,
            Endpoint::MixpanelEngage,
            Endpoint::MixpanelGroups,
        ] {
            let idx: Vec<usize> = (0..batch.len())
                .filter(|&i| batch[i].endpoint == endpoint)
                .collect();
            let mut stack = chunks(batch, idx, MAX_ITEMS, MAX_REQUEST_BYTES);
            stack.reverse();
            while let Some(chunk) = stack.pop() {
                if let Some(o) = &stop {
                    set(&mut outcomes, &chunk, o);
                    continue;
                }
                let (answer, took) = self.post(endpoint, batch, &chunk).await;
                let a = match answer {
                    Err(e) => {
                        self.metrics.record_request(RequestOutcome::Error, took);
                        let o = Outcome::retry(e);
                        set(&mut outcomes, &chunk, &o);
                        stop = Some(o);
                        continue;
                    }
                    Ok(a) => a,
                };
                let class = classify_status(a.status);
                match class {
                    StatusClass::Success if endpoint == Endpoint::MixpanelImport => {
                        self.metrics.record_request(RequestOutcome::Ok, took);
                        set(&mut outcomes, &chunk, &Outcome::Delivered);
                    }
                    StatusClass::Success => {
                        let ok = self.update_answer(&a, &chunk, &mut outcomes);
                        let kind = if ok {
                            RequestOutcome::Ok
                        } else {
                            RequestOutcome::Rejected
                        };
                        self.metrics.record_request(kind, took);
                    }
                    StatusClass::Retry => {
                        self.metrics.record_request(RequestOutcome::Retry, took);
                        let o = Outcome::Retry {
                            after: a.retry_after,
                            reason: format!(
                                "HTTP {} from /{}: {}",
                                a.status,
                                endpoint.as_str(),
                                excerpt(&a.body)
                            ),
                        };
                        set(&mut outcomes, &chunk, &o);
                        stop = Some(o);
                    }
                    StatusClass::Pause => {
                        self.metrics.record_request(RequestOutcome::Retry, took);
                        let o = Outcome::retry(format!(
                            "credentials refused (HTTP {} from /{})",
                            a.status,
                            endpoint.as_str()
                        ));
                        set(&mut outcomes, &chunk, &o);
                        auth_failure = Some(AuthFailure {
                            status: a.status,
                            body: excerpt(&a.body),
                        });
                        stop = Some(o);
                    }
                    StatusClass::Split if chunk.len() > 1 => {
                        self.metrics.record_request(RequestOutcome::Rejected, took);
                        let second = chunk[chunk.len() / 2..].to_vec();
                        let first = chunk[..chunk.len() / 2].to_vec();
                        stack.push(second);
                        stack.push(first);
                    }
                    StatusClass::Split | StatusClass::Reject => {
                        self.metrics.record_request(RequestOutcome::Rejected, took);
                        let ids: Vec<&str> = chunk.iter().map(|&i| batch[i].id.as_str()).collect();
                        let partial = (a.status == 400 && endpoint == Endpoint::MixpanelImport)
                            .then(|| failed_records(&a.body, &ids))
                            .flatten();
                        match partial {
                            Some(failed) => {
                                set(&mut outcomes, &chunk, &Outcome::Delivered);
                                for f in failed {
                                    outcomes[chunk[f.index]] =
                                        Some(Outcome::rejected(f.reason, Some(400), &f.entry));
                                }
                            }
                            None => {
                                let reason = if a.status == 413 {
                                    format!(
                                        "record too large (HTTP 413 on a single record to /{})",
                                        endpoint.as_str()
                                    )
                                } else {
                                    format!("HTTP {} from /{}", a.status, endpoint.as_str())
                                };
                                let o = Outcome::rejected(reason, Some(a.status), &a.body);
                                set(&mut outcomes, &chunk, &o);
                            }
                        }
                    }
                }
            }
        }
        SendResult {
            outcomes: outcomes
                .into_iter()
                .map(|o| o.unwrap_or_else(|| Outcome::retry("not sent")))
                .collect(),
            auth_failure,
        }
    }

    /// Applies a 200 answer of `/engage` or `/groups`; true when every update was taken.
    fn update_answer(&self, a: &Answer, chunk: &[usize], outcomes: &mut [Option<Outcome>]) -> bool {
        match update_answer(&a.body, chunk.len()) {
            UpdateAnswer::AllOk => {
                set(outcomes, chunk, &Outcome::Delivered);
                true
            }
            UpdateAnswer::AllFailed(reason) => {
                set(
                    outcomes,
                    chunk,
                    &Outcome::rejected(reason, Some(a.status), &a.body),
                );
                false
            }
            UpdateAnswer::Partial(failed) => {
                set(outcomes, chunk, &Outcome::Delivered);
                for f in failed {
                    outcomes[chunk[f.index]] =
                        Some(Outcome::rejected(f.reason, Some(a.status), &f.entry));
                }
                false
            }
        }
    }
}

impl Sink for MixpanelSink {
    fn kind(&self) -> &'static str {
        "mixpanel"
    }

    fn send<'a>(&'a self, batch: &'a [OutboundRecord]) -> SendFuture<'a> {
        Box::pin(self.send_batch(batch))
    }
}

fn set(outcomes: &mut [Option<Outcome>], idx: &[usize], o: &Outcome) {
    for &i in idx {
        outcomes[i] = Some(o.clone());
    }
}

/// The JSON array of the records at `idx`.
fn array_body(batch: &[OutboundRecord], idx: &[usize]) -> Vec<u8> {
    let size: usize = idx.iter().map(|&i| batch[i].json.len() + 1).sum();
    let mut body = Vec::with_capacity(size + 2);
    body.push(b'[');
    for (n, &i) in idx.iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&batch[i].json);
    }
    body.push(b']');
    body
}

/// Splits `idx` into requests of at most `max_items` records and `max_bytes` of array body
/// (a single larger record gets a request of its own).
fn chunks(
    batch: &[OutboundRecord],
    idx: Vec<usize>,
    max_items: usize,
    max_bytes: usize,
) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut bytes = 2;
    for i in idx {
        let len = batch[i].json.len() + 1;
        if !cur.is_empty() && (cur.len() >= max_items || bytes + len > max_bytes) {
            out.push(std::mem::take(&mut cur));
            bytes = 2;
        }
        bytes += len;
        cur.push(i);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One failed record of a partial answer, located in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failed {
    /// Position in the request.
    pub(crate) index: usize,
    /// `failed record: <field>: <message>`.
    pub(crate) reason: String,
    /// The answer's entry for it (JSON).
    pub(crate) entry: String,
}

/// The failed records of an `/import` 400 body, located in the request whose records have
/// `ids` (their `$insert_id`s). `None` when the body has no usable `failed_records` (the
/// whole request is then refused): no list, an empty list, or entries that match no record.
pub(crate) fn failed_records(body: &str, ids: &[&str]) -> Option<Vec<Failed>> {
    let v: Value = serde_json::from_str(body).ok()?;
    let list = v.get("failed_records")?.as_array()?;
    let mut out: Vec<Failed> = Vec::new();
    for entry in list {
        let index = entry
            .get("index")
            .and_then(Value::as_u64)
            .and_then(|i| usize::try_from(i).ok());
        let insert_id = entry
            .get("insert_id")
            .or_else(|| entry.get("$insert_id"))
            .and_then(Value::as_str);
        let at = match (index, insert_id) {
            (Some(i), Some(id)) if ids.get(i) == Some(&id) => Some(i),
            (Some(i), None) if i < ids.len() => Some(i),
            (_, Some(id)) => ids.iter().position(|x| *x == id),
            (None, None) | (Some(_), None) => None,
        };
        let Some(at) = at else {
            tracing::warn!(entry = %entry, "Mixpanel failed record matches no record of the request.");
            return None;
        };
        if out.iter().any(|f| f.index == at) {
            continue;
        }
        out.push(Failed {
            index: at,
            reason: failure_reason(entry),
            entry: entry.to_string(),
        });
    }
    (!out.is_empty()).then_some(out)
}

fn failure_reason(entry: &Value) -> String {
    let s = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or("");
    match (s("field"), s("message")) {
        ("", "") => "failed record".to_owned(),
        ("", m) => format!("failed record: {m}"),
        (f, m) => format!("failed record: {f}: {m}"),
    }
}

/// What a 200 of `/engage` or `/groups` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpdateAnswer {
    /// `1` / `{"status":1}` without failures (also any body we do not recognise).
    AllOk,
    /// `0` / `{"status":0}`: nothing was taken.
    AllFailed(String),
    /// `{"status":1,"failed_records":[…]}`: these were refused.
    Partial(Vec<Failed>),
}

/// Reads a 200 answer of `/engage` or `/groups` to a request of `n` updates.
pub(crate) fn update_answer(body: &str, n: usize) -> UpdateAnswer {
    let t = body.trim();
    if t == "1" {
        return UpdateAnswer::AllOk;
    }
    if t == "0" {
        return UpdateAnswer::AllFailed("Mixpanel answered 0: no update was valid".to_owned());
    }
    let Ok(v) = serde_json::from_str::<Value>(t) else {
        tracing::warn!(body = %excerpt(t), "Unrecognised Mixpanel answer taken as success.");
        return UpdateAnswer::AllOk;
    };
    let status = match v.get("status") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    let error = v
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("no update was valid");
    if status == Some(0) {
        return UpdateAnswer::AllFailed(format!("Mixpanel answered status 0: {error}"));
    }
    let failed: Vec<Failed> = v
        .get("failed_records")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|e| {
                    let i = usize::try_from(e.get("index")?.as_u64()?).ok()?;
                    (i < n).then(|| Failed {
                        index: i,
                        reason: failure_reason(e),
                        entry: e.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if failed.is_empty() {
        UpdateAnswer::AllOk
    } else {
        UpdateAnswer::Partial(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(ep: Endpoint, len: usize) -> OutboundRecord {
        OutboundRecord {
            endpoint: ep,
            json: Bytes::from("x".repeat(len)),
            id: String::new(),
            timestamp_ms: 0,
        }
    }

    #[test]
    fn chunks_respect_count_and_bytes() {
        let b: Vec<_> = (0..10).map(|_| rec(Endpoint::MixpanelImport, 9)).collect();
        let all: Vec<usize> = (0..10).collect();
        assert_eq!(chunks(&b, all.clone(), 2000, 1 << 20), vec![all.clone()]);
        assert_eq!(
            chunks(&b, all.clone(), 4, 1 << 20),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
        );
        // 2 + 3 × 10 = 32 bytes fit in 32.
        let c = chunks(&b, all, 2000, 32);
        assert_eq!(c[0], vec![0, 1, 2]);
        assert_eq!(c.iter().map(Vec::len).sum::<usize>(), 10);
        for ch in &c {
            assert!(array_body(&b, ch).len() <= 32);
        }
        let big = vec![rec(Endpoint::MixpanelImport, 100)];
        assert_eq!(chunks(&big, vec![0], 10, 50), vec![vec![0]]);
    }

    #[test]
    fn partial_import_answers() {
        let ids = ["a", "b", "c", "d"];
        let body = r#"{"code":400,"error":"some data points in the request failed validation",
            "num_records_imported":2,"status":"Bad Request","failed_records":[
            {"index":1,"insert_id":"b","field":"properties.time","message":"'properties.time' is invalid"},
            {"index":3,"$insert_id":"d","field":"event","message":"bad"}]}"#;
        let f = failed_records(body, &ids).unwrap();
        assert_eq!(f.iter().map(|f| f.index).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(
            f[0].reason,
            "failed record: properties.time: 'properties.time' is invalid"
        );
        // An index that disagrees with the insert id: the id wins.
        let f =
            failed_records(r#"{"failed_records":[{"index":0,"insert_id":"c"}]}"#, &ids).unwrap();
        assert_eq!(f[0].index, 2);
        // Index only.
        let f = failed_records(r#"{"failed_records":[{"index":2}]}"#, &ids).unwrap();
        assert_eq!(f[0].index, 2);
        // Unusable lists: the request is refused as a whole.
        for body in [
            r#"{"code":400,"error":"bad json"}"#,
            r#"{"failed_records":[]}"#,
            r#"{"failed_records":[{"index":9}]}"#,
            r#"{"failed_records":[{"insert_id":"zz"}]}"#,
            "not json",
        ] {
            assert_eq!(failed_records(body, &ids), None, "{body}");
        }
    }

    #[test]
    fn update_answers() {
        assert_eq!(update_answer("1", 3), UpdateAnswer::AllOk);
        assert_eq!(update_answer(" 1\n", 3), UpdateAnswer::AllOk);
        assert!(matches!(update_answer("0", 3), UpdateAnswer::AllFailed(_)));
        assert!(matches!(
            update_answer(r#"{"status":0,"error":"$token missing"}"#, 3),
            UpdateAnswer::AllFailed(r) if r.contains("$token missing")
        ));
        assert_eq!(
            update_answer(r#"{"status":1,"error":null}"#, 3),
            UpdateAnswer::AllOk
        );
        let UpdateAnswer::Partial(f) = update_answer(
            r#"{"status":1,"error":"x","failed_records":[{"index":2,"field":"$distinct_id","message":"empty"},{"index":7}]}"#,
            3,
        ) else {
            panic!("expected a partial answer");
        };
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].index, 2);
        assert_eq!(update_answer("<html>", 3), UpdateAnswer::AllOk);
    }
}
