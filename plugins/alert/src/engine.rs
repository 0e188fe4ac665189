//! The alerting itself, as plain Rust: event-time windows per rule and group,
//! evaluation at each step of event time, and the firing/resolved state
//! machine of every alert.
//!
//! Time. Event time is the events' own `server_ts`. The engine's clock (its
//! watermark) is the latest event time seen; an event more than
//! `late_allowance` behind it is counted as late and ignored. The window
//! ending at each `resolution` boundary, over the steps
//! `[boundary - window, boundary)`, is evaluated once the watermark is
//! `late_allowance` past the boundary: by then every event that may still
//! count for it has come. So the same events give the same alerts however
//! they are batched, and in whatever order they arrive within the allowance.
//! When no event arrives between two ticks, event time moves on by the wall
//! time between them, so alerts resolve without traffic (while event time
//! is live: see `sluice_kit::windows`).
//!
//! Alerts. A rule (or one group of it) fires when its window holds at least
//! `min_samples` samples and its condition holds; it then emits one `firing`
//! alert, and one `resolved` alert when the condition no longer holds on the
//! samples it has or its window is empty. Nothing is repeated between the two,
//! unless the rule has a `repeat` interval. Two settings damp a measure that
//! hovers at its threshold: with `for`, the condition must hold at every
//! boundary for that long before the alert fires (it is pending meanwhile,
//! and nothing is emitted); with `keep_firing_for`, it must fail at every
//! boundary for that long before the alert resolves. An empty window resolves
//! at once: with no samples there is nothing left to flap.
//!
//! Silences. An alert that fires while a silence covers it (at that
//! boundary) is published marked `silenced`, for the record, and kept off
//! the on-call tools. It stays held back while a silence covers it; if its
//! condition still holds at a boundary no silence covers, it is announced
//! then (`after_silence`), so an incident that outlasts a maintenance window
//! still pages. One that ends under the silence resolves `silenced` too.
//!
//! Absence. A `count` rule's window is a measure even when empty, so
//! `count = true, below = 1` fires when no sample came for a whole window,
//! and quiet ticks (moving event time on) are what fire it. Its series is
//! never forgotten, and it is decided only on windows that start after the
//! state was first evaluated, so a start is not taken for an outage.
//!
//! Memory. A window keeps one aggregate per step (count, hits, sum and, for
//! quantiles, a sketch of 1 % relative error whose size depends on the spread
//! of the values, not their number); steps older than the longest window are
//! dropped, and a group with no samples and no firing alert is forgotten.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_plugin::labels::{self, Labels};
use sluice_plugin::windows::{self, EventClock, LeftOut, Summary, step_start};

use crate::config::{Measure, Rule, Settings};
use crate::render::{self, Announcement, Reading};

/// The version of the snapshot format.
const SNAPSHOT_VERSION: u32 = 1;

/// One alert to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub subject: String,
    pub body: Value,
}

/// What happened to the events of one call, for the host's counters.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    /// Events that are a sample of at least one rule.
    pub sampled: u64,
    /// Events later than the allowance, or further ahead of the wall clock
    /// than it, ignored.
    pub left_out: LeftOut,
    /// Events without a readable event time or name, or not JSON objects.
    pub unreadable: u64,
    /// Samples without the numeric field their rule measures.
    pub missing_field: u64,
    /// Samples of a group past `max_groups`, ignored.
    pub over_group_limit: u64,
}

/// The state that `snapshot` and `restore` carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    version: u32,
    /// Event time (the latest event's), and the wall time of the last tick.
    #[serde(flatten)]
    clock: EventClock,
    /// The last boundary at which the windows were evaluated.
    evaluated_ms: Option<i64>,
    /// The first boundary this state was evaluated from: a count is decided
    /// only on windows that start after it.
    #[serde(default)]
    watching_since_ms: Option<i64>,
    /// The latest time of any sample.
    last_sample_ms: Option<i64>,
    /// The wall time of the last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_heartbeat_ns: Option<u64>,
    /// Every tracked window and alert, by rule key and labels.
    series: BTreeMap<String, Series>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            version: SNAPSHOT_VERSION,
            clock: EventClock::default(),
            evaluated_ms: None,
            watching_since_ms: None,
            last_sample_ms: None,
            last_heartbeat_ns: None,
            series: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Series {
    pub(crate) rule: String,
    pub(crate) labels: Labels,
    /// Summaries by the start of their step (Unix milliseconds).
    steps: BTreeMap<i64, Summary>,
    pub(crate) alert: AlertState,
}

/// Where one alert is in its life. The damping fields are optional in the
/// snapshot, so a plugin without damping reads a newer snapshot (dropping a
/// pending or clearing mark) and a rollback keeps the alert states.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum AlertState {
    Ok {
        /// The boundary since which the condition has held, while `for` runs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pending_since_ms: Option<i64>,
    },
    Firing {
        since_ms: i64,
        announced_ms: i64,
        /// The boundary since which the condition has failed, while
        /// `keep_firing_for` runs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clearing_since_ms: Option<i64>,
        /// It fired under a silence and has not been announced since: it
        /// is announced once no silence covers it while its condition holds.
        #[serde(default, skip_serializing_if = "is_false")]
        silenced: bool,
    },
}

fn is_false(flag: &bool) -> bool {
    !flag
}

impl AlertState {
    const QUIET: AlertState = AlertState::Ok { pending_since_ms: None };
}

pub struct Engine {
    settings: Settings,
    /// Event name → indices of the rules it is a sample of (shared, so that
    /// looking them up per event copies no list).
    by_event: HashMap<String, Rc<[usize]>>,
    state: State,
}

