//! `measure`: counts events and measures their properties into labelled
//! Prometheus counters and histograms (the host's `metrics` import), for
//! dashboards and alerting rules on the business of the events: a
//! generation latency by vendor and route, a share of cache hits, export
//! failures by code. Every event passes on unchanged (`keep`): the stage
//! looks, it never changes or refuses anything.
//!
//! Stage config, one table per metric:
//! ```toml
//! [[pipeline.stage.config.counter]]
//! name = "storyforge_exports_failed"            # `_total` is added
//! help = "Exports that failed, by code and stage"
//! events = ["export_failed"]                    # by the `event` property; all events if absent
//! labels = { error_code = "error_code", failure_stage = "stage" }   # label = property
//!
//! [[pipeline.stage.config.histogram]]
//! name = "storyforge_generation_latency_seconds"
//! help = "Time to generate a scene"
//! events = ["scene_generated"]
//! value = "latency_ms"                          # a number property
//! scale = 0.001                                 # into the base unit
//! buckets = [1, 5, 10, 30, 60, 90, 110, 120]
//! labels = ["model_vendor", "provider_route"]   # a list: each label is the property of its name
//! ```
//!
//! A label's value is the property's string, or the JSON text of a number
//! or boolean; empty when the property is absent or null, `other` for an
//! object or array. The host bounds the values a label takes (32 per
//! stage; the rest count as `other`), so a label on a free-form property
//! cannot grow a Prometheus server's series without end. An event whose
//! value is absent or not a number is left out of its histogram and
//! counted as `value_missing`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_plugin::json::{self, Properties};
use sluice_plugin::{ConfigError, Event, Outcome, Transform, counters, metrics};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    counter: Vec<CounterSpec>,
    #[serde(default)]
    histogram: Vec<HistogramSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CounterSpec {
    name: String,
    help: String,
    events: Option<Vec<String>>,
    #[serde(default)]
    labels: Labels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistogramSpec {
    name: String,
    help: String,
    events: Option<Vec<String>>,
    value: String,
    #[serde(default = "one")]
    scale: f64,
    buckets: Vec<f64>,
    #[serde(default)]
    labels: Labels,
}

fn one() -> f64 {
    1.0
}

/// Labels and the property each reads: a table, or a list of properties
/// that name their own labels.
#[derive(Deserialize)]
#[serde(untagged)]
enum Labels {
    Named(BTreeMap<String, String>),
    Same(Vec<String>),
}

impl Default for Labels {
    fn default() -> Self {
        Labels::Same(Vec::new())
    }
}

impl Labels {
    fn pairs(&self) -> Vec<(String, String)> {
        match self {
            Labels::Named(map) => map.iter().map(|(label, property)| (label.clone(), property.clone())).collect(),
            Labels::Same(list) => list.iter().map(|property| (property.clone(), property.clone())).collect(),
        }
    }
}

enum Meter {
    Counter(metrics::Counter),
    Histogram { histogram: metrics::Histogram, value: String, scale: f64 },
}

/// One declared metric and what it reads from an event.
struct Measure {
    /// The events it takes, by name; all when `None`.
    events: Option<HashSet<String>>,
    properties: Vec<String>,
    meter: Meter,
}

pub struct Measurer {
    measures: Vec<Measure>,
}

fn declared<T>(declared: Result<T, String>, at: String) -> Result<T, ConfigError> {
    declared.map_err(|reason| ConfigError::at(&at, reason))
}

impl Transform for Measurer {
    const NAME: &'static str = "measure";
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        let mut measures = Vec::new();
        let mut names = HashSet::new();
        for (n, spec) in config.counter.iter().enumerate() {
            if !names.insert(spec.name.clone()) {
                return Err(ConfigError::at(&format!("counter[{n}].name"), format!("metric `{}` is declared twice", spec.name)));
            }
            let (labels, properties): (Vec<String>, Vec<String>) = spec.labels.pairs().into_iter().unzip();
            let label_names: Vec<&str> = labels.iter().map(String::as_str).collect();
            let counter = declared(metrics::counter(&spec.name, &spec.help, &label_names), format!("counter[{n}]"))?;
            measures.push(Measure { events: spec.events.as_ref().map(|e| e.iter().cloned().collect()), properties, meter: Meter::Counter(counter) });
        }
        for (n, spec) in config.histogram.iter().enumerate() {
            if !names.insert(spec.name.clone()) {
                return Err(ConfigError::at(&format!("histogram[{n}].name"), format!("metric `{}` is declared twice", spec.name)));
            }
            if !(spec.scale.is_finite() && spec.scale > 0.0) {
                return Err(ConfigError::at(&format!("histogram[{n}].scale"), format!("must be a number above 0, not {}", spec.scale)));
            }
            let (labels, properties): (Vec<String>, Vec<String>) = spec.labels.pairs().into_iter().unzip();
            let label_names: Vec<&str> = labels.iter().map(String::as_str).collect();
            let histogram = declared(metrics::histogram(&spec.name, &spec.help, &label_names, &spec.buckets), format!("histogram[{n}]"))?;
            measures.push(Measure {
                events: spec.events.as_ref().map(|e| e.iter().cloned().collect()),
                properties,
                meter: Meter::Histogram { histogram, value: spec.value.clone(), scale: spec.scale },
            });
        }
        if measures.is_empty() {
            return Err(ConfigError::new("declares no metric: add a [[counter]] or [[histogram]] table"));
        }
        Ok(Self { measures })
    }

    fn process(&mut self, event: Event) -> Outcome {
        // Only the properties read are decoded: the rest stay raw text.
        let Ok(properties) = Properties::parse(&event.body) else {
            return Outcome::Keep;
        };
        let name = properties.str("event");
        for measure in &self.measures {
            let wanted = match (&measure.events, &name) {
                (None, _) => true,
                (Some(events), Some(name)) => events.contains(name.as_ref()),
                (Some(_), None) => false,
            };
            if !wanted {
                continue;
            }
            let labels: Vec<Cow<'_, str>> = measure.properties.iter().map(|p| label(properties.get(p))).collect();
            let labels: Vec<&str> = labels.iter().map(AsRef::as_ref).collect();
            match &measure.meter {
                Meter::Counter(counter) => counter.add(&labels, 1),
                Meter::Histogram { histogram, value, scale } => match properties.f64(value) {
                    Some(number) => histogram.observe(&labels, number * scale),
                    None => counters::add("value_missing", 1),
                },
            }
        }
        Outcome::Keep
    }
}

