//! The one place that generates host bindings from `wit/`. Both worlds share
//! the `types` interface and the host imports, so the sink bindings reuse the
//! transform ones.

pub mod transform {
    wasmtime::component::bindgen!({ world: "transform", path: "../wit" });
}

pub mod sink {
    wasmtime::component::bindgen!({
        world: "sink",
        path: "../wit",
        with: {
            "sluice:plugin/types": super::transform::sluice::plugin::types,
            "sluice:plugin/log": super::transform::sluice::plugin::log,
            "sluice:plugin/clock": super::transform::sluice::plugin::clock,
            "sluice:plugin/counters": super::transform::sluice::plugin::counters,
        },
    });
}

pub use transform::sluice::plugin::types::{Event, Outcome, Rejection};
