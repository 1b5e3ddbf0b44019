//! Fakes for the Task service's unit tests: a runc that runs nothing (and can fail or
//! hold a call), and an event sink that records. No root, no runc, no containerd.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Condvar, Mutex};

use containerd_shim::monitor::monitor_notify_by_pid;
use containerd_shim::protos::ttrpc::MessageHeader;
use containerd_shim::TtrpcContext;

use crate::events::{Event, EventSink};
use crate::runc::{ProcessFiles, Runc, RuncError, RuncIo, Runtime};

/// A context for calling a Task service directly, as the ttrpc server would.
pub fn ttrpc_context() -> TtrpcContext {
    let (_tx, cancel_rx) = crossbeam_channel::unbounded();
    let (res_tx, _res_rx) = std::sync::mpsc::channel();
    TtrpcContext {
        fd: -1,
        cancel_rx,
        mh: MessageHeader::default(),
        res_tx,
        metadata: Default::default(),
        timeout_nano: 0,
    }
}

/// Fake pids start above the kernel's largest pid_max (2^22): no real process has one.
static NEXT_PID: AtomicU32 = AtomicU32::new(5_000_000);

/// A call held until the test releases it.
pub struct Hold {
    entered: Sender<()>,
    release: Mutex<Receiver<()>>,
}

/// The test's side of a `Hold`.
pub struct HoldHandle {
    pub entered: Receiver<()>,
    pub release: Sender<()>,
}

fn hold() -> (Hold, HoldHandle) {
    let (entered_tx, entered_rx) = channel();
    let (release_tx, release_rx) = channel();
    (
        Hold {
            entered: entered_tx,
            release: Mutex::new(release_rx),
        },
        HoldHandle {
            entered: entered_rx,
            release: release_tx,
        },
    )
}

impl Hold {
    fn wait(&self) {
        let _ = self.entered.send(());
        let _ = self.release.lock().unwrap().recv();
    }
}

#[derive(Default)]
pub struct FakeRuntime {
    /// "create c", "exec c e", "kill c 9"... in call order.
    pub calls: Mutex<Vec<String>>,
    /// Exec ids whose `runc exec` fails like a missing binary.
    pub failing_execs: Mutex<HashSet<String>>,
    hold_exec: Mutex<Option<Hold>>,
    hold_delete: Mutex<Option<Hold>>,
    /// The resources of the last update.
    pub updated: Mutex<Option<String>>,
    init_pids: Mutex<Vec<(String, u32)>>,
}

fn failed(action: &str, id: &str, message: &str) -> RuncError {
    RuncError::Failed {
        action: action.into(),
        id: id.into(),
        code: 1,
        message: message.into(),
    }
}

impl FakeRuntime {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    pub fn calls_starting(&self, prefix: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    pub fn hold_exec(&self) -> HoldHandle {
        let (h, handle) = hold();
        *self.hold_exec.lock().unwrap() = Some(h);
        handle
    }

    pub fn hold_delete(&self) -> HoldHandle {
        let (h, handle) = hold();
        *self.hold_delete.lock().unwrap() = Some(h);
        handle
    }

    fn take_hold(slot: &Mutex<Option<Hold>>) {
        let held = slot.lock().unwrap().take();
        if let Some(h) = held {
            h.wait();
        }
    }

    /// Makes the process with `pid` exit, as the reaper would report it.
    pub fn exit(pid: u32, code: i32) {
        monitor_notify_by_pid(pid as i32, code).unwrap();
    }
}

impl Runtime for FakeRuntime {
    fn create(
        &self,
        _: &Runc,
        id: &str,
        _: &Path,
        _: &ProcessFiles,
        _: RuncIo,
    ) -> Result<u32, RuncError> {
        self.record(format!("create {id}"));
        let pid = NEXT_PID.fetch_add(1, Ordering::SeqCst);
        self.init_pids.lock().unwrap().push((id.to_string(), pid));
        Ok(pid)
    }

    fn exec(
        &self,
        _: &Runc,
        id: &str,
        process_json: &Path,
        files: &ProcessFiles,
        _: RuncIo,
    ) -> Result<u32, RuncError> {
        let exec = process_json.file_stem().unwrap().to_string_lossy();
        assert!(
            files.log.to_string_lossy().contains(&*exec),
            "exec {exec} logs to {} (one runc log per process)",
            files.log.display()
        );
        self.record(format!("exec {id} {exec}"));
        Self::take_hold(&self.hold_exec);
        if self.failing_execs.lock().unwrap().contains(&*exec) {
            return Err(failed(
                "exec",
                id,
                "exec failed: unable to start container process: exec: \"/no/such\": stat /no/such: no such file or directory",
            ));
        }
        Ok(NEXT_PID.fetch_add(1, Ordering::SeqCst))
    }

    fn start(&self, _: &Runc, id: &str) -> Result<(), RuncError> {
        self.record(format!("start {id}"));
        Ok(())
    }

    fn kill(&self, _: &Runc, id: &str, signal: u32, _all: bool) -> Result<(), RuncError> {
        self.record(format!("kill {id} {signal}"));
        let pid = self
            .init_pids
            .lock()
            .unwrap()
            .iter()
            .find(|(c, _)| c == id)
            .map(|(_, p)| *p);
        match pid {
            Some(pid) => {
                Self::exit(pid, 128 + signal as i32);
                Ok(())
            }
            None => Err(failed("kill", id, "container does not exist")),
        }
    }

    fn delete(&self, _: &Runc, id: &str, _force: bool) -> Result<(), RuncError> {
        self.record(format!("delete {id}"));
        Self::take_hold(&self.hold_delete);
        Ok(())
    }

    fn pause(&self, _: &Runc, id: &str) -> Result<(), RuncError> {
        self.record(format!("pause {id}"));
        Ok(())
    }

    fn resume(&self, _: &Runc, id: &str) -> Result<(), RuncError> {
        self.record(format!("resume {id}"));
        Ok(())
    }

    fn ps(&self, _: &Runc, id: &str) -> Result<Vec<u32>, RuncError> {
        self.record(format!("ps {id}"));
        Ok(vec![])
    }

    fn update(&self, _: &Runc, id: &str, resources: &Path) -> Result<(), RuncError> {
        self.record(format!("update {id}"));
        *self.updated.lock().unwrap() = Some(std::fs::read_to_string(resources).unwrap());
        Ok(())
    }
}

/// Records every event, in order.
#[derive(Default)]
pub struct RecordingEvents {
    events: Mutex<Vec<Event>>,
    added: Condvar,
}

impl EventSink for RecordingEvents {
    fn publish(&self, event: Event) {
        self.events.lock().unwrap().push(event);
        self.added.notify_all();
    }
}

impl RecordingEvents {
    /// Blocks until `n` events were published; their topics.
    pub fn wait_for(&self, n: usize) -> Vec<&'static str> {
        let mut events = self.events.lock().unwrap();
        while events.len() < n {
            events = self.added.wait(events).unwrap();
        }
        events.iter().map(|e| e.topic).collect()
    }
}
