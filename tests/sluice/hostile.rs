//! Hostile input of every kind a producer can send, generated: random bytes,
//! nesting thousands of levels deep, strings of hundreds of KiB, broken UTF-8
//! inside strings, NaN and 1e400, duplicate names, control characters in
//! names, properties of the wrong type, white space, mutated events; and
//! pipeline files cut and scrambled. Every input gets exactly one outcome,
//! nothing panics, and the good events around the bad ones come out as they
//! would alone: in-process through the StoryForge chain (property tests,
//! shrunk on failure), and over a real nats-server with thousands of inputs.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use sluice::config;
use sluice::pipeline::{BatchResult, Chain, Environment, PipelineVersion};
use sluice::plugin::{Clock, Event, PluginEngine};

use crate::support::{HASH_KEY, Nats, Sluice, root, wait_until};

/// The sample day's events, one JSON object each.
fn samples() -> &'static [String] {
    static SAMPLES: OnceLock<Vec<String>> = OnceLock::new();
    SAMPLES.get_or_init(|| std::fs::read_to_string(root().join("pipelines/samples/storyforge-day.jsonl")).unwrap().lines().map(str::to_string).collect())
}

/// A sample event picked by `n`, as an object (the day has a few that are
/// not JSON; they are passed over here).
fn sample(n: usize) -> serde_json::Map<String, serde_json::Value> {
    static OBJECTS: OnceLock<Vec<serde_json::Map<String, serde_json::Value>>> = OnceLock::new();
    let objects = OBJECTS.get_or_init(|| samples().iter().filter_map(|line| serde_json::from_str(line).ok()).collect());
    objects[n % objects.len()].clone()
}

fn to_body(object: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    serde_json::to_vec(object).unwrap()
}

/// `text` with `insert` placed inside the string value of its first property
/// whose value is a string.
fn inside_a_string(text: &str, insert: &[u8]) -> Vec<u8> {
    let at = text.find(":\"").map_or(text.len() / 2, |i| i + 2);
    let mut body = text.as_bytes()[..at].to_vec();
    body.extend(insert);
    body.extend(&text.as_bytes()[at..]);
    body
}

