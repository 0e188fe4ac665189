//! The envelope a rejected event travels in to `<dead_letter>.<stage>`: why
//! it was refused, where, and the original event, byte for byte.
//!
//! An envelope must always be publishable, or one bad event would fail its
//! whole batch again and again. So what a plugin wrote (code, property,
//! message) is capped, and an original too large for the envelope to fit the
//! server's `max_payload` is cut: the envelope then keeps what identifies it
//! (subject, size, SHA-256 and its first KiB) and says that the body was cut.

use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Reject, hex};
use crate::plugin::Event;

/// How much of a cut body the envelope keeps.
pub const HEAD_BYTES: usize = 1024;
/// Caps on what a plugin wrote about the rejection.
const CODE_BYTES: usize = 128;
const PROPERTY_BYTES: usize = 1024;
const MESSAGE_BYTES: usize = 4096;

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
    /// The original body as text, when it is UTF-8 and was not cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<&'a str>,
    /// The original body, exactly, in standard base64; absent when cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// The original body's size and SHA-256 (hex), which identify it even
    /// when it was cut.
    pub body_bytes: usize,
    pub body_sha256: String,
    /// How many of the original's headers were left off the dead letter's
    /// message because they alone would not leave room for the envelope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers_dropped: Option<usize>,
    /// Present when the body did not fit the envelope: what is left of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_cut: Option<Cut<'a>>,
}

/// What a cut envelope keeps of the original body.
#[derive(Debug, Serialize)]
pub struct Cut<'a> {
    /// Why it was cut.
    pub reason: String,
    /// The first [`HEAD_BYTES`] bytes in base64, and as text when they are UTF-8
    /// (up to the last whole character).
    pub head_base64: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<&'a str>,
}

impl<'a> DeadLetter<'a> {
    pub fn new(pipeline: &'a str, version: &'a str, reject: &'a Reject, original: &'a Event) -> Self {
        Self {
            pipeline,
            version,
            stage: &reject.stage,
            code: capped(&reject.code, CODE_BYTES),
            property: reject.property.as_deref().map(|p| capped(p, PROPERTY_BYTES)),
            message: capped(&reject.message, MESSAGE_BYTES),
            subject: &original.subject,
            body: std::str::from_utf8(&original.body).ok(),
            body_base64: Some(base64::engine::general_purpose::STANDARD.encode(&original.body)),
            body_bytes: original.body.len(),
            body_sha256: hex(&Sha256::digest(&original.body)),
            headers_dropped: None,
            body_cut: None,
        }
    }

    /// The envelope as JSON in at most `limit` bytes, the body cut if it
    /// must be. Only the capped fields are left then, so a cut envelope is a
    /// few KiB: `limit` below that is not a server anyone runs.
    pub fn to_json_within(mut self, limit: usize, original: &'a [u8]) -> Vec<u8> {
        let whole = self.to_json();
        if whole.len() <= limit {
            return whole;
        }
        let head = &original[..original.len().min(HEAD_BYTES)];
        let text = match std::str::from_utf8(head) {
            Ok(text) => Some(text),
            // A character cut at the end of the head is fine; bytes that are not UTF-8 before it are not.
            Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).ok(),
            Err(_) => None,
        };
        self.body = None;
        self.body_base64 = None;
        self.body_cut = Some(Cut {
            reason: format!("the envelope with the whole body would be {} bytes; the server takes at most {limit} per message", whole.len()),
            head_base64: base64::engine::general_purpose::STANDARD.encode(head),
            head: text,
        });
        self.to_json()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a dead letter always serialises")
    }
}

