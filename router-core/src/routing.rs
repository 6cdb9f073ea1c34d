//! Rule routing: an ordered list of rules, each a condition and destinations.
//!
//! Every matching rule adds its destinations (union); when none matches, the `fallback`
//! destinations get the event, so an event is never silently dropped. Rules are compiled once:
//! exact event names are looked up in a hash map that yields the bitset of rules naming them,
//! so routing one event costs one hash lookup plus the property tests of the candidate rules.

use std::fmt;

use regex::Regex;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::event::{Event, Kind};

/// Most rules a table may have (they are tracked in a 128-bit set).
pub const MAX_RULES: usize = 128;
/// Most distinct destinations (tracked in a 64-bit set).
pub const MAX_DESTINATIONS: usize = 64;

/// The routing table as configured (TOML `[routing]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Rules, in order. Every matching rule contributes its destinations.
    pub rules: Vec<RuleConfig>,
    /// Destinations for events that no rule matches.
    pub fallback: Vec<String>,
}

/// One rule: `name`, a condition (`when`) and destinations (`to`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown in route explanations and metrics.
    pub name: String,
    /// All given tests must hold; an empty condition matches every event.
    #[serde(default)]
    pub when: Condition,
    /// Destination names.
    pub to: Vec<String>,
}

/// A rule's condition. Every field that is set must hold (AND). The three name tests (`event`,
/// `event_glob`, `event_regex`) are alternatives: the name must pass at least one that is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Condition {
    /// Event name equals one of these (a string or a list).
    #[serde(
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub event: Vec<String>,
    /// Event name matches one of these globs (`*` any run, `?` one character).
    #[serde(
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub event_glob: Vec<String>,
    /// Event name matches this regular expression (unanchored unless written with `^...$`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_regex: Option<String>,
    /// Call type is one of these.
    #[serde(deserialize_with = "kinds", skip_serializing_if = "Vec::is_empty")]
    pub kind: Vec<Kind>,
    /// These properties are present and not `null`.
    #[serde(
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub has: Vec<String>,
    /// These properties are absent or `null`.
    #[serde(
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub missing: Vec<String>,
    /// These properties equal these JSON values.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub equals: Map<String, Value>,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

fn kinds<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Kind>, D::Error> {
    one_or_many(d)?
        .into_iter()
        .map(|s| {
            Kind::parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown kind {s:?}; expected track, identify, page, screen, group or alias"
                ))
            })
        })
        .collect()
}

fn rule(name: &str, when: Condition, to: &[&str]) -> RuleConfig {
    RuleConfig {
        name: name.into(),
        when,
        to: to.iter().map(|s| (*s).into()).collect(),
    }
}

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| (*s).into()).collect()
}

impl Default for RoutingConfig {
    /// The embedded default table (DESIGN.md "Routing").
    fn default() -> Self {
        let c = Condition::default;
        RoutingConfig {
            rules: vec![
                rule(
                    "identify",
                    Condition {
                        event: names(&["$identify"]),
                        ..c()
                    },
                    &["posthog", "mixpanel"],
                ),
                rule(
                    "product",
                    Condition {
                        event: names(&["Sign Up", "Page View", "Request Demo"]),
                        ..c()
                    },
                    &["mixpanel"],
                ),
                rule(
                    "purchase-attributed",
                    Condition {
                        event: names(&["Purchase"]),
                        has: names(&["utm_source"]),
                        ..c()
                    },
                    &["posthog"],
                ),
                rule(
                    "purchase-product",
                    Condition {
                        event: names(&["Purchase"]),
                        missing: names(&["utm_source"]),
                        ..c()
                    },
                    &["mixpanel"],
                ),
                rule(
                    "campaign",
                    Condition {
                        has: names(&["utm_source"]),
                        ..c()
                    },
                    &["posthog"],
                ),
                rule(
                    "sessions",
                    Condition {
                        event: names(&[
                            "Session Start",
                            "Session End",
                            "session_start",
                            "session_end",
                        ]),
                        ..c()
                    },
                    &["posthog"],
                ),
            ],
            fallback: names(&["mixpanel"]),
        }
    }
}

