//! A host killed with SIGKILL mid-stream loses nothing: its unacked input is
//! redelivered, and the outputs it had already published are recognised by
//! their message ids and not stored twice.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::{Nats, Sluice, Workspace, header, json};

fn pipeline(version: u32) -> String {
    format!(
        r#"
        [[stream]]
        name = "RAW"
        subjects = ["raw.>"]

        [[stream]]
        name = "OUT"
        subjects = ["out.>", "dlq.>"]
        duplicate_window = "5m"

        [[pipeline]]
        name = "ingest"
        input = {{ subject = "raw.>", stream = "RAW", ack_wait = "2s" }}
        output = {{ jetstream = true }}
        dead_letter = "dlq"
        workers = 2
        batch = {{ max_events = 50, max_wait = "2ms" }}

          [[pipeline.stage]]
          name = "tag"
          component = "{{plugin:tag}}"
          config = {{ set = {{ config_version = {version} }} }}

          [[pipeline.stage]]
          name = "route"
          component = "{{plugin:route}}"
          config = {{ subject = "out.{{event}}" }}
        "#
    )
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
        let mut consumer = nats.jetstream.get_stream("RAW").await.unwrap().get_consumer::<async_nats::jetstream::consumer::pull::Config>("ingest").await.unwrap();
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

async fn wait_until<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    while !condition().await {
        assert!(Instant::now() < deadline, "condition not met within 90s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
