//! Named counters a plugin may bump. They are summed per stage across all the
//! stage's instances and reported with the pipeline's statistics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::plugin::bindings::transform::sluice::plugin::counters;
use crate::plugin::bindings::v0_1::transform::sluice::plugin::counters as counters_0_1;
use crate::plugin::state::StageState;

/// A plugin may not create more counters than this, nor longer names: a
/// hostile or buggy plugin must not grow the host's memory without bound.
const MAX_COUNTERS: usize = 64;
const MAX_NAME_LEN: usize = 64;

#[derive(Clone, Debug, Default)]
pub struct Counters(Arc<Mutex<BTreeMap<String, u64>>>);

impl Counters {
    pub fn add(&self, name: &str, delta: u64) {
        let Ok(mut counters) = self.0.lock() else { return };
        if let Some(value) = counters.get_mut(name) {
            *value = value.saturating_add(delta);
        } else if counters.len() < MAX_COUNTERS && name.len() <= MAX_NAME_LEN {
            counters.insert(name.to_string(), delta);
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().map(|c| c.clone()).unwrap_or_default()
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
