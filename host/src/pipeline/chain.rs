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
use serde::de::IgnoredAny;

use super::PipelineVersion;
use super::version::PreparedStage;
use crate::config::BodyFormat;
use crate::plugin::{Event, Fault, Outcome, TransformInstance};
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
}

/// One worker's live instances of one pipeline version.
pub struct Chain {
    pub version: Arc<PipelineVersion>,
    instances: Vec<TransformInstance>,
}

impl Chain {
    pub fn start(version: Arc<PipelineVersion>) -> Result<Self> {
        let instances = version.stages.iter().map(PreparedStage::start).collect::<Result<_>>()?;
        Ok(Self { version, instances })
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
            if std::str::from_utf8(&event.body).is_err() {
                return Err(("malformed", "the body is not UTF-8 text; this pipeline takes JSON objects".into()));
            }
            if event.body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
                return Err(("malformed", "the body is not a JSON object (it does not start with `{`)".into()));
            }
            if let Err(e) = serde_json::from_slice::<IgnoredAny>(&event.body) {
                return Err(("malformed", format!("the body is not valid JSON: {e}")));
            }
        }
        Ok(())
    }

    /// Whether an output can be published without harm.
    fn publishable(&self, event: &Event) -> Result<(), (&'static str, String)> {
        let spec = &self.version.spec;
        subject::check(&event.subject, false).map_err(|e| ("bad_subject", e))?;
        if subject::matches(spec.input.subject(), &event.subject) {
            return Err((
                "loop",
                format!("output subject {:?} matches this pipeline's input {:?}; publishing it would feed it back in (does the pipeline route its events?)", event.subject, spec.input.subject()),
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
            *instance = stage.start()?;
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

/// Runs each event alone, replacing the instance after every fault.
fn isolate(stage: &PreparedStage, instance: &mut TransformInstance, events: &[Event], result: &mut BatchResult) -> Result<Vec<Result<Outcome, Fault>>> {
    let mut outcomes = Vec::with_capacity(events.len());
    for event in events {
        match instance.process(std::slice::from_ref(event)) {
            Ok(mut single) => outcomes.push(Ok(single.pop().expect("process checks one outcome per event"))),
            Err(fault) => {
                result.faults += 1;
                *instance = stage.start()?;
                outcomes.push(Err(fault));
            }
        }
    }
    Ok(outcomes)
}
