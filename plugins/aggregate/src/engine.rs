//! The rollups, as plain Rust: each event counted into the open window of
//! every length that holds its event time, per group of its rollups, and
//! each window published once it is final.
//!
//! Time is the events' own (`server_ts`), as for the alerts (see
//! `sluice_kit::windows`): a window is final once event time is the late
//! allowance past its end, so a replayed day gives the same rollups however
//! its events are batched. An event later than that is counted as `late`
//! and left out; one from the future likewise. A window that no event fell
//! in is not published: a dashboard reads a missing window as zero.
//!
//! Memory: only open windows are held (about two of each length, given the
//! allowance), each with at most `max_groups` groups per rollup (and one
//! `(other)` group per cut for the rest); a group is a few counters and, for
//! quantiles, a sketch whose size depends on the spread of the values.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sluice_plugin::distinct::{self, Distinct};
use sluice_plugin::labels::{self, Labels};
use sluice_plugin::time;
use sluice_plugin::windows::{self, EventClock, LeftOut, Summary, step_start};

use crate::activation::{self, Activation};
use crate::config::{Rollup, Settings, Width};

/// The version of the state's form.
pub const STATE_VERSION: u32 = 1;

/// A group's label value for a `by` field the event lacks.
pub const ABSENT: &str = "(absent)";
/// The label values of the group that counts what `max_groups` left out.
pub const OTHER: &str = "(other)";
/// The cut every event counts in: its rollup's `by` groups, uncut.
pub const ALL: &str = "all";

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub subject: String,
    pub body: Value,
}

/// What a batch did that the stage counts.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    pub counted: u64,
    pub left_out: LeftOut,
    pub unreadable: u64,
    pub missing_value: u64,
    pub over_group_limit: u64,
    pub untracked_users: u64,
    pub unremembered_users: u64,
}

/// All the stage keeps between batches: its snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    version: u32,
    #[serde(flatten)]
    clock: EventClock,
    /// Open windows, in the order they were opened.
    windows: Vec<Window>,
    #[serde(default)]
    activation: activation::State,
}

impl Default for State {
    fn default() -> Self {
        Self { version: STATE_VERSION, clock: EventClock::default(), windows: Vec::new(), activation: activation::State::default() }
    }
}

/// One window of one length: each rollup's groups in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Window {
    width_ms: i64,
    start_ms: i64,
    rollups: HashMap<String, Groups>,
}

/// A rollup's groups in one window, by their series key (hashed: keys share
/// long prefixes, which an ordered map compares byte by byte at each step;
/// they are published in key order).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Groups {
    groups: HashMap<String, Group>,
    /// Events counted in `(other)` because `max_groups` was reached.
    #[serde(default, skip_serializing_if = "is_zero")]
    over_limit: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Group {
    cut: String,
    labels: Labels,
    summary: Summary,
    /// The distinct values of the rollup's `distinct` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    distinct: Option<Distinct>,
}

/// One group an event counts towards: its cut, labels and series key.
struct Target {
    cut: String,
    labels: Labels,
    key: String,
}

impl Target {
    fn new(cut: &str, labels: Labels) -> Self {
        Self { key: labels::series_key(cut, &labels), cut: cut.to_string(), labels }
    }
}

pub struct Engine {
    settings: Settings,
    /// Rollups by the event names they take.
    by_event: BTreeMap<String, Vec<usize>>,
    activation: Option<Activation>,
    state: State,
}

impl Engine {
    pub fn new(settings: Settings) -> Self {
        let mut by_event: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (index, rollup) in settings.rollups.iter().enumerate() {
            for event in &rollup.events {
                by_event.entry(event.clone()).or_default().push(index);
            }
        }
        let activation = settings.activation.clone().map(Activation::new);
        Self { settings, by_event, activation, state: State::default() }
    }

    /// Runs `f` on this engine with `state` as its state (the SDK keeps the
    /// state; the engine works on it in place).
    pub fn with_state<T>(&mut self, state: &mut State, f: impl FnOnce(&mut Self) -> T) -> T {
        std::mem::swap(&mut self.state, state);
        let out = f(self);
        std::mem::swap(&mut self.state, state);
        out
    }

