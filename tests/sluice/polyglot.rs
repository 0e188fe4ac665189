//! Plugins in Python and JavaScript beside Rust: the same `tag` logic in
//! three languages gives byte-identical outputs and dead letters over a real
//! nats-server, the pipeline of three languages passes its `sluice test`
//! cases, and a component built without the SDK that lets an exception
//! escape traps with the exception and its line in the dead letter, while
//! the events around it flow on. Bodies at the host's limits (deepest,
//! largest, widest) go through each language to the same bytes, and an
//! interpreter under a memory cap it cannot start in is refused, saying so.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{Collector, Nats, Pipeline, PipelineFile, Sluice, Workspace, json, root};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn the_pipeline_of_three_languages_passes_its_cases() {
    let file = root().join("pipelines/polyglot.toml");
    let (status, log) = Sluice::command(&["test", file.to_str().unwrap()]).wait();
    assert!(status.success() && log.contains("5 passed, 0 failed"), "{log}");
}

/// The bodies each language is given: plain, with numbers whose form must
/// survive (floats that are whole, integers past 2^53, exponents), text with
/// escapes and characters past U+FFFF, nesting, refusals, and floats at the
/// edges of each notation.
fn bodies() -> Vec<String> {
    let mut bodies = Vec::new();
    for n in 0..60 {
        bodies.push(match n % 6 {
            0 => format!(r#"{{"event":"signed_up","n":{n},"plan":"free"}}"#),
            1 => format!(r#"{{"n":{n},"plan":"free"}}"#),
            2 => format!(r#"{{"event":"scored","n":{n},"score":2.0,"big":18446744073709551615,"small":-9223372036854775808,"tiny":1e-7,"huge":1.5e300}}"#),
            3 => format!(r#"{{"event":"said","n":{n},"text":"é ✓ 😀 \"q\" \\ \n\u0001","𝒳":1,"z":0}}"#),
            4 => format!(r#"{{"event":"nested","n":{n},"deep":{{"b":[1.0,{{"y":2,"x":1}}],"a":null}}}}"#),
            _ => {
                format!(r#"{{"event":"floats","n":{n},"values":[0.1,-0.0,1e16,1e15,123456.0,5e-324,1.7976931348623157e308,0.00001,0.000001,100.0,-2.5e-8,3]}}"#)
            }
        });
    }
    bodies
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_logic_in_rust_python_and_javascript_gives_the_same_bytes_over_nats() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let config = r#"{ require = ["event"], set = { mark = 1.0, by = "tag" } }"#;
    let mut file = PipelineFile::new();
    for (lang, component) in [("rust", "tag"), ("python", "tag_py"), ("js", "tag_js")] {
        let pipeline = Pipeline::core(lang, &format!("in.{lang}.>"))
            .set(&format!("dead_letter = \"dlq.{lang}\""))
            .stage("tag", component, config)
            .route(&format!("out.{lang}.{{n}}"));
        file = file.pipeline(pipeline);
    }
    let sluice = Sluice::run(&workspace.write_pipeline(file.toml()), nats.url(), 3);
    let mut outputs = Collector::subscribe(&nats, "out.>").await;
    let mut letters = Collector::subscribe(&nats, "dlq.>").await;

    let bodies = bodies();
    for lang in ["rust", "python", "js"] {
        for (n, body) in bodies.iter().enumerate() {
            nats.client.publish(format!("in.{lang}.{n}"), body.clone().into()).await.unwrap();
        }
    }
    let refused = bodies.iter().filter(|b| !b.contains(r#""event""#)).count();
    let outputs = outputs.take(3 * (bodies.len() - refused), WAIT).await;
    let letters = letters.take(3 * refused, WAIT).await;
    sluice.terminate();

    // By event number, what each language sent out.
    let mut by_n: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for message in &outputs {
        let (lang, n) = message.subject.strip_prefix("out.").unwrap().split_once('.').unwrap();
        by_n.entry(n.to_string()).or_default().insert(lang.to_string(), message.payload.to_vec());
    }
    assert_eq!(by_n.len(), bodies.len() - refused);
    for (n, outs) in &by_n {
        let rust = String::from_utf8_lossy(&outs["rust"]);
        assert_eq!(String::from_utf8_lossy(&outs["python"]), rust, "event {n}: Python wrote other bytes than Rust");
        assert_eq!(String::from_utf8_lossy(&outs["js"]), rust, "event {n}: JavaScript wrote other bytes than Rust");
    }
    let scored = String::from_utf8_lossy(&by_n["2"]["rust"]).into_owned();
    assert_eq!(
        scored,
        r#"{"big":18446744073709551615,"by":"tag","event":"scored","huge":1.5e+300,"mark":1.0,"n":2,"score":2.0,"small":-9223372036854775808,"tiny":1e-7}"#
    );

    // The refusals: the same code, property and message from each.
    let mut reasons: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for letter in &letters {
        let letter = json(letter);
        let lang = letter["pipeline"].as_str().unwrap().to_string();
        reasons.entry(lang).or_default().push((
            letter["subject"].as_str().unwrap().rsplit('.').next().unwrap().to_string(),
            format!("{} {} {}", letter["code"], letter["property"], letter["message"]),
        ));
    }
    for reasons in reasons.values_mut() {
        reasons.sort();
    }
    assert_eq!(reasons["python"], reasons["rust"]);
    assert_eq!(reasons["js"], reasons["rust"]);
    assert_eq!(reasons["rust"][0].1, r#""missing_property" "event" "required property `event` is absent""#);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exception_that_escapes_a_component_is_in_its_dead_letter_and_the_other_events_flow_on() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let python = Pipeline::core("python", "in.python.>").set("dead_letter = \"dlq.python\"").stage("raises", "raises_py", "");
    let js = Pipeline::core("js", "in.js.>").set("dead_letter = \"dlq.js\"").stage("throws", "throws_js", "");
    let file = PipelineFile::new().pipeline(python).pipeline(js);
    let sluice = Sluice::run(&workspace.write_pipeline(file.toml()), nats.url(), 2);
    let mut outputs = Collector::subscribe(&nats, "out.>").await;
    let mut letters = Collector::subscribe(&nats, "dlq.>").await;

    for n in 0..20 {
        let bad = n % 5 == 2;
        let python = if bad { r#"{"n":"seven"}"#.to_string() } else { format!(r#"{{"n":{n}}}"#) };
        let js = if bad { r#"{"n":1}"#.to_string() } else { format!(r#"{{"user":{{"name":"u{n}"}}}}"#) };
        nats.client.publish(format!("in.python.{n}"), python.into()).await.unwrap();
        nats.client.publish(format!("in.js.{n}"), js.into()).await.unwrap();
    }
    let letters = letters.take(8, WAIT).await;
    let outputs = outputs.take(32, WAIT).await;
    let log = sluice.terminate();

    let mut subjects: Vec<&str> = outputs.iter().map(|m| m.subject.as_str()).collect();
    subjects.sort();
    let mut expected: Vec<String> = (0..20).filter(|n| n % 5 != 2).flat_map(|n| [format!("out.{n}"), format!("out.u{n}")]).collect();
    expected.sort();
    assert_eq!(subjects, expected, "every event that does not fail goes out, once");
    for letter in &letters {
        let letter = json(letter);
        assert_eq!(letter["code"], "trap", "{letter}");
        let message = letter["message"].as_str().unwrap();
        let reason = match letter["pipeline"].as_str().unwrap() {
            "python" => "ValueError: invalid literal for int() with base 10: 'seven' (at app.py:13 in parse)",
            _ => r#"can't access property "name", value.user is undefined (at app.js:7:3 in parse)"#,
        };
        assert!(message.ends_with(&format!("the plugin's last words: {reason}")), "{message}\n{log}");
    }
}

/// Bodies at the host's limits: nested as deep as it admits (128), as large
/// (1 MiB, the default `max_event_bytes`), as wide (20 000 keys) and as long
/// (50 000 numbers) as fits, beside a plain one.
fn bodies_at_the_limits() -> Vec<(&'static str, Vec<u8>)> {
    let deep = format!(r#"{{"event":"deep","d":{}{}}}"#, r#"{"a":"#.repeat(126) + "1", "}".repeat(126));
    let large = format!(r#"{{"event":"large","text":"{}"}}"#, "é".repeat(((1 << 20) - 64) / 2));
    let wide = format!(r#"{{"event":"wide",{}}}"#, (0..20_000).map(|n| format!(r#""k{n}":{n}"#)).collect::<Vec<_>>().join(","));
    let long = format!(r#"{{"event":"long","values":[{}]}}"#, (0..50_000).map(|n| format!("{}.5", n)).collect::<Vec<_>>().join(","));
    let plain = r#"{"event":"plain","n":1}"#.to_string();
    vec![("deep", deep.into_bytes()), ("large", large.into_bytes()), ("wide", wide.into_bytes()), ("long", long.into_bytes()), ("plain", plain.into_bytes())]
}

#[test]
fn python_and_javascript_stages_take_bodies_at_the_hosts_limits_as_rust_does() {
    let bodies = bodies_at_the_limits();
    assert!(bodies[1].1.len() <= 1 << 20 && bodies[1].1.len() > (1 << 20) - 100, "the large body is just under 1 MiB");
    let mut written: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
    for component in ["tag", "tag_py", "tag_js"] {
        // What is asserted is the bytes, not the speed: a time budget that
        // a busy machine cannot break (a batch that breaks it is run again
        // event by event, and would pass, but count a fault).
        let toml = format!(
            "[[pipeline]]\nname = \"limits\"\ninput = {{ subject = \"in.>\", mode = \"core\" }}\ndead_letter = \"dlq\"\n\
             [[pipeline.stage]]\nname = \"tag\"\ncomponent = \"{{plugin:{component}}}\"\nconfig = {{ set = {{ by = \"tag\" }} }}\nlimits = {{ time = \"10s\" }}\n\
             [[pipeline.stage]]\nname = \"route\"\ncomponent = \"{{plugin:route}}\"\nconfig = {{ subject = \"out.{{event}}\" }}\n"
        );
        let mut chain = sluice::pipeline::Chain::start(crate::chain::prepare(&toml).expect("version")).expect("chain");
        let batch: Vec<sluice::plugin::Event> =
            bodies.iter().map(|(name, body)| sluice::plugin::Event { subject: format!("in.{name}"), headers: vec![], body: body.clone() }).collect();
        let result = chain.process(&batch).expect("batch");
        assert!(result.rejects.is_empty(), "{component}: {:?}", result.rejects.iter().map(|r| (&r.code, &r.message)).collect::<Vec<_>>());
        assert_eq!(result.faults, 0, "{component}");
        let mut outputs: Vec<_> = result.outputs.into_iter().map(|o| (o.origin, o.event.body)).collect();
        outputs.sort();
        assert_eq!(outputs.len(), bodies.len(), "{component}: one output per event");
        written.insert(component, outputs.into_iter().map(|(_, body)| body).collect());
    }
    for (n, (name, _)) in bodies.iter().enumerate() {
        assert!(written["tag_py"][n] == written["tag"][n], "{name}: Python wrote other bytes than Rust");
        assert!(written["tag_js"][n] == written["tag"][n], "{name}: JavaScript wrote other bytes than Rust");
    }
}

#[test]
fn an_interpreter_under_a_memory_cap_it_cannot_start_in_is_refused_with_the_cap() {
    for component in ["tag_py", "tag_js"] {
        let toml = format!(
            "[[pipeline]]\nname = \"small\"\ninput = {{ subject = \"in.>\", mode = \"core\" }}\ndead_letter = \"dlq\"\n\
             [[pipeline.stage]]\nname = \"tag\"\ncomponent = \"{{plugin:{component}}}\"\nlimits = {{ memory = \"4MiB\" }}\n\
             [[pipeline.stage]]\nname = \"route\"\ncomponent = \"{{plugin:route}}\"\nconfig = {{ subject = \"out\" }}\n"
        );
        let error = format!("{:#}", crate::chain::prepare(&toml).err().expect("refused"));
        assert!(error.contains("stage `tag`") && error.contains("memory cap of 4 MiB"), "{component}: {error}");
    }
}
