//! A rootfs assembled from a nestcache store's extracted layers (the annotated path).
//!
//! Image resolution, the layer checks and the overlay (short lower links, mount data in
//! a page) are nestcache's own `store` and `rootfs` modules, shared with the CLI; this
//! file decides where the per-container dir lives (inside the bundle, so nothing outlives
//! containerd's bundle removal) and turns failures into one line naming store and image.

use std::path::{Path, PathBuf};

use nestcache::rootfs::{self, Overlay};
use nestcache::store::Store;

use crate::bundle::StoreImage;

/// The per-container dir (upper, work, lower links) of a store rootfs.
pub fn container_dir(bundle: &Path) -> PathBuf {
    bundle.join("nestcache")
}

/// Resolves the image in the store, checks that every layer its manifest lists is
/// extracted, and mounts the overlay at `target` with upper/work under `dir`.
pub fn mount(wanted: &StoreImage, dir: &Path, target: &Path) -> Result<(), String> {
    let what = format!("image {} in store {}", wanted.image, wanted.store.display());
    // open_existing: a wrong path must fail, not become an empty new store.
    let store = Store::open_existing(&wanted.store).map_err(|e| format!("{what}: {e}"))?;
    // Holds off `store gc` while the layers are looked up and mounted. A store the node
    // mounted read-only cannot take the lock file, and then has no gc running either.
    let _lock = match store.writer_lock() {
        Ok(lock) => Some(lock),
        Err(e) => {
            log::warn!("{what}: no gc lock ({e}); going on without it");
            None
        }
    };
    let image = store
        .resolve(&wanted.image, None)
        .map_err(|e| format!("{what}: {e}"))?;
    let layers = rootfs::layer_dirs_in(store.layout(), &wanted.image, image.layers())
        .map_err(|e| format!("{what}: {e}"))?;
    // The upper dir lives in the bundle and goes with the task: never worth a sync.
    let overlay = Overlay::prepare(dir, &layers)
        .map_err(|e| format!("{what}: {e}"))?
        .volatile(true);
    if let Err(e) = overlay.mount(target) {
        let _ = overlay.remove();
        return Err(format!("{what}: {e}"));
    }
    log::info!(
        "rootfs of {} ({} layers) mounted at {}",
        image.manifest_digest,
        layers.len(),
        target.display()
    );
    Ok(())
}

/// Removes the per-container dir; the overlay must be unmounted already.
pub fn cleanup(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove {}: {e}", dir.display())),
    }
}