/// A configuration the router cannot run with; names the key and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct RoutingError {
    /// The config key at fault, e.g. `routing.rules[2].when.event_regex`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// A set of destination indices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DestSet(u64);

impl DestSet {
    /// Whether destination `i` is in the set.
    pub fn contains(self, i: usize) -> bool {
        i < 64 && self.0 & (1 << i) != 0
    }
    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Number of destinations.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }
    /// Indices, ascending.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..64).filter(move |i| self.0 & (1u64 << i) != 0)
    }
    /// The raw bits (bit i = destination i), for compact storage.
    pub fn bits(self) -> u64 {
        self.0
    }
    /// Rebuilds a set from [`DestSet::bits`].
    pub fn from_bits(bits: u64) -> Self {
        DestSet(bits)
    }
}

/// A set of rule indices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleSet(u128);

impl RuleSet {
    /// Indices, ascending.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let bits = self.0;
        (0..128).filter(move |i| bits & (1u128 << i) != 0)
    }
    /// Whether no rule matched.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Where one event goes, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// Destinations (never empty).
    pub destinations: DestSet,
    /// Rules that matched (empty when the fallback applied).
    pub rules: RuleSet,
    /// Whether the fallback destinations were used.
    pub fallback: bool,
}

#[derive(Debug)]
enum Pattern {
    Glob(String),
    Regex(Regex),
}

impl Pattern {
    fn is_match(&self, name: &str) -> bool {
        match self {
            Pattern::Glob(g) => glob_match(g, name),
            Pattern::Regex(r) => r.is_match(name),
        }
    }
}

#[derive(Debug)]
struct CompiledRule {
    name: String,
    /// Bitmask of allowed kinds; 0 means any.
    kinds: u8,
    has: Vec<String>,
    missing: Vec<String>,
    equals: Vec<(String, Value)>,
    to: DestSet,
}

impl CompiledRule {
    fn properties_match(&self, e: &Event) -> bool {
        (self.kinds == 0 || self.kinds & e.kind.bit() != 0)
            && self.has.iter().all(|k| e.property(k).is_some())
            && self.missing.iter().all(|k| e.property(k).is_none())
            && self
                .equals
                .iter()
                .all(|(k, v)| e.properties.get(k) == Some(v))
    }
}

/// A compiled routing table. Build once with [`Router::new`]; routing is pure and lock-free.
#[derive(Debug)]
pub struct Router {
    destinations: Vec<String>,
    rules: Vec<CompiledRule>,
    by_name: FxHashMap<Box<str>, u128>,
    unnamed: u128,
    patterns: Vec<(usize, Pattern)>,
    fallback: DestSet,
    config: RoutingConfig,
}

