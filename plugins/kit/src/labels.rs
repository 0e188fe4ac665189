//! The labels an event's fields give the series it counts towards (alert
//! groups, rollup dimensions and cohort cuts), and which events a `where`
//! takes.

use std::collections::BTreeMap;

use serde_json::Value;

/// A label set: label names to values, in name order.
pub type Labels = BTreeMap<String, String>;

/// A value as a label: a string as it is, a number or boolean as JSON writes
/// it; arrays, objects and `null` give none.
pub fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The label sets that the value of `field` gives: one, `field = value`, for
/// a scalar; for an object (such as `experiment_assignments`), one per entry
/// with a scalar value, `experiment = <key>, variant = <value>`; none for a
/// field that is absent or holds anything else.
pub fn of_field(field: &str, value: Option<&Value>) -> Vec<Labels> {
    match value {
        Some(Value::Object(entries)) => entries
            .iter()
            .filter_map(|(experiment, variant)| {
                let variant = scalar(variant)?;
                Some(Labels::from([("experiment".to_string(), experiment.clone()), ("variant".to_string(), variant)]))
            })
            .collect(),
        Some(value) => scalar(value).map(|v| vec![Labels::from([(field.to_string(), v)])]).unwrap_or_default(),
        None => Vec::new(),
    }
}

/// Whether every `field = value` of `filter` holds of the event: the
/// `where` of an alert rule or a rollup.
pub fn matches_all(event: &serde_json::Map<String, Value>, filter: &serde_json::Map<String, Value>) -> bool {
    filter.iter().all(|(field, value)| event.get(field) == Some(value))
}

/// A series' key: its name, then `|label=value` for each label.
pub fn series_key(name: &str, labels: &Labels) -> String {
    let mut key = name.to_string();
    for (label, value) in labels {
        key.push('|');
        key.push_str(label);
        key.push('=');
        key.push_str(value);
    }
    key
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Labels, of_field, series_key};

    #[test]
    fn a_scalar_gives_one_label_and_an_object_one_set_per_entry() {
        assert_eq!(of_field("model_vendor", Some(&json!("sf-video-1"))), vec![Labels::from([("model_vendor".into(), "sf-video-1".into())])]);
        assert_eq!(of_field("beats", Some(&json!(12))), vec![Labels::from([("beats".into(), "12".into())])]);
        let experiments = of_field("experiment_assignments", Some(&json!({ "onboarding_copy": "B", "bad": [1], "upsell": "scene_6" })));
        let named: Vec<String> = experiments.iter().map(|labels| series_key("x", labels)).collect();
        assert_eq!(named, ["x|experiment=onboarding_copy|variant=B", "x|experiment=upsell|variant=scene_6"]);
        assert!(of_field("f", None).is_empty());
        assert!(of_field("f", Some(&json!(null))).is_empty());
        assert!(of_field("f", Some(&json!([1, 2]))).is_empty());
    }
}
