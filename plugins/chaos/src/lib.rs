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
//! - `"bad_header"`: emit the event with a header NATS cannot carry.
//!
//! Stage config: `config = { fail_init = true }` makes `init` fail.

use serde::Deserialize;

wit_bindgen::generate!({ world: "transform", path: "../../wit" });

use sluice::plugin::types::Rejection;

#[derive(Default, Deserialize)]
struct Config {
    #[serde(default)]
    fail_init: bool,
}

#[derive(Deserialize)]
struct Body {
    chaos: Option<String>,
}

struct Chaos;

impl Guest for Chaos {
    fn init(config: String) -> Result<(), String> {
        let config: Config = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        if config.fail_init {
            return Err("init failed because the config asked it to".into());
        }
        sluice::plugin::log::log(sluice::plugin::log::Level::Debug, "chaos ready", &[]);
        Ok(())
    }

    fn process(batch: Vec<Event>) -> Vec<Outcome> {
        batch.into_iter().map(misbehave).collect()
    }
}

fn misbehave(event: Event) -> Outcome {
    let chaos = serde_json::from_slice::<Body>(&event.body).ok().and_then(|b| b.chaos);
    match chaos.as_deref() {
        Some("trap") => panic!("chaos asked for a trap"),
        Some("loop") => spin(),
        Some("alloc") => hoard(),
        Some("reject") => Outcome::Reject(Rejection { code: "chaos".into(), property: Some("chaos".into()), message: "the event asked to be rejected".into() }),
        Some("drop") => Outcome::Drop("the event asked to be dropped".into()),
        Some("split") => {
            let copy = |suffix: &str| Event { subject: format!("{}.{suffix}", event.subject), ..event.clone() };
            Outcome::Replace(vec![copy("a"), copy("b")])
        }
        Some("bad_header") => Outcome::Replace(vec![Event { headers: vec![("Trace:Id".into(), "a\r\nPUB x 1".into())], ..event }]),
        _ => {
            sluice::plugin::counters::add("passed", 1);
            Outcome::Keep
        }
    }
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn hoard() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

export!(Chaos);
