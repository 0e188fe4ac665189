//! `tally-0-1`: counts events per subject and, on each tick, emits the counts
//! since the last summary on `<subject_prefix>.summary`, as `plugins/tally`
//! does; its state is the same JSON (`{"counts": {...}}`).
//!
//! Stage config: `config = { subject_prefix = "tally" }`.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

wit_bindgen::generate!({ world: "sink", path: "../../../wit/0.1.0" });

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    subject_prefix: String,
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    counts: BTreeMap<String, u64>,
}

thread_local! {
    static SUMMARY: RefCell<String> = const { RefCell::new(String::new()) };
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct Tally;

impl Guest for Tally {
    fn init(config: String) -> Result<(), String> {
        let config: Config = serde_json::from_str(&config).map_err(|e| format!("invalid tally config: {e}"))?;
        SUMMARY.with(|summary| *summary.borrow_mut() = format!("{}.summary", config.subject_prefix));
        Ok(())
    }

    fn consume(batch: Vec<Event>) -> Vec<Event> {
        STATE.with(|state| {
            let counts = &mut state.borrow_mut().counts;
            for event in batch {
                *counts.entry(event.subject).or_default() += 1;
            }
        });
        Vec::new()
    }

    fn tick(now: u64) -> Vec<Event> {
        let counts = STATE.with(|state| std::mem::take(&mut state.borrow_mut().counts));
        if counts.is_empty() {
            return Vec::new();
        }
        let body = serde_json::json!({ "at_ns": now, "counts": counts });
        vec![Event { subject: SUMMARY.with(|s| s.borrow().clone()), headers: Vec::new(), body: body.to_string().into_bytes() }]
    }

    fn snapshot() -> Vec<u8> {
        STATE.with(|state| serde_json::to_vec(&*state.borrow()).expect("string keys serialise"))
    }

    fn restore(kept: Vec<u8>) -> Result<(), String> {
        let kept: State = serde_json::from_slice(&kept).map_err(|e| format!("cannot restore the tally state: {e}"))?;
        STATE.with(|state| *state.borrow_mut() = kept);
        Ok(())
    }
}

export!(Tally);
