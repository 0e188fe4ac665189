//! What the host offers every plugin: a log, a clock, counters and metrics
//! (labelled counters and histograms, since 0.2.1). Each import
//! is a small module implementing the generated `Host` traits, of the current
//! package and of `@0.1.0`, on [`StageState`](super::state::StageState).

pub mod clock;
pub mod counters;
pub mod log;
pub mod metrics;

pub use clock::Clock;
pub use counters::Counters;

/// The `types` interface has no functions; the linker still asks for its trait.
impl super::bindings::transform::sluice::plugin::types::Host for super::state::StageState {}
