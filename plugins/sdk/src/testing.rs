//! Running a plugin in a plain `cargo test`, without WebAssembly or NATS.
//!
//! Outside WebAssembly, [`crate::log`], [`crate::clock`],
//! [`crate::counters`] and [`crate::metrics`] come here: the clock is whatever the test sets
//! (0 until then), and what the plugin logs and counts is kept, per thread,
//! for the test to read. [`Harness`] builds a plugin from a JSON config the
//! way the host does (`invalid NAME config: ...` included) and runs it (the
//! crate's front page shows one).

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::log::Level;
use crate::{Event, Outcome, Transform};

/// A line the plugin logged.
#[derive(Clone, Debug, PartialEq)]
pub struct Logged {
    pub level: Level,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

#[derive(Default)]
struct Host {
    now_ns: u64,
    logged: Vec<Logged>,
    counters: BTreeMap<String, u64>,
    /// Names of the metrics declared, by handle.
    declared: Vec<String>,
    samples: Vec<Sample>,
}

/// A sample the plugin sent through [`crate::metrics`], with its metric's name.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub metric: String,
    pub labels: Vec<String>,
    pub value: f64,
}

thread_local! {
    static HOST: RefCell<Host> = RefCell::default();
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    HOST.with(|host| host.borrow_mut().logged.push(Logged { level, message: message.to_string(), fields }));
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn now_ns() -> u64 {
    HOST.with(|host| host.borrow().now_ns)
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn count(name: &str, delta: u64) {
    HOST.with(|host| *host.borrow_mut().counters.entry(name.to_string()).or_default() += delta);
}

/// Declares a metric as the host does, without its bounds on labels and
/// values (`sluice test` and a running host apply those).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn declare(name: &str, _help: &str, histogram: bool, labels: &[&str], buckets: &[f64]) -> Result<u32, String> {
    if name.is_empty() || name.starts_with("sluice_") || (!histogram && name.ends_with("_total")) || labels.len() > 4 {
        return Err(format!("metric {name:?} would be refused by the host (see the `metrics` import in wit/sluice.wit)"));
    }
    if histogram && (buckets.is_empty() || !buckets.windows(2).all(|w| w[0] < w[1])) {
        return Err(format!("histogram {name:?}: bucket bounds must be strictly ascending, and at least one"));
    }
    HOST.with(|host| {
        let mut host = host.borrow_mut();
        let handle = host.declared.iter().position(|n| n == name).unwrap_or_else(|| {
            host.declared.push(name.to_string());
            host.declared.len() - 1
        });
        Ok(handle as u32)
    })
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn observe(samples: Vec<crate::metrics::Sample>) {
    HOST.with(|host| {
        let mut host = host.borrow_mut();
        for sample in samples {
            let metric = host.declared.get(sample.metric as usize).cloned().unwrap_or_default();
            host.samples.push(Sample { metric, labels: sample.labels, value: sample.value });
        }
    });
}

/// The metric samples the plugin sent on this thread so far, and forgets them.
pub fn take_samples() -> Vec<Sample> {
    HOST.with(|host| std::mem::take(&mut host.borrow_mut().samples))
}

/// Sets the clock the plugin reads, in nanoseconds since the Unix epoch.
pub fn set_clock_ns(now_ns: u64) {
    HOST.with(|host| host.borrow_mut().now_ns = now_ns);
}

/// Sets the clock from an RFC 3339 time, e.g. `2026-11-23T10:00:00Z`.
pub fn set_clock(rfc3339: &str) {
    let ms = crate::time::parse_rfc3339(rfc3339).unwrap_or_else(|e| panic!("not an RFC 3339 time: {rfc3339}: {e}"));
    set_clock_ns(ms as u64 * 1_000_000);
}

/// What the plugin logged on this thread so far, and forgets it.
pub fn take_logged() -> Vec<Logged> {
    HOST.with(|host| std::mem::take(&mut host.borrow_mut().logged))
}

/// What the plugin counted on this thread so far.
pub fn counters() -> BTreeMap<String, u64> {
    HOST.with(|host| host.borrow().counters.clone())
}

/// An event on `subject` with `body` as its JSON body.
pub fn event(subject: &str, body: &serde_json::Value) -> Event {
    Event { subject: subject.into(), headers: Vec::new(), body: serde_json::to_vec(body).expect("a JSON value serialises") }
}

/// The body of an event as JSON (for `Outcome::Replace`'s events).
pub fn body(event: &Event) -> serde_json::Value {
    serde_json::from_slice(&event.body).expect("the body is JSON")
}

/// A transform built and run as the host would.
pub struct Harness<T: Transform> {
    plugin: T,
}

impl<T: Transform> Harness<T> {
    /// Builds the plugin from its config as JSON; the error holds the
    /// problems `sluice validate` would show, each at its key.
    pub fn new(config: serde_json::Value) -> Result<Self, crate::ConfigError> {
        let slot = RefCell::new(None);
        crate::run::init::<T>(&slot, &config.to_string())?;
        Ok(Self { plugin: slot.into_inner().expect("init filled the slot") })
    }

    pub fn process(&mut self, event: Event) -> Outcome {
        let mut outcomes = self.process_batch(vec![event]);
        assert_eq!(outcomes.len(), 1, "one outcome per event");
        outcomes.remove(0)
    }

    pub fn process_batch(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
        let events = batch.len();
        let outcomes = self.plugin.process_batch(batch);
        assert_eq!(outcomes.len(), events, "{} must answer each event of a batch once", T::NAME);
        crate::metrics::flush();
        outcomes
    }

    /// The plugin itself, to look at its fields.
    pub fn plugin(&self) -> &T {
        &self.plugin
    }
}

/// A sink built and run as the host would, its state kept by the SDK.
pub struct SinkHarness<S: crate::Sink> {
    slot: RefCell<Option<crate::run_sink::Slot<S>>>,
}

impl<S: crate::Sink> SinkHarness<S> {
    /// Builds the sink from its config as JSON, with an empty state.
    pub fn new(config: serde_json::Value) -> Result<Self, crate::ConfigError> {
        let slot = RefCell::new(None);
        crate::run_sink::init::<S>(&slot, &config.to_string())?;
        Ok(Self { slot })
    }

    pub fn consume(&mut self, batch: Vec<Event>) -> Vec<Event> {
        crate::run_sink::consume(&self.slot, batch)
    }

    /// Sets the clock to `now_ns` and ticks, as the host does.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Event> {
        set_clock_ns(now_ns);
        crate::run_sink::tick(&self.slot, now_ns)
    }

    /// The state as the host would keep it.
    pub fn snapshot(&self) -> Vec<u8> {
        crate::run_sink::snapshot(&self.slot)
    }

    /// Takes over a kept state, as after a hot swap or a restart.
    pub fn restore(&mut self, kept: &[u8]) -> Result<(), String> {
        crate::run_sink::restore(&self.slot, kept)
    }

    /// The state itself, to look at.
    pub fn state(&self) -> std::cell::Ref<'_, S::State> {
        std::cell::Ref::map(self.slot.borrow(), |slot| &slot.as_ref().expect("built by new").state)
    }
}
