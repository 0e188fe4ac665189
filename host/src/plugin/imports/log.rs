//! `sluice:plugin/log`: a plugin's log lines join the host's structured log,
//! tagged with the pipeline and stage they came from.

use crate::plugin::bindings::transform::sluice::plugin::log::{self, Level};
use crate::plugin::bindings::v0_1::transform::sluice::plugin::log as log_0_1;
use crate::plugin::state::StageState;

/// Longest message (and fields, together) kept from one log call.
const MAX_LOG_BYTES: usize = 4096;

impl log::Host for StageState {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let mut fields_text = String::new();
        for (name, value) in &fields {
            if fields_text.len() + message.len() > MAX_LOG_BYTES {
                break;
            }
            fields_text.push_str(&format!("{name}={value:?} "));
        }
        let message = truncate(&message, MAX_LOG_BYTES);
        let fields = fields_text.trim_end();
        let (pipeline, stage) = (&*self.stage.pipeline, &*self.stage.name);
        match level {
            Level::Trace => tracing::trace!(pipeline, stage, fields, "{message}"),
            Level::Debug => tracing::debug!(pipeline, stage, fields, "{message}"),
            Level::Info => tracing::info!(pipeline, stage, fields, "{message}"),
            Level::Warn => tracing::warn!(pipeline, stage, fields, "{message}"),
            Level::Error => tracing::error!(pipeline, stage, fields, "{message}"),
        }
    }
}

impl log_0_1::Host for StageState {
    fn log(&mut self, level: log_0_1::Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            log_0_1::Level::Trace => Level::Trace,
            log_0_1::Level::Debug => Level::Debug,
            log_0_1::Level::Info => Level::Info,
            log_0_1::Level::Warn => Level::Warn,
            log_0_1::Level::Error => Level::Error,
        };
        log::Host::log(self, level, message, fields);
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
