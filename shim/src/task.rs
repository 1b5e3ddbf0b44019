//! The ttrpc Task service containerd talks to. Each method converts the request, calls
//! the registry or a container (`container`), and converts the answer; errors become
//! ttrpc statuses through `ShimError`'s one mapping.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::api::{
    self, CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse,
    CreateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest,
    KillRequest, PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest,
    ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest,
    StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskIO, TaskPaused, TaskResumed,
};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics::*;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use log::{info, warn};

use crate::container::{report_exit, report_exit_unblocking, Container, NewTask, Shared};
use crate::error::{Result, ShimError};
use crate::events::{Event, EventSink};
use crate::exits::Exits;
use crate::lifetime::Lifetime;
use crate::options::TaskOptions;
use crate::process::{timestamp_field, Snapshot};
use crate::registry::Registry;
use crate::runc::Runtime;
use crate::state::State;
use crate::stdio::StdioPaths;
use crate::timing::timed;

pub struct TaskService {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    lifetime: Arc<Lifetime>,
}

/// Where the shim serves and what it was spawned for (none in unit tests).
#[derive(Default)]
pub struct Serving {
    pub socket: Option<PathBuf>,
    /// The task the shim was spawned for: its Create is on its way.
    pub first: Option<String>,
}

fn stdio_paths(
    shared: &Shared,
    id: &str,
    terminal: bool,
    stdin: &str,
    stdout: &str,
    stderr: &str,
) -> StdioPaths {
    StdioPaths {
        stdin: stdin.to_string(),
        stdout: stdout.to_string(),
        stderr: stderr.to_string(),
        terminal,
        // What containerd's runc shim tells a `binary://` logging program.
        log_env: vec![
            ("CONTAINER_ID".into(), id.to_string()),
            ("CONTAINER_NAMESPACE".into(), shared.namespace.clone()),
        ],
    }
}

fn api_status(state: State) -> api::Status {
    match state {
        State::Created | State::Starting => api::Status::CREATED,
        State::Running => api::Status::RUNNING,
        State::Paused => api::Status::PAUSED,
        State::Stopped | State::Deleted => api::Status::STOPPED,
    }
}

fn delete_response(snap: &Snapshot) -> DeleteResponse {
    // A task deleted before it ran has no exit: 0 and no time, as containerd's runc shim.
    DeleteResponse {
        pid: snap.pid,
        exit_status: snap.exit.as_ref().map_or(0, |e| e.code),
        exited_at: timestamp_field(&snap.exit),
        ..Default::default()
    }
}

impl TaskService {
    /// `containerd_address` names containerd in the store leases the shim takes.
    pub fn new(
        namespace: &str,
        containerd_address: &str,
        runtime: Arc<dyn Runtime>,
        events: Arc<dyn EventSink>,
        exit: Arc<ExitSignal>,
        serving: Serving,
    ) -> std::io::Result<Self> {
        let on_exit = events.clone();
        let exits = Exits::start(Box::new(move |p, code| {
            report_exit_unblocking(&on_exit, p, code)
        }))?;
        let registry = Arc::new(Registry::default());
        let tasks = registry.clone();
        let lifetime = Lifetime::start(
            exit,
            serving.socket,
            serving.first.as_deref(),
            Box::new(move || !tasks.is_empty()),
        )?;
        Ok(TaskService {
            shared: Arc::new(Shared {
                namespace: namespace.to_string(),
                runtime,
                events,
                exits,
                state_dir_env: std::env::var("NESTCACHE_STATE_DIR").ok(),
                containerd_address: containerd_address.to_string(),
            }),
            registry,
            lifetime,
        })
    }

    fn publish(&self, topic: &'static str, event: impl containerd_shim::protos::protobuf::Message) {
        self.shared.events.publish(Event::new(topic, &event));
    }

