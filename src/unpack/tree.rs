//! The layer directory being written, reached only through directory file descriptors.
//!
//! Every entry's parent is resolved component by component with `O_NOFOLLOW`, so a symlink
//! laid down by an earlier entry can never redirect a later write: it is refused instead.
//! The walker keeps the fds of the last directory it resolved (tar streams are ordered by
//! directory), so consecutive entries of one directory cost one `openat` each, not one per
//! path component. Removing a directory drops that cache, because the path could then be
//! recreated as something else.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::path::RelPath;

/// Why a tree operation failed: a refusal (the layer is hostile or broken) or an I/O error.
#[derive(Debug)]
pub enum TreeError {
    Unsafe(String),
    Io(String, io::Error),
}

pub type TreeResult<T> = Result<T, TreeError>;

pub fn io_err(what: impl Into<String>, e: impl Into<io::Error>) -> TreeError {
    TreeError::Io(what.into(), e.into())
}

/// Owner and permission bits for a directory the walker must create because an entry
/// names it as a parent without an entry of its own.
#[derive(Debug, Clone, Copy)]
pub struct DirMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl DirMeta {
    /// What tar and containerd use for a parent nobody described.
    pub const IMPLICIT: DirMeta = DirMeta {
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
}

/// Called for a missing parent directory (given its path); says how to create it.
pub type MissingDir<'a> = &'a mut dyn FnMut(&RelPath) -> TreeResult<DirMeta>;

pub struct Tree {
    root: Arc<OwnedFd>,
    root_path: PathBuf,
    /// fds of the directories along the last resolved path, root excluded. Shared, so a
    /// file writer thread can keep using one after the walker moved on.
    cursor: Vec<(OsString, Arc<OwnedFd>)>,
}

impl Tree {
    pub fn open(root_path: &Path) -> io::Result<Tree> {
        let fd = openat(
            None,
            root_path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Tree {
            // SAFETY: openat returned a fresh fd that nothing else owns.
            root: Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }),
            root_path: root_path.to_path_buf(),
            cursor: Vec::new(),
        })
    }

    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// The absolute path of an entry, for the few calls that have no `*at` form
    /// (xattrs on non-regular files). Its parents were checked by [`Tree::dir`].
    pub fn full_path(&self, rel: &RelPath) -> PathBuf {
        self.root_path.join(rel.to_path())
    }

    /// Forgets cached directory fds; needed after anything removes a directory.
    pub fn invalidate(&mut self) {
        self.cursor.clear();
    }

    /// The fd of the directory holding directory `rel`, when `rel` still is a directory:
    /// `None` when a later entry removed it or replaced it (or a parent) with something
    /// else, which is not an error; any other failure is.
    pub fn existing_dir(&mut self, rel: &RelPath) -> TreeResult<Option<RawFd>> {
        let Some((parent, name)) = rel.split_last() else {
            return Ok(None);
        };
        let dir = match self.dir(parent, None) {
            Ok(d) => d,
            Err(TreeError::Io(_, e)) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            // A parent replaced by a symlink or a file: nothing of ours is left below it.
            Err(TreeError::Unsafe(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        match lstat_at(dir, name).map_err(|e| io_err(format!("stat {rel}"), e))? {
            Some(st) if kind(&st) == SFlag::S_IFDIR => Ok(Some(dir)),
            _ => Ok(None),
        }
    }

    /// The fd of directory `parts`, walking without following symlinks. Missing
    /// directories are created as `missing` says, or reported as `NotFound` without it.
    pub fn dir(&mut self, parts: &[OsString], missing: Option<MissingDir>) -> TreeResult<RawFd> {
        let common = self
            .cursor
            .iter()
            .zip(parts)
            .take_while(|((have, _), want)| have == *want)
            .count();
        self.cursor.truncate(common);
        let mut missing = missing;
        for i in common..parts.len() {
            let parent = self
                .cursor
                .last()
                .map_or(self.root.as_raw_fd(), |(_, fd)| fd.as_raw_fd());
            let name = parts[i].as_os_str();
            let fd = match open_dir_at(parent, name) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    let Some(make) = missing.as_mut() else {
                        return Err(io_err(
                            format!("resolve {}", show(&parts[..=i])),
                            io::Error::from(io::ErrorKind::NotFound),
                        ));
                    };
                    let rel = RelPath::from_parts(parts[..=i].to_vec());
                    let meta = make(&rel)?;
                    create_dir_at(parent, name, meta).map_err(|e| {
                        io_err(format!("create directory {}", show(&parts[..=i])), e)
                    })?;
                    open_dir_at(parent, name)
                        .map_err(|e| io_err(format!("open directory {}", show(&parts[..=i])), e))?
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Err(self.classify_non_dir(parent, name, &parts[..=i]));
                }
                Err(e) => return Err(io_err(format!("open directory {}", show(&parts[..=i])), e)),
            };
            self.cursor.push((parts[i].clone(), Arc::new(fd)));
        }
        Ok(self
            .cursor
            .last()
            .map_or(self.root.as_raw_fd(), |(_, fd)| fd.as_raw_fd()))
    }

    /// [`Tree::dir`], as an fd that stays valid after the walker moves on.
    pub fn dir_shared(
        &mut self,
        parts: &[OsString],
        missing: Option<MissingDir>,
    ) -> TreeResult<Arc<OwnedFd>> {
        self.dir(parts, missing)?;
        Ok(self
            .cursor
            .last()
            .map_or_else(|| self.root.clone(), |(_, fd)| fd.clone()))
    }

    fn classify_non_dir(&self, parent: RawFd, name: &OsStr, parts: &[OsString]) -> TreeError {
        match lstat_at(parent, name) {
            Ok(Some(st)) if kind(&st) == SFlag::S_IFLNK => {
                TreeError::Unsafe(format!("goes through symlink {}", show(parts)))
            }
            Ok(_) => TreeError::Unsafe(format!("goes through non-directory {}", show(parts))),
            Err(e) => io_err(format!("stat {}", show(parts)), e),
        }
    }

    /// Resolves the parent of `rel` (creating missing parents as `missing` says) and makes
    /// room for a new entry there: a directory stays when the new entry is a directory too
    /// (tar semantics: contents merge, later metadata wins); anything else already there is
    /// removed. Returns the parent's fd and whether a directory was kept.
    pub fn prepare(
        &mut self,
        rel: &RelPath,
        new_is_dir: bool,
        missing: MissingDir,
    ) -> TreeResult<(RawFd, bool)> {
        let (parent, name) = rel
            .split_last()
            .ok_or_else(|| TreeError::Unsafe("names the layer root".into()))?;
        let dir = self.dir(parent, Some(&mut *missing))?;
        let Some(st) = lstat_at(dir, name).map_err(|e| io_err(format!("stat {rel}"), e))? else {
            return Ok((dir, false));
        };
        if kind(&st) != SFlag::S_IFDIR {
            unlinkat(Some(dir), name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| io_err(format!("remove {rel}"), e))?;
            return Ok((dir, false));
        }
        if new_is_dir {
            return Ok((dir, true));
        }
        // The walker's cached fds may point into what goes away: drop them, then walk again.
        let full = self.full_path(rel);
        self.invalidate();
        std::fs::remove_dir_all(&full).map_err(|e| io_err(format!("remove directory {rel}"), e))?;
        let dir = self.dir(parent, Some(missing))?;
        Ok((dir, false))
    }
}

