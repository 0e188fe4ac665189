//! NATS outages under load (the metrics count the disconnection, and what
//! the log counts): the server killed with SIGKILL and restarted on
//! the same store, and the server paused (SIGSTOP) for longer than the
//! input's `ack_wait`. The host rides both out without a restart: every
//! event comes out exactly once (message ids derived from the input make the
//! repeats harmless), and a sink counts each event once: the counts in the
//! summaries it published add up to one per event, none lost, none twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;

use crate::support::{Nats, Pipeline, PipelineFile, Sluice, Workspace, event, json, stream_count, wait_until};

/// Events in all; the first `BACKLOG` wait in the input before the outage,
/// so that batches are in flight when it comes, and the rest are published
/// through it.
const EVENTS: usize = 20_000;
const BACKLOG: usize = 16_000;

/// tag and route JetStream to JetStream, and a tally sink counting the same input.
fn pipelines() -> String {
    let input = "ack_wait = \"2s\", max_deliver = 50";
    let ingest = Pipeline::jetstream("ingest", "raw.>", "RAW")
        .input(input)
        .set("output = { jetstream = true }")
        .set("workers = 2")
        .stage("tag", "tag", "{ set = { tagged = true } }")
        .route("out.{event}");
    // Every second the tally publishes what it counted since the last summary, and starts again.
    let tally = Pipeline::jetstream("tally", "raw.>", "RAW").input(input).set("output = { jetstream = true }").set("workers = 1").set("tick = \"1s\"").stage(
        "tally",
        "tally",
        "{ subject_prefix = \"counts\" }",
    );
    PipelineFile::new()
        .stream("RAW", &["raw.>"], "")
        .stream("OUT", &["out.>"], "duplicate_window = \"5m\"")
        .stream("COUNTS", &["counts.>"], "duplicate_window = \"5m\"")
        .pipeline(ingest)
        .pipeline(tally)
        .toml()
        .to_string()
}

/// A producer that rides out an outage: each event is sent again until the
/// server stores it, under its own message id, so a repeat is stored once.
fn produce(jetstream: async_nats::jetstream::Context) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for n in BACKLOG..EVENTS {
            loop {
                let publish = PublishMessage::build().payload(event(n, serde_json::json!({})).into()).message_id(format!("in-{n}"));
                let stored = match jetstream.send_publish(format!("raw.{n}"), publish).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if stored {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if n % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
}

enum Outage {
    /// SIGKILL, then a restart on the same port and store.
    Crash,
    /// SIGSTOP for this long, then SIGCONT.
    Pause(Duration),
}

async fn ride_out(outage: Outage) {
    let mut nats = Nats::start().await;
    let workspace = Workspace::new();
    let (sluice, metrics) = Sluice::run_with_metrics(&workspace.write_pipeline(&pipelines()), nats.url(), 2);
    nats.publish_stored((0..BACKLOG).map(|n| (format!("raw.{n}"), event(n, serde_json::json!({}))))).await;
    let producer = produce(nats.jetstream.clone());

    wait_until(|| async { stream_count(&nats, "OUT").await >= 3000 }).await;
    let seen = match outage {
        Outage::Crash => {
            nats.server.crash_and_restart().await.expect("nats-server restarts");
            "Disconnected from NATS; reconnecting."
        }
        Outage::Pause(pause) => {
            nats.server.pause().unwrap();
            tokio::time::sleep(pause).await;
            nats.server.resume().unwrap();
            "trying again"
        }
    };
    producer.await.unwrap();

    wait_until(|| async { stream_count(&nats, "OUT").await >= EVENTS as u64 }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = nats.stream_messages("OUT").await;
    let numbers: BTreeSet<u64> = out.iter().map(|m| json(m)["n"].as_u64().unwrap()).collect();
    assert_eq!((out.len(), numbers.len()), (EVENTS, EVENTS), "every event once, none twice");

    // The sink counted each event once: its summaries add up to one per subject.
    wait_until(|| async { summed(&nats).await.values().sum::<u64>() >= EVENTS as u64 }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = summed(&nats).await;
    assert_eq!(counts.len(), EVENTS, "one count per event's subject");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).take(5).collect();
    assert!(twice.is_empty(), "each event counted once: {twice:?}");

    // The metrics saw the outage, and count what the log counts.
    let scraped = crate::metrics::samples(&crate::metrics::get(&metrics, "/metrics").await.1);
    let metric = |name: &str, labels: &[(&str, &str)]| crate::metrics::value(&scraped, name, labels);
    assert_eq!(metric("sluice_nats_connected", &[]), Some(1.0), "connected again");
    let tally = [("pipeline", "tally")];
    assert!(metric("sluice_sink_state_bytes", &tally).is_some_and(|n| n > 0.0), "the sink's state size");
    assert!(metric("sluice_sink_state_store_duration_seconds_count", &tally).is_some_and(|n| n >= 1.0), "the sink's state was stored");
    if matches!(outage, Outage::Crash) {
        assert!(metric("sluice_nats_client_events_total", &[("event", "disconnected")]).is_some_and(|n| n >= 1.0), "the disconnection is counted");
    }
    let log = sluice.terminate();
    // The ingest pipeline was idle from the scrape on (the tally's ticks may publish later).
    assert_eq!(metric("sluice_events_published_total", &[("pipeline", "ingest")]).map(|n| n as u64), Some(log.counter("ingest", "published")));
    for pipeline in ["ingest", "tally"] {
        let count = |counter| log.counter(pipeline, counter);
        assert_eq!((count("lost_dead_letters"), count("undeliverable")), (0, 0), "{pipeline}");
        println!(
            "{pipeline}: received {} (redeliveries included), published {}, publish retries {}, already counted {}, failed batches {}",
            count("received"),
            count("published"),
            count("publish_retries"),
            count("already_counted"),
            count("failed_batches")
        );
    }
    assert!(!log.events_saying(seen).is_empty(), "the outage was seen ({seen:?}):\n{log}");
}

/// What the tally's summaries in COUNTS add up to, per subject.
async fn summed(nats: &Nats) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for summary in nats.stream_messages("COUNTS").await {
        for (subject, count) in json(&summary)["counts"].as_object().unwrap() {
            *total.entry(subject.clone()).or_default() += count.as_u64().unwrap();
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_server_killed_and_restarted_mid_stream_loses_and_repeats_nothing() {
    ride_out(Outage::Crash).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_server_paused_past_ack_wait_loses_and_repeats_nothing() {
    // Longer than ack_wait (2s), and than the 5s a JetStream publish waits for its ack.
    ride_out(Outage::Pause(Duration::from_secs(7))).await;
}