    fn do_create(&self, req: &CreateTaskRequest) -> Result<u32> {
        // containerd reads this task's log FIFO for as long as the task lives.
        crate::logger::follow(Path::new(&req.bundle));
        let _creating = self.lifetime.creating(&req.id)?;
        let reserved = self.registry.reserve(&req.id)?;
        let new = NewTask {
            id: &req.id,
            bundle: Path::new(&req.bundle),
            rootfs: &req.rootfs,
            stdio: stdio_paths(
                &self.shared,
                &req.id,
                req.terminal,
                &req.stdin,
                &req.stdout,
                &req.stderr,
            ),
            options: TaskOptions::parse(req.options.as_ref())?,
        };
        let (container, early_exit) = Container::create(&self.shared, new)?;
        let container = Arc::new(container);
        let pid = container.init.pid();
        self.lifetime.set_linger(container.linger);
        self.registry.insert(&reserved, container.clone());
        self.publish(
            TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            },
        );
        if let Some(code) = early_exit {
            report_exit(&*self.shared.events, &container.init, code);
        }
        info!("created {} (pid {pid})", req.id);
        Ok(pid)
    }

    fn do_delete(&self, req: &DeleteRequest) -> Result<DeleteResponse> {
        let container = self.registry.get(&req.id)?;
        if !req.exec_id.is_empty() {
            return Ok(delete_response(&container.delete_exec(&req.exec_id)?));
        }
        let snap = container.delete()?;
        self.registry.remove(&req.id);
        self.lifetime.deleted(&req.id);
        let response = delete_response(&snap);
        self.publish(
            TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: req.id.clone(),
                pid: response.pid,
                exit_status: response.exit_status,
                exited_at: response.exited_at.clone(),
                id: req.id.clone(),
                ..Default::default()
            },
        );
        Ok(response)
    }

    fn do_exec(&self, req: &ExecProcessRequest) -> Result<()> {
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| ShimError::Invalid("exec without a process spec".into()))?;
        let stdio = stdio_paths(
            &self.shared,
            &req.id,
            req.terminal,
            &req.stdin,
            &req.stdout,
            &req.stderr,
        );
        self.registry
            .get(&req.id)?
            .add_exec(&req.exec_id, stdio, spec)?;
        self.publish(
            TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(())
    }

    fn do_state(&self, req: &StateRequest) -> Result<StateResponse> {
        let container = self.registry.get(&req.id)?;
        let process = container.process(&req.exec_id)?;
        let snap = process.snapshot();
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: container.bundle.display().to_string(),
            pid: snap.pid,
            status: api_status(snap.state).into(),
            stdin: process.stdio.stdin.clone(),
            stdout: process.stdio.stdout.clone(),
            stderr: process.stdio.stderr.clone(),
            terminal: process.stdio.terminal,
            exit_status: snap.exit.as_ref().map_or(0, |e| e.code),
            exited_at: timestamp_field(&snap.exit),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn do_stats(&self, req: &StatsRequest) -> Result<StatsResponse> {
        let stats = self.registry.get(&req.id)?.stats()?;
        Ok(StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }
}

impl Task for TaskService {
    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        Ok(self.do_state(&req)?)
    }

    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let pid = timed("rpc-create", &req.id, || self.do_create(&req))
            .inspect_err(|e| warn!("create {}: {e}", req.id))?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let pid = timed("rpc-start", &req.id, || {
            self.registry.get(&req.id)?.start(&req.exec_id)
        })?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Ok(timed("rpc-delete", &req.id, || self.do_delete(&req))?)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let pids = self.registry.get(&req.id)?.pids()?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<api::Empty> {
        self.registry.get(&req.id)?.pause()?;
        self.publish(
            TASK_PAUSED_EVENT_TOPIC,
            TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            },
        );
        Ok(api::Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<api::Empty> {
        self.registry.get(&req.id)?.resume()?;
        self.publish(
            TASK_RESUMED_EVENT_TOPIC,
            TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            },
        );
        Ok(api::Empty::new())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<api::Empty> {
        self.registry
            .get(&req.id)?
            .kill(&req.exec_id, req.signal, req.all)?;
        Ok(api::Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<api::Empty> {
        self.do_exec(&req)?;
        Ok(api::Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let process = self.registry.get(&req.id)?.process(&req.exec_id)?;
        process
            .with_io(|io| io.resize(req.width, req.height))
            .unwrap_or_else(|| Err(std::io::Error::other("process has no io")))
            .map_err(|e| ShimError::io(format!("resize pty of {}", process.describe()), e))?;
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<api::Empty> {
        let process = self.registry.get(&req.id)?.process(&req.exec_id)?;
        if req.stdin {
            process.with_io(|io| io.close_stdin());
        }
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let process = self.registry.get(&req.id)?.process(&req.exec_id)?;
        let exit = timed("rpc-wait", &req.id, || process.wait());
        Ok(WaitResponse {
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        // Of a task this shim does not have: a `start` joining (service::join_group_shim).
        let task_pid = match self.registry.get(&req.id) {
            Ok(c) => c.init.pid(),
            Err(_) => {
                self.lifetime.join(&req.id)?;
                0
            }
        };
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        Ok(self.do_stats(&req)?)
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let resources = req.resources.as_ref().map(|a| a.value.as_slice());
        let resources =
            resources.ok_or_else(|| ShimError::Invalid("update without resources".into()))?;
        self.registry.get(&req.id)?.update(resources)?;
        Ok(api::Empty::new())
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(ShimError::Unimplemented("checkpoint").into())
    }

    fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> TtrpcResult<api::Empty> {
        // containerd asks after every delete: the shim goes when it has nothing left to
        // serve and its linger is over (`lifetime`).
        self.lifetime.shutdown(&req.id, req.now);
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests;
