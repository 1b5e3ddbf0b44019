//! Writing one tar entry of each kind into the layer tree: files, directories, symlinks,
//! hardlinks (with copy-up from the layers beneath), device nodes and fifos, whiteouts.
//!
//! Ownership, modes and times are applied per entry right after it is written; directory
//! modes and mtimes wait until the end ([`Applier::finish_dirs`]), since writing into a
//! directory changes its mtime and a read-only mode would stand in the way.
//!
//! Small regular files may be handed to writer threads ([`super::writers`]); everything
//! else stays on the parser's thread, in tar order. Queued files never meet another
//! entry's path half-written, because the parser waits for the queue to drain (a fence)
//! before anything that could touch one: an entry at a queued file's own path, a
//! hardlink (its target may be queued), a device node, a whiteout, and making room
//! over something already there (which may remove a directory queued files are going
//! into). A file at a path this layer made a directory is written inline; a missing
//! parent that is a queued file is refused as the walker would refuse the file itself.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, Gid, Uid};
use tar::EntryType;

use super::error::{Fail, Res};
use super::lower::{self, OPAQUE_XATTR};
use super::meta::{read_meta, Meta};
use super::path::RelPath;
use super::tree::{io_err, kind, lstat_at, DirMeta, Tree, TreeError};
use super::writers::{Job, Writers, SMALL_FILE};

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Files queued since the last fence, at most (bounds the parser's bookkeeping).
const MAX_PENDING: usize = 8192;
/// Copy buffer for file contents; large reads let the decompressor work in big strides.
pub(super) const COPY_BUFFER: usize = 1 << 20;

pub(super) enum Step {
    Next,
    NeedsLowers,
}

/// How missing parent directories are made, and what they cost in independence.
pub(super) struct Parents<'a> {
    pub(super) lowers: Option<&'a [PathBuf]>,
    pub(super) implicit: Vec<RelPath>,
    pub(super) depends: bool,
    /// Directory modes and times, applied at the end.
    pub(super) dirs: Vec<DeferredDir>,
    /// Files handed to the writer threads since the last fence.
    pub(super) pending: HashSet<RelPath>,
    /// Every directory this layer created (some may be gone since): a file entry at one
    /// of these paths is written inline, where replacing a directory is safe.
    pub(super) made: HashSet<RelPath>,
}

pub(super) struct DeferredDir {
    pub(super) rel: RelPath,
    pub(super) mode: u32,
    pub(super) mtime: TimeSpec,
}

impl Parents<'_> {
    fn make(&mut self, rel: &RelPath) -> std::result::Result<DirMeta, TreeError> {
        if self.pending.contains(rel) {
            // What the walker finds once the queued file is written.
            return Err(TreeError::Unsafe(format!(
                "goes through non-directory {rel}"
            )));
        }
        self.made.insert(rel.clone());
        let Some(lowers) = self.lowers else {
            self.implicit.push(rel.clone());
            return Ok(DirMeta::IMPLICIT);
        };
        if lowers.is_empty() {
            return Ok(DirMeta::IMPLICIT);
        }
        self.depends = true;
        match lower::lookup(lowers, rel)? {
            Some(f) if f.meta.is_dir() => {
                let m = &f.meta;
                self.dirs.push(DeferredDir {
                    rel: rel.clone(),
                    mode: m.mode() & 0o7777,
                    mtime: TimeSpec::new(m.mtime(), m.mtime_nsec()),
                });
                Ok(DirMeta {
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                })
            }
            _ => Ok(DirMeta::IMPLICIT),
        }
    }
}

pub(super) struct Applier<'a> {
    pub(super) tree: Tree,
    pub(super) parents: Parents<'a>,
    pub(super) buf: Vec<u8>,
    /// Writer threads for small files; `None` writes every file inline.
    pub(super) writers: Option<&'a Writers<'a>>,
}

