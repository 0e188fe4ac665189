//! Plugins: WebAssembly components loaded into wasmtime.
//!
//! - `bindings`: the code generated from `wit/`, for the current contract and
//!   for `@0.1.0` (the only `bindgen!`s).
//! - `engine`: the shared engine, linker, epoch ticker and component cache.
//! - `disk_cache`: compiled components kept on disk across runs.
//! - `state`: what one instance's store holds, and its memory cap.
//! - `instance`: one running instance, of a transform or of a sink (with its
//!   snapshot and restore) of either contract version, the faults a call can
//!   end in, and an `init`'s refusal of its config.
//! - `imports`: the host side of `log`, `clock` and `counters`.

pub mod bindings;
pub mod disk_cache;
pub mod engine;
pub mod imports;
pub mod instance;
pub mod state;

pub use bindings::{ConfigProblem, Event, Outcome, Rejection};
pub use engine::{Loaded, PluginEngine};
pub use imports::{Clock, Counters};
pub use instance::{CURRENT_CONTRACT, ConfigRefused, Fault, SinkInstance, SinkPre, TransformInstance, TransformPre, config_path};
pub use state::{Grants, StageContext, StageState};

/// wasmtime's error type is its own; this brings its results into `anyhow`
/// so that `.context(...)` can name what was being done.
pub(crate) trait WasmtimeResult<T> {
    fn anyhow(self) -> anyhow::Result<T>;
}

impl<T> WasmtimeResult<T> for wasmtime::Result<T> {
    fn anyhow(self) -> anyhow::Result<T> {
        self.map_err(anyhow::Error::from)
    }
}
