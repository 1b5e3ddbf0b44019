//! The content store: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`)
//! that skopeo and umoci can read, plus nestcache's working areas beside it (see
//! [`crate::layout`]).
//!
//! Invariants:
//! - a file in `blobs/sha256/` appears only by rename after its digest and size were
//!   checked ([`ingest`]), so a crash leaves at most a stray temp file in `ingest/`;
//! - `index.json` is replaced atomically under `.nestcache/lock` ([`refs`]) and a ref is
//!   written only after every blob it reaches is present;
//! - writers hold `.nestcache/gc.lock` shared, `store gc` holds it exclusively ([`lock`]);
//! - what a container runs on is leased (`.nestcache/leases/`) and gc treats leases as
//!   roots ([`Lease`], [`Store::acquire_lease`]).

mod check;
mod error;
mod gc;
mod ingest;
mod lease;
pub mod lock;
mod refs;
pub mod temp;

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

pub use check::{describe_problems, CheckReport, CorruptBlob, ImageSummary, MissingBlob};
pub use error::StoreError;
pub use gc::GcReport;
pub use ingest::{check_declared_size, BlobClaim, Ingested, NoTee, Opener, Present, Tee};
pub use lease::{validate_lease_id, Lease, LeaseError, LeaseHolder};
pub use refs::{validate_ref_name, RefEntry};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, OpenRegularError};
pub use crate::image::ResolvedImage;
use crate::image::{self, PlatformChoice, PlatformSpec};
use crate::layout::ContentLayout;

const OCI_LAYOUT_CONTENT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// Names that may already be in a directory that becomes a store (a cache's content dir
/// gets `.nestcache/` first); anything else means the directory is something else.
const KNOWN_ENTRIES: &[&str] = &[
    "oci-layout",
    "index.json",
    "blobs",
    "ingest",
    "layers",
    ".nestcache",
];

/// An OCI layout content directory.
#[derive(Debug, Clone)]
pub struct Store {
    layout: ContentLayout,
}

