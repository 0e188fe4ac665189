//! JSON helpers for plugins that read events as `serde_json` values.

use serde_json::{Map, Value};

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
