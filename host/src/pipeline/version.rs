//! A pipeline version: everything needed to start instances of its stages,
//! prepared off to the side so that a failure anywhere (a missing file, a
//! component of the wrong world, an `init` that refuses its config) is found
//! before the version replaces a running one.

use std::sync::Arc;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::Engine;

use crate::config::{PipelineSpec, StageSpec};
use crate::plugin::bindings::transform::TransformPre;
use crate::plugin::{Clock, Counters, Grants, PluginEngine, StageContext, StageState, TransformInstance};

/// One stage, compiled and linked, ready to instantiate.
pub struct PreparedStage {
    pub spec: StageSpec,
    pub context: Arc<StageContext>,
    engine: Engine,
    pre: TransformPre<StageState>,
}

impl PreparedStage {
    /// A new instance, initialised with the stage's config.
    pub fn start(&self) -> Result<TransformInstance> {
        TransformInstance::start(&self.engine, &self.pre, self.context.clone(), self.spec.time_budget, self.spec.memory_limit, &self.spec.config)
            .with_context(|| format!("stage `{}`", self.spec.name))
    }
}

pub struct PipelineVersion {
    pub spec: PipelineSpec,
    /// Hex digest of the pipeline's settings and every component's bytes.
    pub id: String,
    pub stages: Vec<PreparedStage>,
}

impl PipelineVersion {
    /// Compiles, links and tries `init` on every stage.
    pub fn prepare(engine: &PluginEngine, spec: &PipelineSpec, clock: &Clock) -> Result<Arc<Self>> {
        let mut hasher = Sha256::new();
        hasher.update(serde_json::to_vec(spec).context("cannot hash the pipeline settings")?);
        let mut stages = Vec::with_capacity(spec.stages.len());
        for stage in &spec.stages {
            let (prepared, digest) = prepare_stage(engine, &spec.name, stage, clock).with_context(|| format!("pipeline `{}`", spec.name))?;
            hasher.update(digest);
            stages.push(prepared);
        }
        let id = hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
        Ok(Arc::new(Self { spec: spec.clone(), id, stages }))
    }
}

/// Prepares one stage; the digest covers its component and everything it was granted.
fn prepare_stage(engine: &PluginEngine, pipeline: &str, spec: &StageSpec, clock: &Clock) -> Result<(PreparedStage, [u8; 32])> {
    let (loaded, pre) = engine
        .load(&spec.component)
        .and_then(|loaded| engine.transform_pre(&loaded.component).map(|pre| (loaded, pre)))
        .with_context(|| format!("stage `{}`, component {}", spec.name, spec.component.display()))?;
    let grants = grants(spec).with_context(|| format!("stage `{}`", spec.name))?;
    let mut digest = Sha256::new();
    digest.update(loaded.digest);
    for (name, value) in &grants.env {
        digest.update(format!("{name}={value}\n"));
    }
    if let Some(folder) = &grants.files {
        hash_folder(&mut digest, folder).with_context(|| format!("stage `{}`: cannot read its files {}", spec.name, folder.display()))?;
    }
    let context = Arc::new(StageContext {
        pipeline: pipeline.into(),
        name: spec.name.as_str().into(),
        clock: clock.clone(),
        counters: Counters::default(),
        grants,
    });
    let stage = PreparedStage { spec: spec.clone(), context, engine: engine.engine().clone(), pre };
    // One instance now, so that an `init` that refuses its config stops the
    // version here rather than in a worker.
    stage.start()?;
    Ok((stage, digest.finalize().into()))
}

/// The stage's grants, with environment values read now: a missing variable
/// stops the version from starting.
fn grants(spec: &StageSpec) -> Result<Grants> {
    let env = spec
        .env
        .iter()
        .map(|name| match std::env::var(name) {
            Ok(value) => Ok((name.clone(), value)),
            Err(_) => anyhow::bail!("the stage needs the environment variable {name}, which is not set (or not UTF-8)"),
        })
        .collect::<Result<_>>()?;
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