/// A property's value as a label value.
fn label(raw: Option<&RawValue>) -> Cow<'_, str> {
    let Some(raw) = raw else { return Cow::Borrowed("") };
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => json::string(text).unwrap_or(Cow::Borrowed("other")),
        Some(b'{' | b'[') => Cow::Borrowed("other"),
        _ if text == "null" => Cow::Borrowed(""),
        _ => Cow::Borrowed(text),
    }
}

sluice_plugin::transform!(Measurer);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_plugin::testing::{Harness, Sample, event, take_samples};

    use super::*;

    fn storyforge() -> Harness<Measurer> {
        Harness::new(json!({
            "counter": [
                { "name": "exports", "help": "Exports by outcome", "events": ["export_succeeded", "export_failed"], "labels": { "outcome": "event", "code": "error_code" } },
                { "name": "events", "help": "Every event" },
            ],
            "histogram": [
                { "name": "latency_seconds", "help": "Generation latency", "events": ["scene_generated"], "value": "latency_ms", "scale": 0.001, "buckets": [1, 10], "labels": ["model_vendor"] },
            ],
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn sample(metric: &str, labels: &[&str], value: f64) -> Sample {
        Sample { metric: metric.into(), labels: labels.iter().map(|l| l.to_string()).collect(), value }
    }

    #[test]
    fn events_are_counted_and_measured_by_their_properties_and_pass_unchanged() {
        let mut measure = storyforge();
        take_samples();
        let outcomes = measure.process_batch(vec![
            event("a", &json!({ "event": "scene_generated", "latency_ms": 2500, "model_vendor": "runway-gen4" })),
            event("a", &json!({ "event": "export_failed", "error_code": "E42" })),
            event("a", &json!({ "event": "export_succeeded", "error_code": null })),
            event("a", &json!({ "event": "scene_generated", "model_vendor": { "nested": 1 } })),
        ]);
        assert!(outcomes.iter().all(|o| *o == Outcome::Keep), "{outcomes:?}");
        assert_eq!(
            take_samples(),
            vec![
                sample("events", &[], 4.0),
                sample("latency_seconds", &["runway-gen4"], 2.5),
                sample("exports", &["E42", "export_failed"], 1.0),
                sample("exports", &["", "export_succeeded"], 1.0),
            ],
            "a batch's counts summed per series; labels in the order of their names (code, outcome); the scene without a latency counted, not measured"
        );
        assert_eq!(sluice_plugin::testing::counters().get("value_missing"), Some(&1));
    }

    #[test]
    fn a_config_that_declares_nothing_twice_or_badly_is_refused_at_its_key() {
        for (config, at, says) in [
            (json!({}), "", "declares no metric"),
            (json!({ "counter": [{ "name": "a", "help": "" }, { "name": "a", "help": "" }] }), "counter[1].name", "declared twice"),
            (json!({ "histogram": [{ "name": "h", "help": "", "value": "v", "buckets": [] }] }), "histogram[0]", "bucket"),
            (json!({ "histogram": [{ "name": "h", "help": "", "value": "v", "buckets": [1], "scale": 0 }] }), "histogram[0].scale", "above 0"),
            (json!({ "counter": [{ "name": "a_total", "help": "" }] }), "counter[0]", "refused by the host"),
        ] {
            let error = Harness::<Measurer>::new(config.clone()).err().unwrap_or_else(|| panic!("{config} refused")).to_string();
            assert!(error.contains(says) && error.contains(at), "{config}: {error}");
        }
    }
}
