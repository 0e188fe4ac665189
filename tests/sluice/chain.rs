//! The batch path in-process: real plugins, no NATS.

use std::path::Path;
use std::sync::Arc;

use sluice::config;
use sluice::pipeline::{Chain, Environment, PipelineVersion};
use sluice::plugin::{Clock, Event, PluginEngine};

use crate::support::{event, expand};

fn engine() -> &'static PluginEngine {
    static ENGINE: std::sync::OnceLock<PluginEngine> = std::sync::OnceLock::new();
    ENGINE.get_or_init(|| PluginEngine::new().expect("engine"))
}

/// A version of the single pipeline in `toml` (with `{plugin:NAME}` expanded).
pub(crate) fn prepare(toml: &str) -> anyhow::Result<Arc<PipelineVersion>> {
    let file = config::parse(Path::new("test.toml"), &expand(toml))?;
    PipelineVersion::prepare(engine(), &file.pipelines[0], &Clock::manual(1_700_000_000_000_000_000), &Environment::process())
}

fn chain(stages: &str) -> Chain {
    let toml = format!(
        r#"
        [[pipeline]]
        name = "test"
        input = {{ subject = "in.>", mode = "core" }}
        dead_letter = "dlq"
        max_event_bytes = "4KiB"
        {stages}
        "#
    );
    Chain::start(prepare(&toml).expect("version")).expect("chain")
}

const CHAOS_THEN_ROUTE: &str = r#"
    [[pipeline.stage]]
    name = "chaos"
    component = "{plugin:chaos}"
    limits = { time = "100ms", memory = "16MiB" }
    [[pipeline.stage]]
    name = "route"
    component = "{plugin:route}"
    config = { subject = "out.{event}" }
"#;

fn input(body: Vec<u8>) -> Event {
    Event { subject: "in.test".into(), headers: vec![], body }
}

#[test]
fn poison_events_alone_go_to_the_dead_letter_subject() {
    let mut chain = chain(CHAOS_THEN_ROUTE);
    let batch: Vec<Event> = (0..12)
        .map(|n| {
            let chaos = match n {
                3 => serde_json::json!({ "chaos": "trap" }),
                6 => serde_json::json!({ "chaos": "loop" }),
                9 => serde_json::json!({ "chaos": "alloc" }),
                _ => serde_json::json!({}),
            };
            input(event(n, chaos))
        })
        .collect();

    let result = chain.process(&batch).expect("batch");

    let origins: Vec<usize> = result.outputs.iter().map(|o| o.origin).collect();
    assert_eq!(origins, vec![0, 1, 2, 4, 5, 7, 8, 10, 11]);
    assert!(result.outputs.iter().all(|o| o.event.subject == "out.scene_generated"));
    let rejects: Vec<(usize, &str, &str)> = result.rejects.iter().map(|r| (r.origin, r.stage.as_str(), r.code.as_str())).collect();
    assert_eq!(rejects, vec![(3, "chaos", "trap"), (6, "chaos", "timeout"), (9, "chaos", "memory_limit")]);
    assert!(result.rejects[0].message.contains("chaos asked for a trap"), "{}", result.rejects[0].message);
    assert!(result.rejects[1].message.contains("100ms"), "{}", result.rejects[1].message);
    assert!(result.rejects[2].message.contains("16 MiB"), "{}", result.rejects[2].message);

    // The instance was replaced: the next batch runs normally.
    let next = chain.process(&[input(event(20, serde_json::json!({})))]).expect("next batch");
    assert_eq!(next.outputs.len(), 1);
    assert!(next.rejects.is_empty());
}