/// Opens a directory below `parent` without following a symlink.
pub fn open_dir_at(parent: RawFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    let fd = openat(
        Some(parent),
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn create_dir_at(parent: RawFd, name: &OsStr, meta: DirMeta) -> Result<(), Errno> {
    mkdirat(Some(parent), name, Mode::from_bits_truncate(0o700))?;
    fchownat(
        Some(parent),
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    nix::sys::stat::fchmodat(
        Some(parent),
        name,
        Mode::from_bits_truncate(meta.mode & 0o7777),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
}

/// `lstat` relative to a directory fd; `None` when nothing is there.
pub fn lstat_at(dir: RawFd, name: &OsStr) -> Result<Option<FileStat>, Errno> {
    match fstatat(Some(dir), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn show(parts: &[OsString]) -> String {
    parts.iter().collect::<PathBuf>().display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(Path::new(s)).unwrap()
    }

    fn implicit(_: &RelPath) -> TreeResult<DirMeta> {
        Ok(DirMeta::IMPLICIT)
    }

    #[test]
    fn walks_creates_and_refuses_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let mut tree = Tree::open(t.path()).unwrap();
        // Missing parents: NotFound without a creator, created with one.
        let parts = rel("a/b/c").parts().to_vec();
        assert!(
            matches!(tree.dir(&parts, None), Err(TreeError::Io(_, e)) if e.kind() == io::ErrorKind::NotFound)
        );
        tree.dir(&parts, Some(&mut implicit)).unwrap();
        assert!(t.path().join("a/b/c").is_dir());
        // A symlink on the way is refused, wherever it points.
        std::os::unix::fs::symlink("/", t.path().join("a/up")).unwrap();
        std::os::unix::fs::symlink("b", t.path().join("a/side")).unwrap();
        for p in ["a/up/tmp", "a/side/c"] {
            let err = tree.dir(rel(p).parts(), Some(&mut implicit)).unwrap_err();
            assert!(
                matches!(&err, TreeError::Unsafe(why) if why.contains("symlink")),
                "{p}: {err:?}"
            );
        }
        // A file on the way is refused too.
        std::fs::write(t.path().join("a/file"), b"").unwrap();
        assert!(matches!(
            tree.dir(rel("a/file/x").parts(), None),
            Err(TreeError::Unsafe(_))
        ));
    }

    #[test]
    fn replacing_a_directory_drops_cached_fds() {
        let t = tempfile::tempdir().unwrap();
        let mut tree = Tree::open(t.path()).unwrap();
        tree.dir(rel("d/e").parts(), Some(&mut implicit)).unwrap();
        // `d` becomes a file: the walker must not keep using the removed directory.
        let (parent, kept) = tree.prepare(&rel("d"), false, &mut implicit).unwrap();
        assert!(!kept);
        assert!(!t.path().join("d").exists());
        std::fs::write(t.path().join("d"), b"").unwrap();
        assert!(matches!(
            tree.dir(rel("d/e").parts(), None),
            Err(TreeError::Unsafe(_))
        ));
        assert!(parent >= 0);
        // A directory entry over a directory keeps it.
        tree.dir(rel("k/inner").parts(), Some(&mut implicit))
            .unwrap();
        let (_, kept) = tree.prepare(&rel("k"), true, &mut implicit).unwrap();
        assert!(kept && t.path().join("k/inner").is_dir());
    }

    #[test]
    fn existing_dir_is_none_only_when_replaced_or_gone() {
        let t = tempfile::tempdir().unwrap();
        let mut tree = Tree::open(t.path()).unwrap();
        tree.dir(rel("a/b").parts(), Some(&mut implicit)).unwrap();
        assert!(tree.existing_dir(&rel("a/b")).unwrap().is_some());
        assert!(tree.existing_dir(&rel("a/gone")).unwrap().is_none());
        assert!(tree.existing_dir(&rel("nope/b")).unwrap().is_none());
        std::fs::write(t.path().join("a/file"), b"").unwrap();
        assert!(tree.existing_dir(&rel("a/file")).unwrap().is_none());
        std::os::unix::fs::symlink("a", t.path().join("link")).unwrap();
        assert!(tree.existing_dir(&rel("link/b")).unwrap().is_none());
    }
}
