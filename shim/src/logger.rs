//! The shim's log: containerd-shim's `FifoLogger` on the `log` FIFO containerd reads,
//! but a record is dropped while the FIFO has no reader. containerd closes its end when
//! a group shim's first task goes; a write then raises SIGPIPE, which containerd-shim's
//! signal loop logs at debug level: with `RUST_LOG=debug` that loop spun for ever and
//! the reaper never ran. Checking for a reader (POLLERR on a FIFO's write end) first
//! means no write raises SIGPIPE (but a reader closing in between: then the next is
//! dropped), and logging resumes if containerd opens the FIFO again.
//!
//! A group shim outlives its first task (and, lingering, its last): each create moves the
//! log to the new task's `log` FIFO ([`follow`]), which containerd reads while that task
//! lives, so a joined task's lines (its phase timings too) reach containerd's log.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{OnceLock, RwLock};

use containerd_shim::logger::FifoLogger;
use log::{LevelFilter, Log, Metadata, Record};

struct Sink {
    /// The same FIFO as `inner` writes, kept to poll it.
    fifo: OwnedFd,
    inner: FifoLogger,
}

impl Sink {
    fn new(file: File) -> std::io::Result<Sink> {
        Ok(Sink {
            fifo: file.try_clone()?.into(),
            inner: FifoLogger::with_file(file),
        })
    }

    /// Whether a write now would find nobody reading (and so raise SIGPIPE).
    fn reader_gone(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fifo.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd, its count passed; timeout 0 never blocks.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0
    }
}

pub struct ShimLog {
    sink: RwLock<Sink>,
}

impl ShimLog {
    pub fn new(file: File) -> std::io::Result<ShimLog> {
        Ok(ShimLog {
            sink: RwLock::new(Sink::new(file)?),
        })
    }

    fn sink(&self) -> std::sync::RwLockReadGuard<'_, Sink> {
        self.sink.read().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn reader_gone(&self) -> bool {
        self.sink().reader_gone()
    }

    /// Writes to `fifo` from now on, if it has a reader (else the current one stays).
    pub fn switch_to(&self, fifo: &Path) -> std::io::Result<()> {
        // Non-blocking: without a reader the open fails (ENXIO) instead of waiting.
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)?;
        let sink = Sink::new(file)?;
        *self.sink.write().unwrap_or_else(|e| e.into_inner()) = sink;
        Ok(())
    }
}

impl Log for ShimLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.sink().inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        let sink = self.sink();
        if sink.inner.enabled(record.metadata()) && !sink.reader_gone() {
            sink.inner.log(record);
        }
    }

    fn flush(&self) {
        self.sink().inner.flush();
    }
}

static LOG: OnceLock<ShimLog> = OnceLock::new();

/// Logs to `log` in the working directory (the shim's bundle) at RUST_LOG's level (info
/// by default; debug at least with `-debug`), as containerd-shim's own setup does.
pub fn init(debug: bool) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).open("log")?;
    let level = std::env::var(containerd_shim::logger::LOG_ENV)
        .ok()
        .and_then(|l| LevelFilter::from_str(&l).ok())
        .unwrap_or(LevelFilter::Info);
    let level = if debug {
        level.max(LevelFilter::Debug)
    } else {
        level
    };
    let log = ShimLog::new(file)?;
    let log = LOG.get_or_init(|| log);
    log::set_logger(log).map_err(std::io::Error::other)?;
    log::set_max_level(level);
    Ok(())
}

/// Moves the shim's log to the `log` FIFO of `bundle` (a task just created here): a no-op
/// outside the long-lived shim, and where that FIFO has no reader.
pub fn follow(bundle: &Path) {
    if let Some(log) = LOG.get() {
        if let Err(e) = log.switch_to(&bundle.join("log")) {
            log::debug!("shim log stays where it was ({}): {e}", bundle.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn fifo(dir: &Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        path
    }

    fn open_reader(path: &Path) -> std::io::Result<File> {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
    }

    fn record(log: &ShimLog, msg: &str) {
        log.log(
            &Record::builder()
                .level(log::Level::Error)
                .args(format_args!("{msg}"))
                .build(),
        )
    }

    #[test]
    fn records_are_dropped_while_the_fifo_has_no_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path(), "log");
        let mut reader = open_reader(&path).unwrap();
        let log = ShimLog::new(OpenOptions::new().write(true).open(&path).unwrap()).unwrap();
        record(&log, "first");
        let mut got = String::new();
        let _ = reader.read_to_string(&mut got);
        assert!(got.contains("first"), "{got:?}");
        drop(reader);
        assert!(log.reader_gone());
        // Would be EPIPE (and SIGPIPE, outside the test harness, which ignores it).
        record(&log, "to nobody");
        let reader = open_reader(&path);
        assert!(!log.reader_gone(), "{reader:?}");
    }

    #[test]
    fn the_log_moves_to_a_fifo_with_a_reader_only() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second, unread) = (
            fifo(dir.path(), "first"),
            fifo(dir.path(), "second"),
            fifo(dir.path(), "unread"),
        );
        let mut first_reader = open_reader(&first).unwrap();
        let log = ShimLog::new(OpenOptions::new().write(true).open(&first).unwrap()).unwrap();
        let mut second_reader = open_reader(&second).unwrap();
        log.switch_to(&second).unwrap();
        record(&log, "to the second");
        let err = log.switch_to(&unread).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENXIO), "{err}");
        record(&log, "still the second");
        let (mut got_first, mut got_second) = (String::new(), String::new());
        let _ = first_reader.read_to_string(&mut got_first);
        let _ = second_reader.read_to_string(&mut got_second);
        assert_eq!(got_first, "");
        assert!(got_second.contains("to the second"), "{got_second:?}");
        assert!(got_second.contains("still the second"), "{got_second:?}");
    }
}
