//! containerd-shim-nestcache-v2: the binary containerd runs for
//! `io.containerd.nestcache.v2` (see the library, `containerd_shim_nestcache`).

fn main() {
    // The runtime name containerd maps to this binary's name.
    let runtime = nestcache::labels::NESTCACHE_RUNTIME;
    containerd_shim::run::<containerd_shim_nestcache::service::Service>(runtime, None);
}
