//! The ttrpc Task service containerd talks to: the containers of one group (one, or all
//! the nested containers of a cache: see `service::group_of`), their init processes and
//! execs, all run by runc.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use containerd_shim::api::{
    self, CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse,
    CreateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest,
    KillRequest, PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest,
    ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest,
    StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::topics::*;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use log::{info, warn};

use crate::bundle::{Record, Spec};
use crate::events::Events;
use crate::exits::Exits;
use crate::mounts;
use crate::process::{timestamp_field, Process, Status};
use crate::runc::{PassStdio, Runc, RuncError};
use crate::stdio::{Prepared, StdioPaths};

const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";

fn rpc_err(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn runc_err(e: RuncError) -> ttrpc::Error {
    if e.is_not_found() {
        rpc_err(Code::NOT_FOUND, e.to_string())
    } else {
        rpc_err(Code::UNKNOWN, e.to_string())
    }
}

struct Container {
    id: String,
    bundle: PathBuf,
    runc: Runc,
    record: Record,
    init: Arc<Process>,
    execs: HashMap<String, Exec>,
}

struct Exec {
    process: Arc<Process>,
    /// runc's `--process` file, the spec containerd sent.
    spec: Vec<u8>,
}

impl Container {
    fn process(&self, exec_id: &str) -> TtrpcResult<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .get(exec_id)
            .map(|e| e.process.clone())
            .ok_or_else(|| rpc_err(Code::NOT_FOUND, format!("exec {exec_id} not found")))
    }
}

pub struct TaskService {
    pub namespace: String,
    events: Events,
    exits: Arc<Exits>,
    exit: Arc<ExitSignal>,
    containers: Mutex<HashMap<String, Container>>,
    /// Ids whose create is under way (runc runs without the `containers` lock held).
    creating: Mutex<HashSet<String>>,
}

/// An id reserved for one create; released when the create returns, however it returns.
struct Reservation<'a> {
    set: &'a Mutex<HashSet<String>>,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl TaskService {
    pub fn new(namespace: &str, events: Events, exit: Arc<ExitSignal>) -> std::io::Result<Self> {
        let on_exit_events = events.clone();
        let exits = Exits::start(Box::new(move |p, code| {
            handle_exit(&on_exit_events, &p, code)
        }))?;
        Ok(TaskService {
            namespace: namespace.to_string(),
            events,
            exits,
            exit,
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `id` for a create, so that runc can work without the `containers` lock held
    /// (the group's other containers stay served) and a second create of the same id is
    /// refused instead of racing the first (whose cleanup would delete the winner).
    fn reserve(&self, id: &str) -> TtrpcResult<Reservation<'_>> {
        let containers = self.lock();
        let mut creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if containers.contains_key(id) || !creating.insert(id.to_string()) {
            return Err(rpc_err(
                Code::ALREADY_EXISTS,
                format!("container {id} already exists in this shim"),
            ));
        }
        Ok(Reservation {
            set: &self.creating,
            id: id.to_string(),
        })
    }

    fn with_container<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Container) -> TtrpcResult<T>,
    ) -> TtrpcResult<T> {
        match self.lock().get_mut(id) {
            Some(c) => f(c),
            None => Err(rpc_err(
                Code::NOT_FOUND,
                format!("container {id} not found"),
            )),
        }
    }

    fn find(&self, id: &str, exec_id: &str) -> TtrpcResult<Arc<Process>> {
        self.with_container(id, |c| c.process(exec_id))
    }

    /// Watches a freshly started pid; an exit that came before the watch is handled here.
    fn watch(&self, process: &Arc<Process>, pid: u32) -> Option<i32> {
        self.exits.watch(pid, process.clone())
    }
}

/// An exit, in order after the process's start event (the gate), published once.
fn handle_exit(events: &Events, process: &Process, code: i32) {
    let _gate = process.gate();
    let Some(exit) = process.set_exited(code) else {
        return;
    };
    events.publish(
        TASK_EXIT_EVENT_TOPIC,
        TaskExit {
            container_id: process.container_id.clone(),
            id: process.event_id().to_string(),
            pid: process.pid(),
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        },
    );
}

/// Runs the runc command that starts `process` (`create` for init, `exec` for the
/// others): its stdio prepared first (FIFOs opened, or a console socket), handed to runc,
/// then kept as the process's io. Returns the pid runc wrote to `pid_file`.
fn start_with_stdio(
    process: &Process,
    pid_file: &Path,
    run: impl FnOnce(Option<&Path>, PassStdio) -> Result<(), RuncError>,
) -> TtrpcResult<u32> {
    let stdio_err = |e: std::io::Error| rpc_err(Code::INTERNAL, format!("stdio: {e}"));
    let mut prepared = Prepared::new(&process.stdio).map_err(stdio_err)?;
    let pass = prepared.take_pass().map_err(stdio_err)?;
    run(prepared.console_socket.as_deref(), pass)
        .map_err(|e| rpc_err(Code::UNKNOWN, e.to_string()))?;
    process.set_io(prepared.finish().map_err(stdio_err)?);
    read_pid(pid_file)
}

