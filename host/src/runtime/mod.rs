//! `sluice run`: connects to NATS (or starts a server), starts every pipeline
//! of a file, swaps in new versions when the file or its components change,
//! reports progress, and shuts down cleanly.
//!
//! - `running`: one running pipeline and its workers.
//! - `worker`: the read → process → publish → ack loop.
//! - `messages`: the outputs and dead letters a batch publishes, built without NATS.
//! - `watch`: file watching for hot swaps.
//! - `stats`: counters reported in the log.

mod messages;
mod running;
mod stats;
mod watch;
mod worker;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::{self, PipelineFile, PipelineSpec};
use crate::nats::{self, Connection, ManagedServer};
use crate::pipeline::{Environment, PipelineVersion};
use crate::plugin::{Clock, PluginEngine};
use running::RunningPipeline;
use watch::FileWatcher;

pub struct RunOptions {
    pub file: PathBuf,
    /// Overrides the file's `[nats] url`; with neither, a local server is started.
    pub nats_url: Option<String>,
    /// Swap in changes to the file and its components while running.
    pub watch: bool,
    /// How often progress is logged.
    pub stats_interval: Duration,
}

/// Runs until `shutdown` completes, then drains in-flight batches and stops.
pub async fn run(options: RunOptions, shutdown: impl Future<Output = ()>) -> Result<()> {
    let file = config::load(&options.file)?;
    // Every version is prepared before anything is connected or started, so
    // that a broken plugin or config stops `run` at once with its reason.
    let engine = Arc::new(PluginEngine::new()?);
    let clock = Clock::system();
    let versions = file.pipelines.iter().map(|spec| prepare(&engine, spec, &clock)).collect::<Result<Vec<_>>>()?;
    let (url, managed) = match options.nats_url.clone().or_else(|| file.nats_url.clone()) {
        Some(url) => (url, None),
        None => {
            let server = ManagedServer::start().await?;
            tracing::info!(url = %server.url, "Started a local nats-server with JetStream (no URL was given); it stops when sluice exits.");
            eprintln!("sluice: NATS is at {} (a local nats-server that stops when sluice exits)", server.url);
            (server.url.clone(), Some(server))
        }
    };
    // A managed server has no authentication: what the file says is for the real one.
    let security = if managed.is_some() { Default::default() } else { file.nats_security.clone() };
    let connection = nats::connect_with(&url, "sluice", &security).await?;
    let mut host = Host { path: options.file.clone(), connection, engine, clock, running: BTreeMap::new() };
    host.start_all(&file, versions).await?;

    let mut watcher = if options.watch { Some(FileWatcher::new()?) } else { None };
    if let Some(watcher) = watcher.as_mut() {
        watcher.watch(watched_files(&file), granted_folders(&file))?;
    }
    let mut report = tokio::time::interval(options.stats_interval);
    report.tick().await;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(path) = async { watcher.as_mut()?.changed().await } => {
                tracing::info!(changed = %path.display(), "A watched file changed; preparing a new version.");
                if let Some(file) = host.reload().await
                    && let Some(watcher) = watcher.as_mut()
                {
                    watcher.watch(watched_files(&file), granted_folders(&file)).unwrap_or_else(|e| tracing::warn!(error = format!("{e:#}"), "Cannot watch the new files."));
                }
            }
            _ = report.tick() => host.report(),
        }
    }

    tracing::info!("Shutting down: no more reading; finishing in-flight batches.");
    host.stop_all().await;
    host.connection.client.flush().await.context("cannot flush the last messages to NATS")?;
    // Close the connection before the managed server goes, so that stopping
    // it is not mistaken for an outage.
    let _ = host.connection.client.drain().await;
    if let Some(server) = managed {
        server.stop().await;
    }
    Ok(())
}

struct Host {
    path: PathBuf,
    connection: Connection,
    engine: Arc<PluginEngine>,
    clock: Clock,
    running: BTreeMap<String, RunningPipeline>,
}

impl Host {
    async fn start_all(&mut self, file: &PipelineFile, versions: Vec<Arc<PipelineVersion>>) -> Result<()> {
        nats::streams::ensure(&self.connection, &file.streams).await?;
        for version in versions {
            let name = version.spec.name.clone();
            let running = RunningPipeline::start(&self.connection, version).await.with_context(|| format!("pipeline `{name}`"))?;
            self.running.insert(name, running);
        }
        Ok(())
    }

