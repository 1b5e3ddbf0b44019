//! nestcache: start a nested container from a file cache container, through containerd's
//! gRPC API and OCI, with no Docker daemon.
//!
//! The module map — which module sits on which floor, what each may import, and the
//! invariants each one owns — is `docs/ARCHITECTURE.md` in the repository;
//! `tests/architecture.rs` holds the code to it. In short, from the ground up:
//! [`error`], [`digest`], [`process`], [`labels`]; [`layout`], [`image`]; [`store`],
//! [`source`], [`containerd`]; [`unpack`]; [`stage`], [`rootfs`], [`cache`], [`env`];
//! [`nested`]; the CLI on top.

pub mod cache;
pub mod containerd;
pub mod digest;
pub mod env;
pub mod error;
pub mod image;
pub mod labels;
pub mod layout;
pub mod nested;
pub mod process;
pub mod rootfs;
pub mod source;
pub mod stage;
pub mod store;
pub mod unpack;

pub use error::{Error, Result};
