//! Leases: what a nested container runs on stays in the store until the container is
//! removed. containerd's leases are the model: a lease is a named record that makes
//! `store gc` treat a manifest (and so its config, layer blobs and extracted layers) as a
//! root, whatever the refs in `index.json` say meanwhile (`images rm`, a re-stage of the
//! same ref).
//!
//! One file per lease, `.nestcache/leases/<id>.json`, written atomically and durably
//! (temp file, fsync, rename, fsync dir). A lease names who holds it: the containerd
//! address, namespace and container id, and the process that took it (pid + start time,
//! so a reused pid is not mistaken for it). `store gc` keeps every lease it is not told
//! to reclaim; the caller decides which are stale, only once containerd has confirmed
//! that the container is gone and the process that took the lease has exited (see
//! `nestcache::nested::leases`).
//!
//! Use from the CLI and the shim alike:
//!
//! ```no_run
//! # fn main() -> nestcache::Result<()> {
//! use nestcache::store::{LeaseHolder, Store};
//! let store = Store::open_existing("/var/lib/nestcache/caches/ci")?;
//! let image = store.resolve("alpine", None)?;
//! let holder = LeaseHolder::new("/run/containerd/containerd.sock", "nestcache", "web-1");
//! let id = holder.lease_id("shim");
//! store.acquire_lease(&id, &image.manifest_digest, &holder)?; // before mounting
//! // ... the container runs ...
//! store.release_lease(&id)?; // after it is deleted (idempotent)
//! # Ok(()) }
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, MediaType};
use serde::{Deserialize, Serialize};

use super::{sync_dir, Store};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::{self, DocKind};
use crate::process::ProcessStamp;

/// Lease ids are file names: letters, digits and `. _ @ + -`, starting with a letter or
/// digit, at most this long.
const MAX_ID_LEN: usize = 200;

/// What can go wrong with leases, with the lease and file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("invalid lease id {id:?}: {why}")]
    InvalidId { id: String, why: &'static str },
    #[error("lease {id}: manifest {digest} is not in store {store}")]
    ManifestMissing {
        id: String,
        digest: Digest,
        store: PathBuf,
    },
    #[error("lease {id}: {digest} is a {media_type:?}, not an image manifest or index")]
    NotAManifest {
        id: String,
        digest: Digest,
        media_type: String,
    },
    #[error("lease file {path}: {why}; remove it once no container uses what it leased")]
    Corrupt { path: PathBuf, why: String },
    #[error("image {reference} is in use by {}: remove {} first, or use --force (what they run stays leased until they are removed)", users.join(", "), if users.len() == 1 { "it" } else { "them" })]
    InUse {
        reference: String,
        users: Vec<String>,
    },
}

/// Who holds a lease: a container in one containerd namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHolder {
    /// containerd's socket path as the holder reached it.
    pub address: String,
    pub namespace: String,
    pub container: String,
}

impl LeaseHolder {
    pub fn new(
        address: impl Into<String>,
        namespace: impl Into<String>,
        container: impl Into<String>,
    ) -> Self {
        LeaseHolder {
            address: address.into(),
            namespace: namespace.into(),
            container: container.into(),
        }
    }

    /// The lease id for this holder and a `kind` of user (`cli`, `shim`): unique per
    /// container even when two containerds share the store (a short hash of the address).
    pub fn lease_id(&self, kind: &str) -> String {
        let addr = Digest::of(self.address.as_bytes());
        format!(
            "{kind}@{}@{}@{}",
            self.namespace,
            self.container,
            &addr.hex()[..8]
        )
    }
}

impl std::fmt::Display for LeaseHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "container {} (namespace {}, containerd {})",
            self.container, self.namespace, self.address
        )
    }
}

