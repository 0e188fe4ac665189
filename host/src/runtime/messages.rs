//! The messages a worker publishes, built from what a batch came to: outputs
//! with the version headers and their message ids, and dead letters sized to
//! fit the server. Pure: nothing here talks to NATS, so it is unit-tested
//! without a server.
//!
//! Message ids make repeats harmless: an output's id derives from its input's
//! stream position (`STREAM:sequence:n`), so a redelivered input yields the
//! same ids and a stream with a duplicate window stores each output once. A
//! sink's outputs may come from a batch formed differently after a
//! redelivery, so theirs derive from their content instead.

use async_nats::HeaderMap;
use sha2::{Digest, Sha256};

use crate::nats::publish::Message;
use crate::pipeline::hex;
use crate::pipeline::{BatchResult, DeadLetter, PIPELINE_HEADER, PipelineVersion, Reject, VERSION_HEADER};
use crate::plugin::Event;

/// Room a dead letter's envelope needs beside its headers; below it, the
/// original's headers are left off (a cut envelope is a few KiB).
const ENVELOPE_ROOM: usize = 16 << 10;

/// What every message of one pipeline version is stamped with.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub pipeline: &'a str,
    pub version: &'a str,
    /// Dead letters go to `<dead_letter>.<stage>`.
    pub dead_letter: &'a str,
    /// Outputs are named by their content (a sink's), not their input.
    pub content_ids: bool,
    /// The server's `max_payload`: no message may be larger (headers and body).
    pub max_payload: usize,
}

impl<'a> Stamp<'a> {
    pub fn new(version: &'a PipelineVersion, max_payload: usize) -> Self {
        Self { pipeline: &version.spec.name, version: &version.id, dead_letter: &version.spec.dead_letter, content_ids: version.sink.is_some(), max_payload }
    }
}

/// Whether a message is an output or a dead letter (which always goes to NATS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Output,
    DeadLetter,
}

/// What a dead letter for this message would carry as the original event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The input event at this index of the batch: its fate is tied to the
    /// message's (a transform's output, or its dead letter).
    Input(usize),
    /// The message itself: a sink's event, which no single input caused.
    Itself,
}

/// One message to publish, with where it came from.
pub struct Outbound {
    pub message: Message,
    pub kind: Kind,
    pub source: Source,
}

/// The messages a processed batch publishes: outputs, then dead letters. An
/// output too large for the server is not published but dead-lettered as
/// `too_large` at stage `output`, like any other output the host refuses.
pub fn batch(stamp: Stamp, inputs: &[Event], ids: &[Option<String>], result: BatchResult) -> Vec<Outbound> {
    let mut produced = vec![0usize; inputs.len()];
    let mut rejects = result.rejects;
    let mut outbound = Vec::with_capacity(result.outputs.len() + rejects.len());
    for output in result.outputs {
        let origin = output.origin;
        let id = if stamp.content_ids {
            Some(content_id(stamp.pipeline, &output.event))
        } else {
            ids[origin].as_ref().map(|id| format!("{id}:{}", produced[origin]))
        };
        produced[origin] += 1;
        let message = output_message(stamp, output.event, id);
        match too_large(stamp, &message) {
            None => outbound.push(Outbound { message, kind: Kind::Output, source: if stamp.content_ids { Source::Itself } else { Source::Input(origin) } }),
            Some(message) => rejects.push(Reject { origin, stage: "output".into(), code: "too_large".into(), property: None, message }),
        }
    }
    for reject in &rejects {
        let id = ids[reject.origin].as_ref().map(|id| format!("{id}:dead-letter"));
        let message = dead_letter(stamp, reject, &inputs[reject.origin], id);
        outbound.push(Outbound { message, kind: Kind::DeadLetter, source: Source::Input(reject.origin) });
    }
    outbound
}

/// The messages for what a sink emitted on its own (on `tick`): named by
/// their content, dead-lettered as themselves.
pub fn emitted(stamp: Stamp, events: Vec<Event>) -> Vec<Outbound> {
    events
        .into_iter()
        .map(|event| {
            let id = content_id(stamp.pipeline, &event);
            let message = output_message(stamp, event, Some(id));
            match too_large(stamp, &message) {
                None => Outbound { message, kind: Kind::Output, source: Source::Itself },
                Some(why) => {
                    let original = original_of(&message);
                    let reject = Reject { origin: 0, stage: "output".into(), code: "too_large".into(), property: None, message: why };
                    let id = message.headers.get("Nats-Msg-Id").map(|id| format!("{id}:dead-letter"));
                    Outbound { message: dead_letter(stamp, &reject, &original, id), kind: Kind::DeadLetter, source: Source::Itself }
                }
            }
        })
        .collect()
}

