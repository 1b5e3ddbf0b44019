//! `store gc`: removes blobs no ref or lease reaches, extracted layers no reachable
//! image uses, and temp files of interrupted writes. Holds the gc lock exclusively, so no stage or
//! unpack is running meanwhile and everything in `ingest/` and `layers/tmp/` is stale.

use std::fs;
use std::path::Path;

use serde::Serialize;

use super::{lock, sync_dir, Lease, Store, StoreError};
use crate::digest::Digest;
use crate::error::{IoContext, Result};

#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub blobs_removed: u64,
    pub bytes_freed: u64,
    pub layers_removed: u64,
    pub temp_files_removed: u64,
    /// Leases kept as roots (their containers may still run).
    pub leases_kept: u64,
    /// Leases ended because their containers are gone.
    pub leases_reclaimed: u64,
}

impl Store {
    /// Collects what no ref and no lease reaches; every lease is kept.
    pub fn gc(&self) -> Result<GcReport> {
        self.gc_reclaiming(&[])
    }

    /// Like [`Store::gc`], but first ends the leases in `stale` that are still recorded
    /// exactly as given (same id, acquisition time and creator: a lease taken again
    /// meanwhile is kept). The caller puts a lease there only once containerd confirmed
    /// its container is gone and its creator has exited.
    pub fn gc_reclaiming(&self, stale: &[Lease]) -> Result<GcReport> {
        let _gc = lock::lock(&self.layout().gc_lock_file(), true)?;
        let mut report = GcReport::default();
        let mut roots = self.index_roots()?;
        for lease in self.leases()? {
            if stale.contains(&lease) {
                self.release_lease(&lease.id)?;
                report.leases_reclaimed += 1;
            } else {
                roots.push((lease.descriptor(), format!("lease {}", lease.id)));
                report.leases_kept += 1;
            }
        }
        let reach = self.reach_from(roots, None)?;
        // A reachable document we cannot read might reach blobs we cannot see: deleting
        // anything then could delete what a ref needs, so refuse instead.
        let is_document = |t: &str| {
            crate::image::DocKind::of(t).is_some()
                || t == crate::image::OCI_CONFIG
                || t == crate::image::DOCKER_CONFIG
        };
        if let Some(p) = reach.problems.iter().find(|p| is_document(&p.media_type)) {
            return Err(StoreError::GcRefused {
                problem: Box::new(p.into()),
            }
            .into());
        }

        let blobs_dir = self.layout().blobs_dir();
        for entry in fs::read_dir(&blobs_dir).ctx(|| format!("read {}", blobs_dir.display()))? {
            let entry = entry.ctx(|| format!("read {}", blobs_dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let keep = format!("sha256:{name}")
                .parse::<Digest>()
                .is_ok_and(|d| reach.blobs.contains(&d));
            if !keep {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                remove_any(&entry.path())?;
                report.blobs_removed += 1;
                report.bytes_freed += size;
            }
        }

        let layers = self.layout().layers_dir();
        for (sub, keep) in [("diff", &reach.diff_ids), ("chain", &reach.chain_ids)] {
            let dir = layers.join(sub);
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let entry = entry.ctx(|| format!("read {}", dir.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let used = format!("sha256:{name}")
                    .parse::<Digest>()
                    .is_ok_and(|d| keep.contains(&d));
                if !used {
                    // Out of sight first (one atomic rename into layers/tmp/), then
                    // deleted: a gc killed halfway must not leave a half-deleted tree
                    // where lookups take any directory for a complete layer.
                    let tmp = self.layout().layers_tmp_dir();
                    fs::create_dir_all(&tmp).ctx(|| format!("create {}", tmp.display()))?;
                    let doomed = tmp.join(format!("gc-{sub}-{name}"));
                    fs::rename(entry.path(), &doomed)
                        .ctx(|| format!("move {} out of the way", entry.path().display()))?;
                    sync_dir(&dir)?;
                    remove_any(&doomed)?;
                    report.layers_removed += 1;
                }
            }
        }

        for dir in [self.layout().ingest_dir(), self.layout().layers_tmp_dir()] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let entry = entry.ctx(|| format!("read {}", dir.display()))?;
                remove_any(&entry.path())?;
                report.temp_files_removed += 1;
            }
        }
        let meta = self.layout().meta_dir();
        if let Ok(entries) = fs::read_dir(&meta) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().ends_with(".tmp") {
                    remove_any(&entry.path())?;
                    report.temp_files_removed += 1;
                }
            }
        }
        Ok(report)
    }
}

fn remove_any(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path).ctx(|| format!("stat {}", path.display()))?;
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
    .ctx(|| format!("remove {}", path.display()))
}
