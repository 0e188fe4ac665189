//! sluice: a host runtime that chains WebAssembly components into event
//! pipelines declared in TOML, reading from and writing to NATS subjects.
//!
//! Layout:
//! - `config`: pipeline files, read in two phases (strict structs, then a
//!   validation pass that reports every problem with its line).
//! - `plugin`: the wasmtime side: engine, component cache, instances with time
//!   and memory limits, the host imports plugins see.
//! - `pipeline`: a checked pipeline turned into a runnable version (compiled,
//!   initialised), and the chain that runs a batch through its stages, isolating
//!   poison events.
//! - `nats`: the managed nats-server, connection, streams, input and publishing.
//! - `runtime`: `sluice run`: workers, hot swap on file changes, progress, shutdown.
//! - `release`: releases over NATS: `sluice deploy`, `releases`, `rollback`.
//! - `test_cases`: `sluice test`: cases beside a pipeline, run without NATS.
//! - `replay`: `sluice replay`: dead letters back through their pipeline, once.
//! - `cli`: the command line.
//! - `subject`: NATS subject checks and wildcard matching.

pub mod cli;
pub mod config;
pub mod metrics;
pub mod nats;
pub mod pipeline;
pub mod plugin;
pub mod release;
pub mod replay;
pub mod runtime;
pub mod scaffold;
pub mod subject;
pub mod test_cases;
