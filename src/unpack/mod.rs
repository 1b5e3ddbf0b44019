//! Layer unpacking: each layer blob is extracted once, verified against its diff_id, into
//! a directory overlayfs can use as a lower layer (`layers/diff/<diff_id>`), so that a
//! container's rootfs is an overlay of those directories.
//!
//! - [`apply_layer`] streams one blob → decompress → tar → disk, hashing the tar stream
//!   on the way (no second pass), refusing anything that would write outside the layer.
//! - [`ensure_layers`] / [`ensure_unpacked`] look up what is already extracted (a directory
//!   exists only once complete: extraction happens under `layers/tmp/` and is published
//!   by rename) and extract the rest in parallel, one layer per core.
//!
//! A layer's tree is independent of the layers beneath it, except when it hardlinks to a
//! lower file (copied up) or names parent directories it never describes (they take the
//! lower layers' metadata): such a tree is keyed by chain id under `layers/chain/`.

mod apply;
mod ensure;
mod entry;
mod error;
mod lower;
mod meta;
mod path;
mod pipe;
mod stream;
mod tree;
mod writers;

pub use apply::{apply_buffered, apply_layer, discard, finish_with_lowers, LayerStats, Outcome};
pub use ensure::{
    clean_stale_tmp, ensure_layers, ensure_layers_with, ensure_unpacked, existing_layer, Feed,
    LayerBlob, StoreBlobs,
};
pub use error::{GuardTrip, UnpackError};
pub use path::RelPath;
pub use pipe::{chunk_pipe, ChunkSender};
pub use stream::Limits;
