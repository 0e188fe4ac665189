//! `tally`: a small stateful sink. It counts events per subject and, on each
//! tick, emits one summary event on `<subject_prefix>.summary` with the counts
//! since the last summary. Its counts survive a hot swap or a restart through
//! `snapshot` and `restore`.
//!
//! Stage config: `config = { subject_prefix = "tally" }`.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

wit_bindgen::generate!({ world: "sink", path: "../../wit" });

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_prefix")]
    subject_prefix: String,
}

fn default_prefix() -> String {
    "tally".into()
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    counts: BTreeMap<String, u64>,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::default();
    static STATE: RefCell<State> = RefCell::default();
}

struct Tally;

impl Guest for Tally {
    fn init(config: String) -> Result<(), String> {
        let parsed: Config = serde_json::from_str(&config).map_err(|e| format!("invalid tally config: {e}"))?;
        CONFIG.with(|c| *c.borrow_mut() = parsed);
        Ok(())
    }

    fn consume(batch: Vec<Event>) -> Vec<Event> {
        STATE.with(|state| {
            let mut state = state.borrow_mut();
            for event in batch {
                *state.counts.entry(event.subject).or_default() += 1;
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
        let subject = CONFIG.with(|c| format!("{}.summary", c.borrow().subject_prefix));
        vec![Event { subject, headers: Vec::new(), body: body.to_string().into_bytes() }]
    }

    fn snapshot() -> Vec<u8> {
        STATE.with(|state| serde_json::to_vec(&*state.borrow()).unwrap_or_default())
    }

    fn restore(bytes: Vec<u8>) -> Result<(), String> {
        let restored: State = serde_json::from_slice(&bytes).map_err(|e| format!("cannot restore tally state: {e}"))?;
        STATE.with(|state| *state.borrow_mut() = restored);
        Ok(())
    }
}

export!(Tally);
