//! The shim's log: containerd-shim's `FifoLogger` on the `log` FIFO containerd reads,
//! but a record is dropped while the FIFO has no reader. containerd closes its end when
//! a group shim's first task goes; a write then raises SIGPIPE, which containerd-shim's
//! signal loop logs at debug level: with `RUST_LOG=debug` that loop spun for ever and
//! the reaper never ran. Checking for a reader (POLLERR on a FIFO's write end) first
//! means no write raises SIGPIPE (but a reader closing in between: then the next is
//! dropped), and logging resumes if containerd opens the FIFO again.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::str::FromStr;

use containerd_shim::logger::FifoLogger;
use log::{LevelFilter, Log, Metadata, Record};

pub struct ShimLog {
    /// The same FIFO as `inner` writes, kept to poll it.
    fifo: OwnedFd,
    inner: FifoLogger,
}

impl ShimLog {
    pub fn new(file: File) -> std::io::Result<ShimLog> {
        Ok(ShimLog {
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

impl Log for ShimLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) && !self.reader_gone() {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

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
    log::set_boxed_logger(Box::new(ShimLog::new(file)?)).map_err(std::io::Error::other)?;
    log::set_max_level(level);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn records_are_dropped_while_the_fifo_has_no_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let log = ShimLog::new(OpenOptions::new().write(true).open(&path).unwrap()).unwrap();
        let record = |msg| {
            log.log(
                &Record::builder()
                    .level(log::Level::Error)
                    .args(format_args!("{msg}"))
                    .build(),
            )
        };
        record("first");
        let mut got = String::new();
        let _ = reader.read_to_string(&mut got);
        assert!(got.contains("first"), "{got:?}");
        drop(reader);
        assert!(log.reader_gone());
        // Would be EPIPE (and SIGPIPE, outside the test harness, which ignores it).
        record("to nobody");
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path);
        assert!(!log.reader_gone(), "{reader:?}");
    }
}
