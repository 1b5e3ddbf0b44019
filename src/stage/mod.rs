//! Staging: copy one image from a [`Source`] into the store, verified and atomic.
//!
//! Order matters for crash safety: config and layers first (in parallel), then the
//! manifest, then the ref in index.json last — so a stage killed at any moment leaves
//! either no ref or a ref whose every blob is present and verified, and a re-run reuses
//! every blob that made it. The whole run holds the gc lock shared.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use oci_spec::image::Descriptor;
use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{self, PlatformChoice, PlatformSpec, ResolvedImage};
use crate::source::Source;
use crate::store::{lock, validate_ref_name, Store};
use crate::unpack::{ensure_unpacked, Limits};

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
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub digest: String,
    pub diff_id: String,
    pub media_type: String,
    pub size: u64,
    /// Already in the store (not rewritten).
    pub reused: bool,
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
    /// Bytes found already present.
    pub bytes_reused: u64,
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

    let mut bytes_written = 0;
    let mut bytes_reused = 0;
    let config_size = img.config_bytes.len() as u64;
    if ensure_present(store, &img.config_digest, config_size, opts.verify_existing)? {
        bytes_reused += config_size;
    } else {
        store.ingest_bytes("config", &img.config_digest, &img.config_bytes)?;
        bytes_written += config_size;
    }

    let layers = ingest_layers(store, source, &img, opts)?;
    for l in &layers {
        if l.reused {
            bytes_reused += l.size;
        } else {
            bytes_written += l.size;
        }
    }

    let manifest_size = img.manifest_bytes.len() as u64;
    if ensure_present(
        store,
        &img.manifest_digest,
        manifest_size,
        opts.verify_existing,
    )? {
        bytes_reused += manifest_size;
    } else {
        store.ingest_bytes("manifest", &img.manifest_digest, &img.manifest_bytes)?;
        bytes_written += manifest_size;
    }
    store.set_ref(&reference, &ref_descriptor(&img))?;

    let unpacked = !opts.no_unpack;
    if unpacked {
        ensure_unpacked(store, &img, &opts.limits)?;
    }

    Ok(StageReport {
        reference,
        source: source.describe(),
        store: store.root().display().to_string(),
        platform: img.platform.to_string(),
        manifest_digest: img.manifest_digest.to_string(),
        config_digest: img.config_digest.to_string(),
        layers,
        bytes_written,
        bytes_reused,
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

/// Ingests every layer not present, up to `source.parallelism()` at once. The first
/// failure stops workers from starting new layers and is returned.
fn ingest_layers(
    store: &Store,
    source: &dyn Source,
    img: &ResolvedImage,
    opts: &StageOptions,
) -> Result<Vec<LayerReport>> {
    let layers = img.layers();
    let mut reports = Vec::with_capacity(layers.len());
    let mut todo = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let reused = ensure_present(store, &layer.digest, layer.size(), opts.verify_existing)?;
        reports.push(LayerReport {
            digest: layer.digest.to_string(),
            diff_id: layer.diff_id.to_string(),
            media_type: layer.media_type(),
            size: layer.size(),
            reused,
        });
        // The same layer may appear twice in one image: ingest it once.
        if !reused
            && !todo
                .iter()
                .any(|&j: &usize| layers[j].digest == layer.digest)
        {
            todo.push(i);
        }
    }
    if todo.is_empty() {
        return Ok(reports);
    }

    let multi =
        MultiProgress::with_draw_target(if opts.progress && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());

    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
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
                let bar = multi.add(ProgressBar::new(desc.size()));
                bar.set_style(style.clone());
                bar.set_prefix(digest.short().to_string());
                let res = source.open_blob(desc).and_then(|mut r| {
                    store.ingest("layer", digest, desc.size(), &mut r, &mut |n| bar.inc(n))
                });
                bar.finish_and_clear();
                if let Err(e) = res {
                    failed.store(true, Ordering::SeqCst);
                    let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(e);
                    break;
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(Error::Other(format!("{}: {e}", source.describe()))),
        None => Ok(reports),
    }
}
