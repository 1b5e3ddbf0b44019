//! Tasks: the running process of a container. Create (with the rootfs mounts and stdio
//! paths), start, wait, kill, delete, state.
//!
//! Wait before start: [`Client::wait_task`] spawns the Wait call right away; start the task
//! after it so that a process that exits at once is still seen exiting. (containerd keeps a
//! stopped task's exit status until the task is deleted, so a Wait that arrives late still
//! gets it; what must never happen is delete before wait.)

use std::time::{Duration, SystemTime};

use containerd_client::services::v1::{
    CreateTaskRequest, DeleteTaskRequest, GetRequest, KillRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status;
use tonic::Code;

use super::containers::timestamp;
use super::reconnect::connection_lost;
use super::Client;
use crate::{Error, Result};

/// A mount for the task's rootfs (containerd's `types.Mount`: type, source, options).
pub use containerd_client::types::Mount;

/// What to start. Stdio fields are paths the shim opens (FIFOs the caller created and
/// opened for reading first, or `file://` / `binary://` URIs); empty means none.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    pub container_id: String,
    pub rootfs: Vec<Mount>,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// A task's lifecycle state as containerd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Unknown,
    Created,
    Running,
    Stopped,
    Paused,
    Pausing,
}

impl TaskStatus {
    fn from_raw(v: i32) -> TaskStatus {
        match Status::try_from(v) {
            Ok(Status::Created) => TaskStatus::Created,
            Ok(Status::Running) => TaskStatus::Running,
            Ok(Status::Stopped) => TaskStatus::Stopped,
            Ok(Status::Paused) => TaskStatus::Paused,
            Ok(Status::Pausing) => TaskStatus::Pausing,
            _ => TaskStatus::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Unknown => "unknown",
            TaskStatus::Created => "created",
            TaskStatus::Running => "running",
            TaskStatus::Stopped => "stopped",
            TaskStatus::Paused => "paused",
            TaskStatus::Pausing => "pausing",
        }
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task's state: its pid (in containerd's pid namespace) and, once stopped, the exit.
#[derive(Debug, Clone)]
pub struct TaskState {
    pub pid: u32,
    pub status: TaskStatus,
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
}

/// How a process ended: its exit code (128 + signal when killed by one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: u32,
    pub exited_at: Option<SystemTime>,
}

/// A Wait call in flight; [`TaskWait::result`] resolves when the task exits.
#[derive(Debug)]
pub struct TaskWait {
    handle: tokio::task::JoinHandle<Result<ExitStatus>>,
}

impl TaskWait {
    pub(super) fn from_handle(handle: tokio::task::JoinHandle<Result<ExitStatus>>) -> TaskWait {
        TaskWait { handle }
    }

    pub async fn result(self) -> Result<ExitStatus> {
        match self.handle.await {
            Ok(r) => r,
            Err(e) => Err(Error::Other(format!("waiting for the task: {e}"))),
        }
    }

    /// The result if it resolves within `limit`, else None (and the wait is dropped).
    pub async fn result_within(self, limit: Duration) -> Result<Option<ExitStatus>> {
        let abort = self.handle.abort_handle();
        match tokio::time::timeout(limit, self.result()).await {
            Ok(r) => r.map(Some),
            Err(_) => {
                abort.abort();
                Ok(None)
            }
        }
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

impl Client {
    /// Creates the task (the shim and the process, not yet started); returns its pid.
    pub async fn create_task(&self, t: NewTask) -> Result<u32> {
        let id = t.container_id.clone();
        let req = self.request(CreateTaskRequest {
            container_id: t.container_id,
            rootfs: t.rootfs,
            stdin: t.stdin,
            stdout: t.stdout,
            stderr: t.stderr,
            terminal: t.terminal,
            ..Default::default()
        });
        match self.inner.tasks().create(req).await {
            Ok(r) => Ok(r.into_inner().pid),
            Err(s) => Err(self.error(format_args!("create task {id}"), s)),
        }
    }

    /// Starts a created task; returns its pid. A start whose answer was lost with the
    /// connection may have reached the shim or not: once containerd is back, the task's
    /// state says which, and only a task still created is started again.
    pub async fn start_task(&self, id: &str) -> Result<u32> {
        let what = format!("start task {id}");
        let call = || {
            let req = self.request(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            });
            let mut tasks = self.inner.tasks();
            async move { tasks.start(req).await }
        };
        let lost = match call().await {
            Ok(r) => return Ok(r.into_inner().pid),
            Err(s) if !connection_lost(&s) => return Err(self.error(&what, s)),
            Err(s) => s,
        };
        tracing::warn!("{what}: lost containerd ({}); reconnecting", lost.message());
        if let Some(pid) = self.started_pid(id, &what).await? {
            return Ok(pid);
        }
        match self.reconnecting(&what, call).await {
            Ok(r) => Ok(r.into_inner().pid),
            // The first start may have completed meanwhile ("already started").
            Err(s) => match self.started_pid(id, &what).await? {
                Some(pid) => Ok(pid),
                None => Err(self.error(&what, s)),
            },
        }
    }

    /// The pid of a task that is past `created`; None while it is created.
    async fn started_pid(&self, id: &str, what: &str) -> Result<Option<u32>> {
        match self.task_state(id).await? {
            Some(s) if s.status == TaskStatus::Created => Ok(None),
            Some(s) => Ok(Some(s.pid)),
            None => Err(Error::NotFound(format!(
                "{what} (namespace {}): the task went while containerd was away",
                self.namespace
            ))),
        }
    }

    /// Starts waiting for the task to exit, in the background. Call before
    /// [`Client::start_task`].
    pub fn wait_task(&self, id: &str) -> TaskWait {
        let client = self.clone();
        let id = id.to_string();
        let handle = tokio::spawn(async move { client.wait_reconnecting(&id, "").await });
        TaskWait { handle }
    }

    /// One Wait, called again while containerd is away (restarted, upgraded): the task
    /// lives on in its shim, which keeps its exit status for the containerd that comes
    /// back, so the real exit code is not lost with the connection.
    /// Waits for the exit of task `id` (`exec_id` empty) or of one of its execs,
    /// reconnecting across a containerd restart.
    pub(super) async fn wait_reconnecting(&self, id: &str, exec_id: &str) -> Result<ExitStatus> {
        let what = if exec_id.is_empty() {
            format!("wait for task {id}")
        } else {
            format!("wait for exec {exec_id} in {id}")
        };
        let call = || {
            let req = self.request(WaitRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            });
            let mut tasks = self.inner.tasks();
            async move { tasks.wait(req).await }
        };
        match self.reconnecting(&what, call).await {
            Ok(r) => {
                let r = r.into_inner();
                Ok(ExitStatus {
                    code: r.exit_status,
                    exited_at: r.exited_at.and_then(timestamp),
                })
            }
            Err(s) => Err(self.error(&what, s)),
        }
    }