    /// A kept state, checked against this config: windows of lengths or
    /// rollups it no longer has are dropped (their counts were published
    /// or belong to a rollup taken out).
    pub fn adopt(&mut self, mut state: State) -> Result<State, String> {
        if state.version > STATE_VERSION {
            return Err(format!("the aggregate state was kept at version {}, newer than this build's {STATE_VERSION}", state.version));
        }
        let widths: Vec<i64> = self.settings.widths.iter().map(|w| w.ms).collect();
        state.windows.retain(|window| widths.contains(&window.width_ms));
        for window in &mut state.windows {
            window.rollups.retain(|name, _| self.settings.rollups.iter().any(|r| &r.name == name));
        }
        if let Some(activation) = &self.activation {
            activation.adopt(&mut state.activation);
        }
        state.version = STATE_VERSION;
        Ok(state)
    }

    /// Counts a batch of event bodies, at wall time `now_ms`; returns the
    /// rollups that became final.
    pub fn consume<'a>(&mut self, bodies: impl IntoIterator<Item = &'a [u8]>, now_ms: i64, tally: &mut Tally) -> Vec<Output> {
        let mut outputs = Vec::new();
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
            let rollups = self.by_event.get(name).cloned().unwrap_or_default();
            let followed = self.activation.as_ref().is_some_and(|a| a.follows(name));
            if rollups.is_empty() && !followed {
                continue;
            }
            let Some(at_ms) = windows::event_time(&event, &self.settings.time_field) else {
                tally.unreadable += 1;
                continue;
            };
            let Some(ahead) = self.state.clock.admit(at_ms, now_ms, self.settings.late_ms, &mut tally.left_out) else { continue };
            if ahead {
                self.advance_to(at_ms, &mut outputs);
            }
            tally.counted += 1;
            if let Some(activation) = &self.activation
                && followed
            {
                activation.count(&mut self.state.activation, name, &event, at_ms, &self.settings, tally);
            }
            // Cohort values the event lacks are its user's, from their sign-up.
            let traits = match &self.activation {
                Some(activation) if !rollups.is_empty() && !self.settings.cohorts.is_empty() => {
                    activation.recall(&mut self.state.activation, &event, at_ms, &self.settings)
                }
                _ => None,
            };
            for index in rollups {
                self.count(index, name, &event, at_ms, traits.as_ref(), tally);
            }
        }
        outputs
    }

    /// The host's clock: with no event since the last tick, event time
    /// moves on by the wall time that passed, so windows close without
    /// traffic.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Output> {
        let mut outputs = Vec::new();
        if let Some(to_ms) = self.state.clock.tick(now_ns, self.settings.late_ms) {
            self.advance_to(to_ms, &mut outputs);
        }
        outputs
    }

    /// How many groups the open windows hold: the state's size, in effect.
    pub fn groups_held(&self) -> usize {
        self.state.windows.iter().flat_map(|w| w.rollups.values()).map(|g| g.groups.len()).sum()
    }

    /// How many users the activation follows.
    pub fn users_followed(&self) -> usize {
        self.state.activation.users()
    }

    /// How many users' cohort values the activation remembers.
    pub fn users_remembered(&self) -> usize {
        self.state.activation.remembered()
    }

    fn count(&mut self, index: usize, name: &str, event: &Map<String, Value>, at_ms: i64, traits: Option<&Labels>, tally: &mut Tally) {
        let rollup = &self.settings.rollups[index];
        if !labels::matches_all(event, &rollup.filter) {
            return;
        }
        let value = match &rollup.value {
            Some(field) => match event.get(field).and_then(Value::as_f64) {
                Some(value) => Some(value),
                None => {
                    tally.missing_value += 1;
                    return;
                }
            },
            None => None,
        };
        let hit = rollup.share.as_ref().is_some_and(|share| share.event.as_deref().is_none_or(|e| e == name) && labels::matches_all(event, &share.filter));
        let targets = self.targets(rollup, event, traits);
        // An event without the field counts, but adds no distinct value.
        let distinct_value = rollup.distinct.as_ref().and_then(|field| event.get(field)).and_then(labels::scalar);
        let sketch = (!rollup.quantiles.is_empty()).then_some(self.settings.accuracy);
        // The key of an `(other)` group or a new one, when a target is not a group yet.
        let mut other_key;
        for width in self.settings.widths.iter().filter(|w| rollup.widths.contains(&w.ms)) {
            let start_ms = step_start(at_ms, width.ms);
            let window = match self.state.windows.iter().position(|w| w.width_ms == width.ms && w.start_ms == start_ms) {
                Some(at) => &mut self.state.windows[at],
                None => {
                    self.state.windows.push(Window { width_ms: width.ms, start_ms, rollups: HashMap::new() });
                    self.state.windows.last_mut().expect("just pushed")
                }
            };
            // Looked up before an entry is made: a name or key is cloned only for a new one.
            if !window.rollups.contains_key(&rollup.name) {
                window.rollups.insert(rollup.name.clone(), Groups::default());
            }
            let groups = window.rollups.get_mut(&rollup.name).expect("just made");
            for target in &targets {
                let key = if groups.groups.contains_key(&target.key) {
                    &target.key
                } else {
                    let (key, labels) = if groups.groups.len() >= self.settings.max_groups {
                        groups.over_limit += 1;
                        tally.over_group_limit += 1;
                        let other = other_labels(&target.labels);
                        (labels::series_key(&target.cut, &other), other)
                    } else {
                        (target.key.clone(), target.labels.clone())
                    };
                    if !groups.groups.contains_key(&key) {
                        groups.groups.insert(key.clone(), Group { cut: target.cut.clone(), labels, summary: Summary::default(), distinct: None });
                    }
                    other_key = key;
                    &other_key
                };
                let group = groups.groups.get_mut(key).expect("just made");
                if let Some(value) = &distinct_value {
                    group.distinct.get_or_insert_with(Distinct::default).add(value.as_bytes());
                }
                let summary = &mut group.summary;
                match value {
                    Some(value) => summary.add(value, hit, sketch),
                    None => summary.count(hit),
                }
            }
        }
    }

    /// The groups an event counts towards: its `by` labels, and those again
    /// with each cohort's labels (from `traits`, its user's, when the event
    /// lacks the field).
    fn targets(&self, rollup: &Rollup, event: &Map<String, Value>, traits: Option<&Labels>) -> Vec<Target> {
        let base = by_labels(&rollup.by, event);
        let mut targets = vec![Target::new(ALL, base.clone())];
        if !rollup.cohorts {
            return targets;
        }
        for cohort in &self.settings.cohorts {
            let remembered = || traits.and_then(|traits| traits.get(cohort)).cloned().map(Value::String);
            let value = event.get(cohort).cloned().or_else(remembered);
            for labels in cut(&base, cohort, value.as_ref()) {
                targets.push(Target::new(cohort, labels));
            }
        }
        targets
    }

    /// Moves event time to `to_ms`, publishing every window that became
    /// final: shorter lengths first, then by start and rollup.
    fn advance_to(&mut self, to_ms: i64, outputs: &mut Vec<Output>) {
        self.state.clock.watermark_ms = Some(to_ms);
        let mut done: Vec<usize> = Vec::new();
        for width in &self.settings.widths {
            let Some(final_through) = self.state.clock.final_through(self.settings.late_ms, width.ms) else { continue };
            let mut ready: Vec<usize> = (0..self.state.windows.len())
                .filter(|&n| self.state.windows[n].width_ms == width.ms && self.state.windows[n].start_ms + width.ms <= final_through)
                .collect();
            ready.sort_by_key(|&n| self.state.windows[n].start_ms);
            for n in ready {
                outputs.extend(self.publish(width, &self.state.windows[n]));
                done.push(n);
            }
        }
        done.sort_unstable();
        for n in done.into_iter().rev() {
            self.state.windows.remove(n);
        }
        if let Some(activation) = &self.activation {
            let decided_through = to_ms.saturating_sub(self.settings.late_ms);
            outputs.extend(activation.advance(&mut self.state.activation, decided_through, &self.settings));
        }
    }

    /// A final window's rollups, in the order of the config.
    fn publish(&self, width: &Width, window: &Window) -> Vec<Output> {
        self.settings
            .rollups
            .iter()
            .filter_map(|rollup| {
                let groups = window.rollups.get(&rollup.name)?;
                let total: u64 = groups.groups.values().filter(|g| g.cut == ALL).map(|g| g.summary.samples).sum();
                let mut keyed: Vec<(&String, &Group)> = groups.groups.iter().collect();
                keyed.sort_unstable_by_key(|(key, _)| *key);
                let rows: Vec<Value> = keyed.into_iter().map(|(_, group)| row(rollup, group)).collect();
                let mut body = json!({
                    "rollup": rollup.name,
                    "window": width.name,
                    "start": time::format_rfc3339(window.start_ms),
                    "end": time::format_rfc3339(window.start_ms + width.ms),
                    "events": rollup.events,
                    "by": rollup.by,
                    "count": total,
                    "groups": rows,
                });
                let fields = body.as_object_mut().expect("a JSON object");
                if rollup.cohorts && !self.settings.cohorts.is_empty() {
                    fields.insert("cohorts".into(), json!(self.settings.cohorts));
                }
                if let Some(value) = &rollup.value {
                    fields.insert("value".into(), json!(value));
                }
                if !rollup.quantiles.is_empty() {
                    // Each quantile is within this relative error of a value
                    // that was really at its rank.
                    fields.insert("quantile_error".into(), json!(self.settings.accuracy));
                }
                if let Some(field) = &rollup.distinct {
                    fields.insert("distinct_of".into(), json!(field));
                    fields.insert("distinct_error".into(), json!(distinct::ERROR));
                }
                if groups.over_limit > 0 {
                    fields.insert("over_group_limit".into(), json!(groups.over_limit));
                }
                Some(Output { subject: format!("{}.{}.{}", self.settings.subject_prefix, rollup.name, width.name), body })
            })
            .collect()
    }
}

