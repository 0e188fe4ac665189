//! `sluice replay`: dead letters back through their pipeline, once.
//!
//! Each dead letter (see `pipeline::dead_letter`) holds the original event:
//! its subject, its headers (on the letter's message) and its body, byte for
//! byte. Replay reads the letters of a stream or subject, picks them by
//! stage, code and time, restores each original and publishes it on `--to`
//! (a subject; or, with wildcards, a filter the original subject must match,
//! and it is published on its own subject), with a message id derived from
//! the original: the input stream drops one published again within its
//! duplicate window, and a record of every id replayed (the key-value bucket
//! `SLUICE_REPLAYED`, kept 30 days) skips it after that, so replaying twice
//! publishes nothing twice. An event that fails again gets a dead letter of
//! its own; replay watches the dead letters for a while and reports them.
//!
//! `--dry-run` publishes nothing: it runs each original through the current
//! version of its pipeline (as `sluice test` does) and says what would now
//! become of it. A letter whose body was cut to fit the stream cannot be
//! replayed, and replay says so and why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, kv};
use base64::Engine as _;
use futures::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config;
use crate::nats::Connection;
use crate::pipeline::{Chain, Environment, PIPELINE_HEADER, PipelineVersion, VERSION_HEADER, hex};
use crate::plugin::{Clock, Event, PluginEngine};

/// Ids of the events replayed, so that a second replay skips them.
const REPLAYED: &str = "SLUICE_REPLAYED";
const REPLAYED_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// What to replay, and where.
pub struct Options {
    /// A stream, or a subject some stream stores.
    pub from: String,
    pub stage: Option<String>,
    pub code: Option<String>,
    /// Letters stored at or after, and before, these times (Unix ms).
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub to: String,
    /// With a pipeline file: run the originals through it instead.
    pub dry_run: Option<PathBuf>,
    /// Replay what was replayed before too.
    pub again: bool,
    /// How long to watch for events failing again.
    pub wait: Duration,
}

/// The part of a dead letter's envelope replay reads.
#[derive(Debug, Deserialize)]
struct Envelope {
    pipeline: String,
    stage: String,
    code: String,
    #[serde(default)]
    message: String,
    subject: String,
    body_base64: Option<String>,
    body_bytes: usize,
    body_sha256: String,
    body_cut: Option<serde_json::Value>,
}

/// One dead letter, as stored.
struct Letter {
    sequence: u64,
    envelope: Envelope,
    headers: Vec<(String, String)>,
}

/// What became of one letter.
#[derive(Debug, PartialEq)]
enum Fate {
    Replayed,
    AlreadyReplayed,
    CannotReplay(String),
    /// A dry run: what the pipeline would do with it now.
    Would(String),
}

/// Replays what `options` picks; prints a line per letter and the totals.
pub async fn run(connection: &Connection, options: &Options) -> Result<()> {
    if options.to.is_empty() {
        anyhow::bail!("--to names no subject");
    }
    crate::subject::check(&options.to, true).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    let mut letters = Letters::open(connection, options).await?;
    let mut dry = match &options.dry_run {
        Some(file) => Some(DryRun::new(file)?),
        None => None,
    };
    let replayed = match dry {
        Some(_) => None,
        None => Some(
            connection
                .key_value(kv::Config {
                    bucket: REPLAYED.into(),
                    max_age: REPLAYED_FOR,
                    history: 1,
                    description: "sluice: events replayed from dead letters".into(),
                    ..Default::default()
                })
                .await
                .context("for the record of replayed events")?,
        ),
    };
    // Dead letters from here on, to see which replayed events fail again.
    let watch = match dry {
        Some(_) => None,
        None => Some(watch_dead_letters(connection, options).await?),
    };
    let mut totals: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut sent: BTreeSet<String> = BTreeSet::new();
    let mut picked = 0;
    while let Some(letter) = letters.next().await? {
        picked += 1;
        let letter = &letter;
        let fate = match (&mut dry, &replayed) {
            // Plugins run synchronously (WASI's calls block): off the async threads.
            (Some(dry), _) => tokio::task::block_in_place(|| dry.run(letter, options)),
            (None, Some(record)) => replay(connection, record, letter, options).await?,
            (None, None) => unreachable!("a record is opened unless it is a dry run"),
        };
        let envelope = &letter.envelope;
        let (word, detail) = match &fate {
            Fate::Replayed => {
                sent.insert(envelope.body_sha256.clone());
                ("replayed", String::new())
            }
            Fate::AlreadyReplayed => ("already replayed", String::new()),
            Fate::CannotReplay(why) => ("cannot replay", why.clone()),
            Fate::Would(what) => ("would", what.clone()),
        };
        *totals.entry(word).or_default() += 1;
        println!(
            "#{} {} {}/{} {}: {word}{}",
            letter.sequence,
            envelope.subject,
            envelope.stage,
            envelope.code,
            short(&envelope.body_sha256),
            if detail.is_empty() { String::new() } else { format!(": {detail}") }
        );
    }
    if let Some(watch) = watch
        && !sent.is_empty()
    {
        let failed = failed_again(watch, &sent, options.wait).await;
        for (sha, (subject, stage, code, message)) in &failed {
            println!("{subject} {}: failed again at {stage}/{code}: {message}", short(sha));
        }
        totals.insert("failed again", failed.len());
    }
    let summary: Vec<String> = totals.iter().map(|(word, n)| format!("{n} {word}")).collect();
    println!("{picked} dead letter(s) picked: {}", if summary.is_empty() { "nothing to do".to_string() } else { summary.join(", ") });
    Ok(())
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// The dead letters `options` picks, read in the order they were stored, one
/// at a time (a stream of two weeks of them need not fit in memory); those
/// stored while replaying (the events that fail again) are not read.
struct Letters<'a> {
    options: &'a Options,
    messages: consumer::pull::Ordered,
    /// Letters the stream held when reading began, and how many were read.
    pending: u64,
    read: u64,
}

