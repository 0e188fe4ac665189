//! The client connection: sized buffers so that a burst does not overflow a
//! subscription, and a count of the messages lost when one does anyway.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use async_nats::{Client, ConnectOptions, Event};

/// Messages a subscription may hold before the client drops them. Core NATS
/// drops silently when a subscriber falls behind; a deep buffer rides out
/// bursts, and [`Connection::slow_consumer_events`] counts what is lost anyway.
const SUBSCRIPTION_CAPACITY: usize = 1 << 20;
/// Outgoing messages the client may queue before `publish` waits.
const CLIENT_CAPACITY: usize = 1 << 16;

#[derive(Clone)]
pub struct Connection {
    pub client: Client,
    pub jetstream: async_nats::jetstream::Context,
    slow_consumer_events: Arc<AtomicU64>,
}

impl Connection {
    /// How many times the client reported a subscription overflowing (each
    /// report means at least one message was dropped).
    pub fn slow_consumer_events(&self) -> u64 {
        self.slow_consumer_events.load(Ordering::Relaxed)
    }
}

pub async fn connect(url: &str, name: &str) -> Result<Connection> {
    let slow = Arc::new(AtomicU64::new(0));
    let counter = slow.clone();
    let client = ConnectOptions::new()
        .name(name)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .client_capacity(CLIENT_CAPACITY)
        .event_callback(move |event| {
            let counter = counter.clone();
            async move {
                match event {
                    Event::SlowConsumer(sid) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(subscription = sid, "NATS subscription fell behind; the client dropped messages.");
                    }
                    Event::Disconnected => tracing::warn!("Disconnected from NATS; reconnecting."),
                    Event::Connected => tracing::info!("Connected to NATS."),
                    other => tracing::debug!(event = %other, "NATS client event."),
                }
            }
        })
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))?;
    let jetstream = async_nats::jetstream::new(client.clone());
    Ok(Connection { client, jetstream, slow_consumer_events: slow })
}
