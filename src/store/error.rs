//! What can go wrong in the store, with the object it went wrong on. Rolled up into
//! [`crate::Error`] as `Error::Store`.

use std::path::PathBuf;

use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no store at {}: it has no oci-layout file", dir.display())]
    NoStore { dir: PathBuf },
    #[error("{} is not empty and not an OCI layout (found {found:?}): refusing to make it a store", dir.display())]
    ForeignDir { dir: PathBuf, found: String },
    #[error("{}: unsupported imageLayoutVersion {found:?} (expected \"1.0.0\")", path.display())]
    LayoutVersion {
        path: PathBuf,
        found: Option<String>,
    },
    #[error("{}: malformed JSON: {why}", path.display())]
    MalformedJson { path: PathBuf, why: String },
    #[error("blob {digest} is not in the store")]
    BlobMissing { digest: Digest },
    #[error("blob {digest}: {} is a symlink, refusing to follow it", path.display())]
    BlobSymlink { digest: Digest, path: PathBuf },
    #[error("blob {digest}: {} is not a regular file", path.display())]
    BlobNotRegular { digest: Digest, path: PathBuf },
    #[error("blob {digest}: malformed JSON: {why}")]
    BlobMalformed { digest: Digest, why: String },
    #[error("no image with ref {name:?} in {}; refs: {}", store.display(), list_or_none(refs))]
    RefNotFound {
        name: String,
        store: PathBuf,
        refs: Vec<String>,
    },
    #[error("ref {name}: {digest} has media type {media_type}, not a manifest or index")]
    RefNotAManifest {
        name: String,
        digest: Digest,
        media_type: String,
    },
    #[error("ref {name}: blob {digest} is not in the store")]
    RefBlobMissing { name: String, digest: Digest },
    #[error("blob {digest} ({media_type}) referenced by {referenced_by}: {why}")]
    Unreachable {
        /// As the referring document names it (which may not be a valid digest).
        digest: String,
        media_type: String,
        referenced_by: String,
        why: String,
    },
    /// A descriptor declares more than the limit: refused before anything is read.
    #[error("{what} {digest}: declared size {size} bytes is above the limit of {limit} bytes (raise it with --max-layer-size or NESTCACHE_MAX_LAYER_SIZE)")]
    BlobTooLarge {
        what: String,
        digest: Digest,
        size: u64,
        limit: u64,
    },
    /// The store's filesystem has less room than the bytes still to come.
    #[error("{what}: needs {needed} bytes but {} has only {available} bytes free", dir.display())]
    NoSpace {
        what: String,
        needed: u64,
        available: u64,
        dir: PathBuf,
    },
    /// The source sent more bytes than the descriptor declares.
    #[error("{what} {digest}: source sent more than the {size} bytes its descriptor declares")]
    BlobOverflow {
        what: String,
        digest: Digest,
        size: u64,
    },
    #[error("store gc refused: {problem}; fix or remove that ref or lease first")]
    GcRefused { problem: Box<StoreError> },
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

impl StoreError {
    /// Whether the failure is something absent (a store, a blob, a ref).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StoreError::NoStore { .. }
                | StoreError::BlobMissing { .. }
                | StoreError::RefNotFound { .. }
                | StoreError::RefBlobMissing { .. }
                | StoreError::Unreachable { .. }
        )
    }
}
