//! containerd-shim-nestcache-v2 as a library: the containerd runtime v2 shim for
//! `io.containerd.nestcache.v2`. It runs tasks with runc like containerd's runc shim, and
//! when a container's spec carries `io.nestcache.store` + `io.nestcache.image` it
//! assembles the rootfs itself from that nestcache store's extracted layers.
//!
//! Layers, top down:
//! - `service`: the shim binary's three lives (start, serve, delete);
//! - `task`: the ttrpc Task service, converting requests and answers only;
//! - `registry`: the containers of this shim; `container`: one container's operations;
//! - `process` + `state`: a process and its state machine; `init` and `exec`: the two
//!   lifecycles (strategy objects);
//! - `options`: the runtime options and the store roots they allow;
//! - seams: `runc::Runtime` (runc; `direct::Direct` is the shim's, doing runc's start and
//!   delete in-process where it may) and `events::EventSink` (events), faked in tests;
//! - `cgroups`: Stats, from the init's cgroup (v1 and v2);
//! - `bundle`, `mounts`, `store_rootfs`, `stdio`, `exits`, `command`: the machinery;
//! - `timing`: per-phase milliseconds (NESTCACHE_SHIM_TIMING=1).

pub mod bundle;
pub mod cgroups;
pub mod command;
pub mod container;
pub mod direct;
pub mod error;
pub mod events;
pub mod exec;
pub mod exits;
pub mod image_config;
pub mod init;
pub mod mounts;
pub mod options;
pub mod process;
pub mod registry;
pub mod runc;
pub mod service;
pub mod state;
pub mod stdio;
pub mod store_rootfs;
pub mod task;
pub mod timing;

#[cfg(test)]
mod fakes;
