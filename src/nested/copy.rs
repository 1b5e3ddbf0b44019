//! `nestcache cp SRC DST`, one side `CONTAINER:PATH`, as `docker cp`: files, directories
//! (recursively, modes kept) and symlinks (copied as links, never followed) between the
//! host and a running container's root filesystem, reached at `/proc/PID/root`.
//!
//! Every container path is resolved with [`ContainerRoot`] (inside the root, whatever
//! its symlinks say), and every entry is created relative to a parent opened that way,
//! with `O_NOFOLLOW` on the last component: nothing a container holds can make a copy
//! read or write a host file outside it. Like Docker: an existing directory as DST
//! receives SRC under its own name; `SRC/.` copies a directory's contents.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde::Serialize;

use super::manage::{get, running_pid};
use super::rootpath::ContainerRoot;
use crate::containerd::{validate_id, Client};
use crate::error::{Error, IoContext, Result};

/// One side of `cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyPath {
    Host(PathBuf),
    Container { id: String, path: PathBuf },
}

impl CopyPath {
    /// `ID:PATH` names a container path when ID is a valid container id before the first
    /// `/` (so `./a:b` and `/x:y` stay host paths), as Docker decides.
    pub fn parse(s: &str) -> CopyPath {
        if let Some((id, path)) = s.split_once(':') {
            if !id.contains('/') && validate_id("container", id).is_ok() {
                return CopyPath::Container {
                    id: id.to_string(),
                    path: PathBuf::from(if path.is_empty() { "/" } else { path }),
                };
            }
        }
        CopyPath::Host(PathBuf::from(s))
    }
}

/// What was copied.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Devices, fifos and sockets are not copied.
    pub skipped: Vec<String>,
}

/// Copies between host and a running nested container.
pub async fn copy(client: &Client, src: &str, dst: &str) -> Result<CopyReport> {
    match (CopyPath::parse(src), CopyPath::parse(dst)) {
        (CopyPath::Container { id, path }, CopyPath::Host(h)) => {
            let root = root_of(client, &id).await?;
            from_container(&root, &path, contents_only(src), &h)
        }
        (CopyPath::Host(h), CopyPath::Container { id, path }) => {
            let root = root_of(client, &id).await?;
            to_container(&root, &h, contents_only(src), &path)
        }
        (CopyPath::Container { .. }, CopyPath::Container { .. }) => Err(Error::Invalid(
            "cp: copying between two containers is not supported; copy through the host".into(),
        )),
        (CopyPath::Host(_), CopyPath::Host(_)) => Err(Error::Invalid(
            "cp: one of SRC and DST must be CONTAINER:PATH".into(),
        )),
    }
}

async fn root_of(client: &Client, id: &str) -> Result<ContainerRoot> {
    get(client, id).await?;
    ContainerRoot::of_pid(running_pid(client, id).await?)
}

fn contents_only(src: &str) -> bool {
    src.ends_with("/.")
}

/// The last normal component of `p` (`a/b/.` → `b`), or None for `/`.
fn base_name(p: &Path) -> Option<&OsStr> {
    p.components().rev().find_map(|c| match c {
        Component::Normal(n) => Some(n),
        _ => None,
    })
}

fn nofollow_path() -> OFlag {
    OFlag::O_PATH | OFlag::O_NOFOLLOW
}

fn meta_of(fd: OwnedFd, what: &Path) -> Result<Metadata> {
    File::from(fd)
        .metadata()
        .ctx(|| format!("stat {} in the container", what.display()))
}

/// Container → host.
pub fn from_container(
    root: &ContainerRoot,
    src: &Path,
    contents: bool,
    dst: &Path,
) -> Result<CopyReport> {
    let meta = meta_of(root.open(src, nofollow_path(), Mode::empty())?, src)?;
    let target = match (dst.is_dir(), base_name(src)) {
        (true, Some(name)) if !contents => dst.join(name),
        _ => dst.to_path_buf(),
    };
    let mut report = CopyReport::default();
    copy_out(root, src, &meta, &target, &mut report)?;
    Ok(report)
}

