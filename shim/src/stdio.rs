//! A process's stdio: containerd hands the shim FIFO paths (or `file://` URIs); the shim
//! gives runc pipes (or, for a terminal, receives the pty master over a console socket)
//! and copies between them, so the client can come and go without the container getting
//! SIGPIPE, and stdin can be closed on request (CloseIO).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use log::warn;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::unistd::pipe;

use crate::runc::PassStdio;

/// The stdio a client asked for (CreateTaskRequest / ExecProcessRequest fields).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// How many output copiers of one process are still copying.
#[derive(Clone, Default)]
struct Outputs(Arc<(Mutex<usize>, Condvar)>);

/// Counts one copier out when its thread ends, however it ends.
struct CopierDone(Outputs);

impl Drop for CopierDone {
    fn drop(&mut self) {
        let (count, changed) = &*self.0 .0;
        *count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        changed.notify_all();
    }
}

impl Outputs {
    fn start(&self) -> CopierDone {
        *self.0 .0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        CopierDone(self.clone())
    }

    /// Waits until every copier hit EOF, or `limit` passed (a child of the process that
    /// inherited its stdout can keep it open for ever). Whether all finished.
    fn wait(&self, limit: Duration) -> bool {
        let (count, changed) = &*self.0;
        let guard = count.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = changed
            .wait_timeout_while(guard, limit, |n| *n > 0)
            .unwrap_or_else(|e| e.into_inner());
        *guard == 0
    }
}

/// The live side of a process's stdio, kept by the shim while the process exists.
pub struct Io {
    outputs: Outputs,
    stdin: Arc<Mutex<Option<File>>>,
    console: Option<File>,
    _copiers: Vec<JoinHandle<()>>,
    _console_dir: Option<tempfile::TempDir>,
}

/// Stdio set up for one runc create/exec call; `finish` after runc returns.
pub struct Prepared {
    pub pass: PassStdio,
    pub console_socket: Option<PathBuf>,
    listener: Option<UnixListener>,
    console_dir: Option<tempfile::TempDir>,
    paths: StdioPaths,
    stdin: Arc<Mutex<Option<File>>>,
    copiers: Vec<JoinHandle<()>>,
    outputs: Outputs,
}

fn dev_null(write: bool) -> std::io::Result<OwnedFd> {
    let f = OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?;
    Ok(f.into())
}

/// Opens where output goes: a FIFO read-write (never blocks, never EPIPE when the client
/// went away), or a `file://` path for appending.
fn open_output(target: &str) -> std::io::Result<File> {
    if let Some(path) = target.strip_prefix("file://") {
        return OpenOptions::new().create(true).append(true).open(path);
    }
    OpenOptions::new().read(true).write(true).open(target)
}

fn copy_thread(
    name: &str,
    outputs: &Outputs,
    mut from: impl Read + Send + 'static,
    to: impl FnOnce() -> std::io::Result<File> + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let label = name.to_string();
    let done = outputs.start();
    std::thread::Builder::new()
        .name(format!("io-{name}"))
        .spawn(move || {
            let _done = done;
            let mut out = match to() {
                Ok(f) => f,
                Err(e) => {
                    warn!("{label}: cannot open output: {e}");
                    return;
                }
            };
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // EIO is how a pty master says every slave side closed.
                    Err(_) => break,
                }
            }
        })
}

/// Copies the client's stdin FIFO into `to` until the client closes it or CloseIO
/// takes the writer away.
fn stdin_thread(path: String, to: Arc<Mutex<Option<File>>>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("io-stdin".into())
        .spawn(move || {
            // Blocks until the client opens its end, which it does before create.
            let mut from = match File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    warn!("stdin {path}: {e}");
                    return;
                }
            };
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let mut guard = to.lock().unwrap_or_else(|e| e.into_inner());
                let written = guard.as_mut().map(|w| w.write_all(&buf[..n]).is_ok());
                if written != Some(true) {
                    break;
                }
            }
            // EOF from the client: the process sees EOF too.
            to.lock().unwrap_or_else(|e| e.into_inner()).take();
        })
}

fn fifo_pipe() -> std::io::Result<(File, OwnedFd)> {
    let (r, w) = pipe()?;
    Ok((File::from(r), w))
}

/// FIFO paths and `file://` URIs are supported; other logging URIs (`binary://`) are not.
fn check_scheme(target: &str) -> std::io::Result<()> {
    match target.split_once("://") {
        Some(("file", _)) | None => Ok(()),
        Some((scheme, _)) => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("stdio {target}: {scheme}:// is not supported (FIFOs and file:// are)"),
        )),
    }
}

