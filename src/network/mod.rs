//! Networks of nested containers, the way nerdctl makes them: through the CNI reference
//! plugins (bridge, host-local, portmap, firewall, loopback), not hand-made iptables.
//!
//! Each cache gets a bridge network of its own, made with its first container that needs
//! it and removed with the cache. nestcache creates each container's network namespace
//! (bind-mounted under the state dir), runs CNI ADD in it before the task is created and
//! hands it to the task's spec; DEL runs on every removal path and again from the reaper.
//!
//! - [`cni`]: the exec protocol (ADD / CHECK / DEL through a config list).
//! - [`netns`]: namespaces kept by a bind mount.
//! - [`config`]: the cache's network config (built-in bridge or `--cni-conf-dir`).
//! - [`subnet`]: a bridge subnet from the pool that collides with no host route.
//! - [`ports`]: `-p` / `-P` parsing and host-wide port claims; [`claims`]: the claim files.
//! - [`hosts`]: /etc/hosts, /etc/resolv.conf, /etc/hostname.
//! - [`record`]: what is kept per container; [`attach`]: attach / detach; [`reap`].

pub mod attach;
pub mod claims;
pub mod cni;
pub mod config;
pub mod error;
pub mod hosts;
pub mod mode;
pub mod netns;
pub mod ports;
pub mod reap;
pub mod record;
pub mod subnet;

pub use attach::{check, detach, prepare, remove_network, Prepared, Request};
pub use error::NetworkError;
pub use mode::{NetMode, NetworkOptions};
pub use ports::PortMapping;
pub use record::{ContainerNet, NetLayout};

/// The published ports of nested container `id` (empty when it publishes none or has no
/// network of nestcache's).
pub fn published_ports(layout: &NetLayout, id: &str) -> Vec<PortMapping> {
    record::read(&layout.container_dir(id))
        .map(|r| r.ports)
        .unwrap_or_default()
}

/// The attached network of nested container `id`, if it has one.
pub fn lookup(layout: &NetLayout, id: &str) -> Option<ContainerNet> {
    record::read(&layout.container_dir(id)).ok()
}
