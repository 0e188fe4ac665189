//! `aggregate`: rollups of a pipeline's events for dashboards, as a `sink`
//! stage. It counts events into event-time windows (a minute, an hour, a
//! day), per group of the fields a rollup names and per cohort, and
//! publishes each window once it is final on
//! `<subject_prefix>.<rollup>.<minute|hour|day>`: counts, sums, means,
//! quantiles with their error, and shares. It also follows users from their
//! sign-up to publish activation shares per sign-up cohort. Its windows and
//! users go through `snapshot` and `restore`, so a hot swap or a restart
//! neither loses nor repeats a count.
//!
//! - `config`: the rollups and the activation, as the pipeline file gives them;
//! - `engine`: the windows of the rollups, and when each is published;
//! - `activation`: the users followed, and the activation shares.

pub mod activation;
pub mod config;
pub mod engine;

use engine::{Engine, Output, State, Tally};
use sluice_plugin::{ConfigError, Event, Sink, clock, counters};

struct AggregateSink {
    engine: Engine,
}

impl Sink for AggregateSink {
    const NAME: &'static str = "aggregate";
    /// `config::Settings` reads the config itself, with its own messages.
    type Config = serde_json::Value;
    type State = State;

    fn new(config: serde_json::Value) -> Result<Self, ConfigError> {
        Ok(Self { engine: Engine::new(config::Settings::parse(&config.to_string())?) })
    }

    fn consume(&mut self, state: &mut State, batch: Vec<Event>) -> Vec<Event> {
        let now_ms = clock::now_ms();
        let mut tally = Tally::default();
        let outputs = self.engine.with_state(state, |engine| engine.consume(batch.iter().map(|e| e.body.as_slice()), now_ms, &mut tally));
        counters::add_all(&[
            ("counted", tally.counted),
            ("late", tally.left_out.late),
            ("future", tally.left_out.future),
            ("unreadable", tally.unreadable),
            ("missing_value", tally.missing_value),
            ("over_group_limit", tally.over_group_limit),
            ("untracked_users", tally.untracked_users),
            ("unremembered_users", tally.unremembered_users),
        ]);
        events(outputs)
    }

    fn tick(&mut self, state: &mut State, now_ns: u64) -> Vec<Event> {
        events(self.engine.with_state(state, |engine| engine.tick(now_ns)))
    }

    fn restored(&mut self, state: State) -> Result<State, String> {
        self.engine.adopt(state)
    }
}

sluice_plugin::sink!(AggregateSink);

fn events(outputs: Vec<Output>) -> Vec<Event> {
    outputs.into_iter().map(|output| Event::json(output.subject, &output.body)).collect()
}
