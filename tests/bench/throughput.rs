//! The throughput benchmark: a fixed number of ~500-byte JSON events pushed
//! NATS-to-NATS through a sluice pipeline (tag, then route: one stage that
//! re-serialises, one that only re-routes), next to a pass-through relay on
//! the same transport, for a core input and a JetStream input; then the
//! StoryForge file on the bundled day, on one, two and three hosts sharing
//! its durable consumer. Two JetStream relays: one that awaits each batch's
//! acks before it pulls the next (as sluice once did), and a pipelined one
//! (batches in flight, acks awaited beside, inputs acked as their outputs
//! are confirmed), the transport's ceiling here. Each run is repeated paced
//! at half the rate it reached, for latency when not saturated. Prints
//! events per second, CPU per event, peak memory, latency percentiles and
//! events lost for each.
//!
//! Run with `cargo xtask bench` (or `cargo xtask bench -- --events 100000`).
//! `--languages` runs the same `tag` logic in Rust, Python and JavaScript
//! (plugins/tag, tag-py, tag-js) over core NATS instead, with the CPU time
//! per event and the peak resident memory of each sluice process.
//! `--storyforge` runs only the StoryForge file on one host.
//! `--swaps` runs only the StoryForge file on one host at full speed while
//! its ingest is swapped for a new version every `SWAP_EVERY`: how long
//! each swap holds output up, beside the longest pause in as long a span
//! just before it.
//! `--in-process` runs only the StoryForge ingest in this process, without
//! NATS, in WebAssembly and natively (`in_process.rs`); the default run ends
//! with it.
//! It is a measurement, not a test: it asserts nothing about speed.

#[path = "in_process.rs"]
mod in_process;
#[path = "../support/mod.rs"]
mod support;
#[path = "swaps.rs"]
mod swaps;

use std::collections::HashSet;
use std::future::IntoFuture;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use sluice::nats::ManagedServer;
use support::{Pipeline, PipelineFile, Sluice};
use swaps::{SwapPause, print_swaps, start_swapping_sluice, swap_pauses, swap_repeatedly, swappable_storyforge};

const SENT_HEADER: &str = "Bench-Sent-Ns";
const SEQ_HEADER: &str = "Bench-Seq";
/// The run ends when no output has arrived for this long.
const QUIET: Duration = Duration::from_secs(3);