impl<'a> Letters<'a> {
    async fn open(connection: &Connection, options: &'a Options) -> Result<Self> {
        let stream = source(connection, &options.from).await?;
        let filter = if stream.cached_info().config.name == options.from { String::new() } else { options.from.clone() };
        let config = consumer::pull::OrderedConfig { filter_subject: filter, ..Default::default() };
        let mut consumer = stream.create_consumer(config).await.context("cannot read the dead letters")?;
        let pending = consumer.info().await.context("cannot read the dead letters")?.num_pending;
        let messages = consumer.messages().await.context("cannot read the dead letters")?;
        Ok(Self { options, messages, pending, read: 0 })
    }

    async fn next(&mut self) -> Result<Option<Letter>> {
        let options = self.options;
        while self.read < self.pending {
            let Ok(message) = tokio::time::timeout(Duration::from_secs(10), self.messages.next()).await else {
                // Letters past their age can go while they are read.
                println!("no more dead letters came for 10 s ({} of {} read); stopping there", self.read, self.pending);
                return Ok(None);
            };
            let Some(message) = message else { return Ok(None) };
            let message = message.context("cannot read a dead letter")?;
            self.read += 1;
            let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
            let (sequence, stored_ms) = (info.stream_sequence, (info.published.unix_timestamp_nanos() / 1_000_000) as i64);
            if options.until_ms.is_some_and(|until| stored_ms >= until) {
                return Ok(None);
            }
            if options.since_ms.is_some_and(|since| stored_ms < since) {
                continue;
            }
            let Ok(envelope) = serde_json::from_slice::<Envelope>(&message.payload) else {
                println!("#{sequence} {}: not a dead letter, passed over", message.subject);
                continue;
            };
            if options.stage.as_ref().is_some_and(|s| *s != envelope.stage) || options.code.as_ref().is_some_and(|c| *c != envelope.code) {
                continue;
            }
            return Ok(Some(Letter { sequence, envelope, headers: original_headers(message.headers.as_ref()) }));
        }
        Ok(None)
    }
}

/// The stream `from` names, or the one that stores the subject `from`.
async fn source(connection: &Connection, from: &str) -> Result<jetstream::stream::Stream> {
    let js = &connection.jetstream;
    if let Ok(stream) = js.get_stream(from).await {
        return Ok(stream);
    }
    crate::subject::check(from, true).map_err(|e| anyhow::anyhow!("--from is neither a stream nor a subject: {e}"))?;
    let name = js.stream_by_subject(from).await.with_context(|| format!("no stream is named {from:?} or stores its subjects"))?;
    js.get_stream(&name).await.with_context(|| format!("stream {name}"))
}

/// The original's headers: the letter's, less what the host stamped on it.
fn original_headers(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(headers) = headers else { return Vec::new() };
    headers
        .iter()
        .filter(|(name, _)| ![PIPELINE_HEADER, VERSION_HEADER, "Nats-Msg-Id"].contains(&name.as_ref()))
        .flat_map(|(name, values)| values.iter().map(move |value| (name.to_string(), value.to_string())))
        .collect()
}

