//! Reading a pipeline's input in batches: from a JetStream durable pull
//! consumer (at least once: acked only after the outputs are published), or
//! from a core subscription in a queue group (best effort). Every worker opens
//! its own reader on the same consumer or queue group, and so does every other
//! host running the pipeline: NATS spreads the events among them.

use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{AckKind, Message as JetStreamMessage};
use futures::Stream;
use tokio_stream::StreamExt;

use super::Connection;
use crate::config::{InputSpec, PipelineSpec};
use crate::plugin::Event;

/// One input event and how to settle it.
pub struct Delivery {
    pub event: Event,
    pub receipt: Receipt,
}

/// The most inputs a sink with `state_every` holds unacked, waiting for
/// its state to be stored; it stores sooner rather than hold more.
pub const HELD_INPUTS: usize = 16_384;

/// What is left of a delivery once its event is taken: its name, and how to
/// ack or nak it.
pub struct Receipt {
    /// A stable name for this input event (`STREAM:sequence`), from which
    /// output message ids are derived so that a redelivery does not duplicate
    /// outputs in a stream with a duplicate window.
    pub id: Option<String>,
    /// The event's position in its stream (JetStream only).
    pub sequence: Option<u64>,
    /// How many times JetStream has handed this event out, this time
    /// included; `None` for a core event, which is never handed out again.
    pub delivered: Option<u64>,
    /// When the event arrived: stored in its stream (JetStream's timestamp),
    /// or received by this host (core).
    pub arrived: std::time::SystemTime,
    settle: Settle,
}

// Nearly every delivery is a JetStream one: boxing it would cost an
// allocation per event to save memory only on core inputs.
#[allow(clippy::large_enum_variant)]
enum Settle {
    JetStream(JetStreamMessage),
    Core,
}

impl Receipt {
    /// Lets go of the client's read buffer, for a receipt kept unsettled a
    /// while (a sink with `state_every` holds thousands): its subjects, parts
    /// of that buffer, would keep the whole buffer alive.
    pub fn detach(&mut self) {
        if let Settle::JetStream(message) = &mut self.settle {
            message.message.subject = message.message.subject.as_str().into();
            message.message.reply = message.message.reply.as_ref().map(|reply| reply.as_str().into());
        }
    }

    /// Marks the event done (core events need nothing); false if JetStream
    /// did not take the ack.
    pub async fn ack(&self) -> bool {
        if let Settle::JetStream(message) = &self.settle
            && let Err(error) = message.ack().await
        {
            tracing::warn!(%error, subject = %message.subject, "Cannot ack a JetStream message; it will be redelivered.");
            return false;
        }
        true
    }

    /// Tells JetStream the event is still being worked on, so that it is not
    /// handed to another worker while this one retries.
    pub async fn in_progress(&self) {
        if let Settle::JetStream(message) = &self.settle {
            let _ = message.ack_with(AckKind::Progress).await;
        }
    }

    /// Asks for the event again after `delay` (JetStream; a core event is
    /// lost); false if JetStream did not take the nak.
    pub async fn nak(&self, delay: Duration) -> bool {
        if let Settle::JetStream(message) = &self.settle
            && let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await
        {
            tracing::warn!(%error, subject = %message.subject, "Cannot nak a JetStream message; it will be redelivered after ack_wait.");
            return false;
        }
        true
    }
}

pub type Batches = Pin<Box<dyn Stream<Item = Vec<Delivery>> + Send>>;

/// What a pipeline reads from; opened once, then one reader per worker.
pub enum Source {
    JetStream(Box<PullConsumer>),
    Core { subject: String, queue: String },
}

