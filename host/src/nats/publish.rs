//! Publishing a batch's outputs and dead letters, and making sure they
//! arrived before the inputs are acked: through JetStream, every publish
//! acknowledgement is awaited (all at once, never one at a time); on core
//! NATS, the connection is flushed. A pipeline with a webhook output POSTs
//! each output to it instead (dead letters still go to NATS).

use anyhow::{Context, Result, bail};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::future::try_join_all;

use super::Connection;
use crate::config::{PipelineSpec, WebhookSpec};

/// One message to publish.
pub struct Message {
    pub subject: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// A refused input on its way to the dead-letter subject: always NATS.
    pub dead_letter: bool,
}

#[derive(Clone)]
pub struct Publisher {
    connection: Connection,
    jetstream: bool,
    webhook: Option<Webhook>,
}

impl Publisher {
    pub fn new(connection: Connection, spec: &PipelineSpec) -> Result<Self> {
        let webhook = spec.webhook.as_ref().map(|w| Webhook::new(w)).transpose()?;
        Ok(Self { connection, jetstream: spec.output_jetstream, webhook })
    }

    pub async fn publish_all(&self, messages: Vec<Message>) -> Result<()> {
        let Some(webhook) = &self.webhook else { return self.to_nats(messages).await };
        let (dead_letters, outputs): (Vec<Message>, Vec<Message>) = messages.into_iter().partition(|m| m.dead_letter);
        // In order: an alert's `resolved` must not overtake its `firing`.
        for message in &outputs {
            webhook.deliver(message).await?;
        }
        self.to_nats(dead_letters).await
    }

    async fn to_nats(&self, messages: Vec<Message>) -> Result<()> {
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

/// An HTTP endpoint taking one POST per output, e.g. a pager's or a chat
/// tool's incoming webhook. Failures that may pass (no connection, a timeout,
/// 408, 429, 5xx) are retried with a doubling wait; the others fail at once.
/// Either way a failed output fails its batch, which JetStream redelivers.
#[derive(Clone)]
struct Webhook {
    client: reqwest::Client,
    spec: WebhookSpec,
    /// The URL posted to; logs name the endpoint by `shown` instead, since
    /// a URL from the environment carries a secret.
    url: String,
    shown: String,
}

impl Webhook {
    fn new(spec: &WebhookSpec) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(spec.timeout)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client for its webhook")?;
        let url = spec.url.resolve().map_err(anyhow::Error::msg)?;
        Ok(Self { client, spec: spec.clone(), url, shown: spec.url.shown() })
    }

    async fn deliver(&self, message: &Message) -> Result<()> {
        let mut wait = self.spec.backoff;
        for attempt in 1..=self.spec.attempts {
            let outcome = self.post(message).await;
            match outcome {
                Ok(()) => return Ok(()),
                Err(Failure::Permanent(reason)) => bail!("the webhook {} refused the event on {}: {reason}", self.shown, message.subject),
                Err(Failure::Passing(reason)) if attempt == self.spec.attempts => {
                    bail!("the webhook {} failed {} times for the event on {}; last: {reason}", self.shown, attempt, message.subject)
                }
                Err(Failure::Passing(reason)) => {
                    tracing::warn!(url = %self.shown, subject = %message.subject, attempt, retry_in = ?wait, %reason, "Webhook delivery failed; retrying.");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(600));
                }
            }
        }
        Ok(())
    }

    async fn post(&self, message: &Message) -> Result<(), Failure> {
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Sluice-Subject", &message.subject)
            .body(message.body.clone());
        // The message id lets the receiver drop a repeat after a retry.
        if let Some(id) = message.headers.get("Nats-Msg-Id") {
            request = request.header("Idempotency-Key", id.as_str());
        }
        // Without the URL: it may carry a secret, and the log names the endpoint.
        let response = request.send().await.map_err(|e| Failure::Passing(error_chain(&e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let reason = format!("HTTP {status}: {}", text.chars().take(200).collect::<String>());
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 { Err(Failure::Passing(reason)) } else { Err(Failure::Permanent(reason)) }
    }
}

enum Failure {
    /// Worth another attempt.
    Passing(String),
    /// The receiver says the request itself is wrong.
    Permanent(String),
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