/// The envelope of a refused event, to `<dead_letter>.<stage>`; the
/// original's headers (trace ids, say) go with it, unless they alone would
/// leave too little room for the envelope. Always within `max_payload`.
pub fn dead_letter(stamp: Stamp, reject: &Reject, original: &Event, message_id: Option<String>) -> Message {
    let mut headers = carried(&original.headers);
    stamped(&mut headers, stamp, message_id.as_deref());
    let mut letter = DeadLetter::new(stamp.pipeline, stamp.version, reject, original);
    if wire_len(&headers) + ENVELOPE_ROOM > stamp.max_payload {
        headers = HeaderMap::new();
        stamped(&mut headers, stamp, message_id.as_deref());
        letter.headers_dropped = Some(original.headers.len());
    }
    let room = stamp.max_payload.saturating_sub(wire_len(&headers));
    let body = letter.to_json_within(room, &original.body);
    Message { subject: format!("{}.{}", stamp.dead_letter, reject.stage), headers, body: body.into() }
}

/// The event a message carries, to dead-letter it as itself.
pub fn original_of(message: &Message) -> Event {
    let headers = message.headers.iter().flat_map(|(name, values)| values.iter().map(move |value| (name.to_string(), value.to_string()))).collect();
    Event { subject: message.subject.clone(), headers, body: message.body.to_vec() }
}

fn output_message(stamp: Stamp, event: Event, id: Option<String>) -> Message {
    let mut headers = carried(&event.headers);
    stamped(&mut headers, stamp, id.as_deref());
    Message { subject: event.subject, headers, body: event.body.into() }
}

/// Why the server would refuse this message for its size, if it would.
fn too_large(stamp: Stamp, message: &Message) -> Option<String> {
    let size = wire_len(&message.headers) + message.body.len();
    (size > stamp.max_payload)
        .then(|| format!("the output is {size} bytes with its headers; the NATS server takes at most {} per message (its max_payload)", stamp.max_payload))
}

/// A message id from the pipeline, subject and body: the same event emitted
/// again (after a retry or a restart) is dropped by the stream.
pub fn content_id(pipeline: &str, event: &Event) -> String {
    let mut hash = Sha256::new();
    for part in [pipeline.as_bytes(), event.subject.as_bytes(), &event.body] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    format!("{pipeline}:{}", hex(&hash.finalize()[..16]))
}

/// Headers passed on from an event to the message that carries it; its
/// message id is not: each message gets its own.
fn carried(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if name != "Nats-Msg-Id" {
            map.append(name.as_str(), value.as_str());
        }
    }
    map
}

fn stamped(headers: &mut HeaderMap, stamp: Stamp, message_id: Option<&str>) {
    headers.insert(VERSION_HEADER, stamp.version);
    headers.insert(PIPELINE_HEADER, stamp.pipeline);
    if let Some(id) = message_id {
        headers.insert("Nats-Msg-Id", id);
    }
}