impl Store {
    /// Opens the store in `dir`, creating the directory and an empty layout if needed.
    /// A non-empty directory that is not a layout is refused rather than written into
    /// (a mistyped `--store` must not turn /etc into a store).
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        Self::open_inner(dir.as_ref(), true)
    }

    /// Opens the store in a cache's content dir: the cache's users keep their own files
    /// there beside the layout, so a non-empty directory is expected.
    pub fn open_content_dir(dir: impl AsRef<Path>) -> Result<Store> {
        Self::open_inner(dir.as_ref(), false)
    }

    fn open_inner(dir: &Path, refuse_foreign: bool) -> Result<Store> {
        fs::create_dir_all(dir).ctx(|| format!("create store directory {}", dir.display()))?;
        let store = Store {
            layout: ContentLayout::new(dir),
        };
        if refuse_foreign && !store.layout.oci_layout_file().exists() {
            store.refuse_foreign_dir()?;
        }
        for d in [
            store.layout.blobs_dir(),
            store.layout.ingest_dir(),
            store.layout.meta_dir(),
        ] {
            fs::create_dir_all(&d).ctx(|| format!("create {}", d.display()))?;
        }
        // index.json first: `oci-layout` marks a complete layout, so a process killed
        // between the two must leave no marker rather than a layout without index.json.
        store.ensure_index()?;
        store.ensure_oci_layout()?;
        Ok(store)
    }

    /// Opens an existing store without creating anything (for listing, checking, gc).
    pub fn open_existing(dir: impl AsRef<Path>) -> Result<Store> {
        let dir = dir.as_ref();
        let store = Store {
            layout: ContentLayout::new(dir),
        };
        if !store.layout.oci_layout_file().is_file() {
            return Err(StoreError::NoStore {
                dir: dir.to_path_buf(),
            }
            .into());
        }
        store.check_oci_layout()?;
        Ok(store)
    }

    /// Holds off `store gc` while writing (stage, unpack) or reading what gc may delete.
    pub fn writer_lock(&self) -> Result<lock::LockGuard> {
        lock::lock(&self.layout().gc_lock_file(), false)
    }

    pub fn layout(&self) -> &ContentLayout {
        &self.layout
    }

    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// Whether a verified blob is present (a regular file, never a symlink).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        fs::symlink_metadata(self.layout.blob(digest)).is_ok_and(|m| m.file_type().is_file())
    }

    /// The size of a present blob, if it is present.
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        fs::symlink_metadata(self.layout.blob(digest))
            .ok()
            .filter(|m| m.file_type().is_file())
            .map(|m| m.len())
    }

    /// Opens a blob for reading. Refuses a blob path that is a symlink or not a regular file.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.layout.blob(digest);
        fsutil::open_regular(&path).map_err(|e| match e {
            OpenRegularError::Symlink => StoreError::BlobSymlink {
                digest: digest.clone(),
                path,
            }
            .into(),
            OpenRegularError::Missing => StoreError::BlobMissing {
                digest: digest.clone(),
            }
            .into(),
            OpenRegularError::NotRegular => StoreError::BlobNotRegular {
                digest: digest.clone(),
                path,
            }
            .into(),
            OpenRegularError::Io(e) => Error::io(format!("open blob {}", path.display()), e),
        })
    }

    /// Resolves a ref name or a manifest/index digest to one image (choosing `platform`, or
    /// the host's, from an index). Every document read is verified against its digest.
    pub fn resolve(
        &self,
        ref_or_digest: &str,
        platform: Option<&PlatformSpec>,
    ) -> Result<ResolvedImage> {
        let root = self.root_descriptor(ref_or_digest)?;
        let choice = PlatformChoice::new(platform.cloned());
        image::resolve(&root, &choice, &mut |desc, limit| {
            let digest = image::descriptor_digest(desc)?;
            let file = self.open_blob(&digest)?;
            image::read_document(desc, limit, file)
        })
    }

    fn refuse_foreign_dir(&self) -> Result<()> {
        let root = self.layout.root();
        let entries = fs::read_dir(root).ctx(|| format!("read directory {}", root.display()))?;
        for entry in entries {
            let entry = entry.ctx(|| format!("read directory {}", root.display()))?;
            let name = entry.file_name();
            if !KNOWN_ENTRIES.iter().any(|k| name == *k) {
                return Err(StoreError::ForeignDir {
                    dir: root.to_path_buf(),
                    found: name.to_string_lossy().into_owned(),
                }
                .into());
            }
        }
        Ok(())
    }

    fn ensure_oci_layout(&self) -> Result<()> {
        let path = self.layout.oci_layout_file();
        if path.exists() {
            return self.check_oci_layout();
        }
        self.write_atomically(&path, OCI_LAYOUT_CONTENT.as_bytes())
    }

    fn check_oci_layout(&self) -> Result<()> {
        let path = self.layout.oci_layout_file();
        let data = fs::read(&path).ctx(|| format!("read {}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_slice(&data).map_err(|e| StoreError::MalformedJson {
                path: path.clone(),
                why: e.to_string(),
            })?;
        match v.get("imageLayoutVersion").and_then(|v| v.as_str()) {
            Some("1.0.0") => Ok(()),
            other => Err(StoreError::LayoutVersion {
                path,
                found: other.map(str::to_string),
            }
            .into()),
        }
    }

    /// Writes a small file by temp file + fsync + rename + directory fsync. The temp file
    /// lives in `.nestcache/` so the layout's root never shows half-written files.
    fn write_atomically(&self, path: &Path, data: &[u8]) -> Result<()> {
        let tmp = ingest::unique_temp_path(&self.layout.meta_dir(), "write");
        let mut guard = ingest::TempFile::create(&tmp)?;
        guard
            .file()
            .write_all(data)
            .ctx(|| format!("write {}", tmp.display()))?;
        guard
            .file()
            .sync_all()
            .ctx(|| format!("fsync {}", tmp.display()))?;
        guard.persist(path)?;
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }
}

/// fsyncs a directory so that a rename into it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    crate::fsutil::sync_dir(dir).ctx(|| format!("fsync directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_creates_layout_and_refuses_foreign_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("s")).unwrap();
        assert!(store.layout().oci_layout_file().is_file());
        assert!(store.layout().index_file().is_file());
        assert!(store.refs().unwrap().is_empty());
        // Re-opening is fine.
        Store::open(store.root()).unwrap();

        let foreign = tmp.path().join("home");
        fs::create_dir_all(&foreign).unwrap();
        fs::write(foreign.join("notes.txt"), "x").unwrap();
        let err = Store::open(&foreign).unwrap_err();
        assert!(
            matches!(&err, Error::Store(StoreError::ForeignDir { found, .. }) if found == "notes.txt"),
            "{err}"
        );
        let err = Store::open_existing(tmp.path().join("nope")).unwrap_err();
        assert!(
            matches!(err, Error::Store(StoreError::NoStore { .. })),
            "{err}"
        );
        assert!(err.is_not_found());
    }

    #[test]
    fn open_blob_refuses_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let d = Digest::of(b"hello");
        std::os::unix::fs::symlink("/etc/passwd", store.layout().blob(&d)).unwrap();
        assert!(!store.has_blob(&d));
        let err = store.open_blob(&d).unwrap_err();
        assert!(
            matches!(&err, Error::Store(StoreError::BlobSymlink { digest, .. }) if *digest == d),
            "{err}"
        );
        assert!(!store.verify_blob(&d, 5).unwrap());
    }
}
