//! Exec processes inside a running task, and per-process calls (start, wait, kill,
//! close stdin, resize, delete) addressed by exec id; plus the task's pid list.
//!
//! containerd addresses a task's init process with an empty exec id and an exec'd one by
//! its own id; the calls below take the exec id so that `exec` can use them.

use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, KillRequest, ListPidsRequest,
    ResizePtyRequest, StartRequest,
};
use oci_spec::runtime::Process;
use tonic::Code;

use super::io::Stdio;
use super::{Client, TaskWait};
use crate::{Error, Result};

/// The type URL containerd expects for an OCI process spec carried as `Any` (JSON).
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

impl Client {
    /// Adds process `exec_id` (not yet started) to the running task of `id`.
    pub async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process: &Process,
        stdio: &Stdio,
    ) -> Result<()> {
        let spec = serde_json::to_vec(process)
            .map_err(|e| Error::Invalid(format!("exec in {id}: process spec: {e}")))?;
        let req = self.request(ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: stdio.stdin.clone(),
            stdout: stdio.stdout.clone(),
            stderr: stdio.stderr.clone(),
            terminal: stdio.terminal,
            spec: Some(prost_types::Any {
                type_url: PROCESS_TYPE_URL.to_string(),
                value: spec,
            }),
        });
        match self.inner.tasks().exec(req).await {
            Ok(_) => Ok(()),
            Err(s) => Err(self.error(format_args!("exec {exec_id} in {id}"), s)),
        }
    }

    /// Starts exec process `exec_id`; returns its pid.
    pub async fn start_process(&self, id: &str, exec_id: &str) -> Result<u32> {
        let req = self.request(StartRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        });
        match self.inner.tasks().start(req).await {
            Ok(r) => Ok(r.into_inner().pid),
            Err(s) => Err(self.error(format_args!("start exec {exec_id} in {id}"), s)),
        }
    }

    /// Starts waiting for exec process `exec_id` to exit, in the background (call before
    /// [`Client::start_process`]).
    pub fn wait_process(&self, id: &str, exec_id: &str) -> TaskWait {
        let client = self.clone();
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        let handle = tokio::spawn(async move { client.wait_reconnecting(&id, &exec_id).await });
        TaskWait::from_handle(handle)
    }

    /// Sends `signal` to exec process `exec_id`; one that is gone is not an error.
    pub async fn kill_process(&self, id: &str, exec_id: &str, signal: i32) -> Result<()> {
        let what = format!("kill exec {exec_id} in {id}");
        let call = || {
            let req = self.request(KillRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                signal: signal as u32,
                all: false,
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

    /// Closes the stdin of exec process `exec_id` (see `close_task_stdin`).
    pub async fn close_process_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let what = format!("close stdin of exec {exec_id} in {id}");
        let call = || {
            let req = self.request(CloseIoRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                stdin: true,
            });
            let mut tasks = self.inner.tasks();
            async move { tasks.close_io(req).await }
        };
        match self.reconnecting(&what, call).await {
            Ok(_) => Ok(()),
            Err(s) => Err(self.error(&what, s)),
        }
    }

    /// Sets the terminal size of exec process `exec_id` (empty: the task's init).
    pub async fn resize_process_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<()> {
        let what = if exec_id.is_empty() {
            format!("resize the terminal of task {id}")
        } else {
            format!("resize exec {exec_id} in {id}")
        };
        let call = || {
            let req = self.request(ResizePtyRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                width,
                height,
            });
            let mut tasks = self.inner.tasks();
            async move { tasks.resize_pty(req).await }
        };
        match self.reconnecting(&what, call).await {
            Ok(_) => Ok(()),
            Err(s) => Err(self.error(&what, s)),
        }
    }

    /// Deletes exited exec process `exec_id`; one that is gone is not an error.
    pub async fn delete_process(&self, id: &str, exec_id: &str) -> Result<()> {
        let what = format!("delete exec {exec_id} in {id}");
        let call = || {
            let req = self.request(DeleteProcessRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            });
            let mut tasks = self.inner.tasks();
            async move { tasks.delete_process(req).await }
        };
        match self.reconnecting(&what, call).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(self.error(&what, s)),
        }
    }

    /// The pids of every process in the task of `id` (host pids, containerd's view).
    pub async fn list_pids(&self, id: &str) -> Result<Vec<u32>> {
        let req = self.request(ListPidsRequest {
            container_id: id.to_string(),
        });
        match self.inner.tasks().list_pids(req).await {
            Ok(r) => Ok(r.into_inner().processes.iter().map(|p| p.pid).collect()),
            Err(s) => Err(self.error(format_args!("list the processes of {id}"), s)),
        }
    }
}
