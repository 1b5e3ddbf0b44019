//! Staging: copy one image from a [`Source`] into the store, verified and atomic.
//!
//! Order matters for crash safety: config and layers first (in parallel), then the
//! manifest, then the ref in index.json last — so a stage killed at any moment leaves
//! either no ref or a ref whose every blob is present and verified, and a re-run reuses
//! every blob that made it. The whole run holds the gc lock shared. A layer that is
//! neither in the store nor extracted is streamed once from the source into both
//! ([`onepass`]); the others are only ingested, or only extracted from their blob.
//!
//! Before anything is read: every layer's declared size is checked against a limit and
//! the disk's free space against what is still to come; temp files of dead stagers are
//! reclaimed, except partial ingests of this image's blobs, which are resumed.

mod onepass;
mod progress;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use oci_spec::image::Descriptor;
use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{self, PlatformChoice, PlatformSpec, ResolvedImage};
use crate::source::Source;
use crate::store::{
    check_declared_size, lock, validate_ref_name, Ingested, Present, Store, StoreError,
};
use crate::unpack::{clean_stale_tmp, ensure_layers_with, existing_layer, LayerBlob, Limits};
use onepass::OnePass;
use progress::Bars;

/// Default for [`StageOptions::max_layer_size`]: above the largest layers real images
/// carry (CUDA and ML images have single layers of 10+ GiB), far below "fill the disk".
pub const DEFAULT_MAX_LAYER_SIZE: u64 = 32 << 30;

#[derive(Debug, Clone, Default)]
pub struct StageOptions {
    /// Ref name to record (default: the source's own, e.g. its tag).
    pub reference: Option<String>,
    /// Platform to pick from an index (default: the host's).
    pub platform: Option<PlatformSpec>,
    /// Re-hash blobs already present instead of trusting them.
    pub verify_existing: bool,
    /// Only write blobs; do not extract layers.
    pub no_unpack: bool,
    /// Per-layer progress bars on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Bomb guards for extraction.
    pub limits: Limits,
    /// Largest declared layer size accepted (default [`DEFAULT_MAX_LAYER_SIZE`]).
    pub max_layer_size: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub digest: String,
    pub diff_id: String,
    pub media_type: String,
    pub size: u64,
    /// Already in the store, or written meanwhile by a concurrent stager (not rewritten).
    pub reused: bool,
    /// Bytes of a killed stager's partial ingest that were kept (resumed, not re-read).
    pub resumed_from: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub reference: String,
    pub source: String,
    pub store: String,
    pub platform: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<LayerReport>,
    /// Bytes written into blobs/ by this run.
    pub bytes_written: u64,
    /// Bytes found already present (or in a resumed partial ingest).
    pub bytes_reused: u64,
    /// Temp files of dead stagers removed before staging, and their bytes.
    pub reclaimed_temp_files: u64,
    pub reclaimed_temp_bytes: u64,
    pub unpacked: bool,
    pub seconds: f64,
}

