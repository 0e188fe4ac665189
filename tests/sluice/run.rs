//! The `sluice` binary against a real nats-server.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;

use crate::support::{Collector, Nats, Pipeline, PipelineFile, Sluice, Workspace, event, header, json};

const WAIT: Duration = Duration::from_secs(30);

/// tag, then route, reading from a JetStream stream the file declares.
fn ingest_pipeline() -> String {
    let ingest = Pipeline::jetstream("ingest", "raw.>", "RAW")
        .set("workers = 2")
        .set("max_event_bytes = \"2KiB\"")
        .stage("tag", "tag", r#"{ require = ["event", "user_id"], set = { tagged = true } }"#)
        .stage("route", "route", r#"{ subject = "out.{event}", drop = ["heartbeat"] }"#);
    PipelineFile::new().stream("RAW", &["raw.>"], "").pipeline(ingest).toml().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn events_come_out_transformed_on_their_subjects() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let sluice = Sluice::run(&workspace.write_pipeline(&ingest_pipeline()), nats.url(), 1);
    let mut out = Collector::subscribe(&nats, "out.>").await;

    let names = ["signed_up", "scene_generated", "heartbeat", "export_failed"];
    nats.publish_stored((0..400).map(|n| (format!("raw.web.{n}"), event(n, serde_json::json!({ "event": names[n % 4] }))))).await;

    let messages = out.take(300, WAIT).await;
    let mut seen = BTreeSet::new();
    for message in &messages {
        let body = json(message);
        assert_eq!(message.subject.as_str(), format!("out.{}", body["event"].as_str().unwrap()));
        assert_eq!(body["tagged"], true);
        assert_ne!(body["event"], "heartbeat", "heartbeats are dropped");
        assert_eq!(header(message, "Sluice-Pipeline").as_deref(), Some("ingest"));
        assert_eq!(header(message, "Sluice-Pipeline-Version").map(|v| v.len()), Some(16));
        assert!(seen.insert(body["n"].as_u64().unwrap()), "event {} came out twice", body["n"]);
    }
    assert!(out.drain(Duration::from_millis(500)).await.is_empty(), "only the 300 non-heartbeat events come out");
    let log = sluice.terminate();
    assert_eq!(log.counter("ingest", "dropped"), 100, "drops are counted in the progress report:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_and_bad_events_go_to_the_dead_letter_subject_with_an_envelope() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let _sluice = Sluice::run(&workspace.write_pipeline(&ingest_pipeline()), nats.url(), 1);
    let mut dead = Collector::subscribe(&nats, "dlq.>").await;
    let mut out = Collector::subscribe(&nats, "out.>").await;

    let missing_user = br#"{"event":"signed_up","n":1}"#.to_vec();
    let oversize = event(5, serde_json::json!({ "pad": "x".repeat(3000) }));
    let inputs: Vec<(String, Vec<u8>)> = vec![
        ("raw.a".into(), event(0, serde_json::json!({}))),
        ("raw.b".into(), missing_user.clone()),
        ("raw.c".into(), vec![]),
        ("raw.d".into(), vec![0xc3, 0x28, 0xa0]),
        ("raw.e".into(), b"{\"event\": \"signed_up\", ".to_vec()),
        ("raw.f".into(), oversize),
        ("raw.g".into(), event(6, serde_json::json!({}))),
    ];
    nats.publish_stored(inputs.clone()).await;

    let mut letters: Vec<serde_json::Value> = dead
        .take(5, WAIT)
        .await
        .iter()
        .map(|m| {
            let body = json(m);
            assert_eq!(m.subject.as_str(), format!("dlq.{}", body["stage"].as_str().unwrap()));
            body
        })
        .collect();
    letters.sort_by_key(|l| l["subject"].as_str().unwrap().to_string());
    let summary: Vec<(&str, &str, &str)> =
        letters.iter().map(|l| (l["subject"].as_str().unwrap(), l["stage"].as_str().unwrap(), l["code"].as_str().unwrap())).collect();
    assert_eq!(
        summary,
        vec![
            ("raw.b", "tag", "missing_property"),
            ("raw.c", "input", "empty"),
            ("raw.d", "input", "malformed"),
            ("raw.e", "input", "malformed"),
            ("raw.f", "input", "too_large")
        ]
    );
    // The envelope carries the reason and the original bytes.
    let letter = &letters[0];
    assert_eq!(letter["pipeline"], "ingest");
    assert_eq!(letter["property"], "user_id");
    assert!(letter["message"].as_str().unwrap().contains("user_id"));
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(letter["body_base64"].as_str().unwrap()).unwrap(), missing_user);
    assert_eq!(letter["body"].as_str().unwrap().as_bytes(), &missing_user[..]);
    assert!(letters[2]["body"].is_null(), "a non-UTF-8 body is only in body_base64");
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(letters[2]["body_base64"].as_str().unwrap()).unwrap(), inputs[3].1);

    // The good events of the same batch come out.
    let good: BTreeSet<u64> = out.take(2, WAIT).await.iter().map(|m| json(m)["n"].as_u64().unwrap()).collect();
    assert_eq!(good, BTreeSet::from([0, 6]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_a_loop_a_runaway_allocation_a_flood_and_a_stack_overflow_lose_only_their_own_event() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let file = workspace.write_pipeline(
        r#"
        [[stream]]
        name = "RAW"
        subjects = ["raw.>"]

        [[pipeline]]
        name = "hostile"
        input = { subject = "raw.>", stream = "RAW" }
        dead_letter = "dlq"
        workers = 1
        batch = { max_events = 64, max_wait = "300ms" }

          [[pipeline.stage]]
          name = "chaos"
          component = "{plugin:chaos}"
          limits = { time = "200ms", memory = "24MiB" }

          [[pipeline.stage]]
          name = "route"
          component = "{plugin:route}"
          config = { subject = "out.{event}" }
        "#,
    );
    let sluice = Sluice::run(&file, nats.url(), 1);
    let mut dead = Collector::subscribe(&nats, "dlq.>").await;
    let mut out = Collector::subscribe(&nats, "out.>").await;

    let poison = |n: usize| match n {
        4 => serde_json::json!({ "chaos": "trap" }),
        9 => serde_json::json!({ "chaos": "loop" }),
        14 => serde_json::json!({ "chaos": "alloc" }),
        16 => serde_json::json!({ "chaos": "flood", "count": 1001 }),
        18 => serde_json::json!({ "chaos": "stack" }),
        _ => serde_json::json!({}),
    };
    nats.publish_stored((0..20).map(|n| (format!("raw.{n}"), event(n, poison(n))))).await;

    let good: BTreeSet<u64> = out.take(15, WAIT).await.iter().map(|m| json(m)["n"].as_u64().unwrap()).collect();
    assert_eq!(good, (0..20).filter(|n| ![4, 9, 14, 16, 18].contains(n)).collect());
    let mut codes: Vec<(u64, String)> = dead
        .take(5, WAIT)
        .await
        .iter()
        .map(|m| {
            let letter = json(m);
            let original: serde_json::Value = serde_json::from_str(letter["body"].as_str().unwrap()).unwrap();
            (original["n"].as_u64().unwrap(), letter["code"].as_str().unwrap().to_string())
        })
        .collect();
    codes.sort();
    assert_eq!(codes, vec![(4, "trap".into()), (9, "timeout".into()), (14, "memory_limit".into()), (16, "output_limit".into()), (18, "trap".into())]);

    // The host is still up and the stage works with fresh instances.
    nats.publish_stored([("raw.after".to_string(), event(100, serde_json::json!({})))]).await;
    assert_eq!(json(&out.take(1, WAIT).await[0])["n"], 100);
    sluice.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_in_one_queue_group_share_a_core_input() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let file = workspace.write_pipeline(
        r#"
        [[pipeline]]
        name = "relay"
        input = { subject = "core.in.>", mode = "core", queue = "relay" }
        dead_letter = "dlq"
        workers = 1

          [[pipeline.stage]]
          name = "route"
          component = "{plugin:route}"
          config = { subject = "core.out.{event}" }
        "#,
    );
    let hosts = [Sluice::run(&file, nats.url(), 1), Sluice::run(&file, nats.url(), 1)];
    let mut out = Collector::subscribe(&nats, "core.out.>").await;

    for n in 0..2000 {
        nats.client.publish(format!("core.in.{n}"), event(n, serde_json::json!({})).into()).await.unwrap();
        if n % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    nats.client.flush().await.unwrap();
    assert_shared(&mut out, hosts, "relay", 2000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_on_one_durable_consumer_share_a_jetstream_input() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let file = workspace.write_pipeline(
        r#"
        [[stream]]
        name = "RAW"
        subjects = ["raw.>"]

        [[pipeline]]
        name = "shared"
        input = { subject = "raw.>", stream = "RAW", durable = "shared" }
        dead_letter = "dlq"
        workers = 1
        batch = { max_events = 16, max_wait = "1ms" }

          [[pipeline.stage]]
          name = "route"
          component = "{plugin:route}"
          config = { subject = "out.{event}" }
        "#,
    );
    let hosts = [Sluice::run(&file, nats.url(), 1), Sluice::run(&file, nats.url(), 1)];
    let mut out = Collector::subscribe(&nats, "out.>").await;
    for chunk in 0..10 {
        nats.publish_stored((chunk * 200..(chunk + 1) * 200).map(|n| (format!("raw.{n}"), event(n, serde_json::json!({}))))).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_shared(&mut out, hosts, "shared", 2000).await;
}

/// Every event came out once, and each host processed some of them.
async fn assert_shared(out: &mut Collector, hosts: [Sluice; 2], pipeline: &str, events: u64) {
    let numbers: BTreeSet<u64> = out.take(events as usize, WAIT).await.iter().map(|m| json(m)["n"].as_u64().unwrap()).collect();
    assert_eq!(numbers.len() as u64, events, "every event once");
    assert!(out.drain(Duration::from_millis(300)).await.is_empty(), "no event twice");
    let [first, second] = hosts;
    let (a, b) = (first.terminate().counter(pipeline, "received"), second.terminate().counter(pipeline, "received"));
    assert_eq!(a + b, events);
    assert!(a > 0 && b > 0, "both hosts took a share: {a} and {b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_refuses_to_start_on_a_file_with_problems() {
    let workspace = Workspace::new();
    let file = workspace.write_pipeline("[[pipeline]]\nname = \"x\"\ninput = { subject = \"a..b\", mode = \"core\" }\ndead_letter = \"dlq\"\n");
    let (status, log) = Sluice::command(&["run", file.to_str().unwrap(), "--nats", "nats://127.0.0.1:1"]).wait();
    assert!(!status.success());
    assert!(log.contains("pipeline.toml:3:21: subject \"a..b\" has an empty token"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_url_sluice_starts_its_own_nats_server_and_stops_it_on_exit() {
    let workspace = Workspace::new();
    let file = workspace.write_pipeline(
        r#"
        [[pipeline]]
        name = "a"
        input = { subject = "a.in.>", mode = "core" }
        dead_letter = "dlq"
          [[pipeline.stage]]
          name = "route"
          component = "{plugin:route}"
          config = { subject = "a.out.{event}" }

        [[pipeline]]
        name = "b"
        input = { subject = "b.in.>", mode = "core" }
        dead_letter = "dlq"
          [[pipeline.stage]]
          name = "tag"
          component = "{plugin:tag}"
          config = { set = { by = "b" } }
          [[pipeline.stage]]
          name = "route"
          component = "{plugin:route}"
          config = { subject = "b.out.{event}" }
        "#,
    );
    let sluice = Sluice::command(&["run", file.to_str().unwrap()]).spawn();
    sluice.wait_for("Pipeline started.", 2, WAIT);
    let log = sluice.log();
    let url = log.plain().find_map(|l| l.strip_prefix("sluice: NATS is at ")).expect("the URL is printed").split_whitespace().next().unwrap().to_string();

    // Both pipelines of the file run side by side on that server.
    let client = async_nats::connect(&url).await.expect("the managed server accepts clients");
    let mut out = client.subscribe("*.out.>").await.unwrap();
    client.flush().await.unwrap();
    client.publish("a.in.1", event(1, serde_json::json!({})).into()).await.unwrap();
    client.publish("b.in.2", event(2, serde_json::json!({})).into()).await.unwrap();
    client.flush().await.unwrap();
    let mut subjects = BTreeSet::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut out)).await.unwrap().unwrap();
        let body = json(&message);
        assert_eq!(body["by"] == "b", message.subject.starts_with("b."), "only pipeline b tags");
        subjects.insert(message.subject.to_string());
    }
    assert_eq!(subjects, BTreeSet::from(["a.out.scene_generated".to_string(), "b.out.scene_generated".to_string()]));
    drop(client);

    sluice.terminate();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the managed nats-server stopped with sluice");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_runs_on_a_nats_account_without_jetstream_its_state_and_lease_in_memory() {
    // Account `plain` has no JetStream: no key-value bucket for the sink's state or its lease.
    let nats = Nats::start_with_config("accounts { plain: { users: [{ user: plain, password: plain }] } }\nno_auth_user: plain\n").await;
    let workspace = Workspace::new();
    let tally = Pipeline::core("tally", "in.>").set("workers = 1").set("tick = \"200ms\"").stage("tally", "tally", "{ subject_prefix = \"counts\" }");
    let file = workspace.write_pipeline(PipelineFile::new().pipeline(tally).toml());
    let sluice = Sluice::run(&file, nats.url(), 1);
    sluice.wait_for("Worker started.", 1, WAIT);
    let mut summaries = Collector::subscribe(&nats, "counts.>").await;
    for n in 0..3 {
        nats.client.publish(format!("in.{n}"), event(n, serde_json::json!({})).into()).await.unwrap();
    }
    nats.client.flush().await.unwrap();
    let summary = json(&summaries.take(1, WAIT).await[0]);
    assert_eq!(summary["counts"].as_object().unwrap().len(), 3, "{summary}");
    let log = sluice.terminate();
    assert_eq!(log.events_saying("Cannot keep the lease of the pipeline's sink in NATS").len(), 1, "{log}");
}
