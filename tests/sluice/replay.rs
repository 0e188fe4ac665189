//! `sluice replay`: the StoryForge ingest rejects a day's events for a value
//! its schema does not allow yet; the schema is widened by a hot swap; the
//! rejected events are replayed from the dead-letter stream and come out on
//! analytics once each, a second replay publishes nothing, and a dry run
//! changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Nats, Sluice, Workspace, json, root, stream_count, wait_until, write_atomically};

const WAIT: Duration = Duration::from_secs(60);

/// The ingest pipeline of storyforge.toml alone, with its schemas copied
/// beside it, so that the test can widen one.
fn ingest_in(workspace: &Workspace) -> PathBuf {
    let text = std::fs::read_to_string(root().join("pipelines/storyforge.toml")).unwrap();
    let ingest_end = text.find("# Alerting (spec sections 6 and 7)").expect("storyforge.toml has the alerts after the ingest");
    let plugins = root().join("target/wasm32-wasip2/release");
    let file = text[..ingest_end].replace("dir = \"../target/wasm32-wasip2/release\"", &format!("dir = {:?}", plugins.to_str().unwrap()));
    let schemas = workspace.path("schemas/storyforge/v1");
    std::fs::create_dir_all(&schemas).unwrap();
    for entry in std::fs::read_dir(root().join("pipelines/schemas/storyforge/v1")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), schemas.join(entry.file_name())).unwrap();
    }
    let path = workspace.path("storyforge.toml");
    write_atomically(&path, file.as_bytes());
    path
}

/// A valid `scene_generated` of the sample day, as a template.
fn scene_generated() -> Value {
    let text = std::fs::read_to_string(root().join("pipelines/samples/storyforge-day.jsonl")).unwrap();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| event["event"] == "scene_generated" && event.get("analytics_opt_out").is_none() && event["safety_mode"] == "default")
        .expect("the sample day has a scene_generated")
}

/// `sluice replay ARGS --nats URL`, its exit and what it printed.
fn replay(nats: &Nats, args: &[&str]) -> (bool, String) {
    let mut all = vec!["replay"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--nats", nats.url()]);
    let (status, log) = Sluice::command(&all).wait();
    (status.success(), log.plain().collect::<Vec<_>>().join("\n"))
}

fn widen_safety_mode(schemas: &Path) {
    let path = schemas.join("scene_generated.json");
    let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let modes = schema.pointer_mut("/properties/safety_mode/enum").expect("safety_mode is an enumeration").as_array_mut().unwrap();
    modes.push("strict".into());
    write_atomically(&path, serde_json::to_vec_pretty(&schema).unwrap().as_slice());
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_events_replayed_after_a_schema_is_widened_come_out_once_and_a_second_replay_publishes_nothing() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let file = ingest_in(&workspace);
    let sluice = Sluice::run(&file, nats.url(), 1);

    // 20 events pass; 10 use a safety mode the schema does not know yet; 1
    // lacks its user_id and will keep failing.
    let template = scene_generated();
    let event = |n: usize, mode: &str| {
        let mut event = template.clone();
        event["scene_id"] = format!("6f1c2d3e-4b5a-4c7d-8e9f-{n:012}").into();
        event["safety_mode"] = mode.into();
        event
    };
    let mut bodies: Vec<Value> = (0..20).map(|n| event(n, "default")).collect();
    bodies.extend((20..30).map(|n| event(n, "strict")));
    let mut broken = event(30, "strict");
    broken.as_object_mut().unwrap().remove("user_id");
    bodies.push(broken);
    nats.publish_stored(bodies.iter().map(|b| ("storyforge.raw.web".to_string(), serde_json::to_vec(b).unwrap()))).await;
    wait_until(|| async { stream_count(&nats, "STORYFORGE_DLQ").await >= 11 && stream_count(&nats, "STORYFORGE_CLEAN").await >= 20 }).await;

    // A dry run says what would become of each, and publishes nothing.
    let pipeline = file.to_str().unwrap();
    let (ok, printed) = replay(&nats, &["--from", "STORYFORGE_DLQ", "--to", "storyforge.raw.>", "--dry-run", "--pipeline", pipeline]);
    assert!(ok, "{printed}");
    assert_eq!(printed.matches("would: be rejected again at validate/invalid_property").count(), 10, "{printed}");
    assert_eq!(printed.matches("would: be rejected again at validate/missing_property").count(), 1, "{printed}");
    assert!(printed.contains("11 dead letter(s) picked: 11 would"), "{printed}");

    // The schema takes the new mode: a hot swap.
    widen_safety_mode(&workspace.path("schemas/storyforge/v1"));
    sluice.wait_for("Swapping to the new version between batches.", 1, WAIT);
    let (ok, printed) =
        replay(&nats, &["--from", "storyforge.dlq.validate", "--code", "invalid_property", "--to", "storyforge.raw.>", "--dry-run", "--pipeline", pipeline]);
    assert!(ok, "{printed}");
    assert_eq!(printed.matches("would: come out on storyforge.analytics.scene_generated").count(), 10, "{printed}");
    assert_eq!((stream_count(&nats, "STORYFORGE_RAW").await, stream_count(&nats, "STORYFORGE_CLEAN").await), (31, 20), "a dry run publishes nothing");

    // The replay: the ten come out, the broken one fails again and says why.
    let (ok, printed) = replay(&nats, &["--from", "STORYFORGE_DLQ", "--to", "storyforge.raw.>", "--wait", "8s"]);
    assert!(ok, "{printed}");
    assert!(printed.contains("11 dead letter(s) picked: 1 failed again, 11 replayed"), "{printed}");
    assert!(printed.contains("failed again at validate/missing_property"), "{printed}");
    wait_until(|| async { stream_count(&nats, "STORYFORGE_CLEAN").await >= 30 }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for message in nats.stream_messages("STORYFORGE_CLEAN").await {
        assert_eq!(message.subject.as_str(), "storyforge.analytics.scene_generated");
        *seen.entry(json(&message)["scene_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(seen.len(), 30, "the 20 and the 10 formerly rejected");
    assert!(seen.values().all(|n| *n == 1), "each once: {seen:?}");

    // Again: every letter (the broken one's new letter too) was replayed already.
    let (ok, printed) = replay(&nats, &["--from", "STORYFORGE_DLQ", "--to", "storyforge.raw.>", "--wait", "1s"]);
    assert!(ok, "{printed}");
    assert!(printed.contains("12 dead letter(s) picked: 12 already replayed"), "{printed}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!((stream_count(&nats, "STORYFORGE_RAW").await, stream_count(&nats, "STORYFORGE_CLEAN").await), (42, 30), "nothing published twice");

    // Bad arguments are refused with the reason.
    let (ok, printed) = replay(&nats, &["--from", "NO_SUCH", "--to", "storyforge.raw.>"]);
    assert!(!ok && printed.contains("no stream is named \"NO_SUCH\""), "{printed}");
    sluice.terminate();
}
