//! Publishing a batch's outputs and dead letters, and making sure they
//! arrived before the inputs are acked: through JetStream, every publish
//! acknowledgement is awaited (all at once, never one at a time); on core
//! NATS, the connection is flushed. A pipeline with a webhook output POSTs
//! each output to it instead; what the endpoint refuses for good comes back
//! to the caller, to be dead-lettered. Dead letters always go to NATS.

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
}

/// An output the webhook refused for good (a 4xx other than 408 and 429):
/// sent again, it would be refused again.
pub struct Refused {
    /// Its place among the outputs given to [`Publisher::outputs`].
    pub index: usize,
    pub message: Message,
    pub reason: String,
}

#[derive(Clone)]
pub struct Publisher {
    connection: Connection,
    jetstream: bool,
    webhook: Option<Webhook>,
}

impl Publisher {
    pub fn new(connection: Connection, spec: &PipelineSpec) -> Result<Self> {
        let webhook = spec.webhook.as_ref().map(Webhook::new).transpose()?;
        Ok(Self { connection, jetstream: spec.output_jetstream, webhook })
    }

    /// Publishes outputs to NATS or POSTs them to the webhook. An error means
    /// some may not have arrived (the batch is to be tried again); the outputs
    /// the webhook refused for good are returned.
    pub async fn outputs(&self, messages: Vec<Message>) -> Result<Vec<Refused>> {
        let Some(webhook) = &self.webhook else { return self.to_nats(messages).await.map(|()| Vec::new()) };
        let mut refused = Vec::new();
        // In order: an alert's `resolved` must not overtake its `firing`.
        for (index, message) in messages.into_iter().enumerate() {
            if let Delivered::Refused(reason) = webhook.deliver(&message).await? {
                tracing::error!(url = %webhook.shown, subject = %message.subject, %reason, "The webhook refused an output for good; it goes to the dead-letter subject.");
                refused.push(Refused { index, message, reason: format!("the webhook {} refused it: {reason}", webhook.shown) });
            }
        }
        Ok(refused)
    }

    /// Publishes dead letters, always to NATS.
    pub async fn dead_letters(&self, messages: Vec<Message>) -> Result<()> {
        self.to_nats(messages).await
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
/// 408, 429, 5xx) are retried with a doubling wait, and when `attempts` run
/// out the output fails its batch, which JetStream redelivers. Any other
/// answer is a refusal of that output, not tried again.
#[derive(Clone)]
struct Webhook {
    client: reqwest::Client,
    spec: WebhookSpec,
    /// The URL posted to; logs name the endpoint by `shown` instead, since
    /// a URL from the environment carries a secret.
    url: String,
    shown: String,
    /// The pipeline's own headers; those read from a variable are marked
    /// sensitive, so that they are never printed.
    headers: reqwest::header::HeaderMap,
}

impl Webhook {
    fn new(spec: &WebhookSpec) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(spec.timeout)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client for its webhook")?;
        let url = spec.url.resolve_url().map_err(anyhow::Error::msg)?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &spec.headers {
            let what = format!("the webhook header {name}");
            let text = value.resolve(&what).map_err(anyhow::Error::msg)?;
            let mut header = reqwest::header::HeaderValue::from_str(&text).map_err(|_| anyhow::anyhow!("{what}, from {}, holds characters a header cannot carry", value.shown()))?;
            header.set_sensitive(value.variable().is_some());
            headers.insert(reqwest::header::HeaderName::from_bytes(name.as_bytes()).with_context(|| format!("{what} is not a header name"))?, header);
        }
        Ok(Self { client, spec: spec.clone(), url, shown: spec.url.shown(), headers })
    }

    /// POSTs one output, trying again (up to `attempts` in all) while the
    /// failure may pass.
    async fn deliver(&self, message: &Message) -> Result<Delivered> {
        let mut wait = self.spec.backoff;
        let mut attempt = 1;
        loop {
            match self.post(message).await {
                Ok(()) => return Ok(Delivered::Accepted),
                Err(Failure::Permanent(reason)) => return Ok(Delivered::Refused(reason)),
                Err(Failure::Passing(reason)) if attempt >= self.spec.attempts => {
                    bail!("the webhook {} failed {attempt} times for the event on {}; last: {reason}", self.shown, message.subject)
                }
                Err(Failure::Passing(reason)) => {
                    tracing::warn!(url = %self.shown, subject = %message.subject, attempt, retry_in = ?wait, %reason, "Webhook delivery failed; retrying.");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(600));
                    attempt += 1;
                }
            }
        }
    }

    async fn post(&self, message: &Message) -> Result<(), Failure> {
        let mut request = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
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

enum Delivered {
    Accepted,
    Refused(String),
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
