//! `tally`: a small stateful sink. It counts events per subject and, on each
//! tick, emits one summary event on `<subject_prefix>.summary` with the counts
//! since the last summary. Its counts survive a hot swap or a restart (the
//! SDK keeps its state).
//!
//! Stage config: `config = { subject_prefix = "tally" }`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_plugin::{ConfigError, Event, Sink};

#[derive(Deserialize)]
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

struct Tally {
    summary: String,
}

impl Sink for Tally {
    const NAME: &'static str = "tally";
    type Config = Config;
    type State = State;

    fn new(config: Config) -> Result<Self, ConfigError> {
        Ok(Self { summary: format!("{}.summary", config.subject_prefix) })
    }

    fn consume(&mut self, state: &mut State, batch: Vec<Event>) -> Vec<Event> {
        for event in batch {
            *state.counts.entry(event.subject).or_default() += 1;
        }
        Vec::new()
    }

    fn tick(&mut self, state: &mut State, now: u64) -> Vec<Event> {
        let counts = std::mem::take(&mut state.counts);
        if counts.is_empty() {
            return Vec::new();
        }
        let body = serde_json::json!({ "at_ns": now, "counts": counts });
        vec![Event { subject: self.summary.clone(), headers: Vec::new(), body: body.to_string().into_bytes() }]
    }
}

sluice_plugin::sink!(Tally);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_plugin::testing::{SinkHarness, body, event};

    use super::*;

    #[test]
    fn counts_per_subject_sums_up_on_tick_and_keeps_its_counts_across_a_restore() {
        let mut tally = SinkHarness::<Tally>::new(json!({ "subject_prefix": "counts" })).unwrap();
        assert!(tally.consume(vec![event("in.a", &json!({})), event("in.a", &json!({})), event("in.b", &json!({}))]).is_empty());
        let kept = tally.snapshot();
        let mut restarted = SinkHarness::<Tally>::new(json!({ "subject_prefix": "counts" })).unwrap();
        restarted.restore(&kept).unwrap();
        let summary = restarted.tick(7);
        assert_eq!(summary[0].subject, "counts.summary");
        assert_eq!(body(&summary[0]), json!({ "at_ns": 7, "counts": { "in.a": 2, "in.b": 1 } }));
        assert!(restarted.tick(8).is_empty(), "counting starts again after a summary");
        assert!(restarted.restore(b"[1]").unwrap_err().starts_with("cannot restore the tally state"));
    }
}