impl Engine {
    pub fn new(settings: Settings) -> Self {
        let mut by_event: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, rule) in settings.rules.iter().enumerate() {
            for event in &rule.samples {
                by_event.entry(event.clone()).or_default().push(index);
            }
        }
        let by_event = by_event.into_iter().map(|(event, rules)| (event, Rc::from(rules))).collect();
        Self { settings, by_event, state: State::default() }
    }

    /// Takes in events (JSON bodies) in order, the wall clock reading
    /// `now_ms`; returns the alerts they cause.
    pub fn consume<'a>(&mut self, bodies: impl IntoIterator<Item = &'a [u8]>, now_ms: i64, tally: &mut Tally) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for body in bodies {
            self.state.clock.saw_events();
            let Ok(Value::Object(event)) = serde_json::from_slice::<Value>(body) else {
                tally.unreadable += 1;
                continue;
            };
            let Some(name) = event.get(&self.settings.event_field).and_then(Value::as_str) else {
                tally.unreadable += 1;
                continue;
            };
            let Some(rules) = self.by_event.get(name).cloned() else { continue };
            let Some(at_ms) = windows::event_time(&event, &self.settings.time_field) else {
                tally.unreadable += 1;
                continue;
            };
            let Some(ahead) = self.state.clock.admit(at_ms, now_ms, self.settings.late_ms, &mut tally.left_out) else { continue };
            if ahead {
                self.advance_to(at_ms, &mut alerts);
            }
            tally.sampled += 1;
            for &index in rules.iter() {
                self.add_sample(index, name, &event, at_ms, tally);
            }
        }
        alerts
    }

    /// The wall clock reads `now_ns`. If no event came since the last tick,
    /// event time moves on by the wall time that passed.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Alert> {
        let mut alerts = Vec::new();
        if let Some(to_ms) = self.state.clock.tick(now_ns, self.settings.late_ms) {
            self.advance_to(to_ms, &mut alerts);
        }
        if let Some(heartbeat) = &self.settings.heartbeat
            && self.state.last_heartbeat_ns.is_none_or(|last| now_ns.saturating_sub(last) >= heartbeat.every_ms as u64 * 1_000_000)
        {
            self.state.last_heartbeat_ns = Some(now_ns);
            alerts.push(render::heartbeat(&self.settings, &heartbeat.every, self.state.series.values(), self.state.clock.watermark_ms, now_ns));
        }
        alerts
    }

    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&self.state).unwrap_or_default()
    }

    /// Takes over a snapshot (see [`Engine::adopt`]).
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let state: State = serde_json::from_slice(bytes).map_err(|e| format!("cannot read the alert state: {e}"))?;
        self.state = self.adopt(state)?;
        Ok(())
    }

    /// A kept state, made this engine's: windows of rules that no longer
    /// exist are dropped; the others carry on, alerts firing or not as they
    /// were. A state of another format is refused.
    pub fn adopt(&self, mut state: State) -> Result<State, String> {
        if state.version != SNAPSHOT_VERSION {
            return Err(format!("the alert state is format {}, this plugin reads format {SNAPSHOT_VERSION}", state.version));
        }
        state.series.retain(|_, series| self.settings.rules.iter().any(|rule| rule.key == series.rule));
        // A state from before counts existed: they start watching now.
        state.watching_since_ms = state.watching_since_ms.or(state.evaluated_ms);
        Ok(state)
    }

    /// Runs `work` with `state` as the engine's state, for a caller that
    /// keeps the state itself (the plugin SDK does).
    pub fn with_state<T>(&mut self, state: &mut State, work: impl FnOnce(&mut Self) -> T) -> T {
        std::mem::swap(&mut self.state, state);
        let done = work(self);
        std::mem::swap(&mut self.state, state);
        done
    }

    /// How many steps of all windows are held: the state's size, in effect.
    pub fn steps_held(&self) -> usize {
        self.state.series.values().map(|s| s.steps.len()).sum()
    }

    pub fn series_held(&self) -> usize {
        self.state.series.len()
    }

    fn add_sample(&mut self, index: usize, name: &str, event: &Map<String, Value>, at_ms: i64, tally: &mut Tally) {
        let rule = &self.settings.rules[index];
        if !labels::matches_all(event, &rule.filter) {
            return;
        }
        let (value, hit) = match &rule.measure {
            Measure::Quantile { field, .. } | Measure::Mean { field } => match event.get(field).and_then(Value::as_f64) {
                Some(value) => (value, false),
                None => {
                    tally.missing_field += 1;
                    return;
                }
            },
            Measure::Share { event: wanted, filter } => (0.0, wanted.as_deref().is_none_or(|w| w == name) && labels::matches_all(event, filter)),
            Measure::Count => (0.0, false),
        };
        let step_ms = step_start(at_ms, self.settings.resolution_ms);
        let sketch = matches!(rule.measure, Measure::Quantile { .. }).then_some(self.settings.accuracy);
        let valued = matches!(rule.measure, Measure::Quantile { .. } | Measure::Mean { .. });
        for labels in groups(rule, event) {
            let key = labels::series_key(&rule.key, &labels);
            if !self.state.series.contains_key(&key) {
                let tracked = self.state.series.values().filter(|s| s.rule == rule.key).count();
                if tracked >= self.settings.max_groups {
                    tally.over_group_limit += 1;
                    continue;
                }
                let series = Series { rule: rule.key.clone(), labels, steps: BTreeMap::new(), alert: AlertState::QUIET };
                self.state.series.insert(key.clone(), series);
            }
            let Some(series) = self.state.series.get_mut(&key) else { continue };
            let step = series.steps.entry(step_ms).or_default();
            if valued {
                step.add(value, hit, sketch);
            } else {
                step.count(hit);
            }
        }
        self.state.last_sample_ms = self.state.last_sample_ms.max(Some(at_ms));
    }

    /// Moves event time to `to_ms`, evaluating every boundary it passes.
    fn advance_to(&mut self, to_ms: i64, alerts: &mut Vec<Alert>) {
        self.state.clock.watermark_ms = Some(to_ms);
        let resolution = self.settings.resolution_ms;
        // A window is evaluated once no event that may still count for it
        // can come: the allowance has passed its end.
        let Some(target) = self.state.clock.final_through(self.settings.late_ms, resolution) else { return };
        let Some(evaluated) = self.state.evaluated_ms else {
            self.state.evaluated_ms = Some(target);
            self.state.watching_since_ms = Some(target);
            return;
        };
        self.watch_counts();
        let quiet_after = self.state.last_sample_ms.map_or(i64::MIN, |last| last + self.settings.longest_window_ms());
        // An empty window changes a count, so with counts every boundary is
        // evaluated (one per minute of a gap in the events).
        let counts = self.settings.rules.iter().any(|rule| rule.measure == Measure::Count);
        let mut boundary = evaluated + resolution;
        while boundary <= target {
            self.evaluate(boundary, alerts);
            self.state.evaluated_ms = Some(boundary);
            if boundary > quiet_after && !counts {
                // Every window is empty from here on and every alert resolved:
                // the boundaries up to the target would change nothing.
                self.state.evaluated_ms = Some(target);
                break;
            }
            boundary += resolution;
        }
    }

    /// A count's series exists whether or not samples came: their absence is
    /// what it watches.
    fn watch_counts(&mut self) {
        for rule in self.settings.rules.iter().filter(|rule| rule.measure == Measure::Count) {
            let labels = Labels::new();
            let key = labels::series_key(&rule.key, &labels);
            self.state.series.entry(key).or_insert_with(|| Series { rule: rule.key.clone(), labels, steps: BTreeMap::new(), alert: AlertState::QUIET });
        }
    }

    /// Evaluates every window ending at `boundary`.
    fn evaluate(&mut self, boundary: i64, alerts: &mut Vec<Alert>) {
        let settings = &self.settings;
        let watching_since = self.state.watching_since_ms.unwrap_or(i64::MIN);
        self.state.series.retain(|_, series| {
            let Some(rule) = settings.rules.iter().find(|r| r.key == series.rule) else { return false };
            let start = boundary - rule.window_ms;
            // Later evaluations never look before `start + resolution`.
            series.steps.retain(|step, _| *step + settings.resolution_ms > start);
            let count = rule.measure == Measure::Count;
            if count && start < watching_since {
                // Part of this window is from before the plugin watched.
                return true;
            }
            let (samples, value) = measure(rule, series.steps.range(start..boundary).map(|(_, step)| step));
            let holds = value.is_some_and(|v| rule.condition.holds(v));
            let reading = Reading { value, samples, at_ms: boundary };
            let silence = settings.silence(rule, &series.labels, boundary);
            match series.alert {
                AlertState::Ok { pending_since_ms } => {
                    if samples >= rule.min_samples && holds {
                        let held_since = pending_since_ms.unwrap_or(boundary);
                        if boundary - held_since >= rule.hold_ms {
                            let silenced = silence.is_some();
                            series.alert = AlertState::Firing { since_ms: boundary, announced_ms: boundary, clearing_since_ms: None, silenced };
                            alerts.push(render::alert(settings, rule, series, &reading, held_since, Announcement::Fired, silence));
                        } else {
                            series.alert = AlertState::Ok { pending_since_ms: Some(held_since) };
                        }
                    } else {
                        series.alert = AlertState::QUIET;
                    }
                }
                AlertState::Firing { since_ms, announced_ms, clearing_since_ms, silenced } => {
                    if holds {
                        // Held back by a silence that no longer covers it:
                        // on-call hear of it now, as a new incident would be.
                        let announcement = if silenced && silence.is_none() {
                            Some(Announcement::AfterSilence)
                        } else {
                            rule.repeat_ms.is_some_and(|repeat| boundary - announced_ms >= repeat).then_some(Announcement::Repeat)
                        };
                        let announced_ms = if announcement.is_some() { boundary } else { announced_ms };
                        series.alert = AlertState::Firing { since_ms, announced_ms, clearing_since_ms: None, silenced: silenced && silence.is_some() };
                        if let Some(announcement) = announcement {
                            alerts.push(render::alert(settings, rule, series, &reading, since_ms, announcement, silence));
                        }
                    } else {
                        let failing_since = clearing_since_ms.unwrap_or(boundary);
                        let empty = samples == 0 && !count;
                        if empty || boundary - failing_since >= rule.keep_firing_ms {
                            // An incident on-call never heard of ends as quietly.
                            let announcement = if silenced { Announcement::SilencedEnd } else { Announcement::Resolved };
                            alerts.push(render::alert(settings, rule, series, &reading, failing_since, announcement, silence));
                            series.alert = AlertState::QUIET;
                        } else {
                            series.alert = AlertState::Firing { since_ms, announced_ms, clearing_since_ms: Some(failing_since), silenced };
                        }
                    }
                }
            }
            !series.steps.is_empty() || series.alert != AlertState::QUIET || count
        });
    }
}

