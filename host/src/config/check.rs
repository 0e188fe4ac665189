//! Phase two of reading a pipeline file: every rule that serde cannot express,
//! checked over the whole file so that all problems are reported together.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw;
use super::units;
use super::*;
use crate::subject;

/// Largest batch a pipeline may ask for.
const MAX_BATCH: i64 = 65_536;
/// Largest event the host accepts at all (NATS's own ceiling is 64 MiB).
const MAX_EVENT_BYTES: u64 = 64 << 20;
/// Bounds on a stage's per-call time budget and memory cap.
const TIME_BUDGET_RANGE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(60));
const MEMORY_RANGE: (u64, u64) = (1 << 20, 4 << 30);
/// Bounds on what one call may answer: events per input event, bytes per call.
const OUTPUTS_RANGE: (i64, i64) = (1, 1_000_000);
const OUTPUT_BYTES_RANGE: (u64, u64) = (1 << 10, 1 << 30);

/// Checks a parsed pipeline file at `path`; `from` is the folder it was
/// moved from, if it was (see [`super::load_moved`]).
pub fn check(path: &Path, raw: raw::File, from: Option<&Path>) -> Result<PipelineFile, Vec<Problem>> {
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut checker = Checker { base, moved_from: from.map(Path::to_path_buf), problems: Vec::new() };
    let file = checker.file(path, raw);
    if checker.problems.is_empty() { Ok(file) } else { Err(checker.problems) }
}

struct Checker {
    /// The pipeline file's folder: relative paths in it start here.
    base: PathBuf,
    /// The folder the file was moved from, with the files it uses.
    moved_from: Option<PathBuf>,
    problems: Vec<Problem>,
}

impl Checker {
    /// Where a file or folder the pipeline file names is: relative to its
    /// folder, or, for a moved file, an absolute path under or beside the
    /// folder it came from taken to the same place beside it now.
    fn located(&self, written: &str) -> PathBuf {
        let path = self.base.join(written);
        match &self.moved_from {
            Some(from) if path.is_absolute() && !path.starts_with(&self.base) => match crate::release::manifest::relative_to(from, &path) {
                Ok(relative) => self.base.join(relative),
                Err(_) => path,
            },
            _ => path,
        }
    }

