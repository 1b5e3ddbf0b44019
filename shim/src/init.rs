//! The init process's lifecycle: created by `runc create` with the container, started by
//! `runc start`, signalled through `runc kill`; its delete removes runc's state and takes
//! the rootfs down.

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::protos::events::task::TaskStart;
use containerd_shim::protos::topics::TASK_START_EVENT_TOPIC;

use crate::bundle::Record;
use crate::error::{Result, ShimError};
use crate::events::Event;
use crate::mounts;
use crate::process::{Lifecycle, Process};
use crate::runc::{Runc, Runtime};
use crate::state::Step;
use crate::timing::timed;

pub struct InitLifecycle {
    pub runtime: Arc<dyn Runtime>,
    pub runc: Runc,
    pub bundle: PathBuf,
    pub record: Record,
}

impl Lifecycle for InitLifecycle {
    fn start(&self, p: &Process) -> Result<u32> {
        self.runtime.start(&self.runc, &p.container_id)?;
        Ok(p.pid())
    }

    fn started_event(&self, p: &Process, pid: u32) -> Event {
        let event = TaskStart {
            container_id: p.container_id.clone(),
            pid,
            ..Default::default()
        };
        Event::new(TASK_START_EVENT_TOPIC, &event)
    }

    fn failed_start(&self, p: &Process) {
        // runc start failed: runc init still waits (or died, and its exit will come).
        let _ = p.step(Step::StartFailed);
    }

    fn kill(&self, p: &Process, signal: u32, all: bool) -> Result<()> {
        if p.state().is_final() {
            return Err(ShimError::Finished {
                process: p.describe(),
            });
        }
        Ok(self
            .runtime
            .kill(&self.runc, &p.container_id, signal, all)?)
    }

    fn delete(&self, p: &Process) -> Result<()> {
        if let Err(e) = self.runtime.delete(&self.runc, &p.container_id, true) {
            if !e.is_not_found() {
                return Err(e.into());
            }
        }
        timed("unmount-rootfs", &p.container_id, || {
            mounts::teardown(&self.bundle, Some(&self.record))
        })
        .map_err(ShimError::Rootfs)
    }
}
