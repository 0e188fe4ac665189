//! The part of JSON Schema (draft 2020-12) that `validate` implements,
//! compiled once at `init`. A keyword this module does not implement is an
//! error at `init`, never silently ignored: a schema means what it says.
//! What it implements passes its part of the official JSON Schema Test
//! Suite (`tests/suite.rs`).
//!
//! Assertions: `type`, `enum`, `const`, `required`, `properties`,
//! `additionalProperties`, `items`, `allOf`, `$ref` (to another file of the
//! folder), `format`, `minimum`, `maximum`, `minLength`, `maxLength`; any
//! subschema may be `true` or `false`. Formats: `date-time` (RFC 3339, a leap
//! second only at 23:59:60 UTC), `uuid` (RFC 9562: any version), and
//! `uuid-v4`, a UUID of version 4 and the RFC's variant, which StoryForge's
//! ids are. Annotations, which assert nothing: `$schema`, `$id`, `$comment`,
//! `title`, `description`, `default`, `examples`, `deprecated`, `readOnly`,
//! `writeOnly`.
//!
//! A failure names the property by its path: `a.b` for property `b` of `a`,
//! `a[2]` for an item, and a name that could read otherwise (with `.`, `[`,
//! `]`, `"`, or empty) as a JSON string in brackets: `tags["a.b"]`.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;
use sluice_plugin::{time, uuid};

use crate::json::Json;

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

/// A compiled schema: `true` (anything), `false` (nothing), or rules.
#[derive(Debug)]
pub enum Schema {
    Bool(bool),
    Rules(Box<Rules>),
}

#[derive(Debug, Default)]
pub struct Rules {
    types: Vec<Type>,
    enumeration: Option<Vec<Value>>,
    constant: Option<Value>,
    required: Vec<String>,
    properties: BTreeMap<String, Schema>,
    additional: Option<Schema>,
    items: Option<Schema>,
    all_of: Vec<Schema>,
    format: Option<Format>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    min_length: Option<usize>,
    max_length: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Type {
    Object,
    Array,
    String,
    Number,
    Integer,
    Boolean,
    Null,
}

impl Type {
    const ALL: [(&'static str, Type); 7] = [
        ("object", Type::Object),
        ("array", Type::Array),
        ("string", Type::String),
        ("number", Type::Number),
        ("integer", Type::Integer),
        ("boolean", Type::Boolean),
        ("null", Type::Null),
    ];

    fn named(name: &str) -> Option<Type> {
        Type::ALL.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }

    fn name(self) -> &'static str {
        Type::ALL.iter().find(|(_, t)| *t == self).map_or("", |(n, _)| n)
    }

    fn of(self, value: &Json) -> bool {
        match (self, value) {
            (Type::Object, Json::Object(_)) | (Type::Array, Json::Array(_)) | (Type::String, Json::String(_)) => true,
            (Type::Number, Json::Number(_)) | (Type::Boolean, Json::Bool(_)) | (Type::Null, Json::Null) => true,
            (Type::Integer, Json::Number(n)) => n.is_integer(),
            _ => false,
        }
    }

