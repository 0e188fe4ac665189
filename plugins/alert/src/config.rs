//! The stage's `config` table: defaults for every rule, and the rules.
//!
//! ```toml
//! [pipeline.stage.config]
//! subject_prefix = "storyforge.alerts"   # alerts go to <prefix>.<rule id>
//! stage = "beta"                         # picks per-stage thresholds
//! min_samples = 20                       # default for every rule
//! late_allowance = "1m"                  # how late an event may still count (default 5m)
//! resolution = "1m"                      # windows slide by this step
//! keep_firing_for = "5m"                 # default for every rule (see below)
//!
//! [[pipeline.stage.config.rule]]
//! id = "generation_p95"
//! owner = "eng"
//! severity = "page"
//! window = "15m"
//! samples = ["scene_generated"]
//! quantile = { field = "latency_ms", q = 0.95 }
//! above = { beta = 110_000, launch = 90_000 }
//! ```
//!
//! A rule measures one of `quantile = { field, q }`, `mean = "field"`,
//! `share = { event?, where? }` (the fraction of samples that match) or
//! `count = true` (how many samples there are) over the events named in
//! `samples` (optionally narrowed by `where`), and fires when the measure is
//! `above` or `below` its threshold. `count` with `below = 1` fires on
//! absence: when none of the events came for a whole window (ticks move
//! event time on without traffic). A count is not held back by
//! `min_samples`, is never grouped, and is first decided once the plugin has
//! watched a whole window, so a start does not look like an outage. `group_by` names a field
//! whose value splits the rule into one alert per value; when that field holds
//! an object (`experiment_assignments`), each of its entries is a group with
//! the labels `experiment` and `variant`.
//!
//! Damping, for measures that hover at their threshold: `for = "5m"` fires
//! only once the condition has held at every step for that long, and
//! `keep_firing_for = "5m"` resolves only once it has failed at every step for
//! that long. Both default to zero: fire and resolve at the first step.
//!
//! `description` (a sentence) and `runbook` (an http(s) URL: what the
//! on-call engineer does about it) are carried in the rule's alerts.
//!
//! Silences keep an expected incident (a vendor's maintenance, a load test)
//! off the pager; ops add and remove them with a hot swap of the pipeline
//! file:
//!
//! ```toml
//! [[pipeline.stage.config.silence]]
//! rule = "provider_fallback_rate"              # a rule's id, or id/check
//! labels = { experiment = "pricing_layout" }   # optional: each must match
//! from = "2026-12-02T09:00:00Z"                # optional
//! until = "2026-12-02T11:00:00Z"
//! reason = "vendor maintenance, CHG-1234"
//! ```
//!
//! `heartbeat = "1m"` has the stage publish `<subject_prefix>.heartbeat`
//! that often (wall time, on the host's ticks) while it runs, for a dead
//! man's switch that pages when the heartbeats stop: when the alerting
//! itself is down. No rule may then be called `heartbeat`.
//!
//! An alert that fires while a silence covers it (by event time) is still
//! published, marked `silenced`, and `notify` keeps it off the on-call
//! tools; if it is still firing when no silence covers it any more, it is
//! announced then.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_plugin::ConfigError;
use sluice_plugin::time::{self, duration_ms};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
    /// The release stage, for thresholds given per stage.
    pub stage: Option<String>,
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    #[serde(default = "default_late")]
    pub late_allowance: String,
    #[serde(default = "default_resolution")]
    pub resolution: String,
    /// Re-announce a firing alert this often (event time); default never.
    pub repeat: Option<String>,
    /// How long a condition must hold before its alert fires; default 0.
    #[serde(rename = "for")]
    pub hold: Option<String>,
    /// How long a condition must fail before a firing alert resolves;
    /// default 0.
    pub keep_firing_for: Option<String>,
    /// How often to say that the alerting runs (wall time); default never.
    pub heartbeat: Option<String>,
    /// The property holding the event time.
    #[serde(default = "default_time_field")]
    pub time_field: String,
    /// The property holding the event name.
    #[serde(default = "default_event_field")]
    pub event_field: String,
    /// Most groups one rule tracks at once, so that a field with unbounded
    /// values cannot exhaust memory.
    #[serde(default = "default_max_groups")]
    pub max_groups: usize,
    /// Relative accuracy of quantiles.
    #[serde(default = "default_accuracy")]
    pub accuracy: f64,
    #[serde(default)]
    pub rule: Vec<RuleConfig>,
    #[serde(default)]
    pub silence: Vec<SilenceConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceConfig {
    pub rule: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub from: Option<String>,
    pub until: String,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub id: String,
    /// Tells apart rules that share an id (one per guardrail metric).
    pub check: Option<String>,
    pub owner: String,
    pub severity: String,
    pub window: String,
    pub min_samples: Option<u64>,
    pub repeat: Option<String>,
    #[serde(rename = "for")]
    pub hold: Option<String>,
    pub keep_firing_for: Option<String>,
    pub group_by: Option<String>,
    pub samples: Vec<String>,
    #[serde(rename = "where", default)]
    pub filter: Map<String, Value>,
    pub quantile: Option<QuantileConfig>,
    pub mean: Option<String>,
    pub share: Option<ShareConfig>,
    pub count: Option<bool>,
    pub above: Option<Threshold>,
    pub below: Option<Threshold>,
    pub description: Option<String>,
    /// Where the on-call engineer reads what to do (an http(s) URL).
    pub runbook: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantileConfig {
    pub field: String,
    pub q: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareConfig {
    pub event: Option<String>,
    #[serde(rename = "where", default)]
    pub filter: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Threshold {
    Value(f64),
    ByStage(BTreeMap<String, f64>),
}

fn default_prefix() -> String {
    "alerts".into()
}
fn default_min_samples() -> u64 {
    20
}
fn default_late() -> String {
    "5m".into()
}
fn default_resolution() -> String {
    "1m".into()
}
fn default_time_field() -> String {
    "server_ts".into()
}
fn default_event_field() -> String {
    "event".into()
}
fn default_max_groups() -> usize {
    1000
}
fn default_accuracy() -> f64 {
    0.01
}

/// What a rule measures.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    Quantile { field: String, q: f64 },
    Mean { field: String },
    Share { event: Option<String>, filter: Map<String, Value> },
    Count,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    Above(f64),
    Below(f64),
}

impl Condition {
    pub fn holds(self, value: f64) -> bool {
        match self {
            Condition::Above(threshold) => value > threshold,
            Condition::Below(threshold) => value < threshold,
        }
    }

    pub fn threshold(self) -> f64 {
        match self {
            Condition::Above(t) | Condition::Below(t) => t,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Condition::Above(_) => "above",
            Condition::Below(_) => "below",
        }
    }
}

/// A checked rule, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `id`, or `id/check`: names the rule's state in a snapshot.
    pub key: String,
    pub id: String,
    pub check: Option<String>,
    pub owner: String,
    pub severity: String,
    pub window_text: String,
    pub window_ms: i64,
    pub min_samples: u64,
    pub repeat_ms: Option<i64>,
    /// How long the condition must hold before the alert fires (`for`).
    pub hold_ms: i64,
    /// How long the condition must fail before the alert resolves.
    pub keep_firing_ms: i64,
    pub group_by: Option<String>,
    pub samples: Vec<String>,
    pub filter: Map<String, Value>,
    pub measure: Measure,
    pub condition: Condition,
    pub description: Option<String>,
    pub runbook: Option<String>,
}

/// The whole checked configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub subject_prefix: String,
    pub stage: Option<String>,
    pub late_ms: i64,
    pub resolution_ms: i64,
    pub time_field: String,
    pub event_field: String,
    pub max_groups: usize,
    pub accuracy: f64,
    pub rules: Vec<Rule>,
    pub silences: Vec<Silence>,
    pub heartbeat: Option<Heartbeat>,
}

