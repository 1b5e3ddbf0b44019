//! nestcache: start a nested container from a file cache container, through containerd's
//! gRPC API and OCI, with no Docker daemon. See DESIGN.md for the four steps.
//!
//! One module per concern:
//! - [`digest`]: the `sha256:<hex>` digest type and streaming hashing.
//! - [`layout`]: where everything lives inside a content directory and the state dir.
//! - [`store`]: the OCI image layout content store (verified ingest, refs, gc, locking).
//! - [`source`]: where images come from (oci dir, oci-archive, docker-archive, registry).
//! - [`image`]: index / manifest / config parsing and platform choice.
//! - [`unpack`]: layer application (tar + gzip/zstd, whiteouts, path safety).
//! - [`containerd`]: the containerd connection, containers, tasks, io, wait.
//! - [`cache`]: the cache container lifecycle, TTL and reaping.
//! - [`rootfs`]: overlay rootfs from a store's extracted layers (shared with the shim).
//! - [`network`]: nested containers' networks through the CNI plugins (bridge per cache, ports, names).
//! - [`nested`]: rootfs + runtime spec + task for the nested container, mount verification.
//! - [`env`]: Kubernetes or local; finding or starting containerd.
//! - [`node`]: node setup for Kubernetes (binaries, containerd's config, label).
//! - [`process`]: a process's identity that survives pid reuse (owners of leases, runs).

pub mod cache;
pub mod containerd;
pub mod digest;
pub mod env;
pub mod error;
pub mod image;
pub mod layout;
pub mod nested;
pub mod network;
pub mod node;
pub mod process;
pub mod rootfs;
pub mod source;
pub mod stage;
pub mod store;
pub mod unpack;

pub use error::{Error, Result};
