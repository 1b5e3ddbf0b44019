//! What can go wrong while extracting a layer, with the layer (its diff_id), the entry, the
//! limit or the expected vs actual values it went wrong on. Rolled up into
//! [`crate::Error`] as `Error::Unpack`.
//!
//! Inside the applier an entry fails with a [`Fail`] before the layer and entry names are
//! attached; the applier turns it into an [`UnpackError`] once they are
//! ([`Fail::into_error`]).

use std::io;
use std::path::{Path, PathBuf};

use super::tree::TreeError;
use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The entry would reach outside its layer (`..`, an absolute path, a symlink or a
    /// non-directory on the way, a hardlink to a directory, a whiteout naming nothing).
    #[error("unsafe path in layer {layer}: entry {entry:?} {why}")]
    UnsafeEntry {
        layer: Digest,
        entry: PathBuf,
        why: String,
    },
    /// An entry the applier refuses as malformed (no link target, an unsupported type, an
    /// unparseable header field).
    #[error("layer {layer}: entry {entry:?}: {why}")]
    BadEntry {
        layer: Digest,
        entry: PathBuf,
        why: String,
    },
    #[error("layer {layer}: archive ends inside entry {entry:?}: {actual} of {expected} bytes")]
    ShortEntry {
        layer: Digest,
        entry: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("layer {layer}: hardlink {entry:?} to {target:?}: the target is neither in this layer nor below")]
    LinkTargetMissing {
        layer: Digest,
        entry: PathBuf,
        target: PathBuf,
    },
    #[error("layer {layer}: entry {entry:?}: {what}: {source}")]
    Io {
        layer: Digest,
        entry: PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
    /// The byte stream itself failed: corrupt compression, a tar that ends early.
    #[error("layer {layer}: corrupt or truncated stream{}: {source}", after(entry))]
    Stream {
        layer: Digest,
        /// The last entry read before the failure, if any.
        entry: Option<PathBuf>,
        #[source]
        source: io::Error,
    },
    /// A decompression-bomb guard stopped the stream.
    #[error("layer {layer}: decompression guard: {tripped}{}", after(entry))]
    Guard {
        layer: Digest,
        entry: Option<PathBuf>,
        tripped: GuardTrip,
    },
    #[error("layer {layer}: more than {limit} entries (limit max_entries, NESTCACHE_MAX_ENTRIES), at entry {entry:?}")]
    TooManyEntries {
        layer: Digest,
        entry: PathBuf,
        limit: u64,
    },
    #[error("layer {layer}: uncompressed content has digest {actual} ({bytes} bytes), expected diff_id {layer} (from the image config)")]
    DiffIdMismatch {
        /// The expected diff_id.
        layer: Digest,
        actual: Digest,
        bytes: u64,
    },
    #[error("blob {blob} (layer with diff_id {layer}) is not in the store {}", store.display())]
    BlobMissing {
        blob: Digest,
        layer: Digest,
        store: PathBuf,
    },
    /// Re-extraction against the published lowers still asked for them: a bug, not input.
    #[error("layer {layer}: entry {entry:?} still needs lower layers although they were given")]
    NeedsLowersAgain { layer: Digest, entry: PathBuf },
}

impl UnpackError {
    /// Whether the failure is something absent (a layer's blob).
    pub fn is_not_found(&self) -> bool {
        matches!(self, UnpackError::BlobMissing { .. })
    }
}

/// Which decompression-bomb limit a stream exceeded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardTrip {
    #[error("layer expands past {limit} bytes (limit max_layer_bytes, NESTCACHE_MAX_LAYER_BYTES)")]
    LayerBytes { limit: u64 },
    #[error("{compressed} compressed bytes expand to more than {expanded} (ratio above {limit}:1, limit max_ratio, NESTCACHE_MAX_RATIO)")]
    Ratio {
        compressed: u64,
        expanded: u64,
        limit: u64,
    },
}

fn after(entry: &Option<PathBuf>) -> String {
    entry
        .as_deref()
        .map(|p: &Path| format!(" (after entry {p:?})"))
        .unwrap_or_default()
}

/// Why an entry failed, before it is given the layer and entry names.
pub(super) enum Fail {
    Unsafe(String),
    Invalid(String),
    Short {
        expected: u64,
        actual: u64,
    },
    LinkTargetMissing(PathBuf),
    Io(String, io::Error),
    /// The byte stream itself failed (truncated, corrupt, guard tripped).
    Stream(io::Error),
    /// A file writer thread failed on an earlier entry; already named.
    Written(Box<UnpackError>),
}

impl From<TreeError> for Fail {
    fn from(e: TreeError) -> Self {
        match e {
            TreeError::Unsafe(why) => Fail::Unsafe(why),
            TreeError::Io(what, e) => Fail::Io(what, e),
        }
    }
}

impl Fail {
    /// The crate-level error; a stream failure is left to the caller, which knows whether
    /// a guard tripped ([`Fail::Stream`] maps to [`UnpackError::Stream`] here).
    pub(super) fn into_error(self, layer: &Digest, entry: PathBuf) -> UnpackError {
        let layer = layer.clone();
        match self {
            Fail::Unsafe(why) => UnpackError::UnsafeEntry { layer, entry, why },
            Fail::Invalid(why) => UnpackError::BadEntry { layer, entry, why },
            Fail::Short { expected, actual } => UnpackError::ShortEntry {
                layer,
                entry,
                expected,
                actual,
            },
            Fail::LinkTargetMissing(target) => UnpackError::LinkTargetMissing {
                layer,
                entry,
                target,
            },
            Fail::Io(what, source) => UnpackError::Io {
                layer,
                entry,
                what,
                source,
            },
            Fail::Stream(source) => UnpackError::Stream {
                layer,
                entry: Some(entry),
                source,
            },
            Fail::Written(e) => *e,
        }
    }
}

pub(super) type Res<T> = std::result::Result<T, Fail>;
