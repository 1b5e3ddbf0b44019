//! Leak checks for the end of a test: what a nestcache environment may leave behind
//! (containers, tasks, mounts, nested container dirs, shims, temp files, leases) and a
//! store that must still be consistent.
//!
//! ```ignore
//! testkit::leaks::assert_no_leaks(&env, &content_dir); // the cache still there
//! env.ok(&["cache", "rm", &cache]);
//! testkit::leaks::assert_namespace_empty(&env);        // nothing of the namespace left
//! ```

use std::path::Path;
use std::process::Command;

use crate::containerd::Env;

/// With the cache(s) still there: `store check` of `content` is clean, the store holds no
/// temp files (`ingest/`, `layers/tmp/`, `.nestcache/*.tmp`) and no leases; only cache
/// containers (`nc-cache-*`), their tasks and mounts remain in the namespace; the state
/// dir holds no nested container dir.
pub fn assert_no_leaks(env: &Env, content: &Path) {
    let check = env.run(&["store", "check", "--store", &content.to_string_lossy()]);
    assert!(
        check.status.success(),
        "store check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let tmp = temp_leftovers(content);
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    let leases = names_in(&content.join(".nestcache/leases"));
    assert!(leases.is_empty(), ".nestcache/leases left: {leases:?}");
    for what in ["containers", "tasks"] {
        let left: Vec<String> = ctr_ls(env, what)
            .into_iter()
            .filter(|id| !id.starts_with("nc-cache-"))
            .collect();
        assert!(left.is_empty(), "{what} left: {left:?}");
    }
    let dirs = names_in(&env.state_dir().join("containers"));
    assert!(dirs.is_empty(), "nested container dirs left: {dirs:?}");
    let mounts = mounts_of(env);
    assert!(
        mounts.iter().all(|m| m.contains("/nc-cache-")),
        "mounts left: {mounts:?}"
    );
}

/// After the caches are removed: no container, task, mount or shim of the namespace.
pub fn assert_namespace_empty(env: &Env) {
    for what in ["containers", "tasks"] {
        let left = ctr_ls(env, what);
        assert!(left.is_empty(), "{what} left: {left:?}");
    }
    let mounts = mounts_of(env);
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let shims = shims_of(&env.namespace);
    assert!(shims.is_empty(), "shims left: {shims:?}");
}

/// Ids from `ctr containers|tasks ls -q` in the environment's namespace.
pub fn ctr_ls(env: &Env, what: &str) -> Vec<String> {
    let out = Command::new("ctr")
        .args(["--address", &env.address, "--namespace", &env.namespace])
        .args([what, "ls", "-q"])
        .output()
        .expect("run ctr");
    assert!(
        out.status.success(),
        "ctr {what} ls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Temp files and work dirs in a store: `ingest/*`, `layers/tmp/*`, `.nestcache/*.tmp`.
pub fn temp_leftovers(store: &Path) -> Vec<String> {
    let list = |dir: &str| -> Vec<String> {
        names_in(&store.join(dir))
            .into_iter()
            .map(|n| format!("{dir}/{n}"))
            .collect()
    };
    let mut left = list("ingest");
    left.extend(list("layers/tmp"));
    left.extend(
        list(".nestcache")
            .into_iter()
            .filter(|n| n.ends_with(".tmp")),
    );
    left
}

/// The names in `dir` (none when it does not exist).
pub fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Mounts under the namespace's task dirs (containerd's `.../<namespace>/<id>/rootfs`)
/// or the environment's state dir.
pub fn mounts_of(env: &Env) -> Vec<String> {
    let ns = format!("/{}/", env.namespace);
    let state = env.state_dir().to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read /proc/self/mountinfo")
        .lines()
        .filter(|l| l.contains(&ns) || l.contains(&state))
        .map(str::to_string)
        .collect()
}

/// Shim processes serving namespace `ns` (`-namespace <ns>` on their command line).
pub fn shims_of(ns: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in procs.flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args
            .windows(2)
            .any(|w| w[0] == b"-namespace" && w[1] == ns.as_bytes())
        {
            out.push(String::from_utf8_lossy(&cmd).replace('\0', " "));
        }
    }
    out
}
