//! A rootfs assembled from a nestcache store's extracted layers (the annotated path).
//!
//! The layer resolution and the overlay mount are nestcache's own `rootfs` module, shared
//! with the CLI; this file only decides where the per-container dirs live (inside the
//! bundle, so containerd's bundle removal is the last word) and maps errors to one line.

use std::path::{Path, PathBuf};

use crate::bundle::StoreImage;

/// The per-container dir (upper, work, lower links) of a store rootfs.
pub fn container_dir(bundle: &Path) -> PathBuf {
    bundle.join("nestcache")
}

pub fn mount(wanted: &StoreImage, _dir: &Path, _target: &Path) -> Result<(), String> {
    Err(format!(
        "cannot assemble rootfs from store {} image {}: store support is not built yet",
        wanted.store.display(),
        wanted.image
    ))
}

pub fn cleanup(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove {}: {e}", dir.display())),
    }
}
