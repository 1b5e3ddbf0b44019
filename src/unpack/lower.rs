//! Looking a path up in the layers beneath, the way overlayfs would see it: the topmost
//! layer that has the path wins; a whiteout, a non-directory on the way, or an opaque
//! directory hides everything further down. Lower layers are finished trees, so plain
//! path lookups with `symlink_metadata` per component are race-free here; a symlink on
//! the way is refused rather than followed (the same rule as inside a layer).

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

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
