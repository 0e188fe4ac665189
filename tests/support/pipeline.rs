//! Pipeline files built from parts, so that each test states only what its
//! pipeline does differently: streams, an input, the pipeline's own keys, and
//! stages of built plugins.
//!
//! ```text
//! PipelineFile::new()
//!     .stream("RAW", &["raw.>"], "")
//!     .pipeline(Pipeline::jetstream("ingest", "raw.>", "RAW").set("workers = 2").tag_and_route())
//! ```

use std::fmt::Write as _;

use super::plugin;

/// A whole pipeline file.
#[derive(Default)]
pub struct PipelineFile {
    text: String,
}

impl PipelineFile {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lines of the `[nats]` table.
    pub fn nats(mut self, lines: &str) -> Self {
        let _ = writeln!(self.text, "[nats]\n{lines}\n");
        self
    }

    /// A `[[stream]]`, with more of its keys in `extra` (such as `duplicate_window = "5m"`).
    pub fn stream(mut self, name: &str, subjects: &[&str], extra: &str) -> Self {
        let _ = writeln!(self.text, "[[stream]]\nname = {name:?}\nsubjects = {subjects:?}\n{extra}\n");
        self
    }

    pub fn pipeline(mut self, pipeline: Pipeline) -> Self {
        self.text.push_str(&pipeline.text());
        self
    }

    pub fn toml(&self) -> &str {
        &self.text
    }
}

/// One `[[pipeline]]`.
#[derive(Clone)]
pub struct Pipeline {
    name: String,
    input: String,
    lines: Vec<String>,
    stages: Vec<String>,
}

impl Pipeline {
    /// Reading `subject` from `stream` through a durable consumer named after the pipeline.
    pub fn jetstream(name: &str, subject: &str, stream: &str) -> Self {
        Self::with_input(name, format!("subject = {subject:?}, stream = {stream:?}, durable = {name:?}"))
    }

    /// Reading `subject` in a core queue group.
    pub fn core(name: &str, subject: &str) -> Self {
        Self::with_input(name, format!("subject = {subject:?}, mode = \"core\""))
    }

    fn with_input(name: &str, input: String) -> Self {
        Self { name: name.into(), input, lines: vec!["dead_letter = \"dlq\"".into()], stages: Vec::new() }
    }

    /// More keys of the input table, such as `ack_wait = "2s"`.
    pub fn input(mut self, keys: &str) -> Self {
        let _ = write!(self.input, ", {keys}");
        self
    }

    /// A key of the pipeline, such as `workers = 2`; a later one replaces an
    /// earlier one of the same name (`dead_letter`).
    pub fn set(mut self, line: &str) -> Self {
        let key = |l: &str| l.split('=').next().unwrap_or_default().trim().to_string();
        self.lines.retain(|l| key(l) != key(line));
        self.lines.push(line.into());
        self
    }

    /// A stage of the built plugin `plugin` with this `config` table (`{ ... }`, or empty).
    pub fn stage(self, name: &str, plugin_name: &str, config: &str) -> Self {
        self.stage_at(name, plugin(plugin_name).to_str().unwrap(), config, "")
    }

    /// A stage of the component at `component`, with more keys in `extra` (such as `limits = ...`).
    pub fn stage_at(mut self, name: &str, component: &str, config: &str, extra: &str) -> Self {
        let mut stage = format!("  [[pipeline.stage]]\n  name = {name:?}\n  component = {component:?}\n");
        if !config.is_empty() {
            let _ = writeln!(stage, "  config = {config}");
        }
        if !extra.is_empty() {
            let _ = writeln!(stage, "  {extra}");
        }
        self.stages.push(stage);
        self
    }

    /// The usual pair: `tag` (requiring `event` and `user_id`, setting
    /// `tagged = true`), then `route` to `out.<event>`.
    pub fn tag_and_route(self) -> Self {
        self.stage("tag", "tag", r#"{ require = ["event", "user_id"], set = { tagged = true } }"#).route("out.{event}")
    }

    /// A `route` stage sending every event to `subject` (a template).
    pub fn route(self, subject: &str) -> Self {
        self.stage("route", "route", &format!("{{ subject = {subject:?} }}"))
    }

    fn text(&self) -> String {
        let mut text = format!("[[pipeline]]\nname = {:?}\ninput = {{ {} }}\n", self.name, self.input);
        for line in &self.lines {
            let _ = writeln!(text, "{line}");
        }
        text.push('\n');
        for stage in &self.stages {
            let _ = writeln!(text, "{stage}");
        }
        text
    }
}
