//! `enrich`: adds what the server knows to each StoryForge event.
//!
//! - `server_ts`: the time the pipeline received the event (the host's clock),
//!   set when absent, kept when present.
//! - `clock_skew_ms` = server_ts − client_ts in whole milliseconds, and
//!   `client_ts_trusted`, false when the skew exceeds `max_clock_skew_ms`
//!   (default five minutes) either way.
//! - `event_id`: kept when present; otherwise a UUID derived from the event's
//!   bytes as received, so a replay of the same event gets the same id and can
//!   be deduplicated downstream.
//! - `model_vendor`: an external vendor id is mapped to the internal id from
//!   the config's `vendors` table (the external one is kept in
//!   `model_vendor_external`); an unmapped id is kept and flagged with
//!   `model_vendor_unmapped: true`.
//!
//! Place it before `redact`: the event id is derived from the full event.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_plugin::json::Properties;
use sluice_plugin::{ConfigError, Event, Outcome, Transform, time, uuid};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_skew")]
    pub max_clock_skew_ms: i64,
    /// External vendor id → internal id.
    #[serde(default)]
    pub vendors: BTreeMap<String, String>,
    #[serde(default = "default_vendor_property")]
    pub vendor_property: String,
}

fn default_skew() -> i64 {
    5 * 60 * 1000
}

fn default_vendor_property() -> String {
    "model_vendor".into()
}

pub struct Enrich {
    config: Config,
}

impl Transform for Enrich {
    const NAME: &'static str = "enrich";
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        if config.max_clock_skew_ms < 0 {
            return Err(ConfigError::at("max_clock_skew_ms", "must not be negative"));
        }
        Ok(Self { config })
    }

    fn process(&mut self, event: Event) -> Outcome {
        self.enriched(event, sluice_plugin::clock::now_ms())
    }

    /// One reading of the clock for the whole batch.
    fn process_batch(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
        let now_ms = sluice_plugin::clock::now_ms();
        batch.into_iter().map(|event| self.enriched(event, now_ms)).collect()
    }
}

impl Enrich {
    fn enriched(&self, mut event: Event, now_ms: i64) -> Outcome {
        match enrich(&self.config, &event.body, now_ms) {
            Ok(body) => {
                event.body = body;
                Outcome::Replace(vec![event])
            }
            Err(message) => Outcome::reject("malformed", None, message),
        }
    }
}

sluice_plugin::transform!(Enrich);

/// The enriched body: the properties it sets are written, every other is
/// copied as it came.
pub fn enrich(config: &Config, body: &[u8], now_ms: i64) -> Result<Vec<u8>, String> {
    let properties = Properties::parse(body)?;
    let mut event = properties.edit();
    let server_ms = match properties.str("server_ts").map(|ts| time::parse_rfc3339(&ts)) {
        Some(Ok(ms)) => ms,
        _ => {
            event.set("server_ts", &time::format_rfc3339(now_ms));
            now_ms
        }
    };
    if let Some(Ok(client_ms)) = properties.str("client_ts").map(|ts| time::parse_rfc3339(&ts)) {
        let skew = server_ms - client_ms;
        event.set("clock_skew_ms", &skew);
        event.set("client_ts_trusted", &(skew.abs() <= config.max_clock_skew_ms));
    }
    if properties.str("event_id").is_none() {
        event.set("event_id", &uuid::from_content(body));
    }
    if let Some(external) = properties.str(&config.vendor_property) {
        match config.vendors.get(external.as_ref()) {
            Some(internal) => {
                event.set(&config.vendor_property, internal);
                event.set(&format!("{}_external", config.vendor_property), &external);
            }
            None => event.set(&format!("{}_unmapped", config.vendor_property), &true),
        }
    }
    Ok(event.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn config() -> Config {
        Config { max_clock_skew_ms: 300_000, vendors: BTreeMap::from([("v-7".into(), "sf-alpha".into())]), vendor_property: "model_vendor".into() }
    }

    fn run(value: Value, now: &str) -> Value {
        let body = enrich(&config(), &serde_json::to_vec(&value).unwrap(), time::parse_rfc3339(now).unwrap()).unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    #[test]
    fn server_time_skew_and_ids() {
        let out = run(json!({ "client_ts": "2026-11-24T10:00:00Z", "model_vendor": "v-7" }), "2026-11-24T10:00:01.500Z");
        assert_eq!(out["server_ts"], "2026-11-24T10:00:01.500Z");
        assert_eq!(out["clock_skew_ms"], 1500);
        assert_eq!(out["client_ts_trusted"], true);
        assert_eq!(out["model_vendor"], "sf-alpha");
        assert_eq!(out["model_vendor_external"], "v-7");
        assert!(uuid::is_uuid_v4(out["event_id"].as_str().unwrap()));

        let late = run(
            json!({ "client_ts": "2026-11-24T10:00:00Z", "server_ts": "2026-11-24T10:06:00Z", "event_id": "kept", "model_vendor": "v-9" }),
            "2026-11-24T12:00:00Z",
        );
        assert_eq!(late["server_ts"], "2026-11-24T10:06:00Z", "a present server_ts is kept");
        assert_eq!(late["clock_skew_ms"], 360_000);
        assert_eq!(late["client_ts_trusted"], false);
        assert_eq!(late["event_id"], "kept");
        assert_eq!((late["model_vendor"].as_str(), late["model_vendor_unmapped"].as_bool()), (Some("v-9"), Some(true)));
    }
}
