//! The StoryForge ingest pipeline, as its users run it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::support::{Nats, Sluice, Workspace, root};

#[test]
fn every_storyforge_case_passes() {
    for (file, cases) in [("pipelines/storyforge.toml", 103), ("pipelines/storyforge-pager.toml", 12)] {
        let (status, log) = Sluice::command(&["test", file]).wait();
        assert!(status.success(), "{file}: {log}");
        let totals = log.plain().find(|l| l.ends_with(" failed")).expect("a closing line");
        let passed: usize = totals.split_whitespace().next().unwrap().parse().unwrap();
        assert!(totals.ends_with(", 0 failed") && passed >= cases, "{file}: {totals}");
    }
}

#[test]
fn a_failing_case_is_reported_with_what_differed() {
    let workspace = Workspace::new();
    let cases = workspace.path("cases.toml");
    std::fs::write(
        &cases,
        r#"
        pipeline = "storyforge-ingest"
        clock = "2026-11-24T12:00:00Z"
        env = { STORYFORGE_HASH_KEY = "test-key-0123456789abcdef" }
        [[case]]
        name = "expects the wrong subject"
        input = { event = "onboarding_completed", user_id = "6f1c2d3e-4b5a-4c7d-8e9f-000000000001", session_id = "6f1c2d3e-4b5a-4c7d-8e9f-000000000002", client_ts = "2026-11-24T11:59:58Z", app_version = "1", platform = "web" }
        expect = [{ subject = "storyforge.analytics.signed_up" }]
        [[case]]
        name = "expects a reject that does not happen"
        input = { event = "onboarding_completed", user_id = "6f1c2d3e-4b5a-4c7d-8e9f-000000000001", session_id = "6f1c2d3e-4b5a-4c7d-8e9f-000000000002", client_ts = "2026-11-24T11:59:58Z", app_version = "1", platform = "web" }
        reject = { stage = "validate", code = "missing_property" }
        "#,
    )
    .unwrap();
    let (status, log) = Sluice::command(&["test", "pipelines/storyforge.toml", cases.to_str().unwrap()]).wait();
    assert!(!status.success());
    assert!(log.contains(":: expects the wrong subject"), "{log}");
    assert!(log.contains(r#"output 0: expected subject "storyforge.analytics.signed_up", found "storyforge.analytics.onboarding_completed""#), "{log}");
    assert!(log.contains("expected 1 reject(s), found 0"), "{log}");
    assert!(log.contains("0 passed, 2 failed"), "{log}");
}

#[test]
fn a_rollup_case_compares_only_the_subjects_it_names_and_says_which_group_is_missing() {
    let workspace = Workspace::new();
    let cases = workspace.path("cases.toml");
    std::fs::write(
        &cases,
        r#"
        pipeline = "storyforge-aggregates"
        clock = "2026-11-25T00:00:00Z"
        only = ["storyforge.aggregates.cache_hits.minute"]
        [[case]]
        name = "a group that is not there"
        series = [
          { from = "2026-11-24T10:00:00Z", every = "1s", count = 3, input = { event = "scene_generated", cache_hit = "l2", latency_ms = 1000, duration_s = 1 } },
          { from = "2026-11-24T10:02:00Z", every = "1s", count = 1, input = { event = "brain_selected" } },
        ]
        expect = [{ subject = "storyforge.aggregates.cache_hits.minute", body = { count = 3 }, has = { groups = [{ labels = { cache_hit = "l2" }, count = 3 }, { labels = { cache_hit = "l1" } }] } }]
        [[case]]
        name = "a filter that is not a subject"
        only = ["storyforge.aggregates.cache_*"]
        series = [{ from = "2026-11-24T10:03:00Z", every = "1s", count = 1, input = { event = "brain_selected" } }]
        "#,
    )
    .unwrap();
    let (status, log) = Sluice::command(&["test", "pipelines/storyforge.toml", cases.to_str().unwrap()]).wait();
    assert!(!status.success());
    assert!(log.contains(r#"output 0: `groups` has no element matching {"labels":{"cache_hit":"l1"}}"#), "{log}");
    assert!(!log.contains("expected 1 output(s)"), "the other rollups of the minute are not compared: {log}");
    assert!(log.contains("only: subject \"storyforge.aggregates.cache_*\": `*` and `>` must stand alone as a whole token"), "{log}");
    assert!(log.contains("0 passed, 2 failed"), "{log}");
}

#[test]
fn case_files_that_overflow_or_expect_too_little_fail_with_the_reason_and_no_panic() {
    let workspace = Workspace::new();
    let cases = workspace.path("cases.toml");
    let onboarding = r#"{ event = "onboarding_completed", user_id = "6f1c2d3e-4b5a-4c7d-8e9f-000000000001", session_id = "6f1c2d3e-4b5a-4c7d-8e9f-000000000002", client_ts = "2026-11-24T11:59:58Z", app_version = "1", platform = "web" }"#;
    let unknown = r#"{ event = "no_such_event", user_id = "6f1c2d3e-4b5a-4c7d-8e9f-000000000001" }"#;
    std::fs::write(
        &cases,
        format!(
            r#"
            pipeline = "storyforge-ingest"
            clock = "2026-11-24T12:00:00Z"
            env = {{ STORYFORGE_HASH_KEY = "test-key-0123456789abcdef" }}
            [[case]]
            name = "one reject expected, three come out"
            series = [{{ from = "2026-11-24T11:00:00Z", every = "1s", count = 3, input = {unknown} }}]
            reject = {{ stage = "validate", code = "unknown_event" }}
            [[case]]
            name = "three rejects expected in order, three come out"
            series = [{{ from = "2026-11-24T11:00:00Z", every = "1s", count = 3, input = {unknown} }}]
            rejects = [{{ stage = "validate", code = "unknown_event" }}, {{ stage = "validate", code = "unknown_event" }}, {{ stage = "validate", code = "unknown_event" }}]
            [[case]]
            name = "a series too long"
            series = [{{ from = "2026-11-24T11:00:00Z", every = "1s", count = 1000001, input = {onboarding} }}]
            [[case]]
            name = "a series past the clock's end"
            series = [{{ from = "2500-01-01T00:00:00Z", every = "100years", count = 2, input = {onboarding} }}]
            [[case]]
            name = "a clock before 1970"
            clock = "1969-12-31T23:59:59Z"
            input = {onboarding}
            [[case]]
            name = "a drop expected, none happens"
            input = {onboarding}
            expect = [{{ subject = "storyforge.analytics.onboarding_completed" }}]
            dropped = 2
            "#
        ),
    )
    .unwrap();
    let (status, log) = Sluice::command(&["test", "pipelines/storyforge.toml", cases.to_str().unwrap()]).wait();
    assert_eq!(status.code(), Some(1), "failing cases, not a crash: {log}");
    assert!(!log.contains("panicked"), "{log}");
    for (case, reason) in [
        ("one reject expected, three come out", "expected 1 reject(s), found 3"),
        ("a series too long", "count = 1000001 is more than the 1000000 events a series may hold"),
        ("a series past the clock's end", "is past 2554, which the clock cannot show"),
        ("a clock before 1970", "clock \"1969-12-31T23:59:59Z\" is not an RFC 3339 time"),
        ("a drop expected, none happens", "expected 2 event(s) dropped, found 0"),
    ] {
        let report = log.to_string();
        let report = report.split("FAIL ").find(|report| report.contains(&format!(":: {case}"))).unwrap_or_else(|| panic!("{case:?} is reported:\n{log}"));
        assert!(report.contains(reason), "{case:?} says {reason:?}:\n{report}");
    }
    assert!(log.contains("1 passed, 5 failed"), "{log}");
}

#[test]
fn run_refuses_to_start_without_the_hash_key() {
    let (status, log) = Sluice::command(&["run", "pipelines/storyforge.toml", "--nats", "nats://127.0.0.1:1"]).without("STORYFORGE_HASH_KEY").wait();
    assert!(!status.success());
    assert!(log.contains("stage `redact`: the stage needs the environment variable STORYFORGE_HASH_KEY"), "{log}");
}

/// A day of StoryForge events, mixed, some invalid, some opted out.
fn sample_day() -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(root().join("pipelines/samples/storyforge-day.jsonl")).unwrap();
    text.lines().map(|l| l.as_bytes().to_vec()).collect()
}

/// The id enrich gives an event: its own, or one derived from its bytes.
fn event_id(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("event_id").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| sluice_kit::uuid::from_content(body))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_day_of_events_comes_out_once_each_on_the_right_subject_with_no_personal_data() {
    let nats = Nats::start().await;
    let sluice = Sluice::run(&root().join("pipelines/storyforge.toml"), nats.url(), 1);
    let inputs = sample_day();
    assert!(inputs.len() >= 3000);
    nats.publish_stored(inputs.iter().enumerate().map(|(n, body)| (format!("storyforge.raw.web.{}", n % 4), body.clone()))).await;

    drained(&nats, "STORYFORGE_RAW", "storyforge-ingest", Instant::now() + Duration::from_secs(120)).await;
    sluice.terminate();

    let ids: Vec<String> = inputs.iter().map(|b| event_id(b)).collect();
    let by_id: BTreeMap<&str, &Vec<u8>> = ids.iter().map(String::as_str).zip(&inputs).collect();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut audited = BTreeSet::new();
    let mut leaks = Vec::new();
    let secrets = personal_data(&inputs);
    for message in nats.stream_messages("STORYFORGE_CLEAN").await {
        let text = String::from_utf8_lossy(&message.payload).into_owned();
        let body: Value = serde_json::from_str(&text).unwrap();
        let id = body["event_id"].as_str().expect("every clean event has an id").to_string();
        let subject = message.subject.to_string();
        assert_eq!(subject.rsplit('.').next(), body["event"].as_str(), "the subject names the event");
        if subject.starts_with("storyforge.audit.") {
            assert!(audited.insert(id), "one audit copy per event");
            continue;
        }
        if let Some(secret) = secrets.iter().find(|s| text.contains(s.as_str())) {
            leaks.push(format!("{subject} carries {secret:?}"));
        }
        seen.entry(id).or_default().push(subject);
    }
    for message in nats.stream_messages("STORYFORGE_DLQ").await {
        let envelope: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(message.subject.as_str(), format!("storyforge.dlq.{}", envelope["stage"].as_str().unwrap()));
        let original = base64::engine::general_purpose::STANDARD.decode(envelope["body_base64"].as_str().unwrap()).unwrap();
        seen.entry(event_id(&original)).or_default().push(message.subject.to_string());
    }
    assert!(leaks.is_empty(), "personal data reached analytics: {:?}", &leaks[..leaks.len().min(5)]);

    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, body) in &by_id {
        let subjects = seen.get(*id).unwrap_or_else(|| panic!("event {} never came out", String::from_utf8_lossy(body)));
        assert_eq!(subjects.len(), 1, "event came out {} times: {subjects:?}", subjects.len());
        let subject = subjects[0].as_str();
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let opted_out = parsed.as_ref().is_some_and(|v| v["analytics_opt_out"] == true);
        let kind = subject.split('.').nth(1).unwrap();
        *counts.entry(kind).or_default() += 1;
        match kind {
            "analytics" => assert!(!opted_out, "an opted-out event reached analytics: {subject}"),
            "anonymous" => assert!(opted_out, "only opted-out events are anonymous"),
            "dlq" => {}
            other => panic!("unexpected subject kind {other}"),
        }
        if kind != "dlq" && parsed.as_ref().is_some_and(|v| v["event"] == "safety_setting_changed") {
            assert!(audited.contains(*id), "safety_setting_changed is audited");
        }
    }
    assert_eq!(seen.len(), inputs.len(), "nothing came out that did not go in");
    assert!(counts["analytics"] > 2000 && counts["anonymous"] > 100 && counts["dlq"] > 50, "a realistic mix: {counts:?}");
}

/// Strings that must never reach an analytics or anonymous subject: full IP
/// addresses, e-mail addresses, phone numbers, prompt texts.
fn personal_data(inputs: &[Vec<u8>]) -> BTreeSet<String> {
    let mut secrets = BTreeSet::new();
    for body in inputs {
        let Ok(Value::Object(event)) = serde_json::from_slice::<Value>(body) else { continue };
        if let Some(Value::String(ip)) = event.get("ip") {
            secrets.insert(ip.clone());
        }
        if let Some(Value::String(prompt)) = event.get("prompt") {
            secrets.insert(prompt.clone());
        }
        if let Some(parameters) = event.get("parameters") {
            secrets.insert(parameters.to_string());
        }
    }
    secrets.extend(["@example.com", "@example.org", "555-0134", "7946 0958", "192.0.2.77"].map(String::from));
    secrets
}

/// Waits until the consumer has acked everything its stream holds: its ack
/// floor at the stream's last message, which its filter must take (the
/// pending count alone can still read 0 just after a publish, before the
/// consumer has seen it).
async fn drained(nats: &Nats, stream: &str, durable: &str, deadline: Instant) {
    let mut stream = nats.jetstream.get_stream(stream).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    loop {
        let info = stream.consumer_info(durable).await.unwrap();
        if info.ack_floor.stream_sequence >= last && info.num_ack_pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{durable} did not finish: {info:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The rollups of one subject in the aggregates stream, by window start.
fn rollups(messages: &[async_nats::Message], subject: &str) -> BTreeMap<String, Vec<Value>> {
    let mut by_start: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for message in messages.iter().filter(|m| m.subject.as_str() == subject) {
        let body: Value = serde_json::from_slice(&message.payload).unwrap();
        by_start.entry(body["start"].as_str().unwrap().to_string()).or_default().push(body);
    }
    by_start
}

/// The `all` group of a rollup with these labels.
fn group<'a>(rollup: &'a Value, labels: &Value) -> Option<&'a Value> {
    rollup["groups"].as_array().unwrap().iter().find(|g| g["cut"] == "all" && &g["labels"] == labels)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_day_replayed_through_sluice_gives_its_rollups_exactly_once() {
    let nats = Nats::start().await;
    let sluice = Sluice::run(&root().join("pipelines/storyforge.toml"), nats.url(), 3);
    let mut inputs = sample_day();
    // A last event two days on closes the day's windows and decides the
    // day's sign-ups for their first lock.
    let closing = String::from_utf8(inputs.iter().find(|b| b.starts_with(br#"{"event":"brain_selected""#)).unwrap().clone()).unwrap();
    let mut closing: Value = serde_json::from_str(&closing).unwrap();
    closing["client_ts"] = "2026-11-25T00:02:00.000Z".into();
    closing["server_ts"] = "2026-11-25T00:02:00.000Z".into();
    inputs.push(closing.to_string().into_bytes());
    // In order, a minute of event time at a time, each taken in by the
    // ingest before the next: as the day came, only faster. (Published all
    // at once, the ingest's two workers would interleave batches spanning
    // hours of this sparse day, further apart than the late allowance.)
    let minute = |body: &Vec<u8>| serde_json::from_slice::<Value>(body).ok().and_then(|v| v["server_ts"].as_str().map(|t| t[..16].to_string()));
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut at = 0;
    while at < inputs.len() {
        let this = minute(&inputs[at]);
        let end = at + inputs[at..].iter().take_while(|body| this.is_some() && minute(body) == this).count().max(1);
        nats.publish_stored(inputs[at..end].iter().map(|body| ("storyforge.raw.web".to_string(), body.clone()))).await;
        drained(&nats, "STORYFORGE_RAW", "storyforge-ingest", deadline).await;
        at = end;
    }
    drained(&nats, "STORYFORGE_CLEAN", "storyforge-aggregates", deadline).await;
    let log = sluice.terminate();
    // Paced, no event of the day comes later than the allowance.
    let progress = log.progress("storyforge-aggregates");
    assert_eq!(log.plugin_counter("storyforge-aggregates", "aggregate.late"), None, "{progress}");

    // What the rollups must say, from the clean events themselves.
    let clean: Vec<Value> = nats
        .stream_messages("STORYFORGE_CLEAN")
        .await
        .iter()
        .filter(|m| m.subject.starts_with("storyforge.analytics."))
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    let day = |event: &Value| event["server_ts"].as_str().unwrap().starts_with("2026-11-23");
    let generated: Vec<&Value> = clean.iter().filter(|e| e["event"] == "scene_generated" && day(e)).collect();
    let mut per_minute: BTreeMap<String, u64> = BTreeMap::new();
    for event in &generated {
        *per_minute.entry(format!("{}:00.000Z", &event["server_ts"].as_str().unwrap()[..16])).or_default() += 1;
    }
    assert!(generated.len() > 300, "the day has generations: {}", generated.len());

    let aggregates = nats.stream_messages("STORYFORGE_AGGREGATES").await;
    // Every minute with generations, once, with their exact count.
    let minutes = rollups(&aggregates, "storyforge.aggregates.scenes.minute");
    for (start, count) in &per_minute {
        let published = minutes.get(start).unwrap_or_else(|| panic!("no scenes rollup for the minute {start}"));
        assert_eq!(published.len(), 1, "the minute {start} is published once");
        assert_eq!(group(&published[0], &serde_json::json!({ "event": "scene_generated" })).unwrap()["count"], *count, "{start}");
    }

    // The day's latency per vendor, route and safety mode: exact counts and
    // sums, percentiles within the sketch's error of the exact ones.
    let days = rollups(&aggregates, "storyforge.aggregates.generation_latency.day");
    let latency_day = &days.get("2026-11-23T00:00:00.000Z").expect("the day's latency rollup")[..];
    assert_eq!(latency_day.len(), 1, "the day is published once");
    let latency_day = &latency_day[0];
    assert_eq!(latency_day["count"], generated.len() as u64);
    let mut by_group: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    for event in &generated {
        let key = |f: &str| event[f].as_str().unwrap().to_string();
        by_group.entry((key("model_vendor"), key("provider_route"), key("safety_mode"))).or_default().push(event["latency_ms"].as_f64().unwrap());
    }
    let error = latency_day["quantile_error"].as_f64().unwrap();
    for ((vendor, route, mode), mut values) in by_group {
        let labels = serde_json::json!({ "model_vendor": vendor, "provider_route": route, "safety_mode": mode });
        let published = group(latency_day, &labels).unwrap_or_else(|| panic!("no group {labels}"));
        assert_eq!(published["count"], values.len() as u64, "{labels}");
        let sum: f64 = values.iter().sum();
        assert!((published["sum"].as_f64().unwrap() - sum).abs() < 1e-3, "{labels}: sum {} vs {sum}", published["sum"]);
        values.sort_by(f64::total_cmp);
        for (name, q) in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99)] {
            let exact = values[(q * (values.len() - 1) as f64).floor() as usize];
            let estimate = published[name].as_f64().unwrap();
            assert!((estimate - exact).abs() <= error * exact + 1e-6, "{labels} {name}: {estimate} vs exact {exact}");
        }
    }

    // The day's sign-ups, decided for their first lock within 24 hours.
    // A user's first sign-up counts; one sent again is the same user.
    let ts = |e: &Value| sluice_kit::time::parse_rfc3339(e["server_ts"].as_str().unwrap()).unwrap();
    let mut signed_up: BTreeMap<&str, &Value> = BTreeMap::new();
    for sign_up in clean.iter().filter(|e| e["event"] == "user_signed_up" && day(e)) {
        let first = signed_up.entry(sign_up["user_id"].as_str().unwrap()).or_insert(sign_up);
        if ts(sign_up) < ts(first) {
            *first = sign_up;
        }
    }
    let locked_in_time = signed_up
        .iter()
        .filter(|(user, sign_up)| {
            clean.iter().any(|e| e["event"] == "scene_locked" && e["user_id"] == **user && (0..=86_400_000).contains(&(ts(e) - ts(sign_up))))
        })
        .count();
    let shares = rollups(&aggregates, "storyforge.aggregates.first_locked_scene_within_24h.day");
    let share = &shares.get("2026-11-23T00:00:00.000Z").expect("the day's lock share")[..];
    assert_eq!(share.len(), 1);
    let users: u64 = share[0]["groups"].as_array().unwrap().iter().filter(|g| g["cut"] == "all").map(|g| g["users"].as_u64().unwrap()).sum();
    let reached: u64 = share[0]["groups"].as_array().unwrap().iter().filter(|g| g["cut"] == "all").map(|g| g["reached"].as_u64().unwrap()).sum();
    assert!(!signed_up.is_empty());
    assert_eq!((users, reached), (signed_up.len() as u64, locked_in_time as u64));
}
