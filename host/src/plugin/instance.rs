//! Live instances of stages, transform or sink: each has its own store,
//! memory cap and time budget. A call that traps, runs out of time or out of memory comes back as a
//! [`Fault`]; the instance is then spent and the caller makes a new one.
//!
//! A component speaks one version of the contract (`sluice:plugin@0.2.0` or
//! `@0.1.0`); the linked forms here hide which, so a pipeline mixes them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::{Engine, Store, Trap};

use super::WasmtimeResult;
use super::bindings::{ConfigProblem, Event, Outcome, sink, transform, v0_1};
use super::engine::EPOCH_TICK;
use super::state::{StageContext, StageState};
use crate::config::StageSpec;

/// Why a call into a plugin did not return normally.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The call ran past the stage's time budget.
    Timeout(Duration),
    /// The plugin tried to grow its memory past the stage's cap.
    MemoryLimit(u64),
    /// Any other trap: a panic, an out-of-bounds access, `unreachable`.
    Trap(String),
    /// The plugin broke the contract, e.g. fewer outcomes than events.
    Contract(String),
    /// The plugin answered with more events, or more bytes of them, than
    /// the stage's limits allow.
    OutputLimit(String),
}

impl Fault {
    /// The dead-letter code for an event that caused this fault.
    pub fn code(&self) -> &'static str {
        match self {
            Fault::Timeout(_) => "timeout",
            Fault::MemoryLimit(_) => "memory_limit",
            Fault::Trap(_) => "trap",
            Fault::Contract(_) => "contract",
            Fault::OutputLimit(_) => "output_limit",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Timeout(budget) => write!(f, "the plugin ran longer than its time budget of {}", humantime::format_duration(*budget)),
            Fault::MemoryLimit(cap) => write!(f, "the plugin tried to use more than its memory cap of {} MiB", cap >> 20),
            Fault::Trap(message) => write!(f, "the plugin trapped: {message}"),
            Fault::Contract(message) => write!(f, "the plugin broke the sluice:plugin contract: {message}"),
            Fault::OutputLimit(message) => write!(f, "the plugin answered with too much: {message}"),
        }
    }
}

/// A component linked as a transform, ready to instantiate.
pub enum TransformPre {
    Current(transform::TransformPre<StageState>),
    V0_1(v0_1::transform::TransformPre<StageState>),
}

/// A component linked as a sink, ready to instantiate.
pub enum SinkPre {
    Current(sink::SinkPre<StageState>),
    V0_1(v0_1::sink::SinkPre<StageState>),
}

impl TransformPre {
    /// The version of the contract the component was built against.
    pub fn contract(&self) -> &'static str {
        match self {
            TransformPre::Current(_) => CURRENT_CONTRACT,
            TransformPre::V0_1(_) => "sluice:plugin@0.1.0",
        }
    }
}

impl SinkPre {
    pub fn contract(&self) -> &'static str {
        match self {
            SinkPre::Current(_) => CURRENT_CONTRACT,
            SinkPre::V0_1(_) => "sluice:plugin@0.1.0",
        }
    }
}

/// The package the host links plugins to; one built against 0.2.0 (the same
/// world, less the `metrics` import) links to it as well.
pub const CURRENT_CONTRACT: &str = "sluice:plugin@0.2.1";

/// A plugin's `init` refused the stage's config: the problems it named,
/// each with where in the config it is (a plugin on `@0.1.0` names one,
/// without a place).
#[derive(Debug, Clone)]
pub struct ConfigRefused {
    pub pipeline: String,
    pub stage: String,
    pub problems: Vec<ConfigProblem>,
}

impl ConfigRefused {
    fn new(stage: &StageContext, mut problems: Vec<ConfigProblem>) -> Self {
        if problems.is_empty() {
            problems.push(ConfigProblem { path: Vec::new(), message: "refused without saying why".into() });
        }
        Self { pipeline: stage.pipeline.to_string(), stage: stage.name.to_string(), problems }
    }
}

/// A config path as written in messages: `rules[0].window`.
pub use sluice_kit::config_path::write as config_path;

