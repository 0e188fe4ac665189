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

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_plugin::{ConfigError, Event, Outcome, Transform};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Properties every event must have.
    #[serde(default)]
    require: Vec<String>,
    /// Properties set on every event, replacing any value already there.
    #[serde(default)]
    set: Map<String, Value>,
}

pub struct Tag {
    config: Config,
}

impl Transform for Tag {
    const NAME: &'static str = "tag";
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        Ok(Self { config })
    }

    fn process(&mut self, mut event: Event) -> Outcome {
        let mut object = match sluice_plugin::json::object(&event.body) {
            Ok(object) => object,
            Err(message) => return Outcome::reject("malformed", None, message),
        };
        if let Some(missing) = self.config.require.iter().find(|p| !object.contains_key(p.as_str())) {
            return Outcome::reject("missing_property", Some(missing), format!("required property `{missing}` is absent"));
        }
        if self.config.set.is_empty() {
            return Outcome::Keep;
        }
        for (name, value) in &self.config.set {
            object.insert(name.clone(), value.clone());
        }
        match serde_json::to_vec(&object) {
            Ok(body) => {
                event.body = body;
                Outcome::Replace(vec![event])
            }
            Err(e) => Outcome::reject("internal", None, format!("could not serialise the tagged event: {e}")),
        }
    }
}

sluice_plugin::transform!(Tag);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_plugin::testing::{Harness, body, event};

    use super::*;

    #[test]
    fn sets_properties_and_requires_others() {
        let mut tag = Harness::<Tag>::new(json!({ "require": ["event"], "set": { "env": "demo" } })).unwrap();
        let Outcome::Replace(events) = tag.process(event("in.a", &json!({ "event": "a", "env": "prod" }))) else { panic!("replaced") };
        assert_eq!(body(&events[0]), json!({ "event": "a", "env": "demo" }));
        assert_eq!(events[0].subject, "in.a");
        assert_eq!(tag.process(event("in.a", &json!({ "n": 1 }))), Outcome::reject("missing_property", Some("event"), "required property `event` is absent"));
    }

    /// The Python and JavaScript `tag` (plugins/tag-py, plugins/tag-js) assert the same bytes.
    #[test]
    fn writes_json_keys_sorted_with_floats_in_their_shortest_form() {
        let mut tag = Harness::<Tag>::new(json!({ "set": { "z": 1.0 } })).unwrap();
        let body = r#"{"b":1.0,"a":18446744073709551615,"c":1e300,"d":0.00001,"e":"\u00e9\n","f":-0.0,"g":36893488147419103232,"h":[1.5,-3]}"#;
        let input = Event { subject: "in.a".into(), headers: Vec::new(), body: body.as_bytes().to_vec() };
        let Outcome::Replace(events) = tag.process(input) else { panic!("replaced") };
        let expected = r#"{"a":18446744073709551615,"b":1.0,"c":1e+300,"d":0.00001,"e":"é\n","f":-0.0,"g":3.6893488147419103e+19,"h":[1.5,-3],"z":1.0}"#;
        assert_eq!(String::from_utf8(events[0].body.clone()).unwrap(), expected);
    }

    #[test]
    fn keeps_an_event_it_does_not_change_and_refuses_a_typo_in_its_config() {
        let mut tag = Harness::<Tag>::new(json!({ "require": ["event"] })).unwrap();
        assert_eq!(tag.process(event("in.a", &json!({ "event": "a" }))), Outcome::Keep);
        let refused = Harness::<Tag>::new(json!({ "requires": ["event"] })).err().unwrap().to_string();
        assert!(refused.starts_with("`requires`: unknown field `requires`"), "{refused}");
    }
}
