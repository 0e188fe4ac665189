//! Phase one of reading a pipeline file: strict serde structs that mirror the
//! TOML exactly. Unknown fields are refused here, with the line they are on;
//! everything that needs judgement (names, subjects, limits, files) is left to
//! the validation pass in `check.rs`, which reports every problem at once.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub nats: Nats,
    #[serde(default)]
    pub plugins: Plugins,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub stream: Vec<Spanned<Stream>>,
    #[serde(default)]
    pub pipeline: Vec<Spanned<Pipeline>>,
}

/// `[metrics]`: where `sluice run` serves `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nats {
    pub url: Option<Spanned<String>>,
    /// Authentication, named as the `nats` CLI names it; at most one kind.
    pub user: Option<Spanned<String>>,
    pub password: Option<Spanned<Secret>>,
    pub token: Option<Spanned<Secret>>,
    /// A file holding an NKey seed.
    pub nkey: Option<Spanned<String>>,
    /// A credentials file (a user JWT and its NKey seed).
    pub creds: Option<Spanned<String>>,
    pub tls: Option<Spanned<Tls>>,
}

/// A secret, read when sluice connects: never written in the pipeline file.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected { env = \"VARIABLE\" } or { file = \"PATH\" }: a secret is read from the environment or a file, never written in the pipeline file"
)]
// The words above are matched in `config::parse` (SECRET_EXPECTED), which hides the line.
pub enum Secret {
    Env(FromEnv),
    File(FromFile),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromFile {
    pub file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The CA that signed the server's certificate (PEM), when it is not one the system trusts.
    pub ca: Option<Spanned<String>>,
    /// A client certificate and its key (PEM), for servers that ask for one.
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugins {
    /// Where `plugin = "name"` is looked up, relative to the pipeline file.
    pub dir: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stream {
    pub name: Spanned<String>,
    pub subjects: Spanned<Vec<Spanned<String>>>,
    pub retention: Option<Spanned<String>>,
    pub storage: Option<Spanned<String>>,
    pub max_age: Option<Spanned<String>>,
    pub max_bytes: Option<Spanned<String>>,
    pub duplicate_window: Option<Spanned<String>>,
    pub replicas: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub name: Spanned<String>,
    pub input: Spanned<Input>,
    #[serde(default)]
    pub output: Output,
    pub dead_letter: Spanned<String>,
    #[serde(default)]
    pub batch: Batch,
    pub workers: Option<Spanned<i64>>,
    pub max_event_bytes: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    /// How often a pipeline's sink is told that time passed.
    pub tick: Option<Spanned<String>>,
    /// The key-value bucket that keeps a sink's state across restarts.
    pub state_bucket: Option<Spanned<String>>,
    /// Store a sink's state at most this often, not after every batch.
    pub state_every: Option<Spanned<String>>,
    #[serde(default)]
    pub stage: Vec<Spanned<Stage>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub subject: Spanned<String>,
    /// `jetstream` (the default) or `core`.
    pub mode: Option<Spanned<String>>,
    pub stream: Option<Spanned<String>>,
    pub durable: Option<Spanned<String>>,
    pub queue: Option<Spanned<String>>,
    pub ack_wait: Option<Spanned<String>>,
    pub max_deliver: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Publish through JetStream and wait for its acknowledgements.
    pub jetstream: Option<bool>,
    /// Deliver each output to an HTTP endpoint instead of publishing it
    /// (dead letters still go to NATS, through JetStream if `jetstream`).
    pub webhook: Option<Spanned<Webhook>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: Option<Spanned<String>>,
    /// The variable holding the URL, for URLs that carry a secret (a Slack
    /// incoming webhook's path): read when the pipeline starts.
    pub url_env: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub attempts: Option<Spanned<i64>>,
    pub backoff: Option<Spanned<String>>,
    /// Headers sent with every request, such as `Authorization`.
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<HeaderValue>>,
}

/// A header's value: written in the file, or `{ env = "VARIABLE" }` for a
/// secret read when the pipeline starts.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "expected a header value: a string, or { env = \"VARIABLE\" } for one that carries a secret")]
pub enum HeaderValue {
    Given(String),
    Env(FromEnv),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromEnv {
    pub env: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub max_events: Option<Spanned<i64>>,
    pub max_wait: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: Spanned<String>,
    pub plugin: Option<Spanned<String>>,
    pub component: Option<Spanned<String>>,
    #[serde(default)]
    pub limits: Limits,
    /// A folder the plugin may read, mounted read-only at `/files`.
    pub files: Option<Spanned<String>>,
    /// Environment variables passed to the plugin (it sees no others).
    pub env: Option<Vec<Spanned<String>>>,
    pub config: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub time: Option<Spanned<String>>,
    pub memory: Option<Spanned<String>>,
    /// Events a plugin may answer one input event with.
    pub outputs: Option<Spanned<i64>>,
    /// Bytes of new events one call into the plugin may return.
    pub output_bytes: Option<Spanned<String>>,
}