impl std::fmt::Display for ConfigRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the plugin's init refused its config: ")?;
        for (n, problem) in self.problems.iter().enumerate() {
            if n > 0 {
                write!(f, "; ")?;
            }
            match problem.path.is_empty() {
                true => write!(f, "{}", problem.message)?,
                false => write!(f, "`{}`: {}", config_path(&problem.path), problem.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigRefused {}

/// A store under a stage's limits: what both kinds of instance run in.
struct Sandbox {
    store: Store<StageState>,
    time_budget: Duration,
    /// Events one input event may be answered with, and bytes of new events per call.
    max_outputs: usize,
    max_output_bytes: usize,
}

impl Sandbox {
    fn new(engine: &Engine, stage: Arc<StageContext>, spec: &StageSpec) -> Result<Self> {
        let mut store = Store::new(engine, StageState::new(stage, spec.memory_limit)?);
        store.limiter(|state| &mut state.limiter);
        set_budget(&mut store, spec.time_budget);
        Ok(Self { store, time_budget: spec.time_budget, max_outputs: spec.max_outputs, max_output_bytes: spec.max_output_bytes })
    }

    /// Refuses events sent back past the stage's limits: `per_input` is how
    /// many input events they answer (a sink's tick answers none, and may
    /// say as much as one event could).
    fn within_limits<'a>(&self, events: impl Iterator<Item = &'a Event>, per_input: usize) -> Result<(), Fault> {
        let (mut count, mut bytes) = (0usize, 0usize);
        for event in events {
            count += 1;
            bytes += event.body.len() + event.subject.len() + event.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
        }
        let allowed = self.max_outputs.saturating_mul(per_input.max(1));
        if count > allowed {
            return Err(Fault::OutputLimit(format!(
                "{count} events for {per_input} input event(s); the stage allows {} per event (limits.outputs)",
                self.max_outputs
            )));
        }
        if bytes > self.max_output_bytes {
            return Err(Fault::OutputLimit(format!("{bytes} bytes of events in one call; the stage allows {} (limits.output_bytes)", self.max_output_bytes)));
        }
        Ok(())
    }

    /// Runs one call into the plugin with a fresh time budget; a trap, a
    /// timeout or a memory overrun comes back as a [`Fault`].
    /// Each call is timed, and each fault counted by kind, in the metrics.
    fn call<T>(&mut self, call: impl FnOnce(&mut Store<StageState>) -> wasmtime::Result<T>) -> Result<T, Fault> {
        set_budget(&mut self.store, self.time_budget);
        let started = std::time::Instant::now();
        let result = call(&mut self.store).map_err(|e| classify(&self.store, self.time_budget, e));
        let stage = &self.store.data().stage;
        stage.calls.observe(started.elapsed().as_secs_f64());
        if let Err(fault) = &result {
            crate::metrics::metrics().fault(&stage.pipeline, &stage.name, fault.code());
        }
        result
    }

    /// Calls `init`; its refusal ([`ConfigRefused`]) or its fault stops the
    /// instance from starting.
    fn init(&mut self, call: impl FnOnce(&mut Store<StageState>) -> wasmtime::Result<Result<(), Vec<ConfigProblem>>>) -> Result<()> {
        match self.call(call) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(problems)) => Err(ConfigRefused::new(&self.store.data().stage, problems).into()),
            Err(fault) => anyhow::bail!("the plugin's init failed: {fault}"),
        }
    }
}

/// A 0.1.0 plugin's refusal, one message for the config as a whole.
fn one_problem(refusal: Result<(), String>) -> Result<(), Vec<ConfigProblem>> {
    refusal.map_err(|message| vec![ConfigProblem { path: Vec::new(), message }])
}

enum TransformBindings {
    Current(transform::Transform),
    V0_1(v0_1::transform::Transform),
}

enum SinkBindings {
    Current(sink::Sink),
    V0_1(v0_1::sink::Sink),
}

/// One instance of a `transform` stage.
pub struct TransformInstance {
    sandbox: Sandbox,
    bindings: TransformBindings,
}

impl TransformInstance {
    /// Instantiates the stage and calls its `init` with `config`.
    pub fn start(engine: &Engine, pre: &TransformPre, stage: Arc<StageContext>, spec: &StageSpec) -> Result<Self> {
        let mut sandbox = Sandbox::new(engine, stage, spec)?;
        let bindings = match pre {
            TransformPre::Current(pre) => {
                let bindings = pre.instantiate(&mut sandbox.store).anyhow().context("cannot instantiate the component")?;
                sandbox.init(|store| bindings.call_init(store, &spec.config))?;
                TransformBindings::Current(bindings)
            }
            TransformPre::V0_1(pre) => {
                let bindings = pre.instantiate(&mut sandbox.store).anyhow().context("cannot instantiate the component")?;
                sandbox.init(|store| bindings.call_init(store, &spec.config).map(one_problem))?;
                TransformBindings::V0_1(bindings)
            }
        };
        Ok(Self { sandbox, bindings })
    }

