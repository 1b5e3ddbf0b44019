//! The shim's runtime (`Direct`): runc's binary, except for two steps the shim does in its
//! own process, as runc does them, when a container's executor is `runc-direct`:
//! - `start`: runc's start only reads the container's `exec.fifo` (which releases runc
//!   init into the container's process) and removes it;
//! - `delete` of a stopped container: runc removes its cgroups and its state dir.
//!
//! Each saves a runc process per task. Anything but the plain case goes to runc itself:
//! hooks (runc ≥ 1.2 runs poststart hooks at start; poststop at delete), systemd cgroups,
//! Intel RDT, a container without a pid namespace of its own (runc must kill its
//! processes), an init still alive, a state runc wrote that does not read as expected.
//! runc's state layout (`<root>/<id>/state.json`, `exec.fifo`) is stable since 1.0.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::debug;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::Deserialize;

use crate::runc::{Executor, Runc, RuncCli, RuncError, Runtime};
use crate::timing::timed;

/// How often a start waiting for runc init checks that it is still alive (runc's own
/// interval).
const ALIVE_CHECK: Duration = Duration::from_millis(100);

/// The runtime the shim runs with: `RuncCli` for everything, `start` and `delete` done
/// in-process for containers whose executor allows it.
pub struct Direct;

/// Why a step goes to runc after all (logged at debug level).
type Fallback = String;

impl Runtime for Direct {
    fn start(&self, runc: &Runc, id: &str) -> Result<(), RuncError> {
        if runc.executor == Executor::RuncDirect {
            match timed("direct-start", id, || start(runc, id)) {
                Ok(done) => return done,
                Err(why) => debug!("start of {id} by runc: {why}"),
            }
        }
        RuncCli.start(runc, id)
    }

    fn delete(&self, runc: &Runc, id: &str, force: bool) -> Result<(), RuncError> {
        if runc.executor == Executor::RuncDirect {
            match timed("direct-delete", id, || delete(runc, id)) {
                Ok(done) => return done,
                Err(why) => debug!("delete of {id} by runc: {why}"),
            }
        }
        RuncCli.delete(runc, id, force)
    }
}

/// The part of runc's `state.json` these steps need.
#[derive(Debug, Deserialize)]
pub struct RuncState {
    pub init_process_pid: i32,
    pub init_process_start: u64,
    #[serde(default)]
    pub cgroup_paths: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub intel_rdt_path: Option<String>,
    pub config: StateConfig,
}

#[derive(Debug, Deserialize)]
pub struct StateConfig {
    #[serde(default)]
    pub namespaces: Option<Vec<Namespace>>,
    #[serde(rename = "Hooks", default)]
    pub hooks: Option<BTreeMap<String, Option<Vec<serde_json::Value>>>>,
}

#[derive(Debug, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub path: String,
}

impl RuncState {
    /// Why this container is not the plain case, if it is not.
    pub fn not_plain(&self) -> Option<Fallback> {
        let hooks = self.config.hooks.iter().flatten();
        if let Some((kind, _)) = hooks
            .into_iter()
            .find(|(_, h)| h.iter().flatten().count() > 0)
        {
            return Some(format!("it has {kind} hooks"));
        }
        if self
            .intel_rdt_path
            .as_deref()
            .is_some_and(|p| !p.is_empty())
        {
            return Some("it uses Intel RDT".into());
        }
        let own_pid_ns = self
            .config
            .namespaces
            .iter()
            .flatten()
            .any(|n| n.kind == "NEWPID" && n.path.is_empty());
        if !own_pid_ns {
            return Some("it has no pid namespace of its own".into());
        }
        None
    }
}

/// runc's container id rule (`^[\w+-\.]+$`, not `.` or `..`): only such an id names a
/// state dir under runc's root.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'))
}

fn state_dir(runc: &Runc, id: &str) -> Result<PathBuf, Fallback> {
    if !valid_id(id) {
        return Err(format!("id {id:?} is not one runc accepts"));
    }
    if runc.systemd_cgroup {
        return Err("systemd cgroups".into());
    }
    Ok(runc.root.join(id))
}