/// One hostile (or, for `good`, ordinary) body and the name of its kind.
pub fn hostile() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    let n = any::<usize>();
    prop_oneof![
        2 => (n).prop_map(|n| ("good", samples()[n % samples().len()].clone().into_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(|b| ("random bytes", b)),
        1 => prop::collection::vec(prop::sample::select(vec![b' ', b'\n', b'\t', b'\r']), 0..64).prop_map(|b| ("white space", b)),
        1 => (100usize..20_000, any::<bool>()).prop_map(|(depth, arrays)| {
            let (open, close) = if arrays { ("[", "]") } else { ("{\"a\":", "}") };
            ("deep nesting", format!("{{\"event\":\"scene_generated\",\"a\":{}1{}}}", open.repeat(depth), close.repeat(depth)).into_bytes())
        }),
        1 => (n, 200usize..320).prop_map(|(n, kib)| {
            let mut event = sample(n);
            event.insert("comment".into(), serde_json::Value::String("x".repeat(kib << 10)));
            ("long string", to_body(&event))
        }),
        1 => (n, prop::sample::select(vec![&b"\xff"[..], b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x9f"])).prop_map(|(n, bad)| {
            ("broken UTF-8 in a string", inside_a_string(&samples()[n % samples().len()], bad))
        }),
        1 => (n, prop::sample::select(vec!["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "18446744073709551616", "1e308", "-0"])).prop_map(|(n, number)| {
            let text = &samples()[n % samples().len()];
            ("odd numbers", format!("{},\"latency_ms\":{number}}}", &text[..text.len() - 1]).into_bytes())
        }),
        1 => (n, prop::sample::select(vec!["event", "user_id", "server_ts", "ip"])).prop_map(|(n, name)| {
            let text = &samples()[n % samples().len()];
            ("duplicate names", format!("{},\"{name}\":\"again\"}}", &text[..text.len() - 1]).into_bytes())
        }),
        1 => (n, prop::sample::select(vec!["\\u0000", "\\u0001event", "ev\\u001fent", "\\n", "\\u202e", ""])).prop_map(|(n, name)| {
            let text = &samples()[n % samples().len()];
            ("control characters in names", format!("{{\"{name}\":1,{}", &text[1..]).into_bytes())
        }),
        1 => (n, any::<usize>(), prop::sample::select(vec![
            serde_json::json!(null), serde_json::json!(true), serde_json::json!(-1), serde_json::json!(0.5),
            serde_json::json!("text"), serde_json::json!([1, "a"]), serde_json::json!({ "nested": {} }),
        ])).prop_map(|(n, which, value)| {
            let mut event = sample(n);
            let name = event.keys().nth(which % event.len()).unwrap().clone();
            event.insert(name, value);
            ("wrong types", to_body(&event))
        }),
        1 => (n, prop::collection::vec((any::<usize>(), any::<u8>()), 1..8), any::<Option<usize>>()).prop_map(|(n, flips, cut)| {
            let mut body = samples()[n % samples().len()].clone().into_bytes();
            for (at, byte) in flips {
                let at = at % body.len();
                body[at] = byte;
            }
            if let Some(cut) = cut {
                body.truncate(cut % (body.len() + 1));
            }
            ("mutated events", body)
        }),
    ]
}

fn engine() -> &'static PluginEngine {
    static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PluginEngine::new().expect("engine"))
}

fn storyforge_ingest() -> Chain {
    let file = config::load(&root().join("pipelines/storyforge.toml")).expect("storyforge.toml");
    let spec = file.pipelines.iter().find(|p| p.name == "storyforge-ingest").unwrap();
    let env = Environment::given(BTreeMap::from([("STORYFORGE_HASH_KEY".to_string(), HASH_KEY.to_string())]));
    let version = PipelineVersion::prepare(engine(), spec, &Clock::manual(1_795_000_000_000_000_000), &env).expect("version");
    Chain::start(version).expect("chain")
}

/// What became of one input: where it went, or why it was refused.
fn outcomes(result: &BatchResult, inputs: usize) -> Result<Vec<String>, String> {
    let mut each = vec![Vec::new(); inputs];
    for output in &result.outputs {
        each[output.origin].push(format!("-> {}", output.event.subject));
    }
    for reject in &result.rejects {
        each[reject.origin].push(format!("x {} {}", reject.stage, reject.code));
    }
    let silent = each.iter().filter(|o| o.is_empty()).count();
    if silent != result.dropped {
        return Err(format!("{silent} inputs have no outcome but {} were dropped", result.dropped));
    }
    each.into_iter()
        .enumerate()
        .map(|(i, o)| {
            let rejects = o.iter().filter(|o| o.starts_with("x ")).count();
            if rejects > 1 || (rejects == 1 && o.len() > 1) { Err(format!("input {i} has more than one outcome: {o:?}")) } else { Ok(o.join(", ")) }
        })
        .collect()
}

#[test]
fn every_hostile_body_gets_one_outcome_and_the_good_ones_come_out_as_they_would_alone() {
    let chain = RefCell::new(storyforge_ingest());
    let mut runner = TestRunner::new(Config { cases: 64, failure_persistence: None, ..Config::default() });
    let batches = prop::collection::vec(hostile(), 1..24);
    runner
        .run(&batches, |batch| {
            let events: Vec<Event> =
                batch.iter().map(|(_, body)| Event { subject: "storyforge.raw.web".into(), headers: vec![], body: body.clone() }).collect();
            let mut chain = chain.borrow_mut();
            let result = chain.process(&events).map_err(|e| TestCaseError::fail(format!("the chain failed: {e:#}")))?;
            let together = outcomes(&result, events.len()).map_err(TestCaseError::fail)?;
            for (i, ((kind, _), outcome)) in batch.iter().zip(&together).enumerate() {
                if *kind == "good" {
                    let alone = chain.process(std::slice::from_ref(&events[i])).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
                    let alone = outcomes(&alone, 1).map_err(TestCaseError::fail)?;
                    prop_assert_eq!(outcome, &alone[0], "a good event fares as it would alone");
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Ways to break a pipeline file's text.
fn broken_file(text: &'static str) -> impl Strategy<Value = String> {
    let len = text.len();
    prop_oneof![
        (0..len, 0..len).prop_map(move |(a, b)| format!("{}{}", &text[..a.min(b)], &text[a.max(b)..])),
        (0..len, "[\\PC\\n\\t\"\\[\\]{}=,.#]{1,12}").prop_map(move |(at, junk)| format!("{}{junk}{}", &text[..at], &text[at..])),
        (0..len).prop_map(move |at| text[..at].to_string()),
        (prop::sample::select(vec!["\"", "=", "[", "]", "{", "}", "\n", "0", "-1", "true"]), 0..len, 0..len).prop_map(move |(with, a, b)| format!(
            "{}{with}{}",
            &text[..a.min(b)],
            &text[a.max(b)..]
        )),
    ]
    .prop_map(|mut s: String| {
        // Cuts above may fall inside a character; keep what is whole.
        while std::str::from_utf8(s.as_bytes()).is_err() {
            s.pop();
        }
        s
    })
}

#[test]
fn a_broken_pipeline_file_is_explained_never_a_panic() {
    static TEXT: OnceLock<String> = OnceLock::new();
    let text: &'static str = TEXT.get_or_init(|| std::fs::read_to_string(root().join("pipelines/storyforge.toml")).unwrap());
    let path = root().join("pipelines/storyforge.toml");
    let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
    runner
        .run(&broken_file(text), |broken| {
            if let Err(problems) = config::parse(&path, &broken) {
                let shown = problems.to_string();
                prop_assert!(shown.contains("storyforge.toml"), "problems name the file: {}", shown);
            }
            Ok(())
        })
        .unwrap();
}

/// Input sequences (from the output's message id, `STREAM:sequence:...`).
fn input_sequence(message: &async_nats::Message) -> u64 {
    let id = crate::support::header(message, "Nats-Msg-Id").expect("every output has a message id");
    id.split(':').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("message id {id}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_hostile_inputs_over_nats_get_one_outcome_each_and_hold_up_nothing() {
    const INPUTS: usize = 3000;
    let nats = Nats::start().await;
    let sluice = Sluice::run(&root().join("pipelines/storyforge.toml"), nats.url(), 2);

    let mut runner = TestRunner::deterministic();
    let strategy = hostile();
    let inputs: Vec<(&'static str, Vec<u8>)> = (0..INPUTS).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect();
    nats.publish_stored(inputs.iter().enumerate().map(|(n, (_, body))| (format!("storyforge.raw.hostile.{n}"), body.clone()))).await;

    wait_until(|| async {
        let stream = nats.jetstream.get_stream("STORYFORGE_RAW").await.unwrap();
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream.get_consumer("storyforge-ingest").await.unwrap();
        let info = consumer.info().await.unwrap();
        info.num_pending == 0 && info.num_ack_pending == 0
    })
    .await;

    // One outcome per input: its outputs, or one dead letter.
    let (clean, dead) = (nats.stored("STORYFORGE_CLEAN").await, nats.stored("STORYFORGE_DLQ").await);
    let mut outputs: BTreeMap<u64, usize> = BTreeMap::new();
    for (message, _) in &clean {
        *outputs.entry(input_sequence(message)).or_default() += 1;
    }
    let mut letters: BTreeMap<u64, usize> = BTreeMap::new();
    for (message, _) in &dead {
        *letters.entry(input_sequence(message)).or_default() += 1;
    }
    // With every input waiting from the start, the longest time between two
    // stored outcomes is the longest the pipeline stood still.
    let mut stored_at: Vec<i128> = clean.iter().chain(&dead).map(|(_, at)| *at).collect();
    stored_at.sort();
    let longest_stall_ms = stored_at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0) / 1_000_000;
    let span_ms = (stored_at.last().unwrap() - stored_at[0]) / 1_000_000;
    let mut by_kind: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (n, (kind, _)) in inputs.iter().enumerate() {
        let sequence = n as u64 + 1;
        let (out, dead) = (outputs.get(&sequence).copied().unwrap_or(0), letters.get(&sequence).copied().unwrap_or(0));
        assert!((out > 0) != (dead > 0) && dead <= 1, "input {n} ({kind}) came out {out} times and was dead-lettered {dead} times");
        let entry = by_kind.entry(kind).or_default();
        if out > 0 { entry.0 += 1 } else { entry.1 += 1 }
    }
    assert_eq!(outputs.keys().chain(letters.keys()).copied().collect::<BTreeSet<u64>>().len(), INPUTS, "no outcome for an input that was not sent");

    let pid = sluice.pid();
    let peak_kib: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    let log = sluice.terminate();
    println!(
        "{INPUTS} inputs; by kind (came out, dead-lettered): {by_kind:?}; 0 lost, 0 duplicated; outcomes stored over {span_ms} ms, longest pause between two {longest_stall_ms} ms; sluice peak resident {} MiB",
        peak_kib >> 10
    );
    assert!(peak_kib < 512 << 10, "memory stays bounded: peak {peak_kib} KiB");
    assert!(!log.contains("panicked"), "{log}");
}