#[test]
fn outcomes_keep_replace_drop_and_reject() {
    let mut chain = chain(
        r#"
        [[pipeline.stage]]
        name = "chaos"
        component = "{plugin:chaos}"
        [[pipeline.stage]]
        name = "route"
        component = "{plugin:route}"
        config = { subject = "out.{event}", drop = ["heartbeat"] }
        "#,
    );
    let batch = vec![
        input(event(0, serde_json::json!({ "chaos": "split" }))),
        input(event(1, serde_json::json!({ "event": "heartbeat" }))),
        input(event(2, serde_json::json!({ "chaos": "reject" }))),
        input(br#"{"user_id":"u-1"}"#.to_vec()),
        input(event(4, serde_json::json!({}))),
    ];
    let result = chain.process(&batch).expect("batch");

    // The split yields two events; route then sends both to the event's subject.
    let outputs: Vec<(usize, &str)> = result.outputs.iter().map(|o| (o.origin, o.event.subject.as_str())).collect();
    assert_eq!(outputs, vec![(0, "out.scene_generated"), (0, "out.scene_generated"), (4, "out.scene_generated")]);
    assert_eq!(result.dropped, 1);
    let rejects: Vec<(usize, &str, &str, Option<&str>)> =
        result.rejects.iter().map(|r| (r.origin, r.stage.as_str(), r.code.as_str(), r.property.as_deref())).collect();
    assert_eq!(rejects, vec![(2, "chaos", "chaos", Some("chaos")), (3, "route", "missing_property", Some("event"))]);
}

#[test]
fn the_host_refuses_bad_input_before_any_plugin() {
    let mut chain = chain(CHAOS_THEN_ROUTE);
    let batch = vec![
        input(vec![]),
        input(vec![0xff, 0xfe, b'{']),
        input(b"not json".to_vec()),
        input(b"[1, 2]".to_vec()),
        input(b"{\"event\": ".to_vec()),
        input(event(5, serde_json::json!({ "pad": "x".repeat(5000) }))),
        input(event(6, serde_json::json!({}))),
    ];
    let result = chain.process(&batch).expect("batch");
    let rejects: Vec<(usize, &str, &str)> = result.rejects.iter().map(|r| (r.origin, r.stage.as_str(), r.code.as_str())).collect();
    assert_eq!(
        rejects,
        vec![
            (0, "input", "empty"),
            (1, "input", "malformed"),
            (2, "input", "malformed"),
            (3, "input", "malformed"),
            (4, "input", "malformed"),
            (5, "input", "too_large")
        ]
    );
    assert!(result.rejects[5].message.contains("at most 4096"), "{}", result.rejects[5].message);
    assert_eq!(result.outputs.len(), 1);
    assert_eq!(result.outputs[0].origin, 6);
}

#[test]
fn an_output_that_would_feed_the_input_is_refused() {
    // chaos keeps the event, so it would leave on its input subject.
    let mut chain = chain("[[pipeline.stage]]\nname = \"chaos\"\ncomponent = \"{plugin:chaos}\"");
    let result = chain.process(&[input(event(0, serde_json::json!({})))]).expect("batch");
    assert!(result.outputs.is_empty());
    assert_eq!(result.rejects[0].stage, "output");
    assert_eq!(result.rejects[0].code, "loop");
}

#[test]
fn a_plugin_cannot_emit_a_header_nats_would_refuse() {
    let mut chain = chain(CHAOS_THEN_ROUTE);
    let result = chain.process(&[input(event(0, serde_json::json!({ "chaos": "bad_header" }))), input(event(1, serde_json::json!({})))]).expect("batch");
    assert_eq!(result.outputs.len(), 1);
    assert_eq!(result.outputs[0].origin, 1);
    assert_eq!((result.rejects[0].origin, result.rejects[0].stage.as_str(), result.rejects[0].code.as_str()), (0, "output", "bad_header"));
}

#[test]
fn broken_and_foreign_components_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("empty.wasm", vec![], "the file is empty"),
        ("text.wasm", b"hello".to_vec(), "not WebAssembly"),
        ("core.wasm", b"\0asm\x01\0\0\0".to_vec(), "not a valid WebAssembly component"),
        ("tally.wasm", std::fs::read(crate::support::plugin("tally")).unwrap(), "the component is a sink, and a sink can only be a pipeline's last stage"),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let toml = format!(
            "[[pipeline]]\nname = \"p\"\ninput = {{ subject = \"in\", mode = \"core\" }}\ndead_letter = \"dlq\"\n\
             [[pipeline.stage]]\nname = \"s\"\ncomponent = {:?}\n\
             [[pipeline.stage]]\nname = \"route\"\ncomponent = \"{{plugin:route}}\"\nconfig = {{ subject = \"out\" }}\n",
            path.to_str().unwrap()
        );
        let error = format!("{:#}", prepare(&toml).err().unwrap_or_else(|| panic!("{name} must be refused")));
        assert!(error.contains(expected), "{name}: expected {expected:?} in: {error}");
        assert!(error.contains("stage `s`"), "{name}: the error names the stage: {error}");
    }
}

