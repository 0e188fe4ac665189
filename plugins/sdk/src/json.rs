//! JSON helpers for plugins: an event as a `serde_json` object, or as its
//! top-level [`Properties`], read and changed without building the rest.

use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::{Map, Value};
pub use sluice_kit::names::{Name, Names};

/// "a string", "an object", ...: for messages that say what was found.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The event's body as a JSON object, or why it is not one (for a
/// `malformed` rejection). The host admits only JSON objects, so a plugin
/// sees this fail only in tests or behind a stage that rewrote the body.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(format!("expected a JSON object, found {}", kind(&other))),
        Err(e) => Err(format!("body is not valid JSON: {e}")),
    }
}

/// An event's top-level properties, in order, each value left as the JSON
/// text it came as: reading a few properties costs no tree of the rest, and
/// changing a few ([`Properties::edit`]) copies the others' text as it is
/// instead of re-serialising them.
///
/// ```
/// use sluice_plugin::json::Properties;
/// let body = br#"{"event":"scene_generated","latency_ms":48210,"ip":"203.0.113.42"}"#;
/// let properties = Properties::parse(body).unwrap();
/// assert_eq!(properties.str("event").as_deref(), Some("scene_generated"));
/// let mut edit = properties.edit();
/// edit.set("ip", &"203.0.113.0");
/// edit.remove("latency_ms");
/// edit.set("trusted", &true);
/// assert_eq!(edit.to_vec(), br#"{"event":"scene_generated","ip":"203.0.113.0","trusted":true}"#);
/// ```
pub struct Properties<'a> {
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Properties<'a> {
    /// The body's top-level properties, or why it is not a JSON object (for a
    /// `malformed` rejection). A name given twice is refused, as the host
    /// refuses it: parsers disagree on which of the two counts.
    pub fn parse(body: &'a [u8]) -> Result<Self, String> {
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err("the body is not a JSON object (it does not start with `{`)".into());
        }
        serde_json::from_slice::<Self>(body).map_err(|e| format!("the body is not valid JSON: {e}"))
    }

    /// A property's JSON text.
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, raw)| *raw)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// A property's value when it is a string.
    pub fn str(&self, name: &str) -> Option<Cow<'a, str>> {
        string(self.get(name)?.get())
    }

    /// A property's value when it is a number.
    pub fn f64(&self, name: &str) -> Option<f64> {
        let raw = self.get(name)?.get();
        if raw.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']) { raw.parse().ok() } else { None }
    }

    /// A property's value, parsed.
    pub fn value(&self, name: &str) -> Option<Value> {
        self.get(name).and_then(|raw| serde_json::from_str(raw.get()).ok())
    }

    /// The names, in the order of the body.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(name, _)| name.as_ref())
    }

    /// Every property, in the order of the body.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &'a RawValue)> {
        self.entries.iter().map(|(name, raw)| (name.as_ref(), *raw))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Changes to these properties, written out by [`Edit::to_vec`].
    pub fn edit(&self) -> Edit<'a> {
        Edit { entries: self.entries.iter().map(|(name, raw)| (name.clone(), Cow::Borrowed(raw.get()))).collect() }
    }
}

/// The string a JSON text holds, if it holds one.
pub fn string(json: &str) -> Option<Cow<'_, str>> {
    if !json.starts_with('"') || json.len() < 2 {
        return None;
    }
    // Without escapes, the text between the quotes is the string.
    let inner = &json[1..json.len() - 1];
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(json).ok().map(Cow::Owned)
}

