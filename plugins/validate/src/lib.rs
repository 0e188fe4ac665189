//! `validate`: checks every event against the JSON Schema of its name.
//!
//! The schemas are files the platform team edits without touching Rust: one
//! `<event>.json` per event (its `properties.event.const` names it) plus any
//! shared files they reference (`{"$ref": "standard.json"}`), in the folder the
//! stage is granted (`files = "schemas/storyforge/v1"`, seen at `/files`).
//!
//! A failure is rejected with a code (`malformed`, `unknown_event`,
//! `missing_property`, `invalid_property`), the property at fault, and a
//! message a person understands. Valid events are kept: nothing is
//! re-serialised.
//!
//! Stage config: `config = { unknown_events = "reject" }` (or `"keep"`).

mod json;
mod schema;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use sluice_plugin::{ConfigError, Event, Outcome, Transform};

pub use json::Json;
pub use schema::{Failure, Schema, SchemaSet};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_unknown")]
    unknown_events: String,
    /// Where the schema files are, inside the plugin.
    #[serde(default = "default_dir")]
    schemas: String,
}

fn default_unknown() -> String {
    "reject".into()
}

fn default_dir() -> String {
    "/files".into()
}

pub struct Validator {
    schemas: SchemaSet,
    reject_unknown: bool,
}

impl Transform for Validator {
    const NAME: &'static str = "validate";
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        let reject_unknown = match config.unknown_events.as_str() {
            "reject" => true,
            "keep" => false,
            other => return Err(ConfigError::at("unknown_events", format!("must be \"reject\" or \"keep\", found {other:?}"))),
        };
        let files = read_schema_files(&config.schemas).map_err(|e| ConfigError::at("schemas", e))?;
        let schemas = SchemaSet::compile(&files).map_err(|e| ConfigError::at("schemas", e))?;
        sluice_plugin::log::debug("schemas loaded", &[("events", &schemas.event_count().to_string()), ("folder", &config.schemas)]);
        Ok(Validator { schemas, reject_unknown })
    }

    fn process(&mut self, event: Event) -> Outcome {
        self.check(&event.body)
    }
}

sluice_plugin::transform!(Validator);

impl Validator {
    fn check(&self, body: &[u8]) -> Outcome {
        let event = match Json::parse(body) {
            Ok(event) => event,
            Err(message) => return reject(Failure::new("malformed", None, message)),
        };
        match self.schemas.validate(&event) {
            Ok(()) => Outcome::Keep,
            Err(failure) if failure.code == "unknown_event" && !self.reject_unknown => Outcome::Keep,
            Err(failure) => reject(failure),
        }
    }
}

fn reject(failure: Failure) -> Outcome {
    Outcome::reject(failure.code, failure.property.as_deref(), failure.message)
}

/// Every `*.json` file of the folder, by file name.
fn read_schema_files(dir: &str) -> Result<BTreeMap<String, Value>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list the schema folder {dir}: {e} (is `files` granted to this stage?)"))?;
    let mut files = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).filter(|n| n.ends_with(".json")) else { continue };
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {name}: {e}"))?;
        let value = serde_json::from_str(&text).map_err(|e| format!("{name} is not valid JSON: {e}"))?;
        files.insert(name.to_string(), value);
    }
    if files.is_empty() {
        return Err(format!("no *.json schema in {dir}"));
    }
    Ok(files)
}