impl Letter {
    /// The original event, on the subject it goes back to; or why it cannot.
    fn original(&self, to: &str) -> Result<Event, String> {
        let envelope = &self.envelope;
        if envelope.body_cut.is_some() {
            return Err(format!("its body ({} bytes) was cut to fit the dead-letter stream; only its first KiB and its SHA-256 are kept", envelope.body_bytes));
        }
        let encoded = envelope.body_base64.as_deref().ok_or("the letter holds no body")?;
        let body = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|e| format!("its body is not base64: {e}"))?;
        if hex(&Sha256::digest(&body)) != envelope.body_sha256 {
            return Err("its body does not match its SHA-256".into());
        }
        let subject = if to.contains(['*', '>']) {
            if !crate::subject::matches(to, &envelope.subject) {
                return Err(format!("its subject {:?} is not under --to {to:?}", envelope.subject));
            }
            envelope.subject.clone()
        } else {
            to.to_string()
        };
        Ok(Event { subject, headers: self.headers.clone(), body })
    }
}

/// The message id of a replayed event: from the original subject and body,
/// so that the same event replayed again has the same id.
fn replay_id(envelope: &Envelope, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    for part in [envelope.subject.as_bytes(), body] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    format!("replay-{}", hex(&hash.finalize()[..16]))
}

async fn replay(connection: &Connection, record: &kv::Store, letter: &Letter, options: &Options) -> Result<Fate> {
    let event = match letter.original(&options.to) {
        Ok(event) => event,
        Err(why) => return Ok(Fate::CannotReplay(why)),
    };
    let id = replay_id(&letter.envelope, &event.body);
    if !options.again && record.get(&id).await.with_context(|| format!("cannot read the record of {id}"))?.is_some() {
        return Ok(Fate::AlreadyReplayed);
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &event.headers {
        headers.append(name.as_str(), value.as_str());
    }
    headers.insert("Nats-Msg-Id", id.as_str());
    let ack = connection
        .jetstream
        .publish_with_headers(event.subject.clone(), headers, event.body.into())
        .await
        .with_context(|| format!("cannot publish on {}", event.subject))?
        .await
        .with_context(|| format!("no stream took the event on {} (does one store that subject?)", event.subject))?;
    record.put(&id, format!("{{\"letter\":{},\"stream\":{:?}}}", letter.sequence, ack.stream).into()).await.with_context(|| format!("cannot record {id}"))?;
    Ok(if ack.duplicate { Fate::AlreadyReplayed } else { Fate::Replayed })
}

/// The dead letters stored from now on, on the subjects of the stream read.
async fn watch_dead_letters(connection: &Connection, options: &Options) -> Result<consumer::pull::Ordered> {
    let stream = source(connection, &options.from).await?;
    let config = consumer::pull::OrderedConfig { deliver_policy: consumer::DeliverPolicy::New, ..Default::default() };
    let consumer = stream.create_consumer(config).await.context("cannot watch the dead letters")?;
    consumer.messages().await.context("cannot watch the dead letters")
}

/// The replayed events (by SHA-256 of the body) that got a dead letter again
/// within `wait`: subject, stage, code, message.
async fn failed_again(mut watch: consumer::pull::Ordered, sent: &BTreeSet<String>, wait: Duration) -> BTreeMap<String, (String, String, String, String)> {
    let mut failed = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + wait;
    while failed.len() < sent.len() {
        let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, watch.next()).await else { break };
        if let Ok(envelope) = serde_json::from_slice::<Envelope>(&message.payload)
            && sent.contains(&envelope.body_sha256)
        {
            failed.insert(envelope.body_sha256.clone(), (envelope.subject, envelope.stage, envelope.code, envelope.message));
        }
    }
    failed
}

/// The pipelines of a file, to run dead letters through without NATS.
struct DryRun {
    file: config::PipelineFile,
    engine: PluginEngine,
    chains: BTreeMap<String, Chain>,
}

impl DryRun {
    fn new(path: &std::path::Path) -> Result<Self> {
        Ok(Self { file: config::load(path)?, engine: PluginEngine::new()?, chains: BTreeMap::new() })
    }

