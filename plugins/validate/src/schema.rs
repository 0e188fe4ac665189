//! The part of JSON Schema (draft 2020-12) that the StoryForge taxonomy uses,
//! compiled once at `init`. A keyword this module does not implement is an
//! error at `init`, never silently ignored: a schema means what it says.
//!
//! Supported: `type`, `enum`, `const`, `required`, `properties`,
//! `additionalProperties`, `items`, `allOf`, `$ref` (to another file of the
//! folder), `format` (`uuid`: a UUIDv4; `date-time`: RFC 3339), `minimum`,
//! `maximum`, `minLength`, `maxLength`; and the annotations `$schema`, `$id`,
//! `title`, `description`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sluice_plugin::{time, uuid};

/// Why an event does not pass: a dead-letter code, the property, a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: &'static str,
    pub property: Option<String>,
    pub message: String,
}

impl Failure {
    pub fn new(code: &'static str, property: Option<String>, message: impl Into<String>) -> Self {
        Self { code, property, message: message.into() }
    }
}

#[derive(Debug, Default)]
pub struct Schema {
    types: Vec<String>,
    enumeration: Option<Vec<Value>>,
    constant: Option<Value>,
    required: Vec<String>,
    properties: BTreeMap<String, Schema>,
    additional: Option<Box<Additional>>,
    items: Option<Box<Schema>>,
    all_of: Vec<Schema>,
    format: Option<Format>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    min_length: Option<usize>,
    max_length: Option<usize>,
}

#[derive(Debug)]
enum Additional {
    Allowed(bool),
    Each(Schema),
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Uuid,
    DateTime,
}

/// Every event's schema, by event name.
#[derive(Debug)]
pub struct SchemaSet {
    events: BTreeMap<String, Schema>,
}

impl SchemaSet {
    /// Compiles the event schemas among `files` (file name → JSON). A file is
    /// an event schema when its `properties.event.const` names the event.
    pub fn compile(files: &BTreeMap<String, Value>) -> Result<Self, String> {
        let mut events = BTreeMap::new();
        for (name, document) in files {
            let Some(event) = document.pointer("/properties/event/const").and_then(Value::as_str) else { continue };
            let schema = compile(document, files, name, 0).map_err(|e| format!("{name}: {e}"))?;
            if events.insert(event.to_string(), schema).is_some() {
                return Err(format!("two schema files describe the event {event:?}"));
            }
        }
        if events.is_empty() {
            return Err("no event schema found (an event schema has properties.event.const)".into());
        }
        Ok(Self { events })
    }

    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    pub fn validate(&self, event: &Value) -> Result<(), Failure> {
        let Some(object) = event.as_object() else {
            return Err(Failure::new("malformed", None, "an event must be a JSON object"));
        };
        let name = match object.get("event") {
            None => return Err(Failure::new("missing_property", Some("event".into()), "`event` is required: it names the event")),
            Some(Value::String(name)) => name,
            Some(other) => return Err(Failure::new("invalid_property", Some("event".into()), format!("`event` must be a string, found {}", describe(other)))),
        };
        let Some(schema) = self.events.get(name) else {
            return Err(Failure::new("unknown_event", Some("event".into()), format!("{name:?} is not an event of the taxonomy")));
        };
        let mut missing = None;
        schema.first_missing(object, "", &mut missing);
        if let Some(property) = missing {
            return Err(Failure::new("missing_property", Some(property.clone()), format!("`{property}` is required for {name}")));
        }
        schema.check(event, "").map_err(|(property, message)| Failure::new("invalid_property", Some(property), message))
    }
}

/// How deep `$ref`s may nest before the schema is taken to be circular.
const MAX_DEPTH: usize = 16;

