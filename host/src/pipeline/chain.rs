//! The batch path through one worker's instances of a pipeline version.
//!
//! A batch is first admitted (empty, oversize and, for JSON pipelines,
//! malformed events are refused by the host itself), then handed to each stage
//! in one call. If a call faults (trap, time budget, memory cap, broken
//! contract), the instance is replaced and the batch is run again event by
//! event, so that only the event that causes the fault is refused and every
//! other event of the batch goes on.
//!
//! A sink's state is taken (`snapshot`) after every call, unless its
//! pipeline stores it periodically (`state_every`): then it is taken only
//! when committed or handed over, and the calls since are kept, so that a
//! faulted instance is restored from the last state and given them again.

use std::sync::Arc;

use anyhow::Result;

use super::PipelineVersion;
use super::version::{PreparedSink, PreparedStage};
use crate::config::BodyFormat;
use crate::plugin::{Event, Fault, Outcome, SinkInstance, TransformInstance};
use crate::subject;

/// An event to publish, and the input event it came from.
#[derive(Debug)]
pub struct Output {
    /// Index of the input event in the batch.
    pub origin: usize,
    pub event: Event,
}

/// An input event refused by a stage or by the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    pub origin: usize,
    pub stage: String,
    pub code: String,
    pub property: Option<String>,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct BatchResult {
    pub outputs: Vec<Output>,
    pub rejects: Vec<Reject>,
    pub dropped: usize,
    /// Calls into plugins that faulted, each followed by a new instance.
    pub faults: usize,
    /// What the stages in `Chain::tapped` passed on, by stage: at most
    /// [`TAPPED_PER_STAGE`] events of each, for `sluice tap --stage`.
    pub tapped: Vec<(String, Vec<Event>)>,
}

/// Copies of one stage's events a batch keeps for its taps (a tap takes at
/// most 50 a second).
pub const TAPPED_PER_STAGE: usize = 50;

/// One worker's live instances of one pipeline version.
pub struct Chain {
    pub version: Arc<PipelineVersion>,
    instances: Vec<TransformInstance>,
    sink: Option<LiveSink>,
    /// Stages someone taps: what they pass on (a sink: the events it emits
    /// for a batch) is copied into the result.
    pub tapped: Vec<String>,
}

/// The live sink and the states it was last known to be good in: a faulted
/// instance is replaced by one restored from `state` (the last call that
/// succeeded); `committed` is the state after the last batch whose outputs
/// were published, to which a batch that could not be published rolls back.
///
/// With `since` (a pipeline with `state_every`), `state` is the last state
/// taken, and the instance is it with the calls of `since` made again: the
/// first `published` of them are of batches whose outputs are out.
struct LiveSink {
    instance: SinkInstance,
    state: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    since: Option<Vec<Made>>,
    published: usize,
}

/// A call into a sink.
#[derive(Clone, Copy)]
enum Call<'a> {
    Consume(&'a [Event]),
    Tick(u64),
}

/// A call the sink took, kept to be made again.
enum Made {
    Consume(Vec<Event>),
    Tick(u64),
}

impl Made {
    fn call(&self) -> Call<'_> {
        match self {
            Made::Consume(events) => Call::Consume(events),
            Made::Tick(now_ns) => Call::Tick(*now_ns),
        }
    }
}

impl Call<'_> {
    fn make(self, instance: &mut SinkInstance) -> Result<Vec<Event>, Fault> {
        match self {
            Call::Consume(events) => instance.consume(events),
            Call::Tick(now_ns) => instance.tick(now_ns),
        }
    }

    fn kept(self) -> Made {
        match self {
            Call::Consume(events) => Made::Consume(events.to_vec()),
            Call::Tick(now_ns) => Made::Tick(now_ns),
        }
    }
}

impl LiveSink {
    /// A new instance from the last state, given the calls since again
    /// (their events are out already, so what they emit is dropped).
    fn restart(&mut self, prepared: &PreparedSink) -> Result<()> {
        self.instance = prepared.restart(self.state.as_deref())?;
        for made in self.since.iter().flatten() {
            made.call().make(&mut self.instance).map_err(|fault| anyhow::anyhow!("the sink faulted again on a call it had taken before the fault: {fault}"))?;
        }
        Ok(())
    }

