//! Where a run's time goes. `RUST_LOG=nestcache=debug` logs every phase of `run` with its
//! milliseconds, so a slow warm start can be pinned on nestcache, containerd or the shim
//! without a profiler.

use std::time::Instant;

pub struct Phases {
    start: Instant,
    last: Instant,
}

impl Phases {
    pub fn new() -> Self {
        let now = Instant::now();
        Phases {
            start: now,
            last: now,
        }
    }

    /// Logs the phase that just ended.
    pub fn mark(&mut self, phase: &'static str) {
        let now = Instant::now();
        tracing::debug!(
            phase,
            ms = format!("{:.1}", (now - self.last).as_secs_f64() * 1e3),
            total_ms = format!("{:.1}", (now - self.start).as_secs_f64() * 1e3),
            "run"
        );
        self.last = now;
    }
}
