//! Per-pipeline counters, reported in the log at a regular interval and at
//! exit, so that a long run shows its progress and its losses.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub published: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped: AtomicU64,
    /// Plugin calls that trapped, timed out or hit the memory cap.
    pub faults: AtomicU64,
    /// Batches whose outputs could not be published (redelivered on JetStream,
    /// lost on core NATS).
    pub failed_batches: AtomicU64,
    /// Inputs a sink's kept state had counted before a restart, acked again
    /// without being counted twice.
    pub already_counted: AtomicU64,
    /// Inputs held back for redelivery because NATS refused what they produced.
    pub held_back: AtomicU64,
    /// Inputs dead-lettered as `undeliverable` (also counted in `rejected`).
    pub undeliverable: AtomicU64,
    /// Rounds of sending again messages whose failure may pass.
    pub publish_retries: AtomicU64,
    /// Dead letters NATS refused too: the only way an event is lost.
    pub lost_dead_letters: AtomicU64,
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
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            received: get(&self.received),
            published: get(&self.published),
            rejected: get(&self.rejected),
            dropped: get(&self.dropped),
            faults: get(&self.faults),
            failed_batches: get(&self.failed_batches),
            already_counted: get(&self.already_counted),
            held_back: get(&self.held_back),
            undeliverable: get(&self.undeliverable),
            publish_retries: get(&self.publish_retries),
            lost_dead_letters: get(&self.lost_dead_letters),
        }
    }
}
