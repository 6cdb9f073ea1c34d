//! Canonical event -> Mixpanel `/import` events, `/engage` and `/groups` updates (§5.3).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Event, Kind};
use crate::map::record::{Field, Record};
use crate::map::{LIB_VERSION, insert_id, insert_id_for};

/// The project's ID-merge mode, which decides how identities are linked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdMerge {
    /// Events carry `$device_id` / `$user_id`; Mixpanel links them (default for new projects).
    #[default]
    Simplified,
    /// Legacy: `distinct_id` is the id, identify sends `$merge`, alias `$create_alias`.
    Original,
}

/// How events become Mixpanel records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MixpanelSettings {
    /// Project token, put in `properties.token` and `$token` (set from the credentials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// ID-merge mode of the project.
    pub id_merge: IdMerge,
    /// Send `context.ip` as `ip` / `$ip` (Mixpanel geolocates it).
    pub forward_ip: bool,
    /// Group key for group calls (`/groups` `$group_key`, and the user's `$union`).
    pub group_key: String,
    /// Event name for page calls; the canonical name (`Page View`) when unset.
    pub page_event: Option<String>,
    /// Event name for screen calls; the canonical name (`Screen View`) when unset.
    pub screen_event: Option<String>,
    /// `mp_lib` of every event.
    pub lib: String,
}

impl Default for MixpanelSettings {
    fn default() -> Self {
        MixpanelSettings {
            token: None,
            id_merge: IdMerge::Simplified,
            forward_ip: true,
            group_key: "company".into(),
            page_event: None,
            screen_event: None,
            lib: "events-router".into(),
        }
    }
}

/// Which Mixpanel endpoint a record goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MixpanelEndpoint {
    /// `POST /import?strict=1` (events; gzip allowed).
    Import,
    /// `POST /engage` (user profile updates; no gzip).
    Engage,
    /// `POST /groups` (group profile updates).
    Groups,
}

/// One Mixpanel record and the endpoint it goes to.
#[derive(Clone, Debug)]
pub struct MixpanelRecord<'a> {
    /// Endpoint.
    pub endpoint: MixpanelEndpoint,
    /// The JSON object to send.
    pub record: Record<'a>,
}

/// Segment reserved traits -> Mixpanel reserved profile properties.
const RESERVED_TRAITS: &[(&str, &str)] = &[
    ("email", "$email"),
    ("name", "$name"),
    ("firstName", "$first_name"),
    ("first_name", "$first_name"),
    ("lastName", "$last_name"),
    ("last_name", "$last_name"),
    ("phone", "$phone"),
    ("createdAt", "$created"),
    ("created_at", "$created"),
    ("username", "$username"),
    ("avatar", "$avatar"),
];

/// The profile id: the user id, else the device id (`$device:<id>` under simplified merge).
fn profile_id<'a>(e: &'a Event, mode: IdMerge) -> Field<'a> {
    match (&e.user_id, &e.anonymous_id, mode) {
        (Some(u), _, _) => Field::Str(u),
        (None, Some(a), IdMerge::Simplified) => Field::String(format!("$device:{a}")),
        (None, Some(a), IdMerge::Original) => Field::Str(a),
        (None, None, _) => Field::Str(""),
    }
}

/// An `/import` event record for `e`, under `name`, with the given `$insert_id`.
fn import_event<'a>(
    e: &'a Event,
    s: &'a MixpanelSettings,
    name: Cow<'a, str>,
    id: String,
    with_properties: bool,
) -> Record<'a> {
    let mut p = Record::with_capacity(12);
    if with_properties {
        p.extend_with(&e.properties);
    }
    p.set("time", Field::I64(e.timestamp.millis()));
    match s.id_merge {
        IdMerge::Simplified => {
            p.set("distinct_id", profile_id(e, s.id_merge));
            if let Some(u) = &e.user_id {
                p.set("$user_id", Field::Str(u));
            }
            if let Some(a) = &e.anonymous_id {
                p.set("$device_id", Field::Str(a));
            }
        }
        IdMerge::Original => {
            p.set("distinct_id", Field::Str(e.distinct_id()));
        }
    }
    p.set("$insert_id", Field::String(id));
    if let Some(t) = &s.token {
        p.set("token", Field::Str(t));
    }
    if s.forward_ip {
        if let Some(ip) = e.context.get("ip").and_then(Value::as_str) {
            p.set_soft("ip", Field::Str(ip));
        }
    }
    if let Some(url) = e.context_str("page", "url") {
        p.set_soft("$current_url", Field::Str(url));
    }
    if let Some(r) = e.context_str("page", "referrer") {
        p.set_soft("$referrer", Field::Str(r));
    }
    if let Some(os) = e.context_str("os", "name") {
        p.set_soft("$os", Field::Str(os));
    }
    if let Some(Value::String(gid)) = e.context.get("groupId") {
        p.set_soft(s.group_key.as_str(), Field::Str(gid));
    }
    p.set("mp_lib", Field::Str(&s.lib));
    p.set("$lib_version", Field::Str(LIB_VERSION));
    let mut r = Record::with_capacity(2);
    r.set(
        "event",
        match name {
            Cow::Borrowed(n) => Field::Str(n),
            Cow::Owned(n) => Field::String(n),
        },
    )
    .set("properties", Field::Record(Box::new(p)));
    r
}

