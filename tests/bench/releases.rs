//! The release benchmark: three hosts following one release (`sluice run
//! --release bench`) on one durable JetStream consumer, under a steady load,
//! take up a series of deploys (20 unless `--deploys N`), each a new tag
//! config and so a new version id. For every deploy it measures, from the
//! moment `sluice deploy` returns:
//! - when all three hosts report the new revision in SLUICE_HOSTS (what
//!   `deploy --wait` waits for; a host reports it once it has laid the
//!   revision out, prepared it and handed it to its workers);
//! - when the last output of the previous revision arrived: after it, no
//!   host runs the old version any more.
//!
//! Over the whole run it measures the longest pause between two outputs while a
//! swap was under way beside the longest in the second before each deploy,
//! the events lost or repeated, and the hosts' CPU time.
//!
//! Run with `cargo xtask bench --releases` (`-- --deploys N --rate EVENTS_PER_S`).
//! It is a measurement, not a test: it asserts nothing about speed.

#[path = "../support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt;
use sluice::nats::ManagedServer;
use sluice::release::status::{HOSTS, HostStatus};
use sluice::release::store::ReleaseStore;
use support::{Pipeline, PipelineFile, Sluice};

const FLEET: usize = 3;
const SEQ_HEADER: &str = "Bench-Seq";
const VERSION_HEADER: &str = "Sluice-Pipeline-Version";
/// How long each deploy waits for the fleet before it counts as not landed.
const LAND_WITHIN: Duration = Duration::from_secs(60);

/// One output as the collector saw it.
struct Output {
    at: Instant,
    seq: u64,
    version: String,
}

/// One deploy as measured.
struct Deploy {
    revision: u64,
    version: String,
    /// Just before `sluice deploy` started, and when it returned.
    started: Instant,
    returned: Instant,
    /// When the last host reported the revision.
    all_reported: Option<Instant>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str, default: u64| args.iter().skip_while(|a| *a != name).nth(1).and_then(|n| n.parse().ok()).unwrap_or(default);
    let (deploys, rate) = (value("--deploys", 20) as usize, value("--rate", 2000));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(deploys, rate));
}

