//! Where things live. One place names every path so that the store, the unpacker, the
//! nested runner and the shim agree without talking to each other.
//!
//! A content directory (a cache's, or any `--store DIR`) is an OCI image layout plus
//! nestcache's own working areas beside `blobs/`, never inside it:
//!
//! ```text
//! <content>/oci-layout                  OCI layout marker
//! <content>/index.json                  refs (org.opencontainers.image.ref.name)
//! <content>/blobs/sha256/<hex>          verified blobs, immutable
//! <content>/ingest/                     in-progress blob writes (temp files)
//! <content>/layers/diff/<hex>/          an extracted layer, keyed by diff_id
//! <content>/layers/chain/<hex>/         an extracted layer that hardlinks into lower
//!                                       layers (copied up), keyed by chain id
//! <content>/layers/tmp/                 extractions in progress
//! <content>/.nestcache/                 handshake nonces, lock file, cache metadata
//! <content>/.nestcache/leases/<id>.json what running containers use (gc roots)
//! ```
//!
//! The state directory (default `/var/lib/nestcache`) holds what belongs to this machine:
//!
//! ```text
//! <state>/containerd/                   the embedded containerd (config, root, state, socket)
//! <state>/caches/<name>/                default content dir of cache <name>
//! <state>/keeper/                       the cache container's minimal rootfs
//! <state>/containers/<id>/              a nested container: upper/, work/, lower/ links, io, log
//! ```

use std::path::{Path, PathBuf};

use crate::digest::Digest;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/nestcache";

/// Paths inside one content directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentLayout {
    root: PathBuf,
}

impl ContentLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ContentLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn oci_layout_file(&self) -> PathBuf {
        self.root.join("oci-layout")
    }

    pub fn index_file(&self) -> PathBuf {
        self.root.join("index.json")
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join(Digest::ALGORITHM)
    }

    pub fn blob(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    pub fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// An extracted layer that stands on its own (no hardlinks into lower layers).
    pub fn layer_by_diff_id(&self, diff_id: &Digest) -> PathBuf {
        self.layers_dir().join("diff").join(diff_id.hex())
    }

    /// An extracted layer whose tree depends on the layers beneath it.
    pub fn layer_by_chain_id(&self, chain_id: &Digest) -> PathBuf {
        self.layers_dir().join("chain").join(chain_id.hex())
    }

    pub fn layers_tmp_dir(&self) -> PathBuf {
        self.layers_dir().join("tmp")
    }

    pub fn meta_dir(&self) -> PathBuf {
        self.root.join(".nestcache")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.meta_dir().join("lock")
    }

    /// Held shared by every writer (stage, unpack) for its whole run and exclusively by
    /// `store gc`, so gc never removes what a writer has written but not yet referenced.
    pub fn gc_lock_file(&self) -> PathBuf {
        self.meta_dir().join("gc.lock")
    }

    /// Leases: one `<id>.json` per container running from this store (`store::lease`).
    pub fn leases_dir(&self) -> PathBuf {
        self.meta_dir().join("leases")
    }

    pub fn lease_file(&self, id: &str) -> PathBuf {
        self.leases_dir().join(format!("{id}.json"))
    }
}

/// Paths inside nestcache's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateLayout {
    root: PathBuf,
}

impl StateLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn embedded_containerd_dir(&self) -> PathBuf {
        self.root.join("containerd")
    }

    pub fn caches_dir(&self) -> PathBuf {
        self.root.join("caches")
    }

    pub fn default_content_dir(&self, cache_name: &str) -> PathBuf {
        self.caches_dir().join(cache_name)
    }

    pub fn keeper_dir(&self) -> PathBuf {
        self.root.join("keeper")
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }
}

impl ContentLayout {
    /// Files the cache container's keeper and nestcache share for cache `name`: the
    /// handshake nonce and ack, and the expiry deadline.
    pub fn cache_meta_dir(&self, name: &str) -> PathBuf {
        self.meta_dir().join("cache").join(name)
    }
}

/// A nested container's files (its overlay parts are named by `rootfs::Overlay`).
impl StateLayout {
    /// The output of a detached nested container.
    pub fn container_log_file(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("log")
    }
}
