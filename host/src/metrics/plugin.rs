//! The counters and histograms plugins declare through the `metrics` import:
//! business measures of the events a stage sees (a latency by vendor, a
//! share of cache hits), served on `/metrics` under the names the plugins
//! chose, labelled by pipeline and stage besides their own labels.
//!
//! Their labels come from events, so every bound is the host's: a stage
//! declares at most [`MAX_METRICS_PER_STAGE`] metrics of at most
//! [`MAX_LABELS`] labels; each label takes at most [`MAX_VALUES_PER_LABEL`]
//! values per stage (the rest, and values longer than [`MAX_VALUE_LEN`]
//! bytes, count as `other`), and a metric at most [`MAX_SERIES`] series per
//! stage (past that, its samples count in one series whose labels are all
//! `other`). What a plugin gets wrong is refused with the reason at
//! `declare`, or counted in `sluice_plugin_samples_refused_total` at
//! `observe`; neither touches the host's own metrics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;

pub const MAX_METRICS_PER_STAGE: usize = 32;
pub const MAX_LABELS: usize = 4;
pub const MAX_BUCKETS: usize = 32;
pub const MAX_VALUES_PER_LABEL: usize = 32;
pub const MAX_VALUE_LEN: usize = 64;
pub const MAX_SERIES: usize = 1024;
const MAX_NAME_LEN: usize = 128;
const MAX_HELP_LEN: usize = 512;
/// Labels the host sets, or Prometheus gives a meaning of its own.
const RESERVED_LABELS: [&str; 4] = ["pipeline", "stage", "le", "quantile"];
/// What a label value past its bounds counts as.
const OTHER: &str = "other";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Histogram,
}

/// A metric as a plugin declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct Declaration {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub labels: Vec<String>,
    pub buckets: Vec<f64>,
}

fn is_prometheus_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Declaration {
    /// Why Prometheus, or the host's bounds, would not take it.
    pub fn check(&self) -> Result<(), String> {
        let name = &self.name;
        if !is_prometheus_name(name) || name.len() > MAX_NAME_LEN {
            return Err(format!("metric name {name:?} is not a Prometheus name ([a-zA-Z_][a-zA-Z0-9_]*, at most {MAX_NAME_LEN} bytes)"));
        }
        if name.starts_with("sluice_") || name.starts_with("__") {
            return Err(format!("metric name {name:?} starts with `sluice_` or `__`, which are the host's and Prometheus's"));
        }
        if self.kind == Kind::Counter && name.ends_with("_total") {
            return Err(format!("counter {name:?} ends in `_total`, which the host adds: declare it without"));
        }
        if self.help.len() > MAX_HELP_LEN {
            return Err(format!("metric {name:?}: help is {} bytes, more than {MAX_HELP_LEN}", self.help.len()));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(format!("metric {name:?} has {} labels, more than {MAX_LABELS}", self.labels.len()));
        }
        let mut seen = HashSet::new();
        for label in &self.labels {
            if !is_prometheus_name(label) || label.starts_with("__") || label.len() > MAX_NAME_LEN {
                return Err(format!("metric {name:?}: label {label:?} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting `__`)"));
            }
            if RESERVED_LABELS.contains(&label.as_str()) {
                return Err(format!("metric {name:?}: label {label:?} is the host's or Prometheus's ({})", RESERVED_LABELS.join(", ")));
            }
            if !seen.insert(label) {
                return Err(format!("metric {name:?}: label {label:?} is named twice"));
            }
        }
        match self.kind {
            Kind::Counter if !self.buckets.is_empty() => Err(format!("counter {name:?} has buckets; only a histogram has")),
            Kind::Histogram if self.buckets.is_empty() || self.buckets.len() > MAX_BUCKETS => {
                Err(format!("histogram {name:?} has {} buckets: 1 to {MAX_BUCKETS} upper bounds are needed", self.buckets.len()))
            }
            Kind::Histogram if !self.buckets.iter().all(|b| b.is_finite()) || !self.buckets.windows(2).all(|w| w[0] < w[1]) => {
                Err(format!("histogram {name:?}: bucket bounds must be finite and strictly ascending, got {:?}", self.buckets))
            }
            _ => Ok(()),
        }
    }
}

/// A stage by pipeline and name.
type StageKey = (Arc<str>, Arc<str>);