/// Stages the image `source` names into `store`. Blocking; call it from a blocking
/// thread in async code.
pub fn stage(store: &Store, source: &dyn Source, opts: &StageOptions) -> Result<StageReport> {
    let started = Instant::now();
    let _gc = lock::lock(&store.layout().gc_lock_file(), false)?;

    let reference = opts
        .reference
        .clone()
        .or_else(|| source.default_ref())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{} names no ref: pass --ref NAME to record the image under",
                source.describe()
            ))
        })?;
    validate_ref_name(&reference)?;

    let root = source.root()?;
    let choice = PlatformChoice::new(opts.platform.clone());
    let img = image::resolve(&root, &choice, &mut |desc, limit| {
        image::read_document(desc, limit, source.open_blob(desc)?)
    })
    .map_err(|e| Error::Other(format!("{}: {e}", source.describe())))?;

    let limit = opts.max_layer_size.unwrap_or(DEFAULT_MAX_LAYER_SIZE);
    for l in img.layers() {
        check_declared_size("layer", &l.digest, l.size(), limit)?;
    }
    let reclaimed = reclaim(store, &img)?;

    let mut total = Written::default();
    total.add(ingest_doc(
        store,
        "config",
        &img.config_digest,
        &img.config_bytes,
        opts.verify_existing,
    )?);
    let layers = stage_layers(store, source, &img, opts)?;
    for l in &layers {
        if l.reused {
            total.reused += l.size;
        } else {
            total.reused += l.resumed_from;
            total.written += l.size - l.resumed_from;
        }
    }
    total.add(ingest_doc(
        store,
        "manifest",
        &img.manifest_digest,
        &img.manifest_bytes,
        opts.verify_existing,
    )?);
    store.set_ref(&reference, &ref_descriptor(&img))?;

    let unpacked = !opts.no_unpack;
    Ok(StageReport {
        reference,
        source: source.describe(),
        store: store.root().display().to_string(),
        platform: img.platform.to_string(),
        manifest_digest: img.manifest_digest.to_string(),
        config_digest: img.config_digest.to_string(),
        layers,
        bytes_written: total.written,
        bytes_reused: total.reused,
        reclaimed_temp_files: reclaimed.entries,
        reclaimed_temp_bytes: reclaimed.bytes,
        unpacked,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The descriptor recorded in index.json: the manifest's, with its platform, and without
/// annotations that belonged to the source's index (set_ref adds the ref name).
fn ref_descriptor(img: &ResolvedImage) -> Descriptor {
    let mut d = Descriptor::new(
        img.manifest_descriptor.media_type().clone(),
        img.manifest_bytes.len() as u64,
        image::oci_digest(&img.manifest_digest),
    );
    d.set_platform(img.platform.to_oci().ok());
    d
}

/// Bytes written and reused by a run.
#[derive(Debug, Default)]
struct Written {
    written: u64,
    reused: u64,
}

impl Written {
    fn add(&mut self, o: Written) {
        self.written += o.written;
        self.reused += o.reused;
    }
}

/// Removes what dead stagers left in `ingest/`, `.nestcache/` and `layers/tmp/` (their
/// locks are gone), keeping partial ingests of this image's blobs to resume them.
fn reclaim(store: &Store, img: &ResolvedImage) -> Result<crate::store::temp::Reclaimed> {
    let mut mine: Vec<Digest> = img.layers().iter().map(|l| l.digest.clone()).collect();
    mine.push(img.config_digest.clone());
    mine.push(img.manifest_digest.clone());
    let mut r = store.reclaim_temp(&mine)?;
    r.add(clean_stale_tmp(store.layout()));
    if r.entries > 0 {
        tracing::info!(
            "reclaimed {} temp files of dead stagers ({} bytes)",
            r.entries,
            r.bytes
        );
    }
    Ok(r)
}

/// How a blob found present with the right size is treated: with `verify`, it is there
/// because it failed verification, and is replaced.
fn present_policy(verify: bool) -> Present {
    if verify {
        Present::Replace
    } else {
        Present::Reuse
    }
}

/// Ingests a document held in memory unless present (and verified, with `verify`).
fn ingest_doc(
    store: &Store,
    what: &str,
    digest: &Digest,
    bytes: &[u8],
    verify: bool,
) -> Result<Written> {
    let size = bytes.len() as u64;
    if ensure_present(store, digest, size, verify)? {
        return Ok(Written {
            written: 0,
            reused: size,
        });
    }
    let got = store.ingest_from(
        what,
        digest,
        size,
        present_policy(verify),
        &mut |off| Ok(Box::new(&bytes[off.min(size) as usize..])),
        &mut |_| {},
    )?;
    Ok(if got.by_other {
        Written {
            written: 0,
            reused: size,
        }
    } else {
        Written {
            written: size - got.resumed_from,
            reused: got.resumed_from,
        }
    })
}

/// Refuses to start when the store's disk has less room than the layers still to come
/// (a partial ingest's bytes already count).
fn check_room(store: &Store, img: &ResolvedImage, todo: &[usize]) -> Result<()> {
    let layers = img.layers();
    let needed: u64 = todo
        .iter()
        .map(|&i| {
            let l = &layers[i];
            l.size() - store.partial_len(&l.digest).min(l.size())
        })
        .sum();
    store.check_space(
        &format!(
            "{} layers of image {} ({} bytes declared)",
            todo.len(),
            img.manifest_digest,
            todo.iter().map(|&i| layers[i].size()).sum::<u64>()
        ),
        needed,
    )
}

/// Whether a blob is already present and can be trusted. A present blob of the wrong size
/// (or, with `verify`, the wrong content) is not: it is re-ingested, replacing it by rename.
fn ensure_present(store: &Store, digest: &Digest, size: u64, verify: bool) -> Result<bool> {
    match store.blob_size(digest) {
        Some(s) if s == size => {
            if verify {
                store.verify_blob(digest, size)
            } else {
                Ok(true)
            }
        }
        _ => Ok(false),
    }
}

/// Brings every layer's blob into the store, and (unless `no_unpack`) its extracted
/// tree: a layer missing both goes through one pass, a layer whose tree is there is only
/// ingested, a blob already there is only extracted.
fn stage_layers(
    store: &Store,
    source: &dyn Source,
    img: &ResolvedImage,
    opts: &StageOptions,
) -> Result<Vec<LayerReport>> {
    let layers = img.layers();
    let unpack = !opts.no_unpack;
    let mut reports = Vec::with_capacity(layers.len());
    let (mut ingest_only, mut one_pass): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    for (i, layer) in layers.iter().enumerate() {
        let reused = ensure_present(store, &layer.digest, layer.size(), opts.verify_existing)?;
        reports.push(LayerReport {
            digest: layer.digest.to_string(),
            diff_id: layer.diff_id.to_string(),
            media_type: layer.media_type(),
            size: layer.size(),
            reused,
            resumed_from: 0,
        });
        let extracted =
            !unpack || existing_layer(store.layout(), &layer.diff_id, &layer.chain_id).is_some();
        match (reused, extracted) {
            (true, _) => {}
            (false, true) => ingest_only.push(i),
            (false, false) => one_pass.push(i),
        }
    }
    // A blob that one of its positions needs extracted goes through one pass.
    ingest_only.retain(|&i| {
        !one_pass
            .iter()
            .any(|&j| layers[j].digest == layers[i].digest)
    });
    let todo: Vec<usize> = ingest_only.iter().chain(&one_pass).copied().collect();
    if !todo.is_empty() {
        check_room(store, img, &todo)?;
    }
    let bars = Bars::new(opts.progress);
    let mut got = ingest_layers(store, source, img, &ingest_only, opts, &bars)?;
    if unpack {
        got.extend(unpack_layers(store, source, img, &one_pass, opts, &bars)?);
    }
    for (report, layer) in reports.iter_mut().zip(layers) {
        if let Some(g) = got.get(&layer.digest) {
            report.reused = g.by_other;
            report.resumed_from = g.resumed_from;
        }
    }
    Ok(reports)
}

/// Extracts every layer not extracted yet: those of `one_pass` (blob missing) streamed
/// from the source as they are ingested, the rest from their blobs in the store. Returns
/// what each ingest did, by digest.
fn unpack_layers(
    store: &Store,
    source: &dyn Source,
    img: &ResolvedImage,
    one_pass: &[usize],
    opts: &StageOptions,
    bars: &Bars,
) -> Result<HashMap<Digest, crate::store::Ingested>> {
    let layers = img.layers();
    let claimed: Vec<_> = one_pass.iter().map(|&i| &layers[i]).collect();
    let feed = OnePass::claim(
        store,
        source,
        bars,
        &claimed,
        present_policy(opts.verify_existing),
    )?;
    let blobs: Vec<LayerBlob> = layers.iter().map(LayerBlob::from).collect();
    ensure_layers_with(store.layout(), &blobs, &opts.limits, &feed)?;
    feed.finish()
}

/// Ingests the layers `todo` (blob only), up to `source.parallelism()` at once. The
/// first failure stops workers from starting new layers and is returned.
fn ingest_layers(
    store: &Store,
    source: &dyn Source,
    img: &ResolvedImage,
    todo: &[usize],
    opts: &StageOptions,
    bars: &Bars,
) -> Result<HashMap<Digest, Ingested>> {
    let layers = img.layers();
    if todo.is_empty() {
        return Ok(HashMap::new());
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let done: Mutex<HashMap<Digest, Ingested>> = Mutex::new(HashMap::new());
    let present = present_policy(opts.verify_existing);
    let workers = source.parallelism().clamp(1, 8).min(todo.len());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                if failed.load(Ordering::SeqCst) {
                    break;
                }
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&i) = todo.get(k) else { break };
                let desc = &layers[i].descriptor;
                let digest = &layers[i].digest;
                let bar = bars.start(digest, desc.size());
                let res = store.ingest_from(
                    "layer",
                    digest,
                    desc.size(),
                    present,
                    &mut |off| Ok(source.open_blob_at(desc, off)? as Box<dyn std::io::Read>),
                    &mut |n| bar.inc(n),
                );
                bar.finish_and_clear();
                match res {
                    Ok(got) => {
                        done.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(digest.clone(), got);
                    }
                    Err(e) => {
                        failed.store(true, Ordering::SeqCst);
                        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        slot.get_or_insert(e);
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        // Typed refusals (size, space) keep their type; the rest gets the source's name.
        return Err(match e {
            e @ Error::Store(StoreError::BlobTooLarge { .. } | StoreError::NoSpace { .. }) => e,
            e => Error::Other(format!("{}: {e}", source.describe())),
        });
    }
    Ok(done.into_inner().unwrap_or_else(|p| p.into_inner()))
}
