//! Running helper programs (runc) from inside the shim.
//!
//! containerd-shim's SIGCHLD reaper calls `waitpid(-1)` for every child, so
//! `std::process::Child::wait` would race it and usually lose (ECHILD). Every child the
//! shim spawns is therefore awaited through the reaper's exit monitor: subscribe first,
//! spawn, then wait for the exit event carrying the child's pid.

use std::io::Read;
use std::process::{Command, Stdio};

use containerd_shim::monitor::{monitor_subscribe, wait_pid, Topic};

/// What a finished helper left behind.
#[derive(Debug)]
pub struct Finished {
    /// Exit code, or 128 + signal number when killed by a signal.
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// The last non-empty line of stderr, for one-line error messages.
    pub fn stderr_line(&self) -> String {
        String::from_utf8_lossy(&self.stderr)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

/// Runs `cmd` to completion. Stdout and stderr are captured unless the caller already
/// set them (then the captured buffers stay empty); stdin defaults to /dev/null.
pub fn run(mut cmd: Command, capture: bool) -> std::io::Result<Finished> {
    if capture {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    // Subscribing before the spawn is what makes the exit impossible to miss.
    let subscription = monitor_subscribe(Topic::Pid)
        .map_err(|e| std::io::Error::other(format!("subscribe to exit monitor: {e}")))?;
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    let stderr_reader = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            buf
        })
    });
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut stdout);
    }
    let stderr = stderr_reader
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default();
    let code = wait_pid(pid, subscription);
    // The reaper already collected the child; dropping `child` does not wait again.
    drop(child);
    Ok(Finished {
        code,
        stdout,
        stderr,
    })
}