    fn with_article(self) -> String {
        match self {
            Type::Object | Type::Array | Type::Integer => format!("an {}", self.name()),
            Type::Null => "null".into(),
            _ => format!("a {}", self.name()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Format {
    DateTime,
    Uuid,
    UuidV4,
}

const FORMATS: &str = "date-time, uuid, uuid-v4";

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

    /// Checks an event. A required property missing at the top level (or
    /// in an `allOf` part of it) is reported first, as `missing_property`;
    /// then the first other failure, in the order of the event's properties.
    pub fn validate(&self, event: &Json) -> Result<(), Failure> {
        let Json::Object(_) = event else {
            return Err(Failure::new("malformed", None, "an event must be a JSON object"));
        };
        let name = match event.get("event") {
            None => return Err(Failure::new("missing_property", Some("event".into()), "`event` is required: it names the event")),
            Some(Json::String(name)) => name,
            Some(other) => return Err(Failure::new("invalid_property", Some("event".into()), format!("`event` must be a string, found {}", describe(other)))),
        };
        let Some(schema) = self.events.get(name.as_ref()) else {
            return Err(Failure::new("unknown_event", Some("event".into()), format!("{name:?} is not an event of the taxonomy")));
        };
        if let Some(property) = schema.first_missing(event) {
            return Err(Failure::new(
                "missing_property",
                Some(Path::Property(&Path::Event, property).to_string()),
                format!("`{property}` is required for {name}"),
            ));
        }
        schema.check(event, &Path::Event)
    }
}

/// How deep `$ref`s may nest before the schema is taken to be circular.
const MAX_DEPTH: usize = 16;

fn compile(value: &Value, files: &BTreeMap<String, Value>, file: &str, depth: usize) -> Result<Schema, String> {
    if depth > MAX_DEPTH {
        return Err("$ref nests too deep (is it circular?)".into());
    }
    let object = match value {
        Value::Bool(b) => return Ok(Schema::Bool(*b)),
        Value::Object(object) => object,
        _ => return Err("a schema must be an object, true or false".into()),
    };
    let sub = |v: &Value| compile(v, files, file, depth);
    let mut rules = Rules::default();
    for (keyword, v) in object {
        match keyword.as_str() {
            "$schema" | "$id" | "$comment" | "title" | "description" | "default" | "examples" | "deprecated" | "readOnly" | "writeOnly" => {}
            "type" => {
                let names: Vec<&str> = match v {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().map(|t| t.as_str().ok_or("`type` lists strings")).collect::<Result<_, _>>()?,
                    _ => return Err("`type` must be a string or a list of strings".into()),
                };
                rules.types = names.iter().map(|t| Type::named(t).ok_or_else(|| format!("unknown type {t:?}"))).collect::<Result<_, _>>()?;
            }
            "enum" => rules.enumeration = Some(v.as_array().ok_or("`enum` must be a list")?.clone()),
            "const" => rules.constant = Some(v.clone()),
            "required" => {
                rules.required = v
                    .as_array()
                    .ok_or("`required` must be a list")?
                    .iter()
                    .map(|r| r.as_str().map(str::to_string).ok_or("`required` lists strings"))
                    .collect::<Result<_, _>>()?
            }
            "properties" => {
                for (name, property) in v.as_object().ok_or("`properties` must be an object")? {
                    rules.properties.insert(name.clone(), sub(property).map_err(|e| format!("property {name}: {e}"))?);
                }
            }
            "additionalProperties" => rules.additional = Some(sub(v)?),
            "items" => {
                if v.is_array() {
                    return Err("`items` takes one schema in draft 2020-12 (a list of schemas is `prefixItems`, which validate does not support)".into());
                }
                rules.items = Some(sub(v)?);
            }
            "allOf" => {
                let parts = v.as_array().filter(|parts| !parts.is_empty()).ok_or("`allOf` must be a list of at least one schema")?;
                for part in parts {
                    rules.all_of.push(sub(part)?);
                }
            }
            "$ref" => {
                let target = v.as_str().ok_or("`$ref` must be a string")?;
                let document =
                    files.get(target).ok_or_else(|| format!("$ref {target:?}: no such file in the schema folder (a $ref names another file of it)"))?;
                rules.all_of.push(compile(document, files, target, depth + 1).map_err(|e| format!("{target}: {e}"))?);
            }
            "format" => {
                rules.format = Some(match v.as_str() {
                    Some("date-time") => Format::DateTime,
                    Some("uuid") => Format::Uuid,
                    Some("uuid-v4") => Format::UuidV4,
                    Some(other) => return Err(format!("unsupported format {other:?} (supported: {FORMATS})")),
                    None => return Err("`format` must be a string".into()),
                })
            }
            "minimum" => rules.minimum = Some(v.as_f64().ok_or("`minimum` must be a number")?),
            "maximum" => rules.maximum = Some(v.as_f64().ok_or("`maximum` must be a number")?),
            "minLength" => rules.min_length = Some(length(v, "minLength")?),
            "maxLength" => rules.max_length = Some(length(v, "maxLength")?),
            other => return Err(format!("keyword {other:?} is not supported by sluice's validate plugin (in {file})")),
        }
    }
    Ok(Schema::Rules(Box::new(rules)))
}

/// A length bound: a whole number not below 0 (`2.0` is one).
fn length(v: &Value, keyword: &str) -> Result<usize, String> {
    let whole = v.as_u64().or_else(|| v.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1e15).map(|f| f as u64));
    whole.map(|n| n as usize).ok_or_else(|| format!("`{keyword}` must be a whole number, 0 or more"))
}

impl Schema {
    /// The first required property absent from the event, in this schema or
    /// an `allOf` part of it (not below the top level).
    fn first_missing<'s>(&'s self, event: &Json) -> Option<&'s str> {
        let Schema::Rules(rules) = self else { return None };
        rules.all_of.iter().find_map(|part| part.first_missing(event)).or_else(|| rules.missing(event))
    }

