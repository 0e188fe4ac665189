//! The alert benchmark: a million StoryForge analytics events through the
//! `storyforge-alerts` pipeline of pipelines/storyforge.toml, twice:
//! - in-process: the real alert plugin in the real chain, in batches of 512,
//!   without NATS: events per second, the process's resident memory and the
//!   size of the sink's state afterwards;
//! - over NATS: `sluice run pipelines/storyforge.toml` on a fresh nats-server,
//!   the events published into the analytics stream through JetStream (acks
//!   awaited a thousand at a time) while sluice consumes them, storing the
//!   sink's state after every batch: events per second from the first publish
//!   to the last event counted, and sluice's resident memory at the end.
//!
//! Run with `cargo xtask bench --alerts` (or `-- --events N`). It is a
//! measurement, not a test: it asserts nothing about speed.

#[path = "../support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::config;
use sluice::nats::ManagedServer;
use sluice::pipeline::{Chain, Environment, PipelineVersion};
use sluice::plugin::{Clock, Event, PluginEngine};
use support::Sluice;

/// 2026-11-23T00:00:00Z.
const DAY_MS: i64 = 1_795_392_000_000;

fn main() -> anyhow::Result<()> {
    let events = std::env::args().skip_while(|a| a != "--events").nth(1).and_then(|n| n.parse().ok()).unwrap_or(1_000_000usize);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // SAFETY: single-threaded here; the ingest pipeline's redact stage needs a key to prepare.
    unsafe { std::env::set_var("STORYFORGE_HASH_KEY", KEY) };
    let batches = analytics(events);
    in_process(&root, &batches, events)?;
    over_nats(&root, batches, events)
}

const KEY: &str = "bench-key-0123456789abcdef";

fn in_process(root: &Path, batches: &[Vec<Event>], events: usize) -> anyhow::Result<()> {
    let file = config::load(&root.join("pipelines/storyforge.toml"))?;
    let spec = file.pipelines.iter().find(|p| p.name == "storyforge-alerts").expect("storyforge.toml has storyforge-alerts");
    let engine = PluginEngine::new()?;
    let clock = Clock::manual(((DAY_MS + 10 * 86_400_000) * 1_000_000) as u64);
    let mut chain = Chain::start(PipelineVersion::prepare(&engine, spec, &clock, &Environment::process())?)?;
    let bytes: usize = batches.iter().flatten().map(|e| e.body.len()).sum();
    let rss_before = rss_kib("self");
    let started = Instant::now();
    let mut alerts = 0;
    for (i, batch) in batches.iter().enumerate() {
        alerts += chain.process(batch)?.outputs.len();
        chain.commit()?;
        if i % 400 == 0 {
            eprintln!("{} of {events} events", i * 512);
        }
    }
    let elapsed = started.elapsed();
    let state = chain.hand_over()?.map_or(0, |s| s.len());
    println!("alert pipeline (storyforge-alerts), in-process, batches of 512, a snapshot after each");
    println!("  events:                {events} ({} bytes on average)", bytes / events.max(1));
    println!("  events/s:              {:.0}", events as f64 / elapsed.as_secs_f64());
    println!("  alerts emitted:        {alerts}");
    println!("  sink state (snapshot): {state} bytes");
    println!("  resident memory:       {rss_before} KiB before the events (inputs built), {} KiB after", rss_kib("self"));
    Ok(())
}

/// `events` analytics events, in batches of 512.
fn analytics(events: usize) -> Vec<Vec<Event>> {
    // One day of traffic spread over the events, whatever their number: the
    // windows slide all the way through it.
    let step_ms = (86_400_000 / events as i64).max(1);
    let names = ["scene_generated", "export_succeeded", "scene_locked", "payment_succeeded", "export_failed", "character_locked"];
    (0..events)
        .collect::<Vec<_>>()
        .chunks(512)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&n| {
                    let name = names[n % names.len()];
                    let (variant, upsell) = if n % 2 == 0 { ("A", "scene_6") } else { ("B", "scene_8") };
                    let body = json!({
                        "event": name,
                        "server_ts": sluice_kit::time::format_rfc3339(DAY_MS + n as i64 * step_ms),
                        "user_id": "9b2f6d0e-4c1a-4f5e-9a7b-1d2c3e4f5a6b",
                        "latency_ms": 20_000 + (n * 7919) % 90_000,
                        "provider_route": if n % 11 == 0 { "fallback" } else { "primary" },
                        "consistency_score": 0.9 + (n % 10) as f64 / 100.0,
                        "experiment_assignments": { "pricing_layout": variant, "upsell_timing": upsell },
                    });
                    Event { subject: format!("storyforge.analytics.{name}"), headers: Vec::new(), body: serde_json::to_vec(&body).unwrap() }
                })
                .collect()
        })
        .collect()
}

fn over_nats(root: &Path, batches: Vec<Vec<Event>>, events: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let server = ManagedServer::start().await?;
        let file = root.join("pipelines/storyforge.toml");
        let sluice =
            Sluice::command(&["run", file.to_str().unwrap(), "--nats", &server.url, "--no-watch", "--stats-interval", "1s"]).echo_problems().started(2);
        let client = async_nats::connect(&server.url).await?;
        let jetstream = async_nats::jetstream::new(client);
        let started = Instant::now();
        support::publish_stored(&jetstream, batches.into_iter().flatten().map(|event| (event.subject, event.body))).await;
        let published = started.elapsed();
        // Progress reports of the alerts pipeline, as the count of events it received.
        tokio::task::block_in_place(|| sluice.wait_for_count("storyforge-alerts", "received", events as u64, Duration::from_secs(600)));
        let elapsed = started.elapsed();
        let rss = rss_kib(&sluice.pid().to_string());
        sluice.terminate();
        server.stop().await;
        println!("alert pipeline (storyforge-alerts), sluice run over NATS, JetStream in and out, state stored after every batch");
        println!("  events:                {events} (published in {:.1} s)", published.as_secs_f64());
        println!(
            "  events/s:              {:.0} (first publish to last event counted, within the 1 s progress interval)",
            events as f64 / elapsed.as_secs_f64()
        );
        println!("  sluice resident memory at the end: {rss} KiB (both StoryForge pipelines)");
        Ok(())
    })
}

/// Resident memory of a process (`self` or a pid), in KiB.
fn rss_kib(process: &str) -> u64 {
    support::usage::memory_kib(process, "VmRSS")
}
