//! The sluice test suite, in one binary with the helpers it shares with the
//! benchmarks (`tests/support`).
//!
//! - `alerts`: StoryForge alerting over NATS: a replayed day's timeline, an
//!   alert across a plugin swap and a host restart, a webhook output.
//! - `chain`: the batch path in-process, with the real plugins: outcomes,
//!   admission checks, poison-event isolation, components that are broken or
//!   of the wrong world.
//! - `config`: `sluice validate` on every `tests/config/*.toml`, compared with
//!   the `.err` file beside it (`SLUICE_BLESS=1` rewrites them).
//! - `contract`: a plugin on `sluice:plugin@0.1.0` beside plugins on `@0.2.0`
//!   in one pipeline over NATS; `validate` at the line of a refused key.
//! - `release`: `sluice deploy`, `releases` and `rollback` over NATS.
//! - `replay`: `sluice replay`: dead letters back through the StoryForge
//!   ingest after its schema is widened, once; a dry run changes nothing.
//! - `run`: the `sluice` binary against a real nats-server: routing, dead
//!   letters, bad input, poison events, queue groups, refusing bad config.
//! - `tap`: `sluice tap` on a running pipeline's outputs, inputs and dead
//!   letters, up to a limit; no host running it is an error.
//! - `swap`: hot swaps under load, and changes that must not be swapped in.
//! - `crash`: SIGKILL mid-stream and restart with a JetStream input, and a
//!   sink storing its state periodically (`state_every`) counting each event once.
//! - `fleet`: hosts following a release: new revisions, refusals, status,
//!   `deploy --wait`, rollback.
//! - `hostile`: generated hostile bodies and pipeline files, in-process and
//!   thousands over NATS: one outcome each, nothing held up.
//! - `metrics`: `sluice run --metrics`: `/metrics` counts exactly the
//!   traffic sent, as the progress log does; `/healthz` and `/readyz`.
//! - `outage`: nats-server killed and restarted, or paused past `ack_wait`,
//!   under load: nothing lost or repeated, no restart of the host.
//! - `polyglot`: plugins in Python and JavaScript beside Rust: the same
//!   bytes from the same logic over NATS, a pipeline of three languages, and
//!   the reason of an exception that escapes a component without the SDK.
//! - `prometheus`: a real Prometheus scraping `sluice run` under load reads
//!   its counts, rates and histogram quantiles through its HTTP API.
//! - `poison`: events too large for a whole dead letter, outputs NATS refuses,
//!   events handed out too often: one dead letter each, nothing held up.
//! - `security`: servers that ask for a token, a password, an NKey, a
//!   credentials file or TLS with a client certificate; wrong secrets refused.
//! - `storyforge`: the StoryForge pipeline: its `sluice test` cases, a day
//!   of mixed events through `sluice run` over NATS, and that day's rollups
//!   and activation share, exact.

mod alerts;
mod chain;
mod config;
mod contract;
mod crash;
mod fleet;
mod hostile;
mod metrics;
mod outage;
mod poison;
mod polyglot;
mod prometheus;
mod release;
mod replay;
mod run;
mod scaffold;
mod security;
mod storyforge;
#[path = "../support/mod.rs"]
mod support;
mod swap;
mod tap;
