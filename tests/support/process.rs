//! The `sluice` binary as a child process: one way to start it (a builder
//! for its arguments and environment), its log kept as it comes, and
//! queries over that log. sluice runs with `--log-format json`, so tests read
//! its events and their fields, not sentences of a text log.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{HASH_KEY, root};

/// How long a sluice waits for its pipelines to start.
const START: Duration = Duration::from_secs(60);

/// A `sluice` process whose output is kept for assertions and shown on failure.
pub struct Sluice {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Read stdout and stderr until the process closes them; joined so that no line is missed.
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// A `sluice` command about to start: its arguments and environment.
pub struct Launch {
    command: Command,
    echo: bool,
}

impl Launch {
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.command.env(name, value);
        self
    }

    pub fn envs(mut self, vars: &[(&str, &str)]) -> Self {
        self.command.envs(vars.iter().copied());
        self
    }

    /// Serve metrics on a free port (see [`Sluice::metrics_address`]).
    pub fn with_metrics(mut self) -> Self {
        self.command.args(["--metrics", "127.0.0.1:0"]);
        self
    }

    pub fn without(mut self, name: &str) -> Self {
        self.command.env_remove(name);
        self
    }

    /// Shows sluice's warnings and errors as they come (for the benchmarks).
    pub fn echo_problems(mut self) -> Self {
        self.echo = true;
        self
    }

    pub fn spawn(mut self) -> Sluice {
        let mut child = self.command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start sluice");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let readers =
            vec![read_lines(child.stdout.take().unwrap(), lines.clone(), self.echo), read_lines(child.stderr.take().unwrap(), lines.clone(), self.echo)];
        Sluice { child, lines, readers }
    }

    /// Starts it and waits until `pipelines` pipelines have started.
    pub fn started(self, pipelines: usize) -> Sluice {
        let sluice = self.spawn();
        sluice.wait_for("Pipeline started.", pipelines, START);
        sluice
    }

    /// Starts it and waits for it to exit by itself.
    pub fn wait(self) -> (ExitStatus, Log) {
        self.spawn().wait()
    }
}

impl Sluice {
    /// `sluice ARGS`, from the repository's root, logging JSON at debug for
    /// sluice itself, with the StoryForge hash key set.
    pub fn command(args: &[&str]) -> Launch {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .args(["--log-format", "json"])
            .args(args)
            .current_dir(root())
            .env("SLUICE_LOG", "info,sluice=debug,async_nats=warn")
            .env("STORYFORGE_HASH_KEY", HASH_KEY);
        Launch { command, echo: false }
    }

    /// `sluice run FILE --nats URL`, waiting until `pipelines` pipelines have started.
    pub fn run(file: &Path, nats_url: &str, pipelines: usize) -> Self {
        Self::running(file, nats_url).started(pipelines)
    }

    /// `sluice run FILE --nats URL --metrics` on a free port, waiting until
    /// `pipelines` pipelines have started; with the address it serves on.
    pub fn run_with_metrics(file: &Path, nats_url: &str, pipelines: usize) -> (Self, String) {
        let sluice = Self::running(file, nats_url).with_metrics().started(pipelines);
        let address = sluice.metrics_address();
        (sluice, address)
    }

    /// Where a sluice started [`Launch::with_metrics`] serves them.
    pub fn metrics_address(&self) -> String {
        let served = self.log().events("Serving /metrics, /healthz and /readyz.");
        served.first().and_then(|e| e["address"].as_str()).expect("the address it serves metrics on").to_string()
    }

    /// `sluice run FILE --nats URL` with progress every second, to set up further.
    pub fn running(file: &Path, nats_url: &str) -> Launch {
        Self::command(&["run", file.to_str().unwrap(), "--nats", nats_url, "--stats-interval", "1s"])
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn log(&self) -> Log {
        Log { lines: self.lines.lock().unwrap().clone() }
    }

    /// Waits until `count` events with this message have been logged.
    pub fn wait_for(&self, message: &str, count: usize, within: Duration) {
        self.wait_until(within, &format!("{count} events {message:?}"), |log| log.events(message).len() >= count);
    }

    /// Waits until a progress report of `pipeline` shows `counter` at `at_least`.
    pub fn wait_for_count(&self, pipeline: &str, counter: &str, at_least: u64, within: Duration) {
        self.wait_until(within, &format!("{pipeline}'s {counter} at {at_least}"), |log| log.counter_reached(pipeline, counter, at_least));
    }

    fn wait_until(&self, within: Duration, what: &str, done: impl Fn(&Log) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if done(&log) {
                return;
            }
            if Instant::now() > deadline {
                panic!("expected {what} within {within:?}; sluice logged:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) -> Log {
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
    pub fn wait(mut self) -> (ExitStatus, Log) {
        let status = self.child.wait().expect("sluice exits");
        self.finish_reading();
        (status, self.log())
    }

    fn finish_reading(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lines(stream: impl std::io::Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>, echo: bool) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if echo && (line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\"")) {
                eprintln!("  sluice | {line}");
            }
            lines.lock().unwrap().push(line);
        }
    })
}

/// What a sluice process logged: JSON events, and the few lines it prints
/// as plain text (the URL of a server it started, a fatal error, `sluice
/// test`'s report).
pub struct Log {
    lines: Vec<String>,
}

impl Log {
    /// Whether `text` stands anywhere in it, events and plain lines alike.
    pub fn contains(&self, text: &str) -> bool {
        self.lines.iter().any(|line| line.contains(text))
    }

    /// The plain-text lines.
    pub fn plain(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str).filter(|line| !line.starts_with('{'))
    }

    /// The fields of every event logged with this message.
    pub fn events(&self, message: &str) -> Vec<Value> {
        self.all_events().filter(|fields| fields["message"] == message).collect()
    }

    /// The fields of every event whose message contains `text`.
    pub fn events_saying(&self, text: &str) -> Vec<Value> {
        self.all_events().filter(|fields| fields["message"].as_str().is_some_and(|m| m.contains(text))).collect()
    }

    fn all_events(&self) -> impl Iterator<Item = Value> + '_ {
        self.lines.iter().filter(|line| line.starts_with('{')).filter_map(|line| serde_json::from_str::<Value>(line).ok()).map(|event| event["fields"].clone())
    }

    /// The last progress report of `pipeline`.
    pub fn progress(&self, pipeline: &str) -> Value {
        self.events("Progress.")
            .into_iter()
            .rev()
            .find(|p| p["pipeline"] == pipeline)
            .unwrap_or_else(|| panic!("no progress of {pipeline} in the log:\n{self}"))
    }

    /// A counter of the last progress report of `pipeline`.
    pub fn counter(&self, pipeline: &str, counter: &str) -> u64 {
        let progress = self.progress(pipeline);
        progress[counter].as_u64().unwrap_or_else(|| panic!("no {counter} in {progress}"))
    }

    fn counter_reached(&self, pipeline: &str, counter: &str, at_least: u64) -> bool {
        self.events("Progress.").iter().any(|p| p["pipeline"] == pipeline && p[counter].as_u64().is_some_and(|n| n >= at_least))
    }

    /// What a plugin counted (`stage.name`), in the last progress report of
    /// `pipeline`; `None` if it never counted it.
    pub fn plugin_counter(&self, pipeline: &str, name: &str) -> Option<u64> {
        let progress = self.progress(pipeline);
        let counters = progress["plugin_counters"].as_str().unwrap_or_default().trim_matches('"').to_string();
        counters.split_whitespace().find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    }
}

impl std::fmt::Display for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.lines.join("\n"))
    }
}
