//! `alert`: the alerting rules of a pipeline, as a `sink` stage. It reads
//! events, keeps event-time windows per rule (and per group, such as an
//! experiment's variant), and emits one `firing` alert when a rule's condition
//! starts to hold and one `resolved` alert when it stops, on
//! `<subject_prefix>.<rule id>`. Its windows and alert states go through
//! `snapshot` and `restore`, so a hot swap or a restart neither loses nor
//! repeats an alert. With `heartbeat`, it also says on the host's ticks
//! that it runs, for a dead man's switch.
//!
//! - `config`: the rules and their defaults, as the pipeline file gives them;
//! - `engine`: windows, evaluation and the alert state machine;
//! - `render`: what an alert and a heartbeat say.

pub mod config;
pub mod engine;
mod render;

use engine::{Alert, Engine, State, Tally};
use sluice_plugin::log::{self, Level};
use sluice_plugin::{ConfigError, Event, Sink, clock, counters};

struct AlertSink {
    engine: Engine,
}

impl Sink for AlertSink {
    const NAME: &'static str = "alert";
    /// `config::Settings` reads the config itself, with its own messages.
    type Config = serde_json::Value;
    type State = State;

    fn new(config: serde_json::Value) -> Result<Self, ConfigError> {
        Ok(Self { engine: Engine::new(config::Settings::parse(&config.to_string())?) })
    }

    fn consume(&mut self, state: &mut State, batch: Vec<Event>) -> Vec<Event> {
        let now_ms = clock::now_ms();
        let mut tally = Tally::default();
        let alerts = self.engine.with_state(state, |engine| engine.consume(batch.iter().map(|e| e.body.as_slice()), now_ms, &mut tally));
        counters::add_all(&[
            ("sampled", tally.sampled),
            ("late", tally.left_out.late),
            ("future", tally.left_out.future),
            ("unreadable", tally.unreadable),
            ("missing_field", tally.missing_field),
            ("over_group_limit", tally.over_group_limit),
        ]);
        events(alerts)
    }

    fn tick(&mut self, state: &mut State, now_ns: u64) -> Vec<Event> {
        events(self.engine.with_state(state, |engine| engine.tick(now_ns)))
    }

    fn restored(&mut self, state: State) -> Result<State, String> {
        self.engine.adopt(state)
    }
}

sluice_plugin::sink!(AlertSink);

fn events(alerts: Vec<Alert>) -> Vec<Event> {
    alerts
        .into_iter()
        .map(|alert| {
            if let Some(summary) = alert.body.get("summary").and_then(|s| s.as_str()) {
                // A heartbeat a minute is not news.
                let level = if alert.body.get("heartbeat").is_some() { Level::Debug } else { Level::Info };
                log::log(level, summary, &[("subject", &alert.subject)]);
            }
            Event::json(alert.subject, &alert.body)
        })
        .collect()
}
