//! The library's error type. Every variant renders as one line a user can act on:
//! what failed, on which object (file, digest, name), and expected vs actual.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Variants of the modules behind feature `cli` (source, stage, containerd, cache, env,
/// nested, network, node) carry `#[cfg(feature = "cli")]`: the shim builds the crate
/// without it (`cargo build -p containerd-shim-nestcache` checks).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("digest mismatch for {what}: expected {expected} ({expected_size} bytes), got {actual} ({actual_size} bytes)")]
    DigestMismatch {
        what: String,
        expected: String,
        expected_size: u64,
        actual: String,
        actual_size: u64,
    },
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex>")]
    InvalidDigest(String),
    #[error("{0}")]
    Invalid(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("unsafe path in {layer}: entry {entry:?} {why}")]
    UnsafePath {
        layer: String,
        entry: PathBuf,
        why: String,
    },
    #[error("containerd at {address}: {message}")]
    Containerd { address: String, message: String },
    #[cfg(feature = "cli")]
    /// The nested container's command could not be invoked (`run` exits 126/127).
    #[error(transparent)]
    Exec(#[from] crate::nested::exec_error::ExecError),
    #[cfg(feature = "cli")]
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[cfg(feature = "cli")]
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[cfg(feature = "cli")]
    #[error(transparent)]
    ContainerdCall(#[from] crate::containerd::ContainerdError),
    #[cfg(feature = "cli")]
    #[error(transparent)]
    Registry(#[from] crate::source::registry::RegistryError),
    #[error(transparent)]
    Lease(#[from] crate::store::LeaseError),
    #[cfg(feature = "cli")]
    #[error(transparent)]
    Adopt(#[from] crate::cache::AdoptError),
    #[error(transparent)]
    Unpack(#[from] crate::unpack::UnpackError),
    /// A multi-step operation stopped by SIGINT/SIGTERM/SIGHUP (after undoing its steps).
    #[cfg(feature = "cli")]
    #[error(transparent)]
    Interrupted(#[from] crate::signals::InterruptedError),
    /// `--platform` asked for another platform than the image's (Docker's wording).
    #[error("image {image} was found but does not match the specified platform: wanted {wanted}, actual: {actual}")]
    PlatformMismatch {
        image: String,
        wanted: String,
        actual: String,
    },
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Wraps an io::Error with what was being done and to which path.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the failure is something absent (a store, blob, ref, container, task...),
    /// whichever module's error says so: match on this, never on the message.
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::NotFound(_) => true,
            Error::Store(e) => e.is_not_found(),
            #[cfg(feature = "cli")]
            Error::Registry(e) => e.is_not_found(),
            Error::Unpack(e) => e.is_not_found(),
            Error::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// Adds context to io results: `fs::read(p).ctx(|| format!("read {}", p.display()))?`.
pub trait IoContext<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}