fn copy_out(
    root: &ContainerRoot,
    src: &Path,
    meta: &Metadata,
    dst: &Path,
    r: &mut CopyReport,
) -> Result<()> {
    let ft = meta.file_type();
    let mode = std::fs::Permissions::from_mode(meta.mode() & 0o7777);
    if ft.is_symlink() {
        let fd = root.open(src, nofollow_path(), Mode::empty())?;
        let target = nix::fcntl::readlinkat(Some(fd.as_raw_fd()), "").map_err(|e| {
            Error::io(
                format!("readlink {} in the container", src.display()),
                e.into(),
            )
        })?;
        let _ = std::fs::remove_file(dst);
        std::os::unix::fs::symlink(&target, dst).ctx(|| format!("symlink {}", dst.display()))?;
        r.symlinks += 1;
    } else if ft.is_dir() {
        match std::fs::create_dir(dst) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::io(format!("create {}", dst.display()), e))
            }
            _ => {}
        }
        r.dirs += 1;
        for name in list_dir(root, src)? {
            let child = src.join(&name);
            let m = meta_of(root.open(&child, nofollow_path(), Mode::empty())?, &child)?;
            copy_out(root, &child, &m, &dst.join(&name), r)?;
        }
        std::fs::set_permissions(dst, mode).ctx(|| format!("chmod {}", dst.display()))?;
    } else if ft.is_file() {
        let fd = root.open(src, OFlag::O_RDONLY | OFlag::O_NOFOLLOW, Mode::empty())?;
        let mut from = File::from(fd);
        let mut to = File::create(dst).ctx(|| format!("create {}", dst.display()))?;
        r.bytes += std::io::copy(&mut from, &mut to)
            .ctx(|| format!("copy {} to {}", src.display(), dst.display()))?;
        to.set_permissions(mode)
            .ctx(|| format!("chmod {}", dst.display()))?;
        r.files += 1;
    } else {
        r.skipped.push(src.display().to_string());
    }
    Ok(())
}

/// The names in container directory `dir`, sorted.
fn list_dir(root: &ContainerRoot, dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let fd = root.open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?;
    let mut d = nix::dir::Dir::from_fd(std::os::fd::IntoRawFd::into_raw_fd(fd))
        .map_err(|e| Error::io(format!("list {} in the container", dir.display()), e.into()))?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry
            .map_err(|e| Error::io(format!("list {} in the container", dir.display()), e.into()))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name).to_os_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Host → container.
