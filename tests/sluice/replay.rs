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

fn sample_day() -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(root().join("pipelines/samples/storyforge-day.jsonl")).unwrap();
    text.lines().map(|line| line.as_bytes().to_vec()).collect()
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

    // The sample day, with its rejects (malformed, missing and invalid
    // properties, unknown events), and 20 more events that pass, 10 that use
    // a safety mode the schema does not know yet, and 1 that also lacks its
    // user_id: those keep failing.
    let template = scene_generated();
    let event = |n: usize, mode: &str| {
        let mut event = template.clone();
        event["scene_id"] = format!("6f1c2d3e-4b5a-4c7d-8e9f-{n:012}").into();
        event["safety_mode"] = mode.into();
        serde_json::to_vec(&event).unwrap()
    };
    let mut bodies = sample_day();
    bodies.extend((0..20).map(|n| event(n, "default")));
    bodies.extend((20..30).map(|n| event(n, "strict")));
    let mut broken: Value = serde_json::from_slice(&event(30, "strict")).unwrap();
    broken.as_object_mut().unwrap().remove("user_id");
    bodies.push(serde_json::to_vec(&broken).unwrap());
    let published = bodies.len() as u64;
    nats.publish_stored(bodies.into_iter().map(|body| ("storyforge.raw.web".to_string(), body))).await;
    wait_until(|| async {
        let info = nats.jetstream.get_stream("STORYFORGE_RAW").await.unwrap().consumer_info("storyforge-ingest").await.unwrap();
        info.num_pending == 0 && info.num_ack_pending == 0
    })
    .await;
    let (letters, clean) = (stream_count(&nats, "STORYFORGE_DLQ").await, stream_count(&nats, "STORYFORGE_CLEAN").await);
    assert!(letters > 50, "the day has rejects: {letters}");

    // A dry run says what would become of each, and publishes nothing.
    let pipeline = file.to_str().unwrap();
    let (ok, printed) = replay(&nats, &["--from", "STORYFORGE_DLQ", "--to", "storyforge.raw.>", "--dry-run", "--pipeline", pipeline]);
    assert!(ok, "{printed}");
    assert!(printed.contains(&format!("{letters} dead letter(s) picked: {letters} would")), "{printed}");
    assert!(!printed.contains("would: come out"), "nothing passes yet: {printed}");

    // The schema takes the new mode: a hot swap. Now the ten would pass.
    widen_safety_mode(&workspace.path("schemas/storyforge/v1"));
    // The ingest's workers, one per core, each start the new version beside and swap.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    sluice.wait_for("Worker swapped version.", workers, WAIT);
    let (ok, printed) =
        replay(&nats, &["--from", "storyforge.dlq.validate", "--code", "invalid_property", "--to", "storyforge.raw.>", "--dry-run", "--pipeline", pipeline]);
    assert!(ok, "{printed}");
    assert_eq!(printed.matches("would: come out on storyforge.analytics.scene_generated").count(), 10, "{printed}");
    assert_eq!((stream_count(&nats, "STORYFORGE_RAW").await, stream_count(&nats, "STORYFORGE_CLEAN").await), (published, clean), "a dry run publishes nothing");

    // The replay: the ten come out; every other event fails again, and says why.
    let (ok, printed) = replay(&nats, &["--from", "STORYFORGE_DLQ", "--to", "storyforge.raw.>", "--wait", "20s"]);
    assert!(ok, "{printed}");
    assert!(printed.contains(&format!("{letters} dead letter(s) picked: {} failed again, {letters} replayed", letters - 10)), "{printed}");
    assert!(printed.contains("failed again at validate/missing_property"), "{printed}");
    wait_until(|| async { stream_count(&nats, "STORYFORGE_CLEAN").await >= clean + 10 }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for message in nats.stream_messages("STORYFORGE_CLEAN").await {
        if let Some(scene) = json(&message)["scene_id"].as_str().filter(|id| id.starts_with("6f1c2d3e-4b5a-4c7d-8e9f-")) {
            *seen.entry(scene.to_string()).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 30, "the 20 and the 10 formerly rejected");
    assert!(seen.values().all(|n| *n == 1), "each once: {seen:?}");
    assert_eq!(stream_count(&nats, "STORYFORGE_CLEAN").await, clean + 10);

    // Again: every letter (those that failed again too) was replayed already.
    let all = stream_count(&nats, "STORYFORGE_DLQ").await;
    assert_eq!(all, 2 * letters - 10, "each event that failed again has a new letter");
    let (ok, printed) = replay(&nats, &["--from", "STORYFORGE_DLQ", "--to", "storyforge.raw.>", "--wait", "1s"]);
    assert!(ok, "{printed}");
    assert!(printed.contains(&format!("{all} dead letter(s) picked: {all} already replayed")), "{printed}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        (stream_count(&nats, "STORYFORGE_RAW").await, stream_count(&nats, "STORYFORGE_CLEAN").await),
        (published + letters, clean + 10),
        "nothing published twice"
    );

    // Bad arguments are refused with the reason.
    let (ok, printed) = replay(&nats, &["--from", "NO_SUCH", "--to", "storyforge.raw.>"]);
    assert!(!ok && printed.contains("no stream is named \"NO_SUCH\""), "{printed}");
    sluice.terminate();
}
