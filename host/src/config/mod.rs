//! Pipeline files: what they say, once read and checked.
//!
//! Reading happens in two phases. `raw` deserialises the TOML into strict
//! serde structs (unknown fields refused); `check` then validates the whole
//! file and reports every problem at once, each with file, line and what was
//! expected. Only a file with no problems becomes a [`PipelineFile`].

mod check;
pub mod locate;
mod problem;
mod raw;
pub mod units;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use check::listen_address;
pub use problem::{Problem, Problems};

/// A checked pipeline file.
#[derive(Debug, Clone)]
pub struct PipelineFile {
    pub path: PathBuf,
    /// The NATS server to use; `None` means start a local one.
    pub nats_url: Option<String>,
    /// How to authenticate to it and whether to use TLS.
    pub nats_security: NatsSecurity,
    /// Where `sluice run` serves its metrics and probes (`[metrics] listen`).
    pub metrics_listen: Option<String>,
    /// JetStream streams to create or update at start.
    pub streams: Vec<StreamSpec>,
    pub pipelines: Vec<PipelineSpec>,
}

/// How sluice proves who it is to NATS, and TLS. Secrets are only named
/// here (a variable or a file); they are read when connecting.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NatsSecurity {
    pub auth: NatsAuth,
    pub tls: Option<TlsSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub enum NatsAuth {
    #[default]
    None,
    Token(Secret),
    UserPassword {
        user: String,
        password: Secret,
    },
    /// A file holding an NKey seed (`SU...`).
    NKey(PathBuf),
    /// A credentials file: a user JWT and its NKey seed.
    Creds(PathBuf),
}

/// Where a secret is read from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Secret {
    Env(String),
    File(PathBuf),
}

