//! `system df` and `system prune`, as Docker's: what images (the caches' stores),
//! nested containers (their upper dirs) and volumes take on disk and how much of it is
//! reclaimable, and the prune that reclaims it. Nothing in use is ever taken: an image is
//! in use while a live lease in its store names it (the store's leases are the rule, as
//! for `images rm` and `store gc`), a volume while a container names it.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{manage, volumes};
use crate::cache::{self, leases};
use crate::containerd::Client;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::StateLayout;
use crate::store::{RefEntry, Store};

/// One row of `system df`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Docker's words: Images, Containers, Local Volumes, Build Cache.
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "TotalCount")]
    pub total: u64,
    #[serde(rename = "Active")]
    pub active: u64,
    /// Bytes on disk (apparent sizes, hard links counted once).
    #[serde(rename = "Size")]
    pub size: u64,
    #[serde(rename = "Reclaimable")]
    pub reclaimable: u64,
}

/// The caches' stores, each once.
async fn stores(client: &Client) -> Result<Vec<Store>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for c in cache::list(client).await? {
        if !seen.insert(c.content_dir.clone()) {
            continue;
        }
        match Store::open_existing(&c.content_dir) {
            Ok(s) => out.push(s),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The refs of `store` a live lease uses (by the ref's own digest or its manifest's),
/// and the others.
async fn refs_in_use(store: &Store) -> Result<(Vec<RefEntry>, Vec<RefEntry>)> {
    let live: HashSet<Digest> = leases::classify(store.leases()?)
        .await
        .live
        .into_iter()
        .map(|(l, _)| l.manifest)
        .collect();
    let (mut used, mut unused) = (Vec::new(), Vec::new());
    for r in store.refs()? {
        let in_use = top_digest(&r).is_some_and(|d| live.contains(&d))
            || store
                .resolve(&r.name, None)
                .is_ok_and(|i| live.contains(&i.manifest_digest));
        if in_use { &mut used } else { &mut unused }.push(r);
    }
    Ok((used, unused))
}

fn top_digest(r: &RefEntry) -> Option<Digest> {
    r.descriptor.digest().to_string().parse().ok()
}

/// Bytes the images of `refs` take: their blobs and extracted layer dirs, each once.
fn bytes_of(store: &Store, refs: &[RefEntry]) -> u64 {
    let mut blobs: HashSet<Digest> = HashSet::new();
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    for r in refs {
        blobs.extend(top_digest(r));
        let Ok(img) = store.resolve(&r.name, None) else {
            continue;
        };
        blobs.insert(img.manifest_digest.clone());
        blobs.insert(img.config_digest.clone());
        blobs.extend(img.layers().iter().map(|l| l.digest.clone()));
        if let Ok(d) = crate::rootfs::layer_dirs(store, &img) {
            dirs.extend(d);
        }
    }
    let blob_bytes: u64 = blobs.iter().filter_map(|d| store.blob_size(d)).sum();
    blob_bytes + dirs.iter().map(|d| du(d)).sum::<u64>()
}

/// What a store takes: its blobs and extracted layers.
fn store_bytes(store: &Store) -> u64 {
    du(&store.layout().blobs_dir()) + du(&store.layout().layers_dir())
}

/// `system df`: images, containers, local volumes, build cache (always empty: nestcache
/// builds nothing), Docker's rows.
pub async fn disk_usage(client: &Client, state: &StateLayout) -> Result<Vec<Usage>> {
    let mut images = Usage {
        kind: "Images".into(),
        ..Default::default()
    };
    for store in stores(client).await? {
        let (used, unused) = refs_in_use(&store).await?;
        let (size, active) = (store_bytes(&store), bytes_of(&store, &used));
        images.total += (used.len() + unused.len()) as u64;
        images.active += used.len() as u64;
        images.size += size;
        images.reclaimable += size.saturating_sub(active);
    }
    let mut containers = Usage {
        kind: "Containers".into(),
        ..Default::default()
    };
    for c in manage::list(client, true).await? {
        let size = du(&state.container_dir(&c.id).join("upper"));
        containers.total += 1;
        containers.size += size;
        if c.is_running() {
            containers.active += 1;
        } else {
            containers.reclaimable += size;
        }
    }
    let mut vols = Usage {
        kind: "Local Volumes".into(),
        ..Default::default()
    };
    for v in volumes::list(client, state).await? {
        let size = du(&v.mountpoint);
        vols.total += 1;
        vols.size += size;
        if v.used_by.is_empty() {
            vols.reclaimable += size;
        } else {
            vols.active += 1;
        }
    }
    let build = Usage {
        kind: "Build Cache".into(),
        ..Default::default()
    };
    Ok(vec![images, containers, vols, build])
}

/// What `system prune` takes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PruneOptions {
    /// `-a`: also every image no container uses (not only unreferenced content).
    pub all_images: bool,
    /// `--volumes`: also anonymous volumes no container uses.
    pub volumes: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub containers_deleted: Vec<String>,
    pub images_deleted: Vec<String>,
    pub volumes_deleted: Vec<String>,
    /// Bytes freed: stores, container dirs and volumes, before minus after.
    pub space_reclaimed: u64,
}

/// `system prune`: stopped nested containers, then (with `-a`) unused images' refs,
/// then (with `--volumes`) unused anonymous volumes, then each store's gc (unreferenced
/// blobs and layers; leases of removed containers reclaimed once containerd confirms).
pub async fn prune(
    client: &Client,
    state: &StateLayout,
    opts: PruneOptions,
) -> Result<PruneReport> {
    let stores = stores(client).await?;
    let measure = |stores: &[Store]| {
        stores.iter().map(store_bytes).sum::<u64>()
            + du(&state.root().join("containers"))
            + du(&state.root().join("volumes"))
    };
    let before = measure(&stores);
    let mut report = PruneReport::default();
    for c in manage::list(client, true).await? {
        if matches!(c.status.as_str(), "stopped" | "exited") {
            manage::remove(client, state, &c.id, false, false).await?;
            report.containers_deleted.push(c.id);
        }
    }
    for store in &stores {
        if opts.all_images {
            for r in refs_in_use(store).await?.1 {
                store.remove_ref(&r.name)?;
                report.images_deleted.push(r.name);
            }
        }
        let stale = leases::classify(store.leases()?).await.stale;
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.gc_reclaiming(&stale))
            .await
            .map_err(|e| Error::Other(format!("gc of a store failed: {e}")))??;
    }
    if opts.volumes {
        for v in volumes::list(client, state).await? {
            if v.used_by.is_empty() && is_anonymous(&v.name) {
                volumes::remove(client, state, &v.name).await?;
                report.volumes_deleted.push(v.name);
            }
        }
    }
    report.space_reclaimed = before.saturating_sub(measure(&stores));
    Ok(report)
}

/// An anonymous volume's name: 64 lowercase hex digits (Docker's shape).
pub fn is_anonymous(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Apparent size of everything under `path` (not following symlinks; a hard-linked file
/// counted once); 0 when it does not exist. Unreadable parts are skipped: a report.
fn du(path: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        total += m.len();
        if m.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn du_counts_hard_links_once_and_never_follows_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("r");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a"), vec![0u8; 1000]).unwrap();
        std::fs::hard_link(root.join("a"), root.join("b")).unwrap();
        let outside = d.path().join("big");
        std::fs::write(&outside, vec![0u8; 100_000]).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("l")).unwrap();
        let dir_len = std::fs::symlink_metadata(&root).unwrap().len();
        let link_len = std::fs::symlink_metadata(root.join("l")).unwrap().len();
        assert_eq!(du(&root), dir_len + 1000 + link_len);
        assert_eq!(du(&d.path().join("none")), 0);
    }

    #[test]
    fn anonymous_names() {
        assert!(is_anonymous(&"ab".repeat(32)));
        assert!(!is_anonymous("data") && !is_anonymous(&"AB".repeat(32)));
    }
}
