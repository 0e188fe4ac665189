//! `route`: chooses each event's output subject from templates filled with
//! properties of the event; drops the events the config names; publishes
//! copies of some events on further subjects.
//!
//! Plugins decide subjects; the host only publishes. Routing never changes the
//! body: it answers `reroute`, so only the new subject crosses back, and it
//! reads only the properties it needs rather than the whole event.
//!
//! Stage config:
//! ```toml
//! config = { subject = "storyforge.analytics.{event}",
//!            rules = [{ when = { analytics_opt_out = true }, subject = "storyforge.anonymous.{event}" }],
//!            copies = [{ when = { event = "safety_setting_changed" }, subject = "storyforge.audit.{event}" }],
//!            drop = ["heartbeat"] }
//! ```
//! The first rule whose `when` properties all equal the event's goes; else
//! `subject`. Every matching copy adds an event. `{name}` is replaced by the
//! string or number value of property `name`; an event without it is
//! rejected with `missing_property`.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sluice_plugin::json::{self, Properties};
use sluice_plugin::{ConfigError, Event, Outcome, Transform};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The output subject when no rule matches, with `{property}` placeholders.
    subject: String,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    copies: Vec<Rule>,
    /// Events whose `property` has one of these values are dropped.
    #[serde(default)]
    drop: Vec<String>,
    /// The property `drop` looks at.
    #[serde(default = "default_property")]
    property: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    when: HashMap<String, Value>,
    subject: String,
}

fn default_property() -> String {
    "event".into()
}

/// Whether a property's JSON text is this value.
fn equals(raw: &RawValue, expected: &Value) -> bool {
    match expected {
        Value::String(expected) => json::string(raw.get()).is_some_and(|s| s == *expected),
        Value::Bool(expected) => raw.get() == if *expected { "true" } else { "false" },
        Value::Null => raw.get() == "null",
        _ => serde_json::from_str::<Value>(raw.get()).is_ok_and(|value| value == *expected),
    }
}

fn matches(properties: &Properties, rule: &Rule) -> bool {
    rule.when.iter().all(|(name, expected)| properties.get(name).is_some_and(|raw| equals(raw, expected)))
}

pub struct Route {
    config: Config,
}

impl Transform for Route {
    const NAME: &'static str = "route";
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        let empty = |list: &str, rules: &[_]| rules.iter().position(|r: &Rule| r.subject.is_empty()).map(|n| format!("{list}[{n}].subject"));
        let empty =
            config.subject.is_empty().then(|| "subject".to_string()).or_else(|| empty("rules", &config.rules)).or_else(|| empty("copies", &config.copies));
        if let Some(at) = empty {
            return Err(ConfigError::at(&at, "a subject must not be empty"));
        }
        Ok(Self { config })
    }

    fn process(&mut self, event: Event) -> Outcome {
        route(&self.config, event)
    }
}

sluice_plugin::transform!(Route);

fn route(config: &Config, event: Event) -> Outcome {
    let decision = match Properties::parse(&event.body) {
        Ok(properties) => decide(config, &properties),
        Err(message) => Err(Outcome::reject("malformed", None, message)),
    };
    match decision {
        Err(outcome) => outcome,
        Ok(Decision::Drop(reason)) => Outcome::Drop(reason),
        Ok(Decision::Route { subject, copies }) if copies.is_empty() => Outcome::Reroute(subject),
        Ok(Decision::Route { subject, copies }) => {
            let mut events: Vec<Event> = copies.into_iter().map(|copy| Event { subject: copy, ..event.clone() }).collect();
            events.insert(0, Event { subject, ..event });
            Outcome::Replace(events)
        }
    }
}

enum Decision {
    Drop(String),
    Route { subject: String, copies: Vec<String> },
}

