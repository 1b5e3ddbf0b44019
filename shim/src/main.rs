//! containerd-shim-nestcache-v2: the containerd runtime v2 shim for
//! `io.containerd.nestcache.v2`. It runs tasks with runc like containerd's runc shim, and
//! when a container's spec carries `io.nestcache.store` + `io.nestcache.image` it
//! assembles the rootfs itself from that nestcache store's extracted layers.

mod bundle;
mod command;
mod events;
mod exits;
mod image_config;
mod mounts;
mod process;
mod runc;
mod service;
mod stdio;
mod store_rootfs;
mod task;

fn main() {
    // The runtime name containerd maps to this binary's name.
    let runtime = nestcache::labels::NESTCACHE_RUNTIME;
    containerd_shim::run::<service::Service>(runtime, None);
}
