//! The alert benchmark: a million StoryForge analytics events through the
//! `storyforge-alerts` pipeline of pipelines/storyforge.toml, in-process (the
//! real alert plugin in the real chain, in batches of 512, without NATS),
//! printing events per second and the memory it holds afterwards: the
//! process's resident memory and the size of the sink's state.
//!
//! Run with `cargo xtask bench --alerts` (or `-- --events N`). It is a
//! measurement, not a test: it asserts nothing about speed.

use std::time::Instant;

use serde_json::json;
use sluice::config;
use sluice::pipeline::{Chain, PipelineVersion};
use sluice::plugin::{Clock, Event, PluginEngine};

/// 2026-11-23T00:00:00Z.
const DAY_MS: i64 = 1_795_392_000_000;

fn main() -> anyhow::Result<()> {
    let events = std::env::args().skip_while(|a| a != "--events").nth(1).and_then(|n| n.parse().ok()).unwrap_or(1_000_000usize);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // SAFETY: single-threaded here; the ingest pipeline's redact stage needs a key to prepare.
    unsafe { std::env::set_var("STORYFORGE_HASH_KEY", "bench-key-0123456789abcdef") };
    let file = config::load(&root.join("pipelines/storyforge.toml"))?;
    let spec = file.pipelines.iter().find(|p| p.name == "storyforge-alerts").expect("storyforge.toml has storyforge-alerts");
    let engine = PluginEngine::new()?;
    let clock = Clock::manual(((DAY_MS + 10 * 86_400_000) * 1_000_000) as u64);
    let mut chain = Chain::start(PipelineVersion::prepare(&engine, spec, &clock)?)?;

    // One day of traffic spread over the events, whatever their number: the
    // windows slide all the way through it.
    let step_ms = (86_400_000 / events as i64).max(1);
    let names = ["scene_generated", "export_succeeded", "scene_locked", "payment_succeeded", "export_failed", "character_locked"];
    let batches: Vec<Vec<Event>> = (0..events)
        .collect::<Vec<_>>()
        .chunks(512)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&n| {
                    let name = names[n % names.len()];
                    let body = json!({
                        "event": name,
                        "server_ts": sluice_kit::time::format_rfc3339(DAY_MS + n as i64 * step_ms),
                        "user_id": "9b2f6d0e-4c1a-4f5e-9a7b-1d2c3e4f5a6b",
                        "latency_ms": 20_000 + (n * 7919) % 90_000,
                        "provider_route": if n % 11 == 0 { "fallback" } else { "primary" },
                        "consistency_score": 0.9 + (n % 10) as f64 / 100.0,
                        "experiment_assignments": { "pricing_layout": ["A", "B"][n % 2], "upsell_timing": ["scene_6", "scene_8"][n % 2] },
                    });
                    Event { subject: format!("storyforge.analytics.{name}"), headers: Vec::new(), body: serde_json::to_vec(&body).unwrap() }
                })
                .collect()
        })
        .collect();
    let bytes: usize = batches.iter().flatten().map(|e| e.body.len()).sum();
    let rss_before = rss_kib();
    let started = Instant::now();
    let mut alerts = 0;
    for (i, batch) in batches.iter().enumerate() {
        alerts += chain.process(batch)?.outputs.len();
        chain.commit();
        if i % 400 == 0 {
            eprintln!("{} of {events} events", i * 512);
        }
    }
    let elapsed = started.elapsed();
    let state = chain.hand_over().map_or(0, |s| s.len());
    println!("alert pipeline (storyforge-alerts, in-process, batches of 512, snapshot after each)");
    println!("events:                {events} ({} bytes on average)", bytes / events.max(1));
    println!("events/s:              {:.0}", events as f64 / elapsed.as_secs_f64());
    println!("alerts emitted:        {alerts}");
    println!("sink state (snapshot): {state} bytes");
    println!("resident memory:       {} KiB before the events (inputs built), {} KiB after", rss_before, rss_kib());
    Ok(())
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok()).unwrap_or(0)
}
