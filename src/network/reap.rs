//! Releasing what nobody will release: the network of a container whose task is gone
//! (nestcache crashed, or containerd and its shims restarted and took the task with
//! them) and the network of a cache that no longer exists. Every command that talks to
//! containerd runs this; with nothing attached it costs one `read_dir`.

use std::collections::HashSet;

use super::attach::{detach_locked, remove_network};
use super::record::{self, NetLayout};

/// Whether anything of `namespace` is recorded (the reaper has work to look at).
pub fn has_any(layout: &NetLayout) -> bool {
    let any = |d: std::path::PathBuf| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some());
    any(layout.containers_dir()) || any(layout.state_root.join("net").join("networks"))
}

/// Detaches containers of `namespace` whose task is gone and that are not being set up
/// right now (their lock is held), and removes networks of caches not in `caches`.
/// `live` (ids with a task, listed before) skips most; `running` asks afresh, under the
/// container's lock, so a container whose task started after `live` was listed is not
/// taken for dead. Returns what it released; failures are logged and left for next time.
pub async fn reap<F>(
    layout: &NetLayout,
    namespace: &str,
    live: &HashSet<String>,
    caches: &HashSet<String>,
    running: F,
) -> Vec<String>
where
    F: AsyncFn(&str) -> bool,
{
    let mut out = Vec::new();
    for (dir, r) in record::all(layout) {
        if r.namespace != namespace || live.contains(&r.id) {
            continue;
        }
        let lock = match record::lock(&dir, false) {
            Ok(Some(l)) => l,
            // Being set up or torn down by another nestcache.
            _ => continue,
        };
        if running(&r.id).await {
            continue;
        }
        match detach_locked(layout, &r.id, Some(lock)).await {
            Ok(()) => out.push(format!("network of {}", r.id)),
            Err(e) => tracing::warn!("releasing the network of {}: {e}", r.id),
        }
    }
    let Ok(entries) = std::fs::read_dir(layout.networks_dir(namespace)) else {
        return out;
    };
    for e in entries.flatten() {
        let cache = e.file_name().to_string_lossy().into_owned();
        if caches.contains(&cache) {
            continue;
        }
        match remove_network(layout, namespace, &cache).await {
            Ok(()) => out.push(format!("network of cache {cache}")),
            Err(e) => tracing::warn!("removing the network of cache {cache}: {e}"),
        }
    }
    out
}