fn read_pid(path: &Path) -> TtrpcResult<u32> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| rpc_err(Code::INTERNAL, format!("read {}: {e}", path.display())))?;
    text.trim()
        .parse()
        .map_err(|e| rpc_err(Code::INTERNAL, format!("pid file {}: {e}", path.display())))
}

/// runc options containerd may pass (CRI's runtime `options`); anything else is ignored.
fn runc_for(req: &CreateTaskRequest, namespace: &str, bundle: &Path) -> Runc {
    let mut binary = None;
    let mut root = None;
    let mut systemd = false;
    if let Some(any) = req.options.as_ref() {
        if any.type_url.ends_with(RUNC_OPTIONS_TYPE) {
            match api::Options::parse_from_bytes(&any.value) {
                Ok(o) => {
                    binary = Some(o.binary_name).filter(|s| !s.is_empty());
                    root = Some(PathBuf::from(o.root)).filter(|p| !p.as_os_str().is_empty());
                    systemd = o.systemd_cgroup;
                }
                Err(e) => warn!("unreadable runc options: {e}"),
            }
        }
    }
    let mut runc = Runc::new(binary.as_deref(), root.as_deref(), namespace, bundle);
    runc.systemd_cgroup = systemd;
    runc
}

fn stdio_paths(terminal: bool, stdin: &str, stdout: &str, stderr: &str) -> StdioPaths {
    StdioPaths {
        stdin: stdin.to_string(),
        stdout: stdout.to_string(),
        stderr: stderr.to_string(),
        terminal,
    }
}

