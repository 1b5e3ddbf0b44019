//! Nested runs: a cache container with images made by mkimage staged into it, in an
//! environment of its own, and `nestcache run` against it.

use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

pub use crate::cmd::{stderr, stdout};
use crate::containerd::{unique, Env};

/// A cache container with a staged image, in an environment of its own.
pub struct Fixture {
    pub env: Env,
    pub cache: String,
    pub content: PathBuf,
    pub images: tempfile::TempDir,
}

impl Fixture {
    pub fn new(prefix: &str) -> Self {
        Self::in_env(Env::new(prefix))
    }

    pub fn in_env(env: Env) -> Self {
        let cache = unique("c");
        env.ok(&[
            "cache", "create", &cache, "--path", "/cache", "--ttl", "30m",
        ]);
        let info: serde_json::Value =
            serde_json::from_str(&env.ok(&["cache", "inspect", &cache, "--json"]))
                .expect("cache inspect --json");
        let content = PathBuf::from(info["content_dir"].as_str().expect("content_dir"));
        Fixture {
            env,
            cache,
            content,
            images: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Builds `spec` with mkimage and stages it into the cache; returns its ref.
    pub fn stage(&self, spec: mkimage::ImageSpec) -> String {
        let layout = self.images.path().join(&spec.ref_name);
        let built = spec.write_layout(&layout).expect("mkimage");
        let source = format!("oci:{}:{}", layout.display(), built.ref_name);
        self.env.ok(&["stage", "--cache", &self.cache, &source]);
        built.ref_name
    }

    /// The `small` image (busybox root, /etc/passwd with root, app, nobody) as `name`.
    pub fn small(&self, name: &str, config: impl FnOnce(&mut mkimage::ConfigSpec)) -> String {
        let mut spec = mkimage::preset("small").expect("preset");
        spec.ref_name = name.to_string();
        config(&mut spec.config);
        self.stage(spec)
    }

    pub fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["run", "--cache", self.cache.as_str()];
        v.extend_from_slice(extra);
        v
    }

    pub fn run(&self, extra: &[&str]) -> Output {
        self.env.run(&self.args(extra))
    }

    /// Runs, asserts success, returns stdout.
    pub fn ok(&self, extra: &[&str]) -> String {
        self.env.ok(&self.args(extra))
    }

    pub fn spawn(&self, extra: &[&str]) -> Child {
        self.env
            .cmd()
            .args(self.args(extra))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nestcache run")
    }

    pub fn ps(&self) -> Vec<serde_json::Value> {
        serde_json::from_str::<Vec<serde_json::Value>>(&self.env.ok(&["ps", "-a", "--json"]))
            .expect("ps --json")
    }

    /// Waits until nested container `id` runs; returns its pid.
    pub fn wait_running(&self, id: &str) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self
                .ps()
                .into_iter()
                .find(|c| c["id"] == id && c["status"] == "running");
            if let Some(c) = found {
                return c["pid"].as_u64().expect("pid") as u32;
            }
            assert!(Instant::now() < deadline, "{id} never ran: {:?}", self.ps());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.env.state_dir().join("containers")
    }

    /// Asserts no nested container, no container dir and no mount of ours is left.
    pub fn assert_nothing_left(&self) {
        assert!(self.ps().is_empty(), "containers left: {:?}", self.ps());
        let dirs: Vec<_> = std::fs::read_dir(self.containers_dir())
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(dirs.is_empty(), "container dirs left: {dirs:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let state = self.env.state_dir().to_string_lossy().into_owned();
        let ours: Vec<&str> = mounts
            .lines()
            .filter(|l| l.contains(&format!("{state}/containers")))
            .collect();
        assert!(ours.is_empty(), "mounts left: {ours:?}");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let ps = self.env.run(&["ps", "-a", "--json"]);
        if let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(&ps.stdout) {
            for c in list {
                if let Some(id) = c["id"].as_str() {
                    self.env.run(&["rm", "-f", id]);
                }
            }
        }
        self.env.run(&["cache", "rm", &self.cache]);
    }
}

pub fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}
