//! The containerd side of the harness: every integration test talks to a real containerd
//! (started by scripts/test.sh, address in CONTAINERD_ADDRESS) and isolates itself with a
//! unique namespace and state dir, so tests run in parallel without shared global state.
//! Tests that need it start with `testkit::require!(containerd)`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::cmd::cargo_bin;

/// The shim binary's name, as containerd looks it up on its PATH.
pub const SHIM_BINARY: &str = "containerd-shim-nestcache-v2";

/// The containerd the test run started. A test that needs one says so first with
/// `testkit::require!(containerd)`; without that this panics.
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
        let mut c = Command::new(cargo_bin("nestcache"));
        c.env("CONTAINERD_ADDRESS", &self.address)
            .env("CONTAINERD_NAMESPACE", &self.namespace)
            .env("NESTCACHE_STATE_DIR", self.state.path())
            // Bridges are host-wide: only the network tests make them (tests/net.rs).
            .env("NESTCACHE_NET", "none")
            // A cache's shim exits with its last nested container, so that a test's
            // end finds no shim (tests of the linger set their own).
            .env("NESTCACHE_SHIM_LINGER_MS", "0")
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

/// A containerd of the test's own, for tests that stop or restart it. When the shim is
/// built (scripts/test.sh builds it), its PATH has the shim, as the run's containerd has.
pub struct PrivateContainerd {
    pub dir: PathBuf,
    pub address: String,
    path: String,
    /// More environment for containerd (and so for the shims it runs).
    env: Vec<(String, String)>,
}

impl PrivateContainerd {
    pub fn start() -> PrivateContainerd {
        PrivateContainerd::start_with_env(&[])
    }

    pub fn start_with_env(env: &[(&str, &str)]) -> PrivateContainerd {
        let dir = tempfile::Builder::new()
            .prefix("nc-ctd-")
            .tempdir_in("/tmp")
            .expect("temp dir")
            .keep();
        let mut path = std::env::var("PATH").unwrap_or_default();
        if let Some(shim) = built_shim() {
            let bin = dir.join("bin");
            std::fs::create_dir_all(&bin).expect("mkdir bin");
            std::os::unix::fs::symlink(shim, bin.join(SHIM_BINARY)).expect("link shim");
            path = format!("{}:{path}", bin.display());
        }
        let mut c = PrivateContainerd {
            dir,
            address: String::new(),
            path,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        c.address = c.script("start").trim().to_string();
        c
    }

    fn script(&self, action: &str) -> String {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/containerd.sh");
        let out = Command::new(script)
            .arg(action)
            .arg(&self.dir)
            .env("PATH", &self.path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run scripts/containerd.sh");
        assert!(
            out.status.success(),
            "scripts/containerd.sh {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn stop(&self) {
        self.script("stop");
    }

    pub fn restart(&self) {
        self.stop();
        self.script("start");
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shim binary beside the test binary, if it is built.
fn built_shim() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let shim = exe.parent()?.parent()?.join(SHIM_BINARY);
    shim.is_file().then_some(shim)
}
