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
use crate::plugin::{Clock, Counters, PluginEngine, StageContext, StageState, TransformInstance};

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
            let prepared = prepare_stage(engine, &spec.name, stage, clock).with_context(|| format!("pipeline `{}`", spec.name))?;
            hasher.update(prepared.1);
            stages.push(prepared.0);
        }
        let id = hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
        Ok(Arc::new(Self { spec: spec.clone(), id, stages }))
    }
}

fn prepare_stage(engine: &PluginEngine, pipeline: &str, spec: &StageSpec, clock: &Clock) -> Result<(PreparedStage, [u8; 32])> {
    let (loaded, pre) = engine
        .load(&spec.component)
        .and_then(|loaded| engine.transform_pre(&loaded.component).map(|pre| (loaded, pre)))
        .with_context(|| format!("stage `{}`, component {}", spec.name, spec.component.display()))?;
    let context = Arc::new(StageContext {
        pipeline: pipeline.into(),
        name: spec.name.as_str().into(),
        clock: clock.clone(),
        counters: Counters::default(),
    });
    let stage = PreparedStage { spec: spec.clone(), context, engine: engine.engine().clone(), pre };
    // One instance now, so that an `init` that refuses its config stops the
    // version here rather than in a worker.
    stage.start()?;
    Ok((stage, loaded.digest))
}
