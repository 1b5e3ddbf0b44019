//! The workspace's binaries, and running commands with failures that show their output.

use std::path::PathBuf;
use std::process::{Command, Output};

/// A binary of this workspace, built by cargo beside the running test binary
/// (`<target>/<profile>/deps/<test>` → `<target>/<profile>/<name>`), so that it works for
/// any package's tests and any `CARGO_TARGET_DIR`. Cargo builds a package's binaries
/// before its integration tests; a test needing another package's binary needs that
/// package built first (scripts/test.sh builds the shim).
pub fn cargo_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in <target>/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is not built: cargo build --workspace --bins",
        bin.display()
    );
    bin
}

/// Runs `cmd` and asserts success; returns its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

/// Runs `cmd` whatever its exit status: (success, stdout, stderr).
pub fn output(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (out.status.success(), stdout(&out), stderr(&out))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
