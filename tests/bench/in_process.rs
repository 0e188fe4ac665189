//! The StoryForge ingest without NATS: the bundled day run through the
//! pipeline's chain in this process, in WebAssembly (the host's `Chain`, as
//! a worker runs it) and natively (the same plugin crates compiled for this
//! machine, `tests/bench/native`), the whole chain and each stage alone.
//! Both take the day's events the host admits (a JSON object, no name
//! twice), so both chains see the same events, and both run the host's own
//! admission check on them (`sluice_kit::body`).
//! What separates the two is what WebAssembly costs; what separates the
//! chain from the NATS runs is what the transport and the worker cost.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sluice::config::PipelineSpec;
use sluice::pipeline::{Chain, Environment, PipelineVersion};
use sluice::plugin::{Clock, Event, PluginEngine};

/// Not under the pipeline's input, so that a stage run alone, which keeps
/// its events' subject, does not publish into its own input.
const SUBJECT: &str = "bench.storyforge";

/// One run of a chain over the events.
pub struct Ran {
    pub events: usize,
    pub outputs: usize,
    pub rejects: usize,
    /// Of the outputs' subjects and bodies: equal when two builds did the same.
    pub digest: String,
    pub cpu_s: f64,
}

impl Ran {
    pub fn us_per_event(&self) -> f64 {
        self.cpu_s * 1e6 / self.events.max(1) as f64
    }
}

/// A chain to run: the pipeline, or one of its stages alone.
pub struct Variant {
    pub name: String,
    pub spec: PipelineSpec,
}