fn decide(config: &Config, properties: &Properties) -> Result<Decision, Outcome> {
    if let Some(value) = properties.str(&config.property)
        && config.drop.iter().any(|d| *d == value)
    {
        return Ok(Decision::Drop(format!("{} = {value}", config.property)));
    }
    let template = config.rules.iter().find(|r| matches(properties, r)).map_or(&config.subject, |r| &r.subject);
    let subject = fill(template, properties)?;
    let copies = config.copies.iter().filter(|c| matches(properties, c)).map(|c| fill(&c.subject, properties)).collect::<Result<_, _>>()?;
    Ok(Decision::Route { subject, copies })
}

/// Replaces each `{name}` in `template` by the value of property `name`.
fn fill(template: &str, properties: &Properties) -> Result<String, Outcome> {
    let mut subject = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        subject.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            subject.push_str(&rest[open..]);
            return Ok(subject);
        };
        let name = &rest[open + 1..open + close];
        let token = match properties.get(name).map(RawValue::get) {
            Some(text) if text.starts_with('"') => json::string(text).unwrap_or_default(),
            Some(number) if properties.f64(name).is_some() => Cow::Borrowed(number),
            Some(_) => return Err(Outcome::reject("invalid_property", Some(name), format!("`{name}` must be a string or number to route on"))),
            None => return Err(Outcome::reject("missing_property", Some(name), format!("`{name}` is needed to choose the subject"))),
        };
        if token.is_empty() || token.contains(|c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control()) {
            return Err(Outcome::reject("invalid_property", Some(name), format!("`{name}` = {token:?} cannot be a subject token")));
        }
        subject.push_str(&token);
        rest = &rest[open + close + 1..];
    }
    subject.push_str(rest);
    Ok(subject)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_plugin::testing::{Harness, event};

    use super::*;

    fn storyforge() -> Harness<Route> {
        Harness::new(json!({
            "subject": "analytics.{event}",
            "rules": [{ "when": { "analytics_opt_out": true }, "subject": "anonymous.{event}" }],
            "copies": [{ "when": { "event": "safety_setting_changed" }, "subject": "audit.{event}" }],
            "drop": ["heartbeat"],
        }))
        .unwrap()
    }

    #[test]
    fn routes_by_rule_copies_and_drops() {
        let mut route = storyforge();
        assert_eq!(route.process(event("raw.1", &json!({ "event": "scene_locked" }))), Outcome::Reroute("analytics.scene_locked".into()));
        let anonymous = route.process(event("raw.1", &json!({ "event": "scene_locked", "analytics_opt_out": true })));
        assert_eq!(anonymous, Outcome::Reroute("anonymous.scene_locked".into()));
        let Outcome::Replace(events) = route.process(event("raw.1", &json!({ "event": "safety_setting_changed" }))) else { panic!("copied") };
        let subjects: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
        assert_eq!(subjects, ["analytics.safety_setting_changed", "audit.safety_setting_changed"]);
        assert_eq!(route.process(event("raw.1", &json!({ "event": "heartbeat" }))), Outcome::Drop("event = heartbeat".into()));
    }

    #[test]
    fn refuses_what_cannot_be_a_subject_token() {
        let mut route = storyforge();
        let refused = route.process(event("raw.1", &json!({ "event": "a.b" })));
        assert_eq!(refused, Outcome::reject("invalid_property", Some("event"), "`event` = \"a.b\" cannot be a subject token"));
        let missing = route.process(event("raw.1", &json!({ "n": 1 })));
        assert_eq!(missing, Outcome::reject("missing_property", Some("event"), "`event` is needed to choose the subject"));
        assert_eq!(Harness::<Route>::new(json!({ "subject": "" })).err().unwrap().to_string(), "`subject`: a subject must not be empty");
        let rule = json!({ "subject": "out", "rules": [{ "when": { "event": "a" }, "subject": "a" }, { "when": { "event": "b" }, "subject": "" }] });
        assert_eq!(Harness::<Route>::new(rule).err().unwrap().to_string(), "`rules[1].subject`: a subject must not be empty");
    }
}
