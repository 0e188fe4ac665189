//! `sluice test`: runs the test cases declared next to a pipeline file through
//! the real plugins, without NATS, on a clock the cases set, and reports each
//! failing case with what differed.
//!
//! Cases live in `<pipeline>.tests/*.toml` beside the pipeline file (e.g.
//! `pipelines/storyforge.tests/`). A case file:
//!
//! ```toml
//! pipeline = "storyforge-ingest"          # which pipeline of the file (optional if it has one)
//! clock = "2026-11-24T12:00:00Z"          # the host's clock during the cases
//! subject = "storyforge.raw.web"          # input subject (default for every case)
//! env = { STORYFORGE_HASH_KEY = "..." }   # environment the stages are granted
//! defaults = { user_id = "...", platform = "web" }   # merged into every input
//!
//! [[case]]
//! name = "scene_generated is accepted"
//! input = { event = "scene_generated", latency_ms = 48210 }
//! without = ["platform"]                  # defaults left out of this input
//! expect = [{ subject = "storyforge.analytics.scene_generated", body = { cache_hit = "miss" }, absent = ["ip"] }]
//!
//! [[case]]
//! name = "a missing user_id is rejected"
//! input = { event = "scene_generated" }
//! without = ["user_id"]
//! reject = { stage = "validate", code = "missing_property", property = "user_id" }
//! ```
//!
//! A pipeline that ends in a sink (such as `storyforge-alerts`) keeps its state
//! from case to case of one file, so a file tells one story in steps. Such a
//! step usually feeds many events and may move time on:
//!
//! ```toml
//! [[case]]
//! name = "25 slow generations page"
//! series = [{ from = "2026-11-24T10:00:00Z", every = "10s", count = 25, input = { event = "scene_generated", latency_ms = 150000 } }]
//! tick = "2026-11-24T10:30:00Z"           # then tell the sink this time has come
//! expect = [{ subject = "storyforge.alerts.generation_p95", body = { state = "firing" } }]
//! ```
//!
//! Each event of a `series` gets `time_field` (default `server_ts`) set to
//! `from` plus `every` for each event before it; the events of all series of
//! a case go in as one batch, in time order.
//!
//! A case's events go in batches of the pipeline's `max_events`, as they
//! would from NATS; a series holds at most a million events.
//!
//! Every outcome is compared. `expect` lists every output in order; each
//! `body` is matched as a subset (the keys it names must be equal), `absent`
//! keys must not be there, and `contains_none` lists strings no output may
//! contain. `reject` expects exactly one reject, `rejects = [...]` each of
//! several in order, and neither expects none. `dropped = true` expects the
//! one event to be dropped, `dropped = N` that many, and neither none.
//! `input_raw` gives the body as raw text instead (for malformed input).
//!
//! A sink that publishes much (a rollup a minute) is checked on part of it:
//! `only = ["storyforge.aggregates.*.day"]`, for a file or one case, limits
//! `expect` to the outputs on those subjects (NATS wildcards), and
//! `has = { groups = [{ labels = { goal = "creator" }, count = 2 }] }` in an
//! expected output asks that each listed object match (as a subset) an
//! element of the array under that key, in any order.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{self, PipelineSpec};
use crate::pipeline::{BatchResult, Chain, Environment, Output, PipelineVersion, Reject};
use crate::plugin::{Clock, Event, PluginEngine};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    pipeline: Option<String>,
    clock: Option<String>,
    subject: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    defaults: Map<String, Value>,
    /// Subjects (NATS wildcards allowed) whose outputs the cases compare;
    /// outputs on others are left out. Default: every output.
    #[serde(default)]
    only: Vec<String>,
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    subject: Option<String>,
    clock: Option<String>,
    input: Option<Map<String, Value>>,
    input_raw: Option<String>,
    #[serde(default)]
    without: Vec<String>,
    expect: Option<Vec<Expected>>,
    reject: Option<ExpectedReject>,
    rejects: Option<Vec<ExpectedReject>>,
    #[serde(default)]
    dropped: Dropped,
    #[serde(default)]
    contains_none: Vec<String>,
    #[serde(default)]
    series: Vec<Series>,
    tick: Option<String>,
    /// The file's `only`, for this case.
    only: Option<Vec<String>>,
}

/// How many events a case expects dropped: `true` for its one event, or a count.
#[derive(Deserialize, Default)]
#[serde(untagged, expecting = "expected `dropped = true`, `false`, or a count of dropped events")]
enum Dropped {
    #[default]
    None,
    One(bool),
    Count(u64),
}

