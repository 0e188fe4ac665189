//! Publishing a batch's outputs and dead letters, and making sure they
//! arrived before the inputs are acked: through JetStream, every publish
//! acknowledgement is awaited (all at once, never one at a time); on core
//! NATS, the connection is flushed.

use anyhow::{Context, Result};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::future::try_join_all;

use super::Connection;

/// One message to publish.
pub struct Message {
    pub subject: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct Publisher {
    connection: Connection,
    jetstream: bool,
}

impl Publisher {
    pub fn new(connection: Connection, jetstream: bool) -> Self {
        Self { connection, jetstream }
    }

    pub async fn publish_all(&self, messages: Vec<Message>) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        if self.jetstream {
            let mut acks = Vec::with_capacity(messages.len());
            for message in messages {
                let subject = message.subject;
                let ack = self
                    .connection
                    .jetstream
                    .publish_with_headers(subject.clone(), message.headers, message.body)
                    .await
                    .with_context(|| format!("cannot publish to {subject}"))?;
                acks.push(async move {
                    ack.await.with_context(|| format!("JetStream did not store the message on {subject} (output.jetstream = true needs a stream that captures it)"))
                });
            }
            try_join_all(acks).await?;
        } else {
            for message in messages {
                let subject = message.subject;
                self.connection
                    .client
                    .publish_with_headers(subject.clone(), message.headers, message.body)
                    .await
                    .with_context(|| format!("cannot publish to {subject}"))?;
            }
            self.connection.client.flush().await.context("cannot flush published messages to NATS")?;
        }
        Ok(())
    }
}
