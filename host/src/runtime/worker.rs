//! One worker of one pipeline: read a batch, run it through the chain, publish
//! the outputs and dead letters, then ack the inputs. A new pipeline version is
//! taken up only between two batches, so a swap never splits a batch, loses
//! an event or processes one twice. Its instances are started on another
//! thread while the worker goes on with the running version, so that under
//! load a swap holds output up no longer than handing a sink's state over.
//!
//! A transform pipeline's worker does not wait for NATS to confirm a
//! batch's messages before it runs the next: once they are sent, their
//! answers are awaited, and the batch's inputs settled, beside the next
//! batches (`IN_FLIGHT` at most). An input is still acked only once every
//! message it produced is stored; shutdown settles what is in flight. A
//! sink's batches and outputs to a webhook go one at a time, in order.
//!
//! One event never holds up another. Each message gets its own answer from
//! NATS: a failure that may pass (the connection, a timeout) is retried in
//! place until it does; a message NATS refuses for what it is (too large, a
//! subject no stream stores) holds back only the input it came from, which
//! is redelivered later and, on its `max_deliver`th delivery, dead-lettered
//! as `undeliverable` with the reason. An input handed out more often than
//! that without being settled (a host crashing on it) is dead-lettered too.
//!
//! A pipeline that ends in a sink (one worker) also keeps the sink's state in
//! a key-value bucket after each batch and tick, before acking, and reads it
//! back at start. Batches and ticks share one path: publish, store the state,
//! settle. The sink sees every event once and in order. With `state_every`,
//! the state is stored at most that often (and on every tick, swap and
//! shutdown), and the inputs it counted are held unacked until then: a large
//! state is not written after every batch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::lease::Fence;
use super::messages::{self, Kind, Outbound, Source as Origin, Stamp};
use super::stats::Stats;
use crate::config::InputSpec;
use crate::nats::Connection;
use crate::nats::input::{Batches, Delivery, HELD_INPUTS, Receipt, Source};
use crate::nats::publish::{Answers, Failure, Message, Publisher};
use crate::nats::state::{Saved, StateStore};
use crate::pipeline::{BatchResult, Chain, PipelineVersion, Reject};
use crate::plugin::Event;

/// How long JetStream waits before redelivering an event held back here; it
/// doubles with each delivery, up to `LONGEST_REDELIVERY_DELAY`.
const REDELIVERY_DELAY: Duration = Duration::from_secs(1);
const LONGEST_REDELIVERY_DELAY: Duration = Duration::from_secs(30);
/// Batches of a transform pipeline a worker may have sent and not yet seen
/// confirmed while it runs the next: the consumer lets each worker have
/// eight batches unacked (`Source::open`).
const IN_FLIGHT: usize = 3;
/// Pause before reopening an input that ended unexpectedly.
const REOPEN_DELAY: Duration = Duration::from_millis(500);
/// First and longest pause before sending again what failed in place.
const RETRY_DELAYS: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

/// Where a sink's state is kept, and how far into the input it reaches.
struct Kept {
    store: Option<StateStore>,
    /// Stream sequence of the last input the stored state has counted.
    counted_through: u64,
    /// Stream sequence of the last input the live sink has counted.
    consumed_through: u64,
    /// Inputs the live sink counted, acked once its state is stored.
    held: Vec<Receipt>,
    /// When the state was last stored.
    stored_at: std::time::Instant,
    /// The live sink took a batch or tick whose outputs are not out (shutdown
    /// came first): its state is not to be stored as it is.
    unpublished: bool,
}

impl Kept {
    fn new(store: Option<StateStore>, counted_through: u64) -> Self {
        Self { store, counted_through, consumed_through: counted_through, held: Vec::new(), stored_at: std::time::Instant::now(), unpublished: false }
    }

    /// Whether the state is to be stored after a batch of `events`.
    fn due(&self, every: Option<Duration>, events: usize, max_events: usize) -> bool {
        every.is_none_or(|every| self.stored_at.elapsed() >= every || self.held.len() + events + max_events > HELD_INPUTS)
    }
}

/// What a sink's batch or tick brought, for `finish`: the inputs (none for
/// a tick), how far into the input the state then reaches, and its counts.
struct Step<'a> {
    inputs: &'a [Event],
    receipts: &'a [Receipt],
    through: u64,
    dropped: usize,
    faults: usize,
}

/// What publishing a batch's messages came to.
#[derive(Default)]
struct Delivered {
    outputs: usize,
    dead_letters: usize,
    /// Messages NATS kept refusing, and why.
    given_up: Vec<(Outbound, String)>,
}

/// A new version's chain being started on a blocking thread (its
/// instances' `init` may read granted files through WASI's blocking calls).
struct Starting {
    version: Arc<PipelineVersion>,
    /// The chain, and how long it took to start.
    chain: tokio::task::JoinHandle<anyhow::Result<(Chain, Duration)>>,
}

