//! What one plugin instance's store holds: its WASI context (no network;
//! no files or environment beyond what its stage grants: a folder, read-only,
//! at `/files`, and the variables it names), its memory cap, a small stderr
//! buffer that keeps a panic message for the host's error, and the stage it
//! belongs to.

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, bail};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::imports::{Clock, Counters};

/// How much of a plugin's stderr is kept; the panic message is at its end.
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
    pub grants: Grants,
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
    stderr: MemoryOutputPipe,
    pub limiter: MemoryCap,
    pub stage: Arc<StageContext>,
}

impl StageState {
    pub fn new(stage: Arc<StageContext>, memory_limit: u64) -> anyhow::Result<Self> {
        let stderr = MemoryOutputPipe::new(STDERR_BYTES);
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

    /// What the plugin last said on stderr: for a Rust plugin, its panic
    /// message (the `panicked at` line and the message after it).
    pub fn last_words(&self) -> Option<String> {
        let bytes = self.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("note: run with")).collect();
        let words = match lines.iter().rposition(|l| l.contains(" panicked at ")) {
            Some(at) => lines[at..].iter().take(2).copied().collect::<Vec<_>>().join(" "),
            None => lines.last()?.to_string(),
        };
        Some(words.chars().take(500).collect())
    }
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
            bail!("memory limit of {} bytes exceeded (the plugin asked for {desired})", self.limit);
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