    /// Takes the state now: the calls since are in it.
    fn take_state(&mut self, prepared: &PreparedSink) -> Result<()> {
        if self.since.as_ref().is_none_or(Vec::is_empty) {
            return Ok(());
        }
        let snapshot = match self.instance.snapshot() {
            Ok(snapshot) => snapshot,
            Err(fault) => {
                tracing::warn!(pipeline = %prepared.context.pipeline, stage = %prepared.spec.name, %fault, "Sink faulted taking its state; restarting it and taking it again.");
                self.restart(prepared)?;
                self.instance.snapshot().map_err(|fault| anyhow::anyhow!("the sink cannot give its state: {fault}"))?
            }
        };
        self.state = Some(snapshot);
        self.since = Some(Vec::new());
        self.published = 0;
        Ok(())
    }
}

impl Chain {
    pub fn start(version: Arc<PipelineVersion>) -> Result<Self> {
        let instances = version.stages.iter().map(|stage| stage.start()).collect::<Result<_>>()?;
        let lazy = version.spec.state_every.is_some();
        let sink = version
            .sink
            .as_ref()
            .map(|sink| sink.start(None).map(|instance| LiveSink { instance, state: None, committed: None, since: lazy.then(Vec::new), published: 0 }))
            .transpose()?;
        Ok(Self { version, instances, sink, tapped: Vec::new() })
    }

    /// The sink's state, to hand to the next version's chain, between
    /// batches: the committed one, or, when the state is taken only
    /// periodically, the one it has now.
    pub fn hand_over(&mut self) -> Result<Option<Vec<u8>>> {
        let (Some(prepared), Some(sink)) = (self.version.sink.as_ref(), self.sink.as_mut()) else { return Ok(None) };
        if sink.since.is_some() {
            sink.take_state(prepared)?;
            return Ok(sink.state.clone());
        }
        Ok(sink.committed.clone())
    }

    /// Takes over the state an earlier chain's sink handed over, or one kept
    /// from before a restart.
    pub fn take_over(&mut self, state: Option<Vec<u8>>) -> Result<()> {
        if let (Some(sink), Some(state)) = (self.sink.as_mut(), state) {
            sink.instance.restore(&state)?;
            sink.state = Some(state.clone());
            sink.committed = Some(state);
            if let Some(since) = sink.since.as_mut() {
                since.clear();
                sink.published = 0;
            }
        }
        Ok(())
    }

    /// The outputs of everything the sink was given so far are published: its
    /// state becomes the one to keep. Returns it, for keeping elsewhere too.
    /// An error: the sink could not give its state (nothing may be acked).
    pub fn commit(&mut self) -> Result<Option<&[u8]>> {
        let (Some(prepared), Some(sink)) = (self.version.sink.as_ref(), self.sink.as_mut()) else { return Ok(None) };
        sink.take_state(prepared)?;
        sink.committed.clone_from(&sink.state);
        Ok(sink.committed.as_deref())
    }

    /// The outputs of the sink's calls so far are published, though its
    /// state is not committed yet: a rollback keeps them.
    pub fn published(&mut self) {
        if let Some(sink) = self.sink.as_mut() {
            sink.published = sink.since.as_ref().map_or(0, Vec::len);
        }
    }

    /// The outputs since the last commit (or, storing periodically, since
    /// the last `published`) could not be published: the sink goes back to
    /// before them, so that the events it is given again are not counted
    /// twice.
    pub fn rollback(&mut self) -> Result<()> {
        let (Some(prepared), Some(sink)) = (self.version.sink.as_ref(), self.sink.as_mut()) else { return Ok(()) };
        if let Some(since) = sink.since.as_mut() {
            since.truncate(sink.published);
            return sink.restart(prepared);
        }
        sink.instance = prepared.restart(sink.committed.as_deref())?;
        sink.state.clone_from(&sink.committed);
        Ok(())
    }

    /// Lets a sink act on the passing of time; its events are returned ready
    /// to publish. A chain without a sink has nothing to do.
    pub fn tick(&mut self, now_ns: u64) -> Result<Vec<Event>> {
        let (Some(prepared), Some(sink)) = (self.version.sink.as_ref(), self.sink.as_mut()) else { return Ok(Vec::new()) };
        let emitted = match step(sink, Call::Tick(now_ns)) {
            Ok(emitted) => emitted,
            Err(fault) => {
                tracing::warn!(pipeline = %prepared.context.pipeline, stage = %prepared.spec.name, %fault, "Sink faulted on tick; restarting it from its last state.");
                sink.restart(prepared)?;
                return Ok(Vec::new());
            }
        };
        Ok(emitted
            .into_iter()
            .filter(|event| match self.publishable(event) {
                Ok(()) => true,
                Err((code, message)) => {
                    tracing::warn!(pipeline = %self.version.spec.name, code, %message, "A sink's own event cannot be published; dropping it.");
                    false
                }
            })
            .collect())
    }

