//! `sluice tap`: a live, sampled view of the events passing one point of a
//! running pipeline, on every host that runs it, over NATS.
//!
//! A tap asks on `sluice.tap.<pipeline>` ([`Request`]), again every few
//! seconds while it wants more; each host running the pipeline answers on
//! the tap's inbox that it taps, then copies events there until the tap has
//! its `limit`, falls silent past its expiry, or asks to stop. A worker
//! looks at one atomic flag per batch when nobody taps; when someone does,
//! what it sends is capped per tap and second, and each body at 64 KiB.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Where a tap looks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Point {
    /// Events as the pipeline reads them, before any stage.
    Input,
    /// What the stage of this name passes on to the next (after it kept,
    /// changed, split or rerouted them; not those it dropped or refused).
    Stage(String),
    /// What it publishes on its output subjects (or sends to its webhook).
    Output,
    /// Its dead letters: they hold whole events, personal data included.
    DeadLetters,
}

/// What a tap asks of the hosts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub point: Point,
    /// Where copies go.
    pub inbox: String,
    /// How many events the tap still wants from each host; 0 stops it.
    pub limit: usize,
}

/// One copy of an event, as the tap prints it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Tapped {
    pub host: String,
    pub pipeline: String,
    pub version: String,
    pub point: Point,
    pub subject: String,
    pub headers: Vec<(String, String)>,
    /// The body as JSON when it is, else as text (lossy UTF-8).
    pub body: serde_json::Value,
    pub body_bytes: usize,
    /// The body was longer than [`MAX_BODY`] and is cut.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub body_cut: bool,
}

/// A host answers a new tap with this, so that it knows who taps.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub tapping: String,
    pub pipeline: String,
    /// The stages of the version it runs, so that a tap on a stage it
    /// lacks is told so.
    #[serde(default)]
    pub stages: Vec<String>,
}

/// How long a tap lasts past its last request.
pub const EXPIRY: Duration = Duration::from_secs(15);
/// How many copies one host sends one tap in a second.
pub const PER_SECOND: usize = 50;
/// How much of a body is copied.
pub const MAX_BODY: usize = 64 << 10;
/// How many taps one pipeline serves at once.
const MAX_TAPS: usize = 16;

struct Tap {
    request: Request,
    expires: Instant,
    second: Instant,
    sent_this_second: usize,
}

/// A pipeline's taps on this host.
#[derive(Default)]
pub struct Taps {
    active: AtomicBool,
    taps: Mutex<Vec<Tap>>,
}

impl Taps {
    /// Whether anyone taps: the one thing a worker asks per batch otherwise.
    pub fn any(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Takes up, renews or (with a limit of 0) ends a tap; true for a new one.
    pub fn request(&self, request: Request) -> bool {
        let mut taps = self.taps.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        taps.retain(|tap| tap.expires > now && tap.request.limit > 0);
        let known = taps.iter().position(|tap| tap.request.inbox == request.inbox);
        let count = taps.len();
        let new = match known {
            Some(index) => {
                let tap = &mut taps[index];
                tap.expires = now + EXPIRY;
                tap.request.point = request.point;
                if request.limit == 0 {
                    tap.request.limit = 0;
                }
                false
            }
            None if request.limit > 0 && count < MAX_TAPS => {
                taps.push(Tap { request, expires: now + EXPIRY, second: now, sent_this_second: 0 });
                true
            }
            None => false,
        };
        taps.retain(|tap| tap.request.limit > 0);
        self.active.store(!taps.is_empty(), Ordering::Relaxed);
        new
    }

    /// The copies to send for events passing `point`: (inbox, event) pairs,
    /// within each tap's limit and rate.
    pub fn offer<'a, E>(&self, point: &Point, events: impl IntoIterator<Item = E>) -> Vec<(String, E)>
    where
        E: 'a,
    {
        let mut taps = self.taps.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        taps.retain(|tap| tap.expires > now && tap.request.limit > 0);
        let mut copies = Vec::new();
        let mut events = events.into_iter().peekable();
        for tap in taps.iter_mut().filter(|tap| tap.request.point == *point) {
            if now.duration_since(tap.second) >= Duration::from_secs(1) {
                (tap.second, tap.sent_this_second) = (now, 0);
            }
            let room = tap.request.limit.min(PER_SECOND.saturating_sub(tap.sent_this_second));
            if room == 0 || events.peek().is_none() {
                continue;
            }
            // One tap takes what it has room for; another at the same
            // point takes from what is left, so no event is cloned twice.
            let taken: Vec<E> = events.by_ref().take(room).collect();
            tap.request.limit -= taken.len();
            tap.sent_this_second += taken.len();
            copies.extend(taken.into_iter().map(|event| (tap.request.inbox.clone(), event)));
        }
        taps.retain(|tap| tap.request.limit > 0);
        self.active.store(!taps.is_empty(), Ordering::Relaxed);
        copies
    }
}

impl Taps {
    /// The stages tapped now, by name.
    pub fn stages(&self) -> Vec<String> {
        let taps = self.taps.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut stages: Vec<String> = taps
            .iter()
            .filter_map(|tap| match &tap.request.point {
                Point::Stage(name) => Some(name.clone()),
                _ => None,
            })
            .collect();
        stages.dedup();
        stages
    }
}

/// The body as a tap shows it.
pub fn shown_body(body: &[u8]) -> (serde_json::Value, bool) {
    let cut = body.len() > MAX_BODY;
    let kept = &body[..body.len().min(MAX_BODY)];
    match serde_json::from_slice(kept) {
        Ok(value) if !cut => (value, false),
        _ => (serde_json::Value::String(String::from_utf8_lossy(kept).into_owned()), cut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(inbox: &str, point: Point, limit: usize) -> Request {
        Request { point, inbox: inbox.into(), limit }
    }

    #[test]
    fn nobody_tapping_is_one_flag_and_a_tap_gets_its_limit_at_its_point_only() {
        let taps = Taps::default();
        assert!(!taps.any());
        assert!(taps.request(request("a", Point::Output, 3)));
        assert!(!taps.request(request("a", Point::Output, 3)), "a renewal is not a new tap");
        assert!(taps.any());
        assert!(taps.offer(&Point::Input, 0..10).is_empty(), "another point");
        let copies = taps.offer(&Point::Output, 0..10);
        assert_eq!(copies, vec![("a".to_string(), 0), ("a".to_string(), 1), ("a".to_string(), 2)]);
        assert!(!taps.any(), "a tap that has its limit is gone");
    }

    #[test]
    fn a_tap_is_held_to_its_rate_and_can_be_stopped() {
        let taps = Taps::default();
        taps.request(request("b", Point::Input, 1000));
        assert_eq!(taps.offer(&Point::Input, 0..1000).len(), PER_SECOND);
        assert!(taps.offer(&Point::Input, 0..10).is_empty(), "the second's copies are spent");
        taps.request(request("b", Point::Input, 0));
        assert!(!taps.any());
    }

    #[test]
    fn bodies_show_as_json_or_text_and_are_cut_past_the_limit() {
        assert_eq!(shown_body(br#"{"a":1}"#), (serde_json::json!({ "a": 1 }), false));
        assert_eq!(shown_body(b"not json"), (serde_json::json!("not json"), false));
        let (shown, cut) = shown_body(&vec![b'x'; MAX_BODY + 1]);
        assert!(cut && shown.as_str().unwrap().len() == MAX_BODY);
    }
}
