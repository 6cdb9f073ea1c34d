//! Structure-aware: the fuzz input drives a generator of *valid JSON* request bodies in the
//! router's own schema, the Segment batch format and GA4, so the fuzzer spends its time past
//! the JSON parser, in validation, enrichment, routing and mapping.
//!
//! Bodies mix hostile values (odd ids and timestamps, placeholders, numbers where strings
//! belong, escapes, duplicate keys, deep nesting, UTM-laden URLs) with "clean" events that
//! are valid by construction.
//!
//! Invariants:
//! - the generated text is valid JSON, so the parser never answers `InvalidJson`;
//! - every accepted event passes `check_event` (routing, buffer round trip, PostHog and
//!   Mixpanel records);
//! - a clean event is accepted, with its name, ids, timestamp and properties intact.
#![no_main]

use std::fmt::Write as _;

use arbitrary::{Result, Unstructured};
use events_router_fuzz::{check_batch, pipeline, with_ingest};
use libfuzzer_sys::fuzz_target;
use router_core::parse::{Item, SegmentCall};
use router_core::{Kind, RequestError, Timestamp};
use serde_json::Value;

/// Strings the parsers and mappers treat specially.
const DICT: &[&str] = &[
    "",
    " ",
    "null",
    "NULL",
    " undefined ",
    "anonymous",
    "0",
    "-1",
    "[object Object]",
    "00000000-0000-0000-0000-000000000000",
    "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B",
    "user123",
    "anon-123",
    "Sign Up",
    "Page View",
    "Purchase",
    "Request Demo",
    "Session Start",
    "session_start",
    "sign_up",
    "page_view",
    "$identify",
    "$set_once",
    "$set",
    "$groups",
    "$insert_id",
    "$current_url",
    "$lib",
    "$email",
    "email",
    "name",
    "firstName",
    "first_name",
    "$first_name",
    "lastName",
    "last_name",
    "createdAt",
    "created_at",
    "$created",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "url",
    "track",
    "identify",
    "page",
    "screen",
    "group",
    "alias",
    "Track",
    "ip",
    "groupId",
    "event",
    "userId",
    "anonymousId",
    "messageId",
    "properties",
    "traits",
    "context",
    "batch",
    "type",
    "time",
    "distinct_id",
    "token",
    "mp_lib",
    "uuid",
    "timestamp",
    "\u{0}",
    "é\u{1F600}\u{FFFF}",
    "a\"b\\c\n",
    "2025-01-28T12:00:00Z",
    "1738065600000",
];

const SAFE_NAMES: &[&str] = &[
    "Sign Up",
    "Purchase",
    "Checkout",
    "Newsletter Click",
    "Button",
];

struct Gen<'a, 'b> {
    u: &'a mut Unstructured<'b>,
    out: String,
    ws: bool,
}

impl Gen<'_, '_> {
    fn sp(&mut self) {
        if self.ws {
            self.out.push_str(" \n");
        }
    }

    fn raw_str(&mut self) -> Result<String> {
        Ok(match self.u.int_in_range(0u8..=5)? {
            0..=2 => (*self.u.choose(DICT)?).to_owned(),
            3 => {
                let c: char = self.u.arbitrary()?;
                let n = *self.u.choose(&[199usize, 200, 201, 254, 255, 256, 1000])?;
                let mut s: String = std::iter::repeat_n(c, n).collect();
                if self.u.arbitrary()? {
                    s.push('x');
                }
                s
            }
            _ => self.u.arbitrary::<String>()?,
        })
    }

    fn push_str_lit(&mut self, s: &str) -> Result<()> {
        if self.u.ratio(1u8, 8)? {
            // Every character as a \u escape (surrogate pairs beyond the BMP).
            self.out.push('"');
            for unit in s.encode_utf16() {
                let _ = write!(self.out, "\\u{unit:04x}");
            }
            self.out.push('"');
        } else {
            self.out
                .push_str(&serde_json::to_string(s).expect("a string serialises"));
        }
        Ok(())
    }

