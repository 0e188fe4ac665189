//! StoryForge alerting through `sluice run` over a real nats-server: a day of
//! analytics replayed through pipelines/storyforge.toml gives the expected
//! alert timeline; an alert survives a hot swap of the plugin and a restart of
//! the host without repeating, even when the restarted host is given again
//! events its kept state already counted; a silence holds an alert back
//! until a hot swap takes it out; a webhook output delivers alerts to a local
//! HTTP receiver, retrying when it fails and dead-lettering what it refuses.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_kit::time;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Collector, Nats, Sluice, Workspace, json, root, write_atomically};

const WAIT: Duration = Duration::from_secs(90);
/// 2026-11-23T00:00:00Z: the replayed day.
const DAY: i64 = 1_795_392_000_000;
const MINUTE: i64 = 60_000;

/// An analytics event as the ingest pipeline publishes it.
fn analytics(name: &str, at_ms: i64, extra: Value) -> (String, Vec<u8>) {
    let mut body = json!({
        "event": name,
        "server_ts": time::format_rfc3339(at_ms),
        "user_id": "9b2f6d0e-4c1a-4f5e-9a7b-1d2c3e4f5a6b",
        "platform": "web",
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    (format!("storyforge.analytics.{name}"), serde_json::to_vec(&body).unwrap())
}

/// Waits until `stream` holds at least `count` alerts, then returns them
/// all; heartbeats (`<prefix>.heartbeat`) are left out.
async fn stream_at_least(nats: &Nats, stream: &str, count: usize, sluice: &Sluice) -> Vec<async_nats::Message> {
    let deadline = Instant::now() + WAIT;
    let mut alerts = Vec::new();
    loop {
        // The stream is read only once it holds enough messages, heartbeats included.
        let held = match nats.jetstream.get_stream(stream).await {
            Ok(mut handle) => handle.info().await.map_or(0, |info| info.state.messages),
            Err(_) => 0,
        };
        if held >= count as u64 {
            alerts = alerts_in(nats, stream).await;
            if alerts.len() >= count {
                return alerts;
            }
        }
        assert!(Instant::now() < deadline, "{stream} holds {} alerts, expected {count}; sluice logged:\n{}", alerts.len(), sluice.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The alerts `stream` holds, heartbeats left out.
async fn alerts_in(nats: &Nats, stream: &str) -> Vec<async_nats::Message> {
    nats.stream_messages(stream).await.into_iter().filter(|m| !m.subject.ends_with(".heartbeat")).collect()
}

/// `keep_firing_for` in pipelines/storyforge.toml.
const KEEP_FIRING_MINUTES: i64 = 10;

/// One StoryForge day: steady traffic with six incidents and a quiet night.
fn storyforge_day() -> Vec<(String, Vec<u8>)> {
    let mut events = Vec::new();
    let mut exports = 0u64;
    for m in 0..1440i64 {
        let t = DAY + m * MINUTE;
        let hour = m / 60;
        // Generations: three a minute, none between 01:00 and 05:00 but for ten
        // slow ones at 02:00 (too few samples to page).
        if (60..300).contains(&m) {
            if (120..130).contains(&m) {
                events.push(analytics("scene_generated", t, json!({ "latency_ms": 150_000, "provider_route": "primary" })));
            }
        } else {
            for (i, variant) in ["A", "B", "A"].iter().enumerate() {
                let slow = (360..380).contains(&m); // 06:00–06:20
                let latency = if slow { 115_000 } else { 30_000 + (m % 7) * 1000 };
                let fallback = (1080..1140).contains(&m) && i == 0; // 18:00–19:00
                let route = if fallback { "fallback" } else { "primary" };
                let extra = json!({ "latency_ms": latency, "provider_route": route, "experiment_assignments": { "pricing_layout": variant } });
                events.push(analytics("scene_generated", t + i as i64 * 20_000, extra));
            }
        }
        // Exports: three of variant A and one of B a minute. 09:00–09:30 half
        // of B's fail; 21:00–21:30 half of everyone's.
        for (i, variant) in ["A", "A", "A", "B"].iter().enumerate() {
            exports += 1;
            let b_incident = (540..570).contains(&m) && *variant == "B" && m % 2 == 0;
            let all_incident = (1260..1290).contains(&m) && exports.is_multiple_of(2);
            let name = if b_incident || all_incident { "export_failed" } else { "export_succeeded" };
            events.push(analytics(name, t + 5_000 + i as i64 * 15_000, json!({ "experiment_assignments": { "pricing_layout": variant } })));
        }
        // Payments: one a minute; 12:00–13:00 every tenth fails.
        let failed = hour == 12 && m % 10 == 0;
        events.push(analytics(if failed { "payment_failed" } else { "payment_succeeded" }, t + 50_000, json!({})));
        // Locked scenes: one a minute; 15:00–16:00 their consistency drops.
        let score = if hour == 15 { 0.80 } else { 0.95 };
        events.push(analytics("scene_locked", t + 15_000, json!({ "consistency_score": score })));
    }
    events.sort_by_key(|(_, body)| serde_json::from_slice::<Value>(body).unwrap()["server_ts"].as_str().unwrap().to_string());
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_day_gives_the_expected_alert_timeline() {
    let nats = Nats::start().await;
    let sluice = Sluice::run(&root().join("pipelines/storyforge.toml"), nats.url(), 2);
    let day = storyforge_day();
    nats.publish_stored(day.clone()).await;

    // Each incident: the alert key, when it began and ended (the window may
    // delay the firing and the resolving by up to its length, and the
    // resolving by the pipeline's `keep_firing_for` on top).
    let h = |hh: i64, mm: i64| DAY + hh * 60 * MINUTE + mm * MINUTE;
    let guardrail = |variant: &str| format!("experiment_guardrail/export_success_rate{{experiment=pricing_layout,variant={variant}}}");
    let expected: Vec<(String, i64, i64, i64)> = vec![
        ("generation_p95".into(), h(6, 0), h(6, 20), 15),
        (guardrail("B"), h(9, 0), h(9, 30), 30),
        ("payment_failure_rate".into(), h(12, 0), h(13, 0), 60),
        ("continuity_score".into(), h(15, 0), h(16, 0), 60),
        ("provider_fallback_rate".into(), h(18, 0), h(19, 0), 60),
        ("export_success_rate".into(), h(21, 0), h(21, 30), 30),
        (guardrail("A"), h(21, 0), h(21, 30), 30),
        (guardrail("B"), h(21, 0), h(21, 30), 30),
    ];
    stream_at_least(&nats, "STORYFORGE_ALERTS", 2 * expected.len(), &sluice).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alerts: Vec<Value> = alerts_in(&nats, "STORYFORGE_ALERTS").await.iter().map(json).collect();
    let timeline: Vec<String> = alerts.iter().map(|a| format!("{} {} {}", a["changed_at"], a["key"], a["state"])).collect();
    eprintln!("alert timeline:\n{}", timeline.join("\n"));
    assert_eq!(alerts.len(), 2 * expected.len(), "one firing and one resolved per incident, nothing else:\n{}", timeline.join("\n"));
    // Windows run on event time: the same day always gives this timeline.
    let b = guardrail("B");
    let a = guardrail("A");
    let exact = [
        ("06:02", "generation_p95", "firing"),
        ("06:44", "generation_p95", "resolved"),
        ("09:13", b.as_str(), "firing"),
        ("09:57", b.as_str(), "resolved"),
        ("12:11", "payment_failure_rate", "firing"),
        ("13:51", "payment_failure_rate", "resolved"),
        ("15:28", "continuity_score", "firing"),
        ("16:42", "continuity_score", "resolved"),
        ("18:37", "provider_fallback_rate", "firing"),
        ("19:34", "provider_fallback_rate", "resolved"),
        ("21:07", b.as_str(), "firing"),
        ("21:13", "export_success_rate", "firing"),
        ("21:19", a.as_str(), "firing"),
        ("21:52", a.as_str(), "resolved"),
        ("21:58", "export_success_rate", "resolved"),
        ("22:04", b.as_str(), "resolved"),
    ];
    let exact: Vec<String> = exact.iter().map(|(at, key, state)| format!("\"2026-11-23T{at}:00.000Z\" \"{key}\" \"{state}\"")).collect();
    assert_eq!(timeline, exact);

    let mut by_key: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for alert in &alerts {
        by_key.entry(alert["key"].as_str().unwrap().to_string()).or_default().push(alert);
    }
    let at = |alert: &Value| time::parse_rfc3339(alert["changed_at"].as_str().unwrap()).unwrap();
    for (key, began, ended, window_minutes) in &expected {
        let incidents = by_key.get_mut(key).unwrap_or_else(|| panic!("no alert for {key}:\n{}", timeline.join("\n")));
        let (firing, resolved) = (incidents.remove(0), incidents.remove(0));
        assert_eq!((firing["state"].as_str(), resolved["state"].as_str()), (Some("firing"), Some("resolved")), "{key}");
        assert!((*began..=*began + window_minutes * MINUTE).contains(&at(firing)), "{key} fired at {}:\n{}", firing["changed_at"], timeline.join("\n"));
        assert!(
            (*ended..=*ended + (window_minutes + KEEP_FIRING_MINUTES + 1) * MINUTE).contains(&at(resolved)),
            "{key} resolved at {}:\n{}",
            resolved["changed_at"],
            timeline.join("\n")
        );
        assert_eq!(resolved["firing_since"], firing["changed_at"]);
        for field in ["rule", "value", "threshold", "window", "owner", "severity", "labels", "samples"] {
            assert!(!firing[field].is_null(), "{key}: `{field}` missing in {firing}");
        }
        assert!(firing["samples"].as_u64().unwrap() >= 20, "{key} fired on fewer than 20 samples");
    }
    assert!(by_key.values().all(Vec::is_empty), "alerts beyond the expected:\n{}", timeline.join("\n"));
    // Every analytics event of the day went into the windows once, none late.
    sluice.wait_for_count("storyforge-alerts", "received", day.len() as u64, WAIT);
    let log = sluice.log();
    assert_eq!(log.plugin_counter("storyforge-alerts", "alert.sampled"), Some(day.len() as u64), "{log}");
    assert_eq!(log.plugin_counter("storyforge-alerts", "alert.late"), None, "no event of an in-order replay is late:\n{log}");
    sluice.terminate();
}

/// A pipeline file for one alert rule, its plugin at `component`.
fn p95_pipeline(component: &str) -> String {
    format!(
        r#"
        [[stream]]
        name = "ANALYTICS"
        subjects = ["storyforge.analytics.>"]

        [[stream]]
        name = "ALERTS"
        subjects = ["storyforge.alerts.>"]
        duplicate_window = "2m"

        [[pipeline]]
        name = "alerts"
        input = {{ subject = "storyforge.analytics.>", stream = "ANALYTICS", durable = "alerts" }}
        output = {{ jetstream = true }}
        dead_letter = "storyforge.dlq"
        workers = 1
        tick = "100ms"

          [[pipeline.stage]]
          name = "alert"
          component = "{component}"

          [pipeline.stage.config]
          subject_prefix = "storyforge.alerts"
          late_allowance = "1m"

          [[pipeline.stage.config.rule]]
          id = "generation_p95"
          owner = "eng"
          severity = "page"
          window = "15m"
          samples = ["scene_generated"]
          quantile = {{ field = "latency_ms", q = 0.95 }}
          above = 110_000
        "#
    )
}

fn generations(from_ms: i64, count: i64, latency_ms: i64) -> Vec<(String, Vec<u8>)> {
    (0..count).map(|i| analytics("scene_generated", from_ms + i * 30_000, json!({ "latency_ms": latency_ms }))).collect()
}

/// The same component with a custom section added: another build of it.
fn rebuilt(component: &[u8]) -> Vec<u8> {
    let (name, payload) = (b"sluice-test-build", b"2");
    let mut out = component.to_vec();
    out.push(0); // custom section
    out.push((1 + name.len() + payload.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_firing_alert_survives_a_plugin_swap_and_a_restart_without_repeating() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let component = workspace.copy_plugin("alert", "alert.wasm");
    let file = workspace.write_pipeline(&p95_pipeline(component.to_str().unwrap()));
    let t0 = DAY + 10 * 60 * MINUTE;

    let sluice = Sluice::run(&file, nats.url(), 1);
    nats.publish_stored(generations(t0, 30, 130_000)).await;
    let fired = stream_at_least(&nats, "ALERTS", 1, &sluice).await;
    assert_eq!(json(&fired[0])["state"], "firing");

    // A new build of the plugin, swapped in while the alert is firing.
    write_atomically(&component, &rebuilt(&std::fs::read(&component).unwrap()));
    sluice.wait_for("Worker swapped version.", 1, WAIT);
    nats.publish_stored(generations(t0 + 30 * 30_000, 10, 130_000)).await;
    sluice.wait_for_count("alerts", "received", 40, WAIT);
    let log = sluice.terminate();
    assert_eq!(log.events("No kept sink state; starting empty.").len(), 1, "{log}");
    // Lose the consumer's acks too: the new host is given all 40 events
    // again, as after a crash between storing the state and acking.
    let stream = nats.jetstream.get_stream("ANALYTICS").await.unwrap();
    stream.delete_consumer("alerts").await.unwrap();

    // A new host: the state comes back from the key-value bucket, and the
    // events it already holds are acked without being counted twice.
    let sluice = Sluice::run(&file, nats.url(), 1);
    sluice.wait_for("Sink state restored.", 1, WAIT);
    sluice.wait_for_count("alerts", "already_counted", 40, WAIT);
    nats.publish_stored(generations(t0 + 40 * 30_000, 60, 20_000)).await;
    stream_at_least(&nats, "ALERTS", 2, &sluice).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alerts: Vec<Value> = nats.stream_messages("ALERTS").await.iter().map(json).collect();
    let states: Vec<&str> = alerts.iter().map(|a| a["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["firing", "resolved"], "{alerts:#?}");
    assert_eq!(alerts[1]["firing_since"], alerts[0]["changed_at"]);
    sluice.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_firing_alert_survives_a_fleet_deploy_of_a_new_alert_plugin_and_its_rollback() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let component = workspace.copy_plugin("alert", "alert.wasm");
    let file = workspace.write_pipeline(&p95_pipeline(component.to_str().unwrap()));
    let (file, url) = (file.to_str().unwrap(), nats.url());
    let sluice = |args: &[&str]| {
        let (status, log) = Sluice::command(args).wait();
        assert!(status.success(), "{log}");
    };
    let t0 = DAY + 10 * 60 * MINUTE;

    sluice(&["deploy", file, "--name", "alerts", "--nats", url]);
    let host = Sluice::command(&["run", "--release", "alerts", "--nats", url, "--stats-interval", "1s"]).started(1);
    nats.publish_stored(generations(t0, 30, 130_000)).await;
    let fired = stream_at_least(&nats, "ALERTS", 1, &host).await;
    assert_eq!(json(&fired[0])["state"], "firing");

    // A new build of the plugin, deployed to the fleet while the alert is firing.
    write_atomically(&component, &rebuilt(&std::fs::read(&component).unwrap()));
    sluice(&["deploy", file, "--name", "alerts", "--message", "alert rebuilt", "--nats", url, "--wait", "--timeout", "60s"]);
    host.wait_for("Worker swapped version.", 1, WAIT);
    nats.publish_stored(generations(t0 + 30 * 30_000, 10, 130_000)).await;
    host.wait_for_count("alerts", "received", 40, WAIT);
    // And rolled back: the first build takes the state over again.
    sluice(&["rollback", "alerts", "--nats", url]);
    host.wait_for("Worker swapped version.", 2, WAIT);
    nats.publish_stored(generations(t0 + 40 * 30_000, 60, 20_000)).await;
    stream_at_least(&nats, "ALERTS", 2, &host).await;
    host.wait_for_count("alerts", "received", 60, WAIT);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alerts: Vec<Value> = nats.stream_messages("ALERTS").await.iter().map(json).collect();
    let states: Vec<&str> = alerts.iter().map(|a| a["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["firing", "resolved"], "one incident, announced once and resolved once: {alerts:#?}");
    assert_eq!(alerts[1]["firing_since"], alerts[0]["changed_at"]);
    let log = host.terminate();
    assert_eq!(log.events("No kept sink state; starting empty.").len(), 1, "{log}");
    assert!(log.events("Input, workers, batching, output or sink changed; restarting the pipeline's workers.").is_empty(), "swapped, not restarted:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_hosts_one_runs_the_alert_sink_and_the_other_takes_it_over_with_its_state() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let component = workspace.copy_plugin("alert", "alert.wasm");
    // A short ack_wait: inputs a frozen host had read come back soon.
    let text = p95_pipeline(component.to_str().unwrap()).replace("durable = \"alerts\" }", "durable = \"alerts\", ack_wait = \"2s\" }");
    let file = workspace.write_pipeline(&text);
    let url = nats.url();
    let (status, log) = Sluice::command(&["deploy", file.to_str().unwrap(), "--name", "alerts", "--nats", url]).wait();
    assert!(status.success(), "{log}");
    let host = || Sluice::command(&["run", "--release", "alerts", "--nats", url, "--stats-interval", "1s"]).started(1);
    let (first, second) = (host(), host());
    const HOLDS: &str = "This host holds the lease of the pipeline's sink; running it.";
    let deadline = Instant::now() + WAIT;
    let (holder, standby) = loop {
        match (first.log().events(HOLDS).len(), second.log().events(HOLDS).len()) {
            (1, 0) => break (first, second),
            (0, 1) => break (second, first),
            (0, 0) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            held => panic!("expected exactly one host to hold the lease, found {held:?}:\n{}\n{}", first.log(), second.log()),
        }
    };
    standby.wait_for("Another host runs the pipeline's sink; standing by to take over.", 1, WAIT);

    let t0 = DAY + 10 * 60 * MINUTE;
    nats.publish_stored(generations(t0, 30, 130_000)).await;
    assert_eq!(json(&stream_at_least(&nats, "ALERTS", 1, &holder).await[0])["state"], "firing");
    holder.wait_for_count("alerts", "received", 30, WAIT);

    // The holder freezes: its lease runs out and the other host takes the sink over, state and all.
    let signal = |name: &str, pid: u32| assert!(std::process::Command::new("kill").args([name, &pid.to_string()]).status().unwrap().success());
    signal("-STOP", holder.pid());
    standby.wait_for(HOLDS, 1, WAIT);
    standby.wait_for("Sink state restored.", 1, WAIT);
    nats.publish_stored(generations(t0 + 30 * 30_000, 10, 130_000)).await;
    standby.wait_for_count("alerts", "received", 10, WAIT);
    // Thawed, the old holder finds its lease gone and stops its worker.
    signal("-CONT", holder.pid());
    holder.wait_for("This host lost the lease of the pipeline's sink; stopping its worker (another host takes over).", 1, WAIT);
    holder.wait_for("Another host runs the pipeline's sink; standing by to take over.", 1, WAIT);
    nats.publish_stored(generations(t0 + 40 * 30_000, 60, 20_000)).await;
    stream_at_least(&nats, "ALERTS", 2, &standby).await;
    standby.wait_for_count("alerts", "received", 70, WAIT);

    // The new holder stops: it gives the lease back, and the first host takes over at once.
    let stopped_at = Instant::now();
    standby.terminate();
    holder.wait_for(HOLDS, 2, WAIT);
    assert!(stopped_at.elapsed() < Duration::from_secs(5), "taken over without waiting for the lease to expire");
    holder.wait_for("Sink state restored.", 1, WAIT);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alerts: Vec<Value> = nats.stream_messages("ALERTS").await.iter().map(json).collect();
    let states: Vec<&str> = alerts.iter().map(|a| a["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["firing", "resolved"], "one incident across three holders, announced once and resolved once: {alerts:#?}");
    assert_eq!(alerts[1]["firing_since"], alerts[0]["changed_at"]);
    let log = holder.terminate();
    assert_eq!(log.events("No kept sink state; starting empty.").len(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_held_back_by_a_silence_is_announced_when_a_swap_takes_the_silence_out() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let component = workspace.copy_plugin("alert", "alert.wasm");
    let unsilenced = p95_pipeline(component.to_str().unwrap());
    let silence = r#"
          [[pipeline.stage.config.silence]]
          rule = "generation_p95"
          until = "2027-01-01T00:00:00Z"
          reason = "provider load test, CHG-881"
        "#;
    let file = workspace.write_pipeline(&format!("{unsilenced}{silence}"));
    let t0 = DAY + 10 * 60 * MINUTE;

    let sluice = Sluice::run(&file, nats.url(), 1);
    nats.publish_stored(generations(t0, 30, 130_000)).await;
    let held = json(&stream_at_least(&nats, "ALERTS", 1, &sluice).await[0]);
    assert_eq!((held["state"].as_str(), held["silenced"].as_bool()), (Some("firing"), Some(true)), "{held}");
    assert_eq!(held["silence"]["reason"], "provider load test, CHG-881");

    // Ops take the silence out; the incident is still on.
    write_atomically(&file, unsilenced.as_bytes());
    sluice.wait_for("Worker swapped version.", 1, WAIT);
    nats.publish_stored(generations(t0 + 30 * 30_000, 10, 130_000)).await;
    let alerts: Vec<Value> = stream_at_least(&nats, "ALERTS", 2, &sluice).await.iter().map(json).collect();
    let announced = &alerts[1];
    assert_eq!((announced["state"].as_str(), announced["after_silence"].as_bool()), (Some("firing"), Some(true)), "{alerts:#?}");
    assert!(announced.get("silenced").is_none(), "{announced}");
    assert_eq!(announced["firing_since"], held["changed_at"]);
    sluice.wait_for_count("alerts", "received", 40, WAIT);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(nats.stream_messages("ALERTS").await.len(), 2, "announced once");
    sluice.terminate();
}

/// Requests a receiver took: status answered, head, body.
type Received = Arc<Mutex<Vec<(u16, String, String)>>>;

/// A local HTTP endpoint at `path` that answers 503 to its first `failures`
/// requests and 200 after; it keeps what each request carried.
async fn receiver(failures: usize, path: &str) -> (String, Received) {
    answering(path, move |earlier, _| if earlier < failures { 503 } else { 200 }).await
}

/// A local HTTP endpoint at `path` whose answer `status(earlier requests,
/// body)` gives; it keeps what each request carried.
async fn answering(path: &str, status: impl Fn(usize, &str) -> u16 + Send + 'static) -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            let (head, body) = loop {
                let n = socket.read(&mut buffer).await.unwrap_or(0);
                if n == 0 {
                    break (String::new(), String::new());
                }
                request.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let head = text[..end].to_string();
                    let length: usize =
                        head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())).unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break (head, String::from_utf8_lossy(&request[end + 4..end + 4 + length]).to_string());
                    }
                }
            };
            let status = status(record.lock().unwrap().len(), &body);
            record.lock().unwrap().push((status, head, body));
            let reason = match status {
                200 => "OK",
                400 => "Bad Request",
                _ => "Service Unavailable",
            };
            let reply = format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = socket.write_all(reply.as_bytes()).await;
        }
    });
    (url, seen)
}

/// The secret `pager_pipeline`'s Authorization header is read from.
const PAGER_TOKEN: (&str, &str) = ("PAGER_TOKEN", "Bearer t0k3n-8c41");

/// A pipeline that POSTs the alerts stream to `url` with a header of its own
/// and one read from `PAGER_TOKEN`, its dead letters to `dlq.>`.
fn pager_pipeline(workspace: &Workspace, url: &str) -> std::path::PathBuf {
    workspace.write_pipeline(&format!(
        r#"
        [[stream]]
        name = "ALERTS"
        subjects = ["storyforge.alerts.>"]

        [[pipeline]]
        name = "pager"
        input = {{ subject = "storyforge.alerts.>", stream = "ALERTS", durable = "pager" }}
        output = {{ webhook = {{ url = "{url}", attempts = 4, backoff = "50ms", timeout = "2s", headers = {{ "X-Team" = "growth", Authorization = {{ env = "PAGER_TOKEN" }} }} }} }}
        dead_letter = "dlq"
        "#
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_output_delivers_every_alert_in_order_retrying_failures() {
    let nats = Nats::start().await;
    let (url, seen) = receiver(2, "/hooks/alerts").await;
    let workspace = Workspace::new();
    let file = pager_pipeline(&workspace, &url);
    let sluice = Sluice::running(&file, nats.url()).envs(&[PAGER_TOKEN]).with_metrics().started(1);
    let alerts: Vec<(String, Vec<u8>)> = ["firing", "resolved", "firing"]
        .iter()
        .enumerate()
        .map(|(n, state)| {
            ("storyforge.alerts.generation_p95".to_string(), serde_json::to_vec(&json!({ "rule": "generation_p95", "state": state, "n": n })).unwrap())
        })
        .collect();
    nats.publish_stored(alerts).await;
    sluice.wait_for_count("pager", "published", 3, WAIT);
    let seen = seen.lock().unwrap().clone();
    let delivered: Vec<Value> = seen.iter().filter(|(status, ..)| *status == 200).map(|(_, _, body)| serde_json::from_str(body).unwrap()).collect();
    let order: Vec<u64> = delivered.iter().map(|b| b["n"].as_u64().unwrap()).collect();
    assert_eq!(order, [0, 1, 2], "each alert once, in order: {seen:#?}");
    assert_eq!(seen.len(), 5, "two refused attempts, then three deliveries: {seen:#?}");
    assert!(seen[0].1.starts_with("POST /hooks/alerts "), "{}", seen[0].1);
    for (_, head, _) in &seen {
        let head = head.to_ascii_lowercase();
        assert!(head.contains("content-type: application/json") && head.contains("x-team: growth"), "{head}");
        assert!(head.contains(&format!("authorization: {}", PAGER_TOKEN.1.to_ascii_lowercase())), "the header from the environment: {head}");
    }
    let log = sluice.log();
    assert!(!log.events("Webhook delivery failed; retrying.").is_empty(), "{log}");
    assert!(!log.contains(PAGER_TOKEN.1), "the token was logged:\n{log}");
    let scraped = crate::metrics::samples(&crate::metrics::get(&sluice.metrics_address(), "/metrics").await.1);
    let requests = |outcome| crate::metrics::value(&scraped, "sluice_webhook_requests_total", &[("pipeline", "pager"), ("outcome", outcome)]);
    assert_eq!((requests("failed"), requests("accepted"), requests("refused")), (Some(2.0), Some(3.0), Some(0.0)), "the metrics count each try");
    sluice.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_the_webhook_refuses_is_dead_lettered_once_and_the_rest_delivered() {
    let nats = Nats::start().await;
    // As PagerDuty answers an event it cannot take: 400, whatever the retries.
    let (url, seen) = answering("/v2/enqueue", |_, body| if body.contains("\"n\":1") { 400 } else { 200 }).await;
    let workspace = Workspace::new();
    let file = pager_pipeline(&workspace, &url);
    let mut dead = Collector::subscribe(&nats, "dlq.>").await;
    let sluice = Sluice::running(&file, nats.url()).envs(&[PAGER_TOKEN]).started(1);
    let alerts: Vec<(String, Vec<u8>)> = (0..3)
        .map(|n| {
            (
                "storyforge.alerts.export_success_rate".to_string(),
                serde_json::to_vec(&json!({ "rule": "export_success_rate", "state": "firing", "n": n })).unwrap(),
            )
        })
        .collect();
    nats.publish_stored(alerts).await;
    sluice.wait_for_count("pager", "rejected", 1, WAIT);
    let order: Vec<u64> = delivered(&seen).iter().map(|b| b["n"].as_u64().unwrap()).collect();
    assert_eq!(order, [0, 2], "the alerts after the refused one still go out");
    let statuses: Vec<u16> = seen.lock().unwrap().iter().map(|(status, ..)| *status).collect();
    assert_eq!(statuses, [200, 400, 200], "a refusal is not tried again");
    let letters = dead.drain(Duration::from_secs(2)).await;
    assert_eq!(letters.len(), 1, "one dead letter");
    assert_eq!(letters[0].subject.as_str(), "dlq.output");
    let letter = json(&letters[0]);
    assert_eq!((letter["stage"].as_str(), letter["code"].as_str()), (Some("output"), Some("webhook_refused")), "{letter}");
    assert!(letter["message"].as_str().unwrap().contains("HTTP 400"), "{letter}");
    assert_eq!(letter["subject"], "storyforge.alerts.export_success_rate");
    assert_eq!(serde_json::from_str::<Value>(letter["body"].as_str().unwrap()).unwrap()["n"], 1, "the refused alert, whole: {letter}");
    assert_eq!(sluice.log().counter("pager", "published"), 2, "{}", sluice.log());
    sluice.terminate();
}

/// The bodies a receiver answered 200 to, in order.
/// STORYFORGE_ALERTS, made before storyforge.toml runs, for the pager file.
fn alerts_stream() -> async_nats::jetstream::stream::Config {
    async_nats::jetstream::stream::Config { name: "STORYFORGE_ALERTS".into(), subjects: vec!["storyforge.alerts.>".into()], ..Default::default() }
}

fn delivered(received: &Received) -> Vec<Value> {
    received.lock().unwrap().iter().filter(|(status, ..)| *status == 200).map(|(_, _, body)| serde_json::from_str(body).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn storyforge_alerts_reach_pagerduty_and_slack_and_heartbeats_a_dead_mans_switch() {
    let nats = Nats::start().await;
    let (pagerduty, to_pagerduty) = receiver(0, "/v2/enqueue").await;
    // A Slack incoming webhook's path is its secret; it must not be logged.
    let (slack, to_slack) = receiver(1, "/services/T0SF/B0SF/s3cr3tT0k3n").await;
    let (switch, to_switch) = receiver(0, "/ping/storyforge-alerting").await;
    let vars = [
        ("PAGERDUTY_EVENTS_URL", pagerduty.as_str()),
        ("PAGERDUTY_ROUTING_KEY", "test-routing-key"),
        ("STORYFORGE_SLACK_WEBHOOK", slack.as_str()),
        ("STORYFORGE_HEARTBEAT_URL", switch.as_str()),
    ];
    // The pager first, so that its live (core NATS) heartbeat input hears
    // the alerting's first heartbeat, on its first tick; storyforge.toml
    // then takes over the stream it declares.
    nats.jetstream.create_stream(alerts_stream()).await.unwrap();
    let pager = Sluice::running(&root().join("pipelines/storyforge-pager.toml"), nats.url()).envs(&vars).started(3);
    let alerting = Sluice::run(&root().join("pipelines/storyforge.toml"), nats.url(), 2);

    // From 06:00, 20 slow generations (a page) and 20 poorly scored locks (a
    // flag for the ML team), then an hour of healthy ones that resolves both.
    let t = DAY + 6 * 60 * MINUTE;
    let mut events = generations(t, 20, 115_000);
    events.extend(generations(t + 10 * MINUTE, 100, 30_000));
    for m in 0..60 {
        let score = if m < 20 { 0.80 } else { 0.95 };
        events.push(analytics("scene_locked", t + m * MINUTE + 15_000, json!({ "consistency_score": score })));
    }
    events.sort_by_key(|(_, body)| serde_json::from_slice::<Value>(body).unwrap()["server_ts"].as_str().unwrap().to_string());
    nats.publish_stored(events).await;

    let alerts: Vec<Value> = stream_at_least(&nats, "STORYFORGE_ALERTS", 4, &alerting).await.iter().map(json).collect();
    let states: Vec<(String, String)> = alerts.iter().map(|a| (a["key"].as_str().unwrap().into(), a["state"].as_str().unwrap().into())).collect();
    assert_eq!(states.iter().filter(|(key, _)| key == "generation_p95").count(), 2, "{states:?}");
    assert_eq!(states.iter().filter(|(key, _)| key == "continuity_score").count(), 2, "{states:?}");
    let deadline = Instant::now() + WAIT;
    // The alerting beats on its first tick: the switch hears of it.
    while delivered(&to_slack).len() < 4 || delivered(&to_pagerduty).len() < 2 || delivered(&to_switch).is_empty() {
        assert!(
            Instant::now() < deadline,
            "slack {:?}, pagerduty {:?}; sluice logged:\n{}",
            to_slack.lock().unwrap(),
            to_pagerduty.lock().unwrap(),
            pager.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // PagerDuty: the page only, opened and closed under one dedup key.
    let events = delivered(&to_pagerduty);
    let actions: Vec<(&str, &str)> = events.iter().map(|e| (e["event_action"].as_str().unwrap(), e["dedup_key"].as_str().unwrap())).collect();
    assert_eq!(actions, [("trigger", "generation_p95"), ("resolve", "generation_p95")], "{events:#?}");
    assert_eq!(events[0]["routing_key"], "test-routing-key");
    assert_eq!(events[0]["payload"]["severity"], "critical");
    assert_eq!(events[0]["payload"]["source"], "storyforge");
    assert_eq!(events[0]["payload"]["custom_details"], alerts.iter().find(|a| a["key"] == "generation_p95").unwrap().clone());

    // Slack: every alert, once, in the order of the alerts stream, after one
    // refused attempt.
    let texts: Vec<String> = delivered(&to_slack).iter().map(|m| m["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(texts.len(), 4, "{texts:#?}");
    for (text, (key, state)) in texts.iter().zip(&states) {
        let mark = if state == "firing" { ":rotating_light: FIRING" } else { ":white_check_mark: RESOLVED" };
        assert!(text.starts_with(&format!("{mark} *{key}*")), "{text} for {key} {state}");
    }
    assert_eq!(to_slack.lock().unwrap().len(), 5, "one 503, then four deliveries");

    // The dead man's switch: heartbeats only, as the alert stage wrote them.
    let beats = delivered(&to_switch);
    assert!(beats.iter().all(|b| b["heartbeat"] == true && b["every"] == "1m" && time::parse_rfc3339(b["at"].as_str().unwrap()).is_ok()), "{beats:#?}");
    assert!(!pager.log().events("Webhook delivery failed; retrying.").is_empty(), "{}", pager.log());
    assert!(!pager.log().contains("s3cr3tT0k3n"), "the Slack URL's secret was logged:\n{}", pager.log());
    pager.terminate();
    alerting.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pager_file_refuses_to_start_without_its_slack_url() {
    let nats = Nats::start().await;
    nats.jetstream.create_stream(alerts_stream()).await.unwrap();
    let file = root().join("pipelines/storyforge-pager.toml");
    let pagerduty = [("PAGERDUTY_EVENTS_URL", "http://127.0.0.1:9/v2/enqueue"), ("PAGERDUTY_ROUTING_KEY", "test-routing-key")];
    let (status, log) = Sluice::command(&["run", file.to_str().unwrap(), "--nats", nats.url()]).envs(&pagerduty).wait();
    assert!(!status.success(), "{log}");
    assert!(log.contains("pipeline `storyforge-slack`: the webhook URL is read from STORYFORGE_SLACK_WEBHOOK, which is not set"), "{log}");
}
