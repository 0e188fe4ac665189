//! Event-time windows, as the stages that keep them (`alert`, `aggregate`)
//! share them.
//!
//! Time is the events' own (their `server_ts`), so a replayed day gives the
//! same windows as the day itself. The clock's watermark is the latest event
//! time seen. An event more than the late allowance behind it is late and
//! left out; one further ahead of the wall clock than the allowance is left
//! out too, since it would make every later event late. A window ending at a
//! step boundary is final once the watermark is the allowance past that
//! boundary: no event that may still count for it can come after. When no
//! event comes between two ticks, event time moves on by the wall time
//! between them, so windows close without traffic; only while it is live
//! (within the allowance and an hour of the wall clock), so that a backfill
//! of old events that pauses is not pushed on by the pause.
//!
//! A window keeps one [`Summary`] per step: counts, a sum, the least and
//! greatest values and, for quantiles, a [`Sketch`]; summaries merge, so steps
//! make longer windows.

use serde::{Deserialize, Serialize};

use crate::sketch::Sketch;

/// How far behind the wall clock (past the late allowance) event time may
/// be and still move on with it when the events stop.
const LIVE_MS: i64 = 3_600_000;

/// Where an event stands against the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Within the allowance: it counts. `ahead` when it moves event time on.
    OnTime { ahead: bool },
    /// More than the allowance behind the watermark.
    Late,
    /// More than the allowance ahead of the wall clock.
    Future,
}

/// Events left out for their time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LeftOut {
    /// More than the allowance behind event time.
    pub late: u64,
    /// More than the allowance ahead of the wall clock.
    pub future: u64,
}

/// The time of an event: its `field`, an RFC 3339 date-time.
pub fn event_time(event: &serde_json::Map<String, serde_json::Value>, field: &str) -> Option<i64> {
    crate::time::parse_rfc3339(event.get(field)?.as_str()?).ok()
}

/// The event-time clock of a stage. Its fields are kept in the stage's
/// snapshot (flattened into it, so the alert state's format is unchanged).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventClock {
    /// The latest event time, in Unix milliseconds.
    pub watermark_ms: Option<i64>,
    /// The wall time of the last tick, and whether events came since.
    pub last_tick_ns: Option<u64>,
    pub events_since_tick: bool,
}

impl EventClock {
    /// Places an event timed `at_ms` when the wall clock reads `now_ms`,
    /// with `late_ms` of allowance, and notes that an event came.
    pub fn place(&mut self, at_ms: i64, now_ms: i64, late_ms: i64) -> Placed {
        self.events_since_tick = true;
        if at_ms > now_ms.saturating_add(late_ms) {
            return Placed::Future;
        }
        match self.watermark_ms {
            Some(watermark) if at_ms < watermark.saturating_sub(late_ms) => Placed::Late,
            Some(watermark) => Placed::OnTime { ahead: at_ms > watermark },
            None => Placed::OnTime { ahead: true },
        }
    }

    /// Places an event as [`EventClock::place`] does, counting it in
    /// `left_out` when it is late or in the future: `Some(ahead)` when it
    /// counts.
    pub fn admit(&mut self, at_ms: i64, now_ms: i64, late_ms: i64, left_out: &mut LeftOut) -> Option<bool> {
        match self.place(at_ms, now_ms, late_ms) {
            Placed::OnTime { ahead } => Some(ahead),
            Placed::Late => {
                left_out.late += 1;
                None
            }
            Placed::Future => {
                left_out.future += 1;
                None
            }
        }
    }

    /// Notes that events came without placing one (an unreadable event
    /// still means the stream is not quiet).
    pub fn saw_events(&mut self) {
        self.events_since_tick = true;
    }

    /// A tick at wall time `now_ns`: the event time it moves the watermark
    /// to, when no event came since the previous tick and time passed, and
    /// event time is live: within `late_ms` and an hour of the wall clock.
    /// Events of days ago (a backfill, a replay) that pause while they are
    /// read do not push event time on by the pause: a later one of them
    /// would be late for nothing.
    pub fn tick(&mut self, now_ns: u64, late_ms: i64) -> Option<i64> {
        let previous = self.last_tick_ns.replace(now_ns);
        let quiet = !std::mem::take(&mut self.events_since_tick);
        let (previous, watermark) = (previous?, self.watermark_ms?);
        let now_ms = (now_ns / 1_000_000) as i64;
        let live = watermark >= now_ms.saturating_sub(late_ms.saturating_add(LIVE_MS));
        let passed_ms = (now_ns.saturating_sub(previous) / 1_000_000) as i64;
        (quiet && live && passed_ms > 0).then(|| watermark.saturating_add(passed_ms))
    }

    /// The latest boundary of `step_ms` steps (from the Unix epoch) up to
    /// which every window is final, with `late_ms` of allowance.
    pub fn final_through(&self, late_ms: i64, step_ms: i64) -> Option<i64> {
        self.watermark_ms.map(|watermark| step_start(watermark.saturating_sub(late_ms), step_ms))
    }
}

/// The start of the step of `step_ms` that holds `at_ms`.
pub fn step_start(at_ms: i64, step_ms: i64) -> i64 {
    at_ms.div_euclid(step_ms) * step_ms
}

/// What a window knows of its samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub samples: u64,
    /// Samples that matched what a share measures.
    pub hits: u64,
    /// The sum of the values measured.
    pub sum: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The values, for quantiles; only when asked for.
    pub sketch: Option<Sketch>,
}

