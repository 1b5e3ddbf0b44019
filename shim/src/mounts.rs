//! The container's root filesystem: containerd's snapshot mounts, or an image assembled
//! from a nestcache store, mounted at `<bundle>/rootfs` — and taken down again.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use log::{info, warn};

use crate::bundle::{self, Record, Spec};
use crate::image_config;
use crate::store_rootfs::{self, StoreLease};
use crate::timing::timed;
use nestcache::fsutil::{self, Unmounted};
use nestcache::store::LeaseHolder;

pub fn rootfs_dir(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

/// Mounts the rootfs for a new container. `record` is updated and saved *before* each
/// mount, so a shim killed half-way still leaves enough behind for `delete` to undo it.
pub fn setup(
    bundle: &Path,
    mounts: &[Mount],
    spec: &Spec,
    record: &mut Record,
    holder: &LeaseHolder,
) -> Result<(), String> {
    let target = rootfs_dir(bundle);
    if let Some(wanted) = spec.store_image()? {
        // CRI always hands over the declared image's snapshot: the annotations win for
        // the layers, and the snapshot's upper dir takes the container's writes.
        let upper = store_rootfs::snapshot_upper(mounts);
        if !mounts.is_empty() {
            info!(
                "rootfs from store {} image {}; of {} snapshot mount(s) from containerd, {}",
                wanted.store.display(),
                wanted.image,
                mounts.len(),
                if upper.is_some() {
                    "the upper dir is used"
                } else {
                    "none is used"
                }
            );
        }
        let dir = store_rootfs::container_dir(bundle);
        let lease = StoreLease {
            store: wanted.store.clone(),
            id: holder.lease_id("shim"),
        };
        record.rootfs_mounted = true;
        record.store_dir = Some(dir.clone());
        record.lease = Some(lease.clone());
        record.save(bundle).map_err(|e| e.to_string())?;
        mkdir_rootfs(&target)?;
        store_rootfs::mount(&wanted, &lease, holder, &dir, upper.as_ref(), &target)?;
        image_config::apply(bundle, &spec.annotations, &wanted)?;
        return bundle::set_root_to_bundle_rootfs(bundle);
    }
    if mounts.is_empty() {
        return Ok(());
    }
    record.rootfs_mounted = true;
    record.save(bundle).map_err(|e| e.to_string())?;
    mkdir_rootfs(&target)?;
    for m in mounts {
        containerd_shim::mount::mount_rootfs(
            Some(m.type_.as_str()).filter(|t| !t.is_empty()),
            Some(m.source.as_str()).filter(|s| !s.is_empty()),
            &m.options,
            &target,
        )
        .map_err(|e| {
            format!(
                "mount {} {} at {}: {e}",
                m.type_,
                m.source,
                target.display()
            )
        })?;
    }
    Ok(())
}

fn mkdir_rootfs(target: &Path) -> Result<(), String> {
    match std::fs::create_dir(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("create {}: {e}", target.display())),
    }
}

/// Unmounts everything at `target` (stacked mounts included). Not mounted is fine.
pub fn unmount_all(target: &Path) -> Result<(), String> {
    for _ in 0..64 {
        match fsutil::unmount(target) {
            Ok(Unmounted::NotMounted) => return Ok(()),
            Ok(Unmounted::Yes) => {}
            Ok(Unmounted::Detached) => warn!("{} busy; detached", target.display()),
            Err(e) => return Err(format!("unmount {}: {e}", target.display())),
        }
    }
    Err(format!(
        "unmount {}: still mounted after 64 unmounts",
        target.display()
    ))
}

/// Undoes `setup` from its record: unmount the rootfs, remove a store rootfs's
/// per-container dir, release its store lease. Safe to call twice and after a crash.
pub fn teardown(bundle: &Path, record: Option<&Record>) -> Result<(), String> {
    // containerd's contract: delete must leave bundle/rootfs unmounted, whatever the
    // record says (it may be missing when the shim died early). No dir, no mount.
    let target = rootfs_dir(bundle);
    let id = bundle.file_name().unwrap_or_default().to_string_lossy();
    if target.exists() {
        timed("unmount", &id, || unmount_all(&target))?;
    }
    if let Some(dir) = record.and_then(|r| r.store_dir.as_deref()) {
        timed("remove-upper", &id, || store_rootfs::cleanup(dir))?;
    }
    if let Some(lease) = record.and_then(|r| r.lease.as_ref()) {
        timed("release-lease", &id, || store_rootfs::release(lease));
    }
    Ok(())
}
