//! A nested container's root filesystem from a nestcache store: which extracted layer
//! dirs make up an image, the overlay over them, and reading a file (/etc/passwd) of the
//! image straight from its layers. Shared by `nestcache run` (which hands the overlay to
//! containerd) and the shim (which mounts it itself).

mod overlay;
mod view;

pub use overlay::{unmount, Overlay, MAX_LAYERS, MAX_MOUNT_DATA};
pub use view::LayerStack;

use std::path::PathBuf;

use crate::digest::chain_ids;
use crate::error::{Error, Result};
use crate::image::ResolvedImage;
use crate::store::Store;

/// The extracted layer dirs of `image`, bottom → top. Refuses an image whose config and
/// manifest disagree on the layer count, and any layer that is not extracted (a layer
/// dir exists only once complete: the unpacker publishes it by rename).
pub fn layer_dirs(store: &Store, image: &ResolvedImage) -> Result<Vec<PathBuf>> {
    let layout = store.layout();
    let layers = image.manifest.layers().len();
    if layers != image.diff_ids.len() {
        return Err(Error::Invalid(format!(
            "image {}: the manifest has {layers} layers but the config lists {} diff_ids",
            image.manifest_digest,
            image.diff_ids.len()
        )));
    }
    let chains = chain_ids(&image.diff_ids);
    image
        .diff_ids
        .iter()
        .zip(&chains)
        .enumerate()
        .map(|(i, (diff_id, chain_id))| {
            crate::unpack::existing_layer(layout, diff_id, chain_id).ok_or_else(|| {
                Error::NotFound(format!(
                    "extracted layer {}/{layers} (diff_id {diff_id}) of image {} in {}: extract it with `nestcache store unpack`",
                    i + 1,
                    image.manifest_digest,
                    layout.root().display()
                ))
            })
        })
        .collect()
}
