//! Named counters a plugin may bump. They are summed per stage across all the
//! stage's instances, reported with the pipeline's statistics, and counted in
//! the `sluice_plugin_counter_total` metric by pipeline, stage and name.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;

use crate::plugin::bindings::transform::sluice::plugin::counters;
use crate::plugin::bindings::v0_1::transform::sluice::plugin::counters as counters_0_1;
use crate::plugin::state::StageState;

/// A plugin may not create more counters than this, nor longer names: a
/// hostile or buggy plugin must not grow the host's memory (or a Prometheus
/// server's series) without bound.
const MAX_COUNTERS: usize = 64;
const MAX_NAME_LEN: usize = 64;

#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Whose counters these are, for the metric; none in a bare `default()`.
    stage: Option<(Arc<str>, Arc<str>)>,
    /// Since this version of the stage started, and the metric of each name.
    counts: Arc<Mutex<BTreeMap<String, (u64, Counter)>>>,
}

impl Counters {
    /// The counters of one stage of one pipeline.
    pub fn of_stage(pipeline: &str, stage: &str) -> Self {
        Self { stage: Some((pipeline.into(), stage.into())), counts: Arc::default() }
    }

    pub fn add(&self, name: &str, delta: u64) {
        let Ok(mut counts) = self.counts.lock() else { return };
        if let Some((value, metric)) = counts.get_mut(name) {
            *value = value.saturating_add(delta);
            metric.inc_by(delta);
        } else if counts.len() < MAX_COUNTERS && name.len() <= MAX_NAME_LEN {
            let metric = match &self.stage {
                Some((pipeline, stage)) => crate::metrics::metrics().plugin_counter(pipeline, stage, name),
                None => Counter::default(),
            };
            metric.inc_by(delta);
            counts.insert(name.to_string(), (delta, metric));
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().map(|c| c.iter().map(|(name, (value, _))| (name.clone(), *value)).collect()).unwrap_or_default()
    }
}

impl counters::Host for StageState {
    fn add(&mut self, name: String, delta: u64) {
        self.stage.counters.add(&name, delta);
    }
}

impl counters_0_1::Host for StageState {
    fn add(&mut self, name: String, delta: u64) {
        self.stage.counters.add(&name, delta);
    }
}
