//! Hot swaps: a changed pipeline file or component is prepared off to the
//! side and switched in between batches; a broken change is refused and the
//! running version stays.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::{Collector, Nats, Pipeline, PipelineFile, Sluice, Workspace, event, header, json, write_atomically};

const WAIT: Duration = Duration::from_secs(60);

/// The tag component at `component` (stamping `config_version`, when it is given), then route.
fn tagged_pipeline(component: &str, version: Option<u32>) -> String {
    let config = version.map_or(String::new(), |version| format!("{{ set = {{ config_version = {version} }} }}"));
    let ingest = Pipeline::jetstream("ingest", "raw.>", "RAW")
        .set("workers = 2")
        .set("batch = { max_events = 32, max_wait = \"2ms\" }")
        .stage_at("tag", component, &config, "")
        .route("out.{event}");
    PipelineFile::new().stream("RAW", &["raw.>"], "").pipeline(ingest).toml().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swap_under_continuous_load_loses_and_duplicates_nothing() {
    const EVENTS: usize = 6000;
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let tag = workspace.copy_plugin("tag", "tag.wasm");
    let file = workspace.write_pipeline(&tagged_pipeline(tag.to_str().unwrap(), Some(1)));
    let sluice = Sluice::run(&file, nats.url(), 1);
    let mut out = Collector::subscribe(&nats, "out.>").await;

    // Publish steadily for about three seconds, swapping the config a third of the way in.
    let publisher = crate::support::publish_steadily(&nats.jetstream, EVENTS, Duration::from_millis(50));
    let first_third = out.take(EVENTS / 3, WAIT).await;
    write_atomically(&file, crate::support::expand(&tagged_pipeline(tag.to_str().unwrap(), Some(2))).as_bytes());
    let rest = out.take(EVENTS - EVENTS / 3, WAIT).await;
    publisher.await.unwrap();
    assert!(out.drain(Duration::from_millis(500)).await.is_empty(), "no event comes out twice");

    let mut seen = BTreeSet::new();
    let mut versions: BTreeMap<u64, String> = BTreeMap::new();
    for message in first_third.iter().chain(&rest) {
        let body = json(message);
        assert!(seen.insert(body["n"].as_u64().unwrap()), "event {} came out twice", body["n"]);
        let version_header = header(message, "Sluice-Pipeline-Version").unwrap();
        let config_version = body["config_version"].as_u64().unwrap();
        // One version header per config: a batch is never split across versions.
        if let Some(previous) = versions.insert(config_version, version_header.clone()) {
            assert_eq!(previous, version_header);
        }
    }
    assert_eq!(seen.len(), EVENTS, "every event once");
    assert_eq!(versions.len(), 2, "outputs of both versions: {versions:?}");
    assert_ne!(versions[&1], versions[&2]);
    let log = sluice.terminate();
    assert_eq!(log.events("Swapping to the new version between batches.").len(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_plugin_file_leaves_the_running_version_in_place() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let tag = workspace.copy_plugin("tag", "tag.wasm");
    let file = workspace.write_pipeline(&tagged_pipeline(tag.to_str().unwrap(), Some(1)));
    let sluice = Sluice::run(&file, nats.url(), 1);
    let mut out = Collector::subscribe(&nats, "out.>").await;

    nats.publish_stored([("raw.0".to_string(), event(0, serde_json::json!({})))]).await;
    let before = header(&out.take(1, WAIT).await[0], "Sluice-Pipeline-Version").unwrap();

    write_atomically(&tag, b"\0asm\x0d\0\x01\0 truncated by a failed deploy");
    sluice.wait_for("The new version cannot be prepared; the running version stays.", 1, WAIT);
    // A pipeline file with problems is refused the same way.
    write_atomically(&file, b"[[pipeline]]\nname = 'ingest'\n");
    sluice.wait_for("The changed pipeline file has problems; every running version stays.", 1, WAIT);

    nats.publish_stored((1..50).map(|n| (format!("raw.{n}"), event(n, serde_json::json!({}))))).await;
    for message in out.take(49, WAIT).await {
        assert_eq!(header(&message, "Sluice-Pipeline-Version").unwrap(), before);
        assert_eq!(json(&message)["config_version"], 1);
    }
    sluice.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_component_is_swapped_in_when_its_file_changes() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    // The stage's file starts as `tag` and is replaced by `chaos`, which keeps events unchanged.
    let stage = workspace.copy_plugin("tag", "stage.wasm");
    let file = workspace.write_pipeline(&tagged_pipeline(stage.to_str().unwrap(), None));
    let sluice = Sluice::run(&file, nats.url(), 1);
    let mut out = Collector::subscribe(&nats, "out.>").await;

    nats.publish_stored([("raw.0".to_string(), event(0, serde_json::json!({})))]).await;
    let before = header(&out.take(1, WAIT).await[0], "Sluice-Pipeline-Version").unwrap();
    workspace.copy_plugin("chaos", "stage.wasm");
    // Each of the two workers starts the new instances beside, then swaps.
    sluice.wait_for("Worker swapped version.", 2, WAIT);

    nats.publish_stored([("raw.1".to_string(), event(1, serde_json::json!({ "chaos": "split" })))]).await;
    // chaos splits the event in two; route sends both to out.scene_generated.
    let after = out.take(2, WAIT).await;
    for message in &after {
        assert_ne!(header(message, "Sluice-Pipeline-Version").unwrap(), before);
    }
    sluice.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_that_adds_a_sink_restarts_the_workers_and_the_sink_keeps_its_state() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let raw = |pipeline: Pipeline| PipelineFile::new().stream("RAW", &["raw.>"], "").pipeline(pipeline).toml().to_string();
    let relay = Pipeline::jetstream("ingest", "raw.>", "RAW").set("workers = 1").set("tick = \"1h\"").route("out.{event}");
    let file = workspace.write_pipeline(&raw(relay));
    let sluice = Sluice::run(&file, nats.url(), 1);
    let mut out = Collector::subscribe(&nats, "out.>").await;
    nats.publish_stored([("raw.0".to_string(), event(0, serde_json::json!({})))]).await;
    out.take(1, WAIT).await;

    // The same input, workers and tick, now ending in a sink: its workers
    // must start again for the sink's state to be kept.
    let counting =
        Pipeline::jetstream("ingest", "raw.>", "RAW").set("workers = 1").set("tick = \"1h\"").stage("tally", "tally", "{ subject_prefix = \"counts\" }");
    write_atomically(&file, raw(counting).as_bytes());
    sluice.wait_for("Input, workers, batching, output or sink changed; restarting the pipeline's workers.", 1, WAIT);
    nats.publish_stored(["raw.a", "raw.b", "raw.c"].map(|subject| (subject.to_string(), event(1, serde_json::json!({}))))).await;

    let connection = sluice::nats::connect(nats.url(), "test").await.unwrap();
    let store = sluice::nats::state::StateStore::open(&connection, "SLUICE_STATE", "ingest", "tally").await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let counts = loop {
        if let Some(saved) = store.load().await.unwrap().filter(|saved| saved.sequence >= 4) {
            break serde_json::from_slice::<serde_json::Value>(&saved.snapshot).unwrap()["counts"].clone();
        }
        assert!(std::time::Instant::now() < deadline, "the sink's state was never kept:\n{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(counts, serde_json::json!({ "raw.a": 1, "raw.b": 1, "raw.c": 1 }));
    sluice.terminate();
}
