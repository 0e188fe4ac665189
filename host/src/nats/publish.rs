//! Publishing a batch's outputs and dead letters, and making sure they
//! arrived before the inputs are acked: through JetStream, every publish
//! acknowledgement is awaited (all at once, never one at a time); on core
//! NATS, the connection is flushed. A pipeline with a webhook output POSTs
//! each output to it instead. Dead letters always go to NATS.
//!
//! Each message gets its own answer, so that the worker holds back only the
//! events whose messages failed, and can tell a failure that may pass (the
//! connection) from one tied to the message (too large, no stream for it).

use anyhow::{Context, Result, bail};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::future::{BoxFuture, join_all};

use super::Connection;
use crate::config::{PipelineSpec, WebhookSpec};

/// One message to publish.
pub struct Message {
    pub subject: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why one message was not delivered.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// It may pass: the connection is down, an acknowledgement timed out, a
    /// webhook is failing. Worth sending again as it is.
    Passing(String),
    /// NATS or the stream refused this message for what it is: too large,
    /// a subject no stream captures, a limit of the stream's own. Sent again,
    /// it will most likely be refused again.
    Refused(String),
    /// The webhook answered a 4xx (other than 408 and 429): it will never
    /// take this output.
    WebhookRefused(String),
}

#[derive(Clone)]
pub struct Publisher {
    connection: Connection,
    jetstream: bool,
    webhook: Option<Webhook>,
}

impl Publisher {
    pub fn new(connection: Connection, spec: &PipelineSpec) -> Result<Self> {
        let webhook = spec.webhook.as_ref().map(|webhook| Webhook::new(webhook, &spec.name)).transpose()?;
        Ok(Self { connection, jetstream: spec.output_jetstream, webhook })
    }

    /// Publishes outputs to NATS or POSTs them to the webhook, and dead
    /// letters to NATS; one answer per message, `None` for delivered.
    pub async fn send(&self, outputs: &[&Message], dead_letters: &[&Message]) -> Answers {
        match &self.webhook {
            Some(webhook) => futures::join!(webhook.deliver_in_order(outputs), async { self.to_nats(dead_letters).await.await }),
            None => self.start(outputs, dead_letters).await.await,
        }
    }

    /// Whether outputs may be sent before an earlier batch's are confirmed:
    /// to NATS, yes; a webhook takes them one after the other, in order.
    pub fn pipelines(&self) -> bool {
        self.webhook.is_none()
    }

    /// Sends outputs and dead letters to NATS now, in order, and returns
    /// what waits for their answers (JetStream's acknowledgements, or a
    /// flush), which needs nothing of the batch: it may be awaited while
    /// the next batch is processed and sent. Not for a webhook's outputs.
    pub async fn start(&self, outputs: &[&Message], dead_letters: &[&Message]) -> BoxFuture<'static, Answers> {
        debug_assert!(self.pipelines(), "a webhook's outputs are posted in order, not started");
        let outputs = self.to_nats(outputs).await;
        let dead_letters = self.to_nats(dead_letters).await;
        Box::pin(async move { futures::join!(outputs, dead_letters) })
    }

    /// Sends `messages` and returns what waits for their answers.
    async fn to_nats(&self, messages: &[&Message]) -> BoxFuture<'static, Vec<Option<Failure>>> {
        if messages.is_empty() {
            return Box::pin(async { Vec::new() });
        }
        if self.jetstream {
            let mut acks = Vec::with_capacity(messages.len());
            for message in messages {
                let published = self.connection.jetstream.publish_with_headers(message.subject.clone(), message.headers.clone(), message.body.clone()).await;
                let subject = message.subject.clone();
                acks.push(async move {
                    match published {
                        Ok(ack) => ack.await.err().map(|e| stored_failure(&subject, &e)),
                        Err(e) => Some(sent_failure(&subject, &e)),
                    }
                });
            }
            Box::pin(join_all(acks))
        } else {
            let mut answers = Vec::with_capacity(messages.len());
            for message in messages {
                let published = self.connection.client.publish_with_headers(message.subject.clone(), message.headers.clone(), message.body.clone()).await;
                answers.push(published.err().map(|e| match e.kind() {
                    async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                        Failure::Refused(format!("NATS refused the message on {}: {e}", message.subject))
                    }
                    _ => Failure::Passing(format!("cannot publish to {}: {e}", message.subject)),
                }));
            }
            let client = self.connection.client.clone();
            Box::pin(async move {
                if let Err(error) = client.flush().await {
                    let reason = format!("cannot flush published messages to NATS: {error}");
                    return answers.into_iter().map(|a| a.or_else(|| Some(Failure::Passing(reason.clone())))).collect();
                }
                answers
            })
        }
    }
}

/// One answer per message of a batch, outputs' then dead letters'; `None`
/// for delivered.
pub type Answers = (Vec<Option<Failure>>, Vec<Option<Failure>>);

/// A JetStream publish that did not leave the client.
fn sent_failure(subject: &str, error: &async_nats::jetstream::context::PublishError) -> Failure {
    use async_nats::jetstream::context::PublishErrorKind as Kind;
    match error.kind() {
        Kind::MaxPayloadExceeded => Failure::Refused(format!("NATS refused the message on {subject}: {error}")),
        _ => Failure::Passing(format!("cannot publish to {subject}: {error}")),
    }
}

