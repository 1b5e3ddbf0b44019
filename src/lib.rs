//! nestcache: start a nested container from a file cache container, through containerd's
//! gRPC API and OCI, with no Docker daemon.
//!
//! The module map — which module sits on which floor, what each may import, and the
//! invariants each one owns — is `docs/ARCHITECTURE.md` in the repository;
//! `tests/architecture.rs` holds the code to it. In short, from the ground up:
//! [`error`], [`digest`], [`process`], [`labels`], [`user`]; [`layout`], [`image`]; [`store`],
//! [`source`], [`containerd`]; [`unpack`]; [`stage`], [`rootfs`], [`cache`], [`env`];
//! [`nested`], [`node`]; the CLI on top.
//!
//! One module per concern:
//! - [`digest`]: the `sha256:<hex>` digest type and streaming hashing.
//! - [`layout`]: where everything lives inside a content directory and the state dir.
//! - [`store`]: the OCI image layout content store (verified ingest, refs, gc, locking).
//! - [`stage`]: copying an image from a source into the store, then extracting it.
//! - [`source`]: where images come from (oci dir, oci-archive, docker-archive, registry).
//! - [`image`]: index / manifest / config parsing and platform choice.
//! - [`unpack`]: layer application (tar + gzip/zstd, whiteouts, path safety).
//! - [`labels`]: every containerd label and annotation name nestcache uses.
//! - [`containerd`]: the containerd connection, containers, tasks, io, wait.
//! - [`cache`]: the cache container lifecycle, TTL and reaping.
//! - [`rootfs`]: overlay rootfs from a store's extracted layers (shared with the shim).
//! - [`network`]: nested containers' networks through the CNI plugins (bridge per cache, ports, names).
//! - [`nested`]: rootfs + runtime spec + task for the nested container, mount verification.
//! - [`env`]: Kubernetes or local; finding or starting containerd.
//! - [`node`]: node setup for Kubernetes (binaries, containerd's config, label).
//! - [`process`]: a process's identity that survives pid reuse (owners of leases, runs).
//! - [`signals`]: SIGINT/SIGTERM/SIGHUP caught during a multi-step operation.
//! - [`user`]: a `User` string resolved in an image's /etc/passwd and /etc/group (CLI and shim).

#[cfg(feature = "cli")]
pub mod cache;
#[cfg(feature = "cli")]
pub mod containerd;
pub mod digest;
#[cfg(feature = "cli")]
pub mod env;
pub mod error;
pub mod fsutil;
pub mod image;
pub mod labels;
pub mod layout;
#[cfg(feature = "cli")]
pub mod nested;
#[cfg(feature = "cli")]
pub mod network;
#[cfg(feature = "cli")]
pub mod node;
pub mod process;
pub mod rootfs;
#[cfg(feature = "cli")]
pub mod signals;
#[cfg(feature = "cli")]
pub mod source;
#[cfg(feature = "cli")]
pub mod stage;
pub mod store;
pub mod unpack;
pub mod user;

pub use error::{Error, Result};
