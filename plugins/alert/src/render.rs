//! What an alert says: the body published for a firing or resolved alert,
//! with its summary line, and the heartbeat that says the alerting runs.
//! Plain functions of the engine's state, kept apart from the windows and the
//! state machine that decide when to call them.

use serde_json::json;
use sluice_plugin::time;

use crate::config::{HEARTBEAT, Measure, Rule, Settings, Silence};
use crate::engine::{Alert, AlertState, Series};

/// Why an alert is published.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Announcement {
    /// It began to fire.
    Fired,
    /// It is still firing and its `repeat` interval passed.
    Repeat,
    /// It fired under a silence, which is over while it still fires.
    AfterSilence,
    /// It resolved.
    Resolved,
    /// It resolves, having fired under a silence and never been announced.
    SilencedEnd,
}

impl Announcement {
    /// The alert's `state`.
    fn state(self) -> &'static str {
        match self {
            Announcement::Fired | Announcement::Repeat | Announcement::AfterSilence => "firing",
            Announcement::Resolved | Announcement::SilencedEnd => "resolved",
        }
    }
}

/// A window's measure at one boundary.
pub(crate) struct Reading {
    pub(crate) value: Option<f64>,
    pub(crate) samples: u64,
    pub(crate) at_ms: i64,
}

/// The alert a series emits at a reading; `condition_since` is when its
/// condition began to hold (firing) or to fail (resolved), earlier than the
/// change itself by `for` or `keep_firing_for`. `silence` is the silence
/// covering it at the reading, if any.
pub(crate) fn alert(
    settings: &Settings,
    rule: &Rule,
    series: &Series,
    reading: &Reading,
    condition_since: i64,
    announcement: Announcement,
    silence: Option<&Silence>,
) -> Alert {
    let state = announcement.state();
    let Reading { value, samples, at_ms } = *reading;
    let since = match series.alert {
        AlertState::Firing { since_ms, .. } => since_ms,
        AlertState::Ok { .. } => at_ms,
    };
    let value = value.map(|v| (v * 10_000.0).round() / 10_000.0);
    let labels_text: Vec<String> = series.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let key = if labels_text.is_empty() { rule.key.clone() } else { format!("{}{{{}}}", rule.key, labels_text.join(",")) };
    let what = match &rule.measure {
        Measure::Quantile { field, q } => format!("p{} of {field}", (q * 100.0).round()),
        Measure::Mean { field } => format!("mean {field}"),
        Measure::Share { .. } => "share".to_string(),
        Measure::Count => "count".to_string(),
    };
    let repeat = announcement == Announcement::Repeat;
    let damped = condition_since != at_ms && matches!(announcement, Announcement::Fired | Announcement::Resolved | Announcement::SilencedEnd);
    // A firing or repeat under a silence, and the end of an incident that
    // was never announced, are kept off the on-call tools.
    let silenced = announcement == Announcement::SilencedEnd || (state == "firing" && silence.is_some());
    let mut summary = format!(
        "{key} {state}: {what} = {} over {} samples in the last {} ({} {})",
        value.map_or("none".to_string(), |v| v.to_string()),
        samples,
        rule.window_text,
        rule.condition.word(),
        rule.condition.threshold()
    );
    if damped {
        let how = if state == "firing" { "held" } else { "failed" };
        summary.push_str(&format!("; condition {how} since {}", time::format_rfc3339(condition_since)));
    }
    match (announcement, silence) {
        (Announcement::AfterSilence, _) => summary.push_str(&format!("; firing since {}, held back by a silence until now", time::format_rfc3339(since))),
        (Announcement::SilencedEnd, _) => summary.push_str("; it fired under a silence and was never announced"),
        (_, Some(silence)) if silenced => summary.push_str(&format!("; silenced until {}: {}", time::format_rfc3339(silence.until_ms), silence.reason)),
        _ => {}
    }
    let mut body = json!({
        "rule": rule.id,
        "state": state,
        "key": key,
        "value": value,
        "threshold": rule.condition.threshold(),
        "condition": rule.condition.word(),
        "window": rule.window_text,
        "owner": rule.owner,
        "severity": rule.severity,
        "labels": series.labels,
        "changed_at": time::format_rfc3339(at_ms),
        "firing_since": time::format_rfc3339(since),
        "samples": samples,
        "summary": summary,
    });
    let fields = body.as_object_mut().expect("a JSON object");
    if let Some(check) = &rule.check {
        fields.insert("check".into(), json!(check));
    }
    if let Some(stage) = &settings.stage {
        fields.insert("stage".into(), json!(stage));
    }
    if let Some(description) = &rule.description {
        fields.insert("description".into(), json!(description));
    }
    if let Some(runbook) = &rule.runbook {
        fields.insert("runbook".into(), json!(runbook));
    }
    if repeat {
        fields.insert("repeat".into(), json!(true));
    }
    if announcement == Announcement::AfterSilence {
        fields.insert("after_silence".into(), json!(true));
    }
    if silenced {
        fields.insert("silenced".into(), json!(true));
        if let Some(silence) = silence {
            fields.insert("silence".into(), json!({ "until": time::format_rfc3339(silence.until_ms), "reason": silence.reason }));
        }
    }
    if damped {
        fields.insert("condition_since".into(), json!(time::format_rfc3339(condition_since)));
    }
    Alert { subject: format!("{}.{}", settings.subject_prefix, rule.id), body }
}

/// Says that the alerting runs, at wall time `now_ns`, with how many alerts
/// are firing and how far event time (`watermark_ms`) has come.
pub(crate) fn heartbeat<'a>(settings: &Settings, every: &str, series: impl Iterator<Item = &'a Series>, watermark_ms: Option<i64>, now_ns: u64) -> Alert {
    let (mut firing, mut silenced) = (0, 0);
    for series in series {
        if let AlertState::Firing { silenced: held, .. } = series.alert {
            if held { silenced += 1 } else { firing += 1 }
        }
    }
    let at = time::format_rfc3339((now_ns / 1_000_000) as i64);
    let event_time = watermark_ms.map(time::format_rfc3339);
    let summary =
        format!("alerting runs at {at}: {firing} alert(s) firing, {silenced} silenced; event time {}", event_time.as_deref().unwrap_or("not started"));
    let body = json!({ "heartbeat": true, "at": at, "every": every, "event_time": event_time, "firing": firing, "silenced": silenced, "summary": summary });
    Alert { subject: format!("{}.{HEARTBEAT}", settings.subject_prefix), body }
}