/// The sample count and the measured value over some steps.
fn measure<'a>(rule: &Rule, steps: impl Iterator<Item = &'a Summary>) -> (u64, Option<f64>) {
    let window = Summary::merged(steps);
    let value = match &rule.measure {
        Measure::Quantile { q, .. } => window.quantile(*q),
        Measure::Mean { .. } => window.mean(),
        Measure::Share { .. } => window.share(),
        Measure::Count => Some(window.samples as f64),
    };
    (window.samples, value)
}

/// The label sets an event counts towards: one without `group_by`; with it,
/// one per value of the field (an object's entries are experiment/variant).
fn groups(rule: &Rule, event: &Map<String, Value>) -> Vec<Labels> {
    match &rule.group_by {
        Some(field) => labels::of_field(field, event.get(field)),
        None => vec![Labels::new()],
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use sluice_plugin::time;

    use super::{AlertState, Engine, Tally};
    use crate::config::Settings;

    /// 2026-11-24T10:00:00Z.
    const T0: i64 = 1_795_514_400_000;
    const MINUTE: i64 = 60_000;
    /// The wall clock: a day after the events, as in a replay.
    const NOW: i64 = T0 + 86_400_000;

    fn engine() -> Engine {
        let config = json!({
            "subject_prefix": "storyforge.alerts",
            "stage": "beta",
            "rule": [
                { "id": "generation_p95", "owner": "eng", "severity": "page", "window": "15m", "samples": ["scene_generated"],
                  "quantile": { "field": "latency_ms", "q": 0.95 }, "above": { "beta": 110000, "launch": 90000 },
                  "runbook": "https://runbooks.storyforge.example/generation-p95" },
                { "id": "export_success_rate", "owner": "eng", "severity": "incident", "window": "30m",
                  "samples": ["export_succeeded", "export_failed"], "share": { "event": "export_succeeded" }, "below": 0.8 },
                { "id": "continuity_score", "owner": "ml", "severity": "flag", "window": "1h",
                  "samples": ["character_locked", "scene_locked"], "mean": "consistency_score", "below": 0.88 },
                { "id": "experiment_guardrail", "check": "export_success_rate", "owner": "growth", "severity": "guardrail", "window": "30m",
                  "group_by": "experiment_assignments", "samples": ["export_succeeded", "export_failed"],
                  "share": { "event": "export_succeeded" }, "below": 0.8 }
            ]
        });
        Engine::new(Settings::parse(&config.to_string()).unwrap())
    }

    fn event(name: &str, at_ms: i64, extra: Value) -> Vec<u8> {
        let mut body = json!({ "event": name, "server_ts": time::format_rfc3339(at_ms) });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::to_vec(&body).unwrap()
    }

    /// `count` generations, one every 10 s from `from_ms`.
    fn generations(from_ms: i64, count: i64, latency_ms: f64) -> Vec<Vec<u8>> {
        (0..count).map(|i| event("scene_generated", from_ms + i * 10_000, json!({ "latency_ms": latency_ms }))).collect()
    }

    fn feed(engine: &mut Engine, events: &[Vec<u8>]) -> Vec<Value> {
        let mut tally = Tally::default();
        let alerts = engine.consume(events.iter().map(Vec::as_slice), NOW, &mut tally);
        alerts.into_iter().map(|a| a.body).collect()
    }

    fn states(alerts: &[Value]) -> Vec<(String, String)> {
        alerts.iter().map(|a| (a["key"].as_str().unwrap().to_string(), a["state"].as_str().unwrap().to_string())).collect()
    }

    /// A sample far later, so that every boundary up to it is evaluated.
    fn pass_time(engine: &mut Engine, at_ms: i64) -> Vec<Value> {
        feed(engine, &[event("scene_generated", at_ms, json!({ "latency_ms": 1000 }))])
    }

    #[test]
    fn a_slow_p95_fires_once_with_what_an_on_call_engineer_needs() {
        let mut engine = engine();
        // One every 10 s: the window ending 10:02 holds 12, the one ending
        // 10:04 holds 24; it is decided once event time is 5 minutes past it.
        assert_eq!(feed(&mut engine, &generations(T0, 30, 115_000.0)), Vec::<Value>::new());
        let alerts = pass_time(&mut engine, T0 + 9 * MINUTE);
        assert_eq!(states(&alerts), [("generation_p95".into(), "firing".into())]);
        let alert = &alerts[0];
        assert_eq!(alert["rule"], "generation_p95");
        assert_eq!(alert["owner"], "eng");
        assert_eq!(alert["severity"], "page");
        assert_eq!(alert["threshold"], 110_000.0);
        assert_eq!(alert["window"], "15m");
        assert_eq!(alert["samples"], 24);
        assert_eq!(alert["stage"], "beta");
        assert_eq!(alert["changed_at"], time::format_rfc3339(T0 + 4 * MINUTE));
        assert_eq!(alert["runbook"], "https://runbooks.storyforge.example/generation-p95");
        let value = alert["value"].as_f64().unwrap();
        assert!((value - 115_000.0).abs() / 115_000.0 <= 0.01, "p95 {value} within 1 %");
    }

    #[test]
    fn at_or_below_the_threshold_or_under_the_minimum_sample_count_nothing_fires() {
        let mut engine = engine();
        // 19 very slow generations: one short of the minimum.
        let mut alerts = feed(&mut engine, &generations(T0, 19, 300_000.0));
        alerts.extend(feed(&mut engine, &generations(T0 + 16 * MINUTE, 200, 100_000.0)));
        alerts.extend(pass_time(&mut engine, T0 + 60 * MINUTE));
        assert_eq!(alerts, Vec::<Value>::new());
    }

    #[test]
    fn an_incident_gives_exactly_one_firing_and_one_resolved() {
        let mut engine = engine();
        let mut alerts = feed(&mut engine, &generations(T0, 60, 130_000.0));
        alerts.extend(feed(&mut engine, &generations(T0 + 10 * MINUTE, 240, 20_000.0)));
        alerts.extend(pass_time(&mut engine, T0 + 120 * MINUTE));
        assert_eq!(states(&alerts), [("generation_p95".into(), "firing".into()), ("generation_p95".into(), "resolved".into())]);
        let resolved = &alerts[1];
        assert_eq!(resolved["firing_since"], alerts[0]["changed_at"]);
        assert!(resolved["value"].as_f64().unwrap() <= 110_000.0);
    }

    #[test]
    fn a_repeat_interval_re_announces_a_firing_alert() {
        let mut config: Value = serde_json::from_str(
            r#"{ "repeat": "10m", "rule": [
            { "id": "p", "owner": "eng", "severity": "page", "window": "15m", "samples": ["scene_generated"],
              "quantile": { "field": "latency_ms", "q": 0.95 }, "above": 110000 } ] }"#,
        )
        .unwrap();
        config["min_samples"] = json!(5);
        let mut engine = Engine::new(Settings::parse(&config.to_string()).unwrap());
        let alerts = feed(&mut engine, &generations(T0, 6 * 30, 130_000.0));
        let repeats: Vec<bool> = alerts.iter().map(|a| a.get("repeat").is_some()).collect();
        // Fires at 10:01, repeats at 10:11 and 10:21; the last sample is at 10:29:50.
        assert_eq!(repeats, [false, true, true], "{alerts:?}");
        assert!(alerts.iter().all(|a| a["state"] == "firing"));
    }

    #[test]
    fn guardrails_alert_for_the_failing_variant_only() {
        let mut engine = engine();
        let mut events = Vec::new();
        for i in 0..40 {
            let at = T0 + i * 20_000;
            let a = json!({ "experiment_assignments": { "pricing_layout": "A" } });
            let b = json!({ "experiment_assignments": { "pricing_layout": "B" } });
            events.push(event("export_succeeded", at, a));
            events.push(event(if i % 2 == 0 { "export_failed" } else { "export_succeeded" }, at, b));
        }
        let mut alerts = feed(&mut engine, &events);
        alerts.extend(pass_time(&mut engine, T0 + 14 * MINUTE));
        let keys = states(&alerts);
        assert!(keys.contains(&("experiment_guardrail/export_success_rate{experiment=pricing_layout,variant=B}".into(), "firing".into())), "{keys:?}");
        assert!(!keys.iter().any(|(key, _)| key.contains("variant=A")), "{keys:?}");
        let b = alerts.iter().find(|a| a["rule"] == "experiment_guardrail").unwrap();
        assert_eq!(b["labels"], json!({ "experiment": "pricing_layout", "variant": "B" }));
        assert_eq!(b["check"], "export_success_rate");
        assert_eq!(b["owner"], "growth");
    }

    #[test]
    fn batching_does_not_change_the_alerts() {
        let mut events = generations(T0, 90, 130_000.0);
        events.extend(generations(T0 + 15 * MINUTE, 200, 10_000.0));
        events.extend((0..60).map(|i| event("scene_locked", T0 + i * 30_000, json!({ "consistency_score": 0.8 }))));
        events.sort_by_key(|e| serde_json::from_slice::<Value>(e).unwrap()["server_ts"].as_str().unwrap().to_string());
        let whole = feed(&mut engine(), &events);
        let mut engine = engine();
        let mut one_by_one = Vec::new();
        for chunk in events.chunks(7) {
            one_by_one.extend(feed(&mut engine, chunk));
        }
        assert!(!whole.is_empty());
        assert_eq!(whole, one_by_one);
    }

    #[test]
    fn events_out_of_order_within_the_allowance_give_the_same_alerts() {
        let mut events = generations(T0, 40, 130_000.0);
        events.extend(generations(T0 + 400_000, 200, 10_000.0));
        events.extend((0..80).map(|i| event("scene_locked", T0 + i * 30_000, json!({ "consistency_score": 0.8 }))));
        events.sort_by_key(|e| serde_json::from_slice::<Value>(e).unwrap()["server_ts"].as_str().unwrap().to_string());
        let in_order = feed(&mut engine(), &events);
        // As two ingest workers might deliver them: neighbours swapped, and
        // every tenth event held back by four minutes' worth of others.
        let mut shuffled = events.clone();
        for pair in shuffled.chunks_mut(2) {
            pair.reverse();
        }
        for i in (0..shuffled.len().saturating_sub(25)).step_by(10) {
            shuffled[i..i + 25].rotate_left(1);
        }
        assert_ne!(shuffled, events);
        assert!(!in_order.is_empty());
        assert_eq!(feed(&mut engine(), &shuffled), in_order);
    }

    #[test]
    fn late_events_count_within_the_allowance_and_are_ignored_beyond_it() {
        let mut engine = engine();
        feed(&mut engine, &generations(T0 + 10 * MINUTE, 1, 1000.0));
        let mut tally = Tally::default();
        let within = event("scene_generated", T0 + 6 * MINUTE, json!({ "latency_ms": 1000 }));
        let beyond = event("scene_generated", T0 + 4 * MINUTE, json!({ "latency_ms": 1000 }));
        let ahead = event("scene_generated", NOW + 6 * MINUTE, json!({ "latency_ms": 1000 }));
        engine.consume([within.as_slice(), beyond.as_slice(), ahead.as_slice(), b"not json".as_slice()], NOW, &mut tally);
        assert_eq!((tally.sampled, tally.left_out.late, tally.left_out.future, tally.unreadable), (1, 1, 1, 1));
    }

    #[test]
    fn quiet_ticks_move_event_time_so_alerts_resolve_without_traffic() {
        let mut engine = engine();
        let mut alerts = feed(&mut engine, &generations(T0, 60, 130_000.0));
        alerts.extend(pass_time(&mut engine, T0 + 10 * MINUTE + 1));
        assert_eq!(states(&alerts).len(), 1);
        let wall = 1_000_000_000_000_000_000u64;
        assert!(engine.tick(wall).is_empty(), "the first tick only starts the clock");
        assert!(engine.tick(wall + 5 * 60 * 1_000_000_000).is_empty(), "events came before that tick: time is theirs");
        let resolved = engine.tick(wall + 25 * 60 * 1_000_000_000);
        assert_eq!(states(&resolved.iter().map(|a| a.body.clone()).collect::<Vec<_>>()), [("generation_p95".into(), "resolved".into())]);
    }

    #[test]
    fn a_restored_engine_neither_repeats_nor_forgets_an_alert() {
        let mut first = engine();
        let fired = feed(&mut first, &generations(T0, 61, 130_000.0));
        assert_eq!(states(&fired).len(), 1);
        let snapshot = first.snapshot();
        let mut second = engine();
        second.restore(&snapshot).unwrap();
        let mut later = feed(&mut second, &generations(T0 + 611_000, 30, 130_000.0));
        later.extend(pass_time(&mut second, T0 + 60 * MINUTE));
        assert_eq!(states(&later), [("generation_p95".into(), "resolved".into())]);
        assert_eq!(later[0]["firing_since"], fired[0]["changed_at"]);
        assert!(engine().restore(b"{]").unwrap_err().contains("cannot read the alert state"));
    }

    /// A continuity rule over one-minute windows, so each minute's mean is
    /// decided on its own, with the given damping settings.
    fn continuity(damping: Value) -> Engine {
        let mut rule = json!({ "id": "continuity_score", "owner": "ml", "severity": "flag", "window": "1m", "min_samples": 5,
                               "samples": ["scene_locked"], "mean": "consistency_score", "below": 0.88 });
        rule.as_object_mut().unwrap().extend(damping.as_object().unwrap().clone());
        Engine::new(Settings::parse(&json!({ "rule": [rule] }).to_string()).unwrap())
    }

    /// Six locks in each minute from `from_minute`, scored by `score(minute)`.
    fn locks(from_minute: i64, minutes: i64, score: impl Fn(i64) -> f64) -> Vec<Vec<u8>> {
        (from_minute..from_minute + minutes)
            .flat_map(|m| (0..6).map(move |k| (m, T0 + m * MINUTE + k * 10_000)))
            .map(|(m, at)| event("scene_locked", at, json!({ "consistency_score": score(m) })))
            .collect()
    }

    /// Twenty minutes of a mean that hovers at the threshold (0.85, 0.90,
    /// 0.85, ...), then twenty healthy minutes.
    fn hovering() -> Vec<Vec<u8>> {
        let mut events = locks(0, 20, |m| if m % 2 == 0 { 0.85 } else { 0.90 });
        events.extend(locks(20, 20, |_| 0.95));
        events
    }

    #[test]
    fn without_damping_a_hovering_measure_flaps() {
        let alerts = feed(&mut continuity(json!({})), &hovering());
        assert_eq!(alerts.iter().filter(|a| a["state"] == "firing").count(), 10);
        assert_eq!(alerts.iter().filter(|a| a["state"] == "resolved").count(), 10);
    }

    #[test]
    fn keep_firing_for_turns_a_hovering_measure_into_one_incident() {
        let alerts = feed(&mut continuity(json!({ "keep_firing_for": "5m" })), &hovering());
        assert_eq!(states(&alerts), [("continuity_score".into(), "firing".into()), ("continuity_score".into(), "resolved".into())]);
        let (firing, resolved) = (&alerts[0], &alerts[1]);
        // Minute 0 is bad (decided at 10:01); minute 19 is the last good one
        // of the hovering, so the condition fails from 10:20 on, and has
        // failed for five minutes at 10:25.
        assert_eq!(firing["changed_at"], time::format_rfc3339(T0 + MINUTE));
        assert_eq!(resolved["condition_since"], time::format_rfc3339(T0 + 20 * MINUTE));
        assert_eq!(resolved["changed_at"], time::format_rfc3339(T0 + 25 * MINUTE));
        assert_eq!(resolved["firing_since"], firing["changed_at"]);
        assert!(resolved["summary"].as_str().unwrap().ends_with("condition failed since 2026-11-24T10:20:00.000Z"), "{resolved}");
    }

    #[test]
    fn for_fires_only_once_the_condition_has_held_that_long() {
        let mut engine = continuity(json!({ "for": "3m" }));
        // Hovering never holds for three minutes: nothing fires.
        assert_eq!(feed(&mut engine, &hovering()), Vec::<Value>::new());
        // Minutes 40..50 bad: it holds from 10:41 and fires at 10:44.
        let mut alerts = feed(&mut engine, &locks(40, 10, |_| 0.80));
        alerts.extend(feed(&mut engine, &locks(50, 10, |_| 0.95)));
        assert_eq!(states(&alerts), [("continuity_score".into(), "firing".into()), ("continuity_score".into(), "resolved".into())]);
        assert_eq!(alerts[0]["condition_since"], time::format_rfc3339(T0 + 41 * MINUTE));
        assert_eq!(alerts[0]["changed_at"], time::format_rfc3339(T0 + 44 * MINUTE));
        assert_eq!(alerts[0]["firing_since"], time::format_rfc3339(T0 + 44 * MINUTE));
        // Without keep_firing_for it resolves at the first healthy minute.
        assert_eq!(alerts[1]["changed_at"], time::format_rfc3339(T0 + 51 * MINUTE));
        assert!(alerts[1].get("condition_since").is_none());
    }

    #[test]
    fn damping_set_at_the_top_applies_to_every_rule_that_sets_none() {
        let rule = json!({ "id": "c", "owner": "ml", "severity": "flag", "window": "1m", "samples": ["scene_locked"],
                           "mean": "consistency_score", "below": 0.88 });
        let mut own = rule.clone();
        own["keep_firing_for"] = json!("0s");
        own["check"] = json!("own");
        let config = json!({ "for": "2m", "keep_firing_for": "10m", "rule": [rule, own] });
        let settings = Settings::parse(&config.to_string()).unwrap();
        assert_eq!((settings.rules[0].hold_ms, settings.rules[0].keep_firing_ms), (2 * MINUTE, 10 * MINUTE));
        assert_eq!((settings.rules[1].hold_ms, settings.rules[1].keep_firing_ms), (2 * MINUTE, 0));
    }

    #[test]
    fn a_pending_or_clearing_alert_survives_a_restore_and_older_snapshots_still_read() {
        // Pending across a restore: the hold time counts from before it.
        let events = locks(0, 10, |_| 0.80);
        let mut first = continuity(json!({ "for": "3m", "keep_firing_for": "3m" }));
        assert_eq!(feed(&mut first, &events[..6 * 8]), Vec::<Value>::new(), "held from 10:01, decided up to 10:03");
        let mut second = continuity(json!({ "for": "3m", "keep_firing_for": "3m" }));
        second.restore(&first.snapshot()).unwrap();
        let mut alerts = feed(&mut second, &events[6 * 8..]);
        alerts.extend(feed(&mut second, &locks(10, 20, |_| 0.95)));
        assert_eq!(states(&alerts), [("continuity_score".into(), "firing".into()), ("continuity_score".into(), "resolved".into())]);
        assert_eq!(alerts[0]["changed_at"], time::format_rfc3339(T0 + 4 * MINUTE));
        assert_eq!(alerts[1]["changed_at"], time::format_rfc3339(T0 + 14 * MINUTE));
        // A snapshot written before damping existed: a firing alert, no marks.
        let older = format!(
            r#"{{"version":1,"watermark_ms":{w},"evaluated_ms":{e},"last_sample_ms":{w},"last_tick_ns":null,"events_since_tick":false,
                "series":{{"continuity_score":{{"rule":"continuity_score","labels":{{}},"steps":{{}},
                "alert":{{"state":"firing","since_ms":{e},"announced_ms":{e}}}}}}}}}"#,
            w = T0,
            e = T0 - 5 * MINUTE
        );
        let mut engine = continuity(json!({ "keep_firing_for": "3m" }));
        engine.restore(older.as_bytes()).unwrap();
        let alerts = feed(&mut engine, &locks(0, 7, |_| 0.95));
        assert_eq!(states(&alerts), [("continuity_score".into(), "resolved".into())], "an empty window resolves at once");
        assert_eq!(alerts[0]["firing_since"], time::format_rfc3339(T0 - 5 * MINUTE));
    }

    #[test]
    fn a_plugin_without_damping_reads_the_alert_states_of_one_with_it() {
        // The alert state as builds before damping declared it.
        #[derive(Debug, PartialEq, serde::Deserialize)]
        #[serde(tag = "state", rename_all = "snake_case")]
        enum Before {
            Ok,
            Firing { since_ms: i64, announced_ms: i64 },
        }
        let now = [
            (AlertState::Ok { pending_since_ms: Some(5) }, Before::Ok),
            (AlertState::QUIET, Before::Ok),
            (AlertState::Firing { since_ms: 1, announced_ms: 2, clearing_since_ms: Some(3), silenced: true }, Before::Firing { since_ms: 1, announced_ms: 2 }),
        ];
        for (state, before) in now {
            let text = serde_json::to_string(&state).unwrap();
            assert_eq!(serde_json::from_str::<Before>(&text).unwrap(), before, "{text}");
        }
    }

    /// The one-minute continuity rule with these silences.
    fn silenced_continuity(silences: Value) -> Engine {
        let rule = json!({ "id": "continuity_score", "owner": "ml", "severity": "flag", "window": "1m", "min_samples": 5,
                           "samples": ["scene_locked"], "mean": "consistency_score", "below": 0.88 });
        Engine::new(Settings::parse(&json!({ "rule": [rule], "silence": silences }).to_string()).unwrap())
    }

    fn silence_until(minute: i64) -> Value {
        json!([{ "rule": "continuity_score", "until": time::format_rfc3339(T0 + minute * MINUTE), "reason": "scorer migration, CHG-77" }])
    }

    #[test]
    fn an_incident_that_outlasts_its_silence_is_announced_when_the_silence_ends() {
        let mut engine = silenced_continuity(silence_until(10));
        let mut alerts = feed(&mut engine, &locks(0, 20, |_| 0.80));
        alerts.extend(feed(&mut engine, &locks(20, 20, |_| 0.95)));
        assert_eq!(
            states(&alerts),
            [("continuity_score".into(), "firing".into()), ("continuity_score".into(), "firing".into()), ("continuity_score".into(), "resolved".into())]
        );
        // Fired at 10:01 under the silence: published for the record, marked.
        let (held, announced, resolved) = (&alerts[0], &alerts[1], &alerts[2]);
        assert_eq!(held["silenced"], true);
        assert_eq!(held["silence"], json!({ "until": time::format_rfc3339(T0 + 10 * MINUTE), "reason": "scorer migration, CHG-77" }));
        assert!(held["summary"].as_str().unwrap().ends_with("; silenced until 2026-11-24T10:10:00.000Z: scorer migration, CHG-77"), "{held}");
        // At 10:10 the silence is over and the condition still holds.
        assert_eq!(announced["changed_at"], time::format_rfc3339(T0 + 10 * MINUTE));
        assert_eq!(announced["firing_since"], time::format_rfc3339(T0 + MINUTE));
        assert_eq!(announced["after_silence"], true);
        assert!(announced.get("silenced").is_none(), "{announced}");
        // What was announced is resolved where on-call can see it.
        assert_eq!(resolved["changed_at"], time::format_rfc3339(T0 + 21 * MINUTE));
        assert!(resolved.get("silenced").is_none(), "{resolved}");
    }

    #[test]
    fn an_incident_that_ends_under_its_silence_is_silent_at_both_ends() {
        let mut engine = silenced_continuity(silence_until(30));
        let mut alerts = feed(&mut engine, &locks(0, 5, |_| 0.80));
        alerts.extend(feed(&mut engine, &locks(5, 40, |_| 0.95)));
        assert_eq!(states(&alerts), [("continuity_score".into(), "firing".into()), ("continuity_score".into(), "resolved".into())]);
        assert!(alerts.iter().all(|a| a["silenced"] == true), "{alerts:?}");
        assert!(alerts[1]["summary"].as_str().unwrap().ends_with("it fired under a silence and was never announced"), "{}", alerts[1]);
        // An incident after the silence pages as usual.
        let later = feed(&mut engine, &locks(50, 10, |_| 0.80));
        assert_eq!(states(&later), [("continuity_score".into(), "firing".into())]);
        assert!(later[0].get("silenced").is_none());
    }

    #[test]
    fn a_silence_taken_out_by_a_swap_announces_what_it_held_back() {
        let mut first = silenced_continuity(silence_until(60));
        let held = feed(&mut first, &locks(0, 8, |_| 0.80));
        assert_eq!(states(&held), [("continuity_score".into(), "firing".into())]);
        assert_eq!(held[0]["silenced"], true);
        // The new version has no silence; the held-back alert is announced
        // at its first boundary, and only once.
        let mut second = silenced_continuity(json!([]));
        second.restore(&first.snapshot()).unwrap();
        let alerts = feed(&mut second, &locks(8, 5, |_| 0.80));
        assert_eq!(states(&alerts), [("continuity_score".into(), "firing".into())]);
        assert_eq!((alerts[0]["after_silence"].clone(), alerts[0]["firing_since"].clone()), (json!(true), json!(time::format_rfc3339(T0 + MINUTE))));
        // Put back, a silence holds back nothing already announced: the
        // resolve of an announced incident is always sent.
        let mut third = silenced_continuity(silence_until(60));
        third.restore(&second.snapshot()).unwrap();
        let resolved = feed(&mut third, &locks(13, 10, |_| 0.95));
        assert_eq!(states(&resolved), [("continuity_score".into(), "resolved".into())]);
        assert!(resolved[0].get("silenced").is_none(), "{}", resolved[0]);
    }

    #[test]
    fn heartbeats_come_on_ticks_as_often_as_asked_with_what_is_firing() {
        let mut config: Value = serde_json::from_str(
            r#"{ "heartbeat": "1m", "subject_prefix": "storyforge.alerts", "rule": [
            { "id": "continuity_score", "owner": "ml", "severity": "flag", "window": "1m", "min_samples": 5,
              "samples": ["scene_locked"], "mean": "consistency_score", "below": 0.88 }] }"#,
        )
        .unwrap();
        let mut engine = Engine::new(Settings::parse(&config.to_string()).unwrap());
        let wall = 1_800_000_000_000_000_000u64;
        let second = 1_000_000_000u64;
        let first = engine.tick(wall);
        assert_eq!(first.len(), 1, "the first tick says the alerting runs");
        assert_eq!(first[0].subject, "storyforge.alerts.heartbeat");
        assert_eq!((first[0].body["heartbeat"].clone(), first[0].body["event_time"].clone()), (json!(true), Value::Null));
        assert!(engine.tick(wall + 30 * second).is_empty(), "not a minute yet");
        feed(&mut engine, &locks(0, 10, |_| 0.80));
        let beat = engine.tick(wall + 60 * second);
        assert_eq!(beat.len(), 1);
        assert_eq!(beat[0].body["at"], time::format_rfc3339((wall / 1_000_000) as i64 + 60_000));
        assert_eq!(beat[0].body["firing"], 1);
        assert_eq!(beat[0].body["event_time"], time::format_rfc3339(T0 + 9 * MINUTE + 50_000));
        // Its schedule survives a restore, so a restart does not beat twice.
        let mut restored = Engine::new(Settings::parse(&config.to_string()).unwrap());
        restored.restore(&engine.snapshot()).unwrap();
        assert!(restored.tick(wall + 90 * second).is_empty());
        assert_eq!(restored.tick(wall + 120 * second).len(), 1);
        // Without `heartbeat`, ticks say nothing.
        config.as_object_mut().unwrap().remove("heartbeat");
        assert!(Engine::new(Settings::parse(&config.to_string()).unwrap()).tick(wall).is_empty());
    }

    /// A rule that fires when no export came for fifteen minutes.
    fn exports_stopped() -> Engine {
        let config = json!({ "rule": [{ "id": "exports_stopped", "owner": "eng", "severity": "page", "window": "15m",
                                        "samples": ["export_succeeded", "export_failed"], "count": true, "below": 1 }] });
        Engine::new(Settings::parse(&config.to_string()).unwrap())
    }

    fn exports(from_minute: i64, minutes: i64) -> Vec<Vec<u8>> {
        (from_minute..from_minute + minutes).map(|m| event("export_succeeded", T0 + m * MINUTE, json!({}))).collect()
    }

    #[test]
    fn a_count_below_one_fires_when_the_events_stop_and_resolves_when_they_return() {
        let mut engine = exports_stopped();
        // Forty minutes of exports, the last at 10:39.
        assert_eq!(feed(&mut engine, &exports(0, 40)), Vec::<Value>::new());
        // Then none: ticks move event time on. The window ending 10:55 is
        // the first with nothing in it, decided at 11:00 (the allowance).
        // The wall clock reads the time of the last export: the stream is live.
        let wall = ((T0 + 40 * MINUTE) as u64) * 1_000_000;
        let second = 1_000_000_000u64;
        assert!(engine.tick(wall).is_empty());
        assert!(engine.tick(wall + 60 * second).is_empty(), "events came before that tick");
        let mut alerts = Vec::new();
        for minute in 2..=30 {
            alerts.extend(engine.tick(wall + minute * 60 * second).into_iter().map(|a| a.body));
        }
        assert_eq!(states(&alerts), [("exports_stopped".into(), "firing".into())]);
        assert_eq!(alerts[0]["changed_at"], time::format_rfc3339(T0 + 55 * MINUTE));
        assert_eq!(alerts[0]["value"], 0.0);
        assert_eq!(alerts[0]["samples"], 0);
        // They come back at 11:20; the window ending 11:21 holds one.
        let back = feed(&mut engine, &exports(80, 10));
        assert_eq!(states(&back), [("exports_stopped".into(), "resolved".into())]);
        assert_eq!(back[0]["changed_at"], time::format_rfc3339(T0 + 81 * MINUTE));
    }

    #[test]
    fn a_count_is_not_decided_on_a_window_from_before_the_plugin_watched() {
        let mut engine = exports_stopped();
        // Two exports, at 10:00 and 10:12: every window the plugin has
        // watched whole (from 09:55 on) holds one; earlier ones look empty.
        let mut alerts = feed(&mut engine, &[exports(0, 1), exports(12, 1)].concat());
        alerts.extend(feed(&mut engine, &exports(17, 1)));
        assert_eq!(alerts, Vec::<Value>::new());
        // After a restore from a state of a build without counts, it watches
        // from the restored evaluation on.
        let mut restored = exports_stopped();
        let mut older: Value = serde_json::from_slice(&engine.snapshot()).unwrap();
        older.as_object_mut().unwrap().remove("watching_since_ms");
        older["series"] = json!({});
        restored.restore(older.to_string().as_bytes()).unwrap();
        assert_eq!(feed(&mut restored, &exports(20, 1)), Vec::<Value>::new());
        // It watches whole windows from 10:12 (the restored evaluation): the
        // first window without 10:20's export ends at 10:36.
        let alerts = feed(&mut restored, &exports(45, 1));
        assert_eq!(states(&alerts), [("exports_stopped".into(), "firing".into())], "{alerts:?}");
        assert_eq!(alerts[0]["changed_at"], time::format_rfc3339(T0 + 36 * MINUTE));
    }

    #[test]
    fn memory_stays_bounded_however_many_events_come() {
        let mut engine = engine();
        let mut tally = Tally::default();
        let mut batch = Vec::with_capacity(1000);
        for i in 0..300_000i64 {
            // Three hours of traffic, latencies spread over 1 ms .. 200 s.
            let latency = (i * 7919 % 200_000 + 1) as f64;
            batch.push(event("scene_generated", T0 + i * 36, json!({ "latency_ms": latency })));
            if batch.len() == 1000 {
                engine.consume(batch.iter().map(Vec::as_slice), NOW, &mut tally);
                batch.clear();
            }
        }
        assert_eq!(tally.sampled, 300_000);
        // One step per minute of the 15-minute window, and of the 5 minutes
        // of allowance before it is decided.
        assert!(engine.steps_held() <= 21, "{} steps", engine.steps_held());
        let size = engine.snapshot().len();
        assert!(size < 400_000, "snapshot {size} bytes");
    }
}