impl Starting {
    /// Starts the newest version's chain.
    fn begin(versions: &mut watch::Receiver<Arc<PipelineVersion>>) -> Self {
        let version = versions.borrow_and_update().clone();
        let chain = tokio::task::spawn_blocking({
            let version = version.clone();
            move || {
                let began = std::time::Instant::now();
                Chain::start(version).map(|chain| (chain, began.elapsed()))
            }
        });
        Self { version, chain }
    }
}

pub struct Worker {
    pub index: usize,
    pub connection: Connection,
    pub source: Arc<Source>,
    pub publisher: Publisher,
    pub versions: watch::Receiver<Arc<PipelineVersion>>,
    pub stats: Arc<Stats>,
    /// Who taps the pipeline on this host.
    pub taps: Arc<super::tap::Taps>,
    pub shutdown: watch::Receiver<bool>,
    /// A sink's worker runs under this host's lease (see `lease`).
    pub fence: Option<Fence>,
}

impl Worker {
    pub async fn run(self, batches: Batches) -> anyhow::Result<()> {
        // Its own view of the versions and of shutdown; the rest is shared
        // with the batches it has in flight.
        let (versions, shutdown) = (self.versions.clone(), self.shutdown.clone());
        Arc::new(self).serve(batches, versions, shutdown).await
    }

