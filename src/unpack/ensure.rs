//! Extracting the layers of an image that are not extracted yet, in parallel, and
//! publishing each complete tree by rename.
//!
//! Order of work: (1) cheap lookup of published trees (a directory exists only once
//! complete, so no re-hash); (2) every missing layer extracts at once, one per core, with
//! its lowers unknown; (3) one `syncfs` and a rename per independent tree into
//! `layers/diff/<diff_id>`; (4) bottom → top, layers that turned out to depend on the
//! layers beneath are finished (or re-extracted, for hardlinks into lower layers) against
//! the now-published lowers and published under `layers/chain/<chain_id>`.
//!
//! Each extraction works in its own `layers/tmp/unpack-<random>/` directory holding an
//! flock for its lifetime ([`crate::store::temp`]); a tmp directory whose lock can be
//! taken belongs to a dead process and is removed, however young. A concurrent process that published the same layer first wins; ours is dropped.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::apply::{apply_layer, discard, finish_with_lowers, LayerStats, Outcome};
use super::error::UnpackError;
use super::stream::Limits;
use crate::digest::{chain_ids, Digest};
use crate::error::{Error, IoContext, Result};
use crate::image::{Layer, ResolvedImage};
use crate::layout::ContentLayout;
use crate::store::{temp, Store};

/// One layer of an image: its blob and the diff_id the image config gives it.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub digest: Digest,
    pub media_type: String,
    pub diff_id: Digest,
}

impl From<&Layer> for LayerBlob {
    fn from(l: &Layer) -> Self {
        LayerBlob {
            digest: l.digest.clone(),
            media_type: l.media_type(),
            diff_id: l.diff_id.clone(),
        }
    }
}

/// Makes sure every layer of a resolved image is extracted in `store`; returns the layer
/// directories bottom → top. Holds the store's gc lock (shared) meanwhile, so `store gc`
/// never removes a work dir or a layer under an extraction.
pub fn ensure_unpacked(
    store: &Store,
    img: &ResolvedImage,
    limits: &Limits,
) -> Result<Vec<PathBuf>> {
    let layers: Vec<LayerBlob> = img.layers().iter().map(LayerBlob::from).collect();
    let _gc = store.writer_lock()?;
    ensure_layers(store.layout(), &layers, limits)
}

/// The published tree of a layer, if any: by diff_id (independent) or by chain id.
pub fn existing_layer(
    layout: &ContentLayout,
    diff_id: &Digest,
    chain_id: &Digest,
) -> Option<PathBuf> {
    [
        layout.layer_by_diff_id(diff_id),
        layout.layer_by_chain_id(chain_id),
    ]
    .into_iter()
    .find(|p| p.is_dir())
}

/// Where [`ensure_layers_with`] gets each missing layer's bytes, and what it does as it
/// publishes one: the store's blobs ([`StoreBlobs`]), or, while staging, the source's
/// stream as it is ingested (one pass: the blob is published together with its layer).
pub trait Feed: Sync {
    /// The first extraction of `layer` into `dest` (which must not exist yet); `lowers`
    /// as [`apply_layer`] takes them.
    fn extract(
        &self,
        layer: &LayerBlob,
        dest: &Path,
        lowers: Option<&[PathBuf]>,
        limits: &Limits,
    ) -> Result<Outcome>;

    /// The verified blob file to read `layer` from again, once its lowers are known.
    fn blob_path(&self, layer: &LayerBlob) -> PathBuf;

    /// Called right before `layer`'s complete, synced tree is renamed into place.
    fn publishing(&self, layer: &LayerBlob) -> Result<()>;
}

/// The [`Feed`] of layers whose blobs are in the store already.
pub struct StoreBlobs<'a>(pub &'a ContentLayout);

impl Feed for StoreBlobs<'_> {
    fn extract(
        &self,
        layer: &LayerBlob,
        dest: &Path,
        lowers: Option<&[PathBuf]>,
        limits: &Limits,
    ) -> Result<Outcome> {
        apply_from_file(
            self.0,
            layer,
            &self.0.blob(&layer.digest),
            dest,
            lowers,
            limits,
        )
    }

    fn blob_path(&self, layer: &LayerBlob) -> PathBuf {
        self.0.blob(&layer.digest)
    }

    fn publishing(&self, _: &LayerBlob) -> Result<()> {
        Ok(())
    }
}

/// Makes sure every layer is extracted; returns the layer directories bottom → top.
pub fn ensure_layers(
    layout: &ContentLayout,
    layers: &[LayerBlob],
    limits: &Limits,
) -> Result<Vec<PathBuf>> {
    ensure_layers_with(layout, layers, limits, &StoreBlobs(layout))
}

