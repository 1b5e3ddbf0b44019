//! Paths inside a running container, opened from the host without ever leaving its root:
//! `/proc/PID/root` resolves a container's absolute symlinks against the HOST's root, so
//! every lookup goes through `openat2(RESOLVE_IN_ROOT)` (Linux 5.6+), which resolves
//! `..` and symlinks as if the container's root were `/` — what `docker cp` promises.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};

/// The root directory of a running container's process, open.
#[derive(Debug)]
pub struct ContainerRoot {
    dir: OwnedFd,
    /// For messages: `/proc/PID/root`.
    shown: PathBuf,
}

impl ContainerRoot {
    /// The root of process `pid` (the task's init process).
    pub fn of_pid(pid: u32) -> Result<ContainerRoot> {
        let shown = PathBuf::from(format!("/proc/{pid}/root"));
        let f =
            File::open(&shown).map_err(|e| Error::io(format!("open {}", shown.display()), e))?;
        Ok(ContainerRoot {
            dir: f.into(),
            shown,
        })
    }

    /// Any directory taken as a root (tests, stopped containers' trees).
    pub fn of_dir(dir: &Path) -> Result<ContainerRoot> {
        let f = File::open(dir).map_err(|e| Error::io(format!("open {}", dir.display()), e))?;
        Ok(ContainerRoot {
            dir: f.into(),
            shown: dir.to_path_buf(),
        })
    }

    /// Opens `path` (absolute or not, taken from the container's `/`) with `flags`,
    /// symlinks and `..` resolved inside the root. With `O_NOFOLLOW` the last component
    /// may itself be a symlink (opened with `O_PATH` by the caller).
    pub fn open(&self, path: &Path, flags: OFlag, mode: Mode) -> Result<OwnedFd> {
        let rel = path.strip_prefix("/").unwrap_or(path);
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(mode)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = nix::fcntl::openat2(self.dir.as_raw_fd(), rel, how).map_err(|e| {
            Error::io(
                format!(
                    "open {} in the container (root {})",
                    path.display(),
                    self.shown.display()
                ),
                e.into(),
            )
        })?;
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Reads a whole (small) file of the container, if it exists.
    pub fn read_to_string(&self, path: &Path) -> Result<Option<String>> {
        match self.open(path, OFlag::O_RDONLY, Mode::empty()) {
            Ok(fd) => {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut File::from(fd), &mut s).map_err(|e| {
                    Error::io(format!("read {} in the container", path.display()), e)
                })?;
                Ok(Some(s))
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dir.as_fd()
    }

    pub fn shown(&self) -> &Path {
        &self.shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_and_dotdot_stay_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "inside").unwrap();
        std::fs::write(t.path().join("secret"), "outside").unwrap();
        // An absolute link and a `..` chain that would both reach the host's file.
        std::os::unix::fs::symlink(t.path().join("secret"), root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("etc/rel")).unwrap();
        let r = ContainerRoot::of_dir(&root).unwrap();
        let read = |p: &str| r.read_to_string(Path::new(p)).unwrap();
        assert_eq!(read("/etc/passwd").as_deref(), Some("inside"));
        assert_eq!(read("/../../etc/passwd").as_deref(), Some("inside"));
        assert_eq!(
            read("/abs"),
            None,
            "absolute link resolved against the root"
        );
        assert_eq!(read("/etc/rel"), None, "`..` clamped at the root");
    }
}
