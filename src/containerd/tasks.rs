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

/// How long a wait keeps reconnecting to a containerd that went away before it fails.
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(30);

/// Whether a failed call failed because the connection did (containerd stopped or
/// restarting) rather than because containerd answered no.
fn connection_lost(s: &tonic::Status) -> bool {
    match s.code() {
        Code::Unavailable | Code::Cancelled => true,
        // hyper's "connection closed / reset" surfaces as Unknown with a transport error.
        Code::Unknown => {
            let m = s.message().to_ascii_lowercase();
            ["transport", "connection", "broken pipe", "h2 protocol"]
                .iter()
                .any(|w| m.contains(w))
        }
        _ => false,
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

    /// Starts a created task; returns its pid.
    pub async fn start_task(&self, id: &str) -> Result<u32> {
        let req = self.request(StartRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        });
        match self.inner.tasks().start(req).await {
            Ok(r) => Ok(r.into_inner().pid),
            Err(s) => Err(self.error(format_args!("start task {id}"), s)),
        }
    }

    /// Starts waiting for the task to exit, in the background. Call before
    /// [`Client::start_task`].
    pub fn wait_task(&self, id: &str) -> TaskWait {
        let client = self.clone();
        let id = id.to_string();
        let handle = tokio::spawn(async move { client.wait_reconnecting(&id).await });
        TaskWait { handle }
    }

    /// One Wait, called again while containerd is away (restarted, upgraded): the task
    /// lives on in its shim, which keeps its exit status for the containerd that comes
    /// back, so the real exit code is not lost with the connection. Bounded by
    /// [`RECONNECT_WINDOW`] from the first failure.
    async fn wait_reconnecting(&self, id: &str) -> Result<ExitStatus> {
        let mut lost_at: Option<std::time::Instant> = None;
        let mut pause = Duration::from_millis(100);
        loop {
            let req = self.request(WaitRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            });
            let status = match self.inner.tasks().wait(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    if lost_at.is_some() {
                        tracing::info!("task {id}: containerd is back; its exit was kept");
                    }
                    return Ok(ExitStatus {
                        code: r.exit_status,
                        exited_at: r.exited_at.and_then(timestamp),
                    });
                }
                Err(s) => s,
            };
            let since = *lost_at.get_or_insert_with(std::time::Instant::now);
            if !connection_lost(&status) || since.elapsed() >= RECONNECT_WINDOW {
                return Err(self.error(format_args!("wait for task {id}"), status));
            }
            tracing::warn!(
                "task {id}: lost containerd ({}); reconnecting",
                status.message()
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Sends `signal` to the task's init process (or, with `all`, every process in it).
    /// A task that is already gone is not an error.
    pub async fn kill_task(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let req = self.request(KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal: signal as u32,
            all,
        });
        match self.inner.tasks().kill(req).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(self.error(format_args!("kill task {id}"), s)),
        }
    }

    /// Deletes a stopped (or never started) task; None when there was no task.
    pub async fn delete_task(&self, id: &str) -> Result<Option<ExitStatus>> {
        let req = self.request(DeleteTaskRequest {
            container_id: id.to_string(),
        });
        match self.inner.tasks().delete(req).await {
            Ok(r) => {
                let r = r.into_inner();
                Ok(Some(ExitStatus {
                    code: r.exit_status,
                    exited_at: r.exited_at.and_then(timestamp),
                }))
            }
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(self.error(format_args!("delete task {id}"), s)),
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
        let req = self.request(GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        });
        match self.inner.tasks().get(req).await {
            Ok(r) => Ok(r.into_inner().process.map(|p| TaskState {
                pid: p.pid,
                status: TaskStatus::from_raw(p.status),
                exit_status: p.exit_status,
                exited_at: p.exited_at.and_then(timestamp),
            })),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(self.error(format_args!("get task {id}"), s)),
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
