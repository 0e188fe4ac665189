//! A real Prometheus (Debian's `prometheus`, which `cargo xtask test`
//! installs) scrapes a real `sluice run` under load; its HTTP API answers
//! the counts, rates and histogram quantiles a dashboard asks for, and the
//! counts are exactly what was published. The alerting rules of
//! `pipelines/monitoring` pass `promtool`, load into that Prometheus, and
//! one fires when a new version is refused. The StoryForge pipelines run on
//! a day of events with a bad stretch in it: the `measure` stage's counts
//! agree exactly with what came out, every panel of both Grafana dashboards
//! reads data, and every StoryForge alerting rule fires.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Collector, Nats, Pipeline, PipelineFile, Sluice, Workspace, root};

const WAIT: Duration = Duration::from_secs(60);

/// A Prometheus server scraping one target every second.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    /// Started with these rule files of `pipelines/monitoring`.
    async fn start(dir: &Path, target: &str, rules: &[&str]) -> Self {
        let binary = std::env::var("SLUICE_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("prometheus.yml");
        let rules: Vec<String> = rules.iter().map(|r| format!("{:?}", root().join("pipelines/monitoring").join(r))).collect();
        let rules = rules.join(", ");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{rules}]\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        // A port found free may be taken before Prometheus binds it: then it
        // exits, and another is tried.
        for attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let log = std::fs::File::create(dir.join(format!("prometheus-{attempt}.log"))).unwrap();
            let child = Command::new(&binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join(format!("data-{attempt}")).display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start {binary} ({e}): run the suite through `cargo xtask test`, which installs it, or set SLUICE_PROMETHEUS")
                });
            let mut prometheus = Prometheus { child, url: format!("http://127.0.0.1:{port}") };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if prometheus.child.try_wait().unwrap().is_some() {
                    break;
                }
                let ready = reqwest::get(format!("{}/-/ready", prometheus.url)).await.is_ok_and(|r| r.status().is_success());
                if ready {
                    return prometheus;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = prometheus.child.kill();
        }
        panic!("Prometheus did not start; its logs are in {}", dir.display());
    }

    /// The result of an instant query: each series' labels and value.
    async fn query(&self, query: &str) -> Vec<(Value, f64)> {
        let response = reqwest::Client::new().get(format!("{}/api/v1/query", self.url)).query(&[("query", query)]).send().await.unwrap();
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["status"], "success", "{query}: {body}");
        body["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| (series["metric"].clone(), series["value"][1].as_str().unwrap().parse().unwrap()))
            .collect()
    }

    /// GET an API path, as JSON.
    async fn api(&self, path: &str) -> Value {
        let text = reqwest::get(format!("{}{path}", self.url)).await.unwrap().text().await.unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Prometheus takes its first scrapes some seconds after it starts:
    /// waits until it has taken two.
    async fn scraping(&self) {
        let deadline = Instant::now() + WAIT;
        while self.query(r#"count_over_time(up{job="sluice"}[1m]) >= 2"#).await.is_empty() {
            assert!(Instant::now() < deadline, "Prometheus does not scrape sluice: {:?}", self.query("up").await);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until `query` gives `value` (summed over its series).
    async fn reaches(&self, query: &str, value: f64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got: f64 = self.query(query).await.iter().map(|(_, v)| v).sum();
            if got == value {
                return;
            }
            assert!(Instant::now() < deadline, "{query} never reached {value}: {got}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The alerts firing now, by name.
    async fn firing(&self) -> BTreeSet<String> {
        let alerts = self.api("/api/v1/alerts").await;
        alerts["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| a["labels"]["alertname"].as_str().unwrap().to_string())
            .collect()
    }

    /// The one value a query gives.
    async fn one(&self, query: &str) -> f64 {
        let result = self.query(query).await;
        assert_eq!(result.len(), 1, "{query}: one series expected, got {result:?}");
        result[0].1
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scraping_sluice_under_load_reads_its_counts_rates_and_histograms() {
    const EVENTS: usize = 3000;
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let web = Pipeline::core("web", "in.>")
        .set(r#"dead_letter = "dlq""#)
        .stage("tag", "tag", r#"{ require = ["event", "user_id"], set = { tagged = true } }"#)
        .route("out.{event}");
    let (sluice, address) = Sluice::run_with_metrics(&workspace.write_pipeline(PipelineFile::new().pipeline(web).toml()), nats.url(), 1);
    // Its own folder: its constant writes stay out of the folder sluice watches.
    let scratch = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(scratch.path(), &address, &["sluice-alerts.yml"]).await;

    prometheus.scraping().await;
    let mut outputs = Collector::subscribe(&nats, "out.>").await;
    let mut letters = Collector::subscribe(&nats, "dlq.>").await;
    // Steady load for a few seconds, so that Prometheus sees it move: one
    // event in ten lacks `user_id`.
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(100) {
        for &n in chunk {
            let body = if n % 10 == 9 { format!(r#"{{"event":"e","n":{n}}}"#) } else { format!(r#"{{"event":"e{}","user_id":"u","n":{n}}}"#, n % 4) };
            nats.client.publish(format!("in.{n}"), body.into()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outputs.take(EVENTS / 10 * 9, WAIT).await;
    letters.take(EVENTS / 10, WAIT).await;

    let deadline = Instant::now() + WAIT;
    let received = r#"sluice_events_received_total{pipeline="web"}"#;
    while prometheus.query(received).await.first().map(|(_, v)| *v) != Some(EVENTS as f64) {
        assert!(Instant::now() < deadline, "Prometheus never saw all {EVENTS} events: {:?}", prometheus.query(received).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(prometheus.one(r#"up{job="sluice"}"#).await, 1.0);
    assert_eq!(prometheus.one(r#"sluice_events_published_total{pipeline="web"}"#).await, (EVENTS / 10 * 9) as f64);
    assert_eq!(prometheus.one(r#"sluice_events_rejected_total{pipeline="web",stage="tag",code="missing_property"}"#).await, (EVENTS / 10) as f64);
    assert!(prometheus.one(r#"sum(rate(sluice_events_received_total{pipeline="web"}[1m]))"#).await > 0.0, "the rate of events in");
    let latency = prometheus.one(r#"histogram_quantile(0.95, sum by (le) (rate(sluice_event_latency_seconds_bucket{pipeline="web"}[1m])))"#).await;
    assert!(latency.is_finite() && latency > 0.0 && latency < 10.0, "p95 end-to-end latency {latency} s");
    let call =
        prometheus.one(r#"histogram_quantile(0.5, sum by (le) (rate(sluice_stage_call_duration_seconds_bucket{pipeline="web",stage="tag"}[1m])))"#).await;
    assert!(call.is_finite() && call > 0.0, "median call into tag {call} s");
    let batches = prometheus.one(r#"sluice_batch_events_sum{pipeline="web"} / sluice_batch_events_count{pipeline="web"}"#).await;
    assert!((1.0..=256.0).contains(&batches), "mean batch size {batches}");

    // The alerting rules loaded, every one healthy; a version the host
    // refuses fires SluiceVersionRefused.
    let groups = prometheus.api("/api/v1/rules").await;
    let rules: Vec<&Value> = groups["data"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    assert_eq!(rules.len(), 8, "{groups}");
    assert!(rules.iter().all(|r| r["health"] == "ok"), "{groups}");
    let broken = Pipeline::core("web", "in.>").set(r#"dead_letter = "dlq""#).stage("tag", "tag", r#"{ require = 7 }"#).route("out.{event}");
    // Written again until the host sees it, should the first write land
    // before the host watches the file.
    let refused = "The new version cannot be prepared; the running version stays.";
    let deadline = Instant::now() + WAIT;
    while sluice.log().events(refused).is_empty() {
        assert!(Instant::now() < deadline, "the broken version was never refused:\n{}", sluice.log());
        workspace.write_pipeline(PipelineFile::new().pipeline(broken.clone()).toml());
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let deadline = Instant::now() + WAIT;
    while !prometheus.firing().await.contains("SluiceVersionRefused") {
        assert!(Instant::now() < deadline, "SluiceVersionRefused never fired: {}", prometheus.api("/api/v1/alerts").await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sluice.terminate();
}

/// The sample day of StoryForge events with a bad stretch spread through
/// it: 300 generations that take 130 s on the fallback route, 300 characters
/// locked at a consistency of 0.5, 30 more failed exports.
fn bad_storyforge_day() -> Vec<Vec<u8>> {
    let day: Vec<Value> = std::fs::read_to_string(root().join("pipelines/samples/storyforge-day.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect();
    let template = |name: &str| day.iter().find(|e| e["event"] == name && e["client_ts"].as_str().is_some_and(|t| t.starts_with("2026-"))).cloned().unwrap();
    let (generated, locked, failed) = (template("scene_generated"), template("character_locked"), template("export_failed"));
    let mut bad = Vec::new();
    for n in 0..300 {
        let mut event = generated.clone();
        event["latency_ms"] = 130_000.into();
        event["provider_route"] = "fallback".into();
        event["scene_id"] = sluice_kit::uuid::from_content(format!("slow {n}").as_bytes()).into();
        bad.push(event);
        let mut event = locked.clone();
        event["consistency_score"] = 0.5.into();
        event["character_id"] = sluice_kit::uuid::from_content(format!("locked {n}").as_bytes()).into();
        bad.push(event);
        if n % 10 == 0 {
            let mut event = failed.clone();
            event["export_id"] = sluice_kit::uuid::from_content(format!("failed {n}").as_bytes()).into();
            bad.push(event);
        }
    }
    let text = std::fs::read_to_string(root().join("pipelines/samples/storyforge-day.jsonl")).unwrap();
    let mut events: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
    // Spread evenly, so that every scrape sees the same mix.
    let every = events.len() / bad.len() + 1;
    for (n, event) in bad.into_iter().enumerate() {
        events.insert((n * every + n).min(events.len()), serde_json::to_vec(&event).unwrap());
    }
    events
}

/// Each panel's title and query; each variable's metric and label.
struct Dashboard {
    queries: Vec<(String, String)>,
    variables: Vec<(String, String)>,
}

/// The queries of every panel of a Grafana dashboard, and its template
/// variables' `label_values(metric, label)`, with Grafana's variables set as
/// "all" would set them.
fn dashboard_queries(file: &str) -> Dashboard {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(root().join("pipelines/monitoring").join(file)).unwrap()).unwrap();
    assert!(dashboard["uid"].is_string() && dashboard["schemaVersion"].as_u64() >= Some(36), "{file}: a Grafana dashboard");
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(nested) = panels.iter().position(|p| p["type"] == "row" && p["panels"].as_array().is_some_and(|p| !p.is_empty())) {
        let row = panels.remove(nested);
        panels.extend(row["panels"].as_array().unwrap());
    }
    let mut queries = Vec::new();
    for panel in panels.into_iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap().to_string();
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{file}: panel {title:?} has no targets"));
        assert!(!targets.is_empty(), "{file}: panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("=~\"$pipeline\"", "=~\".+\"")
                .replace("=~\"$instance\"", "=~\".+\"")
                .replace("=~\"$vendor\"", "=~\".+\"");
            assert!(!expr.contains('$'), "{file}: panel {title:?} uses a variable the test does not set: {expr}");
            queries.push((title.clone(), expr));
        }
    }
    let mut variables = Vec::new();
    for variable in dashboard["templating"]["list"].as_array().unwrap().iter().filter(|v| v["type"] == "query") {
        let query = variable["query"]["query"].as_str().unwrap();
        let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).unwrap_or_else(|| panic!("{file}: {query}"));
        let (metric, label) = inner.split_once(", ").unwrap();
        variables.push((metric.to_string(), label.to_string()));
    }
    Dashboard { queries, variables }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_panel_reads_data_and_every_storyforge_rule_fires_on_a_bad_day() {
    let nats = Nats::start().await;
    let (sluice, address) = Sluice::run_with_metrics(&root().join("pipelines/storyforge.toml"), nats.url(), 2);
    let scratch = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(scratch.path(), &address, &["sluice-alerts.yml", "storyforge-alerts.yml"]).await;
    prometheus.scraping().await;

    // Published steadily over some seconds, so that the rates move.
    let events = bad_storyforge_day();
    for (n, chunk) in events.chunks(250).enumerate() {
        nats.publish_stored(chunk.iter().enumerate().map(|(i, body)| (format!("storyforge.raw.web.{}", (n + i) % 4), body.clone()))).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let info = nats.jetstream.get_stream("STORYFORGE_RAW").await.unwrap().consumer_info("storyforge-ingest").await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the ingest did not finish: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What the measure stage counted is exactly what came out.
    let mut accepted = 0usize;
    let mut generated = 0usize;
    let mut failures: BTreeMap<(String, String), usize> = BTreeMap::new();
    for message in nats.stream_messages("STORYFORGE_CLEAN").await {
        if message.subject.starts_with("storyforge.audit.") {
            continue;
        }
        accepted += 1;
        let body: Value = serde_json::from_slice(&message.payload).unwrap();
        match body["event"].as_str().unwrap() {
            "scene_generated" => generated += 1,
            "export_failed" => *failures.entry((body["error_code"].as_str().unwrap().into(), body["stage"].as_str().unwrap().into())).or_default() += 1,
            _ => {}
        }
    }
    assert!(accepted > 3000 && generated > 900, "{accepted} accepted, {generated} generations");
    prometheus.reaches("sum(storyforge_events_total)", accepted as f64).await;
    prometheus.reaches("sum(storyforge_scenes_generated_total)", generated as f64).await;
    prometheus.reaches("sum(storyforge_generation_latency_seconds_count)", generated as f64).await;
    let counted: BTreeMap<(String, String), usize> = prometheus
        .query("storyforge_exports_failed_total")
        .await
        .into_iter()
        .map(|(labels, v)| ((labels["error_code"].as_str().unwrap().into(), labels["failure_stage"].as_str().unwrap().into()), v as usize))
        .collect();
    assert_eq!(counted, failures, "export failures by code and stage");

    // Every panel of both dashboards, and every template variable, reads data.
    for file in ["sluice-dashboard.json", "storyforge-reliability-dashboard.json"] {
        let Dashboard { queries, variables } = dashboard_queries(file);
        assert!(queries.len() >= 13, "{file}: {} queries", queries.len());
        for (panel, query) in queries {
            let result = prometheus.query(&query).await;
            assert!(result.iter().any(|(_, v)| v.is_finite()), "{file}: panel {panel:?} reads no data from {query}: {result:?}");
        }
        for (metric, label) in variables {
            let values = prometheus.api(&format!("/api/v1/label/{label}/values?match[]={metric}")).await;
            assert!(values["data"].as_array().is_some_and(|v| !v.is_empty()), "{file}: variable {label} from {metric}: {values}");
        }
    }

    // Both rule files loaded, every rule healthy; each StoryForge rule fires.
    let groups = prometheus.api("/api/v1/rules").await;
    let rules: Vec<&Value> = groups["data"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    assert_eq!(rules.len(), 8 + 6, "{groups}");
    assert!(rules.iter().all(|r| r["health"] == "ok"), "{groups}");
    let expected: BTreeSet<String> =
        ["StoryForgeGenerationSlow", "StoryForgeExportSuccessLow", "StoryForgePaymentFailures", "StoryForgeContinuityLow", "StoryForgeProviderFallback"]
            .map(String::from)
            .into();
    let deadline = Instant::now() + WAIT;
    loop {
        let firing = prometheus.firing().await;
        if firing.is_superset(&expected) {
            break;
        }
        assert!(Instant::now() < deadline, "firing {firing:?}, expected {expected:?}: {}", prometheus.api("/api/v1/alerts").await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sluice.terminate();
}

#[test]
fn the_alerting_rules_pass_promtool_and_fire_on_their_cases() {
    let promtool = match std::env::var("SLUICE_PROMETHEUS") {
        Ok(prometheus) => Path::new(&prometheus).with_file_name("promtool"),
        Err(_) => "promtool".into(),
    };
    let folder = root().join("pipelines/monitoring");
    for args in [
        &["check", "rules", "sluice-alerts.yml", "storyforge-alerts.yml"][..],
        &["test", "rules", "sluice-alerts.test.yml"][..],
        &["test", "rules", "storyforge-alerts.test.yml"][..],
    ] {
        let output = Command::new(&promtool).args(args).current_dir(&folder).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success() && text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}
