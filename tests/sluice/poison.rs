//! One bad event never holds up another: events too large for their dead
//! letter, outputs NATS refuses, events handed out too often. Each gets one
//! dead letter, and the events around it flow on.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::support::{Nats, Pipeline, PipelineFile, Sluice, Workspace, json, stream_count, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// Route only (bodies pass unchanged), JetStream in and out, every output
/// and dead letter kept in a stream the test reads back.
fn pipeline(input: &str, out_subjects: &[&str]) -> String {
    let ingest = Pipeline::jetstream("ingest", "raw.>", "RAW")
        .input(input)
        .set("output = { jetstream = true }")
        .set("workers = 1")
        .set("max_event_bytes = \"64KiB\"")
        .set("batch = { max_events = 32, max_wait = \"5ms\" }")
        .route("out.{kind}.{n}");
    PipelineFile::new().stream("RAW", &["raw.>"], "").stream("OUT", out_subjects, "").stream("DLQ", &["dlq.>"], "").pipeline(ingest).toml().to_string()
}

/// A JSON event of exactly `bytes` bytes.
fn sized(n: usize, kind: &str, bytes: usize) -> Vec<u8> {
    let head = format!(r#"{{"event":"e","kind":"{kind}","n":{n},"pad":""#);
    let mut body = head.into_bytes();
    body.resize(bytes - 2, b'x');
    body.extend(b"\"}");
    body
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn events_too_large_for_a_whole_dead_letter_are_cut_and_their_batches_go_on() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let sluice = Sluice::run(&workspace.write_pipeline(&pipeline("max_deliver = 5", &["out.>"])), nats.url(), 1);

    // Sizes at the pipeline's limit (64 KiB) and around the size whose
    // envelope (the body as text and in base64) no longer fits 1 MiB.
    let large = [
        (64 << 10, "at max_event_bytes"),
        ((64 << 10) + 1, "one over"),
        (400 << 10, "envelope fits"),
        (500 << 10, "envelope does not fit"),
        (900 << 10, "near max_payload"),
    ];
    let mut inputs = Vec::new();
    for n in 0..200 {
        let (bytes, _) = large[n % large.len()];
        let body = if n % 4 == 0 { sized(n, "big", bytes) } else { sized(n, "good", 200) };
        inputs.push((format!("raw.{n}"), body));
    }
    nats.publish_stored(inputs.clone()).await;

    let outcomes = inputs.len() as u64;
    wait_until(|| async { stream_count(&nats, "OUT").await + stream_count(&nats, "DLQ").await >= outcomes }).await;
    let outputs = nats.stream_messages("OUT").await;
    let letters = nats.stream_messages("DLQ").await;
    assert_eq!(outputs.len() + letters.len(), inputs.len(), "one outcome per input");

    let published: BTreeSet<u64> = outputs.iter().map(|m| json(m)["n"].as_u64().unwrap()).collect();
    let expected: BTreeSet<u64> = (0..200).filter(|n| n % 4 != 0 || large[n % large.len()].0 <= 64 << 10).map(|n| n as u64).collect();
    assert_eq!(published, expected, "every good event and the one at the limit come out once");
    for letter in &letters {
        let letter = json(letter);
        let n: usize = letter["subject"].as_str().unwrap().strip_prefix("raw.").unwrap().parse().unwrap();
        let (bytes, what) = large[n % large.len()];
        let original = &inputs[n].1;
        assert_eq!((letter["stage"].as_str(), letter["code"].as_str()), (Some("input"), Some("too_large")), "{what}");
        assert_eq!(letter["body_bytes"], bytes, "{what}");
        assert_eq!(letter["body_sha256"].as_str().unwrap(), hex(&Sha256::digest(original)), "{what}");
        let cut = letter.get("body_cut").is_some();
        assert_eq!(cut, bytes >= 500 << 10, "{what}: cut only when the whole envelope would not fit");
        if cut {
            assert!(letter.get("body").is_none() && letter.get("body_base64").is_none());
            assert_eq!(letter["body_cut"]["head"].as_str().unwrap().as_bytes(), &original[..1024]);
        } else {
            assert_eq!(letter["body"].as_str().unwrap().as_bytes(), &original[..], "{what}: whole");
        }
    }
    let log = sluice.terminate();
    assert_eq!(log.counter("ingest", "failed_batches"), 0, "no batch failed:\n{log}");
    assert_eq!(log.counter("ingest", "rejected"), letters.len() as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_no_stream_stores_holds_back_only_its_event_until_it_is_undeliverable() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    // OUT stores out.good.>, and nothing stores out.lost.>.
    let sluice = Sluice::run(&workspace.write_pipeline(&pipeline("max_deliver = 2", &["out.good.>"])), nats.url(), 1);
    let inputs: Vec<(String, Vec<u8>)> = (0..300).map(|n| (format!("raw.{n}"), sized(n, if n % 100 == 7 { "lost" } else { "good" }, 200))).collect();
    nats.publish_stored(inputs).await;

    wait_until(|| async { stream_count(&nats, "DLQ").await >= 3 }).await;
    let outputs: BTreeSet<u64> = nats.stream_messages("OUT").await.iter().map(|m| json(m)["n"].as_u64().unwrap()).collect();
    assert_eq!(outputs, (0..300).filter(|n| n % 100 != 7).collect(), "every other event came out");
    let mut letters: Vec<serde_json::Value> = nats.stream_messages("DLQ").await.iter().map(json).collect();
    letters.sort_by_key(|l| l["subject"].as_str().unwrap().to_string());
    assert_eq!(letters.iter().map(|l| l["subject"].as_str().unwrap()).collect::<Vec<_>>(), ["raw.107", "raw.207", "raw.7"]);
    for letter in &letters {
        assert_eq!((letter["stage"].as_str(), letter["code"].as_str()), (Some("output"), Some("undeliverable")));
        let message = letter["message"].as_str().unwrap();
        assert!(message.contains("no JetStream stream stores out.lost.") && message.contains("delivered 2 times (max_deliver = 2)"), "{message}");
        assert!(letter["body"].as_str().unwrap().contains("\"kind\":\"lost\""), "the original, whole");
    }
    let log = sluice.terminate();
    let count = |counter| log.counter("ingest", counter);
    assert_eq!((count("held_back"), count("undeliverable"), count("failed_batches")), (3, 3, 0), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_handed_out_more_than_max_deliver_times_is_dead_lettered_as_undeliverable() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let file = workspace.write_pipeline(&pipeline("max_deliver = 3", &["out.>"]));
    // A first run creates the streams and the durable consumer.
    Sluice::run(&file, nats.url(), 1).terminate();
    nats.publish_stored([("raw.0".to_string(), sized(0, "good", 200))]).await;

    // Another consumer of the same durable takes the event and never settles
    // it, as a host that crashes on it would, three times.
    let durable = nats.jetstream.get_stream("RAW").await.unwrap().get_consumer::<pull::Config>("ingest").await.unwrap();
    let mut consumer = durable.stream().max_messages_per_batch(1).messages().await.unwrap();
    for _ in 0..3 {
        let message = tokio::time::timeout(WAIT, consumer.next()).await.unwrap().unwrap().unwrap();
        message.ack_with(async_nats::jetstream::AckKind::Nak(None)).await.unwrap();
    }
    drop(consumer);

    let sluice = Sluice::run(&file, nats.url(), 1);
    wait_until(|| async { stream_count(&nats, "DLQ").await >= 1 }).await;
    let letter = json(&nats.stream_messages("DLQ").await[0]);
    assert_eq!((letter["stage"].as_str(), letter["code"].as_str()), (Some("input"), Some("undeliverable")));
    assert!(letter["message"].as_str().unwrap().contains("handed out 4 times, more than max_deliver = 3"), "{letter}");
    assert_eq!(stream_count(&nats, "OUT").await, 0, "it is not processed again");
    let log = sluice.terminate();
    assert_eq!(log.counter("ingest", "undeliverable"), 1, "{log}");
}
