//! `redact`: takes personal data out of StoryForge events before they reach
//! analytics.
//!
//! - IP properties (`ip` and any the config lists): an IPv4 address keeps its
//!   first three octets (`203.0.113.42` → `203.0.113.0`), an IPv6 address its
//!   first 48 bits. A value that is not an IP address is removed.
//! - Hashed properties (`parameters` of `scene_prompt_submitted`, `prompt` of
//!   any event): replaced by `<name>_hash`, the hex HMAC-SHA256 of the value's
//!   canonical JSON under the key in `STORYFORGE_HASH_KEY`, so equal values
//!   always give equal hashes. The text itself never leaves the pipeline.
//! - Free text (`comment` and any the config lists): e-mail addresses, phone
//!   numbers and IP addresses are masked.
//! - Opt-out: an event with `analytics_opt_out: true` loses every identifying
//!   property (`user_id`, `session_id`, `ip`, free text, anything listed).
//!
//! An event with nothing to redact is kept as it came: not re-serialised.

mod rules;
pub mod text;

use serde::Deserialize;
use sluice_plugin::{ConfigError, Event, Outcome, Transform};

pub use rules::{Redactor, Rules};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(flatten)]
    rules: Rules,
    /// The environment variable holding the HMAC key (granted with `env`).
    #[serde(default = "default_key_env")]
    hash_key_env: String,
}

fn default_key_env() -> String {
    "STORYFORGE_HASH_KEY".into()
}

pub struct Redact(Redactor);

impl Transform for Redact {
    const NAME: &'static str = "redact";
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        let key = std::env::var(&config.hash_key_env).map_err(|_| {
            let message = format!("the HMAC key is read from {}, which is not set (grant it with env = [\"{}\"])", config.hash_key_env, config.hash_key_env);
            ConfigError::at("hash_key_env", message)
        })?;
        if key.len() < 16 {
            let message = format!("{} must hold at least 16 bytes; a short key makes prompt hashes guessable", config.hash_key_env);
            return Err(ConfigError::at("hash_key_env", message));
        }
        Ok(Redact(Redactor::new(config.rules, key.into_bytes())))
    }

    fn process(&mut self, mut event: Event) -> Outcome {
        match self.0.redact(&event.body) {
            Ok(None) => Outcome::Keep,
            Ok(Some(body)) => {
                event.body = body;
                Outcome::Replace(vec![event])
            }
            Err(message) => Outcome::reject("malformed", None, message),
        }
    }
}

sluice_plugin::transform!(Redact);