impl Secret {
    /// The secret; an error names where it was looked for, never its value.
    pub fn read(&self, what: &str) -> Result<String, String> {
        match self {
            Secret::Env(name) => std::env::var(name).map_err(|_| format!("{what} is read from {name}, which is not set (or not UTF-8)")),
            Secret::File(path) => std::fs::read_to_string(path)
                .map(|text| text.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| format!("{what} is read from {}, which cannot be read: {e}", path.display())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TlsSpec {
    pub ca: Option<PathBuf>,
    /// A client certificate and its key.
    pub identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamSpec {
    pub name: String,
    pub subjects: Vec<String>,
    pub retention: Retention,
    pub storage: Storage,
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    pub duplicate_window: Option<Duration>,
    pub replicas: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Retention {
    Limits,
    Interest,
    WorkQueue,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Storage {
    File,
    Memory,
}

/// One pipeline: an input, a chain of stages, outputs and a dead-letter subject.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineSpec {
    pub name: String,
    pub input: InputSpec,
    /// Publish outputs through JetStream and await its acknowledgements.
    pub output_jetstream: bool,
    /// Rejected events go to `<dead_letter>.<stage>`.
    pub dead_letter: String,
    pub max_events: usize,
    pub max_wait: Duration,
    pub workers: usize,
    /// Larger events are refused before any plugin sees them.
    pub max_event_bytes: usize,
    pub format: BodyFormat,
    /// How often a sink at the end of the pipeline is called with `tick`.
    pub tick: Duration,
    /// The key-value bucket that keeps a sink's state across restarts.
    pub state_bucket: String,
    /// A sink's state is stored at most this often (and its inputs acked
    /// then); `None`: after every batch.
    pub state_every: Option<Duration>,
    /// Outputs go to this HTTP endpoint rather than to NATS.
    pub webhook: Option<WebhookSpec>,
    pub stages: Vec<StageSpec>,
}

/// An HTTP endpoint that receives a pipeline's outputs, one POST each.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebhookSpec {
    pub url: WebhookValue,
    /// Headers sent with every request (name, value), checked.
    pub headers: Vec<(String, WebhookValue)>,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Attempts per output before the batch is handed back for redelivery.
    pub attempts: u32,
    /// The wait after the first failed attempt, doubled after each.
    pub backoff: Duration,
}

/// Where a webhook's URL or a header's value comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum WebhookValue {
    /// Written in the pipeline file.
    Given(String),
    /// Read from this environment variable when the pipeline starts, and
    /// never logged: such values carry a secret.
    Env(String),
}

impl WebhookValue {
    /// The value; an error names `what` and the missing variable.
    pub fn resolve(&self, what: &str) -> Result<String, String> {
        match self {
            WebhookValue::Given(value) => Ok(value.clone()),
            WebhookValue::Env(name) => std::env::var(name).map_err(|_| format!("{what} is read from {name}, which is not set (or not UTF-8)")),
        }
    }

    /// The URL to post to; an error names a missing or malformed variable.
    pub fn resolve_url(&self) -> Result<String, String> {
        let url = self.resolve("the webhook URL")?;
        if let WebhookValue::Env(name) = self {
            check_http_url(&url).map_err(|_| format!("{name} must hold an http:// or https:// URL with a host"))?;
        }
        Ok(url)
    }

    /// How logs and errors name it: a variable's value is never shown.
    pub fn shown(&self) -> String {
        match self {
            WebhookValue::Given(value) => value.clone(),
            WebhookValue::Env(name) => format!("${name}"),
        }
    }

    /// The variable it is read from, if it is.
    pub fn variable(&self) -> Option<&str> {
        match self {
            WebhookValue::Env(name) => Some(name),
            WebhookValue::Given(_) => None,
        }
    }
}

/// Checks that `url` is http(s) with a host.
pub fn check_http_url(url: &str) -> Result<(), String> {
    let rest =
        url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).ok_or(format!("webhook url {url:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') { Err(format!("webhook url {url:?} names no host")) } else { Ok(()) }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum InputSpec {
    /// A durable pull consumer: at-least-once, acked after the outputs are published.
    /// `max_deliver`: how many times an event may be handed out before it is
    /// dead-lettered as `undeliverable` instead of being tried again.
    JetStream { subject: String, stream: String, durable: String, ack_wait: Duration, max_deliver: u64 },
    /// A core subscription in a queue group: best effort, at most once.
    Core { subject: String, queue: String },
}

impl InputSpec {
    pub fn subject(&self) -> &str {
        match self {
            InputSpec::JetStream { subject, .. } | InputSpec::Core { subject, .. } => subject,
        }
    }
}

/// What the host checks of each body before any stage sees it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum BodyFormat {
    /// A UTF-8 JSON object.
    Json,
    /// Any bytes.
    Bytes,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSpec {
    pub name: String,
    /// The component file. Not part of the version id (its content is), so
    /// a release laid out elsewhere on a host keeps the deployer's ids.
    #[serde(skip)]
    pub component: PathBuf,
    /// How long one call into the plugin may run.
    pub time_budget: Duration,
    /// How much linear memory one instance may grow to.
    pub memory_limit: u64,
    /// How many events a plugin may answer one input event with.
    pub max_outputs: usize,
    /// How many bytes of new events (bodies a plugin sends back) one call may return.
    pub max_output_bytes: usize,
    /// The stage's `config` table as JSON, handed to the plugin's `init`.
    pub config: String,
    /// A folder granted read-only to the plugin at [`FILES_MOUNT`]; its
    /// files' names and contents are part of the version id, not its place.
    #[serde(skip)]
    pub files: Option<PathBuf>,
    /// Names of environment variables passed to the plugin.
    pub env: Vec<String>,
}

/// Where a stage's granted folder appears inside the plugin.
pub const FILES_MOUNT: &str = "/files";

pub const DEFAULT_MAX_EVENTS: usize = 256;
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(5);
pub const DEFAULT_TIME_BUDGET: Duration = Duration::from_millis(500);
pub const DEFAULT_MEMORY_LIMIT: u64 = 64 << 20;
pub const DEFAULT_MAX_OUTPUTS: usize = 1000;
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 << 20;
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_DELIVER: u64 = 5;
pub const DEFAULT_TICK: Duration = Duration::from_secs(10);
/// Where sinks keep their state unless a pipeline names another bucket.
pub const DEFAULT_STATE_BUCKET: &str = "SLUICE_STATE";

/// How serde says a secret was written as text (`raw::Secret`'s `expecting`).
const SECRET_EXPECTED: &str = "a secret is read from the environment or a file, never written in the pipeline file";

/// Reads and checks a pipeline file.
pub fn load(path: &Path) -> anyhow::Result<PipelineFile> {
    load_moved(path, None)
}

/// Reads and checks a pipeline file that was moved from the folder `from`
/// with the files it uses (a release laid out on a host): a path it names
/// absolutely, below or beside `from`, is read from the same place relative
/// to the file's new folder, as the release carried it.
pub fn load_moved(path: &Path, from: Option<&Path>) -> anyhow::Result<PipelineFile> {
    let source = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read pipeline file {}: {e}", path.display()))?;
    parse_moved(path, &source, from).map_err(anyhow::Error::from)
}

/// Checks the text of a pipeline file; `path` locates it (relative paths in it
/// are resolved against its folder) and names it in problems.
pub fn parse(path: &Path, source: &str) -> Result<PipelineFile, Problems> {
    parse_moved(path, source, None)
}

fn parse_moved(path: &Path, source: &str, from: Option<&Path>) -> Result<PipelineFile, Problems> {
    let raw: raw::File = toml::from_str(source).map_err(|e| {
        // A secret written where it must not be is not shown back.
        let problem = Problem { span: e.span(), secret: e.message().contains(SECRET_EXPECTED), ..Problem::whole(e.message().trim_end()) };
        Problems::new(path, source, vec![problem])
    })?;
    check::check(path, raw, from).map_err(|problems| Problems::new(path, source, problems))
}
