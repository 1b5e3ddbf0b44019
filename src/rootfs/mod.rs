//! A nested container's root filesystem from a nestcache store: which extracted layer
//! dirs make up an image, the overlay over them, and reading a file (/etc/passwd) of the
//! image straight from its layers. Shared by `nestcache run` (which hands the overlay to
//! containerd) and the shim (which mounts it itself).

mod overlay;
mod view;

pub use overlay::{unmount, Overlay, MAX_LAYERS, MAX_MOUNT_DATA};
pub use view::LayerStack;
