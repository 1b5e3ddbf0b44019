//! Every containerd label and OCI annotation nestcache reads or writes, in one place, so
//! the cache, the nested runner and the shim agree on the spelling.

/// Which kind of nestcache object a container is: [`ROLE_CACHE`] or [`ROLE_NESTED`].
pub const ROLE: &str = "io.nestcache.role";
pub const ROLE_CACHE: &str = "cache";
pub const ROLE_NESTED: &str = "nested";

/// The cache's name (for a nested container: the cache it runs from).
pub const NAME: &str = "io.nestcache.name";
/// The target path inside the cache container (and nested containers).
pub const PATH: &str = "io.nestcache.path";
/// The host content directory bind-mounted at [`PATH`].
pub const CONTENT_DIR: &str = "io.nestcache.content-dir";
/// When the cache expires, RFC 3339 UTC (`2024-05-01T12:00:00Z`); absent = never.
pub const EXPIRES: &str = "io.nestcache.expires";
/// `true` when nestcache created the content dir itself (so `cache rm` may delete it);
/// `false` when the user supplied it.
pub const CONTENT_DIR_OWNED: &str = "io.nestcache.content-dir-owned";
/// The topmost directory `cache create` made to create the content dir (the content dir
/// itself, or a missing parent of it): `cache rm` removes the parents up to it, when empty.
pub const CONTENT_DIR_CREATED: &str = "io.nestcache.content-dir-created";

/// `true` on a container nestcache did not create but labelled as a cache (the one
/// `cache create` ran in): removing the cache removes the labels, never the container.
pub const ADOPTED: &str = "io.nestcache.adopted";

/// Nested containers (role [`ROLE_NESTED`]; [`NAME`], [`PATH`] and [`CONTENT_DIR`] name
/// the cache they run from): the image as given to `run`, its manifest digest, whether
/// the cache is mounted (`true`/`false`), and the exit code once the process has ended.
pub const IMAGE: &str = "io.nestcache.image";
pub const MANIFEST: &str = "io.nestcache.manifest";
pub const MOUNT_CACHE: &str = "io.nestcache.mount-cache";
pub const EXIT_CODE: &str = "io.nestcache.exit-code";
/// Nested containers run in the foreground: `true` for `run --rm`, and the `nestcache run`
/// process that waits for it (`pid:start_time`, see `process::ProcessStamp`). An exited
/// `--rm` container whose owner is gone is an orphan: the next command reaps it.
pub const RM: &str = "io.nestcache.rm";
pub const OWNER: &str = "io.nestcache.owner";
/// Nested containers: the named volumes they use (comma-separated), so `volume rm` can
/// refuse one in use.
pub const VOLUMES: &str = "io.nestcache.volumes";
/// The anonymous volumes among them (comma-separated): removed with the container on
/// `--rm` and `rm -v`.
pub const ANON_VOLUMES: &str = "io.nestcache.anonymous-volumes";
/// Nested containers: `--stop-signal` (a number) and `--stop-timeout` (seconds), read by
/// `stop`.
pub const STOP_SIGNAL: &str = "io.nestcache.stop-signal";
pub const STOP_TIMEOUT: &str = "io.nestcache.stop-timeout";
/// Every label nestcache owns starts so; users may not set them with `--label`.
pub const PREFIX: &str = "io.nestcache.";

/// Shim annotations (OCI spec `annotations`): the store (content dir) to assemble the
/// rootfs from, and the image in it (reference or manifest digest).
pub const ANNOTATION_STORE: &str = "io.nestcache.store";
pub const ANNOTATION_IMAGE: &str = "io.nestcache.image";

/// Spec annotation by which containerd's runc v2 shim groups tasks into one shim process:
/// a nested container joins its cache container's shim instead of starting its own.
pub const RUNC_SHIM_GROUP: &str = "io.containerd.runc.v2.group";
/// Spec annotation: containers with the same value share one nestcache shim process
/// (`run --runtime shim` sets the cache container's id).
pub const NESTCACHE_SHIM_GROUP: &str = "io.nestcache.group";

/// The runtime containerd runs tasks with unless told otherwise.
pub const DEFAULT_RUNTIME: &str = "io.containerd.runc.v2";
/// nestcache's own shim (see `shim/`).
pub const NESTCACHE_RUNTIME: &str = "io.containerd.nestcache.v2";

/// Runtime options for nestcache's shim (the container's `runtime.options`): JSON,
/// `{"store_roots": ["/abs/dir", ...], "linger_ms": N}`: the directories
/// `io.nestcache.store` may name, and how long a group shim stays after its last task.
pub const SHIM_OPTIONS_TYPE_URL: &str = "io.nestcache.shim.v1.Options";

/// How long nestcache's shim stays after its group's last task (milliseconds): the
/// shim's default in containerd's environment, `run --shim-linger` in nestcache's.
pub const SHIM_LINGER_ENV: &str = "NESTCACHE_SHIM_LINGER_MS";

/// The type URL containerd expects for an OCI runtime spec carried as `Any` (JSON).
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// A containerd list filter matching `labels."key"==value` for every pair (AND).
///
/// Values are quoted so that any characters a label may hold survive containerd's filter
/// syntax.
pub fn filter(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("labels.\"{}\"=={}", k, quote(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_quotes_keys_and_values() {
        assert_eq!(
            filter(&[(ROLE, ROLE_CACHE), (NAME, "a\"b")]),
            r#"labels."io.nestcache.role"=="cache",labels."io.nestcache.name"=="a\"b""#
        );
    }
}
