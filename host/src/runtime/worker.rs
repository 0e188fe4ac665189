//! One worker of one pipeline: read a batch, run it through the chain, publish
//! the outputs and dead letters, then ack the inputs. A new pipeline version is
//! taken up only between two batches, so a swap never splits a batch, loses
//! an event or processes one twice.
//!
//! A pipeline that ends in a sink (one worker) also keeps the sink's state in
//! a key-value bucket after each batch, before acking it, and reads it back at
//! start. A batch it cannot publish is rolled back and retried in place, never
//! skipped, so the state sees every event once and in order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::HeaderMap;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::stats::Stats;
use crate::nats::Connection;
use crate::nats::input::{Batches, Delivery, Receipt, Source};
use crate::nats::publish::{Message, Publisher};
use crate::nats::state::{Saved, StateStore};
use crate::pipeline::{BatchResult, Chain, DeadLetter, PIPELINE_HEADER, PipelineVersion, Reject, VERSION_HEADER};
use crate::plugin::Event;

/// How long JetStream waits before redelivering a batch that failed here.
const REDELIVERY_DELAY: Duration = Duration::from_secs(1);
/// Pause before reopening an input that ended unexpectedly.
const REOPEN_DELAY: Duration = Duration::from_millis(500);
/// First and longest pause before a sink pipeline retries a batch.
const RETRY_DELAYS: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

/// Where a sink's state is kept, and how far into the input it reaches.
#[derive(Default)]
struct Kept {
    store: Option<StateStore>,
    /// Stream sequence of the last input the sink has counted.
    counted_through: u64,
}