    fn problem<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.problems.push(Problem::at(at.span(), message));
    }

    /// Runs `parse` on a spanned value, recording its error at the value's place.
    fn parsed<T, U>(&mut self, value: &Spanned<T>, parse: impl FnOnce(&T) -> Result<U, String>) -> Option<U> {
        parse(value.get_ref()).map_err(|message| self.problem(value, message)).ok()
    }

    fn file(&mut self, path: &Path, raw: raw::File) -> PipelineFile {
        let nats_url = raw.nats.url.as_ref().map(|url| {
            if let Err(message) = crate::nats::check_url(url.get_ref()) {
                // The line may hold a password: it is not shown.
                self.problems.push(Problem { secret: url.get_ref().contains('@'), ..Problem::at(url.span(), message) });
            }
            url.get_ref().clone()
        });
        let nats_security = self.nats_security(&raw.nats);
        let metrics_listen = raw.metrics.listen.as_ref().and_then(|listen| self.parsed(listen, |l| listen_address(l).map(|()| l.clone())));
        let plugin_dir = raw.plugins.dir.as_ref().map(|d| (self.located(d.get_ref()), d.clone()));

        let mut stream_names = HashSet::new();
        let streams: Vec<StreamSpec> = raw
            .stream
            .iter()
            .filter_map(|s| {
                if !stream_names.insert(s.get_ref().name.get_ref().clone()) {
                    self.problem(&s.get_ref().name, format!("stream `{}` is declared twice", s.get_ref().name.get_ref()));
                }
                self.stream(s.get_ref())
            })
            .collect();

        if raw.pipeline.is_empty() {
            self.problems.push(Problem::whole("no [[pipeline]] is declared: there is nothing to run"));
        }
        let mut pipeline_names = HashSet::new();
        let pipelines = raw
            .pipeline
            .iter()
            .filter_map(|p| {
                let name = &p.get_ref().name;
                if !pipeline_names.insert(name.get_ref().clone()) {
                    self.problem(name, format!("pipeline `{}` is declared twice; names must be unique", name.get_ref()));
                }
                self.pipeline(p.get_ref(), plugin_dir.as_ref())
            })
            .collect();
        PipelineFile { path: path.to_path_buf(), nats_url, nats_security, metrics_listen, streams, pipelines }
    }

    /// `[nats]`'s authentication (one kind at most) and TLS files.
    fn nats_security(&mut self, raw: &raw::Nats) -> NatsSecurity {
        let given: Vec<(&str, std::ops::Range<usize>)> = [
            ("token", raw.token.as_ref().map(Spanned::span)),
            ("user", raw.user.as_ref().map(Spanned::span)),
            ("nkey", raw.nkey.as_ref().map(Spanned::span)),
            ("creds", raw.creds.as_ref().map(Spanned::span)),
        ]
        .into_iter()
        .filter_map(|(name, span)| Some((name, span?)))
        .collect();
        if let [_, (_, span), ..] = given.as_slice() {
            let names: Vec<String> = given.iter().map(|(name, _)| format!("`{name}`")).collect();
            let (last, rest) = names.split_last().expect("two or more");
            let message = format!("[nats] gives {} and {last}: a connection authenticates in one way; keep one of them", rest.join(", "));
            self.problems.push(Problem::at(span.clone(), message));
        }
        let auth = match (&raw.token, &raw.user, &raw.password, &raw.nkey, &raw.creds) {
            (Some(token), ..) => self.secret(token, "the NATS token").map(NatsAuth::Token),
            (None, Some(user), Some(password), ..) => {
                self.secret(password, "the NATS password").map(|password| NatsAuth::UserPassword { user: user.get_ref().clone(), password })
            }
            (None, Some(user), None, ..) => {
                self.problem(user, "[nats] user needs a password: password = { env = \"VARIABLE\" } or { file = \"PATH\" }");
                None
            }
            (None, None, Some(password), ..) => {
                self.problem(password, "[nats] password needs a user");
                None
            }
            (None, None, None, Some(nkey), _) => Some(NatsAuth::NKey(self.relative(nkey))),
            (None, None, None, None, Some(creds)) => Some(NatsAuth::Creds(self.relative(creds))),
            (None, None, None, None, None) => None,
        };
        let tls = raw.tls.as_ref().map(|tls| {
            let t = tls.get_ref();
            let ca = t.ca.as_ref().map(|ca| self.relative(ca));
            let identity = match (&t.cert, &t.key) {
                (Some(cert), Some(key)) => Some((self.relative(cert), self.relative(key))),
                (None, None) => None,
                _ => {
                    self.problem(tls, "a client certificate needs both tls.cert and tls.key");
                    None
                }
            };
            TlsSpec { ca, identity }
        });
        NatsSecurity { auth: auth.unwrap_or_default(), tls }
    }

    fn secret(&mut self, raw: &Spanned<raw::Secret>, what: &str) -> Option<Secret> {
        match raw.get_ref() {
            raw::Secret::Env(from) => self.parsed(raw, |_| variable_name(&from.env, &format!("{what}: env")).map(|()| Secret::Env(from.env.clone()))),
            raw::Secret::File(from) => Some(Secret::File(self.base.join(&from.file))),
        }
    }

    /// A file the pipeline file names, relative to its folder. It is read
    /// when sluice connects, not checked here: it holds a secret, which the
    /// machine that validates a file need not have.
    fn relative(&self, raw: &Spanned<String>) -> PathBuf {
        self.base.join(raw.get_ref())
    }

    fn name(&mut self, what: &str, name: &Spanned<String>) {
        let ok = !name.get_ref().is_empty() && name.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            self.problem(name, format!("{what} name {:?} must be non-empty letters, digits, `_` or `-`", name.get_ref()));
        }
    }

    fn subject(&mut self, value: &Spanned<String>, wildcards: bool) {
        self.parsed(value, |s| subject::check(s, wildcards));
    }

    fn stream(&mut self, raw: &raw::Stream) -> Option<StreamSpec> {
        self.name("stream", &raw.name);
        if raw.subjects.get_ref().is_empty() {
            self.problem(&raw.subjects, format!("stream `{}` needs at least one subject", raw.name.get_ref()));
        }
        for s in raw.subjects.get_ref() {
            self.subject(s, true);
        }
        let retention = match raw.retention.as_ref() {
            None => Some(Retention::Limits),
            Some(r) => self.parsed(r, |r| match r.as_str() {
                "limits" => Ok(Retention::Limits),
                "interest" => Ok(Retention::Interest),
                "workqueue" => Ok(Retention::WorkQueue),
                other => Err(format!("expected retention \"limits\", \"interest\" or \"workqueue\", found {other:?}")),
            }),
        };
        let storage = match raw.storage.as_ref() {
            None => Some(Storage::File),
            Some(s) => self.parsed(s, |s| match s.as_str() {
                "file" => Ok(Storage::File),
                "memory" => Ok(Storage::Memory),
                other => Err(format!("expected storage \"file\" or \"memory\", found {other:?}")),
            }),
        };
        let max_age = raw.max_age.as_ref().map(|d| self.parsed(d, |d| units::duration(d)));
        let max_bytes = raw.max_bytes.as_ref().map(|b| self.parsed(b, |b| units::bytes(b)));
        let duplicate_window = raw.duplicate_window.as_ref().map(|d| self.parsed(d, |d| units::duration(d)));
        let replicas = match &raw.replicas {
            None => Some(1),
            Some(r) => self.parsed(r, |&r| usize::try_from(r).ok().filter(|r| (1..=5).contains(r)).ok_or(format!("expected 1 to 5 replicas, found {r}"))),
        };
        Some(StreamSpec {
            name: raw.name.get_ref().clone(),
            subjects: raw.subjects.get_ref().iter().map(|s| s.get_ref().clone()).collect(),
            retention: retention?,
            storage: storage?,
            max_age: max_age.flatten(),
            max_bytes: max_bytes.flatten(),
            duplicate_window: duplicate_window.flatten(),
            replicas: replicas?,
        })
    }

    fn pipeline(&mut self, raw: &raw::Pipeline, plugin_dir: Option<&(PathBuf, Spanned<String>)>) -> Option<PipelineSpec> {
        self.name("pipeline", &raw.name);
        let name = raw.name.get_ref().clone();
        let input = self.input(&name, raw.input.get_ref());
        self.subject(&raw.dead_letter, false);

        let max_events = match &raw.batch.max_events {
            None => Some(DEFAULT_MAX_EVENTS),
            Some(n) => {
                self.parsed(n, |&n| (1..=MAX_BATCH).contains(&n).then_some(n as usize).ok_or(format!("expected max_events from 1 to {MAX_BATCH}, found {n}")))
            }
        };
        let max_wait = match &raw.batch.max_wait {
            None => Some(DEFAULT_MAX_WAIT),
            Some(d) => self.parsed(d, |d| units::duration(d).and_then(|d| within(d, (Duration::from_micros(100), Duration::from_secs(60)), "max_wait"))),
        };
        let workers = match &raw.workers {
            // A webhook gets its outputs in order only from a single worker.
            None if raw.output.webhook.is_some() => Some(1),
            None => Some(std::thread::available_parallelism().map_or(1, |n| n.get())),
            Some(n) => self.parsed(n, |&n| (1..=256).contains(&n).then_some(n as usize).ok_or(format!("expected from 1 to 256 workers, found {n}"))),
        };
        let max_event_bytes = match &raw.max_event_bytes {
            None => Some(DEFAULT_MAX_EVENT_BYTES),
            Some(b) => self.parsed(b, |b| {
                units::bytes(b).and_then(|b| {
                    (1..=MAX_EVENT_BYTES).contains(&b).then_some(b as usize).ok_or(format!("max_event_bytes must be from 1 byte to 64MiB, found {b} bytes"))
                })
            }),
        };
        let format = match &raw.format {
            None => Some(BodyFormat::Json),
            Some(f) => self.parsed(f, |f| match f.as_str() {
                "json" => Ok(BodyFormat::Json),
                "bytes" => Ok(BodyFormat::Bytes),
                other => Err(format!("expected format \"json\" or \"bytes\", found {other:?}")),
            }),
        };

        let tick = match &raw.tick {
            None => Some(DEFAULT_TICK),
            Some(d) => self.parsed(d, |d| units::duration(d).and_then(|d| within(d, (Duration::from_millis(10), Duration::from_secs(3600)), "tick"))),
        };

        let state_bucket = match &raw.state_bucket {
            None => Some(DEFAULT_STATE_BUCKET.to_string()),
            Some(b) => self.parsed(b, |b| {
                if !b.is_empty() && b.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                    Ok(b.clone())
                } else {
                    Err(format!("state_bucket {b:?} must be letters, digits, `_` or `-` (a NATS key-value bucket name)"))
                }
            }),
        };
        // Inputs wait unacked until the state that counted them is stored:
        // well within ack_wait, or JetStream hands them out again.
        let ack_wait = match input.as_ref() {
            Some(InputSpec::JetStream { ack_wait, .. }) => *ack_wait,
            _ => DEFAULT_ACK_WAIT,
        };
        let state_every = match &raw.state_every {
            None => Some(None),
            Some(d) => self.parsed(d, |d| {
                let every = units::duration(d).and_then(|d| within(d, (Duration::from_millis(10), Duration::from_secs(60)), "state_every"))?;
                if every * 3 > ack_wait {
                    return Err(format!(
                        "state_every = {d:?} must be at most a third of the input's ack_wait ({ack_wait:?}): inputs wait unacked until the state is stored"
                    ));
                }
                Ok(Some(every))
            }),
        };
        let webhook = match &raw.output.webhook {
            None => Some(None),
            Some(w) => self.webhook(w).map(Some),
        };

        let mut stage_names = HashSet::new();
        let stages: Vec<Option<StageSpec>> = raw
            .stage
            .iter()
            .map(|s| {
                let stage_name = &s.get_ref().name;
                if !stage_names.insert(stage_name.get_ref().clone()) {
                    self.problem(stage_name, format!("pipeline `{name}` has two stages named `{}`; stage names must be unique", stage_name.get_ref()));
                }
                self.stage(s, plugin_dir)
            })
            .collect();

        Some(PipelineSpec {
            name,
            input: input?,
            output_jetstream: raw.output.jetstream.unwrap_or(false),
            dead_letter: raw.dead_letter.get_ref().clone(),
            max_events: max_events?,
            max_wait: max_wait?,
            workers: workers?,
            max_event_bytes: max_event_bytes?,
            format: format?,
            tick: tick?,
            state_bucket: state_bucket?,
            state_every: state_every?,
            webhook: webhook?,
            stages: stages.into_iter().collect::<Option<Vec<_>>>()?,
        })
    }

    fn webhook(&mut self, raw: &Spanned<raw::Webhook>) -> Option<WebhookSpec> {
        let w = raw.get_ref();
        let url = match (&w.url, &w.url_env) {
            (Some(url), None) => self.parsed(url, |url| check_http_url(url).map(|()| WebhookValue::Given(url.clone()))),
            (None, Some(name)) => self.parsed(name, |name| variable_name(name, "url_env").map(|()| WebhookValue::Env(name.clone()))),
            _ => {
                self.problem(raw, "a webhook needs exactly one of `url` or `url_env` (the variable that holds a URL carrying a secret)".to_string());
                None
            }
        };
        let timeout = match &w.timeout {
            None => Some(Duration::from_secs(10)),
            Some(t) => self.parsed(t, |t| units::duration(t).and_then(|d| within(d, (Duration::from_millis(10), Duration::from_secs(300)), "timeout"))),
        };
        let backoff = match &w.backoff {
            None => Some(Duration::from_secs(1)),
            Some(b) => self.parsed(b, |b| units::duration(b).and_then(|d| within(d, (Duration::from_millis(1), Duration::from_secs(600)), "backoff"))),
        };
        let attempts = match &w.attempts {
            None => Some(5),
            Some(a) => self.parsed(a, |a| u32::try_from(*a).ok().filter(|a| (1..=100).contains(a)).ok_or(format!("attempts must be from 1 to 100, found {a}"))),
        };
        let headers: Vec<Option<(String, WebhookValue)>> =
            w.headers.iter().map(|(name, value)| self.parsed(value, |value| webhook_header(name, value).map(|value| (name.clone(), value)))).collect();
        Some(WebhookSpec { url: url?, headers: headers.into_iter().collect::<Option<_>>()?, timeout: timeout?, attempts: attempts?, backoff: backoff? })
    }

    fn input(&mut self, pipeline: &str, raw: &raw::Input) -> Option<InputSpec> {
        self.subject(&raw.subject, true);
        let subject = raw.subject.get_ref().clone();
        let mode = raw.mode.as_ref().map_or("jetstream", |m| m.get_ref().as_str());
        match mode {
            "jetstream" => {
                if let Some(queue) = &raw.queue {
                    self.problem(queue, "`queue` belongs to a core input (mode = \"core\"); a JetStream input shares load through its durable consumer");
                }
                let Some(stream) = &raw.stream else {
                    self.problem(&raw.subject, format!("pipeline `{pipeline}` reads from JetStream (the default mode), so its input needs `stream = \"NAME\"`; or set mode = \"core\" for best-effort delivery"));
                    return None;
                };
                self.name("stream", stream);
                // Defaults to the pipeline's name, which is checked on its own.
                if let Some(durable) = &raw.durable {
                    self.name("durable consumer", durable);
                }
                let durable = raw.durable.as_ref().map_or_else(|| pipeline.to_string(), |d| d.get_ref().clone());
                let ack_wait = match &raw.ack_wait {
                    None => Some(DEFAULT_ACK_WAIT),
                    Some(d) => self.parsed(d, |d| units::duration(d).and_then(|d| within(d, (Duration::from_secs(1), Duration::from_secs(3600)), "ack_wait"))),
                };
                let max_deliver = match &raw.max_deliver {
                    None => Some(DEFAULT_MAX_DELIVER),
                    Some(n) => self.parsed(n, |&n| {
                        u64::try_from(n)
                            .ok()
                            .filter(|n| (1..=1000).contains(n))
                            .ok_or(format!("expected max_deliver from 1 to 1000 (deliveries before an event is dead-lettered as `undeliverable`), found {n}"))
                    }),
                };
                Some(InputSpec::JetStream { subject, stream: stream.get_ref().clone(), durable, ack_wait: ack_wait?, max_deliver: max_deliver? })
            }
            "core" => {
                for (field, value) in [("stream", &raw.stream), ("durable", &raw.durable)] {
                    if let Some(value) = value {
                        self.problem(value, format!("`{field}` belongs to a JetStream input; this input has mode = \"core\""));
                    }
                }
                if let Some(queue) = &raw.queue {
                    self.name("queue group", queue);
                }
                let queue = raw.queue.as_ref().map_or_else(|| pipeline.to_string(), |q| q.get_ref().clone());
                Some(InputSpec::Core { subject, queue })
            }
            other => {
                if let Some(m) = &raw.mode {
                    self.problem(m, format!("expected mode \"jetstream\" or \"core\", found {other:?}"));
                }
                None
            }
        }
    }

    fn stage(&mut self, raw: &Spanned<raw::Stage>, plugin_dir: Option<&(PathBuf, Spanned<String>)>) -> Option<StageSpec> {
        let stage = raw.get_ref();
        self.name("stage", &stage.name);
        let component = match (&stage.plugin, &stage.component) {
            (Some(plugin), None) => self.plugin(plugin, plugin_dir),
            (None, Some(component)) => {
                let path = self.located(component.get_ref());
                if path.is_file() {
                    Some(path)
                } else {
                    self.problem(component, format!("component file {:?} does not exist (looked for {})", component.get_ref(), path.display()));
                    None
                }
            }
            (Some(plugin), Some(_)) => {
                self.problem(plugin, format!("stage `{}` names both `plugin` and `component`; keep one", stage.name.get_ref()));
                None
            }
            (None, None) => {
                self.problem(raw, format!("stage `{}` needs `plugin = \"NAME\"` or `component = \"PATH.wasm\"`", stage.name.get_ref()));
                None
            }
        };
        let time_budget = match &stage.limits.time {
            None => Some(DEFAULT_TIME_BUDGET),
            Some(d) => self.parsed(d, |d| units::duration(d).and_then(|d| within(d, TIME_BUDGET_RANGE, "the time limit"))),
        };
        let memory_limit = match &stage.limits.memory {
            None => Some(DEFAULT_MEMORY_LIMIT),
            Some(m) => self.parsed(m, |m| {
                units::bytes(m).and_then(|m| {
                    (MEMORY_RANGE.0..=MEMORY_RANGE.1).contains(&m).then_some(m).ok_or(format!("the memory limit must be from 1MiB to 4GiB, found {m} bytes"))
                })
            }),
        };
        let max_outputs = match &stage.limits.outputs {
            None => Some(DEFAULT_MAX_OUTPUTS),
            Some(n) => self.parsed(n, |&n| {
                (OUTPUTS_RANGE.0..=OUTPUTS_RANGE.1).contains(&n).then_some(n as usize).ok_or(format!(
                    "limits.outputs (events a plugin may answer one event with) must be from {} to {}, found {n}",
                    OUTPUTS_RANGE.0, OUTPUTS_RANGE.1
                ))
            }),
        };
        let max_output_bytes = match &stage.limits.output_bytes {
            None => Some(DEFAULT_MAX_OUTPUT_BYTES),
            Some(b) => self.parsed(b, |b| {
                units::bytes(b).and_then(|b| {
                    (OUTPUT_BYTES_RANGE.0..=OUTPUT_BYTES_RANGE.1)
                        .contains(&b)
                        .then_some(b as usize)
                        .ok_or(format!("limits.output_bytes (bytes of new events one call may return) must be from 1KiB to 1GiB, found {b} bytes"))
                })
            }),
        };
        let config = toml_to_json(&toml::Value::Table(stage.config.clone().unwrap_or_default())).to_string();
        let files = stage.files.as_ref().map(|dir| {
            let path = self.located(dir.get_ref());
            if !path.is_dir() {
                self.problem(dir, format!("`files` must be a folder; {:?} is not one (looked for {})", dir.get_ref(), path.display()));
            }
            path
        });
        let env = stage.env.iter().flatten().map(|name| {
            let valid = !name.get_ref().is_empty() && name.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.problem(name, format!("{:?} is not an environment variable name (letters, digits and `_`)", name.get_ref()));
            }
            name.get_ref().clone()
        });
        let env = env.collect();
        Some(StageSpec {
            name: stage.name.get_ref().clone(),
            component: component?,
            time_budget: time_budget?,
            memory_limit: memory_limit?,
            max_outputs: max_outputs?,
            max_output_bytes: max_output_bytes?,
            config,
            files,
            env,
        })
    }

    fn plugin(&mut self, plugin: &Spanned<String>, plugin_dir: Option<&(PathBuf, Spanned<String>)>) -> Option<PathBuf> {
        let Some((dir, written)) = plugin_dir else {
            self.problem(
                plugin,
                "`plugin = \"NAME\"` is looked up in [plugins] dir, which this file does not set; set it, or give the file with `component = \"PATH.wasm\"`",
            );
            return None;
        };
        let path = dir.join(format!("{}.wasm", plugin.get_ref()));
        if path.is_file() {
            return Some(path);
        }
        let mut known: Vec<String> =
            std::fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|e| e.file_name().to_str()?.strip_suffix(".wasm").map(str::to_string)).collect();
        known.sort();
        let known = if known.is_empty() { "none: has it been built?".to_string() } else { known.join(", ") };
        self.problem(
            plugin,
            format!("unknown plugin {:?}: there is no {}.wasm in {:?} (plugins there: {known})", plugin.get_ref(), plugin.get_ref(), written.get_ref()),
        );
        None
    }
}