    fn string(&mut self) -> Result<()> {
        let s = self.raw_str()?;
        self.push_str_lit(&s)
    }

    fn number(&mut self) -> Result<()> {
        let s = match self.u.int_in_range(0u8..=4)? {
            0 => self.u.arbitrary::<i64>()?.to_string(),
            1 => self.u.arbitrary::<u64>()?.to_string(),
            2 => {
                let f: f64 = self.u.arbitrary()?;
                if f.is_finite() {
                    serde_json::to_string(&f).expect("float")
                } else {
                    "1e308".into()
                }
            }
            // (Out-of-range numbers such as 1e400 are refused by simd-json as "invalid
            // number": a documented limit, RFC 8259 section 9, not generated here.)
            3 => (*self
                .u
                .choose(&["-0", "-0.0", "1E-400", "0.1e1", "12.50", "1e308"])?)
            .to_owned(),
            _ => self.u.int_in_range(-3i64..=3)?.to_string(),
        };
        self.out.push_str(&s);
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<()> {
        let top = if depth >= 24 { 3 } else { 6 };
        match self.u.int_in_range(0u8..=top)? {
            0 => self
                .out
                .push_str(if self.u.arbitrary()? { "true" } else { "null" }),
            1 => self.number()?,
            2 | 3 => self.string()?,
            4 => {
                self.out.push('[');
                let n = self.u.int_in_range(0usize..=4)?;
                for i in 0..n {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.value(depth + 1)?;
                }
                self.out.push(']');
            }
            5 => {
                // A deep chain, cheap in bytes.
                let n = self.u.int_in_range(1usize..=200)?;
                for _ in 0..n {
                    self.out.push('[');
                }
                for _ in 0..n {
                    self.out.push(']');
                }
            }
            _ => self.object(depth + 1, &[])?,
        }
        Ok(())
    }

    /// An object with random keys, plus the given well-known ones.
    fn object(&mut self, depth: usize, known: &[&str]) -> Result<()> {
        self.out.push('{');
        let n = self.u.int_in_range(0usize..=5)?;
        let mut first = true;
        for i in 0..n {
            if !first {
                self.out.push(',');
            }
            first = false;
            self.sp();
            if !known.is_empty() && self.u.arbitrary()? {
                let k = known[i % known.len()];
                self.push_str_lit(k)?;
            } else {
                self.string()?;
            }
            self.out.push(':');
            if known.contains(&"url") && self.u.ratio(1u8, 3)? {
                self.url()?;
            } else {
                self.value(depth)?;
            }
        }
        self.out.push('}');
        Ok(())
    }

    fn url(&mut self) -> Result<()> {
        let mut url = String::from("https://example.com/p?");
        let n = self.u.int_in_range(0usize..=6)?;
        for _ in 0..n {
            let k = *self.u.choose(&[
                "utm_source",
                "utm_medium",
                "utm_campaign",
                "utm_term",
                "utm_content",
                "x",
                "utm_source%",
                "",
            ])?;
            let v = self.raw_str()?;
            url.push_str(k);
            if self.u.arbitrary()? {
                url.push('=');
                for b in v.bytes().take(40) {
                    if b.is_ascii_alphanumeric() {
                        url.push(b as char);
                    } else {
                        let _ = write!(url, "%{b:02X}");
                    }
                }
            }
            url.push(*self.u.choose(&['&', '#', '+', '%'])?);
        }
        self.push_str_lit(&url)
    }

    fn id(&mut self) -> Result<()> {
        match self.u.int_in_range(0u8..=6)? {
            0..=3 => self.string(),
            4 => self.number(),
            5 => {
                self.out.push_str("null");
                Ok(())
            }
            _ => self.value(1),
        }
    }

    fn time(&mut self) -> Result<()> {
        match self.u.int_in_range(0u8..=5)? {
            0 | 1 => {
                let t = rfc3339(self.u)?;
                self.push_str_lit(&t)
            }
            2 => self.number(),
            3 => {
                let ms = *self.u.choose(&[
                    -62_135_596_800_000i64,
                    -62_135_596_800_001,
                    253_402_300_799_999,
                    253_402_300_800_000,
                    0,
                    1_738_065_600_000,
                ])?;
                self.out.push_str(&ms.to_string());
                Ok(())
            }
            4 => self.string(),
            _ => self.value(1),
        }
    }

    fn field(&mut self, first: &mut bool, key: &str) -> Result<()> {
        if !*first {
            self.out.push(',');
        }
        *first = false;
        self.sp();
        self.push_str_lit(key)?;
        self.out.push(':');
        self.sp();
        Ok(())
    }

    /// One event object in the own / Segment schema, with any subset of the known fields.
    fn event(&mut self) -> Result<()> {
        self.out.push('{');
        let mut first = true;
        let fields = [
            "event",
            "type",
            "userId",
            "anonymousId",
            "messageId",
            "uuid",
            "groupId",
            "previousId",
            "timestamp",
            "originalTimestamp",
            "sentAt",
            "properties",
            "traits",
            "context",
            "integrations",
            "name",
            "category",
            "writeKey",
        ];
        for key in fields {
            if !self.u.ratio(1u8, 3)? {
                continue;
            }
            self.field(&mut first, key)?;
            match key {
                "event" | "name" | "category" | "writeKey" => self.string()?,
                "type" => {
                    let t = *self.u.choose(&[
                        "track", "identify", "page", "screen", "group", "alias", "Track", "",
                    ])?;
                    self.push_str_lit(t)?;
                }
                "userId" | "anonymousId" | "messageId" | "uuid" | "groupId" | "previousId" => {
                    self.id()?;
                }
                "timestamp" | "originalTimestamp" | "sentAt" => self.time()?,
                "properties" => self.object(
                    2,
                    &["url", "utm_source", "revenue", "name", "$insert_id", "time"],
                )?,
                "traits" => self.object(
                    2,
                    &[
                        "email",
                        "$email",
                        "firstName",
                        "first_name",
                        "$set_once",
                        "name",
                    ],
                )?,
                "context" => self.context()?,
                _ => self.value(2)?,
            }
        }
        // Extra keys, possibly repeating known ones (duplicate keys are valid JSON).
        let extra = self.u.int_in_range(0usize..=2)?;
        for _ in 0..extra {
            let k = self.raw_str()?;
            self.field(&mut first, &k)?;
            self.value(2)?;
        }
        self.out.push('}');
        Ok(())
    }

    fn context(&mut self) -> Result<()> {
        self.out.push('{');
        let mut first = true;
        for key in ["ip", "page", "campaign", "os", "groupId", "library"] {
            if !self.u.ratio(1u8, 2)? {
                continue;
            }
            self.field(&mut first, key)?;
            match key {
                "page" => self.object(3, &["url", "path", "referrer", "title"])?,
                "campaign" => {
                    self.object(3, &["source", "medium", "name", "term", "content"])?;
                }
                "os" => self.object(3, &["name"])?,
                _ => self.value(3)?,
            }
        }
        self.out.push('}');
        Ok(())
    }

    /// A clean event: valid by construction. Returns what the parser must keep.
    fn clean_event(&mut self, with_type: bool) -> Result<Clean> {
        let name = (*self.u.choose(SAFE_NAMES)?).to_owned();
        let user_id = format!("u{}", self.u.int_in_range(1u32..=1_000_000)?);
        let message_id = if self.u.arbitrary()? {
            Some(format!("m-{}", self.u.arbitrary::<u32>()?))
        } else {
            None
        };
        let ts = rfc3339_valid(self.u)?;
        let mut props = serde_json::Map::new();
        let n = self.u.int_in_range(0usize..=4)?;
        for i in 0..n {
            let v = match self.u.int_in_range(0u8..=3)? {
                0 => Value::from(self.u.arbitrary::<i32>()?),
                1 => Value::from(self.u.arbitrary::<bool>()?),
                2 => Value::from(format!("v{}", self.u.arbitrary::<u16>()?)),
                _ => serde_json::json!({"nested": [1, "two", null]}),
            };
            props.insert(format!("p{i}"), v);
        }
        let mut o = serde_json::Map::new();
        o.insert("event".into(), name.clone().into());
        if with_type {
            o.insert("type".into(), "track".into());
        }
        o.insert("userId".into(), user_id.clone().into());
        if let Some(m) = &message_id {
            o.insert("messageId".into(), m.clone().into());
        }
        if let Some((text, _)) = &ts {
            o.insert("timestamp".into(), text.clone().into());
        }
        o.insert("properties".into(), Value::Object(props.clone()));
        self.out
            .push_str(&serde_json::to_string(&Value::Object(o)).expect("json"));
        Ok(Clean {
            name,
            user_id,
            message_id,
            timestamp: ts.map(|t| t.1),
            properties: props,
        })
    }

    /// One PostHog SDK event (posthog-js / posthog-node shape).
    fn posthog_event(&mut self) -> Result<()> {
        self.out.push('{');
        let mut first = true;
        for key in [
            "event",
            "distinct_id",
            "properties",
            "$set",
            "$set_once",
            "timestamp",
            "uuid",
            "offset",
        ] {
            let want = match key {
                "event" | "distinct_id" => self.u.ratio(7u8, 8)?,
                _ => self.u.ratio(1u8, 3)?,
            };
            if !want {
                continue;
            }
            self.field(&mut first, key)?;
            match key {
                "event" => {
                    if self.u.arbitrary()? {
                        let n = *self.u.choose(&[
                            "$identify",
                            "$pageview",
                            "$screen",
                            "$create_alias",
                            "$groupidentify",
                            "$autocapture",
                            "Sign Up",
                        ])?;
                        self.push_str_lit(n)?;
                    } else {
                        self.string()?;
                    }
                }
                "distinct_id" | "uuid" => self.id()?,
                "properties" => self.object(
                    2,
                    &[
                        "$current_url",
                        "$ip",
                        "$set",
                        "$anon_distinct_id",
                        "$is_identified",
                        "$device_id",
                        "distinct_id",
                        "$lib",
                        "$groups",
                        "alias",
                        "$group_type",
                        "$group_key",
                        "$group_set",
                        "$screen_name",
                        "utm_source",
                    ],
                )?,
                "$set" | "$set_once" => self.object(2, &["email", "name", "$email"])?,
                "timestamp" => self.time()?,
                _ => self.number()?,
            }
        }
        self.out.push('}');
        Ok(())
    }

    fn ga4(&mut self) -> Result<Vec<Option<Clean>>> {
        self.out.push('{');
        let mut first = true;
        for key in [
            "client_id",
            "app_instance_id",
            "user_id",
            "timestamp_micros",
            "user_properties",
            "events",
            "ip_override",
            "user_location",
            "device",
            "consent",
            "measurement_id",
        ] {
            let want = match key {
                "client_id" | "events" => self.u.ratio(7u8, 8)?,
                _ => self.u.ratio(1u8, 3)?,
            };
            if !want {
                continue;
            }
            self.field(&mut first, key)?;
            match key {
                "client_id" | "app_instance_id" | "user_id" => self.id()?,
                "timestamp_micros" => match self.u.int_in_range(0u8..=2)? {
                    0 => self.number()?,
                    1 => {
                        let us = self
                            .u
                            .int_in_range(-70_000_000_000_000_000i64..=260_000_000_000_000_000)?;
                        let _ = write!(self.out, "\"{us}\"");
                    }
                    _ => self.value(1)?,
                },
                "user_properties" => {
                    self.out.push('{');
                    let n = self.u.int_in_range(0usize..=30)?;
                    for i in 0..n {
                        if i > 0 {
                            self.out.push(',');
                        }
                        self.string()?;
                        self.out.push_str(":{\"value\":");
                        self.value(2)?;
                        self.out.push('}');
                    }
                    self.out.push('}');
                }
                "events" => {
                    self.out.push('[');
                    let n = self.u.int_in_range(0usize..=27)?;
                    for i in 0..n {
                        if i > 0 {
                            self.out.push(',');
                        }
                        self.out.push_str("{\"name\":");
                        self.string()?;
                        if self.u.arbitrary()? {
                            self.out.push_str(",\"params\":");
                            self.object(
                                2,
                                &["page_location", "page_referrer", "page_title", "url", "_x"],
                            )?;
                        }
                        if self.u.ratio(1u8, 4)? {
                            self.out.push_str(",\"timestamp_micros\":");
                            self.number()?;
                        }
                        self.out.push('}');
                    }
                    self.out.push(']');
                }
                _ => self.value(2)?,
            }
        }
        self.out.push('}');
        Ok(Vec::new())
    }
}

/// What a clean event must come out as.
struct Clean {
    name: String,
    user_id: String,
    message_id: Option<String>,
    timestamp: Option<Timestamp>,
    properties: serde_json::Map<String, Value>,
}

/// RFC 3339-ish text from arbitrary parts (often invalid: month 13, hour 24, odd offsets).
fn rfc3339(u: &mut Unstructured<'_>) -> Result<String> {
    let y = u.int_in_range(0u16..=10_000)?;
    let mo = u.int_in_range(0u8..=13)?;
    let d = u.int_in_range(0u8..=32)?;
    let h = u.int_in_range(0u8..=24)?;
    let mi = u.int_in_range(0u8..=60)?;
    let s = u.int_in_range(0u8..=60)?;
    let sep = *u.choose(&["T", "t", " "])?;
    let mut t = format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}");
    if u.arbitrary()? {
        let digits = u.int_in_range(1usize..=12)?;
        let v: u64 = u.arbitrary()?;
        let frac = format!("{v:020}");
        let _ = write!(t, ".{}", &frac[..digits.min(20)]);
    }
    match u.int_in_range(0u8..=3)? {
        0 => t.push('Z'),
        1 => t.push('z'),
        2 => {
            let off = u.int_in_range(-1500i32..=1500)?;
            let _ = write!(
                t,
                "{}{:02}:{:02}",
                if off < 0 { '-' } else { '+' },
                off.abs() / 60,
                off.abs() % 60
            );
        }
        _ => {}
    }
    Ok(t)
}