fn engage<'a>(
    e: &'a Event,
    s: &'a MixpanelSettings,
    op: &'static str,
    value: Field<'a>,
) -> MixpanelRecord<'a> {
    let mut r = Record::with_capacity(4);
    r.set("$token", Field::Str(s.token.as_deref().unwrap_or_default()));
    r.set("$distinct_id", profile_id(e, s.id_merge));
    if s.forward_ip {
        if let Some(ip) = e.context.get("ip").and_then(Value::as_str) {
            r.set("$ip", Field::Str(ip));
        }
    }
    r.set(op, value);
    MixpanelRecord {
        endpoint: MixpanelEndpoint::Engage,
        record: r,
    }
}

/// Appends the Mixpanel records for `e` to `out` (a batch shares one Vec).
///
/// track/page/screen -> one `/import` event. identify -> an `$identify` `/import` event linking
/// the ids, `/engage` `$set` of the traits (reserved ones renamed) and `$set_once` if given;
/// under original ID merge also a `$merge` event. group -> `/groups` `$set` and the user's
/// `/engage` `$union`. alias -> `$create_alias` (original) or an `$identify` linking
/// `previousId` as the device (simplified).
pub fn mixpanel_records<'a>(
    e: &'a Event,
    s: &'a MixpanelSettings,
    out: &mut Vec<MixpanelRecord<'a>>,
) {
    let import = |r: Record<'a>| MixpanelRecord {
        endpoint: MixpanelEndpoint::Import,
        record: r,
    };
    match e.kind {
        Kind::Track => {
            out.push(import(import_event(
                e,
                s,
                Cow::Borrowed(&e.name),
                insert_id(&e.message_id),
                true,
            )));
        }
        Kind::Page | Kind::Screen => {
            let custom = if e.kind == Kind::Page {
                &s.page_event
            } else {
                &s.screen_event
            };
            let name = custom.as_deref().unwrap_or(&e.name);
            out.push(import(import_event(
                e,
                s,
                Cow::Borrowed(name),
                insert_id(&e.message_id),
                true,
            )));
        }
        Kind::Identify => {
            out.push(import(import_event(
                e,
                s,
                Cow::Borrowed("$identify"),
                insert_id(&e.message_id),
                false,
            )));
            if s.id_merge == IdMerge::Original {
                if let (Some(u), Some(a)) = (&e.user_id, &e.anonymous_id) {
                    if u != a {
                        let mut r = import_event(
                            e,
                            s,
                            Cow::Borrowed("$merge"),
                            insert_id_for(&e.message_id, "merge"),
                            false,
                        );
                        if let Some(Field::Record(p)) = r.get_mut("properties") {
                            p.set(
                                "$distinct_ids",
                                Field::List(vec![Cow::Borrowed(u), Cow::Borrowed(a)]),
                            );
                        }
                        out.push(import(r));
                    }
                }
            }
            let has_set = e.traits.keys().any(|k| k != "$set_once");
            if has_set {
                out.push(engage(
                    e,
                    s,
                    "$set",
                    Field::ObjRenamed(&e.traits, RESERVED_TRAITS),
                ));
            }
            if let Some(once @ Value::Object(_)) = e.traits.get("$set_once") {
                out.push(engage(e, s, "$set_once", Field::Json(once)));
            }
        }
        Kind::Group => {
            let gid = e.group_id.as_deref().unwrap_or_default();
            if !e.traits.is_empty() {
                let mut r = Record::with_capacity(4);
                r.set("$token", Field::Str(s.token.as_deref().unwrap_or_default()))
                    .set("$group_key", Field::Str(&s.group_key))
                    .set("$group_id", Field::Str(gid))
                    .set("$set", Field::Obj(&e.traits));
                out.push(MixpanelRecord {
                    endpoint: MixpanelEndpoint::Groups,
                    record: r,
                });
            }
            let mut union = Record::with_capacity(1);
            union.set(s.group_key.as_str(), Field::List(vec![Cow::Borrowed(gid)]));
            out.push(engage(e, s, "$union", Field::Record(Box::new(union))));
        }
        Kind::Alias => {
            let prev = e.previous_id.as_deref().unwrap_or_default();
            let user = e.user_id.as_deref().unwrap_or_default();
            match s.id_merge {
                IdMerge::Original => {
                    let mut r = Record::with_capacity(2);
                    let mut p = Record::with_capacity(6);
                    p.set("time", Field::I64(e.timestamp.millis()))
                        .set("distinct_id", Field::Str(prev))
                        .set("alias", Field::Str(user))
                        .set("$insert_id", Field::String(insert_id(&e.message_id)));
                    if let Some(t) = &s.token {
                        p.set("token", Field::Str(t));
                    }
                    r.set("event", Field::Str("$create_alias"))
                        .set("properties", Field::Record(Box::new(p)));
                    out.push(import(r));
                }
                IdMerge::Simplified => {
                    let mut r = Record::with_capacity(2);
                    let mut p = Record::with_capacity(6);
                    p.set("time", Field::I64(e.timestamp.millis()))
                        .set("distinct_id", Field::Str(user))
                        .set("$user_id", Field::Str(user))
                        .set("$device_id", Field::Str(prev))
                        .set("$insert_id", Field::String(insert_id(&e.message_id)));
                    if let Some(t) = &s.token {
                        p.set("token", Field::Str(t));
                    }
                    r.set("event", Field::Str("$identify"))
                        .set("properties", Field::Record(Box::new(p)));
                    out.push(import(r));
                }
            }
        }
    }
}
