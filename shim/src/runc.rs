//! The `runc` command line, as the shim drives it, behind the `Runtime` trait (so the
//! Task service is tested with a fake, without root or runc).
//!
//! Global flags: `--root` (runc's state dir for this namespace), `--log` + `--log-format
//! json` (runc create/exec pass their own stdio to the container, so their errors must go
//! to a log file, not stderr: one log per process, so that concurrent execs never read
//! each other's errors), `--systemd-cgroup` when asked for.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::command::{self, Finished};
use crate::timing::timed;

/// Where runc keeps container state when containerd passes no `root` option.
pub const DEFAULT_ROOT: &str = "/run/containerd/nestcache";

/// How to call runc for one container; persisted in the bundle so that the `delete`
/// subcommand, run after the shim died, calls it the same way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Runc {
    pub binary: String,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    /// runc's JSON log for the container's own commands (create, start, kill...), inside
    /// the bundle; each exec has a log of its own (`ProcessFiles`).
    pub log: PathBuf,
    /// Which steps the shim may do itself (`direct`); absent in records of older shims.
    #[serde(default)]
    pub executor: Executor,
}

/// The environment variable (of containerd, so of its shims) naming the node's default
/// executor.
pub const EXECUTOR_ENV: &str = "NESTCACHE_SHIM_EXECUTOR";

/// How a container's steps are run: chosen per container (annotation
/// `io.nestcache.executor`, else the shim option `executor`, else `$NESTCACHE_SHIM_EXECUTOR`),
/// `runc-direct` by default.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Executor {
    /// Every step by the runc binary, as containerd's runc shim does.
    Runc,
    /// runc's binary, but start and the delete of a stopped container done in the
    /// shim's process (`direct`), falling back to runc for anything else.
    #[default]
    RuncDirect,
}

impl Executor {
    pub const NAMES: &'static str = "runc, runc-direct";

    pub fn parse(name: &str) -> Option<Executor> {
        match name {
            "runc" => Some(Executor::Runc),
            "runc-direct" => Some(Executor::RuncDirect),
            _ => None,
        }
    }
}

/// The files of one runc create/exec: where runc writes the pid and its JSON log.
#[derive(Debug, Clone)]
pub struct ProcessFiles {
    pub pid_file: PathBuf,
    pub log: PathBuf,
}

/// Stdio handed to runc for a create/exec: the fds, or a console socket for a terminal.
pub struct RuncIo<'a> {
    pub console_socket: Option<&'a Path>,
    pub stdio: PassStdio,
}

/// Every runc operation the shim uses. The provided methods run the real binary: an
/// implementation overrides the steps it does itself (`Direct`: start and delete) and
/// keeps runc for the rest. Tests' fakes override every one.
pub trait Runtime: Send + Sync {
    /// `runc create`; returns the init's pid.
    fn create(
        &self,
        runc: &Runc,
        id: &str,
        bundle: &Path,
        files: &ProcessFiles,
        io: RuncIo,
    ) -> Result<u32, RuncError> {
        runc.create(id, bundle, files, io)?;
        read_pid(&files.pid_file, "create", id)
    }
    /// `runc exec --detach` of the process spec at `process_json`; returns its pid.
    fn exec(
        &self,
        runc: &Runc,
        id: &str,
        process_json: &Path,
        files: &ProcessFiles,
        io: RuncIo,
    ) -> Result<u32, RuncError> {
        runc.exec(id, process_json, files, io)?;
        read_pid(&files.pid_file, "exec", id)
    }
    fn start(&self, runc: &Runc, id: &str) -> Result<(), RuncError> {
        runc.start(id)
    }
    fn kill(&self, runc: &Runc, id: &str, signal: u32, all: bool) -> Result<(), RuncError> {
        runc.kill(id, signal, all)
    }
    fn delete(&self, runc: &Runc, id: &str, force: bool) -> Result<(), RuncError> {
        runc.delete(id, force)
    }
    fn pause(&self, runc: &Runc, id: &str) -> Result<(), RuncError> {
        runc.pause(id)
    }
    fn resume(&self, runc: &Runc, id: &str) -> Result<(), RuncError> {
        runc.resume(id)
    }
    fn ps(&self, runc: &Runc, id: &str) -> Result<Vec<u32>, RuncError> {
        runc.ps(id)
    }
    /// `runc update --resources FILE`: FILE holds an OCI LinuxResources (JSON).
    fn update(&self, runc: &Runc, id: &str, resources: &Path) -> Result<(), RuncError> {
        runc.update(id, resources)
    }
}

