//! One process of a container (its init, or an exec): state, pid, exit, stdio, and the
//! lifecycle strategy (`Lifecycle`) that runs it: `init::InitLifecycle` or
//! `exec::ExecLifecycle`, the way containerd's runc shim separates them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;

use crate::error::{Result, ShimError};
use crate::events::Event;
use crate::runc::{RuncError, RuncIo};
use crate::state::{State, Step};
use crate::stdio::{Io, Prepared, StdioPaths};

/// How long delete waits for a process's output to be copied out.
pub const OUTPUT_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// What Wait reports for a process deleted before it ever ran (it has no exit status).
pub const NEVER_RAN_STATUS: u32 = 255;

/// How one kind of process is started, signalled and cleaned up.
pub trait Lifecycle: Send + Sync {
    /// Runs the process (`runc start` for init, `runc exec` for an exec); its pid.
    fn start(&self, p: &Process) -> Result<u32>;
    /// The event that says it started (TaskStart / TaskExecStarted).
    fn started_event(&self, p: &Process, pid: u32) -> Event;
    /// The step after a failed start: init stays created, an exec that never ran stops.
    fn failed_start(&self, p: &Process);
    /// Signals the process; only called for a state that may have a live pid.
    fn kill(&self, p: &Process, signal: u32, all: bool) -> Result<()>;
    /// Removes what the process left behind (files; for init the runc state and rootfs).
    fn delete(&self, p: &Process) -> Result<()>;
}

#[derive(Debug, Clone)]
pub struct Exit {
    pub code: u32,
    pub at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub pid: u32,
    pub state: State,
    pub exit: Option<Exit>,
}

pub struct Process {
    pub container_id: String,
    /// Empty for the container's init process.
    pub exec_id: String,
    pub stdio: StdioPaths,
    inner: Mutex<Snapshot>,
    changed: Condvar,
    /// Held while a start is being published, so a fast exit's TaskExit cannot overtake
    /// the TaskStart/TaskExecStarted event (runtime v2 event ordering).
    gate: Mutex<()>,
    io: Mutex<Option<Io>>,
    /// How many Wait calls block on this process (for tests and debugging).
    waiters: AtomicUsize,
    pub(crate) lifecycle: Box<dyn Lifecycle>,
}

pub fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

impl Process {
    pub fn new(
        container_id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        lifecycle: Box<dyn Lifecycle>,
    ) -> Self {
        Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            inner: Mutex::new(Snapshot {
                pid: 0,
                state: State::Created,
                exit: None,
            }),
            changed: Condvar::new(),
            gate: Mutex::new(()),
            io: Mutex::new(None),
            waiters: AtomicUsize::new(0),
            lifecycle,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The id events and containerd use for this process: the exec id, or the
    /// container id for init.
    pub fn event_id(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }

    /// "task C" or "exec E of C", for messages.
    pub fn describe(&self) -> String {
        if self.exec_id.is_empty() {
            format!("task {}", self.container_id)
        } else {
            format!("exec {} of {}", self.exec_id, self.container_id)
        }
    }

    pub fn gate(&self) -> MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    pub fn pid(&self) -> u32 {
        self.lock().pid
    }

    pub fn set_pid(&self, pid: u32) {
        self.lock().pid = pid;
    }

    /// Takes `step`, or says why the current state does not allow it.
    pub fn step(&self, step: Step) -> Result<State> {
        let mut s = self.lock();
        self.apply(&mut s, step)
    }

    fn apply(&self, s: &mut Snapshot, step: Step) -> Result<State> {
        let next = s
            .state
            .next(step)
            .ok_or_else(|| ShimError::IllegalTransition {
                process: self.describe(),
                state: s.state,
                action: step.action(),
            })?;
        s.state = next;
        if next.is_final() {
            self.changed.notify_all();
        }
        Ok(next)
    }

    /// Checks that `step` is allowed now, without taking it.
    pub fn check(&self, step: Step) -> Result<()> {
        let s = self.lock();
        match s.state.next(step) {
            Some(_) => Ok(()),
            None => Err(ShimError::IllegalTransition {
                process: self.describe(),
                state: s.state,
                action: step.action(),
            }),
        }
    }

    /// Records the exit once; returns it, or None when the process was already over.
    pub fn set_exited(&self, code: i32) -> Option<Exit> {
        let mut s = self.lock();
        s.state.next(Step::Exit)?;
        let exit = Exit {
            code: code as u32,
            at: now(),
        };
        s.exit = Some(exit.clone());
        self.apply(&mut s, Step::Exit).ok()?;
        Some(exit)
    }

    /// Deletes a process whatever its state (its container is being deleted, which
    /// kills everything in it): waiters wake.
    pub fn force_deleted(&self) {
        let mut s = self.lock();
        s.state = State::Deleted;
        self.changed.notify_all();
    }

    pub fn waiters(&self) -> usize {
        self.waiters.load(Ordering::SeqCst)
    }

    /// Blocks until the process stopped or was deleted.
    pub fn wait(&self) -> Exit {
        let mut s = self.lock();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _done = WaiterGone(&self.waiters);
        loop {
            if let Some(exit) = &s.exit {
                return exit.clone();
            }
            if s.state == State::Deleted {
                return Exit {
                    code: NEVER_RAN_STATUS,
                    at: now(),
                };
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn set_io(&self, io: Io) {
        *self.io.lock().unwrap_or_else(|e| e.into_inner()) = Some(io);
    }

    pub fn with_io<T>(&self, f: impl FnOnce(&Io) -> T) -> Option<T> {
        self.io
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(f)
    }

    /// Waits (at most `limit`) until what the process wrote is copied out; true when it
    /// has no io.
    pub fn wait_output(&self, limit: std::time::Duration) -> bool {
        self.with_io(|io| io.wait_output(limit)).unwrap_or(true)
    }

    /// Drops the shim's side of the stdio (on delete), once what the process wrote is
    /// copied out (at most OUTPUT_DRAIN, as containerd's runc shim waits at delete).
    pub fn drop_io(&self) {
        let io = self.io.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(io) = io {
            if !io.wait_output(OUTPUT_DRAIN) {
                log::warn!(
                    "{}: output still open after {OUTPUT_DRAIN:?} (a child holds it?)",
                    self.describe()
                );
            }
        }
    }
}

struct WaiterGone<'a>(&'a AtomicUsize);

impl Drop for WaiterGone<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn timestamp_field(exit: &Option<Exit>) -> MessageField<Timestamp> {
    match exit {
        Some(e) => MessageField::some(e.at.clone()),
        None => MessageField::none(),
    }
}

/// Runs the runc command that creates `p` (`create` for init, `exec` for the others):
/// its stdio prepared first (FIFOs opened, or a console socket), handed to runc, then
/// kept as the process's io. Returns the pid runc reported.
pub fn launch(
    p: &Process,
    run: impl FnOnce(RuncIo) -> std::result::Result<u32, RuncError>,
) -> Result<u32> {
    let stdio_err = |e| ShimError::io(format!("stdio of {}", p.describe()), e);
    let mut prepared = Prepared::new(&p.stdio).map_err(stdio_err)?;
    let stdio = prepared.take_pass().map_err(stdio_err)?;
    let pid = run(RuncIo {
        console_socket: prepared.console_socket.as_deref(),
        stdio,
    })?;
    p.set_io(prepared.finish().map_err(stdio_err)?);
    Ok(pid)
}