/// One group's figures.
fn row(rollup: &Rollup, group: &Group) -> Value {
    let summary = &group.summary;
    let mut row = json!({ "cut": group.cut, "labels": group.labels, "count": summary.samples });
    let fields = row.as_object_mut().expect("a JSON object");
    if rollup.value.is_some() {
        fields.insert("sum".into(), json!(round(summary.sum)));
        fields.insert("min".into(), json!(summary.min));
        fields.insert("max".into(), json!(summary.max));
        fields.insert("mean".into(), json!(summary.mean().map(round)));
    }
    for q in &rollup.quantiles {
        fields.insert(quantile_name(*q), json!(summary.quantile(*q).map(round)));
    }
    if rollup.share.is_some() {
        fields.insert("hits".into(), json!(summary.hits));
        fields.insert("share".into(), json!(summary.share().map(round)));
    }
    if rollup.distinct.is_some() {
        let estimate = group.distinct.as_ref().map_or(0.0, Distinct::estimate).round();
        fields.insert("distinct".into(), json!(estimate as u64));
        fields.insert("per_distinct".into(), json!((estimate > 0.0).then(|| round(summary.samples as f64 / estimate))));
    }
    row
}

/// `p50`, `p95`, `p99`, `p99.9`.
fn quantile_name(q: f64) -> String {
    let percent = (q * 1000.0).round() / 10.0;
    format!("p{percent}")
}