impl Prepared {
    pub fn new(paths: &StdioPaths) -> std::io::Result<Prepared> {
        for target in [&paths.stdin, &paths.stdout, &paths.stderr] {
            check_scheme(target)?;
        }
        let stdin = Arc::new(Mutex::new(None));
        let outputs = Outputs::default();
        if paths.terminal {
            // The path must fit sockaddr_un; bundle paths may not, /tmp does.
            let dir = tempfile::Builder::new()
                .prefix("nc-pty-")
                .tempdir_in("/tmp")?;
            let sock = dir.path().join("s");
            let listener = UnixListener::bind(&sock)?;
            return Ok(Prepared {
                pass: PassStdio {
                    stdin: dev_null(false)?,
                    stdout: dev_null(true)?,
                    stderr: dev_null(true)?,
                },
                console_socket: Some(sock),
                listener: Some(listener),
                console_dir: Some(dir),
                paths: paths.clone(),
                stdin,
                copiers: Vec::new(),
                outputs,
            });
        }
        let mut copiers = Vec::new();
        let pass_stdin = if paths.stdin.is_empty() {
            dev_null(false)?
        } else {
            let (r, w) = pipe()?;
            *stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(File::from(w));
            copiers.push(stdin_thread(paths.stdin.clone(), stdin.clone())?);
            r
        };
        let mut output = |target: &str, name: &str| -> std::io::Result<OwnedFd> {
            if target.is_empty() {
                return dev_null(true);
            }
            let (r, w) = fifo_pipe()?;
            let t = target.to_string();
            copiers.push(copy_thread(name, &outputs, r, move || open_output(&t))?);
            Ok(w)
        };
        let pass_stdout = output(&paths.stdout, "stdout")?;
        let pass_stderr = output(&paths.stderr, "stderr")?;
        Ok(Prepared {
            pass: PassStdio {
                stdin: pass_stdin,
                stdout: pass_stdout,
                stderr: pass_stderr,
            },
            console_socket: None,
            listener: None,
            console_dir: None,
            paths: paths.clone(),
            stdin,
            copiers,
            outputs,
        })
    }

    /// Splits off the fds runc must get; the rest stays for `finish`.
    pub fn take_pass(&mut self) -> std::io::Result<PassStdio> {
        let placeholder = PassStdio {
            stdin: dev_null(false)?,
            stdout: dev_null(true)?,
            stderr: dev_null(true)?,
        };
        Ok(std::mem::replace(&mut self.pass, placeholder))
    }

    /// After runc returned successfully: pick up the pty master if there is one.
    pub fn finish(self) -> std::io::Result<Io> {
        let mut copiers = self.copiers;
        let mut console = None;
        if let Some(listener) = self.listener {
            let master = receive_master(&listener)?;
            let master_in = master.try_clone()?;
            if !self.paths.stdin.is_empty() {
                *self.stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(master.try_clone()?);
                copiers.push(stdin_thread(self.paths.stdin.clone(), self.stdin.clone())?);
            }
            if !self.paths.stdout.is_empty() {
                let t = self.paths.stdout.clone();
                copiers.push(copy_thread(
                    "console",
                    &self.outputs,
                    master_in,
                    move || open_output(&t),
                )?);
            }
            console = Some(master);
        }
        Ok(Io {
            outputs: self.outputs,
            stdin: self.stdin,
            console,
            _copiers: copiers,
            _console_dir: self.console_dir,
        })
    }
}

/// runc connects to the console socket and sends the pty master with SCM_RIGHTS.
fn receive_master(listener: &UnixListener) -> std::io::Result<File> {
    // runc has exited by now; its connection waits in the backlog with the fd in it.
    listener.set_nonblocking(true)?;
    let (conn, _) = listener.accept().map_err(|e| {
        std::io::Error::new(e.kind(), format!("runc sent no console (terminal) fd: {e}"))
    })?;
    let mut name = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                for &extra in &fds[1..] {
                    // SAFETY: received fds are ours to close.
                    drop(unsafe { OwnedFd::from_raw_fd(extra) });
                }
                // SAFETY: the kernel just installed this fd in our table.
                return Ok(unsafe { File::from_raw_fd(fd) });
            }
        }
    }
    Err(std::io::Error::other(
        "console socket message carried no fd",
    ))
}

impl Io {
    /// Waits (at most `limit`) until the output the process wrote is copied out: the
    /// client closes its FIFOs once delete returns, so what is copied later is lost.
    pub fn wait_output(&self, limit: Duration) -> bool {
        self.outputs.wait(limit)
    }

    /// CloseIO: the process reads EOF on stdin.
    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    pub fn resize(&self, width: u32, height: u32) -> std::io::Result<()> {
        let Some(console) = &self.console else {
            return Err(std::io::Error::other("process has no terminal"));
        };
        let ws = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer we pass.
        let rc = unsafe { libc::ioctl(console.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_output_returns_once_everything_written_is_copied_out() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let paths = StdioPaths {
            stdout: format!("file://{}", out.display()),
            ..Default::default()
        };
        let mut prepared = Prepared::new(&paths).unwrap();
        let pass = prepared.take_pass().unwrap();
        let io = prepared.finish().unwrap();
        let data = vec![b'x'; 256 * 1024];
        let mut w = File::from(pass.stdout);
        let writer = std::thread::spawn(move || w.write_all(&data).unwrap());
        writer.join().unwrap();
        assert!(
            io.wait_output(Duration::from_secs(30)),
            "copier never finished"
        );
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 256 * 1024);
    }
}
