//! An event as `validate` reads it: a tree that borrows its strings from the
//! body and keeps objects as lists in the order they came, so reading an
//! event costs a few allocations rather than one per string and property.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use sluice_plugin::json::Names;

#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

/// A JSON number as serde_json reads it: an integer when it has no
/// fraction or exponent and fits, else a float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i64),
    UInt(u64),
    Float(f64),
}

impl Number {
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Int(n) => n as f64,
            Number::UInt(n) => n as f64,
            Number::Float(f) => f,
        }
    }

    /// Whether its value is a whole number (`1.0` is).
    pub fn is_integer(self) -> bool {
        match self {
            Number::Int(_) | Number::UInt(_) => true,
            Number::Float(f) => f.is_finite() && f.fract() == 0.0,
        }
    }

    /// Equal as numbers, whatever their form: `1` is `1.0`.
    pub fn equals(self, other: Number) -> bool {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => a == b,
            (Number::UInt(a), Number::UInt(b)) => a == b,
            (Number::Int(a), Number::UInt(b)) | (Number::UInt(b), Number::Int(a)) => u64::try_from(a).is_ok_and(|a| a == b),
            (a, b) => a.as_f64() == b.as_f64(),
        }
    }

    pub fn of(number: &serde_json::Number) -> Number {
        if let Some(n) = number.as_i64() {
            Number::Int(n)
        } else if let Some(n) = number.as_u64() {
            Number::UInt(n)
        } else {
            Number::Float(number.as_f64().unwrap_or(f64::NAN))
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Number::Int(n) => write!(f, "{n}"),
            Number::UInt(n) => write!(f, "{n}"),
            Number::Float(x) => write!(f, "{x}"),
        }
    }
}

impl<'a> Json<'a> {
    /// The body, or why it is not JSON. A name given twice in one object is
    /// refused: which of the two would the schema judge?
    pub fn parse(body: &'a [u8]) -> Result<Json<'a>, String> {
        serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))
    }

    pub fn get(&self, name: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(entries) => entries.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Equal as JSON Schema defines it (`const`, `enum`): numbers by value,
    /// objects whatever the order of their properties.
    pub fn equals(&self, other: &Value) -> bool {
        match (self, other) {
            (Json::Null, Value::Null) => true,
            (Json::Bool(a), Value::Bool(b)) => a == b,
            (Json::Number(a), Value::Number(b)) => a.equals(Number::of(b)),
            (Json::String(a), Value::String(b)) => a == b,
            (Json::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.equals(b)),
            (Json::Object(a), Value::Object(b)) => a.len() == b.len() && a.iter().all(|(name, value)| b.get(name.as_ref()).is_some_and(|b| value.equals(b))),
            _ => false,
        }
    }

    /// As a `serde_json` value, for messages.
    pub fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(Number::Int(n)) => Value::from(*n),
            Json::Number(Number::UInt(n)) => Value::from(*n),
            Json::Number(Number::Float(f)) => Value::from(*f),
            Json::String(s) => Value::String(s.to_string()),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Object(entries) => Value::Object(entries.iter().map(|(n, v)| (n.to_string(), v.to_value())).collect()),
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(Number::Int(n)))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(i64::try_from(n).map_or(Number::UInt(n), Number::Int)))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Json<'de>, E> {
        Ok(Json::Number(Number::Float(f)))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_string())))
    }
    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Json<'de>, A::Error> {
        let mut list = Vec::with_capacity(items.size_hint().unwrap_or(0));
        while let Some(item) = items.next_element()? {
            list.push(item);
        }
        Ok(Json::Array(list))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut entries: Vec<(Cow<'de, str>, Json<'de>)> = Vec::new();
        let mut names = Names::default();
        while let Some(Json::String(name)) = map.next_key::<Json<'de>>()? {
            if !names.insert(name.clone()) {
                return Err(de::Error::custom(format_args!("the property {name:?} appears twice in one object")));
            }
            entries.push((name, map.next_value()?));
        }
        Ok(Json::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn strings_are_borrowed_unless_escaped_and_numbers_equal_by_value() {
        let body = br#"{"a": "plain", "b": "esc\"aped", "n": 1, "f": 1.0, "big": 18446744073709551615}"#;
        let event = Json::parse(body).unwrap();
        assert!(matches!(event.get("a"), Some(Json::String(Cow::Borrowed("plain")))));
        assert!(matches!(event.get("b"), Some(Json::String(Cow::Owned(s))) if s == "esc\"aped"));
        assert!(event.get("n").unwrap().equals(&json!(1.0)) && event.get("f").unwrap().equals(&json!(1)));
        assert!(!event.get("n").unwrap().equals(&json!(true)));
        assert!(event.get("big").unwrap().equals(&json!(u64::MAX)));
        assert!(Json::parse(br#"{"b": 1, "a": [1, {"x": null}]}"#).unwrap().equals(&json!({ "a": [1.0, { "x": null }], "b": 1 })));
        assert!(Json::parse(br#"{"a": 1, "a": 2}"#).unwrap_err().contains("appears twice"));
        let wide = |last: &str| format!("{{{},\"{last}\":0}}", (0..100).map(|n| format!("\"k{n}\":{n}")).collect::<Vec<_>>().join(","));
        assert!(Json::parse(wide("k7").as_bytes()).unwrap_err().contains("\"k7\" appears twice"));
        assert!(Json::parse(wide("last").as_bytes()).unwrap().get("last").is_some());
    }
}