    /// Sends `signal` to the task's init process (or, with `all`, every process in it).
    /// A task that is already gone is not an error.
    pub async fn kill_task(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let what = format!("kill task {id}");
        let call = || {
            let req = self.request(KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal: signal as u32,
                all,
            });
            let mut tasks = self.inner.tasks();
            async move { tasks.kill(req).await }
        };
        match self.reconnecting(&what, call).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(self.error(&what, s)),
        }
    }

    /// Deletes a stopped (or never started) task; None when there was no task, or when
    /// another delete of it won the race.
    pub async fn delete_task(&self, id: &str) -> Result<Option<ExitStatus>> {
        let what = format!("delete task {id}");
        let call = || {
            let req = self.request(DeleteTaskRequest {
                container_id: id.to_string(),
            });
            let mut tasks = self.inner.tasks();
            async move { tasks.delete(req).await }
        };
        match self.reconnecting(&what, call).await {
            Ok(r) => {
                let r = r.into_inner();
                Ok(Some(ExitStatus {
                    code: r.exit_status,
                    exited_at: r.exited_at.and_then(timestamp),
                }))
            }
            Err(s) if s.code() == Code::NotFound => Ok(None),
            // Two deletes of one task at once (`stop` and the `run --rm` that waited for
            // it, on a shim the cache's containers share): containerd closes the
            // winner's shim connection, which the loser's call is still using, after it
            // has dropped the task ("ttrpc: closed"). A task that is gone is deleted.
            Err(s) => match self.task_state(id).await {
                Ok(None) => {
                    tracing::debug!("{what}: deleted by another caller ({})", s.message());
                    Ok(None)
                }
                _ => Err(self.error(&what, s)),
            },
        }
    }

    /// The ids of the containers with these labels whose task has not stopped (a
    /// container without a task is not running either).
    pub async fn running_with_labels(&self, pairs: &[(&str, &str)]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for c in self.list_by_labels(pairs).await? {
            let running = self
                .task_state(&c.id)
                .await?
                .is_some_and(|t| t.status != TaskStatus::Stopped);
            if running {
                out.push(c.id);
            }
        }
        Ok(out)
    }

    /// The task's state, or None when the container has no task.
    pub async fn task_state(&self, id: &str) -> Result<Option<TaskState>> {
        let what = format!("get task {id}");
        let call = || {
            let req = self.request(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            });
            let mut tasks = self.inner.tasks();
            async move { tasks.get(req).await }
        };
        match self.reconnecting(&what, call).await {
            Ok(r) => Ok(r.into_inner().process.map(|p| TaskState {
                pid: p.pid,
                status: TaskStatus::from_raw(p.status),
                exit_status: p.exit_status,
                exited_at: p.exited_at.and_then(timestamp),
            })),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(self.error(&what, s)),
        }
    }

    /// Stops the task if it runs (SIGTERM, then SIGKILL to every process after `grace`)
    /// and deletes it. Returns how it ended, or None when there was no task.
    pub async fn stop_and_delete_task(
        &self,
        id: &str,
        grace: Duration,
    ) -> Result<Option<ExitStatus>> {
        self.stop_and_delete_task_with(id, libc::SIGTERM, grace)
            .await
    }

    /// [`Client::stop_and_delete_task`] with `signal` instead of SIGTERM (`--stop-signal`).
    pub async fn stop_and_delete_task_with(
        &self,
        id: &str,
        signal: i32,
        grace: Duration,
    ) -> Result<Option<ExitStatus>> {
        let Some(state) = self.task_state(id).await? else {
            return Ok(None);
        };
        if matches!(
            state.status,
            TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing
        ) {
            let wait = self.wait_task(id);
            self.kill_task(id, signal, false).await?;
            if wait.result_within(grace).await?.is_none() {
                let wait = self.wait_task(id);
                self.kill_task(id, libc::SIGKILL, true).await?;
                if wait.result_within(Duration::from_secs(10)).await?.is_none() {
                    return Err(Error::Containerd {
                        address: self.address.clone(),
                        message: format!("task {id} did not exit after SIGKILL"),
                    });
                }
            }
        }
        self.delete_task(id).await
    }
}
