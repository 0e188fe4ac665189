//! `stamp-0-1`: sets `property` on every event to the host clock's
//! nanoseconds and counts what it stamped, through the `@0.1.0` imports.
//! Its `init` refuses a config as 0.1.0 did: with one string.
//!
//! Stage config: `config = { property = "stamped_ns" }`.

use std::cell::RefCell;

use serde::Deserialize;
use serde_json::{Map, Value};

wit_bindgen::generate!({ world: "transform", path: "../../../wit/0.1.0" });

use sluice::plugin::types::Rejection;
use sluice::plugin::{clock, counters, log};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    property: String,
}

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

struct Stamp;

impl Guest for Stamp {
    fn init(config: String) -> Result<(), String> {
        let config: Config = serde_json::from_str(&config).map_err(|e| format!("invalid stamp config: {e}"))?;
        if config.property.is_empty() {
            return Err("`property` must not be empty".into());
        }
        log::log(log::Level::Debug, "stamp ready", &[("property".into(), config.property.clone())]);
        CONFIG.with(|slot| *slot.borrow_mut() = Some(config));
        Ok(())
    }

    fn process(batch: Vec<Event>) -> Vec<Outcome> {
        CONFIG.with(|slot| {
            let slot = slot.borrow();
            batch.into_iter().map(|event| stamp(slot.as_ref(), event)).collect()
        })
    }
}

fn stamp(config: Option<&Config>, mut event: Event) -> Outcome {
    let Some(config) = config else {
        return reject("not_initialised", "the stamp stage was not initialised".into());
    };
    let mut body: Map<String, Value> = match serde_json::from_slice(&event.body) {
        Ok(body) => body,
        Err(e) => return reject("malformed", format!("body is not a JSON object: {e}")),
    };
    body.insert(config.property.clone(), clock::now().into());
    event.body = serde_json::to_vec(&body).expect("a map with string keys serialises");
    counters::add("stamped", 1);
    Outcome::Replace(vec![event])
}

fn reject(code: &str, message: String) -> Outcome {
    Outcome::Reject(Rejection { code: code.into(), property: None, message })
}

export!(Stamp);
