//! Canonical event -> PostHog capture event (API_SPECS.md §5.2).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Event, Kind};
use crate::map::record::{Field, Record};
use crate::map::{LIB_VERSION, posthog_uuid};

/// How events become PostHog records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PosthogSettings {
    /// `$lib` of every event.
    pub lib: String,
    /// Put `context.ip` into `properties.$ip` (PostHog geolocates it).
    pub forward_ip: bool,
    /// Group type for `$groupidentify` and `$groups` (`context.groupId`); none disables groups.
    pub group_type: Option<String>,
    /// Mark events of users without a `userId` as personless (`$process_person_profile: false`).
    pub personless_anonymous: bool,
}

impl Default for PosthogSettings {
    fn default() -> Self {
        PosthogSettings {
            lib: "events-router".into(),
            forward_ip: true,
            group_type: Some("company".into()),
            personless_anonymous: false,
        }
    }
}

/// PostHog distinct ids are cut at 200 characters by capture; cut them the same way here.
fn truncate_id(id: &str) -> &str {
    match id.char_indices().nth(200) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

/// The PostHog event for `e` (one per canonical event), ready for a `/batch/` body.
///
/// track -> the event's name; page -> `$pageview`; screen -> `$screen`; identify -> `$identify`
/// with `$set` (and `$anon_distinct_id`); alias -> `$create_alias`; group -> `$groupidentify`.
pub fn posthog_record<'a>(e: &'a Event, s: &'a PosthogSettings) -> Record<'a> {
    let mut props = Record::with_capacity(8);
    props.extend_with(&e.properties);
    let page = |k: &str| e.context_str("page", k);
    let mut distinct: Cow<'a, str> = Cow::Borrowed(truncate_id(e.distinct_id()));
    let event: &str = match e.kind {
        Kind::Track => &e.name,
        Kind::Page => {
            if let Some(url) = page("url").or_else(|| e.properties.get("url")?.as_str()) {
                props.set_soft("$current_url", Field::Str(url));
            }
            if let Some(p) = page("path") {
                props.set_soft("$pathname", Field::Str(p));
            }
            if let Some(r) = page("referrer") {
                props.set_soft("$referrer", Field::Str(r));
            }
            if let Some(t) = page("title") {
                props.set_soft("title", Field::Str(t));
            }
            "$pageview"
        }
        Kind::Screen => {
            if let Some(Value::String(n)) = e.properties.get("name") {
                props.set_soft("$screen_name", Field::Str(n));
            }
            "$screen"
        }
        Kind::Identify => {
            props.set("$set", Field::ObjWithout(&e.traits, "$set_once"));
            if let Some(once @ Value::Object(_)) = e.traits.get("$set_once") {
                props.set("$set_once", Field::Json(once));
            }
            if let (Some(user), Some(anon)) = (&e.user_id, &e.anonymous_id) {
                if user != anon {
                    props.set("$anon_distinct_id", Field::Str(truncate_id(anon)));
                }
            }
            "$identify"
        }
        Kind::Alias => {
            if let Some(prev) = &e.previous_id {
                props.set("alias", Field::Str(truncate_id(prev)));
            }
            "$create_alias"
        }
        Kind::Group => {
            let ty = s.group_type.as_deref().unwrap_or("group");
            let key = e.group_id.as_deref().unwrap_or_default();
            distinct = Cow::Owned(format!("${ty}_{key}"));
            props.set("$group_type", Field::Str(ty));
            props.set("$group_key", Field::Str(key));
            props.set("$group_set", Field::Obj(&e.traits));
            "$groupidentify"
        }
    };
    if !matches!(e.kind, Kind::Page) {
        if let Some(url) = page("url") {
            props.set_soft("$current_url", Field::Str(url));
        }
    }
    if s.forward_ip {
        if let Some(ip) = e.context.get("ip").and_then(Value::as_str) {
            props.set_soft("$ip", Field::Str(ip));
        }
    }
    if let (Some(ty), Some(Value::String(gid))) = (&s.group_type, e.context.get("groupId")) {
        if e.kind != Kind::Group {
            let mut groups = Record::with_capacity(1);
            groups.set(ty.as_str(), Field::Str(gid));
            props.set_soft("$groups", Field::Record(Box::new(groups)));
        }
    }
    if s.personless_anonymous && e.user_id.is_none() && e.kind != Kind::Identify {
        props.set_soft("$process_person_profile", Field::Bool(false));
    }
    props.set("$lib", Field::Str(&s.lib));
    props.set("$lib_version", Field::Str(LIB_VERSION));

    let mut r = Record::with_capacity(5);
    r.set("event", Field::Str(event))
        .set(
            "distinct_id",
            match distinct {
                Cow::Borrowed(d) => Field::Str(d),
                Cow::Owned(d) => Field::String(d),
            },
        )
        .set("timestamp", Field::Time(e.timestamp))
        .set("uuid", Field::Uuid(posthog_uuid(&e.message_id)))
        .set("properties", Field::Record(Box::new(props)));
    r
}
