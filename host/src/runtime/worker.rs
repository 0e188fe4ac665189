//! One worker of one pipeline: read a batch, run it through the chain, publish
//! the outputs and dead letters, then ack the inputs. A new pipeline version is
//! taken up only between two batches, so a swap never splits a batch, loses
//! an event or processes one twice.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_nats::HeaderMap;
use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::stats::Stats;
use crate::nats::Connection;
use crate::nats::input::{Delivery, Receipt, Source};
use crate::nats::publish::{Message, Publisher};
use crate::pipeline::{BatchResult, Chain, DeadLetter, PIPELINE_HEADER, PipelineVersion, VERSION_HEADER};
use crate::plugin::Event;

/// How long JetStream waits before redelivering a batch that failed here.
const REDELIVERY_DELAY: Duration = Duration::from_secs(1);
/// Pause before reopening an input that ended unexpectedly.
const REOPEN_DELAY: Duration = Duration::from_millis(500);

pub struct Worker {
    pub index: usize,
    pub connection: Connection,
    pub source: Arc<Source>,
    pub publisher: Publisher,
    pub versions: watch::Receiver<Arc<PipelineVersion>>,
    pub stats: Arc<Stats>,
    pub shutdown: watch::Receiver<bool>,
}

impl Worker {
    pub async fn run(mut self) -> Result<()> {
        let version = self.versions.borrow_and_update().clone();
        let (name, max_events, max_wait) = (version.spec.name.clone(), version.spec.max_events, version.spec.max_wait);
        let mut chain = tokio::task::block_in_place(|| Chain::start(version))?;
        let mut batches = self.source.reader(&self.connection, max_events, max_wait).await?;
        // Only a pipeline that ends in a sink is told that time passes.
        let has_sink = chain.version.sink.is_some();
        let mut ticker = tokio::time::interval(chain.version.spec.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::debug!(pipeline = %name, worker = self.index, "Worker started.");
        loop {
            let batch = tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                _ = ticker.tick(), if has_sink => {
                    if self.versions.has_changed().unwrap_or(false) {
                        self.swap(&mut chain);
                    }
                    self.tick(&mut chain).await;
                    continue;
                }
                batch = batches.next() => batch,
            };
            let Some(batch) = batch else {
                tracing::warn!(pipeline = %name, worker = self.index, "Input ended; reopening it.");
                tokio::time::sleep(REOPEN_DELAY).await;
                batches = self.source.reader(&self.connection, max_events, max_wait).await?;
                continue;
            };
            if self.versions.has_changed().unwrap_or(false) {
                self.swap(&mut chain);
            }
            self.handle(&mut chain, batch).await;
        }
        tracing::debug!(pipeline = %name, worker = self.index, "Worker stopped.");
        Ok(())
    }

    /// Takes up the newest version, or keeps the current one if its instances
    /// cannot be started here. Instances start off the async threads: `init`
    /// may read granted files through WASI's blocking calls.
    fn swap(&mut self, chain: &mut Chain) {
        let version = self.versions.borrow_and_update().clone();
        // A sink's state goes over to the new version's sink.
        let state = chain.hand_over();
        let started = tokio::task::block_in_place(|| Chain::start(version.clone()).and_then(|mut new| new.take_over(state).map(|()| new)));
        match started {
            Ok(new) => {
                tracing::debug!(pipeline = %version.spec.name, worker = self.index, from = %chain.version.id, to = %version.id, "Worker swapped version.");
                *chain = new;
            }
            Err(error) => tracing::error!(
                pipeline = %version.spec.name, worker = self.index, version = %version.id, error = format!("{error:#}"),
                "Cannot start the new version in this worker; keeping the running one."
            ),
        }
    }

