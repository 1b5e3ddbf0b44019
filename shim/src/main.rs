//! containerd-shim-nestcache-v2: the binary containerd runs for
//! `io.containerd.nestcache.v2` (see the library, `containerd_shim_nestcache`).

fn main() {
    one_malloc_arena();
    // The runtime name containerd maps to this binary's name.
    let runtime = nestcache::labels::NESTCACHE_RUNTIME;
    containerd_shim::run::<containerd_shim_nestcache::service::Service>(runtime, None);
}

/// glibc gives each thread that allocates an arena of its own (up to 8 per core), and
/// the shim's threads (ttrpc handlers, stdio copiers, exits, events) each keep a few
/// pages of one touched for the shim's life. The shim allocates little and seldom: one
/// arena serves it, and is trimmed when memory is freed. Called before any thread runs.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a malloc parameter; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
