//! What one plugin instance's store holds: its WASI context (no network;
//! no files or environment beyond what its stage grants: a folder, read-only,
//! at `/files`, and the variables it names), its memory cap, the last bytes
//! of its stderr (read for the reason of a trap: a Rust panic, a Python
//! traceback, a SpiderMonkey stack), and the stage it belongs to.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, bail};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::imports::{Clock, Counters};

/// How much of a plugin's stderr is kept: its last bytes, where the reason
/// it failed is.
const STDERR_BYTES: usize = 16 << 10;
/// Tables are small in every plugin we know of; a cap stops a hostile one.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// What every instance of one stage shares, across workers.
#[derive(Debug)]
pub struct StageContext {
    pub pipeline: Arc<str>,
    pub name: Arc<str>,
    pub clock: Clock,
    pub counters: Counters,
    /// What its plugin declared through the `metrics` import.
    pub metrics: crate::metrics::plugin::StageMetrics,
    pub grants: Grants,
    /// The time of each call into the stage (the `sluice_stage_call_duration_seconds` metric).
    pub calls: prometheus_client::metrics::histogram::Histogram,
    /// Instances started again after a fault (`sluice_instances_restarted_total`).
    pub restarts: prometheus_client::metrics::counter::Counter,
}

/// What a pipeline file grants a stage beyond the sandbox: nothing, unless it says so.
#[derive(Debug, Default, Clone)]
pub struct Grants {
    /// A host folder the plugin may read, at `/files`.
    pub files: Option<PathBuf>,
    /// Environment variables and their values.
    pub env: Vec<(String, String)>,
}

pub struct StageState {
    wasi: WasiCtx,
    table: ResourceTable,
    stderr: TailPipe,
    pub limiter: MemoryCap,
    pub stage: Arc<StageContext>,
}

impl StageState {
    pub fn new(stage: Arc<StageContext>, memory_limit: u64) -> anyhow::Result<Self> {
        let stderr = TailPipe::new(STDERR_BYTES);
        // Nothing is inherited from the host: no directories, no environment,
        // no arguments, no sockets (wasmtime-wasi denies them by default; said
        // again here so that it stays so). Only what the stage was granted.
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr.clone())
            .wall_clock(stage.clock.clone())
            .monotonic_clock(stage.clock.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(folder) = &stage.grants.files {
            wasi.preopened_dir(folder, crate::config::FILES_MOUNT, FsPerms::ReadOnly)
                .map_err(anyhow::Error::from)
                .map_err(|e| e.context(format!("cannot grant the folder {}", folder.display())))?;
        }
        for (name, value) in &stage.grants.env {
            wasi.env(name, value);
        }
        Ok(Self { wasi: wasi.build(), table: ResourceTable::new(), stderr, limiter: MemoryCap::new(memory_limit), stage })
    }

    /// What the plugin last said on stderr, read for the reason it failed:
    /// see [`last_words`].
    pub fn last_words(&self) -> Option<String> {
        last_words(&String::from_utf8_lossy(&self.stderr.contents()))
    }
}

/// A plugin's stderr: it keeps the last `capacity` bytes and never refuses
/// a write (wasmtime's `MemoryOutputPipe` keeps the first ones, then fails
/// every write, which would trap a plugin that writes much over its life).
#[derive(Clone)]
struct TailPipe {
    capacity: usize,
    buffer: Arc<Mutex<VecDeque<u8>>>,
}

impl TailPipe {
    fn new(capacity: usize) -> Self {
        Self { capacity, buffer: Arc::new(Mutex::new(VecDeque::with_capacity(capacity))) }
    }

    fn contents(&self) -> Vec<u8> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner).iter().copied().collect()
    }

    fn keep(&self, bytes: &[u8]) {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes = &bytes[bytes.len().saturating_sub(self.capacity)..];
        let over = (buffer.len() + bytes.len()).saturating_sub(self.capacity);
        buffer.drain(..over);
        buffer.extend(bytes);
    }
}

