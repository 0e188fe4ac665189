//! Write a sluice plugin in Rust.
//!
//! A transform is a type that implements [`Transform`]: its typed config
//! (any `Deserialize` type; add `#[serde(deny_unknown_fields)]` so a typo in
//! the pipeline file is refused), a constructor that may refuse the config
//! with a [`ConfigError`] `sluice validate` shows at the line of the key at
//! fault, and what becomes of one event.
//! [`transform!`] exports it as the component's `transform` world:
//!
//! ```
//! use serde::Deserialize;
//! use sluice_plugin::{ConfigError, Event, Outcome, Transform};
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     required: Vec<String>,
//! }
//!
//! struct Check {
//!     config: Config,
//! }
//!
//! impl Transform for Check {
//!     const NAME: &'static str = "check";
//!     type Config = Config;
//!
//!     fn new(config: Config) -> Result<Self, ConfigError> {
//!         if config.required.is_empty() {
//!             return Err(ConfigError::at("required", "name at least one property"));
//!         }
//!         Ok(Self { config })
//!     }
//!
//!     fn process(&mut self, event: Event) -> Outcome {
//!         let body = match sluice_plugin::json::object(&event.body) {
//!             Ok(body) => body,
//!             Err(message) => return Outcome::reject("malformed", None, message),
//!         };
//!         match self.config.required.iter().find(|p| !body.contains_key(p.as_str())) {
//!             Some(missing) => Outcome::reject("missing_property", Some(missing), format!("`{missing}` is required")),
//!             None => Outcome::Keep,
//!         }
//!     }
//! }
//!
//! sluice_plugin::transform!(Check);
//!
//! // In a native `cargo test`:
//! use sluice_plugin::testing::{Harness, event};
//! let mut check = Harness::<Check>::new(serde_json::json!({ "required": ["event"] })).unwrap();
//! assert_eq!(check.process(event("in.x", &serde_json::json!({ "event": "a" }))), Outcome::Keep);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the
//! component is `target/wasm32-wasip2/release/<crate>.wasm`.
//!
//! The host's services are plain functions here: [`log`], [`clock`] and
//! [`counters`]. In a native `cargo test` they talk to [`testing`] instead,
//! which controls the clock and keeps what was logged and counted, so a
//! plugin's logic is unit-tested without WebAssembly or NATS.

pub mod config;
pub mod json;
pub mod testing;

pub use config::ConfigError;

pub use sluice_kit::{canonical, distinct, hex, labels, sketch, time, uuid, windows};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "transform",
        path: "wit",
        default_bindings_module: "sluice_plugin::bindings",
        pub_export_macro: true,
        export_macro_name: "export_transform_world",
        additional_derives: [PartialEq, Eq],
        // Their floats have no `Eq`.
        additional_derives_ignore: ["metric", "sample"],
    });
}

#[doc(hidden)]
pub mod sink_bindings {
    wit_bindgen::generate!({
        world: "sink",
        path: "wit",
        default_bindings_module: "sluice_plugin::sink_bindings",
        pub_export_macro: true,
        export_macro_name: "export_sink_world",
        // One set of types and imports for both worlds.
        with: {
            "sluice:plugin/types@0.2.1": crate::bindings::sluice::plugin::types,
            "sluice:plugin/log@0.2.1": crate::bindings::sluice::plugin::log,
            "sluice:plugin/clock@0.2.1": crate::bindings::sluice::plugin::clock,
            "sluice:plugin/counters@0.2.1": crate::bindings::sluice::plugin::counters,
            "sluice:plugin/metrics@0.2.1": crate::bindings::sluice::plugin::metrics,
        },
    });
}

pub use bindings::sluice::plugin::types::{ConfigProblem, Event, Outcome, Rejection};