    async fn serve(
        self: Arc<Self>,
        mut batches: Batches,
        mut versions: watch::Receiver<Arc<PipelineVersion>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let version = versions.borrow_and_update().clone();
        let (name, max_events, max_wait) = (version.spec.name.clone(), version.spec.max_events, version.spec.max_wait);
        let mut chain = tokio::task::block_in_place(|| Chain::start(version))?;
        // Only a pipeline that ends in a sink keeps state and is told that time passes.
        let has_sink = chain.version.sink.is_some();
        let mut kept = if has_sink { self.restore(&mut chain).await } else { Kept::new(None, 0) };
        // The first tick comes at once: an alert stage announces itself
        // (its heartbeat) as soon as it runs.
        let mut ticker = tokio::time::interval(chain.version.spec.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Batches whose messages are out and whose answers are awaited
        // while the next one runs (outputs to NATS, not to a sink's state).
        let mut in_flight = tokio::task::JoinSet::new();
        tracing::debug!(pipeline = %name, worker = self.index, "Worker started.");
        let state_every = chain.version.spec.state_every;
        // A new version's chain, started off this worker while it goes on
        // with the running one: swapping it in costs the worker no more
        // than handing over the sink's state.
        let mut starting: Option<Starting> = None;
        loop {
            // Inputs a sink holds are acked once its state is stored: when no
            // batch comes to store it, the time does.
            let store_at = tokio::time::Instant::from_std(kept.stored_at + state_every.unwrap_or_default());
            let batch = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                started = async { (&mut starting.as_mut().expect("guarded").chain).await }, if starting.is_some() => {
                    let version = starting.take().expect("guarded").version;
                    self.swap(&mut chain, version, started);
                    if versions.has_changed().unwrap_or(false) {
                        starting = Some(Starting::begin(&mut versions));
                    }
                    continue;
                }
                Ok(()) = versions.changed(), if starting.is_none() => {
                    starting = Some(Starting::begin(&mut versions));
                    continue;
                }
                _ = tokio::time::sleep_until(store_at), if !kept.held.is_empty() => {
                    if self.fenced_out(&name) {
                        break;
                    }
                    self.store_held(&mut chain, &mut kept).await;
                    continue;
                }
                _ = ticker.tick(), if has_sink => {
                    if self.fenced_out(&name) {
                        break;
                    }
                    self.tick(&mut chain, &mut kept).await;
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
            if has_sink {
                if self.fenced_out(&name) {
                    break;
                }
                self.handle_in_order(&mut chain, batch, &mut kept).await;
                if self.fenced_out(&name) {
                    break;
                }
            } else {
                self.handle(&mut chain, batch, &mut in_flight).await;
            }
        }
        // What is in flight is settled before the worker stops; what a sink
        // holds is stored and settled, unless another host holds the lease
        // now (it is handed the held inputs again).
        while let Some(done) = in_flight.join_next().await {
            settled(Some(done));
        }
        if !kept.held.is_empty() && self.fence.as_ref().is_none_or(|fence| fence.holds()) {
            self.store_held(&mut chain, &mut kept).await;
        }
        tracing::debug!(pipeline = %name, worker = self.index, "Worker stopped.");
        Ok(())
    }

    /// Whether this sink's lease ran out (this host was frozen or cut off
    /// for a while): another host may run the sink now, so this worker
    /// starts no batch or tick more. A batch under way is finished (its
    /// outputs are out; its state and acks must follow them). What it has
    /// read and not started is left unacked, for the holder to be given.
    fn fenced_out(&self, pipeline: &str) -> bool {
        let out = self.fence.as_ref().is_some_and(|fence| !fence.holds());
        if out {
            tracing::error!(pipeline, worker = self.index, "The lease of the pipeline's sink ran out; this worker stops before its next batch.");
        }
        out
    }

    /// Takes up a version whose chain has started (`started`), or keeps the
    /// running one if it could not start here. The running chain's sink
    /// hands its state over to the new chain's.
    fn swap(&self, chain: &mut Chain, version: Arc<PipelineVersion>, started: Result<anyhow::Result<(Chain, Duration)>, tokio::task::JoinError>) {
        let (mut new, start) = match started.map_err(anyhow::Error::from).and_then(|started| started) {
            Ok(started) => started,
            Err(error) => {
                return tracing::error!(
                    pipeline = %version.spec.name, worker = self.index, version = %version.id, error = format!("{error:#}"),
                    "Cannot start the new version in this worker; keeping the running one."
                );
            }
        };
        let paused = std::time::Instant::now();
        let has_sink = chain.version.sink.is_some();
        let mut hand_over = || {
            chain
                .hand_over()
                .context("cannot take the sink's state to hand it over")
                .and_then(|state| new.take_over(state).context("the new sink cannot take the state over"))
        };
        // Only a sink has a state to hand over, which calls into both instances.
        let handed = if has_sink { tokio::task::block_in_place(hand_over) } else { hand_over() };
        match handed {
            Ok(()) => {
                let old = std::mem::replace(chain, new);
                let (from, to) = (old.version.id.clone(), &chain.version.id);
                // Its instances' memories are unmapped beside too.
                tokio::task::spawn_blocking(move || drop(old));
                // `start_us`: what starting the version took, beside; `paused_us`: what the swap held this worker up.
                let (start_us, paused_us) = (start.as_micros() as u64, paused.elapsed().as_micros() as u64);
                tracing::debug!(pipeline = %version.spec.name, worker = self.index, %from, %to, start_us, paused_us, "Worker swapped version.");
            }
            Err(error) => tracing::error!(
                pipeline = %version.spec.name, worker = self.index, version = %version.id, error = format!("{error:#}"),
                "Cannot hand the sink's state over to the new version; keeping the running one."
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
                return Kept::new(None, 0);
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
        Kept::new(Some(store), counted_through)
    }

    /// A batch for a transform pipeline: processed and its messages sent
    /// now, in order; their answers awaited and its inputs settled beside
    /// the next batches, at most `IN_FLIGHT` batches at a time (for outputs
    /// to a webhook, which takes them in order, before the next batch).
    async fn handle(self: &Arc<Self>, chain: &mut Chain, batch: Vec<Delivery>, in_flight: &mut tokio::task::JoinSet<()>) {
        Stats::add(&self.stats.received, batch.len());
        self.stats.batch_events.observe(batch.len() as f64);
        let batch = self.expired(&chain.version, batch).await;
        if batch.is_empty() {
            return;
        }
        let (events, receipts): (Vec<Event>, Vec<Receipt>) = batch.into_iter().map(|d| (d.event, d.receipt)).unzip();
        if self.taps.any() {
            self.tap_inputs(&chain.version, &events).await;
        }
        self.tap_stages(chain);
        // Plugins run synchronously; let the runtime move other tasks off this thread meanwhile.
        let mut result = match tokio::task::block_in_place(|| chain.process(&events)) {
            Ok(result) => result,
            Err(error) => {
                tracing::error!(pipeline = %chain.version.spec.name, error = format!("{error:#}"), "A stage cannot be restarted; the batch will be redelivered (JetStream) or is lost (core).");
                return self.fail(&receipts).await;
            }
        };
        if !result.tapped.is_empty() {
            self.tap_stage_outputs(&chain.version, std::mem::take(&mut result.tapped)).await;
        }
        let (dropped, faults) = (result.dropped, result.faults);
        count_rejects(&chain.version.spec.name, &result);
        let stamp = self.stamp(&chain.version);
        let ids: Vec<Option<String>> = receipts.iter().map(|r| r.id.clone()).collect();
        let outbound = messages::batch(stamp, &events, &ids, result);
        if self.taps.any() {
            self.tap_outbound(&chain.version, &outbound).await;
        }
        if !self.publisher.pipelines() {
            return self.complete(chain.version.clone(), outbound, events, receipts, None, (dropped, faults)).await;
        }
        while in_flight.len() >= IN_FLIGHT {
            settled(in_flight.join_next().await);
        }
        let sent = {
            let (outputs, dead_letters) = split(&outbound);
            self.publisher.start(&outputs, &dead_letters).await
        };
        let (worker, version) = (self.clone(), chain.version.clone());
        in_flight.spawn(async move { worker.complete(version, outbound, events, receipts, Some(sent), (dropped, faults)).await });
    }

    /// The rest of a transform's batch once its messages are sent (`sent`,
    /// their answers to come) or are to be: delivered, held back or given
    /// up, then the inputs settled and the batch counted.
    async fn complete(
        &self,
        version: Arc<PipelineVersion>,
        outbound: Vec<Outbound>,
        events: Vec<Event>,
        receipts: Vec<Receipt>,
        sent: Option<BoxFuture<'static, Answers>>,
        (dropped, faults): (usize, usize),
    ) {
        let stamp = self.stamp(&version);
        let Some(mut delivered) = self.deliver(stamp, outbound, sent, &events, &receipts).await else { return self.fail(&receipts).await };
        let mut held: BTreeMap<usize, String> = BTreeMap::new();
        for (outbound, reason) in std::mem::take(&mut delivered.given_up) {
            if let Origin::Input(origin) = outbound.source {
                held.entry(origin).or_insert(reason);
            }
        }
        for (index, receipt) in receipts.iter().enumerate() {
            match held.get(&index) {
                Some(reason) => self.hold_back(stamp, &version, &events[index], receipt, reason).await,
                None => self.settle(receipt).await,
            }
        }
        self.count(&delivered, dropped, faults);
    }

    /// A batch for a sink: inputs the kept state already counted are acked
    /// and passed over; the rest goes to the sink once, and its outputs and
    /// new state are stored, retried in place until they are, before the
    /// inputs are acked.
    async fn handle_in_order(&self, chain: &mut Chain, batch: Vec<Delivery>, kept: &mut Kept) {
        Stats::add(&self.stats.received, batch.len());
        self.stats.batch_events.observe(batch.len() as f64);
        let (counted, fresh): (Vec<Delivery>, Vec<Delivery>) =
            batch.into_iter().partition(|d| d.receipt.sequence.is_some_and(|sequence| sequence <= kept.consumed_through));
        if !counted.is_empty() {
            tracing::info!(pipeline = %chain.version.spec.name, events = counted.len(), "Inputs already counted in the kept state; acking them without counting them again.");
            for delivery in counted {
                // Counted by the live sink only: acked once its state is stored.
                if delivery.receipt.sequence.is_some_and(|sequence| sequence > kept.counted_through) {
                    let mut receipt = delivery.receipt;
                    receipt.detach();
                    kept.held.push(receipt);
                } else {
                    self.ack(&delivery.receipt).await;
                }
                Stats::add(&self.stats.already_counted, 1);
            }
        }
        let fresh = self.expired(&chain.version, fresh).await;
        if fresh.is_empty() {
            return;
        }
        let (events, receipts): (Vec<Event>, Vec<Receipt>) = fresh.into_iter().map(|d| (d.event, d.receipt)).unzip();
        if self.taps.any() {
            self.tap_inputs(&chain.version, &events).await;
        }
        let through = receipts.iter().filter_map(|r| r.sequence).max().unwrap_or(0).max(kept.consumed_through);
        let mut delay = RETRY_DELAYS.0;
        self.tap_stages(chain);
        let mut result = loop {
            match tokio::task::block_in_place(|| chain.process(&events)) {
                Ok(result) => break result,
                Err(error) => {
                    Stats::add(&self.stats.failed_batches, 1);
                    tracing::error!(pipeline = %chain.version.spec.name, error = format!("{error:#}"), retry_in = ?delay, "A stage cannot be restarted; the sink goes back to its last kept state and the batch is tried again.");
                    if let Err(error) = tokio::task::block_in_place(|| chain.rollback()) {
                        tracing::error!(pipeline = %chain.version.spec.name, error = format!("{error:#}"), "Cannot restart the sink from its kept state.");
                    }
                    if !self.pause(&mut delay).await {
                        return self.fail(&receipts).await;
                    }
                }
            }
        };
        if !result.tapped.is_empty() {
            self.tap_stage_outputs(&chain.version, std::mem::take(&mut result.tapped)).await;
        }
        let (dropped, faults) = (result.dropped, result.faults);
        count_rejects(&chain.version.spec.name, &result);
        let version = chain.version.clone();
        let stamp = self.stamp(&version);
        let ids: Vec<Option<String>> = receipts.iter().map(|r| r.id.clone()).collect();
        let outbound = messages::batch(stamp, &events, &ids, result);
        if self.taps.any() {
            self.tap_outbound(&version, &outbound).await;
        }
        let store = kept.due(version.spec.state_every, receipts.len(), version.spec.max_events);
        let step = Step { inputs: &events, receipts: &receipts, through, dropped, faults };
        if !self.finish(stamp, chain, kept, outbound, step, store).await {
            kept.unpublished = true;
            return self.fail(&receipts).await;
        }
        kept.consumed_through = through;
        if store {
            kept.held.extend(receipts);
            self.settle_held(kept).await;
        } else {
            // Held until the state is stored.
            kept.held.extend(receipts.into_iter().map(|mut receipt| {
                receipt.detach();
                receipt
            }));
        }
    }

    /// Acks the inputs the stored state counted.
    async fn settle_held(&self, kept: &mut Kept) {
        kept.counted_through = kept.consumed_through;
        kept.stored_at = std::time::Instant::now();
        for receipt in std::mem::take(&mut kept.held) {
            self.settle(&receipt).await;
        }
    }

    /// Stores the state the live sink has and acks what it counted, when no
    /// batch came to do it or the worker stops: without what it took after
    /// its last published outputs, if shutdown cut a batch or tick short.
    async fn store_held(&self, chain: &mut Chain, kept: &mut Kept) {
        if kept.unpublished
            && let Err(error) = tokio::task::block_in_place(|| chain.rollback())
        {
            tracing::error!(pipeline = %chain.version.spec.name, error = format!("{error:#}"), "Cannot take the sink back to its published outputs; its held inputs are left unacked.");
            return;
        }
        if self.store(chain, kept, kept.consumed_through).await {
            self.settle_held(kept).await;
        } else {
            // Tried: the next try comes after `state_every` again.
            kept.stored_at = std::time::Instant::now();
        }
    }

    /// Tells the sink that time passed and publishes what that causes.
    async fn tick(&self, chain: &mut Chain, kept: &mut Kept) {
        let now = chain.version.sink.as_ref().map_or(0, |sink| sink.context.clock.now_ns());
        let events = match tokio::task::block_in_place(|| chain.tick(now)) {
            Ok(events) => events,
            Err(error) => {
                tracing::error!(pipeline = %chain.version.spec.name, error = format!("{error:#}"), "The sink cannot be restarted after a fault on tick.");
                return;
            }
        };
        let version = chain.version.clone();
        let stamp = self.stamp(&version);
        let outbound = messages::emitted(stamp, events);
        // Shutting down: the state of before the tick stays kept, and the next start ticks again.
        let step = Step { inputs: &[], receipts: &[], through: kept.consumed_through, dropped: 0, faults: 0 };
        if self.finish(stamp, chain, kept, outbound, step, true).await {
            self.settle_held(kept).await;
        } else {
            kept.unpublished = true;
        }
    }

    /// What a sink's batch or tick shares: publish its messages, dead-letter
    /// those NATS keeps refusing (a sink cannot hold back one input: it has
    /// counted them all), then store the sink's state (when `store`). False
    /// when shutdown came first: nothing of it may be acked.
    async fn finish(&self, stamp: Stamp<'_>, chain: &mut Chain, kept: &Kept, outbound: Vec<Outbound>, step: Step<'_>, store: bool) -> bool {
        let Step { inputs, receipts, through, dropped, faults } = step;
        let Some(mut delivered) = self.deliver(stamp, outbound, None, inputs, receipts).await else { return false };
        for (outbound, reason) in std::mem::take(&mut delivered.given_up) {
            let original = match outbound.source {
                // The dead letter of one of the sink's inputs: the sink has
                // counted the rest, so the input cannot be held back.
                Origin::Input(_) if outbound.kind == Kind::DeadLetter => {
                    tracing::error!(pipeline = stamp.pipeline, subject = %outbound.message.subject, %reason, "A dead letter cannot be stored; it is lost.");
                    Stats::add(&self.stats.lost_dead_letters, 1);
                    continue;
                }
                Origin::Input(index) => inputs[index].clone(),
                Origin::Itself => messages::original_of(&outbound.message),
            };
            let id = outbound.message.headers.get("Nats-Msg-Id").map(|id| format!("{id}:undeliverable"));
            let reject = undeliverable("output", reason);
            if self.dead_letter_alone(stamp, &reject, &original, id, receipts).await == Some(true) {
                delivered.dead_letters += 1;
            }
        }
        if store {
            if !self.store(chain, kept, through).await {
                return false;
            }
        } else {
            chain.published();
        }
        self.count(&delivered, dropped, faults);
        true
    }

    /// Publishes `pending` until every message is delivered or given up:
    /// what may pass is sent again in place, with a doubling wait, for as
    /// long as it takes; what NATS refuses is given up at once, so that it
    /// stalls nothing (its input is redelivered later, which also covers a
    /// stream still being recovered after a server restart). An output the
    /// webhook refused for good is replaced by its dead letter
    /// (`webhook_refused`). `sent`: the answers to `pending` when it was sent
    /// already. `None`: shutdown came first.
    async fn deliver(
        &self,
        stamp: Stamp<'_>,
        mut pending: Vec<Outbound>,
        mut sent: Option<BoxFuture<'static, Answers>>,
        inputs: &[Event],
        receipts: &[Receipt],
    ) -> Option<Delivered> {
        let mut delivered = Delivered::default();
        let mut delay = RETRY_DELAYS.0;
        loop {
            let (mut output_answers, dead_letter_answers) = match sent.take() {
                Some(sent) => sent.await,
                None => {
                    let (outputs, dead_letters) = split(&pending);
                    self.publisher.send(&outputs, &dead_letters).await
                }
            };
            // Answers back in the order of `pending`: outputs first, then dead letters.
            let mut answers = {
                let mut dead_letter_answers = dead_letter_answers.into_iter();
                output_answers.reverse();
                pending
                    .iter()
                    .map(|o| if o.kind == Kind::Output { output_answers.pop().flatten() } else { dead_letter_answers.next().flatten() })
                    .collect::<Vec<_>>()
                    .into_iter()
            };
            let (mut again, mut passing) = (Vec::new(), None);
            for outbound in std::mem::take(&mut pending) {
                match answers.next().flatten() {
                    None if outbound.kind == Kind::Output => delivered.outputs += 1,
                    None => delivered.dead_letters += 1,
                    Some(Failure::WebhookRefused(reason)) => {
                        let original = match outbound.source {
                            Origin::Input(index) => inputs[index].clone(),
                            Origin::Itself => messages::original_of(&outbound.message),
                        };
                        let reject = Reject { origin: 0, stage: "output".into(), code: "webhook_refused".into(), property: None, message: reason };
                        let id = outbound.message.headers.get("Nats-Msg-Id").map(|id| format!("{id}:refused"));
                        again.push(Outbound { message: messages::dead_letter(stamp, &reject, &original, id), kind: Kind::DeadLetter, source: outbound.source });
                    }
                    Some(Failure::Refused(reason)) => delivered.given_up.push((outbound, reason)),
                    Some(Failure::Passing(reason)) => {
                        passing.get_or_insert(reason);
                        again.push(outbound);
                    }
                }
            }
            if again.is_empty() {
                return Some(delivered);
            }
            if let Some(reason) = passing {
                Stats::add(&self.stats.publish_retries, 1);
                tracing::warn!(pipeline = stamp.pipeline, messages = again.len(), %reason, retry_in = ?delay, "Cannot deliver some messages now; trying again.");
            }
            pending = again;
            for receipt in receipts {
                receipt.in_progress().await;
            }
            if !self.pause(&mut delay).await {
                return None;
            }
        }
    }

    /// An input whose messages NATS keeps refusing: redelivered later, or,
    /// on its last delivery, dead-lettered as `undeliverable` with the reason.
    /// A core input has no second delivery.
    async fn hold_back(&self, stamp: Stamp<'_>, version: &PipelineVersion, event: &Event, receipt: &Receipt, reason: &str) {
        let max = max_deliver(version);
        match receipt.delivered {
            Some(delivered) if delivered < max => {
                let delay = REDELIVERY_DELAY.saturating_mul(1 << delivered.min(16)).min(LONGEST_REDELIVERY_DELAY);
                tracing::warn!(pipeline = stamp.pipeline, subject = %event.subject, delivered, max_deliver = max, %reason, redeliver_in = ?delay, "Holding back one event whose messages NATS refuses; the rest of its batch goes on.");
                Stats::add(&self.stats.held_back, 1);
                self.nak(receipt, delay).await;
            }
            delivered => {
                let times = delivered.map_or_else(|| "once (a core input is not redelivered)".to_string(), |n| format!("{n} times (max_deliver = {max})"));
                let reject = undeliverable("output", format!("{reason}; delivered {times}"));
                let id = receipt.id.as_ref().map(|id| format!("{id}:undeliverable"));
                match self.dead_letter_alone(stamp, &reject, event, id, std::slice::from_ref(receipt)).await {
                    Some(true) => {
                        Stats::add_local(&self.stats.rejected, 1);
                        self.ack(receipt).await;
                    }
                    _ => self.nak(receipt, LONGEST_REDELIVERY_DELAY).await,
                }
            }
        }
    }

    /// Dead-letters inputs handed out more than `max_deliver` times without
    /// being settled (a host that crashed on them, say), and returns the rest.
    async fn expired(&self, version: &PipelineVersion, batch: Vec<Delivery>) -> Vec<Delivery> {
        let max = max_deliver(version);
        let (over, rest): (Vec<Delivery>, Vec<Delivery>) = batch.into_iter().partition(|d| d.receipt.delivered.is_some_and(|n| n > max));
        let stamp = self.stamp(version);
        for delivery in over {
            let delivered = delivery.receipt.delivered.unwrap_or_default();
            let reject = undeliverable(
                "input",
                format!(
                    "handed out {delivered} times, more than max_deliver = {max}, without being settled: a host stopped or crashed while it was in flight, or what it produced could not be stored"
                ),
            );
            let id = delivery.receipt.id.as_ref().map(|id| format!("{id}:undeliverable"));
            match self.dead_letter_alone(stamp, &reject, &delivery.event, id, std::slice::from_ref(&delivery.receipt)).await {
                Some(true) => {
                    Stats::add_local(&self.stats.rejected, 1);
                    self.ack(&delivery.receipt).await;
                }
                _ => self.nak(&delivery.receipt, LONGEST_REDELIVERY_DELAY).await,
            }
        }
        rest
    }

    /// Publishes one dead letter; `Some(true)` once it is stored, `Some(false)`
    /// when NATS refuses even that (logged), `None` at shutdown.
    async fn dead_letter_alone(&self, stamp: Stamp<'_>, reject: &Reject, original: &Event, id: Option<String>, receipts: &[Receipt]) -> Option<bool> {
        let message = messages::dead_letter(stamp, reject, original, id);
        let subject = message.subject.clone();
        let outbound = vec![Outbound { message, kind: Kind::DeadLetter, source: Origin::Itself }];
        let delivered = self.deliver(stamp, outbound, None, &[], receipts).await?;
        match delivered.given_up.first() {
            None => {
                Stats::add(&self.stats.undeliverable, 1);
                crate::metrics::metrics().reject(stamp.pipeline, &reject.stage, &reject.code);
                tracing::error!(pipeline = stamp.pipeline, subject = %original.subject, stage = %reject.stage, reason = %reject.message, "An event is undeliverable; it went to the dead-letter subject.");
                Some(true)
            }
            Some((_, reason)) => {
                Stats::add(&self.stats.lost_dead_letters, 1);
                tracing::error!(pipeline = stamp.pipeline, %subject, %reason, "NATS refuses the dead letter of an undeliverable event too.");
                Some(false)
            }
        }
    }

    /// Commits the sink's state and stores it where it is kept, trying again
    /// in place until it is stored. False when shutdown came first.
    async fn store(&self, chain: &mut Chain, kept: &Kept, sequence: u64) -> bool {
        let snapshot = match tokio::task::block_in_place(|| chain.commit().map(|state| state.map(<[u8]>::to_vec))) {
            Ok(snapshot) => snapshot,
            Err(error) => {
                Stats::add(&self.stats.failed_batches, 1);
                tracing::error!(pipeline = %chain.version.spec.name, error = format!("{error:#}"), "Cannot take the sink's state; its inputs are left unacked.");
                return false;
            }
        };
        let (Some(snapshot), Some(store)) = (snapshot, kept.store.as_ref()) else { return true };
        let saved = Saved { sequence, snapshot };
        let mut delay = RETRY_DELAYS.0;
        let state = &self.stats.sink_state;
        state.bytes.set(saved.snapshot.len() as i64);
        loop {
            let started = std::time::Instant::now();
            let stored = store.save(&saved).await;
            state.store_seconds.observe(started.elapsed().as_secs_f64());
            match stored {
                Ok(()) => return true,
                Err(error) => {
                    Stats::add(&self.stats.failed_batches, 1);
                    tracing::error!(pipeline = %chain.version.spec.name, key = store.key(), error = format!("{error:#}"), retry_in = ?delay, "Cannot store the sink's state; trying again before acking.");
                    if !self.pause(&mut delay).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Waits `delay`, doubled for next time; false if shutdown came first.
    async fn pause(&self, delay: &mut Duration) -> bool {
        let mut shutdown = self.shutdown.clone();
        let waited = tokio::select! {
            _ = tokio::time::sleep(*delay) => true,
            _ = shutdown.wait_for(|stop| *stop) => false,
        };
        *delay = (*delay * 2).min(RETRY_DELAYS.1);
        waited
    }

    fn stamp<'a>(&self, version: &'a PipelineVersion) -> Stamp<'a> {
        Stamp::new(version, self.connection.client.max_payload())
    }

    /// Copies the batch's inputs to whoever taps the input.
    async fn tap_inputs(&self, version: &PipelineVersion, events: &[Event]) {
        self.tap_events(version, &super::tap::Point::Input, events).await;
    }

    /// Copies events passing `point` to whoever taps it.
    async fn tap_events(&self, version: &PipelineVersion, point: &super::tap::Point, events: &[Event]) {
        let copies = self.taps.offer(point, events.iter().map(|e| (e.subject.as_str(), e.headers.clone(), e.body.as_slice())));
        self.send_taps(version, point, copies).await;
    }

    /// Which stages the next batch copies for taps.
    fn tap_stages(&self, chain: &mut Chain) {
        if self.taps.any() {
            chain.tapped = self.taps.stages();
        } else if !chain.tapped.is_empty() {
            chain.tapped.clear();
        }
    }

    /// Copies what the tapped stages passed on to whoever taps them.
    async fn tap_stage_outputs(&self, version: &PipelineVersion, tapped: Vec<(String, Vec<Event>)>) {
        for (stage, events) in tapped {
            self.tap_events(version, &super::tap::Point::Stage(stage), &events).await;
        }
    }

    /// Copies the batch's outputs and dead letters to whoever taps them.
    async fn tap_outbound(&self, version: &PipelineVersion, outbound: &[Outbound]) {
        use super::tap::Point;
        for (point, kind) in [(Point::Output, Kind::Output), (Point::DeadLetters, Kind::DeadLetter)] {
            let passing = outbound.iter().filter(|o| o.kind == kind).map(|o| {
                let headers = o.message.headers.iter().flat_map(|(n, vs)| vs.iter().map(move |v| (n.to_string(), v.to_string()))).collect();
                (o.message.subject.as_str(), headers, o.message.body.as_ref())
            });
            let copies = self.taps.offer(&point, passing);
            self.send_taps(version, &point, copies).await;
        }
    }

    async fn send_taps(&self, version: &PipelineVersion, point: &super::tap::Point, copies: Vec<(String, Passing<'_>)>) {
        if copies.is_empty() {
            return;
        }
        let host = crate::release::host_name();
        for (inbox, (subject, headers, body)) in copies {
            let (shown, body_cut) = super::tap::shown_body(body);
            let tapped = super::tap::Tapped {
                host: host.clone(),
                pipeline: version.spec.name.clone(),
                version: version.id.clone(),
                point: point.clone(),
                subject: subject.to_string(),
                headers,
                body: shown,
                body_bytes: body.len(),
                body_cut,
            };
            if let Ok(bytes) = serde_json::to_vec(&tapped)
                && let Err(error) = self.connection.client.publish(inbox, bytes.into()).await
            {
                tracing::debug!(%error, "Cannot send a tapped event.");
            }
        }
    }

    /// Acks an input, counting an ack JetStream did not take.
    async fn ack(&self, receipt: &Receipt) {
        if !receipt.ack().await {
            Stats::add(&self.stats.settle_failures, 1);
        }
    }

    /// Asks for an input again after `delay`, counting a nak JetStream did not take.
    async fn nak(&self, receipt: &Receipt, delay: Duration) {
        if !receipt.nak(delay).await {
            Stats::add(&self.stats.settle_failures, 1);
        }
    }

    /// Acks an input whose outputs are stored, and measures how long since
    /// it arrived.
    async fn settle(&self, receipt: &Receipt) {
        self.ack(receipt).await;
        let waited = receipt.arrived.elapsed().unwrap_or_default();
        self.stats.latency.observe(self.index, waited);
    }

    fn count(&self, delivered: &Delivered, dropped: usize, faults: usize) {
        Stats::add(&self.stats.published, delivered.outputs);
        Stats::add_local(&self.stats.rejected, delivered.dead_letters);
        Stats::add(&self.stats.dropped, dropped);
        Stats::add_local(&self.stats.faults, faults);
    }

    async fn fail(&self, receipts: &[Receipt]) {
        Stats::add(&self.stats.failed_batches, 1);
        for receipt in receipts {
            self.nak(receipt, REDELIVERY_DELAY).await;
        }
    }
}

/// A batch in flight came to an end; one that panicked left its inputs
/// unsettled, for JetStream to hand out again after `ack_wait`.
fn settled(done: Option<Result<(), tokio::task::JoinError>>) {
    if let Some(Err(error)) = done {
        tracing::error!(%error, "A batch in flight stopped before its inputs were settled; they will be redelivered.");
    }
}

/// The outputs and the dead letters among `outbound`, in its order.
fn split(outbound: &[Outbound]) -> (Vec<&Message>, Vec<&Message>) {
    let (outputs, dead_letters): (Vec<&Outbound>, Vec<&Outbound>) = outbound.iter().partition(|o| o.kind == Kind::Output);
    (outputs.into_iter().map(|o| &o.message).collect(), dead_letters.into_iter().map(|o| &o.message).collect())
}

/// How many deliveries an input may have; a core input has one.
fn max_deliver(version: &PipelineVersion) -> u64 {
    match &version.spec.input {
        InputSpec::JetStream { max_deliver, .. } => *max_deliver,
        InputSpec::Core { .. } => 1,
    }
}

fn undeliverable(stage: &str, message: String) -> Reject {
    Reject { origin: 0, stage: stage.into(), code: "undeliverable".into(), property: None, message }
}

/// The metric of refused events, by the stage that refused each and its code.
fn count_rejects(pipeline: &str, result: &BatchResult) {
    let metrics = crate::metrics::metrics();
    for reject in &result.rejects {
        metrics.reject(pipeline, &reject.stage, &reject.code);
    }
}

/// An event at a tapped point: its subject, headers and body.
type Passing<'a> = (&'a str, Vec<(String, String)>, &'a [u8]);
