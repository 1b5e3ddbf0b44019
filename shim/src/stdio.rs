//! A process's stdio: containerd hands the shim FIFO paths, `file://` URIs or a
//! `binary://` logging program; the shim gives runc pipes (or, for a terminal, receives
//! the pty master over a console socket) and copies between them, so the client can come
//! and go without the container getting SIGPIPE, and stdin can be closed on request
//! (CloseIO).
//!
//! `binary:///path?k=v&...` is containerd's logging binary protocol, as its runc shim
//! runs it: `path k v ...` with the process's stdout on fd 3, its stderr on fd 4, and
//! fd 5 to close once ready (waited for up to 10 s); `CONTAINER_ID` and
//! `CONTAINER_NAMESPACE` in its environment. One program takes both streams; it ends
//! when both reach EOF, and delete waits for it as for the other copiers.

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
    /// Environment of a `binary://` logging program.
    pub log_env: Vec<(String, String)>,
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
    /// With a terminal: the logging binary the console goes to, once runc sent it.
    binary: Option<LogBinary>,
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

/// FIFO paths, `file://` and (for output) `binary://` URIs are supported.
fn check_scheme(target: &str, output: bool) -> std::io::Result<()> {
    match target.split_once("://") {
        Some(("file", _)) | None => Ok(()),
        Some(("binary", _)) if output => Ok(()),
        Some((scheme, _)) => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!(
                "stdio {target}: {scheme}:// is not supported (FIFOs, file:// and, for output, binary:// are)"
            ),
        )),
    }
}

/// How long a logging binary gets to close its ready fd (containerd's runc shim: 10 s).
const LOG_BINARY_READY: Duration = Duration::from_secs(10);

/// The program and arguments of a `binary://` URI: the path, then each query pair as
/// two arguments (key, value), percent-decoded.
fn log_binary_command(uri: &str) -> std::io::Result<(PathBuf, Vec<String>)> {
    let bad = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("stdio {uri}: {why}"),
        )
    };
    let rest = uri
        .strip_prefix("binary://")
        .ok_or_else(|| bad("not a binary:// URI"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = PathBuf::from(percent_decode(path).ok_or_else(|| bad("bad %-escape in the path"))?);
    if !path.is_absolute() {
        return Err(bad("the logging binary's path must be absolute"));
    }
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (pair, None),
        };
        for part in std::iter::once(k).chain(v) {
            args.push(percent_decode(part).ok_or_else(|| bad("bad %-escape in the query"))?);
        }
    }
    Ok((path, args))
}

/// `%XX` escapes (and `+` in a query, as Go's url.ParseQuery reads it) decoded; None
/// for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A pipe whose two ends are closed on exec (no other child inherits them).
fn cloexec_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// A started logging binary: where the process's stdout and stderr go.
struct LogBinary {
    stdout: File,
    stderr: File,
}

/// Starts the `binary://` program and waits until it is ready. `outputs` counts it as a
/// copier until it exits (seen through the shim's reaper), so delete waits for it.
fn start_log_binary(
    uri: &str,
    env: &[(String, String)],
    outputs: &Outputs,
) -> std::io::Result<LogBinary> {
    use std::os::unix::process::CommandExt;
    let (program, args) = log_binary_command(uri)?;
    let (out_r, out_w) = cloexec_pipe()?;
    let (err_r, err_w) = cloexec_pipe()?;
    let (ready_r, ready_w) = cloexec_pipe()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. The fds
    // are first moved above 9 so that placing them at 3, 4, 5 cannot clobber one another;
    // dup2 clears close-on-exec on the copies.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0; 3];
            for (h, fd) in high.iter_mut().zip(fds) {
                *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                if *h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (target, fd) in (3..).zip(high) {
                if libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let subscription =
        containerd_shim::monitor::monitor_subscribe(containerd_shim::monitor::Topic::Pid)
            .map_err(|e| std::io::Error::other(format!("subscribe to exit monitor: {e}")))?;
    let done = outputs.start();
    let child = cmd.spawn().map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("start logging binary {}: {e}", program.display()),
        )
    })?;
    let pid = child.id() as i32;
    // The reaper collects it; this thread only learns when, for `wait_output`.
    std::thread::Builder::new()
        .name("io-log-binary".into())
        .spawn(move || {
            let _done = done;
            containerd_shim::monitor::wait_pid(pid, subscription);
        })?;
    drop((out_r, err_r, ready_w, child));
    wait_ready(File::from(ready_r), &program)?;
    Ok(LogBinary {
        stdout: File::from(out_w),
        stderr: File::from(err_w),
    })
}