/// One lease, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    /// The manifest (or index) kept, with what gc needs to walk it.
    pub manifest: Digest,
    pub media_type: String,
    pub size: u64,
    pub holder: LeaseHolder,
    /// The process that took the lease; while it lives the lease is never reclaimed
    /// (it may not have created its container yet).
    pub creator: Option<ProcessStamp>,
    /// RFC 3339 UTC, with nanoseconds: with `id` it tells one acquisition from the next.
    pub created: String,
}

impl Lease {
    /// The descriptor gc walks from.
    pub(crate) fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            MediaType::from(self.media_type.as_str()),
            self.size,
            image::oci_digest(&self.manifest),
        )
    }

    /// Whether the process that took the lease is still running.
    pub fn creator_alive(&self) -> bool {
        self.creator.as_ref().is_some_and(ProcessStamp::is_alive)
    }
}

/// Checks a lease id (it becomes a file name).
pub fn validate_lease_id(id: &str) -> Result<()> {
    let why = if id.is_empty() || id.len() > MAX_ID_LEN {
        Some("must be 1 to 200 characters")
    } else if !id.as_bytes()[0].is_ascii_alphanumeric() {
        Some("must start with a letter or digit")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b))
    {
        Some("use letters, digits and . _ @ + -")
    } else {
        None
    };
    match why {
        Some(why) => Err(LeaseError::InvalidId {
            id: id.to_string(),
            why,
        }
        .into()),
        None => Ok(()),
    }
}

impl Store {
    /// Leases `manifest` (a manifest or index in this store) to `holder` under `id`,
    /// replacing a lease of the same id. Holds off gc while it checks that the manifest is
    /// present, so once this returns, gc keeps the image until [`Store::release_lease`].
    pub fn acquire_lease(
        &self,
        id: &str,
        manifest: &Digest,
        holder: &LeaseHolder,
    ) -> Result<Lease> {
        validate_lease_id(id)?;
        let _gc = self.writer_lock()?;
        let (media_type, size) = self.manifest_kind(id, manifest)?;
        let lease = Lease {
            id: id.to_string(),
            manifest: manifest.clone(),
            media_type,
            size,
            holder: holder.clone(),
            creator: ProcessStamp::current(),
            created: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
        };
        let dir = self.layout().leases_dir();
        if !dir.is_dir() {
            fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
            sync_dir(&self.layout().meta_dir())?;
        }
        let data = serde_json::to_vec_pretty(&lease)
            .map_err(|e| Error::Other(format!("encode lease {id}: {e}")))?;
        self.write_atomically(&self.layout().lease_file(id), &data)?;
        Ok(lease)
    }