impl TaskService {
    fn do_create(&self, req: &CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        let _reserved = self.reserve(&req.id)?;
        let bundle = PathBuf::from(&req.bundle);
        let spec = Spec::load(&bundle).map_err(|e| rpc_err(Code::INVALID_ARGUMENT, e))?;
        let runc = runc_for(req, &self.namespace, &bundle);
        let mut record = Record {
            runc: runc.clone(),
            rootfs_mounted: false,
            store_dir: None,
        };
        record
            .save(&bundle)
            .map_err(|e| rpc_err(Code::INTERNAL, e))?;
        if let Err(e) = mounts::setup(&bundle, &req.rootfs, &spec, &mut record) {
            let _ = mounts::teardown(&bundle, Some(&record));
            return Err(rpc_err(Code::FAILED_PRECONDITION, format!("rootfs: {e}")));
        }
        let stdio = stdio_paths(req.terminal, &req.stdin, &req.stdout, &req.stderr);
        let init = Arc::new(Process::new(&req.id, "", stdio.clone()));
        let pid_file = bundle.join("init.pid");
        let created = start_with_stdio(&init, &pid_file, |console, pass| {
            runc.create(&req.id, &bundle, &pid_file, console, pass)
        });
        let pid = match created {
            Ok(pid) => pid,
            Err(e) => {
                let _ = runc.delete(&req.id, true);
                if let Err(t) = mounts::teardown(&bundle, Some(&record)) {
                    warn!("cleanup after failed create: {t}");
                }
                return Err(e);
            }
        };
        init.set_pid(pid);
        let early_exit = self.watch(&init, pid);
        self.lock().insert(
            req.id.clone(),
            Container {
                id: req.id.clone(),
                bundle: bundle.clone(),
                runc,
                record,
                init: init.clone(),
                execs: HashMap::new(),
            },
        );
        self.events.publish(
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
            handle_exit(&self.events, &init, code);
        }
        info!("created {} (pid {pid})", req.id);
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn do_start(&self, req: &StartRequest) -> TtrpcResult<StartResponse> {
        let (runc, process, exec_spec, bundle) = self.with_container(&req.id, |c| {
            let p = c.process(&req.exec_id)?;
            let spec = c.execs.get(&req.exec_id).map(|e| e.spec.clone());
            Ok((c.runc.clone(), p, spec, c.bundle.clone()))
        })?;
        if process.snapshot().status != Status::Created {
            return Err(rpc_err(
                Code::FAILED_PRECONDITION,
                format!("{} is not in created state", process.event_id()),
            ));
        }
        let gate = process.gate();
        let mut early_exit = None;
        match exec_spec {
            None => {
                runc.start(&req.id).map_err(runc_err)?;
                process.set_status(Status::Running);
                self.events.publish(
                    TASK_START_EVENT_TOPIC,
                    TaskStart {
                        container_id: req.id.clone(),
                        pid: process.pid(),
                        ..Default::default()
                    },
                );
            }
            Some(spec) => {
                let pid = self.start_exec(&runc, &bundle, &process, &spec)?;
                process.set_pid(pid);
                process.set_status(Status::Running);
                early_exit = self.watch(&process, pid);
                self.events.publish(
                    TASK_EXEC_STARTED_EVENT_TOPIC,
                    TaskExecStarted {
                        container_id: req.id.clone(),
                        exec_id: req.exec_id.clone(),
                        pid,
                        ..Default::default()
                    },
                );
            }
        }
        drop(gate);
        if let Some(code) = early_exit {
            handle_exit(&self.events, &process, code);
        }
        Ok(StartResponse {
            pid: process.pid(),
            ..Default::default()
        })
    }

    fn start_exec(
        &self,
        runc: &Runc,
        bundle: &Path,
        process: &Arc<Process>,
        spec: &[u8],
    ) -> TtrpcResult<u32> {
        let dir = bundle.join("execs");
        std::fs::create_dir_all(&dir)
            .map_err(|e| rpc_err(Code::INTERNAL, format!("create {}: {e}", dir.display())))?;
        let spec_file = dir.join(format!("{}.json", process.exec_id));
        let pid_file = dir.join(format!("{}.pid", process.exec_id));
        std::fs::write(&spec_file, spec).map_err(|e| {
            rpc_err(
                Code::INTERNAL,
                format!("write {}: {e}", spec_file.display()),
            )
        })?;
        start_with_stdio(process, &pid_file, |console, pass| {
            runc.exec(&process.container_id, &spec_file, &pid_file, console, pass)
        })
    }

    fn do_delete(&self, req: &DeleteRequest) -> TtrpcResult<DeleteResponse> {
        if !req.exec_id.is_empty() {
            let process = self.with_container(&req.id, |c| {
                let p = c.process(&req.exec_id)?;
                if matches!(p.snapshot().status, Status::Running | Status::Paused) {
                    return Err(rpc_err(
                        Code::FAILED_PRECONDITION,
                        format!("exec {} is still running", req.exec_id),
                    ));
                }
                c.execs.remove(&req.exec_id);
                Ok(p)
            })?;
            process.drop_io();
            let snap = process.snapshot();
            return Ok(DeleteResponse {
                pid: snap.pid,
                exit_status: snap.exit.as_ref().map(|e| e.code).unwrap_or(0),
                exited_at: timestamp_field(&snap.exit),
                ..Default::default()
            });
        }
        let mut guard = self.lock();
        let Some(c) = guard.get(&req.id) else {
            return Err(rpc_err(
                Code::NOT_FOUND,
                format!("container {} not found", req.id),
            ));
        };
        let snap = c.init.snapshot();
        if matches!(snap.status, Status::Running | Status::Paused) {
            return Err(rpc_err(
                Code::FAILED_PRECONDITION,
                format!("task {} is still running", req.id),
            ));
        }
        if let Err(e) = c.runc.delete(&c.id, true) {
            if !e.is_not_found() {
                return Err(runc_err(e));
            }
        }
        mounts::teardown(&c.bundle, Some(&c.record)).map_err(|e| rpc_err(Code::INTERNAL, e))?;
        let Some(c) = guard.remove(&req.id) else {
            return Err(rpc_err(Code::NOT_FOUND, "container vanished"));
        };
        drop(guard);
        c.init.drop_io();
        // A task deleted before it ran has no exit; report it like containerd does.
        let exit = snap.exit.clone();
        let exit_status = exit.as_ref().map(|e| e.code).unwrap_or(0);
        self.events.publish(
            TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: c.id.clone(),
                pid: snap.pid,
                exit_status,
                exited_at: timestamp_field(&exit),
                id: c.id.clone(),
                ..Default::default()
            },
        );
        info!("deleted {}", c.id);
        Ok(DeleteResponse {
            pid: snap.pid,
            exit_status,
            exited_at: timestamp_field(&exit),
            ..Default::default()
        })
    }

    fn do_kill(&self, req: &KillRequest) -> TtrpcResult<()> {
        let (runc, process) =
            self.with_container(&req.id, |c| Ok((c.runc.clone(), c.process(&req.exec_id)?)))?;
        let snap = process.snapshot();
        if snap.status == Status::Stopped {
            return Err(rpc_err(
                Code::NOT_FOUND,
                format!("process {} already finished", process.event_id()),
            ));
        }
        if req.exec_id.is_empty() {
            return runc.kill(&req.id, req.signal, req.all).map_err(runc_err);
        }
        let signal = nix::sys::signal::Signal::try_from(req.signal as i32).map_err(|e| {
            rpc_err(
                Code::INVALID_ARGUMENT,
                format!("signal {}: {e}", req.signal),
            )
        })?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(snap.pid as i32), signal).map_err(|e| {
            rpc_err(
                Code::NOT_FOUND,
                format!("kill exec {} (pid {}): {e}", req.exec_id, snap.pid),
            )
        })
    }
}

