//! The throughput benchmark's swap run (`--swaps`): the StoryForge file on
//! one host at full speed, its ingest swapped for a new version every
//! `SWAP_EVERY` by rewriting a copy of the file, and how long each swap
//! holds output up.

use std::path::Path;
use std::time::{Duration, Instant};

use super::support::Sluice;
use super::{Measured, percentile};

/// How often the swap run writes a new version of the ingest.
const SWAP_EVERY: Duration = Duration::from_millis(1500);

/// One swap of the ingest under load, from when its file was written until
/// the first output of the new version: the longest pause between two
/// outputs in that span, and in as long a span just before the file was
/// written (the pause there is how bursty output is anyway).
pub struct SwapPause {
    pub during: Duration,
    pub before: Duration,
}

/// `pipelines/storyforge.toml`, copied into `dir` with its paths made
/// absolute, for the swap run to rewrite.
pub fn swappable_storyforge(dir: &Path) -> std::path::PathBuf {
    let pipelines = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines").canonicalize().unwrap();
    let text = std::fs::read_to_string(pipelines.join("storyforge.toml")).unwrap();
    let text = text
        .replace("dir = \"../target/wasm32-wasip2/release\"", &format!("dir = {:?}", pipelines.join("../target/wasm32-wasip2/release")))
        .replace("files = \"schemas/storyforge/v1\"", &format!("files = {:?}", pipelines.join("schemas/storyforge/v1")));
    assert!(text.contains(SKEW), "the ingest's enrich stage has {SKEW}, which the swap run changes");
    let file = dir.join("storyforge.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// What the swap run changes in the ingest, back and forth: each change is
/// a new version of the ingest alone.
const SKEW: &str = "max_clock_skew_ms = 300_000";

/// Rewrites `file` every `SWAP_EVERY`, noting when.
pub async fn swap_repeatedly(file: std::path::PathBuf, written: std::sync::Arc<std::sync::Mutex<Vec<Instant>>>) {
    let original = std::fs::read_to_string(&file).unwrap();
    for n in 1.. {
        tokio::time::sleep(SWAP_EVERY).await;
        let text = if n % 2 == 1 { original.replace(SKEW, "max_clock_skew_ms = 300_001") } else { original.clone() };
        let next = file.with_extension("toml.next");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, &file).unwrap();
        written.lock().unwrap().push(Instant::now());
    }
}

/// Each swap's pause: `arrivals` are the outputs in order, with the
/// version that made each.
pub fn swap_pauses(arrivals: &[(Instant, usize)], written: &[Instant]) -> Vec<SwapPause> {
    let longest_gap = |from: Instant, to: Instant| {
        let times: Vec<Instant> = arrivals.iter().map(|(at, _)| *at).filter(|at| (from..=to).contains(at)).collect();
        let edges = std::iter::once(from).chain(times).chain(std::iter::once(to)).collect::<Vec<_>>();
        edges.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    };
    let mut pauses = Vec::new();
    for (at, next) in written.iter().zip(written.iter().skip(1).map(Some).chain(std::iter::once(None))) {
        // The version running when the file was written, and the first output of another after it.
        let Some(running) = arrivals.iter().rev().find(|(t, _)| t <= at).map(|(_, v)| *v) else { continue };
        let Some((swapped, _)) = arrivals.iter().find(|(t, v)| t > at && *v != running && next.is_none_or(|next| t < next)) else { continue };
        let span = *swapped - *at;
        pauses.push(SwapPause { during: longest_gap(*at, *swapped), before: longest_gap(*at - span, *at) });
    }
    pauses
}

pub fn print_swaps(results: &[Measured]) {
    for r in results.iter().filter(|r| !r.swaps.is_empty()) {
        let mut during: Vec<u64> = r.swaps.iter().map(|s| s.during.as_micros() as u64).collect();
        let mut before: Vec<u64> = r.swaps.iter().map(|s| s.before.as_micros() as u64).collect();
        during.sort_unstable();
        before.sort_unstable();
        let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
        println!(
            "
{}: {} swaps taken up under load
",
            r.name,
            r.swaps.len()
        );
        println!("| pause | p50 ms | p99 ms | max ms |");
        println!("|---|---:|---:|---:|");
        let mut start: Vec<u64> = r.worker_swaps.iter().map(|(start, _)| *start).collect();
        let mut paused: Vec<u64> = r.worker_swaps.iter().map(|(_, paused)| *paused).collect();
        start.sort_unstable();
        paused.sort_unstable();
        for (what, sorted) in [
            ("at the collector, while a swap is under way", &during),
            ("at the collector, in as long a span just before it", &before),
            ("a worker's swap: the new version's start, beside (sluice's log)", &start),
            ("a worker's swap: what it held the worker up (sluice's log)", &paused),
        ] {
            println!("| {what} | {} | {} | {} |", ms(percentile(sorted, 0.5)), ms(percentile(sorted, 0.99)), ms(sorted.last().copied().unwrap_or(0)));
        }
    }
}

/// `sluice run` on `file`, watching it.
pub fn start_swapping_sluice(file: &Path, url: &str) -> (Sluice, &'static str) {
    let sluice = Sluice::command(&["run", file.to_str().unwrap(), "--nats", url, "--stats-interval", "60s"]).echo_problems().started(2);
    (sluice, "storyforge-ingest")
}