/// `host:port` (a name or an address, the port a number; `[::1]:9464` for IPv6).
pub fn listen_address(text: &str) -> Result<(), String> {
    let wrong = || format!("{text:?} is not an address to listen on: write host:port, e.g. \"0.0.0.0:9464\" or \"127.0.0.1:9464\"");
    let (host, port) = text.rsplit_once(':').ok_or_else(wrong)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(wrong());
    }
    Ok(())
}

fn within(value: Duration, (low, high): (Duration, Duration), what: &str) -> Result<Duration, String> {
    if (low..=high).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{what} must be from {} to {}, found {}",
            humantime::format_duration(low),
            humantime::format_duration(high),
            humantime::format_duration(value)
        ))
    }
}

/// A stage's TOML config as the JSON its plugin receives. Dates become strings.
fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => J::from(*f),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(items) => J::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => J::Object(table.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect()),
    }
}

/// Headers sluice sets itself on every webhook request.
const SET_BY_SLUICE: [&str; 5] = ["content-type", "content-length", "host", "idempotency-key", "x-sluice-subject"];

/// Checks one webhook header: a name HTTP allows and sluice does not set,
/// and a value written in the file that a header can carry.
fn webhook_header(name: &str, value: &raw::HeaderValue) -> Result<WebhookValue, String> {
    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("header {name:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"));
    }
    if SET_BY_SLUICE.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("header {name:?} is set by sluice itself; leave it out"));
    }
    match value {
        raw::HeaderValue::Given(text) => match reqwest::header::HeaderValue::from_str(text) {
            Ok(_) => Ok(WebhookValue::Given(text.clone())),
            Err(_) => Err(format!("header {name:?}: its value holds characters a header cannot carry (line breaks, control characters)")),
        },
        raw::HeaderValue::Env(from) => variable_name(&from.env, &format!("header {name:?}: env")).map(|()| WebhookValue::Env(from.env.clone())),
    }
}

/// Checks that `name` (the value of `field`) names an environment variable.
fn variable_name(name: &str, field: &str) -> Result<(), String> {
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid { Ok(()) } else { Err(format!("{field} {name:?} is not an environment variable name")) }
}
