//! What a running host counts and measures, for Prometheus: one registry
//! for the process, its metrics labelled by pipeline (and stage, code or
//! kind where they apply), and the endpoints that serve it (`serve`).
//!
//! Labels come from the pipeline file (pipeline and stage names) and from a
//! fixed set (fault kinds, swap outcomes); the one open set, the rejection
//! codes plugins choose, is capped per stage, so a plugin cannot grow the
//! host's memory or a Prometheus server's series without bound.

pub mod histogram;
pub mod plugin;
pub mod serve;

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Rejection codes counted apart per stage; the rest count as `other`.
pub const MAX_CODES_PER_STAGE: usize = 32;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabel {
    pub pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub pipeline: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub pipeline: String,
    /// The stage that refused the event; `input` and `output` for the host's checks.
    pub stage: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    pub pipeline: String,
    pub stage: String,
    /// `timeout`, `memory_limit`, `trap`, `contract` or `output_limit`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub pipeline: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginCounterLabels {
    pub pipeline: String,
    pub stage: String,
    /// The name the plugin counts under (at most 64 names per stage).
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NatsEventLabels {
    /// `connected`, `disconnected`, `slow_consumer`, `lame_duck_mode`,
    /// `server_error`, `client_error`, `draining` or `closed`.
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub pipeline: String,
    /// `accepted`, `refused` (a 4xx: dead-lettered) or `failed` (one try
    /// that may pass: a timeout, 408, 429, 5xx; tried again).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LogLabels {
    /// `warn` or `error`.
    pub level: String,
    /// The module that logged it, e.g. `sluice::runtime::worker`.
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwapLabels {
    pub pipeline: String,
    /// `swapped` (between batches), `restarted` (workers started again) or
    /// `refused` (the new version could not be prepared or started).
    pub outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A sink's state: its size, and the time to store it.
#[derive(Debug)]
pub struct SinkState {
    pub bytes: Gauge,
    pub store_seconds: Histogram,
}

/// A JetStream input's backlog, as its consumer reports it.
pub struct Backlog {
    pub pending: Gauge,
    pub ack_pending: Gauge,
    pub redelivered: Gauge,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    pub received: Family<PipelineLabel, Counter>,
    pub published: Family<PipelineLabel, Counter>,
    rejected: Family<RejectLabels, Counter>,
    pub dropped: Family<PipelineLabel, Counter>,
    faults: Family<FaultLabels, Counter>,
    pub failed_batches: Family<PipelineLabel, Counter>,
    pub already_counted: Family<PipelineLabel, Counter>,
    pub held_back: Family<PipelineLabel, Counter>,
    pub undeliverable: Family<PipelineLabel, Counter>,
    pub publish_retries: Family<PipelineLabel, Counter>,
    pub lost_dead_letters: Family<PipelineLabel, Counter>,
    pub settle_failures: Family<PipelineLabel, Counter>,
    batch_events: HistogramFamily<PipelineLabel>,
    latency: Family<PipelineLabel, histogram::DurationHistogram, fn() -> histogram::DurationHistogram>,
    stage_seconds: HistogramFamily<StageLabels>,
    restarts: Family<StageLabels, Counter>,
    state_bytes: Family<PipelineLabel, Gauge>,
    state_store: HistogramFamily<PipelineLabel>,
    webhook: Family<WebhookLabels, Counter>,
    input_pending: Family<PipelineLabel, Gauge>,
    input_ack_pending: Family<PipelineLabel, Gauge>,
    input_redelivered: Family<PipelineLabel, Gauge>,
    version: Family<VersionLabels, Gauge>,
    swaps: Family<SwapLabels, Counter>,
    logged: Family<LogLabels, Counter>,
    plugin_counters: Family<PluginCounterLabels, Counter>,
    nats_events: Family<NatsEventLabels, Counter>,
    samples_refused: Family<StageLabels, Counter>,
    /// What plugins declared through the `metrics` import, under their own
    /// names (no `sluice_` prefix): a registry of their own.
    pub plugins: std::sync::Arc<plugin::PluginMetrics>,
    plugin_registry: Registry,
    /// 1 while the NATS connection is up, 0 while it is being re-established.
    pub nats_connected: Gauge,
    /// The codes counted apart so far, per pipeline and stage.
    codes: Mutex<HashMap<(String, String), HashSet<String>>>,
    /// The version each pipeline runs, as `version` has it.
    running: Mutex<HashMap<String, String>>,
}

/// A family of metrics labelled by pipeline, registered under `name`.
fn per_pipeline<M>(registry: &mut Registry, name: &str, help: &str) -> Family<PipelineLabel, M>
where
    M: prometheus_client::registry::Metric + Default + Clone,
    Family<PipelineLabel, M>: prometheus_client::registry::Metric,
{
    let family = Family::<PipelineLabel, M>::default();
    registry.register(name, help, family.clone());
    family
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let counter = per_pipeline::<Counter>;
        let received = counter(&mut registry, "events_received", "Events read from a pipeline's input");
        let published = counter(&mut registry, "events_published", "Events a pipeline published on its output subjects (or sent to its webhook)");
        let dropped = counter(&mut registry, "events_dropped", "Events a stage dropped on purpose");
        let failed_batches =
            counter(&mut registry, "failed_batches", "Batches whose outputs could not all be delivered (redelivered on JetStream, lost on core NATS)");
        let already_counted =
            counter(&mut registry, "events_already_counted", "Inputs a sink's kept state had counted before a restart, acked without counting them again");
        let held_back = counter(&mut registry, "events_held_back", "Inputs held back for redelivery because NATS refused what they produced");
        let undeliverable = counter(&mut registry, "events_undeliverable", "Inputs dead-lettered as undeliverable after NATS kept refusing their outputs");
        let publish_retries = counter(&mut registry, "publish_retries", "Rounds of sending again messages whose failure may pass");
        let lost_dead_letters = counter(&mut registry, "dead_letters_lost", "Dead letters NATS refused too: events lost");
        let settle_failures = counter(
            &mut registry,
            "ack_failures",
            "Acks and naks of JetStream inputs that NATS did not take: the input is handed out again, and its outputs' message ids keep them from being stored twice",
        );
        let rejected = Family::<RejectLabels, Counter>::default();
        registry.register("events_rejected", "Events sent to the dead-letter subject, by the stage that refused them and its code", rejected.clone());
        let faults = Family::<FaultLabels, Counter>::default();
        registry.register("plugin_faults", "Calls into a plugin that trapped, timed out, hit the memory cap or broke the contract", faults.clone());
        let batch_events: HistogramFamily<PipelineLabel> = Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 14)));
        registry.register("batch_events", "Events per batch read from a pipeline's input", batch_events.clone());
        // Observed once per event: the lock-free kind.
        let latency: Family<PipelineLabel, histogram::DurationHistogram, fn() -> histogram::DurationHistogram> =
            Family::new_with_constructor(|| histogram::DurationHistogram::new(exponential_buckets(0.000_5, 2.0, 20)));
        registry.register_with_unit(
            "event_latency",
            "From an event's arrival (its JetStream timestamp, or its receipt by the host on core NATS) to its outputs stored and the event acked",
            Unit::Seconds,
            latency.clone(),
        );
        let stage_seconds: HistogramFamily<StageLabels> = Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_05, 2.0, 18)));
        registry.register_with_unit(
            "stage_call_duration",
            "Time of one call into a stage's plugin (a batch, or one event of a batch retried event by event)",
            Unit::Seconds,
            stage_seconds.clone(),
        );
        let restarts = Family::<StageLabels, Counter>::default();
        registry.register(
            "instances_restarted",
            "Instances of a stage started again after a fault (or, for a sink, after its outputs were not published)",
            restarts.clone(),
        );
        let gauge = per_pipeline::<Gauge>;
        let input_pending = gauge(&mut registry, "input_pending", "Messages of a JetStream input not yet handed to the pipeline (read every 5 s)");
        let input_ack_pending = gauge(&mut registry, "input_ack_pending", "Messages of a JetStream input handed to the pipeline and not yet acked");
        let input_redelivered = gauge(&mut registry, "input_redelivered", "Messages of a JetStream input handed out more than once and not yet acked");
        let state_bytes = gauge(&mut registry, "sink_state_bytes", "The size of a sink's state, as last stored");
        let state_store: HistogramFamily<PipelineLabel> = Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_25, 2.0, 16)));
        registry.register_with_unit(
            "sink_state_store_duration",
            "Time to store a sink's state in its key-value bucket (each try)",
            Unit::Seconds,
            state_store.clone(),
        );
        let webhook = Family::<WebhookLabels, Counter>::default();
        registry.register("webhook_requests", "Requests to a pipeline's webhook output, by outcome", webhook.clone());
        let version = Family::<VersionLabels, Gauge>::default();
        registry.register("pipeline_version_info", "The version a pipeline runs (1), by its id", version.clone());
        let swaps = Family::<SwapLabels, Counter>::default();
        registry.register("pipeline_version_changes", "New versions of a pipeline taken up or refused", swaps.clone());
        let plugin_counters = Family::<PluginCounterLabels, Counter>::default();
        registry.register("plugin_counter", "What plugins counted through the host's `counters` import, by stage and name", plugin_counters.clone());
        let samples_refused = Family::<StageLabels, Counter>::default();
        registry.register(
            "plugin_samples_refused",
            "Samples a plugin sent through the `metrics` import that the host could not take (an unknown handle, a wrong number of labels, a value its metric cannot take)",
            samples_refused.clone(),
        );
        let plugins = std::sync::Arc::new(plugin::PluginMetrics::default());
        let mut plugin_registry = Registry::default();
        plugin_registry.register_collector(Box::new(plugins.clone()));
        let nats_events = Family::<NatsEventLabels, Counter>::default();
        registry.register(
            "nats_client_events",
            "What the NATS client reported: connections, disconnections, subscriptions that fell behind (the client dropped messages), server errors",
            nats_events.clone(),
        );
        let nats_connected = Gauge::default();
        registry.register("nats_connected", "1 while the host is connected to NATS, 0 while it reconnects", nats_connected.clone());
        let logged = Family::<LogLabels, Counter>::default();
        registry.register("log_events", "Warnings and errors written to the log, by level and the module that wrote them", logged.clone());
        // From 0, under the crate's name, so that a rate by level shows 0
        // before the first one rather than nothing.
        for level in ["warn", "error"] {
            let _ = logged.get_or_create(&LogLabels { level: level.into(), target: "sluice".into() });
        }
        Self {
            registry,
            received,
            published,
            rejected,
            dropped,
            faults,
            failed_batches,
            already_counted,
            held_back,
            undeliverable,
            publish_retries,
            lost_dead_letters,
            settle_failures,
            batch_events,
            latency,
            stage_seconds,
            restarts,
            state_bytes,
            state_store,
            webhook,
            input_pending,
            input_ack_pending,
            input_redelivered,
            version,
            swaps,
            logged,
            plugin_counters,
            nats_events,
            samples_refused,
            plugins,
            plugin_registry,
            nats_connected,
            codes: Mutex::default(),
            running: Mutex::default(),
        }
    }

    /// The metrics in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.plugin_registry);
        text
    }

    /// One event refused at `stage` with `code`; past
    /// [`MAX_CODES_PER_STAGE`] codes of one stage, counted as `other`.
    pub fn reject(&self, pipeline: &str, stage: &str, code: &str) {
        let code = {
            let mut codes = self.codes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let known = codes.entry((pipeline.to_string(), stage.to_string())).or_default();
            if known.contains(code) || known.len() < MAX_CODES_PER_STAGE {
                known.insert(code.to_string());
                code
            } else {
                "other"
            }
        };
        self.rejected.get_or_create(&RejectLabels { pipeline: pipeline.into(), stage: stage.into(), code: code.into() }).inc();
    }

    /// The kinds of fault, as `fault` counts them.
    pub const FAULT_KINDS: [&'static str; 5] = ["timeout", "memory_limit", "trap", "contract", "output_limit"];

    /// A stage's faults counted from 0 of every kind, so that its first
    /// fault shows as an increase and a dashboard shows 0 before it.
    pub fn stage_starts(&self, pipeline: &str, stage: &str) {
        for kind in Self::FAULT_KINDS {
            let _ = self.faults.get_or_create(&FaultLabels { pipeline: pipeline.into(), stage: stage.into(), kind: kind.into() });
        }
    }

    pub fn fault(&self, pipeline: &str, stage: &str, kind: &str) {
        self.faults.get_or_create(&FaultLabels { pipeline: pipeline.into(), stage: stage.into(), kind: kind.into() }).inc();
    }

    /// A handle on the time of calls into one stage.
    pub fn stage_calls(&self, pipeline: &str, stage: &str) -> Histogram {
        self.stage_seconds.get_or_create_owned(&StageLabels { pipeline: pipeline.into(), stage: stage.into() })
    }

    /// An event of the NATS client.
    pub fn nats_event(&self, event: &async_nats::Event) {
        use async_nats::Event;
        let name = match event {
            Event::Connected => "connected",
            Event::Disconnected => "disconnected",
            Event::SlowConsumer(_) => "slow_consumer",
            Event::LameDuckMode => "lame_duck_mode",
            Event::ServerError(_) => "server_error",
            Event::ClientError(_) => "client_error",
            Event::Draining => "draining",
            Event::Closed => "closed",
        };
        match event {
            Event::Connected => self.nats_connected.set(1),
            Event::Disconnected | Event::Closed => self.nats_connected.set(0),
            _ => 0,
        };
        self.nats_events.get_or_create(&NatsEventLabels { event: name.into() }).inc();
    }

    /// A handle on one name a stage's plugin counts under.
    pub fn plugin_counter(&self, pipeline: &str, stage: &str, name: &str) -> Counter {
        self.plugin_counters.get_or_create_owned(&PluginCounterLabels { pipeline: pipeline.into(), stage: stage.into(), name: name.into() })
    }

    /// A handle on the samples of one stage's plugin the host refused.
    pub fn samples_refused(&self, pipeline: &str, stage: &str) -> Counter {
        self.samples_refused.get_or_create_owned(&StageLabels { pipeline: pipeline.into(), stage: stage.into() })
    }

    /// Handles on one pipeline's sink state.
    pub fn sink_state(&self, pipeline: &str) -> SinkState {
        let label = PipelineLabel { pipeline: pipeline.into() };
        SinkState { bytes: self.state_bytes.get_or_create_owned(&label), store_seconds: self.state_store.get_or_create_owned(&label) }
    }

    /// A handle on one outcome of a pipeline's webhook requests.
    pub fn webhook(&self, pipeline: &str, outcome: &str) -> Counter {
        self.webhook.get_or_create_owned(&WebhookLabels { pipeline: pipeline.into(), outcome: outcome.into() })
    }

    /// Handles on one pipeline's input backlog.
    pub fn backlog(&self, pipeline: &str) -> Backlog {
        let label = PipelineLabel { pipeline: pipeline.into() };
        Backlog {
            pending: self.input_pending.get_or_create_owned(&label),
            ack_pending: self.input_ack_pending.get_or_create_owned(&label),
            redelivered: self.input_redelivered.get_or_create_owned(&label),
        }
    }

    /// A handle on the restarts of one stage's instances.
    pub fn instance_restarts(&self, pipeline: &str, stage: &str) -> Counter {
        self.restarts.get_or_create_owned(&StageLabels { pipeline: pipeline.into(), stage: stage.into() })
    }

    /// A handle on one pipeline's end-to-end latency.
    pub fn event_latency(&self, pipeline: &str) -> histogram::DurationHistogram {
        self.latency.get_or_create_owned(&PipelineLabel { pipeline: pipeline.into() })
    }

    /// A handle on the sizes of one pipeline's batches.
    pub fn batch_events(&self, pipeline: &str) -> Histogram {
        self.batch_events.get_or_create_owned(&PipelineLabel { pipeline: pipeline.into() })
    }

    /// `pipeline` runs `version` now, and no other. Its version changes are
    /// counted from 0 on, so that the first one shows as an increase.
    pub fn runs(&self, pipeline: &str, version: &str) {
        for outcome in ["swapped", "restarted", "refused"] {
            let _ = self.swaps.get_or_create(&SwapLabels { pipeline: pipeline.into(), outcome: outcome.into() });
        }
        self.stops(pipeline);
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(pipeline.into(), version.into());
        self.version.get_or_create(&VersionLabels { pipeline: pipeline.into(), version: version.into() }).set(1);
    }

    /// `pipeline` runs no version any more.
    pub fn stops(&self, pipeline: &str) {
        let before = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(pipeline);
        if let Some(version) = before {
            self.version.remove(&VersionLabels { pipeline: pipeline.into(), version });
        }
    }

    /// A new version of `pipeline` was taken up (`swapped`, `restarted`) or `refused`.
    pub fn version_change(&self, pipeline: &str, outcome: &str) {
        self.swaps.get_or_create(&SwapLabels { pipeline: pipeline.into(), outcome: outcome.into() }).inc();
    }
}

/// Counts every warning and error logged into `sluice_log_events_total`, so
/// that what the log says shows on a dashboard too.
pub struct LogEvents;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let metadata = event.metadata();
        // Levels order from the most severe up: ERROR is the least.
        if *metadata.level() <= tracing::Level::WARN {
            let labels = LogLabels { level: metadata.level().as_str().to_ascii_lowercase(), target: metadata.target().to_string() };
            metrics().logged.get_or_create(&labels).inc();
        }
    }
}
