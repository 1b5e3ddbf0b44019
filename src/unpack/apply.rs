//! Applying one layer's tar stream to a fresh directory, in the form overlayfs reads as a
//! lower layer: whiteouts become 0/0 character devices, opaque markers become the
//! `trusted.overlay.opaque` xattr.
//!
//! Ownership, modes and times are applied per entry right after it is written; directory
//! modes and mtimes wait until the end, since writing into a directory changes its mtime
//! and a read-only mode would stand in the way of a non-root extractor.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
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

use super::lower::{self, OPAQUE_XATTR};
use super::path::RelPath;
use super::stream::{self, Limits};
use super::tree::{io_err, kind, lstat_at, DirMeta, Tree, TreeError};
use crate::digest::{Digest, HashingReader};
use crate::error::{Error, IoContext, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Copy buffer for file contents; large reads let the decompressor work in big strides.
const COPY_BUFFER: usize = 1 << 20;
/// Buffer in front of the tar parser, which reads headers 512 bytes at a time.
const TAR_BUFFER: usize = 256 << 10;

/// What one extraction produced.
#[derive(Debug, Clone)]
pub struct LayerStats {
    pub diff_id: Digest,
    /// Size of the uncompressed tar stream.
    pub tar_bytes: u64,
    pub entries: u64,
    /// The tree took something from the layers beneath (a copied-up hardlink target, or a
    /// parent directory's metadata): it must be keyed by chain id, not diff id.
    pub depends_on_lowers: bool,
    /// Parent directories the layer never described, created with default metadata
    /// because the lower layers were not given; [`finish_with_lowers`] corrects them.
    pub implicit_dirs: Vec<RelPath>,
}

#[derive(Debug)]
pub enum Outcome {
    Done(LayerStats),
    /// Lower layers were not given but the layer hardlinks into them; nothing was kept.
    NeedsLowers {
        entry: PathBuf,
    },
}

/// Extracts one layer blob into `dest`, which must not exist yet (its parent must).
///
/// `lowers` are the extracted layers beneath, bottom → top: `Some(&[])` for a bottom layer,
/// `None` when they are not known yet (parallel extraction). The uncompressed stream must
/// hash to `diff_id`. On any failure, and on [`Outcome::NeedsLowers`], `dest` is removed.
/// The tree is not synced: the caller syncs once before publishing (see `ensure`).
pub fn apply_layer<R: Read + Send>(
    blob: R,
    media_type: &str,
    diff_id: &Digest,
    dest: &Path,
    lowers: Option<&[PathBuf]>,
    limits: &Limits,
) -> Result<Outcome> {
    stream::check_media_type(media_type)?;
    std::fs::create_dir(dest).ctx(|| format!("create layer directory {}", dest.display()))?;
    let result = std::thread::scope(|scope| {
        let (stream, tripped) = stream::spawn_decoder(scope, blob, limits);
        extract(stream, tripped, diff_id, dest, lowers, limits)
    });
    if !matches!(result, Ok(Outcome::Done(_))) {
        discard(dest);
    }
    result
}

/// Removes a partial tree; failing to is logged, not fatal: it lives under `layers/tmp/`,
/// which is cleaned again later.
pub fn discard(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!("could not remove partial layer {}: {e}", dir.display());
        }
    }
}

