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
//! - `engine`: windows, evaluation and the alert state machine.

pub mod config;
pub mod engine;

use std::cell::RefCell;

use engine::{Alert, Engine, Tally};

wit_bindgen::generate!({ world: "sink", path: "../../wit" });

use sluice::plugin::{clock, counters, log};

thread_local! {
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
}

struct AlertSink;

impl Guest for AlertSink {
    fn init(config: String) -> Result<(), String> {
        let settings = config::Settings::parse(&config)?;
        ENGINE.with(|engine| *engine.borrow_mut() = Some(Engine::new(settings)));
        Ok(())
    }

    fn consume(batch: Vec<Event>) -> Vec<Event> {
        let now_ms = (clock::now() / 1_000_000) as i64;
        let mut tally = Tally::default();
        let alerts = with_engine(|engine| engine.consume(batch.iter().map(|e| e.body.as_slice()), now_ms, &mut tally));
        for (name, count) in [
            ("sampled", tally.sampled),
            ("late", tally.late),
            ("future", tally.future),
            ("unreadable", tally.unreadable),
            ("missing_field", tally.missing_field),
            ("over_group_limit", tally.over_group_limit),
        ] {
            if count > 0 {
                counters::add(name, count);
            }
        }
        events(alerts)
    }

    fn tick(now: u64) -> Vec<Event> {
        events(with_engine(|engine| engine.tick(now)))
    }

    fn snapshot() -> Vec<u8> {
        with_engine(|engine| engine.snapshot())
    }

    fn restore(state: Vec<u8>) -> Result<(), String> {
        with_engine(|engine| engine.restore(&state))
    }
}

fn with_engine<T>(f: impl FnOnce(&mut Engine) -> T) -> T {
    ENGINE.with(|engine| f(engine.borrow_mut().as_mut().expect("the host calls init first")))
}

fn events(alerts: Vec<Alert>) -> Vec<Event> {
    alerts
        .into_iter()
        .map(|alert| {
            if let Some(summary) = alert.body.get("summary").and_then(|s| s.as_str()) {
                // A heartbeat a minute is not news.
                let level = if alert.body.get("heartbeat").is_some() { log::Level::Debug } else { log::Level::Info };
                log::log(level, summary, &[("subject".into(), alert.subject.clone())]);
            }
            let headers = vec![("Content-Type".into(), "application/json".into())];
            Event { subject: alert.subject, headers, body: alert.body.to_string().into_bytes() }
        })
        .collect()
}

export!(AlertSink);