/// How often the stage says that it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub every_ms: i64,
    /// As the file gave it, for the heartbeat to repeat.
    pub every: String,
}

/// A checked silence: alerts of `rule` (an id, or id/check) whose labels
/// include `labels` are held back from `from_ms` until `until_ms` (event
/// time, Unix milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Silence {
    pub rule: String,
    pub labels: BTreeMap<String, String>,
    pub from_ms: i64,
    pub until_ms: i64,
    pub reason: String,
}

impl Silence {
    fn check(config: SilenceConfig, rules: &[Rule]) -> Result<Self, String> {
        let name = format!("silence of `{}`", config.rule);
        if !rules.iter().any(|rule| rule.id == config.rule || rule.key == config.rule) {
            let known: Vec<&str> = rules.iter().map(|rule| rule.key.as_str()).collect();
            return Err(format!("{name}: no rule has that id (the rules are {known:?})"));
        }
        let instant = |field: &str, text: &str| time::parse_rfc3339(text).map_err(|e| format!("{name}: {field}: {e}"));
        let from_ms = config.from.as_deref().map(|text| instant("from", text)).transpose()?.unwrap_or(i64::MIN);
        let until_ms = instant("until", &config.until)?;
        if until_ms <= from_ms {
            return Err(format!("{name}: `until` must come after `from`"));
        }
        if config.reason.trim().is_empty() {
            return Err(format!("{name}: give a `reason`, for whoever wonders why they were not paged"));
        }
        Ok(Self { rule: config.rule, labels: config.labels, from_ms, until_ms, reason: config.reason })
    }