/// What a batch came to, for the statistics.
struct Counts {
    published: usize,
    rejected: usize,
    dropped: usize,
    faults: usize,
}

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
    pub async fn run(mut self, mut batches: Batches) -> Result<()> {
        let version = self.versions.borrow_and_update().clone();
        let (name, max_events, max_wait) = (version.spec.name.clone(), version.spec.max_events, version.spec.max_wait);
        let mut chain = tokio::task::block_in_place(|| Chain::start(version))?;
        // Only a pipeline that ends in a sink keeps state and is told that time passes.
        let has_sink = chain.version.sink.is_some();
        let mut kept = if has_sink { self.restore(&mut chain).await } else { Kept::default() };
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
                    self.tick(&mut chain, &kept).await;
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
            if has_sink {
                self.handle_in_order(&mut chain, batch, &mut kept).await;
            } else {
                self.handle(&mut chain, batch).await;
            }
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

    /// Reads the sink's kept state, if there is one, into the chain.
    async fn restore(&self, chain: &mut Chain) -> Kept {
        let version = chain.version.clone();
        let spec = &version.spec;
        let stage = version.sink.as_ref().map_or("", |sink| sink.spec.name.as_str());
        let store = match StateStore::open(&self.connection, &spec.state_bucket, &spec.name, stage).await {
            Ok(store) => store,
            Err(error) => {
                tracing::error!(pipeline = %spec.name, error = format!("{error:#}"), "Cannot keep the sink's state in NATS; it lives in memory only and a restart starts it empty.");
                return Kept::default();
            }
        };
        let loaded = store.load().await.and_then(|saved| match saved {
            None => Ok(None),
            Some(saved) => tokio::task::block_in_place(|| chain.take_over(Some(saved.snapshot.clone()))).map(|()| Some(saved)).context("the sink refused it"),
        });
        let counted_through = match loaded {
            Ok(Some(saved)) => {
                tracing::info!(pipeline = %spec.name, key = store.key(), bytes = saved.snapshot.len(), counted_through = saved.sequence, "Sink state restored.");
                saved.sequence
            }
            Ok(None) => {
                tracing::info!(pipeline = %spec.name, key = store.key(), "No kept sink state; starting empty.");
                0
            }
            Err(error) => {
                tracing::error!(pipeline = %spec.name, key = store.key(), error = format!("{error:#}"), "Cannot restore the kept sink state; starting empty.");
                0
            }
        };
        Kept { store: Some(store), counted_through }
    }

    async fn handle(&self, chain: &mut Chain, batch: Vec<Delivery>) {
        Stats::add(&self.stats.received, batch.len());
        let (events, receipts): (Vec<Event>, Vec<Receipt>) = batch.into_iter().map(|d| (d.event, d.receipt)).unzip();
        match self.attempt(chain, &events, &receipts, None).await {
            Ok(counts) => self.settle(&receipts, counts).await,
            Err(error) => {
                tracing::error!(pipeline = %chain.version.spec.name, error = format!("{error:#}"), "The batch failed; it will be redelivered (JetStream) or is lost (core).");
                self.fail(&receipts).await;
            }
        }
    }

    /// A batch for a sink: inputs the kept state already counted are acked
    /// and passed over; the rest is retried in place until its outputs and
    /// the new state are stored, so the sink sees each event once, in order.
    async fn handle_in_order(&self, chain: &mut Chain, batch: Vec<Delivery>, kept: &mut Kept) {
        Stats::add(&self.stats.received, batch.len());
        let (counted, fresh): (Vec<Delivery>, Vec<Delivery>) =
            batch.into_iter().partition(|d| d.receipt.sequence.is_some_and(|sequence| sequence <= kept.counted_through));
        if !counted.is_empty() {
            tracing::info!(pipeline = %chain.version.spec.name, events = counted.len(), "Inputs already counted in the kept state; acking them without counting them again.");
            for delivery in &counted {
                delivery.receipt.ack().await;
            }
            Stats::add(&self.stats.already_counted, counted.len());
        }
        if fresh.is_empty() {
            return;
        }
        let (events, receipts): (Vec<Event>, Vec<Receipt>) = fresh.into_iter().map(|d| (d.event, d.receipt)).unzip();
        let through = receipts.iter().filter_map(|r| r.sequence).max().unwrap_or(0).max(kept.counted_through);
        let mut delay = RETRY_DELAYS.0;
        loop {
            match self.attempt(chain, &events, &receipts, Some((kept, through))).await {
                Ok(counts) => {
                    kept.counted_through = through;
                    return self.settle(&receipts, counts).await;
                }
                Err(error) => {
                    Stats::add(&self.stats.failed_batches, 1);
                    tracing::error!(
                        pipeline = %chain.version.spec.name, error = format!("{error:#}"), retry_in = ?delay,
                        "The batch failed; the sink goes back to its last kept state and the batch is retried."
                    );
                    if let Err(error) = tokio::task::block_in_place(|| chain.rollback()) {
                        tracing::error!(pipeline = %chain.version.spec.name, error = format!("{error:#}"), "Cannot restart the sink from its kept state.");
                    }
                    tokio::time::sleep(delay).await;
                    if *self.shutdown.borrow() {
                        return self.fail(&receipts).await;
                    }
                    delay = (delay * 2).min(RETRY_DELAYS.1);
                }
            }
        }
    }

    /// Runs a batch, publishes what it gives and, for a sink, stores its new
    /// state (`kept`, with the stream sequence the state now reaches).
    async fn attempt(&self, chain: &mut Chain, events: &[Event], receipts: &[Receipt], kept: Option<(&Kept, u64)>) -> Result<Counts> {
        // Plugins run synchronously; let the runtime move other tasks off this thread meanwhile.
        let result = tokio::task::block_in_place(|| chain.process(events)).context("a stage cannot be restarted")?;
        let mut counts = Counts { published: result.outputs.len(), rejected: result.rejects.len(), dropped: result.dropped, faults: result.faults };
        let outgoing = outgoing(&chain.version, events, receipts, result);
        let refused = self.publish(&chain.version, outgoing, events).await?;
        counts.published -= refused;
        counts.rejected += refused;
        keep(chain, kept).await?;
        Ok(counts)
    }

    /// Publishes outputs, then dead letters, among them one for each output
    /// the webhook refused (carrying `originals[origin]`, the event it came
    /// from). Returns how many were refused.
    async fn publish(&self, version: &PipelineVersion, outgoing: Outgoing, originals: &[Event]) -> Result<usize> {
        let Outgoing { outputs, origins, mut dead_letters } = outgoing;
        let refused = self.publisher.outputs(outputs).await.context("cannot publish the batch's outputs")?;
        let count = refused.len();
        for refused in refused {
            let reject = Reject { origin: origins[refused.index], stage: "output".into(), code: "webhook_refused".into(), property: None, message: refused.reason };
            let id = refused.message.headers.get("Nats-Msg-Id").map(|id| format!("{}:refused", id.as_str()));
            dead_letters.push(dead_letter(version, &reject, &originals[reject.origin], id));
        }
        self.publisher.dead_letters(dead_letters).await.context("cannot publish the batch's dead letters")?;
        Ok(count)
    }

    async fn settle(&self, receipts: &[Receipt], counts: Counts) {
        for receipt in receipts {
            receipt.ack().await;
        }
        Stats::add(&self.stats.published, counts.published);
        Stats::add(&self.stats.rejected, counts.rejected);
        Stats::add(&self.stats.dropped, counts.dropped);
        Stats::add(&self.stats.faults, counts.faults);
    }

    /// Tells the sink that time passed and publishes what that causes.
    async fn tick(&self, chain: &mut Chain, kept: &Kept) {
        let now = chain.version.sink.as_ref().map_or(0, |sink| sink.context.clock.now_ns());
        let events = match tokio::task::block_in_place(|| chain.tick(now)) {
            Ok(events) => events,
            Err(error) => {
                tracing::error!(pipeline = %chain.version.spec.name, error = format!("{error:#}"), "The sink cannot be restarted after a fault on tick.");
                return;
            }
        };
        let outputs = events
            .iter()
            .map(|event| {
                let mut headers = carried(&event.headers);
                stamp(&mut headers, &chain.version, Some(content_id(&chain.version, event)));
                Message { subject: event.subject.clone(), headers, body: event.body.clone().into() }
            })
            .collect::<Vec<_>>();
        // No input caused these: a refused one is dead-lettered as itself.
        let outgoing = Outgoing { origins: (0..outputs.len()).collect(), outputs, dead_letters: Vec::new() };
        let published = self.publish(&chain.version, outgoing, &events).await.context("cannot publish what the sink emitted on tick");
        let stored = match published {
            Ok(refused) => keep(chain, Some((kept, kept.counted_through))).await.map(|()| refused),
            Err(error) => Err(error),
        };
        match stored {
            Ok(refused) => {
                Stats::add(&self.stats.published, events.len() - refused);
                Stats::add(&self.stats.rejected, refused);
            }
            Err(error) => {
                tracing::error!(pipeline = %chain.version.spec.name, error = format!("{error:#}"), "The tick failed; the sink goes back to its last kept state and the next tick tries again.");
                if let Err(error) = tokio::task::block_in_place(|| chain.rollback()) {
                    tracing::error!(pipeline = %chain.version.spec.name, error = format!("{error:#}"), "Cannot restart the sink from its kept state.");
                }
            }
        }
    }

    async fn fail(&self, receipts: &[Receipt]) {
        Stats::add(&self.stats.failed_batches, 1);
        for receipt in receipts {
            receipt.nak(REDELIVERY_DELAY).await;
        }
    }
}