#[test]
fn an_init_that_refuses_its_config_stops_the_version() {
    let toml = "[[pipeline]]\nname = \"p\"\ninput = { subject = \"in\", mode = \"core\" }\ndead_letter = \"dlq\"\n\
                [[pipeline.stage]]\nname = \"r\"\ncomponent = \"{plugin:route}\"\nconfig = { subjekt = \"x\" }\n";
    let error = format!("{:#}", prepare(toml).err().expect("refused"));
    assert!(error.contains("init refused its config") && error.contains("subjekt"), "{error}");
}

#[test]
fn floods_bloat_and_a_stack_overflow_lose_only_their_own_event() {
    let mut chain = chain(
        r#"
        [[pipeline.stage]]
        name = "chaos"
        component = "{plugin:chaos}"
        limits = { outputs = 100, output_bytes = "16KiB" }
        [[pipeline.stage]]
        name = "route"
        component = "{plugin:route}"
        config = { subject = "out.{event}" }
        "#,
    );
    let hostile = |n: usize| match n {
        1 => serde_json::json!({ "chaos": "flood", "count": 101 }),
        2 => serde_json::json!({ "chaos": "flood", "count": 100 }),
        4 => serde_json::json!({ "chaos": "bloat", "bytes": 16385 }),
        5 => serde_json::json!({ "chaos": "bloat", "bytes": 3000 }),
        7 => serde_json::json!({ "chaos": "stack" }),
        _ => serde_json::json!({}),
    };
    let batch: Vec<Event> = (0..10).map(|n| input(event(n, hostile(n)))).collect();
    let result = chain.process(&batch).expect("batch");

    let rejects: Vec<(usize, &str, &str)> = result.rejects.iter().map(|r| (r.origin, r.stage.as_str(), r.code.as_str())).collect();
    assert_eq!(rejects, vec![(1, "chaos", "output_limit"), (4, "chaos", "output_limit"), (7, "chaos", "trap")]);
    assert!(result.rejects[0].message.contains("101 events for one input event; the stage allows 100 (limits.outputs)"), "{}", result.rejects[0].message);
    assert!(result.rejects[1].message.contains("the stage allows 16384 (limits.output_bytes)"), "{}", result.rejects[1].message);
    assert!(result.rejects[2].message.contains("call stack exhausted"), "{}", result.rejects[2].message);
    let mut per_input = [0; 10];
    for output in &result.outputs {
        per_input[output.origin] += 1;
    }
    assert_eq!(per_input, [1, 0, 100, 1, 0, 1, 1, 0, 1, 1], "the flood at the limit and the bloat under it pass");
}

