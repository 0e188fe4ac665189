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
use std::cell::RefCell;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

wit_bindgen::generate!({ world: "transform", path: "../../wit" });

use sluice::plugin::types::Rejection;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
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

/// The event's top-level properties, each left unparsed until needed.
#[derive(Deserialize)]
struct Properties<'a>(#[serde(borrow)] HashMap<Cow<'a, str>, &'a RawValue>);

impl Properties<'_> {
    fn get(&self, name: &str) -> Option<Value> {
        self.0.get(name).and_then(|raw| serde_json::from_str(raw.get()).ok())
    }

    fn matches(&self, rule: &Rule) -> bool {
        rule.when.iter().all(|(name, expected)| self.get(name).as_ref() == Some(expected))
    }
}

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

struct Route;

impl Guest for Route {
    fn init(config: String) -> Result<(), String> {
        let parsed: Config = serde_json::from_str(&config).map_err(|e| format!("invalid route config: {e}"))?;
        if parsed.subject.is_empty() || parsed.rules.iter().chain(&parsed.copies).any(|r| r.subject.is_empty()) {
            return Err("every `subject` must be non-empty".into());
        }
        CONFIG.with(|c| *c.borrow_mut() = Some(parsed));
        Ok(())
    }

    fn process(batch: Vec<Event>) -> Vec<Outcome> {
        CONFIG.with(|config| match &*config.borrow() {
            Some(config) => batch.into_iter().map(|event| route(config, event)).collect(),
            None => batch.iter().map(|_| reject("malformed", None, "the route stage was not initialised".into())).collect(),
        })
    }
}

fn route(config: &Config, event: Event) -> Outcome {
    let decision = match serde_json::from_slice::<Properties>(&event.body) {
        Ok(properties) => decide(config, &properties),
        // Keys with escapes cannot be borrowed; an owned parse handles them.
        Err(_) => match serde_json::from_slice::<HashMap<String, Box<RawValue>>>(&event.body) {
            Ok(owned) => decide(config, &Properties(owned.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), v.as_ref())).collect())),
            Err(e) => Err(reject("malformed", None, format!("expected a JSON object: {e}"))),
        },
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
    if let Some(Value::String(value)) = properties.get(&config.property)
        && config.drop.contains(&value)
    {
        return Ok(Decision::Drop(format!("{} = {value}", config.property)));
    }
    let template = config.rules.iter().find(|r| properties.matches(r)).map_or(&config.subject, |r| &r.subject);
    let subject = fill(template, properties)?;
    let copies = config.copies.iter().filter(|c| properties.matches(c)).map(|c| fill(&c.subject, properties)).collect::<Result<_, _>>()?;
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
        let token = match properties.get(name) {
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => return Err(reject("invalid_property", Some(name), format!("`{name}` must be a string or number to route on"))),
            None => return Err(reject("missing_property", Some(name), format!("`{name}` is needed to choose the subject"))),
        };
        if token.is_empty() || token.contains(|c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control()) {
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