async fn run(deploys: usize, rate: u64) {
    let server = ManagedServer::start().await.expect("nats-server");
    let url = server.url.clone();
    let client = async_nats::ConnectOptions::new().subscription_capacity(1 << 21).connect(&url).await.unwrap();
    let js = jetstream::new(client.clone());
    let connection = sluice::nats::connect(&url, "bench").await.unwrap();
    let store = ReleaseStore::open(&connection).await.unwrap();
    let workspace = tempfile::tempdir().unwrap();

    eprintln!("bench: deploying revision 1 and starting {FLEET} hosts");
    deploy(&url, &write_file(workspace.path(), 0)).await;
    let first = store.current("bench").await.unwrap().expect("the release has a revision").manifest.versions["bench"].clone();
    let hosts: Vec<Sluice> =
        (0..FLEET).map(|_| Sluice::command(&["run", "--release", "bench", "--nats", &url, "--stats-interval", "600s"]).echo_problems().started(1)).collect();

    let outputs = Arc::new(Mutex::new(Vec::<Output>::new()));
    let collector = {
        let (mut subscription, outputs) = (client.subscribe("out.>").await.unwrap(), outputs.clone());
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let headers = message.headers.as_ref();
                let seq = headers.and_then(|h| h.get(SEQ_HEADER)).and_then(|v| v.as_str().parse().ok()).unwrap_or(u64::MAX);
                let version = headers.and_then(|h| h.get(VERSION_HEADER)).map(|v| v.as_str().to_string()).unwrap_or_default();
                outputs.lock().unwrap().push(Output { at: Instant::now(), seq, version });
            }
        })
    };
    let reports = Arc::new(Mutex::new(Vec::<(Instant, String, u64)>::new()));
    let watcher = {
        let bucket = js.get_key_value(HOSTS).await.unwrap();
        let mut watch = bucket.watch_all().await.unwrap();
        let reports = reports.clone();
        tokio::spawn(async move {
            while let Some(Ok(entry)) = watch.next().await {
                if let Ok(status) = serde_json::from_slice::<HostStatus>(&entry.value) {
                    reports.lock().unwrap().push((Instant::now(), entry.key, status.revision));
                }
            }
        })
    };
    client.flush().await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(publish_steadily(js.clone(), rate, stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_before: Vec<Duration> = hosts.iter().map(|h| cpu_time(h.pid())).collect();
    let load_started = Instant::now();

    let mut measured = Vec::new();
    for n in 1..=deploys {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let file = write_file(workspace.path(), n as u32);
        let started = Instant::now();
        deploy(&url, &file).await;
        let returned = Instant::now();
        let current = store.current("bench").await.unwrap().expect("the release has a revision");
        let version = current.manifest.versions["bench"].clone();
        let all_reported = all_report(&reports, current.revision, started).await;
        eprintln!(
            "bench: deploy {n}/{deploys}: revision {}, all {FLEET} hosts after {}",
            current.revision,
            all_reported.map_or("(not within the limit)".to_string(), |at| format!("{} ms", ms(returned, at)))
        );
        measured.push(Deploy { revision: current.revision, version, started, returned, all_reported });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.unwrap();
    let elapsed = load_started.elapsed();
    let cpu: Duration = hosts.iter().zip(&cpu_before).map(|(h, before)| cpu_time(h.pid()).saturating_sub(*before)).sum();
    // Wait for the last outputs.
    let mut count = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = outputs.lock().unwrap().len();
        if now == count {
            break;
        }
        count = now;
    }
    collector.abort();
    watcher.abort();
    let stored = js.get_stream("OUT").await.unwrap().info().await.unwrap().state.messages;
    for host in hosts {
        host.terminate();
    }
    server.stop().await;

    let outputs = std::mem::take(&mut *outputs.lock().unwrap());
    report(&first, &measured, &outputs, Counts { sent, stored }, cpu, elapsed, rate);
}

/// Events published, and outputs the OUT stream kept (it drops a repeat by its message id).
struct Counts {
    sent: u64,
    stored: u64,
}

/// A JetStream-in, JetStream-out tag-and-route pipeline; `version` goes into
/// tag's config, so each file is a new version.
fn write_file(dir: &Path, version: u32) -> String {
    let pipeline = Pipeline::jetstream("bench", "raw.>", "RAW")
        .set("output = { jetstream = true }")
        .stage("tag", "tag", &format!("{{ set = {{ version = {version} }} }}"))
        .route("out.{event}");
    let file = PipelineFile::new().stream("RAW", &["raw.>"], "").stream("OUT", &["out.>"], "duplicate_window = \"5m\"").pipeline(pipeline);
    let path = dir.join("bench.toml");
    std::fs::write(&path, file.toml()).unwrap();
    path.to_str().unwrap().to_string()
}

async fn deploy(url: &str, file: &str) {
    let (url, file) = (url.to_string(), file.to_string());
    let (status, log) = tokio::task::spawn_blocking(move || Sluice::command(&["deploy", &file, "--name", "bench", "--nats", &url]).wait()).await.unwrap();
    assert!(status.success(), "the deploy failed:\n{log}");
}

/// When every host had reported `revision`, once they all have.
async fn all_report(reports: &Mutex<Vec<(Instant, String, u64)>>, revision: u64, since: Instant) -> Option<Instant> {
    let deadline = Instant::now() + LAND_WITHIN;
    while Instant::now() < deadline {
        let mut first: BTreeMap<String, Instant> = BTreeMap::new();
        for (at, host, reported) in reports.lock().unwrap().iter() {
            if *at >= since && *reported >= revision {
                first.entry(host.clone()).or_insert(*at);
            }
        }
        if first.len() >= FLEET {
            return first.values().max().copied();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Publishes ~500-byte events on `raw.<n>` at `rate` per second, in ticks of
/// 10 ms, awaiting each tick's acks; returns how many it sent.
async fn publish_steadily(js: jetstream::Context, rate: u64, stop: Arc<AtomicBool>) -> u64 {
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut seq = 0;
    let padding = "x".repeat(400);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let mut acks = Vec::with_capacity(per_tick as usize);
        for _ in 0..per_tick {
            let mut headers = HeaderMap::new();
            headers.insert(SEQ_HEADER, seq.to_string().as_str());
            let body = serde_json::json!({ "event": "scene_generated", "n": seq, "padding": padding });
            acks.push(js.publish_with_headers(format!("raw.{}", seq % 16), headers, serde_json::to_vec(&body).unwrap().into()).await.unwrap());
            seq += 1;
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
    seq
}

fn cpu_time(pid: u32) -> Duration {
    support::usage::cpu_time(&pid.to_string())
}

fn ms(from: Instant, to: Instant) -> String {
    if to >= from { format!("{:.0}", (to - from).as_secs_f64() * 1000.0) } else { format!("-{:.0}", (from - to).as_secs_f64() * 1000.0) }
}

/// The longest gap between two consecutive outputs that overlaps `[from, to]`.
fn longest_pause(arrivals: &[Instant], from: Instant, to: Instant) -> Duration {
    arrivals.windows(2).filter(|w| w[1] >= from && w[0] <= to).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

fn report(first: &str, deploys: &[Deploy], outputs: &[Output], Counts { sent, stored }: Counts, cpu: Duration, elapsed: Duration, rate: u64) {
    let mut arrivals: Vec<Instant> = outputs.iter().map(|o| o.at).collect();
    arrivals.sort();
    let distinct: HashSet<u64> = outputs.iter().map(|o| o.seq).collect();
    let (lost, repeated) = (sent.saturating_sub(distinct.len() as u64), outputs.len() - distinct.len());

    println!("\n{} deploys to {FLEET} hosts on one durable consumer, under {rate} events/s, on {} cores\n", deploys.len(), cores());
    println!(
        "| deploy | revision | all hosts report it, ms after deploy returned | last output of the previous version, ms after | longest pause during the swap, ms |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let (mut reported, mut last_old, mut pauses, mut before) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (n, deploy) in deploys.iter().enumerate() {
        let previous = n.checked_sub(1).map_or(first, |p| deploys[p].version.as_str());
        let old_last = outputs.iter().filter(|o| o.version == previous).map(|o| o.at).max();
        let until = [deploy.all_reported, old_last].into_iter().flatten().max().unwrap_or(deploy.returned).max(deploy.returned);
        let pause = longest_pause(&arrivals, deploy.started, until + Duration::from_millis(100));
        pauses.push(pause);
        before.push(longest_pause(&arrivals, deploy.started - Duration::from_secs(1), deploy.started));
        if let Some(at) = deploy.all_reported {
            reported.push(at.saturating_duration_since(deploy.returned));
        }
        if let Some(at) = old_last {
            last_old.push(at.saturating_duration_since(deploy.returned));
        }
        println!(
            "| {} | {} | {} | {} | {:.0} |",
            n + 1,
            deploy.revision,
            deploy.all_reported.map_or("not within 60 s".into(), |at| ms(deploy.returned, at)),
            old_last.map_or("none".into(), |at| ms(deploy.returned, at)),
            pause.as_secs_f64() * 1000.0
        );
    }
    let summary = |name: &str, values: &mut Vec<Duration>| {
        values.sort();
        let median = values.get(values.len() / 2).copied().unwrap_or_default();
        let worst = values.last().copied().unwrap_or_default();
        println!("| {name} | {:.0} | {:.0} |", median.as_secs_f64() * 1000.0, worst.as_secs_f64() * 1000.0);
    };
    println!("\n| measure | median ms | worst ms |");
    println!("|---|---:|---:|");
    summary("deploy returned → all hosts report the revision", &mut reported);
    summary("deploy returned → last output of the previous version", &mut last_old);
    summary("longest output pause during a swap", &mut pauses);
    summary("longest output pause in the second before a deploy", &mut before);
    println!(
        "\n{sent} events sent over {:.1} s, {} outputs seen, {stored} stored in OUT; lost {lost}, seen twice {repeated}; hosts' CPU {:.1} s ({:.0} µs per event, three hosts together, deploys included)",
        elapsed.as_secs_f64(),
        outputs.len(),
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / sent.max(1) as f64
    );
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