/// What a processed batch publishes.
struct Outgoing {
    outputs: Vec<Message>,
    /// For each output, the input it came from.
    origins: Vec<usize>,
    dead_letters: Vec<Message>,
}

/// The messages a processed batch publishes: outputs with the version headers,
/// and dead letters. Message ids derive from the input's stream position, so a
/// redelivered input yields the same ids and a stream drops the repeats.
fn outgoing(version: &PipelineVersion, inputs: &[Event], receipts: &[Receipt], result: BatchResult) -> Outgoing {
    let mut produced = vec![0usize; inputs.len()];
    let mut outputs = Vec::with_capacity(result.outputs.len());
    let mut origins = Vec::with_capacity(result.outputs.len());
    for output in result.outputs {
        let mut headers = carried(&output.event.headers);
        // A sink's events may come from a batch formed differently after a
        // redelivery: their ids derive from their content instead.
        let id = if version.sink.is_some() {
            Some(content_id(version, &output.event))
        } else {
            receipts[output.origin].id.as_ref().map(|id| format!("{id}:{}", produced[output.origin]))
        };
        stamp(&mut headers, version, id);
        produced[output.origin] += 1;
        origins.push(output.origin);
        outputs.push(Message { subject: output.event.subject, headers, body: output.event.body.into() });
    }
    let dead_letters = result
        .rejects
        .iter()
        .map(|reject| dead_letter(version, reject, &inputs[reject.origin], receipts[reject.origin].id.as_ref().map(|id| format!("{id}:dead-letter"))))
        .collect();
    Outgoing { outputs, origins, dead_letters }
}

/// The envelope of a refused event, to `<dead_letter>.<stage>`; the
/// original's headers (trace ids, say) go with it.
fn dead_letter(version: &PipelineVersion, reject: &Reject, original: &Event, message_id: Option<String>) -> Message {
    let spec = &version.spec;
    let mut headers = carried(&original.headers);
    stamp(&mut headers, version, message_id);
    let body = DeadLetter::new(&spec.name, &version.id, reject, original).to_json();
    Message { subject: format!("{}.{}", spec.dead_letter, reject.stage), headers, body: body.into() }
}

/// Commits the sink's state and, where it is kept, stores it.
async fn keep(chain: &mut Chain, kept: Option<(&Kept, u64)>) -> Result<()> {
    let snapshot = chain.commit().map(<[u8]>::to_vec);
    if let (Some((Kept { store: Some(store), .. }, sequence)), Some(snapshot)) = (kept, snapshot) {
        store.save(&Saved { sequence, snapshot }).await?;
    }
    Ok(())
}

/// A message id from the pipeline, subject and body: the same event emitted
/// again (after a retry or a restart) is dropped by the stream.
fn content_id(version: &PipelineVersion, event: &Event) -> String {
    let mut hash = Sha256::new();
    for part in [version.spec.name.as_bytes(), event.subject.as_bytes(), &event.body] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}:{hex}", version.spec.name)
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