fn compile(value: &Value, files: &BTreeMap<String, Value>, file: &str, depth: usize) -> Result<Schema, String> {
    if depth > MAX_DEPTH {
        return Err("$ref nests too deep (is it circular?)".into());
    }
    let object = value.as_object().ok_or("a schema must be an object")?;
    let mut schema = Schema::default();
    for (keyword, v) in object {
        match keyword.as_str() {
            "$schema" | "$id" | "title" | "description" => {}
            "type" => {
                schema.types = match v {
                    Value::String(t) => vec![t.clone()],
                    Value::Array(ts) => ts.iter().map(|t| t.as_str().map(str::to_string).ok_or("`type` lists strings")).collect::<Result<_, _>>()?,
                    _ => return Err("`type` must be a string or a list of strings".into()),
                };
                for t in &schema.types {
                    if !["object", "array", "string", "number", "integer", "boolean", "null"].contains(&t.as_str()) {
                        return Err(format!("unknown type {t:?}"));
                    }
                }
            }
            "enum" => schema.enumeration = Some(v.as_array().ok_or("`enum` must be a list")?.clone()),
            "const" => schema.constant = Some(v.clone()),
            "required" => {
                schema.required = v
                    .as_array()
                    .ok_or("`required` must be a list")?
                    .iter()
                    .map(|r| r.as_str().map(str::to_string).ok_or("`required` lists strings"))
                    .collect::<Result<_, _>>()?
            }
            "properties" => {
                for (name, property) in v.as_object().ok_or("`properties` must be an object")? {
                    let compiled = compile(property, files, file, depth).map_err(|e| format!("property {name}: {e}"))?;
                    schema.properties.insert(name.clone(), compiled);
                }
            }
            "additionalProperties" => {
                schema.additional = Some(Box::new(match v {
                    Value::Bool(b) => Additional::Allowed(*b),
                    other => Additional::Each(compile(other, files, file, depth)?),
                }))
            }
            "items" => schema.items = Some(Box::new(compile(v, files, file, depth)?)),
            "allOf" => {
                for part in v.as_array().ok_or("`allOf` must be a list")? {
                    schema.all_of.push(compile(part, files, file, depth)?);
                }
            }
            "$ref" => {
                let target = v.as_str().ok_or("`$ref` must be a string")?;
                let document = files.get(target).ok_or_else(|| format!("$ref {target:?}: no such file in the schema folder"))?;
                schema.all_of.push(compile(document, files, target, depth + 1).map_err(|e| format!("{target}: {e}"))?);
            }
            "format" => {
                schema.format = Some(match v.as_str() {
                    Some("uuid") => Format::Uuid,
                    Some("date-time") => Format::DateTime,
                    other => return Err(format!("unsupported format {other:?} (supported: uuid, date-time)")),
                })
            }
            "minimum" => schema.minimum = Some(v.as_f64().ok_or("`minimum` must be a number")?),
            "maximum" => schema.maximum = Some(v.as_f64().ok_or("`maximum` must be a number")?),
            "minLength" => schema.min_length = Some(v.as_u64().ok_or("`minLength` must be a whole number")? as usize),
            "maxLength" => schema.max_length = Some(v.as_u64().ok_or("`maxLength` must be a whole number")? as usize),
            other => return Err(format!("keyword {other:?} is not supported by sluice's validate plugin (in {file})")),
        }
    }
    Ok(schema)
}

impl Schema {
    /// The first required property absent from `object`, here or in an `allOf` part.
    fn first_missing(&self, object: &Map<String, Value>, prefix: &str, missing: &mut Option<String>) {
        for part in &self.all_of {
            part.first_missing(object, prefix, missing);
        }
        if missing.is_none() {
            *missing = self.required.iter().find(|r| !object.contains_key(r.as_str())).map(|r| join(prefix, r));
        }
    }