impl Router {
    /// Compiles a routing table, checking every rule.
    pub fn new(config: &RoutingConfig) -> Result<Router, RoutingError> {
        let err = |key: String, reason: String| RoutingError { key, reason };
        if config.rules.len() > MAX_RULES {
            return Err(err(
                "routing.rules".into(),
                format!(
                    "{} rules, over the limit of {MAX_RULES}",
                    config.rules.len()
                ),
            ));
        }
        let mut destinations: Vec<String> = Vec::new();
        let mut dest_set = |key: &str, names: &[String]| -> Result<DestSet, RoutingError> {
            if names.is_empty() {
                return Err(err(key.into(), "must name at least one destination".into()));
            }
            let mut set = 0u64;
            for n in names {
                if n.trim().is_empty() {
                    return Err(err(key.into(), "a destination name is empty".into()));
                }
                let i = match destinations.iter().position(|d| d == n) {
                    Some(i) => i,
                    None => {
                        if destinations.len() == MAX_DESTINATIONS {
                            return Err(err(
                                key.into(),
                                format!("more than {MAX_DESTINATIONS} destinations"),
                            ));
                        }
                        destinations.push(n.clone());
                        destinations.len() - 1
                    }
                };
                set |= 1 << i;
            }
            Ok(DestSet(set))
        };
        let mut rules = Vec::with_capacity(config.rules.len());
        let mut by_name: FxHashMap<Box<str>, u128> = FxHashMap::default();
        let mut unnamed = 0u128;
        let mut patterns = Vec::new();
        for (i, r) in config.rules.iter().enumerate() {
            let key = |k: &str| format!("routing.rules[{i}]{k}");
            if r.name.trim().is_empty() {
                return Err(err(key(".name"), "must not be empty".into()));
            }
            if config.rules[..i].iter().any(|o| o.name == r.name) {
                return Err(err(
                    key(".name"),
                    format!("duplicate rule name {:?}", r.name),
                ));
            }
            let bit = 1u128 << i;
            let w = &r.when;
            for n in &w.event {
                *by_name.entry(n.as_str().into()).or_default() |= bit;
            }
            for g in &w.event_glob {
                patterns.push((i, Pattern::Glob(g.clone())));
            }
            if let Some(re) = &w.event_regex {
                let re = Regex::new(re)
                    .map_err(|e| err(key(".when.event_regex"), format!("invalid regex: {e}")))?;
                patterns.push((i, Pattern::Regex(re)));
            }
            if w.event.is_empty() && w.event_glob.is_empty() && w.event_regex.is_none() {
                unnamed |= bit;
            }
            for (k, list) in [("has", &w.has), ("missing", &w.missing)] {
                if list.iter().any(|p| p.is_empty()) {
                    return Err(err(
                        key(&format!(".when.{k}")),
                        "a property name is empty".into(),
                    ));
                }
            }
            rules.push(CompiledRule {
                name: r.name.clone(),
                kinds: w.kind.iter().fold(0, |m, k| m | k.bit()),
                has: w.has.clone(),
                missing: w.missing.clone(),
                equals: w
                    .equals
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                to: dest_set(&key(".to"), &r.to)?,
            });
        }
        let fallback = dest_set("routing.fallback", &config.fallback)?;
        Ok(Router {
            destinations,
            rules,
            by_name,
            unnamed,
            patterns,
            fallback,
            config: config.clone(),
        })
    }

    /// The embedded default table, compiled.
    pub fn default_table() -> Router {
        // The embedded table is valid by construction; a unit test checks it.
        Router::new(&RoutingConfig::default()).unwrap_or_else(|e| panic!("default table: {e}"))
    }

    /// Decides where an event goes.
    pub fn route(&self, e: &Event) -> Route {
        let mut candidates = self.unnamed | self.by_name.get(e.name.as_str()).copied().unwrap_or(0);
        for (i, p) in &self.patterns {
            let bit = 1u128 << i;
            if candidates & bit == 0 && p.is_match(&e.name) {
                candidates |= bit;
            }
        }
        let mut rules = 0u128;
        let mut dest = 0u64;
        while candidates != 0 {
            let i = candidates.trailing_zeros() as usize;
            candidates &= candidates - 1;
            let r = &self.rules[i];
            if r.properties_match(e) {
                rules |= 1 << i;
                dest |= r.to.0;
            }
        }
        if dest == 0 {
            Route {
                destinations: self.fallback,
                rules: RuleSet(0),
                fallback: true,
            }
        } else {
            Route {
                destinations: DestSet(dest),
                rules: RuleSet(rules),
                fallback: false,
            }
        }
    }