impl Source {
    /// Finds the stream and creates or updates the durable consumer.
    pub async fn open(connection: &Connection, spec: &PipelineSpec) -> Result<Self> {
        match &spec.input {
            InputSpec::Core { subject, queue } => Ok(Source::Core { subject: subject.clone(), queue: queue.clone() }),
            InputSpec::JetStream { subject, stream, durable, ack_wait, .. } => {
                let stream_handle = connection
                    .jetstream
                    .get_stream(stream)
                    .await
                    .with_context(|| format!("it reads from stream `{stream}`, which the server does not have: declare it with [[stream]] or create it"))?;
                // Room for each worker's batches in flight (`worker::IN_FLIGHT`),
                // the one it runs and the next ones filling: at the cap, a
                // batch cannot fill and waits out its `max_wait`.
                // A sink that stores its state periodically holds its inputs
                // unacked until then, up to `HELD_INPUTS`.
                let held = if spec.state_every.is_some() { HELD_INPUTS } else { 0 };
                let in_flight = spec.workers * spec.max_events * 8 + held;
                let consumer = stream_handle
                    .create_consumer(pull::Config {
                        durable_name: Some(durable.clone()),
                        filter_subject: subject.clone(),
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: *ack_wait,
                        // Unlimited on the server, which would drop an event silently
                        // past its limit: the worker counts deliveries itself and
                        // dead-letters an event past `max_deliver` as `undeliverable`.
                        max_deliver: -1,
                        max_ack_pending: i64::try_from(in_flight).unwrap_or(i64::MAX),
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("cannot create or update the durable consumer `{durable}` on stream `{stream}`"))?;
                Ok(Source::JetStream(Box::new(consumer)))
            }
        }
    }

    /// For a reader that must see its input in order (a sink's): if inputs
    /// were handed to an earlier reader and not settled (a host that stopped,
    /// crashed or lost its lease with a batch read ahead), waits until
    /// JetStream hands them out again (`ack_wait` after their delivery), so
    /// that they come to the new reader before anything newer. Without the
    /// wait, newer inputs would come first and the older ones would then
    /// look already counted.
    pub async fn wait_for_unsettled(&self, pipeline: &str) {
        let Source::JetStream(consumer) = self else { return };
        match consumer.get_info().await {
            Ok(info) if info.num_ack_pending > 0 => {
                let wait = info.config.ack_wait;
                tracing::info!(
                    pipeline, unsettled = info.num_ack_pending, wait = ?wait,
                    "Inputs handed to an earlier reader are not settled; waiting until they are handed out again, so that the sink sees them first."
                );
                tokio::time::sleep(wait).await;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(pipeline, %error, "Cannot read the consumer's state; reading without waiting for unsettled inputs."),
        }
    }

    /// A JetStream input's backlog: messages not yet handed out, handed out
    /// and not acked, and handed out more than once and not acked. `None`
    /// for a core input, or when the server does not answer.
    pub async fn backlog(&self) -> Option<(u64, u64, u64)> {
        let Source::JetStream(consumer) = self else { return None };
        let info = consumer.get_info().await.ok()?;
        Some((info.num_pending, info.num_ack_pending as u64, info.num_redelivered as u64))
    }

    /// A stream of batches for one worker: up to `max_events`, waiting at most
    /// `max_wait` after the first event of a batch.
    pub async fn reader(&self, connection: &Connection, max_events: usize, max_wait: Duration) -> Result<Batches> {
        let deliveries: Pin<Box<dyn Stream<Item = Delivery> + Send>> = match self {
            Source::JetStream(consumer) => {
                let messages = consumer
                    .stream()
                    .max_messages_per_batch(max_events.max(64))
                    .messages()
                    .await
                    .context("cannot start pulling from the JetStream consumer")?;
                Box::pin(messages.filter_map(|message| match message {
                    Ok(message) => Some(from_jetstream(message)),
                    Err(error) => {
                        tracing::warn!(%error, "Error while pulling from JetStream; continuing.");
                        None
                    }
                }))
            }
            Source::Core { subject, queue } => {
                let subscriber = connection
                    .client
                    .queue_subscribe(subject.clone(), queue.clone())
                    .await
                    .with_context(|| format!("cannot subscribe to {subject} in queue group {queue}"))?;
                // The server knows the subscription once this returns.
                connection.client.flush().await.with_context(|| format!("cannot subscribe to {subject}: the flush after it failed"))?;
                Box::pin(subscriber.map(|message| Delivery {
                    event: Event { subject: message.subject.to_string(), headers: headers(message.headers.as_ref()), body: message.payload.to_vec() },
                    receipt: Receipt { id: None, sequence: None, delivered: None, arrived: std::time::SystemTime::now(), settle: Settle::Core },
                }))
            }
        };
        Ok(Box::pin(deliveries.chunks_timeout(max_events, max_wait)))
    }
}

fn from_jetstream(mut message: JetStreamMessage) -> Delivery {
    let info = message.info().ok();
    let id = info.as_ref().map(|info| format!("{}:{}", info.stream, info.stream_sequence));
    let sequence = info.as_ref().map(|info| info.stream_sequence);
    let delivered = info.as_ref().map(|info| u64::try_from(info.delivered).unwrap_or(1));
    let arrived = info
        .as_ref()
        .and_then(|info| u64::try_from(info.published.unix_timestamp_nanos()).ok())
        .map_or_else(std::time::SystemTime::now, |ns| std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns));
    let event = Event { subject: message.subject.to_string(), headers: headers(message.headers.as_ref()), body: message.payload.to_vec() };
    // The receipt needs the reply subject to settle the message, nothing of
    // what it carried.
    message.message.payload = bytes::Bytes::new();
    message.message.headers = None;
    Delivery { event, receipt: Receipt { id, sequence, delivered, arrived, settle: Settle::JetStream(message) } }
}

fn headers(map: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(map) = map else { return Vec::new() };
    map.iter().flat_map(|(name, values)| values.iter().map(move |value| (name.to_string(), value.to_string()))).collect()
}