    /// Runs a batch through every stage. An error means a stage could not be
    /// instantiated again after a fault: nothing of the batch may be acked.
    pub fn process(&mut self, inputs: &[Event]) -> Result<BatchResult> {
        let mut result = BatchResult::default();
        let mut origins = Vec::with_capacity(inputs.len());
        let mut events = Vec::with_capacity(inputs.len());
        for (origin, event) in inputs.iter().enumerate() {
            match self.admit(event) {
                Ok(()) => {
                    origins.push(origin);
                    events.push(event.clone());
                }
                Err((code, message)) => result.rejects.push(host_reject(origin, "input", code, message)),
            }
        }
        for (stage, instance) in self.version.stages.iter().zip(self.instances.iter_mut()) {
            if events.is_empty() {
                break;
            }
            (events, origins) = run_stage(stage, instance, events, origins, &mut result)?;
            if self.tapped.contains(&stage.spec.name) {
                result.tapped.push((stage.spec.name.clone(), events.iter().take(TAPPED_PER_STAGE).cloned().collect()));
            }
        }
        if let (Some(prepared), Some(sink)) = (self.version.sink.as_ref(), self.sink.as_mut())
            && !events.is_empty()
        {
            (events, origins) = run_sink(prepared, sink, events, origins, &mut result)?;
            if self.tapped.contains(&prepared.spec.name) {
                result.tapped.push((prepared.spec.name.clone(), events.iter().take(TAPPED_PER_STAGE).cloned().collect()));
            }
        }
        for (event, origin) in events.into_iter().zip(origins) {
            match self.publishable(&event) {
                Ok(()) => result.outputs.push(Output { origin, event }),
                Err((code, message)) => result.rejects.push(host_reject(origin, "output", code, message)),
            }
        }
        Ok(result)
    }

    /// The host's own checks on an input event, before any plugin sees it.
    fn admit(&self, event: &Event) -> Result<(), (&'static str, String)> {
        let spec = &self.version.spec;
        if event.body.is_empty() {
            return Err(("empty", "the message has an empty body".into()));
        }
        if event.body.len() > spec.max_event_bytes {
            return Err(("too_large", format!("the body is {} bytes; this pipeline accepts at most {}", event.body.len(), spec.max_event_bytes)));
        }
        if spec.format == BodyFormat::Json {
            sluice_kit::body::check(&event.body).map_err(|message| ("malformed", message))?;
        }
        Ok(())
    }

    /// Whether an output can be published without harm.
    fn publishable(&self, event: &Event) -> Result<(), (&'static str, String)> {
        let spec = &self.version.spec;
        subject::check(&event.subject, false).map_err(|e| ("bad_subject", e))?;
        // Outputs to a webhook never reach NATS, so cannot come back in.
        if spec.webhook.is_none() && subject::matches(spec.input.subject(), &event.subject) {
            return Err((
                "loop",
                format!(
                    "output subject {:?} matches this pipeline's input {:?}; publishing it would feed it back in (does the pipeline route its events?)",
                    event.subject,
                    spec.input.subject()
                ),
            ));
        }
        if event.body.len() > spec.max_event_bytes {
            return Err(("too_large", format!("the output body is {} bytes; this pipeline allows at most {}", event.body.len(), spec.max_event_bytes)));
        }
        if let Some((name, value)) = event.headers.iter().find(|(name, value)| !header_ok(name, value)) {
            return Err((
                "bad_header",
                format!("header {name:?}: {value:?} cannot be sent (names are printable ASCII without `:`, values have no line breaks)"),
            ));
        }
        Ok(())
    }
}

/// Whether NATS can carry this header as it is.
fn header_ok(name: &str, value: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_graphic() && c != ':') && !value.contains(['\r', '\n'])
}

fn host_reject(origin: usize, stage: &str, code: &str, message: String) -> Reject {
    Reject { origin, stage: stage.into(), code: code.into(), property: None, message }
}