/// A stateful last stage that emits events of its own, such as alerts. Its
/// state is a value of its own type, kept by the SDK: the host stores it
/// (as JSON) after every batch and tick, hands it to the next version on a
/// hot swap and back after a restart, so a sink never writes `snapshot` or
/// `restore` itself.
///
/// The state's form is versioned by [`Sink::STATE_VERSION`]. While `State`
/// only gains fields with serde defaults, leave it: builds read each
/// other's state, older and newer. When a change would not read an older
/// state (a field renamed, a type changed), raise it and read the older
/// forms in [`Sink::upgrade`], which is handed each older state with its
/// version. Version 1 is kept as the bare JSON of `State`; a later one as
/// `{"sluice_state_version": N, "state": ...}`.
pub trait Sink: Sized {
    /// The stage's name in messages: `invalid NAME config: ...`.
    const NAME: &'static str;
    type Config: serde::de::DeserializeOwned;
    type State: serde::Serialize + serde::de::DeserializeOwned + Default;
    /// The version of `State`'s form; raise it for a change an older state
    /// would not read as.
    const STATE_VERSION: u32 = 1;

    /// Builds the stage from its config, or says what is wrong with it.
    fn new(config: Self::Config) -> Result<Self, ConfigError>;

    /// Takes in a batch, in order; returns the events it causes.
    fn consume(&mut self, state: &mut Self::State, batch: Vec<Event>) -> Vec<Event>;

    /// Time passed (nanoseconds since the Unix epoch); returns the events
    /// that causes, e.g. an alert resolving. Nothing, unless overridden.
    fn tick(&mut self, state: &mut Self::State, now_ns: u64) -> Vec<Event> {
        let _ = (state, now_ns);
        Vec::new()
    }

    /// Reads a state an older build kept, at `version` (below
    /// `STATE_VERSION`), given the JSON of its `State`. Reads it as the
    /// current `State` unless overridden.
    fn upgrade(version: u32, kept: &[u8]) -> Result<Self::State, String> {
        serde_json::from_slice(kept).map_err(|e| {
            format!("cannot restore the {} state kept at version {version} as version {}: {e} (read it in Sink::upgrade)", Self::NAME, Self::STATE_VERSION)
        })
    }

    /// A kept state, read, before this build takes it over: check it or
    /// adapt it to the config (drop what a rule taken out of the config
    /// kept, say). Taken as it is unless overridden.
    fn restored(&mut self, state: Self::State) -> Result<Self::State, String> {
        Ok(state)
    }
}

/// A stage that says what becomes of each event: keep it, send it on
/// another subject, replace it with other events, drop it, or reject it.
pub trait Transform: Sized {
    /// The stage's name in messages: `invalid NAME config: ...`.
    const NAME: &'static str;
    /// The stage's `config` table from the pipeline file.
    type Config: serde::de::DeserializeOwned;

    /// Builds the stage from its config, or says what is wrong with it;
    /// `sluice validate` and `deploy` show each problem at its key.
    fn new(config: Self::Config) -> Result<Self, ConfigError>;

    /// What becomes of one event.
    fn process(&mut self, event: Event) -> Outcome;

    /// One outcome per event of a batch, in order. Override it only to share
    /// work across a batch.
    fn process_batch(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
        batch.into_iter().map(|event| self.process(event)).collect()
    }
}

impl Event {
    /// A JSON event on `subject`, as a sink emits one (an alert, a rollup).
    pub fn json(subject: String, body: &serde_json::Value) -> Self {
        Event { subject, headers: vec![("Content-Type".into(), "application/json".into())], body: body.to_string().into_bytes() }
    }
}

impl Outcome {
    /// Refuses the event: it goes to the dead-letter subject with `code`
    /// (machine-readable, e.g. `missing_property`), the property at fault if
    /// there is one, and a message for a person.
    pub fn reject(code: &str, property: Option<&str>, message: impl Into<String>) -> Self {
        Outcome::Reject(Rejection { code: code.into(), property: property.map(str::to_string), message: message.into() })
    }
}

/// The host's log: each line is tagged with the pipeline and stage.
pub mod log {
    pub use crate::bindings::sluice::plugin::log::Level;

    pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
        #[cfg(target_arch = "wasm32")]
        {
            let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            crate::bindings::sluice::plugin::log::log(level, message, &fields);
        }
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::log(level, message, fields);
    }

    pub fn debug(message: &str, fields: &[(&str, &str)]) {
        log(Level::Debug, message, fields);
    }

    pub fn info(message: &str, fields: &[(&str, &str)]) {
        log(Level::Info, message, fields);
    }

    pub fn warn(message: &str, fields: &[(&str, &str)]) {
        log(Level::Warn, message, fields);
    }

    pub fn error(message: &str, fields: &[(&str, &str)]) {
        log(Level::Error, message, fields);
    }
}

/// The only clock a plugin sees; the host drives it (and `sluice test` and
/// [`testing`] set it).
pub mod clock {
    /// Nanoseconds since the Unix epoch.
    pub fn now_ns() -> u64 {
        #[cfg(target_arch = "wasm32")]
        return crate::bindings::sluice::plugin::clock::now();
        #[cfg(not(target_arch = "wasm32"))]
        return crate::testing::now_ns();
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms() -> i64 {
        (now_ns() / 1_000_000) as i64
    }
}

/// Named counters, summed by the host per pipeline and stage and logged with
/// its progress as `plugin_counters`.
pub mod counters {
    pub fn add(name: &str, delta: u64) {
        #[cfg(target_arch = "wasm32")]
        crate::bindings::sluice::plugin::counters::add(name, delta);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::count(name, delta);
    }

    /// Adds each `(name, delta)` whose delta is not zero: a batch's tally.
    pub fn add_all(deltas: &[(&str, u64)]) {
        for &(name, delta) in deltas {
            if delta > 0 {
                add(name, delta);
            }
        }
    }
}

/// Counters and histograms with labels, which the host serves on its
/// `/metrics` under the names declared here (with `pipeline` and `stage`
/// labels added): the business measures of the events a stage sees, for
/// dashboards and alerting rules. Declare each once, in `new`; a sample is
/// kept by the SDK and sent with the others of its batch in one call when
/// the batch is done.
///
/// ```
/// use sluice_plugin::metrics;
/// # fn main() -> Result<(), String> {
/// let latency = metrics::histogram("generation_latency_seconds", "Time to generate a scene", &["vendor"], &[1.0, 10.0, 60.0])?;
/// latency.observe(&["runway"], 12.5);
/// # Ok(())
/// # }
/// ```
///
/// The host bounds what a plugin can make of it: at most 32 metrics of at
/// most 4 labels; a label takes at most 32 values in a stage, and longer
/// ones than 64 bytes or later ones count as `other`.
pub mod metrics {
    use std::cell::RefCell;

    /// A counter: [`Counter::add`] a whole number, by label values.
    #[derive(Clone, Debug)]
    pub struct Counter {
        handle: u32,
        labels: usize,
    }

    /// A histogram: [`Histogram::observe`] a value, by label values.
    #[derive(Clone, Debug)]
    pub struct Histogram {
        handle: u32,
        labels: usize,
    }

    /// A sample waiting for the end of its batch.
    pub(crate) struct Sample {
        pub metric: u32,
        pub labels: Vec<String>,
        pub value: f64,
    }

    /// The samples of the call from the host so far; a counter's adds to
    /// one series are summed into one sample, so that counting every event
    /// of a batch sends one sample per series, not one per event.
    #[derive(Default)]
    struct Waiting {
        samples: Vec<Sample>,
        /// Where in `samples` each counter series is.
        counted: std::collections::HashMap<(u32, Vec<String>), usize>,
    }

    thread_local! {
        static WAITING: RefCell<Waiting> = RefCell::default();
    }

    /// Declares a counter; its name without `_total` (the host adds it).
    /// Refused, with the reason, for a name or labels the host does not take.
    pub fn counter(name: &str, help: &str, labels: &[&str]) -> Result<Counter, String> {
        declare(name, help, false, labels, &[]).map(|handle| Counter { handle, labels: labels.len() })
    }