impl Task for TaskService {
    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let (process, bundle) = self.with_container(&req.id, |c| {
            Ok((c.process(&req.exec_id)?, c.bundle.clone()))
        })?;
        let snap = process.snapshot();
        let status = match snap.status {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Paused => api::Status::PAUSED,
            Status::Stopped => api::Status::STOPPED,
        };
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: bundle.display().to_string(),
            pid: snap.pid,
            status: status.into(),
            stdin: process.stdio.stdin.clone(),
            stdout: process.stdio.stdout.clone(),
            stderr: process.stdio.stderr.clone(),
            terminal: process.stdio.terminal,
            exit_status: snap.exit.as_ref().map(|e| e.code).unwrap_or(0),
            exited_at: timestamp_field(&snap.exit),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        self.do_create(&req)
            .inspect_err(|e| warn!("create {}: {e:?}", req.id))
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        self.do_start(&req)
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        self.do_delete(&req)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let runc = self.with_container(&req.id, |c| Ok(c.runc.clone()))?;
        let pids = runc.ps(&req.id).map_err(runc_err)?;
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
        let (runc, init) =
            self.with_container(&req.id, |c| Ok((c.runc.clone(), c.init.clone())))?;
        runc.pause(&req.id).map_err(runc_err)?;
        init.set_status(Status::Paused);
        self.events.publish(
            TASK_PAUSED_EVENT_TOPIC,
            TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            },
        );
        Ok(api::Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<api::Empty> {
        let (runc, init) =
            self.with_container(&req.id, |c| Ok((c.runc.clone(), c.init.clone())))?;
        runc.resume(&req.id).map_err(runc_err)?;
        init.set_status(Status::Running);
        self.events.publish(
            TASK_RESUMED_EVENT_TOPIC,
            TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            },
        );
        Ok(api::Empty::new())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<api::Empty> {
        self.do_kill(&req)?;
        Ok(api::Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<api::Empty> {
        // The exec id names files in the bundle: containerd's identifier rules, enforced.
        let valid_id = !req.exec_id.is_empty()
            && req
                .exec_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && !req.exec_id.starts_with('.');
        if !valid_id {
            return Err(rpc_err(
                Code::INVALID_ARGUMENT,
                format!(
                    "exec id {:?}: expected letters, digits, '.', '_', '-'",
                    req.exec_id
                ),
            ));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| rpc_err(Code::INVALID_ARGUMENT, "exec without a process spec"))?;
        self.with_container(&req.id, |c| {
            if c.execs.contains_key(&req.exec_id) {
                return Err(rpc_err(
                    Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            if c.init.snapshot().status == Status::Stopped {
                return Err(rpc_err(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is not running", req.id),
                ));
            }
            let stdio = stdio_paths(req.terminal, &req.stdin, &req.stdout, &req.stderr);
            c.execs.insert(
                req.exec_id.clone(),
                Exec {
                    process: Arc::new(Process::new(&req.id, &req.exec_id, stdio)),
                    spec,
                },
            );
            Ok(())
        })?;
        self.events.publish(
            TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(api::Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let process = self.find(&req.id, &req.exec_id)?;
        process
            .with_io(|io| io.resize(req.width, req.height))
            .unwrap_or_else(|| Err(std::io::Error::other("process has no io")))
            .map_err(|e| rpc_err(Code::FAILED_PRECONDITION, format!("resize pty: {e}")))?;
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<api::Empty> {
        let process = self.find(&req.id, &req.exec_id)?;
        if req.stdin {
            process.with_io(|io| io.close_stdin());
        }
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let process = self.find(&req.id, &req.exec_id)?;
        let exit = process.wait();
        Ok(WaitResponse {
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self.lock().get(&req.id).map_or(0, |c| c.init.pid());
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn stats(&self, _ctx: &TtrpcContext, _req: StatsRequest) -> TtrpcResult<StatsResponse> {
        Err(rpc_err(
            Code::UNIMPLEMENTED,
            "task metrics are not implemented",
        ))
    }

    fn update(&self, _ctx: &TtrpcContext, _req: UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        Err(rpc_err(
            Code::UNIMPLEMENTED,
            "task update is not implemented",
        ))
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(rpc_err(
            Code::UNIMPLEMENTED,
            "checkpoint is not implemented",
        ))
    }

    fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> TtrpcResult<api::Empty> {
        // containerd asks after every delete; a shim with a container of its group stays.
        if !req.now && !self.lock().is_empty() {
            return Ok(api::Empty::new());
        }
        self.exit.signal();
        Ok(api::Empty::new())
    }
}
