//! A pipeline version: everything needed to start instances of its stages,
//! prepared off to the side so that a failure anywhere (a missing file, a
//! component of the wrong world, an `init` that refuses its config) is found
//! before the version replaces a running one.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::Engine;

use crate::config::{PipelineSpec, StageSpec};
use crate::plugin::{Clock, Counters, Grants, PluginEngine, SinkInstance, SinkPre, StageContext, TransformInstance, TransformPre};

/// One stage, compiled and linked as a transform or a sink, ready to instantiate.
pub struct PreparedStage<Pre = TransformPre> {
    pub spec: StageSpec,
    pub context: Arc<StageContext>,
    engine: Engine,
    pre: Pre,
}

/// The sink that ends a pipeline, if it has one.
pub type PreparedSink = PreparedStage<SinkPre>;

impl PreparedStage {
    /// A new instance, initialised with the stage's config.
    pub fn start(&self) -> Result<TransformInstance> {
        TransformInstance::start(&self.engine, &self.pre, self.context.clone(), &self.spec).with_context(|| format!("stage `{}`", self.spec.name))
    }

    /// A new instance in place of one that faulted (counted in the metrics).
    pub fn restart(&self) -> Result<TransformInstance> {
        self.context.restarts.inc();
        self.start()
    }
}

impl PreparedSink {
    /// A new instance, initialised with the stage's config and, when there is
    /// one, the state an earlier instance left.
    pub fn start(&self, state: Option<&[u8]>) -> Result<SinkInstance> {
        let mut instance =
            SinkInstance::start(&self.engine, &self.pre, self.context.clone(), &self.spec).with_context(|| format!("stage `{}`", self.spec.name))?;
        if let Some(state) = state {
            instance.restore(state).with_context(|| format!("stage `{}`", self.spec.name))?;
        }
        Ok(instance)
    }

    /// A new instance, from `state`, in place of one that faulted or whose
    /// outputs were not published (counted in the metrics).
    pub fn restart(&self, state: Option<&[u8]>) -> Result<SinkInstance> {
        self.context.restarts.inc();
        self.start(state)
    }
}

pub struct PipelineVersion {
    pub spec: PipelineSpec,
    /// Hex digest of the pipeline's settings and every component's bytes.
    pub id: String,
    /// The transform stages, in order.
    pub stages: Vec<PreparedStage>,
    /// A stateful sink after them, whose own events are the pipeline's outputs.
    pub sink: Option<PreparedSink>,
}

/// Where the variables a stage is granted (`env = [...]`) are read from.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// Values that take the place of the process's (a case file's `env`).
    given: BTreeMap<String, String>,
    /// Whether a variable set nowhere gets a stand-in value instead of
    /// stopping the version: `sluice validate` checks a file without the
    /// secrets it will run with.
    stand_ins: bool,
}

impl Environment {
    /// The process's environment; a missing variable stops the version.
    pub fn process() -> Self {
        Self::default()
    }

    /// These values first, then the process's.
    pub fn given(values: BTreeMap<String, String>) -> Self {
        Self { given: values, stand_ins: false }
    }

    /// The process's environment, with a stand-in for any variable it lacks.
    pub fn with_stand_ins() -> Self {
        Self { given: BTreeMap::new(), stand_ins: true }
    }

    /// The value a stand-in variable holds: long enough for a key.
    pub fn stand_in(name: &str) -> String {
        format!("sluice-validate-stand-in-for-{name}")
    }

    /// Whether `name` has a value here without a stand-in.
    pub fn has(&self, name: &str) -> bool {
        self.given.contains_key(name) || std::env::var(name).is_ok()
    }

    fn value(&self, name: &str) -> Result<String> {
        if let Some(value) = self.given.get(name) {
            return Ok(value.clone());
        }
        match std::env::var(name) {
            Ok(value) => Ok(value),
            Err(_) if self.stand_ins => Ok(Self::stand_in(name)),
            Err(_) => anyhow::bail!("the stage needs the environment variable {name}, which is not set (or not UTF-8)"),
        }
    }
}

impl PipelineVersion {
    /// Compiles, links and tries `init` on every stage, granting each the
    /// variables it names from `env`.
    pub fn prepare(engine: &PluginEngine, spec: &PipelineSpec, clock: &Clock, env: &Environment) -> Result<Arc<Self>> {
        let mut hasher = Sha256::new();
        hasher.update(serde_json::to_vec(spec).context("cannot hash the pipeline settings")?);
        let mut stages = Vec::with_capacity(spec.stages.len());
        let mut sink = None;
        for (n, stage) in spec.stages.iter().enumerate() {
            let last = n + 1 == spec.stages.len();
            let (prepared, digest) = prepare_stage(engine, &spec.name, stage, clock, env, last).with_context(|| format!("pipeline `{}`", spec.name))?;
            hasher.update(digest);
            match prepared {
                Linked::Transform(stage) => stages.push(stage),
                Linked::Sink(stage) => sink = Some(stage),
            }
        }
        if sink.is_some() && spec.workers != 1 {
            anyhow::bail!("pipeline `{}` ends in a sink, which keeps its state in one instance: set `workers = 1` (it has {})", spec.name, spec.workers);
        }
        if sink.is_none() && spec.state_every.is_some() {
            anyhow::bail!("pipeline `{}` sets `state_every`, but keeps no state: only a pipeline that ends in a sink stores one", spec.name);
        }
        let id = super::hex(&hasher.finalize()[..8]);
        Ok(Arc::new(Self { spec: spec.clone(), id, stages, sink }))
    }
}

