//! The stage's `config` table: the rollups, the activation shares, and what
//! every rollup shares (windows, late allowance, cohorts, caps).
//!
//! ```toml
//! [pipeline.stage.config]
//! subject_prefix = "storyforge.aggregates"  # rollups go to <prefix>.<name>.<minute|hour|day>
//! windows = ["1m", "1h", "1d"]              # each rollup once per window of each length
//! late_allowance = "1m"                     # as the alerts: how late an event may still count
//! cohorts = ["goal", "experiment_assignments"]  # every rollup also cut by these
//! max_groups = 500                          # groups per rollup and window; later ones count as (other)
//!
//! [[pipeline.stage.config.rollup]]
//! name = "generation_latency"
//! events = ["scene_generated"]
//! by = ["model_vendor", "provider_route", "safety_mode"]
//! value = "latency_ms"                      # count, sum, min, max, mean of it
//! quantiles = [0.5, 0.95, 0.99]             # and these, within `accuracy`
//!
//! [[pipeline.stage.config.rollup]]
//! name = "export_success"
//! events = ["export_succeeded", "export_failed"]
//! share = { event = "export_succeeded" }    # hits and their share of the count
//!
//! [[pipeline.stage.config.rollup]]
//! name = "scenes_per_project"
//! events = ["scene_locked"]
//! distinct = "project_id"                   # distinct projects, and events per project
//!
//! [pipeline.stage.config.activation]
//! signed_up = "user_signed_up"
//! by = ["source", "goal"]
//! windows = ["1h", "1d"]
//! milestones = [{ name = "first_locked_scene_within_24h", event = "scene_locked", within = "24h" }]
//! ```
//!
//! A rollup counts the events named in `events` (narrowed by `where`), per
//! group of the values of its `by` fields. A field an event lacks groups as
//! `(absent)`. `cohorts` cut every rollup again: each group once more per
//! value of a cohort field (`goal = creator`), and, for a field holding an
//! object (`experiment_assignments`), per entry (`experiment`, `variant`).
//! A cohort field an event lacks is read from its user's sign-up: the
//! activation keeps each user's cohort values until `remember_for` (30 days)
//! has passed since their last event, for at most `max_remembered` users.
//!
//! The activation shares follow each user from their sign-up event: a
//! milestone is reached when the user's first `event` of it comes within
//! `within` of the sign-up. Users are counted by the window they signed up
//! in, and each milestone's share is published once every user of that
//! window is decided: `within` (plus the late allowance) after its end.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_plugin::ConfigError;
use sluice_plugin::time::duration_ms;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
    #[serde(default = "default_windows")]
    pub windows: Vec<String>,
    #[serde(default = "default_late")]
    pub late_allowance: String,
    #[serde(default)]
    pub cohorts: Vec<String>,
    #[serde(default = "default_max_groups")]
    pub max_groups: usize,
    /// Relative accuracy of quantiles.
    #[serde(default = "default_accuracy")]
    pub accuracy: f64,
    #[serde(default = "default_time_field")]
    pub time_field: String,
    #[serde(default = "default_event_field")]
    pub event_field: String,
    #[serde(default = "default_user_field")]
    pub user_field: String,
    #[serde(default)]
    pub rollup: Vec<RollupConfig>,
    pub activation: Option<ActivationConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupConfig {
    pub name: String,
    pub events: Vec<String>,
    #[serde(rename = "where", default)]
    pub filter: Map<String, Value>,
    #[serde(default)]
    pub by: Vec<String>,
    pub value: Option<String>,
    #[serde(default)]
    pub quantiles: Vec<f64>,
    pub share: Option<ShareConfig>,
    /// Count the distinct values of this field too (and the events per value).
    pub distinct: Option<String>,
    /// Some of the stage's window lengths only (default: all).
    pub windows: Option<Vec<String>>,
    /// Leave the pipeline's cohorts out of this rollup.
    #[serde(default = "yes")]
    pub cohorts: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareConfig {
    pub event: Option<String>,
    #[serde(rename = "where", default)]
    pub filter: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationConfig {
    #[serde(default = "default_signed_up")]
    pub signed_up: String,
    #[serde(default)]
    pub by: Vec<String>,
    #[serde(default = "default_activation_windows")]
    pub windows: Vec<String>,
    pub milestones: Vec<MilestoneConfig>,
    /// Most users followed at once; sign-ups past it are counted as
    /// `untracked`, never silently.
    #[serde(default = "default_max_users")]
    pub max_users: usize,
    /// How long a user's cohort values (their sign-up's `goal`, …) are kept
    /// for their later events after their last event.
    #[serde(default = "default_remember_for")]
    pub remember_for: String,
    /// Most users whose cohort values are kept; sign-ups past it are
    /// counted as `unremembered_users`.
    #[serde(default = "default_max_remembered")]
    pub max_remembered: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilestoneConfig {
    pub name: String,
    pub event: String,
    pub within: String,
}

fn default_prefix() -> String {
    "aggregates".into()
}
fn default_windows() -> Vec<String> {
    vec!["1m".into(), "1h".into(), "1d".into()]
}
fn default_activation_windows() -> Vec<String> {
    vec!["1d".into()]
}
fn default_late() -> String {
    "5m".into()
}
fn default_max_groups() -> usize {
    500
}
fn default_accuracy() -> f64 {
    0.01
}
fn default_time_field() -> String {
    "server_ts".into()
}
fn default_event_field() -> String {
    "event".into()
}
fn default_user_field() -> String {
    "user_id".into()
}
fn default_signed_up() -> String {
    "user_signed_up".into()
}
fn default_max_users() -> usize {
    2_000_000
}
fn default_remember_for() -> String {
    "30d".into()
}
fn default_max_remembered() -> usize {
    2_000_000
}
fn yes() -> bool {
    true
}

/// A window length, with the word its subjects and bodies use.
#[derive(Debug, Clone, PartialEq)]
pub struct Width {
    pub ms: i64,
    /// `minute`, `hour`, `day`, or the length as written (`5m`).
    pub name: String,
}

impl Width {
    fn parse(text: &str) -> Result<Self, String> {
        let ms = duration_ms(text)?;
        if ms < 1000 || ms % 1000 != 0 {
            return Err(format!("window {text:?} must be whole seconds, at least one"));
        }
        if 86_400_000 % ms != 0 && ms % 86_400_000 != 0 {
            // Windows that divide a day start at midnight UTC every day.
            return Err(format!("window {text:?} must divide a day or be whole days, so that windows start at midnight UTC"));
        }
        let name = match ms {
            60_000 => "minute".to_string(),
            3_600_000 => "hour".to_string(),
            86_400_000 => "day".to_string(),
            _ => text.to_string(),
        };
        Ok(Self { ms, name })
    }
}

/// What a rollup measures beyond its count.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub event: Option<String>,
    pub filter: Map<String, Value>,
}

/// A checked rollup.
#[derive(Debug, Clone)]
pub struct Rollup {
    pub name: String,
    pub events: Vec<String>,
    pub filter: Map<String, Value>,
    pub by: Vec<String>,
    pub value: Option<String>,
    pub quantiles: Vec<f64>,
    pub share: Option<Share>,
    pub distinct: Option<String>,
    /// The window lengths it is published for, in ms.
    pub widths: Vec<i64>,
    pub cohorts: bool,
}

#[derive(Debug, Clone)]
pub struct Milestone {
    pub name: String,
    pub event: String,
    pub within_ms: i64,
    /// As the file gave it, for the share to repeat.
    pub within: String,
}

#[derive(Debug, Clone)]
pub struct Activation {
    pub signed_up: String,
    pub by: Vec<String>,
    pub widths: Vec<Width>,
    pub milestones: Vec<Milestone>,
    pub max_users: usize,
    pub remember_ms: i64,
    pub max_remembered: usize,
}

impl Activation {
    /// How long a user is followed after signing up.
    pub fn longest_ms(&self) -> i64 {
        self.milestones.iter().map(|m| m.within_ms).max().unwrap_or(0)
    }
}

/// The whole checked configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub subject_prefix: String,
    pub widths: Vec<Width>,
    pub late_ms: i64,
    pub cohorts: Vec<String>,
    pub max_groups: usize,
    pub accuracy: f64,
    pub time_field: String,
    pub event_field: String,
    pub user_field: String,
    pub rollups: Vec<Rollup>,
    pub activation: Option<Activation>,
}

/// A name that ends a subject: letters, digits, `_` and `-`.
fn subject_token(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("{what} {name:?} must be letters, digits, `_` or `-` (it is part of a subject)"));
    }
    Ok(())
}

