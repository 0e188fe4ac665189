//! `sluice run`: connects to NATS (or starts a server), starts every pipeline
//! of a file, swaps in new versions when the file or its components change,
//! reports progress, and shuts down cleanly.
//!
//! - `running`: one running pipeline and its workers.
//! - `worker`: the read → process → publish → ack loop.
//! - `messages`: the outputs and dead letters a batch publishes, built without NATS.
//! - `watch`: file watching for hot swaps.
//! - `stats`: counters reported in the log.
//! - `tap`: live copies of the events passing a point, for `sluice tap`.

mod lease;
mod messages;
mod running;
mod stats;
pub mod tap;
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
use crate::release::{self, follow::Follower, status};
use running::RunningPipeline;
use watch::FileWatcher;

/// What `sluice run` runs.
pub enum Source {
    /// A pipeline file on this machine, swapped in when it or its files change.
    File(PathBuf),
    /// The current revision of a release in NATS, followed as new ones land.
    Release(String),
}

pub struct RunOptions {
    pub source: Source,
    /// Overrides the file's `[nats] url`; with neither, a local server is started.
    pub nats_url: Option<String>,
    /// Overrides the file's `[nats]` authentication and TLS.
    pub nats_security: Option<config::NatsSecurity>,
    /// Swap in changes to the file and its components while running.
    pub watch: bool,
    /// How often progress is logged.
    pub stats_interval: Duration,
    /// Where to serve /metrics, /healthz and /readyz; overrides the file's `[metrics] listen`.
    pub metrics: Option<String>,
}

/// Runs until `shutdown` completes, then drains in-flight batches and stops.
pub async fn run(options: RunOptions, shutdown: impl Future<Output = ()>) -> Result<()> {
    let engine = Arc::new(PluginEngine::new()?);
    let clock = Clock::system();
    let (file, versions, connection, managed, mut following) = match &options.source {
        Source::File(path) => {
            let file = config::load(path)?;
            // Every version is prepared before anything is connected or started, so
            // that a broken plugin or config stops `run` at once with its reason.
            let versions = file.pipelines.iter().map(|spec| prepare(&engine, spec, &clock)).collect::<Result<Vec<_>>>()?;
            let (url, managed) = match options.nats_url.clone().or_else(|| file.nats_url.clone()) {
                Some(url) => (url, None),
                None if options.nats_security.is_some() => {
                    anyhow::bail!("NATS authentication or TLS was given without a NATS server: give --nats URL or [nats] url")
                }
                None => {
                    let server = ManagedServer::start().await?;
                    tracing::info!(url = %server.url, "Started a local nats-server with JetStream (no URL was given); it stops when sluice exits.");
                    eprintln!("sluice: NATS is at {} (a local nats-server that stops when sluice exits)", server.url);
                    (server.url.clone(), Some(server))
                }
            };
            // A managed server has no authentication: what the file says is for the real one.
            let security = match (&managed, &options.nats_security) {
                (Some(_), _) => Default::default(),
                (None, Some(given)) => given.clone(),
                (None, None) => file.nats_security.clone(),
            };
            let connection = nats::connect_with(&url, "sluice", &security).await?;
            (file, versions, connection, managed, None)
        }
        Source::Release(name) => {
            let url = options.nats_url.clone().context("`sluice run --release` needs the NATS server the release is kept in: give --nats URL")?;
            let connection = nats::connect_with(&url, "sluice", &options.nats_security.clone().unwrap_or_default()).await?;
            let (follower, laid) = Follower::start(&connection, name).await?;
            let file = laid.load().with_context(|| format!("revision {} of release `{name}`", laid.revision))?;
            let versions = file
                .pipelines
                .iter()
                .map(|spec| prepare(&engine, spec, &clock))
                .collect::<Result<Vec<_>>>()
                .with_context(|| format!("revision {} of release `{name}` cannot be prepared on this host", laid.revision))?;
            let board = Board::open(&connection, name, laid.revision).await?;
            let folder = follower.folder();
            (file, versions, connection, None, Some(Following { revisions: follower.spawn(), board, folder }))
        }
    };
    let readiness = crate::metrics::serve::Readiness::new(connection.client.clone());
    let _served = match options.metrics.as_ref().or(file.metrics_listen.as_ref()) {
        Some(addr) => {
            let (listener, bound) = crate::metrics::serve::bind(addr).await?;
            tracing::info!(address = %bound, "Serving /metrics, /healthz and /readyz.");
            Some(AbortOnDrop(tokio::spawn(crate::metrics::serve::serve(listener, readiness.clone()))))
        }
        None => None,
    };
    let mut host = Host { path: file.path.clone(), connection, engine, clock, running: BTreeMap::new(), readiness };
    host.start_all(&file, versions).await?;
    host.ready(&file);
    if let Some(Following { board, .. }) = following.as_mut() {
        board.running(board.status.revision, host.versions()).await;
    }

    let watch = options.watch && matches!(options.source, Source::File(_));
    let mut watcher = if watch { Some(FileWatcher::new()?) } else { None };
    if let Some(watcher) = watcher.as_mut() {
        watcher.watch(watched_files(&file), granted_folders(&file))?;
    }
    let mut report = tokio::time::interval(options.stats_interval);
    report.tick().await;
    let mut refresh = tokio::time::interval(status::REFRESH);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(path) = async { watcher.as_mut()?.changed().await } => {
                tracing::info!(changed = %path.display(), "A watched file changed; preparing a new version.");
                let reloaded = host.reload(config::load(&host.path), false).await;
                if let Some(file) = &reloaded.file {
                    host.ready(file);
                }
                if let (Some(file), Some(watcher)) = (reloaded.file, watcher.as_mut()) {
                    watcher.watch(watched_files(&file), granted_folders(&file)).unwrap_or_else(|e| tracing::warn!(error = format!("{e:#}"), "Cannot watch the new files."));
                }
            }
            Some(next) = async { following.as_mut()?.revisions.recv().await } => {
                let Some(Following { board, folder, .. }) = following.as_mut() else { continue };
                let release = board.status.release.clone();
                let before = host.granted_folders();
                let handled = match &next {
                    Ok(laid) => laid.revision,
                    Err((revision, _)) => *revision,
                };
                match next {
                    Ok(laid) => {
                        tracing::info!(%release, revision = laid.revision, "A new revision of the release landed; preparing it.");
                        let reloaded = host.reload(laid.load(), true).await;
                        if let Some(file) = reloaded.file.as_ref().filter(|_| reloaded.refused.is_empty()) {
                            host.ready(file);
                        }
                        if reloaded.refused.is_empty() {
                            host.path = laid.file;
                            board.running(laid.revision, host.versions()).await;
                        } else {
                            let reason = reloaded.refused.join("; ");
                            tracing::error!(%release, revision = laid.revision, %reason, "This host cannot take up the new revision; it keeps running the one it runs.");
                            board.refused(laid.revision, reason).await;
                        }
                    }
                    Err((revision, reason)) => {
                        tracing::error!(%release, revision, %reason, "The new revision cannot be fetched; this host keeps running the one it runs.");
                        board.refused(revision, reason).await;
                    }
                }
                // The versions swapped out may still finish a batch: their folders go next time.
                let in_use: Vec<PathBuf> = before.into_iter().chain(host.granted_folders()).collect();
                release::follow::tidy(folder, handled, &in_use);
            }
            _ = refresh.tick(), if following.is_some() => {
                if let Some(Following { board, .. }) = following.as_mut() {
                    board.refresh().await;
                }
            }
            _ = report.tick() => host.report(),
        }
    }

    tracing::info!("Shutting down: no more reading; finishing in-flight batches.");
    // No more revisions are taken up; the follower stops watching.
    let following = following.map(|Following { board, .. }| board);
    host.stop_all().await;
    if let Some(board) = &following {
        board.leave().await;
    }
    host.connection.client.flush().await.context("cannot flush the last messages to NATS")?;
    // Close the connection before the managed server goes, so that stopping
    // it is not mistaken for an outage.
    let _ = host.connection.client.drain().await;
    if let Some(server) = managed {
        server.stop().await;
    }
    Ok(())
}