/// [`ensure_layers`], reading the missing layers through `feed`.
pub fn ensure_layers_with(
    layout: &ContentLayout,
    layers: &[LayerBlob],
    limits: &Limits,
    feed: &dyn Feed,
) -> Result<Vec<PathBuf>> {
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let chains = chain_ids(&diff_ids);
    let mut dirs: Vec<Option<PathBuf>> = (0..layers.len())
        .map(|i| existing_layer(layout, &diff_ids[i], &chains[i]))
        .collect();
    if dirs.iter().all(Option::is_some) {
        return Ok(dirs.into_iter().flatten().collect());
    }
    prepare_dirs(layout)?;
    clean_stale_tmp(layout);

    // (2) Extract every missing layer at once, lowers unknown (except for the bottom one).
    let missing: Vec<usize> = (0..layers.len()).filter(|&i| dirs[i].is_none()).collect();
    let mut results = extract_parallel(layout, layers, &missing, limits, feed)?;

    // (3) Publish the independent trees.
    sync_layers(layout)?;
    for (i, r) in results.iter_mut() {
        if let Extracted::Done(work, stats) = r {
            if !stats.depends_on_lowers && (*i == 0 || stats.implicit_dirs.is_empty()) {
                feed.publishing(&layers[*i])?;
                dirs[*i] = Some(publish(work, &layout.layer_by_diff_id(&stats.diff_id))?);
            }
        }
    }

    // (4) The rest, bottom → top, against their published lowers.
    for (i, r) in results {
        if dirs[i].is_some() {
            continue;
        }
        // A duplicate of a layer published meanwhile (the same diff_id twice in one image).
        if let Some(p) = existing_layer(layout, &diff_ids[i], &chains[i]) {
            dirs[i] = Some(p);
            continue;
        }
        let lowers: Vec<PathBuf> = dirs[..i]
            .iter()
            .map(|d| d.clone().expect("lower layers are published first"))
            .collect();
        let (work, depends) = match r {
            Extracted::Done(work, stats) => {
                let depends = finish_with_lowers(
                    &work.tree(),
                    &stats.implicit_dirs,
                    &lowers,
                    &stats.diff_id,
                )?;
                (work, depends || stats.depends_on_lowers)
            }
            Extracted::NeedsLowers(_) => {
                let work = WorkDir::new(layout)?;
                let blob = feed.blob_path(&layers[i]);
                match apply_from_file(
                    layout,
                    &layers[i],
                    &blob,
                    &work.tree(),
                    Some(&lowers),
                    limits,
                )? {
                    Outcome::Done(stats) => (work, stats.depends_on_lowers),
                    Outcome::NeedsLowers { entry } => {
                        return Err(UnpackError::NeedsLowersAgain {
                            layer: layers[i].diff_id.clone(),
                            entry,
                        }
                        .into())
                    }
                }
            }
        };
        sync_layers(layout)?;
        feed.publishing(&layers[i])?;
        let dest = if depends {
            layout.layer_by_chain_id(&chains[i])
        } else {
            layout.layer_by_diff_id(&diff_ids[i])
        };
        dirs[i] = Some(publish(&work, &dest)?);
    }
    Ok(dirs
        .into_iter()
        .map(|d| d.expect("every layer is published"))
        .collect())
}

enum Extracted {
    Done(WorkDir, LayerStats),
    NeedsLowers(#[allow(dead_code)] PathBuf),
}

/// Runs the extractions on up to one thread per core. The first failure stops new work
/// from starting; failures are reported for the lowest layer that failed.
fn extract_parallel(
    layout: &ContentLayout,
    layers: &[LayerBlob],
    todo: &[usize],
    limits: &Limits,
    feed: &dyn Feed,
) -> Result<Vec<(usize, Extracted)>> {
    // The same diff_id may appear more than once in an image: extract it once.
    let mut unique: Vec<usize> = Vec::new();
    for &i in todo {
        if !unique
            .iter()
            .any(|&j| layers[j].diff_id == layers[i].diff_id)
        {
            unique.push(i);
        }
    }
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(unique.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let out: Mutex<Vec<(usize, Result<Extracted>)>> = Mutex::new(Vec::new());
    let (stop_flusher, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(|| write_back_early(layout, stopped));
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            handles.push(s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = unique.get(k) else { break };
                let lowers: Option<&[PathBuf]> = if i == 0 { Some(&[]) } else { None };
                let r = WorkDir::new(layout).and_then(|work| {
                    Ok(
                        match feed.extract(&layers[i], &work.tree(), lowers, limits)? {
                            Outcome::Done(stats) => Extracted::Done(work, stats),
                            Outcome::NeedsLowers { entry } => Extracted::NeedsLowers(entry),
                        },
                    )
                });
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                out.lock().unwrap_or_else(|p| p.into_inner()).push((i, r));
            }));
        }
        for h in handles {
            if let Err(panic) = h.join() {
                // Unwinding drops `stop_flusher` too, so the scope can end.
                std::panic::resume_unwind(panic);
            }
        }
        drop(stop_flusher);
    });
    let mut out = out.into_inner().unwrap_or_else(|p| p.into_inner());
    out.sort_by_key(|(i, _)| *i);
    let mut done = Vec::with_capacity(out.len());
    for (i, r) in out {
        done.push((i, r?));
    }
    // Duplicates of a unique layer come after it (bottom → top), and find it published.
    for &i in todo {
        if !unique.contains(&i) {
            done.push((i, Extracted::NeedsLowers(PathBuf::new())));
        }
    }
    done.sort_by_key(|(i, _)| *i);
    Ok(done)
}

