//! Shared test harness: every integration test talks to a real containerd (started by
//! scripts/test.sh, address in CONTAINERD_ADDRESS) and isolates itself with a unique
//! namespace and state dir, so tests run in parallel without shared global state.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The containerd the test run started. Tests that need one fail loudly without it.
pub fn containerd_address() -> String {
    std::env::var("CONTAINERD_ADDRESS").expect(
        "CONTAINERD_ADDRESS is not set: run the tests with scripts/test.sh, which starts a private containerd",
    )
}

/// A name unique to this process and call, safe for containerd ids and cache names.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// An isolated nestcache environment: own namespace, own state dir.
pub struct Env {
    pub namespace: String,
    pub state: tempfile::TempDir,
    pub address: String,
}

impl Env {
    pub fn new(prefix: &str) -> Self {
        Env {
            namespace: unique(prefix),
            state: tempfile::Builder::new()
                .prefix("nestcache-state-")
                .tempdir()
                .expect("temp state dir"),
            address: containerd_address(),
        }
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// A `nestcache` command bound to this environment.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nestcache"));
        c.env("CONTAINERD_ADDRESS", &self.address)
            .env("CONTAINERD_NAMESPACE", &self.namespace)
            .env("NESTCACHE_STATE_DIR", self.state.path())
            // Bridges are host-wide: only the network tests make them (tests/net.rs).
            .env("NESTCACHE_NET", "none")
            .env_remove("RUST_LOG");
        c
    }

    /// Runs nestcache with args; returns the output whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("spawn nestcache")
    }

    /// Runs nestcache and asserts success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "nestcache {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs nestcache, asserts failure, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "nestcache {args:?} should have failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// A containerd of the test's own, for tests that stop or restart it.
pub struct PrivateContainerd {
    pub dir: PathBuf,
    pub address: String,
}

impl PrivateContainerd {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nc-ctd-")
            .tempdir_in("/tmp")
            .expect("temp dir")
            .keep();
        let address = script(&["start", dir.to_str().expect("utf-8 temp dir")]);
        PrivateContainerd {
            dir,
            address: address.trim().to_string(),
        }
    }

    pub fn stop(&self) {
        script(&["stop", self.dir.to_str().expect("utf-8 temp dir")]);
    }

    pub fn restart(&self) {
        self.stop();
        script(&["start", self.dir.to_str().expect("utf-8 temp dir")]);
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn script(args: &[&str]) -> String {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/containerd.sh"
    ))
    .args(args)
    .output()
    .expect("run scripts/containerd.sh");
    assert!(
        out.status.success(),
        "scripts/containerd.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
