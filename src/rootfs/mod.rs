//! A nested container's root filesystem from a nestcache store: which extracted layer
//! dirs make up an image, the overlay over them, and reading a file (/etc/passwd) of the
//! image straight from its layers. Shared by `nestcache run` (which hands the overlay to
//! containerd) and the shim (which mounts it itself).

mod overlay;
mod view;

pub use overlay::{unmount, Overlay, MAX_LAYERS, MAX_MOUNT_DATA};
pub use view::LayerStack;

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::image::{Layer, ResolvedImage};
use crate::layout::ContentLayout;
use crate::store::Store;

/// The extracted layer dirs of `image` in `store`, bottom → top; see [`layer_dirs_in`].
pub fn layer_dirs(store: &Store, image: &ResolvedImage) -> Result<Vec<PathBuf>> {
    layer_dirs_in(
        store.layout(),
        &image.manifest_digest.to_string(),
        image.layers(),
    )
}

/// The extracted layer dirs of an image's `layers`, bottom → top. Refuses any layer that
/// is not extracted (a layer dir exists only once complete: the unpacker publishes it by
/// rename). `image` names the image in messages.
pub fn layer_dirs_in(
    layout: &ContentLayout,
    image: &str,
    layers: &[Layer],
) -> Result<Vec<PathBuf>> {
    let count = layers.len();
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            crate::unpack::existing_layer(layout, &l.diff_id, &l.chain_id).ok_or_else(|| {
                Error::NotFound(format!(
                    "extracted layer {}/{count} (diff_id {}) of image {image} in {}: extract it with `nestcache store unpack`",
                    i + 1,
                    l.diff_id,
                    layout.root().display()
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{chain_ids, Digest};
    use crate::image::{descriptor_for, OCI_LAYER};

    #[test]
    fn layer_dirs_by_diff_id_or_chain_id_and_refusal() {
        let t = tempfile::tempdir().unwrap();
        let layout = ContentLayout::new(t.path());
        let ids: Vec<Digest> = ["a", "b", "c"]
            .iter()
            .map(|s| Digest::of(s.as_bytes()))
            .collect();
        let chains = chain_ids(&ids);
        let layers: Vec<Layer> = ids
            .iter()
            .zip(&chains)
            .map(|(diff_id, chain_id)| Layer {
                descriptor: descriptor_for(OCI_LAYER, diff_id.hex().as_bytes()),
                digest: Digest::of(diff_id.hex().as_bytes()),
                diff_id: diff_id.clone(),
                chain_id: chain_id.clone(),
            })
            .collect();
        std::fs::create_dir_all(layout.layer_by_diff_id(&ids[0])).unwrap();
        std::fs::create_dir_all(layout.layer_by_chain_id(&chains[1])).unwrap();
        let e = layer_dirs_in(&layout, "img", &layers)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layer 3/3") && e.contains(&ids[2].to_string()),
            "{e}"
        );
        std::fs::create_dir_all(layout.layer_by_diff_id(&ids[2])).unwrap();
        let dirs = layer_dirs_in(&layout, "img", &layers).unwrap();
        assert_eq!(
            dirs,
            vec![
                layout.layer_by_diff_id(&ids[0]),
                layout.layer_by_chain_id(&chains[1]),
                layout.layer_by_diff_id(&ids[2]),
            ]
        );
        // An in-progress extraction (tmp dir) does not count.
        std::fs::remove_dir(layout.layer_by_diff_id(&ids[2])).unwrap();
        std::fs::create_dir_all(layout.layers_tmp_dir().join("x")).unwrap();
        assert!(layer_dirs_in(&layout, "img", &layers).is_err());
    }
}
