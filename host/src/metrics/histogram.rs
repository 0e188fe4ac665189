//! A histogram of durations whose observation is two relaxed atomic adds on
//! counts of the observing worker's own, for what is measured once per
//! event. prometheus-client's own histogram takes a lock per observation,
//! which two workers contending for it per event made cost 2 µs of CPU an
//! event (BENCHMARKS.md); shared atomics still cost half that.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

#[derive(Clone, Debug)]
pub struct DurationHistogram {
    inner: Arc<Inner>,
}

/// Workers observe into shards of their own (by index), summed when scraped.
const SHARDS: usize = 8;

#[derive(Debug)]
struct Inner {
    /// Upper bounds in seconds, ascending; one count more, for +Inf.
    bounds: Vec<f64>,
    shards: Vec<Shard>,
}

/// One worker's counts, on cache lines of their own.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    counts: Vec<AtomicU64>,
    /// The sum in nanoseconds (585 years of summed time fit).
    sum_ns: AtomicU64,
}

impl DurationHistogram {
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Vec<f64> = bounds.into_iter().collect();
        let shards = (0..SHARDS).map(|_| Shard { counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_ns: AtomicU64::new(0) }).collect();
        Self { inner: Arc::new(Inner { bounds, shards }) }
    }

    /// Observes `duration` on behalf of worker `worker`.
    pub fn observe(&self, worker: usize, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = self.inner.bounds.partition_point(|&bound| bound < seconds);
        let shard = &self.inner.shards[worker % SHARDS];
        shard.counts[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum_ns.fetch_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut counts = vec![0u64; self.inner.bounds.len() + 1];
        let mut sum_ns = 0u64;
        for shard in &self.inner.shards {
            for (total, count) in counts.iter_mut().zip(&shard.counts) {
                *total += count.load(Ordering::Relaxed);
            }
            sum_ns = sum_ns.saturating_add(shard.sum_ns.load(Ordering::Relaxed));
        }
        let buckets: Vec<(f64, u64)> = self.inner.bounds.iter().copied().chain([f64::INFINITY]).zip(counts.iter().copied()).collect();
        let sum = sum_ns as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_fall_in_the_first_bucket_that_holds_them_and_encode_as_prometheus_does() {
        let histogram = DurationHistogram::new([0.001, 0.01, 0.1]);
        for (worker, ms) in [0, 1, 5, 10, 50, 2000].into_iter().enumerate() {
            histogram.observe(worker, Duration::from_millis(ms));
        }
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_with_unit("wait", "Waits", prometheus_client::registry::Unit::Seconds, histogram);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "wait_seconds_bucket{le=\"0.001\"} 2",
            "wait_seconds_bucket{le=\"0.01\"} 4",
            "wait_seconds_bucket{le=\"0.1\"} 5",
            "wait_seconds_bucket{le=\"+Inf\"} 6",
            "wait_seconds_sum 2.066",
            "wait_seconds_count 6",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
    }
}
