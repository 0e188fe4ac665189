//! Runs a chain of transforms compiled natively, in-process, the way the
//! host runs their components: each batch goes to the first stage, what it
//! keeps (or replaces, or reroutes) to the next. The plan comes as JSON in
//! the file named by the first argument, from the host's benchmark
//! (`tests/bench/throughput.rs`), which runs the same chain in WebAssembly;
//! the result goes to stdout as one JSON object.
//!
//! ```json
//! { "stages": [{ "plugin": "validate", "config": {...}, "files": "/abs/dir" }],
//!   "inputs": "/abs/events.jsonl", "subject": "storyforge.raw.bench",
//!   "events": 100000, "batch": 256, "now_ms": 1764000000000 }
//! ```
//!
//! A stage's granted folder is handed to `validate` as its `schemas`
//! folder; the environment a stage is granted is this process's.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Instant;

use serde::Deserialize;
use serde_json::{Value, json};
use sluice_plugin::testing::{Harness, set_clock_ns};
use sluice_plugin::{Event, Outcome, Transform};

#[derive(Deserialize)]
struct Plan {
    stages: Vec<StagePlan>,
    inputs: String,
    subject: String,
    events: usize,
    batch: usize,
    now_ms: u64,
}

#[derive(Deserialize)]
struct StagePlan {
    plugin: String,
    config: Value,
    files: Option<String>,
}

/// One stage, whatever its plugin.
trait Stage {
    fn run(&mut self, batch: Vec<Event>) -> Vec<Outcome>;
}

impl<T: Transform> Stage for Harness<T> {
    fn run(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
        self.process_batch(batch)
    }
}

fn built<T: Transform + 'static>(config: Value) -> Result<Box<dyn Stage>, String> {
    Harness::<T>::new(config).map(|h| Box::new(h) as Box<dyn Stage>).map_err(|e| format!("{e:?}"))
}

fn stage(plan: &StagePlan) -> Result<Box<dyn Stage>, String> {
    let mut config = plan.config.clone();
    if let (Some(files), Some(table)) = (&plan.files, config.as_object_mut()) {
        table.insert("schemas".into(), Value::String(files.clone()));
    }
    match plan.plugin.as_str() {
        "validate" => built::<validate::Validator>(config),
        "enrich" => built::<enrich::Enrich>(config),
        "redact" => built::<redact::Redact>(config),
        "measure" => built::<measure::Measurer>(config),
        "route" => built::<route::Route>(config),
        "tag" => built::<tag::Tag>(config),
        other => Err(format!("no native build of the plugin {other:?} here")),
    }
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: chain-native PLAN.json");
    let plan: Plan = serde_json::from_str(&std::fs::read_to_string(&path).expect("the plan file")).expect("a plan");
    let mut stages: Vec<Box<dyn Stage>> = plan.stages.iter().map(|s| stage(s).unwrap_or_else(|e| panic!("stage {}: {e}", s.plugin))).collect();
    set_clock_ns(plan.now_ms * 1_000_000);
    let bodies: Vec<Vec<u8>> = std::fs::read_to_string(&plan.inputs).expect("the inputs").lines().map(|l| l.as_bytes().to_vec()).collect();
    // Built before the clock starts: in the host they come from NATS.
    let batches: Vec<Vec<Event>> = (0..plan.events)
        .collect::<Vec<_>>()
        .chunks(plan.batch)
        .map(|chunk| chunk.iter().map(|n| Event { subject: plan.subject.clone(), headers: Vec::new(), body: bodies[n % bodies.len()].clone() }).collect())
        .collect();

    let (mut outputs, mut rejects, mut dropped) = (0usize, 0usize, 0usize);
    let mut digest = DefaultHasher::new();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    for batch in batches {
        // The host's admission check, as the WebAssembly run does it.
        let (mut events, refused): (Vec<Event>, Vec<Event>) = batch.into_iter().partition(|event| sluice_kit::body::check(&event.body).is_ok());
        rejects += refused.len();
        for stage in &mut stages {
            let outcomes = stage.run(events.clone());
            let mut kept = Vec::with_capacity(events.len());
            for (event, outcome) in events.into_iter().zip(outcomes) {
                match outcome {
                    Outcome::Keep => kept.push(event),
                    Outcome::Reroute(subject) => kept.push(Event { subject, ..event }),
                    Outcome::Replace(replacements) => kept.extend(replacements),
                    Outcome::Drop(_) => dropped += 1,
                    Outcome::Reject(_) => rejects += 1,
                }
            }
            events = kept;
        }
        for event in &events {
            (&event.subject, &event.body).hash(&mut digest);
        }
        outputs += events.len();
    }
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - cpu_before;
    let result = json!({
        "events": plan.events, "outputs": outputs, "rejects": rejects, "dropped": dropped,
        "digest": format!("{:016x}", digest.finish()), "cpu_s": cpu_s, "wall_s": wall_s,
    });
    println!("{result}");
}

/// User and system CPU seconds of this process so far, from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |n: usize| fields.get(n).and_then(|f| f.parse::<f64>().ok()).unwrap_or_default();
    (ticks(11) + ticks(12)) / 100.0
}
