//! Looking a path up in the layers beneath, the way overlayfs would see it: the topmost
//! layer that has the path wins; a whiteout, a non-directory on the way, or an opaque
//! directory hides everything further down. Lower layers are finished trees, so plain
//! path lookups with `symlink_metadata` per component are race-free here; a symlink on
//! the way is refused rather than followed (the same rule as inside a layer).
//!
//! [`copy_meta`] is the one sequence that gives an entry a lower file's metadata (copy-up
//! of a hardlink target, parent directories a layer never described).

use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::sys::stat::{fchmodat, utimensat, FchmodatFlags, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, Gid, Uid};

use super::path::RelPath;
use super::tree::{io_err, TreeError, TreeResult};

pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What a lower layer has at a path: its location and `lstat` metadata.
pub struct Found {
    pub path: PathBuf,
    pub meta: Metadata,
}

/// Finds `rel` in `lowers` (ordered bottom → top).
pub fn lookup(lowers: &[PathBuf], rel: &RelPath) -> TreeResult<Option<Found>> {
    if rel.is_root() {
        return Ok(None);
    }
    for layer in lowers.iter().rev() {
        match lookup_in(layer, rel)? {
            InLayer::Found(f) => return Ok(Some(f)),
            InLayer::Hidden => return Ok(None),
            InLayer::Absent => continue,
        }
    }
    Ok(None)
}

enum InLayer {
    Found(Found),
    /// Whited out, shadowed by a non-directory, or below an opaque directory.
    Hidden,
    Absent,
}

fn lookup_in(layer: &Path, rel: &RelPath) -> TreeResult<InLayer> {
    let parts = rel.parts();
    let mut cur = layer.to_path_buf();
    let mut opaque = false;
    for (i, part) in parts.iter().enumerate() {
        cur.push(part);
        let meta = match std::fs::symlink_metadata(&cur) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(if opaque {
                    InLayer::Hidden
                } else {
                    InLayer::Absent
                });
            }
            Err(e) => return Err(io_err(format!("stat lower {}", cur.display()), e)),
        };
        let ft = meta.file_type();
        if is_whiteout(&meta) {
            return Ok(InLayer::Hidden);
        }
        if i + 1 == parts.len() {
            return Ok(InLayer::Found(Found { path: cur, meta }));
        }
        if ft.is_symlink() {
            let at: PathBuf = parts[..=i].iter().collect();
            return Err(TreeError::Unsafe(format!(
                "resolves through symlink {} of a lower layer",
                at.display()
            )));
        }
        if !ft.is_dir() {
            return Ok(InLayer::Hidden);
        }
        opaque = is_opaque(&cur)?;
    }
    Ok(InLayer::Absent)
}

/// An overlay whiteout: a character device with device number 0/0.
pub fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

pub fn is_opaque(dir: &Path) -> TreeResult<bool> {
    match xattr::get(dir, OPAQUE_XATTR) {
        Ok(v) => Ok(v.as_deref() == Some(b"y")),
        Err(e) => Err(io_err(format!("read xattrs of {}", dir.display()), e)),
    }
}

/// Gives `name` in `dir` (the entry `rel`, at `full` on disk) the owner, mode, xattrs and
/// mtime of the lower file `found`. Owner first (chown clears setuid bits and file
/// capabilities), times last (every other change bumps them); a symlink has no mode.
pub fn copy_meta(
    dir: RawFd,
    name: &OsStr,
    rel: &RelPath,
    found: &Found,
    full: &Path,
) -> TreeResult<()> {
    let m = &found.meta;
    fchownat(
        Some(dir),
        name,
        Some(Uid::from_raw(m.uid())),
        Some(Gid::from_raw(m.gid())),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err(format!("chown {rel}"), e))?;
    if !m.file_type().is_symlink() {
        fchmodat(
            Some(dir),
            name,
            Mode::from_bits_truncate(m.mode() & 0o7777),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| io_err(format!("chmod {rel}"), e))?;
    }
    copy_xattrs(&found.path, full)?;
    let t = TimeSpec::new(m.mtime(), m.mtime_nsec());
    utimensat(Some(dir), name, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| io_err(format!("set times of {rel}"), e))
}

/// Copies xattrs from a lower file, except overlayfs' own (an inherited opaque marker or
/// redirect would change what the merged tree shows).
fn copy_xattrs(from: &Path, to: &Path) -> TreeResult<()> {
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
