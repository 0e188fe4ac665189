//! The message formats, as plain Rust.
//!
//! ```toml
//! [[pipeline.stage]]
//! name = "notify"
//! plugin = "notify"
//! env = ["PAGERDUTY_ROUTING_KEY"]            # pagerduty only
//! config = { format = "pagerduty", source = "storyforge", only = ["page", "incident"] }
//! ```
//!
//! - `slack`: `{"text": ...}` for an incoming webhook: the state, the alert's
//!   key, owner and severity, its summary and description, and a link to its
//!   runbook when it has one.
//! - `pagerduty`: an Events API v2 event: `trigger` for `firing`, `resolve`
//!   for `resolved`, `dedup_key` the alert's key (so the resolve closes the
//!   incident the trigger opened), `payload.severity` mapped from the
//!   alert's severity (`severity = { page = "critical", ... }`; by default
//!   page → critical, incident → error, anything else → warning), the whole
//!   alert in `custom_details`, its runbook in `links`. The routing key is read from the variable
//!   `routing_key_env` names (default `PAGERDUTY_ROUTING_KEY`), granted to
//!   the stage with `env`.
//!
//! - `heartbeat`: the `alert` stage's heartbeats as they are, for a dead
//!   man's switch (a service that pages when the pings stop); alerts are
//!   dropped. The other formats drop heartbeats.
//!
//! `only` keeps the alerts of the severities it lists and drops the others
//! (so pages go to the pager and the rest to chat). A body that is not an
//! alert is rejected with the property it lacks.
//!
//! An alert the `alert` stage marked `silenced` (it fired under one of its
//! silences, or ends an incident that did) is dropped, with the silence's
//! reason: the alerts stream keeps it for the record.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_plugin::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    format: String,
    #[serde(default)]
    only: Option<Vec<String>>,
    #[serde(default = "default_source")]
    source: String,
    #[serde(default = "default_routing_key_env")]
    routing_key_env: String,
    #[serde(default)]
    severity: BTreeMap<String, String>,
}

fn default_source() -> String {
    "sluice".into()
}
fn default_routing_key_env() -> String {
    "PAGERDUTY_ROUTING_KEY".into()
}

/// The severities PagerDuty's Events API v2 takes.
const PAGERDUTY_SEVERITIES: [&str; 4] = ["critical", "error", "warning", "info"];

#[derive(Debug)]
enum Format {
    /// Heartbeats, as they are.
    Heartbeat,
    /// Alerts, shaped for one tool.
    Alerts(Tool),
}

#[derive(Debug)]
enum Tool {
    Slack,
    PagerDuty { routing_key: String, source: String, severity: BTreeMap<String, String> },
}

#[derive(Debug)]
pub struct Notifier {
    format: Format,
    only: Option<Vec<String>>,
}

/// What to do with one alert.
#[derive(Debug, PartialEq)]
pub enum Message {
    /// The body to send.
    Send(Vec<u8>),
    /// Not for this destination (`only`), with the reason.
    Skip(String),
    /// Not an alert: the property at fault and what is wrong.
    Invalid { property: String, message: String },
}