#[test]
fn a_million_outputs_for_one_event_is_stopped_by_the_default_limits() {
    let mut chain = chain(CHAOS_THEN_ROUTE.replace(r#"limits = { time = "100ms", memory = "16MiB" }"#, "").as_str());
    let batch = vec![input(event(0, serde_json::json!({ "chaos": "flood" }))), input(event(1, serde_json::json!({})))];
    let result = chain.process(&batch).expect("batch");
    let rejects: Vec<(usize, &str)> = result.rejects.iter().map(|r| (r.origin, r.code.as_str())).collect();
    // A million events do not fit the default 64 MiB of memory; fewer would
    // be stopped by the default of 1000 events per input event.
    assert!(rejects == [(0, "memory_limit")] || rejects == [(0, "output_limit")], "{rejects:?}");
    assert_eq!(result.outputs.iter().map(|o| o.origin).collect::<Vec<_>>(), [1]);
}

#[test]
fn an_init_that_loops_allocates_traps_or_overflows_its_stack_stops_the_version_with_the_reason() {
    for (init, reason) in [
        ("loop", "ran longer than its time budget of 200ms"),
        ("alloc", "more than its memory cap of 16 MiB"),
        ("trap", "chaos asked init to trap"),
        ("stack", "call stack exhausted"),
        ("shadow_stack", "the plugin trapped"),
    ] {
        let toml = format!(
            "[[pipeline]]\nname = \"p\"\ninput = {{ subject = \"in\", mode = \"core\" }}\ndead_letter = \"dlq\"\n\
             [[pipeline.stage]]\nname = \"chaos\"\ncomponent = \"{{plugin:chaos}}\"\nlimits = {{ time = \"200ms\", memory = \"16MiB\" }}\nconfig = {{ init = \"{init}\" }}\n"
        );
        let error = format!("{:#}", prepare(&toml).err().expect("refused"));
        assert!(error.contains("init failed") && error.contains(reason), "init = {init:?}: {error}");
    }
}

/// A pipeline that counts events in the `tally` sink.
fn tally_chain() -> Chain {
    let toml = "[[pipeline]]\nname = \"count\"\ninput = { subject = \"in.>\", mode = \"core\" }\ndead_letter = \"dlq\"\nworkers = 1\n\
                [[pipeline.stage]]\nname = \"tally\"\ncomponent = \"{plugin:tally}\"\nconfig = { subject_prefix = \"counts\" }\n";
    Chain::start(prepare(toml).expect("version")).expect("chain")
}

fn on(subject: &str) -> Event {
    Event { subject: subject.into(), headers: vec![], body: event(0, serde_json::json!({})) }
}

/// The counts in the summaries a tick emits.
fn summary(events: &[Event]) -> serde_json::Value {
    assert_eq!(events.len(), 1, "one summary per tick");
    assert_eq!(events[0].subject, "counts.summary");
    serde_json::from_slice::<serde_json::Value>(&events[0].body).unwrap()["counts"].clone()
}

#[test]
fn a_sink_keeps_state_between_batches_and_speaks_on_tick() {
    let mut chain = tally_chain();
    let first = chain.process(&[on("in.a"), on("in.a"), on("in.b")]).expect("batch");
    assert!(first.outputs.is_empty() && first.rejects.is_empty(), "a sink consumes what it is given");
    chain.process(&[on("in.a")]).expect("batch");
    assert_eq!(summary(&chain.tick(1).expect("tick")), serde_json::json!({ "in.a": 3, "in.b": 1 }));
    assert!(chain.tick(2).expect("tick").is_empty(), "nothing new, nothing said");
}

#[test]
fn a_new_version_takes_over_the_sink_state() {
    let mut old = tally_chain();
    old.process(&[on("in.a"), on("in.b")]).expect("batch");
    old.commit().expect("the sink gives its state");
    // A batch whose outputs were not published is not handed over.
    old.process(&[on("in.c")]).expect("batch");
    let mut new = tally_chain();
    new.take_over(old.hand_over().expect("the sink gives its state")).expect("the state is accepted");
    new.process(&[on("in.a")]).expect("batch");
    assert_eq!(summary(&new.tick(1).expect("tick")), serde_json::json!({ "in.a": 2, "in.b": 1 }));
}

#[test]
fn a_sink_rolled_back_forgets_the_batch_that_was_not_published() {
    let mut chain = tally_chain();
    chain.process(&[on("in.a")]).expect("batch");
    chain.commit().expect("the sink gives its state");
    chain.process(&[on("in.a"), on("in.b")]).expect("batch");
    // Publishing that batch failed: it will be given again.
    chain.rollback().expect("restarts from the committed state");
    chain.process(&[on("in.a"), on("in.b")]).expect("batch");
    assert_eq!(summary(&chain.tick(1).expect("tick")), serde_json::json!({ "in.a": 2, "in.b": 1 }));
}

#[test]
fn a_sink_runs_alone_at_the_end_of_a_pipeline() {
    let several_workers = "[[pipeline]]\nname = \"count\"\ninput = { subject = \"in.>\", mode = \"core\" }\ndead_letter = \"dlq\"\nworkers = 3\n\
                           [[pipeline.stage]]\nname = \"tally\"\ncomponent = \"{plugin:tally}\"\n";
    let error = format!("{:#}", prepare(several_workers).err().expect("refused"));
    assert!(error.contains("ends in a sink, which keeps its state in one instance: set `workers = 1` (it has 3)"), "{error}");
}