pub fn load_state(dir: &Path) -> Result<RuncState, Fallback> {
    let path = dir.join("state.json");
    let text = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("parse {}: {e}", path.display()))
}

/// Whether the container's init still runs: its pid lives, is not a zombie, and started
/// when runc recorded (a reused pid is another process). runc's own test.
pub fn init_alive(pid: i32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses; fields follow the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first().copied().unwrap_or("X");
    // starttime is field 22 of stat, the 20th after the comm.
    let started = fields.get(19).and_then(|s| s.parse::<u64>().ok());
    !matches!(state, "Z" | "X" | "x") && started == Some(start)
}

fn failed(action: &str, id: &str, message: String) -> RuncError {
    RuncError::Direct {
        action: action.into(),
        id: id.into(),
        message,
    }
}

/// runc start, in-process: reads runc init's byte from `exec.fifo`, which lets it exec
/// the container's process, then removes the fifo (which marks the container running).
/// `Err` means: let runc do it.
fn start(runc: &Runc, id: &str) -> Result<Result<(), RuncError>, Fallback> {
    let dir = state_dir(runc, id)?;
    let state = load_state(&dir)?;
    if let Some(why) = state.not_plain() {
        return Err(why);
    }
    let fifo_path = dir.join("exec.fifo");
    // Non-blocking: a reader's open of a FIFO never waits for a writer, so a runc init
    // that died cannot hang the start. Without the fifo runc says why (running, stopped).
    let mut fifo = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo_path)
        .map_err(|e| format!("open {}: {e}", fifo_path.display()))?;
    Ok(read_start_byte(&mut fifo, &state, id).and_then(|()| {
        std::fs::remove_file(&fifo_path)
            .map_err(|e| failed("start", id, format!("remove {}: {e}", fifo_path.display())))
    }))
}

/// Waits for runc init's byte; gives up once runc init is gone without writing it.
fn read_start_byte(fifo: &mut std::fs::File, state: &RuncState, id: &str) -> Result<(), RuncError> {
    let timeout = PollTimeout::try_from(ALIVE_CHECK).unwrap_or(PollTimeout::MAX);
    loop {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        let ready = match poll(&mut fds, timeout) {
            Ok(n) => n > 0,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(failed("start", id, format!("poll exec.fifo: {e}"))),
        };
        if !ready && init_alive(state.init_process_pid, state.init_process_start) {
            continue;
        }
        // Ready, or runc init is gone: whatever it wrote before dying is in the fifo.
        let mut byte = [0u8; 1];
        let dead = || failed("start", id, "container process is already dead".into());
        return match fifo.read(&mut byte) {
            Ok(1) => Ok(()),
            Ok(_) if ready => Err(failed(
                "start",
                id,
                "runc init closed exec.fifo without writing to it".into(),
            )),
            Ok(_) => Err(dead()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && ready => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(dead()),
            Err(e) => Err(failed("start", id, format!("read exec.fifo: {e}"))),
        };
    }
}

/// runc delete of a stopped container, in-process: its cgroups, then its state dir.
/// `Err` means: let runc do it (runc delete --force also kills what still runs).
fn delete(runc: &Runc, id: &str) -> Result<Result<(), RuncError>, Fallback> {
    let dir = state_dir(runc, id)?;
    let state = load_state(&dir)?;
    if let Some(why) = state.not_plain() {
        return Err(why);
    }
    if init_alive(state.init_process_pid, state.init_process_start) {
        return Err(format!("its init (pid {}) runs", state.init_process_pid));
    }
    // The init of a pid namespace dies last: its cgroups hold no process now.
    for path in state.cgroup_paths.values() {
        remove_cgroup(path).map_err(|e| format!("remove cgroup {}: {e}", path.display()))?;
    }
    Ok(std::fs::remove_dir_all(&dir)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        })
        .map_err(|e| failed("delete", id, format!("remove {}: {e}", dir.display()))))
}

/// Removes a cgroup dir and the cgroups under it (a cgroup's files go with rmdir). A
/// cgroup whose last task just exited may be busy for a moment: retried, as runc does.
pub fn remove_cgroup(path: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup(&entry.path())?;
        }
    }
    let mut delay = Duration::from_millis(10);
    for attempt in 0.. {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 5 => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
mod tests;