    /// Declares a histogram with these bucket upper bounds (ascending, at most 32).
    pub fn histogram(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> Result<Histogram, String> {
        declare(name, help, true, labels, buckets).map(|handle| Histogram { handle, labels: labels.len() })
    }

    fn declare(name: &str, help: &str, histogram: bool, labels: &[&str], buckets: &[f64]) -> Result<u32, String> {
        #[cfg(target_arch = "wasm32")]
        {
            use crate::bindings::sluice::plugin::metrics as host;
            let kind = if histogram { host::Kind::Histogram } else { host::Kind::Counter };
            let labels = labels.iter().map(|l| l.to_string()).collect();
            host::declare(&host::Metric { name: name.into(), help: help.into(), kind, labels, buckets: buckets.to_vec() })
        }
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::declare(name, help, histogram, labels, buckets)
    }

    fn labelled(expected: usize, labels: &[&str]) -> Option<Vec<String>> {
        if labels.len() != expected {
            crate::log::warn(
                "a metric sample with the wrong number of labels is left out",
                &[("expected", &expected.to_string()), ("given", &labels.len().to_string())],
            );
            return None;
        }
        Some(labels.iter().map(|l| l.to_string()).collect())
    }

    impl Counter {
        /// Adds `delta` to the series of these label values (one per label, in order).
        pub fn add(&self, labels: &[&str], delta: u64) {
            let Some(labels) = labelled(self.labels, labels) else { return };
            WAITING.with(|waiting| {
                let Waiting { samples, counted } = &mut *waiting.borrow_mut();
                let key = (self.handle, labels);
                match counted.get(&key) {
                    Some(&at) => samples[at].value += delta as f64,
                    None => {
                        samples.push(Sample { metric: self.handle, labels: key.1.clone(), value: delta as f64 });
                        counted.insert(key, samples.len() - 1);
                    }
                }
            });
        }
    }

    impl Histogram {
        /// Observes `value` in the series of these label values.
        pub fn observe(&self, labels: &[&str], value: f64) {
            let Some(labels) = labelled(self.labels, labels) else { return };
            WAITING.with(|waiting| waiting.borrow_mut().samples.push(Sample { metric: self.handle, labels, value }));
        }
    }

    /// Sends the samples waiting; the SDK calls it after each call from the host.
    pub(crate) fn flush() {
        let samples = WAITING.with(|waiting| {
            let mut waiting = waiting.borrow_mut();
            waiting.counted.clear();
            std::mem::take(&mut waiting.samples)
        });
        if samples.is_empty() {
            return;
        }
        #[cfg(target_arch = "wasm32")]
        {
            use crate::bindings::sluice::plugin::metrics as host;
            let samples: Vec<host::Sample> = samples.into_iter().map(|s| host::Sample { metric: s.metric, labels: s.labels, value: s.value }).collect();
            host::observe(&samples);
        }
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::observe(samples);
    }
}

/// What [`transform!`] calls; not for plugins.
#[doc(hidden)]
pub mod run {
    use std::cell::RefCell;

    use super::{ConfigError, Event, Outcome, Transform};

    pub fn init<T: Transform>(slot: &RefCell<Option<T>>, config: &str) -> Result<(), ConfigError> {
        *slot.borrow_mut() = Some(T::new(crate::config::read(config)?)?);
        Ok(())
    }

    /// Every plugin answers a batch before `init` the same way: each event
    /// rejected as `not_initialised` (the host always calls `init` first).
    pub fn process<T: Transform>(slot: &RefCell<Option<T>>, batch: Vec<Event>) -> Vec<Outcome> {
        let outcomes = match &mut *slot.borrow_mut() {
            Some(plugin) => plugin.process_batch(batch),
            None => batch.iter().map(|_| Outcome::reject("not_initialised", None, format!("the {} stage was not initialised", T::NAME))).collect(),
        };
        crate::metrics::flush();
        outcomes
    }
}

/// What [`sink!`] calls; not for plugins.
#[doc(hidden)]
pub mod run_sink {
    use std::cell::RefCell;

