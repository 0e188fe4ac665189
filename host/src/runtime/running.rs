//! A pipeline that is running: its workers, the channel that hands them new
//! versions, and the switch that stops them.

use std::sync::Arc;

use anyhow::Result;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::lease::{self, Fence};
use super::stats::Stats;
use super::tap::{self, Taps};
use super::worker::Worker;
use crate::nats::Connection;
use crate::nats::input::Source;
use crate::nats::publish::Publisher;
use crate::pipeline::PipelineVersion;

pub struct RunningPipeline {
    pub stats: Arc<Stats>,
    versions: watch::Sender<Arc<PipelineVersion>>,
    shutdown: watch::Sender<bool>,
    workers: JoinSet<Result<()>>,
}

/// Takes up the taps asked for on `sluice.tap.<pipeline>` until the pipeline
/// stops, and greets each new one on its inbox.
async fn listen_for_taps(
    connection: Connection,
    versions: watch::Receiver<Arc<PipelineVersion>>,
    taps: Arc<Taps>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let pipeline = versions.borrow().spec.name.clone();
    use tokio_stream::StreamExt as _;
    let subject = format!("sluice.tap.{pipeline}");
    let mut requests = match connection.client.subscribe(subject.clone()).await {
        Ok(requests) => requests,
        Err(error) => {
            tracing::warn!(%pipeline, %error, "Cannot listen for taps; `sluice tap` will not see this host.");
            return Ok(());
        }
    };
    loop {
        let message = tokio::select! {
            message = requests.next() => message,
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
        };
        let Some(message) = message else { return Ok(()) };
        match serde_json::from_slice::<tap::Request>(&message.payload) {
            Ok(request) => {
                let inbox = request.inbox.clone();
                if crate::subject::check(&inbox, false).is_ok() && taps.request(request) {
                    tracing::info!(%pipeline, %inbox, "Someone taps this pipeline.");
                    let stages = versions.borrow().stage_names();
                    let hello = tap::Hello { tapping: crate::release::host_name(), pipeline: pipeline.clone(), stages };
                    let _ = connection.client.publish(inbox, serde_json::to_vec(&hello).unwrap_or_default().into()).await;
                }
            }
            Err(error) => tracing::debug!(%pipeline, %error, "A tap request that does not read; ignored."),
        }
    }
}

/// How often a JetStream input's backlog is read into the metrics.
const BACKLOG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps a JetStream input's backlog in the metrics until the pipeline stops.
async fn watch_backlog(source: Arc<Source>, pipeline: String, mut stop: watch::Receiver<bool>) -> Result<()> {
    let gauges = crate::metrics::metrics().backlog(&pipeline);
    loop {
        if let Some((pending, ack_pending, redelivered)) = source.backlog().await {
            gauges.pending.set(pending as i64);
            gauges.ack_pending.set(ack_pending as i64);
            gauges.redelivered.set(redelivered as i64);
        }
        tokio::select! {
            () = tokio::time::sleep(BACKLOG_EVERY) => {}
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
        }
    }
}