impl PipelineVersion {
    /// Its stages' names in order, the sink's last.
    pub fn stage_names(&self) -> Vec<String> {
        self.stages.iter().map(|s| s.spec.name.clone()).chain(self.sink.iter().map(|s| s.spec.name.clone())).collect()
    }

    /// What its plugins counted through the `counters` import, as
    /// `stage.name=value` pairs: since this version started, summed over its
    /// instances.
    pub fn plugin_counters(&self) -> String {
        let contexts = self.stages.iter().map(|s| &s.context).chain(self.sink.iter().map(|s| &s.context));
        let mut pairs = Vec::new();
        for context in contexts {
            for (name, value) in context.counters.snapshot() {
                pairs.push(format!("{}.{name}={value}", context.name));
            }
        }
        pairs.join(" ")
    }
}

enum Linked {
    Transform(PreparedStage),
    Sink(PreparedSink),
}

enum Pre {
    Transform(TransformPre),
    Sink(SinkPre),
}

/// Prepares one stage; the digest covers its component and everything it was
/// granted. Only the `last` stage may be a sink.
fn prepare_stage(engine: &PluginEngine, pipeline: &str, spec: &StageSpec, clock: &Clock, env: &Environment, last: bool) -> Result<(Linked, [u8; 32])> {
    let (loaded, pre) = engine
        .load(&spec.component)
        .and_then(|loaded| {
            let pre = match engine.transform_pre(&loaded.component) {
                Ok(pre) => Pre::Transform(pre),
                Err(not_transform) => match engine.sink_pre(&loaded.component) {
                    Ok(pre) if last => Pre::Sink(pre),
                    Ok(_) => anyhow::bail!("the component is a sink, and a sink can only be a pipeline's last stage"),
                    Err(_) => return Err(not_transform),
                },
            };
            Ok((loaded, pre))
        })
        .with_context(|| format!("stage `{}`, component {}", spec.name, spec.component.display()))?;
    let grants = grants(spec, env).with_context(|| format!("stage `{}`", spec.name))?;
    let mut digest = Sha256::new();
    digest.update(loaded.digest);
    for (name, value) in &grants.env {
        digest.update(format!("{name}={value}\n"));
    }
    if let Some(folder) = &grants.files {
        hash_folder(&mut digest, folder).with_context(|| format!("stage `{}`: cannot read its files {}", spec.name, folder.display()))?;
    }
    crate::metrics::metrics().stage_starts(pipeline, &spec.name);
    let context = Arc::new(StageContext {
        pipeline: pipeline.into(),
        name: spec.name.as_str().into(),
        clock: clock.clone(),
        counters: Counters::of_stage(pipeline, &spec.name),
        metrics: crate::metrics::plugin::StageMetrics::of_stage(pipeline, &spec.name),
        grants,
        calls: crate::metrics::metrics().stage_calls(pipeline, &spec.name),
        restarts: crate::metrics::metrics().instance_restarts(pipeline, &spec.name),
    });
    let engine = engine.engine().clone();
    // One instance now, so that an `init` that refuses its config stops the
    // version here rather than in a worker.
    let linked = match pre {
        Pre::Transform(pre) => {
            let stage = PreparedStage { spec: spec.clone(), context, engine, pre };
            stage.start()?;
            Linked::Transform(stage)
        }
        Pre::Sink(pre) => {
            let stage = PreparedSink { spec: spec.clone(), context, engine, pre };
            stage.start(None)?;
            Linked::Sink(stage)
        }
    };
    Ok((linked, digest.finalize().into()))
}

/// The stage's grants, with environment values read now.
fn grants(spec: &StageSpec, environment: &Environment) -> Result<Grants> {
    let env = spec.env.iter().map(|name| Ok((name.clone(), environment.value(name)?))).collect::<Result<_>>()?;
    Ok(Grants { files: spec.files.clone(), env })
}

/// Adds every file below `folder` (names and contents, in order) to `digest`,
/// so that a changed file makes a new version.
fn hash_folder(digest: &mut Sha256, folder: &std::path::Path) -> Result<()> {
    for path in files_below(folder)? {
        digest.update(path.strip_prefix(folder).unwrap_or(&path).to_string_lossy().as_bytes());
        digest.update(std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?);
    }
    Ok(())
}

/// Every file below `folder`, sorted.
pub fn files_below(folder: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() { pending.push(path) } else { files.push(path) }
        }
    }
    files.sort();
    Ok(files)
}
