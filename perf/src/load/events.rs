//! The events the harness sends: a fixed mix of templates, each with the destinations the
//! router's default routing table names for it, rendered with a unique UUIDv7 `messageId`.
//!
//! The routing expectations are written out here by hand from the README's table (the harness
//! depends on no router crate); `perf/tests/harness_routing.rs` checks them against
//! `events-router route`.

use clap::ValueEnum;
use serde::Serialize;
use uuid::Uuid;

/// Bit of [`Dests`] for PostHog.
pub const POSTHOG: u8 = 1;
/// Bit of [`Dests`] for Mixpanel.
pub const MIXPANEL: u8 = 2;

/// A set of destinations as bits ([`POSTHOG`], [`MIXPANEL`]).
pub type Dests = u8;

/// Which events a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mix {
    /// Every rule of the default table: product events, purchases with and without
    /// attribution, campaign events, sessions, identifies (46% to PostHog, 64% to Mixpanel,
    /// 10% to both).
    #[default]
    Default,
    /// Only `Page View` events without attribution (all to Mixpanel).
    SingleDestination,
}

/// One kind of event of the mix.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    /// A short name for reports.
    pub name: &'static str,
    /// Where the default routing table sends it.
    pub dests: Dests,
    /// Relative frequency in the default mix (the weights add up to 100).
    pub weight: u32,
    /// The event in the router's own schema; `@ID@` stands for the messageId and `@U@` for a
    /// user number.
    pub json: &'static str,
}

/// The templates of the default mix.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "page-view",
        dests: MIXPANEL,
        weight: 22,
        json: r#"{"event":"Page View","anonymousId":"anon-@U@","messageId":"@ID@","properties":{"url":"https://example.com/pricing","title":"Pricing","path":"/pricing"},"context":{"userAgent":"perf/1.0","locale":"en-US"}}"#,
    },
    Template {
        name: "button-clicked",
        dests: MIXPANEL,
        weight: 18,
        json: r#"{"event":"Button Clicked","userId":"user-@U@","messageId":"@ID@","properties":{"button":"buy","plan":"pro","position":3}}"#,
    },
    Template {
        name: "sign-up",
        dests: MIXPANEL,
        weight: 6,
        json: r#"{"event":"Sign Up","userId":"user-@U@","anonymousId":"anon-@U@","messageId":"@ID@","properties":{"plan":"pro","trial":true}}"#,
    },
    Template {
        name: "request-demo",
        dests: MIXPANEL,
        weight: 2,
        json: r#"{"event":"Request Demo","userId":"user-@U@","messageId":"@ID@","properties":{"company":"Acme","seats":25}}"#,
    },
    Template {
        name: "purchase-product",
        dests: MIXPANEL,
        weight: 6,
        json: r#"{"event":"Purchase","userId":"user-@U@","messageId":"@ID@","properties":{"revenue":20,"currency":"USD","sku":"basic"}}"#,
    },
    Template {
        name: "purchase-attributed",
        dests: POSTHOG,
        weight: 6,
        json: r#"{"event":"Purchase","userId":"user-@U@","messageId":"@ID@","properties":{"revenue":99.5,"currency":"USD","utm_source":"google","utm_campaign":"spring"}}"#,
    },
    Template {
        name: "newsletter-click",
        dests: POSTHOG,
        weight: 10,
        json: r#"{"event":"Newsletter Click","anonymousId":"anon-@U@","messageId":"@ID@","properties":{"utm_source":"newsletter","utm_medium":"email","link":"cta"}}"#,
    },
    Template {
        name: "session-start",
        dests: POSTHOG,
        weight: 10,
        json: r#"{"event":"Session Start","anonymousId":"anon-@U@","messageId":"@ID@","properties":{"referrer":"https://search.example/"}}"#,
    },
    Template {
        name: "session-end",
        dests: POSTHOG,
        weight: 10,
        json: r#"{"event":"Session End","anonymousId":"anon-@U@","messageId":"@ID@","properties":{"duration_s":312}}"#,
    },
    Template {
        name: "page-view-campaign",
        dests: POSTHOG | MIXPANEL,
        weight: 5,
        json: r#"{"event":"Page View","anonymousId":"anon-@U@","messageId":"@ID@","context":{"page":{"url":"https://example.com/?utm_source=ads&utm_medium=cpc","title":"Home"}}}"#,
    },
    Template {
        name: "identify",
        dests: POSTHOG | MIXPANEL,
        weight: 5,
        json: r#"{"type":"identify","userId":"user-@U@","anonymousId":"anon-@U@","messageId":"@ID@","traits":{"email":"user@example.com","plan":"pro"}}"#,
    },
];

/// How many distinct user numbers the events cycle through.
const USERS: u64 = 5000;