/// Rounded to 6 decimals, so that sums of decimals read as written.
fn round(value: f64) -> f64 {
    (value * 1e6).round() / 1e6
}

/// The most bytes of a label value; a longer one counts as `(too long)`, so
/// that a hostile field cannot make every group large.
const MAX_LABEL_BYTES: usize = 128;
pub const TOO_LONG: &str = "(too long)";

/// A value as a label: scalars as they are, within `MAX_LABEL_BYTES`.
pub(crate) fn label(value: &Value) -> Option<String> {
    labels::scalar(value).map(|text| if text.len() > MAX_LABEL_BYTES { TOO_LONG.to_string() } else { text })
}

/// The labels of the `by` fields of an event; one it lacks is `(absent)`.
pub(crate) fn by_labels(by: &[String], event: &Map<String, Value>) -> Labels {
    by.iter().map(|field| (field.clone(), event.get(field).and_then(label).unwrap_or_else(|| ABSENT.to_string()))).collect()
}

/// `base` cut by a cohort field holding `value`: once with `field = value`,
/// or once per entry of an object (`experiment`, `variant`); with
/// `field = (absent)` when there is none.
pub(crate) fn cut(base: &Labels, field: &str, value: Option<&Value>) -> Vec<Labels> {
    let mut cuts = labels::of_field(field, value);
    for labels in &mut cuts {
        for value in labels.values_mut() {
            if value.len() > MAX_LABEL_BYTES {
                *value = TOO_LONG.to_string();
            }
        }
    }
    if cuts.is_empty() {
        cuts.push(Labels::from([(field.to_string(), ABSENT.to_string())]));
    }
    cuts.into_iter()
        .map(|cut| {
            let mut labels = base.clone();
            labels.extend(cut);
            labels
        })
        .collect()
}