/// `text` cut to at most `bytes` bytes, at a character boundary.
fn capped(text: &str, bytes: usize) -> &str {
    if text.len() <= bytes {
        return text;
    }
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(message: &str) -> Reject {
        Reject { origin: 0, stage: "validate".into(), code: "invalid_property".into(), property: Some("n".into()), message: message.into() }
    }

    fn event(body: &[u8]) -> Event {
        Event { subject: "raw.x".into(), headers: Vec::new(), body: body.to_vec() }
    }

    fn parse(json: &[u8]) -> serde_json::Value {
        serde_json::from_slice(json).unwrap()
    }

    #[test]
    fn an_envelope_that_fits_carries_the_whole_body_twice() {
        let (reject, event) = (reject("bad"), event(b"{\"n\":1}"));
        let json = parse(&DeadLetter::new("p", "v", &reject, &event).to_json_within(1 << 20, &event.body));
        assert_eq!(json["body"], "{\"n\":1}");
        assert_eq!(json["body_base64"], "eyJuIjoxfQ==");
        assert_eq!(json["body_bytes"], 7);
        assert_eq!(json["body_sha256"], hex(&Sha256::digest(b"{\"n\":1}")));
        assert!(json.get("body_cut").is_none());
    }

    #[test]
    fn a_body_too_large_for_the_limit_is_cut_to_its_head_and_hash() {
        let body: Vec<u8> = std::iter::repeat_n(b'a', 600 << 10).collect();
        let (reject, event) = (reject("too big"), event(&body));
        let json = DeadLetter::new("p", "v", &reject, &event).to_json_within(1 << 20, &event.body);
        assert!(json.len() < 8 << 10, "a cut envelope is small: {} bytes", json.len());
        let json = parse(&json);
        assert!(json.get("body").is_none() && json.get("body_base64").is_none());
        assert_eq!(json["body_bytes"], 600 << 10);
        assert_eq!(json["body_sha256"], hex(&Sha256::digest(&body)));
        assert_eq!(json["body_cut"]["head"].as_str().unwrap().len(), HEAD_BYTES);
        assert!(json["body_cut"]["reason"].as_str().unwrap().contains("at most 1048576"));
    }

    #[test]
    fn the_limit_decides_to_the_byte() {
        let (reject, event) = (reject("x"), event(b"{\"n\":1}"));
        let whole = DeadLetter::new("p", "v", &reject, &event).to_json();
        let at = DeadLetter::new("p", "v", &reject, &event).to_json_within(whole.len(), &event.body);
        let under = DeadLetter::new("p", "v", &reject, &event).to_json_within(whole.len() - 1, &event.body);
        assert_eq!(at, whole);
        assert!(parse(&under).get("body_cut").is_some());
    }

    #[test]
    fn a_head_keeps_whole_characters_and_no_text_for_bytes_that_are_not_utf8() {
        let mut body = vec![b'a'; HEAD_BYTES - 1];
        body.extend("é and more".as_bytes());
        body.extend(vec![b'b'; 4096]);
        let (reject, utf8) = (reject("x"), event(&body));
        let json = parse(&DeadLetter::new("p", "v", &reject, &utf8).to_json_within(4096, &utf8.body));
        assert_eq!(json["body_cut"]["head"].as_str().unwrap().len(), HEAD_BYTES - 1, "the é is cut in half at the end: left out");
        let binary = event(&[0xff; 4096]);
        let json = parse(&DeadLetter::new("p", "v", &reject, &binary).to_json_within(4096, &binary.body));
        assert!(json["body_cut"].get("head").is_none());
        assert_eq!(json["body_cut"]["head_base64"].as_str().unwrap().len(), HEAD_BYTES.div_ceil(3) * 4);
    }

    #[test]
    fn what_a_plugin_wrote_is_capped_at_character_boundaries() {
        let long = "é".repeat(10_000);
        let reject = Reject { origin: 0, stage: "s".into(), code: long.clone(), property: Some(long.clone()), message: long };
        let event = event(b"{}");
        let letter = DeadLetter::new("p", "v", &reject, &event);
        assert_eq!((letter.code.len(), letter.property.unwrap().len(), letter.message.len()), (CODE_BYTES, PROPERTY_BYTES, MESSAGE_BYTES));
    }
}