impl Dropped {
    fn count(&self) -> u64 {
        match self {
            Dropped::None | Dropped::One(false) => 0,
            Dropped::One(true) => 1,
            Dropped::Count(n) => *n,
        }
    }
}

/// The most events one series may make: a case is a story, not a load test.
const MAX_SERIES_EVENTS: usize = 1_000_000;

/// Events one apart in time, for a sink.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Series {
    from: String,
    every: String,
    count: usize,
    #[serde(default = "default_time_field")]
    time_field: String,
    input: Map<String, Value>,
}

fn default_time_field() -> String {
    "server_ts".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    subject: String,
    #[serde(default)]
    body: Map<String, Value>,
    #[serde(default)]
    absent: Vec<String>,
    /// Keys holding arrays, each with elements that must be among them:
    /// each listed object matches an element holding its keys.
    #[serde(default)]
    has: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedReject {
    stage: String,
    code: String,
    property: Option<String>,
    message_contains: Option<String>,
}

/// The totals of a `sluice test` run.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
}

/// Runs every case file of `pipeline_file` (or the given ones), printing a line
/// per failing case and the totals.
pub fn run(pipeline_file: &Path, case_files: &[PathBuf]) -> Result<Summary> {
    let file = config::load(pipeline_file)?;
    let case_files = if case_files.is_empty() { default_case_files(pipeline_file)? } else { case_files.to_vec() };
    let parsed: Vec<(PathBuf, CaseFile)> = case_files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let cases: CaseFile = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e))?;
            Ok((path.clone(), cases))
        })
        .collect::<Result<_>>()?;
    let engine = PluginEngine::new()?;
    let mut summary = Summary::default();
    for (path, cases) in &parsed {
        let spec = pick_pipeline(&file.pipelines, cases.pipeline.as_deref()).with_context(|| path.display().to_string())?;
        let clock = Clock::manual(parse_clock(cases.clock.as_deref())?);
        let version = PipelineVersion::prepare(&engine, spec, &clock, &Environment::given(cases.env.clone()))?;
        let mut chain = Chain::start(version)?;
        let default_subject = cases.subject.clone().unwrap_or_else(|| spec.input.subject().replace(['*', '>'], "test"));
        for case in &cases.case {
            let outcome = parse_clock(case.clock.as_deref().or(cases.clock.as_deref())).map_err(|e| format!("clock: {e:#}")).and_then(|now| {
                clock.set(now);
                run_case(&mut chain, cases, case, &default_subject)
            });
            match outcome {
                Ok(()) => summary.passed += 1,
                Err(diff) => {
                    summary.failed += 1;
                    println!("FAIL {} :: {}\n{}", path.display(), case.name, indent(&diff));
                }
            }
        }
        println!("{}: {} cases", path.display(), cases.case.len());
    }
    println!("{} passed, {} failed", summary.passed, summary.failed);
    Ok(summary)
}

