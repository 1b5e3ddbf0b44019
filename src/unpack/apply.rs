//! Applying one layer's tar stream to a fresh directory, in the form overlayfs reads as a
//! lower layer: whiteouts become 0/0 character devices, opaque markers become the
//! `trusted.overlay.opaque` xattr.
//!
//! The byte stream is inflated on a thread of its own ([`stream::spawn_decoder`]) and
//! hashed as the tar parser reads it; [`super::entry`] writes each entry.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::entry::{Applier, Parents, Step, COPY_BUFFER};
use super::error::{Fail, UnpackError};
use super::lower;
use super::path::RelPath;
use super::pipe::Chunks;
use super::stream::{self, Limits};
use super::tree::Tree;
use super::writers::{self, Writers};
use crate::digest::{Digest, HashingReader};
use crate::error::{Error, IoContext, Result};

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
    let buffered = BufReader::with_capacity(stream::BLOB_BUFFER, blob);
    apply_buffered(buffered, media_type, diff_id, dest, lowers, limits)
}

/// [`apply_layer`] from a blob that buffers itself (a pipe of chunks, a slice): the
/// decompressor reads out of its buffer, with no copy into one of its own.
pub fn apply_buffered<R: BufRead + Send>(
    blob: R,
    media_type: &str,
    diff_id: &Digest,
    dest: &Path,
    lowers: Option<&[PathBuf]>,
    limits: &Limits,
) -> Result<Outcome> {
    // Refuses anything that is not a layer; the compression itself is then taken from
    // the stream's magic bytes, as containerd does (`docker save` labels plain tars gzip).
    crate::image::layer_compression(media_type)?;
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

/// Runs [`apply_entries`] with the small-file writer threads of this layer beside it.
fn extract(
    chunks: Chunks,
    tripped: stream::Tripped,
    diff_id: &Digest,
    dest: &Path,
    lowers: Option<&[PathBuf]>,
    limits: &Limits,
) -> Result<Outcome> {
    let n = writers::per_layer();
    let (tx, shared) = writers::queue(diff_id);
    std::thread::scope(|s| {
        for _ in 0..n {
            s.spawn(|| writers::work(&shared));
        }
        // Dropped on the way out, which ends the writer threads.
        let w = (n > 0).then(|| Writers::new(tx, &shared));
        apply_entries(chunks, tripped, diff_id, dest, lowers, limits, w.as_ref())
    })
}

fn apply_entries(
    chunks: Chunks,
    tripped: stream::Tripped,
    diff_id: &Digest,
    dest: &Path,
    lowers: Option<&[PathBuf]>,
    limits: &Limits,
    writers: Option<&Writers<'_>>,
) -> Result<Outcome> {
    let stream_error = |entry: Option<&Path>, source: io::Error| -> Error {
        let layer = diff_id.clone();
        let entry = entry.map(Path::to_path_buf);
        match tripped.take() {
            Some(tripped) => UnpackError::Guard {
                layer,
                entry,
                tripped,
            },
            None => UnpackError::Stream {
                layer,
                entry,
                source,
            },
        }
        .into()
    };
    let tree = Tree::open(dest).ctx(|| format!("open {}", dest.display()))?;
    let mut ap = Applier {
        tree,
        parents: Parents {
            lowers,
            implicit: Vec::new(),
            depends: false,
            dirs: Vec::new(),
            pending: HashSet::new(),
            made: HashSet::new(),
        },
        buf: vec![0; COPY_BUFFER],
        writers,
    };
    // No buffer in front of the tar parser: the chunks are its buffer (headers are read
    // 512 bytes at a time out of the current chunk, file data straight into `ap.buf`).
    let mut archive = tar::Archive::new(HashingReader::new(chunks));
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
            return Err(UnpackError::TooManyEntries {
                layer: diff_id.clone(),
                entry: name,
                limit: limits.max_entries,
            }
            .into());
        }
        match ap.entry(&mut entry, &name) {
            Ok(Step::Next) => {}
            Ok(Step::NeedsLowers) => return Ok(Outcome::NeedsLowers { entry: name }),
            Err(Fail::Stream(e)) => return Err(stream_error(Some(&name), e)),
            Err(f) => return Err(f.into_error(diff_id, name).into()),
        }
        last = Some(name);
    }
    // The diff_id covers the whole stream, including the end-of-archive blocks and any
    // padding the tar parser stops short of.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| stream_error(last.as_deref(), e))?;
    let (actual, tar_bytes) = rest.finish();
    if actual != *diff_id {
        return Err(UnpackError::DiffIdMismatch {
            layer: diff_id.clone(),
            actual,
            bytes: tar_bytes,
        }
        .into());
    }
    ap.fence()
        .and_then(|()| ap.finish_dirs())
        .map_err(|f| f.into_error(diff_id, PathBuf::from(".")))?;
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
    let mut tree = Tree::open(dest).ctx(|| format!("open {}", dest.display()))?;
    for rel in implicit {
        let res = (|| -> std::result::Result<(), Fail> {
            let Some(found) = lower::lookup(lowers, rel)? else {
                return Ok(());
            };
            if !found.meta.is_dir() {
                return Ok(());
            }
            // Skipped when a later entry replaced it; an I/O error fails the layer.
            let Some(dir) = tree.existing_dir(rel)? else {
                return Ok(());
            };
            let Some((_, name)) = rel.split_last() else {
                return Ok(());
            };
            lower::copy_meta(dir, name, rel, &found, &tree.full_path(rel))?;
            Ok(())
        })();
        res.map_err(|f| f.into_error(diff_id, rel.to_path()))?;
    }
    Ok(true)
}