pub fn to_container(
    root: &ContainerRoot,
    src: &Path,
    contents: bool,
    dst: &Path,
) -> Result<CopyReport> {
    let meta = std::fs::symlink_metadata(src).ctx(|| format!("stat {}", src.display()))?;
    let dst_is_dir = root
        .open(dst, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
        .is_ok();
    let mut report = CopyReport::default();
    if contents && meta.is_dir() {
        if !dst_is_dir {
            mkdir_in(root, dst)?;
        }
        for entry in std::fs::read_dir(src).ctx(|| format!("list {}", src.display()))? {
            let entry = entry.ctx(|| format!("list {}", src.display()))?;
            copy_in(root, &entry.path(), dst, &entry.file_name(), &mut report)?;
        }
        return Ok(report);
    }
    let (parent, name) = match (dst_is_dir, base_name(src)) {
        (true, Some(name)) => (dst.to_path_buf(), name.to_os_string()),
        _ => {
            let name = base_name(dst).ok_or_else(|| {
                Error::Invalid(format!(
                    "cp: cannot replace {} in the container",
                    dst.display()
                ))
            })?;
            (
                dst.parent().unwrap_or(Path::new("/")).to_path_buf(),
                name.to_os_string(),
            )
        }
    };
    copy_in(root, src, &parent, &name, &mut report)?;
    Ok(report)
}

fn mkdir_in(root: &ContainerRoot, dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let name = base_name(dir)
        .ok_or_else(|| Error::Invalid(format!("cp: bad directory {}", dir.display())))?;
    let pfd = parent_fd(root, parent)?;
    nix::sys::stat::mkdirat(Some(pfd.as_raw_fd()), name, Mode::from_bits_truncate(0o755)).map_err(
        |e| {
            Error::io(
                format!("mkdir {} in the container", dir.display()),
                e.into(),
            )
        },
    )
}

fn parent_fd(root: &ContainerRoot, parent: &Path) -> Result<OwnedFd> {
    root.open(parent, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
}

fn copy_in(
    root: &ContainerRoot,
    src: &Path,
    parent: &Path,
    name: &OsStr,
    r: &mut CopyReport,
) -> Result<()> {
    let meta = std::fs::symlink_metadata(src).ctx(|| format!("stat {}", src.display()))?;
    let pfd = parent_fd(root, parent)?;
    let at = Some(pfd.as_raw_fd());
    let shown = parent.join(name);
    let fail = |what: &str, e: nix::Error| {
        Error::io(
            format!("{what} {} in the container", shown.display()),
            e.into(),
        )
    };
    let mode = Mode::from_bits_truncate(meta.mode() & 0o7777);
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(src).ctx(|| format!("readlink {}", src.display()))?;
        // Replace a file or link of that name; a directory stays (and the link fails).
        let _ = nix::unistd::unlinkat(at, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        nix::unistd::symlinkat(&target, at, name).map_err(|e| fail("symlink", e))?;
        r.symlinks += 1;
    } else if ft.is_dir() {
        match nix::sys::stat::mkdirat(at, name, mode) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(fail("mkdir", e)),
        }
        // What exists under that name must be a directory, not a link to one.
        let check = nix::fcntl::openat(
            at,
            name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail("open directory", e))?;
        // SAFETY: openat returned a new descriptor we own.
        drop(unsafe { OwnedFd::from_raw_fd(check) });
        r.dirs += 1;
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .ctx(|| format!("list {}", src.display()))?
            .collect::<std::io::Result<_>>()
            .ctx(|| format!("list {}", src.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            copy_in(root, &e.path(), &shown, &e.file_name(), r)?;
        }
    } else if ft.is_file() {
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_TRUNC
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(at, name, flags, mode).map_err(|e| fail("create", e))?;
        // SAFETY: openat returned a new descriptor we own.
        let mut to = unsafe { File::from_raw_fd(fd) };
        let mut from = File::open(src).ctx(|| format!("open {}", src.display()))?;
        r.bytes += std::io::copy(&mut from, &mut to)
            .ctx(|| format!("copy {} to {}", src.display(), shown.display()))?;
        to.set_permissions(std::fs::Permissions::from_mode(mode.bits()))
            .ctx(|| format!("chmod {} in the container", shown.display()))?;
        r.files += 1;
    } else {
        r.skipped.push(src.display().to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_side_is_the_container() {
        let c = |id: &str, p: &str| CopyPath::Container {
            id: id.into(),
            path: p.into(),
        };
        assert_eq!(CopyPath::parse("c1:/etc/passwd"), c("c1", "/etc/passwd"));
        assert_eq!(CopyPath::parse("c1:"), c("c1", "/"));
        assert_eq!(CopyPath::parse("./a:b"), CopyPath::Host("./a:b".into()));
        assert_eq!(CopyPath::parse("/x:y"), CopyPath::Host("/x:y".into()));
        assert_eq!(CopyPath::parse("plain"), CopyPath::Host("plain".into()));
    }

    /// A root with a link pointing out of it: copies through it stay inside.
    fn hostile_root() -> (tempfile::TempDir, ContainerRoot) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("data/sub")).unwrap();
        std::fs::write(root.join("data/a"), "A").unwrap();
        std::fs::write(root.join("data/sub/b"), "B").unwrap();
        std::fs::create_dir(t.path().join("host")).unwrap();
        std::os::unix::fs::symlink(t.path().join("host"), root.join("escape")).unwrap();
        std::os::unix::fs::symlink("../../../host", root.join("data/up")).unwrap();
        let r = ContainerRoot::of_dir(&root).unwrap();
        (t, r)
    }

    #[test]
    fn out_of_the_container_copies_links_as_links() {
        let (t, r) = hostile_root();
        let out = t.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let rep = from_container(&r, Path::new("/data"), false, &out).unwrap();
        assert_eq!((rep.files, rep.dirs, rep.symlinks), (2, 2, 1));
        assert_eq!(
            std::fs::read_to_string(out.join("data/sub/b")).unwrap(),
            "B"
        );
        assert!(std::fs::symlink_metadata(out.join("data/up"))
            .unwrap()
            .is_symlink());
        // Through the links: resolved inside the root, where the host's file is absent.
        std::fs::write(t.path().join("host/secret"), "S").unwrap();
        for through in ["/escape/secret", "/data/up/secret"] {
            let e = from_container(&r, Path::new(through), false, &out).unwrap_err();
            assert!(matches!(e, Error::Io { .. }), "{through}: {e}");
        }
        assert!(!out.join("secret").exists());
    }

    #[test]
    fn into_the_container_never_writes_through_its_links() {
        let (t, r) = hostile_root();
        let src = t.path().join("payload");
        std::fs::write(&src, "P").unwrap();
        // /escape is a link to the host dir: as a directory it resolves inside the root
        // (to nothing), so the copy fails instead of landing in the host dir.
        assert!(to_container(&r, &src, false, Path::new("/escape/x")).is_err());
        // /data/up (`../../../host`) is clamped at the root: also nothing there.
        assert!(to_container(&r, &src, false, Path::new("/data/up/x")).is_err());
        // Replacing the link itself by a file is refused (O_NOFOLLOW), not followed.
        assert!(to_container(&r, &src, false, Path::new("/escape")).is_err());
        assert_eq!(std::fs::read_dir(t.path().join("host")).unwrap().count(), 0);
        // A plain copy into a directory lands under its own name.
        let rep = to_container(&r, &src, false, Path::new("/data/sub")).unwrap();
        assert_eq!(rep.bytes, 1);
        assert_eq!(
            std::fs::read_to_string(t.path().join("root/data/sub/payload")).unwrap(),
            "P"
        );
    }
}