    /// Ends lease `id`. Returns whether there was one (releasing twice is fine).
    pub fn release_lease(&self, id: &str) -> Result<bool> {
        validate_lease_id(id)?;
        let path = self.layout().lease_file(id);
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.layout().leases_dir())?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("remove lease {}", path.display()), e)),
        }
    }

    /// Lease `id`, if there is one.
    pub fn lease(&self, id: &str) -> Result<Option<Lease>> {
        validate_lease_id(id)?;
        let path = self.layout().lease_file(id);
        match fs::read(&path) {
            Ok(data) => parse_lease(&path, &data).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read lease {}", path.display()), e)),
        }
    }

    /// Every lease, by id. A file that is not a lease is an error naming it: what it
    /// protects is unknown, so gc must not go on as if it protected nothing.
    pub fn leases(&self) -> Result<Vec<Lease>> {
        let dir = self.layout().leases_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.ctx(|| format!("read {}", dir.display()))?;
            out.extend(read_listed_lease(&entry.path())?);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The leases of images that ref `reference` reaches (its manifest, or those of its
    /// index): what `images rm` must not pull from under a container unasked.
    pub fn lease_users(&self, reference: &str) -> Result<Vec<Lease>> {
        let root = self.root_descriptor(reference)?;
        let reach = self.reach_from(vec![(root, format!("ref {reference}"))], None)?;
        Ok(self
            .leases()?
            .into_iter()
            .filter(|l| reach.blobs.contains(&l.manifest))
            .collect())
    }

    /// The media type and size of manifest blob `digest`, read and verified.
    fn manifest_kind(&self, id: &str, digest: &Digest) -> Result<(String, u64)> {
        let file = match self.open_blob(digest) {
            Ok(f) => f,
            Err(e) if e.is_not_found() => {
                return Err(LeaseError::ManifestMissing {
                    id: id.to_string(),
                    digest: digest.clone(),
                    store: self.root().to_path_buf(),
                }
                .into())
            }
            Err(e) => return Err(e),
        };
        let size = file.metadata().ctx(|| format!("stat blob {digest}"))?.len();
        let probe = Descriptor::new(MediaType::ImageManifest, size, image::oci_digest(digest));
        let data = image::read_document(&probe, image::MAX_MANIFEST_SIZE, file)?;
        image::verify_document(&probe, "leased manifest", &data)?;
        let media_type = media_type_of(&data);
        if DocKind::of(&media_type).is_none() {
            return Err(LeaseError::NotAManifest {
                id: id.to_string(),
                digest: digest.clone(),
                media_type,
            }
            .into());
        }
        Ok((media_type, size))
    }
}

/// A document's `mediaType` field; an OCI manifest may leave it out.
fn media_type_of(data: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(data) {
        Ok(Probe {
            media_type: Some(m),
            ..
        }) => m,
        Ok(Probe {
            manifests: Some(_),
            layers: None,
            ..
        }) => image::OCI_INDEX.to_string(),
        Ok(Probe {
            layers: Some(_), ..
        }) => image::OCI_MANIFEST.to_string(),
        _ => "not an image manifest".to_string(),
    }
}

/// A lease file `read_dir` listed: None when it was released (removed) since the
/// listing, as a run ending beside a gc does; anything else unreadable is an error.
fn read_listed_lease(path: &Path) -> Result<Option<Lease>> {
    match fs::read(path) {
        Ok(data) => parse_lease(path, &data).map(Some),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && matches!(fs::symlink_metadata(path), Err(ref m) if m.kind() == std::io::ErrorKind::NotFound) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::io(format!("read lease {}", path.display()), e)),
    }
}

