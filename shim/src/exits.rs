//! Routing child exits (collected by containerd-shim's SIGCHLD reaper) to processes.
//!
//! A process can exit before the shim has read its pid file (a fast `runc exec`), so an
//! exit for a pid nobody watches is kept for a while and claimed when the pid is watched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_shim::monitor::{monitor_subscribe, Subject, Topic};
use log::{debug, error};

use crate::process::Process;

/// Unclaimed exits older than this belong to helpers (runc, mount), not to processes.
const KEEP_UNCLAIMED: Duration = Duration::from_secs(60);

pub type OnExit = Box<dyn Fn(Arc<Process>, i32) + Send + Sync>;

#[derive(Default)]
struct Table {
    watched: HashMap<i32, Arc<Process>>,
    unclaimed: HashMap<i32, (i32, Instant)>,
}

pub struct Exits {
    table: Mutex<Table>,
}

impl Exits {
    /// Subscribes to the exit monitor now (before any child is spawned) and starts the
    /// thread that calls `on_exit` for watched processes.
    pub fn start(on_exit: OnExit) -> std::io::Result<Arc<Exits>> {
        let subscription = monitor_subscribe(Topic::Pid)
            .map_err(|e| std::io::Error::other(format!("subscribe to exit monitor: {e}")))?;
        let exits = Arc::new(Exits {
            table: Mutex::new(Table::default()),
        });
        let me = exits.clone();
        std::thread::Builder::new()
            .name("exits".into())
            .spawn(move || {
                while let Ok(event) = subscription.rx.recv() {
                    let Subject::Pid(pid) = event.subject else {
                        continue;
                    };
                    if let Some(process) = me.claim_or_keep(pid, event.exit_code) {
                        debug!(
                            "pid {pid} of {} exited {}",
                            process.event_id(),
                            event.exit_code
                        );
                        on_exit(process, event.exit_code);
                    }
                }
                error!("exit monitor closed");
            })?;
        Ok(exits)
    }

    fn claim_or_keep(&self, pid: i32, code: i32) -> Option<Arc<Process>> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = t.watched.remove(&pid) {
            return Some(p);
        }
        let now = Instant::now();
        t.unclaimed
            .retain(|_, (_, at)| now.duration_since(*at) < KEEP_UNCLAIMED);
        t.unclaimed.insert(pid, (code, now));
        None
    }

    /// Watches `pid` for `process`. Returns the exit code if it already exited.
    pub fn watch(&self, pid: u32, process: Arc<Process>) -> Option<i32> {
        let pid = pid as i32;
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((code, _)) = t.unclaimed.remove(&pid) {
            // A kept exit is ours only if nothing lives under that pid now; otherwise it
            // was an earlier process (a runc helper) whose pid got reused.
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
            if !alive {
                return Some(code);
            }
        }
        t.watched.insert(pid, process);
        None
    }
}
