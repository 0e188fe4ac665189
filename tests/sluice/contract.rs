//! Two versions of the contract in one pipeline: a plugin built against
//! `sluice:plugin@0.1.0` (`tests/plugins/stamp-0.1`, written without the SDK)
//! runs beside plugins on `@0.2.0` over a real nats-server, its log, clock
//! and counter imports served as before; and `sluice validate` shows a 0.2.0
//! plugin's refusal at the line of the key at fault, a 0.1.0 one's at the
//! stage's `config`, as the message it gave. A sink's state carries over a
//! hot swap from its 0.1.0 build (`tests/plugins/tally-0.1`) to its SDK build
//! on 0.2.0 (`plugins/tally`), and back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice::pipeline::Chain;
use sluice::plugin::Event;

use crate::support::{Collector, Nats, Pipeline, PipelineFile, Sluice, Workspace, json};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_on_0_1_0_and_plugins_on_0_2_0_run_in_one_pipeline() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let pipeline = Pipeline::core("mixed", "in.>")
        .set(r#"dead_letter = "dlq""#)
        .stage("stamp", "stamp_0_1", r#"{ property = "stamped_ns" }"#)
        .stage("tag", "tag", r#"{ require = ["event"], set = { by = "tag" } }"#)
        .route("out.{event}");
    let sluice = Sluice::run(&workspace.write_pipeline(PipelineFile::new().pipeline(pipeline).toml()), nats.url(), 1);
    let mut outputs = Collector::subscribe(&nats, "out.>").await;
    let mut letters = Collector::subscribe(&nats, "dlq.>").await;

    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    for n in 0..20 {
        let body = if n % 5 == 4 { format!(r#"{{"n":{n}}}"#) } else { format!(r#"{{"event":"e{}","n":{n}}}"#, n % 2) };
        nats.client.publish(format!("in.{n}"), body.into()).await.unwrap();
    }
    let outputs = outputs.take(16, WAIT).await;
    let letters = letters.take(4, WAIT).await;
    let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    sluice.wait_for_count("mixed", "received", 20, WAIT);
    let log = sluice.terminate();

    for message in &outputs {
        let body = json(message);
        let stamped = body["stamped_ns"].as_u64().unwrap_or_else(|| panic!("the 0.1.0 stage stamped it: {body}"));
        assert!((before..=after).contains(&stamped), "stamped with the host clock: {stamped} not in {before}..{after}");
        assert_eq!(body["by"], "tag", "the 0.2.0 stage tagged it: {body}");
        assert_eq!(message.subject.as_str(), format!("out.{}", body["event"].as_str().unwrap()));
    }
    for letter in &letters {
        let reason = json(letter);
        assert_eq!((reason["code"].as_str(), reason["stage"].as_str()), (Some("missing_property"), Some("tag")), "{reason}");
    }
    assert_eq!(log.plugin_counter("mixed", "stamp.stamped"), Some(20), "the 0.1.0 counters import is counted");
}

#[test]
fn validate_points_at_the_key_a_0_2_0_plugin_refuses_and_at_the_config_a_0_1_0_plugin_refuses() {
    let workspace = Workspace::new();
    let current = Pipeline::core("current", "a.>").stage("route", "route", r#"{ subject = "out", rules = [{ when = { event = "a" }, subject = "" }] }"#);
    let older = Pipeline::core("older", "b.>").stage("stamp", "stamp_0_1", r#"{ property = "" }"#).route("out");
    let file = workspace.write_pipeline(PipelineFile::new().pipeline(current).pipeline(older).toml());
    let (status, log) = Sluice::command(&["validate", file.to_str().unwrap()]).wait();
    assert!(!status.success(), "{log}");
    let text = std::fs::read_to_string(&file).unwrap();
    let line = text.lines().position(|l| l.contains(r#"subject = "" }"#)).unwrap() + 1;
    let column = text.lines().nth(line - 1).unwrap().find(r#"subject = "" }"#).unwrap() + 1;
    let expected = format!("{}:{line}:{column}: pipeline `current`: stage `route`: config `rules[0].subject`: a subject must not be empty", file.display());
    assert!(log.contains(&expected), "expected {expected:?} in\n{log}");
    assert!(log.contains(&format!("{line:>5} | ")), "the line itself is shown:\n{log}");
    // A 0.1.0 refusal names no key: it is shown at the stage's `config`, as the plugin wrote it.
    let line = text.lines().position(|l| l.contains(r#"config = { property = "" }"#)).unwrap() + 1;
    let older = format!("{}:{line}:3: pipeline `older`: stage `stamp`: `property` must not be empty", file.display());
    assert!(log.contains(&older), "expected {older:?} in\n{log}");
    assert!(log.contains("2 problems in"), "{log}");
}

/// A counting pipeline ending in the sink `component`.
fn tally(component: &str) -> Chain {
    let toml = format!(
        "[[pipeline]]\nname = \"count\"\ninput = {{ subject = \"in.>\", mode = \"core\" }}\ndead_letter = \"dlq\"\nworkers = 1\n\
         [[pipeline.stage]]\nname = \"tally\"\ncomponent = \"{{plugin:{component}}}\"\nconfig = {{ subject_prefix = \"counts\" }}\n"
    );
    Chain::start(crate::chain::prepare(&toml).expect("version")).expect("chain")
}

fn on(subject: &str) -> Event {
    Event { subject: subject.into(), headers: vec![], body: b"{}".to_vec() }
}

/// The counts of the one summary a tick emitted.
fn counts(events: &[Event]) -> serde_json::Value {
    assert_eq!(events.len(), 1, "one summary per tick");
    serde_json::from_slice::<serde_json::Value>(&events[0].body).unwrap()["counts"].clone()
}

#[test]
fn a_sinks_state_carries_over_a_swap_from_its_0_1_0_build_to_its_0_2_0_build_and_back() {
    let mut older = tally("tally_0_1");
    older.process(&[on("in.a"), on("in.a"), on("in.b")]).expect("batch");
    older.commit().expect("the sink gives its state");
    let mut newer = tally("tally");
    newer.take_over(older.hand_over().expect("the sink gives its state")).expect("the 0.2.0 build takes the 0.1.0 state");
    newer.process(&[on("in.a")]).expect("batch");
    newer.commit().expect("the sink gives its state");
    // Rolled back: the 0.1.0 build takes the state the 0.2.0 one kept.
    let mut again = tally("tally_0_1");
    again.take_over(newer.hand_over().expect("the sink gives its state")).expect("the 0.1.0 build takes the 0.2.0 state");
    again.process(&[on("in.c")]).expect("batch");
    assert_eq!(counts(&again.tick(1).expect("tick")), serde_json::json!({ "in.a": 3, "in.b": 1, "in.c": 1 }));
    assert!(again.tick(2).expect("tick").is_empty(), "a 0.1.0 sink's tick is served");
}