/// Runs one stage over the events still in flight and sorts its outcomes.
fn run_stage(
    stage: &PreparedStage,
    instance: &mut TransformInstance,
    events: Vec<Event>,
    origins: Vec<usize>,
    result: &mut BatchResult,
) -> Result<(Vec<Event>, Vec<usize>)> {
    let outcomes: Vec<Result<Outcome, Fault>> = match instance.process(&events) {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(fault) => {
            result.faults += 1;
            tracing::warn!(
                pipeline = %stage.context.pipeline, stage = %stage.spec.name, events = events.len(), %fault,
                "Stage faulted on a batch; replacing the instance and retrying the batch event by event."
            );
            *instance = stage.restart()?;
            if events.len() == 1 { vec![Err(fault)] } else { isolate(stage, instance, &events, result)? }
        }
    };

    let mut kept = Vec::with_capacity(events.len());
    let mut kept_origins = Vec::with_capacity(events.len());
    let name = &stage.spec.name;
    for ((event, origin), outcome) in events.into_iter().zip(origins).zip(outcomes) {
        match outcome {
            Ok(Outcome::Keep) => {
                kept.push(event);
                kept_origins.push(origin);
            }
            Ok(Outcome::Reroute(subject)) => {
                kept.push(Event { subject, ..event });
                kept_origins.push(origin);
            }
            Ok(Outcome::Replace(replacements)) => {
                kept_origins.extend(std::iter::repeat_n(origin, replacements.len()));
                kept.extend(replacements);
            }
            Ok(Outcome::Drop(reason)) => {
                result.dropped += 1;
                tracing::debug!(pipeline = %stage.context.pipeline, stage = %name, %reason, "Event dropped.");
            }
            Ok(Outcome::Reject(r)) => result.rejects.push(Reject { origin, stage: name.clone(), code: r.code, property: r.property, message: r.message }),
            Err(fault) => {
                tracing::warn!(pipeline = %stage.context.pipeline, stage = %name, %fault, "Event faulted the stage; sending it to the dead-letter subject.");
                result.rejects.push(Reject { origin, stage: name.clone(), code: fault.code().into(), property: None, message: fault.to_string() });
            }
        }
    }
    Ok((kept, kept_origins))
}

/// One call into a sink, then a snapshot of the state it left: both must
/// succeed for the new state to count. Storing periodically, the call is
/// kept instead of the snapshot.
fn step(sink: &mut LiveSink, call: Call<'_>) -> Result<Vec<Event>, Fault> {
    let emitted = call.make(&mut sink.instance)?;
    match sink.since.as_mut() {
        Some(since) => since.push(call.kept()),
        None => sink.state = Some(sink.instance.snapshot()?),
    }
    Ok(emitted)
}

/// Hands the batch to the sink. Its own events become the outputs, each
/// credited to the batch's last input. A fault restarts the sink from its last
/// good state and feeds it the batch event by event, so that only the event
/// that faults it is refused.
fn run_sink(
    prepared: &PreparedSink,
    sink: &mut LiveSink,
    events: Vec<Event>,
    origins: Vec<usize>,
    result: &mut BatchResult,
) -> Result<(Vec<Event>, Vec<usize>)> {
    let credit = origins.last().copied().unwrap_or_default();
    // As `step` does, but a batch kept to be made again is moved, not copied.
    let made = Call::Consume(&events).make(&mut sink.instance).and_then(|emitted| {
        if sink.since.is_none() {
            sink.state = Some(sink.instance.snapshot()?);
        }
        Ok(emitted)
    });
    let emitted = match made {
        Ok(emitted) => {
            if let Some(since) = sink.since.as_mut() {
                since.push(Made::Consume(events));
            }
            emitted
        }
        Err(fault) => {
            result.faults += 1;
            tracing::warn!(pipeline = %prepared.context.pipeline, stage = %prepared.spec.name, %fault, "Sink faulted on a batch; restarting it from its last state and feeding it event by event.");
            sink.restart(prepared)?;
            let mut emitted = Vec::new();
            for (event, origin) in events.iter().zip(&origins) {
                match step(sink, Call::Consume(std::slice::from_ref(event))) {
                    Ok(more) => emitted.extend(more),
                    Err(fault) => {
                        result.faults += 1;
                        let name = prepared.spec.name.clone();
                        result.rejects.push(Reject { origin: *origin, stage: name, code: fault.code().into(), property: None, message: fault.to_string() });
                        sink.restart(prepared)?;
                    }
                }
            }
            emitted
        }
    };
    let origins = vec![credit; emitted.len()];
    Ok((emitted, origins))
}

/// Runs each event alone, replacing the instance after every fault.
fn isolate(stage: &PreparedStage, instance: &mut TransformInstance, events: &[Event], result: &mut BatchResult) -> Result<Vec<Result<Outcome, Fault>>> {
    let mut outcomes = Vec::with_capacity(events.len());
    for event in events {
        match instance.process(std::slice::from_ref(event)) {
            Ok(mut single) => outcomes.push(Ok(single.pop().expect("process checks one outcome per event"))),
            Err(fault) => {
                result.faults += 1;
                *instance = stage.restart()?;
                outcomes.push(Err(fault));
            }
        }
    }
    Ok(outcomes)
}