/// The size of a header block on the wire, as the server counts it against
/// `max_payload` (`NATS/1.0\r\n`, `name: value\r\n` each, `\r\n`).
pub fn wire_len(headers: &HeaderMap) -> usize {
    let lines: usize =
        headers.iter().map(|(name, values)| values.iter().map(|v| AsRef::<str>::as_ref(name).len() + 2 + v.as_str().len() + 2).sum::<usize>()).sum();
    if lines == 0 { 0 } else { "NATS/1.0\r\n\r\n".len() + lines }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Output;

    const MAX: usize = 1 << 20;

    fn stamp(content_ids: bool, max_payload: usize) -> Stamp<'static> {
        Stamp { pipeline: "ingest", version: "v1", dead_letter: "dlq", content_ids, max_payload }
    }

    fn event(subject: &str, body: &[u8]) -> Event {
        Event { subject: subject.into(), headers: vec![("Trace".into(), "t-1".into()), ("Nats-Msg-Id".into(), "theirs".into())], body: body.to_vec() }
    }

    fn header(message: &Message, name: &str) -> Option<String> {
        message.headers.get(name).map(|v| v.to_string())
    }

    fn json(message: &Message) -> serde_json::Value {
        serde_json::from_slice(&message.body).unwrap()
    }

    #[test]
    fn outputs_are_named_by_their_input_and_carry_its_headers() {
        let inputs = [event("raw.a", b"{}"), event("raw.b", b"{}")];
        let ids = [Some("RAW:7".to_string()), Some("RAW:8".to_string())];
        let outputs = vec![
            Output { origin: 1, event: event("out.b", b"{\"n\":1}") },
            Output { origin: 1, event: event("out.b2", b"{\"n\":2}") },
            Output { origin: 0, event: event("out.a", b"{}") },
        ];
        let rejects = vec![Reject { origin: 0, stage: "tag".into(), code: "missing_property".into(), property: Some("n".into()), message: "no n".into() }];
        let out = batch(stamp(false, MAX), &inputs, &ids, BatchResult { outputs, rejects, ..BatchResult::default() });
        let named: Vec<_> = out.iter().map(|o| (o.message.subject.as_str(), header(&o.message, "Nats-Msg-Id").unwrap(), o.kind, o.source)).collect();
        assert_eq!(
            named,
            [
                ("out.b", "RAW:8:0".into(), Kind::Output, Source::Input(1)),
                ("out.b2", "RAW:8:1".into(), Kind::Output, Source::Input(1)),
                ("out.a", "RAW:7:0".into(), Kind::Output, Source::Input(0)),
                ("dlq.tag", "RAW:7:dead-letter".into(), Kind::DeadLetter, Source::Input(0)),
            ]
        );
        for o in &out {
            assert_eq!(header(&o.message, "Trace").as_deref(), Some("t-1"));
            assert_eq!(header(&o.message, VERSION_HEADER).as_deref(), Some("v1"));
            assert_eq!(header(&o.message, PIPELINE_HEADER).as_deref(), Some("ingest"));
        }
        assert_eq!(json(&out[3].message)["code"], "missing_property");
    }

    #[test]
    fn a_sinks_outputs_are_named_by_their_content() {
        let inputs = [event("raw.a", b"{}")];
        let outputs = vec![Output { origin: 0, event: event("alerts.x", b"{\"state\":\"firing\"}") }];
        let out = batch(stamp(true, MAX), &inputs, &[Some("RAW:1".into())], BatchResult { outputs, ..Default::default() });
        let again = emitted(stamp(true, MAX), vec![event("alerts.x", b"{\"state\":\"firing\"}")]);
        assert_eq!(header(&out[0].message, "Nats-Msg-Id"), header(&again[0].message, "Nats-Msg-Id"), "the same alert has the same id");
        assert!(header(&out[0].message, "Nats-Msg-Id").unwrap().starts_with("ingest:"));
        assert_eq!(out[0].source, Source::Itself);
        let other = emitted(stamp(true, MAX), vec![event("alerts.x", b"{\"state\":\"resolved\"}")]);
        assert_ne!(header(&out[0].message, "Nats-Msg-Id"), header(&other[0].message, "Nats-Msg-Id"));
    }

    #[test]
    fn an_output_over_max_payload_is_dead_lettered_and_its_dead_letter_fits() {
        let max = 64 << 10;
        let inputs = [event("raw.a", &vec![b' '; max - 200])];
        let outputs = vec![Output { origin: 0, event: event("out.a", &vec![b'x'; max]) }];
        let out = batch(stamp(false, max), &inputs, &[Some("RAW:1".into())], BatchResult { outputs, ..Default::default() });
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].message.subject.as_str(), out[0].kind), ("dlq.output", Kind::DeadLetter));
        let letter = json(&out[0].message);
        assert_eq!(letter["code"], "too_large");
        assert!(letter["message"].as_str().unwrap().contains("at most 65536"), "{letter}");
        assert!(letter["body_cut"].is_object(), "the input was as large as the limit: {letter}");
        assert!(wire_len(&out[0].message.headers) + out[0].message.body.len() <= max);
    }

    #[test]
    fn an_output_just_under_max_payload_is_published() {
        let max = 64 << 10;
        let probe = output_message(stamp(false, max), event("out.a", b""), Some("RAW:1:0".into()));
        let room = max - wire_len(&probe.headers);
        for (body, published) in [(room, true), (room + 1, false)] {
            let outputs = vec![Output { origin: 0, event: event("out.a", &vec![b'x'; body]) }];
            let out = batch(stamp(false, max), &[event("raw.a", b"{}")], &[Some("RAW:1".into())], BatchResult { outputs, ..Default::default() });
            assert_eq!(out[0].kind == Kind::Output, published, "a body of {body} bytes with {room} bytes of room");
        }
    }

    #[test]
    fn a_dead_letter_of_an_event_with_huge_headers_leaves_them_off() {
        let max = 64 << 10;
        let mut original = event("raw.a", b"{}");
        original.headers.push(("Big".into(), "h".repeat(max - 100)));
        let reject = Reject { origin: 0, stage: "input".into(), code: "too_large".into(), property: None, message: "big".into() };
        let message = dead_letter(stamp(false, max), &reject, &original, Some("RAW:1:dead-letter".into()));
        assert!(wire_len(&message.headers) + message.body.len() <= max);
        assert_eq!(header(&message, "Big"), None);
        assert_eq!(header(&message, "Nats-Msg-Id").as_deref(), Some("RAW:1:dead-letter"));
        assert_eq!(json(&message)["headers_dropped"], 3);
    }

    #[test]
    fn the_wire_length_is_what_nats_serialises() {
        let mut headers = HeaderMap::new();
        assert_eq!(wire_len(&headers), 0);
        headers.insert("A", "1");
        headers.append("A", "22");
        headers.insert("Bee", "x");
        // NATS/1.0\r\n A: 1\r\n A: 22\r\n Bee: x\r\n \r\n
        assert_eq!(wire_len(&headers), 10 + 6 + 7 + 8 + 2);
    }
}
