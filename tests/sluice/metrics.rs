//! `sluice run --metrics ADDR`: `/metrics` in the Prometheus text format
//! counts exactly the traffic a test sent (received, published, refused by
//! stage and code, dropped, faults by kind, batches, stage call times,
//! plugin counters, the warnings logged, the version running and a hot
//! swap), agrees with the progress log, and `/healthz` and `/readyz`
//! answer as a probe expects. End-to-end latency starts at an event's
//! JetStream timestamp, not when sluice reads it. A plugin that floods the
//! `metrics` import gets no more than its bounds.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{Collector, Nats, Pipeline, PipelineFile, Sluice, Workspace};

const WAIT: Duration = Duration::from_secs(30);

/// One sample of a scrape: its metric's name and labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Series {
    name: String,
    labels: BTreeMap<String, String>,
}

/// Every sample of a scrape in the Prometheus text format.
pub fn samples(text: &str) -> BTreeMap<Series, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample is `series value`: {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').expect("labels end in }")),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once("=\"").expect("label=\"value\"");
                (key.to_string(), value.trim_end_matches('"').to_string())
            })
            .collect();
        samples.insert(Series { name: name.into(), labels }, value.parse().unwrap_or_else(|_| panic!("a number: {line:?}")));
    }
    samples
}

pub fn value(samples: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    samples.get(&Series { name: name.into(), labels }).copied()
}

pub async fn get(address: &str, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{address}{path}")).await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (response.status().as_u16(), response.text().await.unwrap())
}