/// Waits until the logging binary closes its ready fd (EOF), at most LOG_BINARY_READY.
fn wait_ready(mut ready: File, program: &std::path::Path) -> std::io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: ready.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = LOG_BINARY_READY.as_millis() as libc::c_int;
    let n = loop {
        // SAFETY: one valid pollfd, its count passed.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n >= 0 {
            break n;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut byte = [0u8; 1];
    if n == 0 || ready.read(&mut byte)? != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "logging binary {} did not close its ready fd (5) within {LOG_BINARY_READY:?}",
                program.display()
            ),
        ));
    }
    Ok(())
}

impl Prepared {
    pub fn new(paths: &StdioPaths) -> std::io::Result<Prepared> {
        check_scheme(&paths.stdin, false)?;
        for target in [&paths.stdout, &paths.stderr] {
            check_scheme(target, true)?;
        }
        let stdin = Arc::new(Mutex::new(None));
        let outputs = Outputs::default();
        let binary = match paths.stdout.starts_with("binary://") {
            true => Some(start_log_binary(&paths.stdout, &paths.log_env, &outputs)?),
            false => None,
        };
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
                binary,
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
        let mut output = |target: &str, name: &str, to_binary: Option<File>| {
            if let Some(log) = to_binary {
                // One logging program takes both streams, as containerd's runc shim.
                let (r, w) = fifo_pipe()?;
                copiers.push(copy_thread(name, &outputs, r, move || Ok(log))?);
                return Ok(w);
            }
            if target.is_empty() {
                return dev_null(true);
            }
            let (r, w) = fifo_pipe()?;
            let t = target.to_string();
            copiers.push(copy_thread(name, &outputs, r, move || open_output(&t))?);
            Ok::<_, std::io::Error>(w)
        };
        let (to_stdout, to_stderr) = match binary {
            Some(b) => (Some(b.stdout), Some(b.stderr)),
            None => (None, None),
        };
        let pass_stdout = output(&paths.stdout, "stdout", to_stdout)?;
        let pass_stderr = output(&paths.stderr, "stderr", to_stderr)?;
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
            binary: None,
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
            if let Some(log) = self.binary {
                // The console is one stream: the program's stderr (fd 4) ends at once.
                drop(log.stderr);
                let out = log.stdout;
                copiers.push(copy_thread(
                    "console",
                    &self.outputs,
                    master_in,
                    move || Ok(out),
                )?);
            } else if !self.paths.stdout.is_empty() {
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
    fn binary_uris_become_a_command_line() {
        let (p, args) =
            log_binary_command("binary:///usr/bin/nest%20cache?__log-driver=%2Fa%20b%2Flog.json&x")
                .unwrap();
        assert_eq!(p, PathBuf::from("/usr/bin/nest cache"));
        assert_eq!(args, ["__log-driver", "/a b/log.json", "x"]);
        let (_, args) = log_binary_command("binary:///bin/l").unwrap();
        assert!(args.is_empty());
        for bad in [
            "binary://relative/l",
            "binary:///bin/l%zz",
            "binary:///bin/l?k=%",
            "binary:///bin/l?k=%ff",
            "file:///x",
        ] {
            assert!(log_binary_command(bad).is_err(), "{bad}");
        }
        assert!(check_scheme("binary:///bin/l", false).is_err());
        assert!(check_scheme("binary:///bin/l", true).is_ok());
        assert!(check_scheme("tcp://x", true).is_err());
    }

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
