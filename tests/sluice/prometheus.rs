//! A real Prometheus (Debian's `prometheus`, which `cargo xtask test`
//! installs) scrapes a real `sluice run` under load; its HTTP API answers
//! the counts, rates and histogram quantiles a dashboard asks for, and the
//! counts are exactly what was published. The alerting rules of
//! `pipelines/monitoring` pass `promtool`, load into that Prometheus, and
//! one fires when a new version is refused.

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
    async fn start(dir: &Path, target: &str) -> Self {
        let binary = std::env::var("SLUICE_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("prometheus.yml");
        let rules = root().join("pipelines/monitoring/sluice-alerts.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{rules:?}]\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: [\"{target}\"]\n"
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
    let prometheus = Prometheus::start(scratch.path(), &address).await;

    // Prometheus takes its first scrapes some seconds after it starts: the
    // load begins once it has taken two.
    let deadline = Instant::now() + WAIT;
    while prometheus.query(r#"count_over_time(up{job="sluice"}[1m]) >= 2"#).await.is_empty() {
        assert!(Instant::now() < deadline, "Prometheus does not scrape sluice: {:?}", prometheus.query("up").await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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
    // Written again until the host sees it: a change that lands while the
    // watcher is being set up again after an earlier event can pass unseen.
    let refused = "The new version cannot be prepared; the running version stays.";
    let deadline = Instant::now() + WAIT;
    while sluice.log().events(refused).is_empty() {
        assert!(Instant::now() < deadline, "the broken version was never refused:\n{}", sluice.log());
        workspace.write_pipeline(PipelineFile::new().pipeline(broken.clone()).toml());
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let alerts = prometheus.api("/api/v1/alerts").await;
        let firing = alerts["data"]["alerts"].as_array().unwrap().iter().any(|a| a["labels"]["alertname"] == "SluiceVersionRefused" && a["state"] == "firing");
        if firing {
            break;
        }
        assert!(Instant::now() < deadline, "SluiceVersionRefused never fired: {alerts}");
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
    for args in [&["check", "rules", "sluice-alerts.yml"][..], &["test", "rules", "sluice-alerts.test.yml"][..]] {
        let output = Command::new(&promtool).args(args).current_dir(&folder).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success() && text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}