fn default_case_files(pipeline_file: &Path) -> Result<Vec<PathBuf>> {
    let stem = pipeline_file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let folder = pipeline_file.with_file_name(format!("{stem}.tests"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .with_context(|| format!("no test cases: expected a folder {} of *.toml case files", folder.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no *.toml case files in {}", folder.display());
    }
    Ok(files)
}

fn pick_pipeline<'a>(pipelines: &'a [PipelineSpec], name: Option<&str>) -> Result<&'a PipelineSpec> {
    match name {
        Some(name) => pipelines.iter().find(|p| p.name == name).with_context(|| format!("the pipeline file has no pipeline `{name}`")),
        None if pipelines.len() == 1 => Ok(&pipelines[0]),
        None => bail!("the pipeline file has {} pipelines; name one with `pipeline = \"...\"`", pipelines.len()),
    }
}

/// Nanoseconds since the Unix epoch of an RFC 3339 time (default: 2026-01-01).
fn parse_clock(text: Option<&str>) -> Result<u64> {
    let text = text.unwrap_or("2026-01-01T00:00:00Z");
    let time = humantime::parse_rfc3339(text).with_context(|| format!("clock {text:?} is not an RFC 3339 time"))?;
    let since = time.duration_since(std::time::UNIX_EPOCH).map_err(|_| anyhow::anyhow!("time {text:?} is before 1970, which the clock cannot show"))?;
    u64::try_from(since.as_nanos()).map_err(|_| anyhow::anyhow!("time {text:?} is after 2554, which the clock (nanoseconds in 64 bits) cannot show"))
}

/// The input events of a case: its `input` (or `input_raw`), then its series.
fn inputs(file: &CaseFile, case: &Case) -> Result<Vec<Vec<u8>>, String> {
    let merged = |input: &Map<String, Value>| {
        let mut body = file.defaults.clone();
        for name in &case.without {
            body.remove(name);
        }
        body.extend(input.clone());
        body
    };
    let mut bodies = Vec::new();
    match (&case.input, &case.input_raw) {
        (_, Some(raw)) => bodies.push(raw.clone().into_bytes()),
        (Some(input), None) => bodies.push(serde_json::to_vec(&merged(input)).map_err(|e| e.to_string())?),
        (None, None) if case.series.is_empty() && case.tick.is_none() => bodies.push(serde_json::to_vec(&merged(&Map::new())).map_err(|e| e.to_string())?),
        (None, None) => {}
    }
    let mut timed = Vec::new();
    for series in &case.series {
        if series.count > MAX_SERIES_EVENTS {
            return Err(format!("series: count = {} is more than the {MAX_SERIES_EVENTS} events a series may hold", series.count));
        }
        let from = parse_clock(Some(&series.from)).map_err(|e| format!("series: {e:#}"))?;
        let every = humantime::parse_duration(&series.every).map_err(|e| format!("series: every {:?}: {e}", series.every))?;
        for i in 0..series.count {
            let at = u32::try_from(i)
                .ok()
                .and_then(|i| every.checked_mul(i))
                .and_then(|offset| offset.checked_add(Duration::from_nanos(from)))
                .filter(|at| u64::try_from(at.as_nanos()).is_ok())
                .ok_or_else(|| format!("series: event {i} at {} + {i} × {} is past 2554, which the clock cannot show", series.from, series.every))?;
            let at = std::time::UNIX_EPOCH + at;
            let mut body = merged(&series.input);
            body.insert(series.time_field.clone(), Value::String(humantime::format_rfc3339_millis(at).to_string()));
            timed.push((at, serde_json::to_vec(&body).map_err(|e| e.to_string())?));
        }
    }
    // Series interleave in time, as live traffic would.
    timed.sort_by_key(|(at, _)| *at);
    bodies.extend(timed.into_iter().map(|(_, body)| body));
    Ok(bodies)
}

/// Runs one case; the error is the description of what differed.
fn run_case(chain: &mut Chain, file: &CaseFile, case: &Case, default_subject: &str) -> Result<(), String> {
    let subject = case.subject.clone().unwrap_or_else(|| default_subject.to_string());
    let events: Vec<Event> = inputs(file, case)?.into_iter().map(|body| Event { subject: subject.clone(), headers: Vec::new(), body }).collect();
    let mut result = BatchResult::default();
    for (batch, events) in events.chunks(chain.version.spec.max_events).enumerate() {
        let part = chain.process(events).map_err(|e| format!("the pipeline failed: {e:#}"))?;
        let offset = batch * chain.version.spec.max_events;
        result.outputs.extend(part.outputs.into_iter().map(|output| Output { origin: output.origin + offset, ..output }));
        result.rejects.extend(part.rejects.into_iter().map(|reject| Reject { origin: reject.origin + offset, ..reject }));
        result.dropped += part.dropped;
        result.faults += part.faults;
    }
    if let Some(tick) = &case.tick {
        let now = parse_clock(Some(tick)).map_err(|e| format!("tick: {e:#}"))?;
        let emitted = chain.tick(now).map_err(|e| format!("the sink failed on tick: {e:#}"))?;
        result.outputs.extend(emitted.into_iter().map(|event| Output { origin: 0, event }));
    }
    chain.commit().map_err(|e| format!("the sink cannot give its state: {e:#}"))?;
    let only = case.only.as_ref().unwrap_or(&file.only);
    for filter in only {
        crate::subject::check(filter, true).map_err(|e| format!("only: {e}"))?;
    }
    let mut problems = String::new();
    for output in &result.outputs {
        let text = String::from_utf8_lossy(&output.event.body);
        for needle in &case.contains_none {
            if text.contains(needle.as_str()) {
                let _ = writeln!(problems, "output on {} contains {needle:?}: {text}", output.event.subject);
            }
        }
    }
    if !only.is_empty() {
        result.outputs.retain(|output| only.iter().any(|filter| crate::subject::matches(filter, &output.event.subject)));
    }
    check_outputs(case, &result, &mut problems);
    check_rejects(case, &result, &mut problems);
    if case.dropped.count() != result.dropped as u64 {
        let _ = writeln!(problems, "expected {} event(s) dropped, found {}", case.dropped.count(), result.dropped);
    }
    if problems.is_empty() { Ok(()) } else { Err(problems + &describe(&result)) }
}

fn check_outputs(case: &Case, result: &BatchResult, problems: &mut String) {
    let expected = case.expect.as_deref().unwrap_or_default();
    if expected.len() != result.outputs.len() {
        let _ = writeln!(problems, "expected {} output(s), found {}", expected.len(), result.outputs.len());
        return;
    }
    for (i, (want, got)) in expected.iter().zip(&result.outputs).enumerate() {
        if want.subject != got.event.subject {
            let _ = writeln!(problems, "output {i}: expected subject {:?}, found {:?}", want.subject, got.event.subject);
        }
        let body: Map<String, Value> = match serde_json::from_slice(&got.event.body) {
            Ok(body) => body,
            Err(e) => {
                let _ = writeln!(problems, "output {i}: the body is not a JSON object: {e}");
                continue;
            }
        };
        for (key, value) in &want.body {
            match body.get(key) {
                Some(actual) if actual == value => {}
                Some(actual) => {
                    let _ = writeln!(problems, "output {i}: `{key}` expected {value}, found {actual}");
                }
                None => {
                    let _ = writeln!(problems, "output {i}: `{key}` expected {value}, found nothing");
                }
            }
        }
        for key in &want.absent {
            if let Some(actual) = body.get(key) {
                let _ = writeln!(problems, "output {i}: `{key}` must be absent, found {actual}");
            }
        }
        for (key, wanted) in &want.has {
            let found = body.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            for element in wanted.as_array().map(Vec::as_slice).unwrap_or(std::slice::from_ref(wanted)) {
                if !found.iter().any(|actual| holds(element, actual)) {
                    let _ = writeln!(problems, "output {i}: `{key}` has no element matching {element}");
                }
            }
        }
    }
}

/// Whether `actual` holds what `wanted` says: every key of an object with
/// an equal value, anything else equal.
fn holds(wanted: &Value, actual: &Value) -> bool {
    match (wanted, actual) {
        (Value::Object(wanted), Value::Object(actual)) => wanted.iter().all(|(key, value)| actual.get(key) == Some(value)),
        _ => wanted == actual,
    }
}

fn check_rejects(case: &Case, result: &BatchResult, problems: &mut String) {
    let expected: &[ExpectedReject] = match (&case.reject, &case.rejects) {
        (Some(one), None) => std::slice::from_ref(one),
        (None, Some(several)) => several,
        (None, None) => &[],
        (Some(_), Some(_)) => {
            let _ = writeln!(problems, "the case gives both `reject` and `rejects`; give one");
            return;
        }
    };
    if expected.len() != result.rejects.len() {
        let _ = writeln!(problems, "expected {} reject(s), found {}", expected.len(), result.rejects.len());
        return;
    }
    for (i, (want, got)) in expected.iter().zip(&result.rejects).enumerate() {
        let property_ok = want.property.is_none() || want.property == got.property;
        let message_ok = want.message_contains.as_ref().is_none_or(|m| got.message.contains(m.as_str()));
        if want.stage != got.stage || want.code != got.code || !property_ok || !message_ok {
            let _ = writeln!(
                problems,
                "reject {i}: expected `{}` with code {}{}{}, found `{}` {} (property {:?}): {}",
                want.stage,
                want.code,
                want.property.as_ref().map_or(String::new(), |p| format!(" on `{p}`")),
                want.message_contains.as_ref().map_or(String::new(), |m| format!(" saying {m:?}")),
                got.stage,
                got.code,
                got.property,
                got.message
            );
        }
    }
}

/// What the pipeline actually did, for the failure report.
fn describe(result: &BatchResult) -> String {
    let mut text = String::from("what came out:\n");
    for output in &result.outputs {
        let _ = writeln!(text, "  -> {} {}", output.event.subject, String::from_utf8_lossy(&output.event.body));
    }
    for reject in &result.rejects {
        let _ = writeln!(text, "  rejected by `{}`: {} {:?}: {}", reject.stage, reject.code, reject.property, reject.message);
    }
    if result.dropped > 0 {
        let _ = writeln!(text, "  dropped");
    }
    text
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