fn extract(
    chunks: stream::Chunks,
    tripped: stream::Tripped,
    diff_id: &Digest,
    dest: &Path,
    lowers: Option<&[PathBuf]>,
    limits: &Limits,
) -> Result<Outcome> {
    let layer = format!("layer {diff_id}");
    let stream_error = |entry: Option<&Path>, e: io::Error| -> Error {
        let at = entry
            .map(|p| format!(" (after entry {:?})", p))
            .unwrap_or_default();
        match tripped.take() {
            Some(why) => Error::Invalid(format!("{layer}: {why}{at}")),
            None => Error::Invalid(format!("{layer}: corrupt or truncated stream{at}: {e}")),
        }
    };
    let tree = Tree::open(dest).ctx(|| format!("open {}", dest.display()))?;
    let mut ap = Applier {
        tree,
        parents: Parents {
            lowers,
            implicit: Vec::new(),
            depends: false,
            dirs: Vec::new(),
        },
        buf: vec![0; COPY_BUFFER],
    };
    let mut archive = tar::Archive::new(BufReader::with_capacity(
        TAR_BUFFER,
        HashingReader::new(chunks),
    ));
    let mut count = 0u64;
    let mut last: Option<PathBuf> = None;
    for entry in archive.entries().map_err(|e| stream_error(None, e))? {
        let mut entry = entry.map_err(|e| stream_error(last.as_deref(), e))?;
        count += 1;
        let name = entry
            .path()
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| PathBuf::from(OsStr::from_bytes(&entry.path_bytes())));
        if count > limits.max_entries {
            return Err(Error::Invalid(format!(
                "{layer}: more than {} entries (limit max_entries, NESTCACHE_MAX_ENTRIES), at entry {name:?}",
                limits.max_entries
            )));
        }
        match ap.entry(&mut entry, &name) {
            Ok(Step::Next) => {}
            Ok(Step::NeedsLowers) => return Ok(Outcome::NeedsLowers { entry: name }),
            Err(Fail::Stream(e)) => return Err(stream_error(Some(&name), e)),
            Err(f) => return Err(f.into_error(&layer, name)),
        }
        last = Some(name);
    }
    // The diff_id covers the whole stream, including the end-of-archive blocks and any
    // padding the tar parser stops short of.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| stream_error(last.as_deref(), e))?;
    let (actual, tar_bytes) = rest.into_inner().finish();
    if actual != *diff_id {
        return Err(Error::Invalid(format!(
            "{layer}: uncompressed content has digest {actual} ({tar_bytes} bytes), expected diff_id {diff_id} (from the image config)"
        )));
    }
    ap.finish_dirs()
        .map_err(|f| f.into_error(&layer, PathBuf::from(".")))?;
    Ok(Outcome::Done(LayerStats {
        diff_id: diff_id.clone(),
        tar_bytes,
        entries: count,
        depends_on_lowers: ap.parents.depends,
        implicit_dirs: ap.parents.implicit,
    }))
}

/// Corrects parent directories a layer never described, once the layers beneath are
/// known: each takes the metadata the same directory has below (containerd's applier does
/// the same). Returns whether the tree now depends on the lowers (any implicit directory
/// does, when there are lowers: another chain could have it with other metadata).
pub fn finish_with_lowers(
    dest: &Path,
    implicit: &[RelPath],
    lowers: &[PathBuf],
    diff_id: &Digest,
) -> Result<bool> {
    if implicit.is_empty() || lowers.is_empty() {
        return Ok(false);
    }
    let layer = format!("layer {diff_id}");
    let mut tree = Tree::open(dest).ctx(|| format!("open {}", dest.display()))?;
    for rel in implicit {
        let res = (|| -> std::result::Result<(), Fail> {
            let Some(found) = lower::lookup(lowers, rel)? else {
                return Ok(());
            };
            if !found.meta.is_dir() {
                return Ok(());
            }
            let Some((parent, name)) = rel.split_last() else {
                return Ok(());
            };
            let dir = match tree.dir(parent, None) {
                Ok(d) => d,
                Err(_) => return Ok(()),
            };
            if !matches!(lstat_at(dir, name), Ok(Some(st)) if kind(&st) == SFlag::S_IFDIR) {
                return Ok(());
            }
            let m = &found.meta;
            fchownat(
                Some(dir),
                name,
                Some(Uid::from_raw(m.uid())),
                Some(Gid::from_raw(m.gid())),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err(format!("chown {rel}"), e))?;
            copy_xattrs(&found.path, &tree.full_path(rel))?;
            fchmodat(
                Some(dir),
                name,
                Mode::from_bits_truncate(m.mode() & 0o7777),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| io_err(format!("chmod {rel}"), e))?;
            let t = TimeSpec::new(m.mtime(), m.mtime_nsec());
            utimensat(Some(dir), name, &t, &t, UtimensatFlags::NoFollowSymlink)
                .map_err(|e| io_err(format!("set times of {rel}"), e))?;
            Ok(())
        })();
        res.map_err(|f| f.into_error(&layer, rel.to_path()))?;
    }
    Ok(true)
}