fn widths(texts: &[String]) -> Result<Vec<Width>, String> {
    if texts.is_empty() {
        return Err("no windows: give at least one length, such as \"1m\"".into());
    }
    let mut widths: Vec<Width> = texts.iter().map(|text| Width::parse(text)).collect::<Result<_, _>>()?;
    widths.sort_by_key(|width| width.ms);
    if widths.windows(2).any(|pair| pair[0].ms == pair[1].ms) {
        return Err(format!("{texts:?} gives one length twice"));
    }
    Ok(widths)
}

impl Settings {
    /// Reads the config; each problem is refused at its key.
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        Self::check(sluice_plugin::config::read(json)?)
    }

    fn check(config: Config) -> Result<Self, ConfigError> {
        let late_ms = duration_ms(&config.late_allowance).map_err(|e| ConfigError::at("late_allowance", e))?;
        let widths = widths(&config.windows).map_err(|e| ConfigError::at("windows", e))?;
        if !(0.0001..=0.1).contains(&config.accuracy) {
            return Err(ConfigError::at("accuracy", format!("{} is outside 0.0001..=0.1", config.accuracy)));
        }
        if config.max_groups == 0 {
            return Err(ConfigError::at("max_groups", "0 would count every event as (other)"));
        }
        subject_token("subject_prefix", &config.subject_prefix.replace('.', "_")).map_err(|e| ConfigError::at("subject_prefix", e))?;
        if config.rollup.is_empty() && config.activation.is_none() {
            return Err("nothing to aggregate: add a [[...config.rollup]] or an [...config.activation]".into());
        }
        let mut names = HashSet::new();
        let mut rollups = Vec::with_capacity(config.rollup.len());
        for (n, raw) in config.rollup.into_iter().enumerate() {
            let name = raw.name.clone();
            let rollup = check_rollup(raw, &widths).map_err(|e| ConfigError::new(format!("rollup `{name}`: {e}")).within(&format!("rollup[{n}]")))?;
            if !names.insert(rollup.name.clone()) {
                return Err(ConfigError::at(&format!("rollup[{n}].name"), format!("rollup `{name}` is declared twice")));
            }
            rollups.push(rollup);
        }
        let activation = match config.activation {
            None => None,
            Some(raw) => {
                let activation = check_activation(raw).map_err(|e| e.within("activation"))?;
                for (n, milestone) in activation.milestones.iter().enumerate() {
                    if !names.insert(milestone.name.clone()) {
                        return Err(ConfigError::at(&format!("activation.milestones[{n}].name"), format!("`{}` is also a rollup's name", milestone.name)));
                    }
                }
                Some(activation)
            }
        };
        Ok(Self {
            subject_prefix: config.subject_prefix,
            widths,
            late_ms,
            cohorts: config.cohorts,
            max_groups: config.max_groups,
            accuracy: config.accuracy,
            time_field: config.time_field,
            event_field: config.event_field,
            user_field: config.user_field,
            rollups,
            activation,
        })
    }
}

