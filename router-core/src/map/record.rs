//! A destination record: an ordered JSON object whose values mostly borrow from the event.

use std::borrow::Cow;

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;
use uuid::Uuid;

use crate::event::Object;
use crate::time::Timestamp;

/// One JSON value of a record.
#[derive(Clone, Debug)]
pub enum Field<'a> {
    /// A borrowed string.
    Str(&'a str),
    /// A computed string.
    String(String),
    /// Any borrowed JSON value.
    Json(&'a Value),
    /// A borrowed object.
    Obj(&'a Object),
    /// A borrowed object without one key (e.g. traits without `$set_once`).
    ObjWithout(&'a Object, &'static str),
    /// A borrowed object with keys renamed by a table (Mixpanel reserved profile properties).
    ObjRenamed(&'a Object, &'static [(&'static str, &'static str)]),
    /// An integer.
    I64(i64),
    /// A boolean.
    Bool(bool),
    /// RFC 3339 text.
    Time(Timestamp),
    /// Lower-case hyphenated UUID text.
    Uuid(Uuid),
    /// An array of strings.
    List(Vec<Cow<'a, str>>),
    /// A nested record.
    Record(Box<Record<'a>>),
}

/// An ordered JSON object: the record's own keys, then the keys of `base` that it does not set.
///
/// The record's keys win, so a client cannot overwrite identity fields (`distinct_id`, `time`,
/// `$insert_id`, ...) through its properties.
#[derive(Clone, Debug, Default)]
pub struct Record<'a> {
    fields: Vec<(Cow<'a, str>, Field<'a>)>,
    base: Option<&'a Object>,
}

impl<'a> Record<'a> {
    /// An empty record with room for `n` own keys.
    pub fn with_capacity(n: usize) -> Self {
        Record {
            fields: Vec::with_capacity(n),
            base: None,
        }
    }

    /// Sets a key (the caller does not set one twice).
    pub fn set(&mut self, key: impl Into<Cow<'a, str>>, value: Field<'a>) -> &mut Self {
        self.fields.push((key.into(), value));
        self
    }

    /// Sets a key unless `base` already has it (a client value wins over a derived one).
    pub fn set_soft(&mut self, key: impl Into<Cow<'a, str>>, value: Field<'a>) -> &mut Self {
        let key = key.into();
        if !self.base.is_some_and(|b| b.contains_key(key.as_ref())) {
            self.fields.push((key, value));
        }
        self
    }

    /// Appends the keys of `base` that the record does not set itself.
    pub fn extend_with(&mut self, base: &'a Object) -> &mut Self {
        self.base = Some(base);
        self
    }

    /// A value the record sets itself (not from `base`).
    pub fn get(&self, key: &str) -> Option<&Field<'a>> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Mutable access to a value the record sets itself.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Field<'a>> {
        self.fields
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Serialises to compact JSON bytes appended to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Writing plain data into a Vec cannot fail.
        let _ = serde_json::to_writer(out, self);
    }

    /// As a `serde_json::Value` (for tests and the `route --payloads` output).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Serialize for Record<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (k, v) in &self.fields {
            m.serialize_entry(k, v)?;
        }
        if let Some(base) = self.base {
            for (k, v) in base {
                if !self.fields.iter().any(|(own, _)| own == k) {
                    m.serialize_entry(k, v)?;
                }
            }
        }
        m.end()
    }
}

impl Serialize for Field<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Str(x) => s.serialize_str(x),
            Field::String(x) => s.serialize_str(x),
            Field::Json(v) => v.serialize(s),
            Field::Obj(o) => o.serialize(s),
            Field::ObjWithout(o, skip) => {
                let mut m = s.serialize_map(None)?;
                for (k, v) in o.iter().filter(|(k, _)| k != skip) {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            Field::ObjRenamed(o, table) => {
                let mut m = s.serialize_map(None)?;
                for (k, v) in o.iter() {
                    if k == "$set_once" {
                        continue;
                    }
                    let key = table
                        .iter()
                        .find(|(from, _)| from == k)
                        .map_or(k.as_str(), |p| p.1);
                    if key != k {
                        // A renamed key must not collide with the same key given literally,
                        // nor with another spelling renamed to it (`firstName` and
                        // `first_name`): the first spelling in the table wins. (Found by
                        // fuzzing: the record had `$first_name` twice.)
                        if o.contains_key(key) {
                            continue;
                        }
                        let first = table
                            .iter()
                            .find(|(from, to)| *to == key && o.contains_key(*from))
                            .map(|p| p.0);
                        if first != Some(k.as_str()) {
                            continue;
                        }
                    }
                    m.serialize_entry(key, v)?;
                }
                m.end()
            }
            Field::I64(i) => s.serialize_i64(*i),
            Field::Bool(b) => s.serialize_bool(*b),
            Field::Time(t) => s.serialize_str(t.format().as_str()),
            Field::Uuid(u) => {
                let mut buf = Uuid::encode_buffer();
                s.serialize_str(u.hyphenated().encode_lower(&mut buf))
            }
            Field::List(items) => {
                let mut q = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    q.serialize_element(i)?;
                }
                q.end()
            }
            Field::Record(r) => r.serialize(s),
        }
    }
}
