//! The `runc` command line, as the shim drives it.
//!
//! Global flags: `--root` (runc's state dir for this namespace), `--log` + `--log-format
//! json` (runc create/exec pass their own stdio to the container, so their errors must go
//! to a log file, not stderr), `--systemd-cgroup` when asked for.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::command::{self, Finished};

/// Where runc keeps container state when containerd passes no `root` option.
pub const DEFAULT_ROOT: &str = "/run/containerd/nestcache";

/// How to call runc for one container; persisted in the bundle so that the `delete`
/// subcommand, run after the shim died, calls it the same way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Runc {
    pub binary: String,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    /// runc's JSON log of the last create/exec, inside the bundle.
    pub log: PathBuf,
}

/// The container's stdio as runc should hand it over (runc passes these fds on).
pub struct PassStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("cannot run {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("runc {action} {id} failed (exit {code}): {message}")]
    Failed {
        action: String,
        id: String,
        code: i32,
        message: String,
    },
}

impl RuncError {
    /// True when runc said the container or process does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        match self {
            RuncError::Failed { message, .. } => {
                let m = message.to_ascii_lowercase();
                m.contains("does not exist")
                    || m.contains("not found")
                    || m.contains("no such process")
                    || m.contains("container not running")
                    || m.contains("process already finished")
            }
            RuncError::Spawn { .. } => false,
        }
    }
}

impl Runc {
    pub fn new(binary: Option<&str>, root: Option<&Path>, namespace: &str, bundle: &Path) -> Self {
        Runc {
            binary: binary
                .filter(|b| !b.is_empty())
                .unwrap_or("runc")
                .to_string(),
            root: root
                .filter(|r| !r.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| Path::new(DEFAULT_ROOT).to_path_buf())
                .join(namespace),
            systemd_cgroup: false,
            log: bundle.join("runc-log.json"),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&self.log)
            .arg("--log-format")
            .arg("json");
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd
    }

    /// `runc create`: the container's init waits in runc init until `start`.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        stdio: PassStdio,
    ) -> Result<(), RuncError> {
        let mut cmd = self.command();
        cmd.arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file);
        if let Some(sock) = console_socket {
            cmd.arg("--console-socket").arg(sock);
        }
        cmd.arg(id);
        self.run_passing(cmd, "create", id, stdio)
    }

    /// `runc exec --detach`: an extra process described by a process.json.
    pub fn exec(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        stdio: PassStdio,
    ) -> Result<(), RuncError> {
        let mut cmd = self.command();
        cmd.arg("exec")
            .arg("--detach")
            .arg("--process")
            .arg(process_json)
            .arg("--pid-file")
            .arg(pid_file);
        if let Some(sock) = console_socket {
            cmd.arg("--console-socket").arg(sock);
        }
        cmd.arg(id);
        self.run_passing(cmd, "exec", id, stdio)
    }

    pub fn start(&self, id: &str) -> Result<(), RuncError> {
        self.simple(&["start", id], "start", id).map(|_| ())
    }

    pub fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), RuncError> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, sig.as_str()]);
        self.simple(&args, "kill", id).map(|_| ())
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<(), RuncError> {
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(id);
        self.simple(&args, "delete", id).map(|_| ())
    }

    pub fn pause(&self, id: &str) -> Result<(), RuncError> {
        self.simple(&["pause", id], "pause", id).map(|_| ())
    }

    pub fn resume(&self, id: &str) -> Result<(), RuncError> {
        self.simple(&["resume", id], "resume", id).map(|_| ())
    }

    /// The pids of every process in the container.
    pub fn ps(&self, id: &str) -> Result<Vec<u32>, RuncError> {
        let out = self.simple(&["ps", "--format", "json", id], "ps", id)?;
        serde_json::from_slice::<Option<Vec<u32>>>(&out.stdout)
            .map(Option::unwrap_or_default)
            .map_err(|e| RuncError::Failed {
                action: "ps".into(),
                id: id.into(),
                code: 0,
                message: format!("unreadable output: {e}"),
            })
    }

    fn simple(&self, args: &[&str], action: &str, id: &str) -> Result<Finished, RuncError> {
        let mut cmd = self.command();
        cmd.args(args).stdin(Stdio::null());
        let out = command::run(cmd, true).map_err(|source| RuncError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        if out.success() {
            Ok(out)
        } else {
            let mut message = out.stderr_line();
            if message.is_empty() {
                message = self.last_log_error();
            }
            Err(RuncError::Failed {
                action: action.into(),
                id: id.into(),
                code: out.code,
                message,
            })
        }
    }

    fn run_passing(
        &self,
        mut cmd: Command,
        action: &str,
        id: &str,
        stdio: PassStdio,
    ) -> Result<(), RuncError> {
        // A fresh log per call, so an error read afterwards belongs to this call.
        let _ = std::fs::remove_file(&self.log);
        cmd.stdin(Stdio::from(stdio.stdin))
            .stdout(Stdio::from(stdio.stdout))
            .stderr(Stdio::from(stdio.stderr));
        let out = command::run(cmd, false).map_err(|source| RuncError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        if out.success() {
            Ok(())
        } else {
            Err(RuncError::Failed {
                action: action.into(),
                id: id.into(),
                code: out.code,
                message: self.last_log_error(),
            })
        }
    }

    /// The last error runc wrote to its JSON log (`{"level":"error","msg":...}`).
    pub fn last_log_error(&self) -> String {
        #[derive(Deserialize)]
        struct Line {
            level: Option<String>,
            msg: Option<String>,
        }
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Line>(l).ok())
            .find(|l| l.level.as_deref() == Some("error") || l.level.as_deref() == Some("fatal"))
            .and_then(|l| l.msg)
            .unwrap_or_else(|| "no error message (see runc log)".to_string())
    }
}