struct Measured {
    name: String,
    /// For a run with swaps: each swap's pause and the pause before it.
    swaps: Vec<SwapPause>,
    /// For a run with swaps: each worker's swap, as its log says: how long
    /// the new version took to start (µs), and how long the swap held the
    /// worker up.
    worker_swaps: Vec<(u64, u64)>,
    /// The rate the events were sent at; `None`: as fast as they could be.
    paced: Option<f64>,
    sent: usize,
    received: usize,
    duplicates: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    slow_consumer_events: Option<u64>,
    /// CPU seconds the sluice processes spent while the run lasted, and
    /// the highest peak RSS among them.
    cpu_s: Option<f64>,
    peak_rss_mib: Option<f64>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How long a paced run lasts, at most: enough events for percentiles.
const PACED_FOR: Duration = Duration::from_secs(10);

fn main() {
    let events = std::env::args().skip_while(|a| a != "--events").nth(1).and_then(|n| n.parse().ok()).unwrap_or(200_000usize);
    if std::env::args().any(|a| a == "--in-process") {
        return in_process::run(events, support::HASH_KEY);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let results = runtime.block_on(async {
        let mut results = Vec::new();
        let runs: &[(Transport, Subject)] = if std::env::args().any(|a| a == "--languages") {
            &[(Transport::Core, Subject::Sluice), (Transport::Core, Subject::Tag("tag_py")), (Transport::Core, Subject::Tag("tag_js"))]
        } else if std::env::args().any(|a| a == "--storyforge") {
            &[(Transport::JetStream, Subject::StoryForge { hosts: 1 })]
        } else if std::env::args().any(|a| a == "--swaps") {
            let server = ManagedServer::start().await.expect("nats-server");
            results.push(measure(&server.url, Transport::JetStream, Subject::StoryForgeSwaps, events, None).await);
            server.stop().await;
            &[]
        } else {
            &[
                (Transport::Core, Subject::Relay),
                (Transport::Core, Subject::Sluice),
                (Transport::JetStream, Subject::Relay),
                (Transport::JetStream, Subject::PipelinedRelay),
                (Transport::JetStream, Subject::Sluice),
                (Transport::JetStream, Subject::StoryForge { hosts: 1 }),
                (Transport::JetStream, Subject::StoryForge { hosts: 2 }),
                (Transport::JetStream, Subject::StoryForge { hosts: 3 }),
            ]
        };
        for &(transport, subject) in runs {
            let server = ManagedServer::start().await.expect("nats-server");
            let full = measure(&server.url, transport, subject, events, None).await;
            server.stop().await;
            let half = full.rate() / 2.0;
            let server = ManagedServer::start().await.expect("nats-server");
            let paced_events = events.min((half * PACED_FOR.as_secs_f64()) as usize).max(1);
            let paced = measure(&server.url, transport, subject, paced_events, Some(half)).await;
            server.stop().await;
            results.push(full);
            results.push(paced);
        }
        results
    });
    print_table(events, &results);
    print_swaps(&results);
    if !std::env::args().any(|a| a == "--languages" || a == "--storyforge" || a == "--swaps") {
        in_process::run(events, support::HASH_KEY);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Core,
    JetStream,
}

#[derive(Clone, Copy, PartialEq)]
enum Subject {
    /// Takes a batch, publishes it, awaits its acks, acks its inputs.
    Relay,
    /// Keeps batches in flight: acks awaited beside, inputs acked as their
    /// outputs are confirmed (JetStream only).
    PipelinedRelay,
    Sluice,
    /// `pipelines/storyforge.toml` on the bundled day of StoryForge events,
    /// run by this many `sluice` processes on its durable consumer.
    StoryForge {
        hosts: usize,
    },
    /// `pipelines/storyforge.toml` on one host, its ingest swapped for a new
    /// version every `SWAP_EVERY` while it runs.
    StoryForgeSwaps,
    /// tag+route with `tag` in another language: this component for it.
    Tag(&'static str),
}

async fn measure(url: &str, transport: Transport, subject: Subject, events: usize, paced: Option<f64>) -> Measured {
    let client = async_nats::ConnectOptions::new().subscription_capacity(1 << 21).connect(url).await.unwrap();
    let js = jetstream::new(client.clone());
    let storyforge = matches!(subject, Subject::StoryForge { .. } | Subject::StoryForgeSwaps);
    if transport == Transport::JetStream && !storyforge {
        for (name, subjects) in [("IN", "in.>"), ("OUT", "out.>")] {
            js.create_stream(jetstream::stream::Config { name: name.into(), subjects: vec![subjects.into()], ..Default::default() }).await.unwrap();
        }
    }
    let (input_prefix, output_subjects): (&str, &[&str]) = match subject {
        Subject::StoryForge { .. } | Subject::StoryForgeSwaps => {
            ("storyforge.raw.bench", &["storyforge.analytics.>", "storyforge.anonymous.>", "storyforge.dlq.>"])
        }
        _ => ("in.web", &["out.>"]),
    };
    let mut subscriptions = Vec::new();
    for output in output_subjects {
        subscriptions.push(client.subscribe(output.to_string()).await.unwrap());
    }
    let mut outputs = futures::stream::select_all(subscriptions);
    client.flush().await.unwrap();

    let workspace = tempfile::tempdir().unwrap();
    let mut sluices = Vec::new();
    let mut relay = None;
    let mut swapper = None;
    match subject {
        Subject::Sluice => sluices.push(start_sluice(&write_pipeline(workspace.path(), transport, "tag"), url)),
        Subject::Tag(component) => sluices.push(start_sluice(&write_pipeline(workspace.path(), transport, component), url)),
        Subject::StoryForge { hosts } => {
            let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/storyforge.toml");
            sluices.extend((0..hosts).map(|_| start_sluice(&file, url)));
        }
        Subject::StoryForgeSwaps => {
            let file = swappable_storyforge(workspace.path());
            sluices.push(start_swapping_sluice(&file, url));
            swapper = Some(file);
        }
        Subject::Relay => relay = Some(tokio::spawn(relay_task(client.clone(), transport))),
        Subject::PipelinedRelay => relay = Some(tokio::spawn(pipelined_relay_task(client.clone()))),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu = |sluices: &[(Sluice, &str)]| sluices.iter().map(|(s, _)| cpu_seconds(s.pid())).sum::<Option<f64>>();
    let cpu_before = cpu(&sluices);

    let bodies: Vec<bytes::Bytes> = match subject {
        Subject::StoryForge { .. } | Subject::StoryForgeSwaps => storyforge_day(),
        _ => (0..64).map(|n| body(n).into()).collect(),
    };
    let started = Instant::now();
    let publisher = {
        let (client, js) = (client.clone(), js.clone());
        tokio::spawn(async move {
            let mut acks = Vec::with_capacity(1024);
            let start = tokio::time::Instant::now();
            for n in 0..events {
                if let Some(rate) = paced {
                    tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / rate)).await;
                }
                let mut headers = HeaderMap::new();
                headers.insert(SENT_HEADER, now_ns().to_string().as_str());
                headers.insert(SEQ_HEADER, n.to_string().as_str());
                let subject = format!("{input_prefix}.{}", n % 16);
                let body = bodies[n % bodies.len()].clone();
                match transport {
                    Transport::Core => client.publish_with_headers(subject, headers, body).await.unwrap(),
                    Transport::JetStream => {
                        acks.push(js.publish_with_headers(subject, headers, body).await.unwrap().into_future());
                        // Paced, the acks are awaited beside, so that the pace holds.
                        if paced.is_some() {
                            tokio::spawn(futures::future::try_join_all(acks.drain(..)));
                        } else if acks.len() == 1024 {
                            futures::future::try_join_all(acks.drain(..)).await.unwrap();
                        }
                    }
                }
            }
            futures::future::try_join_all(acks).await.unwrap();
            client.flush().await.unwrap();
        })
    };

    // Each swap: when its file was written.
    let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let swaps = swapper.map(|file| tokio::spawn(swap_repeatedly(file, written.clone())));
    // Each output's arrival, and which of `versions` made it.
    let (mut arrivals, mut versions): (Vec<(Instant, usize)>, Vec<String>) = (Vec::new(), Vec::new());
    let mut seen = HashSet::with_capacity(events);
    let mut duplicates = 0;
    let mut latencies_us = Vec::with_capacity(events);
    let mut last = started;
    while seen.len() < events {
        let Ok(Some(message)) = tokio::time::timeout(QUIET, outputs.next()).await else { break };
        last = Instant::now();
        let headers = message.headers.as_ref().expect("headers pass through");
        let sent: u64 = headers.get(SENT_HEADER).unwrap().as_str().parse().unwrap();
        latencies_us.push(now_ns().saturating_sub(sent) / 1000);
        if swaps.is_some() {
            let version = headers.get("Sluice-Pipeline-Version").map_or("", |v| v.as_str());
            let index = versions.iter().position(|v| v == version).unwrap_or_else(|| {
                versions.push(version.to_string());
                versions.len() - 1
            });
            arrivals.push((last, index));
        }
        if !seen.insert(headers.get(SEQ_HEADER).unwrap().as_str().parse::<usize>().unwrap()) {
            duplicates += 1;
        }
    }
    publisher.await.unwrap();
    if let Some(swaps) = swaps {
        swaps.abort();
    }
    let swaps = swap_pauses(&arrivals, &written.lock().unwrap());
    // What each ingest worker's swap took to start beside, and held it up.
    let worker_swaps: Vec<(u64, u64)> = sluices
        .iter()
        .flat_map(|(s, _)| s.log().events("Worker swapped version."))
        .filter(|e| e["pipeline"] == "storyforge-ingest")
        .map(|e| (e["start_us"].as_u64().unwrap_or(0), e["paused_us"].as_u64().unwrap_or(0)))
        .collect();

    let cpu_s = cpu(&sluices).zip(cpu_before).map(|(after, before)| after - before).filter(|_| !sluices.is_empty());
    let peak_rss_mib = sluices.iter().filter_map(|(s, _)| peak_rss_mib(s.pid())).reduce(f64::max);
    let slow_consumer_events = (!sluices.is_empty()).then(|| sluices.into_iter().map(stop_sluice).sum());
    if let Some(relay) = relay {
        relay.abort();
    }
    let name = format!(
        "{} {}",
        match transport {
            Transport::Core => "core",
            Transport::JetStream => "jetstream",
        },
        match subject {
            Subject::Relay => "pass-through relay".to_string(),
            Subject::PipelinedRelay => "pipelined pass-through relay".to_string(),
            Subject::Sluice => "sluice tag+route".into(),
            Subject::StoryForge { hosts: 1 } => "sluice storyforge.toml".into(),
            Subject::StoryForge { hosts } => format!("sluice storyforge.toml, {hosts} hosts"),
            Subject::StoryForgeSwaps => "sluice storyforge.toml, ingest swapped".into(),
            Subject::Tag(component) => format!("sluice {component}+route"),
        }
    );
    let pace = paced.map_or_else(|| "full speed".to_string(), |rate| format!("paced at {rate:.0}/s"));
    eprintln!("bench: {name}, {pace}: {} of {events} received", seen.len());
    Measured {
        name,
        swaps,
        worker_swaps,
        paced,
        sent: events,
        received: seen.len(),
        duplicates,
        elapsed: last - started,
        latencies_us,
        slow_consumer_events,
        cpu_s,
        peak_rss_mib,
    }
}

/// User and system CPU seconds of a process so far, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which is in parentheses): utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A process's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

/// The baseline: take each message from the input and publish it, unchanged, on the output.
async fn relay_task(client: async_nats::Client, transport: Transport) {
    match transport {
        Transport::Core => {
            let mut input = client.queue_subscribe("in.>", "relay".into()).await.unwrap();
            while let Some(message) = input.next().await {
                let subject = message.subject.replacen("in.", "out.", 1);
                client.publish_with_headers(subject, message.headers.unwrap_or_default(), message.payload).await.unwrap();
            }
        }
        Transport::JetStream => {
            let js = jetstream::new(client.clone());
            let mut batches = relay_batches(&js).await;
            while let Some(batch) = batches.next().await {
                let batch: Vec<_> = batch.into_iter().map(Result::unwrap).collect();
                let acks = relay_publish(&js, &batch).await;
                relay_settle(acks, &batch).await;
            }
        }
    }
}

/// The relay with batches in flight: each batch published at once, its
/// acks awaited beside while the next is pulled and published, its inputs
/// acked once its outputs are confirmed.
async fn pipelined_relay_task(client: async_nats::Client) {
    let js = jetstream::new(client.clone());
    let mut batches = relay_batches(&js).await;
    // Up to 16 batches in flight, settled in the order they were sent.
    let (in_flight, mut confirmed) = tokio::sync::mpsc::channel::<(Vec<jetstream::context::PublishAckFuture>, Vec<jetstream::Message>)>(16);
    let settler = tokio::spawn(async move {
        while let Some((acks, batch)) = confirmed.recv().await {
            relay_settle(acks, &batch).await;
        }
    });
    while let Some(batch) = batches.next().await {
        let batch: Vec<_> = batch.into_iter().map(Result::unwrap).collect();
        let acks = relay_publish(&js, &batch).await;
        in_flight.send((acks, batch)).await.unwrap();
    }
    drop(in_flight);
    settler.await.unwrap();
}

/// A relay's input: batches of up to 256 from a durable consumer on `IN`.
async fn relay_batches(js: &jetstream::Context) -> impl futures::Stream<Item = Vec<Result<jetstream::Message, jetstream::consumer::pull::MessagesError>>> {
    let consumer = js
        .get_stream("IN")
        .await
        .unwrap()
        .create_consumer(pull::Config { durable_name: Some("relay".into()), max_ack_pending: 8192, ..Default::default() })
        .await
        .unwrap();
    consumer.messages().await.unwrap().ready_chunks(256)
}

/// Publishes a batch unchanged on `out.`, returning what confirms each.
async fn relay_publish(js: &jetstream::Context, batch: &[jetstream::Message]) -> Vec<jetstream::context::PublishAckFuture> {
    let mut acks = Vec::with_capacity(batch.len());
    for message in batch {
        let subject = message.subject.replacen("in.", "out.", 1);
        let headers = message.headers.clone().unwrap_or_default();
        acks.push(js.publish_with_headers(subject, headers, message.payload.clone()).await.unwrap());
    }
    acks
}

/// Once every output of a batch is stored, acks its inputs.
async fn relay_settle(acks: Vec<jetstream::context::PublishAckFuture>, batch: &[jetstream::Message]) {
    futures::future::try_join_all(acks.into_iter().map(IntoFuture::into_future)).await.unwrap();
    for message in batch {
        message.ack().await.unwrap();
    }
}

/// The tag+route pipeline for a transport, written into `dir`.
fn write_pipeline(dir: &Path, transport: Transport, tag: &str) -> std::path::PathBuf {
    let bench = match transport {
        Transport::Core => Pipeline::core("bench", "in.>"),
        Transport::JetStream => Pipeline::jetstream("bench", "in.>", "IN").set("output = { jetstream = true }"),
    };
    let bench = bench
        .set("batch = { max_events = 256, max_wait = \"2ms\" }")
        .stage("tag", tag, r#"{ require = ["event", "user_id"], set = { pipeline = "bench" } }"#)
        .route("out.{event}");
    let file = dir.join("bench.toml");
    std::fs::write(&file, PipelineFile::new().pipeline(bench).toml()).unwrap();
    file
}

/// `sluice run` on `file`, its warnings and errors shown as they come.
fn start_sluice(file: &Path, url: &str) -> (Sluice, &'static str) {
    let pipelines = if file.ends_with("storyforge.toml") { 2 } else { 1 };
    let name = if pipelines == 2 { "storyforge-ingest" } else { "bench" };
    let sluice = Sluice::command(&["run", file.to_str().unwrap(), "--nats", url, "--no-watch", "--stats-interval", "60s"]).echo_problems().started(pipelines);
    (sluice, name)
}

/// SIGTERM, then the slow-consumer reports from sluice's final progress report.
fn stop_sluice((sluice, pipeline): (Sluice, &str)) -> u64 {
    let progress = sluice.terminate().progress(pipeline);
    eprintln!("  sluice | {progress}");
    progress["slow_consumer_events"].as_u64().unwrap_or(0)
}

/// The bundled day of StoryForge events (mixed, some invalid, some opted out).
fn storyforge_day() -> Vec<bytes::Bytes> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/samples/storyforge-day.jsonl");
    std::fs::read_to_string(path).unwrap().lines().map(|l| bytes::Bytes::from(l.to_string())).collect()
}

/// A realistic ~500-byte StoryForge event.
fn body(n: usize) -> Vec<u8> {
    let event = serde_json::json!({
        "event": "scene_generated",
        "user_id": format!("6f1c2d3e-4b5a-4c7d-8e9f-{:012x}", n),
        "project_id": "0b7e8c9d-1a2b-4c3d-9e8f-7a6b5c4d3e2f",
        "scene_id": "5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a",
        "session_id": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d",
        "client_ts": "2026-11-24T10:15:30.123Z",
        "app_version": "3.14.2",
        "platform": "web",
        "option_count": 4,
        "duration_s": 12.5,
        "latency_ms": 48210,
        "cache_hit": "miss",
        "model_vendor": "vendor-7",
        "safety_mode": "default",
        "provider_route": "primary",
        "experiment_assignments": { "onboarding_copy": "B", "upsell_timing": "scene_6" }
    });
    serde_json::to_vec(&event).unwrap()
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn print_table(events: usize, results: &[Measured]) {
    println!("\n{events} events of {} bytes, NATS to NATS, on {} cores\n", body(0).len(), std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!(
        "| run | sent at | events/s | sluice CPU µs/event | sluice peak RSS MiB | p50 ms | p90 ms | p99 ms | max ms | lost | duplicates | slow-consumer reports |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let mut sorted = r.latencies_us.clone();
        sorted.sort_unstable();
        let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.paced.map_or_else(|| "full speed".to_string(), |rate| format!("{rate:.0}/s (half)")),
            r.rate(),
            r.cpu_s.map_or("n/a".to_string(), |s| format!("{:.1}", s * 1e6 / r.received.max(1) as f64)),
            r.peak_rss_mib.map_or("n/a".to_string(), |m| format!("{m:.0}")),
            ms(percentile(&sorted, 0.50)),
            ms(percentile(&sorted, 0.90)),
            ms(percentile(&sorted, 0.99)),
            ms(sorted.last().copied().unwrap_or(0)),
            r.sent - r.received,
            r.duplicates,
            r.slow_consumer_events.map_or("n/a".to_string(), |n| n.to_string()),
        );
    }
}