/// A host following a release: the revisions its follower hands on, its
/// entry in the status bucket, and the folder revisions are laid out in.
struct Following {
    revisions: tokio::sync::mpsc::Receiver<Result<release::follow::Laid, (u64, String)>>,
    board: Board,
    folder: PathBuf,
}

/// What a reload came to: the file, if it could be read, and what failed.
struct Reloaded {
    file: Option<PipelineFile>,
    refused: Vec<String>,
}

/// This host's entry in the fleet's status bucket.
struct Board {
    store: async_nats::jetstream::kv::Store,
    key: String,
    status: status::HostStatus,
}

impl Board {
    async fn open(connection: &Connection, release: &str, revision: u64) -> Result<Self> {
        let host = release::host_name();
        let status = status::HostStatus {
            host: status::host_key(&host),
            release: release.to_string(),
            revision,
            pipelines: BTreeMap::new(),
            since: now(),
            refused: None,
        };
        Ok(Self { store: status::bucket(connection).await?, key: status.host.clone(), status })
    }

    async fn running(&mut self, revision: u64, pipelines: BTreeMap<String, String>) {
        if revision != self.status.revision {
            self.status.since = now();
        }
        self.status.revision = revision;
        self.status.pipelines = pipelines;
        self.status.refused = None;
        self.refresh().await;
    }

    async fn refused(&mut self, revision: u64, reason: String) {
        self.status.refused = Some(status::Refusal { revision, reason });
        self.refresh().await;
    }

    /// A host that stops says so at once, rather than when its entry expires.
    async fn leave(&self) {
        if let Err(error) = self.store.delete(&self.key).await {
            tracing::warn!(%error, "Cannot remove this host's status.");
        }
    }

