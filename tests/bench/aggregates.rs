//! The aggregates benchmark: StoryForge analytics events through the
//! `storyforge-aggregates` pipeline of pipelines/storyforge.toml.
//! - In-process, the real aggregate plugin in the real chain, in batches of
//!   512, its state taken once a second of wall time as `state_every` has
//!   it: a day of a million events (one in ten a sign-up, one in ten a
//!   locked scene of an earlier sign-up, every other event a user of its
//!   own), then a million sign-ups within two days (every one followed).
//!   Events per second, CPU per event, resident memory and the state's size;
//!   for the sign-ups, the memory per user followed.
//! - Over NATS: `sluice run` on a file holding only that pipeline, the day's
//!   events published into the clean stream through JetStream while sluice
//!   consumes them: events per second from the first publish to the last
//!   event counted, CPU per event and peak memory of the sluice process.
//!
//! Run with `cargo xtask bench --aggregates` (or `-- --events N`;
//! `-- --every-batch` runs only over NATS, storing the state after every
//! batch, to compare). It is a measurement, not a test: it asserts nothing
//! about speed.

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
use support::usage::{cpu_time, memory_kib};

/// 2026-11-23T00:00:00Z.
const DAY_MS: i64 = 1_795_392_000_000;
const BATCH: usize = 512;

fn main() -> anyhow::Result<()> {
    let events = std::env::args().skip_while(|a| a != "--events").nth(1).and_then(|n| n.parse().ok()).unwrap_or(1_000_000usize);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let day = day(events);
    // `--every-batch`: only over NATS, the state stored after every batch as
    // without `state_every`, to compare.
    let every_batch = std::env::args().any(|a| a == "--every-batch");
    if !every_batch {
        in_process(&root, "a day of analytics events", &day)?;
        in_process(&root, "sign-ups within two days, every one followed", &sign_ups(events))?;
    }
    over_nats(&root, day, every_batch)
}

/// The `storyforge-aggregates` pipeline's chain, on a clock ten days after
/// the events (none is from the future).
fn chain(root: &Path) -> anyhow::Result<Chain> {
    let file = config::load(&root.join("pipelines/storyforge.toml"))?;
    let spec = file.pipelines.iter().find(|p| p.name == "storyforge-aggregates").expect("storyforge.toml has storyforge-aggregates");
    let engine = PluginEngine::new()?;
    let clock = Clock::manual(((DAY_MS + 10 * 86_400_000) * 1_000_000) as u64);
    Chain::start(PipelineVersion::prepare(&engine, spec, &clock, &Environment::process())?)
}

fn in_process(root: &Path, what: &str, batches: &[Vec<Event>]) -> anyhow::Result<()> {
    let mut chain = chain(root)?;
    let events: usize = batches.iter().map(Vec::len).sum();
    let bytes: usize = batches.iter().flatten().map(|e| e.body.len()).sum();
    let (rss_before, cpu_before) = (memory_kib("self", "VmRSS"), cpu_time("self"));
    let started = Instant::now();
    let (mut rollups, mut stored, mut largest) = (0, 0, 0);
    let mut last_store = Instant::now();
    for (i, batch) in batches.iter().enumerate() {
        rollups += chain.process(batch)?.outputs.len();
        // As the worker does with `state_every = "1s"`.
        if last_store.elapsed() >= Duration::from_secs(1) || i + 1 == batches.len() {
            largest = largest.max(chain.commit()?.map_or(0, <[u8]>::len));
            stored += 1;
            last_store = Instant::now();
        }
        if i % 400 == 0 {
            eprintln!("{what}: {} of {events} events", i * BATCH);
        }
    }
    let (elapsed, cpu) = (started.elapsed(), cpu_time("self") - cpu_before);
    let rss_after = memory_kib("self", "VmRSS");
    println!("aggregate pipeline (storyforge-aggregates), in-process, {what}, batches of {BATCH}, the state taken once a second");
    println!("  events:                {events} ({} bytes on average)", bytes / events.max(1));
    println!("  events/s:              {:.0}", events as f64 / elapsed.as_secs_f64());
    println!("  CPU per event:         {:.1} µs", cpu.as_secs_f64() * 1e6 / events.max(1) as f64);
    println!("  rollups published:     {rollups}");
    println!("  state taken:           {stored} times, {largest} bytes at the largest");
    println!(
        "  resident memory:       {rss_before} KiB before the events (inputs built), {rss_after} KiB after: {:.0} bytes per event",
        (rss_after.saturating_sub(rss_before) * 1024) as f64 / events.max(1) as f64
    );
    Ok(())
}

fn analytics(name: &str, at_ms: i64, mut body: serde_json::Value) -> Event {
    let fields = body.as_object_mut().expect("an object");
    fields.insert("event".into(), name.into());
    fields.insert("server_ts".into(), sluice_kit::time::format_rfc3339(at_ms).into());
    Event { subject: format!("storyforge.analytics.{name}"), headers: Vec::new(), body: serde_json::to_vec(&body).unwrap() }
}

/// One of `options`, the `n`th round.
fn pick<'a>(options: &[&'a str], n: usize) -> &'a str {
    options[n % options.len()]
}