    /// Whether this silence holds back the alerts of `rule` with `labels`
    /// at event time `at_ms`.
    pub fn covers(&self, rule: &Rule, labels: &BTreeMap<String, String>, at_ms: i64) -> bool {
        (self.rule == rule.id || self.rule == rule.key)
            && self.labels.iter().all(|(name, value)| labels.get(name) == Some(value))
            && (self.from_ms..self.until_ms).contains(&at_ms)
    }
}

impl Settings {
    /// Reads the config; each problem is refused at its key (a rule's or a
    /// silence's at its table in the pipeline file).
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        Self::check(sluice_plugin::config::read(json)?)
    }

    fn check(mut config: Config) -> Result<Self, ConfigError> {
        let late_ms = duration_ms(&config.late_allowance).map_err(|e| ConfigError::at("late_allowance", e))?;
        let resolution_ms = duration_ms(&config.resolution).map_err(|e| ConfigError::at("resolution", e))?;
        if resolution_ms < 1000 {
            return Err(ConfigError::at("resolution", format!("{:?} is shorter than one second", config.resolution)));
        }
        if !(0.0001..=0.1).contains(&config.accuracy) {
            return Err(ConfigError::at("accuracy", format!("{} is outside 0.0001..=0.1", config.accuracy)));
        }
        if config.rule.is_empty() {
            return Err("no rules: add at least one [[...config.rule]]".into());
        }
        let defaults = Defaults {
            repeat_ms: config.repeat.as_deref().map(duration_ms).transpose().map_err(|e| ConfigError::at("repeat", e))?,
            hold_ms: steps("for", config.hold.as_deref(), resolution_ms, 0).map_err(|e| ConfigError::at("for", e))?,
            keep_firing_ms: steps("keep_firing_for", config.keep_firing_for.as_deref(), resolution_ms, 0).map_err(|e| ConfigError::at("keep_firing_for", e))?,
        };
        let mut rules: Vec<Rule> = Vec::with_capacity(config.rule.len());
        for (n, raw) in std::mem::take(&mut config.rule).into_iter().enumerate() {
            let name = rule_key(&raw.id, raw.check.as_deref());
            let at = format!("rule[{n}]");
            let rule =
                check_rule(raw, name.clone(), &config, resolution_ms, &defaults).map_err(|e| ConfigError::new(format!("rule `{name}`: {e}")).within(&at))?;
            if rules.iter().any(|r| r.key == rule.key) {
                return Err(ConfigError::at(&at, format!("rule `{name}` is declared twice (give each rule of one id its own `check`)")));
            }
            rules.push(rule);
        }
        let heartbeat = match config.heartbeat.take() {
            None => None,
            Some(text) => {
                let ms = duration_ms(&text).map_err(|e| ConfigError::at("heartbeat", e))?;
                if ms < 1000 {
                    return Err(ConfigError::at("heartbeat", format!("{text:?} is shorter than one second")));
                }
                if rules.iter().any(|rule| rule.id == HEARTBEAT) {
                    return Err(format!("a rule is called `{HEARTBEAT}`: its alerts would share the heartbeat's subject; rename it").into());
                }
                Some(Heartbeat { every_ms: ms, every: text })
            }
        };
        let silences = std::mem::take(&mut config.silence).into_iter().enumerate();
        let silences = silences
            .map(|(n, silence)| Silence::check(silence, &rules).map_err(|e| ConfigError::new(e).within(&format!("silence[{n}]"))))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            subject_prefix: config.subject_prefix,
            stage: config.stage,
            late_ms,
            resolution_ms,
            time_field: config.time_field,
            event_field: config.event_field,
            max_groups: config.max_groups,
            accuracy: config.accuracy,
            rules,
            silences,
            heartbeat,
        })
    }

    /// The silence that holds back the alerts of `rule` with `labels` at
    /// event time `at_ms`, if one does.
    pub fn silence(&self, rule: &Rule, labels: &BTreeMap<String, String>, at_ms: i64) -> Option<&Silence> {
        self.silences.iter().find(|silence| silence.covers(rule, labels, at_ms))
    }

    pub fn longest_window_ms(&self) -> i64 {
        self.rules.iter().map(|r| r.window_ms).max().unwrap_or(0)
    }
}

