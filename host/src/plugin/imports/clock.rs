//! The clock plugins see, through both `sluice:plugin/clock` and WASI's clocks.
//! In production it is the system clock; `sluice test` and the host's own
//! tests set it by hand, so time-dependent plugins behave the same every run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

use crate::plugin::bindings::transform::sluice::plugin::clock;
use crate::plugin::bindings::v0_1::transform::sluice::plugin::clock as clock_0_1;
use crate::plugin::state::StageState;

#[derive(Clone, Debug)]
pub enum Clock {
    System {
        started: Instant,
    },
    /// Nanoseconds since the Unix epoch, moved only by whoever holds it.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub fn system() -> Self {
        Clock::System { started: Instant::now() }
    }

    pub fn manual(now_ns: u64) -> Self {
        Clock::Manual(Arc::new(AtomicU64::new(now_ns)))
    }

    /// Sets a manual clock; a system clock cannot be set and is left alone.
    pub fn set(&self, now_ns: u64) {
        if let Clock::Manual(now) = self {
            now.store(now_ns, Ordering::Relaxed);
        }
    }

    /// Nanoseconds since the Unix epoch.
    pub fn now_ns(&self) -> u64 {
        match self {
            Clock::System { .. } => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
            Clock::Manual(now) => now.load(Ordering::Relaxed),
        }
    }
}

impl HostWallClock for Clock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.now_ns())
    }
}

impl HostMonotonicClock for Clock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        match self {
            Clock::System { started } => started.elapsed().as_nanos() as u64,
            Clock::Manual(now) => now.load(Ordering::Relaxed),
        }
    }
}

impl clock::Host for StageState {
    fn now(&mut self) -> u64 {
        self.stage.clock.now_ns()
    }
}

impl clock_0_1::Host for StageState {
    fn now(&mut self) -> u64 {
        self.stage.clock.now_ns()
    }
}