    /// Runs one batch: one outcome per event, in order, and no more events
    /// sent back than the stage's limits allow (else the call faults, and
    /// the batch is retried event by event to find the one that floods).
    pub fn process(&mut self, batch: &[Event]) -> Result<Vec<Outcome>, Fault> {
        let bindings = &self.bindings;
        let outcomes = self.sandbox.call(|store| match bindings {
            TransformBindings::Current(b) => b.call_process(store, batch),
            TransformBindings::V0_1(b) => b.call_process(store, batch),
        })?;
        if outcomes.len() != batch.len() {
            return Err(Fault::Contract(format!("process returned {} outcomes for {} events", outcomes.len(), batch.len())));
        }
        if let Some(flood) = outcomes
            .iter()
            .find_map(|o| if let Outcome::Replace(events) = o { (events.len() > self.sandbox.max_outputs).then_some(events.len()) } else { None })
        {
            return Err(Fault::OutputLimit(format!("{flood} events for one input event; the stage allows {} (limits.outputs)", self.sandbox.max_outputs)));
        }
        let replaced = outcomes.iter().flat_map(|o| if let Outcome::Replace(events) = o { events.as_slice() } else { &[] });
        self.sandbox.within_limits(replaced, batch.len())?;
        Ok(outcomes)
    }
}

/// One instance of a `sink` stage: it keeps state across batches, emits
/// events of its own, and hands its state over through snapshots.
pub struct SinkInstance {
    sandbox: Sandbox,
    bindings: SinkBindings,
}

/// Calls the same export of a sink of either version.
macro_rules! call_sink {
    ($bindings:expr, $store:expr, $call:ident $(, $arg:expr)*) => {
        match $bindings {
            SinkBindings::Current(b) => b.$call($store $(, $arg)*),
            SinkBindings::V0_1(b) => b.$call($store $(, $arg)*),
        }
    };
}

impl SinkInstance {
    /// Instantiates the stage and calls its `init` with `config`.
    pub fn start(engine: &Engine, pre: &SinkPre, stage: Arc<StageContext>, spec: &StageSpec) -> Result<Self> {
        let mut sandbox = Sandbox::new(engine, stage, spec)?;
        let bindings = match pre {
            SinkPre::Current(pre) => {
                let bindings = pre.instantiate(&mut sandbox.store).anyhow().context("cannot instantiate the component")?;
                sandbox.init(|store| bindings.call_init(store, &spec.config))?;
                SinkBindings::Current(bindings)
            }
            SinkPre::V0_1(pre) => {
                let bindings = pre.instantiate(&mut sandbox.store).anyhow().context("cannot instantiate the component")?;
                sandbox.init(|store| bindings.call_init(store, &spec.config).map(one_problem))?;
                SinkBindings::V0_1(bindings)
            }
        };
        Ok(Self { sandbox, bindings })
    }

    pub fn consume(&mut self, batch: &[Event]) -> Result<Vec<Event>, Fault> {
        let bindings = &self.bindings;
        let emitted = self.sandbox.call(|store| call_sink!(bindings, store, call_consume, batch))?;
        self.sandbox.within_limits(emitted.iter(), batch.len())?;
        Ok(emitted)
    }

    /// Time has passed: `now` in nanoseconds since the Unix epoch.
    pub fn tick(&mut self, now: u64) -> Result<Vec<Event>, Fault> {
        let bindings = &self.bindings;
        let emitted = self.sandbox.call(|store| call_sink!(bindings, store, call_tick, now))?;
        self.sandbox.within_limits(emitted.iter(), 1)?;
        Ok(emitted)
    }

    pub fn snapshot(&mut self) -> Result<Vec<u8>, Fault> {
        let bindings = &self.bindings;
        self.sandbox.call(|store| call_sink!(bindings, store, call_snapshot))
    }

    /// Takes over a state a `snapshot` produced.
    pub fn restore(&mut self, state: &[u8]) -> Result<()> {
        let bindings = &self.bindings;
        match self.sandbox.call(|store| call_sink!(bindings, store, call_restore, state)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => anyhow::bail!("the plugin refused the state it was handed: {message}"),
            Err(fault) => anyhow::bail!("the plugin's restore failed: {fault}"),
        }
    }
}

fn set_budget(store: &mut Store<StageState>, budget: Duration) {
    let ticks = budget.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64;
    // One tick more: the ticker may advance just after the deadline is set.
    store.set_epoch_deadline(ticks + 1);
}

fn classify(store: &Store<StageState>, budget: Duration, error: wasmtime::Error) -> Fault {
    let state = store.data();
    if state.limiter.exceeded {
        return Fault::MemoryLimit(state.limiter.limit());
    }
    if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
        return Fault::Timeout(budget);
    }
    // The trap itself, without the wasm backtrace that wraps it; then the
    // reason the plugin gave on stderr: a panic, a traceback, a JS error.
    let trap = error.downcast_ref::<Trap>().map_or_else(|| error.root_cause().to_string(), Trap::to_string);
    let detail = match state.last_words() {
        Some(line) => format!("{trap}; the plugin's last words: {line}"),
        None => trap,
    };
    Fault::Trap(detail)
}
