//! Images: media types ([`media`]), platforms ([`platform`]) and resolution from a root
//! descriptor to one manifest and config ([`resolve`]), shared by the store and every
//! source. A [`ResolvedImage`] hands out its layers already paired with their diff_ids.

pub mod media;
pub mod platform;
pub mod reference;
mod resolve;

use std::str::FromStr;

use oci_spec::image::{Descriptor, ImageConfiguration, MediaType};

pub use media::*;
pub use platform::{pick_platform, PlatformChoice, PlatformSpec};
pub use resolve::{
    read_document, resolve, verify_document, FetchFn, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE,
};

use crate::digest::Digest;
use crate::error::Result;

/// The annotation that names a ref in an OCI layout's index.json.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Our digest type from a descriptor's; refuses algorithms other than sha256.
pub fn descriptor_digest(desc: &Descriptor) -> Result<Digest> {
    desc.digest().to_string().parse()
}

/// One image, resolved down to its manifest and config; the documents' exact bytes are
/// kept so that staging stores exactly what was verified.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The manifest's descriptor (with the platform it was chosen for, when known).
    pub manifest_descriptor: Descriptor,
    pub manifest_digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
    pub config_bytes: Vec<u8>,
    /// Private, so that [`layers`](Self::layers) is the only way to an image's layers:
    /// paired with their diff_ids, whose count resolution checked once.
    layers: Vec<Layer>,
    /// The platform of the image (from its config).
    pub platform: PlatformSpec,
}

/// One layer of a resolved image, bottom to top, as resolution checked it: a sha256 blob
/// digest, a layer media type nestcache accepts, and the diff_id the config gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub descriptor: Descriptor,
    /// The blob's digest (compressed), from the descriptor.
    pub digest: Digest,
    /// The digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// The chain id of this layer over the ones beneath it.
    pub chain_id: Digest,
}

impl Layer {
    pub fn media_type(&self) -> String {
        self.descriptor.media_type().to_string()
    }

    pub fn size(&self) -> u64 {
        self.descriptor.size()
    }
}

impl ResolvedImage {
    /// The layers, bottom to top, each with its diff_id and chain id.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Sum of the manifest, config and layer sizes.
    pub fn total_size(&self) -> u64 {
        self.manifest_bytes.len() as u64
            + self.config_bytes.len() as u64
            + self.layers().iter().map(|l| l.size()).sum::<u64>()
    }
}

/// A descriptor for content we hold the bytes of.
pub fn descriptor_for(media_type: &str, data: &[u8]) -> Descriptor {
    Descriptor::new(
        MediaType::from(media_type),
        data.len() as u64,
        oci_digest(&Digest::of(data)),
    )
}

/// Our digest as oci-spec's (always valid: ours is validated sha256).
pub fn oci_digest(d: &Digest) -> oci_spec::image::Digest {
    oci_spec::image::Digest::from_str(&d.to_string())
        .unwrap_or_else(|_| unreachable!("a validated sha256 digest is a valid OCI digest"))
}
