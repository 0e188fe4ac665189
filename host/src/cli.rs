//! The `sluice` command line: `run` a pipeline file (or follow a release),
//! `validate` it, `test` it on its cases; `new plugin` to start a plugin
//! project; `deploy` a file as a release over NATS, see where the fleet
//! stands (`status`), list a release's revisions (`releases`, `--prune`)
//! and `rollback` one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config;
use crate::config::PipelineFile;
use crate::pipeline::{Environment, PipelineVersion};
use crate::plugin::{Clock, ConfigRefused, PluginEngine, config_path};
use crate::runtime::{self, RunOptions};
use crate::test_cases;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Chains WebAssembly components into event pipelines over NATS")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr. Levels are set with SLUICE_LOG (e.g. `info,sluice=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new project: `sluice new plugin NAME`.
    New {
        #[command(subcommand)]
        what: New,
    },
    /// Run every pipeline of a file, or of a release's current revision
    /// (`--release NAME`, following it as new revisions land), until SIGINT
    /// or SIGTERM.
    Run {
        #[arg(required_unless_present = "release", conflicts_with = "release")]
        file: Option<PathBuf>,
        /// Run and follow this release (kept in the NATS server of --nats).
        #[arg(long)]
        release: Option<String>,
        #[command(flatten)]
        nats: NatsArgs,
        /// Do not watch the file and its components for changes.
        #[arg(long)]
        no_watch: bool,
        /// How often progress is logged, e.g. `10s`.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        stats_interval: Duration,
        /// Serve /metrics (Prometheus), /healthz and /readyz on this address,
        /// e.g. `0.0.0.0:9464` (overrides the file's `[metrics] listen`).
        #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
        metrics: Option<String>,
    },
    /// Check pipeline files: every problem with its line, then every stage's
    /// component compiled, linked and initialised with its config. Variables
    /// the file needs and this machine lacks (secrets, say) are named, and
    /// stages are checked with stand-in values for them.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a pipeline's test cases (`<file>.tests/*.toml`, or the case files
    /// given) through its real plugins, without NATS, on a clock the cases set.
    Test { file: PathBuf, cases: Vec<PathBuf> },
    /// Check a file as `validate` does and, if it passes, publish it and
    /// every file it uses as the next revision of a release.
    Deploy {
        file: PathBuf,
        /// The release's name; default: the file's stem.
        #[arg(long)]
        name: Option<String>,
        /// Why, for the release history.
        #[arg(long, default_value = "")]
        message: String,
        #[command(flatten)]
        nats: NatsArgs,
        /// Then wait until every live host of the release runs the new
        /// revision, or one refuses it; exit non-zero on a refusal or after `--timeout`.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Where the fleet stands: each live host, the release and revision it
    /// runs, since when, and the last revision it refused and why.
    Status {
        /// Only the hosts of this release.
        name: Option<String>,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Show events passing one point of a running pipeline, on every host
    /// that runs it, as they pass (sampled: each host sends at most 50 a
    /// second), as JSON with their subject, headers and version.
    Tap {
        pipeline: String,
        /// Events as the pipeline reads them, before any stage.
        #[arg(long, group = "point")]
        input: bool,
        /// What it publishes (the default).
        #[arg(long, group = "point")]
        output: bool,
        /// Its dead letters. They hold whole events, personal data included.
        #[arg(long, group = "point")]
        dead_letters: bool,
        /// What the stage of this name passes on to the next.
        #[arg(long, group = "point", value_name = "NAME")]
        stage: Option<String>,
        /// Stop after this many events.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Dead letters back through their pipeline, once: each original event
    /// (subject, headers, body) published again with a message id derived
    /// from it, so that replaying twice publishes nothing twice; then which
    /// of them failed again, and why.
    Replay {
        /// The dead letters: a stream, or a subject a stream stores
        /// (`storyforge.dlq.validate`).
        #[arg(long)]
        from: String,
        /// Only letters of this stage.
        #[arg(long)]
        stage: Option<String>,
        /// Only letters of this code.
        #[arg(long)]
        code: Option<String>,
        /// Only letters stored at or after this time (RFC 3339), or this long ago (`24h`).
        #[arg(long, value_parser = parse_instant)]
        since: Option<i64>,
        /// Only letters stored before this time (RFC 3339), or this long ago.
        #[arg(long, value_parser = parse_instant)]
        until: Option<i64>,
        /// Where the originals go: a subject, or a filter their own subjects
        /// must match to go back on them (`storyforge.raw.>`).
        #[arg(long)]
        to: String,
        /// Publish nothing: run each original through the current version of
        /// its pipeline in --pipeline FILE and say what would become of it.
        #[arg(long, requires = "pipeline")]
        dry_run: bool,
        /// The pipeline file, for --dry-run.
        #[arg(long, value_name = "FILE")]
        pipeline: Option<PathBuf>,
        /// Replay events replayed before too.
        #[arg(long)]
        again: bool,
        /// How long to watch for replayed events failing again.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        wait: Duration,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// A release's history: revision, time, who, message, version ids.
    Releases {
        name: String,
        /// Then remove the stored files that no kept revision of any release
        /// uses (files are shared between releases), except those uploaded
        /// within `--grace`.
        #[arg(long)]
        prune: bool,
        /// With --prune: how long an unused file is kept after its upload,
        /// for a deploy that has uploaded its files and not yet published.
        #[arg(long, default_value = "15m", value_parser = parse_duration, requires = "prune")]
        grace: Duration,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Publish an earlier revision of a release again, as its newest: the
    /// one before the current, or `--to REVISION`.
    Rollback {
        name: String,
        #[arg(long)]
        to: Option<u64>,
        #[arg(long, default_value = "")]
        message: String,
        #[command(flatten)]
        nats: NatsArgs,
    },
}

#[derive(Subcommand)]
enum New {
    /// A plugin project of its own (outside this repository), with a unit
    /// test, a pipeline file that uses it and `sluice test` cases, all
    /// passing as written; `./build.sh` builds the component.
    Plugin {
        /// The plugin's (and the crate's) name.
        name: String,
        /// A transform (says what becomes of each event) or a sink (keeps
        /// state, ends its pipeline, emits events of its own).
        #[arg(long, value_enum, default_value = "transform")]
        world: crate::scaffold::World,
        /// Rust; python and js are not written yet.
        #[arg(long, value_enum, default_value = "rust")]
        lang: crate::scaffold::Lang,
        /// Where the project's folder is created.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The sluice-plugin SDK (`plugins/sdk` of a sluice checkout); by
        /// default the one this sluice was built from.
        #[arg(long, default_value_os_t = crate::scaffold::default_sdk())]
        sdk: PathBuf,
    },
}

/// Where NATS is and how to authenticate to it. Given on the command line,
/// these override the file's `[nats]` table; secrets are read from a
/// variable or a file, never given as arguments (which `ps` shows).
#[derive(clap::Args, Clone, Default)]
struct NatsArgs {
    /// NATS server URL; overrides `[nats] url`. For `run FILE` with neither,
    /// a local nats-server is started and stopped with sluice.
    #[arg(long = "nats", value_name = "URL")]
    url: Option<String>,
    /// A credentials file (a user JWT and its NKey seed).
    #[arg(long, value_name = "FILE")]
    nats_creds: Option<PathBuf>,
    /// A file holding an NKey seed.
    #[arg(long, value_name = "FILE")]
    nats_nkey: Option<PathBuf>,
    /// A token, read from this variable.
    #[arg(long, value_name = "VARIABLE")]
    nats_token_env: Option<String>,
    /// A token, read from this file.
    #[arg(long, value_name = "FILE")]
    nats_token_file: Option<PathBuf>,
    /// A user, with --nats-password-env or --nats-password-file.
    #[arg(long, value_name = "NAME")]
    nats_user: Option<String>,
    #[arg(long, value_name = "VARIABLE")]
    nats_password_env: Option<String>,
    #[arg(long, value_name = "FILE")]
    nats_password_file: Option<PathBuf>,
    /// TLS, trusting this CA certificate (PEM) beside the system's.
    #[arg(long, value_name = "FILE")]
    nats_tls_ca: Option<PathBuf>,
    /// TLS with this client certificate (PEM), with --nats-tls-key.
    #[arg(long, value_name = "FILE")]
    nats_tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    nats_tls_key: Option<PathBuf>,
}

impl NatsArgs {
    /// The URL given, or `fallback` (a file's `[nats] url`).
    fn url_or(&self, fallback: Option<&String>, command: &str) -> Result<String> {
        self.url.clone().or_else(|| fallback.cloned()).with_context(|| format!("`sluice {command}` needs a NATS server: give --nats URL"))
    }

    /// The security the flags give, or `None` when they give none (and a
    /// file's `[nats]` table applies).
    fn security(&self) -> Result<Option<config::NatsSecurity>> {
        use config::{NatsAuth, Secret, TlsSpec};
        let secret = |env: &Option<String>, file: &Option<PathBuf>, what: &str| -> Result<Option<Secret>> {
            match (env, file) {
                (Some(_), Some(_)) => anyhow::bail!("give the NATS {what} from a variable or from a file, not both"),
                (Some(name), None) => Ok(Some(Secret::Env(name.clone()))),
                (None, Some(path)) => Ok(Some(Secret::File(path.clone()))),
                (None, None) => Ok(None),
            }
        };
        let token = secret(&self.nats_token_env, &self.nats_token_file, "token")?;
        let password = secret(&self.nats_password_env, &self.nats_password_file, "password")?;
        let user = match (&self.nats_user, password) {
            (Some(user), Some(password)) => Some(NatsAuth::UserPassword { user: user.clone(), password }),
            (Some(_), None) => anyhow::bail!("--nats-user needs --nats-password-env VARIABLE or --nats-password-file FILE"),
            (None, Some(_)) => anyhow::bail!("a NATS password needs --nats-user NAME"),
            (None, None) => None,
        };
        let auths: Vec<NatsAuth> = [self.nats_creds.clone().map(NatsAuth::Creds), self.nats_nkey.clone().map(NatsAuth::NKey), token.map(NatsAuth::Token), user]
            .into_iter()
            .flatten()
            .collect();
        if auths.len() > 1 {
            anyhow::bail!("give one way to authenticate to NATS: a credentials file, an NKey, a token, or a user and password");
        }
        let identity = match (&self.nats_tls_cert, &self.nats_tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => anyhow::bail!("a TLS client certificate needs both --nats-tls-cert and --nats-tls-key"),
        };
        let tls = (self.nats_tls_ca.is_some() || identity.is_some()).then(|| TlsSpec { ca: self.nats_tls_ca.clone(), identity });
        let auth = auths.into_iter().next();
        if auth.is_none() && tls.is_none() {
            return Ok(None);
        }
        Ok(Some(config::NatsSecurity { auth: auth.unwrap_or_default(), tls }))
    }

    /// Connects to the URL given with the security given (or none).
    async fn connect(&self, command: &str) -> Result<crate::nats::Connection> {
        let url = self.url_or(None, command)?;
        crate::nats::connect_with(&url, &format!("sluice {command}"), &self.security()?.unwrap_or_default()).await
    }
}

fn parse_listen(text: &str) -> Result<String, String> {
    config::listen_address(text).map(|()| text.to_string())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    config::units::duration(text)
}

/// An instant as RFC 3339, or a duration ago, in Unix milliseconds.
fn parse_instant(text: &str) -> Result<i64, String> {
    if let Ok(ms) = sluice_kit::time::parse_rfc3339(text) {
        return Ok(ms);
    }
    let ago = config::units::duration(text)
        .map_err(|_| format!("expected an RFC 3339 time such as 2026-11-24T10:00:00Z or a duration ago such as 24h, found {text:?}"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Ok(now.saturating_sub(ago).as_millis() as i64)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let outcome = match cli.command {
        Command::Run { file, release, nats, no_watch, stats_interval, metrics } => {
            let source = match (file, release) {
                (Some(file), _) => runtime::Source::File(file),
                (None, Some(release)) => runtime::Source::Release(release),
                (None, None) => unreachable!("clap requires a file or --release"),
            };
            nats.security().and_then(|nats_security| {
                let options = RunOptions { source, nats_url: nats.url, nats_security, watch: !no_watch, stats_interval, metrics };
                // The signals are listened for before anything starts, so that one
                // that comes while sluice starts stops it cleanly once it has.
                on_runtime(async { runtime::run(options, shutdown_signal()).await })
            })
        }
        Command::New { what: New::Plugin { name, world, lang, dir, sdk } } => crate::scaffold::new_plugin(&name, world, lang, &dir, &sdk).map(|project| {
            let world = match world {
                crate::scaffold::World::Transform => "transform",
                crate::scaffold::World::Sink => "sink",
            };
            println!("wrote {}: a {world} in {}; now:", project.display(), lang.title());
            println!("  cd {} && {} && ./build.sh && sluice test pipeline.toml", project.display(), crate::scaffold::unit_test_command(lang));
        }),
        Command::Validate { files } => validate(&files),
        Command::Deploy { file, name, message, nats, wait, timeout } => on_runtime(deploy(file, name, message, nats, wait.then_some(timeout))),
        Command::Status { name, nats } => on_runtime(status(name, nats)),
        Command::Tap { pipeline, input, output: _, dead_letters, stage, limit, nats } => {
            let point = match (input, dead_letters, stage) {
                (_, _, Some(stage)) => runtime::tap::Point::Stage(stage),
                (true, _, _) => runtime::tap::Point::Input,
                (_, true, _) => runtime::tap::Point::DeadLetters,
                _ => runtime::tap::Point::Output,
            };
            on_runtime(tap(pipeline, point, limit, nats))
        }
        Command::Replay { from, stage, code, since, until, to, dry_run, pipeline, again, wait, nats } => {
            let options =
                crate::replay::Options { from, stage, code, since_ms: since, until_ms: until, to, dry_run: pipeline.filter(|_| dry_run), again, wait };
            on_runtime(async move { crate::replay::run(&nats.connect("replay").await?, &options).await })
        }
        Command::Releases { name, prune, grace, nats } => on_runtime(releases(name, prune.then_some(grace), nats)),
        Command::Rollback { name, to, message, nats } => on_runtime(rollback(name, to, message, nats)),
        Command::Test { file, cases } => test_cases::run(&file, &cases).and_then(|summary| {
            if summary.failed > 0 {
                anyhow::bail!("{} of {} cases failed", summary.failed, summary.failed + summary.passed);
            }
            Ok(())
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sluice: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn on_runtime(work: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
        .and_then(|runtime| runtime.block_on(work))
}

/// A file checked as `validate` checks it: every problem, then every
/// pipeline prepared (compiled, linked, `init`ed) with stand-ins for the
/// variables this machine lacks. Returns it and each pipeline's version id.
fn checked(engine: &PluginEngine, path: &std::path::Path) -> Result<(PipelineFile, Vec<(String, String)>)> {
    let (clock, env) = (Clock::system(), Environment::with_stand_ins());
    let file = config::load(path)?;
    // Every pipeline is prepared, so that one run reports each that fails.
    let (prepared, refused): (Vec<_>, Vec<_>) = file.pipelines.iter().map(|spec| PipelineVersion::prepare(engine, spec, &clock, &env)).partition(Result::is_ok);
    if !refused.is_empty() {
        let source = std::fs::read_to_string(path).unwrap_or_default();
        let problems = refused.into_iter().filter_map(Result::err).flat_map(|error| refusal_problems(&source, &error)).collect();
        return Err(config::Problems::new(path, &source, problems).into());
    }
    let versions = prepared.into_iter().flatten().map(|version| (version.spec.name.clone(), version.id.clone())).collect();
    Ok((file, versions))
}

/// What a pipeline that could not be prepared shows: a plugin's refusal of
/// its config, problem by problem at the line of each key, or the error as
/// it is.
fn refusal_problems(source: &str, error: &anyhow::Error) -> Vec<config::Problem> {
    let Some(refused) = error.chain().find_map(|cause| cause.downcast_ref::<ConfigRefused>()) else {
        return vec![config::Problem::whole(format!("{error:#}"))];
    };
    let problems = refused.problems.iter().map(|problem| {
        let place = match problem.path.is_empty() {
            true => String::new(),
            false => format!("config `{}`: ", config_path(&problem.path)),
        };
        let message = format!("pipeline `{}`: stage `{}`: {place}{}", refused.pipeline, refused.stage, problem.message);
        match config::locate::stage_config(source, &refused.pipeline, &refused.stage, &problem.path) {
            Some(span) => config::Problem::at(span, message),
            None => config::Problem::whole(message),
        }
    });
    problems.collect()
}

fn validate(files: &[PathBuf]) -> Result<()> {
    let engine = PluginEngine::new()?;
    let env = Environment::with_stand_ins();
    let mut failed = 0;
    for path in files {
        match checked(&engine, path) {
            Ok((file, _)) => {
                let names: Vec<&str> = file.pipelines.iter().map(|p| p.name.as_str()).collect();
                println!("{}: ok ({} pipeline{}: {})", path.display(), names.len(), if names.len() == 1 { "" } else { "s" }, names.join(", "));
                let unset: Vec<&str> = variables(&file).into_iter().filter(|name| !env.has(name)).collect();
                if !unset.is_empty() {
                    println!("{}: not set here, checked with stand-in values; `sluice run` needs them: {}", path.display(), unset.join(", "));
                }
            }
            Err(error) => {
                failed += 1;
                eprintln!("{error:#}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} file{} failed validation", files.len(), if files.len() == 1 { "" } else { "s" });
    }
    Ok(())
}

async fn deploy(path: PathBuf, name: Option<String>, message: String, nats: NatsArgs, wait: Option<Duration>) -> Result<()> {
    let security = nats.security()?;
    let engine = PluginEngine::new()?;
    let (file, versions) = tokio::task::block_in_place(|| checked(&engine, &path)).context("the file does not validate; nothing was published")?;
    let name = match name {
        Some(name) => name,
        None => path.file_stem().and_then(|s| s.to_str()).context("the pipeline file has no name")?.to_string(),
    };
    let url = nats.url_or(file.nats_url.as_ref(), "deploy")?;
    let connection = crate::nats::connect_with(&url, "sluice deploy", security.as_ref().unwrap_or(&file.nats_security)).await?;
    let revision = crate::release::deploy(&connection, &path, &file, versions.clone(), &name, crate::release::Deployer::here(message)).await?;
    let versions: Vec<String> = versions.iter().map(|(pipeline, id)| format!("{pipeline} {id}")).collect();
    println!("release {name}: revision {revision} ({})", versions.join(", "));
    match wait {
        Some(timeout) => wait_for_fleet(&connection, &name, revision, timeout).await,
        None => Ok(()),
    }
}

/// Waits until every live host of `name` runs `revision` or refused it, so
/// that each host's outcome is told (one that refuses first does not cut
/// short the wait for the others).
async fn wait_for_fleet(connection: &crate::nats::Connection, name: &str, revision: u64, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let hosts = crate::release::status::live(connection, Some(name)).await?;
        let refused: Vec<_> = hosts.iter().filter(|h| h.refused.as_ref().is_some_and(|r| r.revision == revision)).collect();
        let behind: Vec<_> = hosts.iter().filter(|h| h.revision != revision && !refused.contains(h)).collect();
        let done = behind.is_empty();
        if done || tokio::time::Instant::now() >= deadline {
            for host in &hosts {
                let outcome = match &host.refused {
                    Some(refusal) if refusal.revision == revision => format!("refused: {}", refusal.reason),
                    _ if host.revision == revision => "runs it".to_string(),
                    _ => format!("still on revision {}", host.revision),
                };
                println!("  {}: {outcome}", host.host);
            }
            if hosts.is_empty() {
                println!("  no live host runs release {name}");
            }
            if !refused.is_empty() {
                let names: Vec<&str> = refused.iter().map(|h| h.host.as_str()).collect();
                anyhow::bail!("revision {revision} of release {name} was refused by {}", names.join(", "));
            }
            if !behind.is_empty() {
                let names: Vec<&str> = behind.iter().map(|h| h.host.as_str()).collect();
                anyhow::bail!("after {}, {} still do not run revision {revision}", humantime::format_duration(timeout), names.join(", "));
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn status(name: Option<String>, nats: NatsArgs) -> Result<()> {
    let connection = nats.connect("status").await?;
    let hosts = crate::release::status::live(&connection, name.as_deref()).await?;
    println!("{:<32}  {:<20}  {:>8}  {:<8}  {:<20}  reason", "host", "release", "revision", "state", "since");
    for host in hosts {
        let (state, reason) = match &host.refused {
            Some(refusal) => ("refused", format!("revision {}: {}", refusal.revision, refusal.reason)),
            None => ("running", String::new()),
        };
        println!("{:<32}  {:<20}  {:>8}  {:<8}  {:<20}  {reason}", host.host, host.release, host.revision, state, host.since);
    }
    Ok(())
}

/// How long `tap` waits for a host to answer before it says none runs the pipeline.
const TAP_ANSWER: Duration = Duration::from_secs(10);

async fn tap(pipeline: String, point: runtime::tap::Point, limit: usize, nats: NatsArgs) -> Result<()> {
    use runtime::tap::{Hello, Point, Request, Tapped};
    use tokio_stream::StreamExt as _;
    let connection = nats.connect("tap").await?;
    let client = &connection.client;
    let inbox = client.new_inbox();
    let mut copies = client.subscribe(inbox.clone()).await.context("cannot subscribe to the tap's inbox")?;
    if point == Point::DeadLetters {
        eprintln!("sluice tap: dead letters hold whole events, personal data included, unredacted; keep what is shown here to yourself");
    }
    let subject = format!("sluice.tap.{pipeline}");
    let ask = |limit: usize| serde_json::to_vec(&Request { point: point.clone(), inbox: inbox.clone(), limit }).expect("a request serialises");
    client.publish(subject.clone(), ask(limit).into()).await.context("cannot ask for the tap")?;
    let started = tokio::time::Instant::now();
    let mut renew = tokio::time::interval(runtime::tap::EXPIRY / 3);
    renew.tick().await;
    let (mut shown, mut hosts) = (0, std::collections::BTreeSet::new());
    let mut refused = None;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    while shown < limit {
        tokio::select! {
            message = copies.next() => {
                let Some(message) = message else { break };
                if let Ok(hello) = serde_json::from_slice::<Hello>(&message.payload) {
                    if let Point::Stage(stage) = &point
                        && !hello.stages.contains(stage)
                    {
                        refused = Some(anyhow::anyhow!(
                            "pipeline `{pipeline}` on {} has no stage `{stage}`; its stages: {}",
                            hello.tapping,
                            hello.stages.join(", ")
                        ));
                        break;
                    }
                    eprintln!("sluice tap: {} taps {}", hello.tapping, hello.pipeline);
                    hosts.insert(hello.tapping);
                } else if let Ok(tapped) = serde_json::from_slice::<Tapped>(&message.payload) {
                    println!("{}", serde_json::to_string_pretty(&tapped)?);
                    shown += 1;
                }
            }
            _ = renew.tick() => {
                if hosts.is_empty() && started.elapsed() >= TAP_ANSWER {
                    anyhow::bail!("no host answered on {subject} within {}: is pipeline `{pipeline}` running?", humantime::format_duration(TAP_ANSWER));
                }
                client.publish(subject.clone(), ask(limit - shown).into()).await.context("cannot renew the tap")?;
            }
            _ = &mut interrupted => break,
        }
    }
    // Told to stop, the hosts send no more.
    client.publish(subject, ask(0).into()).await.context("cannot end the tap")?;
    client.flush().await.context("cannot end the tap")?;
    refused.map_or(Ok(()), Err)
}

async fn releases(name: String, prune: Option<Duration>, nats: NatsArgs) -> Result<()> {
    let connection = nats.connect("releases").await?;
    println!("{:>8}  {:<20}  {:<24}  {:<40}  versions", "revision", "time", "who", "message");
    for revision in crate::release::history(&connection, &name).await? {
        let m = &revision.manifest;
        let versions: Vec<String> = m.versions.iter().map(|(pipeline, id)| format!("{pipeline}={id}")).collect();
        println!("{:>8}  {:<20}  {:<24}  {:<40}  {}", revision.revision, m.time, format!("{}@{}", m.user, m.host), m.message, versions.join(" "));
    }
    if let Some(grace) = prune {
        let p = crate::release::prune(&connection, grace).await?;
        println!(
            "pruned: {} file{} ({} bytes) that no kept revision of the {} release{} uses; {} in use; {} unused but uploaded within {} (a deploy may be publishing them)",
            p.removed,
            if p.removed == 1 { "" } else { "s" },
            p.bytes,
            p.releases,
            if p.releases == 1 { "" } else { "s" },
            p.kept,
            p.recent,
            humantime::format_duration(grace)
        );
    }
    Ok(())
}

async fn rollback(name: String, to: Option<u64>, message: String, nats: NatsArgs) -> Result<()> {
    let connection = nats.connect("rollback").await?;
    let (revision, target) = crate::release::rollback(&connection, &name, to, crate::release::Deployer::here(message)).await?;
    println!("release {name}: revision {revision} is revision {target} again");
    Ok(())
}

/// Every environment variable a file's pipelines read: stages' grants,
/// webhook URLs and headers, each once, in order of appearance.
fn variables(file: &PipelineFile) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for pipeline in &file.pipelines {
        let stages = pipeline.stages.iter().flat_map(|stage| stage.env.iter().map(String::as_str));
        let webhook = pipeline
            .webhook
            .iter()
            .flat_map(|webhook| std::iter::once(&webhook.url).chain(webhook.headers.iter().map(|(_, value)| value)).filter_map(|value| value.variable()));
        for name in stages.chain(webhook) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// Listens for SIGINT and SIGTERM from the moment it is called (on the
/// runtime), and completes on the first. Before, a signal kills the process.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let listening = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
    async move {
        let (Ok(mut interrupt), Ok(mut terminate)) = listening else {
            tracing::error!("Cannot listen for SIGINT/SIGTERM; stop sluice with SIGKILL.");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received."),
            _ = terminate.recv() => tracing::info!("SIGTERM received."),
        }
    }
}

/// The log, to stderr, filtered by `SLUICE_LOG`; every warning and error
/// is also counted in the metrics, whatever the filter lets through.
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let log = match format {
        LogFormat::Text => text.boxed(),
        LogFormat::Json => text.json().boxed(),
    };
    // The counting layer wants warnings and errors only, so that debug and
    // trace call sites stay disabled unless `SLUICE_LOG` asks for them.
    let counted = crate::metrics::LogEvents.with_filter(tracing_subscriber::filter::LevelFilter::WARN);
    tracing_subscriber::registry().with(log.with_filter(filter)).with(counted).init();
}