fn check_rollup(raw: RollupConfig, all: &[Width]) -> Result<Rollup, String> {
    subject_token("name", &raw.name)?;
    let widths = match &raw.windows {
        None => all.iter().map(|w| w.ms).collect(),
        Some(texts) => {
            let mine = widths(texts)?;
            if let Some(other) = mine.iter().find(|w| !all.contains(w)) {
                return Err(format!("window {:?} is not one of the stage's `windows`", other.name));
            }
            mine.iter().map(|w| w.ms).collect()
        }
    };
    if raw.events.is_empty() {
        return Err("`events` names no event".into());
    }
    if !raw.quantiles.is_empty() && raw.value.is_none() {
        return Err("`quantiles` needs a `value` to take them of".into());
    }
    if let Some(q) = raw.quantiles.iter().find(|q| !(0.0..=1.0).contains(*q)) {
        return Err(format!("quantile {q} is outside 0..=1"));
    }
    if let Some(share) = &raw.share
        && share.event.is_none()
        && share.filter.is_empty()
    {
        return Err("`share` needs an `event` or a `where`".into());
    }
    Ok(Rollup {
        name: raw.name,
        events: raw.events,
        filter: raw.filter,
        by: raw.by,
        value: raw.value,
        quantiles: raw.quantiles,
        share: raw.share.map(|share| Share { event: share.event, filter: share.filter }),
        distinct: raw.distinct,
        widths,
        cohorts: raw.cohorts,
    })
}

