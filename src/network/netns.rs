//! Network namespaces nestcache owns, kept alive by a bind mount of the namespace file
//! (as `ip netns add` does) so that CNI plugins can enter it before the container's
//! process exists and runc can join it (`linux.namespaces[network].path`).

use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::error::NetworkError;

fn fail(path: &Path, why: impl std::fmt::Display) -> NetworkError {
    NetworkError::Netns {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Creates a new network namespace bound at `path` (a new empty file).
pub fn create(path: &Path) -> Result<(), NetworkError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(path, format!("create its dir: {e}")))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| fail(path, format!("create the mount point: {e}")))?;
    // unshare(CLONE_NEWNET) moves only the calling thread: do it on a thread of its own,
    // which ends right after, so no other task of ours ever runs in the new namespace.
    let target = path.to_path_buf();
    let bound = std::thread::spawn(move || -> Result<(), String> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("bind-mount the namespace: {e}"))
    })
    .join()
    .unwrap_or_else(|_| Err("the namespace thread panicked".into()));
    if let Err(why) = bound {
        let _ = std::fs::remove_file(path);
        return Err(fail(path, why));
    }
    Ok(())
}

/// Unmounts and removes `path`; a namespace already gone (or never mounted) is fine. The
/// namespace itself, and the veth end inside it, go when its last user lets go.
pub fn remove(path: &Path) -> Result<(), NetworkError> {
    crate::fsutil::unmount(path).map_err(|e| fail(path, format!("unmount: {e}")))?;
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fail(path, format!("remove: {e}"))),
    }
}

/// Whether `path` is a live namespace of ours (a bind-mounted nsfs file).
pub fn is_mounted(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}