enum Step {
    Next,
    NeedsLowers,
}

/// Why an entry failed, before it is given the layer and entry names.
enum Fail {
    Unsafe(String),
    Invalid(String),
    Io(String, io::Error),
    /// The byte stream itself failed (truncated, corrupt, guard tripped).
    Stream(io::Error),
}

impl From<TreeError> for Fail {
    fn from(e: TreeError) -> Self {
        match e {
            TreeError::Unsafe(why) => Fail::Unsafe(why),
            TreeError::Io(what, e) => Fail::Io(what, e),
        }
    }
}

impl Fail {
    fn into_error(self, layer: &str, entry: PathBuf) -> Error {
        match self {
            Fail::Unsafe(why) => Error::UnsafePath {
                layer: layer.to_string(),
                entry,
                why,
            },
            Fail::Invalid(why) => Error::Invalid(format!("{layer}: entry {entry:?}: {why}")),
            Fail::Io(what, e) => Error::io(format!("{layer}: entry {entry:?}: {what}"), e),
            Fail::Stream(e) => Error::Invalid(format!(
                "{layer}: corrupt or truncated stream at entry {entry:?}: {e}"
            )),
        }
    }
}

type Step_<T> = std::result::Result<T, Fail>;

/// How missing parent directories are made, and what they cost in independence.
struct Parents<'a> {
    lowers: Option<&'a [PathBuf]>,
    implicit: Vec<RelPath>,
    depends: bool,
    /// Directory modes and times, applied at the end.
    dirs: Vec<DeferredDir>,
}

struct DeferredDir {
    rel: RelPath,
    mode: u32,
    mtime: TimeSpec,
}

impl Parents<'_> {
    fn make(&mut self, rel: &RelPath) -> std::result::Result<DirMeta, TreeError> {
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

/// Metadata of one entry, from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

struct Applier<'a> {
    tree: Tree,
    parents: Parents<'a>,
    buf: Vec<u8>,
}