    async fn refresh(&self) {
        if let Err(error) = status::publish(&self.store, &self.key, &self.status).await {
            tracing::warn!(error = format!("{error:#}"), "Cannot report this host's status.");
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

struct Host {
    path: PathBuf,
    connection: Connection,
    engine: Arc<PluginEngine>,
    clock: Clock,
    running: BTreeMap<String, RunningPipeline>,
    readiness: Arc<crate::metrics::serve::Readiness>,
}

/// A task that ends when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Host {
    async fn start_all(&mut self, file: &PipelineFile, versions: Vec<Arc<PipelineVersion>>) -> Result<()> {
        nats::streams::ensure(&self.connection, &file.streams).await?;
        for version in versions {
            let name = version.spec.name.clone();
            let id = version.id.clone();
            let running = RunningPipeline::start(&self.connection, version).await.with_context(|| format!("pipeline `{name}`"))?;
            crate::metrics::metrics().runs(&name, &id);
            self.running.insert(name, running);
        }
        Ok(())
    }

    /// What `/readyz` answers: the file's pipelines against those running.
    fn ready(&self, file: &PipelineFile) {
        self.readiness.set(file.pipelines.iter().map(|p| p.name.clone()), self.running.keys().cloned());
    }

    /// Brings every pipeline to what the file just read says.
    /// Anything that fails leaves the running version of that pipeline
    /// alone; with `whole`, a file any of whose pipelines fails to prepare
    /// changes nothing at all (a release is taken up whole or not at all).
    async fn reload(&mut self, loaded: Result<PipelineFile>, whole: bool) -> Reloaded {
        let file = match loaded {
            Ok(file) => file,
            Err(error) => {
                tracing::error!(error = %error, "The changed pipeline file has problems; every running version stays.");
                return Reloaded { file: None, refused: vec![format!("{error:#}")] };
            }
        };
        if let Err(error) = nats::streams::ensure(&self.connection, &file.streams).await {
            tracing::error!(error = format!("{error:#}"), "Cannot apply the changed streams; every running version stays.");
            return Reloaded { file: None, refused: vec![format!("{error:#}")] };
        }
        let mut refused = Vec::new();
        let mut versions = Vec::new();
        for spec in &file.pipelines {
            match prepare(&self.engine, spec, &self.clock) {
                Ok(version) => versions.push(version),
                Err(error) => {
                    crate::metrics::metrics().version_change(&spec.name, "refused");
                    tracing::error!(pipeline = %spec.name, error = format!("{error:#}"), "The new version cannot be prepared; the running version stays.");
                    // The error names the pipeline already.
                    refused.push(format!("{error:#}"));
                }
            }
        }
        if whole && !refused.is_empty() {
            return Reloaded { file: Some(file), refused };
        }
        for version in versions {
            let spec = &version.spec;
            let name = spec.name.clone();
            match self.running.get(&name) {
                Some(running) if running.version().id == version.id => {}
                Some(running) if running.can_swap_to(&version) => {
                    tracing::info!(pipeline = %name, from = %running.version().id, to = %version.id, "Swapping to the new version between batches.");
                    crate::metrics::metrics().version_change(&name, "swapped");
                    crate::metrics::metrics().runs(&name, &version.id);
                    running.swap(version);
                }
                _ => {
                    if let Some(old) = self.running.remove(&name) {
                        tracing::info!(pipeline = %name, from = %old.version().id, to = %version.id, "Input, workers, batching, output or sink changed; restarting the pipeline's workers.");
                        progress(&name, &old.stop().await, &self.connection);
                    }
                    let id = version.id.clone();
                    match RunningPipeline::start(&self.connection, version).await {
                        Ok(running) => {
                            crate::metrics::metrics().version_change(&name, "restarted");
                            crate::metrics::metrics().runs(&name, &id);
                            self.running.insert(name, running);
                        }
                        Err(error) => {
                            crate::metrics::metrics().version_change(&name, "refused");
                            crate::metrics::metrics().stops(&name);
                            tracing::error!(pipeline = %name, error = format!("{error:#}"), "Cannot start the pipeline.");
                            refused.push(format!("pipeline `{name}`: {error:#}"));
                        }
                    }
                }
            }
        }
        let gone: Vec<String> = self.running.keys().filter(|name| !file.pipelines.iter().any(|p| &p.name == *name)).cloned().collect();
        for name in gone {
            if let Some(old) = self.running.remove(&name) {
                tracing::info!(pipeline = %name, "The pipeline was removed from the file; stopping it.");
                crate::metrics::metrics().stops(&name);
                progress(&name, &old.stop().await, &self.connection);
            }
        }
        Reloaded { file: Some(file), refused }
    }

    /// Each running pipeline's version id.
    fn versions(&self) -> BTreeMap<String, String> {
        self.running.iter().map(|(name, running)| (name.clone(), running.version().id.clone())).collect()
    }

    /// The granted folders the running versions read.
    fn granted_folders(&self) -> Vec<PathBuf> {
        let versions: Vec<Arc<PipelineVersion>> = self.running.values().map(|running| running.version()).collect();
        versions.iter().flat_map(|version| version.spec.stages.iter().filter_map(|s| s.files.clone())).collect()
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
        held_back = s.held_back, undeliverable = s.undeliverable, publish_retries = s.publish_retries, lost_dead_letters = s.lost_dead_letters, ack_failures = s.settle_failures,
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