impl RunningPipeline {
    pub async fn start(connection: &Connection, version: Arc<PipelineVersion>) -> Result<Self> {
        let spec = &version.spec;
        let in_order = version.sink.is_some();
        let source = Arc::new(Source::open(connection, spec).await?);
        let publisher = Publisher::new(connection.clone(), spec)?;
        let (versions, _) = watch::channel(version.clone());
        let (shutdown, _) = watch::channel(false);
        let stats = Arc::new(Stats::new(&spec.name));
        let mut workers = JoinSet::new();
        if matches!(*source, Source::JetStream(_)) {
            workers.spawn(watch_backlog(source.clone(), spec.name.clone(), shutdown.subscribe()));
        }
        let taps = Arc::new(Taps::default());
        workers.spawn(listen_for_taps(connection.clone(), versions.subscribe(), taps.clone(), shutdown.subscribe()));
        if in_order {
            // One worker, on one host at a time: it reads only while this host holds the lease.
            let (max_events, max_wait) = (spec.max_events, spec.max_wait);
            let start = {
                let (connection, source, publisher, stats, versions, taps) =
                    (connection.clone(), source.clone(), publisher.clone(), stats.clone(), versions.clone(), taps.clone());
                move |fence: Fence, stop: watch::Receiver<bool>| {
                    let worker = Worker {
                        index: 0,
                        connection: connection.clone(),
                        source: source.clone(),
                        publisher: publisher.clone(),
                        versions: versions.subscribe(),
                        stats: stats.clone(),
                        taps: taps.clone(),
                        shutdown: stop,
                        fence: Some(fence),
                    };
                    let pipeline = versions.borrow().spec.name.clone();
                    let mut stopped = worker.shutdown.clone();
                    async move {
                        tokio::select! {
                            () = worker.source.wait_for_unsettled(&pipeline) => {}
                            _ = stopped.changed() => return Ok(()),
                        }
                        let batches = worker.source.reader(&worker.connection, max_events, max_wait).await?;
                        worker.run(batches).await
                    }
                }
            };
            let key = lease::key(&spec.state_bucket, &spec.name);
            workers.spawn(lease::hold(connection.clone(), spec.name.clone(), key, shutdown.subscribe(), start));
            tracing::info!(pipeline = %spec.name, version = %version.id, workers = 1, input = %spec.input.subject(), "Pipeline started.");
            return Ok(Self { stats, versions, shutdown, workers });
        }
        for index in 0..spec.workers {
            // Subscribed before the pipeline is said to have started: a core
            // event published after that is not missed.
            let batches = source.reader(connection, spec.max_events, spec.max_wait).await?;
            let worker = Worker {
                index,
                connection: connection.clone(),
                source: source.clone(),
                publisher: publisher.clone(),
                versions: versions.subscribe(),
                stats: stats.clone(),
                taps: taps.clone(),
                shutdown: shutdown.subscribe(),
                fence: None,
            };
            workers.spawn(worker.run(batches));
        }
        tracing::info!(pipeline = %spec.name, version = %version.id, workers = spec.workers, input = %spec.input.subject(), "Pipeline started.");
        Ok(Self { stats, versions, shutdown, workers })
    }

    pub fn version(&self) -> Arc<PipelineVersion> {
        self.versions.borrow().clone()
    }

    /// Whether `new` can replace the running version between two batches, or
    /// needs the workers restarted (a different input, worker count, batch
    /// shape, output or tick; a sink added or taken away, or its state kept
    /// in another bucket or stored at another pace: a worker fixes those
    /// when it starts).
    pub fn can_swap_to(&self, new: &PipelineVersion) -> bool {
        let running = self.version();
        let (old, spec) = (&running.spec, &new.spec);
        old.input == spec.input
            && old.workers == spec.workers
            && old.max_events == spec.max_events
            && old.max_wait == spec.max_wait
            && old.output_jetstream == spec.output_jetstream
            && old.tick == spec.tick
            && old.webhook == spec.webhook
            && running.sink.is_some() == new.sink.is_some()
            && old.state_bucket == spec.state_bucket
            && old.state_every == spec.state_every
    }

    /// Hands a new version to the workers; each takes it up after its current batch.
    pub fn swap(&self, version: Arc<PipelineVersion>) {
        self.versions.send_replace(version);
    }

    /// Stops reading, lets every in-flight batch finish and be acked, and
    /// waits; what is left is the pipeline's final counts.
    pub async fn stop(mut self) -> Self {
        let _ = self.shutdown.send(true);
        while let Some(joined) = self.workers.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(error = format!("{error:#}"), "A worker ended with an error."),
                Err(error) => tracing::error!(%error, "A worker panicked."),
            }
        }
        self
    }

    /// A worker that ended on its own (an error at start, say) is reported.
    pub fn reap(&mut self, pipeline: &str) {
        while let Some(joined) = self.workers.try_join_next() {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(pipeline, error = format!("{error:#}"), "A worker stopped with an error."),
                Err(error) => tracing::error!(pipeline, %error, "A worker panicked."),
            }
        }
    }
}