    async fn handle(&self, chain: &mut Chain, batch: Vec<Delivery>) {
        Stats::add(&self.stats.received, batch.len());
        let (events, receipts): (Vec<Event>, Vec<Receipt>) = batch.into_iter().map(|d| (d.event, d.receipt)).unzip();
        // Plugins run synchronously; let the runtime move other tasks off this thread meanwhile.
        let result = tokio::task::block_in_place(|| chain.process(&events));
        let result = match result {
            Ok(result) => result,
            Err(error) => {
                tracing::error!(pipeline = %chain.version.spec.name, error = format!("{error:#}"), "A stage cannot be restarted; the batch will be redelivered.");
                return self.fail(&receipts).await;
            }
        };
        let counts = (result.outputs.len(), result.rejects.len(), result.dropped, result.faults);
        let messages = messages(&chain.version, &events, &receipts, result);
        if let Err(error) = self.publisher.publish_all(messages).await {
            tracing::error!(pipeline = %chain.version.spec.name, error = format!("{error:#}"), "Cannot publish a batch's outputs; it will be redelivered (JetStream) or is lost (core).");
            return self.fail(&receipts).await;
        }
        for receipt in &receipts {
            receipt.ack().await;
        }
        Stats::add(&self.stats.published, counts.0);
        Stats::add(&self.stats.rejected, counts.1);
        Stats::add(&self.stats.dropped, counts.2);
        Stats::add(&self.stats.faults, counts.3);
    }

    /// Tells the sink that time passed and publishes what that causes.
    async fn tick(&self, chain: &mut Chain) {
        let now = chain.version.sink.as_ref().map_or(0, |sink| sink.context.clock.now_ns());
        let events = match tokio::task::block_in_place(|| chain.tick(now)) {
            Ok(events) => events,
            Err(error) => {
                tracing::error!(pipeline = %chain.version.spec.name, error = format!("{error:#}"), "The sink cannot be restarted after a fault on tick.");
                return;
            }
        };
        let messages = events
            .into_iter()
            .map(|event| {
                let mut headers = carried(&event.headers);
                stamp(&mut headers, &chain.version, None);
                Message { subject: event.subject, headers, body: event.body.into() }
            })
            .collect::<Vec<_>>();
        let count = messages.len();
        match self.publisher.publish_all(messages).await {
            Ok(()) => Stats::add(&self.stats.published, count),
            Err(error) => tracing::error!(pipeline = %chain.version.spec.name, error = format!("{error:#}"), "Cannot publish what the sink emitted on tick."),
        }
    }

    async fn fail(&self, receipts: &[Receipt]) {
        Stats::add(&self.stats.failed_batches, 1);
        for receipt in receipts {
            receipt.nak(REDELIVERY_DELAY).await;
        }
    }
}

/// The messages a processed batch publishes: outputs with the version headers,
/// and dead letters. Message ids derive from the input's stream position, so a
/// redelivered input yields the same ids and a stream drops the repeats.
fn messages(version: &PipelineVersion, inputs: &[Event], receipts: &[Receipt], result: BatchResult) -> Vec<Message> {
    let spec = &version.spec;
    let mut produced = vec![0usize; inputs.len()];
    let mut messages = Vec::with_capacity(result.outputs.len() + result.rejects.len());
    for output in result.outputs {
        let mut headers = carried(&output.event.headers);
        stamp(&mut headers, version, receipts[output.origin].id.as_ref().map(|id| format!("{id}:{}", produced[output.origin])));
        produced[output.origin] += 1;
        messages.push(Message { subject: output.event.subject, headers, body: output.event.body.into() });
    }
    for reject in &result.rejects {
        let original = &inputs[reject.origin];
        // The original's headers (trace ids, say) go with it.
        let mut headers = carried(&original.headers);
        stamp(&mut headers, version, receipts[reject.origin].id.as_ref().map(|id| format!("{id}:dead-letter")));
        let body = DeadLetter::new(&spec.name, &version.id, reject, original).to_json();
        messages.push(Message { subject: format!("{}.{}", spec.dead_letter, reject.stage), headers, body: body.into() });
    }
    messages
}

/// Headers passed on from an event to the message that carries it; its
/// message id is not: each message gets its own.
fn carried(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if name != "Nats-Msg-Id" {
            map.append(name.as_str(), value.as_str());
        }
    }
    map
}

fn stamp(headers: &mut HeaderMap, version: &PipelineVersion, message_id: Option<String>) {
    headers.insert(VERSION_HEADER, version.id.as_str());
    headers.insert(PIPELINE_HEADER, version.spec.name.as_str());
    if let Some(id) = message_id {
        headers.insert("Nats-Msg-Id", id.as_str());
    }
}