impl Applier<'_> {
    fn entry<R: Read>(&mut self, e: &mut tar::Entry<R>, name: &Path) -> Step_<Step> {
        let etype = e.header().entry_type();
        if matches!(etype, EntryType::XGlobalHeader) {
            return Ok(Step::Next);
        }
        let rel = RelPath::parse(name).map_err(|why| Fail::Unsafe(why.to_string()))?;
        let meta = read_meta(e)?;
        if let Some((_, last)) = rel.split_last() {
            let last = last.as_bytes();
            if last.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                return self.whiteout(&rel, last).map(|_| Step::Next);
            }
        }
        match etype {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(&rel, e, &meta)?
            }
            EntryType::Directory => self.dir(&rel, &meta)?,
            EntryType::Symlink => {
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
                return self.hardlink(&rel, &target);
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
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

    fn prepare(&mut self, rel: &RelPath, is_dir: bool) -> Step_<(RawFd, bool)> {
        let parents = &mut self.parents;
        Ok(self.tree.prepare(rel, is_dir, &mut |r| parents.make(r))?)
    }

    fn file<R: Read>(&mut self, rel: &RelPath, e: &mut tar::Entry<R>, meta: &Meta) -> Step_<()> {
        let (dir, _) = self.prepare(rel, false)?;
        let file =
            create_file_at(dir, last(rel)).map_err(|e| io_err(format!("create {rel}"), e))?;
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
            return Err(Fail::Invalid(format!(
                "archive ends inside the entry: {got} of {want} bytes"
            )));
        }
        let fd = file.as_raw_fd();
        fchown(
            fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| io_err(format!("chown {rel}"), e))?;
        // After chown, which clears setuid/setgid.
        fchmod(fd, Mode::from_bits_truncate(meta.mode))
            .map_err(|e| io_err(format!("chmod {rel}"), e))?;
        for (k, v) in &meta.xattrs {
            if let Err(err) = xattr::FileExt::set_xattr(&file, k, v) {
                xattr_failed(rel, k, err)?;
            }
        }
        futimens(fd, &meta.mtime, &meta.mtime)
            .map_err(|e| io_err(format!("set times of {rel}"), e))?;
        Ok(())
    }

    fn dir(&mut self, rel: &RelPath, meta: &Meta) -> Step_<()> {
        if rel.is_root() {
            let root = self.tree.root_path().to_path_buf();
            std::os::unix::fs::lchown(&root, Some(meta.uid), Some(meta.gid))
                .map_err(|e| io_err("chown layer root", e))?;
            self.set_xattrs_path(rel, &root, &meta.xattrs)?;
        } else {
            let (dir, kept) = self.prepare(rel, true)?;
            let name = last(rel);
            if !kept {
                mkdirat(Some(dir), name, Mode::from_bits_truncate(0o700))
                    .map_err(|e| io_err(format!("create directory {rel}"), e))?;
            }
            own_at(dir, name, rel, meta)?;
            let full = self.tree.full_path(rel);
            self.set_xattrs_path(rel, &full, &meta.xattrs)?;
            self.parents.implicit.retain(|d| d != rel);
        }
        self.parents.dirs.push(DeferredDir {
            rel: rel.clone(),
            mode: meta.mode,
            mtime: meta.mtime,
        });
        Ok(())
    }

    fn symlink(&mut self, rel: &RelPath, target: &Path, meta: &Meta) -> Step_<()> {
        let (dir, _) = self.prepare(rel, false)?;
        let name = last(rel);
        symlinkat(target, Some(dir), name)
            .map_err(|e| io_err(format!("create symlink {rel}"), e))?;
        own_at(dir, name, rel, meta)?;
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

    fn node<R: Read>(
        &mut self,
        rel: &RelPath,
        e: &tar::Entry<R>,
        etype: EntryType,
        meta: &Meta,
    ) -> Step_<()> {
        let h = e.header();
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
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

    /// A hardlink's target must already be in this layer, or (copied up) in the layers
    /// beneath. Linking never follows a symlink: a link to a symlink is a second symlink,
    /// through which nothing is written.
    fn hardlink(&mut self, rel: &RelPath, target: &Path) -> Step_<Step> {
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
                return Err(Fail::Invalid(format!(
                    "hardlink target {target:?} is neither in this layer nor below"
                )));
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
    fn target_dir(&mut self, trel: &RelPath) -> Step_<Option<OwnedFd>> {
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
    fn copy_up(&mut self, lowers: &[PathBuf], trel: &RelPath) -> Step_<bool> {
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
        fchownat(
            Some(dir),
            name,
            Some(Uid::from_raw(m.uid())),
            Some(Gid::from_raw(m.gid())),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err(format!("chown {trel}"), e))?;
        if !ft.is_symlink() {
            fchmodat(
                Some(dir),
                name,
                Mode::from_bits_truncate(m.mode() & 0o7777),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| io_err(format!("chmod {trel}"), e))?;
        }
        copy_xattrs(&found.path, &self.tree.full_path(trel))?;
        let t = TimeSpec::new(m.mtime(), m.mtime_nsec());
        utimensat(Some(dir), name, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| io_err(format!("set times of {trel}"), e))?;
        Ok(true)
    }

    /// `.wh.NAME` hides NAME of the layers beneath (an overlay whiteout: a 0/0 character
    /// device); `.wh..wh..opq` hides everything beneath its directory (opaque xattr).
    fn whiteout(&mut self, rel: &RelPath, last: &[u8]) -> Step_<()> {
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

    fn set_xattrs_path(
        &self,
        rel: &RelPath,
        path: &Path,
        xattrs: &[(OsString, Vec<u8>)],
    ) -> Step_<()> {
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
    fn finish_dirs(&mut self) -> Step_<()> {
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
            let Some((parent, name)) = d.rel.split_last() else {
                continue;
            };
            let Ok(dir) = self.tree.dir(parent, None) else {
                continue;
            };
            if !matches!(lstat_at(dir, name), Ok(Some(st)) if kind(&st) == SFlag::S_IFDIR) {
                continue;
            }
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

fn last(rel: &RelPath) -> &OsStr {
    rel.split_last().map_or(OsStr::new("."), |(_, l)| l)
}

fn create_file_at(dir: RawFd, name: &OsStr) -> std::result::Result<OwnedFd, Errno> {
    let fd = openat(
        Some(dir),
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    // SAFETY: openat returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn own_at(dir: RawFd, name: &OsStr, rel: &RelPath, meta: &Meta) -> Step_<()> {
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
fn xattr_failed(rel: &RelPath, key: &OsStr, err: io::Error) -> Step_<()> {
    match Errno::from_raw(err.raw_os_error().unwrap_or(0)) {
        Errno::ENOTSUP | Errno::EPERM => {
            tracing::warn!("{rel}: xattr {key:?} not set: {err}");
            Ok(())
        }
        _ => Err(io_err(format!("set xattr {key:?} on {rel}"), err).into()),
    }
}

/// Copies xattrs from a lower file, except overlayfs' own (an inherited opaque marker or
/// redirect would change what the merged tree shows).
fn copy_xattrs(from: &Path, to: &Path) -> Step_<()> {
    let names =
        xattr::list(from).map_err(|e| io_err(format!("list xattrs of {}", from.display()), e))?;
    for k in names {
        if k.as_bytes().starts_with(b"trusted.overlay.") {
            continue;
        }
        if let Some(v) = xattr::get(from, &k)
            .map_err(|e| io_err(format!("read xattr of {}", from.display()), e))?
        {
            xattr::set(to, &k, &v)
                .map_err(|e| io_err(format!("set xattr {k:?} on {}", to.display()), e))?;
        }
    }
    Ok(())
}

fn read_meta<R: Read>(e: &mut tar::Entry<R>) -> Step_<Meta> {
    let h = e.header();
    let bad = |what: &str, err: io::Error| Fail::Invalid(format!("bad {what} in header: {err}"));
    let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
    let uid = h.uid().map_err(|e| bad("uid", e))?;
    let gid = h.gid().map_err(|e| bad("gid", e))?;
    let uid = u32::try_from(uid).map_err(|_| Fail::Invalid(format!("uid {uid} out of range")))?;
    let gid = u32::try_from(gid).map_err(|_| Fail::Invalid(format!("gid {gid} out of range")))?;
    let secs = h.mtime().map_err(|e| bad("mtime", e))?;
    let mut mtime = TimeSpec::new(i64::try_from(secs).unwrap_or(i64::MAX), 0);
    let mut xattrs = Vec::new();
    if let Some(exts) = e.pax_extensions().map_err(Fail::Stream)? {
        for ext in exts {
            let ext = ext.map_err(|err| Fail::Invalid(format!("bad PAX record: {err}")))?;
            let key = ext.key_bytes();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if name.starts_with(b"trusted.overlay.") {
                    tracing::warn!(
                        "ignoring overlayfs xattr {:?} from a layer",
                        OsStr::from_bytes(name)
                    );
                    continue;
                }
                xattrs.push((
                    OsStr::from_bytes(name).to_os_string(),
                    ext.value_bytes().to_vec(),
                ));
            } else if key == b"mtime" {
                if let Some(t) = ext.value().ok().and_then(parse_pax_time) {
                    mtime = t;
                }
            }
        }
    }
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime,
        xattrs,
    })
}

/// PAX times are decimal seconds with an optional fraction: `1700000000.5`, `-1.25`.
fn parse_pax_time(s: &str) -> Option<TimeSpec> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let negative = int.starts_with('-');
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: i64 = digits.parse().ok()?;
    Some(if negative && nanos > 0 {
        TimeSpec::new(secs - 1, 1_000_000_000 - nanos)
    } else {
        TimeSpec::new(secs, nanos)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let t = parse_pax_time("1700000000.5").unwrap();
        assert_eq!((t.tv_sec(), t.tv_nsec()), (1_700_000_000, 500_000_000));
        let t = parse_pax_time("12").unwrap();
        assert_eq!((t.tv_sec(), t.tv_nsec()), (12, 0));
        let t = parse_pax_time("-1.25").unwrap();
        assert_eq!((t.tv_sec(), t.tv_nsec()), (-2, 750_000_000));
        assert!(parse_pax_time("1.x").is_none());
    }
}