    use super::{ConfigError, Event, Sink};

    /// The plugin and its state, once `init` built it.
    pub struct Slot<S: Sink> {
        pub plugin: S,
        pub state: S::State,
    }

    pub fn init<S: Sink>(slot: &RefCell<Option<Slot<S>>>, config: &str) -> Result<(), ConfigError> {
        *slot.borrow_mut() = Some(Slot { plugin: S::new(crate::config::read(config)?)?, state: S::State::default() });
        Ok(())
    }

    /// A sink that was never initialised emits nothing and keeps nothing
    /// (the host always calls `init` first); it says so in the log.
    fn with<S: Sink, R: Default>(slot: &RefCell<Option<Slot<S>>>, call: impl FnOnce(&mut Slot<S>) -> R) -> R {
        match &mut *slot.borrow_mut() {
            Some(slot) => call(slot),
            None => {
                crate::log::error(&format!("the {} stage was not initialised", S::NAME), &[]);
                R::default()
            }
        }
    }

    pub fn consume<S: Sink>(slot: &RefCell<Option<Slot<S>>>, batch: Vec<Event>) -> Vec<Event> {
        let emitted = with(slot, |s| s.plugin.consume(&mut s.state, batch));
        crate::metrics::flush();
        emitted
    }

    pub fn tick<S: Sink>(slot: &RefCell<Option<Slot<S>>>, now_ns: u64) -> Vec<Event> {
        let emitted = with(slot, |s| s.plugin.tick(&mut s.state, now_ns));
        crate::metrics::flush();
        emitted
    }

    /// A state kept at a version past 1.
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Versioned<T> {
        sluice_state_version: u32,
        state: T,
    }

    pub fn snapshot<S: Sink>(slot: &RefCell<Option<Slot<S>>>) -> Vec<u8> {
        // Serialising a plain serde value into memory fails only for a map
        // with non-string keys, which the state's type would always have.
        with(slot, |s| {
            let kept = match S::STATE_VERSION {
                1 => serde_json::to_vec(&s.state),
                version => serde_json::to_vec(&Versioned { sluice_state_version: version, state: &s.state }),
            };
            kept.unwrap_or_else(|e| panic!("the {} state cannot be kept as JSON: {e}", S::NAME))
        })
    }

    pub fn restore<S: Sink>(slot: &RefCell<Option<Slot<S>>>, kept: &[u8]) -> Result<(), String> {
        let (version, kept) = match serde_json::from_slice::<Versioned<&serde_json::value::RawValue>>(kept) {
            Ok(versioned) => (versioned.sluice_state_version, versioned.state.get().as_bytes()),
            Err(_) => (1, kept),
        };
        let state = match version.cmp(&S::STATE_VERSION) {
            std::cmp::Ordering::Less => S::upgrade(version, kept)?,
            // A newer build's state reads if its form only gained fields.
            order => serde_json::from_slice::<S::State>(kept).map_err(|e| match order {
                std::cmp::Ordering::Equal => format!("cannot restore the {} state: {e}", S::NAME),
                _ => format!(
                    "cannot restore the {} state: it was kept at version {version} by a newer build, and this one (version {}) cannot read it: {e}",
                    S::NAME,
                    S::STATE_VERSION
                ),
            })?,
        };
        match &mut *slot.borrow_mut() {
            Some(slot) => {
                slot.state = slot.plugin.restored(state)?;
                Ok(())
            }
            None => Err(format!("the {} stage was not initialised", S::NAME)),
        }
    }
}

/// Exports a [`Sink`] as the component's `sink` world.
#[macro_export]
macro_rules! sink {
    ($plugin:ty) => {
        // Exported only in WebAssembly: natively the crate is a library like
        // any other (its tests, and a binary linking several plugins).
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static PLUGIN: ::std::cell::RefCell<::std::option::Option<$crate::run_sink::Slot<$plugin>>> = const { ::std::cell::RefCell::new(None) };
            }
            struct Export;
            impl $crate::sink_bindings::Guest for Export {
                fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::vec::Vec<$crate::ConfigProblem>> {
                    PLUGIN.with(|slot| $crate::run_sink::init::<$plugin>(slot, &config)).map_err($crate::config::problems)
                }
                fn consume(batch: ::std::vec::Vec<$crate::Event>) -> ::std::vec::Vec<$crate::Event> {
                    PLUGIN.with(|slot| $crate::run_sink::consume::<$plugin>(slot, batch))
                }
                fn tick(now: u64) -> ::std::vec::Vec<$crate::Event> {
                    PLUGIN.with(|slot| $crate::run_sink::tick::<$plugin>(slot, now))
                }
                fn snapshot() -> ::std::vec::Vec<u8> {
                    PLUGIN.with(|slot| $crate::run_sink::snapshot::<$plugin>(slot))
                }
                fn restore(state: ::std::vec::Vec<u8>) -> ::std::result::Result<(), ::std::string::String> {
                    PLUGIN.with(|slot| $crate::run_sink::restore::<$plugin>(slot, &state))
                }
            }
    $crate::sink_bindings::export_sink_world!(Export with_types_in $crate::sink_bindings);
        };
    };
}

