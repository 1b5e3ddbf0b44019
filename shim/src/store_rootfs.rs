//! A rootfs assembled from a nestcache store's extracted layers (the annotated path).
//!
//! Image resolution, the layer checks and the overlay (short lower links, mount data in
//! a page) are nestcache's own `store` and `rootfs` modules, shared with the CLI; this
//! file decides where the per-container dir lives (inside the bundle, so nothing outlives
//! containerd's bundle removal) and turns failures into one line naming store and image.

use std::path::{Path, PathBuf};

use nestcache::rootfs::{self, Overlay};
use nestcache::store::{LeaseHolder, Store};
use serde::{Deserialize, Serialize};

use crate::bundle::StoreImage;
use containerd_shim::protos::types::mount::Mount;

/// The per-container dir (upper, work, lower links) of a store rootfs.
pub fn container_dir(bundle: &Path) -> PathBuf {
    bundle.join("nestcache")
}

/// The store lease a store-rootfs container holds while it exists (recorded in the
/// bundle, so the `delete` subcommand releases it after a crash too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreLease {
    pub store: PathBuf,
    pub id: String,
}

/// The upper and work dirs of containerd's overlay snapshot mount, if that is what
/// containerd handed over (CRI does: the declared image's snapshot, key = container id).
pub fn snapshot_upper(mounts: &[Mount]) -> Option<(PathBuf, PathBuf)> {
    let [m] = mounts else {
        return None;
    };
    if m.type_ != "overlay" {
        return None;
    }
    let opt = |key: &str| {
        m.options
            .iter()
            .find_map(|o| o.strip_prefix(key))
            .map(PathBuf::from)
    };
    Some((opt("upperdir=")?, opt("workdir=")?))
}

/// Resolves the image in the store, leases it to `holder` (so `store gc` keeps it while
/// the container exists), checks that every layer its manifest lists is extracted, and
/// mounts the overlay at `target` with the links under `dir` and the upper/work dirs of
/// containerd's snapshot (`upper`), else under `dir`. On the snapshot's, what the
/// container writes is what containerd's snapshotter measures: CRI's writable layer.
pub fn mount(
    wanted: &StoreImage,
    lease: &StoreLease,
    holder: &LeaseHolder,
    dir: &Path,
    upper: Option<&(PathBuf, PathBuf)>,
    target: &Path,
) -> Result<(), String> {
    let what = format!("image {} in store {}", wanted.image, wanted.store.display());
    // open_existing: a wrong path must fail, not become an empty new store.
    let store = Store::open_existing(&wanted.store).map_err(|e| format!("{what}: {e}"))?;
    let image = store
        .resolve(&wanted.image, None)
        .map_err(|e| format!("{what}: {e}"))?;
    // The lease checks, under gc's lock, that the manifest is still there; from then on
    // gc keeps it and everything it names.
    if let Err(e) = store.acquire_lease(&lease.id, &image.manifest_digest, holder) {
        if !read_only(&wanted.store) {
            return Err(format!("{what}: lease: {e}"));
        }
        // A store the node mounted read-only has no gc running either.
        log::warn!("{what}: read-only, no lease ({e})");
    }
    // Holds off `store gc` while the layers are looked up and mounted.
    let _lock = match store.writer_lock() {
        Ok(lock) => Some(lock),
        Err(e) => {
            log::warn!("{what}: no gc lock ({e}); going on without it");
            None
        }
    };
    let layers = rootfs::layer_dirs_in(store.layout(), &wanted.image, image.layers())
        .map_err(|e| format!("{what}: {e}"))?;
    // The upper dir goes with the task (bundle) or the container (snapshot): never worth
    // a sync.
    let overlay = match upper {
        Some((upper, work)) => Overlay::prepare_on_upper(dir, &layers, upper, work),
        None => Overlay::prepare(dir, &layers),
    }
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

fn read_only(dir: &Path) -> bool {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false)
}

/// Ends the container's lease (after its rootfs is down). A failure is logged: the lease
/// then stays until `store gc` finds its container gone.
pub fn release(lease: &StoreLease) {
    let released = Store::open_existing(&lease.store).and_then(|s| s.release_lease(&lease.id));
    match released {
        Ok(_) => log::info!("released lease {} in {}", lease.id, lease.store.display()),
        Err(e) => log::warn!(
            "release lease {} in {}: {e}",
            lease.id,
            lease.store.display()
        ),
    }
}

/// Removes the per-container dir; the overlay must be unmounted already.
pub fn cleanup(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove {}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(ty: &str, options: &[&str]) -> Mount {
        Mount {
            type_: ty.into(),
            source: "overlay".into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_upper_of_one_overlay_snapshot_mount() {
        let snap = mount(
            "overlay",
            &[
                "index=off",
                "workdir=/s/2/work",
                "upperdir=/s/2/fs",
                "lowerdir=/s/1/fs",
            ],
        );
        assert_eq!(
            snapshot_upper(std::slice::from_ref(&snap)),
            Some((PathBuf::from("/s/2/fs"), PathBuf::from("/s/2/work")))
        );
        assert_eq!(snapshot_upper(&[]), None);
        assert_eq!(snapshot_upper(&[snap.clone(), snap]), None);
        // A view (no upper) or a bind snapshot: nothing to write into.
        assert_eq!(
            snapshot_upper(&[mount("overlay", &["lowerdir=/s/1/fs"])]),
            None
        );
        assert_eq!(snapshot_upper(&[mount("bind", &["rbind", "rw"])]), None);
    }
}