impl Notifier {
    /// Reads the stage config; `env` looks up a granted variable.
    pub fn new(config: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let config: Config = sluice_plugin::config::read(config)?;
        let format = match config.format.as_str() {
            "slack" => Format::Alerts(Tool::Slack),
            "heartbeat" => Format::Heartbeat,
            "pagerduty" => {
                let name = &config.routing_key_env;
                let routing_key = env(name).filter(|key| !key.trim().is_empty()).ok_or_else(|| {
                    let message = format!("the PagerDuty routing key is read from {name}, which is not set (grant it to the stage with env = [\"{name}\"])");
                    ConfigError::at("routing_key_env", message)
                })?;
                let mut severity: BTreeMap<String, String> =
                    [("page", "critical"), ("incident", "error")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                for (ours, theirs) in config.severity {
                    if !PAGERDUTY_SEVERITIES.contains(&theirs.as_str()) {
                        return Err(ConfigError::at(&format!("severity.{ours}"), format!("{theirs:?}: PagerDuty takes one of {PAGERDUTY_SEVERITIES:?}")));
                    }
                    severity.insert(ours, theirs);
                }
                Format::Alerts(Tool::PagerDuty { routing_key, source: config.source, severity })
            }
            other => return Err(ConfigError::at("format", format!("{other:?} is not one of \"slack\", \"pagerduty\", \"heartbeat\""))),
        };
        Ok(Self { format, only: config.only })
    }

    /// The message for one alert body.
    pub fn message(&self, body: &[u8]) -> Message {
        let alert = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(alert)) => alert,
            _ => return invalid("", "the body is not a JSON object"),
        };
        let heartbeat = alert.get("heartbeat") == Some(&Value::Bool(true));
        let tool = match (&self.format, heartbeat) {
            (Format::Heartbeat, true) => return Message::Send(body.to_vec()),
            (Format::Heartbeat, false) => return Message::Skip("an alert: this destination takes heartbeats".into()),
            (Format::Alerts(_), true) => return Message::Skip("a heartbeat: it goes to the dead man's switch".into()),
            (Format::Alerts(tool), false) => tool,
        };
        let text = |name: &str| alert.get(name).and_then(Value::as_str);
        let (Some(key), Some(state), Some(severity), Some(summary)) = (text("key"), text("state"), text("severity"), text("summary")) else {
            let missing = ["key", "state", "severity", "summary"].into_iter().find(|name| text(name).is_none()).unwrap_or_default();
            return invalid(missing, "an alert has `key`, `state`, `severity` and `summary` as strings");
        };
        if !matches!(state, "firing" | "resolved") {
            return invalid("state", &format!("{state:?} is neither \"firing\" nor \"resolved\""));
        }
        if let Some(only) = &self.only
            && !only.iter().any(|wanted| wanted == severity)
        {
            return Message::Skip(format!("severity {severity:?} is not one of {only:?}"));
        }
        if alert.get("silenced") == Some(&Value::Bool(true)) {
            let reason = alert.get("silence").and_then(|s| s.get("reason")).and_then(Value::as_str).unwrap_or("it fired under a silence");
            return Message::Skip(format!("silenced: {reason}"));
        }
        let body = match tool {
            Tool::Slack => slack(&alert, key, state, severity, summary),
            Tool::PagerDuty { routing_key, source, severity: map } => {
                let pd_severity = map.get(severity).map_or("warning", String::as_str);
                pagerduty(&alert, routing_key, source, key, state, pd_severity, summary)
            }
        };
        Message::Send(body.to_string().into_bytes())
    }
}

fn invalid(property: &str, message: &str) -> Message {
    Message::Invalid { property: property.to_string(), message: message.to_string() }
}

fn slack(alert: &Map<String, Value>, key: &str, state: &str, severity: &str, summary: &str) -> Value {
    let mark = if state == "firing" { ":rotating_light: FIRING" } else { ":white_check_mark: RESOLVED" };
    let owner = alert.get("owner").and_then(Value::as_str).unwrap_or("?");
    let mut text = format!("{mark} *{key}* ({owner} / {severity})\n{summary}");
    if let Some(description) = alert.get("description").and_then(Value::as_str) {
        text.push_str(&format!("\n_{description}_"));
    }
    if let Some(runbook) = alert.get("runbook").and_then(Value::as_str) {
        text.push_str(&format!("\n<{runbook}|Runbook>"));
    }
    json!({ "text": text })
}