impl OutputStream for TailPipe {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.keep(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(self.capacity)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for TailPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for TailPipe {
    fn poll_write(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>, bytes: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        self.keep(bytes);
        std::task::Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl IsTerminal for TailPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// The longest reason kept from a plugin's stderr.
const LAST_WORDS_CHARS: usize = 500;

/// The reason a plugin failed, from what it wrote to stderr: a Rust panic
/// (the `panicked at` line and its message), a Python traceback (the
/// exception and the line that raised it: `ValueError: ... (at app.py:5 in
/// parse)`), or a SpiderMonkey error and its stack block (`... (at
/// app.js:3:3 in parse)`); else its last line that says something.
pub fn last_words(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr.lines().collect();
    let words = python_exception(&lines).or_else(|| javascript_exception(&lines)).or_else(|| {
        let said: Vec<&str> = lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty() && !is_noise(l)).collect();
        match said.iter().rposition(|l| l.contains(" panicked at ")) {
            Some(at) => Some(said[at..].iter().take(2).copied().collect::<Vec<_>>().join(" ")),
            None => said.last().map(|l| l.to_string()),
        }
    })?;
    Some(words.chars().take(LAST_WORDS_CHARS).collect())
}

/// Lines the runtimes add after the reason, which say nothing of it.
fn is_noise(line: &str) -> bool {
    line.starts_with("note: run with") || line == "Redirecting call to abort() to mozalloc_abort"
}

/// The last traceback CPython printed: its exception line, and the frame
/// that raised it.
fn python_exception(lines: &[&str]) -> Option<String> {
    let start = lines.iter().rposition(|l| l.trim_end() == "Traceback (most recent call last):")?;
    let mut frame = None;
    for line in &lines[start + 1..] {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("File \"") {
            // File "/0/app.py", line 5, in parse
            let (file, rest) = rest.split_once('"')?;
            let number = rest.split("line ").nth(1).and_then(|r| r.split(',').next()).unwrap_or("?");
            let function = rest.split(", in ").nth(1).unwrap_or("?");
            frame = Some(format!("{}:{number} in {function}", file.rsplit('/').next().unwrap_or(file)));
        } else if !line.starts_with(char::is_whitespace) && !trimmed.is_empty() {
            return Some(match frame {
                Some(frame) => format!("{trimmed} (at {frame})"),
                None => trimmed.to_string(),
            });
        }
    }
    None
}

/// The last error SpiderMonkey printed with a `Stack:` block: its message,
/// and the innermost frame of the plugin's own code (not the bindings').
fn javascript_exception(lines: &[&str]) -> Option<String> {
    let at = lines.iter().rposition(|l| l.trim_end() == "Stack:")?;
    let message = lines[..at].iter().rev().map(|l| l.trim()).find(|l| !l.is_empty())?;
    let frame = lines[at + 1..]
        .iter()
        .map(|l| l.trim())
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.rsplit_once('@'))
        .find(|(_, place)| !place.contains("/sources/initializer.js"));
    Some(match frame {
        Some((function, place)) => {
            let place = place.rsplit('/').next().unwrap_or(place);
            if function.is_empty() { format!("{message} (at {place})") } else { format!("{message} (at {place} in {function})") }
        }
        None => message.to_string(),
    })
}

impl WasiView for StageState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The stage's memory cap. It remembers being hit, so that the host can tell
/// a memory overrun from any other trap.
pub struct MemoryCap {
    limit: u64,
    pub exceeded: bool,
}

impl MemoryCap {
    fn new(limit: u64) -> Self {
        Self { limit, exceeded: false }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.limit {
            self.exceeded = true;
            let mib = |bytes: u64| format!("{:.1}", bytes as f64 / (1 << 20) as f64).trim_end_matches(".0").to_string();
            bail!("the plugin asked for {} MiB of memory, more than its memory cap of {} MiB (limits.memory)", mib(desired as u64), mib(self.limit));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            bail!("table limit of {MAX_TABLE_ELEMENTS} elements exceeded");
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::{TailPipe, last_words};

    #[test]
    fn stderr_keeps_its_last_bytes_however_much_is_written() {
        let pipe = TailPipe::new(8);
        pipe.keep(b"0123456");
        pipe.keep(b"789");
        assert_eq!(pipe.contents(), b"23456789");
        pipe.keep(b"a long line, longer than the pipe");
        assert_eq!(pipe.contents(), b"the pipe");
    }

    #[test]
    fn a_rust_panic_is_its_message() {
        let stderr = "\nthread '<unnamed>' panicked at tag/src/lib.rs:12:5:\nindex out of bounds: the len is 0 but the index is 0\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(last_words(stderr).unwrap(), "thread '<unnamed>' panicked at tag/src/lib.rs:12:5: index out of bounds: the len is 0 but the index is 0");
    }

    /// As componentize-py 0.25.1 writes it when an export raises.
    #[test]
    fn a_python_traceback_is_its_exception_and_the_line_that_raised_it() {
        let stderr = r#"Traceback (most recent call last):
  File "/0/app.py", line 11, in process
  File "/0/app.py", line 5, in parse
ValueError: invalid literal for int() with base 10: '{"event":"signed_up"}'

thread '<unnamed>' (1) panicked at runtime/src/lib.rs:1280:25:
Python function threw an unexpected exception
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace
"#;
        assert_eq!(last_words(stderr).unwrap(), r#"ValueError: invalid literal for int() with base 10: '{"event":"signed_up"}' (at app.py:5 in parse)"#);
    }

    /// As componentize-js 0.23.0 (SpiderMonkey) writes it when an export throws.
    #[test]
    fn a_spidermonkey_stack_block_is_its_error_and_the_plugins_innermost_frame() {
        let stderr = r#"can't access property "name", value.missing is undefined
Stack:
  parse@app.js:3:3
  process/<@app.js:7:60
  process@app.js:7:16
  export_process@/tmp/cb04c35b6ad8/sources/initializer.js:323:15

Redirecting call to abort() to mozalloc_abort
"#;
        assert_eq!(last_words(stderr).unwrap(), r#"can't access property "name", value.missing is undefined (at app.js:3:3 in parse)"#);
    }

    #[test]
    fn otherwise_the_last_line_that_says_something() {
        assert_eq!(last_words("starting\nout of patience\n\nRedirecting call to abort() to mozalloc_abort\n").unwrap(), "out of patience");
        assert_eq!(last_words("\n \n"), None);
        assert_eq!(last_words(&"x".repeat(2000)).unwrap().len(), 500);
    }
}