/// The whole ingest, then each of its stages alone.
pub fn variants(file: &Path) -> Vec<Variant> {
    let loaded = sluice::config::load(file).expect("the StoryForge pipeline file");
    let ingest = loaded.pipelines.into_iter().find(|p| p.name == "storyforge-ingest").expect("storyforge-ingest");
    let mut variants = vec![Variant { name: "the whole ingest".into(), spec: ingest.clone() }];
    for stage in &ingest.stages {
        let mut spec = ingest.clone();
        spec.stages.retain(|s| s.name == stage.name);
        variants.push(Variant { name: format!("`{}` alone", stage.name), spec });
    }
    variants
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The day's events, `events` of them, in batches of the pipeline's size.
fn batches(inputs: &Path, events: usize, batch: usize) -> Vec<Vec<Event>> {
    let bodies: Vec<Vec<u8>> = std::fs::read(inputs).unwrap().split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect();
    let numbers: Vec<usize> = (0..events).collect();
    numbers
        .chunks(batch)
        .map(|chunk| chunk.iter().map(|n| Event { subject: SUBJECT.into(), headers: Vec::new(), body: bodies[n % bodies.len()].clone() }).collect())
        .collect()
}

/// The chain in WebAssembly, as a worker runs it (admission included).
pub fn wasm(spec: &PipelineSpec, inputs: &Path, events: usize, hash_key: &str) -> Ran {
    let engine = PluginEngine::new().unwrap();
    let clock = Clock::manual(now_ms() * 1_000_000);
    let env = Environment::given(BTreeMap::from([("STORYFORGE_HASH_KEY".to_string(), hash_key.to_string())]));
    let version = PipelineVersion::prepare(&engine, spec, &clock, &env).unwrap();
    let mut chain = Chain::start(version).unwrap();
    // One batch first: instances warm, memories grown.
    for warm in batches(inputs, spec.max_events, spec.max_events) {
        chain.process(&warm).unwrap();
    }
    let batches = batches(inputs, events, spec.max_events);
    let (mut outputs, mut rejects) = (0, 0);
    let mut digest = DefaultHasher::new();
    let cpu_before = super::cpu_seconds(std::process::id()).unwrap();
    for batch in &batches {
        let result = chain.process(batch).unwrap();
        for output in &result.outputs {
            (&output.event.subject, &output.event.body).hash(&mut digest);
        }
        outputs += result.outputs.len();
        rejects += result.rejects.len();
    }
    let cpu_s = super::cpu_seconds(std::process::id()).unwrap() - cpu_before;
    Ran { events, outputs, rejects, digest: format!("{:016x}", digest.finish()), cpu_s }
}

/// The same chain natively, in `tests/bench/native` (built by `cargo xtask
/// bench`, named by `SLUICE_CHAIN_NATIVE`).
pub fn native(binary: &Path, spec: &PipelineSpec, inputs: &Path, events: usize, hash_key: &str) -> Ran {
    let stages: Vec<serde_json::Value> = spec
        .stages
        .iter()
        .map(|s| {
            let plugin = s.component.file_stem().unwrap().to_string_lossy().into_owned();
            let config: serde_json::Value = serde_json::from_str(&s.config).unwrap();
            serde_json::json!({ "plugin": plugin, "config": config, "files": s.files })
        })
        .collect();
    let plan = serde_json::json!({
        "stages": stages, "inputs": inputs, "subject": SUBJECT, "events": events, "batch": spec.max_events, "now_ms": now_ms(),
    });
    let dir = tempfile::tempdir().unwrap();
    let plan_file = dir.path().join("plan.json");
    std::fs::write(&plan_file, plan.to_string()).unwrap();
    let out = std::process::Command::new(binary).arg(&plan_file).env("STORYFORGE_HASH_KEY", hash_key).output().unwrap();
    assert!(out.status.success(), "{}: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Ran {
        events,
        outputs: result["outputs"].as_u64().unwrap() as usize,
        rejects: result["rejects"].as_u64().unwrap() as usize,
        digest: result["digest"].as_str().unwrap().to_string(),
        cpu_s: result["cpu_s"].as_f64().unwrap(),
    }
}

/// The day's events the host admits (the rest never reach a plugin), in a
/// file for both runs.
fn admitted(day: &Path, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(day).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| sluice_kit::body::check(l.as_bytes()).is_ok()).collect();
    let file = dir.join("admitted.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    file
}

/// How many times each chain runs; the table shows the run that took the
/// least CPU, the one least disturbed by the rest of a shared machine.
const RUNS: usize = 3;

fn best_of(mut run: impl FnMut() -> Ran) -> Ran {
    (0..RUNS).map(|_| run()).min_by(|a, b| a.cpu_s.total_cmp(&b.cpu_s)).expect("at least one run")
}

/// Every variant in WebAssembly and natively, as a table.
pub fn run(events: usize, hash_key: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let inputs = admitted(&root.join("pipelines/samples/storyforge-day.jsonl"), dir.path());
    let native_binary = std::env::var_os("SLUICE_CHAIN_NATIVE").map(PathBuf::from);
    println!("\nThe StoryForge ingest in this process, without NATS: {events} events of the bundled day, CPU of one thread, the least of {RUNS} runs\n");
    println!("| chain | WebAssembly µs/event | native µs/event | WebAssembly / native | outputs | rejects | same outputs |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for variant in variants(&root.join("pipelines/storyforge.toml")) {
        eprintln!("bench: in-process {}", variant.name);
        let wasm = best_of(|| wasm(&variant.spec, &inputs, events, hash_key));
        let native = native_binary.as_deref().map(|binary| best_of(|| native(binary, &variant.spec, &inputs, events, hash_key)));
        let (native_us, ratio, same) = match &native {
            Some(native) => (
                format!("{:.1}", native.us_per_event()),
                format!("{:.2}", wasm.us_per_event() / native.us_per_event().max(1e-9)),
                if (native.outputs, native.rejects, &native.digest) == (wasm.outputs, wasm.rejects, &wasm.digest) { "yes" } else { "NO" }.to_string(),
            ),
            None => ("n/a".into(), "n/a".into(), "n/a (SLUICE_CHAIN_NATIVE unset)".into()),
        };
        println!("| {} | {:.1} | {native_us} | {ratio} | {} | {} | {same} |", variant.name, wasm.us_per_event(), wasm.outputs, wasm.rejects);
    }
}
