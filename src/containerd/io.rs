//! A task's stdio, the way containerd's `cio` does it: FIFOs in the container's dir,
//! created and opened by the client BEFORE the task-create call (the shim opens their
//! other ends while creating the task and would wait for us otherwise), then copied to
//! and from nestcache's own stdio. Detached tasks write to a log file instead: the shim
//! opens `file://` URIs itself, so nothing of nestcache needs to stay around.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, IoContext, Result};

/// The stdio fields of containerd's task-create request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl Stdio {
    /// Output appended to `log` by the shim (stdout and stderr interleaved), no stdin.
    pub fn log_file(log: &Path) -> Stdio {
        let uri = format!("file://{}", log.display());
        Stdio {
            stdin: String::new(),
            stdout: uri.clone(),
            stderr: uri,
            terminal: false,
        }
    }

    /// Output through a logging binary the shim starts (containerd's `binary://`):
    /// `PROGRAM __log-driver LOG` with the task's stdout on fd 3 and stderr on fd 4,
    /// writing timestamped JSON lines with the streams kept apart (see `log_driver`).
    pub fn log_binary(program: &Path, log: &Path) -> Stdio {
        // containerd turns each query pair into two arguments: the key, then the value.
        let uri = format!(
            "binary://{}?{}={}",
            percent(&program.to_string_lossy()),
            LOG_DRIVER_ARG,
            percent(&log.to_string_lossy())
        );
        Stdio {
            stdin: String::new(),
            stdout: uri.clone(),
            stderr: uri,
            terminal: false,
        }
    }

    /// No stdio at all.
    pub fn null() -> Stdio {
        Stdio::default()
    }
}

/// The subcommand by which the nestcache binary is its own logging driver.
pub const LOG_DRIVER_ARG: &str = "__log-driver";

/// Percent-encodes what a URI's path or query value must not hold raw.
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The FIFOs of one attached task.
#[derive(Debug)]
pub struct Fifos {
    stdin: Option<PathBuf>,
    stdout: PathBuf,
    /// None with a terminal: the console carries both streams.
    stderr: Option<PathBuf>,
    terminal: bool,
}

impl Fifos {
    /// Makes `stdin` (if asked), `stdout` and `stderr` (unless `terminal`) FIFOs in `dir`.
    pub fn create(dir: &Path, stdin: bool, terminal: bool) -> Result<Fifos> {
        std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        let fifos = Fifos {
            stdin: stdin.then(|| dir.join("stdin")),
            stdout: dir.join("stdout"),
            stderr: (!terminal).then(|| dir.join("stderr")),
            terminal,
        };
        for p in fifos.paths() {
            // A stale FIFO of an earlier run under the same id is replaced.
            let _ = std::fs::remove_file(p);
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| Error::io(format!("mkfifo {}", p.display()), e.into()))?;
        }
        Ok(fifos)
    }

    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.stdin
            .iter()
            .chain(std::iter::once(&self.stdout))
            .chain(self.stderr.iter())
    }

    /// The paths for the task-create request.
    pub fn stdio(&self) -> Stdio {
        let s = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        Stdio {
            stdin: s(&self.stdin),
            stdout: self.stdout.to_string_lossy().into_owned(),
            stderr: s(&self.stderr),
            terminal: self.terminal,
        }
    }

    /// Opens our ends without blocking: read ends for output, and for stdin a read-write
    /// end (opening a FIFO for writing alone would wait for the shim). Call before the
    /// task is created.
    pub fn open(&self) -> Result<OpenFifos> {
        let reader = |p: &Path| {
            pipe::OpenOptions::new()
                .open_receiver(p)
                .ctx(|| format!("open {}", p.display()))
        };
        let stdin = match &self.stdin {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(p)
                    .ctx(|| format!("open {}", p.display()))?,
            ),
            None => None,
        };
        Ok(OpenFifos {
            stdin,
            stdout: reader(&self.stdout)?,
            stderr: match &self.stderr {
                Some(p) => Some(reader(p)?),
                None => None,
            },
        })
    }

    /// Deletes the FIFO files.
    pub fn remove(&self) {
        for p in self.paths() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Our ends of the FIFOs, open.
#[derive(Debug)]
pub struct OpenFifos {
    stdin: Option<File>,
    stdout: pipe::Receiver,
    stderr: Option<pipe::Receiver>,
}

/// The running copies; `stdin_closed` fires when nestcache's stdin reached its end, when
/// the caller must tell the shim to close the task's stdin (CloseIO).
pub struct Copies {
    output: Vec<JoinHandle<std::io::Result<u64>>>,
    pub stdin_closed: Option<oneshot::Receiver<()>>,
}

impl OpenFifos {
    /// Starts copying: the task's stdout/stderr to ours, our stdin to the task's (from a
    /// plain thread, since reading our stdin blocks and must not hold up exit).
    pub fn start(self) -> Copies {
        let mut output = vec![tokio::spawn(copy_out(self.stdout, Out::Stdout))];
        if let Some(err) = self.stderr {
            output.push(tokio::spawn(copy_out(err, Out::Stderr)));
        }
        let stdin_closed = self.stdin.map(|mut fifo| {
            let (tx, rx) = oneshot::channel();
            std::thread::spawn(move || {
                let _ = copy_stdin(&mut fifo);
                drop(fifo);
                let _ = tx.send(());
            });
            rx
        });
        Copies {
            output,
            stdin_closed,
        }
    }
}

impl Copies {
    /// Waits until the task's output has been copied in full (the shim closed its ends).
    pub async fn wait_output(self) -> Result<()> {
        for h in self.output {
            match h.await {
                Ok(Ok(_)) => {}
                // Our own stdout closed (`nestcache run ... | head`): not the task's fault.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Ok(Err(e)) => return Err(Error::io("copy the task's output", e)),
                Err(e) => return Err(Error::Other(format!("output copy failed: {e}"))),
            }
        }
        Ok(())
    }
}

enum Out {
    Stdout,
    Stderr,
}

/// Copies until the task's end closes. If our own output goes away (`nestcache run ... |
/// head -1`), the rest is read and dropped: a FIFO nobody reads would block the task.
async fn copy_out(mut from: pipe::Receiver, to: Out) -> std::io::Result<u64> {
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match to {
        Out::Stdout => Box::new(tokio::io::stdout()),
        Out::Stderr => Box::new(tokio::io::stderr()),
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut discard = false;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if discard {
            continue;
        }
        if let Err(e) = out.write_all(&buf[..n]).await.and(out.flush().await) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(e);
            }
            discard = true;
        }
    }
    Ok(total)
}