/// Extracts `layer` from the blob file at `path` (in the store, or a verified ingest).
fn apply_from_file(
    layout: &ContentLayout,
    layer: &LayerBlob,
    path: &Path,
    dest: &Path,
    lowers: Option<&[PathBuf]>,
    limits: &Limits,
) -> Result<Outcome> {
    let blob = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => UnpackError::BlobMissing {
            blob: layer.digest.clone(),
            layer: layer.diff_id.clone(),
            store: layout.root().to_path_buf(),
        }
        .into(),
        _ => Error::io(format!("open blob {}", path.display()), e),
    })?;
    tracing::debug!(
        "extracting layer {} from blob {}",
        layer.diff_id,
        layer.digest
    );
    apply_layer(
        blob,
        &layer.media_type,
        &layer.diff_id,
        dest,
        lowers,
        limits,
    )
}

/// `layers/tmp/unpack-<random>/`, locked while this process works in it, removed on drop
/// (or by a SIGINT/SIGTERM handler through [`temp::remove_live`]).
struct WorkDir {
    dir: temp::LockedDir,
}

impl WorkDir {
    fn new(layout: &ContentLayout) -> Result<WorkDir> {
        Ok(WorkDir {
            dir: temp::LockedDir::new(&layout.layers_tmp_dir(), "unpack-")?,
        })
    }

    /// Where the layer's tree is extracted (created by `apply_layer`).
    fn tree(&self) -> PathBuf {
        self.dir.path().join("tree")
    }
}

/// Moves a finished tree into place. If another process published the same layer first,
/// theirs is kept and ours is dropped with the work dir.
fn publish(work: &WorkDir, dest: &Path) -> Result<PathBuf> {
    match std::fs::rename(work.tree(), dest) {
        Ok(()) => Ok(dest.to_path_buf()),
        Err(e)
            if dest.is_dir()
                && matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) =>
        {
            discard(&work.tree());
            Ok(dest.to_path_buf())
        }
        Err(e) => Err(Error::io(
            format!("publish layer into {}", dest.display()),
            e,
        )),
    }
}

fn prepare_dirs(layout: &ContentLayout) -> Result<()> {
    for d in [
        layout.layers_tmp_dir(),
        layout.layers_dir().join("diff"),
        layout.layers_dir().join("chain"),
    ] {
        std::fs::create_dir_all(&d).ctx(|| format!("create {}", d.display()))?;
    }
    Ok(())
}

/// Removes work dirs left by processes that died mid-extraction (their flock is gone);
/// a creator re-checks its dir once locked, so even a brand-new one is never taken from a
/// live process. Failures are logged: what is left is retried next time.
pub fn clean_stale_tmp(layout: &ContentLayout) -> temp::Reclaimed {
    let mut total = temp::Reclaimed::default();
    let Ok(entries) = std::fs::read_dir(layout.layers_tmp_dir()) else {
        return total;
    };
    for entry in entries.flatten() {
        match temp::if_dead(&entry.path(), temp::remove_dead) {
            Ok(Some(r)) => total.add(r),
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
    total
}

/// How often the disk is asked to start writing what extraction has written so far.
const WRITE_BACK_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Keeps the disk busy while layers extract: a `syncfs` every [`WRITE_BACK_EVERY`] until
/// `stop` hangs up. Without it nothing reaches the disk before the final `syncfs` (dirty
/// pages stay under the kernel's background threshold), which then waits for the whole
/// image at disk speed after the CPU work is done; with it, that wait overlaps inflating
/// and only the last fraction is left. Errors are left to the final, checked `syncfs`.
fn write_back_early(layout: &ContentLayout, stop: std::sync::mpsc::Receiver<()>) {
    let Ok(dir) = File::open(layout.layers_dir()) else {
        return;
    };
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(WRITE_BACK_EVERY)
    {
        let _ = nix::unistd::syncfs(dir.as_raw_fd());
    }
}

/// One `syncfs` makes every extracted tree durable before any is published, instead of
/// an fsync per file: a published tree must never turn out empty after a crash.
fn sync_layers(layout: &ContentLayout) -> Result<()> {
    let dir = layout.layers_dir();
    let f = File::open(&dir).ctx(|| format!("open {}", dir.display()))?;
    nix::unistd::syncfs(f.as_raw_fd())
        .map_err(|e| Error::io(format!("syncfs {}", dir.display()), e.into()))
}
