//! The envelope a rejected event travels in to `<dead_letter>.<stage>`: why
//! it was refused, where, and the original event, byte for byte.

use base64::Engine as _;
use serde::Serialize;

use super::Reject;
use crate::plugin::Event;

#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    pub pipeline: &'a str,
    pub version: &'a str,
    /// The stage that refused the event; `input` for the host's own checks
    /// (size, empty, not JSON), `output` for a subject the host cannot publish.
    pub stage: &'a str,
    pub code: &'a str,
    pub property: Option<&'a str>,
    pub message: &'a str,
    /// The subject the original event arrived on.
    pub subject: &'a str,
    /// The original body as text, when it is UTF-8.
    pub body: Option<&'a str>,
    /// The original body, exactly, in standard base64.
    pub body_base64: String,
}

impl<'a> DeadLetter<'a> {
    pub fn new(pipeline: &'a str, version: &'a str, reject: &'a Reject, original: &'a Event) -> Self {
        Self {
            pipeline,
            version,
            stage: &reject.stage,
            code: &reject.code,
            property: reject.property.as_deref(),
            message: &reject.message,
            subject: &original.subject,
            body: std::str::from_utf8(&original.body).ok(),
            body_base64: base64::engine::general_purpose::STANDARD.encode(&original.body),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a dead letter always serialises")
    }
}