fn pipeline(tag_set: &str) -> String {
    let pipeline = Pipeline::core("web", "in.>")
        .set(r#"dead_letter = "dlq""#)
        .stage("chaos", "chaos", "")
        .stage("tag", "tag", &format!(r#"{{ require = ["event", "user_id"], set = {tag_set} }}"#))
        .stage("stamp", "stamp_0_1", r#"{ property = "stamped_ns" }"#)
        .route("out.{event}");
    PipelineFile::new().pipeline(pipeline).toml().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_exactly_the_traffic_sent_and_the_probes_answer() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let file = workspace.write_pipeline(&pipeline("{ v = 1 }"));
    let (sluice, address) = Sluice::run_with_metrics(&file, nats.url(), 1);
    let version = sluice.log().events("Pipeline started.")[0]["version"].as_str().unwrap().to_string();

    assert_eq!(get(&address, "/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(get(&address, "/readyz").await, (200, "ready\n".to_string()));
    assert_eq!(get(&address, "/nowhere").await.0, 404);

    let mut outputs = Collector::subscribe(&nats, "out.>").await;
    let mut letters = Collector::subscribe(&nats, "dlq.>").await;
    // 40 good, 5 without user_id, 3 not JSON, 2 dropped on purpose, 1 that traps.
    let mut bodies: Vec<String> = (0..40).map(|n| format!(r#"{{"event":"e{}","user_id":"u{n}"}}"#, n % 3)).collect();
    bodies.extend((0..5).map(|n| format!(r#"{{"event":"e","n":{n}}}"#)));
    bodies.extend((0..3).map(|n| format!("not json {n}")));
    bodies.extend((0..2).map(|_| r#"{"event":"e","user_id":"u","chaos":"drop"}"#.to_string()));
    bodies.push(r#"{"event":"e","user_id":"u","chaos":"trap"}"#.to_string());
    for (n, body) in bodies.iter().enumerate() {
        nats.client.publish(format!("in.{n}"), body.clone().into()).await.unwrap();
    }
    outputs.take(40, WAIT).await;
    letters.take(9, WAIT).await;
    sluice.wait_for_count("web", "received", 51, WAIT);

    let scraped = samples(&get(&address, "/metrics").await.1);
    let web = [("pipeline", "web")];
    assert_eq!(value(&scraped, "sluice_events_received_total", &web), Some(51.0));
    assert_eq!(value(&scraped, "sluice_events_published_total", &web), Some(40.0));
    assert_eq!(value(&scraped, "sluice_events_dropped_total", &web), Some(2.0));
    let rejected = |stage: &str, code: &str| value(&scraped, "sluice_events_rejected_total", &[("pipeline", "web"), ("stage", stage), ("code", code)]);
    assert_eq!(rejected("tag", "missing_property"), Some(5.0));
    assert_eq!(rejected("input", "malformed"), Some(3.0));
    assert_eq!(rejected("chaos", "trap"), Some(1.0));
    // The trap faults its batch, then itself when the batch is run again event by event.
    let traps = value(&scraped, "sluice_plugin_faults_total", &[("pipeline", "web"), ("stage", "chaos"), ("kind", "trap")]).unwrap();
    assert!((1.0..=2.0).contains(&traps), "{traps} faults");
    let restarted = value(&scraped, "sluice_instances_restarted_total", &[("pipeline", "web"), ("stage", "chaos")]);
    assert_eq!(restarted, Some(traps), "an instance started again after each fault");
    assert_eq!(value(&scraped, "sluice_batch_events_sum", &web), Some(51.0), "every event read is in one batch");
    assert_eq!(value(&scraped, "sluice_event_latency_seconds_count", &web), Some(51.0), "every event settled is timed");
    assert_eq!(value(&scraped, "sluice_nats_connected", &[]), Some(1.0));
    let batches = value(&scraped, "sluice_batch_events_count", &web).unwrap();
    assert!(batches >= 1.0);
    let tag_calls = value(&scraped, "sluice_stage_call_duration_seconds_count", &[("pipeline", "web"), ("stage", "tag")]).unwrap();
    assert!(tag_calls >= 1.0, "the tag stage was called");
    assert!(value(&scraped, "sluice_stage_call_duration_seconds_sum", &[("pipeline", "web"), ("stage", "tag")]).unwrap() > 0.0);
    assert_eq!(value(&scraped, "sluice_pipeline_version_info", &[("pipeline", "web"), ("version", &version)]), Some(1.0));
    // What a plugin counts is a metric too (here one built against sluice:plugin@0.1.0).
    assert_eq!(value(&scraped, "sluice_plugin_counter_total", &[("pipeline", "web"), ("stage", "stamp"), ("name", "stamped")]), Some(40.0));
    // The warning the trap was logged with is counted.
    assert!(value(&scraped, "sluice_log_events_total", &[("level", "warn"), ("target", "sluice::pipeline::chain")]).is_some_and(|n| n >= 1.0));

    // A hot swap: the new version is the one running, and the swap is counted.
    std::fs::write(&file, pipeline("{ v = 2 }")).unwrap();
    sluice.wait_for("Swapping to the new version between batches.", 1, WAIT);
    let swapped = sluice.log().events("Swapping to the new version between batches.")[0]["to"].as_str().unwrap().to_string();
    let scraped = samples(&get(&address, "/metrics").await.1);
    assert_eq!(value(&scraped, "sluice_pipeline_version_changes_total", &[("pipeline", "web"), ("outcome", "swapped")]), Some(1.0));
    assert_eq!(value(&scraped, "sluice_pipeline_version_info", &[("pipeline", "web"), ("version", &swapped)]), Some(1.0));
    assert_eq!(value(&scraped, "sluice_pipeline_version_info", &[("pipeline", "web"), ("version", &version)]), None, "the old version is gone");

    // The progress log says what the metrics say.
    let log = sluice.terminate();
    let progress = log.progress("web");
    assert_eq!(progress["received"], 51);
    assert_eq!(progress["published"], 40);
    assert_eq!(progress["rejected"], 9);
    assert_eq!(progress["faults"].as_f64(), Some(traps));
}

#[tokio::test(flavor = "multi_thread")]
async fn end_to_end_latency_runs_from_the_events_jetstream_timestamp() {
    let nats = Nats::start().await;
    let stream = async_nats::jetstream::stream::Config { name: "RAW".into(), subjects: vec!["raw.>".into()], ..Default::default() };
    nats.jetstream.create_stream(stream).await.unwrap();
    // Stored, then waited on: their latency includes the time they waited in the stream.
    nats.publish_stored((0..10).map(|n| (format!("raw.{n}"), format!(r#"{{"event":"e","n":{n}}}"#).into_bytes()))).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let workspace = Workspace::new();
    let ingest = Pipeline::jetstream("ingest", "raw.>", "RAW").stage("tag", "tag", "{ set = { seen = true } }").route("out.{event}");
    let file = workspace.write_pipeline(PipelineFile::new().stream("RAW", &["raw.>"], "").pipeline(ingest).toml());
    let (sluice, address) = Sluice::run_with_metrics(&file, nats.url(), 1);
    sluice.wait_for_count("ingest", "published", 10, WAIT);
    let scraped = samples(&get(&address, "/metrics").await.1);
    sluice.terminate();
    let ingest = [("pipeline", "ingest")];
    assert_eq!(value(&scraped, "sluice_event_latency_seconds_count", &ingest), Some(10.0));
    let under_a_second = value(&scraped, "sluice_event_latency_seconds_bucket", &[("pipeline", "ingest"), ("le", "1.024")]);
    assert_eq!(under_a_second, Some(0.0), "each waited 1.5 s in the stream before sluice started");
    assert!(value(&scraped, "sluice_event_latency_seconds_sum", &ingest).unwrap() >= 15.0);
    let pending = value(&scraped, "sluice_input_pending", &ingest);
    assert!(pending.is_some_and(|n| (0.0..=10.0).contains(&n)), "the consumer's backlog is read: {pending:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_flooding_the_metrics_import_gets_its_bounds_and_holds_up_nothing() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let web = Pipeline::core("web", "in.>").set(r#"dead_letter = "dlq""#).stage("chaos", "chaos", "").route("out.{event}");
    let (sluice, address) = Sluice::run_with_metrics(&workspace.write_pipeline(PipelineFile::new().pipeline(web).toml()), nats.url(), 1);
    let mut outputs = Collector::subscribe(&nats, "out.>").await;
    for n in 0..3 {
        let body = if n == 1 { r#"{"event":"e","chaos":"metrics"}"# } else { r#"{"event":"e"}"# };
        nats.client.publish(format!("in.{n}"), body.into()).await.unwrap();
    }
    outputs.take(3, WAIT).await;

    let (status, text) = get(&address, "/metrics").await;
    assert_eq!(status, 200);
    let samples = samples(&text);
    let stage = [("pipeline", "web"), ("stage", "chaos")];
    let declared: Vec<&Series> = samples.keys().filter(|s| s.name.starts_with("chaos_metric_")).collect();
    assert!(declared.iter().all(|s| s.name == "chaos_metric_0_total"), "only the first metric got samples: {declared:?}");
    assert_eq!(declared.len(), 33, "32 values of the label and `other`: {declared:?}");
    let other = value(&samples, "chaos_metric_0_total", &[stage[0], stage[1], ("value", "other")]);
    assert_eq!(other, Some((1000 - 32 + 1) as f64), "the values past 32, and the one too long, count as other");
    assert_eq!(value(&samples, "chaos_metric_0_total", &[stage[0], stage[1], ("value", "v0")]), Some(1.0));
    assert_eq!(value(&samples, "sluice_plugin_samples_refused_total", &stage), Some(3.0));
    assert_eq!(value(&samples, "sluice_plugin_counter_total", &[stage[0], stage[1], ("name", "declarations_refused")]), Some(8.0));
    assert_eq!(sluice.log().events("A plugin's metric was refused.").len(), 8, "{}", sluice.log());
    assert!(!text.contains(&"x".repeat(100)), "the long value is not served");
    sluice.terminate();
}