#[derive(Debug, Clone)]
enum Part {
    Lit(&'static str),
    Id,
    User,
}

#[derive(Debug, Clone)]
struct Compiled {
    parts: Vec<Part>,
    dests: Dests,
}

fn compile(json: &'static str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut rest = json;
    while let Some(at) = rest.find('@') {
        let (token, part) = if rest[at..].starts_with("@ID@") {
            ("@ID@", Part::Id)
        } else if rest[at..].starts_with("@U@") {
            ("@U@", Part::User)
        } else {
            parts.push(Part::Lit(&rest[..=at]));
            rest = &rest[at + 1..];
            continue;
        };
        if at > 0 {
            parts.push(Part::Lit(&rest[..at]));
        }
        parts.push(part);
        rest = &rest[at + token.len()..];
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest));
    }
    parts
}

/// Renders events of a mix into request bodies.
#[derive(Debug, Clone)]
pub struct Generator {
    templates: Vec<Compiled>,
    /// 100 slots, each the index of a template (by weight).
    table: Vec<u8>,
}

impl Generator {
    /// A generator for `mix`.
    pub fn new(mix: Mix) -> Self {
        let templates: Vec<Compiled> = TEMPLATES
            .iter()
            .map(|t| Compiled {
                parts: compile(t.json),
                dests: t.dests,
            })
            .collect();
        let table = match mix {
            Mix::Default => {
                let mut table = Vec::with_capacity(100);
                for (i, t) in TEMPLATES.iter().enumerate() {
                    let index = u8::try_from(i).unwrap_or(0);
                    table.extend(std::iter::repeat_n(index, t.weight as usize));
                }
                table
            }
            Mix::SingleDestination => vec![0],
        };
        Self { templates, table }
    }

    /// The template index of event number `seq` (a fixed scramble of the weight table, so any
    /// window of events has about the mix's proportions).
    pub fn template_of(&self, seq: u64) -> usize {
        let h = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        usize::from(self.table[(h % self.table.len() as u64) as usize])
    }

    /// The destinations of template `index`.
    pub fn dests(&self, index: usize) -> Dests {
        self.templates[index].dests
    }

    /// Appends event number `seq` with message id `id` to `out`; returns its destinations.
    pub fn render(&self, seq: u64, id: Uuid, out: &mut Vec<u8>) -> Dests {
        let t = &self.templates[self.template_of(seq)];
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        for part in &t.parts {
            match part {
                Part::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Part::Id => {
                    out.extend_from_slice(id.hyphenated().encode_lower(&mut buf).as_bytes());
                }
                Part::User => {
                    let user = seq.wrapping_mul(0x2545_F491_4F6C_DD1D) % USERS;
                    out.extend_from_slice(user.to_string().as_bytes());
                }
            }
        }
        t.dests
    }

    /// Renders a request body of `ids.len()` events numbered from `first_seq`: the bare
    /// object for one event, a JSON array otherwise. Each id's destinations are written to
    /// `dests` (cleared first).
    pub fn body(&self, first_seq: u64, ids: &[Uuid], out: &mut Vec<u8>, dests: &mut Vec<Dests>) {
        out.clear();
        dests.clear();
        let single = ids.len() == 1;
        if !single {
            out.push(b'[');
        }
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            dests.push(self.render(first_seq + i as u64, *id, out));
        }
        if !single {
            out.push(b']');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_add_up_and_templates_are_json() {
        assert_eq!(TEMPLATES.iter().map(|t| t.weight).sum::<u32>(), 100);
        let generator = Generator::new(Mix::Default);
        assert_eq!(generator.table.len(), 100);
        for seq in 0..200 {
            let id = Uuid::now_v7();
            let mut out = Vec::new();
            let dests = generator.render(seq, id, &mut out);
            let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            assert_eq!(v["messageId"], id.to_string());
            assert!(dests != 0);
            let text = String::from_utf8(out).expect("utf-8");
            assert!(!text.contains("@ID@") && !text.contains("@U@"), "{text}");
        }
    }

    #[test]
    fn mix_proportions() {
        let generator = Generator::new(Mix::Default);
        let mut counts = [0u32; 16];
        for seq in 0..100_000 {
            counts[generator.template_of(seq)] += 1;
        }
        for (i, t) in TEMPLATES.iter().enumerate() {
            let share = f64::from(counts[i]) / 1000.0;
            assert!(
                (share - f64::from(t.weight)).abs() < 1.0,
                "{}: {share}% for weight {}",
                t.name,
                t.weight
            );
        }
        let single = Generator::new(Mix::SingleDestination);
        assert!((0..1000).all(|s| single.dests(single.template_of(s)) == MIXPANEL));
    }

    #[test]
    fn bodies() {
        let generator = Generator::new(Mix::Default);
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let (mut out, mut dests) = (Vec::new(), Vec::new());
        generator.body(10, &ids, &mut out, &mut dests);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v.as_array().map(Vec::len), Some(3));
        assert_eq!(dests.len(), 3);
        generator.body(10, &ids[..1], &mut out, &mut dests);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert!(v.is_object());
        assert_eq!(ids[0].get_version_num(), 7);
    }
}