/// A valid RFC 3339 timestamp in range, with the instant it denotes (or none).
fn rfc3339_valid(u: &mut Unstructured<'_>) -> Result<Option<(String, Timestamp)>> {
    if !u.arbitrary()? {
        return Ok(None);
    }
    let ms = u.int_in_range(-62_135_596_800_000i64..=253_402_300_799_999)?;
    let t = Timestamp::from_millis(ms).expect("in range");
    Ok(Some((t.to_string(), t)))
}

#[derive(Clone, Copy, Debug)]
enum Target {
    Collect,
    Segment(SegmentCall),
    Ga4,
    Posthog,
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let shape = u.int_in_range(0u8..=7)?;
    let ws = u.ratio(1u8, 8)?;
    let mut g = Gen {
        u,
        out: String::new(),
        ws,
    };
    let mut clean: Vec<Option<Clean>> = Vec::new();
    // An envelope sentAt shifts every item's timestamp (skew correction).
    let mut shared_sent_at = false;
    let target = match shape {
        // One event, own schema or a Segment single call.
        0 => {
            let k = g.u.int_in_range(0u8..=6)?;
            if g.u.ratio(1u8, 3)? {
                let c = g.clean_event(false)?;
                // Only /collect and /v1/track keep the name (other calls have fixed names).
                clean.push((k <= 1).then_some(c));
            } else {
                g.event()?;
                clean.push(None);
            }
            if k == 0 {
                Target::Collect
            } else {
                Target::Segment(SegmentCall::Single(Kind::ALL[usize::from(k - 1)]))
            }
        }
        // An array or a {"batch": [...]} envelope.
        1..=3 => {
            let segment = shape == 3;
            let batch = shape >= 2;
            if batch {
                g.out.push_str("{\"batch\":");
            }
            g.out.push('[');
            let n = g.u.int_in_range(0usize..=6)?;
            for i in 0..n {
                if i > 0 {
                    g.out.push(',');
                    g.sp();
                }
                if g.u.arbitrary()? {
                    clean.push(Some(g.clean_event(segment)?));
                } else {
                    g.event()?;
                    clean.push(None);
                }
            }
            g.out.push(']');
            if batch {
                for key in ["context", "integrations", "sentAt", "writeKey"] {
                    if g.u.ratio(1u8, 3)? {
                        let _ = write!(g.out, ",\"{key}\":");
                        match key {
                            "context" => g.context()?,
                            "sentAt" => {
                                shared_sent_at = true;
                                g.time()?;
                            }
                            _ => g.value(1)?,
                        }
                    }
                }
                g.out.push('}');
            }
            if segment {
                Target::Segment(SegmentCall::Batch)
            } else {
                Target::Collect
            }
        }
        4 | 5 => {
            clean = g.ga4()?;
            Target::Ga4
        }
        // PostHog: an array, a {"api_key", "batch"} envelope, or one event.
        _ => {
            let form = g.u.int_in_range(0u8..=2)?;
            if form == 1 {
                g.out.push_str("{\"api_key\":\"phc_k\",\"sent_at\":");
                g.time()?;
                g.out.push_str(",\"batch\":");
            }
            if form <= 1 {
                g.out.push('[');
                let n = g.u.int_in_range(0usize..=6)?;
                for i in 0..n {
                    if i > 0 {
                        g.out.push(',');
                    }
                    g.posthog_event()?;
                }
                g.out.push(']');
            } else {
                g.posthog_event()?;
            }
            if form == 1 {
                g.out.push('}');
            }
            Target::Posthog
        }
    };
    let text = g.out;
    // The generator only writes valid JSON.
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
        assert!(
            e.to_string().contains("recursion limit"),
            "generator wrote invalid JSON ({e}): {text}"
        );
    }
    let p = pipeline();
    let parser = p.parser();
    let mut body = text.clone().into_bytes();
    let result = with_ingest(|ctx| match target {
        Target::Collect => parser.parse_collect(&mut body, ctx),
        Target::Segment(call) => parser.parse_segment(call, &mut body, ctx),
        Target::Ga4 => parser.parse_ga4(&mut body, ctx),
        Target::Posthog => parser.parse_posthog(&mut body, false, ctx),
    });
    if matches!(target, Target::Ga4) {
        let mut body = text.clone().into_bytes();
        parser
            .validate_ga4(&mut body)
            .unwrap_or_else(|e| panic!("validate_ga4 refused valid JSON ({e}): {text}"));
    }
    let batch = match result {
        Ok(b) => b,
        Err(RequestError::InvalidJson { offset, reason }) => {
            panic!("valid JSON refused at {offset} ({reason}): {text}")
        }
        Err(_) => return Ok(()),
    };
    check_batch(p, &batch);
    if batch.items.len() == clean.len() {
        for (item, want) in batch.items.iter().zip(&clean) {
            let Some(want) = want else { continue };
            let e = match item {
                Item::Accepted(e) => e,
                Item::Rejected { error, .. } => {
                    panic!("clean event rejected ({error:?}): {text}")
                }
            };
            assert_eq!(e.name, parser.canonical_name(&want.name), "{text}");
            assert_eq!(e.user_id.as_deref(), Some(want.user_id.as_str()), "{text}");
            if let Some(m) = &want.message_id {
                assert_eq!(&e.message_id, m, "{text}");
            }
            if let Some(t) = want.timestamp.filter(|_| !shared_sent_at) {
                assert_eq!(e.timestamp, t, "{text}");
            }
            for (k, v) in &want.properties {
                assert_eq!(e.properties.get(k), Some(v), "property {k} in {text}");
            }
        }
    }
    Ok(())
}