    /// Checks `value`; a failure names the property path and says what was wrong.
    fn check(&self, value: &Json, path: &Path) -> Result<(), Failure> {
        match self {
            Schema::Bool(true) => Ok(()),
            Schema::Bool(false) => Err(path.invalid(match path {
                Path::Event => "the event is not allowed by its schema".to_string(),
                _ => format!("{} is not allowed here", path.what()),
            })),
            Schema::Rules(rules) => rules.check(value, path),
        }
    }
}

impl Rules {
    fn missing(&self, value: &Json) -> Option<&str> {
        let Json::Object(entries) = value else { return None };
        self.required.iter().find(|r| !entries.iter().any(|(name, _)| name == r.as_str())).map(String::as_str)
    }

    fn check(&self, value: &Json, path: &Path) -> Result<(), Failure> {
        for part in &self.all_of {
            part.check(value, path)?;
        }
        // Paths and messages are written only for a failure.
        let fail = |message: String| Err(path.invalid(message));
        let what = || path.what();
        if !self.types.is_empty() && !self.types.iter().any(|t| t.of(value)) {
            let types: Vec<String> = self.types.iter().map(|t| t.with_article()).collect();
            return fail(format!("{} must be {}, found {}", what(), types.join(" or "), describe(value)));
        }
        if let Some(constant) = &self.constant
            && !value.equals(constant)
        {
            return fail(format!("{} must be {constant}, found {}", what(), describe(value)));
        }
        if let Some(allowed) = &self.enumeration
            && !allowed.iter().any(|a| value.equals(a))
        {
            let list: Vec<String> = allowed.iter().map(|a| a.as_str().map_or_else(|| a.to_string(), str::to_string)).collect();
            return fail(format!("{} must be one of {}; found {}", what(), list.join(", "), describe(value)));
        }
        match value {
            Json::String(text) => self.check_string(text, value, path)?,
            Json::Number(number) => {
                let n = number.as_f64();
                if let Some(min) = self.minimum.filter(|min| n < *min) {
                    return fail(format!("{} must be at least {min}, found {number}", what()));
                }
                if let Some(max) = self.maximum.filter(|max| n > *max) {
                    return fail(format!("{} must be at most {max}, found {number}", what()));
                }
            }
            Json::Object(entries) => {
                if let Some(name) = self.missing(value) {
                    let child = Path::Property(path, name);
                    return Err(Failure::new("missing_property", Some(child.to_string()), format!("{} is required", child.what())));
                }
                for (name, property) in entries {
                    let child = Path::Property(path, name);
                    match (self.properties.get(name.as_ref()), &self.additional) {
                        (Some(schema), _) | (None, Some(schema)) => schema.check(property, &child)?,
                        (None, None) => {}
                    }
                }
            }
            Json::Array(items) => {
                if let Some(schema) = &self.items {
                    for (i, item) in items.iter().enumerate() {
                        schema.check(item, &Path::Item(path, i))?;
                    }
                }
            }
            Json::Null | Json::Bool(_) => {}
        }
        Ok(())
    }

