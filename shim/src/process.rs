//! One process of the container (its init, or an exec): status, pid, exit, stdio.

use std::sync::{Condvar, Mutex, MutexGuard};

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;

use crate::stdio::{Io, StdioPaths};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone)]
pub struct Exit {
    pub code: u32,
    pub at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub pid: u32,
    pub status: Status,
    pub exit: Option<Exit>,
}

pub struct Process {
    pub container_id: String,
    /// Empty for the container's init process.
    pub exec_id: String,
    pub stdio: StdioPaths,
    state: Mutex<Snapshot>,
    exited: Condvar,
    /// Held while a start is being published, so a fast exit's TaskExit cannot overtake
    /// the TaskStart/TaskExecStarted event (runtime v2 event ordering).
    gate: Mutex<()>,
    io: Mutex<Option<Io>>,
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

impl Process {
    pub fn new(container_id: &str, exec_id: &str, stdio: StdioPaths) -> Self {
        Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            state: Mutex::new(Snapshot {
                pid: 0,
                status: Status::Created,
                exit: None,
            }),
            exited: Condvar::new(),
            gate: Mutex::new(()),
            io: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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

    pub fn gate(&self) -> MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    pub fn pid(&self) -> u32 {
        self.lock().pid
    }

    pub fn set_pid(&self, pid: u32) {
        self.lock().pid = pid;
    }

    /// Moves to `status` unless the process already stopped.
    pub fn set_status(&self, status: Status) {
        let mut s = self.lock();
        if s.status != Status::Stopped {
            s.status = status;
        }
    }

    /// Records the exit once; returns it, or None when it was already recorded.
    pub fn set_exited(&self, code: i32) -> Option<Exit> {
        let mut s = self.lock();
        if s.status == Status::Stopped {
            return None;
        }
        let exit = Exit {
            code: code as u32,
            at: now(),
        };
        s.status = Status::Stopped;
        s.exit = Some(exit.clone());
        self.exited.notify_all();
        Some(exit)
    }

    /// Blocks until the process exited.
    pub fn wait(&self) -> Exit {
        let mut s = self.lock();
        loop {
            if let Some(exit) = &s.exit {
                return exit.clone();
            }
            s = self.exited.wait(s).unwrap_or_else(|e| e.into_inner());
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

    /// Drops the shim's side of the stdio (on delete).
    pub fn drop_io(&self) {
        self.io.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

pub fn timestamp_field(exit: &Option<Exit>) -> MessageField<Timestamp> {
    match exit {
        Some(e) => MessageField::some(e.at.clone()),
        None => MessageField::none(),
    }
}