    /// Reads the file again and brings every pipeline to what it now says.
    /// Anything that fails leaves the running version of that pipeline alone.
    async fn reload(&mut self) -> Option<PipelineFile> {
        let file = match config::load(&self.path) {
            Ok(file) => file,
            Err(error) => {
                tracing::error!(error = %error, "The changed pipeline file has problems; every running version stays.");
                return None;
            }
        };
        if let Err(error) = nats::streams::ensure(&self.connection, &file.streams).await {
            tracing::error!(error = format!("{error:#}"), "Cannot apply the changed streams; every running version stays.");
            return None;
        }
        for spec in &file.pipelines {
            let version = match prepare(&self.engine, spec, &self.clock) {
                Ok(version) => version,
                Err(error) => {
                    tracing::error!(pipeline = %spec.name, error = format!("{error:#}"), "The new version cannot be prepared; the running version stays.");
                    continue;
                }
            };
            match self.running.get(&spec.name) {
                Some(running) if running.version().id == version.id => {}
                Some(running) if running.can_swap_to(spec) => {
                    tracing::info!(pipeline = %spec.name, from = %running.version().id, to = %version.id, "Swapping to the new version between batches.");
                    running.swap(version);
                }
                _ => {
                    if let Some(old) = self.running.remove(&spec.name) {
                        tracing::info!(pipeline = %spec.name, from = %old.version().id, to = %version.id, "Input, workers or batching changed; restarting the pipeline's workers.");
                        progress(&spec.name, &old.stop().await, &self.connection);
                    }
                    match RunningPipeline::start(&self.connection, version).await {
                        Ok(running) => {
                            self.running.insert(spec.name.clone(), running);
                        }
                        Err(error) => tracing::error!(pipeline = %spec.name, error = format!("{error:#}"), "Cannot start the pipeline."),
                    }
                }
            }
        }
        let gone: Vec<String> = self.running.keys().filter(|name| !file.pipelines.iter().any(|p| &p.name == *name)).cloned().collect();
        for name in gone {
            if let Some(old) = self.running.remove(&name) {
                tracing::info!(pipeline = %name, "The pipeline was removed from the file; stopping it.");
                progress(&name, &old.stop().await, &self.connection);
            }
        }
        Some(file)
    }

    fn report(&mut self) {
        for (name, running) in &mut self.running {
            running.reap(name);
            progress(name, running, &self.connection);
        }
    }

    /// Stops every pipeline, draining in-flight batches, and reports its final counts.
    async fn stop_all(&mut self) {
        for (name, running) in std::mem::take(&mut self.running) {
            let running = running.stop().await;
            progress(&name, &running, &self.connection);
        }
    }
}

fn progress(name: &str, running: &RunningPipeline, connection: &Connection) {
    let s = running.stats.snapshot();
    let version = running.version();
    tracing::info!(
        pipeline = %name, version = %version.id, received = s.received, published = s.published,
        rejected = s.rejected, dropped = s.dropped, faults = s.faults, failed_batches = s.failed_batches, already_counted = s.already_counted,
        held_back = s.held_back, undeliverable = s.undeliverable, publish_retries = s.publish_retries, lost_dead_letters = s.lost_dead_letters,
        slow_consumer_events = connection.slow_consumer_events(), plugin_counters = ?version.plugin_counters(), "Progress."
    );
}

/// Prepares a version off the async threads: plugins' `init` may read their
/// granted files, and WASI's synchronous file calls block.
fn prepare(engine: &PluginEngine, spec: &PipelineSpec, clock: &Clock) -> Result<Arc<PipelineVersion>> {
    tokio::task::block_in_place(|| PipelineVersion::prepare(engine, spec, clock, &Environment::process()))
}

/// Every folder granted to a stage: a change to its files makes a new version.
fn granted_folders(file: &PipelineFile) -> Vec<PathBuf> {
    file.pipelines.iter().flat_map(|p| p.stages.iter().filter_map(|s| s.files.clone())).collect()
}

/// The pipeline file and every component file it uses.
fn watched_files(file: &PipelineFile) -> Vec<PathBuf> {
    let components = file.pipelines.iter().flat_map(|p| p.stages.iter().map(|s| s.component.clone()));
    std::iter::once(file.path.clone()).chain(components).collect()
}