/// The real runc, every step.
pub struct RuncCli;

impl Runtime for RuncCli {}

/// The pid runc wrote for a process it created.
fn read_pid(path: &Path, action: &str, id: &str) -> Result<u32, RuncError> {
    let unreadable = |message: String| RuncError::Failed {
        action: action.into(),
        id: id.into(),
        code: 0,
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| unreadable(format!("pid file {}: {e}", path.display())))?;
    match text.trim().parse::<u32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(unreadable(format!(
            "pid file {}: expected a pid, found {:?}",
            path.display(),
            text.trim()
        ))),
    }
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
    /// A step the shim did itself, in runc's place (`direct`).
    #[error("{action} of {id} (in the shim, in runc's place) failed: {message}")]
    Direct {
        action: String,
        id: String,
        message: String,
    },
}

impl RuncError {
    /// True when runc said the container or process does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        match self {
            RuncError::Failed { message, .. } | RuncError::Direct { message, .. } => {
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
            executor: Executor::default(),
        }
    }

    fn command(&self) -> Command {
        self.command_logging_to(&self.log)
    }

    fn command_logging_to(&self, log: &Path) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(log)
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
        files: &ProcessFiles,
        io: RuncIo,
    ) -> Result<(), RuncError> {
        self.run_with_pid_file(
            "create",
            &["--bundle".as_ref(), bundle.as_os_str()],
            id,
            files,
            io,
        )
    }

    /// `runc exec --detach`: an extra process described by a process.json.
    pub fn exec(
        &self,
        id: &str,
        process_json: &Path,
        files: &ProcessFiles,
        io: RuncIo,
    ) -> Result<(), RuncError> {
        let args: [&OsStr; 3] = [
            "--detach".as_ref(),
            "--process".as_ref(),
            process_json.as_os_str(),
        ];
        self.run_with_pid_file("exec", &args, id, files, io)
    }

    /// `runc VERB ARGS --pid-file F [--console-socket S] ID`, stdio passed to the process.
    fn run_with_pid_file(
        &self,
        verb: &str,
        args: &[&OsStr],
        id: &str,
        files: &ProcessFiles,
        io: RuncIo,
    ) -> Result<(), RuncError> {
        let mut cmd = self.command_logging_to(&files.log);
        cmd.arg(verb)
            .args(args)
            .arg("--pid-file")
            .arg(&files.pid_file);
        if let Some(sock) = io.console_socket {
            cmd.arg("--console-socket").arg(sock);
        }
        cmd.arg(id);
        self.run_passing(cmd, verb, id, &files.log, io.stdio)
    }

    pub fn update(&self, id: &str, resources: &Path) -> Result<(), RuncError> {
        let file = resources.to_string_lossy();
        self.simple(&["update", "--resources", &file, id], "update", id)
            .map(|_| ())
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
        let out = timed(&format!("runc-{action}"), id, || command::run(cmd, true));
        let out = out.map_err(|source| RuncError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        if out.success() {
            Ok(out)
        } else {
            let mut message = out.stderr_line();
            if message.is_empty() {
                message = last_log_error(&self.log);
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
        log: &Path,
        stdio: PassStdio,
    ) -> Result<(), RuncError> {
        // A fresh log per call, so an error read afterwards belongs to this call.
        let _ = std::fs::remove_file(log);
        cmd.stdin(Stdio::from(stdio.stdin))
            .stdout(Stdio::from(stdio.stdout))
            .stderr(Stdio::from(stdio.stderr));
        let out = timed(&format!("runc-{action}"), id, || command::run(cmd, false));
        let out = out.map_err(|source| RuncError::Spawn {
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
                message: last_log_error(log),
            })
        }
    }
}

/// The last error runc wrote to its JSON log (`{"level":"error","msg":...}`).
fn last_log_error(log: &Path) -> String {
    #[derive(Deserialize)]
    struct Line {
        level: Option<String>,
        msg: Option<String>,
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .find(|l| l.level.as_deref() == Some("error") || l.level.as_deref() == Some("fatal"))
        .and_then(|l| l.msg)
        .unwrap_or_else(|| format!("no error message (see {})", log.display()))
}