/// Exports a [`Transform`] as the component's `transform` world.
#[macro_export]
macro_rules! transform {
    ($plugin:ty) => {
        // Exported only in WebAssembly: natively the crate is a library like
        // any other (its tests, and a binary linking several plugins).
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static PLUGIN: ::std::cell::RefCell<::std::option::Option<$plugin>> = const { ::std::cell::RefCell::new(None) };
            }
            struct Export;
            impl $crate::bindings::Guest for Export {
                fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::vec::Vec<$crate::ConfigProblem>> {
                    PLUGIN.with(|slot| $crate::run::init::<$plugin>(slot, &config)).map_err($crate::config::problems)
                }
                fn process(batch: ::std::vec::Vec<$crate::Event>) -> ::std::vec::Vec<$crate::Outcome> {
                    PLUGIN.with(|slot| $crate::run::process::<$plugin>(slot, batch))
                }
            }
    $crate::bindings::export_transform_world!(Export with_types_in $crate::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use serde_json::json;

    use super::testing::{self, Harness, event};
    use super::*;

    /// Stamps each event with the clock, counts it and logs it.
    struct Stamp;

    impl Transform for Stamp {
        const NAME: &'static str = "stamp";
        type Config = serde_json::Map<String, serde_json::Value>;

        fn new(config: Self::Config) -> Result<Self, ConfigError> {
            if config.contains_key("refuse") { Err(ConfigError::at("refuse", "told to refuse")) } else { Ok(Stamp) }
        }

        fn process(&mut self, event: Event) -> Outcome {
            counters::add("stamped", 1);
            log::info("stamping", &[("subject", &event.subject)]);
            Outcome::Reroute(format!("at.{}", clock::now_ms()))
        }
    }

    #[test]
    fn the_harness_drives_the_clock_and_keeps_what_was_logged_and_counted() {
        let mut stamp = Harness::<Stamp>::new(json!({})).unwrap();
        testing::set_clock("2026-11-23T00:00:01Z");
        assert_eq!(stamp.process(event("in.a", &json!({}))), Outcome::Reroute("at.1795392001000".into()));
        stamp.process_batch(vec![event("in.b", &json!({})), event("in.c", &json!({}))]);
        assert_eq!(testing::counters()["stamped"], 3);
        let logged = testing::take_logged();
        assert_eq!(logged.len(), 3);
        assert_eq!((logged[2].level, logged[2].message.as_str(), logged[2].fields[0].1.as_str()), (log::Level::Info, "stamping", "in.c"));
        assert!(testing::take_logged().is_empty(), "taken once");
    }

    #[test]
    fn a_config_is_refused_at_its_key_and_a_batch_before_init_is_rejected_event_by_event() {
        let refused = Harness::<Stamp>::new(json!({ "refuse": true })).err().unwrap();
        assert_eq!(refused.problems(), [ConfigProblem { path: vec!["refuse".into()], message: "told to refuse".into() }]);
        assert!(Harness::<Stamp>::new(json!([1])).err().unwrap().to_string().starts_with("invalid type: sequence, expected a map"));
        let never_initialised: RefCell<Option<Stamp>> = RefCell::new(None);
        let outcomes = run::process(&never_initialised, vec![event("in.a", &json!({})), event("in.b", &json!({}))]);
        assert_eq!(outcomes, vec![Outcome::reject("not_initialised", None, "the stamp stage was not initialised"); 2]);
    }

    /// One sink in two builds: the first counts events in `seen`; the
    /// second renamed it `count` and added `last`, at state version 2.
    mod builds {
        use super::*;

        #[derive(Default, serde::Serialize, serde::Deserialize)]
        pub struct Seen {
            pub seen: u64,
        }

        pub struct First;

        impl Sink for First {
            const NAME: &'static str = "counter";
            type Config = serde_json::Value;
            type State = Seen;

            fn new(_: serde_json::Value) -> Result<Self, ConfigError> {
                Ok(First)
            }

            fn consume(&mut self, state: &mut Seen, batch: Vec<Event>) -> Vec<Event> {
                state.seen += batch.len() as u64;
                Vec::new()
            }
        }

        #[derive(Default, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Count {
            pub count: u64,
            #[serde(default)]
            pub last: String,
        }

        pub struct Second;

        impl Sink for Second {
            const NAME: &'static str = "counter";
            const STATE_VERSION: u32 = 2;
            type Config = serde_json::Value;
            type State = Count;

            fn new(_: serde_json::Value) -> Result<Self, ConfigError> {
                Ok(Second)
            }

            fn consume(&mut self, state: &mut Count, batch: Vec<Event>) -> Vec<Event> {
                state.count += batch.len() as u64;
                state.last = batch.last().map(|e| e.subject.clone()).unwrap_or_default();
                Vec::new()
            }

            fn upgrade(version: u32, kept: &[u8]) -> Result<Count, String> {
                assert_eq!(version, 1);
                let older: Seen = serde_json::from_slice(kept).map_err(|e| e.to_string())?;
                Ok(Count { count: older.seen, last: String::new() })
            }
        }
    }

    #[test]
    fn a_state_kept_at_an_older_version_is_upgraded_and_version_1_stays_bare() {
        use testing::SinkHarness;
        let mut first = SinkHarness::<builds::First>::new(json!({})).unwrap();
        first.consume(vec![event("in.a", &json!({})), event("in.b", &json!({}))]);
        let kept = first.snapshot();
        assert_eq!(kept, br#"{"seen":2}"#, "version 1 is the bare state, as builds before versions kept it");

        let mut second = SinkHarness::<builds::Second>::new(json!({})).unwrap();
        second.restore(&kept).unwrap();
        second.consume(vec![event("in.c", &json!({}))]);
        assert_eq!((second.state().count, second.state().last.as_str()), (3, "in.c"));
        let kept = second.snapshot();
        assert_eq!(kept, br#"{"sluice_state_version":2,"state":{"count":3,"last":"in.c"}}"#);
        let mut restarted = SinkHarness::<builds::Second>::new(json!({})).unwrap();
        restarted.restore(&kept).unwrap();
        assert_eq!(restarted.state().count, 3, "the same version reads as it was kept");

        // Rolled back: the first build cannot read version 2 and says why.
        let error = SinkHarness::<builds::First>::new(json!({})).unwrap().restore(&kept).unwrap_err();
        assert!(error.contains("kept at version 2 by a newer build, and this one (version 1) cannot read it"), "{error}");
    }
}
