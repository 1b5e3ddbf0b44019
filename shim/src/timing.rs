//! Where a task's time goes inside the shim. At debug level (`RUST_LOG=debug` in the
//! environment containerd starts the shim with) every RPC, runc command and rootfs step
//! logs one line `phase=NAME id=ID ms=N`, the shim's half of what `RUST_LOG=nestcache=debug`
//! prints on the CLI side; `scripts/bench.py` reads both.

use std::time::Instant;

/// Runs `f`, logging how long it took as phase `phase` of container `id`.
pub fn timed<T>(phase: &str, id: &str, f: impl FnOnce() -> T) -> T {
    if !log::log_enabled!(log::Level::Debug) {
        return f();
    }
    let start = Instant::now();
    let out = f();
    log::debug!(
        "phase={phase} id={id} ms={:.2}",
        start.elapsed().as_secs_f64() * 1e3
    );
    out
}
