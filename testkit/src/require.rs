//! What a test needs from the machine. A test states it first thing:
//!
//! ```ignore
//! testkit::require!(containerd, root);
//! testkit::require!(tool "skopeo", tool "umoci");
//! ```
//!
//! When something is missing the test prints one `skipped <test>: <why>` line to stderr
//! and returns, so `cargo test` on a laptop runs the unit tests and says what it left
//! out. With `NESTCACHE_TEST_REQUIRE=1` (as `scripts/test.sh` sets) it fails instead, so
//! a CI machine that lost a prerequisite cannot pass by skipping.

use std::io::Write;
use std::path::Path;

/// A prerequisite.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    /// `CONTAINERD_ADDRESS` names the run's containerd (scripts/test.sh starts one).
    Containerd,
    /// Effective uid 0 (mounts, chown, runc).
    Root,
    /// A program on PATH.
    Tool(&'static str),
}

impl Need {
    /// Why it is missing, or None when it is there.
    pub fn missing(self) -> Option<String> {
        match self {
            Need::Containerd => std::env::var_os("CONTAINERD_ADDRESS").is_none().then(|| {
                "CONTAINERD_ADDRESS is not set (scripts/test.sh starts a private containerd)"
                    .to_string()
            }),
            // SAFETY: geteuid has no preconditions and cannot fail.
            Need::Root => (unsafe { libc::geteuid() } != 0).then(|| "needs root".to_string()),
            Need::Tool(name) => (!on_path(name))
                .then(|| format!("{name} is not on PATH (scripts/install-deps.sh installs it)")),
        }
    }
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let p = dir.join(name);
            p.is_file() && is_executable(&p)
        })
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

/// Whether every prerequisite in `needs` is there. If one is not, prints the one line
/// (or panics under `NESTCACHE_TEST_REQUIRE=1`) and returns false.
pub fn check(needs: &[Need]) -> bool {
    let Some(why) = needs.iter().find_map(|n| n.missing()) else {
        return true;
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("test");
    if strict() {
        panic!("{test}: {why}, and NESTCACHE_TEST_REQUIRE=1 forbids skipping");
    }
    // Straight to fd 2: libtest captures eprintln! of passing tests, and a skip must show.
    let line = format!("skipped {test}: {why}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    false
}

/// Whether a missing prerequisite fails the test instead of skipping it.
pub fn strict() -> bool {
    std::env::var("NESTCACHE_TEST_REQUIRE").is_ok_and(|v| v == "1")
}

/// Returns from the calling test unless every prerequisite is there; see the module docs.
#[macro_export]
macro_rules! require {
    ($($need:tt $($arg:literal)?),+ $(,)?) => {
        if !$crate::require::check(&[$($crate::require_need!($need $($arg)?)),+]) {
            return;
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! require_need {
    (containerd) => {
        $crate::require::Need::Containerd
    };
    (root) => {
        $crate::require::Need::Root
    };
    (tool $name:literal) => {
        $crate::require::Need::Tool($name)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tools_on_path_and_names_what_is_missing() {
        assert!(Need::Tool("sh").missing().is_none());
        let why = Need::Tool("no-such-tool-nestcache").missing().unwrap();
        assert!(why.contains("no-such-tool-nestcache"), "{why}");
    }
}