/// A JetStream publish that was sent but not stored. No stream capturing the
/// subject, or an error the stream answered with, are about this message;
/// a timeout or a lost connection are not.
fn stored_failure(subject: &str, error: &async_nats::jetstream::context::PublishError) -> Failure {
    use async_nats::jetstream::context::PublishErrorKind as Kind;
    let answered = std::error::Error::source(error).is_some_and(|source| source.downcast_ref::<async_nats::jetstream::Error>().is_some());
    match error.kind() {
        Kind::StreamNotFound => Failure::Refused(format!("no JetStream stream stores {subject} (output.jetstream = true needs a stream that captures it)")),
        Kind::Other if answered => Failure::Refused(format!("the stream refused the message on {subject}: {}", error_chain(error))),
        _ => Failure::Passing(format!("JetStream did not confirm the message on {subject}: {}", error_chain(error))),
    }
}

/// An HTTP endpoint taking one POST per output, e.g. a pager's or a chat
/// tool's incoming webhook. Failures that may pass (no connection, a timeout,
/// 408, 429, 5xx) are retried with a doubling wait; when `attempts` run out,
/// that output and the ones after it are answered as passing failures, for
/// the worker to send again later, in order. Any other answer is a refusal
/// of that output, not tried again.
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
    /// Requests accepted, refused for good, and tries that failed (metrics).
    accepted: prometheus_client::metrics::counter::Counter,
    refused: prometheus_client::metrics::counter::Counter,
    failed: prometheus_client::metrics::counter::Counter,
}

impl Webhook {
    fn new(spec: &WebhookSpec, pipeline: &str) -> Result<Self> {
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
            let mut header = reqwest::header::HeaderValue::from_str(&text)
                .map_err(|_| anyhow::anyhow!("{what}, from {}, holds characters a header cannot carry", value.shown()))?;
            header.set_sensitive(value.variable().is_some());
            headers.insert(reqwest::header::HeaderName::from_bytes(name.as_bytes()).with_context(|| format!("{what} is not a header name"))?, header);
        }
        let metrics = crate::metrics::metrics();
        Ok(Self {
            client,
            spec: spec.clone(),
            url,
            shown: spec.url.shown(),
            headers,
            accepted: metrics.webhook(pipeline, "accepted"),
            refused: metrics.webhook(pipeline, "refused"),
            failed: metrics.webhook(pipeline, "failed"),
        })
    }

    /// POSTs outputs one after the other: an alert's `resolved` must not
    /// overtake its `firing`, so once one cannot be delivered now, neither
    /// are those after it.
    async fn deliver_in_order(&self, messages: &[&Message]) -> Vec<Option<Failure>> {
        let mut answers = Vec::with_capacity(messages.len());
        for message in messages {
            let answer = match self.deliver(message).await {
                Ok(Delivered::Accepted) => None,
                Ok(Delivered::Refused(reason)) => {
                    tracing::error!(url = %self.shown, subject = %message.subject, %reason, "The webhook refused an output for good; it goes to the dead-letter subject.");
                    Some(Failure::WebhookRefused(format!("the webhook {} refused it: {reason}", self.shown)))
                }
                Err(error) => Some(Failure::Passing(format!("{error:#}"))),
            };
            let stop = matches!(answer, Some(Failure::Passing(_)));
            answers.push(answer);
            if stop {
                let reason = format!("an earlier output to the webhook {} is not delivered yet", self.shown);
                answers.resize(messages.len(), Some(Failure::Passing(reason)));
                break;
            }
        }
        answers
    }

    /// POSTs one output, trying again (up to `attempts` in all) while the
    /// failure may pass.
    async fn deliver(&self, message: &Message) -> Result<Delivered> {
        let mut wait = self.spec.backoff;
        let mut attempt = 1;
        loop {
            let posted = self.post(message).await;
            match &posted {
                Ok(()) => self.accepted.inc(),
                Err(PostFailure::Permanent(_)) => self.refused.inc(),
                Err(PostFailure::Passing(_)) => self.failed.inc(),
            };
            match posted {
                Ok(()) => return Ok(Delivered::Accepted),
                Err(PostFailure::Permanent(reason)) => return Ok(Delivered::Refused(reason)),
                Err(PostFailure::Passing(reason)) if attempt >= self.spec.attempts => {
                    bail!("the webhook {} failed {attempt} times for the event on {}; last: {reason}", self.shown, message.subject)
                }
                Err(PostFailure::Passing(reason)) => {
                    tracing::warn!(url = %self.shown, subject = %message.subject, attempt, retry_in = ?wait, %reason, "Webhook delivery failed; retrying.");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(600));
                    attempt += 1;
                }
            }
        }
    }

    async fn post(&self, message: &Message) -> Result<(), PostFailure> {
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
        let response = request.send().await.map_err(|e| PostFailure::Passing(error_chain(&e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let reason = format!("HTTP {status}: {}", text.chars().take(200).collect::<String>());
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(PostFailure::Passing(reason))
        } else {
            Err(PostFailure::Permanent(reason))
        }
    }
}

enum Delivered {
    Accepted,
    Refused(String),
}

enum PostFailure {
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