/// A body being changed property by property: a changed value is
/// serialised, every other is copied as the text it came as; properties
/// keep their order, new ones come last.
pub struct Edit<'a> {
    entries: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl Edit<'_> {
    /// Sets a property to a value, in its place if the body has it.
    pub fn set(&mut self, name: &str, value: &impl serde::Serialize) {
        let text = serde_json::to_string(value).expect("a value of a type that serialises to JSON");
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some((_, slot)) => *slot = Cow::Owned(text),
            None => self.entries.push((Cow::Owned(name.to_string()), Cow::Owned(text))),
        }
    }

    /// Takes a property out; whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(n, _)| n != name);
        self.entries.len() != before
    }

    /// The JSON text of a property, as it is now.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, text)| text.as_ref())
    }

    /// The body, compact.
    pub fn to_vec(&self) -> Vec<u8> {
        let size: usize = self.entries.iter().map(|(name, text)| name.len() + text.len() + 4).sum();
        let mut out = Vec::with_capacity(size + 2);
        out.push(b'{');
        for (n, (name, text)) in self.entries.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, name.as_ref()).expect("a string serialises");
            out.push(b':');
            out.extend_from_slice(text.as_bytes());
        }
        out.push(b'}');
        out
    }
}

impl<'de> serde::Deserialize<'de> for Properties<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PropertiesVisitor)
    }
}

struct PropertiesVisitor;

impl<'de> serde::de::Visitor<'de> for PropertiesVisitor {
    type Value = Properties<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::with_capacity(map.size_hint().unwrap_or(24));
        let mut names = Names::default();
        while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
            if !names.insert(name.clone()) {
                return Err(serde::de::Error::custom(format_args!("the property {name:?} appears twice")));
            }
            entries.push((name, map.next_value()?));
        }
        Ok(Properties { entries })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn properties_are_read_in_order_with_their_text() {
        let body = br#" {"b": 1.50, "a\u0041": "x\"y", "c": {"d": [1, 2]}, "e": null} "#;
        let properties = Properties::parse(body).unwrap();
        assert_eq!(properties.names().collect::<Vec<_>>(), ["b", "aA", "c", "e"]);
        assert_eq!(properties.get("b").unwrap().get(), "1.50", "numbers keep their text");
        assert_eq!(properties.f64("b"), Some(1.5));
        assert_eq!(properties.str("aA").as_deref(), Some("x\"y"));
        assert_eq!(properties.str("b"), None);
        assert_eq!(properties.value("c"), Some(json!({ "d": [1, 2] })));
        assert!(!properties.contains("d"), "only the top level");
    }

    #[test]
    fn an_edit_copies_what_it_does_not_change() {
        let body = br#"{"z": {"keep": [1.0, "as it was"]}, "ip": "203.0.113.42", "gone": 1}"#;
        let properties = Properties::parse(body).unwrap();
        let mut edit = properties.edit();
        edit.set("ip", &"203.0.113.0");
        assert!(edit.remove("gone"));
        assert!(!edit.remove("never"));
        edit.set("new \"one\"", &json!({ "n": 2 }));
        let out = edit.to_vec();
        assert_eq!(out, br#"{"z":{"keep": [1.0, "as it was"]},"ip":"203.0.113.0","new \"one\"":{"n":2}}"#);
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap()["new \"one\""]["n"], 2);
    }

    /// An object of 100 names, then `last`.
    fn wide_with(last: &str) -> String {
        format!("{{{},\"{last}\":0}}", (0..100).map(|n| format!("\"k{n}\":{n}")).collect::<Vec<_>>().join(","))
    }

    #[test]
    fn a_wide_object_is_read_whole() {
        let body = wide_with("last");
        let properties = Properties::parse(body.as_bytes()).unwrap();
        assert_eq!((properties.len(), properties.f64("k99"), properties.f64("last")), (101, Some(99.0), Some(0.0)));
    }

    #[test]
    fn what_is_not_one_json_object_is_refused() {
        for (body, says) in [
            (&b"[1]"[..], "not a JSON object"),
            (b"", "not a JSON object"),
            (b"{\"a\":1", "not valid JSON"),
            (b"{\"a\":1}{}", "not valid JSON"),
            (b"{\"a\":1,\"a\":2}", "appears twice"),
            (b"{\"a\":\xff}", "not valid JSON"),
            (wide_with("k7").as_bytes(), "\"k7\" appears twice"),
        ] {
            let error = Properties::parse(body).err().unwrap_or_else(|| panic!("{:?} was taken", String::from_utf8_lossy(body)));
            assert!(error.contains(says), "{:?}: {error}", String::from_utf8_lossy(body));
        }
    }
}