/// One metric's value in one series.
#[derive(Debug)]
enum Cell {
    Counter(u64),
    Histogram { counts: Vec<u64>, sum: f64 },
}

/// The series of one metric that one stage feeds.
#[derive(Debug, Default)]
struct StageSeries {
    /// The values each label has taken, up to [`MAX_VALUES_PER_LABEL`].
    values: Vec<HashSet<String>>,
    series: HashMap<Vec<String>, Cell>,
}

impl StageSeries {
    /// The series `labels` count in, once bounded.
    fn cell(&mut self, declaration: &Declaration, mut labels: Vec<String>) -> &mut Cell {
        if !self.series.contains_key(&labels) {
            self.values.resize_with(labels.len(), HashSet::new);
            for (value, known) in labels.iter_mut().zip(&mut self.values) {
                if value.len() > MAX_VALUE_LEN || (!known.contains(value.as_str()) && known.len() >= MAX_VALUES_PER_LABEL) {
                    *value = OTHER.into();
                } else if !known.contains(value.as_str()) {
                    known.insert(value.clone());
                }
            }
            if !self.series.contains_key(&labels) && self.series.len() >= MAX_SERIES {
                labels.iter_mut().for_each(|value| *value = OTHER.into());
            }
        }
        self.series.entry(labels).or_insert_with(|| match declaration.kind {
            Kind::Counter => Cell::Counter(0),
            Kind::Histogram => Cell::Histogram { counts: vec![0; declaration.buckets.len() + 1], sum: 0.0 },
        })
    }
}

/// A declared metric and the series of every stage that declared it.
#[derive(Debug)]
pub struct PluginFamily {
    declaration: Declaration,
    stages: Mutex<BTreeMap<StageKey, StageSeries>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PluginFamily {
    /// Takes one sample of `stage`; why not, if it cannot.
    fn observe(&self, stage: &StageKey, labels: Vec<String>, value: f64) -> Result<(), &'static str> {
        let declaration = &self.declaration;
        if labels.len() != declaration.labels.len() {
            return Err("wrong_labels");
        }
        let mut stages = lock(&self.stages);
        let series = match stages.get_mut(stage) {
            Some(series) => series,
            None => stages.entry(stage.clone()).or_default(),
        };
        match series.cell(declaration, labels) {
            Cell::Counter(total) => {
                if !(value >= 0.0 && value.fract() == 0.0 && value <= u64::MAX as f64) {
                    return Err("bad_value");
                }
                *total = total.saturating_add(value as u64);
            }
            Cell::Histogram { counts, sum } => {
                if !value.is_finite() {
                    return Err("bad_value");
                }
                counts[declaration.buckets.partition_point(|&bound| bound < value)] += 1;
                *sum += value;
            }
        }
        Ok(())
    }
}

/// Every metric plugins declared, by name: a collector for the process's
/// registry, encoded on each scrape.
#[derive(Debug, Default)]
pub struct PluginMetrics {
    families: Mutex<BTreeMap<String, Arc<PluginFamily>>>,
}

impl PluginMetrics {
    /// The family of `declaration`: a new one, or the one of that name if it
    /// was declared the same way before.
    fn family(&self, declaration: Declaration) -> Result<Arc<PluginFamily>, String> {
        declaration.check()?;
        let mut families = lock(&self.families);
        if let Some(family) = families.get(&declaration.name) {
            // Held by the map alone, no running stage feeds it: a new
            // version may declare it anew (its series start again).
            let in_use = Arc::strong_count(family) > 1;
            match family.declaration == declaration {
                true => return Ok(family.clone()),
                false if in_use => {
                    return Err(format!(
                        "metric {:?} is declared already, by a running stage, with another kind, labels or buckets ({:?}, labels {:?}, buckets {:?}): a name means one thing on /metrics; give the new shape a new name, or restart the host",
                        declaration.name, family.declaration.kind, family.declaration.labels, family.declaration.buckets
                    ));
                }
                false => {}
            }
        }
        let family = Arc::new(PluginFamily { declaration, stages: Mutex::default() });
        families.insert(family.declaration.name.clone(), family.clone());
        Ok(family)
    }
}

