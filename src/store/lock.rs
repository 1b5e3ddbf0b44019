//! flock(2)-based locks on files in `.nestcache/`. flock locks are released by the kernel
//! when the holder dies, so a SIGKILLed stage never leaves the store locked.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoContext, Result};

/// Opens (creating if absent, never truncating) a lock file; a symlink in its place is
/// refused, not followed, so a planted link cannot make the store create files elsewhere.
pub fn open_lock_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// A held lock; released on drop.
pub struct LockGuard {
    _lock: Flock<File>,
}

/// Blocks until the lock on `path` is held, shared or exclusive.
pub fn lock(path: &Path, exclusive: bool) -> Result<LockGuard> {
    let file = open_lock_file(path).ctx(|| format!("open lock file {}", path.display()))?;
    let arg = if exclusive {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockShared
    };
    let lock = Flock::lock(file, arg).map_err(|(_, errno)| {
        Error::io(
            format!("lock {}", path.display()),
            std::io::Error::from(errno),
        )
    })?;
    Ok(LockGuard { _lock: lock })
}