/// `events` events of one day, in batches: every tenth a sign-up, every
/// tenth a locked scene of the sign-up six events before, the rest of users
/// of their own.
fn day(events: usize) -> Vec<Vec<Event>> {
    let step_ms = (86_400_000 / events as i64).max(1);
    let vendors = ["sf-video-1", "sf-video-2", "sf-video-3", "sf-storyboard-1"];
    let experiments = |n: usize| json!({ "onboarding_copy": pick(&["A", "B"], n % 2), "upsell_timing": pick(&["scene_6", "scene_8"], n / 2 % 2) });
    let all: Vec<Event> = (0..events)
        .map(|n| {
            let at = DAY_MS + n as i64 * step_ms;
            let user = format!("user-{n}");
            match n % 10 {
                9 => analytics("user_signed_up", at, json!({ "user_id": user, "source": pick(&["ads", "organic", "referral"], n % 3), "goal": pick(&["creator", "marketer", "filmmaker"], n / 3 % 3), "country": "BR", "experiment_assignments": experiments(n) })),
                5 if n >= 6 => analytics("scene_locked", at, json!({ "user_id": format!("user-{}", n - 6), "iterations_count": n % 7, "consistency_score": 0.8 + (n % 20) as f64 / 100.0, "experiment_assignments": experiments(n) })),
                0 | 1 | 2 | 5 => analytics(
                    "scene_generated",
                    at,
                    json!({
                        "user_id": user, "model_vendor": vendors[n % 4], "provider_route": if n % 11 == 0 { "fallback" } else { "primary" },
                        "safety_mode": if n % 13 == 0 { "mature" } else { "default" }, "latency_ms": 20_000 + (n * 7919) % 90_000,
                        "duration_s": 5 + n % 25, "cache_hit": pick(&["l1", "l2", "miss"], n % 3), "experiment_assignments": experiments(n),
                    }),
                ),
                3 => analytics("export_succeeded", at, json!({ "user_id": user, "format": pick(&["tiktok", "reel"], n % 2), "experiment_assignments": experiments(n) })),
                4 => analytics("export_failed", at, json!({ "user_id": user, "format": "tiktok", "error_code": pick(&["E_RENDER", "E_TIMEOUT"], n % 2), "stage": "synthesis" })),
                6 => analytics("payment_succeeded", at, json!({ "user_id": user, "plan": pick(&["pro", "team"], n % 2), "currency": "USD", "amount": 19.99 })),
                7 => analytics("credit_balance_changed", at, json!({ "user_id": user, "delta": -25, "reason": "generation" })),
                _ => analytics("brain_selected", at, json!({ "user_id": user, "brain_id": format!("brain-{}", n % 40), "surface": "gallery" })),
            }
        })
        .collect();
    all.chunks(BATCH).map(<[Event]>::to_vec).collect()
}

/// `events` sign-ups spread over 40 hours: none leaves the activation's
/// state before the last has come.
fn sign_ups(events: usize) -> Vec<Vec<Event>> {
    let step_ms = (40 * 3_600_000 / events as i64).max(1);
    let all: Vec<Event> = (0..events)
        .map(|n| {
            analytics(
                "user_signed_up",
                DAY_MS + n as i64 * step_ms,
                json!({ "user_id": format!("{n:032x}"), "source": pick(&["ads", "organic"], n % 2), "goal": pick(&["creator", "marketer", "filmmaker"], n % 3) }),
            )
        })
        .collect();
    all.chunks(BATCH).map(<[Event]>::to_vec).collect()
}

/// A pipeline file of the streams and the aggregates pipeline of
/// storyforge.toml alone, its plugins found from `target/bench`.
fn aggregates_only(root: &Path, every_batch: bool) -> anyhow::Result<std::path::PathBuf> {
    let mut text = std::fs::read_to_string(root.join("pipelines/storyforge.toml"))?;
    if every_batch {
        text = text.replace("state_every = \"1s\"", "");
    }
    let first_pipeline = text.find("[[pipeline]]").expect("storyforge.toml has pipelines");
    let aggregates = text.find("# Rollups for the dashboards").expect("storyforge.toml has the aggregates");
    let file = format!("{}{}", &text[..first_pipeline], &text[aggregates..]).replace("../target/wasm32-wasip2/release", "../wasm32-wasip2/release");
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("storyforge-aggregates.toml");
    std::fs::write(&path, file)?;
    Ok(path)
}

fn over_nats(root: &Path, batches: Vec<Vec<Event>>, every_batch: bool) -> anyhow::Result<()> {
    let events: usize = batches.iter().map(Vec::len).sum();
    let file = aggregates_only(root, every_batch)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let server = ManagedServer::start().await?;
        let sluice =
            Sluice::command(&["run", file.to_str().unwrap(), "--nats", &server.url, "--no-watch", "--stats-interval", "1s"]).echo_problems().started(1);
        let pid = sluice.pid().to_string();
        let cpu_before = cpu_time(&pid);
        let client = async_nats::connect(&server.url).await?;
        let jetstream = async_nats::jetstream::new(client);
        let started = Instant::now();
        support::publish_stored(&jetstream, batches.into_iter().flatten().map(|event| (event.subject, event.body))).await;
        let published = started.elapsed();
        tokio::task::block_in_place(|| sluice.wait_for_count("storyforge-aggregates", "received", events as u64, Duration::from_secs(900)));
        let (elapsed, cpu) = (started.elapsed(), cpu_time(&pid) - cpu_before);
        let peak = memory_kib(&pid, "VmHWM");
        sluice.terminate();
        server.stop().await;
        let stored = if every_batch { "after every batch" } else { "once a second" };
        println!("aggregate pipeline (storyforge-aggregates) alone, sluice run over NATS, JetStream in and out, state stored {stored}");
        println!("  events:                {events} (published in {:.1} s)", published.as_secs_f64());
        println!(
            "  events/s:              {:.0} (first publish to last event counted, within the 1 s progress interval)",
            events as f64 / elapsed.as_secs_f64()
        );
        println!("  CPU per event:         {:.1} µs (the sluice process)", cpu.as_secs_f64() * 1e6 / events.max(1) as f64);
        println!("  sluice peak resident memory: {peak} KiB");
        Ok(())
    })
}