fn parse_lease(path: &Path, data: &[u8]) -> Result<Lease> {
    let corrupt = |why: String| LeaseError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    let lease: Lease = serde_json::from_slice(data).map_err(|e| corrupt(e.to_string()))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if path.extension().and_then(|e| e.to_str()) != Some("json") || stem != lease.id {
        return Err(corrupt(format!(
            "holds lease {:?}, which is not its file name",
            lease.id
        ))
        .into());
    }
    Ok(lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_released_after_the_listing_is_skipped_but_a_dangling_link_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let gone = tmp.path().join("gone.json");
        assert!(read_listed_lease(&gone).unwrap().is_none());
        let link = tmp.path().join("link.json");
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), &link).unwrap();
        assert!(read_listed_lease(&link).is_err());
    }

    fn holder() -> LeaseHolder {
        LeaseHolder::new("/run/c.sock", "ns", "c1")
    }

    /// A store with one manifest and its config (no ref).
    fn store_with_manifest() -> (tempfile::TempDir, Store, Digest) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("s")).unwrap();
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_digest = Digest::of(config);
        store
            .ingest_bytes("config", &config_digest, config)
            .unwrap();
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{config_digest}","size":{}}},"layers":[]}}"#,
            image::OCI_MANIFEST,
            image::OCI_CONFIG,
            config.len()
        );
        let digest = Digest::of(doc.as_bytes());
        store
            .ingest_bytes("manifest", &digest, doc.as_bytes())
            .unwrap();
        (tmp, store, digest)
    }

    #[test]
    fn gc_keeps_what_a_lease_holds_until_it_is_reclaimed() {
        let (_tmp, store, digest) = store_with_manifest();
        let lease = store.acquire_lease("run-1", &digest, &holder()).unwrap();
        let report = store.gc().unwrap();
        assert_eq!((report.blobs_removed, report.leases_kept), (0, 1));
        assert!(store.has_blob(&digest));
        // A stale copy of an older acquisition does not end the current one.
        let older = Lease {
            created: "2000-01-01T00:00:00Z".into(),
            ..lease.clone()
        };
        let report = store.gc_reclaiming(&[older]).unwrap();
        assert_eq!((report.leases_reclaimed, report.blobs_removed), (0, 0));
        let report = store.gc_reclaiming(&[lease]).unwrap();
        assert_eq!((report.leases_reclaimed, report.blobs_removed), (1, 2));
        assert!(!store.has_blob(&digest));
        assert!(store.leases().unwrap().is_empty());
    }

    #[test]
    fn check_walks_leased_manifests() {
        let (_tmp, store, digest) = store_with_manifest();
        store.acquire_lease("run-1", &digest, &holder()).unwrap();
        let report = store.check().unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.blobs_checked, 2);
    }

    #[test]
    fn acquire_list_release() {
        let (_tmp, store, digest) = store_with_manifest();
        let id = holder().lease_id("cli");
        assert!(id.starts_with("cli@ns@c1@"), "{id}");
        let lease = store.acquire_lease(&id, &digest, &holder()).unwrap();
        assert_eq!(lease.media_type, image::OCI_MANIFEST);
        assert!(lease.creator_alive());
        assert_eq!(store.leases().unwrap(), vec![lease.clone()]);
        assert_eq!(store.lease(&id).unwrap(), Some(lease));
        // No temp file is left beside it.
        let names: Vec<_> = fs::read_dir(store.layout().leases_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(format!("{id}.json"))]);
        assert!(store.release_lease(&id).unwrap());
        assert!(!store.release_lease(&id).unwrap());
        assert!(store.leases().unwrap().is_empty());
    }

    #[test]
    fn acquire_refuses_missing_blobs_non_manifests_and_bad_ids() {
        let (_tmp, store, _) = store_with_manifest();
        let absent = Digest::of(b"absent");
        let err = store.acquire_lease("a", &absent, &holder()).unwrap_err();
        assert!(
            matches!(err, Error::Lease(LeaseError::ManifestMissing { .. })),
            "{err}"
        );
        let layer = Digest::of(b"not json");
        store.ingest_bytes("layer", &layer, b"not json").unwrap();
        let err = store.acquire_lease("a", &layer, &holder()).unwrap_err();
        assert!(
            matches!(err, Error::Lease(LeaseError::NotAManifest { .. })),
            "{err}"
        );
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(201)] {
            let err = store.acquire_lease(bad, &layer, &holder()).unwrap_err();
            assert!(
                matches!(err, Error::Lease(LeaseError::InvalidId { .. })),
                "{bad}: {err}"
            );
        }
        assert!(store.leases().unwrap().is_empty());
    }

    #[test]
    fn a_foreign_file_among_leases_is_an_error_naming_it() {
        let (_tmp, store, digest) = store_with_manifest();
        store.acquire_lease("a", &digest, &holder()).unwrap();
        fs::write(store.layout().leases_dir().join("b.json"), b"{").unwrap();
        let foreign = store.layout().leases_dir().join("b.json");
        let err = store.leases().unwrap_err();
        assert!(
            matches!(&err, Error::Lease(LeaseError::Corrupt { path, .. }) if *path == foreign),
            "{err}"
        );
        // A valid record under another file name is refused too.
        fs::rename(
            store.layout().lease_file("a"),
            store.layout().lease_file("b"),
        )
        .unwrap();
        let err = store.leases().unwrap_err();
        assert!(
            matches!(&err, Error::Lease(LeaseError::Corrupt { path, why }) if *path == foreign && why.contains("not its file name")),
            "{err}"
        );
    }
}
