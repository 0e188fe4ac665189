//! A host killed with SIGKILL mid-stream loses nothing: its unacked input is
//! redelivered, and the outputs it had already published are recognised by
//! their message ids and not stored twice. A sink's state larger than a NATS
//! message is kept in parts and read back after the kill.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sluice::nats::state::StateStore;

use crate::support::{Collector, Nats, Pipeline, PipelineFile, Sluice, Workspace, header, json, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// tag (stamping `config_version`) then route, JetStream in and out.
fn pipeline(version: u32) -> String {
    let ingest = Pipeline::jetstream("ingest", "raw.>", "RAW")
        .input("ack_wait = \"2s\"")
        .set("output = { jetstream = true }")
        .set("workers = 2")
        .set("batch = { max_events = 50, max_wait = \"2ms\" }")
        .stage("tag", "tag", &format!("{{ set = {{ config_version = {version} }} }}"))
        .route("out.{event}");
    PipelineFile::new().stream("RAW", &["raw.>"], "").stream("OUT", &["out.>", "dlq.>"], "duplicate_window = \"5m\"").pipeline(ingest).toml().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_stream_then_restart_loses_nothing_and_takes_the_new_version() {
    const EVENTS: usize = 4000;
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let file = workspace.write_pipeline(&pipeline(1));
    let first = Sluice::run(&file, nats.url(), 1);

    // Publish steadily; the host dies while events are still arriving.
    let publisher = crate::support::publish_steadily(&nats.jetstream, EVENTS, Duration::from_millis(40));
    let out = nats.jetstream.get_stream("OUT").await.unwrap();
    wait_until(|| async { out.clone().get_info().await.unwrap().state.messages >= 800 }).await;
    first.kill();
    let stored_at_kill = out.clone().get_info().await.unwrap().state.messages;
    assert!(stored_at_kill < EVENTS as u64, "the host must die mid-stream (had stored {stored_at_kill})");

    // A new version is deployed while the host is down.
    crate::support::write_atomically(&file, crate::support::expand(&pipeline(2)).as_bytes());
    let second = Sluice::run(&file, nats.url(), 1);
    publisher.await.unwrap();
    wait_until(|| async {
        let mut consumer =
            nats.jetstream.get_stream("RAW").await.unwrap().get_consumer::<async_nats::jetstream::consumer::pull::Config>("ingest").await.unwrap();
        let info = consumer.info().await.unwrap();
        info.num_pending == 0 && info.num_ack_pending == 0
    })
    .await;
    second.terminate();

    let messages = nats.stream_messages("OUT").await;
    let mut seen = BTreeSet::new();
    let mut versions = BTreeSet::new();
    for message in &messages {
        let body = json(message);
        assert!(seen.insert(body["n"].as_u64().unwrap()), "event {} stored twice", body["n"]);
        versions.insert((body["config_version"].as_u64().unwrap(), header(message, "Sluice-Pipeline-Version").unwrap()));
    }
    assert_eq!(seen.len(), EVENTS, "every event stored once; missing: {:?}", (0..EVENTS as u64).filter(|n| !seen.contains(n)).take(10).collect::<Vec<_>>());
    let config_versions: BTreeSet<u64> = versions.iter().map(|v| v.0).collect();
    assert_eq!(config_versions, BTreeSet::from([1, 2]), "outputs switch from the old version to the new: {versions:?}");
    assert_eq!(versions.len(), 2, "one version header per config: {versions:?}");
}

/// A tally sink on `raw.>` whose summaries go to `counts.summary`.
fn tally_pipeline(tick: &str) -> String {
    format!(
        r#"
        [[stream]]
        name = "RAW"
        subjects = ["raw.>"]

        [[pipeline]]
        name = "tally"
        input = {{ subject = "raw.>", stream = "RAW", ack_wait = "2s" }}
        dead_letter = "dlq"
        workers = 1
        tick = "{tick}"

          [[pipeline.stage]]
          name = "tally"
          component = "{{plugin:tally}}"
          config = {{ subject_prefix = "counts" }}
        "#
    )
}

/// Polls the kept tally state until it reaches stream sequence `through`;
/// returns its counts.
pub async fn kept_counts(nats: &Nats, through: u64) -> serde_json::Map<String, serde_json::Value> {
    let connection = sluice::nats::connect(nats.url(), "test").await.unwrap();
    let store = StateStore::open(&connection, "SLUICE_STATE", "tally", "tally").await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let saved = store.load().await.expect("the kept state reads back whole");
        if let Some(saved) = saved.filter(|saved| saved.sequence >= through) {
            let state: serde_json::Value = serde_json::from_slice(&saved.snapshot).unwrap();
            return state["counts"].as_object().unwrap().clone();
        }
        assert!(Instant::now() < deadline, "the state did not reach sequence {through}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `count` events, each on a subject of its own, some 70 bytes long.
fn on_many_subjects(from: usize, count: usize) -> Vec<(String, Vec<u8>)> {
    (from..from + count).map(|n| (format!("raw.storyforge.scene_generated.project_{n:04}.long_enough_to_count"), b"{}".to_vec())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_state_larger_than_a_nats_message_is_kept_in_parts_across_a_sigkill() {
    // The server takes 8 KiB per message; 600 subjects make a tally state of
    // some 45 KB, and 1 200 twice that.
    let nats = Nats::start_with_config("max_payload: 8KB\n").await;
    let workspace = Workspace::new();
    let file = workspace.write_pipeline(&tally_pipeline("1h"));
    let sluice = Sluice::run(&file, nats.url(), 1);
    nats.publish_stored(on_many_subjects(0, 600)).await;
    let counts = kept_counts(&nats, 600).await;
    assert_eq!(counts.len(), 600);
    assert!(!sluice.log().events_saying("it is kept in parts").is_empty(), "{}", sluice.log());
    sluice.kill();

    let mut dead = Collector::subscribe(&nats, "dlq.>").await;
    let restarted = Sluice::run(&file, nats.url(), 1);
    restarted.wait_for("Sink state restored.", 1, WAIT);
    assert_eq!(restarted.log().events("Sink state restored.")[0]["counted_through"], 600, "{}", restarted.log());
    // Its first tick, at start, sums up the 600 counts it read back: a
    // summary too large for this server, dead-lettered (cut to its head)
    // rather than jamming the sink; the tally then starts counting afresh.
    let letter = json(&dead.take(1, WAIT).await[0]);
    assert_eq!(
        (letter["stage"].as_str(), letter["code"].as_str(), letter["subject"].as_str()),
        (Some("output"), Some("too_large"), Some("counts.summary")),
        "{letter}"
    );
    assert!(letter["body_bytes"].as_u64().unwrap() > 40_000, "the summary holds the 600 restored counts: {letter}");
    assert!(letter["body_cut"]["head"].as_str().unwrap().contains("project_0000"), "{letter}");
    // The new state is kept in parts again, in the other slot, and reads back whole.
    nats.publish_stored(on_many_subjects(600, 600)).await;
    let counts = kept_counts(&nats, 1200).await;
    assert_eq!(counts.len(), 600, "the counts since the summary");
    let project = |subject: &str| subject.split("project_").nth(1).and_then(|rest| rest.get(..4)?.parse::<usize>().ok());
    assert!(counts.keys().all(|subject| project(subject).is_some_and(|n| (600..1200).contains(&n))), "only the new events");
    assert!(counts.values().all(|count| count == 1), "each event counted once");
    restarted.terminate();
}

/// The tally of `tally_pipeline`, storing its state at most every 300 ms,
/// its summaries kept in a stream that drops a republished one.
fn periodic_tally_pipeline() -> String {
    let tally = Pipeline::jetstream("tally", "raw.>", "RAW")
        .input("ack_wait = \"2s\"")
        .set("output = { jetstream = true }")
        .set("workers = 1")
        .set("tick = \"1h\"")
        .set("batch = { max_events = 100, max_wait = \"5ms\" }")
        .set("state_every = \"300ms\"")
        .stage("tally", "tally", "{ subject_prefix = \"counts\" }");
    PipelineFile::new().stream("RAW", &["raw.>"], "").stream("COUNTS", &["counts.>"], "duplicate_window = \"2m\"").pipeline(tally).toml().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_storing_its_state_periodically_counts_each_event_once_across_a_sigkill() {
    const EVENTS: usize = 20_000;
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let file = workspace.write_pipeline(&periodic_tally_pipeline());
    let (sluice, metrics) = Sluice::run_with_metrics(&file, nats.url(), 1);
    let events: Vec<(String, Vec<u8>)> = (0..EVENTS).map(|n| (format!("raw.s{}", n % 50), b"{}".to_vec())).collect();
    nats.publish_stored(events[..5_000].to_vec()).await;
    let counts = kept_counts(&nats, 5_000).await;
    assert_eq!(counts.values().map(|n| n.as_u64().unwrap()).sum::<u64>(), 5_000, "the stored state counts each event once");
    // Fifty batches or more, stored a few times: at most every 300 ms.
    let scraped = crate::metrics::samples(&crate::metrics::get(&metrics, "/metrics").await.1);
    let stores = crate::metrics::value(&scraped, "sluice_sink_state_store_duration_seconds_count", &[("pipeline", "tally")]).unwrap_or(0.0);
    let batches = crate::metrics::value(&scraped, "sluice_batch_events_count", &[("pipeline", "tally")]).unwrap_or(0.0);
    assert!(stores >= 1.0 && stores * 5.0 < batches, "{stores} stores for {batches} batches");

    // Killed while events come: what it counted and did not store is
    // redelivered, counted again from the stored state, and no more.
    let publisher = {
        let jetstream = nats.jetstream.clone();
        let rest = events[5_000..].to_vec();
        tokio::spawn(async move { crate::support::publish_stored(&jetstream, rest).await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    sluice.kill();
    publisher.await.unwrap();
    let restarted = Sluice::run(&file, nats.url(), 1);
    restarted.wait_for("Sink state restored.", 1, WAIT);
    let kept = kept_counts(&nats, EVENTS as u64).await;
    // The first tick after the restart summed up the restored counts and began afresh.
    let summaries = nats.stream_messages("COUNTS").await;
    let summarised: u64 = summaries.iter().flat_map(|m| json(m)["counts"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).collect::<Vec<_>>()).sum();
    let counted: u64 = kept.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(summarised + counted, EVENTS as u64, "every event counted once: {summarised} summarised, {counted} counted since");
    restarted.terminate();
}