    /// Every rule with whether it matched `e`, in table order (for `route --explain`).
    pub fn explain(&self, e: &Event) -> Vec<(&str, bool)> {
        let named = self.by_name.get(e.name.as_str()).copied().unwrap_or(0);
        self.rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let bit = 1u128 << i;
                let name_ok = (self.unnamed | named) & bit != 0
                    || self
                        .patterns
                        .iter()
                        .any(|(j, p)| *j == i && p.is_match(&e.name));
                (r.name.as_str(), name_ok && r.properties_match(e))
            })
            .collect()
    }

    /// All destination names, indexed as in [`DestSet`].
    pub fn destinations(&self) -> &[String] {
        &self.destinations
    }

    /// Index of a destination by name.
    pub fn destination_index(&self, name: &str) -> Option<usize> {
        self.destinations.iter().position(|d| d == name)
    }

    /// Destination names of a route, sorted.
    pub fn destination_names(&self, r: &Route) -> Vec<&str> {
        let mut v: Vec<&str> = r
            .destinations
            .iter()
            .map(|i| self.destinations[i].as_str())
            .collect();
        v.sort_unstable();
        v
    }

    /// Names of the rules that matched, in table order; `["fallback"]` when the fallback applied.
    pub fn rule_names(&self, r: &Route) -> Vec<&str> {
        if r.fallback {
            return vec!["fallback"];
        }
        r.rules
            .iter()
            .map(|i| self.rules[i].name.as_str())
            .collect()
    }

    /// The table this router was compiled from.
    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }
}

impl fmt::Display for Router {
    /// The effective table, one rule per line, as `events-router check` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.config.rules {
            let w = &r.when;
            let mut parts = Vec::new();
            if !w.event.is_empty() {
                parts.push(format!("event in {:?}", w.event));
            }
            if !w.event_glob.is_empty() {
                parts.push(format!("event like {:?}", w.event_glob));
            }
            if let Some(re) = &w.event_regex {
                parts.push(format!("event ~ /{re}/"));
            }
            if !w.kind.is_empty() {
                let k: Vec<_> = w.kind.iter().map(|k| k.as_str()).collect();
                parts.push(format!("kind in {k:?}"));
            }
            for h in &w.has {
                parts.push(format!("has properties.{h}"));
            }
            for m in &w.missing {
                parts.push(format!("missing properties.{m}"));
            }
            for (k, v) in &w.equals {
                parts.push(format!("properties.{k} == {v}"));
            }
            let cond = if parts.is_empty() {
                "any event".to_owned()
            } else {
                parts.join(" and ")
            };
            writeln!(f, "{:<22} {:<60} -> {}", r.name, cond, r.to.join(", "))?;
        }
        write!(
            f,
            "{:<22} {:<60} -> {}",
            "fallback",
            "no rule matched",
            self.config.fallback.join(", ")
        )
    }
}

/// Glob match: `*` matches any run (also empty), `?` exactly one character, all else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    let next_char = |t: &[u8], i: usize| {
        let mut j = i + 1;
        while j < t.len() && (t[j] & 0xC0) == 0x80 {
            j += 1;
        }
        j
    };
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == b'?' {
            pi += 1;
            ti = next_char(t, ti);
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            let nt = next_char(t, st);
            star = Some((sp, nt));
            pi = sp + 1;
            ti = nt;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("Session *", "Session Start"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("a?c", "aéc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*.done", "job.x.done"));
        assert!(!glob_match("Session *", "Sessions"));
        assert!(glob_match("**a", "bba"));
    }

    #[test]
    fn default_table_compiles() {
        let r = Router::default_table();
        assert_eq!(r.destinations(), ["posthog", "mixpanel"]);
        assert_eq!(r.config().rules.len(), 6);
    }

    #[test]
    fn config_errors_name_the_key() {
        let mut c = RoutingConfig::default();
        c.rules[1].when.event_regex = Some("(".into());
        assert_eq!(
            Router::new(&c).unwrap_err().key,
            "routing.rules[1].when.event_regex"
        );
        let mut c = RoutingConfig::default();
        c.fallback.clear();
        assert_eq!(Router::new(&c).unwrap_err().key, "routing.fallback");
        let mut c = RoutingConfig::default();
        c.rules[2].name = "identify".into();
        assert_eq!(Router::new(&c).unwrap_err().key, "routing.rules[2].name");
        let mut c = RoutingConfig::default();
        c.rules[0].to.clear();
        assert_eq!(Router::new(&c).unwrap_err().key, "routing.rules[0].to");
    }
}
