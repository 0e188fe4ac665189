//! Helpers shared by every test: a real nats-server on a free port, the
//! `sluice` binary as a child process with its log captured, pipeline files
//! written into a temporary folder, and collecting messages by subject.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use sluice::nats::ManagedServer;

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
        let mut acks = Vec::new();
        for (subject, body) in messages {
            acks.push(self.jetstream.publish(subject, body.into()).await.expect("publish to JetStream"));
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

/// A `sluice` process whose output is kept for assertions and shown on failure.
pub struct Sluice {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// Read stdout and stderr until the process closes them; joined so that no line is missed.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Sluice {
    /// `sluice run FILE --nats URL`, waiting until `pipelines` pipelines have started.
    pub fn run(file: &Path, nats_url: &str, pipelines: usize) -> Self {
        let sluice = Self::spawn(&["run", file.to_str().unwrap(), "--nats", nats_url, "--stats-interval", "1s"]);
        sluice.wait_for_log("Pipeline started.", pipelines, Duration::from_secs(60));
        sluice
    }

    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_key(args, Some(HASH_KEY))
    }

    /// Like `spawn`, with `STORYFORGE_HASH_KEY` set to `key` or unset.
    pub fn spawn_with_key(args: &[&str], key: Option<&str>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        match key {
            Some(key) => command.env("STORYFORGE_HASH_KEY", key),
            None => command.env_remove("STORYFORGE_HASH_KEY"),
        };
        Self::spawn_command(command, args)
    }

    /// Like `spawn`, with these environment variables set too.
    pub fn spawn_with_env(args: &[&str], vars: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.env("STORYFORGE_HASH_KEY", HASH_KEY).envs(vars.iter().copied());
        Self::spawn_command(command, args)
    }

    /// Like `spawn`, with these environment variables unset.
    pub fn spawn_without(args: &[&str], names: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        for name in names {
            command.env_remove(name);
        }
        Self::spawn_command(command, args)
    }

    /// `sluice run FILE --nats URL` with these environment variables set,
    /// waiting until `pipelines` pipelines have started.
    pub fn run_with_env(file: &Path, nats_url: &str, pipelines: usize, vars: &[(&str, &str)]) -> Self {
        let sluice = Self::spawn_with_env(&["run", file.to_str().unwrap(), "--nats", nats_url, "--stats-interval", "1s"], vars);
        sluice.wait_for_log("Pipeline started.", pipelines, Duration::from_secs(60));
        sluice
    }

    fn spawn_command(mut command: Command, args: &[&str]) -> Self {
        let mut child = command
            .args(args)
            .current_dir(root())
            .env("SLUICE_LOG", "info,sluice=debug,async_nats=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice");
        let log = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![read_lines(child.stdout.take().unwrap(), log.clone()), read_lines(child.stderr.take().unwrap(), log.clone())];
        Self { child, log, readers }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until `needle` has appeared on `count` lines of the log.
    pub fn wait_for_log(&self, needle: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).count();
            if seen >= count {
                return;
            }
            if Instant::now() > deadline {
                panic!("expected {count} log lines with {needle:?} within {within:?}; sluice logged:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) -> String {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let status = self.child.wait().expect("sluice exits");
        self.finish_reading();
        assert!(status.success(), "sluice exited with {status}; log:\n{}", self.log());
        self.log()
    }

    /// SIGKILL: no draining, no acks, no flush.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself.
    pub fn wait(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().expect("sluice exits");
        self.finish_reading();
        (status, self.log())
    }
}

impl Sluice {
    fn finish_reading(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

fn read_lines(stream: impl std::io::Read + Send + 'static, log: Arc<Mutex<Vec<String>>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            log.lock().unwrap().push(line);
        }
    })
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// A counter of the last progress line in a sluice log (`received=...`).
pub fn progress(log: &str, counter: &str) -> u64 {
    counter_of(log.lines().rev().find(|l| l.contains("Progress.")), log, counter)
}

/// A counter of the last progress line of one pipeline.
pub fn pipeline_progress(log: &str, pipeline: &str, counter: &str) -> u64 {
    let name = format!("pipeline={pipeline} ");
    counter_of(log.lines().rev().find(|l| l.contains("Progress.") && l.contains(&name)), log, counter)
}

fn counter_of(line: Option<&str>, log: &str, counter: &str) -> u64 {
    let line = line.unwrap_or_else(|| panic!("no progress line in the log:\n{log}"));
    let prefix = format!("{counter}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {counter} in the progress line {line}"))
}