    fn check_string(&self, text: &str, value: &Json, path: &Path) -> Result<(), Failure> {
        let fail = |message: String| Err(path.invalid(message));
        if self.min_length.is_some() || self.max_length.is_some() {
            let length = text.chars().count();
            if self.min_length.is_some_and(|min| length < min) || self.max_length.is_some_and(|max| length > max) {
                let bounds = match (self.min_length, self.max_length) {
                    (Some(a), Some(b)) if a == b => format!("exactly {a} characters"),
                    (Some(a), Some(b)) => format!("{a} to {b} characters"),
                    (Some(a), None) => format!("at least {a} character{}", if a == 1 { "" } else { "s" }),
                    (None, Some(b)) => format!("at most {b} characters"),
                    (None, None) => unreachable!(),
                };
                return fail(format!("{} must have {bounds}, found {}", path.what(), describe(value)));
            }
        }
        match self.format {
            Some(Format::Uuid) if !uuid::is_uuid(text) => fail(format!("{} must be a UUID string, found {}", path.what(), describe(value))),
            Some(Format::UuidV4) if !uuid::is_uuid_v4(text) => fail(format!("{} must be a UUIDv4 string, found {}", path.what(), describe(value))),
            Some(Format::DateTime) if time::parse_rfc3339(text).is_err() => {
                fail(format!("{} must be an RFC 3339 date-time such as \"2026-11-24T10:15:30Z\", found {}", path.what(), describe(value)))
            }
            _ => Ok(()),
        }
    }
}

/// Where a value is in the event, written out only when it fails.
enum Path<'a> {
    Event,
    Property(&'a Path<'a>, &'a str),
    Item(&'a Path<'a>, usize),
}

impl Path<'_> {
    /// How a message names the value.
    fn what(&self) -> String {
        match self {
            Path::Event => "the event".into(),
            path => format!("`{path}`"),
        }
    }

    fn invalid(&self, message: String) -> Failure {
        Failure::new("invalid_property", (!matches!(self, Path::Event)).then(|| self.to_string()), message)
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Path::Event => Ok(()),
            Path::Property(parent, name) if name.is_empty() || name.contains(['.', '[', ']', '"']) => {
                write!(f, "{parent}[{}]", Value::String(name.to_string()))
            }
            Path::Property(Path::Event, name) => f.write_str(name),
            Path::Property(parent, name) => write!(f, "{parent}.{name}"),
            Path::Item(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// A value as an error message shows it: short, with its kind.
fn describe(value: &Json) -> String {
    let shown = |text: String| {
        let cut: String = text.chars().take(60).collect();
        if cut.len() < text.len() { format!("{cut}…") } else { cut }
    };
    match value {
        Json::Object(_) => "an object".into(),
        Json::Array(_) => "an array".into(),
        Json::Null => "null".into(),
        Json::Bool(b) => format!("the boolean {b}"),
        Json::Number(n) => format!("the number {}", shown(n.to_string())),
        Json::String(_) => shown(value.to_value().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set() -> SchemaSet {
        let mut files = BTreeMap::new();
        files.insert("standard.json".to_string(), json!({ "required": ["user_id"], "properties": { "user_id": { "type": "string", "format": "uuid-v4" } } }));
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

    fn validate(set: &SchemaSet, value: &Value) -> Result<(), Failure> {
        let body = serde_json::to_vec(value).unwrap();
        set.validate(&Json::parse(&body).unwrap())
    }

    #[test]
    fn codes_properties_and_messages() {
        let set = set();
        assert_eq!(validate(&set, &json!({ "event": "scene_locked", "user_id": USER, "score": 0.5 })), Ok(()));
        let fail = |v| validate(&set, &v).unwrap_err();
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