fn copy_stdin(fifo: &mut File) -> std::io::Result<()> {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 32 * 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        fifo.write_all(&buf[..n])?;
    }
}

impl super::Client {
    /// Tells the shim to close the task's stdin (it keeps a writer of its own open until
    /// then), so the process reads end-of-file once our stdin is done.
    pub async fn close_task_stdin(&self, id: &str) -> Result<()> {
        let what = format!("close stdin of task {id}");
        let call = || {
            let req = self.request(containerd_client::services::v1::CloseIoRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
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

    /// Sets the task's terminal size.
    pub async fn resize_task_pty(&self, id: &str, width: u32, height: u32) -> Result<()> {
        self.resize_process_pty(id, "", width, height).await
    }
}

/// Puts our terminal in raw mode for a `-t` session and restores it when dropped.
pub struct RawTerminal {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawTerminal {
    /// Raw mode on stdin if it is a terminal; a no-op otherwise.
    pub fn enable() -> RawTerminal {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        let Ok(saved) = termios::tcgetattr(fd) else {
            return RawTerminal { saved: None };
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        if termios::tcsetattr(fd, termios::SetArg::TCSANOW, &raw).is_err() {
            return RawTerminal { saved: None };
        }
        RawTerminal { saved: Some(saved) }
    }

    /// Our terminal's size (columns, rows), if stdout is a terminal.
    pub fn size() -> Option<(u32, u32)> {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into the struct we pass.
        let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
        (rc == 0 && ws.ws_col > 0).then_some((ws.ws_col as u32, ws.ws_row as u32))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn creates_fifos_and_paths() {
        let t = tempfile::tempdir().unwrap();
        let f = Fifos::create(t.path(), true, false).unwrap();
        let s = f.stdio();
        assert!(s.stdin.ends_with("/stdin") && s.stdout.ends_with("/stdout"));
        assert!(s.stderr.ends_with("/stderr") && !s.terminal);
        use std::os::unix::fs::FileTypeExt;
        for p in [&s.stdin, &s.stdout, &s.stderr] {
            assert!(std::fs::metadata(p).unwrap().file_type().is_fifo());
        }
        // Again under the same dir: stale FIFOs are replaced, not an error.
        let f2 = Fifos::create(t.path(), false, true).unwrap();
        let s2 = f2.stdio();
        assert_eq!((s2.stdin.as_str(), s2.stderr.as_str()), ("", ""));
        assert!(s2.terminal);
        f.remove();
        assert!(std::fs::read_dir(t.path()).unwrap().next().is_none());
    }

    #[test]
    fn log_binary_uri_escapes_the_paths() {
        let s = Stdio::log_binary(
            Path::new("/bin/nestcache"),
            Path::new("/st ate/c?1/log.json"),
        );
        assert_eq!(
            s.stdout,
            "binary:///bin/nestcache?__log-driver=/st%20ate/c%3F1/log.json"
        );
        assert_eq!(s.stdout, s.stderr);
    }

    #[test]
    fn log_file_uri() {
        let s = Stdio::log_file(Path::new("/state/containers/x/log"));
        assert_eq!(s.stdout, "file:///state/containers/x/log");
        assert_eq!(s.stdout, s.stderr);
        assert!(s.stdin.is_empty());
    }

    #[tokio::test]
    async fn opening_never_blocks_and_a_writer_can_connect_afterwards() {
        let t = tempfile::tempdir().unwrap();
        let f = Fifos::create(t.path(), true, false).unwrap();
        let open = f.open().unwrap();
        // What the shim does: open the write ends of stdout/stderr (blocking opens that
        // succeed because our read ends exist), the read end of stdin.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .open(t.path().join("stdout"))
            .unwrap();
        let mut task_stdin = std::fs::File::open(t.path().join("stdin")).unwrap();
        out.write_all(b"x").unwrap();
        let OpenFifos {
            mut stdin,
            mut stdout,
            ..
        } = open;
        stdin.as_mut().unwrap().write_all(b"in").unwrap();
        let mut b = [0u8; 2];
        task_stdin.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"in");
        drop(out);
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut got)
            .await
            .unwrap();
        assert_eq!(got, b"x");
    }
}