/// The labels of the group that counts what `max_groups` left out: every
/// label `(other)`, so the group keeps its cut's shape.
pub(crate) fn other_labels(labels: &Labels) -> Labels {
    labels.keys().map(|name| (name.clone(), OTHER.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    const MINUTE: i64 = 60_000;
    /// 2026-11-24T00:00:00Z.
    const T0: i64 = 1_795_478_400_000;

    fn engine(config: Value) -> Engine {
        Engine::new(Settings::parse(&config.to_string()).expect("a valid config"))
    }

    fn event(name: &str, at_ms: i64, fields: Value) -> Vec<u8> {
        let mut body = json!({ "event": name, "server_ts": time::format_rfc3339(at_ms) });
        body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        body.to_string().into_bytes()
    }

    fn feed(engine: &mut Engine, bodies: &[Vec<u8>]) -> (Vec<Output>, Tally) {
        let mut tally = Tally::default();
        let now = T0 + 10 * 24 * 60 * MINUTE;
        let out = engine.consume(bodies.iter().map(Vec::as_slice), now, &mut tally);
        (out, tally)
    }

    fn latency_config() -> Value {
        json!({
            "subject_prefix": "agg",
            "late_allowance": "1m",
            "windows": ["1m", "1h"],
            "cohorts": ["experiment_assignments"],
            "rollup": [
                { "name": "latency", "events": ["scene_generated"], "by": ["model_vendor"], "value": "latency_ms", "quantiles": [0.5, 0.99] },
                { "name": "exports", "events": ["export_succeeded", "export_failed"], "share": { "event": "export_succeeded" }, "cohorts": false },
            ]
        })
    }

    #[test]
    fn a_minute_is_published_once_the_allowance_has_passed_its_end() {
        let mut engine = engine(latency_config());
        let mut bodies: Vec<Vec<u8>> =
            (0..10).map(|n| event("scene_generated", T0 + n * 5_000, json!({ "model_vendor": "v1", "latency_ms": 1000 * (n + 1) }))).collect();
        bodies.push(event("export_succeeded", T0 + 1_000, json!({})));
        bodies.push(event("export_failed", T0 + 2_000, json!({})));
        bodies.push(event("export_succeeded", T0 + 3_000, json!({})));
        let (out, tally) = feed(&mut engine, &bodies);
        assert!(out.is_empty(), "nothing is final yet: {out:?}");
        assert_eq!(tally.counted, 13);
        // Event time reaches 00:01:59.999: the first minute is not final yet.
        let (out, _) = feed(&mut engine, &[event("brain_selected", T0 + 2 * MINUTE - 1, json!({}))]);
        assert!(out.is_empty(), "events no rollup takes do not move event time");
        let (out, _) = feed(&mut engine, &[event("export_succeeded", T0 + 2 * MINUTE - 1, json!({}))]);
        assert!(out.is_empty(), "the minute is final only at 00:02:00");
        let (out, _) = feed(&mut engine, &[event("export_succeeded", T0 + 2 * MINUTE, json!({}))]);
        let subjects: Vec<&str> = out.iter().map(|o| o.subject.as_str()).collect();
        assert_eq!(subjects, ["agg.latency.minute", "agg.exports.minute"]);
        let latency = &out[0].body;
        assert_eq!(latency["start"], "2026-11-24T00:00:00.000Z");
        assert_eq!(latency["end"], "2026-11-24T00:01:00.000Z");
        assert_eq!(latency["count"], 10);
        assert_eq!(latency["quantile_error"], 0.01);
        let all = latency["groups"].as_array().unwrap().iter().find(|g| g["cut"] == ALL).unwrap();
        assert_eq!(all["labels"], json!({ "model_vendor": "v1" }));
        assert_eq!(
            (all["count"].as_u64(), all["sum"].as_f64(), all["min"].as_f64(), all["max"].as_f64()),
            (Some(10), Some(55_000.0), Some(1000.0), Some(10_000.0))
        );
        let p50 = all["p50"].as_f64().unwrap();
        assert!((p50 - 5000.0).abs() <= 50.0, "p50 {p50} within 1 % of 5000");
        let exports = &out[1].body;
        assert_eq!(exports["groups"], json!([{ "cut": "all", "labels": {}, "count": 3, "hits": 2, "share": 0.666667 }]));
    }

    #[test]
    fn every_group_is_cut_by_each_experiment_and_events_without_them_count_as_absent() {
        let mut engine = engine(latency_config());
        let bodies = [
            event("scene_generated", T0, json!({ "model_vendor": "v1", "latency_ms": 10, "experiment_assignments": { "copy": "A", "upsell": "scene_6" } })),
            event("scene_generated", T0 + 1, json!({ "model_vendor": "v2", "latency_ms": 20, "experiment_assignments": { "copy": "B" } })),
            event("scene_generated", T0 + 2, json!({ "latency_ms": 30 })),
            event("scene_generated", T0 + 3 * MINUTE, json!({ "model_vendor": "v1", "latency_ms": 1 })),
        ];
        let (out, _) = feed(&mut engine, &bodies);
        let minute = &out.iter().find(|o| o.subject == "agg.latency.minute").unwrap().body;
        let keys: Vec<String> = minute["groups"].as_array().unwrap().iter().map(|g| format!("{} {}", g["cut"], g["labels"])).collect();
        assert_eq!(
            keys,
            [
                r#""all" {"model_vendor":"(absent)"}"#,
                r#""all" {"model_vendor":"v1"}"#,
                r#""all" {"model_vendor":"v2"}"#,
                r#""experiment_assignments" {"experiment":"copy","model_vendor":"v1","variant":"A"}"#,
                r#""experiment_assignments" {"experiment":"copy","model_vendor":"v2","variant":"B"}"#,
                r#""experiment_assignments" {"experiment":"upsell","model_vendor":"v1","variant":"scene_6"}"#,
                r#""experiment_assignments" {"experiment_assignments":"(absent)","model_vendor":"(absent)"}"#,
            ]
        );
        assert_eq!(minute["count"], 3, "the total counts each event once, not once per cut");
    }

    #[test]
    fn a_distinct_field_counts_its_values_and_the_events_per_value() {
        let mut config = latency_config();
        config["rollup"] = json!([{ "name": "per_project", "events": ["scene_locked"], "distinct": "project_id", "cohorts": false }]);
        let mut engine = engine(config);
        let mut bodies: Vec<Vec<u8>> = (0..300).map(|n| event("scene_locked", T0 + n, json!({ "project_id": format!("p{}", n % 100) }))).collect();
        bodies.push(event("scene_locked", T0 + 400, json!({})));
        bodies.push(event("scene_locked", T0 + 3 * MINUTE, json!({ "project_id": "p1" })));
        let (out, _) = feed(&mut engine, &bodies);
        let minute = &out.iter().find(|o| o.subject == "agg.per_project.minute").unwrap().body;
        assert_eq!((&minute["distinct_of"], &minute["distinct_error"]), (&json!("project_id"), &json!(distinct::ERROR)));
        let group = &minute["groups"][0];
        assert_eq!(group["count"], 301, "an event without the field still counts");
        let distinct = group["distinct"].as_f64().unwrap();
        assert!((distinct - 100.0).abs() <= 3.0 * distinct::ERROR * 100.0, "within three standard errors of 100: {distinct}");
        assert!((group["per_distinct"].as_f64().unwrap() - 301.0 / distinct).abs() < 1e-3);
    }

    #[test]
    fn a_label_value_too_long_counts_as_one_group() {
        let mut engine = engine(latency_config());
        let long = "v".repeat(129);
        let bodies = [
            event("scene_generated", T0, json!({ "model_vendor": long, "latency_ms": 1, "experiment_assignments": { "copy": "x".repeat(500) } })),
            event("scene_generated", T0 + 1, json!({ "model_vendor": "w".repeat(200), "latency_ms": 1 })),
            event("scene_generated", T0 + 2, json!({ "model_vendor": "v".repeat(128), "latency_ms": 1 })),
            event("scene_generated", T0 + 3 * MINUTE, json!({ "model_vendor": "v1", "latency_ms": 1 })),
        ];
        let (out, _) = feed(&mut engine, &bodies);
        let minute = &out.iter().find(|o| o.subject == "agg.latency.minute").unwrap().body;
        let all: Vec<&Value> = minute["groups"].as_array().unwrap().iter().filter(|g| g["cut"] == ALL).collect();
        assert_eq!(all.len(), 2, "128 bytes is a label, more is (too long): {all:?}");
        assert!(all.iter().any(|g| g["labels"]["model_vendor"] == TOO_LONG && g["count"] == 2));
        assert!(minute["groups"].as_array().unwrap().iter().any(|g| g["labels"]["variant"] == TOO_LONG));
    }

    #[test]
    fn groups_past_the_limit_count_as_other_and_are_reported() {
        let mut config = latency_config();
        config["max_groups"] = json!(2);
        config["cohorts"] = json!([]);
        let mut engine = engine(config);
        let mut bodies: Vec<Vec<u8>> = (0..5).map(|n| event("scene_generated", T0 + n, json!({ "model_vendor": format!("v{n}"), "latency_ms": 5 }))).collect();
        bodies.push(event("scene_generated", T0 + 3 * MINUTE, json!({ "model_vendor": "v1", "latency_ms": 1 })));
        let (out, tally) = feed(&mut engine, &bodies);
        let minute = &out.iter().find(|o| o.subject == "agg.latency.minute").unwrap().body;
        assert_eq!(minute["over_group_limit"], 3);
        assert_eq!(minute["count"], 5, "nothing is lost to the limit");
        let other = minute["groups"].as_array().unwrap().iter().find(|g| g["labels"]["model_vendor"] == OTHER).unwrap();
        assert_eq!(other["count"], 3);
        assert_eq!(tally.over_group_limit, 6, "three events over the limit in each of two windows");
    }

    #[test]
    fn late_and_future_events_are_counted_apart_and_the_hour_merges_every_minute() {
        let mut engine = engine(latency_config());
        let bodies: Vec<Vec<u8>> = (0..120).map(|n| event("export_succeeded", T0 + n * 30_000, json!({}))).collect();
        let (out, tally) = feed(&mut engine, &bodies);
        assert_eq!(tally.counted, 120);
        let minutes: Vec<&Output> = out.iter().filter(|o| o.subject == "agg.exports.minute").collect();
        assert_eq!(minutes.len(), 58, "00:00 to 00:57 are final when event time is 00:59:30");
        assert!(minutes.iter().all(|m| m.body["count"] == 2));
        let (out, tally) = feed(&mut engine, &[event("export_failed", T0, json!({})), event("export_failed", T0 + 30 * 24 * 60 * MINUTE, json!({}))]);
        assert!(out.is_empty());
        assert_eq!((tally.left_out.late, tally.left_out.future, tally.counted), (1, 1, 0));
        let (out, _) = feed(&mut engine, &[event("export_failed", T0 + 61 * MINUTE, json!({}))]);
        let hour = out.iter().find(|o| o.subject == "agg.exports.hour").expect("the hour is final at 01:01");
        assert_eq!(hour.body["count"], 120);
        assert_eq!(hour.body["groups"][0]["hits"], 120);
    }

    #[test]
    fn quiet_ticks_close_the_last_windows() {
        let mut engine = engine(latency_config());
        feed(&mut engine, &[event("export_succeeded", T0, json!({}))]);
        let start_ns = (T0 as u64) * 1_000_000;
        assert!(engine.tick(start_ns).is_empty(), "the first tick starts the wall clock");
        assert!(engine.tick(start_ns + 60_000_000_000).is_empty(), "a minute on: 00:01, not final yet");
        let out = engine.tick(start_ns + 120_000_000_000);
        assert_eq!(out.iter().map(|o| o.subject.as_str()).collect::<Vec<_>>(), ["agg.exports.minute"]);
    }

    #[test]
    fn the_same_events_give_the_same_rollups_however_they_are_batched() {
        let bodies: Vec<Vec<u8>> = (0..300)
            .map(|n| event("scene_generated", T0 + n * 997 + (n % 7) * 3000, json!({ "model_vendor": format!("v{}", n % 3), "latency_ms": n * 13 % 900 })))
            .collect();
        let mut one = engine(latency_config());
        let (whole, _) = feed(&mut one, &bodies);
        let mut other = engine(latency_config());
        let mut pieces = Vec::new();
        for chunk in bodies.chunks(7) {
            pieces.extend(feed(&mut other, chunk).0);
            // Through a snapshot, as the host keeps it.
            let kept: State = serde_json::from_slice(&serde_json::to_vec(&other.state).unwrap()).unwrap();
            other.state = other.adopt(kept).unwrap();
        }
        assert_eq!(whole, pieces);
        assert!(!whole.is_empty());
    }
}