    /// Checks `value`; an error names the property path and says what was wrong.
    fn check(&self, value: &Value, path: &str) -> Result<(), (String, String)> {
        for part in &self.all_of {
            part.check(value, path)?;
        }
        let what = if path.is_empty() { "the event".to_string() } else { format!("`{path}`") };
        let fail = |message: String| Err((path.to_string(), message));
        if !self.types.is_empty() && !self.types.iter().any(|t| has_type(value, t)) {
            return fail(format!("{what} must be {}, found {}", self.types.iter().map(|t| article(t)).collect::<Vec<_>>().join(" or "), describe(value)));
        }
        if let Some(constant) = &self.constant
            && value != constant
        {
            return fail(format!("{what} must be {constant}, found {}", describe(value)));
        }
        if let Some(allowed) = &self.enumeration
            && !allowed.contains(value)
        {
            let list: Vec<String> = allowed.iter().map(|a| a.as_str().map_or_else(|| a.to_string(), str::to_string)).collect();
            return fail(format!("{what} must be one of {}; found {}", list.join(", "), describe(value)));
        }
        if let Value::String(text) = value {
            let length = text.chars().count();
            if self.min_length.is_some_and(|min| length < min) || self.max_length.is_some_and(|max| length > max) {
                let bounds = match (self.min_length, self.max_length) {
                    (Some(a), Some(b)) if a == b => format!("exactly {a} characters"),
                    (Some(a), Some(b)) => format!("{a} to {b} characters"),
                    (Some(a), None) => format!("at least {a} character{}", if a == 1 { "" } else { "s" }),
                    (None, Some(b)) => format!("at most {b} characters"),
                    (None, None) => unreachable!(),
                };
                return fail(format!("{what} must have {bounds}, found {}", describe(value)));
            }
            match self.format {
                Some(Format::Uuid) if !uuid::is_uuid_v4(text) => return fail(format!("{what} must be a UUIDv4 string, found {}", describe(value))),
                Some(Format::DateTime) if time::parse_rfc3339(text).is_err() => {
                    return fail(format!("{what} must be an RFC 3339 date-time such as \"2026-11-24T10:15:30Z\", found {}", describe(value)));
                }
                _ => {}
            }
        }
        if let Some(number) = value.as_f64() {
            if let Some(min) = self.minimum.filter(|min| number < *min) {
                return fail(format!("{what} must be at least {min}, found {number}"));
            }
            if let Some(max) = self.maximum.filter(|max| number > *max) {
                return fail(format!("{what} must be at most {max}, found {number}"));
            }
        }
        if let Value::Object(object) = value {
            for (name, property) in object {
                let child = join(path, name);
                match (self.properties.get(name), self.additional.as_deref()) {
                    (Some(schema), _) => schema.check(property, &child)?,
                    (None, Some(Additional::Each(schema))) => schema.check(property, &child)?,
                    (None, Some(Additional::Allowed(false))) => return Err((child, format!("`{name}` is not allowed here"))),
                    (None, _) => {}
                }
            }
        }
        if let (Value::Array(items), Some(schema)) = (value, &self.items) {
            for (i, item) in items.iter().enumerate() {
                schema.check(item, &format!("{path}[{i}]"))?;
            }
        }
        Ok(())
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

fn has_type(value: &Value, t: &str) -> bool {
    match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => false,
    }
}

fn article(t: &str) -> String {
    match t {
        "object" | "array" | "integer" => format!("an {t}"),
        "null" => "null".into(),
        _ => format!("a {t}"),
    }
}

/// A value as an error message shows it: short, with its kind.
fn describe(value: &Value) -> String {
    let text = value.to_string();
    let shown: String = text.chars().take(60).collect();
    let shown = if shown.len() < text.len() { format!("{shown}…") } else { shown };
    match value {
        Value::Object(_) => "an object".into(),
        Value::Array(_) => "an array".into(),
        Value::Null => "null".into(),
        Value::Bool(_) => format!("the boolean {shown}"),
        Value::Number(_) => format!("the number {shown}"),
        Value::String(_) => shown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set() -> SchemaSet {
        let mut files = BTreeMap::new();
        files.insert("standard.json".to_string(), json!({ "required": ["user_id"], "properties": { "user_id": { "type": "string", "format": "uuid" } } }));
        files.insert(
            "scene_locked.json".to_string(),
            json!({ "allOf": [{ "$ref": "standard.json" }], "required": ["score"], "properties": {
                "event": { "const": "scene_locked" },
                "score": { "type": "number", "minimum": 0, "maximum": 1 },
                "mode": { "type": "string", "enum": ["a", "b"] },
                "tags": { "type": "object", "additionalProperties": { "type": "string" } } } }),
        );
        SchemaSet::compile(&files).unwrap()
    }

    const USER: &str = "6f1c2d3e-4b5a-4c7d-8e9f-0123456789ab";

    #[test]
    fn codes_properties_and_messages() {
        let set = set();
        assert_eq!(set.validate(&json!({ "event": "scene_locked", "user_id": USER, "score": 0.5 })), Ok(()));
        let fail = |v| set.validate(&v).unwrap_err();
        let f = fail(json!({ "event": "scene_locked", "score": 0.5 }));
        assert_eq!((f.code, f.property.as_deref()), ("missing_property", Some("user_id")));
        let f = fail(json!({ "event": "scene_locked", "user_id": USER, "score": 1.5 }));
        assert_eq!((f.code, f.property.as_deref(), f.message.as_str()), ("invalid_property", Some("score"), "`score` must be at most 1, found 1.5"));
        let f = fail(json!({ "event": "scene_locked", "user_id": "u-1", "score": 0 }));
        assert!(f.message.contains("UUIDv4"), "{}", f.message);
        let f = fail(json!({ "event": "scene_locked", "user_id": USER, "score": 0, "mode": "c" }));
        assert_eq!(f.message, "`mode` must be one of a, b; found \"c\"");
        let f = fail(json!({ "event": "scene_locked", "user_id": USER, "score": 0, "tags": { "x": 1 } }));
        assert_eq!(f.property.as_deref(), Some("tags.x"));
        assert_eq!(fail(json!({ "event": "nope", "user_id": USER })).code, "unknown_event");
        assert_eq!(fail(json!({ "user_id": USER })).code, "missing_property");
        assert_eq!(fail(json!({ "event": 7 })).code, "invalid_property");
        assert_eq!(fail(json!([1])).code, "malformed");
    }

    #[test]
    fn unsupported_keywords_and_bad_refs_are_refused() {
        let mut files = BTreeMap::new();
        files.insert("x.json".to_string(), json!({ "properties": { "event": { "const": "x" }, "a": { "pattern": "^a" } } }));
        assert!(SchemaSet::compile(&files).unwrap_err().contains("\"pattern\" is not supported"));
        files.insert("x.json".to_string(), json!({ "allOf": [{ "$ref": "missing.json" }], "properties": { "event": { "const": "x" } } }));
        assert!(SchemaSet::compile(&files).unwrap_err().contains("no such file"));
    }
}
