//! The WebAssembly engine shared by every pipeline: one wasmtime `Engine`, one
//! linker holding the host imports, an epoch ticker that enforces time budgets,
//! and a cache of compiled components keyed by the digest of their bytes, so a
//! component is compiled once per version however many stages or reloads use it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::WasmtimeResult;
use super::bindings::{sink, transform, v0_1};
use super::disk_cache::DiskCache;
use super::instance::{SinkPre, TransformPre};
use super::state::StageState;

/// How often the epoch advances; time budgets are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// A compiled component and the digest of the bytes it came from.
#[derive(Clone)]
pub struct Loaded {
    pub component: Component,
    pub digest: [u8; 32],
}

pub struct PluginEngine {
    engine: Engine,
    linker: Linker<StageState>,
    cache: Mutex<HashMap<[u8; 32], Component>>,
    /// Compiled code kept across runs.
    disk: Option<DiskCache>,
    ticker: Option<JoinHandle<()>>,
    stop_ticker: Arc<AtomicBool>,
}

impl PluginEngine {
    pub fn new() -> Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // `SLUICE_PERF_MAP=1`: name the plugins' compiled functions in
        // /tmp/perf-<pid>.map, for `perf record` / `perf report` on a host.
        if std::env::var_os("SLUICE_PERF_MAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).anyhow().context("cannot configure the WebAssembly engine")?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).anyhow().context("cannot link WASI")?;
        // Both worlds import the same host interfaces; adding them once serves
        // both. Each contract version's are other instances to the linker.
        transform::Transform::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state).anyhow().context("cannot link the host imports")?;
        v0_1::transform::Transform::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .anyhow()
            .context("cannot link the host imports of sluice:plugin@0.1.0")?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (engine, stop) = (engine.clone(), stop_ticker.clone());
            std::thread::Builder::new()
                .name("sluice-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .context("cannot start the epoch ticker thread")?
        };
        let disk = DiskCache::open(&engine);
        Ok(Self { engine, linker, cache: Mutex::default(), disk, ticker: Some(ticker), stop_ticker })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads and compiles a component file, or takes it from the cache.
    pub fn load(&self, path: &Path) -> Result<Loaded> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read component {}", path.display()))?;
        self.load_bytes(&bytes)
    }

    pub fn load_bytes(&self, bytes: &[u8]) -> Result<Loaded> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(component) = self.cache.lock().expect("component cache lock").get(&digest) {
            return Ok(Loaded { component: component.clone(), digest });
        }
        if bytes.is_empty() {
            anyhow::bail!("the file is empty; expected a WebAssembly component");
        }
        if !bytes.starts_with(b"\0asm") {
            anyhow::bail!("the file is not WebAssembly (it does not start with the `\\0asm` magic number)");
        }
        if let Some(component) = self.disk.as_ref().and_then(|disk| disk.load(&self.engine, &digest)) {
            tracing::debug!(digest = %crate::pipeline::hex(&digest), "Compiled component read from the cache.");
            self.cache.lock().expect("component cache lock").insert(digest, component.clone());
            return Ok(Loaded { component, digest });
        }
        let started = std::time::Instant::now();
        let component = Component::new(&self.engine, bytes)
            .anyhow()
            .context("not a valid WebAssembly component (a core module must be made a component, e.g. by building for wasm32-wasip2)")?;
        tracing::debug!(digest = %crate::pipeline::hex(&digest), bytes = bytes.len(), took = ?started.elapsed(), "Component compiled.");
        if let Some(disk) = &self.disk {
            disk.store(&digest, &component);
        }
        self.cache.lock().expect("component cache lock").insert(digest, component.clone());
        Ok(Loaded { component, digest })
    }

    /// Links a component as a `transform` stage of either contract version,
    /// checking that it is one.
    pub fn transform_pre(&self, component: &Component) -> Result<TransformPre> {
        let pre = self.instance_pre(component)?;
        match transform::TransformPre::new(pre.clone()) {
            Ok(current) => Ok(TransformPre::Current(current)),
            Err(not_current) => match v0_1::transform::TransformPre::new(pre) {
                Ok(older) => Ok(TransformPre::V0_1(older)),
                Err(_) => Err(anyhow::Error::from(not_current).context("the component does not export the sluice:plugin/transform world (init, process)")),
            },
        }
    }

    /// Links a component as a `sink` stage of either contract version,
    /// checking that it is one.
    pub fn sink_pre(&self, component: &Component) -> Result<SinkPre> {
        let pre = self.instance_pre(component)?;
        match sink::SinkPre::new(pre.clone()) {
            Ok(current) => Ok(SinkPre::Current(current)),
            Err(not_current) => match v0_1::sink::SinkPre::new(pre) {
                Ok(older) => Ok(SinkPre::V0_1(older)),
                Err(_) => Err(anyhow::Error::from(not_current)
                    .context("the component does not export the sluice:plugin/sink world (init, consume, tick, snapshot, restore)")),
            },
        }
    }

    fn instance_pre(&self, component: &Component) -> Result<wasmtime::component::InstancePre<StageState>> {
        self.linker
            .instantiate_pre(component)
            .anyhow()
            .context("the component imports something sluice does not provide (plugins may use WASI and sluice:plugin imports only)")
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}
