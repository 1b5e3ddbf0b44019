//! Where a task's time goes inside the shim. With `NESTCACHE_SHIM_TIMING=1` in the
//! environment containerd starts the shim with, every RPC, runc command and rootfs step
//! logs one line `phase=NAME id=ID ms=N` (the shim's half of what
//! `RUST_LOG=nestcache=debug` prints on the CLI side; `scripts/bench.py` reads both).
//!
//! An opt-in at info level, not debug: containerd closes a group shim's log when the
//! group's first task goes, and under a debug log level containerd-shim's signal loop
//! then logs every SIGPIPE its own write raised, which raises the next (a busy loop that
//! starves the reaper). Info-level lines only fail with EPIPE.

use std::sync::OnceLock;
use std::time::Instant;

/// The environment variable that turns timing on.
pub const TIMING_ENV: &str = "NESTCACHE_SHIM_TIMING";

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var(TIMING_ENV).is_ok_and(|v| v == "1"))
}

/// Runs `f`, logging how long it took as phase `phase` of container `id`.
pub fn timed<T>(phase: &str, id: &str, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let start = Instant::now();
    let out = f();
    log::info!(
        "phase={phase} id={id} ms={:.2}",
        start.elapsed().as_secs_f64() * 1e3
    );
    out
}
