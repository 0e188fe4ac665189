//! A pipeline as the host runs it, independent of NATS.
//!
//! - `version`: a checked [`PipelineSpec`](crate::config::PipelineSpec) made
//!   runnable: components compiled and linked, `init` tried, a content hash.
//! - `chain`: one worker's instances of a version, and the batch path through
//!   them: admission checks, each stage in turn, poison-event isolation.
//! - `body` (in `sluice_kit::body`): the host's check of a JSON body (one object, no name twice).
//! - `dead_letter`: the envelope a rejected event is published in.

pub mod chain;
pub mod dead_letter;
pub mod version;

pub use chain::{BatchResult, Chain, Output, Reject};
pub use dead_letter::DeadLetter;
pub use version::{Environment, PipelineVersion};

/// Lower-case hex of bytes: content hashes in version ids, message ids and
/// release manifests.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Header naming the pipeline version that produced an output message.
pub const VERSION_HEADER: &str = "Sluice-Pipeline-Version";
/// Header naming the pipeline that produced an output message.
pub const PIPELINE_HEADER: &str = "Sluice-Pipeline";