impl Applier<'_> {
    pub(super) fn entry<R: Read>(&mut self, e: &mut tar::Entry<R>, name: &Path) -> Res<Step> {
        let etype = e.header().entry_type();
        if matches!(etype, EntryType::XGlobalHeader) {
            return Ok(Step::Next);
        }
        let rel = RelPath::parse(name).map_err(|why| Fail::Unsafe(why.to_string()))?;
        let meta = read_meta(e)?;
        if let Some((_, last)) = rel.split_last() {
            let last = last.as_bytes();
            if last.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                // It may remove a tree queued files are being written into.
                self.fence()?;
                return self.whiteout(&rel, last).map(|_| Step::Next);
            }
        }
        match etype {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(&rel, e, meta)?
            }
            EntryType::Directory => {
                self.fence_for(&rel)?;
                self.dir(&rel, &meta)?
            }
            EntryType::Symlink => {
                self.fence_for(&rel)?;
                let target = e
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| Fail::Invalid("symlink without a target".into()))?
                    .into_owned();
                self.symlink(&rel, &target, &meta)?
            }
            EntryType::Link => {
                let target = e
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| Fail::Invalid("hardlink without a target".into()))?
                    .into_owned();
                // Its target may be a queued file.
                self.fence()?;
                return self.hardlink(&rel, &target);
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.fence()?;
                self.node(&rel, e, etype, &meta)?
            }
            other => {
                return Err(Fail::Invalid(format!(
                    "unsupported tar entry type {:?}",
                    other.as_byte() as char
                )))
            }
        }
        Ok(Step::Next)
    }

    fn prepare(&mut self, rel: &RelPath, is_dir: bool) -> Res<(RawFd, bool)> {
        let parents = &mut self.parents;
        Ok(self.tree.prepare(rel, is_dir, &mut |r| parents.make(r))?)
    }

    /// Creates `rel` with `make`, making room first only when something is in the way:
    /// most entries are new, and trying first saves an `lstat` per entry. Returns the
    /// parent's fd, and `None` when an existing directory was kept for a directory entry.
    fn create<T>(
        &mut self,
        rel: &RelPath,
        is_dir: bool,
        what: &str,
        make: impl Fn(RawFd, &OsStr) -> std::result::Result<T, Errno>,
    ) -> Res<(RawFd, Option<T>)> {
        let (parent, name) = rel
            .split_last()
            .ok_or_else(|| Fail::Unsafe("names the layer root".into()))?;
        let parents = &mut self.parents;
        let dir = self.tree.dir(parent, Some(&mut |r| parents.make(r)))?;
        match make(dir, name) {
            Ok(t) => return Ok((dir, Some(t))),
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(io_err(format!("{what} {rel}"), e).into()),
        }
        // Making room may remove a directory queued files are being written into.
        self.fence()?;
        let (dir, kept) = self.prepare(rel, is_dir)?;
        if kept {
            return Ok((dir, None));
        }
        let t = make(dir, name).map_err(|e| io_err(format!("{what} {rel}"), e))?;
        Ok((dir, Some(t)))
    }

    /// Waits for the writer threads to finish every queued file.
    pub(super) fn fence(&mut self) -> Res<()> {
        if let Some(w) = self.writers {
            w.fence()?;
        }
        self.parents.pending.clear();
        Ok(())
    }

    /// Fences when `rel` itself is a queued file (a later entry replaces it).
    fn fence_for(&mut self, rel: &RelPath) -> Res<()> {
        if self.parents.pending.contains(rel) {
            self.fence()?;
        }
        Ok(())
    }

    fn file<R: Read>(&mut self, rel: &RelPath, e: &mut tar::Entry<R>, meta: Meta) -> Res<()> {
        self.fence_for(rel)?;
        if let Some(w) = self.writers {
            if e.size() <= SMALL_FILE && !self.parents.made.contains(rel) {
                return self.queue(w, rel, e, meta);
            }
        }
        let (_, file) = self.create(rel, false, "create", create_file_at)?;
        let file = file.ok_or_else(|| Fail::Invalid("file entry kept a directory".into()))?;
        let mut file = File::from(file);
        let want = e.size();
        let mut got = 0u64;
        loop {
            let n = match e.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(Fail::Stream(err)),
            };
            file.write_all(&self.buf[..n])
                .map_err(|err| io_err(format!("write {rel}"), err))?;
            got += n as u64;
        }
        if got != want {
            return Err(Fail::Short {
                expected: want,
                actual: got,
            });
        }
        set_file_meta(&file, rel, &meta)
    }

    /// Hands a small file to the writer threads: its parent resolved here (missing
    /// parents made, symlinks refused), its body read whole.
    fn queue<R: Read>(
        &mut self,
        w: &Writers<'_>,
        rel: &RelPath,
        e: &mut tar::Entry<R>,
        meta: Meta,
    ) -> Res<()> {
        let (parent, name) = rel
            .split_last()
            .ok_or_else(|| Fail::Unsafe("names the layer root".into()))?;
        let parents = &mut self.parents;
        let dir = self
            .tree
            .dir_shared(parent, Some(&mut |r| parents.make(r)))?;
        let want = e.size();
        let mut body = Vec::with_capacity(want as usize);
        e.take(want).read_to_end(&mut body).map_err(Fail::Stream)?;
        if body.len() as u64 != want {
            return Err(Fail::Short {
                expected: want,
                actual: body.len() as u64,
            });
        }
        self.parents.pending.insert(rel.clone());
        w.submit(Job {
            dir,
            name: name.to_os_string(),
            rel: rel.clone(),
            body,
            meta,
        })?;
        if self.parents.pending.len() >= MAX_PENDING {
            self.fence()?;
        }
        Ok(())
    }

    fn dir(&mut self, rel: &RelPath, meta: &Meta) -> Res<()> {
        if rel.is_root() {
            let root = self.tree.root_path().to_path_buf();
            std::os::unix::fs::lchown(&root, Some(meta.uid), Some(meta.gid))
                .map_err(|e| io_err("chown layer root", e))?;
            self.set_xattrs_path(rel, &root, &meta.xattrs)?;
        } else {
            let (dir, _) = self.create(rel, true, "create directory", |dir, name| {
                mkdirat(Some(dir), name, Mode::from_bits_truncate(0o700))
            })?;
            let name = last(rel);
            own_at(dir, name, rel, meta)?;
            let full = self.tree.full_path(rel);
            self.set_xattrs_path(rel, &full, &meta.xattrs)?;
            self.parents.implicit.retain(|d| d != rel);
            self.parents.made.insert(rel.clone());
        }
        self.parents.dirs.push(DeferredDir {
            rel: rel.clone(),
            mode: meta.mode,
            mtime: meta.mtime,
        });
        Ok(())
    }

    fn symlink(&mut self, rel: &RelPath, target: &Path, meta: &Meta) -> Res<()> {
        let (dir, _) = self.create(rel, false, "create symlink", |dir, name| {
            symlinkat(target, Some(dir), name)
        })?;
        let name = last(rel);
        own_at(dir, name, rel, meta)?;
        self.finish_at(dir, name, rel, meta)
    }

    fn node<R: Read>(
        &mut self,
        rel: &RelPath,
        e: &tar::Entry<R>,
        etype: EntryType,
        meta: &Meta,
    ) -> Res<()> {
        let (major, minor) = device_numbers(e.header(), etype)?;
        let kind = match etype {
            EntryType::Char => SFlag::S_IFCHR,
            EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        let (dir, _) = self.prepare(rel, false)?;
        let name = last(rel);
        mknodat(
            Some(dir),
            name,
            kind,
            Mode::from_bits_truncate(0o600),
            makedev(major.into(), minor.into()),
        )
        .map_err(|e| io_err(format!("create device node {rel}"), e))?;
        own_at(dir, name, rel, meta)?;
        fchmodat(
            Some(dir),
            name,
            Mode::from_bits_truncate(meta.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| io_err(format!("chmod {rel}"), e))?;
        self.finish_at(dir, name, rel, meta)
    }

    /// A hardlink's target must already be in this layer, or (copied up) in the layers
    /// beneath. Linking never follows a symlink: a link to a symlink is a second symlink,
    /// through which nothing is written.
    fn hardlink(&mut self, rel: &RelPath, target: &Path) -> Res<Step> {
        let trel = RelPath::parse(target)
            .map_err(|why| Fail::Unsafe(format!("hardlink target {target:?} {why}")))?;
        if trel.is_root() || trel == *rel {
            return Err(Fail::Invalid(format!(
                "hardlink to {target:?} links to itself or the layer root"
            )));
        }
        let present = match self.target_dir(&trel)? {
            Some(dir) => match lstat_at(dir.as_raw_fd(), last(&trel))
                .map_err(|e| io_err(format!("stat {trel}"), e))?
            {
                Some(st) if kind(&st) == SFlag::S_IFDIR => {
                    return Err(Fail::Unsafe(format!(
                        "is a hardlink to directory {target:?}"
                    )));
                }
                Some(_) => true,
                None => false,
            },
            None => false,
        };
        if !present {
            let Some(lowers) = self.parents.lowers else {
                return Ok(Step::NeedsLowers);
            };
            if !self.copy_up(lowers, &trel)? {
                return Err(Fail::LinkTargetMissing(target.to_path_buf()));
            }
            self.parents.depends = true;
        }
        // The target's directory as an fd of our own first: resolving the link's parent
        // afterwards moves the walker, which closes the fds it cached.
        let tdir = self
            .target_dir(&trel)?
            .ok_or_else(|| Fail::Invalid(format!("hardlink target {target:?} vanished")))?;
        let (dir, _) = self.prepare(rel, false)?;
        linkat(
            Some(tdir.as_raw_fd()),
            last(&trel),
            Some(dir),
            last(rel),
            AtFlags::empty(),
        )
        .map_err(|e| io_err(format!("link to {trel}"), e))?;
        Ok(Step::Next)
    }

    /// The directory holding a hardlink target, as an fd of its own (the walker's cache
    /// moves on); `None` when it does not exist in this layer.
    fn target_dir(&mut self, trel: &RelPath) -> Res<Option<OwnedFd>> {
        let parent = &trel.parts()[..trel.parts().len() - 1];
        match self.tree.dir(parent, None) {
            Ok(fd) => {
                let dup = nix::unistd::dup(fd).map_err(|e| io_err("dup", e))?;
                // SAFETY: dup returned a fresh fd that nothing else owns.
                Ok(Some(unsafe { OwnedFd::from_raw_fd(dup) }))
            }
            Err(TreeError::Io(_, e)) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(TreeError::Unsafe(why)) => Err(Fail::Unsafe(format!("hardlink target {why}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Copies `trel` from the layers beneath into this one (as overlayfs does before it
    /// links a lower file). Returns false when the lowers do not have it.
    fn copy_up(&mut self, lowers: &[PathBuf], trel: &RelPath) -> Res<bool> {
        let Some(found) = lower::lookup(lowers, trel)? else {
            return Ok(false);
        };
        let m = &found.meta;
        let ft = m.file_type();
        if ft.is_dir() {
            return Err(Fail::Unsafe(format!(
                "is a hardlink to directory {trel} of a lower layer"
            )));
        }
        let (dir, _) = self.prepare(trel, false)?;
        let name = last(trel);
        if ft.is_file() {
            let mut src = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&found.path)
                .map_err(|e| io_err(format!("open lower {}", found.path.display()), e))?;
            let mut dst = File::from(
                create_file_at(dir, name).map_err(|e| io_err(format!("create {trel}"), e))?,
            );
            io::copy(&mut src, &mut dst).map_err(|e| io_err(format!("copy up {trel}"), e))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&found.path)
                .map_err(|e| io_err(format!("read lower link {}", found.path.display()), e))?;
            symlinkat(&target, Some(dir), name)
                .map_err(|e| io_err(format!("create symlink {trel}"), e))?;
        } else {
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else if ft.is_block_device() {
                SFlag::S_IFBLK
            } else if ft.is_fifo() {
                SFlag::S_IFIFO
            } else {
                SFlag::S_IFSOCK
            };
            mknodat(
                Some(dir),
                name,
                kind,
                Mode::from_bits_truncate(0o600),
                m.rdev(),
            )
            .map_err(|e| io_err(format!("create device node {trel}"), e))?;
        }
        lower::copy_meta(dir, name, trel, &found, &self.tree.full_path(trel))?;
        Ok(true)
    }

    /// `.wh.NAME` hides NAME of the layers beneath (an overlay whiteout: a 0/0 character
    /// device); `.wh..wh..opq` hides everything beneath its directory (opaque xattr).
    fn whiteout(&mut self, rel: &RelPath, last: &[u8]) -> Res<()> {
        if last == OPAQUE_MARKER.as_bytes() {
            let dir = rel.parent();
            self.tree
                .dir(dir.parts(), Some(&mut |r| self.parents.make(r)))?;
            let full = self.tree.full_path(&dir);
            xattr::set(&full, OPAQUE_XATTR, b"y")
                .map_err(|e| io_err(format!("mark {dir} opaque"), e))?;
            return Ok(());
        }
        if last.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            // Other AUFS metadata (.wh..wh.plnk, ...) has no meaning for overlayfs.
            return Ok(());
        }
        let hidden = OsStr::from_bytes(&last[WHITEOUT_PREFIX.len()..]);
        if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.as_bytes().contains(&b'/')
        {
            return Err(Fail::Unsafe("is a whiteout that names no file".into()));
        }
        let target = rel.with_last(hidden);
        let (dir, _) = self.prepare(&target, false)?;
        mknodat(
            Some(dir),
            hidden,
            SFlag::S_IFCHR,
            Mode::empty(),
            makedev(0, 0),
        )
        .map_err(|e| io_err(format!("create whiteout for {target}"), e))?;
        Ok(())
    }

    /// Last steps of a non-directory, non-regular entry: xattrs, then times (which any
    /// earlier change would have bumped).
    fn finish_at(&self, dir: RawFd, name: &OsStr, rel: &RelPath, meta: &Meta) -> Res<()> {
        let full = self.tree.full_path(rel);
        self.set_xattrs_path(rel, &full, &meta.xattrs)?;
        utimensat(
            Some(dir),
            name,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io_err(format!("set times of {rel}"), e))?;
        Ok(())
    }

    fn set_xattrs_path(
        &self,
        rel: &RelPath,
        path: &Path,
        xattrs: &[(OsString, Vec<u8>)],
    ) -> Res<()> {
        for (k, v) in xattrs {
            if let Err(err) = xattr::set(path, k, v) {
                xattr_failed(rel, k, err)?;
            }
        }
        Ok(())
    }

    /// Directory modes and times, once nothing more is written into them. Entries that a
    /// later entry replaced by a non-directory are skipped; a repeated directory takes the
    /// last header's metadata (applied last).
    pub(super) fn finish_dirs(&mut self) -> Res<()> {
        let dirs = std::mem::take(&mut self.parents.dirs);
        for d in &dirs {
            if d.rel.is_root() {
                let root = self.tree.root_path();
                std::fs::set_permissions(
                    root,
                    std::os::unix::fs::PermissionsExt::from_mode(d.mode),
                )
                .map_err(|e| io_err("chmod layer root", e))?;
                utimensat(
                    None,
                    root,
                    &d.mtime,
                    &d.mtime,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|e| io_err("set times of layer root", e))?;
                continue;
            }
            // Skipped when a later entry replaced it; an I/O error is the layer's failure.
            let Some(dir) = self.tree.existing_dir(&d.rel)? else {
                continue;
            };
            let name = last(&d.rel);
            fchmodat(
                Some(dir),
                name,
                Mode::from_bits_truncate(d.mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| io_err(format!("chmod {}", d.rel), e))?;
            utimensat(
                Some(dir),
                name,
                &d.mtime,
                &d.mtime,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| io_err(format!("set times of {}", d.rel), e))?;
        }
        Ok(())
    }
}

/// The xattr holding a file's capabilities.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// A device node's numbers; unparseable ones are refused, never read as 0/0 (which an
/// overlay lower takes for a whiteout, silently hiding the file beneath). A fifo has none.
fn device_numbers(h: &tar::Header, etype: EntryType) -> Res<(u32, u32)> {
    if etype == EntryType::Fifo {
        return Ok((0, 0));
    }
    let field = |which: &str, v: io::Result<Option<u32>>| match v {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(Fail::Invalid(format!(
            "device node without a {which} number (not a ustar/GNU header)"
        ))),
        Err(e) => Err(Fail::Invalid(format!(
            "unparseable device {which} number: {e}"
        ))),
    };
    Ok((
        field("major", h.device_major())?,
        field("minor", h.device_minor())?,
    ))
}

fn last(rel: &RelPath) -> &OsStr {
    rel.split_last().map_or(OsStr::new("."), |(_, l)| l)
}

/// A regular file's metadata once its bytes are written: owner, mode (after the owner,
/// whose change clears setuid/setgid), xattrs (after the owner too, which clears file
/// capabilities), times last (every other change bumps them).
pub(super) fn set_file_meta(file: &File, rel: &RelPath, meta: &Meta) -> Res<()> {
    let fd = file.as_raw_fd();
    fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(|e| io_err(format!("chown {rel}"), e))?;
    fchmod(fd, Mode::from_bits_truncate(meta.mode))
        .map_err(|e| io_err(format!("chmod {rel}"), e))?;
    for (k, v) in &meta.xattrs {
        if let Err(err) = xattr::FileExt::set_xattr(file, k, v) {
            xattr_failed(rel, k, err)?;
        }
    }
    futimens(fd, &meta.mtime, &meta.mtime).map_err(|e| io_err(format!("set times of {rel}"), e))?;
    Ok(())
}

/// Creates a new file (never through a symlink, never over anything), mode 0600 until
/// its metadata is applied.
pub(super) fn create_file_at(dir: RawFd, name: &OsStr) -> std::result::Result<OwnedFd, Errno> {
    let fd = openat(
        Some(dir),
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    // SAFETY: openat returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn own_at(dir: RawFd, name: &OsStr, rel: &RelPath, meta: &Meta) -> Res<()> {
    fchownat(
        Some(dir),
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err(format!("chown {rel}"), e))?;
    Ok(())
}

/// Filesystems without xattr support, or xattrs the kernel refuses for a file type (user.*
/// on symlinks), are logged and skipped as containerd does; anything else fails the layer.
fn xattr_failed(rel: &RelPath, key: &OsStr, err: io::Error) -> Res<()> {
    if key.as_bytes() == CAPABILITY_XATTR {
        // File capabilities are what lets a non-root binary do its job (ping, newuidmap):
        // losing them silently changes how the image runs.
        return Err(io_err(
            format!("set file capabilities ({key:?}) on {rel} (is the unpacker root, in the initial user namespace?)"),
            err,
        )
        .into());
    }
    match Errno::from_raw(err.raw_os_error().unwrap_or(0)) {
        Errno::ENOTSUP | Errno::EPERM => {
            tracing::warn!("{rel}: xattr {key:?} not set: {err}");
            Ok(())
        }
        _ => Err(io_err(format!("set xattr {key:?} on {rel}"), err).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(Path::new(s)).unwrap()
    }

    #[test]
    fn lost_file_capabilities_fail_the_layer_other_xattrs_may_be_skipped() {
        let eperm = || io::Error::from_raw_os_error(libc::EPERM);
        let caps = xattr_failed(&rel("bin/ping"), OsStr::new("security.capability"), eperm());
        assert!(matches!(caps, Err(Fail::Io(what, _)) if what.contains("file capabilities")));
        let enotsup = io::Error::from_raw_os_error(libc::ENOTSUP);
        assert!(
            xattr_failed(&rel("bin/ping"), OsStr::new("security.capability"), enotsup).is_err()
        );
        assert!(xattr_failed(&rel("link"), OsStr::new("user.note"), eperm()).is_ok());
        let eio = io::Error::from_raw_os_error(libc::EIO);
        assert!(xattr_failed(&rel("f"), OsStr::new("user.note"), eio).is_err());
    }

    fn device_header(major: &[u8]) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(EntryType::Char);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        let u = h.as_ustar_mut().unwrap();
        u.dev_major = [0; 8];
        u.dev_major[..major.len()].copy_from_slice(major);
        h
    }

    #[test]
    fn unparseable_device_numbers_are_refused_not_read_as_a_whiteout() {
        assert_eq!(
            device_numbers(&device_header(b"0000001"), EntryType::Char).ok(),
            Some((1, 3))
        );
        let bad = device_numbers(&device_header(b"zz"), EntryType::Char);
        assert!(matches!(bad, Err(Fail::Invalid(why)) if why.contains("unparseable device major")));
        // An old (v7) header has no device fields at all.
        let mut old = tar::Header::new_old();
        old.set_entry_type(EntryType::Block);
        assert!(device_numbers(&old, EntryType::Block).is_err());
        // A fifo has none and needs none.
        assert_eq!(device_numbers(&old, EntryType::Fifo).ok(), Some((0, 0)));
    }
}