fn check_activation(raw: ActivationConfig) -> Result<Activation, ConfigError> {
    let widths = widths(&raw.windows).map_err(|e| ConfigError::at("windows", e))?;
    if raw.milestones.is_empty() {
        return Err(ConfigError::at("milestones", "no milestones: give at least one { name, event, within }"));
    }
    if raw.max_users == 0 {
        return Err(ConfigError::at("max_users", "0 would follow no user"));
    }
    let milestones = raw
        .milestones
        .into_iter()
        .enumerate()
        .map(|(n, m)| {
            let at = format!("milestones[{n}]");
            subject_token("name", &m.name).map_err(|e| ConfigError::at(&format!("{at}.name"), e))?;
            let within_ms = duration_ms(&m.within).map_err(|e| ConfigError::at(&format!("{at}.within"), e))?;
            if within_ms <= 0 {
                return Err(ConfigError::at(&format!("{at}.within"), "must be longer than nothing"));
            }
            Ok(Milestone { name: m.name, event: m.event, within_ms, within: m.within })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    // The reached milestones of a user are bits of one byte.
    if milestones.len() > 8 {
        return Err(ConfigError::at("milestones", format!("{} milestones: at most 8", milestones.len())));
    }
    let remember_ms = duration_ms(&raw.remember_for).map_err(|e| ConfigError::at("remember_for", e))?;
    if remember_ms < 0 {
        return Err(ConfigError::at("remember_for", "must not be negative"));
    }
    Ok(Activation { signed_up: raw.signed_up, by: raw.by, widths, milestones, max_users: raw.max_users, remember_ms, max_remembered: raw.max_remembered })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings, String> {
        Settings::parse(json).map_err(|e| e.to_string())
    }

    #[test]
    fn windows_are_sorted_and_named() {
        let settings = parse(r#"{ "windows": ["1d", "1m", "1h", "5m"], "rollup": [{ "name": "a", "events": ["x"] }] }"#).unwrap();
        let names: Vec<&str> = settings.widths.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["minute", "5m", "hour", "day"]);
    }

    #[test]
    fn wrong_configs_are_refused_at_their_key() {
        let refused = |json: &str, wanted: &str| {
            let error = parse(json).expect_err(json);
            assert!(error.contains(wanted), "{json}: {error}");
        };
        refused(r#"{ "rollup": [{ "name": "a", "events": ["x"] }], "windows": ["7m"] }"#, "divide a day");
        refused(r#"{ "rollup": [{ "name": "a", "events": ["x"] }], "windows": ["1m", "60s"] }"#, "one length twice");
        refused(r#"{ "rollup": [{ "name": "a b", "events": ["x"] }] }"#, "part of a subject");
        refused(r#"{ "rollup": [{ "name": "a", "events": [] }] }"#, "names no event");
        refused(r#"{ "rollup": [{ "name": "a", "events": ["x"], "quantiles": [0.5] }] }"#, "needs a `value`");
        refused(r#"{ "rollup": [{ "name": "a", "events": ["x"], "value": "v", "quantiles": [1.5] }] }"#, "outside 0..=1");
        refused(r#"{ "rollup": [{ "name": "a", "events": ["x"] }, { "name": "a", "events": ["y"] }] }"#, "declared twice");
        refused(r#"{ "rollup": [{ "name": "a", "events": ["x"], "sahre": {} }] }"#, "unknown field `sahre`");
        refused(r#"{ }"#, "nothing to aggregate");
        refused(r#"{ "windows": ["1m", "1h"], "rollup": [{ "name": "a", "events": ["x"], "windows": ["1d"] }] }"#, "not one of the stage's");
        refused(r#"{ "activation": { "milestones": [] } }"#, "no milestones");
        refused(r#"{ "activation": { "milestones": [{ "name": "m", "event": "e", "within": "a day" }] } }"#, "not a duration");
        let remembering =
            |value: &str| format!(r#"{{ "activation": {{ "milestones": [{{ "name": "m", "event": "e", "within": "1d" }}], "remember_for": {value} }} }}"#);
        refused(&remembering(r#""a month""#), "remember_for");
        refused(&remembering("30"), "remember_for");
        assert_eq!(parse(&remembering(r#""90d""#)).unwrap().activation.unwrap().remember_ms, 90 * 86_400_000);
        refused(
            r#"{ "rollup": [{ "name": "m", "events": ["x"] }], "activation": { "milestones": [{ "name": "m", "event": "e", "within": "1d" }] } }"#,
            "also a rollup",
        );
    }
}
