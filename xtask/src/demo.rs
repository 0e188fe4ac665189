//! `cargo xtask demo`: runs `sluice run pipelines/demo.toml` with no NATS URL,
//! so sluice starts its own nats-server; publishes the sample events of
//! `pipelines/samples/demo.jsonl` into the pipeline's input, and prints what
//! came out on which subject.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;

/// How long the outputs must be quiet before the demo counts them complete.
const QUIET: Duration = Duration::from_secs(2);

pub fn run(root: &Path) -> Result<()> {
    let samples = std::fs::read_to_string(root.join("pipelines/samples/demo.jsonl")).context("cannot read the sample events")?;
    let mut sluice = Command::new(root.join("target/debug/sluice"))
        .args(["run", "pipelines/demo.toml", "--stats-interval", "5s"])
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start sluice")?;

    // sluice says where its nats-server is; everything else it logs is shown as it comes.
    let (url_sender, url) = mpsc::channel();
    let stderr = sluice.stderr.take().context("no stderr from sluice")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("sluice: NATS is at ") {
                let _ = url_sender.send(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
            eprintln!("  | {line}");
        }
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
    let seen = outcome?;
    print_report(samples.lines().count(), &seen);
    if !status.success() {
        bail!("sluice exited with {status}");
    }
    Ok(())
}

/// Publishes every sample and collects outputs and dead letters until quiet.
async fn feed_and_collect(url: &str, samples: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let client = async_nats::connect(url).await?;
    let mut outputs = client.subscribe("demo.out.>").await?;
    let mut dead_letters = client.subscribe("demo.dlq.>").await?;
    client.flush().await?;

    // Wait until the pipeline's stream exists before publishing into it.
    let jetstream = async_nats::jetstream::new(client.clone());
    for _ in 0..100 {
        if jetstream.get_stream("DEMO_RAW").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (n, line) in samples.lines().enumerate() {
        jetstream.publish(format!("demo.raw.web.{n}"), line.to_string().into()).await?.await?;
    }
    println!("published {} sample events on demo.raw.web.*", samples.lines().count());

    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let message = tokio::select! {
            Some(m) = outputs.next() => m,
            Some(m) = dead_letters.next() => m,
            _ = tokio::time::sleep(QUIET) => break,
        };
        seen.entry(message.subject.to_string()).or_default().push(String::from_utf8_lossy(&message.payload).into_owned());
    }
    Ok(seen)
}

fn print_report(published: usize, seen: &BTreeMap<String, Vec<String>>) {
    let count = |prefix: &str| seen.iter().filter(|(s, _)| s.starts_with(prefix)).map(|(_, b)| b.len()).sum::<usize>();
    let (outputs, dead_letters) = (count("demo.out."), count("demo.dlq."));
    let dropped = published.saturating_sub(outputs + dead_letters);
    println!("\n{published} events in: {outputs} routed, {dead_letters} dead letters, {dropped} dropped on purpose (heartbeats)\n");
    println!("{:<32} {:>6}  first message", "subject", "count");
    for (subject, bodies) in seen {
        let first: String = bodies[0].chars().take(110).collect();
        println!("{subject:<32} {:>6}  {first}", bodies.len());
    }
}
