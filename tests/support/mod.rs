//! Helpers shared by the test suite and the benchmarks: a real nats-server
//! on a free port, the `sluice` binary as a child process whose JSON log is
//! kept and queried (`sluice`), pipeline files built from parts (`pipeline`)
//! and written into a temporary folder, and collecting messages by subject.
//!
//! Each binary that includes this module uses a part of it.
#![allow(dead_code, unused_imports)]

mod pipeline;
mod process;
pub mod usage;

pub use pipeline::{Pipeline, PipelineFile};
pub use process::{Log, Sluice};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use sluice::nats::ManagedServer;

/// Publishes through JetStream, awaiting the acknowledgements a thousand at
/// a time (the client holds only so many unacknowledged publishes).
pub async fn publish_stored(jetstream: &jetstream::Context, messages: impl IntoIterator<Item = (String, Vec<u8>)>) {
    let mut acks = Vec::new();
    for (subject, body) in messages {
        acks.push(jetstream.publish(subject, body.into()).await.expect("publish to JetStream"));
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await.expect("JetStream stores the message");
            }
        }
    }
    for ack in acks {
        ack.await.expect("JetStream stores the message");
    }
}

/// The HMAC key the tests give the StoryForge pipeline.
pub const HASH_KEY: &str = "test-key-0123456789abcdef";

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A built plugin component. The plugins are built once, before the tests,
/// by `cargo xtask test` (or `cargo xtask plugins`).
pub fn plugin(name: &str) -> PathBuf {
    let path = root().join("target/wasm32-wasip2/release").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: build the plugins first with `cargo xtask plugins` (or run the tests with `cargo xtask test`)", path.display());
    path
}

/// A nats-server with JetStream on a free loopback port, and a client of it.
pub struct Nats {
    pub server: ManagedServer,
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
}

impl Nats {
    pub async fn start() -> Self {
        Self::start_with_config("").await
    }

    /// A server with these lines of configuration.
    pub async fn start_with_config(config: &str) -> Self {
        let server = ManagedServer::start_with_config(config).await.expect("nats-server starts (is it installed? `cargo xtask test` installs it)");
        let client = async_nats::ConnectOptions::new().subscription_capacity(1 << 20).connect(&server.url).await.expect("connect to nats-server");
        let jetstream = jetstream::new(client.clone());
        Self { server, client, jetstream }
    }

    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// Publishes through JetStream, awaiting the acknowledgements a thousand
    /// at a time (the client holds only so many unacknowledged publishes).
    pub async fn publish_stored(&self, messages: impl IntoIterator<Item = (String, Vec<u8>)>) {
        publish_stored(&self.jetstream, messages).await;
    }

    /// Every message a stream holds, read with a fresh ordered consumer.
    pub async fn stream_messages(&self, stream: &str) -> Vec<async_nats::Message> {
        self.stored(stream).await.into_iter().map(|(message, _)| message).collect()
    }

    /// Every message a stream holds, with when the stream stored it
    /// (nanoseconds since the Unix epoch).
    pub async fn stored(&self, stream: &str) -> Vec<(async_nats::Message, i128)> {
        let stream = self.jetstream.get_stream(stream).await.expect("stream exists");
        let count = stream.get_info().await.expect("stream info").state.messages as usize;
        let consumer = stream.create_consumer(jetstream::consumer::pull::OrderedConfig::default()).await.expect("ordered consumer");
        let mut messages = consumer.messages().await.expect("messages");
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let message = tokio::time::timeout(Duration::from_secs(10), messages.next()).await.expect("stream read in time");
            let message = message.expect("a message").expect("no error");
            let at = message.info().expect("a JetStream message").published.unix_timestamp_nanos();
            out.push((message.message, at));
        }
        out
    }
}

