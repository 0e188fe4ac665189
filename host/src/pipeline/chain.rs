//! The batch path through one worker's instances of a pipeline version.
//!
//! A batch is first admitted (empty, oversize and, for JSON pipelines,
//! malformed events are refused by the host itself), then handed to each stage
//! in one call. If a call faults (trap, time budget, memory cap, broken
//! contract), the instance is replaced and the batch is run again event by
//! event, so that only the event that causes the fault is refused and every
//! other event of the batch goes on.

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
struct LiveSink {
    instance: SinkInstance,
    state: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
}

impl Chain {
    pub fn start(version: Arc<PipelineVersion>) -> Result<Self> {
        let instances = version.stages.iter().map(|stage| stage.start()).collect::<Result<_>>()?;
        let sink = version.sink.as_ref().map(|sink| sink.start(None).map(|instance| LiveSink { instance, state: None, committed: None })).transpose()?;
        Ok(Self { version, instances, sink, tapped: Vec::new() })
    }

    /// The sink's committed state, to hand to the next version's chain.
    pub fn hand_over(&self) -> Option<Vec<u8>> {
        self.sink.as_ref().and_then(|sink| sink.committed.clone())
    }

    /// Takes over the state an earlier chain's sink handed over, or one kept
    /// from before a restart.
    pub fn take_over(&mut self, state: Option<Vec<u8>>) -> Result<()> {
        if let (Some(sink), Some(state)) = (self.sink.as_mut(), state) {
            sink.instance.restore(&state)?;
            sink.state = Some(state.clone());
            sink.committed = Some(state);
        }
        Ok(())
    }

    /// The outputs of everything the sink was given so far are published: its
    /// state becomes the one to keep. Returns it, for keeping elsewhere too.
    pub fn commit(&mut self) -> Option<&[u8]> {
        let sink = self.sink.as_mut()?;
        sink.committed.clone_from(&sink.state);
        sink.committed.as_deref()
    }

    /// The outputs since the last commit could not be published: the sink
    /// goes back to the committed state, so that the events it is given again
    /// are not counted twice.
    pub fn rollback(&mut self) -> Result<()> {
        let (Some(prepared), Some(sink)) = (self.version.sink.as_ref(), self.sink.as_mut()) else { return Ok(()) };
        sink.instance = prepared.restart(sink.committed.as_deref())?;
        sink.state.clone_from(&sink.committed);
        Ok(())
    }

    /// Lets a sink act on the passing of time; its events are returned ready
    /// to publish. A chain without a sink has nothing to do.
    pub fn tick(&mut self, now_ns: u64) -> Result<Vec<Event>> {
        let (Some(prepared), Some(sink)) = (self.version.sink.as_ref(), self.sink.as_mut()) else { return Ok(Vec::new()) };
        let emitted = match step(sink, |instance| instance.tick(now_ns)) {
            Ok(emitted) => emitted,
            Err(fault) => {
                tracing::warn!(pipeline = %prepared.context.pipeline, stage = %prepared.spec.name, %fault, "Sink faulted on tick; restarting it from its last state.");
                sink.instance = prepared.restart(sink.state.as_deref())?;
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
            super::body::check(&event.body).map_err(|message| ("malformed", message))?;
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
/// succeed for the new state to count.
fn step<T>(sink: &mut LiveSink, call: impl FnOnce(&mut SinkInstance) -> Result<T, Fault>) -> Result<T, Fault> {
    let value = call(&mut sink.instance)?;
    sink.state = Some(sink.instance.snapshot()?);
    Ok(value)
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
    let emitted = match step(sink, |instance| instance.consume(&events)) {
        Ok(emitted) => emitted,
        Err(fault) => {
            result.faults += 1;
            tracing::warn!(pipeline = %prepared.context.pipeline, stage = %prepared.spec.name, %fault, "Sink faulted on a batch; restarting it from its last state and feeding it event by event.");
            sink.instance = prepared.restart(sink.state.as_deref())?;
            let mut emitted = Vec::new();
            for (event, origin) in events.iter().zip(&origins) {
                match step(sink, |instance| instance.consume(std::slice::from_ref(event))) {
                    Ok(more) => emitted.extend(more),
                    Err(fault) => {
                        result.faults += 1;
                        let name = prepared.spec.name.clone();
                        result.rejects.push(Reject { origin: *origin, stage: name, code: fault.code().into(), property: None, message: fault.to_string() });
                        sink.instance = prepared.restart(sink.state.as_deref())?;
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