impl Collector for PluginMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let families: Vec<Arc<PluginFamily>> = lock(&self.families).values().cloned().collect();
        for family in families {
            let declaration = &family.declaration;
            let kind = match declaration.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Histogram => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(&declaration.name, &declaration.help, None, kind)?;
            for ((pipeline, stage), series) in lock(&family.stages).iter() {
                for (values, cell) in &series.series {
                    let mut labels = vec![("pipeline".to_string(), pipeline.to_string()), ("stage".to_string(), stage.to_string())];
                    labels.extend(declaration.labels.iter().cloned().zip(values.iter().cloned()));
                    let mut encoder = metric.encode_family(&labels)?;
                    match cell {
                        Cell::Counter(total) => encoder.encode_counter::<NoLabelSet, _, u64>(total, None)?,
                        Cell::Histogram { counts, sum } => {
                            // Counts per bucket; the encoder makes them cumulative.
                            let buckets: Vec<(f64, u64)> = declaration.buckets.iter().copied().chain([f64::INFINITY]).zip(counts.iter().copied()).collect();
                            encoder.encode_histogram::<NoLabelSet>(*sum, counts.iter().sum(), &buckets, None)?
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// What one stage declared, shared by its instances: a handle is an index
/// here, so every instance's handles agree.
#[derive(Debug)]
pub struct StageMetrics {
    stage: StageKey,
    declared: Mutex<Vec<Arc<PluginFamily>>>,
    refused: Counter,
    /// Declarations refused so far, of which the first few are logged.
    declarations_refused: std::sync::atomic::AtomicUsize,
}

/// Refused declarations of one stage that reach the log; a plugin that
/// declares in a loop does not flood it.
const LOGGED_REFUSALS: usize = 16;

impl StageMetrics {
    pub fn of_stage(pipeline: &str, stage: &str) -> Self {
        let refused = super::metrics().samples_refused(pipeline, stage);
        Self { stage: (pipeline.into(), stage.into()), declared: Mutex::default(), refused, declarations_refused: Default::default() }
    }

    /// The handle of `declaration` in this stage, declared now or before;
    /// a refusal is logged (the first few of a stage) with its reason.
    pub fn declare(&self, declaration: Declaration) -> Result<u32, String> {
        let declared = self.declare_unlogged(declaration);
        if let Err(reason) = &declared
            && self.declarations_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < LOGGED_REFUSALS
        {
            let (pipeline, stage) = &self.stage;
            tracing::warn!(%pipeline, %stage, %reason, "A plugin's metric was refused.");
        }
        declared
    }

    fn declare_unlogged(&self, declaration: Declaration) -> Result<u32, String> {
        let mut declared = lock(&self.declared);
        if let Some(handle) = declared.iter().position(|family| family.declaration == declaration) {
            return Ok(handle as u32);
        }
        if declared.len() >= MAX_METRICS_PER_STAGE {
            return Err(format!("metric {:?}: a stage declares at most {MAX_METRICS_PER_STAGE} metrics", declaration.name));
        }
        let family = super::metrics().plugins.family(declaration)?;
        declared.push(family);
        Ok((declared.len() - 1) as u32)
    }

    /// Takes a batch's samples; those it cannot take are counted as refused.
    pub fn observe(&self, samples: impl IntoIterator<Item = (u32, Vec<String>, f64)>) {
        let declared = lock(&self.declared).clone();
        let mut refused = 0;
        for (handle, labels, value) in samples {
            let taken = match declared.get(handle as usize) {
                Some(family) => family.observe(&self.stage, labels, value),
                None => Err("unknown_metric"),
            };
            refused += u64::from(taken.is_err());
        }
        if refused > 0 {
            self.refused.inc_by(refused);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(name: &str, labels: &[&str], buckets: &[f64]) -> Declaration {
        Declaration {
            name: name.into(),
            help: "Test".into(),
            kind: Kind::Histogram,
            labels: labels.iter().map(|l| l.to_string()).collect(),
            buckets: buckets.to_vec(),
        }
    }

    fn encode(metrics: &Arc<PluginMetrics>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(metrics.clone()));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn declarations_out_of_the_rules_are_refused_with_the_reason() {
        let counter = |name: &str, labels: &[&str]| Declaration { kind: Kind::Counter, buckets: Vec::new(), ..histogram(name, labels, &[]) };
        for (declaration, reason) in [
            (counter("9lives", &[]), "not a Prometheus name"),
            (counter("sluice_events", &[]), "the host's"),
            (counter("exports_total", &[]), "ends in `_total`"),
            (counter("exports", &["a", "b", "c", "d", "e"]), "more than 4"),
            (counter("exports", &["stage"]), "the host's or Prometheus's"),
            (counter("exports", &["a-b"]), "not a Prometheus label name"),
            (counter("exports", &["a", "a"]), "named twice"),
            (histogram("latency_seconds", &[], &[]), "1 to 32 upper bounds"),
            (histogram("latency_seconds", &[], &[2.0, 1.0]), "strictly ascending"),
            (histogram("latency_seconds", &[], &[1.0, f64::NAN]), "finite"),
        ] {
            let error = declaration.check().expect_err(&declaration.name);
            assert!(error.contains(reason), "{declaration:?}: {error}");
        }
        let metrics = PluginMetrics::default();
        let running = metrics.family(histogram("latency_seconds", &["vendor"], &[1.0])).unwrap();
        let error = metrics.family(histogram("latency_seconds", &["vendor"], &[2.0])).unwrap_err();
        assert!(error.contains("declared already, by a running stage"), "{error}");
        let again = metrics.family(histogram("latency_seconds", &["vendor"], &[1.0])).expect("the same declaration again is the same family");
        assert!(Arc::ptr_eq(&running, &again));
        drop((running, again));
        metrics.family(histogram("latency_seconds", &["vendor"], &[2.0])).expect("once no stage feeds it, a new shape may take the name");
    }

    #[test]
    fn samples_encode_as_prometheus_histograms_and_counters_with_the_stage_labels() {
        let metrics = Arc::new(PluginMetrics::default());
        let family = metrics.family(histogram("generation_seconds", &["vendor"], &[1.0, 10.0])).unwrap();
        let stage: StageKey = ("ingest".into(), "measure".into());
        for value in [0.5, 5.0, 50.0, 1.0] {
            family.observe(&stage, vec!["runway".into()], value).unwrap();
        }
        assert_eq!(family.observe(&stage, vec![], 1.0), Err("wrong_labels"));
        assert_eq!(family.observe(&stage, vec!["runway".into()], f64::INFINITY), Err("bad_value"));
        let counter = metrics.family(Declaration { kind: Kind::Counter, buckets: vec![], ..histogram("exports", &["code"], &[]) }).unwrap();
        counter.observe(&stage, vec!["E1".into()], 3.0).unwrap();
        assert_eq!(counter.observe(&stage, vec!["E1".into()], 0.5), Err("bad_value"));
        assert_eq!(counter.observe(&stage, vec!["E1".into()], -1.0), Err("bad_value"));
        let text = encode(&metrics);
        for line in [
            r#"generation_seconds_bucket{pipeline="ingest",stage="measure",vendor="runway",le="1"} 2"#,
            r#"generation_seconds_bucket{pipeline="ingest",stage="measure",vendor="runway",le="10"} 3"#,
            r#"generation_seconds_bucket{pipeline="ingest",stage="measure",vendor="runway",le="+Inf"} 4"#,
            r#"generation_seconds_sum{pipeline="ingest",stage="measure",vendor="runway"} 56.5"#,
            r#"generation_seconds_count{pipeline="ingest",stage="measure",vendor="runway"} 4"#,
            r#"exports_total{pipeline="ingest",stage="measure",code="E1"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn label_values_past_their_bounds_count_as_other() {
        let metrics = PluginMetrics::default();
        let family = metrics.family(Declaration { kind: Kind::Counter, buckets: vec![], ..histogram("codes", &["code"], &[]) }).unwrap();
        let stage: StageKey = ("p".into(), "s".into());
        for n in 0..100 {
            family.observe(&stage, vec![format!("code{n}")], 1.0).unwrap();
        }
        family.observe(&stage, vec!["x".repeat(MAX_VALUE_LEN + 1)], 1.0).unwrap();
        family.observe(&stage, vec!["code0".into()], 1.0).unwrap();
        let stages = lock(&family.stages);
        let series = &stages[&stage].series;
        assert_eq!(series.len(), MAX_VALUES_PER_LABEL + 1, "32 codes and `other`");
        assert!(matches!(series[&vec!["other".to_string()]], Cell::Counter(n) if n == 100 - MAX_VALUES_PER_LABEL as u64 + 1));
        assert!(matches!(series[&vec!["code0".to_string()]], Cell::Counter(2)));
    }
}