/// Publishes `events` test events on `raw.<n>` through JetStream, in chunks
/// of 100 with a pause between them: a steady stream that is still flowing
/// while a test swaps, kills or restarts the host.
pub fn publish_steadily(jetstream: &jetstream::Context, events: usize, pause: Duration) -> tokio::task::JoinHandle<()> {
    let jetstream = jetstream.clone();
    tokio::spawn(async move {
        for chunk in 0..events.div_ceil(100) {
            let mut acks = Vec::new();
            for n in chunk * 100..((chunk + 1) * 100).min(events) {
                acks.push(jetstream.publish(format!("raw.{n}"), event(n, serde_json::json!({})).into()).await.unwrap());
            }
            for ack in acks {
                ack.await.unwrap();
            }
            tokio::time::sleep(pause).await;
        }
    })
}

/// Messages received on a core subscription.
pub struct Collector(async_nats::Subscriber);

impl Collector {
    pub async fn subscribe(nats: &Nats, subject: &str) -> Self {
        let subscriber = nats.client.subscribe(subject.to_string()).await.expect("subscribe");
        nats.client.flush().await.expect("flush");
        Self(subscriber)
    }

    /// Waits for `count` messages; fails after `within`.
    pub async fn take(&mut self, count: usize, within: Duration) -> Vec<async_nats::Message> {
        let deadline = tokio::time::Instant::now() + within;
        let mut messages = Vec::with_capacity(count);
        while messages.len() < count {
            match tokio::time::timeout_at(deadline, self.0.next()).await {
                Ok(Some(message)) => messages.push(message),
                _ => panic!("expected {count} messages within {within:?}, got {}", messages.len()),
            }
        }
        messages
    }

    /// Whatever arrives until `quiet` passes with nothing new.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<async_nats::Message> {
        let mut messages = Vec::new();
        while let Ok(Some(message)) = tokio::time::timeout(quiet, self.0.next()).await {
            messages.push(message);
        }
        messages
    }
}

/// A temporary folder holding a pipeline file (and, for swap tests, copies of components).
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temporary folder") }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `pipeline.toml`, replacing `{plugin:NAME}` with the component's path.
    pub fn write_pipeline(&self, toml: &str) -> PathBuf {
        let path = self.path("pipeline.toml");
        write_atomically(&path, expand(toml).as_bytes());
        path
    }

    /// Copies a built plugin into the folder, so a test can change it on disk.
    pub fn copy_plugin(&self, name: &str, as_name: &str) -> PathBuf {
        let path = self.path(as_name);
        write_atomically(&path, &std::fs::read(plugin(name)).unwrap());
        path
    }
}

/// Replaces `{plugin:NAME}` by the path of the built plugin NAME.
pub fn expand(toml: &str) -> String {
    let mut out = toml.to_string();
    while let Some(start) = out.find("{plugin:") {
        let end = start + out[start..].find('}').unwrap();
        let name = out[start + 8..end].to_string();
        out.replace_range(start..=end, plugin(&name).to_str().unwrap());
    }
    out
}

/// Writes a file by renaming a complete temporary file over it, as deploy tools do.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let temporary = path.with_extension("tmp-write");
    std::fs::write(&temporary, bytes).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// A JSON test event with a sequence number.
pub fn event(n: usize, extra: serde_json::Value) -> Vec<u8> {
    let mut object = serde_json::json!({ "event": "scene_generated", "user_id": format!("u-{}", n % 7), "n": n });
    if let serde_json::Value::Object(extra) = extra {
        object.as_object_mut().unwrap().extend(extra);
    }
    serde_json::to_vec(&object).unwrap()
}

pub fn json(message: &async_nats::Message) -> serde_json::Value {
    serde_json::from_slice(&message.payload).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&message.payload)))
}

pub fn header(message: &async_nats::Message, name: &str) -> Option<String> {
    message.headers.as_ref()?.get(name).map(|v| v.to_string())
}

/// Waits until `condition` holds; fails after 90 seconds.
pub async fn wait_until<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    while !condition().await {
        assert!(Instant::now() < deadline, "condition not met within 90s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many messages a stream holds.
pub async fn stream_count(nats: &Nats, stream: &str) -> u64 {
    nats.jetstream.get_stream(stream).await.expect("stream exists").get_info().await.expect("stream info").state.messages
}
