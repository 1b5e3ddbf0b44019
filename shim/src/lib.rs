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
//! - `options`: the runtime options and the store roots they allow; `lifetime`: how
//!   long the shim serves (its group's joins and linger);
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
pub mod lifetime;
pub mod logger;
pub mod mounts;
pub mod options;
pub mod panic_guard;
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

/// The one log facade: the shim logs with `log` (containerd-shim's logger writes the
/// shim's log), and the library logs with `tracing`, whose `log` feature (this crate's
/// Cargo.toml) turns its events into `log` records while no tracing subscriber is set.
#[cfg(test)]
mod log_bridge {
    use std::sync::Mutex;

    /// Stands in for containerd-shim's logger: keeps every record.
    struct Capture(Mutex<Vec<(String, String)>>);

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            let mut records = self.0.lock().unwrap_or_else(|e| e.into_inner());
            records.push((r.target().to_string(), r.args().to_string()));
        }
        fn flush(&self) {}
    }

    static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

    #[test]
    fn library_tracing_events_reach_the_shims_logger() {
        log::set_logger(&CAPTURE).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Trace);
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join("dead-temp");
        std::fs::write(&dead, b"left by a killed stage").unwrap();
        // The store logs this with tracing::info!.
        nestcache::store::temp::remove_dead(&dead).unwrap();
        let records = CAPTURE.0.lock().unwrap();
        assert!(
            records
                .iter()
                .any(|(target, msg)| target.starts_with("nestcache::store")
                    && msg.contains("removing dead temp")
                    && msg.contains("dead-temp")),
            "{records:?}"
        );
    }
}
