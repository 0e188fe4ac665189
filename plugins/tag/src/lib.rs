//! `tag`: checks that every event is a JSON object carrying the required
//! properties, and sets fixed properties on it.
//!
//! A small, real transform that shows the whole contract: `keep` when nothing
//! changes (no bytes cross back), `replace` with a new body, `reject` with a
//! code and the property at fault.
//!
//! Stage config:
//! ```toml
//! config = { require = ["event"], set = { env = "demo" } }
//! ```

use std::cell::RefCell;

use serde::Deserialize;
use serde_json::{Map, Value};

wit_bindgen::generate!({ world: "transform", path: "../../wit" });

use sluice::plugin::types::Rejection;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Properties every event must have.
    #[serde(default)]
    require: Vec<String>,
    /// Properties set on every event, replacing any value already there.
    #[serde(default)]
    set: Map<String, Value>,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::default();
}

struct Tag;

impl Guest for Tag {
    fn init(config: String) -> Result<(), String> {
        let parsed: Config = serde_json::from_str(&config).map_err(|e| format!("invalid tag config: {e}"))?;
        CONFIG.with(|c| *c.borrow_mut() = parsed);
        Ok(())
    }

    fn process(batch: Vec<Event>) -> Vec<Outcome> {
        CONFIG.with(|config| {
            let config = config.borrow();
            batch.into_iter().map(|event| tag(&config, event)).collect()
        })
    }
}

fn tag(config: &Config, mut event: Event) -> Outcome {
    let mut object = match serde_json::from_slice::<Value>(&event.body) {
        Ok(Value::Object(object)) => object,
        Ok(other) => return reject("malformed", None, format!("expected a JSON object, found {}", kind(&other))),
        Err(e) => return reject("malformed", None, format!("body is not valid JSON: {e}")),
    };
    if let Some(missing) = config.require.iter().find(|p| !object.contains_key(p.as_str())) {
        return reject("missing_property", Some(missing), format!("required property `{missing}` is absent"));
    }
    if config.set.is_empty() {
        return Outcome::Keep;
    }
    for (name, value) in &config.set {
        object.insert(name.clone(), value.clone());
    }
    match serde_json::to_vec(&object) {
        Ok(body) => {
            event.body = body;
            Outcome::Replace(vec![event])
        }
        Err(e) => reject("internal", None, format!("could not serialise the tagged event: {e}")),
    }
}

fn reject(code: &str, property: Option<&String>, message: String) -> Outcome {
    Outcome::Reject(Rejection { code: code.into(), property: property.cloned(), message })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

export!(Tag);
