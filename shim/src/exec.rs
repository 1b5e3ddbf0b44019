//! An exec's lifecycle: `runc exec --detach` with the process spec containerd sent, its
//! own pid file and runc log under `<bundle>/execs/`, signalled by pid — never before it
//! has one, and never after it exited.

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::protos::events::task::TaskExecStarted;
use containerd_shim::protos::topics::TASK_EXEC_STARTED_EVENT_TOPIC;
use log::warn;
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::error::{Result, ShimError};
use crate::events::Event;
use crate::process::{launch, Lifecycle, Process, NEVER_RAN_STATUS};
use crate::runc::{ProcessFiles, Runc, Runtime};

pub struct ExecLifecycle {
    pub runtime: Arc<dyn Runtime>,
    pub runc: Runc,
    pub bundle: PathBuf,
    /// runc's `--process` file: the process spec containerd sent.
    pub spec: Vec<u8>,
}

impl ExecLifecycle {
    fn dir(&self) -> PathBuf {
        self.bundle.join("execs")
    }

    fn spec_file(&self, p: &Process) -> PathBuf {
        self.dir().join(format!("{}.json", p.exec_id))
    }

    fn files(&self, p: &Process) -> ProcessFiles {
        ProcessFiles {
            pid_file: self.dir().join(format!("{}.pid", p.exec_id)),
            log: self.dir().join(format!("{}.log", p.exec_id)),
        }
    }
}

impl Lifecycle for ExecLifecycle {
    fn start(&self, p: &Process) -> Result<u32> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| ShimError::io(format!("create {}", dir.display()), e))?;
        let spec_file = self.spec_file(p);
        std::fs::write(&spec_file, &self.spec)
            .map_err(|e| ShimError::io(format!("write {}", spec_file.display()), e))?;
        let files = self.files(p);
        launch(p, |io| {
            self.runtime
                .exec(&self.runc, &p.container_id, &spec_file, &files, io)
        })
    }

    fn started_event(&self, p: &Process, pid: u32) -> Event {
        let event = TaskExecStarted {
            container_id: p.container_id.clone(),
            exec_id: p.exec_id.clone(),
            pid,
            ..Default::default()
        };
        Event::new(TASK_EXEC_STARTED_EVENT_TOPIC, &event)
    }

    fn failed_start(&self, p: &Process) {
        // runc exec failed: nothing runs, nothing will exit. Stopped, so Wait returns
        // and the exec can be deleted.
        p.set_exited(NEVER_RAN_STATUS as i32);
    }

    fn kill(&self, p: &Process, signal: u32, _all: bool) -> Result<()> {
        let snap = p.snapshot();
        // pid 0 would signal the shim's own process group (every container it serves).
        let pid = match i32::try_from(snap.pid) {
            Ok(pid) if pid > 0 => pid,
            _ => {
                return Err(ShimError::NoPid {
                    process: p.describe(),
                })
            }
        };
        if snap.state.is_final() {
            return Err(ShimError::Finished {
                process: p.describe(),
            });
        }
        let sig = Signal::try_from(signal as i32)
            .map_err(|e| ShimError::Invalid(format!("signal {signal}: {e}")))?;
        match nix::sys::signal::kill(Pid::from_raw(pid), sig) {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) => Err(ShimError::Finished {
                process: p.describe(),
            }),
            Err(e) => Err(ShimError::io(
                format!("kill {} (pid {pid})", p.describe()),
                e.into(),
            )),
        }
    }

    fn delete(&self, p: &Process) -> Result<()> {
        let files = self.files(p);
        for f in [self.spec_file(p), files.pid_file, files.log] {
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!("remove {}: {e}", f.display()),
            }
        }
        Ok(())
    }
}
