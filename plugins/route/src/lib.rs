//! `route`: chooses each event's output subject from a template filled with
//! properties of the event, and drops the events the config names.
//!
//! Plugins decide subjects; the host only publishes. Routing never changes the
//! body, so it answers `reroute`: only the new subject crosses back.
//!
//! Stage config:
//! ```toml
//! config = { subject = "demo.out.{event}", drop = ["heartbeat"], property = "event" }
//! ```
//! `{name}` in `subject` is replaced by the string (or number) value of the
//! property `name`; an event without it is rejected with `missing_property`.

use std::cell::RefCell;

use serde::Deserialize;
use serde_json::Value;

wit_bindgen::generate!({ world: "transform", path: "../../wit" });

use sluice::plugin::types::Rejection;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The output subject, with `{property}` placeholders.
    subject: String,
    /// Events whose `property` has one of these values are dropped.
    #[serde(default)]
    drop: Vec<String>,
    /// The property `drop` looks at.
    #[serde(default = "default_property")]
    property: String,
}

fn default_property() -> String {
    "event".into()
}

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

struct Route;

impl Guest for Route {
    fn init(config: String) -> Result<(), String> {
        let parsed: Config =
            serde_json::from_str(&config).map_err(|e| format!("invalid route config: {e}"))?;
        if parsed.subject.is_empty() {
            return Err("`subject` must not be empty".into());
        }
        CONFIG.with(|c| *c.borrow_mut() = Some(parsed));
        Ok(())
    }

    fn process(batch: Vec<Event>) -> Vec<Outcome> {
        CONFIG.with(|config| match &*config.borrow() {
            Some(config) => batch.into_iter().map(|event| route(config, event)).collect(),
            None => batch.iter().map(|_| reject("not_initialised", None, "init was not called".into())).collect(),
        })
    }
}

fn route(config: &Config, event: Event) -> Outcome {
    let object = match serde_json::from_slice::<Value>(&event.body) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return reject("malformed", None, "expected a JSON object".into()),
        Err(e) => return reject("malformed", None, format!("body is not valid JSON: {e}")),
    };
    if let Some(Value::String(value)) = object.get(&config.property) {
        if config.drop.iter().any(|d| d == value) {
            return Outcome::Drop(format!("{} = {value}", config.property));
        }
    }
    match fill(&config.subject, &object) {
        Ok(subject) => Outcome::Reroute(subject),
        Err(outcome) => outcome,
    }
}

/// Replaces each `{name}` in `template` by the value of property `name`.
fn fill(template: &str, object: &serde_json::Map<String, Value>) -> Result<String, Outcome> {
    let mut subject = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        subject.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            subject.push_str(&rest[open..]);
            return Ok(subject);
        };
        let name = &rest[open + 1..open + close];
        let token = match object.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => return Err(reject("invalid_property", Some(name), format!("`{name}` must be a string or number to route on"))),
            None => return Err(reject("missing_property", Some(name), format!("`{name}` is needed to choose the subject"))),
        };
        if token.is_empty() || token.contains(|c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace()) {
            return Err(reject("invalid_property", Some(name), format!("`{name}` = {token:?} cannot be a subject token")));
        }
        subject.push_str(&token);
        rest = &rest[open + close + 1..];
    }
    subject.push_str(rest);
    Ok(subject)
}

fn reject(code: &str, property: Option<&str>, message: String) -> Outcome {
    Outcome::Reject(Rejection { code: code.into(), property: property.map(str::to_string), message })
}

export!(Route);
