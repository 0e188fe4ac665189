//! Per-pipeline counters, reported in the log at a regular interval and at
//! exit, so that a long run shows its progress and its losses. Each also
//! counts into the process's Prometheus metric of the same meaning, so a
//! dashboard shows what the log says.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{PipelineLabel, metrics};

/// One count: since this pipeline's workers started (for the log), and for
/// the life of the process (the metric, which a restart of the workers does
/// not reset).
#[derive(Debug, Default)]
pub struct Count {
    local: AtomicU64,
    metric: Counter,
}

impl Count {
    fn of(family: &Family<PipelineLabel, Counter>, pipeline: &str) -> Self {
        Self { local: AtomicU64::new(0), metric: family.get_or_create_owned(&PipelineLabel { pipeline: pipeline.into() }) }
    }

    fn get(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct Stats {
    pub received: Count,
    /// Events per batch read (a metric only).
    pub batch_events: Histogram,
    /// From an event's arrival to its outputs stored and it acked (a metric only).
    pub latency: crate::metrics::histogram::DurationHistogram,
    /// A sink's state size and store time (metrics only).
    pub sink_state: crate::metrics::SinkState,
    pub published: Count,
    /// Events dead-lettered; the metric counts them by stage and code.
    pub rejected: AtomicU64,
    pub dropped: Count,
    /// Plugin calls that trapped, timed out or hit the memory cap; the
    /// metric counts them by stage and kind.
    pub faults: AtomicU64,
    /// Batches whose outputs could not be published (redelivered on JetStream,
    /// lost on core NATS).
    pub failed_batches: Count,
    /// Inputs a sink's kept state had counted before a restart, acked again
    /// without being counted twice.
    pub already_counted: Count,
    /// Inputs held back for redelivery because NATS refused what they produced.
    pub held_back: Count,
    /// Inputs dead-lettered as `undeliverable` (also counted in `rejected`).
    pub undeliverable: Count,
    /// Rounds of sending again messages whose failure may pass.
    pub publish_retries: Count,
    /// Dead letters NATS refused too: the only way an event is lost.
    pub lost_dead_letters: Count,
    /// Acks and naks JetStream did not take: the input is handed out again.
    pub settle_failures: Count,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub received: u64,
    pub published: u64,
    pub rejected: u64,
    pub dropped: u64,
    pub faults: u64,
    pub failed_batches: u64,
    pub already_counted: u64,
    pub held_back: u64,
    pub undeliverable: u64,
    pub publish_retries: u64,
    pub lost_dead_letters: u64,
    pub settle_failures: u64,
}

impl Stats {
    /// The counts of `pipeline`, each bound to its metric.
    pub fn new(pipeline: &str) -> Self {
        let m = metrics();
        Self {
            received: Count::of(&m.received, pipeline),
            batch_events: m.batch_events(pipeline),
            latency: m.event_latency(pipeline),
            sink_state: m.sink_state(pipeline),
            published: Count::of(&m.published, pipeline),
            rejected: AtomicU64::new(0),
            dropped: Count::of(&m.dropped, pipeline),
            faults: AtomicU64::new(0),
            failed_batches: Count::of(&m.failed_batches, pipeline),
            already_counted: Count::of(&m.already_counted, pipeline),
            held_back: Count::of(&m.held_back, pipeline),
            undeliverable: Count::of(&m.undeliverable, pipeline),
            publish_retries: Count::of(&m.publish_retries, pipeline),
            lost_dead_letters: Count::of(&m.lost_dead_letters, pipeline),
            settle_failures: Count::of(&m.settle_failures, pipeline),
        }
    }

    pub fn add(count: &Count, n: usize) {
        count.local.fetch_add(n as u64, Ordering::Relaxed);
        count.metric.inc_by(n as u64);
    }

    /// For the counts whose metrics have labels of their own, counted there.
    pub fn add_local(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            received: self.received.get(),
            published: self.published.get(),
            rejected: get(&self.rejected),
            dropped: self.dropped.get(),
            faults: get(&self.faults),
            failed_batches: self.failed_batches.get(),
            already_counted: self.already_counted.get(),
            held_back: self.held_back.get(),
            undeliverable: self.undeliverable.get(),
            publish_retries: self.publish_retries.get(),
            lost_dead_letters: self.lost_dead_letters.get(),
            settle_failures: self.settle_failures.get(),
        }
    }
}
