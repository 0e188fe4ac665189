//! The one place that generates host bindings from `wit/`: the current
//! package (`sluice:plugin@0.2.1`, `wit/sluice.wit`, to which the linker also
//! binds plugins built against 0.2.0) and the frozen one every
//! older plugin was built against (`@0.1.0`, `wit/0.1.0/sluice.wit`). Both
//! worlds of a version share its `types` and host imports, so the sink
//! bindings reuse the transform ones; both versions' events and outcomes are
//! the same shapes, so the 0.1.0 bindings reuse the current types and the
//! rest of the host never asks which version a plugin speaks.

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
            "sluice:plugin/metrics": super::transform::sluice::plugin::metrics,
        },
    });
}

/// `sluice:plugin@0.1.0`: its own host imports (they are other instances to
/// the linker), the current types.
pub mod v0_1 {
    pub mod transform {
        wasmtime::component::bindgen!({
            world: "transform",
            path: "../wit/0.1.0",
            with: { "sluice:plugin/types": crate::plugin::bindings::transform::sluice::plugin::types },
        });
    }

    pub mod sink {
        wasmtime::component::bindgen!({
            world: "sink",
            path: "../wit/0.1.0",
            with: {
                "sluice:plugin/types": crate::plugin::bindings::transform::sluice::plugin::types,
                "sluice:plugin/log": super::transform::sluice::plugin::log,
                "sluice:plugin/clock": super::transform::sluice::plugin::clock,
                "sluice:plugin/counters": super::transform::sluice::plugin::counters,
            },
        });
    }
}

pub use transform::sluice::plugin::types::{ConfigProblem, Event, Outcome, Rejection};
