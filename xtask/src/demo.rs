//! `cargo xtask demo`: runs `sluice run pipelines/storyforge.toml` with no
//! NATS URL, so sluice starts its own nats-server; publishes a day of
//! StoryForge events (`pipelines/samples/storyforge-day.jsonl`: every event
//! type, some invalid, some from users who opted out) into the pipeline's
//! input, and prints what came out on which subject.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;

const PIPELINE: &str = "pipelines/storyforge.toml";
const SAMPLES: &str = "pipelines/samples/storyforge-day.jsonl";
/// Where the outputs go: clean events, anonymous ones, audit copies, dead
/// letters, and the alerts the second pipeline raises on the clean events.
const OUTPUTS: [&str; 5] = ["storyforge.analytics.>", "storyforge.anonymous.>", "storyforge.audit.>", "storyforge.dlq.>", "storyforge.alerts.>"];

/// The alerting's heartbeat, which is not an alert.
const HEARTBEAT: &str = "storyforge.alerts.heartbeat";

/// How long the outputs must be quiet before the demo counts them complete.
const QUIET: Duration = Duration::from_secs(2);

pub fn run(root: &Path) -> Result<()> {
    let samples = std::fs::read_to_string(root.join(SAMPLES)).context("cannot read the sample events")?;
    // A throwaway key: prompt hashes made with it are only good for this demo.
    let key = std::env::var("STORYFORGE_HASH_KEY").unwrap_or_else(|_| "demo-key-not-for-production".into());
    let mut sluice = Command::new(root.join("target/debug/sluice"))
        .args(["run", PIPELINE, "--stats-interval", "5s"])
        .env("STORYFORGE_HASH_KEY", key)
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start sluice")?;

    // sluice says where its nats-server is; everything else it logs is shown
    // as it comes. Its last word on the alert pipeline is kept for the report.
    let (url_sender, url) = mpsc::channel();
    let stderr = sluice.stderr.take().context("no stderr from sluice")?;
    let reader = std::thread::spawn(move || {
        let mut alert_progress = None;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("sluice: NATS is at ") {
                let _ = url_sender.send(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
            if line.contains("Progress.") && line.contains("pipeline=storyforge-alerts") {
                alert_progress = Some(line.clone());
            }
            eprintln!("  | {line}");
        }
        alert_progress
    });
    let url = match url.recv_timeout(Duration::from_secs(60)) {
        Ok(url) => url,
        Err(_) => {
            let _ = sluice.kill();
            bail!("sluice did not start (see its log above)");
        }
    };

    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(feed_and_collect(&url, &samples));
    // SIGTERM: sluice drains its in-flight batches and stops its nats-server.
    let _ = Command::new("kill").args(["-TERM", &sluice.id().to_string()]).status();
    let status = sluice.wait()?;
    let alert_progress = reader.join().ok().flatten();
    let seen = outcome?;
    print_report(samples.lines().count(), &seen);
    print_alert_counters(alert_progress.as_deref());
    if !status.success() {
        bail!("sluice exited with {status}");
    }
    Ok(())
}

/// Publishes every sample and collects outputs and dead letters until quiet.
async fn feed_and_collect(url: &str, samples: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let client = async_nats::ConnectOptions::new().subscription_capacity(1 << 16).connect(url).await?;
    let mut subscriptions = Vec::new();
    for subject in OUTPUTS {
        subscriptions.push(client.subscribe(subject).await?);
    }
    let mut outputs = futures::stream::select_all(subscriptions);
    client.flush().await?;

    // Wait until the pipeline's stream exists before publishing into it.
    let jetstream = async_nats::jetstream::new(client.clone());
    for _ in 0..100 {
        if jetstream.get_stream("STORYFORGE_RAW").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut acks = Vec::new();
    for (n, line) in samples.lines().enumerate() {
        acks.push(jetstream.publish(format!("storyforge.raw.backend.{}", n % 8), line.to_string().into()).await?);
    }
    for ack in acks {
        ack.await?;
    }
    println!("published {} StoryForge events on storyforge.raw.backend.*", samples.lines().count());

    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let message = tokio::select! {
            Some(m) = outputs.next() => m,
            _ = tokio::time::sleep(QUIET) => break,
        };
        seen.entry(message.subject.to_string()).or_default().push(String::from_utf8_lossy(&message.payload).into_owned());
    }
    Ok(seen)
}

fn print_report(published: usize, seen: &BTreeMap<String, Vec<String>>) {
    let count = |prefix: &str| seen.iter().filter(|(s, _)| s.starts_with(prefix) && *s != HEARTBEAT).map(|(_, b)| b.len()).sum::<usize>();
    println!(
        "\n{published} events in: {} to analytics, {} anonymous (opted out), {} audit copies, {} dead letters; {} alerts, {} heartbeats\n",
        count("storyforge.analytics."),
        count("storyforge.anonymous."),
        count("storyforge.audit."),
        count("storyforge.dlq."),
        count("storyforge.alerts."),
        seen.get(HEARTBEAT).map_or(0, Vec::len)
    );
    println!("{:<50} {:>6}", "subject", "count");
    for (subject, bodies) in seen {
        println!("{subject:<50} {:>6}", bodies.len());
    }
    for prefix in ["storyforge.analytics.feedback_submitted", "storyforge.anonymous.", "storyforge.dlq.", "storyforge.alerts."] {
        if let Some((subject, bodies)) = seen.iter().find(|(s, _)| s.starts_with(prefix) && *s != HEARTBEAT) {
            let example: String = bodies[0].chars().take(400).collect();
            println!("\nfor example, on {subject}:\n  {example}");
        }
    }
}

/// What the alert plugin counted, from the alert pipeline's last progress
/// line, and why a demo's alerts can differ from run to run.
fn print_alert_counters(progress: Option<&str>) {
    let Some(counters) = progress.and_then(|line| line.split("plugin_counters=\"").nth(1)).and_then(|rest| rest.split('"').next()) else {
        return;
    };
    println!("\nthe alert plugin counted: {}", if counters.is_empty() { "nothing" } else { counters });
    if counters.contains("alert.late=") {
        println!(
            "(late: events more than the late allowance behind the newest. The demo pushes a whole day through the ingest \
             pipeline's two workers in seconds, which reorders it by hours of event time, so which windows fill, and the \
             alerts, vary from run to run; live traffic and an in-order replay of STORYFORGE_CLEAN do not.)"
        );
    }
}