    /// What the letter's pipeline would do with its original now.
    fn run(&mut self, letter: &Letter, options: &Options) -> Fate {
        let event = match letter.original(&options.to) {
            Ok(event) => event,
            Err(why) => return Fate::CannotReplay(why),
        };
        let name = &letter.envelope.pipeline;
        if !self.chains.contains_key(name) {
            let Some(spec) = self.file.pipelines.iter().find(|p| &p.name == name) else {
                let names: Vec<&str> = self.file.pipelines.iter().map(|p| p.name.as_str()).collect();
                return Fate::CannotReplay(format!("the file has no pipeline {name:?} (it has {names:?})"));
            };
            let chain = PipelineVersion::prepare(&self.engine, spec, &Clock::system(), &Environment::process()).and_then(Chain::start);
            match chain {
                Ok(chain) => self.chains.insert(name.clone(), chain),
                Err(error) => return Fate::CannotReplay(format!("pipeline {name:?} cannot start: {error:#}")),
            };
        }
        let chain = self.chains.get_mut(name).expect("started above");
        match chain.process(std::slice::from_ref(&event)) {
            Err(error) => Fate::Would(format!("fail: {error:#}")),
            Ok(result) => match result.rejects.first() {
                Some(reject) => Fate::Would(format!("be rejected again at {}/{}: {}", reject.stage, reject.code, reject.message)),
                None if result.outputs.is_empty() => Fate::Would("be dropped".into()),
                None => {
                    let subjects: Vec<&str> = result.outputs.iter().map(|o| o.event.subject.as_str()).collect();
                    Fate::Would(format!("come out on {}", subjects.join(", ")))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(envelope: serde_json::Value) -> Letter {
        Letter { sequence: 1, envelope: serde_json::from_value(envelope).unwrap(), headers: vec![("Trace".into(), "t-1".into())] }
    }

    fn envelope(body: &[u8]) -> serde_json::Value {
        serde_json::json!({
            "pipeline": "ingest", "version": "v1", "stage": "validate", "code": "invalid_property", "message": "no",
            "subject": "raw.web", "body_base64": base64::engine::general_purpose::STANDARD.encode(body),
            "body_bytes": body.len(), "body_sha256": hex(&Sha256::digest(body)),
        })
    }

    #[test]
    fn the_original_comes_back_with_its_subject_headers_and_bytes() {
        let original = letter(envelope(br#"{"event":"x"}"#)).original("raw.>").unwrap();
        assert_eq!((original.subject.as_str(), original.body.as_slice()), ("raw.web", br#"{"event":"x"}"#.as_slice()));
        assert_eq!(original.headers, vec![("Trace".to_string(), "t-1".to_string())]);
        assert_eq!(letter(envelope(b"{}")).original("raw.replay").unwrap().subject, "raw.replay", "a literal --to is the subject");
        let outside = letter(envelope(b"{}")).original("other.>").unwrap_err();
        assert!(outside.contains("not under --to"), "{outside}");
    }

    #[test]
    fn a_cut_or_damaged_body_cannot_be_replayed_and_says_why() {
        let mut cut = envelope(b"{}");
        cut["body_cut"] = serde_json::json!({ "reason": "too large", "head_base64": "" });
        cut.as_object_mut().unwrap().remove("body_base64");
        cut["body_bytes"] = 2_000_000.into();
        let why = letter(cut).original("raw.>").unwrap_err();
        assert!(why.contains("2000000 bytes") && why.contains("cut"), "{why}");
        let mut damaged = envelope(b"{}");
        damaged["body_sha256"] = "00".into();
        assert!(letter(damaged).original("raw.>").unwrap_err().contains("does not match"));
    }

    #[test]
    fn the_same_event_gets_the_same_id_and_another_event_another() {
        let one = letter(envelope(b"{\"a\":1}"));
        let again = letter(envelope(b"{\"a\":1}"));
        let other = letter(envelope(b"{\"a\":2}"));
        assert_eq!(replay_id(&one.envelope, b"{\"a\":1}"), replay_id(&again.envelope, b"{\"a\":1}"));
        assert_ne!(replay_id(&one.envelope, b"{\"a\":1}"), replay_id(&other.envelope, b"{\"a\":2}"));
    }

    #[test]
    fn only_the_hosts_stamps_are_taken_off_the_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(PIPELINE_HEADER, "ingest");
        headers.insert(VERSION_HEADER, "v1");
        headers.insert("Nats-Msg-Id", "RAW:1");
        headers.insert("Trace", "t-1");
        assert_eq!(original_headers(Some(&headers)), vec![("Trace".to_string(), "t-1".to_string())]);
    }
}