/// The last part of the heartbeat's subject.
pub const HEARTBEAT: &str = "heartbeat";

/// `id`, or `id/check` for one of several rules sharing an id.
fn rule_key(id: &str, check: Option<&str>) -> String {
    match check {
        Some(check) => format!("{id}/{check}"),
        None => id.to_string(),
    }
}

/// What the top of the config sets for every rule that does not set its own.
struct Defaults {
    repeat_ms: Option<i64>,
    hold_ms: i64,
    keep_firing_ms: i64,
}

/// A damping duration (`for`, `keep_firing_for`) in milliseconds: a whole
/// number of resolution steps, since conditions are decided once a step.
fn steps(name: &str, text: Option<&str>, resolution_ms: i64, default_ms: i64) -> Result<i64, String> {
    let Some(text) = text else { return Ok(default_ms) };
    let ms = duration_ms(text).map_err(|e| format!("{name}: {e}"))?;
    if ms % resolution_ms != 0 {
        return Err(format!("{name} = {text:?} must be a whole number of resolution steps ({} ms)", resolution_ms));
    }
    Ok(ms)
}

fn check_rule(raw: RuleConfig, key: String, config: &Config, resolution_ms: i64, defaults: &Defaults) -> Result<Rule, String> {
    if raw.id.is_empty() || !raw.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("id {:?} must be letters, digits, `_` or `-` (it ends the alert's subject)", raw.id));
    }
    let window_ms = duration_ms(&raw.window).map_err(|e| format!("window: {e}"))?;
    if window_ms < resolution_ms || window_ms % resolution_ms != 0 {
        return Err(format!("window {:?} must be a whole number of resolution steps ({})", raw.window, config.resolution));
    }
    if raw.samples.is_empty() {
        return Err("`samples` names no event".into());
    }
    let measure = match (raw.quantile, raw.mean, raw.share, raw.count) {
        (Some(q), None, None, None) => {
            if !(0.0..=1.0).contains(&q.q) {
                return Err(format!("quantile q = {} is outside 0..=1", q.q));
            }
            Measure::Quantile { field: q.field, q: q.q }
        }
        (None, Some(field), None, None) => Measure::Mean { field },
        (None, None, Some(share), None) => {
            if share.event.is_none() && share.filter.is_empty() {
                return Err("`share` needs an `event` or a `where`".into());
            }
            Measure::Share { event: share.event, filter: share.filter }
        }
        (None, None, None, Some(true)) => {
            if raw.group_by.is_some() {
                return Err("a `count` is watched for the whole rule: it cannot have a `group_by` (a group that stops sending is forgotten)".into());
            }
            Measure::Count
        }
        (None, None, None, Some(false)) => return Err("`count = false` measures nothing: leave it out, or give another measure".into()),
        _ => return Err("give exactly one of `quantile`, `mean`, `share` or `count`".into()),
    };
    let pick = |threshold: Threshold| -> Result<f64, String> {
        match threshold {
            Threshold::Value(value) => Ok(value),
            Threshold::ByStage(by_stage) => {
                let stage = config.stage.as_deref().ok_or("the threshold is given per stage; set `stage` in the config")?;
                by_stage.get(stage).copied().ok_or_else(|| format!("no threshold for stage {stage:?} (it has {:?})", by_stage.keys().collect::<Vec<_>>()))
            }
        }
    };
    let condition = match (raw.above, raw.below) {
        (Some(above), None) => Condition::Above(pick(above)?),
        (None, Some(below)) => Condition::Below(pick(below)?),
        _ => return Err("give exactly one of `above` or `below`".into()),
    };
    let repeat_ms = match raw.repeat.as_deref() {
        Some(text) => Some(duration_ms(text).map_err(|e| format!("repeat: {e}"))?),
        None => defaults.repeat_ms,
    };
    if let Some(runbook) = &raw.runbook
        && (!(runbook.starts_with("https://") || runbook.starts_with("http://")) || runbook.contains(char::is_whitespace))
    {
        return Err(format!("runbook {runbook:?} is not an http(s) URL"));
    }
    let hold_ms = steps("for", raw.hold.as_deref(), resolution_ms, defaults.hold_ms)?;
    let keep_firing_ms = steps("keep_firing_for", raw.keep_firing_for.as_deref(), resolution_ms, defaults.keep_firing_ms)?;
    Ok(Rule {
        key,
        id: raw.id,
        check: raw.check,
        owner: raw.owner,
        severity: raw.severity,
        window_text: raw.window,
        window_ms,
        // A count is its own sample count: a minimum would hide absence.
        min_samples: if measure == Measure::Count { 0 } else { raw.min_samples.unwrap_or(config.min_samples).max(1) },
        repeat_ms: repeat_ms.filter(|ms| *ms > 0),
        hold_ms,
        keep_firing_ms,
        group_by: raw.group_by,
        samples: raw.samples,
        filter: raw.filter,
        measure,
        condition,
        description: raw.description,
        runbook: raw.runbook,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings, or the refusal as the host's log writes it.
    fn parse(json: &str) -> Result<Settings, String> {
        Settings::parse(json).map_err(|e| e.to_string())
    }

    fn settings(rule: &str) -> Result<Settings, String> {
        parse(&format!(r#"{{ "stage": "beta", "rule": [{rule}] }}"#))
    }

    #[test]
    fn thresholds_per_stage_follow_the_stage() {
        let rule = r#"{ "id": "p95", "owner": "eng", "severity": "page", "window": "15m", "samples": ["scene_generated"],
                       "quantile": { "field": "latency_ms", "q": 0.95 }, "above": { "beta": 110000, "launch": 90000 } }"#;
        let settings = settings(rule).unwrap();
        assert_eq!(settings.rules[0].condition, Condition::Above(110_000.0));
        let launch = parse(&format!(r#"{{ "stage": "launch", "rule": [{rule}] }}"#)).unwrap();
        assert_eq!(launch.rules[0].condition, Condition::Above(90_000.0));
        let error = parse(&format!(r#"{{ "stage": "ga", "rule": [{rule}] }}"#)).unwrap_err();
        assert!(error.contains("rule `p95`") && error.contains("no threshold for stage \"ga\""), "{error}");
    }

    #[test]
    fn broken_rules_are_named_with_what_is_wrong() {
        let base = r#""id": "r", "owner": "o", "severity": "s", "samples": ["e"]"#;
        let cases = [
            (format!(r#"{{ {base}, "window": "15m", "mean": "x" }}"#), "exactly one of `above` or `below`"),
            (format!(r#"{{ {base}, "window": "15m", "below": 1 }}"#), "exactly one of `quantile`, `mean`, `share` or `count`"),
            (format!(r#"{{ {base}, "window": "15m", "count": true, "below": 1, "group_by": "experiment_assignments" }}"#), "cannot have a `group_by`"),
            (format!(r#"{{ {base}, "window": "15m", "count": false, "below": 1 }}"#), "`count = false` measures nothing"),
            (format!(r#"{{ {base}, "window": "90s", "mean": "x", "below": 1 }}"#), "whole number of resolution steps"),
            (format!(r#"{{ {base}, "window": "15m", "share": {{}}, "below": 1 }}"#), "needs an `event` or a `where`"),
            (format!(r#"{{ {base}, "window": "15m", "quantile": {{ "field": "x", "q": 95 }}, "above": 1 }}"#), "outside 0..=1"),
            (format!(r#"{{ {base}, "window": "15m", "mean": "x", "below": 1, "for": "90s" }}"#), "for = \"90s\" must be a whole number"),
            (format!(r#"{{ {base}, "window": "15m", "mean": "x", "below": 1, "keep_firing_for": "soon" }}"#), "keep_firing_for: \"soon\" is not a duration"),
            (format!(r#"{{ {base}, "window": "15m", "mean": "x", "below": 1, "runbook": "wiki/p95" }}"#), "runbook \"wiki/p95\" is not an http(s) URL"),
        ];
        for (rule, expected) in cases {
            let error = settings(&rule).unwrap_err();
            assert!(error.contains("rule `r`") && error.contains(expected), "{rule}: {error}");
        }
        let twice = format!(r#"{{ {base}, "window": "15m", "mean": "x", "below": 1 }}, {{ {base}, "window": "15m", "mean": "x", "below": 1 }}"#);
        assert!(settings(&twice).unwrap_err().contains("declared twice"));
        assert!(parse(r#"{ "rule": [] }"#).unwrap_err().contains("no rules"));
        assert!(parse(r#"{ "rules": [] }"#).unwrap_err().contains("unknown field `rules`"));
        let beat = |every: &str, id: &str| {
            parse(&format!(
                r#"{{ "heartbeat": "{every}", "rule": [{{ "id": "{id}", "owner": "o", "severity": "s", "samples": ["e"], "window": "1m", "mean": "x", "below": 1 }}] }}"#
            ))
        };
        assert_eq!(beat("1m", "r").unwrap().heartbeat, Some(Heartbeat { every_ms: 60_000, every: "1m".to_string() }));
        assert!(beat("500ms", "r").unwrap_err().contains("`heartbeat`: \"500ms\" is shorter than one second"));
        assert!(beat("1m", "heartbeat").unwrap_err().contains("a rule is called `heartbeat`"));
    }

    #[test]
    fn broken_silences_are_refused_with_what_is_wrong() {
        let rule = r#"{ "id": "r", "check": "c", "owner": "o", "severity": "s", "samples": ["e"], "window": "15m", "mean": "x", "below": 1 }"#;
        let with = |silence: &str| parse(&format!(r#"{{ "rule": [{rule}], "silence": [{silence}] }}"#));
        assert!(with(r#"{ "rule": "r", "until": "2026-11-24T06:00:00Z", "reason": "x" }"#).is_ok(), "a rule's id");
        assert!(with(r#"{ "rule": "r/c", "until": "2026-11-24T06:00:00Z", "reason": "x" }"#).is_ok(), "a rule's id/check");
        let cases = [
            (r#"{ "rule": "q", "until": "2026-11-24T06:00:00Z", "reason": "x" }"#, "silence of `q`: no rule has that id (the rules are [\"r/c\"])"),
            (
                r#"{ "rule": "r", "from": "2026-11-24T07:00:00Z", "until": "2026-11-24T06:00:00Z", "reason": "x" }"#,
                "silence of `r`: `until` must come after `from`",
            ),
            (r#"{ "rule": "r", "until": "2026-11-24T06:00:00Z", "reason": " " }"#, "silence of `r`: give a `reason`"),
            (r#"{ "rule": "r", "until": "tomorrow", "reason": "x" }"#, "silence of `r`: until: "),
            (r#"{ "rule": "r", "reason": "x" }"#, "missing field `until`"),
        ];
        for (silence, expected) in cases {
            let error = with(silence).unwrap_err();
            assert!(error.contains(expected), "{silence}: {error}");
        }
    }

    #[test]
    fn a_silence_covers_its_rule_and_labels_from_from_until_until() {
        let rule = r#"{ "id": "guardrail", "check": "p95", "owner": "o", "severity": "s", "samples": ["e"], "window": "15m",
                        "group_by": "experiment_assignments", "quantile": { "field": "x", "q": 0.95 }, "above": 1 }"#;
        let silence =
            r#"{ "rule": "guardrail", "labels": { "variant": "B" }, "from": "2026-11-24T06:00:00Z", "until": "2026-11-24T07:00:00Z", "reason": "withdrawn" }"#;
        let settings = parse(&format!(r#"{{ "rule": [{rule}], "silence": [{silence}] }}"#)).unwrap();
        let rule = &settings.rules[0];
        let at = |text: &str| time::parse_rfc3339(text).unwrap();
        let variant = |v: &str| BTreeMap::from([("experiment".to_string(), "pricing".to_string()), ("variant".to_string(), v.to_string())]);
        assert!(settings.silence(rule, &variant("B"), at("2026-11-24T06:00:00Z")).is_some());
        assert!(settings.silence(rule, &variant("B"), at("2026-11-24T06:59:59Z")).is_some());
        assert!(settings.silence(rule, &variant("B"), at("2026-11-24T07:00:00Z")).is_none(), "until is when it ends");
        assert!(settings.silence(rule, &variant("B"), at("2026-11-24T05:59:59Z")).is_none());
        assert!(settings.silence(rule, &variant("A"), at("2026-11-24T06:30:00Z")).is_none(), "another variant");
    }
}