fn pagerduty(alert: &Map<String, Value>, routing_key: &str, source: &str, key: &str, state: &str, severity: &str, summary: &str) -> Value {
    let action = if state == "firing" { "trigger" } else { "resolve" };
    let mut event = json!({ "routing_key": routing_key, "event_action": action, "dedup_key": key });
    if action == "trigger" {
        // PagerDuty cuts a summary at 1024 characters.
        let summary: String = summary.chars().take(1024).collect();
        let mut payload = json!({ "summary": summary, "source": source, "severity": severity, "custom_details": alert });
        for (theirs, ours) in [("timestamp", "changed_at"), ("component", "rule"), ("group", "owner")] {
            if let Some(value) = alert.get(ours).and_then(Value::as_str) {
                payload[theirs] = json!(value);
            }
        }
        event["payload"] = payload;
        if let Some(runbook) = alert.get("runbook").and_then(Value::as_str) {
            event["links"] = json!([{ "href": runbook, "text": "Runbook" }]);
        }
    }
    event
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{Message, Notifier};

    fn alert(state: &str, severity: &str) -> Vec<u8> {
        json!({
            "rule": "generation_p95", "state": state, "key": "generation_p95", "value": 114730.18, "threshold": 110000.0,
            "owner": "eng", "severity": severity, "labels": {}, "changed_at": "2026-11-24T06:10:00.000Z",
            "firing_since": "2026-11-24T06:10:00.000Z", "samples": 20,
            "summary": "generation_p95 firing: p95 of latency_ms = 114730.18 over 20 samples in the last 15m (above 110000)",
            "description": "Generation p95 latency over the last 15 minutes",
            "runbook": "https://runbooks.storyforge.example/generation-p95"
        })
        .to_string()
        .into_bytes()
    }

    fn sent(message: Message) -> Value {
        match message {
            Message::Send(body) => serde_json::from_slice(&body).unwrap(),
            other => panic!("expected a message to send, found {other:?}"),
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn slack_gets_a_text_with_state_key_owner_severity_and_summary() {
        let notifier = Notifier::new(r#"{ "format": "slack" }"#, no_env).unwrap();
        let firing = sent(notifier.message(&alert("firing", "page")));
        let text = firing["text"].as_str().unwrap();
        assert!(text.starts_with(":rotating_light: FIRING *generation_p95* (eng / page)\ngeneration_p95 firing: p95"), "{text}");
        assert!(text.ends_with("_Generation p95 latency over the last 15 minutes_\n<https://runbooks.storyforge.example/generation-p95|Runbook>"), "{text}");
        assert_eq!(firing.as_object().unwrap().len(), 1, "an incoming webhook takes `text`");
        let resolved = sent(notifier.message(&alert("resolved", "page")));
        assert!(resolved["text"].as_str().unwrap().starts_with(":white_check_mark: RESOLVED"));
    }

    #[test]
    fn pagerduty_triggers_and_resolves_one_incident_per_alert_key() {
        let env = |name: &str| (name == "PD_KEY").then(|| "R0UT1NGKEY".to_string());
        let config = r#"{ "format": "pagerduty", "routing_key_env": "PD_KEY", "source": "storyforge", "severity": { "guardrail": "info" } }"#;
        let notifier = Notifier::new(config, env).unwrap();
        let trigger = sent(notifier.message(&alert("firing", "page")));
        assert_eq!(trigger["routing_key"], "R0UT1NGKEY");
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["dedup_key"], "generation_p95");
        assert_eq!(trigger["payload"]["severity"], "critical");
        assert_eq!(trigger["payload"]["source"], "storyforge");
        assert_eq!(trigger["payload"]["timestamp"], "2026-11-24T06:10:00.000Z");
        assert_eq!(trigger["payload"]["component"], "generation_p95");
        assert_eq!(trigger["payload"]["group"], "eng");
        assert_eq!(trigger["payload"]["custom_details"]["value"], 114730.18);
        assert_eq!(trigger["links"], json!([{ "href": "https://runbooks.storyforge.example/generation-p95", "text": "Runbook" }]));
        let resolve = sent(notifier.message(&alert("resolved", "page")));
        assert_eq!(resolve, json!({ "routing_key": "R0UT1NGKEY", "event_action": "resolve", "dedup_key": "generation_p95" }));
        assert_eq!(sent(notifier.message(&alert("firing", "incident")))["payload"]["severity"], "error");
        assert_eq!(sent(notifier.message(&alert("firing", "guardrail")))["payload"]["severity"], "info");
        assert_eq!(sent(notifier.message(&alert("firing", "investigate")))["payload"]["severity"], "warning");
    }

    #[test]
    fn only_keeps_the_listed_severities() {
        let notifier = Notifier::new(r#"{ "format": "slack", "only": ["page", "incident"] }"#, no_env).unwrap();
        assert!(matches!(notifier.message(&alert("firing", "page")), Message::Send(_)));
        assert_eq!(notifier.message(&alert("firing", "flag")), Message::Skip("severity \"flag\" is not one of [\"page\", \"incident\"]".into()));
    }

    /// `alert(state, "page")` with these fields changed.
    fn alert_with(state: &str, fields: Value) -> Vec<u8> {
        let mut alert: Value = serde_json::from_slice(&alert(state, "page")).unwrap();
        alert.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        serde_json::to_vec(&alert).unwrap()
    }

    #[test]
    fn what_the_alert_stage_silenced_stays_off_the_pager() {
        let notifier = Notifier::new(r#"{ "format": "slack" }"#, no_env).unwrap();
        let silence = json!({ "silenced": true, "silence": { "until": "2026-11-24T07:00:00.000Z", "reason": "provider load test, CHG-881" } });
        assert_eq!(notifier.message(&alert_with("firing", silence)), Message::Skip("silenced: provider load test, CHG-881".into()));
        let never_announced = json!({ "silenced": true });
        assert_eq!(notifier.message(&alert_with("resolved", never_announced)), Message::Skip("silenced: it fired under a silence".into()));
        // Announced once the silence is over: sent like any firing.
        assert!(matches!(notifier.message(&alert_with("firing", json!({ "after_silence": true }))), Message::Send(_)));
    }

    #[test]
    fn heartbeats_go_to_the_dead_mans_switch_and_nowhere_else() {
        let beat = br#"{ "heartbeat": true, "at": "2026-11-25T00:01:00.000Z", "every": "1m", "firing": 0, "silenced": 0 }"#;
        let switch = Notifier::new(r#"{ "format": "heartbeat" }"#, no_env).unwrap();
        assert_eq!(switch.message(beat), Message::Send(beat.to_vec()));
        assert_eq!(switch.message(&alert("firing", "page")), Message::Skip("an alert: this destination takes heartbeats".into()));
        let chat = Notifier::new(r#"{ "format": "slack" }"#, no_env).unwrap();
        assert_eq!(chat.message(beat), Message::Skip("a heartbeat: it goes to the dead man's switch".into()));
    }

    #[test]
    fn what_is_not_an_alert_is_named() {
        let notifier = Notifier::new(r#"{ "format": "slack" }"#, no_env).unwrap();
        let Message::Invalid { property, .. } = notifier.message(br#"{ "key": "k", "state": "firing", "severity": "page" }"#) else { panic!() };
        assert_eq!(property, "summary");
        let Message::Invalid { property, message } = notifier.message(br#"{ "key": "k", "state": "pending", "severity": "page", "summary": "s" }"#) else {
            panic!()
        };
        assert_eq!((property.as_str(), message.as_str()), ("state", "\"pending\" is neither \"firing\" nor \"resolved\""));
        assert!(matches!(notifier.message(b"[1]"), Message::Invalid { .. }));
    }

    #[test]
    fn a_broken_config_says_what_is_wrong() {
        let refused = |config: &str, env: &dyn Fn(&str) -> Option<String>| Notifier::new(config, env).map(|_| ()).expect_err("refused").to_string();
        let error = refused(r#"{ "format": "pagerduty" }"#, &no_env);
        assert!(error.starts_with("`routing_key_env`: ") && error.contains("PAGERDUTY_ROUTING_KEY, which is not set"), "{error}");
        let key = |_: &str| Some("k".to_string());
        let error = refused(r#"{ "format": "pagerduty", "severity": { "page": "urgent" } }"#, &key);
        assert!(error.starts_with("`severity.page`: \"urgent\""), "{error}");
        assert!(refused(r#"{ "format": "teams" }"#, &no_env).contains("not one of"));
        assert!(refused(r#"{ "format": "slack", "channel": "alerts" }"#, &no_env).contains("unknown field `channel`"));
    }
}
