//! Environment detection, address resolution and the embedded containerd.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use testkit::{unique, Env};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn env_reports_a_given_address() {
    testkit::require!(containerd);
    let env = Env::new("env-given");
    let v = json(&env.ok(&["env", "--json"]));
    assert_eq!(v["address"], env.address.as_str());
    assert_eq!(v["address_source"], "given");
    assert_eq!(v["answering"], true);
    assert!(v["containerd_version"]
        .as_str()
        .unwrap()
        .starts_with(|c: char| c.is_ascii_digit() || c == 'v'));
    assert_eq!(v["namespace"], env.namespace.as_str());
    assert_eq!(v["embedded"], false);
    assert!(v["runc"]["path"].is_string());
    assert!(v["overlayfs"].is_boolean());
    let text = env.ok(&["env"]);
    assert!(text.contains("answering:       yes"), "{text}");
}

#[test]
fn a_dead_given_address_is_one_clear_line() {
    testkit::require!(containerd);
    let mut env = Env::new("env-dead");
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("none.sock");
    env.address = dead.to_str().unwrap().to_string();
    let err = env.fails(&["cache", "ls"]);
    assert!(err.contains(&env.address), "{err}");
    assert!(err.contains("nothing answers"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // A given address is never replaced by an embedded containerd.
    assert!(!env.state_dir().join("containerd").exists());
    let v = json(&env.ok(&["env", "--json"]));
    assert_eq!(v["answering"], false);
    assert!(v["error"].as_str().unwrap().contains("nothing answers"));
}

#[test]
fn invalid_namespace_is_refused() {
    testkit::require!(containerd);
    let mut env = Env::new("env-ns");
    env.namespace = "bad/ns".into();
    let err = env.fails(&["cache", "ls"]);
    assert!(err.contains("invalid namespace"), "{err}");
}

/// A nestcache command with no address given, the system socket pointed at nothing, and
/// a short state dir (unix socket paths hold 107 bytes).
struct Local {
    state: PathBuf,
    namespace: String,
}

impl Local {
    fn new() -> Local {
        let state = tempfile::Builder::new()
            .prefix("nc-e")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        Local {
            state,
            namespace: unique("env-emb"),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nestcache"));
        c.args(args)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("RUST_LOG")
            .env(
                "NESTCACHE_SYSTEM_ADDRESS",
                self.state.join("no-system.sock"),
            )
            .env("CONTAINERD_NAMESPACE", &self.namespace)
            .env("NESTCACHE_STATE_DIR", &self.state);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run nestcache")
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "nestcache {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn status(&self) -> Value {
        json(&String::from_utf8_lossy(
            &self.ok(&["system", "status", "--json"]).stdout,
        ))
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // Never leave an embedded containerd behind, whatever the test did.
        let _ = self.run(&["cache", "rm", "emb"]);
        let _ = self.run(&["system", "stop"]);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn embedded_containerd_starts_is_reused_and_stops() {
    testkit::require!(root, tool "containerd", tool "runc");
    let local = Local::new();
    if Path::new("/var/run/secrets/kubernetes.io/serviceaccount").is_dir() {
        // Inside a pod nestcache must refuse instead (see the test below).
        let out = local.run(&["cache", "ls"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("Kubernetes"), "{}", stderr(&out));
        return;
    }
    let s = local.status();
    assert_eq!(s["running"], false);
    let v = json(&String::from_utf8_lossy(
        &local.ok(&["env", "--json"]).stdout,
    ));
    assert_eq!(
        v["kubernetes"]["detected"],
        Path::new("/var/run/secrets/kubernetes.io/serviceaccount").is_dir()
    );
    assert_eq!(v["address_source"], "embedded");
    assert_eq!(v["would_start_embedded"], true);

    // Three commands at once: exactly one starts it and says so, all of them use it.
    let children: Vec<_> = (0..3)
        .map(|_| {
            local
                .cmd(&["cache", "ls"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        assert!(o.status.success(), "{}", stderr(o));
    }
    let starters = outs
        .iter()
        .filter(|o| stderr(o).contains("started an embedded containerd"))
        .count();
    assert_eq!(starters, 1);
    let s = local.status();
    assert_eq!(s["running"], true);
    assert_eq!(s["answering"], true);
    let pid = s["pid"].as_i64().unwrap();
    assert!(local.state.join("containerd/config.toml").is_file());
    assert!(local.state.join("containerd/containerd.sock").exists());

    // Later commands reuse it silently.
    let second = local.ok(&["cache", "ls"]);
    assert!(stderr(&second).is_empty(), "{}", stderr(&second));
    assert_eq!(local.status()["pid"].as_i64().unwrap(), pid);

    // A cache works on it.
    let created = local.ok(&["cache", "create", "emb", "--path", "/c", "--json"]);
    let c = json(&String::from_utf8_lossy(&created.stdout));
    assert_eq!(c["status"], "running");
    local.ok(&["cache", "rm", "emb"]);

    let stopped = json(&String::from_utf8_lossy(
        &local.ok(&["system", "stop", "--json"]).stdout,
    ));
    assert_eq!(stopped["pid"].as_i64().unwrap(), pid);
    assert_eq!(local.status()["running"], false);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || {
            // A zombie waiting for its reaper is gone too.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"))
        }
    );
    // Stopping again is harmless.
    local.ok(&["system", "stop"]);
}

#[test]
fn kubernetes_never_starts_an_embedded_containerd() {
    let local = Local::new();
    let out = local
        .cmd(&["cache", "ls"])
        .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("Kubernetes"), "{err}");
    assert!(err.contains("KUBERNETES_SERVICE_HOST=10.96.0.1"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(local.status()["running"], false);
    let out = local
        .cmd(&["env", "--json"])
        .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        .output()
        .unwrap();
    let v = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v["kubernetes"]["detected"], true);
    assert_eq!(v["would_start_embedded"], false);
}

#[test]
fn too_long_state_dir_is_refused_for_the_embedded_socket() {
    let local = Local::new();
    let long = local.state.join("x".repeat(100));
    std::fs::create_dir_all(&long).unwrap();
    let out = local
        .cmd(&["cache", "ls"])
        .env("NESTCACHE_STATE_DIR", &long)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("shorter --state-dir"),
        "{}",
        stderr(&out)
    );
}
