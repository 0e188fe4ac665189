//! The host side of the `metrics` import: a plugin declares counters and
//! histograms with labels, and sends a batch's samples in one call. The
//! bounds and the encoding are `crate::metrics::plugin`'s.

use crate::metrics::plugin::{Declaration, Kind};
use crate::plugin::bindings::transform::sluice::plugin::metrics;
use crate::plugin::state::StageState;

impl metrics::Host for StageState {
    fn declare(&mut self, metric: metrics::Metric) -> Result<u32, String> {
        let kind = match metric.kind {
            metrics::Kind::Counter => Kind::Counter,
            metrics::Kind::Histogram => Kind::Histogram,
        };
        let declaration = Declaration { name: metric.name, help: metric.help, kind, labels: metric.labels, buckets: metric.buckets };
        self.stage.metrics.declare(declaration)
    }

    fn observe(&mut self, samples: Vec<metrics::Sample>) {
        self.stage.metrics.observe(samples.into_iter().map(|s| (s.metric, s.labels, s.value)));
    }
}
