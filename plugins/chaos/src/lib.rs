//! `chaos`: a deliberately hostile plugin for the host's own tests.
//!
//! It passes every event through unchanged, except those whose body carries a
//! `"chaos"` property, which make it misbehave on purpose:
//! - `"trap"`: panic (a trap in the host);
//! - `"loop"`: spin forever (the host's time budget must stop it);
//! - `"alloc"`: allocate without bound (the host's memory cap must stop it);
//! - `"reject"`: reject the event with code `chaos`;
//! - `"drop"`: drop it;
//! - `"split"`: emit two copies, on `<subject>.a` and `<subject>.b`;
//! - `"bad_header"`: emit the event with a header NATS cannot carry;
//! - `"flood"`: answer with `count` copies (default a million);
//! - `"bloat"`: answer with the event padded to `bytes` bytes (default 8 MiB);
//! - `"stack"`: recurse until WebAssembly's call stack runs out;
//! - `"shadow_stack"`: recurse with large frames until the stack Rust keeps
//!   in linear memory runs out;
//! - `"metrics"`: declare 40 metrics (a stage may declare 32), give one
//!   label 1 000 values and one of 10 000 bytes, and send three samples the
//!   host cannot take (an unknown handle, no labels, half a count), then
//!   pass the event on; it counts the declarations refused as
//!   `declarations_refused`.
//!
//! Stage config: `config = { fail_init = true }` makes `init` fail, and
//! `init = "loop" | "alloc" | "stack" | "shadow_stack" | "trap"` makes it
//! misbehave so.

use serde::Deserialize;
use sluice_plugin::{ConfigError, Event, Outcome, Transform};

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    fail_init: bool,
    init: Option<String>,
}

#[derive(Deserialize)]
struct Body {
    chaos: Option<String>,
    count: Option<usize>,
    bytes: Option<usize>,
}

struct Chaos;

impl Transform for Chaos {
    const NAME: &'static str = "chaos";
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        if config.fail_init {
            return Err("init failed because the config asked it to".into());
        }
        match config.init.as_deref() {
            Some("loop") => spin(),
            Some("alloc") => hoard(),
            Some("stack") => return Err(format!("unreachable: {}", recurse(0)).into()),
            Some("shadow_stack") => return Err(format!("unreachable: {}", recurse_in_memory(0)).into()),
            Some("trap") => panic!("chaos asked init to trap"),
            _ => {}
        }
        sluice_plugin::log::debug("chaos ready", &[]);
        Ok(Chaos)
    }

    fn process(&mut self, event: Event) -> Outcome {
        misbehave(event)
    }
}

sluice_plugin::transform!(Chaos);

fn misbehave(event: Event) -> Outcome {
    let Some(body) = serde_json::from_slice::<Body>(&event.body).ok() else { return Outcome::Keep };
    match body.chaos.as_deref() {
        Some("trap") => panic!("chaos asked for a trap"),
        Some("loop") => spin(),
        Some("alloc") => hoard(),
        Some("reject") => Outcome::reject("chaos", Some("chaos"), "the event asked to be rejected"),
        Some("drop") => Outcome::Drop("the event asked to be dropped".into()),
        Some("split") => {
            let copy = |suffix: &str| Event { subject: format!("{}.{suffix}", event.subject), ..event.clone() };
            Outcome::Replace(vec![copy("a"), copy("b")])
        }
        Some("bad_header") => Outcome::Replace(vec![Event { headers: vec![("Trace:Id".into(), "a\r\nPUB x 1".into())], ..event }]),
        Some("flood") => Outcome::Replace(vec![event; body.count.unwrap_or(1_000_000)]),
        Some("bloat") => Outcome::Replace(vec![Event { body: padded(&event.body, body.bytes.unwrap_or(8 << 20)), ..event }]),
        Some("stack") => Outcome::Drop(format!("unreachable: {}", recurse(0))),
        Some("shadow_stack") => Outcome::Drop(format!("unreachable: {}", recurse_in_memory(0))),
        Some("metrics") => {
            flood_metrics();
            Outcome::Keep
        }
        _ => {
            sluice_plugin::counters::add("passed", 1);
            Outcome::Keep
        }
    }
}

/// Through the raw import, to reach past what the SDK would refuse first.
fn flood_metrics() {
    use sluice_plugin::bindings::sluice::plugin::metrics as host;
    let metric = |n: usize| host::Metric {
        name: format!("chaos_metric_{n}"),
        help: "What chaos sent".into(),
        kind: host::Kind::Counter,
        labels: vec!["value".into()],
        buckets: Vec::new(),
    };
    let refused = (0..40).filter(|&n| host::declare(&metric(n)).is_err()).count();
    sluice_plugin::counters::add("declarations_refused", refused as u64);
    let sample = |metric: u32, labels: Vec<String>, value: f64| host::Sample { metric, labels, value };
    let mut samples: Vec<host::Sample> = (0..1000).map(|n| sample(0, vec![format!("v{n}")], 1.0)).collect();
    samples.push(sample(0, vec!["x".repeat(10_000)], 1.0));
    samples.extend([sample(999, vec!["v0".into()], 1.0), sample(0, Vec::new(), 1.0), sample(0, vec!["v0".into()], 0.5)]);
    host::observe(&samples);
}

/// `body` (a JSON object) with a `pad` property that makes it `bytes` long.
fn padded(body: &[u8], bytes: usize) -> Vec<u8> {
    let mut padded = body[..body.len() - 1].to_vec();
    padded.extend(b",\"pad\":\"");
    padded.resize(bytes.saturating_sub(2).max(padded.len()), b'x');
    padded.extend(b"\"}");
    padded
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Recursion the optimiser cannot turn into a loop, endless on purpose: it
/// exhausts WebAssembly's own call stack.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    recurse(std::hint::black_box(depth + 1)) + 1
}

/// Recursion with a large frame in linear memory: it runs a Rust plugin's
/// shadow stack (in its memory) out first.
#[allow(unconditional_recursion)]
fn recurse_in_memory(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 256]);
    recurse_in_memory(depth + 1) + frame[0]
}

fn hoard() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}
