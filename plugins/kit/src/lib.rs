//! Helpers shared by sluice plugins, with no bindings of their own (a plugin
//! generates its bindings for the world it implements):
//! - `time`: RFC 3339 timestamps to and from Unix milliseconds;
//! - `uuid`: UUIDv4 checks, and ids derived from content;
//! - `canonical`: canonical JSON (keys sorted, no insignificant white space);
//! - `sketch`: quantiles over unbounded streams in bounded memory;
//! - `config_path`: a path into a stage's config, as messages write it.
//!
//! Everything here is plain Rust and is unit-tested on the host target.

pub mod canonical;
pub mod config_path;
pub mod sketch;
pub mod time;
pub mod uuid;