impl Summary {
    /// Counts a sample without a value.
    pub fn count(&mut self, hit: bool) {
        self.samples += 1;
        self.hits += u64::from(hit);
    }

    /// Counts a sample of `value`, kept in a sketch of `accuracy` when given
    /// one.
    pub fn add(&mut self, value: f64, hit: bool, sketch: Option<f64>) {
        self.count(hit);
        self.sum += value;
        self.min = Some(self.min.map_or(value, |min| min.min(value)));
        self.max = Some(self.max.map_or(value, |max| max.max(value)));
        if let Some(accuracy) = sketch {
            self.sketch.get_or_insert_with(|| Sketch::new(accuracy)).add(value);
        }
    }

    /// Adds another summary's samples (both of the same accuracy).
    pub fn merge(&mut self, other: &Summary) {
        self.samples += other.samples;
        self.hits += other.hits;
        self.sum += other.sum;
        self.min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        match (&mut self.sketch, &other.sketch) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, Some(theirs)) => *mine = Some(theirs.clone()),
            _ => {}
        }
    }

    /// The summaries of several steps as one.
    pub fn merged<'a>(steps: impl IntoIterator<Item = &'a Summary>) -> Summary {
        let mut all = Summary::default();
        for step in steps {
            all.merge(step);
        }
        all
    }

    pub fn mean(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.sum / self.samples as f64)
    }

    pub fn share(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.hits as f64 / self.samples as f64)
    }

    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.sketch.as_ref().and_then(|sketch| sketch.quantile(q))
    }
}

#[cfg(test)]
mod tests {
    use super::{EventClock, Placed, Summary, step_start};

    const MINUTE: i64 = 60_000;

    #[test]
    fn events_within_the_allowance_count_and_others_are_late_or_ahead() {
        let mut clock = EventClock::default();
        let now = 10 * MINUTE;
        assert_eq!(clock.place(5 * MINUTE, now, MINUTE), Placed::OnTime { ahead: true });
        clock.watermark_ms = Some(5 * MINUTE);
        assert_eq!(clock.place(4 * MINUTE, now, MINUTE), Placed::OnTime { ahead: false }, "exactly the allowance behind still counts");
        assert_eq!(clock.place(4 * MINUTE - 1, now, MINUTE), Placed::Late);
        assert_eq!(clock.place(now + MINUTE, now, MINUTE), Placed::OnTime { ahead: true });
        assert_eq!(clock.place(now + MINUTE + 1, now, MINUTE), Placed::Future);
    }

    #[test]
    fn a_quiet_tick_moves_event_time_by_the_wall_time_that_passed() {
        let mut clock = EventClock { watermark_ms: Some(MINUTE), ..Default::default() };
        assert_eq!(clock.tick(1_000_000_000, MINUTE), None, "the first tick only starts the wall clock");
        assert_eq!(clock.tick(3_000_000_000, MINUTE), Some(MINUTE + 2_000));
        clock.saw_events();
        assert_eq!(clock.tick(5_000_000_000, MINUTE), None, "events came: their times move the clock");
    }

    #[test]
    fn events_of_long_ago_are_not_pushed_on_by_a_pause() {
        let day_ms = 24 * 60 * MINUTE;
        let now_ns = |ms: i64| (ms as u64) * 1_000_000;
        let mut clock = EventClock { watermark_ms: Some(10 * day_ms), ..Default::default() };
        clock.tick(now_ns(12 * day_ms), MINUTE);
        assert_eq!(clock.tick(now_ns(12 * day_ms + 10_000), MINUTE), None, "two days behind: a backfill");
        let live = 12 * day_ms - 60 * MINUTE;
        let mut clock = EventClock { watermark_ms: Some(live), ..Default::default() };
        clock.tick(now_ns(12 * day_ms), MINUTE);
        assert_eq!(clock.tick(now_ns(12 * day_ms + 10_000), MINUTE), Some(live + 10_000), "an hour and the allowance behind is still live");
    }

    #[test]
    fn a_window_is_final_once_the_allowance_has_passed_its_end() {
        let clock = EventClock { watermark_ms: Some(3 * MINUTE + 59_999), ..Default::default() };
        assert_eq!(clock.final_through(MINUTE, MINUTE), Some(2 * MINUTE));
        let clock = EventClock { watermark_ms: Some(4 * MINUTE), ..Default::default() };
        assert_eq!(clock.final_through(MINUTE, MINUTE), Some(3 * MINUTE));
        assert_eq!(step_start(-1, MINUTE), -MINUTE, "steps before the epoch round down");
    }

    #[test]
    fn merged_steps_equal_one_summary_of_every_sample() {
        let (mut a, mut b, mut all) = (Summary::default(), Summary::default(), Summary::default());
        for n in 0..100 {
            let step = if n % 3 == 0 { &mut a } else { &mut b };
            step.add(n as f64, n % 2 == 0, Some(0.01));
            all.add(n as f64, n % 2 == 0, Some(0.01));
        }
        let merged = Summary::merged([&a, &b]);
        assert_eq!((merged.samples, merged.hits, merged.sum, merged.min, merged.max), (100, 50, 4950.0, Some(0.0), Some(99.0)));
        assert_eq!(merged.quantile(0.95), all.quantile(0.95));
        assert_eq!(merged.mean(), Some(49.5));
        assert_eq!(Summary::default().share(), None, "an empty window has no share");
    }
}
